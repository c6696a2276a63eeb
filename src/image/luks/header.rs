//! LUKS1 and LUKS2 headers, read and checked: what the container holds
//! (the encrypted segment), how a passphrase opens it (keyslots) and how a
//! volume key is known to be right (digests). Layouts from the LUKS1
//! On-Disk Format Specification 1.2.3 and the LUKS2 On-Disk Format
//! Specification 1.1.x (cryptsetup's docs/on-disk-format-luks2.pdf): all
//! binary integers are big-endian.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::io::read_at::ReadAt;

/// The magic of a LUKS1 header and of a LUKS2 primary header.
pub(crate) const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// The magic of a LUKS2 secondary header.
pub(crate) const MAGIC_2ND: &[u8; 6] = b"SKUL\xba\xbe";
/// The binary part of a LUKS2 header; the JSON area follows it.
const BINARY: usize = 4096;
/// The sizes a LUKS2 header (binary + JSON area) may have; its secondary
/// copy starts at that offset.
pub(crate) const HDR_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
/// The one cipher imprint decrypts and encrypts (L4T's, cryptsetup's
/// default).
pub(crate) const CIPHER: &str = "aes-xts-plain64";
/// Argon2 memory cryptsetup itself accepts at most (KiB).
const ARGON2_MAX_KIB: u32 = 4 << 20;

/// Why a header cannot be used; said with the file's name by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(why.into()))
}

/// The hashes keyslots, anti-forensic splitting and digests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    fn parse(name: &str) -> Result<Hash, Invalid> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Hash::Sha1),
            "sha256" => Ok(Hash::Sha256),
            "sha512" => Ok(Hash::Sha512),
            other => bad(format!(
                "its hash {other:?} is not one imprint supports (sha1, sha256, sha512)"
            )),
        }
    }
}

/// How a keyslot turns a passphrase into the key of its area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
        salt: Vec<u8>,
    },
    Argon2 {
        /// Argon2id, else Argon2i.
        id: bool,
        time: u32,
        /// KiB.
        memory: u32,
        cpus: u32,
        salt: Vec<u8>,
    },
}

/// A keyslot: the volume key, anti-forensically split into `stripes` and
/// encrypted with a key derived from the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keyslot {
    pub id: String,
    pub key_size: usize,
    pub area_offset: u64,
    pub stripes: u32,
    /// Key size of the area's cipher (aes-xts-plain64), bytes.
    pub area_key_size: usize,
    pub af_hash: Hash,
    pub kdf: Kdf,
}

/// A digest of the volume key: PBKDF2 of the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyDigest {
    pub hash: Hash,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub digest: Vec<u8>,
    /// The keyslots it checks (LUKS2; every keyslot in LUKS1).
    pub keyslots: Vec<String>,
}

/// The encrypted data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub offset: u64,
    /// `None`: to the end of the device ("dynamic").
    pub size: Option<u64>,
    pub iv_tweak: u64,
    pub sector_size: u64,
}

/// A LUKS1 or LUKS2 header as imprint uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u16,
    pub uuid: String,
    pub segment: Segment,
    /// The volume key's length, bytes.
    pub key_size: usize,
    pub keyslots: Vec<Keyslot>,
    pub digests: Vec<KeyDigest>,
    /// LUKS2: the primary copy was damaged and this is the secondary's.
    pub from_secondary: bool,
}

/// Whether `head` (the first bytes of a volume) starts a LUKS header:
/// its version, 1 or 2. A LUKS2 device whose primary header was wiped is
/// found by its secondary copy, as cryptsetup finds it.
pub(crate) fn detect(head: &[u8]) -> Option<u16> {
    let version_at = |at: usize, magic: &[u8; 6]| {
        let h = head.get(at..at + 8)?;
        (h[..6] == *magic).then(|| u16::from_be_bytes([h[6], h[7]]))
    };
    match version_at(0, MAGIC) {
        Some(v @ (1 | 2)) => Some(v),
        _ => HDR_SIZES
            .iter()
            .any(|&at| version_at(at as usize, MAGIC_2ND) == Some(2))
            .then_some(2),
    }
}

/// Reads and checks the header of the LUKS device `dev` (`len` bytes).
pub(crate) fn read(dev: &dyn ReadAt, len: u64) -> Result<Header, Invalid> {
    let mut first = [0u8; 8];
    read_exact(dev, len, 0, &mut first)?;
    if first[..6] == *MAGIC && u16::from_be_bytes([first[6], first[7]]) == 1 {
        return luks1(dev, len);
    }
    luks2(dev, len)
}

