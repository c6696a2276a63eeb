//! Android sparse images (`system.img` for flash.sh, meta-tegra's
//! `ext4.simg`): parse, read in place, expand, and re-encode after an edit.
//!
//! The format (AOSP libsparse, sparse_format.h) is a 28-byte file header and
//! a list of chunks, each a 12-byte header and maybe data: RAW blocks, a
//! 4-byte FILL pattern, DONT_CARE (no data; the flasher leaves those blocks
//! alone) or a CRC32 of what came before. Both header sizes are recorded in
//! the file header and honoured, so newer, longer headers still parse.
//!
//! The ext4 inside is edited by the ext4 module: the image is expanded into
//! a scratch file (holes for DONT_CARE and zero FILL), libext2fs edits it,
//! and [`encode`] writes the result keeping every untouched chunk as it was.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::ext4::{self, disk::ReadAt, Ext4Image};
use super::{Found, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::output::{Scratch, TempOutput};
use crate::overlay::{ImagePath, Plan};

/// The sparse file magic, little-endian at offset 0.
pub const MAGIC: u32 = 0xed26_ff3a;

const FILE_HEADER_LEN: usize = 28;
const CHUNK_HEADER_LEN: usize = 12;
const CHUNK_RAW: u16 = 0xCAC1;
const CHUNK_FILL: u16 = 0xCAC2;
const CHUNK_DONT_CARE: u16 = 0xCAC3;
const CHUNK_CRC32: u16 = 0xCAC4;

/// Bytes moved per read or write, whatever the image size.
const IO_BUF: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum SparseError {
    #[error("reading the sparse image failed: {0}")]
    Read(io::Error),
    #[error("not a valid sparse image: {0}")]
    Header(String),
    #[error("sparse image chunk {index} (at byte {offset}): {why}; the file is corrupt")]
    Chunk {
        index: u32,
        offset: u64,
        why: String,
    },
    #[error("the sparse image is truncated: {0}")]
    Truncated(String),
    #[error("the sparse image's chunks cover {found} blocks but its header says {declared}; the file is corrupt")]
    BlockCount { declared: u64, found: u64 },
    #[error("the sparse image has {0} bytes after its last chunk; the file is corrupt")]
    TrailingData(u64),
    #[error("the sparse image's header says {declared} chunks but it holds {found}; the file is corrupt")]
    ChunkCount { declared: u32, found: u32 },
    #[error("writing the sparse image failed: {0}")]
    Write(io::Error),
    #[error("the edited image is {found} bytes but the sparse image expands to {expected}; it cannot be re-encoded")]
    SizeMismatch { expected: u64, found: u64 },
    #[error(
        "a {blocks}-block image is too large for a sparse image, which counts blocks in 32 bits"
    )]
    TooLarge { blocks: u64 },
}

/// Where a chunk's blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkData {
    /// Stored in the sparse file at this byte offset.
    Raw { offset: u64 },
    /// Every 4 bytes are this pattern.
    Fill([u8; 4]),
    /// Not stored; reads as zeros, and the flasher leaves the blocks alone.
    DontCare,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub first_block: u64,
    pub blocks: u64,
    pub data: ChunkData,
}

