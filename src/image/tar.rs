//! Tar archives, rewritten as streams and never extracted.
//!
//! A first pass decompresses the archive and walks its headers, noting the
//! byte ranges of the few entries the plan cares about, the archive's path
//! convention and header style, and where the entries end. The plan then
//! becomes an edit list of byte ranges to copy verbatim and new bytes to
//! insert, which a second pass streams through the encoder. Every entry the
//! plan does not touch is copied byte for byte, headers included.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use thiserror::Error;
use zeroize::Zeroizing;

use super::{EntryType, FileMeta, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::compress::{bzip2 as bz2, gzip, zstd as zst};
use crate::compress::{Compression, Encoder};
use crate::io::output::{self, Scratch, TempOutput};
use crate::io::progress;
use crate::plan::{Existing, ImagePath, Plan, PlanEntry, PlanKind};

const BLOCK: u64 = 512;
/// GNU tar's and bsdtar's default record: 20 blocks.
const RECORD: u64 = 10240;
/// passwd and group bigger than this are not credible and not read.
const MAX_DB_SIZE: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum TarError {
    #[error("{path}: cannot decompress the {codec} stream: {source}. The file is corrupt or truncated; fetch or rebuild it")]
    Decode {
        path: PathBuf,
        codec: &'static str,
        source: io::Error,
    },
    #[error("{path}: the tar header at byte {offset} of the archive has a bad checksum; the archive is corrupt")]
    BadChecksum { path: PathBuf, offset: u64 },
    #[error("{path}: the tar header at byte {offset} has an unreadable {field} field; the archive is corrupt")]
    BadField {
        path: PathBuf,
        offset: u64,
        field: &'static str,
    },
    #[error(
        "{path}: the archive ends in the middle of an entry (at byte {offset}); it is truncated"
    )]
    Truncated { path: PathBuf, offset: u64 },
    #[error("writing the new archive failed: {0}")]
    Write(io::Error),
}

/// How the archive writes its headers; new entries follow the same style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderStyle {
    /// POSIX ustar, possibly with pax extended headers.
    Ustar,
    /// POSIX pax: ustar headers and pax extended headers seen.
    Pax,
    /// GNU tar's own format ("ustar  \0" magic).
    Gnu,
}

/// A parsed tar header, with pax and GNU long-name extensions applied.
#[derive(Debug, Clone)]
struct Header {
    /// Normalised path: no leading `./` or `/`, no trailing `/`.
    path: String,
    meta: FileMeta,
    /// Bytes of data following the header (rounded up to blocks when
    /// skipped).
    data_size: u64,
}

fn kind_of(typeflag: u8) -> EntryType {
    match typeflag {
        b'0' | b'\0' | b'7' => EntryType::Regular,
        b'5' => EntryType::Dir,
        b'2' => EntryType::Symlink,
        _ => EntryType::Other,
    }
}

fn describe(typeflag: u8) -> &'static str {
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

fn checksum_ok(block: &[u8; 512]) -> bool {
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
pub fn looks_like_tar(head: &[u8]) -> bool {
    // A ustar magic is enough to call it a tar archive: a damaged first
    // header is then reported as such, not as an unknown format.
    head.len() >= 512
        && (checksum_ok(head[..512].try_into().expect("512 bytes")) || &head[257..262] == b"ustar")
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

/// A reader that counts the decompressed bytes it has produced, and turns
/// decoder failures into a clear error.
struct Stream<'a> {
    inner: Box<dyn Read + Send>,
    pos: u64,
    path: &'a Path,
    codec: Compression,
    buf: Vec<u8>,
    /// During a scan of a zstd or xz archive: everything read also goes to
    /// a speculative compressor (see [`Speculation`]).
    tee: Option<Speculation>,
}

impl Stream<'_> {
    fn decode_error(&self, source: io::Error) -> TarError {
        TarError::Decode {
            path: self.path.to_path_buf(),
            codec: self.codec.name(),
            source,
        }
    }

    /// Reads up to `buf.len()` bytes; fewer only at the end of the stream.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.decode_error(e)),
            }
        }
        self.pos += done as u64;
        if let Some(tee) = &mut self.tee {
            if let Err(e) = tee.feed(&buf[..done]) {
                tracing::debug!(error = %e, "speculative compression stopped");
                self.tee = None;
            }
        }
        Ok(done)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        let at = self.pos;
        if self.fill(buf)? < buf.len() {
            return Err(TarError::Truncated {
                path: self.path.to_path_buf(),
                offset: at,
            });
        }
        Ok(())
    }

    /// Passes `len` bytes to `sink` (or drops them when `sink` is None).
    fn pass(&mut self, mut len: u64, mut sink: Option<&mut dyn Write>) -> Result<(), TarError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 20, 0);
        let mut result = Ok(());
        while len > 0 && result.is_ok() {
            let want = len.min(buf.len() as u64) as usize;
            result = self
                .read_exact(&mut buf[..want])
                .and_then(|_| match sink.as_mut() {
                    Some(s) => s.write_all(&buf[..want]).map_err(TarError::Write),
                    None => Ok(()),
                });
            len -= want as u64;
        }
        self.buf = buf;
        result
    }

    /// Reads to the end, returning how many bytes were left.
    fn drain(&mut self) -> Result<u64, TarError> {
        let start = self.pos;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 20, 0);
        let result = loop {
            match self.fill(&mut buf) {
                Ok(0) => break Ok(self.pos - start),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        result
    }
}

