//! The rest of a block cut inside (`cut.rs`): new LZMA2 chunks from a
//! primed encoder, then the block's end (sizes in its header if it has
//! them, padding, check); past the input's block size, new blocks like
//! the input's (`blocks.rs`); then the index of every block and the
//! footer.
//!
//! Past the block size rather than one block to the end: a change early
//! in a large file (a disk image) leaves most of it to rewrite, which new
//! blocks compress on all cores and decoders read on all cores; a tarball
//! whose change is in its last block gets the one block it had.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::Path;

use super::blocks::TailEncoder;
use super::cut::Cut;
use super::layout::{put_vli, Record};
use super::primed::PrimedEncoder;
use super::{vli, Blocks, Span};
use crate::io::output::Scratch;

impl Cut {
    /// The encoder of the rest of the block into `sink`, which holds
    /// [`Cut::kept_as_is`] bytes of the input already; a scratch file in
    /// `scratch_dir` holds the new chunks when the header needs sizes.
    /// Blocks after the cut one use up to `threads` threads.
    pub(crate) fn encoder<W: Write + Send>(
        self,
        sink: W,
        dict: &[u8],
        file: &File,
        scratch_dir: &Path,
        threads: u32,
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
            phase: Phase::Block(Box::new(InBlock {
                lzma: PrimedEncoder::new(target, self.dict_size, dict)?,
                input: file.try_clone()?,
                uncompressed: self.in_block,
                cut: self,
                threads,
            })),
        })
    }
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

/// The cut block being written.
struct InBlock<W: Write> {
    lzma: PrimedEncoder<Target<W>>,
    cut: Cut,
    input: File,
    /// The block's uncompressed bytes so far.
    uncompressed: u64,
    threads: u32,
}

enum Phase<W: Write> {
    Block(Box<InBlock<W>>),
    /// New blocks after the cut one.
    After(Box<TailEncoder<W>>),
    /// Only while switching, or after an error.
    Gone,
}

/// The rest of a cut block, what follows it, the index and the footer.
pub(crate) struct ChunkTail<W: Write> {
    phase: Phase<W>,
}

impl<W: Write + Send> Write for ChunkTail<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            match &mut self.phase {
                Phase::Block(b) => {
                    let room = b
                        .cut
                        .limit
                        .map_or(u64::MAX, |l| l.saturating_sub(b.uncompressed));
                    if room == 0 {
                        let Phase::Block(b) = std::mem::replace(&mut self.phase, Phase::Gone)
                        else {
                            unreachable!("matched above")
                        };
                        let (sink, record, mut cut, threads) = b.end()?;
                        cut.more.kept.push(record);
                        self.phase = Phase::After(Box::new(cut.more.encoder(sink, threads)?));
                        continue;
                    }
                    let n = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                    b.lzma.write_all(&rest[..n])?;
                    b.cut.check.update(&rest[..n]);
                    b.uncompressed += n as u64;
                    rest = &rest[n..];
                }
                Phase::After(tail) => {
                    tail.write_all(rest)?;
                    rest = &[];
                }
                Phase::Gone => return Err(io::Error::other("the xz tail failed before")),
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The block header `header` with its size fields (those it has) set to
/// `compressed` and `uncompressed`, its padding and CRC32 redone.
pub(super) fn with_sizes(header: &[u8], compressed: u64, uncompressed: u64) -> Option<Vec<u8>> {
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

impl<W: Write> InBlock<W> {
    /// Ends the block: its header (when it carries sizes), kept and new
    /// chunks, padding and check; returns the sink and the block's record.
    fn end(self) -> io::Result<(W, Record, Cut, u32)> {
        let InBlock {
            lzma,
            cut,
            input,
            uncompressed,
            threads,
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
                let mut kept = Span {
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
        let check = cut.check.clone().finish();
        sink.write_all(&check)?;
        let record = Record {
            unpadded: header_len + compressed + check.len() as u64,
            uncompressed,
        };
        Ok((sink, record, cut, threads))
    }
}

impl<W: Write + Send> ChunkTail<W> {
    /// Ends the new blocks but not the stream, so that one more block may
    /// follow (pixz's file index, `one_block.rs`).
    pub(crate) fn end_blocks(self) -> io::Result<Blocks<W>> {
        match self.phase {
            Phase::Block(b) => {
                let (sink, record, cut, _) = b.end()?;
                let mut records = cut.more.kept;
                records.push(record);
                Ok(Blocks {
                    sink,
                    records,
                    flags: cut.flags,
                })
            }
            Phase::After(tail) => tail.end_blocks(),
            Phase::Gone => Err(io::Error::other("the xz tail failed before")),
        }
    }

    /// Ends the stream with an index of every block and a footer.
    pub(crate) fn finish(self) -> io::Result<W> {
        self.end_blocks()?.finish()
    }
}

impl<W: Write + Send> super::super::Encoder for ChunkTail<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish().map(drop)
    }
}
