//! The edit list: what a plan changes in the archive, as byte ranges of
//! the decompressed input to copy and new bytes to insert.
//!
//! A planned file or symlink that exists is replaced in place (its first
//! copy; later copies are dropped); a removal drops the entries; anything
//! new is appended after the last entry, followed by the entries of the
//! existing directories it went into, again, so that GNU tar (which sets a
//! directory's times once it has left it) leaves their mtimes as the
//! archive says. New entries follow the archive's conventions: its header
//! style, a `./` before every path if its entries have one, owner names
//! only if its entries carry names, and explicit records wherever the
//! archive's global pax header would give them another owner or time.
//!
//! A hard-link entry naming a file the plan replaces or removes would give
//! its name the new file (or none): the first such entry becomes a regular
//! entry holding the old file, and later ones link to it.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::header::{self, HeaderStyle, NewEntry};
use super::pax::{self, Record};
use super::scan::{Scan, WatchedEntry};
use super::{BLOCK, MAX_DB_SIZE, RECORD};
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

/// Why the plan cannot become an edit list (yet).
#[derive(Debug)]
pub(super) enum EditError {
    Plan(OverlayError),
    /// The data of these files is needed (the old file behind a hard link
    /// that must become a file of its own): scan again, keeping it.
    NeedData(Vec<String>),
    /// A directory to remove holds entries, and the plan did not say
    /// `recursive`.
    NotEmpty {
        path: String,
        inside: String,
        count: usize,
    },
    /// A hard link names a file kept in a form imprint cannot copy (a GNU
    /// sparse file, a device).
    CannotUnlink {
        link: String,
        target: String,
        what: &'static str,
    },
}

impl From<OverlayError> for EditError {
    fn from(e: OverlayError) -> Self {
        EditError::Plan(e)
    }
}

/// The conventions new entries follow.
struct Style<'a> {
    scan: &'a Scan,
    header: HeaderStyle,
    dot_slash: bool,
}

impl Style<'_> {
    /// A path as the archive writes it.
    fn name(&self, rel: &str, dir: bool) -> String {
        let mut name = if self.dot_slash {
            "./".to_string()
        } else {
            String::new()
        };
        name.push_str(rel);
        if dir {
            name.push('/');
        }
        name
    }

    /// Records that keep the archive's global pax header from giving a new
    /// entry another owner or time under GNU tar (bsdtar ignores global
    /// headers; the entry's own fields say the same).
    fn global_overrides(&self, meta: &FileMeta, uname: &str, gname: &str) -> Vec<Record> {
        let values = [
            ("uid", meta.uid.to_string()),
            ("gid", meta.gid.to_string()),
            ("uname", uname.to_string()),
            ("gname", gname.to_string()),
            ("mtime", meta.mtime.to_string()),
        ];
        values
            .into_iter()
            .filter(|(key, _)| self.scan.globals.iter().any(|(k, _)| k == key))
            .map(|(key, value)| (key.to_string(), value.into_bytes()))
            .collect()
    }

    /// Owner names, if the archive's entries carry names at all.
    fn names<'n>(&self, user: Option<&'n str>, group: Option<&'n str>) -> (&'n str, &'n str) {
        if self.scan.names_seen {
            (user.unwrap_or(""), group.unwrap_or(""))
        } else {
            ("", "")
        }
    }

    fn encode(&self, mut entry: NewEntry) -> Zeroizing<Vec<u8>> {
        let overrides = self.global_overrides(&entry.meta, entry.uname, entry.gname);
        entry
            .records
            .retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
        entry.records.extend(overrides);
        header::encode_entry(self.header, &entry)
    }

    /// A planned entry, replacing `old` (the entry extraction would leave
    /// at its path) if there is one.
    fn planned(
        &self,
        entry: &PlanEntry,
        mtime: i64,
        old: Option<&WatchedEntry>,
    ) -> Zeroizing<Vec<u8>> {
        let (uname, gname) = self.names(
            entry.owner.user_name.as_deref(),
            entry.owner.group_name.as_deref(),
        );
        let mut new = new_entry(entry, self.dot_slash, mtime);
        new.uname = uname;
        new.gname = gname;
        let set: Vec<String> = entry.xattrs.iter().map(|x| x.name.clone()).collect();
        new.records = entry
            .xattrs
            .iter()
            .map(|x| (format!("SCHILY.xattr.{}", x.name), x.value.clone()))
            .collect();
        if let Some(old) = old {
            new.records.extend(pax::kept_records(&old.records, &set));
        }
        self.encode(new)
    }
}

