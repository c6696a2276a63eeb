//! A multi-block xz file rewritten where it changed: every block whose
//! uncompressed bytes hold no changed byte is kept as its compressed bytes,
//! and only the blocks that hold a change are encoded again, each on a
//! thread of its own, with the same boundaries (so the index lines up),
//! the input's filters and check; then each stream's index and footer are
//! written anew. A raw image in xz (`system.img.xz`, `disk.wic.xz` from
//! `xz -T`) changes in a few places (ext4's superblock and its backups,
//! group descriptors, bitmaps, an inode table block, a directory and the
//! new file): with 24 MiB blocks, a handful of 86 blocks are encoded again.
//!
//! The writer is given the whole raw output front to back (the bytes of
//! kept blocks are dropped as they pass, as the block map's digests need
//! them all), and writes the output in file order: kept bytes as they are,
//! each re-encoded block when its thread is done (its compressed bytes go
//! to an unlinked scratch file, so memory holds no block).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use liblzma_sys as sys;

use super::blocks::header_filters;
use super::layout::put_vli;
use super::primed::BlockCheck;
use super::{check_of, index_and_footer, layout, vli, Record, StreamLayout, LZMA2};
use crate::io::output::Scratch;

/// The largest LZMA2 dictionary a re-encoded block gets (the input's, if
/// smaller). liblzma's preset-6 encoder needs about 11 x its dictionary
/// (`lzma_raw_encoder_memusage`: 94 MiB at xz's default 8 MiB, 37 MiB at
/// 3 MiB), and the changed blocks are encoded two at a time on two cores:
/// 3 MiB keeps both under 80 MiB. Only the re-encoded blocks, a small part
/// of the file, pay for the smaller dictionary (docs/formats.md has the
/// numbers). A constant, not a function of the core count, so that every
/// machine writes the same bytes.
pub(crate) const DICT_MAX: u32 = 3 << 20;

/// What the block encoders together may take (liblzma's own estimate);
/// one always runs.
pub(crate) const ENCODERS_MEMORY: u64 = 80 << 20;

/// Raw bytes handed to an encoder thread at a time, and how many such
/// pieces may wait for it.
const PIECE: usize = 256 << 10;
const QUEUED: usize = 2;

/// The rewrite of one file: its layout and, per block, whether it holds a
/// change.
pub(crate) struct Sparse {
    input: File,
    len: u64,
    streams: Vec<StreamLayout>,
    /// Per stream, per block: whether it is encoded again.
    changed: Vec<Vec<bool>>,
}

/// LZMA2's dictionary size property byte for at most `dict` bytes.
fn dict_prop(dict: u32) -> u8 {
    (0u8..40)
        .rev()
        .find(|&p| (2 | u32::from(p & 1)) << (p / 2 + 11) <= dict)
        .unwrap_or(0)
}

#[cfg(test)]
fn dict_of(prop: u8) -> u32 {
    (2 | u32::from(prop & 1)) << (prop / 2 + 11)
}

/// liblzma's memory estimate for a preset-6 LZMA2 encoder with `dict`.
pub(crate) fn encoder_memory(dict: u32) -> u64 {
    // SAFETY: lzma_options_lzma is plain data for which all zeros is
    // valid; lzma_lzma_preset sets every field the estimate reads.
    let mut opts: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
    // SAFETY: `opts` is a valid, writable lzma_options_lzma.
    if unsafe { sys::lzma_lzma_preset(&mut opts, 6) } != 0 {
        return u64::MAX;
    }
    opts.dict_size = dict;
    let filters = super::primed::lzma2_chain(&mut opts);
    // SAFETY: `filters` is terminated by LZMA_VLI_UNKNOWN and its options
    // outlive the call, which only reads them.
    unsafe { sys::lzma_raw_encoder_memusage(filters.as_ptr()) }
}

