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

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use liblzma::stream::{Check, Filters, LzmaOptions, MtStreamBuilder};

use super::invalid_data;

pub(crate) const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = *b"YZ";
/// More blocks than this and the layout is not kept (a hostile index
/// could otherwise ask for gigabytes); the file is still decoded.
const MAX_BLOCKS: usize = 1 << 20;
/// The LZMA2 filter id, and the BCJ/delta filters the output may repeat.
const LZMA2: u64 = 0x21;

/// Bytes of the check with this id (the xz format's table).
fn check_len(id: u8) -> u64 {
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
fn check_of(flags: [u8; 2]) -> Option<Check> {
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

/// An xz variable-length integer at `at`, which it moves past it.
pub(crate) fn vli(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (i == 0 || b != 0).then_some(value);
        }
    }
    None
}

fn put_vli(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One index record: a block's unpadded and uncompressed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) unpadded: u64,
    pub(crate) uncompressed: u64,
}

impl Record {
    /// The block's bytes in the file, with its padding.
    fn padded(&self) -> u64 {
        self.unpadded.div_ceil(4) * 4
    }
}

/// One stream of a file, as its footer and index describe it.
#[derive(Debug, Clone)]
pub(crate) struct StreamLayout {
    /// File offset of its header.
    pub(crate) start: u64,
    /// File offset just past its footer.
    pub(crate) end: u64,
    pub(crate) flags: [u8; 2],
    /// Uncompressed bytes in the streams before it.
    pub(crate) out: u64,
    pub(crate) records: Vec<Record>,
}

impl StreamLayout {
    /// Each block's file offset and uncompressed offset (in the file).
    fn blocks(&self) -> impl Iterator<Item = (u64, u64, &Record)> {
        let (mut at, mut out) = (self.start + 12, self.out);
        self.records.iter().map(move |r| {
            let here = (at, out, r);
            at += r.padded();
            out += r.uncompressed;
            here
        })
    }

    fn uncompressed(&self) -> u64 {
        self.records.iter().map(|r| r.uncompressed).sum()
    }
}

/// Reads the layout of every stream of a file of `len` bytes from its
/// footers and indexes; None when the file is not a well-formed xz file
/// (the decoder then says what is wrong) or lists too many blocks.
pub(crate) fn layout(file: &File, len: u64) -> io::Result<Option<Vec<StreamLayout>>> {
    let mut streams = Vec::new();
    let mut pos = len;
    let mut blocks = 0usize;
    loop {
        // Stream padding: zeros in 4-byte units before the end or the
        // next stream.
        while pos >= 4 {
            let mut w = [0u8; 4];
            file.read_exact_at(&mut w, pos - 4)?;
            if w != [0; 4] {
                break;
            }
            pos -= 4;
        }
        if pos == 0 {
            break;
        }
        if pos % 4 != 0 || pos < 24 {
            return Ok(None);
        }
        let mut footer = [0u8; 12];
        file.read_exact_at(&mut footer, pos - 12)?;
        if footer[10..] != FOOTER_MAGIC
            || crc32fast::hash(&footer[4..10])
                != u32::from_le_bytes(footer[..4].try_into().expect("4"))
        {
            return Ok(None);
        }
        let flags = [footer[8], footer[9]];
        let index_len =
            (u64::from(u32::from_le_bytes(footer[4..8].try_into().expect("4"))) + 1) * 4;
        let Some(index_start) = (pos - 12).checked_sub(index_len) else {
            return Ok(None);
        };
        if index_len > 64 << 20 {
            return Ok(None);
        }
        let mut index = vec![0u8; index_len as usize];
        file.read_exact_at(&mut index, index_start)?;
        let Some(records) = parse_index(&index) else {
            return Ok(None);
        };
        blocks += records.len();
        if blocks > MAX_BLOCKS {
            return Ok(None);
        }
        let body: u64 = records.iter().map(Record::padded).sum();
        let Some(start) = index_start
            .checked_sub(body)
            .and_then(|s| s.checked_sub(12))
        else {
            return Ok(None);
        };
        let mut header = [0u8; 12];
        file.read_exact_at(&mut header, start)?;
        if header[..6] != MAGIC
            || header[6..8] != flags
            || crc32fast::hash(&header[6..8])
                != u32::from_le_bytes(header[8..].try_into().expect("4"))
        {
            return Ok(None);
        }
        streams.push(StreamLayout {
            start,
            end: pos,
            flags,
            out: 0,
            records,
        });
        pos = start;
    }
    streams.reverse();
    let mut out = 0u64;
    for s in &mut streams {
        s.out = out;
        out += s.uncompressed();
    }
    Ok((!streams.is_empty()).then_some(streams))
}