/// The parsed chunk list (CRC32 chunks are checked for shape and dropped:
/// they would not match after an edit anyway).
#[derive(Debug, Clone)]
pub struct SparseLayout {
    pub block_size: u32,
    pub total_blocks: u64,
    pub chunks: Vec<Chunk>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl SparseLayout {
    /// Parses and validates the header and the whole chunk list; RAW data
    /// is skipped, not read.
    pub fn parse(file: &File) -> Result<SparseLayout, SparseError> {
        let file_len = file.metadata().map_err(SparseError::Read)?.len();
        let read = |offset: u64, len: usize, what: &str| -> Result<Vec<u8>, SparseError> {
            if offset + len as u64 > file_len {
                return Err(SparseError::Truncated(format!(
                    "{what} at byte {offset} needs {len} bytes but the file ends at {file_len}"
                )));
            }
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(SparseError::Read)?;
            Ok(buf)
        };
        let h = read(0, FILE_HEADER_LEN, "the file header")?;
        if le32(&h, 0) != MAGIC {
            return Err(SparseError::Header("no sparse magic 0xed26ff3a".into()));
        }
        if le16(&h, 4) != 1 {
            return Err(SparseError::Header(format!(
                "major version {} (only 1 exists)",
                le16(&h, 4)
            )));
        }
        let file_header_len = le16(&h, 8) as usize;
        let chunk_header_len = le16(&h, 10) as usize;
        let block_size = le32(&h, 12);
        let total_blocks = le32(&h, 16) as u64;
        let total_chunks = le32(&h, 20);
        if file_header_len < FILE_HEADER_LEN || chunk_header_len < CHUNK_HEADER_LEN {
            return Err(SparseError::Header(format!(
                "header sizes {file_header_len}/{chunk_header_len} are below the minimum 28/12"
            )));
        }
        if block_size == 0 || block_size % 4 != 0 {
            return Err(SparseError::Header(format!(
                "block size {block_size} is not a positive multiple of 4"
            )));
        }
        if (file_header_len as u64) > file_len {
            return Err(SparseError::Truncated(format!(
                "the file header says it is {file_header_len} bytes but the file ends at {file_len}"
            )));
        }
        let bs = block_size as u64;
        let mut chunks = Vec::new();
        let mut pos = file_header_len as u64;
        let mut next_block = 0u64;
        let mut index = 0u32;
        while pos < file_len && index < total_chunks {
            let c = read(pos, chunk_header_len, "a chunk header")?;
            let (kind, blocks, total) = (le16(&c, 0), le32(&c, 4) as u64, le32(&c, 8) as u64);
            let body = pos + chunk_header_len as u64;
            let bad = |why: String| SparseError::Chunk {
                index,
                offset: pos,
                why,
            };
            let expected_total = chunk_header_len as u64
                + match kind {
                    CHUNK_RAW => blocks * bs,
                    CHUNK_FILL | CHUNK_CRC32 => 4,
                    CHUNK_DONT_CARE => 0,
                    other => return Err(bad(format!("unknown chunk type 0x{other:04X}"))),
                };
            if total != expected_total {
                return Err(bad(format!(
                    "its size field says {total} bytes but a chunk of this type and {blocks} blocks takes {expected_total}"
                )));
            }
            if pos + total > file_len {
                return Err(SparseError::Truncated(format!(
                    "chunk {index} at byte {pos} needs {total} bytes but the file ends at {file_len}"
                )));
            }
            let data = match kind {
                CHUNK_RAW => Some(ChunkData::Raw { offset: body }),
                CHUNK_FILL => {
                    let p = read(body, 4, "a fill pattern")?;
                    Some(ChunkData::Fill([p[0], p[1], p[2], p[3]]))
                }
                CHUNK_DONT_CARE => Some(ChunkData::DontCare),
                _ => None, // CRC32
            };
            if let Some(data) = data {
                if blocks > 0 {
                    chunks.push(Chunk {
                        first_block: next_block,
                        blocks,
                        data,
                    });
                }
                next_block += blocks;
            }
            pos += total;
            index += 1;
        }
        if index != total_chunks {
            // The file ended cleanly after a chunk. If blocks are missing too
            // it was cut short; if not, the chunk count is what is wrong.
            return Err(if next_block < total_blocks {
                SparseError::Truncated(format!(
                    "the header promises {total_chunks} chunks but the file ends after {index}"
                ))
            } else {
                SparseError::ChunkCount {
                    declared: total_chunks,
                    found: index,
                }
            });
        }
        if pos < file_len {
            return Err(SparseError::TrailingData(file_len - pos));
        }
        if next_block != total_blocks {
            return Err(SparseError::BlockCount {
                declared: total_blocks,
                found: next_block,
            });
        }
        Ok(SparseLayout {
            block_size,
            total_blocks,
            chunks,
        })
    }

    /// The size of the expanded image.
    pub fn raw_size(&self) -> u64 {
        self.total_blocks * self.block_size as u64
    }

    /// One DONT_CARE chunk over the whole of a raw image: encoding a raw
    /// file "edited" from this layout turns it into a sparse image.
    pub fn all_dont_care(raw_size: u64, block_size: u32) -> SparseLayout {
        let blocks = raw_size / block_size as u64;
        SparseLayout {
            block_size,
            total_blocks: blocks,
            chunks: vec![Chunk {
                first_block: 0,
                blocks,
                data: ChunkData::DontCare,
            }],
        }
    }
}

/// Random-access reads of the expanded image, without expanding it.
pub struct SparseView {
    file: File,
    layout: SparseLayout,
}

impl SparseView {
    pub fn new(file: File, layout: SparseLayout) -> SparseView {
        SparseView { file, layout }
    }

