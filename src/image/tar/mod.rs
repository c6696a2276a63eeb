//! Tar archives, rewritten as streams and never extracted.
//!
//! Writing a plan into an archive takes two passes over the input:
//!
//! 1. The scan (`scan.rs`) decompresses the archive and walks its entries
//!    (`entries.rs`, the walk `ls`/`cat` in `listing.rs` share; headers
//!    in `header.rs`), noting the byte ranges of the few entries the plan cares
//!    about, the archive's path convention and header style, and where the
//!    entries end. For an xz input it also compresses what it reads
//!    (`speculate.rs`), so that a plan which only appends finds its output's
//!    prefix ready.
//! 2. The plan becomes an edit list (`edit.rs`): byte ranges of the input to
//!    copy verbatim and new bytes to insert. The writer (`write.rs`) keeps
//!    the input's bytes before the first change where the codec allows and
//!    streams the rest of the list through the encoder; a pixz tarball's
//!    file index is written anew for the output's entries (`pixz.rs`).
//!
//! With the scan cache on (`src/cache/`), the first pass is read back from
//! it when the input and the plan's needs are those of an earlier run
//! (`cached.rs`), and saved after a full scan otherwise.
//!
//! Both passes read the decompressed archive through a counting reader
//! (`stream.rs`). Every entry the plan does not touch is copied byte for
//! byte, headers included. `verify` reads entries with the scan alone.

mod cached;
mod edit;
mod entries;
mod header;
mod listing;
pub(crate) mod members;
mod pax;
mod pixz;
mod scan;
mod sparse;
mod speculate;
mod stream;
mod write;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{EntryType, ImageBackend, ImageError, ImageFacts, ImageOptions, ImageReader};
use crate::cache::{Identity, Miss};
use crate::compress::Compression;
use crate::io::output::TempOutput;
use crate::io::prefix::PrefixCache;
use crate::plan::{ImagePath, Plan};
use edit::EditError;
pub(crate) use header::looks_like_tar;
use scan::{Capture, Follow, ForWriting, Scan};

const BLOCK: u64 = 512;
/// GNU tar's and bsdtar's default record: 20 blocks.
const RECORD: u64 = 10240;
/// passwd and group bigger than this are not credible and not read.
const MAX_DB_SIZE: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum TarError {
    #[error("cannot open {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: cannot decompress the {codec} stream (the file is corrupt or truncated; fetch or rebuild it)")]
    Decode {
        path: PathBuf,
        codec: &'static str,
        source: io::Error,
    },
    #[error("{path}: the tar header at byte {offset} of the archive has a bad checksum; the archive is corrupt: fetch or rebuild it")]
    BadChecksum { path: PathBuf, offset: u64 },
    #[error("{path}: the tar header at byte {offset} has an unreadable {field} field; the archive is corrupt: fetch or rebuild it")]
    BadField {
        path: PathBuf,
        offset: u64,
        field: &'static str,
    },
    /// A number no archive can hold, such as a size past 2^63 - 1 bytes:
    /// walking on would overflow.
    #[error("{path}: the tar header at byte {offset} has a {field} of {value}, out of range for a tar archive; the archive is corrupt: fetch or rebuild it")]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        field: &'static str,
        value: String,
    },
    #[error(
        "{path}: the archive ends in the middle of an entry (at byte {offset}); it is truncated: fetch or rebuild it"
    )]
    Truncated { path: PathBuf, offset: u64 },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: after the end-of-archive marker, at byte {offset} of the archive, comes {what}; imprint would not keep it in the output. Make one archive of the parts first (`bsdtar --ignore-zeros -cf ONE.tar @{path}`), or remove what follows the marker")]
    AfterEnd {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    /// pixz's file index where imprint cannot write one for the output,
    /// or one that does not hold together.
    #[error("{path}: pixz's file index, at byte {offset} of the archive after its end-of-archive marker, {problem}, so imprint cannot give the output one that `pixz -l` and `pixz -x` read. Copy the entries into a plain archive (`bsdtar -cf IN.tar @{path}`), stamp IN.tar, and index the output with `pixz < OUT.tar > OUT.tpxz`")]
    PixzIndex {
        path: PathBuf,
        offset: u64,
        problem: String,
    },
    #[error("{path}: the overlay removes the directory {dir}, but the archive holds {count} entries under it (such as {inside}); add `recursive = true` to the entry to remove them too")]
    NotEmpty {
        path: PathBuf,
        dir: String,
        inside: String,
        count: usize,
    },
    #[error("{path}: {link} is a hard link to {target}, which the overlay replaces or removes, and {target} is a {what}, which imprint cannot copy to give {link} a file of its own; remove the link from the archive or leave {target} alone")]
    CannotUnlink {
        path: PathBuf,
        link: String,
        target: String,
        what: &'static str,
    },
    #[error("{path}: the member {member} is {what}; imprint cannot put it into a new filesystem: remove it from the archive")]
    NotExtractable {
        path: PathBuf,
        member: String,
        what: String,
    },
    #[error("{path}: cannot find the data of {files}, which hard links in the archive name; the archive is inconsistent: rebuild it")]
    LinkedDataMissing { path: PathBuf, files: String },
}

