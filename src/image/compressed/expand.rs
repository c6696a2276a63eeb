//! Decompressing the input once into a private scratch file beside the
//! output (zero runs become holes, so a mostly empty 16 GiB image costs its
//! data on disk), noting on the way, for a disk image, the input's block
//! boundary just before each partition: the first change lies at the start
//! of the rootfs partition (its superblock), so the writer can keep the
//! input's compressed bytes before it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::compress::boundary::{BlockIndex, Boundary};
use crate::compress::Compression;
use crate::image::{disk, ImageError};
use crate::io::output::Scratch;

/// The first bytes that are searched for the partition table: GPT's
/// header and entry array (16 KiB at LBA 2, or at LBA 2 of 4 KiB sectors)
/// and MBR's first extended boot records.
const HEAD: usize = 1 << 20;

/// Until the partition table is known the decoder is read in small steps,
/// so that no partition start is passed before it is known.
const HEAD_STEP: usize = 64 << 10;

/// A kept prefix shorter than this is not worth a second zstd frame or a
/// primed deflate stream (the partition table alone is below it).
pub(super) const MIN_KEPT: u64 = 64 << 10;

/// Boundaries noted at most: a real disk has a handful of partitions, a
/// hostile table thousands, and a gzip boundary holds a 32 KiB window.
const MAX_NOTED: usize = 64;

/// A compressed raw image, decompressed.
pub(super) struct Expanded {
    pub(super) scratch: Scratch,
    /// Boundaries of the input at or before partition starts, by `out`.
    pub(super) boundaries: Vec<Boundary>,
}

/// Decompresses `path` into a scratch file in `dir`. With `find_boundaries`
/// (a disk image), boundaries before partition starts are noted where the
/// codec has them; if the decoder that notes them meets something it does
/// not expect, the input is decoded again with the plain one, whose
/// messages users know.
pub(super) fn expand(
    path: &Path,
    codec: Compression,
    dir: &Path,
    find_boundaries: bool,
) -> Result<Expanded, ImageError> {
    // bzip2's and xz's indexing decoders are also the ones that decode on
    // all cores.
    if find_boundaries || codec.facts().parallel_decode {
        match expand_with(path, codec, dir, true) {
            Err(ImageError::Decompress { source, .. }) => {
                tracing::debug!(error = %source, "the indexing decoder stopped; decoding plainly");
            }
            Ok(mut expanded) if !find_boundaries => {
                expanded.boundaries.clear();
                return Ok(expanded);
            }
            other => return other,
        }
    }
    expand_with(path, codec, dir, false)
}

fn expand_with(
    path: &Path,
    codec: Compression,
    dir: &Path,
    indexed: bool,
) -> Result<Expanded, ImageError> {
    let open = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open)?;
    let compressed_len = file.metadata().map_err(open)?.len();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let scratch = Scratch::create_in(dir, &name).map_err(ImageError::Output)?;
    crate::io::progress::start("decompressing", compressed_len);
    let (mut decoder, index) = if indexed {
        BlockIndex::decoder(codec, file)
    } else {
        (codec.decoder(file), None)
    };
    let mut notes = index.map(Notes::new);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    // A bare ext2/3/4 image ends where its superblock says, a GPT disk
    // after its backup header: what a codec decodes past that end (a bomb
    // of 0xFF, a gigabyte of zeros) is never stored. It is still decoded,
    // into nothing, because the stream's own checks (gzip's CRC and length,
    // zstd's checksum, xz's index, what follows the last stream) come at
    // its end: without them damage inside the image or a cut download
    // would pass unseen.
    let mut limit = u64::MAX;
    let mut end_of = "";
    let mut head = Vec::new();
    let decode_error = |source| ImageError::Decompress {
        path: path.to_path_buf(),
        codec: codec.name(),
        source,
    };
    loop {
        if at >= limit {
            let mut past = 0u64;
            loop {
                let n = fill(&mut decoder, &mut buf).map_err(decode_error)?;
                if n == 0 {
                    break;
                }
                past += n as u64;
            }
            if past > 0 {
                tracing::warn!(
                    "{}: its {end_of} at byte {limit}; what the stream holds past it is checked but not kept ({past} bytes), and no output carries it",
                    path.display()
                );
            }
            at = limit;
            break;
        }
        let want = notes.as_ref().map_or(buf.len(), |n| n.step(at, buf.len()));
        let n = fill(&mut decoder, &mut buf[..want]).map_err(decode_error)?;
        if n == 0 {
            break;
        }
        if head.len() < END_HEAD {
            let take = n.min(END_HEAD - head.len());
            head.extend_from_slice(&buf[..take]);
            if head.len() == END_HEAD {
                if let Some((end, what)) = stream_end(&head) {
                    (limit, end_of) = (end, what);
                }
            }
        }
        let n = n.min(usize::try_from(limit.saturating_sub(at)).unwrap_or(usize::MAX));
        for piece in buf[..n].chunks(4096) {
            if piece.iter().any(|&b| b != 0) {
                scratch
                    .file()
                    .write_all_at(piece, at)
                    .map_err(ImageError::Output)?;
            }
            at += piece.len() as u64;
        }
        if let Some(notes) = &mut notes {
            notes.passed(&buf[..n], at);
        }
    }
    // Trailing zeros were skipped: the length makes them a hole.
    scratch.file().set_len(at).map_err(ImageError::Output)?;
    crate::io::progress::finish();
    let boundaries = notes.map(Notes::finish).unwrap_or_default();
    Ok(Expanded {
        scratch,
        boundaries,
    })
}

