//! imprint's own bzip2 block decoder, first half: the block header, the
//! Huffman tables and the symbols, undone as far as the BWT's last column
//! (see `inverse.rs` for the rest).
//!
//! It replaced libbz2 for the parallel reader because the cold scan of a
//! `.tbz2` decodes every block and cost 1.4-1.5x `lbzip2 -n2 -dc`. What
//! makes it faster than libbz2 here: a 64-bit bit buffer refilled a word at
//! a time, a lookup table that decodes a whole Huffman code (of up to
//! [`LUT_BITS`] bits) in one step, and the move-to-front list kept as one
//! array shifted with `copy_within`.
//!
//! It decides every stream exactly as libbz2 1.0.8 (`decompress.c`) does,
//! including its odd readings of malformed code tables: the lookup table
//! is filled from libbz2's own `limit`/`base`/`perm` arrays, and codes it
//! cannot resolve in [`LUT_BITS`] bits are decoded by libbz2's loop. Where
//! libbz2 would read uninitialised state, or for randomised blocks (bzip2
//! 0.9.0), this decoder stops with [`Unsupported`](BlockError::Unsupported)
//! and the caller lets libbz2 read the file.

use std::fmt;

/// Bits the Huffman lookup table resolves at once: bzip2's codes average
/// under 9 bits, and longer ones take libbz2's loop.
const LUT_BITS: u32 = 11;
const MAX_GROUPS: usize = 6;
const MAX_ALPHA: usize = 258;
const MAX_CODE_LEN: usize = 20;
const GROUP_SIZE: u32 = 50;
/// libbz2's `BZ_MAX_SELECTORS`: selectors past it are read and ignored.
const MAX_SELECTORS: usize = 2 + 900_000 / GROUP_SIZE as usize;
/// A lookup entry for codes longer than [`LUT_BITS`].
const SLOW: u16 = 0;

/// Why a block did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BlockError {
    /// Not a valid bzip2 block, as libbz2 would also say; the text says
    /// what is wrong.
    Corrupt(&'static str),
    /// Valid, maybe, but left to libbz2 (randomised blocks).
    Unsupported(&'static str),
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::Corrupt(why) | BlockError::Unsupported(why) => f.write_str(why),
        }
    }
}

fn corrupt<T>(why: &'static str) -> Result<T, BlockError> {
    Err(BlockError::Corrupt(why))
}

/// Reads bits most significant first from a byte slice.
pub(super) struct Bits<'a> {
    data: &'a [u8],
    /// Next byte to load.
    pos: usize,
    /// The loaded bits, left-aligned.
    buf: u64,
    /// How many bits of `buf` are loaded (at least 56 after `refill`).
    count: u32,
    /// Zero bits handed out past the end of `data`.
    overrun: bool,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        let mut b = Bits {
            data,
            pos: 0,
            buf: 0,
            count: 0,
            overrun: false,
        };
        b.refill();
        b
    }

    /// Tops the buffer up to at least 56 bits.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(word) = self.data.get(self.pos..self.pos + 8) {
            let word = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            // The bits past `count` that `word` also sets are set again,
            // to the same values, by the next refill.
            self.buf |= word >> self.count;
            let bytes = (63 - self.count) / 8;
            self.pos += bytes as usize;
            self.count += bytes * 8;
        } else {
            self.refill_slow();
        }
    }

    #[cold]
    fn refill_slow(&mut self) {
        while self.count < 56 {
            match self.data.get(self.pos) {
                Some(&b) => self.buf |= u64::from(b) << (56 - self.count),
                // Past the end, zeros; whoever reads them sees `overrun`.
                None => self.overrun = true,
            }
            self.pos += 1;
            self.count += 8;
        }
    }

    /// The next `n` (1..=32) bits, not consumed.
    #[inline(always)]
    fn peek(&self, n: u32) -> u32 {
        (self.buf >> (64 - n)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }

    /// The next `n` (1..=32) bits.
    pub(super) fn take(&mut self, n: u32) -> u32 {
        if self.count < n {
            self.refill();
        }
        let v = self.peek(n);
        self.consume(n);
        v
    }

    pub(super) fn take_wide(&mut self, n: u32) -> u64 {
        if n > 32 {
            let high = u64::from(self.take(n - 32));
            (high << 32) | u64::from(self.take(32))
        } else {
            u64::from(self.take(n))
        }
    }

    /// Whether the reader went past the end of the data: the bits it
    /// handed out there were made up.
    pub(super) fn overran(&self) -> bool {
        // Loaded past the end, and used some of what was not there.
        self.overrun && (self.pos as u64 * 8 - u64::from(self.count)) > self.data.len() as u64 * 8
    }
}