    pub fn open(path: &Path) -> Result<SparseView, SparseError> {
        let file = File::open(path).map_err(SparseError::Read)?;
        let layout = SparseLayout::parse(&file)?;
        Ok(SparseView { file, layout })
    }

    pub fn layout(&self) -> &SparseLayout {
        &self.layout
    }

    /// Fills `buf` with the expanded bytes starting at `offset`.
    pub fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        let bs = self.layout.block_size as u64;
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.layout.raw_size()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end of the {}-byte sparse image",
                    buf.len(),
                    self.layout.raw_size()
                ),
            ));
        }
        while !buf.is_empty() {
            let block = offset / bs;
            let i = self
                .layout
                .chunks
                .partition_point(|c| c.first_block + c.blocks <= block);
            // Parsed layouts cover every block; a hand-made one may not.
            let chunk = match self.layout.chunks.get(i) {
                Some(c) if c.first_block <= block => c,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("block {block} is in no chunk of the sparse layout"),
                    ))
                }
            };
            let start = chunk.first_block * bs;
            let end = start + chunk.blocks * bs;
            let n = buf.len().min((end - offset) as usize);
            let (now, rest) = buf.split_at_mut(n);
            match chunk.data {
                ChunkData::Raw { offset: data } => {
                    self.file.read_exact_at(now, data + (offset - start))?
                }
                ChunkData::Fill(p) => {
                    for (k, b) in now.iter_mut().enumerate() {
                        *b = p[((offset + k as u64) % 4) as usize];
                    }
                }
                ChunkData::DontCare => now.fill(0),
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }
}

impl ReadAt for SparseView {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        SparseView::read_at(self, offset, buf)
    }
}

/// Writes the expanded image into the empty file `out`. DONT_CARE and
/// all-zero FILL chunks stay holes.
pub fn expand(view: &SparseView, out: &File) -> Result<(), SparseError> {
    let layout = view.layout();
    crate::progress::start("expanding", layout.raw_size());
    out.set_len(layout.raw_size()).map_err(SparseError::Write)?;
    let bs = layout.block_size as u64;
    let mut buf = vec![0u8; IO_BUF];
    for chunk in &layout.chunks {
        if matches!(
            chunk.data,
            ChunkData::DontCare | ChunkData::Fill([0, 0, 0, 0])
        ) {
            continue;
        }
        let start = chunk.first_block * bs;
        let len = chunk.blocks * bs;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(IO_BUF as u64) as usize;
            view.read_at(start + done, &mut buf[..n])
                .map_err(SparseError::Read)?;
            out.write_all_at(&buf[..n], start + done)
                .map_err(SparseError::Write)?;
            done += n as u64;
            crate::progress::advance(n as u64);
        }
    }
    Ok(())
}

/// Where the bytes of a planned RAW chunk come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The original sparse file (an untouched RAW chunk).
    Original,
    /// The edited expansion.
    Edited,
}

/// What one chunk of the re-encoded image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Raw(Source),
    Fill([u8; 4]),
    DontCare,
}

/// One chunk of the re-encoded image. The whole list is planned before
/// anything is written because the file header carries the chunk count and
/// `out` cannot seek back to patch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    first_block: u64,
    blocks: u64,
    body: Body,
}

/// The most blocks one RAW chunk can hold: its total_sz field, header
/// included, is 32 bits.
fn max_raw_blocks(block_size: u32) -> u64 {
    (u32::MAX as u64 - CHUNK_HEADER_LEN as u64) / block_size as u64
}

