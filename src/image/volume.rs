//! Containers as block devices: a [`Volume`] is the bytes a container
//! gives the layer inside it (the filesystem, or another container), and
//! the way a block that layer changed goes back out.
//!
//! Volumes stack: a file (or the scratch file a codec expanded), an
//! Android sparse image read through its chunk index, a [`Window`] onto one
//! partition of a disk, a container that transforms bytes (LUKS: sectors
//! decrypted on the way in, changed blocks encrypted on the way out). The
//! bottom of the stack is the *base*, the bytes the output is made from;
//! [`Volume::carry_out`] walks a changed block from the top of the stack
//! down to the base, transformed by every layer on the way, and the base's
//! [`Outlet`](super::formats::Outlet) writes the output from the blocks
//! that arrive there: patched into a copy of the file, or spliced into the
//! sparse image's chunks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::io::read_at::{ReadAt, Window};

/// The bytes a container gives the layer inside it, as a block device.
pub(crate) trait Volume: ReadAt + Send + Sync {
    /// How many bytes the inner layer sees.
    fn len(&self) -> u64;

    /// Every block the inner layer writes is a whole number of these bytes,
    /// aligned to them (an encryption sector, a sparse block); 1 when any
    /// block will do.
    fn unit(&self) -> u64 {
        1
    }

    /// Carries a block the inner layer changed at `offset` out to the
    /// base: turns `data` in place into the bytes stored there (they stay
    /// as they are unless this layer transforms bytes) and returns the
    /// offset in the base they go to.
    fn carry_out(&self, offset: u64, data: &mut [u8]) -> io::Result<u64>;

    /// Where the inner layer's bytes sit unchanged in the base file, if
    /// they do (a raw image, a partition of a disk image): e2fsck can then
    /// read them there (`FILE?offset=N`).
    fn plain_at(&self) -> Option<u64> {
        None
    }

    /// Writes the inner layer's first `limit` bytes (at most its length)
    /// into the empty file `out`, zero runs left as holes (e2fsck reads a
    /// raw file; see `plain_at`). The limit is the filesystem's own size:
    /// a container may claim far more than its filesystem holds.
    fn expand_into(&self, out: &File, limit: u64) -> io::Result<()> {
        let len = self.len().min(limit);
        out.set_len(len)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            self.read_at(at, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                out.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
        Ok(())
    }
}

/// A whole file as a volume: the base of a raw image, a disk image, or the
/// scratch file a compressed image was expanded into.
pub(crate) struct FileVolume {
    file: File,
    len: u64,
}

impl FileVolume {
    pub(crate) fn new(file: File, len: u64) -> FileVolume {
        FileVolume { file, len }
    }
}

impl ReadAt for FileVolume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl Volume for FileVolume {
    fn len(&self) -> u64 {
        self.len
    }

    fn carry_out(&self, offset: u64, _: &mut [u8]) -> io::Result<u64> {
        Ok(offset)
    }

    fn plain_at(&self) -> Option<u64> {
        Some(0)
    }
}

/// A partition: the bytes of the volume below, shifted.
impl<V: Volume> Volume for Window<V> {
    fn len(&self) -> u64 {
        Window::len(self)
    }

    fn unit(&self) -> u64 {
        self.inner().unit()
    }

    fn carry_out(&self, offset: u64, data: &mut [u8]) -> io::Result<u64> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|end| end > Window::len(self)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a changed block lies outside its partition",
            ));
        }
        self.inner().carry_out(self.offset() + offset, data)
    }

    fn plain_at(&self) -> Option<u64> {
        self.inner().plain_at().map(|at| at + self.offset())
    }
}

impl ReadAt for Box<dyn Volume> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl Volume for Box<dyn Volume> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn unit(&self) -> u64 {
        (**self).unit()
    }
    fn carry_out(&self, offset: u64, data: &mut [u8]) -> io::Result<u64> {
        (**self).carry_out(offset, data)
    }
    fn plain_at(&self) -> Option<u64> {
        (**self).plain_at()
    }
    fn expand_into(&self, out: &File, limit: u64) -> io::Result<()> {
        (**self).expand_into(out, limit)
    }
}

