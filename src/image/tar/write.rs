//! Writing the output: the input's bytes before the first change kept as
//! they are where the codec allows, then a tail that streams the edit list through
//! the codec's encoder.
//!
//! Plain tar copies its prefix; gzip and bzip2 keep the compressed bytes
//! before a block boundary and continue the stream from there; zstd keeps
//! its blocks before one and writes the rest as raw blocks; xz keeps its
//! blocks before one, or in a single-block file its LZMA2 chunks before
//! one (and with a BCJ filter, the stream compressed during the scan, to
//! which it appends a second one). Anything else, and every input when a
//! full rewrite is asked for, is decompressed and compressed whole; but a
//! pixz tarball is always continued in its own stream, at its first block
//! at the latest, since its new file index (`pixz.rs`) must be that
//! stream's last block.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::edit::{self, Piece};
use super::pixz;
use super::scan::Scan;
use super::speculate::Speculated;
use super::stream::Stream;
use super::TarError;
use crate::compress::boundary::Boundary;
use crate::compress::{bzip2 as bz2, gzip, xz, zstd as zst, Compression, Tail};
use crate::io::output::TempOutput;
use crate::io::prefix::{KeepError, PrefixCache};
use crate::io::progress;

/// The input archive as the writer reads it.
pub(super) struct Input<'a> {
    pub(super) path: &'a Path,
    pub(super) codec: Compression,
    pub(super) scan: &'a Scan,
}

/// Where the tail starts instead of at byte 0.
enum TailStart<'a> {
    /// xz: keep the stream compressed during the scan.
    Speculated(&'a Speculated),
    /// Plain tar: copy the unchanged prefix as it is.
    Plain,
    /// gzip: keep the compressed bytes before this block boundary.
    Gzip(gzip::Boundary),
    /// bzip2: keep the blocks before this one.
    Bzip2(bz2::Boundary),
    /// zstd: keep the blocks before this one; the rest goes raw.
    Zstd(zst::Boundary),
    /// xz: keep the blocks before this one; new blocks like them follow.
    Xz(xz::Boundary),
}

/// For the debug log.
fn describe(start: &Option<TailStart>) -> String {
    match start {
        Some(TailStart::Plain) => "plain prefix copy".to_string(),
        Some(TailStart::Gzip(b)) => {
            format!("gzip tail from bit {} (byte {} of output)", b.bit, b.out)
        }
        Some(TailStart::Bzip2(b)) => {
            format!("bzip2 tail from bit {} (byte {} of output)", b.bit, b.out)
        }
        Some(TailStart::Zstd(b)) => format!(
            "zstd blocks kept up to byte {}, raw blocks from byte {} of output",
            b.offset, b.out
        ),
        Some(TailStart::Xz(b)) => match b.chunk {
            Some(c) => format!(
                "xz block cut at its LZMA2 chunk at byte {} of its data, new chunks from byte {} of output",
                c.at, b.out
            ),
            None => format!(
                "xz blocks kept up to byte {}, new blocks from byte {} of output",
                b.offset, b.out
            ),
        },
        Some(TailStart::Speculated(s)) => format!(
            "xz stream of {} bytes kept, new stream from byte {}",
            s.compressed, s.uncompressed
        ),
        None => "full rewrite".to_string(),
    }
}

