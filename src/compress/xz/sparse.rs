//! An xz file rewritten where it changed: every block whose uncompressed
//! bytes hold no changed byte is kept as its compressed bytes; a block
//! that holds a change keeps its LZMA2 chunks before the first changed
//! byte in it (the block ends there: its chunks, an end marker, its
//! check) and the rest of it is encoded anew in blocks of at most
//! [`FRESH_BLOCK`] bytes, two at a time on two cores; then each stream's
//! index and footer are written anew. A raw image in xz (`system.img.xz`,
//! `disk.wic.xz` from `xz -T`) changes in a few places (ext4's superblock
//! and its backups, group descriptors, bitmaps, an inode table block, a
//! directory and the new file): with 24 MiB blocks, a handful of 86
//! blocks hold a change. A file of one block (plain `xz`, Buildroot)
//! keeps its chunks before the first change and the rest is new blocks.
//!
//! Ending a block at a chunk start needs nothing but its chunk headers
//! (`chunks.rs`) and the check over its bytes before the cut, which the
//! raw image passing through gives: no decoding, no primed encoder. The
//! blocks after it start without a dictionary, which costs little next to
//! the bytes they hold (docs/formats.md has the sizes).
//!
//! The writer is given the whole raw output front to back (the bytes of
//! kept blocks are dropped as they pass, as the block map's digests need
//! them all), and writes the output in file order: kept bytes as they are,
//! each new block when its thread is done (`fresh.rs`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;

use super::chunk_tail::with_sizes;
use super::chunks;
use super::cut::block_chunks;
use super::fresh::{encoder_memory, filter_flags, spawn_encoder, Job, DICT_MAX, ENCODERS_MEMORY};
use super::primed::BlockCheck;
use super::{check_len, check_of, index_and_footer, layout, Record, StreamLayout};

/// The most raw bytes a block encoded anew holds: the part of a changed
/// block after its cut is split into equal blocks of at most this, so
/// that both cores encode until the end rather than one finishing a
/// 24 MiB block alone. A constant, so that every machine writes the same
/// bytes (docs/formats.md has what it costs in size).
pub(crate) const FRESH_BLOCK: u64 = 8 << 20;

/// Raw bytes handed to an encoder thread at a time.
const PIECE: usize = 256 << 10;

/// One block of the output, covering raw bytes `out..out + len` of
/// stream `stream`.
struct Planned {
    stream: usize,
    out: u64,
    len: u64,
    part: Part,
}

enum Part {
    /// An input block kept as it is (at `offset`).
    Kept { offset: u64, record: Record },
    /// An input block's first `kept` bytes of LZMA2 data (at `data`),
    /// whole chunks, ended there: its header (sizes rewritten) and an end
    /// marker after them.
    Head {
        header: Vec<u8>,
        data: u64,
        kept: u64,
    },
    /// Raw bytes encoded anew with the filters of the input block whose
    /// header this is.
    Fresh { header: Vec<u8> },
}

/// The rewrite of one file: its layout and its output blocks.
pub(crate) struct Sparse {
    input: File,
    len: u64,
    streams: Vec<StreamLayout>,
    blocks: Vec<Planned>,
}

impl Sparse {
    /// The rewrite of `input` (an xz file) into a raw image of `raw_len`
    /// bytes whose changed bytes lie in `changed` (sorted, not
    /// overlapping `[start, end)` ranges). None when it does not apply:
    /// the layout cannot be read, the file has one block (its rest after
    /// the cut, encoded anew in blocks on two cores, would be 5% larger:
    /// `cut.rs` continues it in one), its decompressed length is not the
    /// image's (bytes past a filesystem's end are not kept), or a block
    /// that changed has filters or a check the encoder does not write.
    pub(crate) fn plan(
        input: &File,
        raw_len: u64,
        changed: &[(u64, u64)],
    ) -> io::Result<Option<Sparse>> {
        Sparse::plan_in(input, raw_len, changed, FRESH_BLOCK)
    }

