//! aes-xts-plain64, as dm-crypt does it: each sector encrypted with
//! AES-XTS, its tweak the little-endian 64-bit sector number ("plain64").
//! Keyslot areas and data segments both use it.

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use xts_mode::Xts128;

/// An aes-xts key: 32 bytes (AES-128) or 64 (AES-256), two halves, the
/// first for the data and the second for the tweak. The `aes` key
/// schedules are wiped when dropped (its `zeroize` feature).
pub(crate) enum XtsKey {
    Aes128(Box<Xts128<Aes128>>),
    Aes256(Box<Xts128<Aes256>>),
}

impl XtsKey {
    /// `None` unless `key` has 32 or 64 bytes.
    pub(crate) fn new(key: &[u8]) -> Option<XtsKey> {
        let (a, b) = key.split_at(key.len() / 2);
        match key.len() {
            32 => Some(XtsKey::Aes128(Box::new(Xts128::new(
                Aes128::new_from_slice(a).ok()?,
                Aes128::new_from_slice(b).ok()?,
            )))),
            64 => Some(XtsKey::Aes256(Box::new(Xts128::new(
                Aes256::new_from_slice(a).ok()?,
                Aes256::new_from_slice(b).ok()?,
            )))),
            _ => None,
        }
    }

    /// Decrypts `data`, whole sectors of `sector` bytes, the first with IV
    /// sector number `iv`, each next one `iv_step` more.
    pub(crate) fn decrypt(&self, data: &mut [u8], sector: usize, iv: u64, iv_step: u64) {
        for (i, chunk) in data.chunks_mut(sector).enumerate() {
            let tweak = plain64(iv, iv_step, i);
            match self {
                XtsKey::Aes128(x) => x.decrypt_sector(chunk, tweak),
                XtsKey::Aes256(x) => x.decrypt_sector(chunk, tweak),
            }
        }
    }

    /// Encrypts as [`XtsKey::decrypt`] decrypts.
    pub(crate) fn encrypt(&self, data: &mut [u8], sector: usize, iv: u64, iv_step: u64) {
        for (i, chunk) in data.chunks_mut(sector).enumerate() {
            let tweak = plain64(iv, iv_step, i);
            match self {
                XtsKey::Aes128(x) => x.encrypt_sector(chunk, tweak),
                XtsKey::Aes256(x) => x.encrypt_sector(chunk, tweak),
            }
        }
    }
}

/// The plain64 IV: the sector number modulo 2^64, little-endian, zero
/// padded to the block.
fn plain64(iv: u64, step: u64, i: usize) -> [u8; 16] {
    let n = iv.wrapping_add(step.wrapping_mul(i as u64));
    u128::from(n).to_le_bytes()
}
