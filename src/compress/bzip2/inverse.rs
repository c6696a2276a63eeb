//! imprint's own bzip2 block decoder, second half: the inverse BWT, the
//! first run-length step and the block CRC; and [`BlockDecoder`], which
//! decodes a one-block stream (what the scanner cuts out) with both halves.
//!
//! The inverse BWT is a walk through a permutation of up to 900k entries,
//! one dependent load per step, each missing the L1 and mostly the L2
//! cache: libbz2 and lbzip2 spend most of a block there (and this decoder
//! did: 56% of a cold `.tbz2` scan's CPU in perf). Two things shorten the
//! wait here:
//! - two chains run at once, so two misses are in flight instead of one:
//!   forward from the start of the block (libbz2's `tt`, the inverse of
//!   the LF mapping) and backward from its end;
//! - the backward chain takes two bytes a step: its table is the LF
//!   mapping applied twice, built without a random load. The row one byte
//!   before row `i` is `LF(i) = C[c] + rank` (c its last byte); the row two
//!   bytes before is found the same way one level up: rotations sorted by
//!   their first two bytes `(d, c)` (d the last byte of row `LF(i)`), then
//!   by the rotation after them, i.e. by `i`. So `LF(LF(i))` is the count
//!   of rows whose pair sorts before `(d, c)` plus the rows before `i` with
//!   the same pair: one counting pass over 65536 pairs, like the one over
//!   256 bytes for `LF`.
//!
//! With the backward chain covering two thirds of the block in as many
//! steps as the forward one covers the rest, a block waits for n/3 misses
//! in a row instead of n/2.

use super::block::{Bits, BlockError, SymbolDecoder, Symbols};
use super::{BLOCK_MAGIC, END_MAGIC};

/// What a one-block stream's output is handed over in, at most this many
/// bytes at a time.
pub(super) const PIECE: usize = 256 * 1024;

/// Decodes one-block bzip2 streams, keeping its buffers (about 8 MiB for
/// a 900k block) from one block to the next.
#[derive(Default)]
pub(crate) struct BlockDecoder {
    symbols: SymbolDecoder,
    block: Symbols,
    /// Forward links: `tt[j] = i << 8 | first column byte of row j`,
    /// where row `i` is the rotation one byte after row `j`'s.
    tt: Vec<u32>,
    /// Backward links two bytes at a time (the LF mapping applied twice):
    /// `lf2[i] = j << 8 | d`, where `d` is the byte before row `i`'s last
    /// column byte and row `j` is the rotation two bytes before row `i`'s.
    /// The last column byte itself is read from the last column, a
    /// quarter of the size and mostly in the L2 cache, so this table is
    /// no bigger than `tt`.
    lf2: Vec<u32>,
    /// Counts, then next free rows, of the rotations by their first two
    /// bytes.
    pairs: Vec<u32>,
    /// The block before the run-length step.
    bwt: Vec<u8>,
}

impl Default for Symbols {
    fn default() -> Self {
        Symbols {
            last: Vec::new(),
            counts: [0; 256],
            orig: 0,
        }
    }
}

impl BlockDecoder {
    /// Decodes `stream`, a bzip2 stream of exactly one block (the stream
    /// header, the block, the end-of-stream marker and padding to a byte),
    /// handing its output to `emit` in pieces of at most [`PIECE`] bytes.
    /// `emit` returns false to stop early. Pieces go out before the block
    /// CRC is checked: an error after them means they are wrong.
    pub(crate) fn decode_stream(
        &mut self,
        stream: &[u8],
        mut emit: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), BlockError> {
        let want_crc = self.symbols(stream)?;
        self.invert();
        let crc = self.unrun(&mut emit)?;
        check(crc, want_crc)
    }