/// Picks where the tail starts, given the first byte the edit list
/// changes; `None` is a full rewrite.
fn tail_start<'a>(
    codec: Compression,
    scan: &'a Scan,
    pieces: &[Piece],
    first_change: u64,
) -> Option<TailStart<'a>> {
    match codec.facts().tail {
        Tail::Plain => Some(TailStart::Plain),
        Tail::Rewrite => None,
        Tail::Boundaries { .. } => {
            let boundary = scan
                .boundaries
                .as_ref()
                .and_then(|b| {
                    b.iter()
                        .filter(|b| b.out() <= first_change)
                        .max_by_key(|b| b.out())
                })
                .filter(|b| b.out() > 0);
            let Some(boundary) = boundary else {
                // A single-block xz stream was compressed as it was read.
                return scan
                    .speculated
                    .as_ref()
                    .filter(|s| s.uncompressed == first_change)
                    .map(TailStart::Speculated);
            };
            match boundary {
                Boundary::Xz(b) => Some(TailStart::Xz(*b)),
                Boundary::Gzip(b) => Some(TailStart::Gzip(b.clone())),
                Boundary::Bzip2(b) => Some(TailStart::Bzip2(b.clone())),
                // The raw tail holds new bytes and the kept block's own:
                // every input byte it copies must lie in that block.
                Boundary::Zstd(b) => {
                    let held = b.out + b.data.len() as u64;
                    pieces
                        .iter()
                        .all(|p| match p {
                            Piece::Copy { end, .. } => *end <= held,
                            Piece::Insert(_) => true,
                        })
                        .then(|| TailStart::Zstd(b.clone()))
                }
            }
        }
    }
}

