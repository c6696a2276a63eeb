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
mod decode;
mod layout;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use liblzma::stream::Check;

pub(crate) use self::blocks::Continuation;
pub(crate) use self::decode::{indexing_decoder, Span};
pub(crate) use self::layout::{index_and_footer, layout, vli, Record, StreamLayout};

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

/// Where a block starts: a rewrite keeps the input's bytes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boundary {
    /// File offset of the block's header.
    pub(crate) offset: u64,
    /// Uncompressed bytes before the block.
    pub(crate) out: u64,
}

/// The input's layout as the decoder found it, shared with the scan.
pub(crate) struct Index {
    pub(super) streams: Vec<StreamLayout>,
}

pub(crate) type SharedIndex = Arc<Index>;

impl Index {
    /// The latest block start at or before uncompressed `out`.
    pub(crate) fn boundary_before(&self, out: u64) -> Option<Boundary> {
        let s = self.streams.iter().rev().find(|s| s.out <= out)?;
        s.blocks()
            .take_while(|&(_, o, _)| o <= out)
            .last()
            .map(|(offset, out, _)| Boundary { offset, out })
    }

    /// Whether some block after the first could be a boundary: a single
    /// block in one stream keeps nothing.
    pub(crate) fn has_later_blocks(&self) -> bool {
        self.streams.iter().map(|s| s.records.len()).sum::<usize>() > 1
    }
}

/// Whether `file` is xz of one block in all (plain `xz`, Buildroot): a
/// rewrite keeps none of it, so the tar scan compresses it speculatively
/// and a cached scan (which skips that) is not used.
pub(crate) fn single_block(file: &File) -> bool {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    match layout(file, len) {
        Ok(Some(streams)) => streams.iter().map(|s| s.records.len()).sum::<usize>() <= 1,
        _ => true,
    }
}

/// What a raw image's new blocks may take for their encoder threads
/// (liblzma's own estimate); one thread always runs.
pub(crate) const ENCODE_MEMORY: u64 = 192 << 20;
