//! Continuing a single-block xz file (plain `xz`, Buildroot) inside its
//! block: the input's compressed bytes up to the last LZMA2 chunk start
//! before the first change are kept, and a raw LZMA2 encoder primed with
//! the dictionary a decoder holds there writes the rest of the block
//! (see `primed.rs`); then the block's padding, its check over all its
//! uncompressed data, an index of the one block and the footer.
//!
//! The dictionary and the check need the block's uncompressed bytes before
//! the cut, which only decoding it from its start gives (an LZMA chunk
//! continues the state of the one before it): the rewrite decodes the
//! input again up to the cut, taking the dictionary on the way, then goes
//! on reading the input from there.
//!
//! A block header that carries the block's sizes (`xz -T` of a file
//! smaller than one block) gets them anew: they are known only at the end,
//! so the new chunks go to a scratch file and the header, the kept chunks
//! and those follow it. Blocks with a BCJ or delta filter before LZMA2 are
//! not cut (those filters have their own state at the cut): they keep
//! nothing, as before.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::chunks::{self, Chunk};
use super::layout::{put_vli, Record};
use super::primed::{BlockCheck, PrimedEncoder};
use super::{check_len, index_and_footer, layout, vli, Boundary, LZMA2};
use crate::io::output::Scratch;

/// The largest dictionary the primed encoder uses (xz -6's).
const MAX_DICT: u32 = 8 << 20;
/// The bytes before the cut the encoder is primed with.
const PRIME: u64 = 1 << 20;

/// Where a cut inside the block falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkCut {
    /// Offset of the chunk's control byte in the block's LZMA2 data.
    pub(crate) at: u64,
    /// Uncompressed offset of the last dictionary reset before it.
    pub(crate) dict_start: u64,
}

/// The one block of a single-block file, with its chunk starts.
pub(crate) struct Single {
    offset: u64,
    chunks: Vec<Chunk>,
}

impl Single {
    /// The chunk boundary at or before uncompressed `out`, past the
    /// block's start.
    pub(crate) fn boundary_before(&self, out: u64) -> Option<Boundary> {
        let c = chunks::last_at_or_before(&self.chunks, out)?;
        Some(Boundary {
            offset: self.offset,
            out: c.out,
            chunk: Some(ChunkCut {
                at: c.at,
                dict_start: c.dict_start,
            }),
        })
    }
}

/// The dictionary size of a block header whose only filter is LZMA2 (the
/// filters a cut can continue), if it is one.
fn lzma2_only(header: &[u8]) -> Option<u32> {
    let flags = *header.get(1)?;
    if flags & 0x3c != 0 || flags & 3 != 0 {
        return None;
    }
    let mut at = 2;
    for bit in [0x40, 0x80] {
        if flags & bit != 0 {
            vli(header, &mut at)?;
        }
    }
    if vli(header, &mut at)? != LZMA2 || vli(header, &mut at)? != 1 {
        return None;
    }
    match *header.get(at)? {
        p @ 0..=39 => Some((2 | u32::from(p & 1)) << (p / 2 + 11)),
        40 => Some(u32::MAX),
        _ => None,
    }
}

/// The block at `offset` (with its index record and check length): its
/// header, its LZMA2 data's offset and length, and its chunk starts, if
/// LZMA2 is its only filter and the chunks walk to the data's end.
struct BlockChunks {
    header: Vec<u8>,
    dict_size: u32,
    data: u64,
    chunks: Vec<Chunk>,
}

fn block_chunks(
    file: &File,
    offset: u64,
    record: &Record,
    check: u64,
) -> io::Result<Option<BlockChunks>> {
    let mut size = [0u8; 1];
    file.read_exact_at(&mut size, offset)?;
    if size[0] == 0 {
        return Ok(None);
    }
    let mut header = vec![0u8; (usize::from(size[0]) + 1) * 4];
    file.read_exact_at(&mut header, offset)?;
    let n = header.len();
    if crc32fast::hash(&header[..n - 4]).to_le_bytes() != header[n - 4..] {
        return Ok(None);
    }
    let Some(dict_size) = lzma2_only(&header) else {
        return Ok(None);
    };
    let Some(len) = record.unpadded.checked_sub(n as u64 + check) else {
        return Ok(None);
    };
    let data = offset + n as u64;
    let found = chunks::walk(len, |at, buf| file.read_at(buf, data + at))?;
    // The chunks must decode to the index's size.
    let Some((chunks, _)) = found.filter(|(_, out)| *out == record.uncompressed) else {
        return Ok(None);
    };
    Ok(Some(BlockChunks {
        header,
        dict_size,
        data,
        chunks,
    }))
}