/// An index's records, if its indicator, padding and CRC32 are right.
fn parse_index(index: &[u8]) -> Option<Vec<Record>> {
    let n = index.len();
    if n < 8 || index[0] != 0 {
        return None;
    }
    let crc = u32::from_le_bytes(index[n - 4..].try_into().ok()?);
    if crc32fast::hash(&index[..n - 4]) != crc {
        return None;
    }
    let mut at = 1;
    let count = vli(index, &mut at)?;
    let mut records = Vec::new();
    for _ in 0..count {
        let unpadded = vli(index, &mut at)?;
        let uncompressed = vli(index, &mut at)?;
        // At least a block header (8) and one byte of data... the xz
        // format's minimum unpadded size is 5.
        if unpadded < 5 || records.len() >= MAX_BLOCKS {
            return None;
        }
        records.push(Record {
            unpadded,
            uncompressed,
        });
    }
    // Padding to 4 bytes, then the CRC32.
    if at.div_ceil(4) * 4 != n - 4 || index[at..n - 4].iter().any(|&b| b != 0) {
        return None;
    }
    Some(records)
}

/// The index and footer of a stream with `flags` holding `records`.
pub(crate) fn index_and_footer(flags: [u8; 2], records: &[Record]) -> Vec<u8> {
    let mut index = vec![0u8];
    put_vli(&mut index, records.len() as u64);
    for r in records {
        put_vli(&mut index, r.unpadded);
        put_vli(&mut index, r.uncompressed);
    }
    index.resize(index.len().div_ceil(4) * 4, 0);
    let crc = crc32fast::hash(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let backward = (index.len() / 4 - 1) as u32;
    let mut tail = backward.to_le_bytes().to_vec();
    tail.extend_from_slice(&flags);
    let crc = crc32fast::hash(&tail);
    index.extend_from_slice(&crc.to_le_bytes());
    index.extend_from_slice(&tail);
    index.extend_from_slice(&FOOTER_MAGIC);
    index
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
    streams: Vec<StreamLayout>,
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
pub(crate) const FIRST_BLOCK: Boundary = Boundary { offset: 12, out: 0 };

/// What a raw image's new blocks may take for their encoder threads
/// (liblzma's own estimate); one thread always runs.
pub(crate) const ENCODE_MEMORY: u64 = 192 << 20;

/// Threads the decoder uses, and the memory it may take for them
/// (liblzma falls back to one thread above it): two 24 MiB blocks of
/// `xz -T -6` in and out fit.
const DECODE_MEMLIMIT: u64 = 128 << 20;

/// A decoder over each stream in turn (liblzma's threaded decoder decodes
/// the blocks of a stream on all cores when their headers carry sizes, as
/// `xz -T` writes them).
pub(crate) struct StreamsDecoder {
    file: File,
    streams: std::vec::IntoIter<(u64, u64)>,
    current: Option<liblzma::bufread::XzDecoder<io::BufReader<crate::io::progress::Reader<Span>>>>,
    threads: u32,
}

impl StreamsDecoder {
    fn next_stream(&mut self) -> io::Result<bool> {
        let Some((start, end)) = self.streams.next() else {
            self.current = None;
            return Ok(false);
        };
        let part = Span {
            file: self.file.try_clone()?,
            at: start,
            end,
        };
        let reader = io::BufReader::with_capacity(1 << 20, crate::io::progress::Reader(part));
        let stream = MtStreamBuilder::new()
            .threads(self.threads)
            .memlimit_threading(DECODE_MEMLIMIT)
            .memlimit_stop(u64::MAX)
            .decoder()
            .map_err(io::Error::other)?;
        self.current = Some(liblzma::bufread::XzDecoder::new_stream(reader, stream));
        Ok(true)
    }
}

impl Read for StreamsDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(d) = &mut self.current else {
                return Ok(0);
            };
            let n = d.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if !self.next_stream()? {
                return Ok(0);
            }
        }
    }
}

