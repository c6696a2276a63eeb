//! bzip2 read block by block on all cores, and rewritten by keeping the
//! compressed blocks before the first change.
//!
//! A bzip2 stream is a 4-byte header ("BZh" and the block size digit), a
//! run of blocks, and an end-of-stream marker with the stream CRC. Blocks
//! start with a 48-bit magic number at a *bit* position, hold up to
//! level x 100 kB of input, carry their own CRC and decode independently;
//! the stream CRC is a fold of the block CRCs. So:
//! - reading: find the block magics, give each block to a worker as a
//!   one-block stream of its own, and hand the output on in order (what
//!   lbzip2 does);
//! - writing: keep the input's bits up to the block that holds the first
//!   change, compress the rest block by block (in parallel), and close the
//!   stream with the fold of the kept and the new block CRCs.
//!
//! If the parallel reader meets anything it does not expect, the caller
//! falls back to the sequential decoder, whose errors users already know.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
const EOS_MAGIC: u64 = 0x1772_4538_5090;
/// No real block comes near this many compressed bytes (900 kB of input
/// compresses to less); a longer one means the file is not what it claims.
const MAX_BLOCK_BYTES: usize = 2 << 20;
/// Decoded output is handed over in pieces of this size, a few per block at
/// a time, so memory stays small even for blocks that decode to 45 MB
/// (bzip2's run-length step turns a run of 255 bytes into 5).
const PIECE: usize = 256 * 1024;
const PIECES_IN_FLIGHT: usize = 4;
/// Block boundaries kept for the tar scan; it reads close behind.
const RECENT: usize = 16;

/// `n` (at most 56) bits of `data` from bit `bit`, most significant first;
/// bits past the end read as zero.
fn bits_at(data: &[u8], bit: u64, n: u32) -> u64 {
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
pub struct BitWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    /// The pending bits (fewer than 8) in the low end.
    acc: u32,
    used: u32,
}

impl<W: Write> BitWriter<W> {
    fn new(out: W) -> Self {
        BitWriter {
            out,
            buf: Vec::with_capacity(1 << 16),
            acc: 0,
            used: 0,
        }
    }

    /// Starts after `used` bits (the high ones of `byte`) already written.
    fn resume(out: W, byte: u8, used: u32) -> Self {
        let mut w = Self::new(out);
        w.acc = u32::from(byte) >> (8 - used) & ((1 << used) - 1);
        w.used = used;
        w
    }

