//! `imprint ls` and `cat` on a tar archive: one pass over the headers to
//! list, and for `cat` a second pass that streams the chosen entry's data.
//! As when extracting, the last entry for a path wins.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::header::{self, Extensions};
use super::stream::Stream;
use super::{TarError, TarReader, MAX_DB_SIZE};
use crate::compress::Compression;
use crate::image::{EntryType, FileMeta, ImageError, Inspect, Listed};
use crate::plan::ImagePath;

/// One entry as the walk sees it.
struct TarEntry {
    path: String,
    typeflag: u8,
    meta: FileMeta,
    /// A symlink's target or a hard link's path (normalised for links).
    link: Option<String>,
    /// Where the entry's data starts in the decompressed archive.
    data_at: u64,
    data_size: u64,
}

/// What to do after an entry.
enum Flow {
    Next,
    Stop,
}

/// A NUL-terminated header field as text.
fn field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The `linkpath` record of a pax extended header, if any.
fn pax_linkpath(data: &[u8]) -> Option<String> {
    let mut rest = data;
    let mut found = None;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"linkpath=") {
            found = Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    found
}

/// A hard link's target as a path of the archive (tar writes it like the
/// entry names: maybe with `./`).
fn normalise(raw: &str) -> String {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.trim_start_matches('/').trim_end_matches('/').to_string()
}

/// Walks the entries of the archive, calling `visit` with each and the
/// stream positioned at its data (which `visit` may read).
fn walk(
    path: &Path,
    codec: Compression,
    mut visit: impl FnMut(&TarEntry, &mut Stream) -> Result<Flow, TarError>,
) -> Result<(), TarError> {
    let file = File::open(path).map_err(|source| TarError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut s = Stream::new(codec.decoder(file), 0, path, codec);
    let mut block = [0u8; 512];
    let mut ext = Extensions::default();
    let mut long_link: Option<String> = None;
    let mut pax_link: Option<String> = None;
    loop {
        let at = s.pos;
        let n = s.fill(&mut block)?;
        if n == 0 || block.iter().all(|&b| b == 0) {
            return Ok(());
        }
        if n < block.len() {
            return Err(TarError::Truncated {
                path: path.to_path_buf(),
                offset: at,
            });
        }
        if !header::checksum_ok(&block) {
            return Err(TarError::BadChecksum {
                path: path.to_path_buf(),
                offset: at,
            });
        }
        let typeflag = header::typeflag(&block);
        let size = header::size(&block).map_err(|e| e.at(path, at))?;
        if header::is_extension(typeflag) || typeflag == b'g' {
            if size.bytes() > MAX_DB_SIZE {
                return Err(header::BadHeader::Unreadable("extended header size").at(path, at));
            }
            let mut data = vec![0u8; size.bytes() as usize];
            s.read_exact(&mut data)?;
            s.skip(size.padding())?;
            match typeflag {
                b'g' => {}
                b'K' => long_link = Some(field(&data)),
                b'x' => {
                    pax_link = pax_linkpath(&data);
                    ext.add(typeflag, &data).map_err(|e| e.at(path, at))?;
                }
                _ => ext.add(typeflag, &data).map_err(|e| e.at(path, at))?,
            }
            continue;
        }
        if header::sparse_headers_follow(&block) {
            loop {
                let mut more = [0u8; 512];
                s.read_exact(&mut more)?;
                if !header::sparse_extension_continues(&more) {
                    break;
                }
            }
        }
        let entry = header::parse_entry(&block, size, &mut ext).map_err(|e| e.at(path, at))?;
        let raw_link = pax_link
            .take()
            .or(long_link.take())
            .unwrap_or_else(|| field(&block[157..257]));
        let link = match typeflag {
            b'2' => Some(raw_link),
            b'1' => Some(normalise(&raw_link)),
            _ => None,
        };
        let mut meta = entry.meta;
        if typeflag == b'2' {
            meta.target = link.clone();
        }
        let data_at = s.pos;
        let data_size = entry.data_size.bytes();
        let found = TarEntry {
            path: entry.path,
            typeflag,
            meta,
            link,
            data_at,
            data_size,
        };
        if let Flow::Stop = visit(&found, &mut s)? {
            return Ok(());
        }
        // A visitor reads at most the entry's data.
        let end = data_at + entry.data_size.padded();
        s.skip(end.saturating_sub(s.pos))?;
    }
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
                    hard_link: (e.typeflag == b'1').then(|| e.link.clone().unwrap_or_default()),
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
        let mut wanted = path.relative();
        // First pass: which entry extraction would leave at the path, and
        // for a hard link the entry before it that holds the data.
        let mut last: Option<(usize, TarEntry)> = None;
        let mut regular: BTreeMap<String, (usize, u8, u64, u64)> = BTreeMap::new();
        let mut index = 0usize;
        walk(&self.path, self.codec, |e, _| {
            index += 1;
            if e.path == wanted {
                last = Some((
                    index,
                    TarEntry {
                        path: e.path.clone(),
                        typeflag: e.typeflag,
                        meta: e.meta.clone(),
                        link: e.link.clone(),
                        data_at: e.data_at,
                        data_size: e.data_size,
                    },
                ));
            }
            if header::kind_of(e.typeflag) == EntryType::Regular {
                regular.insert(e.path.clone(), (index, e.typeflag, e.data_at, e.data_size));
            }
            Ok(Flow::Next)
        })?;
        let Some((at_index, entry)) = last else {
            return Ok(None);
        };
        let mut meta = entry.meta.clone();
        let (typeflag, data_at, data_size) = if entry.typeflag == b'1' {
            wanted = entry.link.clone().unwrap_or_default();
            match regular.get(&wanted) {
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
            (entry.typeflag, entry.data_at, entry.data_size)
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
