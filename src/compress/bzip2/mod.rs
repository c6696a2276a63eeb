//! bzip2 read block by block on all cores, and rewritten by keeping the
//! compressed blocks before the first change.
//!
//! A bzip2 stream is a 4-byte header ("BZh" and the block size digit), a
//! run of blocks, and an end-of-stream marker with the stream CRC. Blocks
//! start with a 48-bit magic number at a *bit* position, hold up to
//! level x 100 kB of input, carry their own CRC and decode independently;
//! the stream CRC is a fold of the block CRCs. So:
//! - reading ([`ParallelDecoder`]): find the block magics ([`scan`]), give
//!   each block to a worker as a one-block stream of its own, and hand the
//!   output on in order (what lbzip2 does);
//! - writing ([`BlockEncoder`]): keep the input's bits up to the block that
//!   holds the first change, compress the rest block by block (in
//!   parallel), and close the stream with the fold of the kept and the new
//!   block CRCs.
//!
//! If the parallel reader meets anything it does not expect, the caller
//! falls back to the sequential decoder, whose errors users already know.

mod bits;
mod block;
mod decode;
#[cfg(test)]
mod decoder_tests;
mod encode;
mod inverse;
mod scan;
#[cfg(test)]
mod test_data;
mod workers;

use std::io::Write;
use std::sync::{Arc, Mutex};

use self::bits::BitWriter;
use super::recent::RecentBoundaries;

// For the fuzz harness of the block decoder (src/fuzzing.rs).
#[cfg(feature = "fuzzing")]
pub(crate) use self::block::BlockError;
pub use self::decode::ParallelDecoder;
pub use self::encode::BlockEncoder;
#[cfg(feature = "fuzzing")]
pub(crate) use self::inverse::BlockDecoder;

/// Starts every block (the digits of pi).
const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
/// Starts the end-of-stream marker (the digits of the square root of pi).
const END_MAGIC: u64 = 0x1772_4538_5090;

/// Where a block starts: decoding can resume there, and a rewrite keeps
/// everything before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boundary {
    /// Bit offset in the file.
    pub bit: u64,
    /// Uncompressed bytes before it.
    pub out: u64,
    /// The block size digit of the stream it is in.
    level: u8,
    /// Fold of the CRCs of that stream's earlier blocks.
    crc: u32,
}

impl Boundary {
    /// The block size digit and the CRC fold so far, which the scan cache
    /// (`src/cache/`) keeps with `bit` and `out`.
    pub fn parts(&self) -> (u8, u32) {
        (self.level, self.crc)
    }

    /// The boundary [`Boundary::parts`] described, if `level` is a level.
    pub fn from_parts(bit: u64, out: u64, level: u8, crc: u32) -> Option<Boundary> {
        is_level(level).then_some(Boundary {
            bit,
            out,
            level,
            crc,
        })
    }
}

/// What the parallel reader learned, shared with the tar scan.
#[derive(Default)]
pub struct Index {
    recent: RecentBoundaries<Boundary>,
}

impl Index {
    /// The latest remembered boundary with at most `out` uncompressed
    /// bytes before it.
    pub fn boundary_before(&self, out: u64) -> Option<Boundary> {
        self.recent.latest(|b| b.out <= out)
    }
}

pub type SharedIndex = Arc<Mutex<Index>>;

/// The stream header: magic and block size digit.
fn put_header<W: Write>(bits: &mut BitWriter<W>, level: u8) {
    bits.put_wide(u64::from(u32::from_be_bytes([b'B', b'Z', b'h', level])), 32);
}

/// The end-of-stream marker: magic and stream CRC (the padding to a whole
/// byte comes with [`BitWriter::finish`]).
fn put_end<W: Write>(bits: &mut BitWriter<W>, crc: u32) {
    bits.put_wide(END_MAGIC, 48);
    bits.put_wide(u64::from(crc), 32);
}

/// The stream CRC after one more block.
fn fold(crc: u32, block_crc: u32) -> u32 {
    crc.rotate_left(1) ^ block_crc
}

fn is_level(b: u8) -> bool {
    (b'1'..=b'9').contains(&b)
}
