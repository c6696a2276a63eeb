//! Continuing an xz block inside it: the input's compressed bytes up to
//! the last LZMA2 chunk start before the first change are kept, and a raw
//! LZMA2 encoder primed with the dictionary a decoder holds there writes
//! the rest of the block (see `primed.rs`, `chunk_tail.rs`); then the
//! block's padding, its check over all its uncompressed data, and either
//! the index and footer or, past the input's block size, new blocks like
//! the input's (`blocks.rs`).
//!
//! Any block whose only filter is LZMA2 can be cut so: the one block of a
//! plain `xz` file (Buildroot), or the block holding the first change in
//! a file of many (`xz -T`, Yocto), whose earlier blocks and their index
//! records are kept as they are. The dictionary and the check need the
//! block's uncompressed bytes before the cut, which only decoding the
//! block from its start gives (an LZMA chunk continues the state of the
//! one before it): the rewrite decodes the block up to the cut, taking
//! the dictionary on the way, then goes on reading the input from there;
//! or, when the scan cache kept what that gave (`cut_state.rs`), starts
//! from that without decoding.
//!
//! A block header that carries the block's sizes (`xz -T`) gets them anew:
//! they are known only at the block's end, so the new chunks go to a
//! scratch file and the header, the kept chunks and those follow it.
//! Blocks with a BCJ or delta filter before LZMA2 are not cut (those
//! filters have their own state at the cut): a multi-block file keeps the
//! blocks before theirs, a single-block one nothing.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::chunks::{self, Chunk};
use super::cut_state::{CutState, Fresh, Lazy, Tee};
use super::layout::{stream_at, Record};
use super::primed::BlockCheck;
use super::{check_len, layout, vli, Boundary, Continuation, StreamLayout, LZMA2};

/// The largest dictionary the primed encoder uses (xz -6's).
const MAX_DICT: u32 = 8 << 20;
/// The bytes before the cut the encoder is primed with.
pub(super) const PRIME: u64 = 1 << 20;

/// Where a cut inside a block falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkCut {
    /// Offset of the chunk's control byte in the block's LZMA2 data.
    pub(crate) at: u64,
    /// Uncompressed offset (in the file) of the last dictionary reset
    /// before it.
    pub(crate) dict_start: u64,
}

/// A block that can be cut inside, with its chunk starts.
pub(crate) struct BlockCuts {
    /// File offset of its header, and uncompressed bytes before it.
    pub(super) offset: u64,
    out: u64,
    chunks: Vec<Chunk>,
}