/// A block header's filter flags (from after its size fields to its
/// padding), with the LZMA2 dictionary property at most `DICT_MAX`; None
/// when the chain is not one the encoder takes.
fn filter_flags(header: &[u8]) -> Option<Vec<u8>> {
    header_filters(header)?;
    let flags = *header.get(1)?;
    let mut at = 2;
    for bit in [0x40, 0x80] {
        if flags & bit != 0 {
            vli(header, &mut at)?;
        }
    }
    let start = at;
    let mut lzma2_prop = None;
    for _ in 0..=(flags & 3) {
        let id = vli(header, &mut at)?;
        let n = usize::try_from(vli(header, &mut at)?).ok()?;
        if id == LZMA2 && n == 1 {
            lzma2_prop = Some(at - start);
        }
        at += n;
    }
    let mut out = header.get(start..at)?.to_vec();
    let p = lzma2_prop?;
    out[p] = out[p].min(dict_prop(DICT_MAX));
    Some(out)
}

/// A block header with both sizes and `filter_flags` (whose first byte
/// count is `filters`).
fn block_header(filters: u8, filter_flags: &[u8], compressed: u64, uncompressed: u64) -> Vec<u8> {
    let mut h = vec![0u8, (filters - 1) | 0x40 | 0x80];
    put_vli(&mut h, compressed);
    put_vli(&mut h, uncompressed);
    h.extend_from_slice(filter_flags);
    h.resize((h.len() + 4).div_ceil(4) * 4 - 4, 0);
    h[0] = ((h.len() + 4) / 4 - 1) as u8;
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

impl Sparse {
    /// The rewrite of `input` (an xz file) into a raw image of `raw_len`
    /// bytes whose changed bytes lie in `changed` (sorted, not
    /// overlapping `[start, end)` ranges). None when it does not apply:
    /// the layout cannot be read, the file has one block (nothing
    /// independent to keep), its decompressed length is not the image's
    /// (bytes past a filesystem's end are not kept), or a block that
    /// changed has filters or a check the encoder does not write.
    pub(crate) fn plan(
        input: &File,
        raw_len: u64,
        changed: &[(u64, u64)],
    ) -> io::Result<Option<Sparse>> {
        let len = input.metadata()?.len();
        let Some(streams) = layout(input, len)? else {
            return Ok(None);
        };
        let blocks: usize = streams.iter().map(|s| s.records.len()).sum();
        let total: u64 = streams
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.uncompressed))
            .sum();
        // (An empty block, which no xz tool writes, would start no
        // piece of the raw stream: such files take the general path.)
        let empty = streams
            .iter()
            .any(|s| s.records.iter().any(|r| r.uncompressed == 0));
        if blocks < 2 || total != raw_len || empty {
            return Ok(None);
        }
        let mut ranges = changed.iter().peekable();
        let mut marks = Vec::with_capacity(streams.len());
        for s in &streams {
            let mut marked = Vec::with_capacity(s.records.len());
            for (offset, out, r) in s.blocks() {
                let end = out + r.uncompressed;
                while ranges.peek().is_some_and(|&&(_, e)| e <= out) {
                    ranges.next();
                }
                let hit = ranges.peek().is_some_and(|&&(b, _)| b < end);
                if hit {
                    let header = read_header(input, offset)?;
                    if check_of(s.flags).is_none() || filter_flags(&header).is_none() {
                        return Ok(None);
                    }
                }
                marked.push(hit);
            }
            marks.push(marked);
        }
        Ok(Some(Sparse {
            input: input.try_clone()?,
            len,
            streams,
            changed: marks,
        }))
    }

    /// Blocks kept as they are, of all blocks.
    pub(crate) fn kept(&self) -> (usize, usize) {
        let all = self.changed.iter().map(Vec::len).sum();
        let encoded = self.changed.iter().flatten().filter(|&&c| c).count();
        (all - encoded, all)
    }

    /// The writer of the output into `sink`, encoding on up to `threads`
    /// threads (fewer if their encoders would need more than
    /// `ENCODERS_MEMORY`), with scratch files in `dir`.
    pub(crate) fn writer<W: Write>(
        self,
        sink: W,
        threads: usize,
        dir: &Path,
    ) -> io::Result<SparseWriter<W>> {
        let one = encoder_memory(DICT_MAX).max(1);
        let threads = threads.clamp(1, (ENCODERS_MEMORY / one).max(1) as usize);
        let mut pieces = VecDeque::new();
        let mut blocks = Vec::new();
        let mut prev_end = 0;
        for (i, s) in self.streams.iter().enumerate() {
            // Stream padding before it, and its header.
            pieces.push_back(Piece::Copy {
                from: prev_end,
                len: s.start + 12 - prev_end,
            });
            for (j, (offset, out, r)) in s.blocks().enumerate() {
                pieces.push_back(Piece::Block(blocks.len()));
                blocks.push(Block {
                    stream: i,
                    offset,
                    out,
                    record: *r,
                    changed: self.changed[i][j],
                    job: None,
                });
            }
            pieces.push_back(Piece::Index(i));
            prev_end = s.end;
        }
        // Padding after the last stream.
        pieces.push_back(Piece::Copy {
            from: prev_end,
            len: self.len - prev_end,
        });
        let (kept, all) = self.kept();
        tracing::debug!(kept, all, threads, "xz: unchanged blocks kept");
        Ok(SparseWriter {
            sink,
            dir: dir.to_path_buf(),
            threads,
            records: vec![Vec::new(); self.streams.len()],
            pieces,
            blocks,
            next: 0,
            at: 0,
            current: None,
            in_flight: 0,
            sparse: self,
        })
    }
}