/// The files planning reads, kept by the scan.
const CAPTURED: [&str; 2] = ["etc/passwd", "etc/group"];

/// Paths worth recording during the scan for a plan over `targets`.
fn watch_list(targets: &[ImagePath]) -> Vec<String> {
    let mut watch = vec!["etc".to_string(), "etc/passwd".into(), "etc/group".into()];
    for t in targets {
        let mut p = Some(t.clone());
        while let Some(path) = p {
            let rel = path.relative();
            if !watch.contains(&rel) {
                watch.push(rel);
            }
            p = path.parent();
        }
    }
    watch
}

/// A tar archive opened for rewriting.
pub(crate) struct TarBackend {
    path: PathBuf,
    codec: Compression,
    scratch_dir: PathBuf,
    options: ImageOptions,
    targets: Vec<String>,
    watch: Vec<String>,
    /// The paths whose data the scan keeps: passwd, group, the targets
    /// (small files a hard link may name), and whatever a symlink or hard
    /// link leads to.
    capture: Vec<String>,
    scan: Option<Scan>,
    /// The hash of the kept prefix, shared by a batch's outputs.
    prefixes: PrefixCache,
    /// What cuts inside xz blocks found by decoding, kept by the scan
    /// cache so that a warm run does not decode up to the cut.
    xz_cuts: crate::compress::xz::CutStates,
    /// The input's identity when it was scanned, if the scan cache is on:
    /// what a cache entry for this scan is keyed by.
    cache_id: Option<Identity>,
    /// The scan came from the cache, or was saved to it.
    cached: bool,
}

impl TarBackend {
    /// `targets` are the paths the overlay may write; the scan records what
    /// the archive holds at those paths and their parents.
    pub(crate) fn open(
        path: &Path,
        codec: Compression,
        targets: &[ImagePath],
        scratch_dir: &Path,
        options: &ImageOptions,
    ) -> TarBackend {
        let watch = watch_list(targets);
        let targets: Vec<String> = targets.iter().map(|t| t.relative()).collect();
        let mut capture: Vec<String> = CAPTURED.map(String::from).to_vec();
        capture.extend(targets.iter().cloned());
        TarBackend {
            path: path.to_path_buf(),
            codec,
            scratch_dir: scratch_dir.to_path_buf(),
            options: options.clone(),
            targets,
            capture,
            watch,
            scan: None,
            prefixes: PrefixCache::default(),
            xz_cuts: Default::default(),
            cache_id: None,
            cached: false,
        }
    }

    /// Scans (again) so that the data of `paths` is kept.
    fn want(&mut self, paths: &[String]) {
        for p in paths {
            if !self.watch.contains(p) {
                self.watch.push(p.clone());
            }
            if !self.capture.contains(p) {
                self.capture.push(p.clone());
            }
        }
        self.scan = None;
    }

    fn scan(&mut self) -> Result<&Scan, TarError> {
        // passwd or group behind a symlink or hard link to an entry the
        // first pass did not keep: a second pass (rarely a third) keeps it.
        for _ in 0..MAX_PASSES {
            let scan = self.scan_once()?;
            let need = scan.needed(&CAPTURED);
            if need.is_empty() {
                break;
            }
            self.want(&need);
        }
        self.scan_once()
    }

