//! The archive's members in order, each with what extracting it makes
//! (kind, permissions, owner, time, attributes, device numbers) and its
//! data as extents: what a new filesystem is populated from
//! (`image::ext4::populate`, for `provision --luks-encrypt` from a
//! tarball). One pass over the decompressed stream; only the member at
//! hand is held, its data streamed.

use std::path::Path;

use base64::Engine;

use super::entries;
use super::header::{self, Header};
use super::pax;
use super::sparse;
use super::stream::Stream;
use super::TarError;
use crate::compress::Compression;
use crate::image::{EntryType, ImageError};
use crate::plan::Xattr;

/// What a member makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemberKind {
    Dir,
    File,
    Symlink(String),
    /// Another name for the file extraction made at this path of the
    /// archive (normalised, as member paths are).
    HardLink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One member of the archive.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Normalised path: no leading `./` or `/`, no trailing `/`; empty for
    /// the archive's root (`./`).
    pub(crate) path: String,
    pub(crate) kind: MemberKind,
    /// Permission bits (the 12 low bits of the mode field).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    /// The real size of a file (a sparse one's whole length).
    pub(crate) size: u64,
    /// Extended attributes (`SCHILY.xattr.*`, or bsdtar's
    /// `LIBARCHIVE.xattr.*` where no SCHILY twin exists), sorted by name.
    pub(crate) xattrs: Vec<Xattr>,
    /// POSIX ACLs (`SCHILY.acl.*`), which the archive keeps as text.
    pub(crate) acl: bool,
}

/// Takes a stretch of a file's data: its offset in the file and bytes.
pub(crate) type PutExtent<'p> = dyn FnMut(u64, &[u8]) -> Result<(), ImageError> + 'p;

/// A member's data, read from the archive as extents.
pub(crate) struct Data<'s, 'a> {
    stream: &'s mut Stream<'a>,
    header: &'s Header,
    name: &'s str,
}

impl Data<'_, '_> {
    /// Calls `put(offset, bytes)` for each stretch of data in order; the
    /// rest of the file (a sparse file's holes, up to its size) reads as
    /// zeros. Chunks are at most 1 MiB.
    pub(crate) fn extents(&mut self, put: &mut PutExtent) -> Result<(), ImageError> {
        let stored = self.header.data_size.bytes();
        match &self.header.sparse {
            Some(map) => sparse::extents(map, stored, self.stream, self.name, put),
            None => copy_extent(self.stream, 0, stored, put),
        }
    }
}

