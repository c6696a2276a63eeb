//! `imprint ls` and `cat` on a tar archive: one pass over the headers to
//! list, and for `cat` a second pass that streams the chosen entry's data.
//! As when extracting, the last entry for a path wins.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::entries::{Entries, Entry};
use super::header;
use super::stream::Stream;
use super::{TarError, TarReader};
use crate::compress::Compression;
use crate::image::{EntryType, FileMeta, ImageError, Inspect, Listed};
use crate::plan::ImagePath;

/// Walks the entries of the archive, calling `visit` with each and the
/// stream positioned at its data (which `visit` may read) until it says
/// to stop.
fn walk(
    path: &Path,
    codec: Compression,
    mut visit: impl FnMut(&Entry<()>, &mut Stream) -> Result<Flow, TarError>,
) -> Result<(), TarError> {
    let file = File::open(path).map_err(|source| TarError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let stream = Stream::new(codec.decoder(file), 0, path, codec);
    let mut entries = Entries::new(stream, path, || ());
    while let Some(entry) = entries.next_entry()? {
        if let Flow::Stop = visit(&entry, entries.stream())? {
            break;
        }
    }
    Ok(())
}

/// What to do after an entry.
enum Flow {
    Next,
    Stop,
}

/// Whether `path` lies at or below `dir` ("" is the root).
fn below(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

impl Inspect for TarReader {
    fn list(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
    ) -> Result<Option<Vec<Listed>>, ImageError> {
        let dir = path.map(ImagePath::relative).unwrap_or_default();
        let mut found: BTreeMap<String, Listed> = BTreeMap::new();
        // Directories only implied by the names below them.
        let mut implied: BTreeSet<String> = BTreeSet::new();
        walk(&self.path, self.codec, |e, _| {
            let e = &e.header;
            if e.path.is_empty() || !below(&e.path, &dir) {
                return Ok(Flow::Next);
            }
            let mut p = e.path.as_str();
            while let Some(slash) = p.rfind('/') {
                p = &p[..slash];
                if !below(p, &dir) || !implied.insert(p.to_string()) {
                    break;
                }
            }
            found.insert(
                e.path.clone(),
                Listed {
                    path: e.path.clone(),
                    meta: e.meta.clone(),
                    hard_link: (e.typeflag == b'1').then(|| e.link().unwrap_or_default()),
                },
            );
            Ok(Flow::Next)
        })?;
        Ok(select(found, implied, &dir, recursive))
    }

    fn cat(
        &mut self,
        path: &ImagePath,
        out: &mut dyn Write,
    ) -> Result<Option<FileMeta>, ImageError> {
        let wanted = path.relative();
        // First pass: which entry extraction would leave at the path, and
        // for a hard link the entry before it that holds the data.
        let mut last: Option<(usize, Entry<()>)> = None;
        let mut regular: BTreeMap<String, (usize, u8, u64, u64)> = BTreeMap::new();
        let mut index = 0usize;
        walk(&self.path, self.codec, |e, _| {
            index += 1;
            let h = &e.header;
            if h.path == wanted {
                last = Some((
                    index,
                    Entry {
                        header: h.clone(),
                        ..*e
                    },
                ));
            }
            if header::kind_of(h.typeflag) == EntryType::Regular {
                regular.insert(
                    h.path.clone(),
                    (index, h.typeflag, e.data_at, h.data_size.bytes()),
                );
            }
            Ok(Flow::Next)
        })?;
        let Some((at_index, entry)) = last else {
            return Ok(None);
        };
        let h = &entry.header;
        let mut meta = h.meta.clone();
        let (typeflag, data_at, data_size) = if h.typeflag == b'1' {
            match regular.get(&h.link().unwrap_or_default()) {
                Some(&(i, t, at, size)) if i < at_index => {
                    meta.kind = EntryType::Regular;
                    meta.size = size;
                    (t, at, size)
                }
                _ => {
                    return Err(ImageError::Unreadable {
                        path: path.to_string(),
                        what: "a hard link to an entry not before it",
                    })
                }
            }
        } else if meta.kind == EntryType::Regular {
            (h.typeflag, entry.data_at, h.data_size.bytes())
        } else {
            return Ok(Some(meta));
        };
        if typeflag == b'S' {
            return Err(ImageError::Unreadable {
                path: path.to_string(),
                what: "a GNU sparse file",
            });
        }
        // Second pass: stream the data.
        let mut result = Ok(());
        walk(&self.path, self.codec, |e, s| {
            if e.data_at != data_at {
                return Ok(Flow::Next);
            }
            let mut left = data_size;
            let mut buf = vec![0u8; (1 << 20).min(data_size.max(1)) as usize];
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.read_exact(&mut buf[..n])?;
                if let Err(e) = out.write_all(&buf[..n]) {
                    result = Err(ImageError::Output(e));
                    break;
                }
                left -= n as u64;
            }
            Ok(Flow::Stop)
        })?;
        result?;
        Ok(Some(meta))
    }
}

/// The entries `ls` shows for `dir` from all entries at or below it.
fn select(
    mut found: BTreeMap<String, Listed>,
    implied: BTreeSet<String>,
    dir: &str,
    recursive: bool,
) -> Option<Vec<Listed>> {
    for p in implied {
        found.entry(p.clone()).or_insert_with(|| Listed {
            path: p,
            meta: FileMeta {
                kind: EntryType::Dir,
                mode: 0o755,
                ..Default::default()
            },
            hard_link: None,
        });
    }
    if !dir.is_empty() {
        let this = found.get(dir)?;
        if this.meta.kind != EntryType::Dir {
            return Some(vec![this.clone()]);
        }
    }
    let depth = |p: &str| p.split('/').count();
    let base = if dir.is_empty() { 0 } else { depth(dir) };
    Some(
        found
            .into_values()
            .filter(|l| l.path != dir && (recursive || depth(&l.path) == base + 1))
            .collect(),
    )
}
