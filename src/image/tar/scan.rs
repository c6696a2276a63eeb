//! The scan: one pass that decompresses the archive and walks its headers.
//!
//! It records the entries at watched paths (where they start and end), the
//! data of a few small files (passwd, group), the archive's header style and
//! path convention, and where the entries end. A scan for writing also
//! notes, at each place the plan may change (a watched entry, the end of
//! the entries), what lets the writer keep the input's bytes before it: the
//! compressed stream's block boundary, the SHA-256 state of a plain
//! archive's prefix, or for xz a prefix stream compressed on the way.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::io::sha256::Sha256;

use std::collections::HashMap;
use std::convert::Infallible;

use super::entries::{End, Entries, Entry};
use super::header::{self, Header, HeaderStyle};
use super::pax::Record;
use super::speculate::{Speculated, Speculation};
use super::stream::{AfterEnd, Stream};
use super::TarError;
use crate::compress::boundary::{BlockIndex, Boundary};
use crate::compress::{Compression, Tail};
use crate::image::resolve;
use crate::image::{EntryType, FileMeta};
use crate::io::progress;
use crate::plan::{Existing, ImagePath};

/// An entry at a watched path.
#[derive(Debug, Clone)]
pub(super) struct WatchedEntry {
    pub(super) path: String,
    pub(super) typeflag: u8,
    pub(super) meta: FileMeta,
    /// A hard link's linked name (normalised) or a symlink's target (as
    /// written).
    pub(super) linkname: Option<String>,
    /// Its own pax records (attributes, ACLs, times).
    pub(super) records: Vec<Record>,
    /// Its extension headers and header, as in the input: a directory's
    /// entry is emitted again after new entries inside it.
    pub(super) raw_header: Vec<u8>,
    /// From the first extension header (pax, GNU long name) to the end of
    /// the data's padding: the bytes to drop when the entry is replaced.
    pub(super) start: u64,
    pub(super) end: u64,
}

impl WatchedEntry {
    pub(super) fn is_hard_link(&self) -> bool {
        self.typeflag == b'1'
    }
}

/// What the scan learned about an archive.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) style: Option<HeaderStyle>,
    pub(super) dot_slash: Option<bool>,
    pub(super) watched: Vec<WatchedEntry>,
    /// Hard-link entries whose linked name is a watched path or lies
    /// under a target: they change when what they link to does.
    pub(super) links: Vec<WatchedEntry>,
    /// Every symbolic link in the archive at the end (a later entry of
    /// another kind at the same path removes it): path -> target.
    pub(super) symlinks: HashMap<String, String>,
    /// The records of the archive's global (`g`) headers, merged.
    pub(super) globals: Vec<Record>,
    /// Whether any entry carries an owner name: new entries carry names
    /// only then (an archive made with `--numeric-owner` has none).
    pub(super) names_seen: bool,
    /// Watched paths that are parents of some entry, even without an
    /// explicit directory entry of their own.
    implicit_dirs: Vec<String>,
    captured: Vec<(String, Vec<u8>)>,
    /// Offset of the first end-of-archive zero block (or of the end, if the
    /// archive has none).
    pub(super) end_of_entries: u64,
    pub(super) total_len: u64,
    /// For a single-member gzip, a bzip2 or a single-frame zstd input: the
    /// block boundaries just before the places the plan may change.
    pub(super) boundaries: Option<Vec<Boundary>>,
    /// For a plain tar scanned for writing: the SHA-256 state of the bytes
    /// before those same places, so the kept prefix is not read twice.
    pub(super) prefix_states: Vec<PrefixState>,
    /// For xz: the entries compressed during the scan.
    pub(super) speculated: Option<Speculated>,
    /// Where pixz's file index starts (the length of the tar it indexes),
    /// if the archive has one: the output gets one too.
    pub(super) pixz_index: Option<u64>,
    /// The paths the scan watched and kept the data of.
    watch: Vec<String>,
    capture: Vec<String>,
}

/// The private parts of a [`Scan`], for the scan cache.
pub(super) struct Kept<'a> {
    pub(super) implicit_dirs: &'a [String],
    pub(super) captured: &'a [(String, Vec<u8>)],
    pub(super) watch: &'a [String],
    pub(super) capture: &'a [String],
}

/// Where the data of a file is, after symlinks and hard links.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Follow {
    /// Kept by the scan, under this path.
    Data(String),
    /// At this path, which the scan did not keep: scan again for it.
    Need(String),
    /// Nowhere; with what was found instead, unless the path is simply
    /// absent.
    Missing(Option<String>),
}