    fn scan_once(&mut self) -> Result<&Scan, TarError> {
        if self.scan.is_none() {
            self.scan = self.load_cached();
        }
        if self.scan.is_none() {
            let writing = ForWriting {
                scratch_dir: &self.scratch_dir,
                targets: &self.targets,
                speculate: !self.options.full_rewrite,
            };
            self.scan = Some(scan::scan(
                &self.path,
                self.codec,
                &self.watch,
                &Capture {
                    paths: &self.capture,
                    max_size: MAX_DB_SIZE,
                },
                Some(&writing),
            )?);
        }
        Ok(self.scan.as_ref().expect("just set"))
    }

    /// What the scan cache holds for this input and plan, if the cache is
    /// on, applies and holds a usable entry. Notes the input's identity
    /// either way, so that a full scan can be saved under it.
    fn load_cached(&mut self) -> Option<Scan> {
        self.cache_id = None;
        self.cached = false;
        let cache = self.options.cache.as_ref()?;
        let path = self.path.display();
        let single_xz = || {
            self.codec == Compression::Xz
                && File::open(&self.path).is_ok_and(|f| crate::compress::xz::keeps_nothing(&f))
        };
        if self.options.full_rewrite || single_xz() {
            // A single-block xz file with a BCJ or delta filter keeps
            // nothing; its fast path compresses while it scans, which a
            // cached scan would skip.
            tracing::info!("{path}: scan cache not used for this input");
            return None;
        }
        let id = File::open(&self.path)
            .and_then(|f| Identity::of(&f, &self.cache_needs()))
            .map_err(|e| tracing::debug!(error = %e, "scan cache: no identity"))
            .ok()?;
        if let Some(fs) = id.hashed_whole() {
            tracing::info!(
                "{path}: scan cache: {fs} keeps no trustworthy change time; the entry is keyed by the whole file's SHA-256"
            );
        }
        let found = cache
            .load(&id)
            .and_then(|bytes| cached::decode(&bytes, self.codec).ok_or(Miss::Damaged));
        self.cache_id = Some(id);
        match found {
            Ok((scan, kept, cuts)) => {
                tracing::info!("{path}: scan cache hit");
                self.prefixes.seed(kept);
                self.xz_cuts.seed(cuts);
                self.cached = true;
                Some(scan)
            }
            Err(miss) => {
                tracing::info!("{path}: scan cache miss ({miss}): reading it whole");
                None
            }
        }
    }

    fn cache_needs(&self) -> Vec<u8> {
        cached::needs(
            self.codec,
            &self.watch,
            &self.targets,
            &self.capture,
            MAX_DB_SIZE,
        )
    }

    /// Keeps the scan and the prefix states for the next run, if the
    /// input is still what was scanned. A failure only costs the next run
    /// a full scan.
    fn save_to_cache(&mut self) {
        let (Some(cache), Some(id), Some(scan)) = (&self.options.cache, &self.cache_id, &self.scan)
        else {
            return;
        };
        if self.cached && !self.prefixes.added && !self.xz_cuts.added {
            return;
        }
        let mut head = [0u8; 32];
        let same = File::open(&self.path).and_then(|f| {
            let n = f.read_at(&mut head, 0)?;
            Ok((Identity::of(&f, &self.cache_needs())?, n))
        });
        let n = match same {
            Ok((now, n)) if now == *id && !id.is_racy() => n,
            _ => {
                tracing::info!(
                    "{}: not cached: it changed during the run or just before it",
                    self.path.display()
                );
                return;
            }
        };
        let Some(payload) = cached::encode(
            scan,
            self.prefixes.entries(),
            self.xz_cuts.states(),
            &head[..n],
        ) else {
            return;
        };
        match cache.save(id, &payload) {
            Ok(()) => {
                tracing::debug!(dir = %cache.dir().display(), "scan cache: saved");
                self.cached = true;
                self.prefixes.added = false;
                self.xz_cuts.added = false;
            }
            Err(e) => tracing::info!("scan cache: cannot save in {}: {e}", cache.dir().display()),
        }
    }

