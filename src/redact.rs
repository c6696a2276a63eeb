//! Secrets this process holds, known by length and SHA-256 only, so that
//! text which should never contain them (a panic message) can be scrubbed
//! without keeping another copy of any secret in memory.

use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Secrets shorter than this are not tracked: scrubbing them would blank
/// ordinary words.
const MIN_LEN: usize = 8;

static KNOWN: Mutex<Vec<(usize, [u8; 32])>> = Mutex::new(Vec::new());

/// Remembers `secret` (by length and digest) for [`scrub`].
pub fn register(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    let entry = (secret.len(), Sha256::digest(secret.as_bytes()).into());
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if !known.contains(&entry) {
        known.push(entry);
    }
}

/// `text` with every registered secret replaced by `<redacted>`.
pub fn scrub(text: &str) -> String {
    let known = KNOWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        for (len, digest) in &known {
            if let Some(window) = bytes.get(i..i + len) {
                if Sha256::digest(window).as_slice() == digest {
                    out.extend_from_slice(b"<redacted>");
                    i += len;
                    continue 'outer;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_registered_secrets_only() {
        register("0123456789abcdef0123456789abcdef");
        register("short");
        let text =
            "pw=0123456789abcdef0123456789abcdef, again 0123456789abcdef0123456789abcdef; short";
        assert_eq!(scrub(text), "pw=<redacted>, again <redacted>; short");
        assert_eq!(
            scrub("ünïcode 0123456789abcdef"),
            "ünïcode 0123456789abcdef"
        );
    }
}