fn read_header(file: &File, offset: u64) -> io::Result<Vec<u8>> {
    let mut size = [0u8; 1];
    file.read_exact_at(&mut size, offset)?;
    let mut header = vec![0u8; (usize::from(size[0]) + 1) * 4];
    file.read_exact_at(&mut header, offset)?;
    Ok(header)
}

struct Block {
    stream: usize,
    offset: u64,
    out: u64,
    record: Record,
    changed: bool,
    /// Its encoder thread, once the block was reached (changed blocks).
    job: Option<Job>,
}

/// The output, in file order.
#[derive(Clone, Copy)]
enum Piece {
    /// Input bytes as they are (stream headers, padding).
    Copy { from: u64, len: u64 },
    /// A block, kept or encoded again, by its number in the file.
    Block(usize),
    /// A stream's index and footer.
    Index(usize),
}

/// An encoder thread, giving its block when done.
type Job = JoinHandle<io::Result<Done>>;

/// A block encoded again: its data (LZMA2 with its end marker) in an
/// unlinked scratch file.
struct Done {
    data: File,
    compressed: u64,
    uncompressed: u64,
    check: Vec<u8>,
    filter_flags: Vec<u8>,
    filters: u8,
}

/// The block being passed through: kept (its bytes dropped) or fed to
/// its encoder thread.
struct Current {
    end: u64,
    feed: Option<Feed>,
}

struct Feed {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

/// Writes the output of a [`Sparse`] rewrite as the raw image passes.
pub(crate) struct SparseWriter<W: Write> {
    sink: W,
    dir: PathBuf,
    threads: usize,
    /// Per stream, the records of the blocks written so far.
    records: Vec<Vec<Record>>,
    /// Output not yet written, in order.
    pieces: VecDeque<Piece>,
    blocks: Vec<Block>,
    /// The next block the raw image reaches.
    next: usize,
    /// Raw bytes passed so far.
    at: u64,
    current: Option<Current>,
    /// Blocks being encoded, not yet written.
    in_flight: usize,
    sparse: Sparse,
}

impl<W: Write> SparseWriter<W> {
    /// Starts the block that begins at the current position.
    fn start_block(&mut self) -> io::Result<()> {
        let Some(b) = self.blocks.get(self.next) else {
            return Err(io::Error::other(
                "the image is longer than the xz file's blocks",
            ));
        };
        let end = b.out + b.record.uncompressed;
        let (offset, stream, changed) = (b.offset, b.stream, b.changed);
        let feed = if changed {
            while self.in_flight >= self.threads {
                self.drain(true)?;
            }
            let header = read_header(&self.sparse.input, offset)?;
            let check_id = self.sparse.streams[stream].flags[1] & 0x0f;
            let (tx, job) = spawn_encoder(&header, check_id, &self.dir)?;
            self.blocks[self.next].job = Some(job);
            self.in_flight += 1;
            Some(Feed {
                tx,
                buf: Vec::with_capacity(PIECE),
            })
        } else {
            None
        };
        self.next += 1;
        self.current = Some(Current { end, feed });
        Ok(())
    }