/// One Huffman table: libbz2's decoding arrays and a lookup table built
/// from them.
struct Table {
    /// Indexed by the next [`LUT_BITS`] bits: `symbol << 5 | length` for a
    /// code of at most that length, [`SLOW`] otherwise, and `ERROR << 5 |
    /// length` where libbz2 stops with an error.
    lut: Vec<u16>,
    /// libbz2's arrays (`hbCreateDecodeTables`), indexed by code length.
    limit: [i32; MAX_CODE_LEN + 2],
    base: [i32; MAX_CODE_LEN + 2],
    perm: [u16; MAX_ALPHA],
    /// How many entries of `perm` are set.
    perm_len: i32,
    min_len: u32,
}

/// A lookup entry's symbol for "libbz2 stops here".
const ERROR: u16 = 0x7ff;

impl Table {
    fn new() -> Self {
        Table {
            lut: vec![SLOW; 1 << LUT_BITS],
            limit: [0; MAX_CODE_LEN + 2],
            base: [0; MAX_CODE_LEN + 2],
            perm: [0; MAX_ALPHA],
            perm_len: 0,
            min_len: 1,
        }
    }

    /// libbz2's `hbCreateDecodeTables`, then the lookup table.
    fn build(&mut self, lens: &[u8]) {
        let min_len = u32::from(*lens.iter().min().expect("an alphabet"));
        let max_len = u32::from(*lens.iter().max().expect("an alphabet"));
        self.min_len = min_len;
        let mut pp = 0;
        for l in min_len..=max_len {
            for (s, &len) in lens.iter().enumerate() {
                if u32::from(len) == l {
                    self.perm[pp] = s as u16;
                    pp += 1;
                }
            }
        }
        self.perm_len = pp as i32;
        // libbz2 sizes these BZ_MAX_CODE_LEN (23); lengths are at most 20,
        // so entries past 21 are never read.
        let mut base = [0i32; 23];
        for &len in lens {
            base[usize::from(len) + 1] += 1;
        }
        for i in 1..23 {
            base[i] += base[i - 1];
        }
        let mut limit = [0i32; 23];
        let mut vec = 0i32;
        for i in min_len as usize..=max_len as usize {
            vec += base[i + 1] - base[i];
            limit[i] = vec - 1;
            vec <<= 1;
        }
        for i in min_len as usize + 1..=max_len as usize {
            base[i] = ((limit[i - 1] + 1) << 1) - base[i];
        }
        self.limit.copy_from_slice(&limit[..MAX_CODE_LEN + 2]);
        self.base.copy_from_slice(&base[..MAX_CODE_LEN + 2]);
        self.fill_lut();
    }

    /// What libbz2's loop gives for a code of `len` bits with value `zvec`
    /// that it accepts at that length: the symbol, or [`ERROR`].
    fn symbol(&self, len: usize, zvec: i32) -> u16 {
        let idx = zvec - self.base[len];
        if idx < 0 || idx >= MAX_ALPHA as i32 {
            ERROR
        } else if idx >= self.perm_len {
            // libbz2 would read a `perm` entry left from an earlier
            // table: not a stream any encoder writes.
            ERROR - 1
        } else {
            self.perm[idx as usize]
        }
    }