/// The chunk starts of a file of one block in one stream (the layout
/// `streams` read), if it can be cut inside.
pub(crate) fn single(file: &File, streams: &[super::StreamLayout]) -> Option<Single> {
    let [s] = streams else { return None };
    let [record] = &s.records[..] else {
        return None;
    };
    let offset = s.start + 12;
    let check = check_len(s.flags[1] & 0x0f);
    let b = block_chunks(file, offset, record, check).ok()??;
    Some(Single {
        offset,
        chunks: b.chunks,
    })
}

/// How to continue a single-block file at a chunk boundary.
pub(crate) struct Cut {
    flags: [u8; 2],
    check: BlockCheck,
    header: Vec<u8>,
    dict_size: u32,
    /// File offset of the block's LZMA2 data, and the bytes of it kept.
    data: u64,
    kept: u64,
    /// Uncompressed bytes before the cut, and where the dictionary there
    /// starts.
    out: u64,
    dict_start: u64,
    /// File offset of the block header.
    offset: u64,
}

impl Cut {
    /// How to continue `file` (of `len` bytes) at `b`, if `b` is a chunk
    /// boundary of its one block.
    pub(crate) fn at(file: &File, len: u64, b: &Boundary) -> io::Result<Option<Cut>> {
        let Some(cut) = b.chunk else {
            return Ok(None);
        };
        let Some(streams) = layout(file, len)? else {
            return Ok(None);
        };
        let [s] = &streams[..] else {
            return Ok(None);
        };
        let [record] = &s.records[..] else {
            return Ok(None);
        };
        let Some(check) = BlockCheck::new(s.flags[1] & 0x0f) else {
            return Ok(None);
        };
        let offset = s.start + 12;
        let check_bytes = check_len(s.flags[1] & 0x0f);
        let Some(block) = block_chunks(file, offset, record, check_bytes)? else {
            return Ok(None);
        };
        let here = Chunk {
            at: cut.at,
            out: b.out,
            dict_start: cut.dict_start,
        };
        if offset != b.offset || here.at == 0 || !block.chunks.contains(&here) {
            return Ok(None);
        }
        Ok(Some(Cut {
            flags: s.flags,
            check,
            header: block.header,
            // The header's size is what the decoder allocates; the
            // encoder may use less, and does above xz -6's 8 MiB, so that
            // it stays near 100 MiB (liblzma's -9 encoder takes 674 MiB).
            dict_size: block.dict_size.min(MAX_DICT),
            data: block.data,
            kept: cut.at,
            out: b.out,
            dict_start: cut.dict_start,
            offset,
        }))
    }

    /// Whether the block header carries the block's sizes, which change.
    fn sized(&self) -> bool {
        self.header[1] & 0xc0 != 0
    }

    /// The input's bytes the output starts with, as they are: the stream
    /// header, and unless the block header carries sizes, the block
    /// header and the chunks before the cut.
    pub(crate) fn kept_as_is(&self) -> u64 {
        if self.sized() {
            self.offset
        } else {
            self.data + self.kept
        }
    }

    /// Decodes the input up to the cut, noting the dictionary and the
    /// check there; returns the decoder, which goes on from the cut.
    pub(crate) fn prime(&mut self, file: &File) -> io::Result<Primed> {
        // From byte 0 by offset: clones of `file` share its position,
        // which keeping the prefix may have moved.
        let whole = super::Span {
            file: file.try_clone()?,
            at: 0,
            end: file.metadata()?.len(),
        };
        let mut decoder: Box<dyn Read + Send> =
            Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(
                io::BufReader::with_capacity(1 << 20, crate::io::progress::Reader(whole)),
            ));
        // The encoder is primed with the last MiB only: priming runs its
        // match finder over every byte given (an 8 MiB dictionary cost
        // 3 s of CPU on a 50 MB archive whose decoding takes 0.7 s), and
        // the bytes it touches are its memory. Its window still grows to
        // the full dictionary as the tail is compressed.
        let dict_len = self
            .out
            .saturating_sub(self.dict_start)
            .min(u64::from(self.dict_size))
            .min(PRIME);
        let dict_from = self.out - dict_len;
        let mut dict = Vec::with_capacity(dict_len as usize);
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.out {
            let want = buf.len().min((self.out - at) as usize);
            let n = decoder.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let piece = &buf[..n];
            self.check.update(piece);
            if at + n as u64 > dict_from {
                let skip = dict_from.saturating_sub(at) as usize;
                dict.extend_from_slice(&piece[skip..]);
            }
            at += n as u64;
        }
        Ok(Primed {
            input: decoder,
            dict,
        })
    }

    /// The encoder of the rest of the block into `sink`, which holds
    /// [`Cut::kept_as_is`] bytes of the input already; a scratch file in
    /// `scratch_dir` holds the new chunks when the header needs sizes.
    pub(crate) fn encoder<W: Write>(
        self,
        sink: W,
        dict: &[u8],
        file: &File,
        scratch_dir: &Path,
    ) -> io::Result<ChunkTail<W>> {
        let target = if self.sized() {
            let scratch = Scratch::create_in(scratch_dir, "xz-chunks")?;
            let buffered = BufWriter::with_capacity(1 << 20, scratch.file().try_clone()?);
            Target::Later {
                sink,
                scratch,
                buffered,
            }
        } else {
            Target::Sink(sink)
        };
        Ok(ChunkTail {
            lzma: PrimedEncoder::new(target, self.dict_size, dict)?,
            input: file.try_clone()?,
            uncompressed: self.out,
            cut: self,
        })
    }
}