/// Appends `piece` to `plan`, split so that every chunk's size fields fit in
/// 32 bits (a run of edited blocks carved out of a huge DONT_CARE chunk can
/// exceed 4 GiB of data).
fn push_split(plan: &mut Vec<Planned>, piece: Planned, max_raw_blocks: u64) {
    let limit = match piece.body {
        Body::Raw(_) => max_raw_blocks,
        Body::Fill(_) | Body::DontCare => u32::MAX as u64,
    };
    let end = piece.first_block + piece.blocks;
    let mut first_block = piece.first_block;
    while first_block < end {
        let blocks = (end - first_block).min(limit);
        plan.push(Planned {
            first_block,
            blocks,
            body: piece.body,
        });
        first_block += blocks;
    }
}

/// Buffers for comparing a chunk's blocks a bounded piece at a time.
struct CompareBufs {
    edited: Vec<u8>,
    original: Vec<u8>,
}

/// Splits `chunk` into runs of (changed?, blocks), comparing `edited` with
/// what the chunk expands to.
///
/// In DONT_CARE chunks only a non-zero block counts as changed: the flasher
/// never writes those blocks, so a zero block there carries nothing the
/// device needs, and the expansion reads zeros there anyway.
fn changed_runs(
    original: &SparseView,
    edited: &File,
    chunk: &Chunk,
    bufs: &mut CompareBufs,
) -> Result<Vec<(bool, u64)>, SparseError> {
    let bs = original.layout().block_size as usize;
    let per_buf = (bufs.edited.len() / bs).max(1) as u64;
    let mut runs: Vec<(bool, u64)> = Vec::new();
    let mut done = 0u64;
    while done < chunk.blocks {
        let n = (chunk.blocks - done).min(per_buf) as usize;
        let at = (chunk.first_block + done) * bs as u64;
        let new = &mut bufs.edited[..n * bs];
        edited.read_exact_at(new, at).map_err(SparseError::Read)?;
        if let ChunkData::Raw { offset } = chunk.data {
            original
                .file
                .read_exact_at(&mut bufs.original[..n * bs], offset + done * bs as u64)
                .map_err(SparseError::Read)?;
        }
        for (k, block) in new.chunks_exact(bs).enumerate() {
            let changed = match chunk.data {
                ChunkData::Raw { .. } => block != &bufs.original[k * bs..(k + 1) * bs],
                ChunkData::Fill(p) => block.chunks_exact(4).any(|w| w != p),
                ChunkData::DontCare => block.iter().any(|&b| b != 0),
            };
            match runs.last_mut() {
                Some((c, len)) if *c == changed => *len += 1,
                _ => runs.push((changed, 1)),
            }
        }
        done += n as u64;
        crate::progress::advance((n * bs) as u64);
    }
    Ok(runs)
}

/// Compares `edited` with `original` chunk by chunk and plans the output
/// chunks. Returns the plan and how many blocks changed.
fn plan_chunks(original: &SparseView, edited: &File) -> Result<(Vec<Planned>, u64), SparseError> {
    let layout = original.layout();
    let bs = layout.block_size as usize;
    let max_raw = max_raw_blocks(layout.block_size);
    let buf_len = (IO_BUF / bs).max(1) * bs;
    let mut bufs = CompareBufs {
        edited: vec![0u8; buf_len],
        original: vec![0u8; buf_len],
    };
    let mut plan = Vec::with_capacity(layout.chunks.len());
    let mut changed_total = 0u64;
    crate::progress::start("comparing", layout.raw_size());
    for chunk in &layout.chunks {
        let runs = changed_runs(original, edited, chunk, &mut bufs)?;
        let changed: u64 = runs.iter().filter(|r| r.0).map(|r| r.1).sum();
        changed_total += changed;
        let whole = |body| Planned {
            first_block: chunk.first_block,
            blocks: chunk.blocks,
            body,
        };
        match chunk.data {
            ChunkData::Raw { .. } if changed == 0 => {
                push_split(&mut plan, whole(Body::Raw(Source::Original)), max_raw)
            }
            // One changed block rewrites the whole RAW chunk: splitting it
            // would not save a byte of data and only add chunk headers.
            ChunkData::Raw { .. } => {
                push_split(&mut plan, whole(Body::Raw(Source::Edited)), max_raw)
            }
            ChunkData::Fill(_) | ChunkData::DontCare => {
                let same = match chunk.data {
                    ChunkData::Fill(p) => Body::Fill(p),
                    _ => Body::DontCare,
                };
                let mut first_block = chunk.first_block;
                for (is_changed, blocks) in runs {
                    let body = if is_changed {
                        Body::Raw(Source::Edited)
                    } else {
                        same
                    };
                    push_split(
                        &mut plan,
                        Planned {
                            first_block,
                            blocks,
                            body,
                        },
                        max_raw,
                    );
                    first_block += blocks;
                }
            }
        }
    }
    Ok((plan, changed_total))
}

