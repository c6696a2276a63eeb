//! Where a raw image's bytes go as they are written front to back: the
//! output file itself (zero runs become holes), a compressor (in the codec
//! layer, `image/compressed/`), and taps that watch the stream on its
//! way (the block map's range digests).

use std::io::{self, Write};

use super::bmap::RangeHasher;
use super::output::TempOutput;

/// A sink for a raw image written in order.
pub trait RawSink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// `len` zero bytes: a hole where the sink can keep one.
    fn skip_zeros(&mut self, len: u64) -> io::Result<()>;
    /// Told before the first byte: the stream will be the input's own
    /// bytes up to `offset` (a sink that can keep those of the input's
    /// encoding may do so).
    fn first_change(&mut self, offset: u64) -> io::Result<()> {
        let _ = offset;
        Ok(())
    }
}

impl RawSink for TempOutput {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        Write::write_all(self, data)
    }

    fn skip_zeros(&mut self, len: u64) -> io::Result<()> {
        TempOutput::skip_zeros(self, len)
    }
}

/// Passes the stream on and hashes the block map's ranges on the way.
pub struct BmapTap<'s> {
    pub inner: &'s mut dyn RawSink,
    pub hasher: RangeHasher,
}

impl RawSink for BmapTap<'_> {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.inner.write_all(data)
    }

    fn skip_zeros(&mut self, len: u64) -> io::Result<()> {
        self.hasher.update_zeros(len);
        self.inner.skip_zeros(len)
    }

    fn first_change(&mut self, offset: u64) -> io::Result<()> {
        self.inner.first_change(offset)
    }
}