/// Recompressing zstd and xz archives costs a full decompression and
/// compression whatever imprint does, but not two decompressions: while the
/// scan decompresses, it also compresses what it reads, as one frame (a
/// stream, for xz) in a scratch file. When the plan only appends at the
/// end of the entries (no existing file replaced: the factory case), that
/// frame is exactly the output's prefix, and the output is that frame
/// followed by a second one holding the new entries and the end-of-archive
/// marker. Decoders read concatenated frames as one archive.
///
/// The bytes read last (one tar block) are held back, because the scan only
/// knows a block is the end-of-archive marker after reading it.
struct Speculation {
    scratch: Scratch,
    encoder: Option<Box<dyn Encoder>>,
    written: Arc<Mutex<(Sha256, u64)>>,
    held: Vec<u8>,
    emitted: u64,
}

/// A finished speculative prefix frame.
struct Speculated {
    scratch: Scratch,
    /// Uncompressed bytes it holds: the archive up to its end of entries.
    uncompressed: u64,
    compressed: u64,
    sha256: Sha256,
}

impl std::fmt::Debug for Speculated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Speculated({} -> {})",
            self.uncompressed, self.compressed
        )
    }
}

/// Counts and hashes what the speculative compressor writes.
struct HashingFile {
    file: File,
    written: Arc<Mutex<(Sha256, u64)>>,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.0.update(&buf[..n]);
        w.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Speculation {
    fn start(codec: Compression, dir: &Path, name: &str) -> io::Result<Speculation> {
        let scratch = Scratch::create_in(dir, name)?;
        let written = Arc::new(Mutex::new((Sha256::new(), 0)));
        let sink = HashingFile {
            file: scratch.file().try_clone()?,
            written: written.clone(),
        };
        Ok(Speculation {
            scratch,
            encoder: Some(codec.encoder(sink)?),
            written,
            held: Vec::with_capacity(BLOCK as usize),
            emitted: 0,
        })
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        let encoder = self
            .encoder
            .as_mut()
            .ok_or_else(|| io::Error::other("finished"))?;
        encoder.write_all(data)?;
        self.emitted += data.len() as u64;
        Ok(())
    }

    fn feed(&mut self, data: &[u8]) -> io::Result<()> {
        let hold = BLOCK as usize;
        if data.len() >= hold {
            let held = std::mem::take(&mut self.held);
            self.emit(&held)?;
            self.emit(&data[..data.len() - hold])?;
            self.held.extend_from_slice(&data[data.len() - hold..]);
        } else {
            self.held.extend_from_slice(data);
            if self.held.len() > hold {
                let extra = self.held.len() - hold;
                let front: Vec<u8> = self.held.drain(..extra).collect();
                self.emit(&front)?;
            }
        }
        Ok(())
    }

    /// Ends the frame after the first `end` bytes of the archive.
    fn end_at(mut self, end: u64) -> io::Result<Speculated> {
        let rest = end
            .checked_sub(self.emitted)
            .filter(|&n| n <= self.held.len() as u64)
            .ok_or_else(|| io::Error::other("the end is not in the held-back bytes"))?;
        let held = std::mem::take(&mut self.held);
        self.emit(&held[..rest as usize])?;
        let encoder = self
            .encoder
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        encoder.finish_stream()?;
        let (sha256, compressed) = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(Speculated {
            scratch: self.scratch,
            uncompressed: end,
            compressed,
            sha256,
        })
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// One entry of interest found by the scan.
#[derive(Debug, Clone)]
struct Found {
    path: String,
    typeflag: u8,
    meta: FileMeta,
    /// From the first extension header (pax, GNU long name) to the end of
    /// the data's padding: the bytes to drop when the entry is replaced.
    start: u64,
    end: u64,
}

/// What the scan learned about an archive.
#[derive(Debug, Default)]
struct Scan {
    style: Option<HeaderStyle>,
    dot_slash: Option<bool>,
    found: Vec<Found>,
    /// Watched paths that are parents of some entry, even without an
    /// explicit directory entry of their own.
    implicit_dirs: Vec<String>,
    captured: Vec<(String, Vec<u8>)>,
    /// Offset of the first end-of-archive zero block (or of the end, if the
    /// archive has none).
    end_of_entries: u64,
    total_len: u64,
    /// For a single-member gzip or a bzip2 input: block boundaries just
    /// before the places a plan may change (watched entries, the end of
    /// entries).
    pins: Option<Vec<Pin>>,
    /// For a plain tar scanned for writing: the SHA-256 state of the bytes
    /// before those same places, so the kept prefix is not read twice.
    prefix_states: Vec<PrefixState>,
    /// For zstd and xz: the entries compressed during the scan.
    speculated: Option<Speculated>,
}

/// Where a compressed stream can be cut and continued, as the decoder
/// found them while the scan read.
enum BlockIndex {
    Gzip(gzip::SharedIndex),
    Bzip2(bz2::SharedIndex),
    Zstd(zst::SharedIndex),
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlockIndex {
    /// The boundary the decoder remembers at or before uncompressed
    /// `offset`.
    fn pin_before(&self, offset: u64) -> Option<Pin> {
        match self {
            BlockIndex::Gzip(i) => locked(i).boundary_before(offset).map(Pin::Gzip),
            BlockIndex::Bzip2(i) => locked(i).boundary_before(offset).map(Pin::Bzip2),
            BlockIndex::Zstd(i) => locked(i).boundary_before(offset).map(Pin::Zstd),
        }
    }

    /// Whether the file is one stream the tail technique can continue
    /// (one gzip member, one zstd frame; bzip2 streams chain freely).
    fn whole_file(&self) -> bool {
        match self {
            BlockIndex::Gzip(i) => locked(i).single_member,
            BlockIndex::Bzip2(_) => true,
            BlockIndex::Zstd(i) => locked(i).single_frame,
        }
    }
}

/// A block boundary the rewrite may start from.
#[derive(Debug, Clone)]
enum Pin {
    Gzip(gzip::Boundary),
    Bzip2(bz2::Boundary),
    Zstd(zst::Boundary),
}

impl Pin {
    /// Uncompressed bytes before it.
    fn out(&self) -> u64 {
        match self {
            Pin::Gzip(b) => b.out,
            Pin::Bzip2(b) => b.out,
            Pin::Zstd(b) => b.out,
        }
    }
}

/// SHA-256 of an archive's first `len` bytes, taken during the scan.
#[derive(Clone)]
struct PrefixState {
    len: u64,
    state: Sha256,
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
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&buf[..n]);
        Ok(n)
    }
}

impl Scan {
    fn entry(&self, path: &str) -> Option<&Found> {
        self.found.iter().find(|f| f.path == path)
    }

    /// What the archive holds at `path` for the plan's checks: an entry
    /// that is not a regular file wins (a later copy would shadow it only
    /// for some extractors), else the first entry, else an implicit parent.
    fn existing(&self, path: &str) -> Option<Existing> {
        let mut entries = self.found.iter().filter(|f| f.path == path);
        let first = entries.clone().next();
        match entries
            .find(|f| f.meta.kind != EntryType::Regular)
            .or(first)
        {
            Some(f) => Some(Existing {
                kind: f.meta.kind,
                links: 1,
                what: format!("a {} in the archive", describe(f.typeflag)),
            }),
            None if self.has_dir(path) => Some(Existing::new(EntryType::Dir, 1, "in the archive")),
            None => None,
        }
    }

    fn has_dir(&self, path: &str) -> bool {
        match self.entry(path) {
            Some(f) => f.meta.kind == EntryType::Dir,
            None => self.implicit_dirs.iter().any(|d| d == path),
        }
    }

    fn captured(&self, path: &str) -> Option<Vec<u8>> {
        self.captured
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, d)| d.clone())
    }
}

