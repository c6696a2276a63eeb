//! Tar headers: reading ustar, GNU and pax headers, and encoding the headers
//! of new entries in the archive's own style.

use std::num::IntErrorKind;
use std::path::Path;

use zeroize::Zeroizing;

use super::pax::{self, Record};
use super::sparse::{PaxSparse, Sparse};
use super::{TarError, BLOCK};
use crate::image::{EntryType, FileMeta};
use crate::plan::model::Special;
use crate::plan::name;

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
    /// The path as written (the pax path, the GNU long name, or the ustar
    /// prefix and name): libarchive's name for the entry, and so pixz's.
    pub(super) written: String,
    pub(super) typeflag: u8,
    pub(super) meta: FileMeta,
    /// A hard link's or symlink's target, as written.
    pub(super) linkname: Option<String>,
    /// The entry's own pax records.
    pub(super) records: Vec<Record>,
    /// Bytes of data following the header.
    pub(super) data_size: DataSize,
    /// A GNU sparse file's real size and map (`meta.size` is the real
    /// size, `data_size` what is stored).
    pub(super) sparse: Option<Sparse>,
}

/// The most data one entry can have: GNU tar's limit, the largest file
/// offset (`off_t`). A size past it is a corrupt field, and below it the
/// size rounded up to whole blocks still fits in a `u64`.
const MAX_DATA_SIZE: u64 = i64::MAX as u64;

/// How many bytes of data follow a header, as the archive says: at most
/// [`MAX_DATA_SIZE`], so that rounding it up to whole blocks cannot
/// overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DataSize(u64);

impl DataSize {
    pub(super) const NONE: DataSize = DataSize(0);

    fn new(bytes: u64) -> Option<DataSize> {
        (bytes <= MAX_DATA_SIZE).then_some(DataSize(bytes))
    }

    pub(super) fn bytes(self) -> u64 {
        self.0
    }

    /// The bytes the data takes in the archive: whole blocks.
    pub(super) fn padded(self) -> u64 {
        self.0.next_multiple_of(BLOCK)
    }

    /// The zero bytes between the end of the data and the next block.
    pub(super) fn padding(self) -> u64 {
        self.padded() - self.0
    }
}

/// What is wrong with a header; [`BadHeader::at`] makes it a [`TarError`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadHeader {
    /// A field that is not a number, or a pax record whose value is not.
    Unreadable(&'static str),
    /// A number no archive holds in that field: a size past GNU tar's
    /// limit, a negative or too large id, a time past 64-bit seconds.
    OutOfRange { field: &'static str, value: String },
}

impl BadHeader {
    /// The error for the header at `offset` of the archive `path`.
    pub(super) fn at(self, path: &Path, offset: u64) -> TarError {
        let path = path.to_path_buf();
        match self {
            BadHeader::Unreadable(field) => TarError::BadField {
                path,
                offset,
                field,
            },
            BadHeader::OutOfRange { field, value } => TarError::OutOfRange {
                path,
                offset,
                field,
                value,
            },
        }
    }
}

pub(super) fn kind_of(typeflag: u8) -> EntryType {
    match typeflag {
        // `S`: an old GNU sparse file, a regular file once expanded.
        b'0' | b'\0' | b'7' | b'S' => EntryType::Regular,
        // `D`: a GNU incremental archive's directory (`tar -g`), its data
        // the names it held (a dumpdir), which extraction makes a directory.
        b'5' | b'D' => EntryType::Dir,
        b'2' => EntryType::Symlink,
        _ => EntryType::Other,
    }
}

/// What a regular-file typeflag with a name ending in `/` is: a
/// directory, as v7 and pre-POSIX archives (bsdtar `--format=v7`) write
/// them, and as GNU tar and bsdtar extract them.
fn kind_of_named(typeflag: u8, raw_name: &str) -> EntryType {
    match kind_of(typeflag) {
        EntryType::Regular if typeflag != b'S' && raw_name.ends_with('/') => EntryType::Dir,
        kind => kind,
    }
}

/// The kind of special file a typeflag names (tar has no sockets).
fn special_of(typeflag: u8) -> Option<Special> {
    match typeflag {
        b'3' => Some(Special::CharDevice),
        b'4' => Some(Special::BlockDevice),
        b'6' => Some(Special::Fifo),
        _ => None,
    }
}

pub(super) fn describe(typeflag: u8) -> &'static str {
    match typeflag {
        b'0' | b'\0' | b'7' => "regular file",
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'5' | b'D' => "directory",
        b'6' => "fifo",
        b'S' => "GNU sparse file",
        b'V' => "volume label",
        _ => "special entry",
    }
}

