//! `imprint ls` and `cat` on a tar archive: one pass over the headers to
//! list, and for `cat` a second pass that streams the chosen entry's data.
//! As when extracting, the last entry for a path wins.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use super::entries::{self, Entry};
use super::header;
use super::sparse;
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
    let mut entries = entries::open(path, codec)?;
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
        let mut found: BTreeMap<String, Listed> = BTreeMap::new();
        // As when extracting, the last entry for a path wins.
        let any = self.list_each(path, recursive, &mut |l| {
            found.insert(l.path.clone(), l.clone());
            Ok(())
        })?;
        Ok(any.then(|| found.into_values().collect()))
    }

    fn list_each(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
        visit: &mut dyn FnMut(&Listed) -> Result<(), ImageError>,
    ) -> Result<bool, ImageError> {
        let dir = path.map(ImagePath::relative).unwrap_or_default();
        let base = if dir.is_empty() { 0 } else { depth(&dir) };
        // Only directories are remembered (to show one only implied by
        // the names below it once): memory grows with the directories
        // listed, never with the files.
        let mut dirs_shown: HashSet<String> = HashSet::new();
        let mut this: Option<Listed> = None;
        let mut below_any = false;
        let mut failed = None;
        walk(&self.path, self.codec, |e, _| {
            let h = &e.header;
            if h.path.is_empty() || !below(&h.path, &dir) {
                return Ok(Flow::Next);
            }
            let listed = Listed {
                path: h.path.clone(),
                meta: h.meta.clone(),
                hard_link: (h.typeflag == b'1').then(|| h.link().unwrap_or_default()),
            };
            if h.path == dir {
                this = Some(listed);
                return Ok(Flow::Next);
            }
            below_any = true;
            // The directories between `dir` and the entry, outermost first.
            let parts: Vec<&str> = h.path.split('/').collect();
            let last = if recursive {
                parts.len() - 1
            } else {
                (base + 1).min(parts.len() - 1)
            };
            for d in base + 1..=last {
                let implied = parts[..d].join("/");
                if dirs_shown.insert(implied.clone()) {
                    let l = Listed {
                        path: implied,
                        meta: FileMeta {
                            kind: EntryType::Dir,
                            mode: 0o755,
                            ..Default::default()
                        },
                        hard_link: None,
                    };
                    if let Err(err) = visit(&l) {
                        failed = Some(err);
                        return Ok(Flow::Stop);
                    }
                }
            }
            if !recursive && parts.len() != base + 1 {
                return Ok(Flow::Next);
            }
            if listed.meta.kind == EntryType::Dir && !dirs_shown.insert(listed.path.clone()) {
                return Ok(Flow::Next);
            }
            if let Err(err) = visit(&listed) {
                failed = Some(err);
                return Ok(Flow::Stop);
            }
            Ok(Flow::Next)
        })?;
        if let Some(err) = failed {
            return Err(err);
        }
        match this {
            _ if below_any => Ok(true),
            Some(l) if l.meta.kind == EntryType::Dir => Ok(true),
            Some(l) => {
                visit(&l)?;
                Ok(true)
            }
            None => Ok(dir.is_empty()),
        }
    }

    fn cat(
        &mut self,
        path: &ImagePath,
        out: &mut dyn Write,
    ) -> Result<Option<FileMeta>, ImageError> {
        let wanted = path.relative();
        // First pass: which entry extraction would leave at the path.
        let Some((at_index, entry)) = last_entry(&self.path, self.codec, |h| h.path == wanted)?
        else {
            return Ok(None);
        };
        let h = &entry.header;
        let mut meta = h.meta.clone();
        // For a hard link, the entry before it that holds the data (a
        // further pass: nothing of the archive is held meanwhile).
        let data = if h.typeflag == b'1' {
            let target = h.link().unwrap_or_default();
            let before = |h: &header::Header, index: usize| {
                index < at_index
                    && h.path == target
                    && header::kind_of(h.typeflag) == EntryType::Regular
            };
            let mut index = 0usize;
            let found = last_entry(&self.path, self.codec, |h| {
                index += 1;
                before(h, index)
            })?;
            match found {
                Some((_, e)) => {
                    meta.kind = EntryType::Regular;
                    meta.size = e.header.meta.size;
                    e
                }
                None => {
                    return Err(ImageError::Unreadable {
                        path: path.to_string(),
                        what: "a hard link to an entry not before it",
                    })
                }
            }
        } else if meta.kind == EntryType::Regular {
            entry
        } else {
            return Ok(Some(meta));
        };
        let data_at = data.data_at;
        let data_size = data.header.data_size.bytes();
        // Second pass: stream the data (a sparse file expanded).
        let mut result = Ok(());
        walk(&self.path, self.codec, |e, s| {
            if e.data_at != data_at {
                return Ok(Flow::Next);
            }
            if let Some(sparse) = &data.header.sparse {
                result = sparse::expand(sparse, data_size, s, out, &path.to_string());
                return Ok(Flow::Stop);
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

/// The last entry `wanted` accepts, with its place (1-based) among the
/// entries.
fn last_entry(
    path: &Path,
    codec: Compression,
    mut wanted: impl FnMut(&header::Header) -> bool,
) -> Result<Option<(usize, Entry<()>)>, TarError> {
    let mut last = None;
    let mut index = 0usize;
    walk(path, codec, |e, _| {
        index += 1;
        if wanted(&e.header) {
            last = Some((
                index,
                Entry {
                    header: e.header.clone(),
                    ..*e
                },
            ));
        }
        Ok(Flow::Next)
    })?;
    Ok(last)
}

/// How many components a relative path has.
fn depth(p: &str) -> usize {
    p.split('/').count()
}