    /// The data of passwd or group, following symlinks and hard links; a
    /// warning says what was found where it leads nowhere.
    /// The data, or what was found instead (said in the owner error).
    fn database(&self, scan: &Scan, path: &str) -> (Option<Vec<u8>>, Option<String>) {
        match scan.follow(path) {
            Follow::Data(at) => (scan.captured(&at), None),
            Follow::Missing(Some(why)) => {
                tracing::warn!("{}: cannot read /{path}: {why}", self.path.display());
                (None, Some(why))
            }
            _ => (None, None),
        }
    }
}

/// The scans a lookup may take: one, and one per symlink or hard link
/// that leads to an entry an earlier pass did not keep.
const MAX_PASSES: usize = 4;

impl TarBackend {
    fn edit_error(&self, e: EditError) -> ImageError {
        let path = self.path.clone();
        match e {
            EditError::Plan(e) => ImageError::Plan(e),
            EditError::NotEmpty {
                path: dir,
                inside,
                count,
            } => TarError::NotEmpty {
                path,
                dir,
                inside,
                count,
            }
            .into(),
            EditError::CannotUnlink { link, target, what } => TarError::CannotUnlink {
                path,
                link,
                target,
                what,
            }
            .into(),
            EditError::NeedData(files) => TarError::LinkedDataMissing {
                path,
                files: files.join(", "),
            }
            .into(),
        }
    }
}

impl ImageBackend for TarBackend {
    fn facts(&mut self) -> Result<Vec<ImageFacts>, ImageError> {
        self.scan()?;
        let scan = self.scan.as_ref().expect("scanned above");
        let reference_mtime = scan
            .entry("etc")
            .or_else(|| scan.watched.iter().max_by_key(|f| f.meta.mtime))
            .map(|f| f.meta.mtime)
            .unwrap_or(0);
        let passwd = self.database(scan, "etc/passwd");
        let group = self.database(scan, "etc/group");
        Ok(vec![ImageFacts {
            passwd: passwd.0,
            group: group.0,
            reference_mtime,
            passwd_found: passwd.1,
            group_found: group.1,
        }])
    }

    fn apply(&mut self, plans: &[Plan], out: &mut TempOutput) -> Result<(), ImageError> {
        // Paths resolve through the archive's symlinks (the scan keeps
        // them all); the entries are written under the resolved paths
        // (`usr/etc/azaion/device.conf` for `etc -> usr/etc`): bsdtar
        // refuses to extract through a symlink, and GNU tar follows an
        // absolute one (`etc -> /usr/etc`) out of the extraction directory.
        self.scan()?;
        let scan = self.scan.as_ref().expect("scanned above");
        let lookup = |p: &ImagePath| Ok::<_, ImageError>(scan.symlinks.get(&p.relative()).cloned());
        let linked = super::single(plans).follow_links(lookup)?;
        let plan = linked.plan();
        let missing: Vec<ImagePath> = plan
            .entries
            .iter()
            .map(|e| e.path.clone())
            .filter(|p| !self.targets.contains(&p.relative()))
            .collect();
        if !missing.is_empty() {
            // The plan names paths the scan did not watch: scan again,
            // with what lies under them (a removal may take it all).
            self.watch.extend(watch_list(&missing));
            self.targets.extend(missing.iter().map(ImagePath::relative));
            self.scan = None;
        }
        self.scan()?;
        let scan = self.scan.as_ref().expect("scanned above");
        let plan = &linked.check(|p| Ok::<_, ImageError>(scan.existing(&p.relative())))?;
        let mut tries = 0;
        let pieces = loop {
            let scan = self.scan.as_ref().expect("scanned above");
            match edit::edit_list(scan, plan) {
                Ok(pieces) => break pieces,
                Err(EditError::NeedData(paths)) if tries < MAX_PASSES => {
                    tries += 1;
                    self.want(&paths);
                    self.scan()?;
                }
                Err(e) => return Err(self.edit_error(e)),
            }
        };
        let scan = self.scan.as_ref().expect("scanned above");
        let input = write::Input {
            path: &self.path,
            codec: self.codec,
            scan,
        };
        write::write(
            &input,
            &pieces,
            out,
            &mut self.prefixes,
            &mut self.xz_cuts,
            self.options.full_rewrite,
        )?;
        self.save_to_cache();
        Ok(())
    }
}

