//! SHA-256 whose running state can be saved and resumed.
//!
//! The digest of an output is taken while it is written; the part of it
//! that is the input's own prefix is hashed once and its state kept (for a
//! batch, and across runs in the scan cache, `src/cache/`). The sha2 crate
//! cannot export or import a running state, so this wraps its block
//! function (`compress256`, the same SHA-NI or software code `Sha256`
//! runs) with its own bookkeeping: the eight state words, the bytes hashed
//! and the partial block.

use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

const BLOCK: usize = 64;
const INIT: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
/// Bytes of a saved state: 8 words, the length, the partial block's
/// length and its (up to 63) bytes.
pub const STATE_MAX: usize = 32 + 8 + 1 + (BLOCK - 1);

/// A running SHA-256.
#[derive(Clone)]
pub struct Sha256 {
    h: [u32; 8],
    /// Bytes hashed in all, the partial block included.
    len: u64,
    partial: [u8; BLOCK],
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256(after {} bytes)", self.len)
    }
}

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256 {
            h: INIT,
            len: 0,
            partial: [0; BLOCK],
        }
    }

    /// The digest of `data`.
    pub fn digest(data: impl AsRef<[u8]>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(data);
        h.finalize()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn held(&self) -> usize {
        (self.len % BLOCK as u64) as usize
    }

    fn compress(&mut self, blocks: &[u8]) {
        for block in blocks.chunks_exact(BLOCK) {
            sha2::compress256(
                &mut self.h,
                std::slice::from_ref(GenericArray::<u8, U64>::from_slice(block)),
            );
        }
    }

    pub fn update(&mut self, data: impl AsRef<[u8]>) {
        let mut data = data.as_ref();
        let held = self.held();
        self.len += data.len() as u64;
        if held > 0 {
            let take = (BLOCK - held).min(data.len());
            self.partial[held..held + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if held + take < BLOCK {
                return;
            }
            let block = self.partial;
            self.compress(&block);
        }
        let whole = data.len() / BLOCK * BLOCK;
        self.compress(&data[..whole]);
        let rest = &data[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
    }

    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let held = self.held();
        let mut tail = [0u8; 2 * BLOCK];
        tail[..held].copy_from_slice(&self.partial[..held]);
        tail[held] = 0x80;
        let end = if held < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        tail[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        self.compress(&tail[..end]);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The running state as bytes, for [`Sha256::import`].
    pub fn export(&self) -> Vec<u8> {
        let held = self.held();
        let mut out = Vec::with_capacity(STATE_MAX);
        for w in self.h {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.len.to_le_bytes());
        out.push(held as u8);
        out.extend_from_slice(&self.partial[..held]);
        out
    }

    /// A state [`Sha256::export`] wrote; `None` if `bytes` cannot be one.
    pub fn import(bytes: &[u8]) -> Option<Sha256> {
        if bytes.len() < 41 {
            return None;
        }
        let mut h = [0u32; 8];
        for (w, b) in h.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_le_bytes(b.try_into().ok()?);
        }
        let len = u64::from_le_bytes(bytes[32..40].try_into().ok()?);
        let held = usize::from(bytes[40]);
        if held >= BLOCK || len % BLOCK as u64 != held as u64 || bytes.len() != 41 + held {
            return None;
        }
        let mut partial = [0u8; BLOCK];
        partial[..held].copy_from_slice(&bytes[41..]);
        Some(Sha256 { h, len, partial })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn equals_sha2_for_any_split_and_survives_export() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 253) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 5000] {
            let want = sha2::Sha256::digest(&data[..len]);
            assert_eq!(Sha256::digest(&data[..len])[..], want[..], "{len}");
            for cut in [0, 1, 13, 64, len / 2, len] {
                let cut = cut.min(len);
                let mut h = Sha256::new();
                h.update(&data[..cut]);
                let saved = h.export();
                let mut back = Sha256::import(&saved).unwrap();
                assert_eq!(back.len(), cut as u64);
                for piece in data[cut..len].chunks(7) {
                    back.update(piece);
                }
                assert_eq!(back.finalize()[..], want[..], "{len} cut at {cut}");
            }
        }
    }

    #[test]
    fn impossible_states_are_refused() {
        let mut h = Sha256::new();
        h.update([1u8; 70]);
        let good = h.export();
        assert!(Sha256::import(&good).is_some());
        assert!(Sha256::import(&good[..good.len() - 1]).is_none());
        let mut bad = good.clone();
        bad[40] = 5;
        assert!(Sha256::import(&bad).is_none());
        assert!(Sha256::import(&[]).is_none());
    }
}