    fn put(&mut self, value: u64, n: u32) {
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

    fn put_wide(&mut self, value: u64, n: u32) {
        if n > 24 {
            self.put(value >> 24, n - 24);
            self.put(value, 24);
        } else {
            self.put(value, n);
        }
    }

    /// Copies `nbits` bits of `src` starting at bit `start`.
    fn put_bits(&mut self, src: &[u8], mut start: u64, mut nbits: u64) -> io::Result<()> {
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

    fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= 1 << 16 {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Pads to a whole byte with zero bits and writes everything out.
    fn finish(mut self) -> io::Result<W> {
        if self.used > 0 {
            self.put(0, 8 - self.used);
        }
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The end-of-stream marker: magic, stream CRC, padding.
fn put_end<W: Write>(bits: &mut BitWriter<W>, crc: u32) {
    bits.put_wide(EOS_MAGIC, 48);
    bits.put_wide(u64::from(crc), 32);
}

fn fold(crc: u32, block_crc: u32) -> u32 {
    crc.rotate_left(1) ^ block_crc
}

fn is_level(b: u8) -> bool {
    (b'1'..=b'9').contains(&b)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Where a new block starts: the tail rewrite keeps everything before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boundary {
    /// Bit offset in the file.
    pub bit: u64,
    /// Uncompressed bytes before it.
    pub out: u64,
    /// The block size digit of the stream it is in.
    pub level: u8,
    /// Fold of the CRCs of that stream's earlier blocks.
    pub crc: u32,
}

/// What the parallel reader learned, shared with the tar scan.
#[derive(Default)]
pub struct Index {
    recent: VecDeque<Boundary>,
}

impl Index {
    /// The latest remembered boundary at or before uncompressed `offset`.
    pub fn boundary_before(&self, offset: u64) -> Option<Boundary> {
        self.recent.iter().rev().find(|b| b.out <= offset).cloned()
    }
}

pub type SharedIndex = Arc<Mutex<Index>>;

/// A block found in the file, with the state needed to continue from it.
struct Found {
    start: Boundary,
    /// The block alone, as a complete one-block bzip2 stream.
    stream: Vec<u8>,
}

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
struct Scanner<R: Read> {
    input: R,
    /// File bytes from `base` on.
    buf: Vec<u8>,
    base: u64,
    eof: bool,
    at: Position,
}

impl<R: Read> Scanner<R> {
    /// `input` is read from byte `start.bit / 8` of the file.
    fn new(input: R, start: Option<&Boundary>) -> Self {
        let (base, at) = match start {
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
    /// than MAX_BLOCK_BYTES away. A block magic only counts if the bits
    /// after it are plausible (not randomised, a start pointer inside the
    /// block): random data matches 48 bits once in 2^48 positions.
    fn next_magic(&mut self, from: u64, level: u8) -> io::Result<Option<u64>> {
        let limit = from / 8 + MAX_BLOCK_BYTES as u64;
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
                            EOS_MAGIC => return Ok(Some(bit)),
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

    fn next_block(&mut self) -> io::Result<Option<Found>> {
        loop {
            match self.at {
                Position::Done => return Ok(None),
                Position::Header(byte) => {
                    if !self.fill_to(byte + 1)? {
                        if byte == 0 {
                            return Err(invalid("the file is empty, not bzip2".into()));
                        }
                        self.at = Position::Done;
                        continue;
                    }
                    self.fill_to(byte + 4)?;
                    let i = (byte - self.base) as usize;
                    let head = &self.buf[i..(i + 4).min(self.buf.len())];
                    if head.len() < 4 || &head[..3] != b"BZh" || !is_level(head[3]) {
                        return Err(invalid(format!("no bzip2 stream header at byte {byte}")));
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
                        return Err(invalid(format!(
                            "the bzip2 stream ends inside a block header at byte {}",
                            bit / 8
                        )));
                    }
                    let block_crc = self.bits(bit + 48, 32) as u32;
                    match self.bits(bit, 48) {
                        EOS_MAGIC => {
                            if block_crc != crc {
                                return Err(invalid(format!(
                                    "the bzip2 stream ending at byte {} has a bad CRC",
                                    bit / 8
                                )));
                            }
                            self.at = Position::Header((bit + 80).div_ceil(8));
                        }
                        BLOCK_MAGIC => {
                            let Some(end) = self.next_magic(bit + 48, level)? else {
                                return Err(invalid(format!(
                                    "the bzip2 block at byte {} has no end",
                                    bit / 8
                                )));
                            };
                            let found = Found {
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
                            return Ok(Some(found));
                        }
                        _ => {
                            return Err(invalid(format!(
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

    /// The block in bits `start..end` as a one-block stream of its own.
    fn standalone(&self, start: u64, end: u64, level: u8, crc: u32) -> io::Result<Vec<u8>> {
        let mut bits = BitWriter::new(Vec::with_capacity(((end - start) / 8 + 16) as usize));
        bits.buf.extend_from_slice(&[b'B', b'Z', b'h', level]);
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
        let magics = [BLOCK_MAGIC, EOS_MAGIC];
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

/// Threads that take jobs from one queue until it closes. Dropping this
/// closes the queue and waits for them, so no thread outlives the reader
/// or writer that started it; its owner must drop the channels the
/// threads send on first (declare this field last).
struct Workers<J> {
    jobs: Option<SyncSender<J>>,
    threads: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> Workers<J> {
    fn start(n: usize, work: fn(J)) -> Self {
        let (tx, rx) = mpsc::sync_channel::<J>(n);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n)
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => work(job),
                        Err(_) => return,
                    }
                })
            })
            .collect();
        Workers {
            jobs: Some(tx),
            threads,
        }
    }

    fn send(&self, job: J) -> io::Result<()> {
        let stopped = || stopped("workers");
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }
}

impl<J> Drop for Workers<J> {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn workers() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Part of one block's decoded output.
enum Piece {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// What the scanner hands the reader, in file order.
enum Next {
    Block {
        start: Boundary,
        pieces: Receiver<Piece>,
    },
    End,
    Failed(io::Error),
}

struct DecodeJob {
    stream: Vec<u8>,
    byte: u64,
    pieces: SyncSender<Piece>,
}

fn decode_block(job: DecodeJob) {
    let mut d = bzip2::Decompress::new(false);
    let mut input = &job.stream[..];
    loop {
        let mut piece = Vec::with_capacity(PIECE);
        let before = d.total_in();
        let status = d.decompress_vec(input, &mut piece);
        let consumed = (d.total_in() - before) as usize;
        input = &input[consumed..];
        let next = match status {
            Ok(bzip2::Status::StreamEnd) => {
                if !piece.is_empty() && job.pieces.send(Piece::Data(piece)).is_err() {
                    return;
                }
                Piece::End
            }
            Ok(_) if piece.is_empty() && consumed == 0 => Piece::Failed(invalid(format!(
                "the bzip2 block at byte {} is cut short",
                job.byte
            ))),
            Ok(_) => Piece::Data(piece),
            Err(e) => Piece::Failed(invalid(format!(
                "the bzip2 block at byte {} is corrupt ({e})",
                job.byte
            ))),
        };
        let last = !matches!(next, Piece::Data(_));
        if job.pieces.send(next).is_err() || last {
            return;
        }
    }
}

fn scan_blocks<R: Read>(
    mut scanner: Scanner<R>,
    jobs: SyncSender<DecodeJob>,
    next: SyncSender<Next>,
) {
    loop {
        match scanner.next_block() {
            Ok(Some(found)) => {
                let (tx, rx) = mpsc::sync_channel(PIECES_IN_FLIGHT);
                let byte = found.start.bit / 8;
                let block = Next::Block {
                    start: found.start,
                    pieces: rx,
                };
                let job = DecodeJob {
                    stream: found.stream,
                    byte,
                    pieces: tx,
                };
                if next.send(block).is_err() || jobs.send(job).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = next.send(Next::End);
                return;
            }
            Err(e) => {
                let _ = next.send(Next::Failed(e));
                return;
            }
        }
    }
}

/// Decodes a bzip2 file (or its tail from a block boundary) with one
/// worker per core, yielding the output in order.
pub struct ParallelDecoder {
    blocks: Receiver<Next>,
    current: Option<Receiver<Piece>>,
    piece: Vec<u8>,
    piece_at: usize,
    out: u64,
    index: SharedIndex,
    done: bool,
    /// The scanner and the decoding workers; dropped last (see Workers).
    _workers: Workers<DecodeJob>,
}

impl ParallelDecoder {
    /// Reads `input` from its start, or, with `from`, from that boundary
    /// (the caller positions `input` at byte `from.bit / 8`).
    pub fn new<R: Read + Send + 'static>(
        input: R,
        from: Option<Boundary>,
    ) -> (ParallelDecoder, SharedIndex) {
        let n = workers();
        let mut workers = Workers::start(n, decode_block);
        let jobs = workers.jobs.take().expect("just started");
        let (next_tx, next_rx) = mpsc::sync_channel(2 * n);
        let out = from.as_ref().map_or(0, |b| b.out);
        let scanner = Scanner::new(input, from.as_ref());
        workers
            .threads
            .push(thread::spawn(move || scan_blocks(scanner, jobs, next_tx)));
        let index = SharedIndex::default();
        let decoder = ParallelDecoder {
            blocks: next_rx,
            current: None,
            piece: Vec::new(),
            piece_at: 0,
            out,
            index: index.clone(),
            done: false,
            _workers: workers,
        };
        (decoder, index)
    }

    pub fn open(file: File) -> (ParallelDecoder, SharedIndex) {
        Self::new(crate::io::progress::Reader(file), None)
    }
}

fn stopped(what: &str) -> io::Error {
    io::Error::other(format!("the bzip2 {what} stopped unexpectedly"))
}

impl Read for ParallelDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.piece_at < self.piece.len() {
                let n = buf.len().min(self.piece.len() - self.piece_at);
                buf[..n].copy_from_slice(&self.piece[self.piece_at..self.piece_at + n]);
                self.piece_at += n;
                self.out += n as u64;
                return Ok(n);
            }
            if let Some(pieces) = &self.current {
                match pieces.recv().map_err(|_| stopped("decoder"))? {
                    Piece::Data(data) => {
                        self.piece = data;
                        self.piece_at = 0;
                    }
                    Piece::End => self.current = None,
                    Piece::Failed(e) => return Err(e),
                }
                continue;
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            match self.blocks.recv().map_err(|_| stopped("scanner"))? {
                Next::Block { mut start, pieces } => {
                    start.out = self.out;
                    let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
                    if index.recent.len() == RECENT {
                        index.recent.pop_front();
                    }
                    index.recent.push_back(start);
                    self.current = Some(pieces);
                }
                Next::End => self.done = true,
                Next::Failed(e) => return Err(e),
            }
        }
    }
}

/// Decides how much input goes in each block. bzip2 fills a block with up
/// to (level x 100000 - 19) bytes after its first run-length step; counting
/// that step's output here keeps each piece to exactly one block. Blocks
/// are also capped in input bytes so the few in flight stay small.
struct BlockFill {
    budget: usize,
    /// Run-length output so far, not counting the open run.
    done: usize,
    run_byte: u8,
    run_len: usize,
    taken: usize,
}

const MAX_CHUNK: usize = 8 << 20;

impl BlockFill {
    fn new(level: u8) -> Self {
        BlockFill {
            // Room for one more run (5 bytes) and bzip2's own slack.
            budget: usize::from(level - b'0') * 100_000 - 19 - 6,
            done: 0,
            run_byte: 0,
            run_len: 0,
            taken: 0,
        }
    }

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
            if self.done + Self::cost(self.run_len) >= self.budget || self.taken == MAX_CHUNK {
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

fn encode_block(job: EncodeJob) {
    let level = u32::from(job.level - b'0');
    let mut encoder = bzip2::write::BzEncoder::new(
        Vec::with_capacity(job.data.len() / 2),
        bzip2::Compression::new(level),
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
    pending: Vec<u8>,
    in_flight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
    /// Dropped last (see Workers).
    workers: Workers<EncodeJob>,
}

impl<W: Write> BlockEncoder<W> {
    fn with_bits(bits: BitWriter<W>, level: u8, crc: u32) -> Self {
        let n = workers();
        BlockEncoder {
            bits,
            level,
            crc,
            fill: BlockFill::new(level),
            pending: Vec::new(),
            in_flight: VecDeque::new(),
            workers: Workers::start(n, encode_block),
            max_in_flight: 2 * n,
        }
    }

    /// A new stream at block size `level` (b'1'..=b'9').
    pub fn new(out: W, level: u8) -> Self {
        let mut bits = BitWriter::new(out);
        bits.buf.extend_from_slice(&[b'B', b'Z', b'h', level]);
        Self::with_bits(bits, level, 0)
    }

    /// Continues a stream whose kept part ends at `at`; `last_byte` is the
    /// input byte that holds the kept part's last bits (if `at` is not on
    /// a byte boundary).
    pub fn resume(out: W, at: &Boundary, last_byte: u8) -> Self {
        let bits = BitWriter::resume(out, last_byte, (at.bit % 8) as u32);
        Self::with_bits(bits, at.level, at.crc)
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.pending);
        self.fill = BlockFill::new(self.level);
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
            bits_at(stream, end, 48) == EOS_MAGIC && bits_at(stream, end + 48, 32) == u64::from(crc)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes with long runs, short runs and noise, so both the run-length
    /// limit and the size cap of a block are reached.
    fn sample(len: usize) -> Vec<u8> {
        sample_runs(len, 70_000)
    }

    fn sample_runs(len: usize, max_run: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 7 {
                0 => out.extend(std::iter::repeat_n(0u8, (x >> 40) as usize % max_run)),
                1 => out.extend(std::iter::repeat_n(b'a', 4)),
                _ => out.extend_from_slice(&x.to_le_bytes()[..(x >> 60) as usize % 8]),
            }
        }
        out.truncate(len);
        out
    }

    fn sequential(stream: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        bzip2::read::MultiBzDecoder::new(stream)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    fn parallel(stream: Vec<u8>) -> io::Result<(Vec<u8>, Vec<Boundary>)> {
        let (mut d, index) = ParallelDecoder::new(io::Cursor::new(stream), None);
        let mut back = Vec::new();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 100_000];
        loop {
            let n = d.read(&mut buf)?;
            for b in index.lock().unwrap().recent.iter() {
                if !seen.contains(b) {
                    seen.push(b.clone());
                }
            }
            if n == 0 {
                return Ok((back, seen));
            }
            back.extend_from_slice(&buf[..n]);
        }
    }

    fn encode(data: &[u8], level: u8) -> Vec<u8> {
        let mut e = BlockEncoder::new(Vec::new(), level);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

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
                    let out = w.finish().unwrap();
                    for i in 0..len {
                        assert_eq!(
                            bit(&out, u64::from(dst_lead) + i),
                            bit(&src, start + i),
                            "lead {dst_lead} start {start} len {len} bit {i}"
                        );
                    }
                }
            }
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

    #[test]
    fn parallel_reader_reads_libbz2_and_multi_stream_files() {
        let data = sample_runs(2_500_000, 20);
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(1));
        e.write_all(&data[..1_000_000]).unwrap();
        let mut stream = e.finish().unwrap();
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(2));
        e.write_all(&data[1_000_000..]).unwrap();
        stream.extend(e.finish().unwrap());
        let (back, boundaries) = parallel(stream.clone()).unwrap();
        assert_eq!(back, data);
        assert!(boundaries.len() > 10, "{} blocks", boundaries.len());

        // Continue from every block boundary with new data: the kept bits
        // and the new blocks make one valid stream.
        let tail = sample(300_000);
        for b in &boundaries {
            let keep = (b.bit / 8) as usize;
            let mut out = stream[..keep].to_vec();
            let last = stream[keep];
            let mut e = BlockEncoder::resume(&mut out, b, last);
            e.write_all(&tail).unwrap();
            e.finish().unwrap();
            let mut want = data[..b.out as usize].to_vec();
            want.extend_from_slice(&tail);
            assert!(sequential(&out) == want, "resumed at bit {}", b.bit);
        }

        // And the tail reader starts at a boundary too.
        let b = &boundaries[boundaries.len() / 2];
        let input = io::Cursor::new(stream[(b.bit / 8) as usize..].to_vec());
        let (mut d, _) = ParallelDecoder::new(input, Some(b.clone()));
        let mut rest = Vec::new();
        d.read_to_end(&mut rest).unwrap();
        assert!(rest == data[b.out as usize..]);
    }

    #[test]
    fn damage_is_an_error_never_wrong_bytes() {
        let data = sample(1_000_000);
        let stream = encode(&data, b'1');
        for at in [stream.len() / 3, stream.len() - 3] {
            let mut bad = stream.clone();
            bad[at] ^= 0x10;
            match parallel(bad) {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
                Ok((back, _)) => panic!("damage at {at} gave {} bytes", back.len()),
            }
        }
        for cut in [3, 20, stream.len() / 2, stream.len() - 1] {
            assert!(parallel(stream[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut trailing = stream.clone();
        trailing.extend_from_slice(b"garbage");
        assert!(parallel(trailing).is_err());
    }
}