impl Scan {
    pub(super) fn entry(&self, path: &str) -> Option<&WatchedEntry> {
        self.watched.iter().find(|f| f.path == path)
    }

    /// What the archive holds at `path` for the plan's checks: an entry
    /// that is not a regular file wins (a later copy would shadow it only
    /// for some extractors), else the first entry, else an implicit parent.
    pub(super) fn existing(&self, path: &str) -> Option<Existing> {
        let mut entries = self.watched.iter().filter(|f| f.path == path);
        let first = entries.clone().next();
        match entries
            .find(|f| f.meta.kind != EntryType::Regular)
            .or(first)
        {
            // A hard-link entry is a name the writer can give its own
            // file; the names linking to a replaced entry get its old one.
            Some(f) => Some(Existing {
                kind: if f.is_hard_link() {
                    EntryType::Regular
                } else {
                    f.meta.kind
                },
                links: 1,
                what: format!("a {} in the archive", header::describe(f.typeflag)),
            }),
            None if self.has_dir(path) => Some(Existing::new(EntryType::Dir, 1, "in the archive")),
            None => None,
        }
    }

    pub(super) fn has_dir(&self, path: &str) -> bool {
        match self.entry(path) {
            Some(f) => f.meta.kind == EntryType::Dir,
            None => self.implicit_dirs.iter().any(|d| d == path),
        }
    }

    /// The last entry at `path` before the one starting at `before`: what
    /// a hard link there names when extracted.
    pub(super) fn entry_before(&self, path: &str, before: u64) -> Option<&WatchedEntry> {
        self.watched
            .iter()
            .rev()
            .find(|e| e.path == path && e.start < before)
    }

    /// How many names reach the file at `path`: its entry and the
    /// hard-link entries naming it.
    pub(super) fn names_of(&self, path: &str) -> u32 {
        let links = self
            .links
            .iter()
            .chain(&self.watched)
            .filter(|l| l.is_hard_link() && l.linkname.as_deref() == Some(path))
            .map(|l| l.start)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        1 + links as u32
    }

    /// Follows `path` to the data extraction would give it: through
    /// symlinks as a chroot would (see [`resolve`]), then through hard
    /// links to the entry holding the data.
    pub(super) fn follow(&self, path: &str) -> Follow {
        let Some(start) = ImagePath::parse(&format!("/{path}")) else {
            return Follow::Missing(None);
        };
        let lookup = |p: &ImagePath| Ok::<_, Infallible>(self.symlinks.get(&p.relative()).cloned());
        let resolved = match resolve::resolve(&start, lookup) {
            Ok(Ok(r)) => r,
            Ok(Err(why)) => return Follow::Missing(Some(why.to_string())),
            Err(never) => match never {},
        };
        let via = if resolved.via.is_empty() {
            String::new()
        } else {
            format!(" ({})", resolved.via.join(", "))
        };
        let mut rel = resolved.path.relative();
        let mut hops = 0;
        let missing = |rel: &str, what: &str| {
            let found = format!("{start} resolves to /{rel}{via}, {what}");
            Follow::Missing((rel != path).then_some(found))
        };
        loop {
            if self.captured(&rel).is_some() {
                return Follow::Data(rel);
            }
            if !self.watch.contains(&rel) {
                return Follow::Need(rel);
            }
            let Some(found) = self.watched.iter().rev().find(|e| e.path == rel) else {
                return missing(&rel, "which the archive does not hold");
            };
            if found.is_hard_link() && hops < 8 {
                hops += 1;
                match found.linkname.as_deref().filter(|l| !l.is_empty()) {
                    Some(next) => rel = next.to_string(),
                    None => return missing(&rel, "a hard link naming nothing"),
                }
                continue;
            }
            return match found.meta.kind {
                EntryType::Regular if !self.capture.contains(&rel) => Follow::Need(rel),
                EntryType::Regular => missing(&rel, "which is larger than imprint reads"),
                _ => {
                    let what = format!("which is a {}", header::describe(found.typeflag));
                    Follow::Missing(Some(format!("{start} resolves to /{rel}{via}, {what}")))
                }
            };
        }
    }