/// The input decoded up to a cut.
pub(crate) struct Primed {
    /// The input's uncompressed bytes from the cut on.
    pub(crate) input: Box<dyn Read + Send>,
    /// The bytes before the cut a decoder there holds as its dictionary.
    pub(crate) dict: Vec<u8>,
}

/// Where the new chunks go.
enum Target<W: Write> {
    /// Straight after the kept bytes.
    Sink(W),
    /// Into a scratch file, until the block header's sizes are known.
    Later {
        sink: W,
        scratch: Scratch,
        buffered: BufWriter<File>,
    },
}

impl<W: Write> Write for Target<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Target::Sink(w) => w.write(buf),
            Target::Later { buffered, .. } => buffered.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The rest of a cut block: new chunks, then the block's end, the index
/// and the footer.
pub(crate) struct ChunkTail<W: Write> {
    lzma: PrimedEncoder<Target<W>>,
    cut: Cut,
    input: File,
    uncompressed: u64,
}

impl<W: Write> Write for ChunkTail<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lzma.write_all(buf)?;
        self.cut.check.update(buf);
        self.uncompressed += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The block header `header` with its size fields (those it has) set to
/// `compressed` and `uncompressed`, its padding and CRC32 redone.
fn with_sizes(header: &[u8], compressed: u64, uncompressed: u64) -> Option<Vec<u8>> {
    let flags = header[1];
    let mut at = 2;
    for bit in [0x40, 0x80] {
        if flags & bit != 0 {
            vli(header, &mut at)?;
        }
    }
    // The filter flags run to the padding; the filters are the same.
    let mut filters_end = at;
    for _ in 0..=(flags & 3) {
        vli(header, &mut filters_end)?;
        let n = vli(header, &mut filters_end)?;
        filters_end += usize::try_from(n).ok()?;
    }
    let mut new = vec![0u8, flags];
    if flags & 0x40 != 0 {
        put_vli(&mut new, compressed);
    }
    if flags & 0x80 != 0 {
        put_vli(&mut new, uncompressed);
    }
    new.extend_from_slice(header.get(at..filters_end)?);
    new.resize((new.len() + 4).div_ceil(4) * 4 - 4, 0);
    new[0] = u8::try_from((new.len() + 4) / 4 - 1).ok()?;
    let crc = crc32fast::hash(&new);
    new.extend_from_slice(&crc.to_le_bytes());
    Some(new)
}

impl<W: Write> ChunkTail<W> {
    /// Ends the block, and the stream with an index of it and a footer.
    pub(crate) fn finish(self) -> io::Result<W> {
        let ChunkTail {
            lzma,
            cut,
            input,
            uncompressed,
        } = self;
        let (target, new) = lzma.finish()?;
        let compressed = cut.kept + new;
        let (mut sink, header_len) = match target {
            Target::Sink(sink) => (sink, cut.header.len() as u64),
            Target::Later {
                mut sink,
                scratch,
                buffered,
            } => {
                let mut file = buffered.into_inner().map_err(|e| e.into_error())?;
                let header = with_sizes(&cut.header, compressed, uncompressed)
                    .ok_or_else(|| io::Error::other("the block header cannot be rewritten"))?;
                sink.write_all(&header)?;
                let mut kept = super::Span {
                    file: input,
                    at: cut.data,
                    end: cut.data + cut.kept,
                };
                io::copy(&mut kept, &mut sink)?;
                file.rewind()?;
                io::copy(&mut file, &mut sink)?;
                drop(scratch);
                (sink, header.len() as u64)
            }
        };
        let pad = (4 - compressed % 4) % 4;
        sink.write_all(&[0u8; 3][..pad as usize])?;
        let check = cut.check.finish();
        sink.write_all(&check)?;
        let record = Record {
            unpadded: header_len + compressed + check.len() as u64,
            uncompressed,
        };
        sink.write_all(&index_and_footer(cut.flags, &[record]))?;
        sink.flush()?;
        Ok(sink)
    }
}

