//! The output of a compressed raw image: where the input has a block
//! boundary at or before the first changed byte (for a disk image, the
//! start of the rootfs partition), its compressed bytes up to there are
//! kept as they are and only the rest is compressed, continuing the
//! stream as the tar layer does (gzip: the deflate stream primed with the
//! last bits and the window; bzip2: new blocks after the kept ones; zstd:
//! the kept frame closed at the boundary and a new frame after it; xz: new
//! blocks after the kept ones, or in a single-block file new LZMA2 chunks
//! after the kept ones).
//! A multi-block xz input goes further: every block without a changed
//! byte is kept, not only those before the first change (`xz::Sparse`).
//! Otherwise everything is compressed anew.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::encoders::encoder_for;
use super::expand::MIN_KEPT;
use crate::compress::boundary::Boundary;
use crate::compress::{bzip2 as bz2, gzip, xz, Compression, Encoder};
use crate::io::output::TempOutput;
use crate::io::prefix::{KeepError, PrefixCache};
use crate::io::sink::RawSink;

/// What deciding where the new stream starts needs.
pub(super) struct Start<'a> {
    pub(super) out: &'a mut TempOutput,
    pub(super) input: &'a Path,
    pub(super) codec: Compression,
    /// The raw image's length.
    pub(super) len: u64,
    /// The input's boundaries before partition starts, by `out`.
    pub(super) boundaries: &'a [Boundary],
    pub(super) prefixes: &'a mut PrefixCache,
    /// The raw image's changed byte ranges (sorted `[start, end)`): a
    /// multi-block xz input keeps every block outside them.
    pub(super) changed: &'a [(u64, u64)],
}

/// A raw image compressed as it is written, after a kept prefix.
pub(super) struct Recompressing<'a> {
    state: State<'a>,
    /// Uncompressed bytes the writer has passed on so far.
    at: u64,
    /// The bytes before this are in the kept prefix: dropped as they come.
    kept: u64,
}

enum State<'a> {
    /// Until the writer says where its first change is.
    Waiting(Start<'a>),
    Encoding(Box<dyn Encoder + 'a>),
    /// Only while changing state, or after a failed start.
    Gone,
}

impl<'a> Recompressing<'a> {
    pub(super) fn new(start: Start<'a>) -> Recompressing<'a> {
        Recompressing {
            state: State::Waiting(start),
            at: 0,
            kept: 0,
        }
    }

    /// Starts the output for a first change at `first_change`.
    fn start(&mut self, first_change: u64) -> io::Result<()> {
        let State::Waiting(start) = std::mem::replace(&mut self.state, State::Gone) else {
            return Ok(());
        };
        let start = match sparse_xz(start)? {
            Ok(encoder) => {
                self.state = State::Encoding(encoder);
                return Ok(());
            }
            Err(start) => start,
        };
        let boundary = start
            .boundaries
            .iter()
            .rev()
            .find(|b| b.out() <= first_change && b.out() >= MIN_KEPT);
        let (encoder, kept) = match boundary {
            Some(b) => (continue_after(start, b)?, b.out()),
            None => {
                tracing::debug!(first_change, "compressed raw image: full recompression");
                (
                    encoder_for(start.codec, start.input, start.out, start.len)?,
                    0,
                )
            }
        };
        self.kept = kept;
        self.state = State::Encoding(encoder);
        Ok(())
    }

    fn encoder(&mut self) -> io::Result<&mut Box<dyn Encoder + 'a>> {
        if matches!(self.state, State::Waiting(_)) {
            // Nobody said where the first change is: keep nothing.
            self.start(0)?;
        }
        match &mut self.state {
            State::Encoding(e) => Ok(e),
            _ => Err(io::Error::other("the output stream failed to start")),
        }
    }

    /// How many of `len` bytes starting at `self.at` are in the kept
    /// prefix, which the output already has.
    fn dropped(&self, len: u64) -> u64 {
        self.kept.saturating_sub(self.at).min(len)
    }

    /// Ends the compressed stream (its trailer and checksums).
    pub(super) fn finish(mut self) -> io::Result<()> {
        self.encoder()?;
        match self.state {
            State::Encoding(e) => e.finish_stream(),
            _ => unreachable!("encoder() left an encoder"),
        }
    }
}

/// A multi-block xz input rewritten where it changed (`xz::Sparse`):
/// every block without a changed byte kept, wherever it is. Gives `start`
/// back when that does not apply.
fn sparse_xz<'a>(start: Start<'a>) -> io::Result<Result<Box<dyn Encoder + 'a>, Start<'a>>> {
    if start.codec != Compression::Xz {
        return Ok(Err(start));
    }
    let file = File::open(start.input).map_err(|e| read_error(start.input, e))?;
    let Some(plan) = xz::Sparse::plan(&file, start.len, start.changed)
        .map_err(|e| read_error(start.input, e))?
    else {
        return Ok(Err(start));
    };
    let dir = start.out.dir().to_path_buf();
    let threads = start.codec.workers();
    Ok(Ok(Box::new(plan.writer(start.out, threads, &dir)?)))
}