    /// The entries a further pass must keep for `paths` to be read.
    pub(super) fn needed(&self, paths: &[impl AsRef<str>]) -> Vec<String> {
        paths
            .iter()
            .filter_map(|p| match self.follow(p.as_ref()) {
                Follow::Need(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    /// Implicit parents and captured data, for the scan cache.
    pub(super) fn kept(&self) -> Kept<'_> {
        Kept {
            implicit_dirs: &self.implicit_dirs,
            captured: &self.captured,
            watch: &self.watch,
            capture: &self.capture,
        }
    }

    /// A scan read back from the scan cache, with what [`Scan::kept`] gave.
    pub(super) fn with_kept(
        mut self,
        implicit_dirs: Vec<String>,
        captured: Vec<(String, Vec<u8>)>,
        watch: Vec<String>,
        capture: Vec<String>,
    ) -> Scan {
        self.implicit_dirs = implicit_dirs;
        self.captured = captured;
        self.watch = watch;
        self.capture = capture;
        self
    }

    pub(super) fn captured(&self, path: &str) -> Option<Vec<u8>> {
        self.captured
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, d)| d.clone())
    }
}

/// The most symlink paths and targets a scan keeps, in bytes: a root
/// filesystem has a few thousand symlinks, well under this.
const MAX_SYMLINK_BYTES: usize = 64 << 20;

/// SHA-256 of an archive's first `len` bytes, taken during the scan.
#[derive(Clone)]
pub(super) struct PrefixState {
    pub(super) len: u64,
    pub(super) state: Sha256,
}

impl std::fmt::Debug for PrefixState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrefixState({})", self.len)
    }
}

/// Hashes what the scan reads, in order.
struct HashingReader {
    inner: Box<dyn Read + Send>,
    state: Arc<Mutex<Sha256>>,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        crate::sync::lock(&self.state).update(&buf[..n]);
        Ok(n)
    }
}

/// What a scan for writing does besides reading.
pub(super) struct ForWriting<'a> {
    /// Where a speculative prefix stream (xz) may be kept.
    pub(super) scratch_dir: &'a Path,
    /// Paths the plan may write: an existing entry at one of them means
    /// the rewrite starts there, not at the end, so speculation stops.
    pub(super) targets: &'a [String],
    /// Whether to compress the entries while reading them (xz); off when
    /// the whole output is rewritten anyway.
    pub(super) speculate: bool,
}

/// What to keep of the entries at watched paths: their data, for those in
/// `paths` and up to `max_size` bytes.
pub(super) struct Capture<'a> {
    pub(super) paths: &'a [String],
    pub(super) max_size: u64,
}

/// Walks the archive. Entries whose path is in `watch` are recorded, and
/// the data of those `capture` names is kept. A scan for writing also notes
/// where the rewrite may start.
pub(super) fn scan(
    path: &Path,
    codec: Compression,
    watch: &[String],
    capture: &Capture,
    writing: Option<&ForWriting>,
) -> Result<Scan, TarError> {
    let scan_once = |parallel| scan_with(path, codec, watch, capture, writing, parallel);
    if writing.is_some() && codec.facts().parallel_decode {
        match scan_once(true) {
            // The parallel reader only knows well-formed files; the
            // sequential decoder reads everything the codec's tool does and says
            // precisely what is wrong with the rest.
            Err(TarError::Decode { source, .. }) => {
                tracing::debug!(%source, "parallel read failed, reading sequentially");
            }
            result => return result,
        }
    }
    scan_once(false)
}

fn scan_with(
    path: &Path,
    codec: Compression,
    watch: &[String],
    capture: &Capture,
    writing: Option<&ForWriting>,
    parallel: bool,
) -> Result<Scan, TarError> {
    let Reading {
        stream,
        index,
        hashing,
    } = open(path, codec, writing.is_some(), parallel)?;
    let snapshot = || hashing.as_ref().map(|h| crate::sync::lock(h).clone());
    let mut entries = Entries::new(stream, path, snapshot);
    entries.stream().speculation = start_speculation(path, codec, writing, index.as_ref());
    let mut visitor = Visitor {
        out: Scan {
            watch: watch.to_vec(),
            capture: capture.paths.to_vec(),
            ..Scan::default()
        },
        capture,
        subtrees: writing.map_or(&[], |w| w.targets),
        index: index.as_ref(),
        boundaries: Vec::new(),
        symlink_bytes: 0,
    };
    while let Some(entry) = entries.next_entry()? {
        visitor.entry(entry, &mut entries)?;
    }
    let end = entries.end().expect("the walk has ended");
    visitor.end(end, entries.stream(), path)?;
    let Visitor {
        mut out,
        boundaries,
        ..
    } = visitor;
    out.style = entries.style();
    out.globals = entries.globals().to_vec();
    out.total_len = entries.stream().pos;
    drop(entries);
    out.boundaries = index.filter(BlockIndex::whole_file).map(|_| boundaries);
    Ok(out)
}

/// The decompressed archive, and what comes of reading it: the block
/// index of a compressed input, the running hash of a plain one.
struct Reading<'a> {
    stream: Stream<'a>,
    index: Option<BlockIndex>,
    hashing: Option<Arc<Mutex<Sha256>>>,
}