/// An archive path as imprint names it: no leading `./` or `/`, no
/// trailing `/`.
fn normalise(raw: &str) -> String {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.trim_start_matches('/').trim_end_matches('/').to_string()
}

/// A text field up to its NUL: an owner name (as UTF-8, for the host's
/// user database).
fn field_str(bytes: &[u8]) -> String {
    String::from_utf8_lossy(till_nul(bytes)).into_owned()
}

/// A name field up to its NUL (a path, a link target, a GNU long name):
/// its bytes, whatever the charset, carried losslessly (`plan::name`).
fn field_name(bytes: &[u8]) -> String {
    name::from_bytes(till_nul(bytes)).into_owned()
}

fn till_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Parses a numeric field: octal text, or GNU base-256 when the top bit of
/// the first byte is set. Base-256 is two's complement, negative when the
/// next bit is set too: GNU tar writes times before 1970 so. `None` when
/// the field is not a number. A field is at most 12 bytes, which an `i128`
/// holds whatever they say.
pub(super) fn parse_number(bytes: &[u8]) -> Option<i128> {
    if let Some(&first) = bytes.first().filter(|&&b| b & 0x80 != 0) {
        let negative = first & 0x40 != 0;
        // The top bit marks the encoding; a negative number's sign bit
        // runs through it.
        let (mut v, first) = if negative {
            (-1i128, first)
        } else {
            (0i128, first & 0x7f)
        };
        for &b in std::iter::once(&first).chain(&bytes[1..]) {
            v = v.checked_mul(256)?.checked_add(i128::from(b))?;
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
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8)
        .ok()
        .map(i128::from)
}

/// The numeric field at `range` of `block`, as a `T`.
fn number<T: TryFrom<i128>>(
    block: &[u8; 512],
    range: std::ops::Range<usize>,
    field: &'static str,
) -> Result<T, BadHeader> {
    let v = parse_number(&block[range]).ok_or(BadHeader::Unreadable(field))?;
    T::try_from(v).map_err(|_| BadHeader::OutOfRange {
        field,
        value: v.to_string(),
    })
}

pub(super) fn checksum_ok(block: &[u8; 512]) -> bool {
    // A checksum is a sum of bytes: never negative.
    let Some(stored) = parse_number(&block[148..156]).filter(|&v| v >= 0) else {
        return false;
    };
    let unsigned: i128 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i128::from(b)
            }
        })
        .sum();
    let signed: i128 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i128::from(b as i8)
            }
        })
        .sum();
    stored == unsigned || stored == signed
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

/// The size field, before any pax override.
pub(super) fn size(block: &[u8; 512]) -> Result<DataSize, BadHeader> {
    let bytes: u64 = number(block, 124..136, "size")?;
    DataSize::new(bytes).ok_or_else(|| BadHeader::OutOfRange {
        field: "size",
        value: bytes.to_string(),
    })
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
    linkpath: Option<String>,
    size: Option<DataSize>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<i64>,
    uname: Option<String>,
    gname: Option<String>,
    /// `GNU.sparse.*` records.
    sparse: PaxSparse,
    /// Every record, in order.
    records: Vec<Record>,
}