/// Writes the input's compressed bytes before `b` into the output and
/// returns the encoder that goes on after them.
fn continue_after<'a>(start: Start<'a>, b: &Boundary) -> io::Result<Box<dyn Encoder + 'a>> {
    let Start {
        out,
        input,
        codec,
        len,
        prefixes,
        ..
    } = start;
    let file = File::open(input).map_err(|e| read_error(input, e))?;
    let keep_bits = |prefixes: &mut PrefixCache, out: &mut TempOutput, bit: u64| {
        prefixes.keep_bits(&file, bit, out).map_err(|e| match e {
            KeepError::Read(e) => read_error(input, e),
            KeepError::Write(e) => e,
        })
    };
    let encoder: Box<dyn Encoder + 'a> = match b {
        Boundary::Gzip(b) => {
            let last = keep_bits(prefixes, out, b.bit)?;
            Box::new(gzip::TailDeflater::new(out, b, last, 6)?)
        }
        Boundary::Bzip2(b) => {
            let last = keep_bits(prefixes, out, b.bit)?;
            Box::new(bz2::BlockEncoder::resume(out, b, last))
        }
        Boundary::Xz(b) if b.chunk.is_some() => {
            let len = file.metadata().map_err(|e| read_error(input, e))?.len();
            let mut cut = xz::Cut::at(&file, len, b)
                .map_err(|e| read_error(input, e))?
                .ok_or_else(|| {
                    read_error(
                        input,
                        io::Error::other("the xz file changed while it was read"),
                    )
                })?;
            let keep = cut.kept_as_is();
            let hashed = prefixes
                .state(&file, &[], 0, keep)
                .map_err(|e| read_error(input, e))?;
            out.splice_prefix(&file, keep, hashed)?;
            // The raw image's bytes come from its expanded copy: the
            // decoder is only read up to the cut, for the dictionary and
            // the block's check.
            let primed = cut.prime(&file, None).map_err(|e| read_error(input, e))?;
            let dir = out.dir().to_path_buf();
            let threads = cut.threads_within(codec.workers() as u32, xz::ENCODE_MEMORY);
            Box::new(cut.encoder(out, &primed.dict, &file, &dir, threads)?)
        }
        Boundary::Xz(b) => {
            let len = file.metadata().map_err(|e| read_error(input, e))?.len();
            let more = xz::Continuation::at(&file, len, b)
                .map_err(|e| read_error(input, e))?
                .ok_or_else(|| {
                    read_error(
                        input,
                        io::Error::other("the xz file changed while it was read"),
                    )
                })?;
            let hashed = prefixes
                .state(&file, &[], 0, b.offset)
                .map_err(|e| read_error(input, e))?;
            out.splice_prefix(&file, b.offset, hashed)?;
            let threads = more.threads_within(codec.workers() as u32, xz::ENCODE_MEMORY);
            Box::new(more.encoder(out, threads)?)
        }
        Boundary::Zstd(b) => {
            let (header, end) = b.cut_frame();
            let from = b.header.len as u64;
            let hashed = prefixes
                .state(&file, &header, from, b.offset)
                .map_err(|e| read_error(input, e))?;
            if header.len() as u64 == from {
                // Kept blocks at the offsets the input has them, which
                // lets the kernel share them.
                out.splice_prefix_with_head(&file, b.offset, &header, hashed)?;
            } else {
                Write::write_all(out, &header)?;
                out.splice(&file, from, b.offset - from, hashed)?;
            }
            Write::write_all(out, &end)?;
            encoder_for(codec, input, out, len - b.out)?
        }
    };
    tracing::debug!(
        uncompressed = b.out(),
        codec = codec.name(),
        "compressed raw image: the input's bytes before the boundary kept"
    );
    Ok(encoder)
}

/// The input could not be read while its prefix was kept: carried
/// through the sink's `io::Error` and said as a read error by the backend
/// (see [`InputRead::take`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", path.display())]
pub(super) struct InputRead {
    pub(super) path: PathBuf,
    #[source]
    pub(super) source: io::Error,
}

impl InputRead {
    /// The read error inside `e`, if that is what `e` carries.
    pub(super) fn take(e: io::Error) -> Result<InputRead, io::Error> {
        if !e.get_ref().is_some_and(|inner| inner.is::<InputRead>()) {
            return Err(e);
        }
        let inner = e.into_inner().expect("checked above");
        Ok(*inner.downcast::<InputRead>().expect("checked above"))
    }
}

fn read_error(input: &Path, source: io::Error) -> io::Error {
    io::Error::other(InputRead {
        path: input.to_path_buf(),
        source,
    })
}

impl RawSink for Recompressing<'_> {
    fn first_change(&mut self, offset: u64) -> io::Result<()> {
        self.start(offset)
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let skip = self.dropped(data.len() as u64) as usize;
        self.at += data.len() as u64;
        if skip < data.len() {
            self.encoder()?.write_all(&data[skip..])?;
        }
        Ok(())
    }

    fn skip_zeros(&mut self, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut rest = len - self.dropped(len);
        self.at += len;
        while rest > 0 {
            let n = rest.min(ZEROS.len() as u64) as usize;
            self.encoder()?.write_all(&ZEROS[..n])?;
            rest -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_read_error_comes_back_out_of_the_sink_error() {
        let e = read_error(
            Path::new("/images/in.wic.gz"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        let back = InputRead::take(e).expect("a read error");
        assert_eq!(back.path, Path::new("/images/in.wic.gz"));
        assert_eq!(back.source.raw_os_error(), Some(libc::EIO));
        assert_eq!(back.to_string(), "cannot read /images/in.wic.gz");
        let other = InputRead::take(io::Error::other("disk full")).unwrap_err();
        assert_eq!(other.to_string(), "disk full");
    }
}
