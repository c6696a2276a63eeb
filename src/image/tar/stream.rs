//! The decompressed archive as the scan and the writer read it.

use std::io::{self, Read, Write};
use std::path::Path;

use super::pixz::MAGIC;
use super::speculate::Speculation;
use super::TarError;
use crate::compress::Compression;

/// A reader that counts the decompressed bytes it has produced, and turns
/// decoder failures into a clear error.
pub(super) struct Stream<'a> {
    inner: Box<dyn Read + Send>,
    /// Offset in the decompressed archive of the next byte read.
    pub(super) pos: u64,
    path: &'a Path,
    codec: Compression,
    buf: Vec<u8>,
    /// During a scan of an xz archive: everything read also goes to a
    /// speculative compressor.
    pub(super) speculation: Option<Speculation>,
}

impl<'a> Stream<'a> {
    /// `inner` yields the decompressed archive of `path` from offset `pos`.
    pub(super) fn new(
        inner: Box<dyn Read + Send>,
        pos: u64,
        path: &'a Path,
        codec: Compression,
    ) -> Stream<'a> {
        Stream {
            inner,
            pos,
            path,
            codec,
            buf: Vec::new(),
            speculation: None,
        }
    }

    /// The codec the archive is compressed with.
    pub(super) fn codec(&self) -> Compression {
        self.codec
    }

    fn decode_error(&self, source: io::Error) -> TarError {
        TarError::Decode {
            path: self.path.to_path_buf(),
            codec: self.codec.name(),
            source,
        }
    }

    /// Reads up to `buf.len()` bytes; fewer only at the end of the stream.
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.decode_error(e)),
            }
        }
        self.pos += done as u64;
        if let Some(speculation) = &mut self.speculation {
            if let Err(e) = speculation.feed(&buf[..done]) {
                tracing::debug!(error = %e, "speculative compression stopped");
                self.speculation = None;
            }
        }
        Ok(done)
    }

    pub(super) fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        let at = self.pos;
        if self.fill(buf)? < buf.len() {
            return Err(TarError::Truncated {
                path: self.path.to_path_buf(),
                offset: at,
            });
        }
        Ok(())
    }

    /// Reads and drops `len` bytes.
    pub(super) fn skip(&mut self, len: u64) -> Result<(), TarError> {
        self.pass(len, None)
    }

    /// Copies `len` bytes to `sink`, which writes to the file `sink_path`.
    pub(super) fn copy_to(
        &mut self,
        len: u64,
        sink: &mut dyn Write,
        sink_path: &Path,
    ) -> Result<(), TarError> {
        self.pass(len, Some((sink, sink_path)))
    }

    fn pass(
        &mut self,
        mut len: u64,
        mut sink: Option<(&mut dyn Write, &Path)>,
    ) -> Result<(), TarError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 20, 0);
        let mut result = Ok(());
        while len > 0 && result.is_ok() {
            let want = len.min(buf.len() as u64) as usize;
            result = self
                .read_exact(&mut buf[..want])
                .and_then(|_| match sink.as_mut() {
                    Some((s, path)) => {
                        s.write_all(&buf[..want]).map_err(|source| TarError::Write {
                            path: path.to_path_buf(),
                            source,
                        })
                    }
                    None => Ok(()),
                });
            len -= want as u64;
        }
        self.buf = buf;
        result
    }

    /// Reads to the end, returning how many bytes were left.
    pub(super) fn drain(&mut self) -> Result<u64, TarError> {
        let start = self.pos;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 20, 0);
        let result = loop {
            match self.fill(&mut buf) {
                Ok(0) => break Ok(self.pos - start),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        result
    }

    /// Reads block by block, as after the end-of-archive marker, to the
    /// first block that is not all zeros: its offset, what it is and its
    /// bytes. What follows is read to the end, except after pixz's file
    /// index, whose reader goes on from there.
    pub(super) fn first_data_after(
        &mut self,
    ) -> Result<Option<(u64, AfterEnd, Vec<u8>)>, TarError> {
        let mut block = [0u8; 512];
        loop {
            let at = self.pos;
            let n = self.fill(&mut block)?;
            if n == 0 {
                return Ok(None);
            }
            if block[..n].iter().any(|&b| b != 0) {
                let what = if n == block.len() && super::header::checksum_ok(&block) {
                    AfterEnd::Archive
                } else if block[..n].starts_with(&MAGIC) {
                    AfterEnd::PixzIndex
                } else {
                    AfterEnd::Data
                };
                if what != AfterEnd::PixzIndex {
                    self.drain()?;
                }
                return Ok(Some((at, what, block[..n].to_vec())));
            }
        }
    }
}

/// What follows a tar's end-of-archive marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterEnd {
    /// A tar header: a second archive joined on.
    Archive,
    /// pixz's file index (`pixz.rs`), which `pixz -l` and `pixz -x` read.
    PixzIndex,
    /// Anything else, such as an appended signature.
    Data,
}
