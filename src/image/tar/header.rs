//! Tar headers: reading ustar, GNU and pax headers, and encoding the headers
//! of new entries in the archive's own style.

use zeroize::Zeroizing;

use super::BLOCK;
use crate::image::{EntryType, FileMeta};

/// How the archive writes its headers; new entries follow the same style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeaderStyle {
    /// POSIX ustar, possibly with pax extended headers.
    Ustar,
    /// POSIX pax: ustar headers and pax extended headers seen.
    Pax,
    /// GNU tar's own format ("ustar  \0" magic).
    Gnu,
}

/// A parsed tar header, with pax and GNU long-name extensions applied.
#[derive(Debug, Clone)]
pub(super) struct Header {
    /// Normalised path: no leading `./` or `/`, no trailing `/`.
    pub(super) path: String,
    /// Whether the path as written starts with `./`.
    pub(super) dot_slash: bool,
    pub(super) typeflag: u8,
    pub(super) meta: FileMeta,
    /// Bytes of data following the header (rounded up to blocks when
    /// skipped).
    pub(super) data_size: u64,
}

/// The bytes `size` bytes of data take in the archive: whole blocks.
pub(super) fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

pub(super) fn kind_of(typeflag: u8) -> EntryType {
    match typeflag {
        b'0' | b'\0' | b'7' => EntryType::Regular,
        b'5' => EntryType::Dir,
        b'2' => EntryType::Symlink,
        _ => EntryType::Other,
    }
}

pub(super) fn describe(typeflag: u8) -> &'static str {
    match typeflag {
        b'0' | b'\0' | b'7' => "regular file",
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'5' => "directory",
        b'6' => "fifo",
        _ => "special entry",
    }
}

fn normalise(raw: &str) -> String {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.trim_start_matches('/').trim_end_matches('/').to_string()
}

fn field_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Parses a numeric field: octal text, or GNU base-256 when the top bit of
/// the first byte is set.
fn parse_number(bytes: &[u8]) -> Option<u64> {
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        if bytes[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (bytes[0] & 0x3f) as u64;
        for &b in &bytes[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

pub(super) fn checksum_ok(block: &[u8; 512]) -> bool {
    let Some(stored) = parse_number(&block[148..156]) else {
        return false;
    };
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as i8 as i64
            }
        })
        .sum();
    stored == unsigned || stored as i64 == signed
}

/// True if `head` starts with what looks like a valid tar header.
pub(crate) fn looks_like_tar(head: &[u8]) -> bool {
    // A ustar magic is enough to call it a tar archive: a damaged first
    // header is then reported as such, not as an unknown format.
    head.len() >= 512
        && (checksum_ok(head[..512].try_into().expect("512 bytes")) || &head[257..262] == b"ustar")
}

pub(super) fn typeflag(block: &[u8; 512]) -> u8 {
    block[156]
}

/// The size field, before any pax override. `Err` names the bad field.
pub(super) fn size(block: &[u8; 512]) -> Result<u64, &'static str> {
    parse_number(&block[124..136]).ok_or("size")
}

/// The style this header is written in, if it says (an old v7 header
/// does not).
pub(super) fn style_of(block: &[u8; 512]) -> Option<HeaderStyle> {
    let magic = &block[257..265];
    if magic == b"ustar  \0" {
        Some(HeaderStyle::Gnu)
    } else if &magic[..6] == b"ustar\0" {
        Some(if matches!(typeflag(block), b'x' | b'g') {
            HeaderStyle::Pax
        } else {
            HeaderStyle::Ustar
        })
    } else {
        None
    }
}

/// Whether the header describes the next one (pax extended header, GNU
/// long name or long link name) rather than an entry of its own.
pub(super) fn is_extension(typeflag: u8) -> bool {
    matches!(typeflag, b'x' | b'L' | b'K')
}

/// Whether more sparse headers follow this one: a GNU old-style sparse
/// entry with byte 482 set, or one of those extra headers with byte 504
/// set.
pub(super) fn sparse_headers_follow(block: &[u8; 512]) -> bool {
    typeflag(block) == b'S' && block[482] != 0
}

