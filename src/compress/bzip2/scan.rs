//! Finding the blocks of a bzip2 file: their magics sit at bit positions,
//! so the scanner walks from magic to magic and cuts each block out as a
//! stream of its own.

use std::io::{self, Read};

use super::bits::{bits_at, BitWriter};
use super::{fold, is_level, put_end, put_header, Boundary, BLOCK_MAGIC, END_MAGIC};
use crate::compress::invalid_data;

/// No real block comes near this many compressed bytes (900 kB of input
/// compresses to less); a longer one means the file is not what it claims.
const MAX_BLOCK_COMPRESSED: usize = 2 << 20;

/// A block found in the file, with the state needed to continue from it.
pub(super) struct ScannedBlock {
    /// Where it starts; `out` is not known yet (0): the decoder counts it.
    pub(super) start: Boundary,
    /// The block alone, as a complete one-block bzip2 stream.
    pub(super) stream: Vec<u8>,
}

/// Where the scanner is.
enum Position {
    /// Expecting a stream header at this byte.
    Header(u64),
    /// Inside a stream, at a block or end-of-stream magic.
    Inside {
        bit: u64,
        level: u8,
        crc: u32,
    },
    Done,
}

/// Walks a bzip2 file magic by magic, holding at most one block in memory.
pub(super) struct Scanner<R: Read> {
    input: R,
    /// File bytes from `base` on.
    buf: Vec<u8>,
    base: u64,
    eof: bool,
    at: Position,
}

impl<R: Read> Scanner<R> {
    /// `input` is read from its start, or with `from`, from byte
    /// `from.bit / 8` of the file.
    pub(super) fn new(input: R, from: Option<&Boundary>) -> Self {
        let (base, at) = match from {
            None => (0, Position::Header(0)),
            Some(b) => (
                b.bit / 8,
                Position::Inside {
                    bit: b.bit,
                    level: b.level,
                    crc: b.crc,
                },
            ),
        };
        Scanner {
            input,
            buf: Vec::new(),
            base,
            eof: false,
            at,
        }
    }