    /// [`BlockDecoder::decode_stream`], adding the CPU time of its three
    /// stages to `stages`.
    #[cfg(test)]
    pub(crate) fn decode_stream_timed(
        &mut self,
        stream: &[u8],
        stages: &mut [std::time::Duration; 3],
        mut emit: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), BlockError> {
        let cpu = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        };
        let t0 = cpu();
        let want_crc = self.symbols(stream)?;
        let t1 = cpu();
        self.invert();
        let t2 = cpu();
        let crc = self.unrun(&mut emit)?;
        let t3 = cpu();
        stages[0] += t1 - t0;
        stages[1] += t2 - t1;
        stages[2] += t3 - t2;
        check(crc, want_crc)
    }

    /// Reads the stream up to its end into `self.block`; returns the
    /// block's CRC.
    fn symbols(&mut self, stream: &[u8]) -> Result<u32, BlockError> {
        let mut bits = Bits::new(stream);
        let head = bits.take(32).to_be_bytes();
        if &head[..3] != b"BZh" || !(b'1'..=b'9').contains(&head[3]) {
            return Err(BlockError::Corrupt("no bzip2 stream header"));
        }
        let level = u32::from(head[3] - b'0');
        if bits.take_wide(48) != BLOCK_MAGIC {
            return Err(BlockError::Unsupported("not a one-block stream"));
        }
        let want_crc = bits.take(32);
        self.symbols.decode(&mut bits, level, &mut self.block)?;
        if bits.take_wide(48) != END_MAGIC {
            return Err(BlockError::Unsupported("not a one-block stream"));
        }
        // A one-block stream's CRC is its block's.
        if bits.take(32) != want_crc {
            return Err(BlockError::Corrupt("the stream CRC is not its block's"));
        }
        if bits.overran() {
            return Err(BlockError::Corrupt("the stream is cut short"));
        }
        Ok(want_crc)
    }

    /// Undoes the BWT of `self.block` into `self.bwt`.
    fn invert(&mut self) {
        let last = &self.block.last;
        let n = last.len();
        let mut next = [0u32; 256];
        let mut sum = 0;
        for (c, &count) in self.block.counts.iter().enumerate() {
            next[c] = sum;
            sum += count;
        }
        // Every entry below `n` is written before it is read.
        if self.tt.len() < n {
            self.tt.resize(n, 0);
            self.lf2.resize(n, 0);
        }
        self.pairs.clear();
        self.pairs.resize(1 << 16, 0);
        let (tt, lf2, pairs) = (&mut self.tt[..n], &mut self.lf2[..n], &mut self.pairs[..]);
        // Row `j` is LF(i); its last byte `d` precedes `c`. The pair goes
        // into `lf2[i]` until the second pass knows where it leads.
        for (i, (&c, back)) in last.iter().zip(lf2.iter_mut()).enumerate() {
            let j = next[usize::from(c)];
            next[usize::from(c)] = j + 1;
            tt[j as usize] = (i as u32) << 8 | u32::from(c);
            let pair = usize::from(last[j as usize]) << 8 | usize::from(c);
            pairs[pair] += 1;
            *back = pair as u32;
        }
        let mut sum = 0;
        for p in pairs.iter_mut() {
            let count = *p;
            *p = sum;
            sum += count;
        }
        for back in lf2.iter_mut() {
            let pair = *back as usize;
            let j = pairs[pair];
            pairs[pair] = j + 1;
            *back = j << 8 | *back >> 8;
        }
        // The backward chain yields `2 * b` bytes in `b` steps, the
        // forward one the other `a` in `a`: about n/3 steps each.
        let b = (n - n / 3) / 2;
        let a = n - 2 * b;
        self.bwt.resize(n, 0);
        let (front, back) = self.bwt.split_at_mut(a);
        let orig = self.block.orig;
        let (mut p, mut q) = (orig, orig);
        let mut front = front.iter_mut();
        let mut back = back.chunks_exact_mut(2).rev();
        // Two independent chains: the loads of one do not wait for the
        // other's.
        let both = a.min(b);
        for (f, pair) in (&mut front).take(both).zip((&mut back).take(both)) {
            let v = tt[p as usize];
            let w = lf2[q as usize];
            *f = v as u8;
            pair[1] = last[q as usize];
            pair[0] = w as u8;
            p = v >> 8;
            q = w >> 8;
        }
        for f in front {
            let v = tt[p as usize];
            *f = v as u8;
            p = v >> 8;
        }
        for pair in back {
            let w = lf2[q as usize];
            pair[1] = last[q as usize];
            pair[0] = w as u8;
            q = w >> 8;
        }
    }

    /// The run-length step: four equal bytes and a count (0-255) of more.
    /// Returns the CRC of the output.
    fn unrun(&mut self, emit: &mut impl FnMut(Vec<u8>) -> bool) -> Result<u32, BlockError> {
        let mut crc = Crc::new();
        let mut piece = Vec::with_capacity(PIECE);
        // The byte of the current run (256: none), and how many of it in
        // a row (up to 4, then a count follows).
        let mut prev = 256u16;
        let mut same = 0u32;
        for &b in &self.bwt {
            if same == 4 {
                piece.resize(piece.len() + usize::from(b), prev as u8);
                prev = 256;
                same = 0;
            } else {
                if u16::from(b) == prev {
                    same += 1;
                } else {
                    prev = u16::from(b);
                    same = 1;
                }
                piece.push(b);
            }
            if piece.len() > PIECE - 256 {
                crc.update(&piece);
                if !emit(std::mem::replace(&mut piece, Vec::with_capacity(PIECE))) {
                    return Ok(crc.value());
                }
            }
        }
        if same == 4 {
            // libbz2 reads a count past the block's end and fails.
            return Err(BlockError::Corrupt("the block ends inside a run"));
        }
        if !piece.is_empty() {
            crc.update(&piece);
            emit(piece);
        }
        Ok(crc.value())
    }
}

