//! The edit list: what a plan changes in the archive, as byte ranges of
//! the decompressed input to copy and new bytes to insert.
//!
//! A planned file that exists is replaced in place (its first copy; later
//! copies are dropped); anything new is appended after the last entry. New
//! entries follow the archive's conventions: its header style, and a `./`
//! before every path if its entries have one.

use zeroize::Zeroizing;

use super::header::{self, HeaderStyle, NewEntry};
use super::scan::{Scan, WatchedEntry};
use super::{BLOCK, RECORD};
use crate::image::{EntryType, FileMeta};
use crate::plan::{OverlayError, Plan, PlanEntry, PlanKind};

/// One step of the rewrite: copy a range of the decompressed input, or
/// insert new bytes.
pub(super) enum Piece {
    Copy { start: u64, end: u64 },
    Insert(Zeroizing<Vec<u8>>),
}

impl Piece {
    /// Bytes it puts in the output.
    pub(super) fn len(&self) -> u64 {
        match self {
            Piece::Copy { start, end } => end - start,
            Piece::Insert(bytes) => bytes.len() as u64,
        }
    }
}

/// Turns the plan into the edit list, checking every rule on the way.
pub(super) fn edit_list(scan: &Scan, plan: &Plan) -> Result<Vec<Piece>, OverlayError> {
    plan.check_existing(|p| Ok::<_, OverlayError>(scan.existing(&p.relative())))?;
    let style = scan.style.unwrap_or(HeaderStyle::Ustar);
    let dot_slash = scan.dot_slash.unwrap_or(false);
    let encode = |entry| header::encode_entry(style, &new_entry(entry, dot_slash, plan.mtime));
    // (position in the input, bytes to insert there, input bytes to skip)
    let mut edits: Vec<(u64, Zeroizing<Vec<u8>>, u64)> = Vec::new();
    let mut appended: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
    for entry in &plan.entries {
        let rel = entry.path.relative();
        let existing: Vec<&WatchedEntry> = scan.watched.iter().filter(|f| f.path == rel).collect();
        // Plan::check_existing above refused anything in the way.
        match &entry.kind {
            PlanKind::Dir => {
                if existing.is_empty() && !scan.has_dir(&rel) {
                    appended.extend_from_slice(&encode(entry))
                }
            }
            PlanKind::File(_) => {
                let bytes = encode(entry);
                match existing.split_first() {
                    // Replace the first copy in place; drop any later ones
                    // so the archive never holds two.
                    Some((first, rest)) => {
                        edits.push((first.start, bytes, first.end - first.start));
                        for f in rest {
                            edits.push((f.start, Zeroizing::new(Vec::new()), f.end - f.start));
                        }
                    }
                    None => appended.extend_from_slice(&bytes),
                }
            }
            PlanKind::Symlink(_) | PlanKind::Absent { .. } => {
                return Err(entry.not_supported("a tar archive"))
            }
        }
    }
    edits.push((scan.end_of_entries, appended, 0));
    edits.sort_by_key(|e| e.0);

    let mut pieces = Vec::new();
    let mut pos = 0;
    let mut out_len = 0;
    for (at, bytes, skip) in edits {
        if at > pos {
            pieces.push(Piece::Copy {
                start: pos,
                end: at,
            });
            out_len += at - pos;
        }
        out_len += bytes.len() as u64;
        pieces.push(Piece::Insert(bytes));
        pos = at + skip;
    }
    // The end-of-archive marker: at least two zero blocks, padded to the
    // record size when the input was.
    let record = if scan.total_len % RECORD == 0 {
        RECORD
    } else {
        BLOCK
    };
    let mut trailer = 2 * BLOCK;
    trailer += (record - (out_len + trailer) % record) % record;
    pieces.push(Piece::Insert(Zeroizing::new(vec![0u8; trailer as usize])));
    Ok(pieces)
}

/// The first byte of the uncompressed archive that the edit list changes:
/// everything before it is the input's own bytes.
pub(super) fn first_change(pieces: &[Piece]) -> u64 {
    let mut pos = 0;
    for piece in pieces {
        match piece {
            Piece::Copy { start, end } if *start == pos => pos = *end,
            _ => return pos,
        }
    }
    pos
}

