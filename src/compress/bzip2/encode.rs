//! The block encoder: cuts the input into blocks, compresses them on all
//! cores with libbz2, and joins them into one stream, new or continued
//! after the blocks a rewrite keeps.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};

use super::bits::{bits_at, BitWriter};
use super::workers::{stopped, Workers};
use super::{fold, put_end, put_header, Boundary, BLOCK_MAGIC, END_MAGIC};
use crate::compress::{worker_count, Encoder};

/// Input bytes in one block at most, whatever their run-length cost, so
/// the few blocks in flight stay small: zero runs (a raw image's free
/// space) fill a block only after 45 MB, and with 8 MiB blocks a disk
/// image took the encoder past 100 MiB on two cores. A block of 2 MiB of
/// zeros compresses to 40 bytes, so the cap costs nothing there.
const MAX_BLOCK_INPUT: usize = 2 << 20;

/// A rewrite's tail starts with blocks of at most this much input, for the
/// first [`SMALL_SPAN`] bytes: the tail of an archive that only gains a
/// file is the one block that held its end (up to 900 kB at -9), and as
/// one block it was compressed on one core while the others waited at the
/// end of every run. Cut in 128 KiB pieces it spreads over all cores.
/// Small blocks compress a little worse on text (each has its own Huffman
/// tables and a shorter context), but this only touches the first MiB of
/// the tail: on the bench rootfs's last 725 kB, six blocks came out 2%
/// smaller than one (binaries; libbz2's -9 on both).
const SMALL_BLOCK: usize = 128 << 10;
/// How much of a rewrite's tail is cut into [`SMALL_BLOCK`]s.
const SMALL_SPAN: usize = 1 << 20;

/// Decides how much input goes in each block. bzip2 fills a block with up
/// to (level x 100000 - 19) bytes after its first run-length step; counting
/// that step's output here keeps each piece to exactly one block. Blocks
/// are also capped at [`MAX_BLOCK_INPUT`], or [`SMALL_BLOCK`] at the start
/// of a rewrite's tail.
struct BlockFill {
    budget: usize,
    /// Run-length output so far, not counting the open run.
    done: usize,
    run_byte: u8,
    run_len: usize,
    taken: usize,
    /// Input bytes in this block at most.
    cap: usize,
}

impl BlockFill {
    fn new(level: u8, cap: usize) -> Self {
        BlockFill {
            // Room for one more run (5 bytes) and bzip2's own slack.
            budget: usize::from(level - b'0') * 100_000 - 19 - 6,
            done: 0,
            run_byte: 0,
            run_len: 0,
            taken: 0,
            cap,
        }
    }

    /// Run-length output for a run of `run` equal bytes.
    fn cost(run: usize) -> usize {
        if run < 4 {
            run
        } else {
            5
        }
    }

    /// How many of `data` fit in the current block.
    fn take(&mut self, data: &[u8]) -> usize {
        for (i, &b) in data.iter().enumerate() {
            if self.done + Self::cost(self.run_len) >= self.budget || self.taken == self.cap {
                return i;
            }
            if b == self.run_byte && self.run_len > 0 && self.run_len < 255 {
                self.run_len += 1;
            } else {
                self.done += Self::cost(self.run_len);
                self.run_byte = b;
                self.run_len = 1;
            }
            self.taken += 1;
        }
        data.len()
    }
}

struct EncodeJob {
    data: Vec<u8>,
    level: u8,
    reply: SyncSender<io::Result<Vec<u8>>>,
}

/// Compresses one block's input as a one-block stream.
fn encode_block(job: EncodeJob) {
    let level = u32::from(job.level - b'0');
    let mut encoder = ::bzip2::write::BzEncoder::new(
        Vec::with_capacity(job.data.len() / 2),
        ::bzip2::Compression::new(level),
    );
    let result = encoder.write_all(&job.data).and_then(|_| encoder.finish());
    let _ = job.reply.send(result);
}

/// Compresses into bzip2 blocks on all cores and appends them to a stream,
/// new or continued after kept blocks; the bytes do not depend on the
/// number of cores.
pub struct BlockEncoder<W: Write> {
    bits: BitWriter<W>,
    level: u8,
    crc: u32,
    fill: BlockFill,
    /// Input still to be cut into [`SMALL_BLOCK`]s (a rewrite's tail).
    small_left: usize,
    pending: Vec<u8>,
    in_flight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
    /// Dropped last (see Workers).
    workers: Workers<EncodeJob>,
}

impl<W: Write> BlockEncoder<W> {
    fn with_bits(bits: BitWriter<W>, level: u8, crc: u32, small_left: usize) -> Self {
        let n = worker_count();
        BlockEncoder {
            bits,
            level,
            crc,
            fill: BlockFill::new(level, block_cap(small_left)),
            small_left,
            pending: Vec::new(),
            in_flight: VecDeque::new(),
            workers: Workers::start(n, encode_block),
            // A block for each worker and one waiting keeps them busy;
            // more would only hold memory.
            max_in_flight: n + 1,
        }
    }

    /// A new stream at block size `level` (b'1'..=b'9').
    pub fn new(sink: W, level: u8) -> Self {
        let mut bits = BitWriter::new(sink);
        put_header(&mut bits, level);
        Self::with_bits(bits, level, 0, 0)
    }