    /// Makes sure the buffer holds the file up to byte `end` (or the end of
    /// the file); false if the file ends first.
    fn fill_to(&mut self, end: u64) -> io::Result<bool> {
        while self.base + (self.buf.len() as u64) < end && !self.eof {
            let have = self.buf.len();
            self.buf.resize(have + (1 << 20), 0);
            match self.input.read(&mut self.buf[have..]) {
                Ok(n) => {
                    self.buf.truncate(have + n);
                    self.eof = n == 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(have),
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            }
        }
        Ok(self.base + (self.buf.len() as u64) >= end)
    }

    fn bits(&self, bit: u64, n: u32) -> u64 {
        bits_at(&self.buf, bit - self.base * 8, n)
    }

    /// Drops buffered bytes before `bit`.
    fn discard_before(&mut self, bit: u64) {
        let drop = (bit / 8 - self.base) as usize;
        if drop >= 1 << 20 {
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
    }

    /// The first block or end-of-stream magic at or after `from`, not more
    /// than MAX_BLOCK_COMPRESSED away. A block magic only counts if the
    /// bits after it are plausible (not randomised, a start pointer inside
    /// the block): random data matches 48 bits once in 2^48 positions.
    fn next_magic(&mut self, from: u64, level: u8) -> io::Result<Option<u64>> {
        let limit = from / 8 + MAX_BLOCK_COMPRESSED as u64;
        let max_ptr = u64::from(level - b'0') * 100_000;
        let mut j = from.div_ceil(8);
        loop {
            let scanned_to = self.base + self.buf.len() as u64;
            // Bytes j..j+5 lie inside a magic that starts in bit 8j-7..8j;
            // the candidate check needs its 48 bits and 57 more.
            while j + 16 <= scanned_to || (self.eof && j + 6 <= scanned_to) {
                let i = (j - self.base) as usize;
                let pair = u16::from_be_bytes([self.buf[i], self.buf[i + 1]]);
                if FILTER.hit(pair) {
                    for s in (0..8u64).rev() {
                        let Some(bit) = (8 * j).checked_sub(s) else {
                            continue;
                        };
                        if bit < from {
                            continue;
                        }
                        match self.bits(bit, 48) {
                            END_MAGIC => return Ok(Some(bit)),
                            BLOCK_MAGIC => {
                                let randomised = self.bits(bit + 80, 1);
                                let ptr = self.bits(bit + 81, 24);
                                if randomised == 0 && ptr < max_ptr {
                                    return Ok(Some(bit));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                j += 1;
                if j > limit {
                    return Ok(None);
                }
            }
            if self.eof {
                return Ok(None);
            }
            self.fill_to(scanned_to + 1)?;
        }
    }

    /// The next block in file order; None after the last stream.
    pub(super) fn next_block(&mut self) -> io::Result<Option<ScannedBlock>> {
        loop {
            match self.at {
                Position::Done => return Ok(None),
                Position::Header(byte) => {
                    if !self.fill_to(byte + 1)? {
                        if byte == 0 {
                            return Err(invalid_data("the file is empty, not bzip2"));
                        }
                        self.at = Position::Done;
                        continue;
                    }
                    if byte > 0 && self.buf[(byte - self.base) as usize] == 0 {
                        // Zeros after the last stream: padding, as bzip2
                        // reads it (zeros before any stream are no bzip2).
                        self.skip_padding(byte)?;
                        self.at = Position::Done;
                        continue;
                    }
                    self.fill_to(byte + 4)?;
                    let i = (byte - self.base) as usize;
                    let head = &self.buf[i..(i + 4).min(self.buf.len())];
                    if head.len() < 4 || &head[..3] != b"BZh" || !is_level(head[3]) {
                        return Err(invalid_data(format!(
                            "no bzip2 stream header at byte {byte}"
                        )));
                    }
                    self.at = Position::Inside {
                        bit: (byte + 4) * 8,
                        level: head[3],
                        crc: 0,
                    };
                }
                Position::Inside { bit, level, crc } => {
                    self.discard_before(bit);
                    if !self.fill_to((bit + 80).div_ceil(8))? {
                        return Err(invalid_data(format!(
                            "the bzip2 stream ends inside a block header at byte {}",
                            bit / 8
                        )));
                    }
                    let block_crc = self.bits(bit + 48, 32) as u32;
                    match self.bits(bit, 48) {
                        END_MAGIC => {
                            if block_crc != crc {
                                return Err(invalid_data(format!(
                                    "the bzip2 stream ending at byte {} has a bad CRC",
                                    bit / 8
                                )));
                            }
                            self.at = Position::Header((bit + 80).div_ceil(8));
                        }
                        BLOCK_MAGIC => {
                            let Some(end) = self.next_magic(bit + 48, level)? else {
                                return Err(invalid_data(format!(
                                    "the bzip2 block at byte {} has no end",
                                    bit / 8
                                )));
                            };
                            let block = ScannedBlock {
                                start: Boundary {
                                    bit,
                                    out: 0,
                                    level,
                                    crc,
                                },
                                stream: self.standalone(bit, end, level, block_crc)?,
                            };
                            self.at = Position::Inside {
                                bit: end,
                                level,
                                crc: fold(crc, block_crc),
                            };
                            return Ok(Some(block));
                        }
                        _ => {
                            return Err(invalid_data(format!(
                                "no bzip2 block at bit {} of byte {}",
                                bit % 8,
                                bit / 8
                            )))
                        }
                    }
                }
            }
        }
    }

    /// Reads the file from `byte` to its end, which must be zeros, holding
    /// no more than a buffer of it.
    fn skip_padding(&mut self, byte: u64) -> io::Result<()> {
        let mut from = (byte - self.base) as usize;
        loop {
            if let Some(i) = self.buf[from..].iter().position(|&b| b != 0) {
                return Err(invalid_data(format!(
                    "the bzip2 stream is followed by zero padding and then other bytes (at byte {}); only zeros may follow the last stream",
                    self.base + (from + i) as u64
                )));
            }
            self.base += self.buf.len() as u64;
            self.buf.clear();
            from = 0;
            if !self.fill_to(self.base + 1)? {
                return Ok(());
            }
        }
    }

    /// The block in bits `start..end` as a one-block stream of its own.
    fn standalone(&self, start: u64, end: u64, level: u8, crc: u32) -> io::Result<Vec<u8>> {
        let mut bits = BitWriter::new(Vec::with_capacity(((end - start) / 8 + 16) as usize));
        put_header(&mut bits, level);
        bits.put_bits(&self.buf, start - self.base * 8, end - start)?;
        put_end(&mut bits, crc);
        bits.finish()
    }
}

/// The 16-bit values a magic can show at a byte boundary.
struct Filter([u64; 1024]);

impl Filter {
    const fn new() -> Filter {
        let mut bits = [0u64; 1024];
        let magics = [BLOCK_MAGIC, END_MAGIC];
        let mut m = 0;
        while m < 2 {
            let mut s = 0;
            while s < 8 {
                // A magic starting s bits before a byte boundary shows its
                // bits s..s+16 in the two bytes after it.
                let v = ((magics[m] >> (32 - s)) & 0xffff) as usize;
                bits[v / 64] |= 1 << (v % 64);
                s += 1;
            }
            m += 1;
        }
        Filter(bits)
    }

    fn hit(&self, v: u16) -> bool {
        self.0[usize::from(v) / 64] >> (v % 64) & 1 == 1
    }
}

static FILTER: Filter = Filter::new();