pub(super) fn sparse_extension_continues(ext: &[u8; 512]) -> bool {
    ext[504] != 0
}

/// Pax extended header records that matter here.
#[derive(Debug, Default, Clone)]
struct PaxOverrides {
    path: Option<String>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
}

fn parse_pax(data: &[u8]) -> PaxOverrides {
    let mut o = PaxOverrides::default();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let key = &record[..eq];
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match key {
                b"path" => o.path = Some(value),
                b"size" => o.size = value.parse().ok(),
                b"uid" => o.uid = value.parse().ok(),
                b"gid" => o.gid = value.parse().ok(),
                b"mtime" => o.mtime = value.split('.').next().and_then(|s| s.parse().ok()),
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    o
}

/// What the extension headers read since the last entry say about the
/// next one.
#[derive(Debug, Default)]
pub(super) struct Extensions {
    pax: PaxOverrides,
    long_name: Option<String>,
}

impl Extensions {
    /// Takes in the data of an extension header.
    pub(super) fn add(&mut self, typeflag: u8, data: &[u8]) {
        match typeflag {
            b'x' => self.pax = parse_pax(data),
            b'L' => self.long_name = Some(field_str(data)),
            _ => {} // GNU long link name: not needed
        }
    }
}

/// Parses an entry's header; `size` is its size field. Uses up the pax
/// records in `ext`, and the long name when it gives the path. `Err` names
/// the bad field.
pub(super) fn parse_entry(
    block: &[u8; 512],
    size: u64,
    ext: &mut Extensions,
) -> Result<Header, &'static str> {
    let typeflag = typeflag(block);
    let pax = std::mem::take(&mut ext.pax);
    let size = pax.size.unwrap_or(size);
    let raw_name = if let Some(p) = pax.path {
        p
    } else if let Some(l) = ext.long_name.take() {
        l
    } else {
        let name = field_str(&block[0..100]);
        let prefix = if &block[257..263] == b"ustar\0" {
            field_str(&block[345..500])
        } else {
            String::new()
        };
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        }
    };
    let num = |range: std::ops::Range<usize>, field| parse_number(&block[range]).ok_or(field);
    Ok(Header {
        path: normalise(&raw_name),
        dot_slash: raw_name.starts_with("./"),
        typeflag,
        meta: FileMeta {
            kind: kind_of(typeflag),
            mode: (num(100..108, "mode")? & 0o7777) as u32,
            uid: pax.uid.map(Ok).unwrap_or_else(|| num(108..116, "uid"))? as u32,
            gid: pax.gid.map(Ok).unwrap_or_else(|| num(116..124, "gid"))? as u32,
            mtime: pax
                .mtime
                .map(Ok)
                .unwrap_or_else(|| num(136..148, "mtime").map(|m| m as i64))?,
            size,
        },
        // Links and directories carry no data whatever the size says.
        data_size: if matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            0
        } else {
            size
        },
    })
}

/// A new entry, as the archive will name it.
pub(super) struct NewEntry<'a> {
    /// The path as written, in the archive's convention (`./`, a trailing
    /// `/` for directories).
    pub(super) name: String,
    /// Its last component, for the name of a pax header.
    pub(super) file_name: &'a str,
    pub(super) typeflag: ::tar::EntryType,
    pub(super) meta: FileMeta,
    pub(super) uname: &'a str,
    pub(super) gname: &'a str,
    pub(super) content: &'a [u8],
}

/// The largest number an octal field of 8 bytes (uid, gid) holds.
const OCTAL_ID_MAX: u64 = 0o7777777;