    /// Ends the current block's feed, if any: its thread finishes it.
    fn end_block(&mut self) {
        if let Some(Current {
            feed: Some(mut feed),
            ..
        }) = self.current.take()
        {
            if !feed.buf.is_empty() {
                let buf = std::mem::take(&mut feed.buf);
                // A failed send means the thread stopped: its error comes
                // with its result.
                let _ = feed.tx.send(buf);
            }
        }
    }

    /// Writes the pieces at the front that are ready: everything before
    /// the first block not yet reached or (unless `wait`) still being
    /// encoded. With `wait`, waits for the first block being encoded.
    fn drain(&mut self, mut wait: bool) -> io::Result<()> {
        while let Some(&piece) = self.pieces.front() {
            if let Piece::Block(i) = piece {
                let b = &self.blocks[i];
                // A kept block is the input's bytes, ready from the start;
                // a changed one once its bytes were all sent to its thread
                // and the thread is done (or `wait` lets it be waited for).
                if b.changed {
                    let fed = i < self.next && !(i + 1 == self.next && self.current.is_some());
                    let Some(job) = b.job.as_ref().filter(|_| fed) else {
                        break;
                    };
                    if !wait && !job.is_finished() {
                        break;
                    }
                    wait = false;
                }
            }
            self.pieces.pop_front();
            self.write_piece(piece)?;
        }
        Ok(())
    }

    fn write_piece(&mut self, piece: Piece) -> io::Result<()> {
        match piece {
            Piece::Copy { from, len } => self.copy(from, len),
            Piece::Block(i) if !self.blocks[i].changed => {
                let b = &self.blocks[i];
                let (stream, offset, record) = (b.stream, b.offset, b.record);
                self.copy(offset, record.padded())?;
                self.records[stream].push(record);
                Ok(())
            }
            Piece::Block(i) => {
                let b = &mut self.blocks[i];
                let stream = b.stream;
                let job = b.job.take().expect("a changed block reached has a job");
                self.in_flight -= 1;
                let done = job
                    .join()
                    .map_err(|_| io::Error::other("an xz block encoder thread panicked"))??;
                let header = block_header(
                    done.filters,
                    &done.filter_flags,
                    done.compressed,
                    done.uncompressed,
                );
                self.sink.write_all(&header)?;
                copy_file(&done.data, 0, done.compressed, &mut self.sink)?;
                let pad = (4 - done.compressed % 4) % 4;
                self.sink.write_all(&[0u8; 3][..pad as usize])?;
                self.sink.write_all(&done.check)?;
                self.records[stream].push(Record {
                    unpadded: header.len() as u64 + done.compressed + done.check.len() as u64,
                    uncompressed: done.uncompressed,
                });
                Ok(())
            }
            Piece::Index(stream) => {
                let s = &self.sparse.streams[stream];
                self.sink
                    .write_all(&index_and_footer(s.flags, &self.records[stream]))
            }
        }
    }

    fn copy(&mut self, from: u64, len: u64) -> io::Result<()> {
        copy_file(&self.sparse.input, from, len, &mut self.sink)
    }

