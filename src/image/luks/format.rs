//! A new LUKS2 header, as `cryptsetup --type luks2 -c aes-xts-plain64 -s 256
//! --uuid UUID luksFormat` writes it (L4T's `build_enc_root_fsimg` in
//! tools/disk_encryption/disk_encryption_helper.func, lines 558-564 of
//! the r35/r36 BSP): cryptsetup's default layout (a 16 KiB header, its
//! secondary copy at 16 KiB, the keyslots area after them, the data at
//! 16 MiB), a random 32-byte volume key (aes-xts with two AES-128 keys:
//! `-s 256` counts bits), one keyslot for the passphrase and one digest.
//!
//! The keyslot's KDF is PBKDF2-SHA256, not the Argon2id cryptsetup would
//! benchmark: every cryptsetup that reads LUKS2 (2.0 and later; L4T r35
//! ships 2.2, r36 2.4) opens it without Argon2's memory demand in the
//! initrd, building it takes a tenth of a second instead of seconds and a
//! gigabyte per device, and stretching buys nothing here: L4T's passphrase
//! is a 128-bit AES-CMAC output, as hard to guess as the key it opens.
//!
//! The volume key, every salt and the anti-forensic stripes come from the
//! OS random generator, so two builds of one input differ in every
//! encrypted byte: the output is not byte-reproducible, by design.

use base64::Engine;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::header::{Hash, CIPHER, MAGIC, MAGIC_2ND};
use super::unlock::{diffuse, pbkdf2};
use super::xts::XtsKey;

/// Header (binary + JSON area) size, each copy; cryptsetup's default.
pub(crate) const HDR_SIZE: u64 = 16 << 10;
/// Where the keyslots area starts: after both header copies.
const KEYSLOTS_AT: u64 = 2 * HDR_SIZE;
/// Where the data segment starts: cryptsetup's default for LUKS2.
pub(crate) const DATA_OFFSET: u64 = 16 << 20;
/// The volume key: aes-xts-plain64 with `-s 256` (bits).
pub(crate) const KEY_SIZE: usize = 32;
/// Anti-forensic stripes, cryptsetup's (and the LUKS specification's).
const STRIPES: usize = 4000;
/// PBKDF2-SHA256 iterations of the keyslot (see the module's comment)
/// and of the volume key's digest; cryptsetup's floor is 1000.
const KEYSLOT_ITERATIONS: u32 = 100_000;
const DIGEST_ITERATIONS: u32 = 50_000;

fn random(len: usize) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    getrandom::getrandom(&mut bytes)
        .map_err(|e| format!("the OS random generator failed ({e})"))?;
    Ok(bytes)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes a keyslot's split key takes, in whole 512-byte sectors.
fn split_len() -> usize {
    (KEY_SIZE * STRIPES).div_ceil(512) * 512
}

/// The keyslot area's size: the split key rounded up to 4 KiB, as
/// cryptsetup aligns it.
fn area_size() -> u64 {
    (split_len() as u64).div_ceil(4096) * 4096
}

/// A new container's first bytes and volume key.
pub(crate) struct NewHeader {
    /// Both header copies and the keyslot's area: bytes
    /// `0..bytes.len()` of the container; zeros follow up to
    /// [`DATA_OFFSET`].
    pub(crate) bytes: Vec<u8>,
    pub(crate) volume_key: Zeroizing<Vec<u8>>,
}

/// Makes the header of a container with UUID `uuid`, data sectors of
/// `sector_size` bytes, and one keyslot that `passphrase` opens.
pub(crate) fn new_header(
    uuid: &str,
    sector_size: u64,
    passphrase: &[u8],
) -> Result<NewHeader, String> {
    let volume_key = random(KEY_SIZE)?;
    // The keyslot: the key split into stripes, the stripes encrypted with
    // the key PBKDF2 derives from the passphrase.
    let mut split = af_split(&volume_key)?;
    let slot_salt = random(32)?;
    let mut area_key = Zeroizing::new(vec![0u8; KEY_SIZE]);
    pbkdf2(
        Hash::Sha256,
        passphrase,
        &slot_salt,
        KEYSLOT_ITERATIONS,
        &mut area_key,
    );
    let xts = XtsKey::new(&area_key).ok_or("a keyslot key of the wrong size")?;
    xts.encrypt(&mut split, 512, 0, 1);
    // The digest that tells the right volume key.
    let digest_salt = random(32)?;
    let mut digest = [0u8; 32];
    pbkdf2(
        Hash::Sha256,
        &volume_key,
        &digest_salt,
        DIGEST_ITERATIONS,
        &mut digest,
    );
    let json = serde_json::json!({
        "keyslots": {"0": {
            "type": "luks2",
            "key_size": KEY_SIZE,
            "af": {"type": "luks1", "stripes": STRIPES, "hash": "sha256"},
            "area": {
                "type": "raw",
                "offset": KEYSLOTS_AT.to_string(),
                "size": area_size().to_string(),
                "encryption": CIPHER,
                "key_size": KEY_SIZE,
            },
            "kdf": {
                "type": "pbkdf2",
                "hash": "sha256",
                "iterations": KEYSLOT_ITERATIONS,
                "salt": b64(&slot_salt),
            },
        }},
        "tokens": {},
        "segments": {"0": {
            "type": "crypt",
            "offset": DATA_OFFSET.to_string(),
            "size": "dynamic",
            "iv_tweak": "0",
            "encryption": CIPHER,
            "sector_size": sector_size,
        }},
        "digests": {"0": {
            "type": "pbkdf2",
            "keyslots": ["0"],
            "segments": ["0"],
            "hash": "sha256",
            "iterations": DIGEST_ITERATIONS,
            "salt": b64(&digest_salt),
            "digest": b64(&digest),
        }},
        "config": {
            "json_size": (HDR_SIZE - 4096).to_string(),
            "keyslots_size": (DATA_OFFSET - KEYSLOTS_AT).to_string(),
        },
    });
    let json = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; (KEYSLOTS_AT + area_size()) as usize];
    for (at, magic) in [(0, MAGIC), (HDR_SIZE, MAGIC_2ND)] {
        let copy = header_copy(uuid, at, magic, &json)?;
        bytes[at as usize..(at + HDR_SIZE) as usize].copy_from_slice(&copy);
    }
    bytes[KEYSLOTS_AT as usize..KEYSLOTS_AT as usize + split.len()].copy_from_slice(&split);
    Ok(NewHeader { bytes, volume_key })
}

