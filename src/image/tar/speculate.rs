//! Compressing an xz archive's entries while the scan reads them: for a
//! single-block xz archive behind a BCJ or delta filter, which cannot be
//! cut inside its block (LZMA2 alone can: `compress/xz/cut.rs`).
//!
//! Recompressing an xz archive costs a full decompression and compression
//! whatever imprint does, but not two decompressions: while the scan
//! decompresses, it also compresses what it reads, as one stream in a
//! scratch file. When the plan only appends at the end of the entries (no
//! existing file replaced: the factory case), that stream is exactly the
//! output's prefix, and the output is that stream followed by a second one
//! holding the new entries and the end-of-archive marker. Decoders read
//! concatenated streams as one archive.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::io::sha256::Sha256;

use super::BLOCK;
use crate::compress::{Compression, Encoder};
use crate::io::output::Scratch;

/// A prefix stream being compressed. The bytes read last (one tar block)
/// are held back, because the scan only knows a block is the
/// end-of-archive marker after reading it.
pub(super) struct Speculation {
    scratch: Scratch,
    encoder: Option<Box<dyn Encoder>>,
    written: Arc<Mutex<(Sha256, u64)>>,
    held: Vec<u8>,
    emitted: u64,
}

/// A finished speculative prefix stream.
pub(super) struct Speculated {
    pub(super) scratch: Scratch,
    /// Uncompressed bytes it holds: the archive up to its end of entries.
    pub(super) uncompressed: u64,
    pub(super) compressed: u64,
    pub(super) sha256: Sha256,
}

impl std::fmt::Debug for Speculated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Speculated({} -> {})",
            self.uncompressed, self.compressed
        )
    }
}

/// Counts and hashes what the speculative compressor writes.
struct HashingFile {
    file: File,
    written: Arc<Mutex<(Sha256, u64)>>,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        let mut w = crate::sync::lock(&self.written);
        w.0.update(&buf[..n]);
        w.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Speculation {
    /// Starts a stream in a scratch file `name` in `dir`.
    /// The stream keeps `input`'s check type.
    pub(super) fn start(
        codec: Compression,
        input: &File,
        dir: &Path,
        name: &str,
    ) -> io::Result<Speculation> {
        let scratch = Scratch::create_in(dir, name)?;
        let written = Arc::new(Mutex::new((Sha256::new(), 0)));
        let sink = HashingFile {
            file: scratch.file().try_clone()?,
            written: written.clone(),
        };
        Ok(Speculation {
            scratch,
            encoder: Some(codec.encoder_like(sink, input)?),
            written,
            held: Vec::with_capacity(BLOCK as usize),
            emitted: 0,
        })
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        let encoder = self
            .encoder
            .as_mut()
            .ok_or_else(|| io::Error::other("finished"))?;
        encoder.write_all(data)?;
        self.emitted += data.len() as u64;
        Ok(())
    }

    /// Takes the next bytes the scan read.
    pub(super) fn feed(&mut self, data: &[u8]) -> io::Result<()> {
        let hold = BLOCK as usize;
        if data.len() >= hold {
            let held = std::mem::take(&mut self.held);
            self.emit(&held)?;
            self.emit(&data[..data.len() - hold])?;
            self.held.extend_from_slice(&data[data.len() - hold..]);
        } else {
            self.held.extend_from_slice(data);
            if self.held.len() > hold {
                let extra = self.held.len() - hold;
                let front: Vec<u8> = self.held.drain(..extra).collect();
                self.emit(&front)?;
            }
        }
        Ok(())
    }

    /// Ends the stream after the first `end` bytes of the archive.
    pub(super) fn end_at(mut self, end: u64) -> io::Result<Speculated> {
        let rest = end
            .checked_sub(self.emitted)
            .filter(|&n| n <= self.held.len() as u64)
            .ok_or_else(|| io::Error::other("the end is not in the held-back bytes"))?;
        let held = std::mem::take(&mut self.held);
        self.emit(&held[..rest as usize])?;
        let encoder = self
            .encoder
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        encoder.finish_stream()?;
        let (sha256, compressed) = crate::sync::lock(&self.written).clone();
        Ok(Speculated {
            scratch: self.scratch,
            uncompressed: end,
            compressed,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Whatever the reads' sizes, the stream holds exactly the bytes up to
    /// the end given, and its count and digest are those of the file.
    #[test]
    fn the_prefix_stream_ends_where_told() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in [1usize, 100, 512, 513, 4096] {
            let mut s = Speculation::start(
                Compression::Xz,
                &File::open("/dev/null").unwrap(),
                dir.path(),
                "p",
            )
            .unwrap();
            for part in data.chunks(chunk) {
                s.feed(part).unwrap();
            }
            let end = data.len() as u64 - 300;
            let done = s.end_at(end).unwrap();
            assert_eq!(done.uncompressed, end);
            let compressed = std::fs::read(done.scratch.path()).unwrap();
            assert_eq!(compressed.len() as u64, done.compressed);
            assert_eq!(done.sha256.finalize()[..], Sha256::digest(&compressed)[..]);
            let mut plain = Vec::new();
            let file = File::open(done.scratch.path()).unwrap();
            Compression::Xz
                .decoder(file)
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(plain, data[..end as usize], "reads of {chunk}");
        }
    }

    #[test]
    fn an_end_already_compressed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Speculation::start(
            Compression::Xz,
            &File::open("/dev/null").unwrap(),
            dir.path(),
            "p",
        )
        .unwrap();
        s.feed(&[1u8; 4096]).unwrap();
        assert!(s.end_at(100).is_err());
    }
}