/// Bytes `at..end` of a file, read at their offsets: clones of one file
/// share its position, so seeking one would move the others.
pub(crate) struct Span {
    file: File,
    at: u64,
    end: u64,
}

impl Read for Span {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 && want > 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// A decoder that notes the file's layout: each block start is a boundary.
/// A file whose layout cannot be read (damage) is decoded plainly, which
/// says what is wrong, and has no boundaries.
pub(crate) fn indexing_decoder(file: File) -> (Box<dyn Read + Send>, Option<SharedIndex>) {
    let streams = file
        .metadata()
        .and_then(|m| layout(&file, m.len()))
        .ok()
        .flatten();
    let Some(streams) = streams else {
        return (super::Compression::Xz.decoder(file), None);
    };
    let spans: Vec<(u64, u64)> = streams.iter().map(|s| (s.start, s.end)).collect();
    let mut decoder = StreamsDecoder {
        file,
        streams: spans.into_iter(),
        current: None,
        threads: super::worker_count() as u32,
    };
    if let Err(e) = decoder.next_stream() {
        return (Box::new(super::FailingReader(Some(e))), None);
    }
    (Box::new(decoder), Some(Arc::new(Index { streams })))
}

/// The filter chain of a block header (ids and properties), if it is one
/// the output can repeat: BCJ or delta filters before LZMA2.
fn header_filters(header: &[u8]) -> Option<Filters> {
    let flags = *header.get(1)?;
    let mut at = 2;
    for bit in [0x40, 0x80] {
        if flags & bit != 0 {
            vli(header, &mut at)?;
        }
    }
    let mut filters = Filters::new();
    for _ in 0..=(flags & 3) {
        let id = vli(header, &mut at)?;
        let len = usize::try_from(vli(header, &mut at)?).ok()?;
        let props = header.get(at..at + len)?;
        at += len;
        let f = &mut filters;
        let ok = match (id, props.is_empty()) {
            (LZMA2, false) => {
                let p = props[0];
                let dict = match p {
                    0..=39 => (2 | u32::from(p & 1)) << (p / 2 + 11),
                    40 => u32::MAX,
                    _ => return None,
                };
                let mut lzma = LzmaOptions::new_preset(6).ok()?;
                // liblzma's encoder takes at most 1.5 GiB.
                lzma.dict_size(dict.min(1536 << 20));
                f.lzma2(&lzma);
                return Some(filters);
            }
            (0x03, false) => f.delta_properties(props).is_ok(),
            (0x04, true) => {
                f.x86();
                true
            }
            (0x04, false) => f.x86_properties(props).is_ok(),
            (0x05, true) => {
                f.powerpc();
                true
            }
            (0x05, false) => f.powerpc_properties(props).is_ok(),
            (0x06, true) => {
                f.ia64();
                true
            }
            (0x06, false) => f.ia64_properties(props).is_ok(),
            (0x07, true) => {
                f.arm();
                true
            }
            (0x07, false) => f.arm_properties(props).is_ok(),
            (0x08, true) => {
                f.arm_thumb();
                true
            }
            (0x08, false) => f.arm_thumb_properties(props).is_ok(),
            (0x09, true) => {
                f.sparc();
                true
            }
            (0x09, false) => f.sparc_properties(props).is_ok(),
            (0x0a, true) => {
                f.arm64();
                true
            }
            (0x0a, false) => f.arm64_properties(props).is_ok(),
            (0x0b, true) => {
                f.riscv();
                true
            }
            (0x0b, false) => f.riscv_properties(props).is_ok(),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    None
}

/// What the new blocks after a kept prefix are made like: the stream's
/// flags (its check), the filters of the block the boundary starts and the
/// input's block size.
pub(crate) struct Continuation {
    pub(crate) flags: [u8; 2],
    /// The records of the blocks kept before the boundary, in its stream.
    pub(crate) kept: Vec<Record>,
    /// The header of the boundary's block, whose filters (checked to be
    /// ones the encoder takes) the new blocks use.
    block_header: Vec<u8>,
    block_size: u64,
    /// The boundary's block and those after it in its stream: where they
    /// lie, and their records.
    from: u64,
    rest: Vec<Record>,
    /// Where the stream ends (past its footer) and the file ends.
    stream_end: u64,
    len: u64,
}

impl Continuation {
    /// How to continue `file` (of `len` bytes) after `b`, if `b` is a block
    /// start of its layout.
    pub(crate) fn at(file: &File, len: u64, b: &Boundary) -> io::Result<Option<Continuation>> {
        let Some(streams) = layout(file, len)? else {
            return Ok(None);
        };
        let Some(s) = streams
            .iter()
            .find(|s| s.start < b.offset && b.offset < s.end)
        else {
            return Ok(None);
        };
        let mut kept = Vec::new();
        let mut found = None;
        for (offset, out, r) in s.blocks() {
            if offset == b.offset && out == b.out {
                found = Some(offset);
                break;
            }
            kept.push(*r);
        }
        let rest = s.records[kept.len()..].to_vec();
        let Some(offset) = found else {
            return Ok(None);
        };
        let mut size = [0u8; 1];
        file.read_exact_at(&mut size, offset)?;
        let mut header = vec![0u8; (usize::from(size[0]) + 1) * 4];
        file.read_exact_at(&mut header, offset)?;
        if header_filters(&header).is_none() {
            return Ok(None);
        }
        if check_of(s.flags).is_none() {
            return Ok(None);
        }
        // The input's block size: its largest block (the last is shorter).
        let block_size = streams
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.uncompressed))
            .max()
            .unwrap_or(0)
            .clamp(1 << 20, 1 << 30);
        Ok(Some(Continuation {
            flags: s.flags,
            kept,
            block_header: header,
            block_size,
            from: b.offset,
            rest,
            stream_end: s.end,
            len,
        }))
    }

    /// A decoder of the input from the boundary on: its stream's blocks
    /// from there, framed as a stream of their own (a header with the
    /// stream's flags and an index of just those blocks, which the
    /// decoder checks them against), then the streams after it.
    pub(crate) fn input(&self, file: &File) -> io::Result<Box<dyn Read + Send>> {
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&self.flags);
        head.extend_from_slice(&crc32fast::hash(&self.flags).to_le_bytes());
        let blocks: u64 = self.rest.iter().map(Record::padded).sum();
        let part = |from: u64, len: u64| -> io::Result<Span> {
            Ok(Span {
                file: file.try_clone()?,
                at: from,
                end: from + len,
            })
        };
        let framed = io::Cursor::new(head)
            .chain(part(self.from, blocks)?)
            .chain(io::Cursor::new(index_and_footer(self.flags, &self.rest)))
            .chain(part(self.stream_end, self.len - self.stream_end)?);
        Ok(Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(
            io::BufReader::with_capacity(1 << 20, framed),
        )))
    }

    fn filters(&self) -> Filters {
        header_filters(&self.block_header).expect("checked in at()")
    }

    /// The most threads up to `max` whose encoder liblzma says needs at
    /// most `budget` bytes (at least one).
    pub(crate) fn threads_within(&self, max: u32, budget: u64) -> u32 {
        (1..=max.max(1))
            .rev()
            .find(|&t| {
                let mut b = MtStreamBuilder::new();
                b.threads(t)
                    .block_size(self.block_size)
                    .filters(self.filters())
                    .check(check_of(self.flags).unwrap_or(Check::Crc64));
                b.memusage() <= budget
            })
            .unwrap_or(1)
    }

    /// The encoder for the new blocks, writing into `sink` after the kept
    /// ones.
    pub(crate) fn encoder<'w, W: Write + Send + 'w>(
        self,
        sink: W,
        threads: u32,
    ) -> io::Result<TailEncoder<W>> {
        let check = check_of(self.flags).expect("checked in at()");
        let stream = MtStreamBuilder::new()
            .threads(threads)
            .block_size(self.block_size)
            .filters(self.filters())
            .check(check)
            .encoder()
            .map_err(io::Error::other)?;
        Ok(TailEncoder {
            inner: liblzma::write::XzEncoder::new_stream(
                BlocksOnly {
                    sink,
                    check_len: check_len(self.flags[1] & 0x0f),
                    state: Strip::Header(12),
                    header: Vec::new(),
                    records: self.kept,
                },
                stream,
            ),
            flags: self.flags,
        })
    }
}