/// For the `cache_index` fuzz target: the scan cache's identity of the
/// tar archive `path` for the default overlay's plan, and whether
/// `payload` reads back as a cached scan (which must then write again).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_cache(
    path: &Path,
    codec: Compression,
    payload: &[u8],
) -> Option<crate::cache::Identity> {
    // As an xz tarball's payload too: its boundaries and cut states
    // (`compress/xz/cut_state.rs`) are read only for xz.
    for codec in [codec, Compression::Xz] {
        if let Some((scan, kept, cuts)) = cached::decode(payload, codec) {
            if let Some(again) = cached::encode(&scan, &kept, &cuts, &[]) {
                assert!(
                    cached::decode(&again, codec).is_some(),
                    "a re-encoded scan reads back"
                );
            }
        }
    }
    let targets = crate::plan::OverlaySpec::default_spec().targets();
    let backend = TarBackend::open(
        path,
        codec,
        &targets,
        Path::new("."),
        &ImageOptions::default(),
    );
    Identity::of(&File::open(path).ok()?, &backend.cache_needs()).ok()
}

/// A tar archive opened for reading single entries (verify).
pub(crate) struct TarReader {
    path: PathBuf,
    codec: Compression,
}

impl TarReader {
    pub(crate) fn open(path: &Path, codec: Compression) -> Result<TarReader, TarError> {
        Ok(TarReader {
            path: path.to_path_buf(),
            codec,
        })
    }
}

impl ImageReader for TarReader {
    fn lookup(
        &mut self,
        path: &ImagePath,
        max_content: u64,
    ) -> Result<Option<super::Found>, ImageError> {
        Ok(self
            .lookup_many(std::slice::from_ref(path), max_content)?
            .pop()
            .flatten())
    }

    fn lookup_many(
        &mut self,
        paths: &[ImagePath],
        max_content: u64,
    ) -> Result<Vec<Option<super::Found>>, ImageError> {
        let rel: Vec<String> = paths.iter().map(ImagePath::relative).collect();
        let (mut watch, mut keep) = (rel.clone(), rel.clone());
        let mut passes = 0;
        // A symlink or hard link leads to an entry the pass did not keep:
        // once more, keeping it.
        let scan = loop {
            let capture = Capture {
                paths: &keep,
                max_size: max_content,
            };
            let scan = scan::scan(&self.path, self.codec, &watch, &capture, None)?;
            passes += 1;
            let need = scan.needed(&rel);
            if need.is_empty() || passes == MAX_PASSES {
                break scan;
            }
            watch.extend(need.iter().cloned());
            keep.extend(need);
        };
        Ok(rel.iter().map(|p| found(&scan, p)).collect())
    }
}

/// What extraction gives the path `p`: the last entry for it (as `ls -l`
/// would show it: a hard link as the file it names) and, for a file or a
/// symlink to one, the data.
fn found(scan: &Scan, p: &str) -> Option<super::Found> {
    let entry = scan.watched.iter().rev().find(|f| f.path == p)?;
    let mut meta = entry.meta.clone();
    if entry.is_hard_link() {
        let target = entry.linkname.as_deref().unwrap_or_default();
        match scan.entry_before(target, entry.start) {
            Some(file) if file.meta.kind == EntryType::Regular => {
                meta = file.meta.clone();
                meta.links = scan.names_of(target);
            }
            _ => meta.kind = EntryType::Other,
        }
    } else if meta.kind == EntryType::Regular {
        meta.links = scan.names_of(p);
    }
    let content = match scan.follow(p) {
        Follow::Data(at) => scan.captured(&at),
        _ => None,
    };
    Some((meta, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_list_holds_targets_and_their_parents_once() {
        let targets = [
            ImagePath::parse("/etc/azaion/device.conf").unwrap(),
            ImagePath::parse("/etc/azaion/key").unwrap(),
        ];
        assert_eq!(
            watch_list(&targets),
            [
                "etc",
                "etc/passwd",
                "etc/group",
                "etc/azaion/device.conf",
                "etc/azaion",
                "etc/azaion/key"
            ]
        );
    }
}
