//! Keeping the blocks before the one that holds the first change and
//! writing new blocks like them after it (`xz -T`, pixz, Yocto).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use liblzma::stream::{Check, Filters, LzmaOptions, MtStreamBuilder};

use super::super::invalid_data;
use super::layout::stream_at;
use super::{
    check_len, check_of, index_and_footer, layout, vli, Blocks, Boundary, Record, Span, LZMA2,
    MAGIC,
};

/// The filter chain of a block header (ids and properties), if it is one
/// the output can repeat: BCJ or delta filters before LZMA2.
pub(super) fn header_filters(header: &[u8]) -> Option<Filters> {
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
#[derive(Clone)]
pub(crate) struct Continuation {
    pub(crate) flags: [u8; 2],
    /// The records of the blocks kept before the boundary, in its stream.
    pub(crate) kept: Vec<Record>,
    /// The header of the boundary's block, whose filters (checked to be
    /// ones the encoder takes) the new blocks use.
    block_header: Vec<u8>,
    pub(super) block_size: u64,
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
        let Some(s) = stream_at(&streams, b.offset) else {
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

impl<W: Write> super::super::Encoder for TailEncoder<W> {
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
pub(super) fn header_sizes(header: &[u8]) -> Option<(u64, u64)> {
    let flags = *header.get(1)?;
    if flags & 0xc0 != 0xc0 {
        return None;
    }
    let mut at = 2;
    Some((vli(header, &mut at)?, vli(header, &mut at)?))
}

#[cfg(test)]
mod tests {
    use super::super::test_data::{data, xz};
    use super::super::{indexing_decoder, Index};
    use super::*;

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
        let index = Index {
            streams,
            cuts: Vec::new(),
        };
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
}