/// A base shared by the volume stack (which reads it) and the outlet
/// (which writes the output from it), as a sparse image is.
impl<V: ReadAt + ?Sized> ReadAt for Arc<V> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<V: Volume + ?Sized> Volume for Arc<V> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn unit(&self) -> u64 {
        (**self).unit()
    }
    fn carry_out(&self, offset: u64, data: &mut [u8]) -> io::Result<u64> {
        (**self).carry_out(offset, data)
    }
    fn plain_at(&self) -> Option<u64> {
        (**self).plain_at()
    }
    fn expand_into(&self, out: &File, limit: u64) -> io::Result<()> {
        (**self).expand_into(out, limit)
    }
}

/// Changed blocks as they arrived at the base: the bytes stored there, by
/// offset in the base, sorted and not overlapping. They may hold
/// device.conf, password included: overwritten before they are freed.
#[derive(Default)]
pub(crate) struct Changes {
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Changes {
    /// Carries `written` (the inner layer's changed blocks, by offset in
    /// `volume`) out through `volume` to its base.
    pub(crate) fn carry(
        volume: &dyn Volume,
        written: impl IntoIterator<Item = (u64, Box<[u8]>)>,
    ) -> io::Result<Changes> {
        let mut changes = Changes::default();
        let mut failed = None;
        for (offset, mut data) in written {
            if failed.is_some() {
                zeroize::Zeroize::zeroize(&mut *data);
                continue;
            }
            match volume.carry_out(offset, &mut data) {
                Ok(at) => failed = changes.insert(at, data).err(),
                Err(e) => {
                    zeroize::Zeroize::zeroize(&mut *data);
                    failed = Some(e);
                }
            }
        }
        failed.map_or(Ok(changes), Err)
    }

    /// Adds another filesystem's changes (several partitions of one disk
    /// stamped into one output).
    pub(crate) fn extend(&mut self, mut other: Changes) -> io::Result<()> {
        for (at, data) in std::mem::take(&mut other.blocks) {
            self.insert(at, data)?;
        }
        Ok(())
    }

    /// Adds a block; one that overlaps another is refused (and wiped).
    fn insert(&mut self, at: u64, mut data: Box<[u8]>) -> io::Result<()> {
        let end = at.saturating_add(data.len() as u64);
        let before = self.blocks.range(..end).next_back();
        if before.is_some_and(|(&o, d)| o + d.len() as u64 > at) {
            zeroize::Zeroize::zeroize(&mut *data);
            return Err(io::Error::other(
                "two changed blocks land on the same bytes of the image (overlapping filesystems?)",
            ));
        }
        self.blocks.insert(at, data);
        Ok(())
    }

    /// (offset in the base, bytes), in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.blocks.iter().map(|(&at, d)| (at, &d[..]))
    }

    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        for block in self.blocks.values_mut() {
            zeroize::Zeroize::zeroize(&mut **block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_carries_blocks_to_its_offset_and_refuses_its_outside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let file = FileVolume::new(File::open(&path).unwrap(), 4096);
        let part = Window::new(file, 1024, 2048);
        assert_eq!(part.plain_at(), Some(1024));
        let mut block = [1u8; 512];
        assert_eq!(part.carry_out(512, &mut block).unwrap(), 1536);
        assert!(part.carry_out(1800, &mut block).is_err());
        let changes = Changes::carry(
            &part,
            [(0u64, vec![1u8; 512].into()), (512, vec![2u8; 512].into())],
        )
        .unwrap();
        let at: Vec<u64> = changes.iter().map(|(o, _)| o).collect();
        assert_eq!(at, [1024, 1536]);
        let mut twice = Changes::carry(&part, [(0u64, vec![1u8; 512].into())]).unwrap();
        assert!(twice.extend(changes).is_err());
    }
}
