//! The parallel reader: the scanner cuts the file into blocks, workers
//! decode them, and the reader hands their output on in file order.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};

use super::inverse::BlockDecoder;
use super::scan::Scanner;
use super::workers::{stopped, Workers};
use super::{Boundary, SharedIndex};
use crate::compress::{invalid_data, worker_count};

/// Decoded output is handed over in pieces (`inverse::PIECE`), a few per
/// block at a time, so memory stays small even for blocks that decode to
/// 45 MB (bzip2's run-length step turns a run of 255 bytes into 5).
const PIECES_IN_FLIGHT: usize = 4;

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
    /// The block as a one-block stream.
    stream: Vec<u8>,
    /// Where the block starts in the file, for error messages.
    byte: u64,
    pieces: SyncSender<Piece>,
}

fn decode_block(job: DecodeJob) {
    thread_local! {
        // Each worker keeps its decoder's buffers from block to block.
        static DECODER: RefCell<BlockDecoder> = RefCell::default();
    }
    let result = DECODER.with_borrow_mut(|d| {
        d.decode_stream(&job.stream, |piece| {
            job.pieces.send(Piece::Data(piece)).is_ok()
        })
    });
    let last = match result {
        Ok(()) => Piece::End,
        Err(e) => Piece::Failed(invalid_data(format!(
            "the bzip2 block at byte {} is corrupt ({e})",
            job.byte
        ))),
    };
    let _ = job.pieces.send(last);
}

/// The scanner's thread: each block goes to a worker, and its place in
/// the order to the reader.
fn scan_blocks<R: Read>(
    mut scanner: Scanner<R>,
    jobs: SyncSender<DecodeJob>,
    next: SyncSender<Next>,
) {
    loop {
        match scanner.next_block() {
            Ok(Some(block)) => {
                let (tx, rx) = mpsc::sync_channel(PIECES_IN_FLIGHT);
                let byte = block.start.bit / 8;
                let in_order = Next::Block {
                    start: block.start,
                    pieces: rx,
                };
                let job = DecodeJob {
                    stream: block.stream,
                    byte,
                    pieces: tx,
                };
                if next.send(in_order).is_err() || jobs.send(job).is_err() {
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
    /// Uncompressed bytes handed on so far (from the file's start).
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
        let n = worker_count();
        let mut workers = Workers::start(n, decode_block);
        let (next_tx, next_rx) = mpsc::sync_channel(2 * n);
        let out = from.as_ref().map_or(0, |b| b.out);
        let scanner = Scanner::new(input, from.as_ref());
        workers.feed_from(move |jobs| scan_blocks(scanner, jobs, next_tx));
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

    /// Reads `file` from its start, counting the progress.
    pub fn open(file: File) -> (ParallelDecoder, SharedIndex) {
        Self::new(crate::io::progress::Reader(file), None)
    }
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
                    let mut index = crate::sync::lock(&self.index);
                    index.recent.push(start);
                    self.current = Some(pieces);
                }
                Next::End => self.done = true,
                Next::Failed(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data::{encode, parallel, sample, sample_runs, sequential};
    use super::super::BlockEncoder;
    use super::*;
    use std::io::Write;

    #[test]
    fn parallel_reader_reads_libbz2_and_multi_stream_files() {
        let data = sample_runs(2_500_000, 20);
        let mut e = ::bzip2::write::BzEncoder::new(Vec::new(), ::bzip2::Compression::new(1));
        e.write_all(&data[..1_000_000]).unwrap();
        let mut stream = e.finish().unwrap();
        let mut e = ::bzip2::write::BzEncoder::new(Vec::new(), ::bzip2::Compression::new(2));
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
            let mut kept = stream[..keep].to_vec();
            let last = stream[keep];
            let mut e = BlockEncoder::resume(&mut kept, b, last);
            e.write_all(&tail).unwrap();
            e.finish().unwrap();
            let mut want = data[..b.out as usize].to_vec();
            want.extend_from_slice(&tail);
            assert!(sequential(&kept) == want, "resumed at bit {}", b.bit);
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