/// New blocks after kept ones: liblzma's threaded encoder (which writes
/// both sizes into each block header) with its stream header, index and
/// footer taken off, and an index and footer for all the blocks written
/// at the end.
pub(crate) struct TailEncoder<W: Write> {
    inner: liblzma::write::XzEncoder<BlocksOnly<W>>,
    flags: [u8; 2],
}

impl<W: Write> Write for TailEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Flushing liblzma's encoder would end a block early; the sink
        // is flushed at the end.
        Ok(())
    }
}

impl<W: Write> TailEncoder<W> {
    /// Ends the stream: the new blocks, then the index and footer.
    pub(crate) fn finish(self) -> io::Result<W> {
        self.end_blocks()?.finish()
    }

    /// Ends the new blocks but not the stream, so that blocks of other
    /// content may follow (pixz's file index, which pixz looks for in the
    /// stream's last block).
    pub(crate) fn end_blocks(self) -> io::Result<Blocks<W>> {
        let blocks = self.inner.finish()?;
        if !matches!(blocks.state, Strip::Index) {
            return Err(io::Error::other("liblzma's stream ended inside a block"));
        }
        Ok(Blocks {
            sink: blocks.sink,
            records: blocks.records,
            flags: self.flags,
        })
    }
}

/// A stream's blocks written so far, its index and footer still to come.
pub(crate) struct Blocks<W: Write> {
    sink: W,
    records: Vec<Record>,
    flags: [u8; 2],
}