    /// Continues a stream whose kept part ends at `from`; `last_byte` is
    /// the input byte that holds the kept part's last bits (if `from` is
    /// not on a byte boundary). The first MiB goes in small blocks (see
    /// [`SMALL_BLOCK`]); where they fall depends on the data only.
    pub fn resume(sink: W, from: &Boundary, last_byte: u8) -> Self {
        let bits = BitWriter::resume(sink, last_byte, (from.bit % 8) as u32);
        Self::with_bits(bits, from.level, from.crc, SMALL_SPAN)
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.pending);
        self.small_left = self.small_left.saturating_sub(data.len());
        self.fill = BlockFill::new(self.level, block_cap(self.small_left));
        let (reply, rx) = mpsc::sync_channel(1);
        let job = EncodeJob {
            data,
            level: self.level,
            reply,
        };
        self.workers.send(job)?;
        self.in_flight.push_back(rx);
        while self.in_flight.len() > self.max_in_flight {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let stream = rx.recv().map_err(|_| stopped("encoder"))??;
        let (block_crc, end) = one_block(&stream)?;
        self.bits.put_bits(&stream, 32, end - 32)?;
        self.crc = fold(self.crc, block_crc);
        Ok(())
    }

    /// Ends the stream and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.pending.is_empty() {
            self.submit()?;
        }
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        put_end(&mut self.bits, self.crc);
        self.bits.finish()
    }
}

/// Input bytes in the next block at most, with `small_left` bytes still
/// to go in small blocks.
fn block_cap(small_left: usize) -> usize {
    if small_left > 0 {
        SMALL_BLOCK
    } else {
        MAX_BLOCK_INPUT
    }
}

/// The CRC and end bit of the only block in a stream libbz2 just wrote.
fn one_block(stream: &[u8]) -> io::Result<(u32, u64)> {
    let odd = || io::Error::other("libbz2 wrote an unexpected stream");
    if stream.len() < 14 || bits_at(stream, 32, 48) != BLOCK_MAGIC {
        return Err(odd());
    }
    let crc = bits_at(stream, 80, 32) as u32;
    let total = stream.len() as u64 * 8;
    // The stream ends with the marker, the stream CRC and 0-7 pad bits; a
    // one-block stream's CRC is the block's.
    (0..8)
        .map(|pad| total - pad - 80)
        .find(|&end| {
            bits_at(stream, end, 48) == END_MAGIC && bits_at(stream, end + 48, 32) == u64::from(crc)
        })
        .map(|end| (crc, end))
        .ok_or_else(odd)
}

impl<W: Write> Write for BlockEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut n = self.fill.take(data);
        if n == 0 && !data.is_empty() {
            // The block is full: send it off and start the next.
            self.submit()?;
            n = self.fill.take(data);
        }
        self.pending.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Encoder for BlockEncoder<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish()?.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data::{encode, parallel, sample, sample_runs, sequential};
    use super::super::BlockEncoder;
    use super::{SMALL_BLOCK, SMALL_SPAN};
    use std::io::Write;

    /// A rewrite's tail (here after the first block of a stream) starts
    /// with small blocks, so that a tail of one block's worth is
    /// compressed on all cores; past the first MiB, blocks are full size.
    #[test]
    fn a_resumed_stream_starts_with_small_blocks() {
        let head = sample_runs(2_000_000, 20);
        let stream = encode(&head, b'9');
        let (_, kept) = parallel(stream.clone()).unwrap();
        let from = &kept[1];
        let tail = sample_runs(3_000_000, 20);
        for len in [700_000, tail.len()] {
            let keep = (from.bit / 8) as usize;
            let mut out = stream[..keep].to_vec();
            let mut e = BlockEncoder::resume(&mut out, from, stream[keep]);
            e.write_all(&tail[..len]).unwrap();
            e.finish().unwrap();
            let mut want = head[..from.out as usize].to_vec();
            want.extend_from_slice(&tail[..len]);
            assert!(sequential(&out) == want, "{len} bytes");
            let (back, blocks) = parallel(out).unwrap();
            assert!(back == want);
            // Input bytes in each new block.
            let mut ends: Vec<u64> = blocks.iter().map(|b| b.out).collect();
            ends.push(want.len() as u64);
            let sizes: Vec<u64> = ends.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
            let small = SMALL_SPAN
                .div_ceil(SMALL_BLOCK)
                .min(len.div_ceil(SMALL_BLOCK));
            assert!(sizes.len() >= small, "{len}: {sizes:?}");
            assert!(
                sizes[..small].iter().all(|&s| s <= SMALL_BLOCK as u64),
                "{sizes:?}"
            );
            // Full blocks after them (the last one holds what is left).
            let full = &sizes[small..];
            assert_eq!(full.is_empty(), len <= SMALL_SPAN, "{sizes:?}");
            assert!(full.iter().rev().skip(1).all(|&s| s > 800_000), "{sizes:?}");
        }
    }

    #[test]
    fn encoder_output_is_standard_bzip2_whatever_the_data() {
        for (len, level) in [(0, b'9'), (10, b'9'), (3_000_000, b'1'), (20_000_000, b'9')] {
            let data = sample(len);
            let stream = encode(&data, level);
            assert_eq!(sequential(&stream), data, "{len} bytes at level {level}");
            let (back, _) = parallel(stream).unwrap();
            assert_eq!(back, data);
        }
        // A long run of one byte fills a block with few input bytes' worth
        // of run codes; the size cap still splits it.
        let zeros = vec![0u8; 30 << 20];
        assert_eq!(sequential(&encode(&zeros, b'9')), zeros);
    }
}
