//! The data segment of a LUKS container as a volume: reads decrypt whole
//! sectors, changed blocks are encrypted before they go out. The IV of a
//! sector is its offset in the segment in 512-byte units plus the
//! segment's `iv_tweak`, whatever the sector size: dm-crypt's default,
//! without `iv_large_sectors`, which cryptsetup does not set for LUKS2
//! (checked against `cryptsetup reencrypt --sector-size 4096` output in
//! tests/it/luks.rs).

use std::io;

use zeroize::Zeroizing;

use super::header::Header;
use super::xts::XtsKey;
use crate::image::volume::Volume;
use crate::io::read_at::ReadAt;

pub(super) struct Crypt {
    outer: Box<dyn Volume>,
    key: XtsKey,
    /// Where the segment starts in `outer`.
    offset: u64,
    len: u64,
    sector: u64,
    iv_tweak: u64,
}

impl Crypt {
    pub(super) fn new(
        outer: Box<dyn Volume>,
        header: &Header,
        key: &[u8],
    ) -> Result<Crypt, String> {
        let seg = &header.segment;
        let key = XtsKey::new(key).ok_or("its volume key is not an aes-xts key")?;
        let room = outer.len().checked_sub(seg.offset).ok_or_else(|| {
            format!(
                "its data starts at byte {}, past its end ({} bytes; truncated?)",
                seg.offset,
                outer.len()
            )
        })?;
        let len = match seg.size {
            Some(size) if size > room => {
                return Err(format!(
                    "its data segment of {size} bytes at {} runs past its end (truncated?)",
                    seg.offset
                ))
            }
            Some(size) => size,
            None => room / seg.sector_size * seg.sector_size,
        };
        Ok(Crypt {
            outer,
            key,
            offset: seg.offset,
            len,
            sector: seg.sector_size,
            iv_tweak: seg.iv_tweak,
        })
    }

    fn iv(&self, at: u64) -> u64 {
        self.iv_tweak.wrapping_add(at / 512)
    }
}

impl ReadAt for Crypt {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let start = offset / self.sector * self.sector;
        let stop = end.div_ceil(self.sector) * self.sector;
        let (s, step) = (self.sector as usize, self.sector / 512);
        if start == offset && stop == end {
            self.outer.read_at(self.offset + start, buf)?;
            self.key.decrypt(buf, s, self.iv(start), step);
            return Ok(());
        }
        // Partly covered sectors: decrypted whole, the asked part copied.
        let mut whole = Zeroizing::new(vec![0u8; (stop - start) as usize]);
        self.outer.read_at(self.offset + start, &mut whole)?;
        self.key.decrypt(&mut whole, s, self.iv(start), step);
        let from = (offset - start) as usize;
        buf.copy_from_slice(&whole[from..from + buf.len()]);
        Ok(())
    }
}

impl Volume for Crypt {
    fn len(&self) -> u64 {
        self.len
    }

    /// Sectors are encrypted whole.
    fn unit(&self) -> u64 {
        let outer = self.outer.unit();
        if outer % self.sector == 0 {
            outer
        } else {
            self.sector * outer / gcd(self.sector, outer)
        }
    }

    fn carry_out(&self, offset: u64, data: &mut [u8]) -> io::Result<u64> {
        let len = data.len() as u64;
        if offset % self.sector != 0 || len % self.sector != 0 || offset + len > self.len {
            return Err(io::Error::other(
                "a changed block that is not whole sectors of the LUKS data segment",
            ));
        }
        self.key.encrypt(
            data,
            self.sector as usize,
            self.iv(offset),
            self.sector / 512,
        );
        self.outer.carry_out(self.offset + offset, data)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