impl<W: Write> Blocks<W> {
    /// A writer of one more block, with the stream's check: LZMA2 with a
    /// 1 MiB dictionary (what goes there is small), its header without
    /// sizes, as pixz and a single-threaded xz write theirs. pixz, reading
    /// from a pipe, takes an unsized block after sized ones for its file
    /// index.
    pub(crate) fn block(&mut self) -> io::Result<OneBlock<'_, W>> {
        let check = check_of(self.flags).ok_or_else(|| invalid_data("unknown xz check"))?;
        let mut lzma = LzmaOptions::new_preset(6).map_err(io::Error::other)?;
        lzma.dict_size(1 << 20);
        let mut filters = Filters::new();
        filters.lzma2(&lzma);
        let stream = liblzma::stream::Stream::new_stream_encoder(&filters, check)
            .map_err(io::Error::other)?;
        let held = HeldBack {
            sink: &mut self.sink,
            skip: 12,
            held: Vec::new(),
            passed: 0,
        };
        Ok(OneBlock {
            inner: liblzma::write::XzEncoder::new_stream(held, stream),
            records: &mut self.records,
        })
    }

    /// Ends the stream: the index of every block, and the footer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.sink
            .write_all(&index_and_footer(self.flags, &self.records))?;
        self.sink.flush()?;
        Ok(self.sink)
    }
}

/// One block of a stream: liblzma writes it as a stream of its own, whose
/// header is dropped and whose index and footer (the last bytes, held
/// back) give the block's record.
pub(crate) struct OneBlock<'b, W: Write> {
    inner: liblzma::write::XzEncoder<HeldBack<&'b mut W>>,
    records: &'b mut Vec<Record>,
}

impl<W: Write> Write for OneBlock<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Flushing would end an LZMA2 chunk early; nothing needs it.
        Ok(())
    }
}

impl<W: Write> OneBlock<'_, W> {
    /// Ends the block and notes its record.
    pub(crate) fn finish(self) -> io::Result<()> {
        let mut held = self.inner.finish()?;
        let tail = std::mem::take(&mut held.held);
        let bad = || invalid_data("liblzma's one-block stream has an unexpected end");
        let footer = tail.len().checked_sub(12).ok_or_else(bad)?;
        if tail[footer + 10..] != FOOTER_MAGIC {
            return Err(bad());
        }
        let backward =
            u32::from_le_bytes(tail[footer + 4..footer + 8].try_into().expect("4 bytes"));
        let index_len = (backward as usize + 1) * 4;
        let index_at = footer.checked_sub(index_len).ok_or_else(bad)?;
        let records = parse_index(&tail[index_at..footer]).ok_or_else(bad)?;
        let [record] = records[..] else {
            return Err(bad());
        };
        held.sink.write_all(&tail[..index_at])?;
        if held.passed + index_at as u64 != record.padded() {
            return Err(bad());
        }
        self.records.push(record);
        Ok(())
    }
}