    /// The values that reach length `l` in libbz2's loop are always those
    /// from some `lo` up; at each length those up to `limit` stop there.
    fn fill_lut(&mut self) {
        self.lut.fill(SLOW);
        let mut lo: i64 = 0;
        let mut l = self.min_len as usize;
        while l <= LUT_BITS as usize {
            let top = (1i64 << l) - 1;
            let hi = i64::from(self.limit[l]).min(top);
            let mut zvec = lo;
            while zvec <= hi {
                let sym = self.symbol(l, zvec as i32);
                let entry = sym << 5 | l as u16;
                let shift = LUT_BITS as usize - l;
                let from = (zvec as usize) << shift;
                self.lut[from..from + (1 << shift)].fill(entry);
                zvec += 1;
            }
            lo = 2 * lo.max(hi + 1);
            l += 1;
        }
    }

    /// libbz2's loop, for codes the lookup table does not resolve.
    #[cold]
    fn decode_slow(&self, bits: &mut Bits) -> Result<u16, BlockError> {
        // At least 56 bits are loaded; a code takes at most 20 of them.
        let mut zn = self.min_len as usize;
        loop {
            if zn > MAX_CODE_LEN {
                return corrupt("a Huffman code longer than 20 bits");
            }
            let zvec = bits.peek(zn as u32) as i32;
            if zvec <= self.limit[zn] {
                bits.consume(zn as u32);
                return match self.symbol(zn, zvec) {
                    ERROR => corrupt("a Huffman code that names no symbol"),
                    s if s == ERROR - 1 => {
                        Err(BlockError::Unsupported("a Huffman table with holes"))
                    }
                    s => Ok(s),
                };
            }
            zn += 1;
        }
    }

    #[inline(always)]
    fn decode(&self, bits: &mut Bits) -> Result<u16, BlockError> {
        bits.refill();
        let e = self.lut[bits.peek(LUT_BITS) as usize];
        if e == SLOW || e >> 5 >= ERROR - 1 {
            return self.decode_slow(bits);
        }
        bits.consume(u32::from(e & 31));
        Ok(e >> 5)
    }
}

/// A block undone up to the BWT: what `inverse.rs` needs.
pub(super) struct Symbols {
    /// The BWT's last column, `n` bytes.
    pub(super) last: Vec<u8>,
    /// How often each byte occurs in it.
    pub(super) counts: [u32; 256],
    /// The row of the original string (libbz2's `origPtr`).
    pub(super) orig: u32,
}

/// Decoding state reused from block to block (a worker decodes many).
pub(super) struct SymbolDecoder {
    tables: Vec<Table>,
    selectors: Vec<u8>,
}

impl Default for SymbolDecoder {
    fn default() -> Self {
        SymbolDecoder {
            tables: (0..MAX_GROUPS).map(|_| Table::new()).collect(),
            selectors: Vec::with_capacity(MAX_SELECTORS),
        }
    }
}