/// What a scan for writing does besides reading.
struct ForWriting<'a> {
    /// Where a speculative prefix frame (zstd, xz) may be kept.
    scratch_dir: &'a Path,
    /// Paths the plan may write: an existing entry at one of them means
    /// the rewrite starts there, not at the end, so speculation stops.
    targets: &'a [String],
}

/// Walks the archive. Entries whose path is in `watch` are recorded; the
/// data of those in `capture` (up to `max_capture` bytes) is kept. A scan
/// for writing also notes where the rewrite may start.
fn scan(
    path: &Path,
    codec: Compression,
    watch: &[String],
    capture: &[String],
    max_capture: u64,
    writing: Option<&ForWriting>,
) -> Result<Scan, TarError> {
    let scan_once = |parallel_bzip2| {
        scan_with(
            path,
            codec,
            watch,
            (capture, max_capture),
            writing,
            parallel_bzip2,
        )
    };
    if writing.is_some() && codec == Compression::Bzip2 {
        match scan_once(true) {
            // The parallel reader only knows well-formed files; the
            // sequential decoder reads everything bzip2 does and says
            // precisely what is wrong with the rest.
            Err(TarError::Decode { source, .. }) => {
                tracing::debug!(%source, "parallel bzip2 read failed, reading sequentially");
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
    (capture, max_capture): (&[String], u64),
    writing: Option<&ForWriting>,
    parallel_bzip2: bool,
) -> Result<Scan, TarError> {
    let for_writing = writing.is_some();
    let file = File::open(path).map_err(|e| TarError::Decode {
        path: path.to_path_buf(),
        codec: codec.name(),
        source: e,
    })?;
    progress::start("reading", file.metadata().map(|m| m.len()).unwrap_or(0));
    let (inner, index): (Box<dyn Read + Send>, _) = match codec {
        // Only a scan for writing needs block boundaries (and their
        // windows); `verify` reads with the plain decoder.
        Compression::Gzip if for_writing => {
            let (decoder, index) = gzip::IndexingDecoder::new(file);
            (Box::new(decoder), Some(BlockIndex::Gzip(index)))
        }
        Compression::Bzip2 if parallel_bzip2 => {
            let (decoder, index) = bz2::ParallelDecoder::open(file);
            (Box::new(decoder), Some(BlockIndex::Bzip2(index)))
        }
        Compression::Zstd if for_writing => {
            let (decoder, index) = zst::IndexingDecoder::new(file);
            (Box::new(decoder), Some(BlockIndex::Zstd(index)))
        }
        _ => (codec.decoder(file), None),
    };
    // A plain archive's kept prefix is its own bytes: hash them now, while
    // they pass by anyway.
    let hashing =
        (for_writing && codec == Compression::None).then(|| Arc::new(Mutex::new(Sha256::new())));
    let inner: Box<dyn Read + Send> = match &hashing {
        Some(state) => Box::new(HashingReader {
            inner,
            state: state.clone(),
        }),
        None => inner,
    };
    let snapshot = || {
        hashing
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone())
    };
    let mut prefix_states = Vec::new();
    let mut pending_state: Option<Sha256> = None;
    let tee = match writing {
        Some(w) if codec == Compression::Xz && !full_rewrite() => {
            let name = path
                .file_name()
                .map_or("image".into(), |n| n.to_string_lossy());
            Speculation::start(codec, w.scratch_dir, &format!("{name}.prefix"))
                .map_err(|e| tracing::debug!(error = %e, "no speculative compression"))
                .ok()
        }
        _ => None,
    };
    let mut s = Stream {
        inner,
        pos: 0,
        path,
        codec,
        buf: Vec::new(),
        tee,
    };
    let mut out = Scan::default();
    let mut pins = Vec::new();
    let mut pin = |offset: u64, state: Option<Sha256>| {
        if let Some(state) = state {
            prefix_states.push(PrefixState { len: offset, state });
        }
        pins.extend(index.as_ref().and_then(|i| i.pin_before(offset)));
    };
    let mut block = [0u8; 512];
    // Extension headers seen since the last real entry.
    let mut pending_start: Option<u64> = None;
    let mut pax = PaxOverrides::default();
    let mut long_name: Option<String> = None;
    loop {
        let at = s.pos;
        let at_state = snapshot();
        let n = s.fill(&mut block)?;
        if n == 0 {
            // No end-of-archive marker; tolerated as GNU tar does.
            out.end_of_entries = at;
            pin(at, at_state);
            out.speculated = end_speculation(&mut s, at);
            break;
        }
        if n < block.len() {
            return Err(TarError::Truncated {
                path: path.to_path_buf(),
                offset: at,
            });
        }
        if block.iter().all(|&b| b == 0) {
            out.end_of_entries = at;
            pin(at, at_state);
            out.speculated = end_speculation(&mut s, at);
            s.pos = at + BLOCK;
            s.drain()?;
            break;
        }
        if !checksum_ok(&block) {
            return Err(TarError::BadChecksum {
                path: path.to_path_buf(),
                offset: at,
            });
        }
        let bad_field = |field| TarError::BadField {
            path: path.to_path_buf(),
            offset: at,
            field,
        };
        let typeflag = block[156];
        let mut size = parse_number(&block[124..136]).ok_or_else(|| bad_field("size"))?;
        let magic = &block[257..265];
        if out.style.is_none() || out.style == Some(HeaderStyle::Ustar) {
            if magic == b"ustar  \0" {
                out.style = Some(HeaderStyle::Gnu);
            } else if &magic[..6] == b"ustar\0" {
                out.style = Some(if matches!(typeflag, b'x' | b'g') {
                    HeaderStyle::Pax
                } else {
                    HeaderStyle::Ustar
                });
            }
        }
        match typeflag {
            b'x' | b'L' | b'K' => {
                pending_start.get_or_insert(at);
                if pending_state.is_none() {
                    pending_state = at_state;
                }
                if size > MAX_DB_SIZE {
                    return Err(bad_field("extended header size"));
                }
                let mut data = vec![0u8; size as usize];
                s.read_exact(&mut data)?;
                s.pass(padded(size) - size, None)?;
                match typeflag {
                    b'x' => pax = parse_pax(&data),
                    b'L' => long_name = Some(field_str(&data)),
                    _ => {} // GNU long link name: not needed
                }
                continue;
            }
            b'g' => {
                // Global pax headers apply to the archive, not one entry:
                // they stay where they are.
                s.pass(padded(size), None)?;
                continue;
            }
            _ => {}
        }
        // GNU old-style sparse entries carry more sparse headers after this
        // one when byte 482 is set.
        if typeflag == b'S' && block[482] != 0 {
            loop {
                let mut ext = [0u8; 512];
                s.read_exact(&mut ext)?;
                if ext[504] == 0 {
                    break;
                }
            }
        }
        if let Some(pax_size) = pax.size {
            size = pax_size;
        }
        let raw_name = if let Some(p) = pax.path.take() {
            p
        } else if let Some(l) = long_name.take() {
            l
        } else {
            let name = field_str(&block[0..100]);
            let prefix = if &magic[..6] == b"ustar\0" {
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
        if out.dot_slash.is_none() && !normalise(&raw_name).is_empty() {
            out.dot_slash = Some(raw_name.starts_with("./"));
        }
        let num = |range: std::ops::Range<usize>, field| {
            parse_number(&block[range]).ok_or_else(|| bad_field(field))
        };
        let header = Header {
            path: normalise(&raw_name),
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
        };
        pax = PaxOverrides::default();
        let start = pending_start.take().unwrap_or(at);
        let start_state = pending_state.take().or(at_state);
        for w in watch {
            if header.path.len() > w.len()
                && header.path.starts_with(w.as_str())
                && header.path.as_bytes()[w.len()] == b'/'
                && !out.implicit_dirs.contains(w)
            {
                out.implicit_dirs.push(w.clone());
            }
        }
        let watched = watch.contains(&header.path);
        if watched {
            pin(start, start_state);
        }
        if header.meta.kind != EntryType::Dir
            && writing.is_some_and(|w| w.targets.contains(&header.path))
            && s.tee.take().is_some()
        {
            tracing::debug!(path = %header.path, "an existing entry will be replaced: no speculative prefix");
        }
        let want_data = capture.contains(&header.path)
            && header.meta.kind == EntryType::Regular
            && header.data_size <= max_capture;
        if want_data {
            let mut data = vec![0u8; header.data_size as usize];
            s.read_exact(&mut data)?;
            s.pass(padded(header.data_size) - header.data_size, None)?;
            out.captured.retain(|(p, _)| p != &header.path);
            out.captured.push((header.path.clone(), data));
        } else {
            s.pass(padded(header.data_size), None)?;
        }
        if watched {
            out.found.push(Found {
                path: header.path,
                typeflag,
                meta: header.meta,
                start,
                end: s.pos,
            });
        }
    }
    out.total_len = s.pos;
    drop(s);
    out.prefix_states = prefix_states;
    out.pins = index.filter(BlockIndex::whole_file).map(|_| pins);
    Ok(out)
}

/// Closes the speculative frame at the end of the entries, if one is open.
fn end_speculation(s: &mut Stream, end: u64) -> Option<Speculated> {
    let done = s.tee.take()?.end_at(end);
    done.map_err(|e| tracing::debug!(error = %e, "speculative compression failed"))
        .ok()
}

/// Tests and benchmarks compare the fast paths against the full rewrite.
fn full_rewrite() -> bool {
    std::env::var_os("IMPRINT_FULL_REWRITE").is_some()
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

/// The largest id an 8-byte octal field holds.
const OCTAL_ID_MAX: u64 = 0o7777777;

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

/// The bytes of one new entry in the archive's own style: extension
/// headers if needed, the header, the data and its padding.
fn encode_entry(
    style: HeaderStyle,
    dot_slash: bool,
    entry: &PlanEntry,
    mtime: i64,
) -> Zeroizing<Vec<u8>> {
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
    let meta = FileMeta {
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
    };
    let typeflag = if is_dir {
        ::tar::EntryType::Directory
    } else {
        ::tar::EntryType::Regular
    };
    let uname = entry.owner.user_name.as_deref().unwrap_or("");
    let gname = entry.owner.group_name.as_deref().unwrap_or("");
    let octal_max = 0o7777777u64;
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
        _ => ustar_split(&name).unwrap_or(("", "")),
    };
    let mut records = Vec::new();
    if style != HeaderStyle::Gnu {
        if short.is_empty() {
            records.extend(pax_record("path", &name));
        }
        if meta.uid as u64 > octal_max {
            records.extend(pax_record("uid", &meta.uid.to_string()));
        }
        if meta.gid as u64 > octal_max {
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
            entry.path.file_name()
        );
        let pax_meta = FileMeta {
            kind: EntryType::Other,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
            size: records.len() as u64,
        };
        let pax_short = ustar_split(&pax_name).unwrap_or(("", entry.path.file_name()));
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
        style, short, prefix, typeflag, &meta, uname, gname,
    ));
    push_padded(&mut out, content);
    out
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = padded(data.len() as u64) - data.len() as u64;
    out.extend(std::iter::repeat_n(0u8, pad as usize));
}

/// One step of the rewrite: copy a range of the decompressed input, or
/// insert new bytes.
enum Piece {
    Copy { start: u64, end: u64 },
    Insert(Zeroizing<Vec<u8>>),
}

impl Piece {
    /// Bytes it puts in the output.
    fn len(&self) -> u64 {
        match self {
            Piece::Copy { start, end } => end - start,
            Piece::Insert(bytes) => bytes.len() as u64,
        }
    }
}

/// Turns the plan into the edit list, checking every rule on the way.
fn edit_list(scan: &Scan, plan: &Plan) -> Result<Vec<Piece>, ImageError> {
    plan.check_existing(|p| Ok::<_, ImageError>(scan.existing(&p.relative())))?;
    let style = scan.style.unwrap_or(HeaderStyle::Ustar);
    let dot_slash = scan.dot_slash.unwrap_or(false);
    // (position in the input, bytes to insert there, input bytes to skip)
    let mut edits: Vec<(u64, Zeroizing<Vec<u8>>, u64)> = Vec::new();
    let mut appended: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
    for entry in &plan.entries {
        let rel = entry.path.relative();
        let existing: Vec<&Found> = scan.found.iter().filter(|f| f.path == rel).collect();
        // Plan::check_existing above refused anything in the way.
        match &entry.kind {
            PlanKind::Dir => {
                if existing.is_empty() && !scan.has_dir(&rel) {
                    appended.extend_from_slice(&encode_entry(style, dot_slash, entry, plan.mtime))
                }
            }
            PlanKind::File(_) => {
                let bytes = encode_entry(style, dot_slash, entry, plan.mtime);
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
pub struct TarBackend {
    path: PathBuf,
    codec: Compression,
    scratch_dir: PathBuf,
    targets: Vec<String>,
    watch: Vec<String>,
    scan: Option<Scan>,
    /// SHA-256 state after the kept prefix, shared by a batch's outputs.
    prefix_hash: Option<(PrefixKey, Sha256)>,
}

impl TarBackend {
    /// `targets` are the paths the overlay may write; the scan records what
    /// the archive holds at those paths and their parents.
    pub fn open(
        path: &Path,
        codec: Compression,
        targets: &[ImagePath],
        scratch_dir: &Path,
    ) -> Result<TarBackend, TarError> {
        Ok(TarBackend {
            path: path.to_path_buf(),
            codec,
            scratch_dir: scratch_dir.to_path_buf(),
            targets: targets.iter().map(|t| t.relative()).collect(),
            watch: watch_list(targets),
            scan: None,
            prefix_hash: None,
        })
    }

    fn scan(&mut self) -> Result<&Scan, TarError> {
        if self.scan.is_none() {
            let capture = ["etc/passwd".to_string(), "etc/group".to_string()];
            let writing = ForWriting {
                scratch_dir: &self.scratch_dir,
                targets: &self.targets,
            };
            self.scan = Some(scan(
                &self.path,
                self.codec,
                &self.watch,
                &capture,
                MAX_DB_SIZE,
                Some(&writing),
            )?);
        }
        Ok(self.scan.as_ref().expect("just set"))
    }
}

impl ImageBackend for TarBackend {
    fn facts(&mut self) -> Result<ImageFacts, ImageError> {
        let scan = self.scan()?;
        let reference_mtime = scan
            .entry("etc")
            .or_else(|| scan.found.iter().max_by_key(|f| f.meta.mtime))
            .map(|f| f.meta.mtime)
            .unwrap_or(0);
        Ok(ImageFacts {
            passwd: scan.captured("etc/passwd"),
            group: scan.captured("etc/group"),
            reference_mtime,
        })
    }

    fn apply(&mut self, plan: &Plan, out: &mut TempOutput) -> Result<(), ImageError> {
        let missing: Vec<ImagePath> = plan
            .entries
            .iter()
            .map(|e| e.path.clone())
            .filter(|p| !self.watch.contains(&p.relative()))
            .collect();
        if !missing.is_empty() {
            // The plan names paths the scan did not watch: scan again.
            self.watch.extend(watch_list(&missing));
            self.scan = None;
        }
        self.scan()?;
        let scan = self.scan.as_ref().expect("scanned above");
        let pieces = edit_list(scan, plan)?;
        let open_err = |source| ImageError::Open {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(open_err)?;
        progress::start("writing", file.metadata().map_err(open_err)?.len());
        let stream = |inner: Box<dyn Read + Send>, pos: u64| Stream {
            inner,
            pos,
            path: &self.path,
            codec: self.codec,
            buf: Vec::new(),
            tee: None,
        };
        let cut = first_change(&pieces);
        let start = tail_start(self.codec, scan, &pieces, cut);
        tracing::debug!(
            first_change = cut,
            pieces = pieces.len(),
            rewrite = match &start {
                Some(TailStart::Plain) => "plain prefix copy".to_string(),
                Some(TailStart::Gzip(b)) =>
                    format!("gzip tail from bit {} (byte {} of output)", b.bit, b.out),
                Some(TailStart::Bzip2(b)) =>
                    format!("bzip2 tail from bit {} (byte {} of output)", b.bit, b.out),
                Some(TailStart::Zstd(b)) => format!(
                    "zstd blocks kept up to byte {}, raw blocks from byte {} of output",
                    b.offset, b.out
                ),
                Some(TailStart::Frame(s)) => format!(
                    "{} frame of {} bytes kept, new frame from byte {}",
                    self.codec.name(),
                    s.compressed,
                    s.uncompressed
                ),
                None => "full rewrite".to_string(),
            },
            "tar plan"
        );
        match start {
            Some(TailStart::Plain) => {
                let scanned = scan.prefix_states.iter().find(|p| p.len == cut);
                let hashed = match scanned {
                    Some(p) => p.state.clone(),
                    None => {
                        prefix_hash(&mut self.prefix_hash, &file, &[], 0, cut).map_err(open_err)?
                    }
                };
                out.splice_prefix(&file, cut, hashed)
                    .map_err(ImageError::Output)?;
                let mut rest = file.try_clone().map_err(open_err)?;
                rest.seek(SeekFrom::Start(cut)).map_err(open_err)?;
                let mut input = stream(Box::new(BufReader::with_capacity(1 << 20, rest)), cut);
                write_pieces(&mut input, &pieces, out)?;
            }
            Some(TailStart::Gzip(boundary)) => {
                let last = keep_bits(&mut self.prefix_hash, &file, &self.path, boundary.bit, out)?;
                let tail = gzip::TailInflater::new(file.try_clone().map_err(open_err)?, &boundary)
                    .map_err(open_err)?;
                let mut input = stream(Box::new(tail), boundary.out);
                let mut deflater = gzip::TailDeflater::new(&mut *out, &boundary, last, 6)
                    .map_err(ImageError::Output)?;
                write_pieces(&mut input, &pieces, &mut deflater)?;
                deflater.finish().map_err(ImageError::Output)?;
            }
            Some(TailStart::Frame(prefix)) => {
                out.splice_prefix(
                    prefix.scratch.file(),
                    prefix.compressed,
                    prefix.sha256.clone(),
                )
                .map_err(ImageError::Output)?;
                // Everything from the cut on is new bytes: nothing more of
                // the input is read.
                let mut input = stream(Box::new(io::empty()), cut);
                let mut encoder = self.codec.encoder(&mut *out).map_err(ImageError::Output)?;
                write_pieces(&mut input, &pieces, &mut encoder)?;
                encoder.finish_stream().map_err(ImageError::Output)?;
            }
            Some(TailStart::Zstd(boundary)) => {
                let new_len: u64 = pieces.iter().map(Piece::len).sum();
                let header = boundary.header.with_content_size(new_len);
                let from = boundary.header.len as u64;
                let hashed =
                    prefix_hash(&mut self.prefix_hash, &file, &header, from, boundary.offset)
                        .map_err(open_err)?;
                out.write_all(&header).map_err(ImageError::Output)?;
                out.splice(&file, from, boundary.offset - from, hashed)
                    .map_err(ImageError::Output)?;
                // The block that holds the cut was kept whole by the scan.
                let block = io::Cursor::new(boundary.data.as_ref().clone());
                let mut input = stream(Box::new(block), boundary.out);
                let mut tail = zst::TailWriter::new(&mut *out, &boundary, new_len);
                write_pieces(&mut input, &pieces, &mut tail)?;
                tail.finish().map_err(ImageError::Output)?;
            }
            Some(TailStart::Bzip2(boundary)) => {
                let last = keep_bits(&mut self.prefix_hash, &file, &self.path, boundary.bit, out)?;
                let mut rest = file.try_clone().map_err(open_err)?;
                rest.seek(SeekFrom::Start(boundary.bit / 8))
                    .map_err(open_err)?;
                let (tail, _) = bz2::ParallelDecoder::new(rest, Some(boundary.clone()));
                let mut input = stream(Box::new(tail), boundary.out);
                let mut encoder = bz2::BlockEncoder::resume(&mut *out, &boundary, last);
                write_pieces(&mut input, &pieces, &mut encoder)?;
                encoder.finish().map_err(ImageError::Output)?;
            }
            None => {
                let mut input = stream(self.codec.decoder(file), 0);
                let mut encoder = self.codec.encoder(&mut *out).map_err(ImageError::Output)?;
                write_pieces(&mut input, &pieces, &mut encoder)?;
                encoder.finish_stream().map_err(ImageError::Output)?;
            }
        }
        Ok(())
    }
}

/// The first byte of the uncompressed archive that the edit list changes:
/// everything before it is the input's own bytes.
fn first_change(pieces: &[Piece]) -> u64 {
    let mut pos = 0;
    for piece in pieces {
        match piece {
            Piece::Copy { start, end } if *start == pos => pos = *end,
            _ => return pos,
        }
    }
    pos
}

/// Where the rewrite can start instead of at byte 0.
enum TailStart<'a> {
    /// zstd, xz: keep the frame compressed during the scan.
    Frame(&'a Speculated),
    /// Plain tar: copy the unchanged prefix as it is.
    Plain,
    /// gzip: keep the compressed bytes before this block boundary.
    Gzip(gzip::Boundary),
    /// bzip2: keep the blocks before this one.
    Bzip2(bz2::Boundary),
    /// zstd: keep the blocks before this one; the rest goes raw.
    Zstd(zst::Boundary),
}

fn tail_start<'a>(
    codec: Compression,
    scan: &'a Scan,
    pieces: &[Piece],
    cut: u64,
) -> Option<TailStart<'a>> {
    if full_rewrite() {
        return None;
    }
    match codec {
        // The raw tail holds new bytes and the kept block's own: every
        // input byte it copies must lie in that block.
        Compression::Zstd => scan
            .pins
            .as_ref()?
            .iter()
            .filter_map(|p| match p {
                Pin::Zstd(b) => Some(b),
                _ => None,
            })
            .filter(|b| b.out <= cut)
            .max_by_key(|b| b.out)
            .filter(|b| {
                let held = b.out + b.data.len() as u64;
                pieces.iter().all(|p| match p {
                    Piece::Copy { end, .. } => *end <= held,
                    Piece::Insert(_) => true,
                })
            })
            .cloned()
            .map(TailStart::Zstd),
        Compression::Xz => scan
            .speculated
            .as_ref()
            .filter(|s| s.uncompressed == cut)
            .map(TailStart::Frame),
        Compression::None => Some(TailStart::Plain),
        Compression::Gzip | Compression::Bzip2 => scan
            .pins
            .as_ref()?
            .iter()
            .filter(|b| b.out() <= cut)
            .max_by_key(|b| b.out())
            .map(|pin| match pin {
                Pin::Gzip(b) => TailStart::Gzip(b.clone()),
                Pin::Bzip2(b) => TailStart::Bzip2(b.clone()),
                Pin::Zstd(b) => TailStart::Zstd(b.clone()),
            }),
    }
}

/// Starts `out` with the input's bytes before bit `bit` (a block boundary
/// of a gzip or bzip2 stream), hashed once per batch, and returns the byte
/// that holds the bits before `bit` in its partial byte (0 when `bit` is on
/// a byte boundary): the tail writer carries them on.
fn keep_bits(
    cache: &mut Option<(PrefixKey, Sha256)>,
    file: &File,
    path: &Path,
    bit: u64,
    out: &mut TempOutput,
) -> Result<u8, ImageError> {
    let open_err = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let keep = bit / 8;
    let hashed = prefix_hash(cache, file, &[], 0, keep).map_err(open_err)?;
    out.splice_prefix(file, keep, hashed)
        .map_err(ImageError::Output)?;
    let mut last = [0u8; 1];
    if bit % 8 != 0 {
        file.read_exact_at(&mut last, keep).map_err(open_err)?;
    }
    Ok(last[0])
}

/// The start of an output: new bytes, then the input's bytes in a range.
type PrefixKey = (Vec<u8>, u64, u64);

/// SHA-256 state after `head` and then the input's bytes `from..end` (the
/// input's own head may be replaced, e.g. a zstd frame header), computed
/// once and reused: every serial of a batch shares the prefix.
fn prefix_hash(
    cache: &mut Option<(PrefixKey, Sha256)>,
    file: &File,
    head: &[u8],
    from: u64,
    end: u64,
) -> io::Result<Sha256> {
    let key = (head.to_vec(), from, end);
    if let Some((cached, state)) = cache {
        if *cached == key {
            return Ok(state.clone());
        }
    }
    let mut start = Sha256::new();
    start.update(head);
    let state = output::hash_range(start, file, from, end.saturating_sub(from))?;
    *cache = Some((key, state.clone()));
    Ok(state)
}

/// Streams the edit list from `input` (which may start part-way, at
/// `input.pos`) into `sink`.
fn write_pieces(
    input: &mut Stream,
    pieces: &[Piece],
    sink: &mut dyn Write,
) -> Result<(), ImageError> {
    for piece in pieces {
        match piece {
            Piece::Copy { start, end } => {
                if *end <= input.pos {
                    continue;
                }
                let start = (*start).max(input.pos);
                input.pass(start - input.pos, None)?;
                input.pass(end - start, Some(&mut *sink))?;
            }
            Piece::Insert(bytes) => sink.write_all(bytes).map_err(ImageError::Output)?,
        }
    }
    Ok(())
}

/// A tar archive opened for reading single entries (verify).
pub struct TarReader {
    path: PathBuf,
    codec: Compression,
}

impl TarReader {
    pub fn open(path: &Path, codec: Compression) -> Result<TarReader, TarError> {
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
        let scan = scan(&self.path, self.codec, &rel, &rel, max_content, None)?;
        Ok(rel
            .iter()
            .map(|p| {
                // As when extracting, the last entry for a path wins.
                let found = scan.found.iter().rev().find(|f| &f.path == p)?;
                let mut meta = found.meta.clone();
                if found.typeflag == b'1' {
                    meta.kind = EntryType::Other;
                }
                Some((meta, scan.captured(p)))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats `value` as a NUL-terminated octal field of `width` bytes, or
    /// GNU base-256 when it does not fit and base-256 is allowed.
    fn put_number(field: &mut [u8], value: u64, base256_ok: bool) -> bool {
        let digits = field.len() - 1;
        let text = format!("{value:0digits$o}");
        if text.len() <= digits {
            field[..digits].copy_from_slice(text.as_bytes());
            field[digits] = 0;
            return true;
        }
        if base256_ok {
            field.fill(0);
            field[0] = 0x80;
            let be = value.to_be_bytes();
            let n = field.len();
            field[n - 8..].copy_from_slice(&be);
            field[0] |= 0x80;
            return true;
        }
        false
    }

    /// The encoder before tar::Header, kept to compare.
    fn header_block_old(
        style: HeaderStyle,
        name: &str,
        prefix: &str,
        typeflag: u8,
        meta: &FileMeta,
        uname: &str,
        gname: &str,
    ) -> [u8; 512] {
        let mut h = [0u8; 512];
        let gnu = style == HeaderStyle::Gnu;
        put_str(&mut h[0..100], name);
        put_number(&mut h[100..108], meta.mode as u64, false);
        // Ids that do not fit in octal are carried by a pax header (or in GNU
        // base-256); the field then holds 0 for pax.
        if !put_number(&mut h[108..116], meta.uid as u64, gnu) {
            put_number(&mut h[108..116], 0, false);
        }
        if !put_number(&mut h[116..124], meta.gid as u64, gnu) {
            put_number(&mut h[116..124], 0, false);
        }
        put_number(&mut h[124..136], meta.size, gnu);
        put_number(&mut h[136..148], meta.mtime.max(0) as u64, gnu);
        h[156] = typeflag;
        if gnu {
            h[257..265].copy_from_slice(b"ustar  \0");
        } else {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            put_number(&mut h[329..337], 0, false);
            put_number(&mut h[337..345], 0, false);
            put_str(&mut h[345..500], prefix);
        }
        put_str(&mut h[265..297], uname);
        put_str(&mut h[297..329], gname);
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        h
    }

    /// New entries in each header style, as SHA-256 of their bytes: the
    /// digests were taken from the encoder before `tar::Header` (checked
    /// against it by the test below while both existed).
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
            };
            let bytes = encode_entry(style, dot_slash, &entry, 1_700_000_000);
            let got: String = Sha256::digest(&bytes[..])
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, digest, "{style:?} {path}");
        }
    }

    #[test]
    fn header_block_matches_the_encoder_before_tar_header() {
        use ::tar::EntryType as T;
        let names = [
            ("etc/azaion/device.conf", ""),
            (&*"n".repeat(100), &*"p".repeat(155)),
            ("./etc/", ""),
            ("././@LongLink", ""),
        ];
        let ids = [0u32, 1001, 0o7777777, 0o10000000, u32::MAX];
        let sizes = [0u64, 37, 0o77777777777];
        let mtimes = [-5i64, 0, 1_700_000_000, 0o77777777777];
        let users = [
            ("", ""),
            ("root", "root"),
            ("u".repeat(32).leak() as &str, "g".repeat(40).leak() as &str),
        ];
        let mut compared = 0;
        for style in [HeaderStyle::Ustar, HeaderStyle::Pax, HeaderStyle::Gnu] {
            for typeflag in [T::Regular, T::Directory, T::XHeader, T::GNULongName] {
                for (name, prefix) in names {
                    for &id in &ids {
                        for &size in &sizes {
                            for &mtime in &mtimes {
                                for (uname, gname) in users {
                                    let meta = FileMeta {
                                        kind: EntryType::Other,
                                        mode: 0o4755,
                                        uid: id,
                                        gid: id ^ 1,
                                        mtime,
                                        size,
                                    };
                                    let new = header_block(
                                        style, name, prefix, typeflag, &meta, uname, gname,
                                    );
                                    let old = header_block_old(
                                        style,
                                        name,
                                        prefix,
                                        typeflag.as_byte(),
                                        &meta,
                                        uname,
                                        gname,
                                    );
                                    assert_eq!(
                                        new[..],
                                        old[..],
                                        "{style:?} {typeflag:?} {name} {meta:?} {uname}"
                                    );
                                    compared += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(compared, 3 * 4 * 4 * 5 * 3 * 4 * 3);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        let mut f = [0u8; 8];
        assert!(put_number(&mut f, 4_000_000_000, true));
        assert_eq!(parse_number(&f), Some(4_000_000_000));
        assert!(!put_number(&mut f, 4_000_000_000, false));
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
    fn split_long_names() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        let (p, n) = ustar_split(&long).unwrap();
        assert_eq!(p.len(), 120);
        assert_eq!(n.len(), 50);
        assert!(ustar_split(&"x".repeat(300)).is_none());
    }
}