/// The decimal number `text` of the pax record `field`.
fn pax_number<T>(text: &str, field: &'static str) -> Result<T, BadHeader>
where
    T: std::str::FromStr<Err = std::num::ParseIntError>,
{
    text.parse()
        .map_err(|e: std::num::ParseIntError| match e.kind() {
            IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => BadHeader::OutOfRange {
                field,
                value: text.to_string(),
            },
            _ => BadHeader::Unreadable(field),
        })
}

impl PaxOverrides {
    /// Takes in one record; a later record of the same key wins.
    fn set(&mut self, key: &str, raw: &[u8]) -> Result<(), BadHeader> {
        // Pax says UTF-8, but libarchive writes names it cannot convert
        // as raw bytes under `hdrcharset=BINARY`, and GNU tar writes what
        // the file system gave it: names are kept as bytes. Owner names
        // go to the host's user database as UTF-8.
        let value = name::from_bytes(raw).into_owned();
        match key {
            "path" => self.path = Some(value),
            "linkpath" => self.linkpath = Some(value),
            "size" => {
                let bytes: u64 = pax_number(&value, "pax size")?;
                self.size = Some(DataSize::new(bytes).ok_or(BadHeader::OutOfRange {
                    field: "pax size",
                    value,
                })?);
            }
            "uid" => self.uid = Some(pax_number(&value, "pax uid")?),
            "gid" => self.gid = Some(pax_number(&value, "pax gid")?),
            // Whole seconds; the fraction is dropped.
            "mtime" => {
                let seconds = value.split('.').next().unwrap_or_default();
                self.mtime = Some(pax_number(seconds, "pax mtime")?);
            }
            "uname" => self.uname = Some(String::from_utf8_lossy(raw).into_owned()),
            "gname" => self.gname = Some(String::from_utf8_lossy(raw).into_owned()),
            _ => self.sparse.set(key, &value),
        }
        self.records.retain(|(k, _)| k != key);
        self.records.push((key.to_string(), raw.to_vec()));
        Ok(())
    }
}

/// The records of a pax extended header. Records that do not parse end
/// the list, as they always have; a number that does not is an error.
fn parse_pax(data: &[u8]) -> Result<PaxOverrides, BadHeader> {
    let mut o = PaxOverrides::default();
    for (key, value) in pax::parse_records(data) {
        o.set(&key, &value)?;
    }
    Ok(o)
}

/// What the extension headers read since the last entry say about the
/// next one, and what the archive's global headers say about all that
/// follow.
#[derive(Debug, Default)]
pub(super) struct Extensions {
    pax: PaxOverrides,
    /// Records of `g` headers so far: GNU tar applies them to every later
    /// entry that does not set the key itself; bsdtar ignores them.
    global: PaxOverrides,
    long_name: Option<String>,
    long_link: Option<String>,
}

impl Extensions {
    /// Takes in the data of an extension header (or a global one).
    pub(super) fn add(&mut self, typeflag: u8, data: &[u8]) -> Result<(), BadHeader> {
        match typeflag {
            b'x' => self.pax = parse_pax(data)?,
            b'g' => {
                for (key, value) in pax::parse_records(data) {
                    self.global.set(&key, &value)?;
                }
            }
            b'L' => self.long_name = Some(field_name(data)),
            b'K' => self.long_link = Some(field_name(data)),
            _ => {}
        }
        Ok(())
    }

    /// The global records seen so far.
    pub(super) fn globals(&self) -> &[Record] {
        &self.global.records
    }
}

impl Header {
    /// A hard link's linked name as a path of the archive (tar writes it
    /// like the entry names: maybe with `./`), or a symlink's target as
    /// written.
    pub(super) fn link(&self) -> Option<String> {
        match self.typeflag {
            b'1' => self.linkname.as_deref().map(normalise),
            _ => self.linkname.clone(),
        }
    }
}

/// Parses an entry's header; `size` is its size field. Uses up the pax
/// records in `ext`, and the long name when it gives the path.
pub(super) fn parse_entry(
    block: &[u8; 512],
    size: DataSize,
    ext: &mut Extensions,
) -> Result<Header, BadHeader> {
    let typeflag = typeflag(block);
    let pax = std::mem::take(&mut ext.pax);
    let long_link = ext.long_link.take();
    let global = &ext.global;
    let size = pax.size.unwrap_or(size);
    // A pax sparse file's real name (0.1, 1.0); its header names a
    // placeholder, `GNUSparseFile.PID/NAME`.
    let raw_name = if let Some(p) = pax.sparse.name() {
        p.to_string()
    } else if let Some(p) = pax.path.clone() {
        p
    } else if let Some(l) = ext.long_name.take() {
        l
    } else {
        let name = field_name(&block[0..100]);
        let prefix = if &block[257..263] == b"ustar\0" {
            field_name(&block[345..500])
        } else {
            String::new()
        };
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        }
    };
    let linkname = pax
        .linkpath
        .clone()
        .or(long_link)
        .unwrap_or_else(|| field_name(&block[157..257]));
    let mode: u64 = number(block, 100..108, "mode")?;
    // An entry's own record, else a global one, else the header field: the
    // order GNU tar applies them in.
    let uid = pax.uid.or(global.uid);
    let gid = pax.gid.or(global.gid);
    let mtime = pax.mtime.or(global.mtime);
    let has_names = &block[257..262] == b"ustar";
    let name = |own: &Option<String>, global: &Option<String>, field| {
        own.clone().or_else(|| global.clone()).unwrap_or_else(|| {
            if has_names {
                field_str(field)
            } else {
                String::new()
            }
        })
    };
    let uname = name(&pax.uname, &global.uname, &block[265..297]);
    let gname = name(&pax.gname, &global.gname, &block[297..329]);
    let xattrs = pax::xattr_names(global.records.iter().chain(&pax.records));
    let sparse = pax.sparse.sparse();
    let kind = kind_of_named(typeflag, &raw_name);
    // A volume label (`tar -V`) names the archive, not a path in it.
    let path = if typeflag == b'V' {
        String::new()
    } else {
        normalise(&raw_name)
    };
    Ok(Header {
        path,
        dot_slash: raw_name.starts_with("./"),
        typeflag,
        linkname: matches!(typeflag, b'1' | b'2').then(|| linkname.clone()),
        records: pax.records,
        meta: FileMeta {
            kind,
            // Twelve bits: the cast keeps them all.
            mode: (mode & 0o7777) as u32,
            uid: uid.map_or_else(|| number(block, 108..116, "uid"), Ok)?,
            gid: gid.map_or_else(|| number(block, 116..124, "gid"), Ok)?,
            mtime: mtime.map_or_else(|| number(block, 136..148, "mtime"), Ok)?,
            size: sparse.as_ref().map_or(size.bytes(), |s| s.real_size),
            links: 1,
            target: (typeflag == b'2').then_some(linkname),
            xattrs,
            names: Some((uname, gname)),
            special: special_of(typeflag),
        },
        // Links and directories carry no data whatever the size says.
        data_size: if matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            DataSize::NONE
        } else {
            size
        },
        sparse,
        written: raw_name,
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
    /// A symlink's target or a hard link's linked name.
    pub(super) linkname: Option<String>,
    /// Pax records the entry carries besides those the encoder needs for
    /// long names and large ids: attributes, overrides of global records.
    pub(super) records: Vec<Record>,
    pub(super) content: &'a [u8],
}

/// The largest number an octal field of 8 bytes (uid, gid) holds.
const OCTAL_ID_MAX: u64 = 0o7777777;

/// A GNU long name (`L`) or long link (`K`) header and its data.
fn gnu_long(out: &mut Vec<u8>, typeflag: ::tar::EntryType, text: &str) {
    let mut long = name::to_bytes(text).into_owned();
    long.push(0);
    let link_meta = FileMeta {
        kind: EntryType::Other,
        mode: 0o644,
        size: long.len() as u64,
        ..Default::default()
    };
    out.extend_from_slice(&header_block(
        HeaderStyle::Gnu,
        "././@LongLink",
        "",
        typeflag,
        &link_meta,
        ("root", "root"),
        "",
    ));
    push_padded(out, &long);
}

/// The bytes of one new entry in `style`: extension headers if needed, the
/// header, the data and its padding.
pub(super) fn encode_entry(style: HeaderStyle, entry: &NewEntry) -> Zeroizing<Vec<u8>> {
    let name = &entry.name;
    let meta = &entry.meta;
    let linkname = entry.linkname.as_deref().unwrap_or("");
    let mut out = Zeroizing::new(Vec::new());
    let gnu = style == HeaderStyle::Gnu;

    let (prefix, short) = match style {
        HeaderStyle::Gnu if name.len() > 100 => {
            gnu_long(&mut out, ::tar::EntryType::GNULongName, name);
            ("", head(name, 100))
        }
        _ => ustar_split(name).unwrap_or(("", "")),
    };
    if gnu && linkname.len() > 100 {
        gnu_long(&mut out, ::tar::EntryType::GNULongLink, linkname);
    }
    let mut records = Vec::new();
    if !gnu {
        if short.is_empty() {
            records.extend(pax::encode_record(
                "path",
                &crate::plan::name::to_bytes(name),
            ));
        }
        if linkname.len() > 100 {
            records.extend(pax::encode_record(
                "linkpath",
                &crate::plan::name::to_bytes(linkname),
            ));
        }
        if meta.uid as u64 > OCTAL_ID_MAX {
            records.extend(pax::encode_record("uid", meta.uid.to_string().as_bytes()));
        }
        if meta.gid as u64 > OCTAL_ID_MAX {
            records.extend(pax::encode_record("gid", meta.gid.to_string().as_bytes()));
        }
    }
    for (key, value) in &entry.records {
        records.extend(pax::encode_record(key, value));
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
            mtime: meta.mtime,
            size: records.len() as u64,
            ..Default::default()
        };
        let pax_short = ustar_split(&pax_name).unwrap_or(("", entry.file_name));
        // A pax header is ustar whatever the archive's style: GNU tar and
        // bsdtar both read one in a GNU archive.
        out.extend_from_slice(&header_block(
            if gnu { HeaderStyle::Ustar } else { style },
            pax_short.1,
            pax_short.0,
            ::tar::EntryType::XHeader,
            &pax_meta,
            ("", ""),
            "",
        ));
        push_padded(&mut out, &records);
    }
    let short = if short.is_empty() {
        tail(name, 100)
    } else {
        short
    };
    out.extend_from_slice(&header_block(
        style,
        short,
        prefix,
        entry.typeflag,
        meta,
        (entry.uname, entry.gname),
        head(linkname, 100),
    ));
    push_padded(&mut out, entry.content);
    out
}