/// Re-encodes `edited` (the expansion of `original`, edited in place) into
/// `out`, keeping every untouched chunk exactly as it was. Returns how many
/// blocks changed.
///
/// A changed RAW chunk is rewritten whole from `edited`; FILL and DONT_CARE
/// chunks are split so that only their changed runs become RAW. The output
/// always has 28/12-byte headers and no CRC32 chunks, so an untouched image
/// that already had those comes out byte for byte the same (bar a non-zero
/// image checksum, which is written as 0). Memory stays a few MiB plus a
/// small descriptor per output chunk, whatever the image size.
pub fn encode(
    original: &SparseView,
    edited: &File,
    out: &mut dyn Write,
) -> Result<u64, SparseError> {
    let layout = original.layout();
    if layout.total_blocks > u32::MAX as u64 {
        return Err(SparseError::TooLarge {
            blocks: layout.total_blocks,
        });
    }
    let edited_len = edited.metadata().map_err(SparseError::Read)?.len();
    if edited_len != layout.raw_size() {
        return Err(SparseError::SizeMismatch {
            expected: layout.raw_size(),
            found: edited_len,
        });
    }
    let (plan, changed) = plan_chunks(original, edited)?;
    write_plan(original, edited, &plan, out)?;
    Ok(changed)
}

/// Writes the header and the planned chunks sequentially.
fn write_plan(
    original: &SparseView,
    edited: &File,
    plan: &[Planned],
    out: &mut dyn Write,
) -> Result<(), SparseError> {
    let layout = original.layout();
    let bs = layout.block_size as u64;
    let mut out = BufWriter::with_capacity(IO_BUF, out);
    let mut put = |bytes: &[u8]| out.write_all(bytes).map_err(SparseError::Write);

    // Both counts fit: total_blocks was checked, and every planned chunk
    // holds at least one block.
    let mut header = Vec::with_capacity(FILE_HEADER_LEN);
    header.extend(MAGIC.to_le_bytes());
    header.extend(1u16.to_le_bytes());
    header.extend(0u16.to_le_bytes());
    header.extend((FILE_HEADER_LEN as u16).to_le_bytes());
    header.extend((CHUNK_HEADER_LEN as u16).to_le_bytes());
    header.extend(layout.block_size.to_le_bytes());
    header.extend((layout.total_blocks as u32).to_le_bytes());
    header.extend((plan.len() as u32).to_le_bytes());
    header.extend(0u32.to_le_bytes());
    put(&header)?;

    let mut buf = vec![0u8; (IO_BUF as u64 / bs).max(1) as usize * bs as usize];
    for piece in plan {
        let (kind, body_len) = match piece.body {
            Body::Raw(_) => (CHUNK_RAW, piece.blocks * bs),
            Body::Fill(_) => (CHUNK_FILL, 4),
            Body::DontCare => (CHUNK_DONT_CARE, 0),
        };
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[0..2].copy_from_slice(&kind.to_le_bytes());
        h[4..8].copy_from_slice(&(piece.blocks as u32).to_le_bytes());
        h[8..12].copy_from_slice(&((CHUNK_HEADER_LEN as u64 + body_len) as u32).to_le_bytes());
        put(&h)?;
        match piece.body {
            Body::Fill(p) => put(&p)?,
            Body::DontCare => {}
            Body::Raw(source) => {
                let start = piece.first_block * bs;
                let mut done = 0u64;
                while done < body_len {
                    let n = (body_len - done).min(buf.len() as u64) as usize;
                    match source {
                        Source::Edited => edited.read_exact_at(&mut buf[..n], start + done),
                        Source::Original => original.read_at(start + done, &mut buf[..n]),
                    }
                    .map_err(SparseError::Read)?;
                    put(&buf[..n])?;
                    done += n as u64;
                }
            }
        }
    }
    out.flush().map_err(SparseError::Write)
}