impl SymbolDecoder {
    /// Decodes one block from just after its 48-bit magic and 32-bit CRC
    /// to its end-of-block symbol, into `out` (reused between blocks).
    /// `level` is the stream's block size digit (1..=9).
    pub(super) fn decode(
        &mut self,
        bits: &mut Bits,
        level: u32,
        out: &mut Symbols,
    ) -> Result<(), BlockError> {
        if bits.take(1) == 1 {
            return Err(BlockError::Unsupported("a randomised block (bzip2 0.9.0)"));
        }
        let orig = bits.take(24);
        if orig > 10 + 100_000 * level {
            return corrupt("a BWT start pointer past the block");
        }
        // The byte values used, as a map of 16 x 16 bits.
        let mut used = [0u8; 256];
        let mut n_used = 0usize;
        let ranges = bits.take(16);
        for i in 0..16 {
            if ranges >> (15 - i) & 1 == 1 {
                let set = bits.take(16);
                for j in 0..16 {
                    if set >> (15 - j) & 1 == 1 {
                        used[n_used] = (i * 16 + j) as u8;
                        n_used += 1;
                    }
                }
            }
        }
        if n_used == 0 {
            return corrupt("a block that uses no byte values");
        }
        let alpha = n_used + 2;
        let groups = bits.take(3) as usize;
        if !(2..=MAX_GROUPS).contains(&groups) {
            return corrupt("a number of Huffman tables outside 2-6");
        }
        let n_selectors = bits.take(15) as usize;
        if n_selectors == 0 {
            return corrupt("no Huffman table selectors");
        }
        // Selectors, move-to-front coded in unary.
        let mut mtf: [u8; MAX_GROUPS] = [0, 1, 2, 3, 4, 5];
        self.selectors.clear();
        for i in 0..n_selectors {
            let mut j = 0usize;
            while bits.take(1) == 1 {
                j += 1;
                if j >= groups {
                    return corrupt("a selector past the Huffman tables");
                }
            }
            if i < MAX_SELECTORS {
                let t = mtf[j];
                mtf.copy_within(0..j, 1);
                mtf[0] = t;
                self.selectors.push(t);
            }
        }
        // Code lengths, delta coded.
        let mut lens = [0u8; MAX_ALPHA];
        for t in 0..groups {
            let mut curr = bits.take(5) as i32;
            for len in lens.iter_mut().take(alpha) {
                loop {
                    if !(1..=20).contains(&curr) {
                        return corrupt("a Huffman code length outside 1-20");
                    }
                    if bits.take(1) == 0 {
                        break;
                    }
                    curr += if bits.take(1) == 0 { 1 } else { -1 };
                }
                *len = curr as u8;
            }
            self.tables[t].build(&lens[..alpha]);
        }
        if bits.overran() {
            return corrupt("the block ends inside its header");
        }
        self.symbols(bits, level, orig, &used[..n_used], out)
    }

    /// The Huffman-coded symbols: run lengths of the front byte
    /// (RUNA/RUNB) and move-to-front indices, up to end-of-block.
    fn symbols(
        &mut self,
        bits: &mut Bits,
        level: u32,
        orig: u32,
        used: &[u8],
        out: &mut Symbols,
    ) -> Result<(), BlockError> {
        let max = 100_000 * level as usize;
        let eob = used.len() as u16 + 1;
        let last = &mut out.last;
        last.clear();
        last.reserve(max);
        let mut counts = [0u32; 256];
        // The move-to-front list holds the byte values themselves.
        let mut mtf = Mtf([0u8; 256 + 8]);
        mtf.0[..used.len()].copy_from_slice(used);
        let mut selectors = self.selectors.iter();
        let mut table = &self.tables[0];
        let mut left_in_group = 0u32;
        // A run of the front byte being summed up (bijective base 2).
        let mut run = 0usize;
        let mut weight = 1usize;
        loop {
            if left_in_group == 0 {
                let Some(&t) = selectors.next() else {
                    return corrupt("more Huffman groups than selectors");
                };
                table = &self.tables[usize::from(t)];
                left_in_group = GROUP_SIZE;
            }
            left_in_group -= 1;
            let sym = table.decode(bits)?;
            if sym <= 1 {
                // libbz2 bounds the run's weight at 2 Mi.
                if weight >= 2 << 20 {
                    return corrupt("a run longer than any block");
                }
                run += weight << sym;
                weight <<= 1;
                continue;
            }
            if run > 0 {
                if last.len() + run > max {
                    return corrupt("a block longer than its stream's block size");
                }
                let b = mtf.0[0];
                counts[usize::from(b)] += run as u32;
                last.resize(last.len() + run, b);
                run = 0;
                weight = 1;
            }
            if sym == eob {
                break;
            }
            if last.len() >= max {
                return corrupt("a block longer than its stream's block size");
            }
            let b = mtf.move_to_front(usize::from(sym - 1));
            counts[usize::from(b)] += 1;
            last.push(b);
        }
        if bits.overran() {
            return corrupt("the block is cut short");
        }
        if orig as usize >= last.len() {
            return corrupt("a BWT start pointer past the block");
        }
        out.counts = counts;
        out.orig = orig;
        Ok(())
    }
}