/// Streams `len` bytes of `s` to `put` as the file's bytes at `offset`.
pub(super) fn copy_extent(
    s: &mut Stream,
    offset: u64,
    len: u64,
    put: &mut PutExtent,
) -> Result<(), ImageError> {
    let mut buf = vec![0u8; len.clamp(1, 1 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        s.read_exact(&mut buf[..n])?;
        put(offset + done, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// Why a member cannot be turned into a [`Member`].
fn unsupported(path: &Path, member: &str, what: String) -> ImageError {
    TarError::NotExtractable {
        path: path.to_path_buf(),
        member: member.to_string(),
        what,
    }
    .into()
}

/// Walks the archive `path` under `codec`, calling `visit` with each
/// member and its data (which `visit` may leave unread). Volume labels
/// are skipped; a member of a kind no filesystem holds (a GNU multi-volume
/// continuation) is refused.
pub(crate) fn for_each(
    path: &Path,
    codec: Compression,
    visit: &mut dyn FnMut(&Member, &mut Data) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let mut entries = entries::open(path, codec)?;
    while let Some(entry) = entries.next_entry()? {
        let h = &entry.header;
        if h.typeflag == b'V' {
            continue;
        }
        // The header block itself ends the raw headers (no GNU sparse
        // extension blocks follow a device's header).
        let raw = entries.raw_header();
        let block = &raw[raw.len() - 512..];
        let device = || (octal(&block[329..337]), octal(&block[337..345]));
        let kind = match h.typeflag {
            b'5' => MemberKind::Dir,
            b'2' => MemberKind::Symlink(h.linkname.clone().unwrap_or_default()),
            b'1' => MemberKind::HardLink(h.link().unwrap_or_default()),
            b'3' | b'4' => {
                let (Some(major), Some(minor)) = device() else {
                    return Err(unsupported(
                        path,
                        &h.path,
                        "a device with unreadable numbers".into(),
                    ));
                };
                if h.typeflag == b'3' {
                    MemberKind::CharDevice { major, minor }
                } else {
                    MemberKind::BlockDevice { major, minor }
                }
            }
            b'6' => MemberKind::Fifo,
            _ if header::kind_of(h.typeflag) == EntryType::Regular => MemberKind::File,
            _ if header::kind_of(h.typeflag) == EntryType::Dir => MemberKind::Dir,
            other => {
                return Err(unsupported(
                    path,
                    &h.path,
                    format!(
                        "a {} (type '{}'), which no filesystem holds",
                        header::describe(other),
                        other as char
                    ),
                ))
            }
        };
        let globals = entries.globals().to_vec();
        let (xattrs, acl) = attributes(globals.iter().chain(&h.records));
        let member = Member {
            path: h.path.clone(),
            kind,
            mode: h.meta.mode,
            uid: h.meta.uid,
            gid: h.meta.gid,
            mtime: h.meta.mtime,
            size: h.meta.size,
            xattrs,
            acl,
        };
        let name = format!("{}: {}", path.display(), h.path);
        let mut data = Data {
            stream: entries.stream(),
            header: &entry.header,
            name: &name,
        };
        visit(&member, &mut data)?;
    }
    Ok(())
}

/// The extended attributes the records carry (the last record of a name
/// wins, as extraction sets them in order; a SCHILY value before a
/// LIBARCHIVE one of the same name) and whether any carries an ACL.
fn attributes<'r>(records: impl Iterator<Item = &'r pax::Record>) -> (Vec<Xattr>, bool) {
    let mut schily: Vec<Xattr> = Vec::new();
    let mut libarchive: Vec<Xattr> = Vec::new();
    let mut acl = false;
    for (key, value) in records {
        if key.starts_with("SCHILY.acl.") {
            acl = true;
            continue;
        }
        let Some(name) = pax::xattr_name(key) else {
            continue;
        };
        let (list, value) = if key.starts_with("SCHILY.xattr.") {
            (&mut schily, value.clone())
        } else {
            // bsdtar: base64 without padding.
            let text: Vec<u8> = value.iter().copied().filter(|b| *b != b'=').collect();
            match base64::engine::general_purpose::STANDARD_NO_PAD.decode(text) {
                Ok(v) => (&mut libarchive, v),
                Err(_) => continue,
            }
        };
        list.retain(|x| x.name != name);
        list.push(Xattr { name, value });
    }
    for x in libarchive {
        if !schily.iter().any(|s| s.name == x.name) {
            schily.push(x);
        }
    }
    schily.sort_by(|a, b| a.name.cmp(&b.name));
    (schily, acl)
}

/// A device number field (octal or GNU base-256, as every numeric field
/// of the header), as the u32 a filesystem stores.
fn octal(field: &[u8]) -> Option<u32> {
    u32::try_from(header::parse_number(field)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_read_octal_and_base_256() {
        assert_eq!(octal(b"0000004\0"), Some(4));
        assert_eq!(octal(b"0000173 "), Some(123));
        assert_eq!(octal(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(octal(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(octal(b"99\0\0\0\0\0\0"), None);
    }

    #[test]
    fn attributes_prefer_schily_and_flag_acls() {
        let records: Vec<pax::Record> = vec![
            ("LIBARCHIVE.xattr.user.a".into(), b"eHl6".to_vec()),
            ("SCHILY.xattr.security.capability".into(), vec![1, 0, 0, 2]),
            (
                "LIBARCHIVE.xattr.security.capability".into(),
                b"AAAA".to_vec(),
            ),
        ];
        let (x, acl) = attributes(records.iter());
        assert!(!acl);
        assert_eq!(x.len(), 2);
        assert_eq!(x[0].name, "security.capability");
        assert_eq!(x[0].value, vec![1, 0, 0, 2]);
        assert_eq!(
            (x[1].name.as_str(), x[1].value.as_slice()),
            ("user.a", &b"xyz"[..])
        );
        let acl_rec: Vec<pax::Record> = vec![("SCHILY.acl.access".into(), b"user::rw-".to_vec())];
        assert!(attributes(acl_rec.iter()).1);
    }
}