/// Passes bytes on after dropping the first `skip`, holding the last few
/// back: a one-block stream's index and footer are at most 40 bytes.
struct HeldBack<W: Write> {
    sink: W,
    skip: usize,
    held: Vec<u8>,
    passed: u64,
}

impl<W: Write> Write for HeldBack<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let skip = self.skip.min(buf.len());
        self.skip -= skip;
        self.held.extend_from_slice(&buf[skip..]);
        const KEEP: usize = 64;
        if self.held.len() > 4 * KEEP {
            let pass = self.held.len() - KEEP;
            self.sink.write_all(&self.held[..pass])?;
            self.passed += pass as u64;
            self.held.drain(..pass);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> super::Encoder for TailEncoder<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish().map(drop)
    }
}

/// Where the stripping writer is in liblzma's output.
enum Strip {
    /// In the stream header: this many bytes still to drop.
    Header(usize),
    /// At a block header (or the index indicator).
    BlockHeader,
    /// In a block's data, padding and check: this many bytes to pass on.
    Block(u64),
    /// The index and footer: dropped.
    Index,
}

/// Passes liblzma's blocks on, noting their records, and drops the rest.
struct BlocksOnly<W: Write> {
    sink: W,
    check_len: u64,
    state: Strip,
    header: Vec<u8>,
    records: Vec<Record>,
}