impl BlockCuts {
    /// The chunk boundary at or before uncompressed `out` (in the file),
    /// past the block's start.
    pub(crate) fn boundary_before(&self, out: u64) -> Option<Boundary> {
        let c = chunks::last_at_or_before(&self.chunks, out.checked_sub(self.out)?)?;
        Some(Boundary {
            offset: self.offset,
            out: self.out + c.out,
            chunk: Some(ChunkCut {
                at: c.at,
                dict_start: self.out + c.dict_start,
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
pub(super) struct BlockChunks {
    pub(super) header: Vec<u8>,
    dict_size: u32,
    pub(super) data: u64,
    pub(super) chunks: Vec<Chunk>,
}

pub(super) fn block_chunks(
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

/// The blocks of a file (the layout `streams` read) that can be cut
/// inside, in file order. A hostile file of many tiny chunks is bounded:
/// past [`chunks::MAX_CHUNKS`] chunks in all, later blocks are not cut
/// inside (their starts stay boundaries).
pub(crate) fn cuttable(file: &File, streams: &[StreamLayout]) -> Vec<BlockCuts> {
    let mut found = Vec::new();
    let mut total = 0usize;
    for s in streams {
        let check = check_len(s.flags[1] & 0x0f);
        for (offset, out, record) in s.blocks() {
            let Ok(Some(b)) = block_chunks(file, offset, record, check) else {
                continue;
            };
            total += b.chunks.len();
            if total > chunks::MAX_CHUNKS {
                return found;
            }
            found.push(BlockCuts {
                offset,
                out,
                chunks: b.chunks,
            });
        }
    }
    found
}

/// How to continue a file at a chunk boundary inside one of its blocks.
pub(crate) struct Cut {
    pub(super) flags: [u8; 2],
    pub(super) check: BlockCheck,
    pub(super) header: Vec<u8>,
    pub(super) dict_size: u32,
    /// File offset of the block's LZMA2 data, and the bytes of it kept.
    pub(super) data: u64,
    pub(super) kept: u64,
    /// Uncompressed bytes of the block before the cut, and where (in the
    /// block) the dictionary there starts.
    pub(super) in_block: u64,
    dict_start: u64,
    /// File offset of the block header, and the boundary's place in the
    /// file's uncompressed bytes.
    offset: u64,
    out: u64,
    /// The block and what follows it, read from the block's start; the
    /// blocks after the cut block are made like the input's.
    pub(super) more: Continuation,
    /// The most uncompressed bytes the cut block may hold: the input's
    /// block size in a stream of several blocks; none in a stream of one
    /// (plain `xz`), which stays one block.
    pub(super) limit: Option<u64>,
}

impl Cut {
    /// How to continue `file` (of `len` bytes) at `b`, if `b` is a chunk
    /// boundary of one of its LZMA2-only blocks.
    pub(crate) fn at(file: &File, len: u64, b: &Boundary) -> io::Result<Option<Cut>> {
        let Some(cut) = b.chunk else {
            return Ok(None);
        };
        let Some(streams) = layout(file, len)? else {
            return Ok(None);
        };
        let Some(s) = stream_at(&streams, b.offset) else {
            return Ok(None);
        };
        let Some((offset, block_out, record)) = s.blocks().find(|&(o, _, _)| o == b.offset) else {
            return Ok(None);
        };
        let Some(check) = BlockCheck::new(s.flags[1] & 0x0f) else {
            return Ok(None);
        };
        let check_bytes = check_len(s.flags[1] & 0x0f);
        let Some(block) = block_chunks(file, offset, record, check_bytes)? else {
            return Ok(None);
        };
        let (Some(in_block), Some(dict_start)) = (
            b.out.checked_sub(block_out),
            cut.dict_start.checked_sub(block_out),
        ) else {
            return Ok(None);
        };
        let here = Chunk {
            at: cut.at,
            out: in_block,
            dict_start,
        };
        if here.at == 0 || !block.chunks.contains(&here) {
            return Ok(None);
        }
        let start = Boundary {
            offset,
            out: block_out,
            chunk: None,
        };
        let Some(more) = Continuation::at(file, len, &start)? else {
            return Ok(None);
        };
        let limit = (s.records.len() > 1).then(|| more.block_size.max(record.uncompressed));
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
            in_block,
            dict_start,
            offset,
            out: b.out,
            more,
            limit,
        }))
    }

    /// Whether the block header carries the block's sizes, which change.
    pub(super) fn sized(&self) -> bool {
        self.header[1] & 0xc0 != 0
    }

    /// The input's bytes the output starts with, as they are: the stream
    /// header and the blocks before the cut one, and unless its header
    /// carries sizes, its header and the chunks before the cut.
    pub(crate) fn kept_as_is(&self) -> u64 {
        if self.sized() {
            self.offset
        } else {
            self.data + self.kept
        }
    }

    /// The most threads up to `max` the blocks after the cut one may use
    /// within `budget` bytes (see [`Continuation::threads_within`]).
    pub(crate) fn threads_within(&self, max: u32, budget: u64) -> u32 {
        self.more.threads_within(max, budget)
    }

    /// How many bytes before the cut the encoder is primed with: the last
    /// MiB, within the dictionary and after its last reset. Priming runs
    /// the match finder over every byte given (an 8 MiB dictionary cost
    /// 3 s of CPU on a 50 MB archive whose decoding takes 0.7 s), and the
    /// bytes it touches are its memory; its window still grows to the
    /// full dictionary as the tail is compressed.
    fn dict_len(&self) -> u64 {
        (self.in_block - self.dict_start)
            .min(u64::from(self.dict_size))
            .min(PRIME)
    }

    /// The dictionary and check at the cut, and a reader of the input's
    /// uncompressed bytes from the cut on. From `cached` (what an earlier
    /// run found here, if it matches this cut) nothing is decoded up to
    /// the cut; else the block is decoded from its start up to the cut,
    /// and the result says what a later run may keep.
    pub(crate) fn prime(&mut self, file: &File, cached: Option<&CutState>) -> io::Result<Primed> {
        if let Some(state) = cached.filter(|s| {
            s.fits(
                self.offset,
                self.kept,
                self.out,
                self.dict_len(),
                &self.check,
            )
        }) {
            self.check = state.check.clone();
            let decode = self.more.clone();
            let file = file.try_clone()?;
            let skip = self.in_block + state.ahead.len() as u64;
            let rest = Lazy::new(move || decode.input(&file), skip);
            tracing::info!(
                "xz block cut at byte {} of its data: dictionary and check from the scan cache, nothing decoded up to the cut",
                self.kept
            );
            return Ok(Primed {
                input: Box::new(io::Cursor::new(state.ahead.clone()).chain(rest)),
                dict: state.dict.clone(),
                fresh: None,
            });
        }
        let mut decoder = self.more.input(file)?;
        let dict_from = self.in_block - self.dict_len();
        let mut dict = Vec::with_capacity(self.dict_len() as usize);
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.in_block {
            let want = buf.len().min((self.in_block - at) as usize);
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
        tracing::info!(
            "xz block cut at byte {} of its data: {} bytes of the block decoded up to the cut",
            self.kept,
            self.in_block
        );
        let (tee, seen) = Tee::new(decoder);
        let state = CutState {
            offset: self.offset,
            at: self.kept,
            out: self.out,
            check: self.check.clone(),
            dict: dict.clone(),
            ahead: Vec::new(),
        };
        Ok(Primed {
            input: Box::new(tee),
            dict,
            fresh: Some(Fresh { state, seen }),
        })
    }
}

/// The input at a cut.
pub(crate) struct Primed {
    /// The input's uncompressed bytes from the cut on.
    pub(crate) input: Box<dyn Read + Send>,
    /// The bytes before the cut a decoder there holds as its dictionary.
    pub(crate) dict: Vec<u8>,
    /// What the scan cache may keep for a later run, once the input read
    /// from the cut is known (None when this came from the cache).
    pub(crate) fresh: Option<Fresh>,
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use liblzma::stream::Check;

    use super::super::chunk_tail::with_sizes;
    use super::super::cut_state::CutStates;
    use super::super::layout::put_vli;
    use super::*;

    fn xz(data: &[u8], threads: u32, block: u64, check: Check) -> Vec<u8> {
        super::super::test_data::xz_at(6, data, threads, block, check)
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
        super::super::test_data::noisy(n, 3000)
    }

    /// Cut a file near `change` and append `new` (twice: decoding, then
    /// from the state that gave): the output decodes to the kept bytes
    /// and the new ones, keeps the input's bytes up to the cut, and its
    /// index and check are right; both runs write the same bytes.
    fn cut_and_continue(file_bytes: &[u8], whole: &[u8], change: u64, new: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        std::fs::write(&path, file_bytes).unwrap();
        let f = File::open(&path).unwrap();
        let len = file_bytes.len() as u64;
        let streams = layout(&f, len).unwrap().unwrap();
        let cuts = cuttable(&f, &streams);
        let index = super::super::Index { streams, cuts };
        let b = index.boundary_before(change).unwrap();
        assert!(b.chunk.is_some(), "a chunk boundary at {change}: {b:?}");
        assert!(b.out > 0 && b.out <= change);
        let mut states = CutStates::default();
        let mut outputs = Vec::new();
        for run in 0..3 {
            if run == 2 {
                // Fewer bytes after the cut than the writer reads: the
                // rest comes from decoding the block again.
                let mut short = states.find(&b).unwrap().clone();
                short.ahead.truncate(short.ahead.len() / 2);
                states.seed(vec![short]);
            }
            let mut cut = Cut::at(&f, len, &b).unwrap().unwrap();
            let keep = cut.kept_as_is() as usize;
            let mut out = file_bytes[..keep].to_vec();
            let cached = states.find(&b).cloned();
            let mut primed = cut.prime(&f, cached.as_ref()).unwrap();
            assert_eq!(primed.fresh.is_none(), cached.is_some());
            let mut tail = cut
                .encoder(&mut out, &primed.dict, &f, dir.path(), 2)
                .unwrap();
            let mut rest = vec![0u8; (change - b.out) as usize];
            primed.input.read_exact(&mut rest).unwrap();
            tail.write_all(&rest).unwrap();
            tail.write_all(new).unwrap();
            tail.finish().unwrap();
            if let Some(fresh) = primed.fresh {
                states.add(fresh.state());
            }
            let mut back = Vec::new();
            liblzma::read::XzDecoder::new_multi_decoder(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            let mut want = whole[..change as usize].to_vec();
            want.extend_from_slice(new);
            assert!(back == want, "decodes to the kept and new bytes");
            outputs.push(out);
        }
        assert!(outputs[0] == outputs[1], "the cached state writes the same");
        assert!(
            outputs[0] == outputs[2],
            "and so with fewer bytes after the cut"
        );
        outputs.pop().unwrap()
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
                    xz(&whole, 2, 1 << 30, check)
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

    /// Blocks of 1 MiB (`xz -T`; the smallest block size a continuation
    /// takes from its input): a change in a middle block or the last keeps
    /// the blocks before it and that block's chunks before the change; the
    /// cut block grows to the input's block size and new blocks follow,
    /// each in the index.
    #[test]
    fn a_block_of_many_is_cut_inside_and_new_blocks_follow() {
        const BLOCK: u64 = 1 << 20;
        let whole = data(3_500_000);
        let input = xz(&whole, 2, BLOCK, Check::Crc32);
        // Middle of the second block, past the first chunk (about 240 KB
        // of this data) of the last one, and its end.
        for change in [1_600_000u64, 3_420_000, 3_499_000] {
            let more = vec![b'x'; 1_500_000];
            let out = cut_and_continue(&input, &whole, change, &more);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("o.xz");
            std::fs::write(&path, &out).unwrap();
            let streams = layout(&File::open(&path).unwrap(), out.len() as u64)
                .unwrap()
                .unwrap();
            let sizes: Vec<u64> = streams[0].records.iter().map(|r| r.uncompressed).collect();
            let total = change + more.len() as u64;
            let first = (change / BLOCK) as usize;
            // The blocks before the cut one as they were, then blocks of
            // the input's size.
            assert!(sizes[..first].iter().all(|&s| s == BLOCK), "{sizes:?}");
            assert_eq!(sizes.iter().sum::<u64>(), total);
            assert!(sizes.iter().all(|&s| s <= BLOCK), "{sizes:?}");
            assert_eq!(sizes.len() as u64, total.div_ceil(BLOCK), "{sizes:?}");
            // Everything before the cut block is the input's.
            let (kept_at, _, _) = streams[0].blocks().nth(first).unwrap();
            assert!(out[..kept_at as usize] == input[..kept_at as usize]);
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