    /// Ends the output: the last blocks, the indexes and the padding.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.end_block();
        let end = self
            .blocks
            .last()
            .map_or(0, |b| b.out + b.record.uncompressed);
        if self.next != self.blocks.len() || self.at != end {
            return Err(io::Error::other(
                "the image is shorter than the xz file's blocks",
            ));
        }
        while !self.pieces.is_empty() {
            self.drain(true)?;
        }
        self.sink.flush()?;
        Ok(self.sink)
    }
}

impl<W: Write> Write for SparseWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            if self.current.is_none() {
                self.start_block()?;
            }
            let current = self.current.as_mut().expect("started above");
            let take = (current.end - self.at).min(data.len() as u64) as usize;
            if let Some(feed) = &mut current.feed {
                let mut part = &data[..take];
                while !part.is_empty() {
                    let room = (PIECE - feed.buf.len()).min(part.len());
                    feed.buf.extend_from_slice(&part[..room]);
                    part = &part[room..];
                    if feed.buf.len() == PIECE {
                        let buf = std::mem::replace(&mut feed.buf, Vec::with_capacity(PIECE));
                        let _ = feed.tx.send(buf);
                    }
                }
            }
            self.at += take as u64;
            data = &data[take..];
            if self.at == current.end {
                self.end_block();
                self.drain(false)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> super::super::Encoder for SparseWriter<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish().map(drop)
    }
}

/// Appends `len` bytes of `file` from `from` to `sink`.
fn copy_file(file: &File, from: u64, len: u64, sink: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], from + done)?;
        sink.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// A thread encoding one block like the one with `header` (its filters,