/// The bytes of one new entry in `style`: extension headers if needed, the
/// header, the data and its padding.
pub(super) fn encode_entry(style: HeaderStyle, entry: &NewEntry) -> Zeroizing<Vec<u8>> {
    let name = &entry.name;
    let meta = &entry.meta;
    let mut out = Zeroizing::new(Vec::new());

    let (prefix, short) = match style {
        HeaderStyle::Gnu if name.len() > 100 => {
            let mut long = name.clone().into_bytes();
            long.push(0);
            let link_meta = FileMeta {
                kind: EntryType::Other,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: long.len() as u64,
            };
            out.extend_from_slice(&header_block(
                style,
                "././@LongLink",
                "",
                ::tar::EntryType::GNULongName,
                &link_meta,
                "root",
                "root",
            ));
            push_padded(&mut out, &long);
            ("", &name[..100])
        }
        _ => ustar_split(name).unwrap_or(("", "")),
    };
    let mut records = Vec::new();
    if style != HeaderStyle::Gnu {
        if short.is_empty() {
            records.extend(pax_record("path", name));
        }
        if meta.uid as u64 > OCTAL_ID_MAX {
            records.extend(pax_record("uid", &meta.uid.to_string()));
        }
        if meta.gid as u64 > OCTAL_ID_MAX {
            records.extend(pax_record("gid", &meta.gid.to_string()));
        }
    }
    if !records.is_empty() {
        let pax_name = format!(
            "{}PaxHeaders/{}",
            name.trim_end_matches('/')
                .rsplit_once('/')
                .map(|(d, _)| format!("{d}/"))
                .unwrap_or_default(),
            entry.file_name
        );
        let pax_meta = FileMeta {
            kind: EntryType::Other,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: meta.mtime,
            size: records.len() as u64,
        };
        let pax_short = ustar_split(&pax_name).unwrap_or(("", entry.file_name));
        out.extend_from_slice(&header_block(
            style,
            pax_short.1,
            pax_short.0,
            ::tar::EntryType::XHeader,
            &pax_meta,
            "",
            "",
        ));
        push_padded(&mut out, &records);
    }
    let short = if short.is_empty() {
        &name[name.len().saturating_sub(100)..]
    } else {
        short
    };
    out.extend_from_slice(&header_block(
        style,
        short,
        prefix,
        entry.typeflag,
        meta,
        entry.uname,
        entry.gname,
    ));
    push_padded(&mut out, entry.content);
    out
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = padded(data.len() as u64) - data.len() as u64;
    out.extend(std::iter::repeat_n(0u8, pad as usize));
}

/// Builds one header block. The numeric fields, magic and version are
/// `tar::Header`'s; the text fields and the checksum are written here, see
/// below.
fn header_block(
    style: HeaderStyle,
    name: &str,
    prefix: &str,
    typeflag: ::tar::EntryType,
    meta: &FileMeta,
    uname: &str,
    gname: &str,
) -> [u8; 512] {
    let gnu = style == HeaderStyle::Gnu;
    let mut h = if gnu {
        ::tar::Header::new_gnu()
    } else {
        ::tar::Header::new_ustar()
    };
    h.set_mode(meta.mode);
    // An id too large for octal is carried by a pax record (or GNU
    // base-256); in a ustar header the field then holds 0, where
    // tar::Header would write base-256.
    let id = |id: u32| match id as u64 {
        id if gnu || id <= OCTAL_ID_MAX => id,
        _ => 0,
    };
    h.set_uid(id(meta.uid));
    h.set_gid(id(meta.gid));
    h.set_size(meta.size);
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_entry_type(typeflag);
    // tar::Header::set_path and set_username refuse what the image may
    // hold (a `./` prefix, names over 32 bytes) or split differently:
    // text fields are copied as they are, cut to the field's width.
    put_str(&mut h.as_old_mut().name, name);
    if let Some(ustar) = h.as_ustar_mut() {
        ustar.set_device_major(0);
        ustar.set_device_minor(0);
        put_str(&mut ustar.prefix, prefix);
        put_str(&mut ustar.uname, uname);
        put_str(&mut ustar.gname, gname);
    } else if let Some(gnu) = h.as_gnu_mut() {
        put_str(&mut gnu.uname, uname);
        put_str(&mut gnu.gname, gname);
    }
    let mut block = *h.as_bytes();
    // tar::Header::set_cksum writes `0012345\0`; GNU tar, bsdtar and
    // imprint's earlier outputs write `012345\0 `: the bytes stay as they were.
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| b as u64).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    block
}