/// Encodes a raw image as a sparse image: zero blocks become DONT_CARE,
/// the rest RAW.
pub fn encode_raw(raw: &File, block_size: u32, out: &mut dyn Write) -> Result<(), SparseError> {
    if block_size == 0 || block_size % 4 != 0 {
        return Err(SparseError::Header(format!(
            "block size {block_size} is not a positive multiple of 4"
        )));
    }
    let size = raw.metadata().map_err(SparseError::Read)?.len();
    if size % block_size as u64 != 0 {
        return Err(SparseError::Header(format!(
            "a {size}-byte image is not a whole number of {block_size}-byte blocks"
        )));
    }
    let layout = SparseLayout::all_dont_care(size, block_size);
    let view = SparseView::new(raw.try_clone().map_err(SparseError::Read)?, layout);
    encode(&view, raw, out).map(|_| ())
}

fn open_sparse(path: &Path) -> Result<(SparseView, u64), ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let layout = SparseLayout::parse(&file)?;
    let size = layout.raw_size();
    Ok((SparseView::new(file, layout), size))
}

/// Writes plans into copies of an Android sparse image of an ext2/3/4
/// filesystem.
pub struct SparseBackend {
    image: Ext4Image<SparseView>,
}

impl SparseBackend {
    pub fn open(path: &Path) -> Result<SparseBackend, ImageError> {
        let (view, size) = open_sparse(path)?;
        let image = Ext4Image::open(view, size)?;
        image.check_writable()?;
        ext4::ensure_loaded()?;
        Ok(SparseBackend { image })
    }
}

impl ImageBackend for SparseBackend {
    fn facts(&mut self) -> Result<ImageFacts, ImageError> {
        Ok(self.image.facts()?)
    }

    fn apply(&mut self, plan: &Plan, out: &mut TempOutput) -> Result<(), ImageError> {
        self.image.preflight(plan)?;
        // The scratch expansion sits beside the output: the user picked that
        // filesystem for images of this size.
        let scratch = Scratch::beside(out.final_path()).map_err(ImageError::Output)?;
        let view = self.image.device();
        expand(view, scratch.file())?;
        ext4::write_plan(scratch.path(), self.image.superblock(), plan)?;
        let changed = encode(view, scratch.file(), out)?;
        tracing::debug!(
            changed_blocks = changed,
            chunks = view.layout().chunks.len(),
            "sparse re-encoded"
        );
        Ok(())
    }
}

/// Reads files out of a sparse image for `verify`, without expanding it.
pub struct SparseReader {
    path: PathBuf,
    image: Ext4Image<SparseView>,
}

impl SparseReader {
    pub fn open(path: &Path) -> Result<SparseReader, ImageError> {
        let (view, size) = open_sparse(path)?;
        Ok(SparseReader {
            path: path.to_path_buf(),
            image: Ext4Image::open(view, size)?,
        })
    }
}

impl ImageReader for SparseReader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        Ok(self.image.lookup(path, max_content)?)
    }

    /// e2fsck needs a raw image: expand into a private scratch file in the
    /// temp directory first.
    fn fsck(&mut self) -> Option<Result<(), String>> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let scratch = match Scratch::create_in(&std::env::temp_dir(), &name) {
            Ok(s) => s,
            Err(e) => return Some(Err(format!("cannot create a scratch file for e2fsck: {e}"))),
        };
        if let Err(e) = expand(self.image.device(), scratch.file()) {
            return Some(Err(format!("cannot expand the image for e2fsck: {e}")));
        }
        ext4::e2fsck(scratch.path())
    }
}
