//! The device libext2fs edits: reads come from a read-only base (the raw
//! input, or a sparse image through its chunk index), writes stay in
//! memory as whole blocks. libext2fs edits the filesystem without the
//! image ever being copied or expanded, and the backend then knows
//! exactly which blocks changed.

use std::collections::BTreeMap;
use std::io;

use super::io_manager::Device;
use crate::io::read_at::ReadAt;

/// A read-only base device with the blocks written to it kept in memory,
/// `block` bytes at a time (the block size the output is written in).
pub(crate) struct ChangedBlocks<R> {
    base: R,
    size: u64,
    block: u64,
    written: BTreeMap<u64, Box<[u8]>>,
}

impl<R: ReadAt> ChangedBlocks<R> {
    /// Over the first `size` bytes of `base`, in blocks of `block` bytes.
    pub(crate) fn new(base: R, size: u64, block: u32) -> Self {
        ChangedBlocks {
            base,
            size,
            block: u64::from(block),
            written: BTreeMap::new(),
        }
    }

    pub(crate) fn base(&self) -> &R {
        &self.base
    }

    pub(crate) fn block_size(&self) -> u64 {
        self.block
    }

    /// How many bytes of the base the device spans.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The blocks written, by block number, in order.
    pub(crate) fn written(&self) -> &BTreeMap<u64, Box<[u8]>> {
        &self.written
    }

    /// Takes the blocks written, as (byte offset, bytes), in order; the
    /// caller wipes them.
    pub(crate) fn take_written(&mut self) -> impl Iterator<Item = (u64, Box<[u8]>)> {
        let block = self.block;
        std::mem::take(&mut self.written)
            .into_iter()
            .map(move |(n, data)| (n * block, data))
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        if self.block == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the image's blocks are 0 bytes long",
            ));
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "libext2fs asked for bytes {offset}..+{len} of a {}-byte image",
                    self.size
                ),
            )),
        }
    }

    /// Splits `offset..offset+len`, which [`Self::check`] accepted, into
    /// (block, offset in block, length).
    fn pieces(&self, offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let block = self.block;
        let end = offset + len as u64;
        let mut at = offset;
        std::iter::from_fn(move || {
            (at < end).then(|| {
                let b = at / block;
                let within = (at % block) as usize;
                let n = ((block - within as u64).min(end - at)) as usize;
                at += n as u64;
                (b, within, n)
            })
        })
    }
}

/// The changed blocks hold device.conf, password included: they are
/// overwritten before their memory is freed.
impl<R> Drop for ChangedBlocks<R> {
    fn drop(&mut self) {
        for block in self.written.values_mut() {
            zeroize::Zeroize::zeroize(&mut **block);
        }
    }
}

impl<R: ReadAt> Device for ChangedBlocks<R> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let mut done = 0;
        for (b, within, n) in self.pieces(offset, buf.len()) {
            let out = &mut buf[done..done + n];
            match self.written.get(&b) {
                Some(data) => out.copy_from_slice(&data[within..within + n]),
                None => self.base.read_at(b * self.block + within as u64, out)?,
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        let mut done = 0;
        for (b, within, n) in self.pieces(offset, data.len()).collect::<Vec<_>>() {
            if !self.written.contains_key(&b) {
                let mut old = vec![0u8; self.block as usize].into_boxed_slice();
                if n < self.block as usize {
                    self.base.read_at(b * self.block, &mut old)?;
                }
                self.written.insert(b, old);
            }
            let block = self.written.get_mut(&b).expect("just inserted");
            block[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_blocks_read_back_over_the_base() {
        let base: Vec<u8> = (0..64u8).collect();
        let mut o = ChangedBlocks::new(base.clone(), 64, 16);
        o.write_at(10, &[0xff; 12]).unwrap();
        let mut all = vec![0u8; 64];
        o.read_at(0, &mut all).unwrap();
        let mut want = base.clone();
        want[10..22].fill(0xff);
        assert_eq!(all, want);
        assert_eq!(o.written().keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert!(o.read_at(60, &mut [0u8; 8]).is_err());
        assert!(o.write_at(u64::MAX - 2, &[1]).is_err());
    }

    #[test]
    fn a_zero_block_size_is_an_error_not_a_division_by_zero() {
        let mut o = ChangedBlocks::new(vec![0u8; 64], 64, 0);
        assert!(o.read_at(0, &mut [0u8; 8]).is_err());
        assert!(o.write_at(0, &[1]).is_err());
    }
}
