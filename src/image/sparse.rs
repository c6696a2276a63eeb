//! Android sparse images (`system.img` for flash.sh, meta-tegra's
//! `ext4.simg`): parse, read in place, expand, and re-encode after an edit.
//!
//! The format (AOSP libsparse, sparse_format.h) is a 28-byte file header and
//! a list of chunks, each a 12-byte header and maybe data: RAW blocks, a
//! 4-byte FILL pattern, DONT_CARE (no data; the flasher leaves those blocks
//! alone) or a CRC32 of what came before. Both header sizes are recorded in
//! the file header and honoured, so newer, longer headers still parse.
//!
//! The ext4 inside is edited by the ext4 module without expanding the image:
//! libext2fs reads it through [`SparseView`] (the chunk index) and its writes
//! stay in memory ([`ChangedBlocks`]); [`encode_overlay`] then writes the input's
//! chunks with the changed blocks spliced in, keeping every untouched chunk
//! as it was. [`expand`] is used only where a raw image is needed (e2fsck in
//! `verify`), and [`encode`] turns a raw image into a sparse one (the demo).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::ext4::{self, disk::ReadAt, Ext4Inspector};
use super::ext4::{ChangedBlocks, Device};
use super::{Found, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::io::output::{Scratch, TempOutput};
use crate::plan::{ImagePath, Plan};

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
/// The largest sparse block size accepted.
const MAX_BLOCK_SIZE: u32 = 1 << 20;

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
        // Buffers are sized in blocks; real images use 4 KiB (ext4 blocks
        // are at most 64 KiB), so a huge value is damage, not a format.
        if block_size > MAX_BLOCK_SIZE {
            return Err(SparseError::Header(format!(
                "block size {block_size} is larger than the {MAX_BLOCK_SIZE} bytes imprint accepts"
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
    crate::io::progress::start("expanding", layout.raw_size());
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
            crate::io::progress::advance(n as u64);
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

fn push_run(runs: &mut Vec<(bool, u64)>, changed: bool, blocks: u64) {
    match runs.last_mut() {
        Some((c, len)) if *c == changed => *len += blocks,
        _ if blocks > 0 => runs.push((changed, blocks)),
        _ => {}
    }
}

/// Buffers for comparing a chunk's blocks a bounded piece at a time.
struct CompareBufs {
    edited: Vec<u8>,
    original: Vec<u8>,
}

/// Splits `chunk` into runs of (changed?, blocks), comparing `edited` with
/// what the chunk expands to.
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
            let changed = block_changed(chunk, block, &bufs.original[k * bs..(k + 1) * bs]);
            push_run(&mut runs, changed, 1);
        }
        done += n as u64;
        crate::io::progress::advance((n * bs) as u64);
    }
    Ok(runs)
}

/// Whether a block of `chunk` whose new content is `new` differs from what
/// the chunk holds (`old`: the original bytes, for RAW chunks).
///
/// In DONT_CARE chunks only a non-zero block counts as changed: the flasher
/// never writes those blocks, so a zero block there carries nothing the
/// device needs, and the expansion reads zeros there anyway.
fn block_changed(chunk: &Chunk, new: &[u8], old: &[u8]) -> bool {
    match chunk.data {
        ChunkData::Raw { .. } => new != old,
        ChunkData::Fill(p) => new.chunks_exact(4).any(|w| w != p),
        ChunkData::DontCare => new.iter().any(|&b| b != 0),
    }
}

/// Plans the output chunks from the changed runs of each input chunk
/// (`runs_of`). Returns the plan and how many blocks changed.
fn plan_chunks(
    original: &SparseView,
    mut runs_of: impl FnMut(&Chunk) -> Result<Vec<(bool, u64)>, SparseError>,
) -> Result<(Vec<Planned>, u64), SparseError> {
    let layout = original.layout();
    let max_raw = max_raw_blocks(layout.block_size);
    let mut plan = Vec::with_capacity(layout.chunks.len());
    let mut changed_total = 0u64;
    for chunk in &layout.chunks {
        let runs = runs_of(chunk)?;
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
    let bs = layout.block_size as usize;
    let buf_len = (IO_BUF / bs).max(1) * bs;
    let mut bufs = CompareBufs {
        edited: vec![0u8; buf_len],
        original: vec![0u8; buf_len],
    };
    crate::io::progress::start("comparing", layout.raw_size());
    let (plan, changed) = plan_chunks(original, |chunk| {
        changed_runs(original, edited, chunk, &mut bufs)
    })?;
    crate::io::progress::start("writing", layout.raw_size());
    write_plan(
        original,
        &|offset, buf| edited.read_exact_at(buf, offset),
        &plan,
        out,
    )?;
    Ok(changed)
}

/// Encodes the image under `overlay` (a sparse image with the blocks
/// libext2fs wrote kept in memory) into `out`: the input's chunks, with
/// the changed blocks spliced in, as [`encode`] would give for the edited
/// expansion, but touching only the written blocks. Returns how many
/// blocks changed.
pub(crate) fn encode_overlay(
    overlay: &ChangedBlocks<&SparseView>,
    out: &mut dyn Write,
) -> Result<u64, SparseError> {
    let original: &SparseView = overlay.base();
    let bs = original.layout().block_size as usize;
    let mut old = vec![0u8; bs];
    let written = overlay.written();
    let (plan, changed) = plan_chunks(original, |chunk| {
        let mut runs = Vec::new();
        let mut next = chunk.first_block;
        let end = chunk.first_block + chunk.blocks;
        for (&block, new) in written.range(chunk.first_block..end) {
            if let ChunkData::Raw { .. } = chunk.data {
                original
                    .read_at(block * bs as u64, &mut old)
                    .map_err(SparseError::Read)?;
            }
            if block_changed(chunk, new, &old) {
                push_run(&mut runs, false, block - next);
                push_run(&mut runs, true, 1);
                next = block + 1;
            }
        }
        push_run(&mut runs, false, end - next);
        Ok(runs)
    })?;
    crate::io::progress::start("writing", original.layout().raw_size());
    write_plan(
        original,
        &|offset, buf| overlay.read_at(offset, buf),
        &plan,
        out,
    )?;
    Ok(changed)
}

/// Writes the header and the planned chunks sequentially.
fn write_plan(
    original: &SparseView,
    edited: &dyn Fn(u64, &mut [u8]) -> io::Result<()>,
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
                        Source::Edited => edited(start + done, &mut buf[..n]),
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
    image: Ext4Inspector<SparseView>,
}

impl SparseBackend {
    pub fn open(path: &Path) -> Result<SparseBackend, ImageError> {
        let (view, size) = open_sparse(path)?;
        let image = Ext4Inspector::open(view, size)?;
        image.check_writable()?;
        ext4::ensure_loaded()?;
        Ok(SparseBackend { image })
    }
}

impl ImageBackend for SparseBackend {
    fn facts(&mut self) -> Result<ImageFacts, ImageError> {
        Ok(self.image.facts()?)
    }

    /// libext2fs edits the filesystem through an I/O manager that reads the
    /// sparse file through its chunk index and keeps the blocks it writes in
    /// memory; the output is then the input's chunks with those blocks
    /// spliced in. Nothing is expanded, and only the written blocks are
    /// compared.
    fn apply(&mut self, plan: &Plan, out: &mut TempOutput) -> Result<(), ImageError> {
        self.image.preflight(plan)?;
        let view = self.image.device();
        let layout = view.layout();
        let mut overlay = ChangedBlocks::new(view, layout.raw_size(), layout.block_size);
        ext4::write_plan_to_device(&mut overlay, self.image.superblock(), plan)?;
        tracing::debug!(written_blocks = overlay.written().len(), "libext2fs done");
        let changed = encode_overlay(&overlay, out)?;
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
    image: Ext4Inspector<SparseView>,
}

impl SparseReader {
    pub fn open(path: &Path) -> Result<SparseReader, ImageError> {
        let (view, size) = open_sparse(path)?;
        Ok(SparseReader {
            path: path.to_path_buf(),
            image: Ext4Inspector::open(view, size)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    use std::process::Command;
    use tempfile::{NamedTempFile, TempDir};

    /// A chunk to put in a hand-built sparse file.
    #[derive(Clone)]
    enum Spec {
        Raw(Vec<u8>),
        Fill([u8; 4], u32),
        DontCare(u32),
        Crc(u32),
    }

    /// Header sizes and block size of a hand-built file.
    #[derive(Clone, Copy)]
    struct Shape {
        block_size: u32,
        file_header: u16,
        chunk_header: u16,
    }

    const PLAIN_4K: Shape = Shape {
        block_size: 4096,
        file_header: 28,
        chunk_header: 12,
    };
    const WIDE_1K: Shape = Shape {
        block_size: 1024,
        file_header: 36,
        chunk_header: 20,
    };

    fn blocks_of(shape: Shape, spec: &Spec) -> u32 {
        match spec {
            Spec::Raw(d) => (d.len() / shape.block_size as usize) as u32,
            Spec::Fill(_, n) | Spec::DontCare(n) => *n,
            Spec::Crc(_) => 0,
        }
    }

    /// Builds a well-formed sparse file; the padding in longer headers is
    /// junk so that a parser reading it as data would be caught.
    fn build(shape: Shape, specs: &[Spec]) -> Vec<u8> {
        let total_blocks: u32 = specs.iter().map(|s| blocks_of(shape, s)).sum();
        let mut f = Vec::new();
        f.extend(MAGIC.to_le_bytes());
        f.extend(1u16.to_le_bytes());
        f.extend(0u16.to_le_bytes());
        f.extend(shape.file_header.to_le_bytes());
        f.extend(shape.chunk_header.to_le_bytes());
        f.extend(shape.block_size.to_le_bytes());
        f.extend(total_blocks.to_le_bytes());
        f.extend((specs.len() as u32).to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.resize(shape.file_header as usize, 0xAA);
        for spec in specs {
            let (kind, body): (u16, Vec<u8>) = match spec {
                Spec::Raw(d) => (CHUNK_RAW, d.clone()),
                Spec::Fill(p, _) => (CHUNK_FILL, p.to_vec()),
                Spec::DontCare(_) => (CHUNK_DONT_CARE, vec![]),
                Spec::Crc(c) => (CHUNK_CRC32, c.to_le_bytes().to_vec()),
            };
            f.extend(kind.to_le_bytes());
            f.extend(0u16.to_le_bytes());
            f.extend(blocks_of(shape, spec).to_le_bytes());
            f.extend((shape.chunk_header as u32 + body.len() as u32).to_le_bytes());
            f.extend(std::iter::repeat_n(0xBB, shape.chunk_header as usize - 12));
            f.extend(body);
        }
        f
    }

    /// What `specs` expand to, computed independently of the code under test.
    fn expansion(shape: Shape, specs: &[Spec]) -> Vec<u8> {
        let mut raw = Vec::new();
        for spec in specs {
            let n = blocks_of(shape, spec) as usize * shape.block_size as usize;
            match spec {
                Spec::Raw(d) => raw.extend(d),
                Spec::Fill(p, _) => raw.extend(p.iter().cycle().take(n)),
                Spec::DontCare(_) => raw.resize(raw.len() + n, 0),
                Spec::Crc(_) => {}
            }
        }
        raw
    }

    /// Non-repeating, non-zero bytes, different for each `seed`.
    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7 + i / 251 + seed as usize * 13) % 255) as u8 + 1)
            .collect()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    fn parse_bytes(bytes: &[u8]) -> Result<SparseLayout, SparseError> {
        SparseLayout::parse(&file_with(bytes))
    }

    fn view_of(bytes: &[u8]) -> SparseView {
        let file = file_with(bytes);
        let layout = SparseLayout::parse(&file).unwrap();
        SparseView::new(file, layout)
    }

    fn expand_to_vec(view: &SparseView) -> Vec<u8> {
        let out = tempfile::tempfile().unwrap();
        expand(view, &out).unwrap();
        let mut bytes = vec![0u8; out.metadata().unwrap().len() as usize];
        out.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    /// Expands `view`, lets `edit` change the expansion, encodes it and
    /// checks the encoding expands back to the edited bytes. Returns the
    /// encoded file's layout, its bytes and the changed block count.
    fn edit_and_encode(
        view: &SparseView,
        edit: impl FnOnce(&File),
    ) -> (SparseLayout, Vec<u8>, u64) {
        let scratch = tempfile::tempfile().unwrap();
        expand(view, &scratch).unwrap();
        edit(&scratch);
        let mut encoded = Vec::new();
        let changed = encode(view, &scratch, &mut encoded).unwrap();
        let layout = parse_bytes(&encoded).unwrap();
        let mut edited = vec![0u8; view.layout().raw_size() as usize];
        scratch.read_exact_at(&mut edited, 0).unwrap();
        assert_eq!(
            expand_to_vec(&view_of(&encoded)),
            edited,
            "the encoding does not expand to the edited image"
        );
        (layout, encoded, changed)
    }

    /// The chunk list as (kind, first block, blocks, fill pattern), without
    /// RAW offsets, which move when chunks before them change size.
    fn shape_of(layout: &SparseLayout) -> Vec<(&'static str, u64, u64, Option<[u8; 4]>)> {
        layout
            .chunks
            .iter()
            .map(|c| match c.data {
                ChunkData::Raw { .. } => ("raw", c.first_block, c.blocks, None),
                ChunkData::Fill(p) => ("fill", c.first_block, c.blocks, Some(p)),
                ChunkData::DontCare => ("dont-care", c.first_block, c.blocks, None),
            })
            .collect()
    }

    /// The stored bytes of each RAW chunk.
    fn raw_payloads(bytes: &[u8], layout: &SparseLayout) -> Vec<Vec<u8>> {
        let bs = layout.block_size as usize;
        layout
            .chunks
            .iter()
            .filter_map(|c| match c.data {
                ChunkData::Raw { offset } => {
                    let at = offset as usize;
                    Some(bytes[at..at + c.blocks as usize * bs].to_vec())
                }
                _ => None,
            })
            .collect()
    }

    /// A mixed image: RAW, FILL, DONT_CARE, a CRC32, zero FILL, RAW.
    fn mixed(shape: Shape) -> Vec<Spec> {
        let bs = shape.block_size as usize;
        vec![
            Spec::Raw(data(3 * bs, 1)),
            Spec::Fill([0xDE, 0xAD, 0xBE, 0xEF], 4),
            Spec::DontCare(5),
            Spec::Crc(0x1234_5678),
            Spec::Fill([0; 4], 2),
            Spec::Raw(data(2 * bs, 2)),
        ]
    }

    #[test]
    fn parse_honours_wide_headers_and_drops_crc_chunks() {
        let specs = mixed(WIDE_1K);
        let bytes = build(WIDE_1K, &specs);
        let layout = parse_bytes(&bytes).unwrap();
        assert_eq!(layout.block_size, 1024);
        assert_eq!(layout.total_blocks, 16);
        assert_eq!(layout.raw_size(), 16 * 1024);
        // RAW data starts right after each (20-byte) chunk header.
        let first_raw = 36 + 20;
        let second_raw = first_raw + 3 * 1024 + (20 + 4) + 20 + (20 + 4) + (20 + 4) + 20;
        assert_eq!(
            layout.chunks,
            vec![
                Chunk {
                    first_block: 0,
                    blocks: 3,
                    data: ChunkData::Raw { offset: first_raw }
                },
                Chunk {
                    first_block: 3,
                    blocks: 4,
                    data: ChunkData::Fill([0xDE, 0xAD, 0xBE, 0xEF])
                },
                Chunk {
                    first_block: 7,
                    blocks: 5,
                    data: ChunkData::DontCare
                },
                Chunk {
                    first_block: 12,
                    blocks: 2,
                    data: ChunkData::Fill([0; 4])
                },
                Chunk {
                    first_block: 14,
                    blocks: 2,
                    data: ChunkData::Raw { offset: second_raw }
                },
            ]
        );
        assert_eq!(raw_payloads(&bytes, &layout)[1], data(2 * 1024, 2));
    }

    #[test]
    fn parse_accepts_4k_blocks_and_any_minor_version() {
        let mut bytes = build(PLAIN_4K, &mixed(PLAIN_4K));
        bytes[6..8].copy_from_slice(&3u16.to_le_bytes());
        let layout = parse_bytes(&bytes).unwrap();
        assert_eq!((layout.block_size, layout.total_blocks), (4096, 16));
        assert_eq!(layout.chunks.len(), 5);
    }

    #[test]
    fn read_at_matches_the_expansion_everywhere() {
        for shape in [PLAIN_4K, WIDE_1K] {
            let specs = mixed(shape);
            let view = view_of(&build(shape, &specs));
            let want = expansion(shape, &specs);
            let bs = shape.block_size as usize;
            let size = want.len();
            // Whole image, single bytes at chunk edges, odd-length spans
            // across every boundary, and a fill read at an unaligned offset.
            let mut cases = vec![(0, size), (size - 1, 1), (bs * 3 + 1, 5)];
            for edge in [3, 7, 12, 14] {
                cases.push((edge * bs - 1, 1));
                cases.push((edge * bs, 1));
                cases.push((edge * bs - 37, 101));
                cases.push((edge * bs - bs - 3, 2 * bs + 9));
            }
            for (at, len) in cases {
                let mut buf = vec![0x55u8; len];
                view.read_at(at as u64, &mut buf).unwrap();
                assert!(
                    buf == want[at..at + len],
                    "block size {bs}: {len} bytes at {at} differ"
                );
            }
            let mut empty = [];
            view.read_at(size as u64, &mut empty).unwrap();
        }
    }

    #[test]
    fn read_at_past_the_end_is_unexpected_eof() {
        let view = view_of(&build(PLAIN_4K, &mixed(PLAIN_4K)));
        let size = view.layout().raw_size();
        for (at, len) in [(size - 1, 2), (size, 1), (u64::MAX, 1), (u64::MAX - 1, 4)] {
            let mut buf = vec![0u8; len];
            let e = view.read_at(at, &mut buf).unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::UnexpectedEof,
                "{len} bytes at {at}"
            );
        }
    }

    #[test]
    fn read_at_refuses_a_layout_with_a_gap() {
        let layout = SparseLayout {
            block_size: 4096,
            total_blocks: 4,
            chunks: vec![Chunk {
                first_block: 2,
                blocks: 2,
                data: ChunkData::DontCare,
            }],
        };
        let view = SparseView::new(tempfile::tempfile().unwrap(), layout);
        let mut buf = [0u8; 8];
        let e = view.read_at(0, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        view.read_at(3 * 4096, &mut buf).unwrap();
    }

    /// Where the next data is at or after `from`, per SEEK_DATA; the file
    /// size if there is none.
    fn next_data(file: &File, from: u64) -> u64 {
        // SAFETY: lseek on a descriptor this test owns; no memory is shared.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
        if at < 0 {
            assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ENXIO));
            file.metadata().unwrap().len()
        } else {
            at as u64
        }
    }

    #[test]
    fn expand_writes_data_and_leaves_dont_care_and_zero_fill_as_holes() {
        // Big, page-aligned holes so any filesystem with holes shows them.
        let bs = 4096;
        let specs = vec![
            Spec::Raw(data(2 * bs, 3)),
            Spec::DontCare(256),
            Spec::Fill([1, 2, 3, 4], 2),
            Spec::Fill([0; 4], 256),
            Spec::Raw(data(bs, 4)),
        ];
        let view = view_of(&build(PLAIN_4K, &specs));
        let out = tempfile::tempfile().unwrap();
        expand(&view, &out).unwrap();
        let meta = out.metadata().unwrap();
        assert_eq!(meta.len(), 517 * 4096);
        let mut got = vec![0u8; meta.len() as usize];
        out.read_exact_at(&mut got, 0).unwrap();
        assert!(got == expansion(PLAIN_4K, &specs), "expansion differs");
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "{} bytes allocated for a {}-byte file with 2 MiB of holes",
            meta.blocks() * 512,
            meta.len()
        );
        assert_eq!(
            next_data(&out, 2 * 4096),
            258 * 4096,
            "DONT_CARE was written"
        );
        assert_eq!(
            next_data(&out, 260 * 4096),
            516 * 4096,
            "zero FILL was written"
        );
    }

    #[test]
    fn encode_unchanged_is_byte_identical_with_plain_headers() {
        for shape in [
            PLAIN_4K,
            Shape {
                block_size: 1024,
                ..PLAIN_4K
            },
        ] {
            let specs: Vec<Spec> = mixed(shape)
                .into_iter()
                .filter(|s| !matches!(s, Spec::Crc(_)))
                .collect();
            let bytes = build(shape, &specs);
            let view = view_of(&bytes);
            let (_, encoded, changed) = edit_and_encode(&view, |_| {});
            assert_eq!(changed, 0);
            assert!(
                encoded == bytes,
                "block size {}: unchanged output differs",
                shape.block_size
            );
        }
    }

    #[test]
    fn encode_unchanged_keeps_chunks_and_data_from_wide_headers() {
        let bytes = build(WIDE_1K, &mixed(WIDE_1K));
        let view = view_of(&bytes);
        let (layout, encoded, changed) = edit_and_encode(&view, |_| {});
        assert_eq!(changed, 0);
        assert_eq!(shape_of(&layout), shape_of(view.layout()));
        assert_eq!(
            raw_payloads(&encoded, &layout),
            raw_payloads(&bytes, view.layout())
        );
        // Normalised headers: 28/12 bytes, minor 0, no CRC32, checksum 0.
        assert_eq!(le16(&encoded, 6), 0);
        assert_eq!((le16(&encoded, 8), le16(&encoded, 10)), (28, 12));
        assert_eq!(le32(&encoded, 20), 5, "total_chunks");
        assert_eq!(le32(&encoded, 24), 0, "image_checksum");
        assert_eq!((le32(&encoded, 12), le32(&encoded, 16)), (1024, 16));
    }

    fn write_block(file: &File, block: u64, bs: usize, seed: u8) {
        file.write_all_at(&data(bs, seed), block * bs as u64)
            .unwrap();
    }

    #[test]
    fn encode_splits_a_dont_care_chunk_around_a_changed_block() {
        let view = view_of(&build(WIDE_1K, &mixed(WIDE_1K)));
        // DONT_CARE covers blocks 7..12.
        let (layout, _, changed) = edit_and_encode(&view, |f| write_block(f, 9, 1024, 9));
        assert_eq!(changed, 1);
        let fill = Some([0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(
            shape_of(&layout),
            vec![
                ("raw", 0, 3, None),
                ("fill", 3, 4, fill),
                ("dont-care", 7, 2, None),
                ("raw", 9, 1, None),
                ("dont-care", 10, 2, None),
                ("fill", 12, 2, Some([0; 4])),
                ("raw", 14, 2, None),
            ]
        );
    }

    #[test]
    fn encode_splits_a_fill_chunk_around_changed_blocks() {
        let view = view_of(&build(PLAIN_4K, &mixed(PLAIN_4K)));
        // FILL covers blocks 3..7; change its first and its third block.
        let (layout, _, changed) = edit_and_encode(&view, |f| {
            write_block(f, 3, 4096, 5);
            f.write_all_at(&[0xDE], 5 * 4096 + 1).unwrap();
        });
        assert_eq!(changed, 2);
        let fill = Some([0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(
            shape_of(&layout)[..5],
            [
                ("raw", 0, 3, None),
                ("raw", 3, 1, None),
                ("fill", 4, 1, fill),
                ("raw", 5, 1, None),
                ("fill", 6, 1, fill),
            ]
        );
    }

    #[test]
    fn encode_rewrites_a_changed_raw_chunk_whole() {
        let bytes = build(PLAIN_4K, &mixed(PLAIN_4K));
        let view = view_of(&bytes);
        // The first RAW chunk covers blocks 0..3; change one byte of block 1.
        let (layout, encoded, changed) =
            edit_and_encode(&view, |f| f.write_all_at(&[0], 4096 + 100).unwrap());
        assert_eq!(changed, 1);
        assert_eq!(shape_of(&layout), shape_of(view.layout()));
        let mut want = data(3 * 4096, 1);
        want[4096 + 100] = 0;
        let payloads = raw_payloads(&encoded, &layout);
        assert!(payloads[0] == want, "edited RAW data not written");
        assert!(
            payloads[1] == data(2 * 4096, 2),
            "untouched RAW chunk changed"
        );
    }

    #[test]
    fn zeros_written_into_dont_care_are_no_change() {
        let bytes = build(PLAIN_4K, &mixed(PLAIN_4K));
        let view = view_of(&bytes);
        let (layout, _, changed) =
            edit_and_encode(&view, |f| f.write_all_at(&[0u8; 8192], 8 * 4096).unwrap());
        assert_eq!(changed, 0);
        assert_eq!(shape_of(&layout), shape_of(view.layout()));
    }

    #[test]
    fn zero_blocks_written_over_a_fill_become_raw() {
        // A zero block inside a non-zero FILL is a change: the flasher would
        // otherwise write the pattern there.
        let view = view_of(&build(PLAIN_4K, &mixed(PLAIN_4K)));
        let (layout, _, changed) =
            edit_and_encode(&view, |f| f.write_all_at(&[0u8; 4096], 6 * 4096).unwrap());
        assert_eq!(changed, 1);
        assert_eq!(shape_of(&layout)[2], ("raw", 6, 1, None));
    }

    #[test]
    fn long_runs_are_split_to_fit_32_bit_sizes() {
        let mut plan = Vec::new();
        let run = |body| Planned {
            first_block: 10,
            blocks: 7,
            body,
        };
        push_split(&mut plan, run(Body::Raw(Source::Edited)), 3);
        push_split(&mut plan, run(Body::DontCare), 3);
        let got: Vec<_> = plan.iter().map(|p| (p.first_block, p.blocks)).collect();
        assert_eq!(got, [(10, 3), (13, 3), (16, 1), (10, 7)]);
        assert_eq!(max_raw_blocks(4096), 1_048_575);
        assert!(CHUNK_HEADER_LEN as u64 + max_raw_blocks(1024) * 1024 <= u32::MAX as u64);
    }

    #[test]
    fn encode_refuses_an_edited_file_of_the_wrong_size() {
        let view = view_of(&build(PLAIN_4K, &mixed(PLAIN_4K)));
        let edited = tempfile::tempfile().unwrap();
        expand(&view, &edited).unwrap();
        edited.set_len(15 * 4096).unwrap();
        let e = encode(&view, &edited, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, SparseError::SizeMismatch { .. }), "{e}");
        assert!(e.to_string().contains("61440 bytes"), "{e}");
    }

    #[test]
    fn encode_raw_turns_zero_blocks_into_dont_care() {
        let bs = 4096;
        let mut raw = vec![0u8; 8 * bs];
        raw[bs..3 * bs].copy_from_slice(&data(2 * bs, 6));
        raw[7 * bs + 5] = 1;
        let mut out = Vec::new();
        encode_raw(&file_with(&raw), 4096, &mut out).unwrap();
        let layout = parse_bytes(&out).unwrap();
        assert_eq!(
            shape_of(&layout),
            [
                ("dont-care", 0, 1, None),
                ("raw", 1, 2, None),
                ("dont-care", 3, 4, None),
                ("raw", 7, 1, None),
            ]
        );
        assert!(expand_to_vec(&view_of(&out)) == raw);
        for bad in [0, 6] {
            let e = encode_raw(&file_with(&raw), bad, &mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains("multiple of 4"), "{e}");
        }
        let e = encode_raw(&file_with(&raw[..100]), 4096, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
    }

    /// Parses `bytes` and returns the error message, failing if it parses.
    fn parse_error(bytes: &[u8]) -> (SparseError, String) {
        match parse_bytes(bytes) {
            Ok(layout) => panic!("parsed a corrupt image: {layout:?}"),
            Err(e) => {
                let msg = e.to_string();
                (e, msg)
            }
        }
    }

    fn good() -> Vec<u8> {
        build(PLAIN_4K, &mixed(PLAIN_4K))
    }

    /// Byte offset of chunk `index`'s header in `good()`.
    fn chunk_at(index: usize) -> usize {
        let bytes = good();
        let mut at = 28;
        for _ in 0..index {
            at += le32(&bytes, at + 8) as usize;
        }
        at
    }

    fn set32(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn bad_magic_and_version_are_refused() {
        let mut b = good();
        b[0] ^= 1;
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(e, SparseError::Header(_)) && msg.contains("magic"),
            "{msg}"
        );
        let mut b = good();
        b[4..6].copy_from_slice(&2u16.to_le_bytes());
        assert!(parse_error(&b).1.contains("major version 2"));
    }

    #[test]
    fn bad_header_sizes_and_block_sizes_are_refused() {
        let mut b = good();
        b[8..10].copy_from_slice(&24u16.to_le_bytes());
        assert!(parse_error(&b).1.contains("below the minimum"));
        let mut b = good();
        b[10..12].copy_from_slice(&8u16.to_le_bytes());
        assert!(parse_error(&b).1.contains("below the minimum"));
        for bs in [0, 1022] {
            let mut b = good();
            set32(&mut b, 12, bs);
            assert!(parse_error(&b).1.contains("multiple of 4"), "{bs}");
        }
    }

    #[test]
    fn truncated_headers_are_refused() {
        let (e, msg) = parse_error(&good()[..10]);
        assert!(matches!(e, SparseError::Truncated(_)), "{msg}");
        assert!(msg.contains("file header"), "{msg}");
        // A file header claiming to be longer than the file.
        let mut b = good()[..28].to_vec();
        b[8..10].copy_from_slice(&64u16.to_le_bytes());
        assert!(matches!(parse_error(&b).0, SparseError::Truncated(_)));
        // Cut inside a chunk header.
        let (e, msg) = parse_error(&good()[..chunk_at(1) + 6]);
        assert!(matches!(e, SparseError::Truncated(_)), "{msg}");
        assert!(msg.contains("chunk header"), "{msg}");
    }

    #[test]
    fn truncated_raw_data_is_refused() {
        let b = good();
        let (e, msg) = parse_error(&b[..b.len() - 1]);
        assert!(matches!(e, SparseError::Truncated(_)), "{msg}");
        assert!(msg.contains("chunk 5"), "{msg}");
    }

    #[test]
    fn unknown_chunk_type_is_refused() {
        let mut b = good();
        let at = chunk_at(2);
        b[at..at + 2].copy_from_slice(&0xCAC9u16.to_le_bytes());
        let (e, msg) = parse_error(&b);
        assert!(matches!(e, SparseError::Chunk { index: 2, .. }), "{msg}");
        assert!(msg.contains("unknown chunk type 0xCAC9"), "{msg}");
    }

    #[test]
    fn chunk_sizes_that_disagree_with_their_type_are_refused() {
        // RAW: 3 blocks need 12 + 12288 bytes.
        let mut b = good();
        set32(&mut b, 28 + 8, 12 + 8192);
        let (e, msg) = parse_error(&b);
        assert!(matches!(e, SparseError::Chunk { index: 0, .. }), "{msg}");
        assert!(msg.contains("8204") && msg.contains("12300"), "{msg}");
        // RAW whose block count grew but whose size did not.
        let mut b = good();
        set32(&mut b, 28 + 4, 4);
        assert!(matches!(
            parse_error(&b).0,
            SparseError::Chunk { index: 0, .. }
        ));
        // FILL and DONT_CARE with extra bytes.
        for index in [1, 2] {
            let mut b = good();
            let at = chunk_at(index);
            let total = le32(&b, at + 8);
            set32(&mut b, at + 8, total + 4);
            assert!(
                matches!(parse_error(&b).0, SparseError::Chunk { index: i, .. } if i == index as u32),
                "chunk {index}"
            );
        }
    }

    #[test]
    fn block_counts_must_add_up() {
        let mut b = good();
        set32(&mut b, 16, 17);
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(
                e,
                SparseError::BlockCount {
                    declared: 17,
                    found: 16
                }
            ),
            "{msg}"
        );
        // A DONT_CARE that claims more blocks than the header allows.
        let mut b = good();
        set32(&mut b, chunk_at(2) + 4, 6);
        assert!(matches!(parse_error(&b).0, SparseError::BlockCount { .. }));
    }

    #[test]
    fn chunk_counts_must_match() {
        // Too many: the file ends cleanly but blocks add up, so the count
        // is what is wrong.
        let mut b = good();
        set32(&mut b, 20, 7);
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(
                e,
                SparseError::ChunkCount {
                    declared: 7,
                    found: 6
                }
            ),
            "{msg}"
        );
        // Too many and blocks missing: the file was cut at a chunk boundary.
        let b = good();
        let (e, msg) = parse_error(&b[..chunk_at(5)]);
        assert!(matches!(e, SparseError::Truncated(_)), "{msg}");
        // Too few: what follows the declared chunks is trailing data.
        let mut b = good();
        set32(&mut b, 20, 5);
        assert!(matches!(parse_error(&b).0, SparseError::TrailingData(_)));
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut b = good();
        b.extend([0u8; 7]);
        let (e, msg) = parse_error(&b);
        assert!(matches!(e, SparseError::TrailingData(7)), "{msg}");
        assert!(msg.contains("7 bytes after its last chunk"), "{msg}");
    }

    /// Runs an AOSP libsparse tool, failing with the package to install if
    /// it is missing.
    fn libsparse_tool(name: &str, args: &[&Path]) -> std::process::Output {
        match Command::new(name).args(args).output() {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "{name} is not installed: install the Debian package android-sdk-libsparse-utils"
            ),
            Err(e) => panic!("cannot run {name}: {e}"),
        }
    }

    /// A 4 MiB raw image with data, zero runs and a repeated-pattern run
    /// (img2simg makes FILL chunks of those).
    fn raw_for_img2simg(path: &Path) -> Vec<u8> {
        let mib = 1 << 20;
        let mut raw = vec![0u8; 4 * mib];
        raw[..300_000].copy_from_slice(&data(300_000, 7));
        for w in raw[mib..mib + 256 * 1024].chunks_exact_mut(4) {
            w.copy_from_slice(&[0x11, 0x22, 0x33, 0x44]);
        }
        raw[2 * mib + 5000..2 * mib + 70_000].copy_from_slice(&data(65_000, 8));
        raw[4 * mib - 10] = 0x99;
        std::fs::write(path, &raw).unwrap();
        raw
    }

    #[test]
    fn img2simg_images_parse_expand_and_reencode_losslessly() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let raw_path = d.join("raw.img");
        let raw = raw_for_img2simg(&raw_path);
        for block_size in ["4096", "1024"] {
            let bs_arg = Path::new(block_size);
            let plain = d.join(format!("plain-{block_size}.simg"));
            let made = libsparse_tool("img2simg", &[&raw_path, &plain, bs_arg]);
            assert!(
                made.status.success(),
                "img2simg {block_size}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            let mut inputs = vec![("plain", plain)];
            // Newer img2simg has -s (DONT_CARE instead of zero FILL); the
            // packaged version may not, and then the plain form is enough.
            let with_s = d.join(format!("s-{block_size}.simg"));
            let s_flag = Path::new("-s");
            if libsparse_tool("img2simg", &[s_flag, &raw_path, &with_s, bs_arg])
                .status
                .success()
            {
                inputs.push(("-s", with_s));
            }
            for (form, sparse) in inputs {
                let label = format!("img2simg {form}, {block_size}-byte blocks");
                let input = std::fs::read(&sparse).unwrap();
                let file = File::open(&sparse).unwrap();
                let layout = SparseLayout::parse(&file).unwrap();
                assert_eq!(layout.block_size.to_string(), block_size, "{label}");
                let kinds = shape_of(&layout);
                assert!(
                    kinds.iter().any(|c| c.0 == "raw") && kinds.iter().any(|c| c.0 != "raw"),
                    "{label}: expected RAW and other chunks: {kinds:?}"
                );
                let view = SparseView::new(file, layout);
                assert!(expand_to_vec(&view) == raw, "{label}: expansion differs");

                let mut encoded = NamedTempFile::new_in(d).unwrap();
                let edited = tempfile::tempfile().unwrap();
                expand(&view, &edited).unwrap();
                let changed = encode(&view, &edited, encoded.as_file_mut()).unwrap();
                assert_eq!(changed, 0, "{label}");
                let ours = std::fs::read(encoded.path()).unwrap();
                if le16(&input, 8) == 28 && le16(&input, 10) == 12 && le32(&input, 24) == 0 {
                    assert!(
                        ours == input,
                        "{label}: unchanged encoding differs from the input"
                    );
                }
                let back = d.join("back.img");
                let o = libsparse_tool("simg2img", &[encoded.path(), &back]);
                assert!(
                    o.status.success(),
                    "{label}: simg2img refused our encoding: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                assert!(
                    std::fs::read(&back).unwrap() == raw,
                    "{label}: simg2img of our encoding differs"
                );
            }
        }
    }
}