    /// [`Sparse::plan`] with new blocks of at most `fresh_block` bytes.
    fn plan_in(
        input: &File,
        raw_len: u64,
        changed: &[(u64, u64)],
        fresh_block: u64,
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
        let mut blocks = Vec::with_capacity(blocks);
        for (i, s) in streams.iter().enumerate() {
            for (offset, out, r) in s.blocks() {
                let end = out + r.uncompressed;
                while ranges.peek().is_some_and(|&&(_, e)| e <= out) {
                    ranges.next();
                }
                let Some(first) = ranges
                    .peek()
                    .map(|&&(b, _)| b.max(out))
                    .filter(|&b| b < end)
                else {
                    blocks.push(Planned {
                        stream: i,
                        out,
                        len: r.uncompressed,
                        part: Part::Kept { offset, record: *r },
                    });
                    continue;
                };
                let header = read_header(input, offset)?;
                if check_of(s.flags).is_none() || filter_flags(&header).is_none() {
                    return Ok(None);
                }
                let check = check_len(s.flags[1] & 0x0f);
                // The last chunk start at or before the first change, if
                // the block is LZMA2 alone and its chunks walk.
                let cut = block_chunks(input, offset, r, check)?.and_then(|b| {
                    let c = chunks::last_at_or_before(&b.chunks, first - out)?;
                    Some((b.data, c))
                });
                let mut from = out;
                if let Some((data, c)) = cut {
                    blocks.push(Planned {
                        stream: i,
                        out,
                        len: c.out,
                        part: Part::Head {
                            header: header.clone(),
                            data,
                            kept: c.at,
                        },
                    });
                    from += c.out;
                }
                let n = (end - from).div_ceil(fresh_block);
                let size = (end - from).div_ceil(n);
                while from < end {
                    let len = size.min(end - from);
                    blocks.push(Planned {
                        stream: i,
                        out: from,
                        len,
                        part: Part::Fresh {
                            header: header.clone(),
                        },
                    });
                    from += len;
                }
            }
        }
        Ok(Some(Sparse {
            input: input.try_clone()?,
            len,
            streams,
            blocks,
        }))
    }

    /// What the rewrite keeps: input blocks kept as they are, of all
    /// input blocks; blocks cut inside (their chunks before the change
    /// kept) and the compressed bytes kept of them; blocks encoded anew
    /// and their raw bytes.
    pub(crate) fn kept(&self) -> Kept {
        let mut k = Kept {
            all: self.streams.iter().map(|s| s.records.len()).sum(),
            ..Kept::default()
        };
        for b in &self.blocks {
            match &b.part {
                Part::Kept { .. } => k.blocks += 1,
                Part::Head { kept, .. } => {
                    k.cut += 1;
                    k.cut_bytes += kept;
                }
                Part::Fresh { .. } => {
                    k.fresh += 1;
                    k.fresh_bytes += b.len;
                }
            }
        }
        k
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
        let mut prev_end = 0;
        let mut next = 0;
        for (i, s) in self.streams.iter().enumerate() {
            // Stream padding before it, and its header.
            pieces.push_back(Piece::Copy {
                from: prev_end,
                len: s.start + 12 - prev_end,
            });
            while self.blocks.get(next).is_some_and(|b| b.stream == i) {
                pieces.push_back(Piece::Block(next));
                next += 1;
            }
            pieces.push_back(Piece::Index(i));
            prev_end = s.end;
        }
        // Padding after the last stream.
        pieces.push_back(Piece::Copy {
            from: prev_end,
            len: self.len - prev_end,
        });
        let k = self.kept();
        tracing::debug!(
            kept = k.blocks,
            all = k.all,
            cut = k.cut,
            cut_bytes = k.cut_bytes,
            fresh = k.fresh,
            fresh_bytes = k.fresh_bytes,
            threads,
            "xz: unchanged blocks kept, changed ones cut at their first change"
        );
        let n = self.blocks.len();
        Ok(SparseWriter {
            sink,
            dir: dir.to_path_buf(),
            threads,
            records: vec![Vec::new(); self.streams.len()],
            pieces,
            done: (0..n).map(|_| None).collect(),
            next: 0,
            at: 0,
            current: None,
            in_flight: 0,
            sparse: self,
        })
    }
}

