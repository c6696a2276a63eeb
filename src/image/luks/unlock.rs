//! Opening a keyslot: the passphrase through the keyslot's KDF (PBKDF2 or
//! Argon2i/Argon2id) gives the key of its area; the area, decrypted
//! (aes-xts-plain64, 512-byte sectors numbered from the area's start),
//! holds the volume key split into stripes (LUKS1's anti-forensic
//! splitter, which LUKS2 keeps); merged, it is checked against a digest
//! (PBKDF2 of the key). Every intermediate key is in a zeroizing buffer.

use sha2::Digest as _;
use zeroize::Zeroizing;

use super::header::{Hash, Header, Kdf, KeyDigest, Keyslot};
use super::xts::XtsKey;
use crate::io::read_at::ReadAt;

/// Why no volume key came out.
#[derive(Debug)]
pub(crate) enum Failed {
    /// No keyslot opens with it (a wrong passphrase), or the volume key
    /// matches no digest.
    Wrong,
    /// The header has no keyslot to try.
    NoKeyslot,
    /// A keyslot's area could not be read, or its KDF refused its
    /// parameters.
    Io(String),
}

/// PBKDF2-HMAC with `hash`.
pub(super) fn pbkdf2(hash: Hash, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
    match hash {
        Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out),
        Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
        Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
    }
}

/// `hash(be32(index) || data)`, cut to `out`'s length.
fn hash_block(hash: Hash, index: u32, data: &[u8], out: &mut [u8]) {
    let index = index.to_be_bytes();
    let digest: Zeroizing<Vec<u8>> = Zeroizing::new(match hash {
        Hash::Sha1 => sha1::Sha1::new()
            .chain_update(index)
            .chain_update(data)
            .finalize()
            .to_vec(),
        Hash::Sha256 => sha2::Sha256::new()
            .chain_update(index)
            .chain_update(data)
            .finalize()
            .to_vec(),
        Hash::Sha512 => sha2::Sha512::new()
            .chain_update(index)
            .chain_update(data)
            .finalize()
            .to_vec(),
    });
    out.copy_from_slice(&digest[..out.len()]);
}

fn digest_len(hash: Hash) -> usize {
    match hash {
        Hash::Sha1 => 20,
        Hash::Sha256 => 32,
        Hash::Sha512 => 64,
    }
}

/// The AF splitter's diffusion: each digest-sized piece replaced by the
/// hash of its index and itself (the last piece by a cut hash).
pub(super) fn diffuse(hash: Hash, buf: &mut [u8]) {
    let size = digest_len(hash);
    let mut piece = Zeroizing::new(vec![0u8; size]);
    for (i, chunk) in buf.chunks_mut(size).enumerate() {
        let piece = &mut piece[..chunk.len()];
        hash_block(hash, i as u32, chunk, piece);
        chunk.copy_from_slice(piece);
    }
}

/// Merges `stripes` stripes of `key_size` bytes back into the key.
pub(crate) fn af_merge(
    split: &[u8],
    key_size: usize,
    stripes: u32,
    hash: Hash,
) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(vec![0u8; key_size]);
    let stripes = stripes as usize;
    for (i, stripe) in split.chunks_exact(key_size).take(stripes).enumerate() {
        key.iter_mut().zip(stripe).for_each(|(k, s)| *k ^= s);
        if i + 1 < stripes {
            diffuse(hash, &mut key);
        }
    }
    key
}

/// The key of a keyslot's area, from the passphrase.
fn derive(kdf: &Kdf, passphrase: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, Failed> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    match kdf {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => pbkdf2(*hash, passphrase, salt, *iterations, &mut out),
        Kdf::Argon2 {
            id,
            time,
            memory,
            cpus,
            salt,
        } => {
            let algorithm = if *id {
                argon2::Algorithm::Argon2id
            } else {
                argon2::Algorithm::Argon2i
            };
            let params = argon2::Params::new(*memory, *time, *cpus, Some(len))
                .map_err(|e| Failed::Io(format!("its Argon2 parameters are refused ({e})")))?;
            argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
                .hash_password_into(passphrase, salt, &mut out)
                .map_err(|e| Failed::Io(format!("Argon2 failed ({e})")))?;
        }
    }
    Ok(out)
}

/// Whether `key` is the volume key `digest` describes.
fn matches(digest: &KeyDigest, key: &[u8]) -> bool {
    let mut out = Zeroizing::new(vec![0u8; digest.digest.len()]);
    pbkdf2(digest.hash, key, &digest.salt, digest.iterations, &mut out);
    // Not secret: the digest is in the header for anyone to read; only
    // whether the key is right is learnt.
    out[..] == digest.digest[..]
}

/// Whether `key` is the header's volume key (a `--luks-volume-key-file`).
pub(crate) fn is_volume_key(header: &Header, key: &[u8]) -> bool {
    key.len() == header.key_size && header.digests.iter().any(|d| matches(d, key))
}

/// The volume key one keyslot gives for `passphrase`, if its digest
/// agrees.
fn open_keyslot(
    header: &Header,
    dev: &dyn ReadAt,
    slot: &Keyslot,
    passphrase: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, Failed> {
    let area_key = derive(&slot.kdf, passphrase, slot.area_key_size)?;
    let xts = XtsKey::new(&area_key).ok_or(Failed::Wrong)?;
    let mut split = Zeroizing::new(vec![0u8; slot.area_len() as usize]);
    dev.read_at(slot.area_offset, &mut split)
        .map_err(|e| Failed::Io(format!("keyslot {}'s area cannot be read ({e})", slot.id)))?;
    xts.decrypt(&mut split, 512, 0, 1);
    let key = af_merge(&split, slot.key_size, slot.stripes, slot.af_hash);
    let checked = header
        .digests
        .iter()
        .filter(|d| d.keyslots.contains(&slot.id))
        .any(|d| matches(d, &key));
    Ok(checked.then_some(key))
}

/// The volume key from a passphrase: each keyslot tried in turn.
pub(crate) fn volume_key(
    header: &Header,
    dev: &dyn ReadAt,
    passphrase: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Failed> {
    if header.keyslots.is_empty() {
        return Err(Failed::NoKeyslot);
    }
    for slot in &header.keyslots {
        if let Some(key) = open_keyslot(header, dev, slot, passphrase)? {
            return Ok(key);
        }
    }
    Err(Failed::Wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splitter's inverse, as cryptsetup's AF_split does it, with
    /// fixed "random" stripes: merging gives the key back.
    #[test]
    fn af_merge_inverts_the_split() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            let key: Vec<u8> = (0..64u8).collect();
            let stripes = 7usize;
            let mut split = vec![0u8; 64 * stripes];
            let mut acc = vec![0u8; 64];
            for i in 0..stripes - 1 {
                let s = &mut split[i * 64..(i + 1) * 64];
                s.iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (i * 31 + j) as u8);
                acc.iter_mut().zip(s.iter()).for_each(|(a, b)| *a ^= b);
                diffuse(hash, &mut acc);
            }
            let last = &mut split[(stripes - 1) * 64..];
            last.iter_mut()
                .zip(acc.iter().zip(&key))
                .for_each(|(l, (a, k))| *l = a ^ k);
            assert_eq!(&af_merge(&split, 64, stripes as u32, hash)[..], &key[..]);
        }
    }
}
