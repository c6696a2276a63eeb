//! XXH64 (seed 0), streaming, with a running state that can be saved: the
//! zstd tail rewrite continues a frame's content checksum from a block
//! boundary, and the scan cache (`src/cache/`) keeps that boundary across
//! runs. xxhash-rust's `Xxh64` keeps its state private, so this is the
//! algorithm as its specification gives it; the tests hold it to that crate.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;
const STRIPE: usize = 32;
/// Bytes of a saved state: 4 lanes, the length, the held stripe.
pub const STATE_LEN: usize = 4 * 8 + 8 + STRIPE;

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, v: u64) -> u64 {
    (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
}

fn lane(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

#[derive(Clone)]
pub struct Xxh64 {
    v: [u64; 4],
    len: u64,
    held: [u8; STRIPE],
}

impl Xxh64 {
    pub fn new() -> Xxh64 {
        Xxh64 {
            v: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            len: 0,
            held: [0; STRIPE],
        }
    }

    fn held_len(&self) -> usize {
        (self.len % STRIPE as u64) as usize
    }

    fn stripe(&mut self, s: &[u8]) {
        for (i, v) in self.v.iter_mut().enumerate() {
            *v = round(*v, lane(s, i));
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let held = self.held_len();
        self.len += data.len() as u64;
        if held > 0 {
            let take = (STRIPE - held).min(data.len());
            self.held[held..held + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if held + take < STRIPE {
                return;
            }
            let s = self.held;
            self.stripe(&s);
        }
        let mut stripes = data.chunks_exact(STRIPE);
        for s in &mut stripes {
            self.stripe(s);
        }
        let rest = stripes.remainder();
        self.held[..rest.len()].copy_from_slice(rest);
    }

    pub fn digest(&self) -> u64 {
        let [v1, v2, v3, v4] = self.v;
        let mut h = if self.len >= STRIPE as u64 {
            let h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            [v1, v2, v3, v4].into_iter().fold(h, merge)
        } else {
            P5
        };
        h = h.wrapping_add(self.len);
        let mut rest = &self.held[..self.held_len()];
        while rest.len() >= 8 {
            h ^= round(0, lane(rest, 0));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            rest = &rest[8..];
        }
        if rest.len() >= 4 {
            let w = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            h ^= u64::from(w).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            rest = &rest[4..];
        }
        for &b in rest {
            h ^= u64::from(b).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }

    /// The running state as bytes, for [`Xxh64::import`].
    pub fn export(&self) -> [u8; STATE_LEN] {
        let mut out = [0u8; STATE_LEN];
        for (o, v) in out.chunks_exact_mut(8).zip(self.v) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        out[32..40].copy_from_slice(&self.len.to_le_bytes());
        out[40..].copy_from_slice(&self.held);
        out
    }

    pub fn import(bytes: &[u8]) -> Option<Xxh64> {
        if bytes.len() != STATE_LEN {
            return None;
        }
        let mut v = [0u64; 4];
        for (i, x) in v.iter_mut().enumerate() {
            *x = lane(bytes, i);
        }
        let mut held = [0u8; STRIPE];
        held.copy_from_slice(&bytes[40..]);
        Some(Xxh64 {
            v,
            len: lane(bytes, 4),
            held,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_xxhash_rust_for_any_split_and_survives_export() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 131 % 251) as u8).collect();
        for len in [0usize, 1, 3, 4, 7, 8, 31, 32, 33, 63, 64, 100, 3000] {
            let want = xxhash_rust::xxh64::xxh64(&data[..len], 0);
            for cut in [0, 1, 5, 32, len / 2, len] {
                let cut = cut.min(len);
                let mut h = Xxh64::new();
                h.update(&data[..cut]);
                let mut back = Xxh64::import(&h.export()).unwrap();
                for piece in data[cut..len].chunks(9) {
                    back.update(piece);
                }
                assert_eq!(back.digest(), want, "{len} cut at {cut}");
            }
        }
    }
}