/// The move-to-front list, with 8 bytes of slack so it can be shifted a
/// word at a time. Moving a byte to the front was a `memmove` call per
/// symbol (8% of a cold `.tbz2` scan's CPU, most of them moving a few
/// bytes); an index below 8 (most of them) is now one word operation,
/// the others still a `memmove` (a loop of word shifts was slower).
struct Mtf([u8; 256 + 8]);

impl Mtf {
    /// Moves the byte at `i` (at most 255) to the front; returns it.
    #[inline(always)]
    fn move_to_front(&mut self, i: usize) -> u8 {
        let list = &mut self.0;
        let b = list[i];
        if i >= 8 {
            // libc's memmove moves these in a few vector instructions.
            list.copy_within(0..i, 1);
            list[0] = b;
            return b;
        }
        let word = |list: &[u8; 264], k: usize| {
            u64::from_le_bytes(list[k..k + 8].try_into().expect("8 bytes"))
        };
        // Each byte before `i` moves up one; the one leaving a word is
        // carried into the next.
        let mut carry = u64::from(b);
        let mut k = 0;
        while k + 8 <= i {
            let w = word(list, k);
            list[k..k + 8].copy_from_slice(&(w << 8 | carry).to_le_bytes());
            carry = w >> 56;
            k += 8;
        }
        // The last word moves its first `i - k + 1` bytes (1..=8): the
        // byte at `i` is overwritten, those after it stay.
        let w = word(list, k);
        let mask = u64::MAX >> (8 * (7 - (i - k)));
        let moved = (w << 8 | carry) & mask | w & !mask;
        list[k..k + 8].copy_from_slice(&moved.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_read_most_significant_first_and_notice_the_end() {
        let data = [0b1010_0000u8, 0xff, 0x01];
        let mut b = Bits::new(&data);
        assert_eq!(b.take(3), 0b101);
        assert_eq!(b.take(5), 0);
        assert_eq!(b.take_wide(16), 0xff01);
        assert!(!b.overran());
        b.take(1);
        assert!(b.overran());
    }

    #[test]
    fn move_to_front_moves_one_byte_and_shifts_those_before_it() {
        for i in 0..256 {
            let mut mtf = Mtf([0; 264]);
            for (k, b) in mtf.0.iter_mut().enumerate() {
                *b = (k as u8).wrapping_mul(151) ^ 0x3c;
            }
            let mut want = mtf.0;
            let b = want[i];
            want.copy_within(0..i, 1);
            want[0] = b;
            assert_eq!(mtf.move_to_front(i), b, "index {i}");
            assert_eq!(mtf.0, want, "index {i}");
        }
    }

    #[test]
    fn lookup_table_agrees_with_libbz2s_loop() {
        // Complete, incomplete and oversubscribed length sets.
        let sets: [&[u8]; 4] = [
            &[2, 2, 2, 3, 3],
            &[1, 3, 3, 4, 5, 13, 13, 20],
            &[3, 3, 3, 3, 3],
            &[1, 1, 1, 2],
        ];
        for lens in sets {
            let mut t = Table::new();
            t.build(lens);
            for v in 0u32..1 << 16 {
                let bytes = (v << 16).to_be_bytes();
                let data = [bytes[0], bytes[1], 0, 0, 0, 0, 0, 0, 0, 0];
                let mut fast = Bits::new(&data);
                let mut slow = Bits::new(&data);
                let a = t.decode(&mut fast);
                let b = t.decode_slow(&mut slow);
                assert_eq!(a, b, "{lens:?} {v:016b}");
                assert_eq!(fast.count, slow.count, "{lens:?} {v:016b}");
            }
        }
    }
}
