//! The scan cache: what a full scan of a base image learned, kept across
//! runs so that the next device stamped from the same image pays only for
//! the size of the change (a flashing station stamps one device at a
//! time from one base).
//!
//! An entry holds what the writer needs to keep the input's prefix and
//! rewrite the tail: the tar scan's findings, the compressed stream's
//! block boundaries before the places the plan may change, and the
//! SHA-256 state of the kept prefix. It describes only the base image
//! (never a device's credentials). It is keyed by the input's identity
//! and the plan's needs (`key.rs`); anything that does not match, or does
//! not read back whole, is a miss, and a miss is a full scan. Entries live
//! in a private directory, bounded in size (`store.rs`).
//!
//! This module knows files and bytes only; what an entry's payload holds
//! is the tar backend's business (`src/image/tar/cached.rs`).

pub mod format;
pub(crate) mod fs_trust;
mod key;
mod store;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub use key::Identity;
#[cfg(feature = "fuzzing")]
pub use store::decode_entry;
pub use store::{Cache, Miss};

/// The size bound when none is set: entries are tens to hundreds of KiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

impl Cache {
    /// The cache where the environment puts it: `$IMPRINT_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/imprint`, else `$HOME/.cache/imprint` (relative
    /// paths are ignored, as the XDG specification says). `None` when
    /// there is no such place, or when that place is under another user's
    /// `$XDG_CACHE_HOME` or `$HOME` (root run with `sudo -E` keeps the
    /// user's): root's files there would be the user's to delete and stop
    /// the user's own runs from caching; said as a warning.
    pub fn from_env() -> Option<Cache> {
        let absolute = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        if let Some(dir) = absolute("IMPRINT_CACHE_DIR") {
            return Some(Cache::at(dir, DEFAULT_MAX_BYTES));
        }
        let (var, base, dir) = if let Some(d) = absolute("XDG_CACHE_HOME") {
            ("XDG_CACHE_HOME", d.clone(), d.join("imprint"))
        } else {
            let home = absolute("HOME")?;
            ("HOME", home.clone(), home.join(".cache").join("imprint"))
        };
        let me = rustix::process::geteuid().as_raw();
        match std::fs::metadata(&base) {
            Ok(meta) if meta.uid() != me => {
                tracing::warn!(
                    "${var} ({}) belongs to uid {}, not to this process's uid {me} (sudo -E keeps the user's): the scan cache is off for this run; set IMPRINT_CACHE_DIR to use one",
                    base.display(),
                    meta.uid()
                );
                None
            }
            _ => Some(Cache::at(dir, DEFAULT_MAX_BYTES)),
        }
    }
}