/// the dictionary at most `DICT_MAX`) and check `check_id`, from the raw
/// pieces sent to it until the sender is dropped.
fn spawn_encoder(
    header: &[u8],
    check_id: u8,
    dir: &Path,
) -> io::Result<(SyncSender<Vec<u8>>, Job)> {
    let filter_flags =
        filter_flags(header).ok_or_else(|| io::Error::other("unexpected xz filters"))?;
    let filters = (header[1] & 3) + 1;
    let data = Scratch::create_in(dir, "xz-block")?.into_unlinked()?;
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUED);
    let job = std::thread::Builder::new().name("xz block".into()).spawn(
        move || -> io::Result<Done> {
            // The encoder's filters from a header of the new flags alone.
            let mut bare = vec![0u8, filters - 1];
            bare.extend_from_slice(&filter_flags);
            let chain =
                header_filters(&bare).ok_or_else(|| io::Error::other("unexpected xz filters"))?;
            let stream =
                liblzma::stream::Stream::new_raw_encoder(&chain).map_err(io::Error::other)?;
            let mut check =
                BlockCheck::new(check_id).ok_or_else(|| io::Error::other("unknown xz check"))?;
            let mut encoder = liblzma::write::XzEncoder::new_stream(
                BufWriter::with_capacity(1 << 20, &data),
                stream,
            );
            let mut uncompressed = 0u64;
            for piece in rx {
                check.update(&piece);
                uncompressed += piece.len() as u64;
                encoder.write_all(&piece)?;
            }
            let mut out = encoder.finish()?;
            out.flush()?;
            drop(out);
            let compressed = data.metadata()?.len();
            Ok(Done {
                data,
                compressed,
                uncompressed,
                check: check.finish(),
                filter_flags,
                filters,
            })
        },
    )?;
    Ok((tx, job))
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::Check;

    fn xz(data: &[u8], block: u64, check: Check) -> Vec<u8> {
        super::super::test_data::xz_at(6, data, 2, block, check)
    }

    fn data(n: u32) -> Vec<u8> {
        (0..n)
            .map(|i| ((i / 5) % 253) as u8 ^ (i.wrapping_mul(2654435761) >> 29) as u8)
            .collect()
    }

    fn rewrite(file: &[u8], new: &[u8], changed: &[(u64, u64)]) -> (Vec<u8>, (usize, usize)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.xz");
        std::fs::write(&path, file).unwrap();
        let input = File::open(&path).unwrap();
        let plan = Sparse::plan(&input, new.len() as u64, changed)
            .unwrap()
            .unwrap();
        let kept = plan.kept();
        let mut w = plan.writer(Vec::new(), 2, dir.path()).unwrap();
        for piece in new.chunks(7777) {
            w.write_all(piece).unwrap();
        }
        (w.finish().unwrap(), kept)
    }

    fn unxz(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut d = liblzma::read::XzDecoder::new_multi_decoder(bytes);
        io::Read::read_to_end(&mut d, &mut out).unwrap();
        out
    }

    #[test]
    fn only_changed_blocks_are_encoded_again_with_every_check() {
        let old = data(1_000_000);
        let block = 100_000u64;
        for check in [Check::None, Check::Crc32, Check::Crc64, Check::Sha256] {
            let file = xz(&old, block, check);
            let mut new = old.clone();
            // Changes in blocks 0, 4 (across 4 and 5) and 9.
            let changed = [(10u64, 20u64), (499_990, 500_010), (999_999, 1_000_000)];
            for &(a, b) in &changed {
                for x in &mut new[a as usize..b as usize] {
                    *x = !*x;
                }
            }
            let (out, kept) = rewrite(&file, &new, &changed);
            assert_eq!(kept, (6, 10), "{check:?}");
            assert_eq!(unxz(&out), new, "{check:?}");
            // The kept blocks are the input's bytes at their places.
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::write(&a, &file).unwrap();
            std::fs::write(&b, &out).unwrap();
            let (la, lb) = (
                layout(&File::open(&a).unwrap(), file.len() as u64)
                    .unwrap()
                    .unwrap(),
                layout(&File::open(&b).unwrap(), out.len() as u64)
                    .unwrap()
                    .unwrap(),
            );
            let ba: Vec<_> = la[0].blocks().map(|(o, u, r)| (o, u, *r)).collect();
            let bb: Vec<_> = lb[0].blocks().map(|(o, u, r)| (o, u, *r)).collect();
            assert_eq!(ba.len(), bb.len());
            let mut same = 0;
            for (x, y) in ba.iter().zip(&bb) {
                assert_eq!(x.1, y.1, "the blocks start where they did");
                if file[x.0 as usize..(x.0 + x.2.padded()) as usize]
                    == out[y.0 as usize..(y.0 + y.2.padded()) as usize]
                {
                    same += 1;
                }
            }
            assert_eq!(same, 6, "{check:?}");
        }
    }

    #[test]
    fn several_streams_with_padding_keep_their_framing() {
        let a = data(300_000);
        let b: Vec<u8> = data(500_000).into_iter().rev().collect();
        let mut file = xz(&a, 100_000, Check::Crc32);
        file.extend_from_slice(&[0u8; 8]);
        file.extend_from_slice(&xz(&b, 100_000, Check::Sha256));
        file.extend_from_slice(&[0u8; 4]);
        let mut old = a.clone();
        old.extend_from_slice(&b);
        let mut new = old.clone();
        new[450_000] ^= 1;
        let (out, kept) = rewrite(&file, &new, &[(450_000, 450_001)]);
        assert_eq!(kept, (7, 8));
        assert_eq!(unxz(&out), new);
        assert_eq!(&out[out.len() - 4..], &[0u8; 4]);
        // Nothing changed: the same bytes.
        let (same, kept) = rewrite(&file, &old, &[]);
        assert_eq!(kept, (8, 8));
        assert_eq!(same, file);
    }

    #[test]
    fn a_smaller_dictionary_needs_less_memory() {
        assert!(encoder_memory(DICT_MAX) * 2 <= ENCODERS_MEMORY);
        assert!(encoder_memory(8 << 20) > encoder_memory(DICT_MAX));
        assert_eq!(dict_of(dict_prop(3 << 20)), 3 << 20);
        assert_eq!(dict_of(dict_prop(8 << 20)), 8 << 20);
        assert_eq!(dict_of(dict_prop((8 << 20) - 1)), 6 << 20);
    }
}