/// What the expansion notes on its way: the disk's first bytes until the
/// partition starts are known, then the boundary before each start.
struct Notes {
    index: BlockIndex,
    head: Vec<u8>,
    /// How much of the head the partition table was last read from.
    parsed: usize,
    /// Partition starts not yet reached.
    pending: BTreeSet<u64>,
    /// Starts already handled.
    seen: BTreeSet<u64>,
    boundaries: Vec<Boundary>,
}

impl Notes {
    fn new(index: BlockIndex) -> Notes {
        Notes {
            index,
            head: Vec::new(),
            parsed: 0,
            pending: BTreeSet::new(),
            seen: BTreeSet::new(),
            boundaries: Vec::new(),
        }
    }

    /// How much to decode next from `at`: at most up to the next pending
    /// start, in small steps while the table is being read.
    fn step(&self, at: u64, max: usize) -> usize {
        let mut want = max;
        if self.head.len() < HEAD {
            want = want.min(HEAD_STEP);
        }
        if let Some(&next) = self.pending.range(at + 1..).next() {
            want = want.min(usize::try_from(next - at).unwrap_or(usize::MAX));
        }
        want
    }

    /// `data` was decoded, ending at uncompressed offset `at`.
    fn passed(&mut self, data: &[u8], at: u64) {
        if self.head.len() < HEAD {
            let take = data.len().min(HEAD - self.head.len());
            self.head.extend_from_slice(&data[..take]);
            // Starts only grow as more of the head (EBR chains) is seen;
            // reading the table once a step would cost a CRC of up to a
            // MiB each time a hostile table puts starts 512 bytes apart.
            if self.head.len() >= self.parsed + HEAD_STEP || self.head.len() == HEAD {
                self.parsed = self.head.len();
                for start in disk::starts_in_head(&self.head).unwrap_or_default() {
                    if !self.seen.contains(&start) {
                        self.pending.insert(start);
                    }
                }
            }
        }
        while let Some(&start) = self.pending.first().filter(|&&s| s <= at) {
            self.pending.remove(&start);
            self.seen.insert(start);
            if self.boundaries.len() == MAX_NOTED {
                continue;
            }
            match self.index.boundary_before(start) {
                Some(Boundary::Zstd(mut b)) if b.out >= MIN_KEPT => {
                    // A zstd cut needs no block content (the tar layer's
                    // raw tail does): do not hold 128 KiB a boundary.
                    b.data = Default::default();
                    self.boundaries.push(Boundary::Zstd(b));
                }
                Some(b) if b.out() >= MIN_KEPT => self.boundaries.push(b),
                _ => {}
            }
        }
    }

    /// The boundaries, if the file is one stream a rewrite can continue.
    fn finish(mut self) -> Vec<Boundary> {
        if !self.index.whole_file() {
            return Vec::new();
        }
        self.boundaries.sort_by_key(Boundary::out);
        self.boundaries.dedup_by_key(|b| b.out());
        self.boundaries
    }
}

/// Bytes that tell where the stream's content ends: an ext2/3/4 boot block
/// and superblock (2 KiB), or a disk's partition table header.
const END_HEAD: usize = disk::DETECT_HEAD;

/// Where the content of a stream starting with `head` ends, and what says
/// so: a bare ext2/3/4 filesystem's superblock, else a GPT disk's backup
/// header. `None` for anything else (a DOS-labelled disk too), decoded to
/// its end.
fn stream_end(head: &[u8]) -> Option<(u64, &'static str)> {
    if let Some(size) = bare_filesystem_size(head) {
        return Some((size, "ext2/3/4 filesystem ends"));
    }
    disk::end_in_head(head).map(|end| (end, "GPT disk ends (after its backup header)"))
}

/// The size an ext2/3/4 filesystem says it has, if `head` (at least its
/// first 2 KiB) is one and not a disk (an MBR or protective MBR signature
/// at 510: a disk's own end is its partition table's business).
fn bare_filesystem_size(head: &[u8]) -> Option<u64> {
    if head[510..512] == [0x55, 0xAA] {
        return None;
    }
    crate::image::ext4::reader::Superblock::parse(&head[1024..2048])
        .ok()
        .map(|sb| sb.image_bytes())
}

/// Reads until `buf` is full or the stream ends.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