fn check(crc: u32, want: u32) -> Result<(), BlockError> {
    if crc == want {
        Ok(())
    } else {
        Err(BlockError::Corrupt(
            "the block's CRC does not match its data",
        ))
    }
}

/// bzip2's CRC-32: polynomial 0x04c11db7, most significant bit first (not
/// the reflected CRC-32 of gzip and crc32fast), computed 8 bytes a step.
struct Crc(u32);

/// `TABLES[k][b]`: the CRC of byte `b` followed by `k` zero bytes.
static TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut b = 0;
    while b < 256 {
        let mut c = (b as u32) << 24;
        let mut i = 0;
        while i < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04c1_1db7
            } else {
                c << 1
            };
            i += 1;
        }
        t[0][b] = c;
        b += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut b = 0;
        while b < 256 {
            let prev = t[k - 1][b];
            t[k][b] = (prev << 8) ^ t[0][(prev >> 24) as usize];
            b += 1;
        }
        k += 1;
    }
    t
}

impl Crc {
    fn new() -> Self {
        Crc(!0)
    }

    fn update(&mut self, data: &[u8]) {
        let t = &TABLES;
        let mut c = self.0;
        let mut chunks = data.chunks_exact(8);
        for w in &mut chunks {
            let hi = c ^ u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
            c = t[7][(hi >> 24) as usize]
                ^ t[6][(hi >> 16 & 0xff) as usize]
                ^ t[5][(hi >> 8 & 0xff) as usize]
                ^ t[4][(hi & 0xff) as usize]
                ^ t[3][usize::from(w[4])]
                ^ t[2][usize::from(w[5])]
                ^ t[1][usize::from(w[6])]
                ^ t[0][usize::from(w[7])];
        }
        for &b in chunks.remainder() {
            c = (c << 8) ^ t[0][((c >> 24) ^ u32::from(b)) as usize];
        }
        self.0 = c;
    }

    fn value(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytewise(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04c1_1db7
                } else {
                    c << 1
                };
            }
        }
        !c
    }

    /// The two chains split a block at n/3 (rounded either way, by n mod
    /// 3), and periodic blocks have equal rotations: every short length
    /// of each kind, as libbz2 writes them.
    #[test]
    fn blocks_of_every_short_length_invert() {
        use std::io::Write;
        let kinds: [&dyn Fn(usize) -> u8; 4] = [
            &|i| (i as u8).wrapping_mul(97) ^ 0x55,
            &|i| b"ab"[i % 2],
            &|i| b"aab"[i % 3],
            &|i| if i % 7 == 3 { b'z' } else { 0 },
        ];
        let mut d = BlockDecoder::default();
        for kind in kinds {
            for n in 1..=60 {
                let data: Vec<u8> = (0..n).map(kind).collect();
                let mut e =
                    ::bzip2::write::BzEncoder::new(Vec::new(), ::bzip2::Compression::new(1));
                e.write_all(&data).unwrap();
                let stream = e.finish().unwrap();
                let mut back = Vec::new();
                d.decode_stream(&stream, |piece| {
                    back.extend_from_slice(&piece);
                    true
                })
                .unwrap();
                assert_eq!(back, data, "length {n}");
            }
        }
    }

    #[test]
    fn crc_is_bzip2s() {
        // The CRC-32/BZIP2 check value.
        let mut c = Crc::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xfc89_1918);
        let data: Vec<u8> = (0..1000u32).map(|i| ((i * 7919) >> 3) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 999] {
            let mut c = Crc::new();
            c.update(&data[..split]);
            c.update(&data[split..]);
            assert_eq!(c.value(), bytewise(&data), "split at {split}");
        }
    }
}