/// Opens the archive for a scan, for writing or not.
fn open(
    path: &Path,
    codec: Compression,
    for_writing: bool,
    parallel: bool,
) -> Result<Reading<'_>, TarError> {
    let file = File::open(path).map_err(|source| TarError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    progress::start("reading", file.metadata().map(|m| m.len()).unwrap_or(0));
    // Only a scan for writing needs block boundaries (and their windows);
    // `verify` reads with the plain decoder, as does a bzip2 or xz scan asked
    // not to use the parallel one.
    let indexed = if codec.facts().parallel_decode {
        parallel
    } else {
        for_writing
    };
    let (inner, index) = if indexed {
        BlockIndex::decoder(codec, file)
    } else {
        (codec.decoder(file), None)
    };
    // A plain archive's kept prefix is its own bytes: hash them now, while
    // they pass by anyway.
    let hashing = (for_writing && matches!(codec.facts().tail, Tail::Plain))
        .then(|| Arc::new(Mutex::new(Sha256::new())));
    let inner: Box<dyn Read + Send> = match &hashing {
        Some(state) => Box::new(HashingReader {
            inner,
            state: state.clone(),
        }),
        None => inner,
    };
    Ok(Reading {
        stream: Stream::new(inner, 0, path, codec),
        index,
        hashing,
    })
}

/// For a scan of a single-block xz archive for writing: the speculative compressor
/// of the entries read (see `speculate.rs`), if one can start.
fn start_speculation(
    path: &Path,
    codec: Compression,
    writing: Option<&ForWriting>,
    index: Option<&BlockIndex>,
) -> Option<Speculation> {
    // Only an xz file whose blocks a rewrite cannot keep (one block, as
    // plain `xz` writes) is worth compressing while it is read.
    let single_block = index.is_none_or(|i| !i.keeps_blocks());
    let w = writing.filter(|w| codec == Compression::Xz && single_block && w.speculate)?;
    let name = path
        .file_name()
        .map_or("image".into(), |n| n.to_string_lossy());
    File::open(path)
        .and_then(|input| {
            Speculation::start(codec, &input, w.scratch_dir, &format!("{name}.prefix"))
        })
        .map_err(|e| tracing::debug!(error = %e, "no speculative compression"))
        .ok()
}

/// The scan as a visitor on the walk: what it notes of each entry.
struct Visitor<'a> {
    out: Scan,
    capture: &'a Capture<'a>,
    /// Paths the plan may write (for writing): an entry under one may
    /// change with it.
    subtrees: &'a [String],
    index: Option<&'a BlockIndex>,
    boundaries: Vec<Boundary>,
    symlink_bytes: usize,
}

/// The mark the scan takes at each header: the SHA-256 state of a plain
/// archive's prefix, when it hashes one.
type Mark = Option<Sha256>;