fn put_str(field: &mut [u8], value: &str) {
    let bytes = value.as_bytes();
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

/// Splits a long path into ustar prefix and name, if possible.
fn ustar_split(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    let bytes = path.as_bytes();
    (0..bytes.len())
        .rev()
        .filter(|&i| bytes[i] == b'/')
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100 && i > 0)
        .map(|i| (&path[..i], &path[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        // GNU base-256, as tar::Header writes an id too large for octal.
        let mut h = ::tar::Header::new_gnu();
        h.set_uid(4_000_000_000);
        assert_eq!(h.as_old().uid[0] & 0x80, 0x80);
        assert_eq!(parse_number(&h.as_old().uid), Some(4_000_000_000));
        assert_eq!(parse_number(&[0xc0, 0, 0, 0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn pax_records() {
        let r = pax_record("path", "x");
        assert_eq!(r, b"9 path=x\n");
        // The length field counts its own digits: one more value byte makes
        // the record 11 bytes long, not 10.
        assert_eq!(pax_record("path", "xy"), b"11 path=xy\n");
        let mut data = r.clone();
        data.extend(pax_record("uid", "4000000000"));
        let o = parse_pax(&data);
        assert_eq!(o.path.as_deref(), Some("x"));
        assert_eq!(o.uid, Some(4_000_000_000));
    }

    #[test]
    fn header_checksum_round_trip() {
        let meta = FileMeta {
            kind: EntryType::Regular,
            mode: 0o600,
            uid: 1,
            gid: 2,
            mtime: 3,
            size: 4,
        };
        for style in [HeaderStyle::Gnu, HeaderStyle::Ustar] {
            let h = header_block(
                style,
                "etc/x",
                "",
                ::tar::EntryType::Regular,
                &meta,
                "a",
                "b",
            );
            assert!(checksum_ok(&h));
        }
    }

    #[test]
    fn encoded_headers_parse_back() {
        let meta = FileMeta {
            kind: EntryType::Regular,
            mode: 0o640,
            uid: 1001,
            gid: 4_000_000_000,
            mtime: 1_700_000_000,
            size: 5,
        };
        for style in [HeaderStyle::Ustar, HeaderStyle::Pax, HeaderStyle::Gnu] {
            let name = format!("./{}/{}", "d".repeat(120), "f".repeat(120));
            let bytes = encode_entry(
                style,
                &NewEntry {
                    name: name.clone(),
                    file_name: "fff",
                    typeflag: ::tar::EntryType::Regular,
                    meta: meta.clone(),
                    uname: "azaion",
                    gname: "azaion",
                    content: b"hello",
                },
            );
            let mut ext = Extensions::default();
            let mut at = 0;
            let header = loop {
                let block: &[u8; 512] = bytes[at..at + 512].try_into().unwrap();
                assert!(checksum_ok(block));
                let size = size(block).unwrap();
                at += 512;
                if is_extension(typeflag(block)) {
                    ext.add(typeflag(block), &bytes[at..at + size as usize]);
                    at += padded(size) as usize;
                    continue;
                }
                break parse_entry(block, size, &mut ext).unwrap();
            };
            assert_eq!(header.path, name[2..], "{style:?}");
            assert!(header.dot_slash);
            assert_eq!(header.data_size, 5);
            assert_eq!(&bytes[at..at + 5], b"hello");
            assert_eq!(bytes.len(), at + 512);
            // GNU carries a large gid in base-256, pax in a record.
            assert_eq!(header.meta, meta, "{style:?}");
        }
    }

    #[test]
    fn split_long_names() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        let (p, n) = ustar_split(&long).unwrap();
        assert_eq!(p.len(), 120);
        assert_eq!(n.len(), 50);
        assert!(ustar_split(&"x".repeat(300)).is_none());
    }
}