/// One binary header and its JSON area, checksummed (LUKS2 On-Disk Format
/// 1.1, section 2: big-endian fields, SHA-256 over the whole `HDR_SIZE`
/// with the checksum field zeroed).
fn header_copy(uuid: &str, at: u64, magic: &[u8; 6], json: &[u8]) -> Result<Vec<u8>, String> {
    if json.len() >= (HDR_SIZE - 4096) as usize {
        return Err("the LUKS2 JSON metadata does not fit its area".into());
    }
    let mut h = vec![0u8; HDR_SIZE as usize];
    h[..6].copy_from_slice(magic);
    h[6..8].copy_from_slice(&2u16.to_be_bytes());
    h[8..16].copy_from_slice(&HDR_SIZE.to_be_bytes());
    h[16..24].copy_from_slice(&1u64.to_be_bytes()); // seqid
    h[72..78].copy_from_slice(b"sha256");
    h[104..168].copy_from_slice(&random(64)?);
    h[168..168 + uuid.len()].copy_from_slice(uuid.as_bytes());
    h[256..264].copy_from_slice(&at.to_be_bytes());
    h[4096..4096 + json.len()].copy_from_slice(json);
    let sum = Sha256::digest(&h);
    h[448..480].copy_from_slice(&sum);
    Ok(h)
}

/// LUKS's anti-forensic split: `STRIPES - 1` random stripes, each folded
/// into a running block through the diffusion, and a last stripe that
/// XORs the running block to the key (the inverse of
/// `unlock::af_merge`).
fn af_split(key: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut split = random(KEY_SIZE * STRIPES)?;
    split.resize(split_len(), 0);
    let mut acc = Zeroizing::new(vec![0u8; KEY_SIZE]);
    for stripe in split.chunks_exact(KEY_SIZE).take(STRIPES - 1) {
        acc.iter_mut().zip(stripe).for_each(|(a, s)| *a ^= s);
        diffuse(Hash::Sha256, &mut acc);
    }
    let last = &mut split[(STRIPES - 1) * KEY_SIZE..STRIPES * KEY_SIZE];
    last.iter_mut()
        .zip(acc.iter().zip(key))
        .for_each(|(l, (a, k))| *l = a ^ k);
    Ok(split)
}

/// Whether `uuid` is one flash.sh takes (its regex in rootuuid_chk_and_gen,
/// flash.sh line 1017: lowercase 8-4-4-4-12 hex).
pub(super) fn is_uuid(uuid: &str) -> bool {
    let groups: Vec<&str> = uuid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::super::{header, unlock};
    use super::*;

    #[test]
    fn our_header_reads_back_and_the_passphrase_opens_it() {
        let uuid = "0b7c2c3e-1111-4222-8333-444455556666";
        let new = new_header(uuid, 4096, b"secret").unwrap();
        let mut dev = new.bytes.clone();
        dev.resize(DATA_OFFSET as usize + 4096, 0);
        let h = header::read(&dev, dev.len() as u64).unwrap();
        assert_eq!(h.uuid, uuid);
        assert_eq!(h.segment.offset, DATA_OFFSET);
        assert_eq!(h.segment.sector_size, 4096);
        assert!(!h.from_secondary);
        let key = unlock::volume_key(&h, &dev, b"secret").unwrap();
        assert_eq!(&key[..], &new.volume_key[..]);
        assert!(unlock::volume_key(&h, &dev, b"Secret").is_err());
        // The secondary copy alone carries it too.
        dev[..HDR_SIZE as usize].fill(0);
        let h = header::read(&dev, dev.len() as u64).unwrap();
        assert!(h.from_secondary);
        assert!(is_uuid(uuid) && !is_uuid("0B7C2C3E-1111-4222-8333-444455556666"));
    }
}