fn read_exact(dev: &dyn ReadAt, len: u64, at: u64, buf: &mut [u8]) -> Result<(), Invalid> {
    if at.saturating_add(buf.len() as u64) > len {
        return bad(format!(
            "it ends at byte {len}, inside its header (truncated?)"
        ));
    }
    dev.read_at(at, buf)
        .or_else(|e| bad(format!("its header cannot be read ({e})")))
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The LUKS1 header: 592 bytes, eight keyslots of 48 bytes from byte 208.
fn luks1(dev: &dyn ReadAt, len: u64) -> Result<Header, Invalid> {
    let mut h = [0u8; 592];
    read_exact(dev, len, 0, &mut h)?;
    let cipher = format!("{}-{}", cstr(&h[8..40]), cstr(&h[40..72]));
    if cipher != CIPHER {
        return bad(format!(
            "its cipher is {cipher}; imprint decrypts only {CIPHER}"
        ));
    }
    let hash = Hash::parse(&cstr(&h[72..104]))?;
    let key_size = be32(&h, 108) as usize;
    check_key_size(key_size)?;
    let mut keyslots = Vec::new();
    for i in 0..8 {
        let s = &h[208 + 48 * i..208 + 48 * (i + 1)];
        if be32(s, 0) != 0x00AC_71F3 {
            continue;
        }
        keyslots.push(Keyslot {
            id: i.to_string(),
            key_size,
            area_offset: u64::from(be32(s, 40)) * 512,
            stripes: be32(s, 44),
            area_key_size: key_size,
            af_hash: hash,
            kdf: Kdf::Pbkdf2 {
                hash,
                iterations: be32(s, 4),
                salt: s[8..40].to_vec(),
            },
        });
    }
    let ids = keyslots.iter().map(|k| k.id.clone()).collect();
    for k in &keyslots {
        check_keyslot(k, len)?;
    }
    Ok(Header {
        version: 1,
        uuid: cstr(&h[168..208]),
        segment: Segment {
            offset: u64::from(be32(&h, 104)) * 512,
            size: None,
            iv_tweak: 0,
            sector_size: 512,
        },
        key_size,
        keyslots,
        digests: vec![KeyDigest {
            hash,
            iterations: be32(&h, 164),
            salt: h[132..164].to_vec(),
            digest: h[112..132].to_vec(),
            keyslots: ids,
        }],
        from_secondary: false,
    })
}

fn check_key_size(key_size: usize) -> Result<(), Invalid> {
    match key_size {
        32 | 64 => Ok(()),
        n => bad(format!(
            "its volume key has {n} bytes; aes-xts takes 32 or 64"
        )),
    }
}

fn check_keyslot(k: &Keyslot, len: u64) -> Result<(), Invalid> {
    check_key_size(k.area_key_size)?;
    if k.key_size == 0 || k.key_size > 512 || k.stripes == 0 || k.stripes > 1 << 20 {
        return bad(format!(
            "keyslot {} has {} stripes of {} bytes",
            k.id, k.stripes, k.key_size
        ));
    }
    if k.area_offset.saturating_add(k.area_len()) > len {
        return bad(format!("keyslot {}'s area lies past the end", k.id));
    }
    if let Kdf::Argon2 {
        memory, time, cpus, ..
    } = k.kdf
    {
        if !(8..=ARGON2_MAX_KIB).contains(&memory) || time == 0 || !(1..=64).contains(&cpus) {
            return bad(format!(
                "keyslot {}'s Argon2 parameters (time {time}, memory {memory} KiB, {cpus} threads) are out of range",
                k.id
            ));
        }
    }
    Ok(())
}

impl Keyslot {
    /// The bytes of its area that hold the split key: whole 512-byte
    /// sectors.
    pub(crate) fn area_len(&self) -> u64 {
        (self.key_size as u64 * u64::from(self.stripes)).div_ceil(512) * 512
    }
}

/// One LUKS2 binary header and its JSON area, checksum checked.
struct Copy2 {
    seqid: u64,
    hdr_size: u64,
    uuid: String,
    json: Vec<u8>,
}

/// Reads the copy at `at` with magic `magic`; `Err` says what is wrong.
fn copy2(dev: &dyn ReadAt, len: u64, at: u64, magic: &[u8; 6]) -> Result<Copy2, Invalid> {
    let mut bin = vec![0u8; BINARY];
    read_exact(dev, len, at, &mut bin)?;
    if bin[..6] != *magic || u16::from_be_bytes([bin[6], bin[7]]) != 2 {
        return bad("no LUKS2 header magic");
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) {
        return bad(format!("header size {hdr_size} is not a LUKS2 one"));
    }
    if be64(&bin, 256) != at {
        return bad(format!("it says it lies at byte {}", be64(&bin, 256)));
    }
    let alg = cstr(&bin[72..104]);
    if alg != "sha256" {
        return bad(format!(
            "its checksum algorithm {alg:?} is not sha256, the one imprint checks"
        ));
    }
    let mut whole = bin;
    whole.resize(hdr_size as usize, 0);
    read_exact(dev, len, at + BINARY as u64, &mut whole[BINARY..])?;
    let stored: [u8; 32] = whole[448..480].try_into().expect("32 bytes");
    whole[448..512].fill(0);
    if Sha256::digest(&whole)[..] != stored {
        return bad("its SHA-256 checksum does not match (damaged)");
    }
    let json = cstr(&whole[BINARY..]).into_bytes();
    Ok(Copy2 {
        seqid: be64(&whole, 16),
        hdr_size,
        uuid: cstr(&whole[168..208]),
        json,
    })
}

/// Both LUKS2 copies: the primary at 0, the secondary at the primary's
/// size (or, when the primary is unreadable, at any size a header may
/// have). The newer valid copy wins, the primary when they are equal.
fn luks2(dev: &dyn ReadAt, len: u64) -> Result<Header, Invalid> {
    let primary = copy2(dev, len, 0, MAGIC);
    let secondary_at = match &primary {
        Ok(p) => vec![p.hdr_size],
        Err(_) => HDR_SIZES.to_vec(),
    };
    let mut secondary = Err(Invalid("no LUKS2 secondary header".into()));
    for at in secondary_at {
        secondary = copy2(dev, len, at, MAGIC_2ND);
        if secondary.is_ok() {
            break;
        }
    }
    let (copy, from_secondary) = match (primary, secondary) {
        (Ok(p), Ok(s)) if s.seqid > p.seqid => (s, true),
        (Ok(p), _) => (p, false),
        (Err(_), Ok(s)) => (s, true),
        (Err(p), Err(s)) => {
            return bad(format!(
                "both LUKS2 header copies are damaged (primary: {}; secondary: {})",
                p.0, s.0
            ))
        }
    };
    let json: Json = serde_json::from_slice(&copy.json)
        .or_else(|e| bad(format!("its JSON metadata cannot be read ({e})")))?;
    let mut header = from_json(json, len)?;
    header.uuid = copy.uuid;
    header.from_secondary = from_secondary;
    Ok(header)
}

#[derive(Deserialize)]
struct Json {
    keyslots: BTreeMap<String, JsonKeyslot>,
    segments: BTreeMap<String, JsonSegment>,
    digests: BTreeMap<String, JsonDigest>,
    #[serde(default)]
    config: JsonConfig,
}

#[derive(Deserialize, Default)]
struct JsonConfig {
    #[serde(default)]
    requirements: Option<JsonRequirements>,
}

#[derive(Deserialize)]
struct JsonRequirements {
    #[serde(default)]
    mandatory: Vec<String>,
}

#[derive(Deserialize)]
struct JsonKeyslot {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    key_size: usize,
    af: Option<JsonAf>,
    area: JsonArea,
    kdf: Option<JsonKdf>,
}

#[derive(Deserialize)]
struct JsonAf {
    #[serde(rename = "type")]
    kind: String,
    stripes: u32,
    hash: String,
}

#[derive(Deserialize)]
struct JsonArea {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    encryption: Option<String>,
    key_size: Option<usize>,
}

#[derive(Deserialize)]
struct JsonKdf {
    #[serde(rename = "type")]
    kind: String,
    hash: Option<String>,
    iterations: Option<u32>,
    time: Option<u32>,
    memory: Option<u32>,
    cpus: Option<u32>,
    salt: String,
}

#[derive(Deserialize)]
struct JsonSegment {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    #[serde(default)]
    iv_tweak: Option<String>,
    encryption: Option<String>,
    sector_size: Option<u64>,
    integrity: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct JsonDigest {
    #[serde(rename = "type")]
    kind: String,
    keyslots: Vec<String>,
    hash: String,
    iterations: u32,
    salt: String,
    digest: String,
}

fn number(what: &str, s: &str) -> Result<u64, Invalid> {
    s.parse()
        .or_else(|_| bad(format!("its {what} {s:?} is not a number")))
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, Invalid> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| bad(format!("its {what} is not base64")))
}

fn from_json(json: Json, len: u64) -> Result<Header, Invalid> {
    if let Some(req) = json.config.requirements {
        if !req.mandatory.is_empty() {
            return bad(format!(
                "it needs {} (an unfinished reencryption?), which imprint does not support",
                req.mandatory.join(", ")
            ));
        }
    }
    let mut segments = json.segments.into_values();
    let (Some(seg), None) = (segments.next(), segments.next()) else {
        return bad("it has not exactly one data segment (an unfinished reencryption?)");
    };
    if seg.kind != "crypt" {
        return bad(format!(
            "its data segment is of type {:?}, not crypt",
            seg.kind
        ));
    }
    let cipher = seg.encryption.unwrap_or_default();
    if cipher != CIPHER {
        return bad(format!(
            "its cipher is {cipher}; imprint decrypts only {CIPHER}"
        ));
    }
    if seg.integrity.is_some() {
        return bad("its data carries dm-integrity tags, which imprint does not support");
    }
    let sector_size = seg.sector_size.unwrap_or(512);
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return bad(format!("its sector size {sector_size} is not a LUKS2 one"));
    }
    let offset = number("segment offset", &seg.offset)?;
    let size = match seg.size.as_str() {
        "dynamic" => None,
        s => Some(number("segment size", s)?),
    };
    if offset % sector_size != 0 || size.is_some_and(|s| s % sector_size != 0) {
        return bad("its data segment is not aligned to its sectors");
    }
    let segment = Segment {
        offset,
        size,
        iv_tweak: number("iv_tweak", seg.iv_tweak.as_deref().unwrap_or("0"))?,
        sector_size,
    };
    let mut keyslots = Vec::new();
    for (id, k) in json.keyslots {
        // Only luks2 keyslots hold a passphrase's key; a reencrypt keyslot
        // means an unfinished reencryption, which the requirements refuse.
        if k.kind != "luks2" {
            continue;
        }
        let (Some(af), Some(kdf)) = (k.af, k.kdf) else {
            return bad(format!("keyslot {id} has no af or kdf"));
        };
        if af.kind != "luks1" || k.area.kind != "raw" {
            return bad(format!("keyslot {id} is of a kind imprint does not read"));
        }
        let area_cipher = k.area.encryption.unwrap_or_default();
        if area_cipher != CIPHER {
            return bad(format!(
                "keyslot {id} is encrypted with {area_cipher}; imprint decrypts only {CIPHER}"
            ));
        }
        let salt = b64("keyslot salt", &kdf.salt)?;
        let kdf = match kdf.kind.as_str() {
            "pbkdf2" => Kdf::Pbkdf2 {
                hash: Hash::parse(kdf.hash.as_deref().unwrap_or(""))?,
                iterations: kdf.iterations.unwrap_or(0),
                salt,
            },
            "argon2i" | "argon2id" => Kdf::Argon2 {
                id: kdf.kind == "argon2id",
                time: kdf.time.unwrap_or(0),
                memory: kdf.memory.unwrap_or(0),
                cpus: kdf.cpus.unwrap_or(0),
                salt,
            },
            other => {
                return bad(format!(
                    "keyslot {id}'s KDF {other:?} is not one imprint knows"
                ))
            }
        };
        let slot = Keyslot {
            key_size: k.key_size,
            area_offset: number("keyslot area offset", &k.area.offset)?,
            stripes: af.stripes,
            area_key_size: k.area.key_size.unwrap_or(0),
            af_hash: Hash::parse(&af.hash)?,
            kdf,
            id,
        };
        check_keyslot(&slot, len)?;
        if slot.area_len() > number("keyslot area size", &k.area.size)? {
            return bad(format!(
                "keyslot {}'s split key overflows its area",
                slot.id
            ));
        }
        keyslots.push(slot);
    }
    let mut digests = Vec::new();
    for (id, d) in json.digests {
        if d.kind != "pbkdf2" {
            return bad(format!("digest {id} is of type {:?}, not pbkdf2", d.kind));
        }
        digests.push(KeyDigest {
            hash: Hash::parse(&d.hash)?,
            iterations: d.iterations,
            salt: b64("digest salt", &d.salt)?,
            digest: b64("digest", &d.digest)?,
            keyslots: d.keyslots,
        });
    }
    if digests.is_empty() {
        return bad("it has no digest to check a volume key against");
    }
    // The volume key's size: that of the keyslots (all alike for one
    // segment), else the cipher's largest.
    let key_size = keyslots.first().map_or(64, |k| k.key_size);
    check_key_size(key_size)?;
    Ok(Header {
        version: 2,
        uuid: String::new(),
        segment,
        key_size,
        keyslots,
        digests,
        from_secondary: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_finds_both_versions_and_a_lone_secondary() {
        let mut head = vec![0u8; 64 << 10];
        assert_eq!(detect(&head), None);
        head[..6].copy_from_slice(MAGIC);
        head[7] = 1;
        assert_eq!(detect(&head), Some(1));
        head[7] = 2;
        assert_eq!(detect(&head), Some(2));
        head[..8].fill(0);
        head[16384..16390].copy_from_slice(MAGIC_2ND);
        head[16391] = 2;
        assert_eq!(detect(&head), Some(2));
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let mut dev = vec![0u8; 1 << 20];
        dev[..6].copy_from_slice(MAGIC);
        dev[7] = 2;
        let err = read(&dev, dev.len() as u64).unwrap_err();
        assert!(err.0.contains("both LUKS2 header copies"), "{}", err.0);
        dev[7] = 1;
        let err = read(&dev, dev.len() as u64).unwrap_err();
        assert!(err.0.contains("cipher is -"), "{}", err.0);
    }
}
