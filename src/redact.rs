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
    let mut known = crate::sync::lock(&KNOWN);
    if !known.contains(&entry) {
        known.push(entry);
    }
}

/// Keeps the process's memory, which holds passwords and the token, out of
/// core dumps and away from other processes of the same user: no core
/// file is written (RLIMIT_CORE 0) and the process is not dumpable
/// (PR_SET_DUMPABLE 0 also blocks ptrace attach and /proc/PID/mem reads by
/// non-root users). Called first thing by the CLI.
pub fn protect_process() -> std::io::Result<()> {
    use rustix::process::{self, DumpableBehavior, Resource, Rlimit};
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    process::setrlimit(Resource::Core, no_core)?;
    process::set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// `text` with every registered secret replaced by `<redacted>`.
pub fn scrub(text: &str) -> String {
    let known = crate::sync::lock(&KNOWN).clone();
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
