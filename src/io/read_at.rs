//! Positioned reads, the one way every block-level layer reads its input:
//! a file, an image held in memory, a sparse image through its chunk
//! index, or a [`Window`] onto one partition of a disk image.

use std::io;

/// Positioned reads from a raw image, a file or the expansion of a sparse
/// image.
pub trait ReadAt {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// An image held in memory (tests and fuzzing).
impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

impl<R: ReadAt> ReadAt for &R {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// The bytes `[offset, offset + len)` of `inner`, read as a device of its
/// own: a partition inside a disk image. Reads past its end fail, so a
/// filesystem can never reach another partition's bytes.
#[derive(Debug)]
pub struct Window<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: ReadAt> Window<R> {
    pub fn new(inner: R, offset: u64, len: u64) -> Window<R> {
        Window { inner, offset, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Where the window starts in the underlying device.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The device the window looks into.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

impl<R: ReadAt> ReadAt for Window<R> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let _ = end;
        self.inner.read_at(self.offset + offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reads_only_its_own_bytes() {
        let disk: Vec<u8> = (0..100u8).collect();
        let w = Window::new(disk, 10, 20);
        let mut buf = [0u8; 5];
        w.read_at(15, &mut buf).unwrap();
        assert_eq!(buf, [25, 26, 27, 28, 29]);
        assert!(w.read_at(16, &mut buf).is_err());
        assert!(w.read_at(u64::MAX, &mut buf).is_err());
    }
}