impl<W: Write> super::super::Encoder for ChunkTail<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use liblzma::stream::{Check, MtStreamBuilder};

    use super::*;

    fn xz(data: &[u8], threads: u32, check: Check) -> Vec<u8> {
        let stream = MtStreamBuilder::new()
            .preset(6)
            .threads(threads)
            .block_size(1 << 30)
            .check(check)
            .encoder()
            .unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn plain_xz(data: &[u8], check: Check) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new_stream(
            Vec::new(),
            liblzma::stream::Stream::new_easy_encoder(6, check).unwrap(),
        );
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x = 7u64;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                if i % 4096 < 3000 {
                    b"abcdefgh"[i % 8]
                } else {
                    (x >> 40) as u8
                }
            })
            .collect()
    }

    /// Cut a single-block file near `change` and append `new`: the
    /// output decodes to the kept bytes and the new ones, keeps the
    /// input's bytes up to the cut, and its index and check are right.
    fn cut_and_continue(file_bytes: &[u8], whole: &[u8], change: u64, new: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        std::fs::write(&path, file_bytes).unwrap();
        let f = File::open(&path).unwrap();
        let streams = layout(&f, file_bytes.len() as u64).unwrap().unwrap();
        let single = single(&f, &streams).unwrap();
        let b = single.boundary_before(change).unwrap();
        assert!(b.out > 0 && b.out <= change);
        let mut cut = Cut::at(&f, file_bytes.len() as u64, &b).unwrap().unwrap();
        let keep = cut.kept_as_is() as usize;
        let mut out = file_bytes[..keep].to_vec();
        let mut primed = cut.prime(&f).unwrap();
        let mut tail = cut.encoder(&mut out, &primed.dict, &f, dir.path()).unwrap();
        let mut rest = vec![0u8; (change - b.out) as usize];
        primed.input.read_exact(&mut rest).unwrap();
        tail.write_all(&rest).unwrap();
        tail.write_all(new).unwrap();
        tail.finish().unwrap();
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        let mut want = whole[..change as usize].to_vec();
        want.extend_from_slice(new);
        assert!(back == want, "decodes to the kept and new bytes");
        out
    }

    #[test]
    fn every_check_and_both_header_kinds_continue_inside_the_block() {
        let whole = data(1_500_000);
        for check in [Check::None, Check::Crc32, Check::Crc64, Check::Sha256] {
            // Every check at one place, the start, middle and end with CRC64.
            let changes: &[u64] = if matches!(check, Check::Crc64) {
                &[300_000, 900_000, 1_499_999]
            } else {
                &[900_000]
            };
            for sized in [false, true] {
                let input = if sized {
                    xz(&whole, 2, check)
                } else {
                    plain_xz(&whole, check)
                };
                for &change in changes {
                    let out = cut_and_continue(&input, &whole, change, b"new bytes at the end");
                    // The chunks before the cut are the input's own.
                    let header = usize::from(input[12]) * 4 + 4;
                    let new_header = usize::from(out[12]) * 4 + 4;
                    assert!(
                        out[12 + new_header..12 + new_header + 60_000]
                            == input[12 + header..12 + header + 60_000]
                    );
                    if !sized {
                        assert!(out[..12 + header] == input[..12 + header]);
                    }
                }
            }
        }
    }

    #[test]
    fn sized_headers_are_rewritten_with_the_new_sizes() {
        let header = {
            let mut h = vec![0u8, 0xc0];
            put_vli(&mut h, 100);
            put_vli(&mut h, 300);
            h.extend_from_slice(&[0x21, 1, 16]);
            h.resize(12, 0);
            h[0] = 2;
            let crc = crc32fast::hash(&h);
            h.extend_from_slice(&crc.to_le_bytes());
            h
        };
        let new = with_sizes(&header, 1 << 30, 1 << 40).unwrap();
        assert_eq!(new.len() % 4, 0);
        assert_eq!(usize::from(new[0]) * 4 + 4, new.len());
        let mut at = 2;
        assert_eq!(vli(&new, &mut at), Some(1 << 30));
        assert_eq!(vli(&new, &mut at), Some(1 << 40));
        assert_eq!(&new[at..at + 3], &[0x21, 1, 16]);
        assert_eq!(lzma2_only(&new), Some(lzma2_only(&header).unwrap()));
    }
}
