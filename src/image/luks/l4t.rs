//! L4T's LUKS passphrase (tools/disk_encryption/gen_luks_passphrase.py in
//! the r35/r36 BSP): NIST SP 800-108 counter-mode KDF with AES-CMAC, one
//! 16-byte block `CMAC(key, [1] || label || [0] || context || be32(128))`.
//! First a LUKS key from the EKB key (all zeros when none is given) and
//! the chip's ECID (its lower 100 bits, as 32 lowercase hex digits; label
//! "luks-srv-ecid") or "generic-key" (label "luks-srv-generic"); then the
//! passphrase from that key and the partition's UUID (labels
//! "luks-srv-passphrase-unique" / "-generic"), printed as 32 lowercase hex
//! digits, which flash.sh pipes to cryptsetup.

use aes::Aes128;
use cmac::{Cmac, Mac};
use zeroize::Zeroizing;

fn kdf(key: &[u8; 16], context: &str, label: &str) -> Zeroizing<[u8; 16]> {
    let mut mac = <Cmac<Aes128> as Mac>::new_from_slice(key).expect("a 16-byte key");
    mac.update(&[1]);
    mac.update(label.as_bytes());
    mac.update(&[0]);
    mac.update(context.as_bytes());
    mac.update(&128u32.to_be_bytes());
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The ECID as NVIDIA's script reads it: hex (with or without 0x), at most
/// 32 digits; only its lower 100 bits count.
pub(crate) fn ecid_hex(ecid: &str) -> Result<String, String> {
    let digits = ecid.trim();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    let value = (!digits.is_empty() && digits.len() <= 32)
        .then(|| u128::from_str_radix(digits, 16).ok())
        .flatten()
        .ok_or_else(|| format!("the ECID {ecid:?} is not up to 32 hex digits"))?;
    Ok(format!("{:032x}", value & ((1u128 << 100) - 1)))
}

/// The passphrase flash.sh gives cryptsetup for the container with UUID
/// `uuid`: per chip with `ecid`, else the generic one.
pub(crate) fn passphrase(
    ekb: &[u8; 16],
    ecid: Option<&str>,
    uuid: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let (key, label) = match ecid {
        Some(ecid) => (
            kdf(ekb, &ecid_hex(ecid)?, "luks-srv-ecid"),
            "luks-srv-passphrase-unique",
        ),
        None => (
            kdf(ekb, "generic-key", "luks-srv-generic"),
            "luks-srv-passphrase-generic",
        ),
    };
    let pass = kdf(&key, uuid, label);
    Ok(Zeroizing::new(hex::encode(*pass).into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "11111111-2222-3333-4444-555555555555";

    /// Outputs of NVIDIA's gen_luks_passphrase.py (run once, not kept):
    /// `-k EKB -u -e 0x1234567890abcdef1122334455667788 -c UUID`,
    /// `-g -c UUID` and `-k EKB -g -c UUID`, EKB = 000102...0f.
    #[test]
    fn known_vectors_of_nvidias_script() {
        let ekb: [u8; 16] = core::array::from_fn(|i| i as u8);
        let unique = passphrase(&ekb, Some("0x1234567890abcdef1122334455667788"), UUID).unwrap();
        assert_eq!(&unique[..], b"4e4cf70a57bf54b9bbb866b1ece06941");
        let generic = passphrase(&[0; 16], None, UUID).unwrap();
        assert_eq!(&generic[..], b"c662f9ee7bf928764a3606c09431f2f7");
        let generic = passphrase(&ekb, None, UUID).unwrap();
        assert_eq!(&generic[..], b"074252944413b71a96c3f0278b3d8ddc");
        assert!(ecid_hex("0x").is_err());
        assert!(ecid_hex("123456789012345678901234567890123").is_err());
    }
}
