//! xz read with the block layout its own index records, and rewritten by
//! keeping the blocks before the first change.
//!
//! An xz file is one or more streams (with zero padding in 4-byte units
//! between and after them). A stream is a 12-byte header (magic, flags
//! naming the check, CRC32), blocks, an index listing each block's
//! unpadded and uncompressed size, and a 12-byte footer pointing back at
//! the index. Blocks are independent of each other: `xz -T`, `pixz -t` and Yocto
//! write many, plain `xz` one. So the layout of the whole file comes from
//! the footers and indexes at its end without decoding anything, every
//! block start is a boundary, and a rewrite keeps the input's bytes before
//! the block that holds the first change and writes new blocks (of the
//! input's block size, with its filters and check) after them, then an
//! index covering the kept and the new blocks, and a footer. Streams after
//! the one holding the boundary are part of the rewritten tail.

mod blocks;
mod chunk_tail;
pub(crate) mod chunks;
mod cut;
mod cut_state;
mod decode;
mod fresh;
mod layout;
mod one_block;
mod primed;
mod sparse;
#[cfg(test)]
mod test_data;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use liblzma::stream::Check;

pub(crate) use self::blocks::Continuation;
pub(crate) use self::cut::{ChunkCut, Cut};
pub(crate) use self::cut_state::{CutState, CutStates};
pub(crate) use self::decode::{indexing_decoder, Span};
pub(crate) use self::layout::{index_and_footer, layout, vli, Record, StreamLayout};
pub(crate) use self::one_block::Blocks;
pub(crate) use self::sparse::Sparse;

pub(crate) const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
pub(super) const FOOTER_MAGIC: [u8; 2] = *b"YZ";
/// More blocks than this and the layout is not kept (a hostile index
/// could otherwise ask for gigabytes); the file is still decoded.
pub(super) const MAX_BLOCKS: usize = 1 << 20;
/// The LZMA2 filter id, and the BCJ/delta filters the output may repeat.
pub(super) const LZMA2: u64 = 0x21;

/// Bytes of the check with this id (the xz format's table).
pub(super) fn check_len(id: u8) -> u64 {
    match id {
        0 => 0,
        1..=3 => 4,
        4..=6 => 8,
        7..=9 => 16,
        10..=12 => 32,
        _ => 64,
    }
}

/// The check type named in a stream header's flags (second byte), as
/// liblzma takes it; None for ids liblzma does not write.
pub(super) fn check_of(flags: [u8; 2]) -> Option<Check> {
    match flags[1] & 0x0f {
        0 => Some(Check::None),
        1 => Some(Check::Crc32),
        4 => Some(Check::Crc64),
        10 => Some(Check::Sha256),
        _ => None,
    }
}

/// The check the first stream of `file` uses, for an output that keeps
/// it (CRC64, xz's default, if the header cannot be read).
pub(crate) fn input_check(file: &File) -> Check {
    let mut head = [0u8; 12];
    if file.read_exact_at(&mut head, 0).is_err() || head[..6] != MAGIC {
        return Check::Crc64;
    }
    check_of([head[6], head[7]]).unwrap_or(Check::Crc64)
}

/// Where a rewrite may start: a block start, or an LZMA2 chunk start
/// inside a block whose only filter is LZMA2 (`cut.rs`). A rewrite keeps
/// the input's bytes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boundary {
    /// File offset of the block's header.
    pub(crate) offset: u64,
    /// Uncompressed bytes before the boundary.
    pub(crate) out: u64,
    /// Where inside the block, for a chunk start.
    pub(crate) chunk: Option<ChunkCut>,
}

/// The input's layout as the decoder found it, shared with the scan.
pub(crate) struct Index {
    pub(super) streams: Vec<StreamLayout>,
    /// The blocks that can be cut inside, in file order.
    pub(super) cuts: Vec<cut::BlockCuts>,
}

pub(crate) type SharedIndex = Arc<Index>;

impl Index {
    /// The latest boundary at or before uncompressed `out`: a chunk start
    /// inside the block holding it if that block can be cut, else the
    /// block's start.
    pub(crate) fn boundary_before(&self, out: u64) -> Option<Boundary> {
        let s = self.streams.iter().rev().find(|s| s.out <= out)?;
        let block =
            s.blocks()
                .take_while(|&(_, o, _)| o <= out)
                .last()
                .map(|(offset, out, _)| Boundary {
                    offset,
                    out,
                    chunk: None,
                })?;
        let inside = self
            .cuts
            .binary_search_by_key(&block.offset, |c| c.offset)
            .ok()
            .and_then(|i| self.cuts[i].boundary_before(out));
        Some(inside.unwrap_or(block))
    }

    /// Whether a rewrite could keep anything: some block after the first,
    /// or chunks inside a block.
    pub(crate) fn keeps_something(&self) -> bool {
        !self.cuts.is_empty() || self.streams.iter().map(|s| s.records.len()).sum::<usize>() > 1
    }
}

/// The start of the block boundary `b` lies in, and whether that block's
/// header carries its sizes (None when `file`'s layout has no such
/// block).
pub(crate) fn block_of(file: &File, b: &Boundary) -> io::Result<Option<(Boundary, bool)>> {
    let len = file.metadata()?.len();
    let Some(streams) = layout(file, len)? else {
        return Ok(None);
    };
    let Some((offset, out, _)) = streams
        .iter()
        .flat_map(|s| s.blocks())
        .find(|&(o, _, _)| o == b.offset)
    else {
        return Ok(None);
    };
    let mut flags = [0u8; 2];
    file.read_exact_at(&mut flags, offset)?;
    let start = Boundary {
        offset,
        out,
        chunk: None,
    };
    Ok(Some((start, flags[1] & 0xc0 != 0)))
}

/// Whether a rewrite of xz `file` keeps nothing before any change: one
/// block, with a BCJ or delta filter (which `cut.rs` does not continue) or
/// of one LZMA2 chunk,
/// or a layout that cannot be read. The tar scan compresses such a file
/// speculatively as it reads, and a cached scan (which skips that) is not
/// used.
pub(crate) fn keeps_nothing(file: &File) -> bool {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    match layout(file, len) {
        Ok(Some(streams)) => {
            streams.iter().map(|s| s.records.len()).sum::<usize>() <= 1
                && cut::cuttable(file, &streams).is_empty()
        }
        _ => true,
    }
}

/// Where the last block of `file` starts in its decompressed bytes, if
/// the file is one stream of several blocks: pixz looks for its file index
/// in the last block of the first stream and only when there is one.
pub(crate) fn last_block_out(file: &File) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let Some(streams) = layout(file, len)? else {
        return Ok(None);
    };
    let [stream] = &streams[..] else {
        return Ok(None);
    };
    Ok(stream
        .blocks()
        .last()
        .filter(|_| stream.records.len() > 1)
        .map(|(_, out, _)| out))
}

/// The first block of a file: a rewrite from it keeps nothing but is
/// made like the input (its check, filters and block size).
pub(crate) const FIRST_BLOCK: Boundary = Boundary {
    offset: 12,
    out: 0,
    chunk: None,
};

/// What a raw image's new blocks may take for their encoder threads
/// (liblzma's own estimate); one thread always runs.
pub(crate) const ENCODE_MEMORY: u64 = 192 << 20;
