//! Bit-level reading and copying: bzip2 blocks start and end at any bit.

use std::io::{self, Write};

/// `n` (at most 56) bits of `data` from bit `bit`, most significant first;
/// bits past the end read as zero.
pub(super) fn bits_at(data: &[u8], bit: u64, n: u32) -> u64 {
    debug_assert!(n <= 56);
    if n == 0 {
        return 0;
    }
    let byte = (bit / 8).min(data.len() as u64) as usize;
    let mut word = [0u8; 8];
    let avail = (data.len() - byte).min(8);
    word[..avail].copy_from_slice(&data[byte..byte + avail]);
    (u64::from_be_bytes(word) << (bit % 8)) >> (64 - n)
}

/// Appends bits to a byte sink, most significant first.
pub(super) struct BitWriter<W: Write> {
    sink: W,
    buf: Vec<u8>,
    /// The pending bits (fewer than 8) in the low end.
    acc: u32,
    used: u32,
}

impl<W: Write> BitWriter<W> {
    pub(super) fn new(sink: W) -> Self {
        BitWriter {
            sink,
            buf: Vec::with_capacity(1 << 16),
            acc: 0,
            used: 0,
        }
    }

    /// Starts after `used` bits (the high ones of `byte`) already written.
    pub(super) fn resume(sink: W, byte: u8, used: u32) -> Self {
        let mut w = Self::new(sink);
        w.acc = u32::from(byte) >> (8 - used) & ((1 << used) - 1);
        w.used = used;
        w
    }

    /// Appends the low `n` (at most 24) bits of `value`.
    pub(super) fn put(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 24);
        let mut acc = (u64::from(self.acc) << n) | (value & ((1 << n) - 1));
        let mut used = self.used + n;
        while used >= 8 {
            used -= 8;
            self.buf.push((acc >> used) as u8);
        }
        acc &= (1 << used) - 1;
        self.acc = acc as u32;
        self.used = used;
    }

    /// Appends the low `n` (at most 48) bits of `value`.
    pub(super) fn put_wide(&mut self, value: u64, n: u32) {
        if n > 24 {
            self.put(value >> 24, n - 24);
            self.put(value, 24);
        } else {
            self.put(value, n);
        }
    }

    /// Copies `nbits` bits of `src` starting at bit `start`.
    pub(super) fn put_bits(
        &mut self,
        src: &[u8],
        mut start: u64,
        mut nbits: u64,
    ) -> io::Result<()> {
        let lead = ((8 - start % 8) % 8).min(nbits) as u32;
        self.put(bits_at(src, start, lead), lead);
        start += u64::from(lead);
        nbits -= u64::from(lead);
        let first = (start / 8) as usize;
        for chunk in src[first..first + (nbits / 8) as usize].chunks(1 << 16) {
            if self.used == 0 {
                self.buf.extend_from_slice(chunk);
            } else {
                let (used, mut acc) = (self.used, self.acc);
                self.buf.extend(chunk.iter().map(|&b| {
                    let byte = ((acc << (8 - used)) | (u32::from(b) >> used)) as u8;
                    acc = u32::from(b) & ((1 << used) - 1);
                    byte
                }));
                self.acc = acc;
            }
            self.spill()?;
        }
        let rest = (nbits % 8) as u32;
        self.put(bits_at(src, start + nbits - u64::from(rest), rest), rest);
        Ok(())
    }

    /// Writes the buffered whole bytes out once there are enough of them.
    fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= 1 << 16 {
            self.sink.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Pads to a whole byte with zero bits and writes everything out.
    pub(super) fn finish(mut self) -> io::Result<W> {
        if self.used > 0 {
            self.put(0, 8 - self.used);
        }
        self.sink.write_all(&self.buf)?;
        self.sink.flush()?;
        Ok(self.sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_copies_at_every_alignment() {
        let src: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let bit = |data: &[u8], i: u64| data[(i / 8) as usize] >> (7 - i % 8) & 1;
        for dst_lead in 0..8u32 {
            for start in 0..16u64 {
                for len in [0u64, 1, 7, 8, 9, 100, 300] {
                    let mut w = BitWriter::new(Vec::new());
                    w.put(0b1010_1010 >> (8 - dst_lead), dst_lead);
                    w.put_bits(&src, start, len).unwrap();
                    let written = w.finish().unwrap();
                    for i in 0..len {
                        assert_eq!(
                            bit(&written, u64::from(dst_lead) + i),
                            bit(&src, start + i),
                            "lead {dst_lead} start {start} len {len} bit {i}"
                        );
                    }
                }
            }
        }
    }
}