/// Turns the plan into the edit list, checking every rule on the way.
pub(super) fn edit_list(scan: &Scan, plan: &Plan) -> Result<Vec<Piece>, EditError> {
    plan.check_existing(|p| Ok::<_, OverlayError>(scan.existing(&p.relative())))?;
    let style = Style {
        scan,
        header: scan.style.unwrap_or(HeaderStyle::Ustar),
        dot_slash: scan.dot_slash.unwrap_or(false),
    };
    // Input entries replaced or dropped, by start: (bytes instead, end).
    let mut edits: BTreeMap<u64, (Zeroizing<Vec<u8>>, u64)> = BTreeMap::new();
    let mut appended: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
    let mut new_paths: Vec<String> = Vec::new();
    let mut created_dirs: Vec<String> = Vec::new();
    for entry in &plan.entries {
        let rel = entry.path.relative();
        let existing: Vec<&WatchedEntry> = scan.watched.iter().filter(|f| f.path == rel).collect();
        // Plan::check_existing above refused anything in the way.
        match &entry.kind {
            PlanKind::Dir => {
                if existing.is_empty() && !scan.has_dir(&rel) {
                    appended.extend_from_slice(&style.planned(entry, plan.mtime, None));
                    new_paths.push(rel.clone());
                    created_dirs.push(rel);
                }
            }
            PlanKind::File(_) | PlanKind::Symlink(_) => {
                let bytes = style.planned(entry, plan.mtime, existing.last().copied());
                match existing.split_first() {
                    // Replace the first copy in place; drop any later ones
                    // so the archive never holds two.
                    Some((first, rest)) => {
                        edits.insert(first.start, (bytes, first.end));
                        for f in rest {
                            edits.insert(f.start, (Zeroizing::new(Vec::new()), f.end));
                        }
                    }
                    None => {
                        appended.extend_from_slice(&bytes);
                        new_paths.push(rel);
                    }
                }
            }
            PlanKind::Absent { recursive } => {
                let prefix = format!("{rel}/");
                let inside: Vec<&WatchedEntry> = scan
                    .watched
                    .iter()
                    .filter(|f| f.path.starts_with(&prefix))
                    .collect();
                if let Some(first) = inside.first().filter(|_| !recursive) {
                    return Err(EditError::NotEmpty {
                        path: entry.path.to_string(),
                        inside: format!("/{}", first.path),
                        count: inside.len(),
                    });
                }
                for f in existing.iter().chain(&inside) {
                    edits.insert(f.start, (Zeroizing::new(Vec::new()), f.end));
                }
            }
        }
    }
    unlink_dependents(&style, &mut edits)?;
    // The existing directories new entries went into, again (see above).
    let mut reemitted: Vec<&str> = Vec::new();
    for path in &new_paths {
        let Some((parent, _)) = path.rsplit_once('/') else {
            continue;
        };
        if created_dirs.iter().any(|d| d == parent) || reemitted.contains(&parent) {
            continue;
        }
        let dir = scan.watched.iter().rev().find(|f| f.path == parent);
        if let Some(dir) =
            dir.filter(|d| d.meta.kind == EntryType::Dir && !edits.contains_key(&d.start))
        {
            appended.extend_from_slice(&dir.raw_header);
            reemitted.push(parent);
        }
    }

    let mut pieces = Vec::new();
    let mut pos = 0;
    let mut out_len = 0;
    let all = edits.into_iter().chain(std::iter::once((
        scan.end_of_entries,
        (appended, scan.end_of_entries),
    )));
    for (at, (bytes, end)) in all {
        if at > pos {
            pieces.push(Piece::Copy {
                start: pos,
                end: at,
            });
            out_len += at - pos;
        }
        out_len += bytes.len() as u64;
        pieces.push(Piece::Insert(bytes));
        pos = end.max(pos);
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

/// Hard-link entries that name a replaced or dropped entry: the first
/// becomes a regular entry holding the old file, later ones link to it.
fn unlink_dependents(
    style: &Style,
    edits: &mut BTreeMap<u64, (Zeroizing<Vec<u8>>, u64)>,
) -> Result<(), EditError> {
    let scan = style.scan;
    let mut links: Vec<&WatchedEntry> = scan
        .links
        .iter()
        .chain(scan.watched.iter().filter(|w| w.is_hard_link()))
        .collect();
    links.sort_by_key(|l| l.start);
    links.dedup_by_key(|l| l.start);
    // Old file path -> the name that now holds it.
    let mut moved: Vec<(String, String)> = Vec::new();
    let mut need = Vec::new();
    for link in links {
        if edits.contains_key(&link.start) {
            continue;
        }
        let Some(target) = link.linkname.as_deref() else {
            continue;
        };
        let named = scan.entry_before(target, link.start);
        let Some(named) = named.filter(|n| edits.contains_key(&n.start)) else {
            continue;
        };
        let name = style.name(&link.path, false);
        if let Some((_, holder)) = moved.iter().find(|(old, _)| old == target) {
            let meta = FileMeta {
                size: 0,
                ..link.meta.clone()
            };
            let (uname, gname) = names_of(&meta);
            let bytes = style.encode(NewEntry {
                name,
                file_name: file_name(&link.path),
                typeflag: ::tar::EntryType::Link,
                meta: meta.clone(),
                uname,
                gname,
                linkname: Some(style.name(holder, false)),
                records: Vec::new(),
                content: &[],
            });
            edits.insert(link.start, (bytes, link.end));
            continue;
        }
        // The file behind the name: through a hard link the name itself
        // may be.
        let mut file = named;
        for _ in 0..8 {
            if !file.is_hard_link() {
                break;
            }
            let Some(next) = file.linkname.as_deref() else {
                break;
            };
            match scan.entry_before(next, file.start) {
                Some(found) => file = found,
                None => {
                    need.push(next.to_string());
                    break;
                }
            }
        }
        if file.is_hard_link() {
            continue;
        }
        let regular = matches!(file.typeflag, b'0' | b'\0' | b'7');
        if !regular || file.meta.size > MAX_DB_SIZE {
            return Err(EditError::CannotUnlink {
                link: format!("/{}", link.path),
                target: format!("/{}", file.path),
                what: if regular {
                    "file of more than 16 MiB"
                } else {
                    header::describe(file.typeflag)
                },
            });
        }
        let Some(data) = scan.captured(&file.path) else {
            need.push(file.path.clone());
            continue;
        };
        let data = Zeroizing::new(data);
        let meta = FileMeta {
            kind: EntryType::Regular,
            size: data.len() as u64,
            ..file.meta.clone()
        };
        let (uname, gname) = names_of(&meta);
        let records = file
            .records
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "path" | "linkpath" | "size" | "uid" | "gid")
                    && !k.starts_with("GNU.sparse.")
            })
            .cloned()
            .collect();
        let bytes = style.encode(NewEntry {
            name,
            file_name: file_name(&link.path),
            typeflag: ::tar::EntryType::Regular,
            meta: meta.clone(),
            uname,
            gname,
            linkname: None,
            records,
            content: &data,
        });
        edits.insert(link.start, (bytes, link.end));
        moved.push((target.to_string(), link.path.clone()));
    }
    if need.is_empty() {
        Ok(())
    } else {
        need.sort();
        need.dedup();
        Err(EditError::NeedData(need))
    }
}