/// What a rewrite keeps (see [`Sparse::kept`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) blocks: usize,
    pub(crate) all: usize,
    pub(crate) cut: usize,
    pub(crate) cut_bytes: u64,
    pub(crate) fresh: usize,
    pub(crate) fresh_bytes: u64,
}

fn read_header(file: &File, offset: u64) -> io::Result<Vec<u8>> {
    let mut size = [0u8; 1];
    file.read_exact_at(&mut size, offset)?;
    let mut header = vec![0u8; (usize::from(size[0]) + 1) * 4];
    file.read_exact_at(&mut header, offset)?;
    Ok(header)
}

/// The output, in file order.
#[derive(Clone, Copy)]
enum Piece {
    /// Input bytes as they are (stream headers, padding).
    Copy { from: u64, len: u64 },
    /// An output block, by its number.
    Block(usize),
    /// A stream's index and footer.
    Index(usize),
}

/// An output block once the raw image reached it: a new block's encoder
/// thread, or a cut block's check over its bytes.
enum Reached {
    Job(Job),
    Check(Vec<u8>),
}

/// The block being passed through.
struct Current {
    index: usize,
    end: u64,
    feed: Feed,
}

enum Feed {
    /// A kept block: its bytes are dropped.
    Drop,
    /// A cut block: its bytes go into its check.
    Check(BlockCheck),
    /// A new block: its bytes go to its thread.
    Thread {
        tx: SyncSender<Vec<u8>>,
        buf: Vec<u8>,
    },
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
    /// Per output block, what it needs once the raw image passed it.
    done: Vec<Option<Reached>>,
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
        let Some(b) = self.sparse.blocks.get(self.next) else {
            return Err(io::Error::other(
                "the image is longer than the xz file's blocks",
            ));
        };
        let check_id = self.sparse.streams[b.stream].flags[1] & 0x0f;
        let end = b.out + b.len;
        let feed = match &b.part {
            Part::Kept { .. } => Feed::Drop,
            Part::Head { .. } => Feed::Check(
                BlockCheck::new(check_id).ok_or_else(|| io::Error::other("unknown xz check"))?,
            ),
            Part::Fresh { header } => {
                let header = header.clone();
                while self.in_flight >= self.threads {
                    self.drain(true)?;
                }
                let (tx, job) = spawn_encoder(&header, check_id, &self.dir)?;
                self.done[self.next] = Some(Reached::Job(job));
                self.in_flight += 1;
                Feed::Thread {
                    tx,
                    buf: Vec::with_capacity(PIECE),
                }
            }
        };
        self.current = Some(Current {
            index: self.next,
            end,
            feed,
        });
        self.next += 1;
        Ok(())
    }

    /// Ends the current block: a new block's thread finishes it, a cut
    /// block's check is final.
    fn end_block(&mut self) {
        let Some(current) = self.current.take() else {
            return;
        };
        match current.feed {
            Feed::Drop => {}
            Feed::Check(check) => self.done[current.index] = Some(Reached::Check(check.finish())),
            Feed::Thread { tx, buf } => {
                if !buf.is_empty() {
                    // A failed send means the thread stopped: its error
                    // comes with its result.
                    let _ = tx.send(buf);
                }
            }
        }
    }

    /// Writes the pieces at the front that are ready: everything before
    /// the first block not yet passed or (unless `wait`) still being
    /// encoded. With `wait`, waits for the first block being encoded.
    fn drain(&mut self, mut wait: bool) -> io::Result<()> {
        while let Some(&piece) = self.pieces.front() {
            if let Piece::Block(i) = piece {
                // A kept block is the input's bytes, ready from the start;
                // a cut one once its bytes passed; a new one once its
                // bytes were all sent to its thread and the thread is done
                // (or `wait` lets it be waited for).
                let passed = i < self.next && self.current.as_ref().is_none_or(|c| c.index != i);
                match (&self.sparse.blocks[i].part, &self.done[i]) {
                    (Part::Kept { .. }, _) => {}
                    (Part::Head { .. }, Some(Reached::Check(_))) => {}
                    (Part::Fresh { .. }, Some(Reached::Job(job))) if passed => {
                        if !wait && !job.is_finished() {
                            break;
                        }
                        wait = false;
                    }
                    _ => break,
                }
            }
            self.pieces.pop_front();
            self.write_piece(piece)?;
        }
        Ok(())
    }

    fn write_piece(&mut self, piece: Piece) -> io::Result<()> {
        let i = match piece {
            Piece::Copy { from, len } => return self.copy(from, len),
            Piece::Index(stream) => {
                let s = &self.sparse.streams[stream];
                return self
                    .sink
                    .write_all(&index_and_footer(s.flags, &self.records[stream]));
            }
            Piece::Block(i) => i,
        };
        let b = &self.sparse.blocks[i];
        let (stream, len) = (b.stream, b.len);
        let record = match (&b.part, self.done[i].take()) {
            (&Part::Kept { offset, record }, _) => {
                self.copy(offset, record.padded())?;
                record
            }
            (Part::Head { header, data, kept }, Some(Reached::Check(check))) => {
                let (data, kept) = (*data, *kept);
                // The kept chunks and an end marker.
                let compressed = kept + 1;
                let header = with_sizes(header, compressed, len)
                    .ok_or_else(|| io::Error::other("the block header cannot be rewritten"))?;
                self.sink.write_all(&header)?;
                self.copy(data, kept)?;
                self.sink.write_all(&[0])?;
                self.pad_and_check(compressed, &check)?;
                Record {
                    unpadded: header.len() as u64 + compressed + check.len() as u64,
                    uncompressed: len,
                }
            }
            (Part::Fresh { .. }, Some(Reached::Job(job))) => {
                self.in_flight -= 1;
                let done = job
                    .join()
                    .map_err(|_| io::Error::other("an xz block encoder thread panicked"))??;
                let header = done.header();
                self.sink.write_all(&header)?;
                copy_file(&done.data, 0, done.compressed, &mut self.sink)?;
                self.pad_and_check(done.compressed, &done.check)?;
                Record {
                    unpadded: header.len() as u64 + done.compressed + done.check.len() as u64,
                    uncompressed: done.uncompressed,
                }
            }
            _ => unreachable!("drain writes a block once it is ready"),
        };
        self.records[stream].push(record);
        Ok(())
    }

    /// A block's padding after `compressed` bytes of data, and its check.
    fn pad_and_check(&mut self, compressed: u64, check: &[u8]) -> io::Result<()> {
        let pad = (4 - compressed % 4) % 4;
        self.sink.write_all(&[0u8; 3][..pad as usize])?;
        self.sink.write_all(check)
    }

    fn copy(&mut self, from: u64, len: u64) -> io::Result<()> {
        copy_file(&self.sparse.input, from, len, &mut self.sink)
    }

    /// Ends the output: the last blocks, the indexes and the padding.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.end_block();
        let end = self.sparse.blocks.last().map_or(0, |b| b.out + b.len);
        if self.next != self.sparse.blocks.len() || self.at != end {
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
            match &mut current.feed {
                Feed::Drop => {}
                Feed::Check(check) => check.update(&data[..take]),
                Feed::Thread { tx, buf } => {
                    let mut part = &data[..take];
                    while !part.is_empty() {
                        let room = (PIECE - buf.len()).min(part.len());
                        buf.extend_from_slice(&part[..room]);
                        part = &part[room..];
                        if buf.len() == PIECE {
                            let full = std::mem::replace(buf, Vec::with_capacity(PIECE));
                            let _ = tx.send(full);
                        }
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

#[cfg(test)]
mod tests {
    use super::super::fresh::{dict_of, dict_prop};
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

    /// Data that compresses to about half: many LZMA2 chunks (each holds
    /// at most 64 KiB of compressed data).
    fn noisy(n: usize) -> Vec<u8> {
        super::super::test_data::noisy(n, 2000)
    }

    fn changed_at(old: &[u8], changed: &[(u64, u64)]) -> Vec<u8> {
        let mut new = old.to_vec();
        for &(a, b) in changed {
            for x in &mut new[a as usize..b as usize] {
                *x = !*x;
            }
        }
        new
    }

    fn rewrite_in(
        file: &[u8],
        new: &[u8],
        changed: &[(u64, u64)],
        fresh_block: u64,
    ) -> (Vec<u8>, Kept) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.xz");
        std::fs::write(&path, file).unwrap();
        let input = File::open(&path).unwrap();
        let plan = Sparse::plan_in(&input, new.len() as u64, changed, fresh_block)
            .unwrap()
            .unwrap();
        let kept = plan.kept();
        let mut w = plan.writer(Vec::new(), 2, dir.path()).unwrap();
        for piece in new.chunks(7777) {
            w.write_all(piece).unwrap();
        }
        (w.finish().unwrap(), kept)
    }

    fn rewrite(file: &[u8], new: &[u8], changed: &[(u64, u64)]) -> (Vec<u8>, Kept) {
        rewrite_in(file, new, changed, FRESH_BLOCK)
    }

    fn unxz(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut d = liblzma::read::XzDecoder::new_multi_decoder(bytes);
        io::Read::read_to_end(&mut d, &mut out).unwrap();
        out
    }

    /// Per block of a file: file offset, uncompressed offset, record.
    fn blocks_of(file: &[u8]) -> Vec<(u64, u64, Record)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.xz");
        std::fs::write(&p, file).unwrap();
        let streams = layout(&File::open(&p).unwrap(), file.len() as u64)
            .unwrap()
            .unwrap();
        streams
            .iter()
            .flat_map(|s| s.blocks().map(|(o, u, r)| (o, u, *r)).collect::<Vec<_>>())
            .collect()
    }

    /// How many of the input's blocks the output has byte for byte, at
    /// the same uncompressed offset.
    fn same_blocks(input: &[u8], output: &[u8]) -> usize {
        let out = blocks_of(output);
        blocks_of(input)
            .iter()
            .filter(|(o, u, r)| {
                out.iter().any(|(p, v, q)| {
                    v == u
                        && q == r
                        && input[*o as usize..(o + r.padded()) as usize]
                            == output[*p as usize..(p + q.padded()) as usize]
                })
            })
            .count()
    }

    #[test]
    fn only_changed_blocks_are_encoded_again_with_every_check() {
        let old = data(1_000_000);
        let block = 100_000u64;
        for check in [Check::None, Check::Crc32, Check::Crc64, Check::Sha256] {
            let file = xz(&old, block, check);
            // Changes in blocks 0, 4 (across 4 and 5) and 9.
            let changed = [(10u64, 20u64), (499_990, 500_010), (999_999, 1_000_000)];
            let new = changed_at(&old, &changed);
            let (out, kept) = rewrite(&file, &new, &changed);
            assert_eq!((kept.blocks, kept.all), (6, 10), "{check:?}");
            assert_eq!(unxz(&out), new, "{check:?}");
            // The kept blocks are the input's bytes at their places.
            assert_eq!(same_blocks(&file, &out), 6, "{check:?}");
        }
    }

    /// A change late in a block keeps the block's chunks before it (a
    /// 2 MB block of this data has about ten): the block ends at the cut,
    /// with its own sizes and check, and new blocks follow. Fails when no
    /// chunk is kept.
    #[test]
    fn a_change_late_in_a_block_keeps_its_leading_chunks() {
        let old = noisy(4_000_000);
        for check in [Check::None, Check::Crc32, Check::Crc64, Check::Sha256] {
            for file in [xz(&old, 2_000_000, check)] {
                let changed = [(3_700_000u64, 3_700_100u64)];
                let new = changed_at(&old, &changed);
                let (out, kept) = rewrite_in(&file, &new, &changed, 1 << 20);
                assert_eq!(unxz(&out), new, "{check:?}");
                let input = blocks_of(&file);
                let last = input.last().unwrap();
                assert_eq!(kept.cut, 1, "{check:?}");
                // Most of the changed block's data is kept as it was.
                let data_len = last.2.unpadded - 12;
                assert!(kept.cut_bytes * 10 > data_len * 8, "{kept:?} of {data_len}");
                let output = blocks_of(&out);
                let head = output[input.len() - 1];
                assert_eq!(head.1, last.1);
                // The head's LZMA2 data starts with the input block's.
                let (a, b) = (last.0 as usize, head.0 as usize);
                let (ha, hb) = (
                    (usize::from(file[a]) + 1) * 4,
                    (usize::from(out[b]) + 1) * 4,
                );
                let n = kept.cut_bytes as usize;
                assert!(file[a + ha..a + ha + n] == out[b + hb..b + hb + n]);
                // The new blocks after it tile the rest.
                assert!(head.1 + head.2.uncompressed <= 3_700_000);
                let rest = &output[input.len()..];
                assert!(!rest.is_empty());
                let mut at = head.1 + head.2.uncompressed;
                for (_, u, r) in rest {
                    assert_eq!(*u, at);
                    assert!(r.uncompressed <= 1 << 20);
                    at += r.uncompressed;
                }
                assert_eq!(at, old.len() as u64);
            }
        }
    }

    /// The part of a changed block after its cut is split into equal new
    /// blocks of at most the size given, which tile it.
    #[test]
    fn a_changed_block_is_encoded_again_in_smaller_blocks() {
        let old = data(1_000_000);
        let file = xz(&old, 500_000, Check::Crc64);
        let changed = [(0u64, 1u64)];
        let new = changed_at(&old, &changed);
        let (out, kept) = rewrite_in(&file, &new, &changed, 200_000);
        assert_eq!(unxz(&out), new);
        assert_eq!(kept.cut, 0, "nothing precedes the first change");
        assert_eq!((kept.blocks, kept.all, kept.fresh), (1, 2, 3));
        let sizes: Vec<u64> = blocks_of(&out).iter().map(|b| b.2.uncompressed).collect();
        assert_eq!(sizes, [166_667, 166_667, 166_666, 500_000]);
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
        assert_eq!((kept.blocks, kept.all), (7, 8));
        assert_eq!(unxz(&out), new);
        assert_eq!(&out[out.len() - 4..], &[0u8; 4]);
        // Nothing changed: the same bytes.
        let (same, kept) = rewrite(&file, &old, &[]);
        assert_eq!((kept.blocks, kept.all), (8, 8));
        assert_eq!(same, file);
    }

    /// A file of one block is left to `cut.rs`, which continues it as one.
    #[test]
    fn a_single_block_file_is_not_planned() {
        let old = noisy(300_000);
        let file = xz(&old, 1 << 20, Check::Crc64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.xz");
        std::fs::write(&path, file).unwrap();
        let input = File::open(&path).unwrap();
        let plan = Sparse::plan(&input, old.len() as u64, &[(200_000, 200_001)]).unwrap();
        assert!(plan.is_none());
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