/// At most the first `n` bytes of `s`, cut at a character boundary.
fn head(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// At most the last `n` bytes of `s`, cut at a character boundary.
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = data.len().next_multiple_of(BLOCK as usize) - data.len();
    out.extend(std::iter::repeat_n(0u8, pad));
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
    (uname, gname): (&str, &str),
    linkname: &str,
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
    put_str(&mut h.as_old_mut().linkname, linkname);
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

/// A text field: a name goes back to the bytes it was read as
/// (`plan::name`).
fn put_str(field: &mut [u8], value: &str) {
    let bytes = name::to_bytes(value);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

#[cfg(test)]
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    pax::encode_record(key, value.as_bytes())
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
        // Base-256 negatives are two's complement over the whole field.
        assert_eq!(parse_number(&[0xff; 12]), Some(-1));
        assert_eq!(
            parse_number(&[0xc0, 0, 0, 0, 0, 0, 0, 1]),
            Some(-(1 << 62) + 1)
        );
        assert_eq!(parse_number(b"12x\0"), None);
    }

    /// A 512-byte header with `size` and `mtime` in its fields.
    fn block_with(size: &[u8; 12], mtime: &[u8; 12]) -> [u8; 512] {
        let mut h = ::tar::Header::new_gnu();
        h.set_path("etc/x").unwrap();
        h.set_mode(0o644);
        let mut block = *h.as_bytes();
        block[124..136].copy_from_slice(size);
        block[136..148].copy_from_slice(mtime);
        block
    }

    /// GNU base-256: the marker byte, then the number big-endian.
    fn base256(v: i128) -> [u8; 12] {
        let mut field: [u8; 12] = v.to_be_bytes()[4..].try_into().unwrap();
        field[0] |= 0x80;
        field
    }

    #[test]
    fn a_time_before_1970_in_base_256_reads() {
        // 1950-01-01, as GNU tar writes it.
        let mut field = [0xffu8; 12];
        field[8..].copy_from_slice(&(-631_152_000i32).to_be_bytes());
        let block = block_with(b"00000000000\0", &field);
        let entry = parse_entry(&block, DataSize::NONE, &mut Extensions::default()).unwrap();
        assert_eq!(entry.meta.mtime, -631_152_000);
        assert_eq!(base256(-631_152_000), field);
        // Past 64-bit seconds either way: out of range, not wrapped.
        for v in [i128::from(i64::MAX) + 1, i128::from(i64::MIN) - 1] {
            let block = block_with(b"00000000000\0", &base256(v));
            assert_eq!(
                parse_entry(&block, DataSize::NONE, &mut Extensions::default()).unwrap_err(),
                BadHeader::OutOfRange {
                    field: "mtime",
                    value: v.to_string()
                }
            );
        }
    }

    #[test]
    fn sizes_past_the_largest_file_offset_are_out_of_range() {
        let mtime = b"14524451600\0";
        let max = i128::from(i64::MAX);
        let size_of = |v: i128| size(&block_with(&base256(v), mtime));
        assert_eq!(size_of(max).unwrap().padded(), 1 << 63);
        assert_eq!(size_of(max).unwrap().padding(), 1);
        assert_eq!(size_of(513).unwrap().padded(), 1024);
        for v in [
            max + 1,
            i128::from(u64::MAX) - 510,
            i128::from(u64::MAX),
            -1,
        ] {
            assert_eq!(
                size_of(v).unwrap_err(),
                BadHeader::OutOfRange {
                    field: "size",
                    value: v.to_string()
                },
                "{v}"
            );
        }
    }

    #[test]
    fn pax_numbers_out_of_range_or_unreadable_are_refused() {
        let pax = |key: &str, value: &str| parse_pax(&pax_record(key, value));
        assert_eq!(
            pax("size", &i64::MAX.to_string()).unwrap().size,
            DataSize::new(i64::MAX as u64)
        );
        for (key, value, field) in [
            ("size", "18446744073709551615", "pax size"),
            ("size", "18446744073709551616", "pax size"),
            ("size", "9223372036854775808", "pax size"),
            ("uid", "4294967296", "pax uid"),
            ("gid", "99999999999999999999", "pax gid"),
            ("mtime", "99999999999999999999.5", "pax mtime"),
        ] {
            let want = BadHeader::OutOfRange {
                field,
                value: value.split('.').next().unwrap().to_string(),
            };
            assert_eq!(pax(key, value).unwrap_err(), want, "{key}={value}");
        }
        for (key, value) in [("size", "-1"), ("uid", "x"), ("mtime", "")] {
            assert!(
                matches!(pax(key, value), Err(BadHeader::Unreadable(_))),
                "{key}={value}"
            );
        }
        assert_eq!(
            pax("mtime", "-631152000.25").unwrap().mtime,
            Some(-631_152_000)
        );
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
        let o = parse_pax(&data).unwrap();
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
            ..Default::default()
        };
        for style in [HeaderStyle::Gnu, HeaderStyle::Ustar] {
            let h = header_block(
                style,
                "etc/x",
                "",
                ::tar::EntryType::Regular,
                &meta,
                ("a", "b"),
                "",
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
            ..Default::default()
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
                    linkname: None,
                    records: Vec::new(),
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
                    let len = size.bytes() as usize;
                    ext.add(typeflag(block), &bytes[at..at + len]).unwrap();
                    at += size.padded() as usize;
                    continue;
                }
                break parse_entry(block, size, &mut ext).unwrap();
            };
            assert_eq!(header.path, name[2..], "{style:?}");
            assert!(header.dot_slash);
            assert_eq!(header.data_size.bytes(), 5);
            assert_eq!(&bytes[at..at + 5], b"hello");
            assert_eq!(bytes.len(), at + 512);
            // GNU carries a large gid in base-256, pax in a record.
            let want = FileMeta {
                links: 1,
                names: Some(("azaion".into(), "azaion".into())),
                ..meta.clone()
            };
            assert_eq!(header.meta, want, "{style:?}");
        }
    }

    /// GNU tar's order: the entry's own record, a global record, the
    /// header field; names and attributes come through too, and a long
    /// symlink target travels in a record or a GNU long-link header.
    #[test]
    fn global_records_apply_under_the_entrys_own() {
        let mut ext = Extensions::default();
        let mut global = pax_record("uid", "0");
        global.extend(pax_record("uname", "root"));
        global.extend(pax_record("mtime", "5"));
        ext.add(b'g', &global).unwrap();
        let mut own = pax_record("uname", "");
        own.extend(pax_record("SCHILY.acl.access", "user::rw-"));
        ext.add(b'x', &own).unwrap();
        let target = format!("/{}", "t".repeat(150));
        for style in [HeaderStyle::Pax, HeaderStyle::Gnu] {
            let bytes = encode_entry(
                style,
                &NewEntry {
                    name: "etc/l".into(),
                    file_name: "l",
                    typeflag: ::tar::EntryType::Symlink,
                    meta: FileMeta {
                        mode: 0o777,
                        uid: 1001,
                        gid: 996,
                        ..Default::default()
                    },
                    uname: "u",
                    gname: "g",
                    linkname: Some(target.clone()),
                    records: Vec::new(),
                    content: &[],
                },
            );
            let mut e = Extensions::default();
            let mut at = 0;
            let header = loop {
                let block: &[u8; 512] = bytes[at..at + 512].try_into().unwrap();
                let size = size(block).unwrap();
                at += 512;
                if is_extension(typeflag(block)) {
                    e.add(typeflag(block), &bytes[at..at + size.bytes() as usize])
                        .unwrap();
                    at += size.padded() as usize;
                    continue;
                }
                break parse_entry(block, size, &mut e).unwrap();
            };
            assert_eq!(header.meta.target.as_deref(), Some(&*target), "{style:?}");
            assert_eq!(header.meta.kind, EntryType::Symlink);
        }
        let mut block = [0u8; 512];
        block.copy_from_slice(::tar::Header::new_ustar().as_bytes());
        block[108..115].copy_from_slice(b"0001751");
        let h = parse_entry(&block, DataSize::NONE, &mut ext).unwrap();
        assert_eq!((h.meta.uid, h.meta.mtime), (0, 5));
        assert_eq!(h.meta.names, Some((String::new(), String::new())));
        assert_eq!(h.meta.xattrs, ["system.posix_acl_access"]);
        // The entry's records are used up; the globals stay.
        let h = parse_entry(&block, DataSize::NONE, &mut ext).unwrap();
        assert_eq!(h.meta.names.unwrap().0, "root");
        assert!(h.meta.xattrs.is_empty());
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