fn names_of(meta: &FileMeta) -> (&str, &str) {
    meta.names
        .as_ref()
        .map_or(("", ""), |(u, g)| (u.as_str(), g.as_str()))
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
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
    let (typeflag, kind, linkname) = match &entry.kind {
        PlanKind::Dir => (::tar::EntryType::Directory, EntryType::Dir, None),
        PlanKind::Symlink(target) => (
            ::tar::EntryType::Symlink,
            EntryType::Symlink,
            Some(target.clone()),
        ),
        _ => (::tar::EntryType::Regular, EntryType::Regular, None),
    };
    let mut name = if dot_slash {
        "./".to_string()
    } else {
        String::new()
    };
    name.push_str(&entry.path.relative());
    if kind == EntryType::Dir {
        name.push('/');
    }
    NewEntry {
        name,
        file_name: entry.path.file_name(),
        typeflag,
        meta: FileMeta {
            kind,
            mode: entry.mode,
            uid: entry.owner.uid,
            gid: entry.owner.gid,
            mtime,
            size: content.len() as u64,
            ..Default::default()
        },
        uname: entry.owner.user_name.as_deref().unwrap_or(""),
        gname: entry.owner.group_name.as_deref().unwrap_or(""),
        linkname,
        records: Vec::new(),
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
            linkname: None,
            records: Vec::new(),
            raw_header: Vec::new(),
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