/// A planned entry as the archive will hold it.
fn new_entry(entry: &PlanEntry, dot_slash: bool, mtime: i64) -> NewEntry<'_> {
    let content = entry.content().unwrap_or(&[]);
    let is_dir = matches!(entry.kind, PlanKind::Dir);
    let mut name = if dot_slash {
        "./".to_string()
    } else {
        String::new()
    };
    name.push_str(&entry.path.relative());
    if is_dir {
        name.push('/');
    }
    NewEntry {
        name,
        file_name: entry.path.file_name(),
        typeflag: if is_dir {
            ::tar::EntryType::Directory
        } else {
            ::tar::EntryType::Regular
        },
        meta: FileMeta {
            kind: if is_dir {
                EntryType::Dir
            } else {
                EntryType::Regular
            },
            mode: entry.mode,
            uid: entry.owner.uid,
            gid: entry.owner.gid,
            mtime,
            size: content.len() as u64,
            ..Default::default()
        },
        uname: entry.owner.user_name.as_deref().unwrap_or(""),
        gname: entry.owner.group_name.as_deref().unwrap_or(""),
        content,
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::plan::ImagePath;

    fn watched(path: &str, kind: EntryType, start: u64, end: u64) -> WatchedEntry {
        WatchedEntry {
            path: path.into(),
            typeflag: if kind == EntryType::Dir { b'5' } else { b'0' },
            meta: FileMeta {
                kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
                ..Default::default()
            },
            start,
            end,
        }
    }

    fn file(path: &str, body: &[u8]) -> PlanEntry {
        PlanEntry {
            path: ImagePath::parse(path).unwrap(),
            kind: PlanKind::File(Zeroizing::new(body.to_vec())),
            mode: 0o600,
            owner: crate::owner::Owner::root(),
            xattrs: Vec::new(),
        }
    }

    /// An existing file is replaced where it was, later copies of it are
    /// dropped, a new file goes after the last entry, and the end marker
    /// pads the output to the input's record size.
    #[test]
    fn replaced_in_place_and_appended_at_the_end() {
        let mut scan = Scan::default();
        scan.style = Some(HeaderStyle::Gnu);
        scan.dot_slash = Some(true);
        scan.watched = vec![
            watched("etc", EntryType::Dir, 0, 512),
            watched("etc/x", EntryType::Regular, 512, 1536),
            watched("etc/x", EntryType::Regular, 2048, 3072),
        ];
        scan.end_of_entries = 4096;
        scan.total_len = 10240;
        let plan = Plan {
            entries: vec![file("/etc/x", b"new x"), file("/etc/y", b"new y")],
            mtime: 1_700_000_000,
        };
        let pieces = edit_list(&scan, &plan).unwrap();
        let shape: Vec<String> = pieces
            .iter()
            .map(|p| match p {
                Piece::Copy { start, end } => format!("copy {start}..{end}"),
                Piece::Insert(bytes) => format!("insert {}", bytes.len()),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "copy 0..512",
                "insert 1024",
                "copy 1536..2048",
                "insert 0",
                "copy 3072..4096",
                "insert 1024",
                "insert 6144",
            ]
        );
        assert_eq!(pieces.iter().map(Piece::len).sum::<u64>(), 10240);
        assert_eq!(first_change(&pieces), 512);
        let Piece::Insert(x) = &pieces[1] else {
            unreachable!()
        };
        assert!(x.starts_with(b"./etc/x\0"));
    }

    /// A file in the way of a planned directory is refused.
    #[test]
    fn a_file_where_a_directory_goes_is_refused() {
        let mut scan = Scan::default();
        scan.watched = vec![watched("etc", EntryType::Regular, 0, 512)];
        scan.end_of_entries = 512;
        scan.total_len = 1024;
        let plan = Plan {
            entries: vec![file("/etc/x", b"x")],
            mtime: 0,
        };
        assert!(edit_list(&scan, &plan).is_err());
    }

    /// New entries in each header style, as SHA-256 of their bytes: the
    /// digests were taken from the encoder before `tar::Header`, which a test
    /// compared field by field with the new one before it was removed.
    #[test]
    fn new_entries_keep_their_bytes() {
        let long_dir = format!("/{}", ["d"; 70].join("/"));
        let cases: [(HeaderStyle, bool, String, bool, u32, &str); 8] = [
            (
                HeaderStyle::Ustar,
                false,
                "/etc/azaion/device.conf".into(),
                false,
                1001,
                "e860c0f6d37b57ed303e7925646f9e73d66daf75dfac210b2e4b4c26e024b938",
            ),
            (
                HeaderStyle::Ustar,
                true,
                "/etc/azaion".into(),
                true,
                0,
                "e8d8cbf2965e46d7cde8fd3a1d64e8138c5b8785018d41111f0f755ebfb820ef",
            ),
            (
                HeaderStyle::Pax,
                true,
                format!("{long_dir}/{}", "f".repeat(120)),
                false,
                0,
                "f5f357eaec7267d9ebfb3951ffdc7fe2563e0f0ac65827c66ca0984bf6eed8ab",
            ),
            (
                HeaderStyle::Pax,
                false,
                "/etc/x".into(),
                false,
                4_000_000_000,
                "fee7883180c6a68104b19dc1daa9b53b1f38d545ba8545fa79b0ac0d7b358fa9",
            ),
            (
                HeaderStyle::Ustar,
                true,
                format!("{long_dir}/device.conf"),
                false,
                7,
                "a49f5bbf8d4b1341b36f7a43c1c4243a9c8a1fdff97238d5dfbdc9ab33fbaf94",
            ),
            (
                HeaderStyle::Gnu,
                true,
                "/etc/azaion/device.conf".into(),
                false,
                1001,
                "802e60fe3115eb9813debdfdb29eae85eaf8f7abd4c3fcfcf9242528082dccd9",
            ),
            (
                HeaderStyle::Gnu,
                false,
                format!("{long_dir}/{}", "f".repeat(120)),
                true,
                0,
                "6046a50964041454eb7d1ece4909d896a8aba846e169a1b13e85d28e30fff202",
            ),
            (
                HeaderStyle::Gnu,
                false,
                "/etc/x".into(),
                false,
                4_000_000_000,
                "a57d5577a860ae2337f5b95f5fa16457d3c51520d7b4fae879d4ead38987f367",
            ),
        ];
        for (style, dot_slash, path, dir, id, digest) in cases {
            let entry = PlanEntry {
                path: ImagePath::parse(&path).unwrap(),
                kind: if dir {
                    PlanKind::Dir
                } else {
                    PlanKind::File(Zeroizing::new(b"serial = AZJN-0042\n".to_vec()))
                },
                mode: if dir { 0o755 } else { 0o600 },
                owner: crate::owner::Owner {
                    uid: id,
                    gid: id,
                    user_name: (id != 0).then(|| "azaion".into()),
                    group_name: Some("azaion".into()),
                },
                xattrs: Vec::new(),
            };
            let bytes = header::encode_entry(style, &new_entry(&entry, dot_slash, 1_700_000_000));
            let got: String = Sha256::digest(&bytes[..])
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, digest, "{style:?} {path}");
        }
    }
}