/// Writes the input with `pieces` applied into `out`.
pub(super) fn write(
    input: &Input,
    pieces: &[Piece],
    out: &mut TempOutput,
    prefixes: &mut PrefixCache,
    cuts: &mut xz::CutStates,
    full_rewrite: bool,
) -> Result<(), TarError> {
    let (path, codec, scan) = (input.path, input.codec, input.scan);
    let read_err = |source| TarError::Read {
        path: path.to_path_buf(),
        source,
    };
    let out_path = out.final_path().to_path_buf();
    let write_err = |source| TarError::Write {
        path: out_path.clone(),
        source,
    };
    let file = File::open(path).map_err(|source| TarError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    progress::start("writing", file.metadata().map_err(read_err)?.len());
    let stream = |inner: Box<dyn Read + Send>, pos: u64| Stream::new(inner, pos, path, codec);
    let first_change = edit::first_change(pieces);
    let start = if full_rewrite {
        None
    } else {
        tail_start(codec, scan, pieces, first_change)
    };
    // pixz's file index goes in the stream's last block: the tail is new
    // blocks in the input's stream, from its first block at the latest.
    let start = match start {
        // pixz reading from a pipe cannot step over a block whose header
        // lacks its sizes (it seeks), and a cut block keeps its input's
        // header kind: such a block is rewritten from its start.
        Some(TailStart::Xz(b)) if scan.pixz_index.is_some() && b.chunk.is_some() => {
            match xz::block_of(&file, &b).map_err(read_err)? {
                Some((block, false)) => Some(TailStart::Xz(block)),
                _ => Some(TailStart::Xz(b)),
            }
        }
        Some(TailStart::Xz(b)) => Some(TailStart::Xz(b)),
        _ if scan.pixz_index.is_some() => Some(TailStart::Xz(xz::FIRST_BLOCK)),
        start => start,
    };
    tracing::debug!(
        first_change,
        pieces = pieces.len(),
        rewrite = describe(&start),
        "tar plan"
    );
    match start {
        Some(TailStart::Plain) => {
            let hashed = match scan.prefix_states.iter().find(|p| p.len == first_change) {
                Some(p) => p.state.clone(),
                None => prefixes
                    .state(&file, &[], 0, first_change)
                    .map_err(read_err)?,
            };
            out.splice_prefix(&file, first_change, hashed)
                .map_err(write_err)?;
            let mut rest = file.try_clone().map_err(read_err)?;
            rest.seek(SeekFrom::Start(first_change)).map_err(read_err)?;
            let mut input = stream(
                Box::new(BufReader::with_capacity(1 << 20, rest)),
                first_change,
            );
            write_pieces(&mut input, pieces, out, &out_path)?;
        }
        Some(TailStart::Gzip(boundary)) => {
            let last = keep_bits(prefixes, &file, path, boundary.bit, out)?;
            let tail = gzip::TailInflater::new(file.try_clone().map_err(read_err)?, &boundary)
                .map_err(read_err)?;
            let mut input = stream(Box::new(tail), boundary.out);
            let mut deflater =
                gzip::TailDeflater::new(&mut *out, &boundary, last, 6).map_err(write_err)?;
            write_pieces(&mut input, pieces, &mut deflater, &out_path)?;
            deflater.finish().map_err(write_err)?;
        }
        Some(TailStart::Speculated(prefix)) => {
            out.splice_prefix(
                prefix.scratch.file(),
                prefix.compressed,
                prefix.sha256.clone(),
            )
            .map_err(write_err)?;
            // Everything from the first change on is new bytes: nothing
            // more of the input is read.
            let mut input = stream(Box::new(io::empty()), first_change);
            let mut encoder = codec.encoder_like(&mut *out, &file).map_err(write_err)?;
            write_pieces(&mut input, pieces, &mut encoder, &out_path)?;
            encoder.finish_stream().map_err(write_err)?;
        }
        Some(TailStart::Zstd(boundary)) => {
            let new_len: u64 = pieces.iter().map(Piece::len).sum();
            let header = boundary.header.with_content_size(new_len);
            let from = boundary.header.len as u64;
            let hashed = prefixes
                .state(&file, &header, from, boundary.offset)
                .map_err(read_err)?;
            if header.len() as u64 == from {
                // Same length: the kept blocks stay where the input has
                // them, which lets the kernel share them.
                out.splice_prefix_with_head(&file, boundary.offset, &header, hashed)
                    .map_err(write_err)?;
            } else {
                out.write_all(&header).map_err(write_err)?;
                out.splice(&file, from, boundary.offset - from, hashed)
                    .map_err(write_err)?;
            }
            // The block that holds the first change was kept whole by the
            // scan.
            let block = io::Cursor::new(boundary.data.as_ref().clone());
            let mut input = stream(Box::new(block), boundary.out);
            let mut tail = zst::TailWriter::new(&mut *out, &boundary, new_len);
            write_pieces(&mut input, pieces, &mut tail, &out_path)?;
            tail.finish().map_err(write_err)?;
        }
        Some(TailStart::Xz(boundary)) if boundary.chunk.is_some() => {
            let len = file.metadata().map_err(read_err)?.len();
            let Some(mut cut) = xz::Cut::at(&file, len, &boundary).map_err(read_err)? else {
                return Err(read_err(io::Error::other(
                    "the xz file changed while it was being rewritten",
                )));
            };
            let keep = cut.kept_as_is();
            let hashed = prefixes.state(&file, &[], 0, keep).map_err(read_err)?;
            out.splice_prefix(&file, keep, hashed).map_err(write_err)?;
            let primed = cut.prime(&file, cuts.find(&boundary)).map_err(read_err)?;
            let mut input = stream(primed.input, boundary.out);
            let scratch_dir = out.dir().to_path_buf();
            let mut encoder = cut
                .encoder(
                    &mut *out,
                    &primed.dict,
                    &file,
                    &scratch_dir,
                    codec.workers() as u32,
                )
                .map_err(write_err)?;
            drop(primed.dict);
            write_pieces(&mut input, pieces, &mut encoder, &out_path)?;
            match scan.pixz_index {
                Some(index_at) => {
                    let mut blocks = encoder.end_blocks().map_err(write_err)?;
                    let mut block = blocks.block().map_err(write_err)?;
                    pixz::rebuild(&mut input, index_at, pieces, &mut block, path, &out_path)?;
                    block.finish().map_err(write_err)?;
                    blocks.finish().map_err(write_err)?;
                }
                None => {
                    encoder.finish().map_err(write_err)?;
                }
            }
            // A later run with this cut starts from what decoding gave.
            if let Some(fresh) = primed.fresh {
                cuts.add(fresh.state());
            }
        }
        Some(TailStart::Xz(boundary)) => {
            let len = file.metadata().map_err(read_err)?.len();
            let Some(more) = xz::Continuation::at(&file, len, &boundary).map_err(read_err)? else {
                // The scan read this layout; the file changed under us.
                return Err(read_err(io::Error::other(
                    "the xz file changed while it was being rewritten",
                )));
            };
            let hashed = prefixes
                .state(&file, &[], 0, boundary.offset)
                .map_err(read_err)?;
            out.splice_prefix(&file, boundary.offset, hashed)
                .map_err(write_err)?;
            let tail = more.input(&file).map_err(read_err)?;
            let mut input = stream(tail, boundary.out);
            let mut encoder = more
                .encoder(&mut *out, codec.workers() as u32)
                .map_err(write_err)?;
            write_pieces(&mut input, pieces, &mut encoder, &out_path)?;
            match scan.pixz_index {
                Some(index_at) => {
                    let mut blocks = encoder.end_blocks().map_err(write_err)?;
                    let mut block = blocks.block().map_err(write_err)?;
                    pixz::rebuild(&mut input, index_at, pieces, &mut block, path, &out_path)?;
                    block.finish().map_err(write_err)?;
                    blocks.finish().map_err(write_err)?;
                }
                None => {
                    encoder.finish().map_err(write_err)?;
                }
            }
        }
        Some(TailStart::Bzip2(boundary)) => {
            // A file of its own: a clone would share its offset with the
            // hashing thread's reads.
            let mut rest = File::open(path).map_err(read_err)?;
            rest.seek(SeekFrom::Start(boundary.bit / 8))
                .map_err(read_err)?;
            // The kept prefix is hashed while the tail is recompressed.
            std::thread::scope(|scope| {
                let keep_err = |e| keep_error(e, path, &out_path);
                let (last, mut after) = prefixes
                    .keep_bits_hashing(scope, &file, boundary.bit, out)
                    .map_err(keep_err)?;
                let (tail, _) = bz2::ParallelDecoder::new(rest, Some(boundary.clone()));
                let mut input = stream(Box::new(tail), boundary.out);
                let mut encoder = bz2::BlockEncoder::resume(&mut after, &boundary, last);
                let written = write_pieces(&mut input, pieces, &mut encoder, &out_path)
                    .and_then(|()| encoder.finish().map(drop).map_err(write_err));
                if let Err(e) = written {
                    return Err(after.read_error().map_or(e, read_err));
                }
                after.finish().map_err(keep_err)
            })?;
        }
        None => {
            let mut encoder = codec.encoder_like(&mut *out, &file).map_err(write_err)?;
            let mut input = stream(codec.decoder(file), 0);
            write_pieces(&mut input, pieces, &mut encoder, &out_path)?;
            encoder.finish_stream().map_err(write_err)?;
        }
    }
    Ok(())
}

/// Starts `out` with the input's bytes before bit `bit` (see
/// [`PrefixCache::keep_bits`]).
fn keep_bits(
    prefixes: &mut PrefixCache,
    file: &File,
    path: &Path,
    bit: u64,
    out: &mut TempOutput,
) -> Result<u8, TarError> {
    let out_path = out.final_path().to_path_buf();
    prefixes
        .keep_bits(file, bit, out)
        .map_err(|e| keep_error(e, path, &out_path))
}

fn keep_error(e: KeepError, path: &Path, out_path: &Path) -> TarError {
    match e {
        KeepError::Read(source) => TarError::Read {
            path: path.to_path_buf(),
            source,
        },
        KeepError::Write(source) => TarError::Write {
            path: out_path.to_path_buf(),
            source,
        },
    }
}

/// Streams the edit list from `input` (which may start part-way, at
/// `input.pos`) into `sink`, which writes the output `out_path`.
fn write_pieces(
    input: &mut Stream,
    pieces: &[Piece],
    sink: &mut dyn Write,
    out_path: &Path,
) -> Result<(), TarError> {
    for piece in pieces {
        match piece {
            Piece::Copy { start, end } => {
                if *end <= input.pos {
                    continue;
                }
                let start = (*start).max(input.pos);
                input.skip(start - input.pos)?;
                input.copy_to(end - start, sink, out_path)?;
            }
            Piece::Insert(bytes) => sink.write_all(bytes).map_err(|source| TarError::Write {
                path: out_path.to_path_buf(),
                source,
            })?,
        }
    }
    Ok(())
}