impl<W: Write> Write for BlocksOnly<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            match &mut self.state {
                Strip::Header(n) => {
                    let take = (*n).min(rest.len());
                    *n -= take;
                    rest = &rest[take..];
                    if *n == 0 {
                        self.state = Strip::BlockHeader;
                    }
                }
                Strip::BlockHeader => {
                    if self.header.is_empty() && rest[0] == 0 {
                        self.state = Strip::Index;
                        continue;
                    }
                    if self.header.is_empty() {
                        self.header.push(rest[0]);
                        rest = &rest[1..];
                        continue;
                    }
                    let want = (usize::from(self.header[0]) + 1) * 4;
                    let take = (want - self.header.len()).min(rest.len());
                    self.header.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.header.len() == want {
                        let (compressed, uncompressed) =
                            header_sizes(&self.header).ok_or_else(|| {
                                invalid_data("liblzma wrote a block header without sizes")
                            })?;
                        self.sink.write_all(&self.header)?;
                        let unpadded = want as u64 + compressed + self.check_len;
                        self.records.push(Record {
                            unpadded,
                            uncompressed,
                        });
                        let padded = compressed.div_ceil(4) * 4;
                        self.state = Strip::Block(padded + self.check_len);
                        self.header.clear();
                    }
                }
                Strip::Block(n) => {
                    let take = (*n).min(rest.len() as u64) as usize;
                    self.sink.write_all(&rest[..take])?;
                    *n -= take as u64;
                    rest = &rest[take..];
                    if *n == 0 {
                        self.state = Strip::BlockHeader;
                    }
                }
                Strip::Index => return Ok(buf.len()),
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

/// A block header's compressed and uncompressed sizes, if it has both.
fn header_sizes(header: &[u8]) -> Option<(u64, u64)> {
    let flags = *header.get(1)?;
    if flags & 0xc0 != 0xc0 {
        return None;
    }
    let mut at = 2;
    Some((vli(header, &mut at)?, vli(header, &mut at)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xz(data: &[u8], threads: u32, block: u64, check: Check) -> Vec<u8> {
        let stream = MtStreamBuilder::new()
            .preset(1)
            .threads(threads)
            .block_size(block)
            .check(check)
            .encoder()
            .unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn data(n: u32) -> Vec<u8> {
        (0..n)
            .map(|i| ((i / 5) % 253) as u8 ^ (i % 7) as u8)
            .collect()
    }

    #[test]
    fn the_layout_of_several_padded_streams_is_read_from_their_ends() {
        let (first, second) = (data(300_000), data(200_000));
        let mut file = xz(&first, 2, 64 << 10, Check::Crc32);
        file.extend([0u8; 8]);
        file.extend(xz(&second, 1, 50_000, Check::Sha256));
        file.extend([0u8; 4]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        std::fs::write(&path, &file).unwrap();
        let f = File::open(&path).unwrap();
        let streams = layout(&f, file.len() as u64).unwrap().unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0].records.len(), 5);
        assert_eq!(streams[1].records.len(), 4);
        assert_eq!(streams[1].out, 300_000);
        assert_eq!(streams[0].flags[1], 1);
        assert_eq!(streams[1].flags[1], 10);
        // Every block start decodes on its own to the bytes from there.
        let index = Index { streams };
        let b = index.boundary_before(420_000).unwrap();
        assert_eq!(b.out, 400_000);
        let mut whole = first.clone();
        whole.extend(&second);
        let (mut d, _) = indexing_decoder(File::open(&path).unwrap());
        let mut back = Vec::new();
        d.read_to_end(&mut back).unwrap();
        assert!(back == whole);
        // Cut there and continue: the file decodes to the kept bytes and
        // the new ones.
        let c = Continuation::at(&f, file.len() as u64, &b)
            .unwrap()
            .unwrap();
        assert_eq!(c.kept.len(), 2);
        let mut out = file[..b.offset as usize].to_vec();
        let mut e = c.encoder(&mut out, 2).unwrap();
        e.write_all(b"new bytes").unwrap();
        e.finish().unwrap();
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new_multi_decoder(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        let mut want = whole[..400_000].to_vec();
        want.extend_from_slice(b"new bytes");
        assert!(back == want);
    }

    /// After new blocks, one more block of other content (pixz's file
    /// index) ends the same stream, with every check, small or large: the
    /// file decodes to both, its layout names the last block where the
    /// extra content starts, and that block's header has no sizes.
    #[test]
    fn one_more_block_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        for check in [Check::None, Check::Crc32, Check::Crc64, Check::Sha256] {
            for extra in [data(20), data(700_000)] {
                let file = xz(&data(300_000), 2, 100_000, check);
                std::fs::write(&path, &file).unwrap();
                let f = File::open(&path).unwrap();
                let c = Continuation::at(&f, file.len() as u64, &FIRST_BLOCK)
                    .unwrap()
                    .unwrap();
                // The stream header is kept.
                let mut out = file[..FIRST_BLOCK.offset as usize].to_vec();
                let mut e = c.encoder(&mut out, 2).unwrap();
                e.write_all(&data(250_000)).unwrap();
                let mut blocks = e.end_blocks().unwrap();
                let mut one = blocks.block().unwrap();
                one.write_all(&extra).unwrap();
                one.finish().unwrap();
                blocks.finish().unwrap();
                let mut back = Vec::new();
                liblzma::read::XzDecoder::new_multi_decoder(&out[..])
                    .read_to_end(&mut back)
                    .unwrap();
                let mut want = data(250_000);
                want.extend(&extra);
                assert!(back == want, "{check:?} {}", extra.len());
                std::fs::write(&path, &out).unwrap();
                let f = File::open(&path).unwrap();
                assert_eq!(last_block_out(&f).unwrap(), Some(250_000));
                let streams = layout(&f, out.len() as u64).unwrap().unwrap();
                let (at, _, _) = streams[0].blocks().last().unwrap();
                assert_eq!(out[at as usize + 1] & 0xc0, 0, "sizes in the header");
            }
        }
    }

    #[test]
    fn damaged_ends_give_no_layout() {
        let file = xz(&data(100_000), 1, 30_000, Check::Crc64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        for cut in [1usize, 4, 12, 13] {
            std::fs::write(&path, &file[..file.len() - cut]).unwrap();
            let f = File::open(&path).unwrap();
            assert!(
                layout(&f, (file.len() - cut) as u64).unwrap().is_none(),
                "{cut}"
            );
        }
    }

    #[test]
    fn index_round_trips() {
        let records = [
            Record {
                unpadded: 5,
                uncompressed: 0,
            },
            Record {
                unpadded: 1 << 40,
                uncompressed: 300,
            },
        ];
        let bytes = index_and_footer([0, 4], &records);
        let back = parse_index(&bytes[..bytes.len() - 12]).unwrap();
        assert_eq!(back, records);
    }
}