impl Visitor<'_> {
    fn entry(
        &mut self,
        mut entry: Entry<Mark>,
        entries: &mut Entries<Mark, impl FnMut() -> Mark>,
    ) -> Result<(), TarError> {
        let h = &entry.header;
        self.note_conventions(h);
        self.note_symlink(h);
        self.note_implicit_dirs(&h.path);
        let watched = self.out.watch.contains(&h.path) || self.under_subtree(&h.path);
        let linkname = h.link();
        let links_to_watched = h.typeflag == b'1'
            && linkname
                .as_deref()
                .is_some_and(|l| self.out.watch.iter().any(|w| w == l) || self.under_subtree(l));
        if watched {
            self.may_change_at(entry.start, entry.start_mark.take());
        }
        if h.meta.kind != EntryType::Dir
            && self.subtrees.contains(&h.path)
            && entries.stream().speculation.take().is_some()
        {
            tracing::debug!(path = %h.path, "an existing entry will be replaced: no speculative prefix");
        }
        self.capture_data(&entry, entries)?;
        if !(watched || links_to_watched) {
            return Ok(());
        }
        let end = entry.end();
        let h = entry.header;
        let recorded = WatchedEntry {
            path: h.path,
            typeflag: h.typeflag,
            meta: h.meta,
            linkname,
            records: h.records,
            raw_header: entries.raw_header().to_vec(),
            start: entry.start,
            end,
        };
        if links_to_watched {
            self.out.links.push(recorded.clone());
        }
        if watched {
            self.out.watched.push(recorded);
        }
        Ok(())
    }

    /// The archive's path convention and whether it names owners, from
    /// its first entries.
    fn note_conventions(&mut self, h: &Header) {
        if self.out.dot_slash.is_none() && !h.path.is_empty() {
            self.out.dot_slash = Some(h.dot_slash);
        }
        if !self.out.names_seen {
            self.out.names_seen = h
                .meta
                .names
                .as_ref()
                .is_some_and(|(u, g)| !u.is_empty() || !g.is_empty());
        }
    }

    /// Keeps the symlinks at the end of the archive, for [`Scan::follow`].
    fn note_symlink(&mut self, h: &Header) {
        match (&h.linkname, h.typeflag) {
            // Bounded: a hostile archive of endless symlinks must not
            // exhaust memory; past the bound, later links are not
            // followed.
            (Some(target), b'2') if self.symlink_bytes < MAX_SYMLINK_BYTES => {
                self.symlink_bytes += h.path.len() + target.len();
                self.out.symlinks.insert(h.path.clone(), target.clone());
            }
            _ => {
                self.out.symlinks.remove(&h.path);
            }
        }
    }

    /// Notes the watched paths that `path` lies under.
    fn note_implicit_dirs(&mut self, path: &str) {
        for w in &self.out.watch {
            if is_under(path, w) && !self.out.implicit_dirs.contains(w) {
                self.out.implicit_dirs.push(w.clone());
            }
        }
    }

    fn under_subtree(&self, p: &str) -> bool {
        self.subtrees.iter().any(|t| is_under(p, t))
    }

    /// Keeps the data of an entry the scan captures.
    fn capture_data(
        &mut self,
        entry: &Entry<Mark>,
        entries: &mut Entries<Mark, impl FnMut() -> Mark>,
    ) -> Result<(), TarError> {
        let h = &entry.header;
        if self.capture.paths.contains(&h.path)
            && h.meta.kind == EntryType::Regular
            && h.data_size.bytes() <= self.capture.max_size
        {
            let data = entries.read_data(entry)?;
            self.out.captured.retain(|(p, _)| p != &h.path);
            self.out.captured.push((h.path.clone(), data));
        }
        Ok(())
    }

    /// At a place the plan may change: notes what lets the writer keep
    /// the bytes before it.
    fn may_change_at(&mut self, offset: u64, state: Mark) {
        if let Some(state) = state {
            self.out
                .prefix_states
                .push(PrefixState { len: offset, state });
        }
        // Entries in one compressed block share its boundary: keep one
        // (a gzip boundary holds a 32 KiB window).
        if let Some(b) = self.index.and_then(|i| i.boundary_before(offset)) {
            if self
                .boundaries
                .last()
                .is_none_or(|last: &Boundary| last.out() != b.out())
            {
                self.boundaries.push(b);
            }
        }
    }

    /// The end of the entries: the plan may append there. After an end
    /// marker the rest of the stream is read, so that a damaged one says
    /// so now.
    fn end(&mut self, end: End<Mark>, stream: &mut Stream, path: &Path) -> Result<(), TarError> {
        self.out.end_of_entries = end.at;
        self.may_change_at(end.at, end.mark);
        self.out.speculated = end_speculation(stream, end.at);
        if end.marker {
            // What follows the end marker would be lost: a second archive
            // (`cat a.tar b.tar`; GNU tar -i and bsdtar still read its
            // entries) or appended data such as a signature.
            let path = path.to_path_buf();
            return match stream.first_data_after()? {
                None => Ok(()),
                // pixz's index names every entry at its offset: the writer
                // writes one for the output's entries (`pixz.rs`).
                Some((offset, AfterEnd::PixzIndex, read)) => {
                    let codec = stream.codec();
                    super::pixz::check(stream, offset, &read, &path, codec)?;
                    self.out.pixz_index = Some(offset);
                    Ok(())
                }
                Some((offset, AfterEnd::Archive, _)) => Err(TarError::AfterEnd {
                    path,
                    offset,
                    what: "a second tar archive joined on (as `cat a.tar b.tar` makes), whose entries tar reads only with --ignore-zeros",
                }),
                Some((offset, AfterEnd::Data, _)) => Err(TarError::AfterEnd {
                    path,
                    offset,
                    what: "data that is not a tar entry (such as an appended signature)",
                }),
            };
        }
        Ok(())
    }
}

/// Whether `path` lies strictly below `dir`.
fn is_under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// Closes the speculative stream at the end of the entries, if one is open.
fn end_speculation(s: &mut Stream, end: u64) -> Option<Speculated> {
    let done = s.speculation.take()?.end_at(end);
    done.map_err(|e| tracing::debug!(error = %e, "speculative compression failed"))
        .ok()
}
