//! What an entry is keyed by: the input file's identity, as build caches
//! and git's index take it, and what the plan needs from the scan.
//!
//! The identity is the device, inode, size, mtime and ctime (nanoseconds)
//! and a digest of a few sampled blocks. A change in place changes the
//! ctime, which no user can set back; the samples catch a file replaced by
//! one with the same identity (a restored backup on another filesystem).
//! A file changed within the clock tick of its ctime can keep it, so a file
//! changed in the last seconds is never cached (git's "racy" rule).
//! On a filesystem without a trustworthy ctime (`fs_trust.rs`: FUSE, NFS,
//! SMB, 9p, overlayfs, anything not known to keep one) the samples are
//! replaced by the SHA-256 of the whole file.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::io::sha256::Sha256;

/// Blocks sampled: the first, the last and evenly between.
const SAMPLES: u64 = 16;
const SAMPLE_LEN: usize = 4096;
/// A file changed more recently than this is not cached.
const RACY: Duration = Duration::from_secs(2);

/// An input's identity and the plan's needs, as an entry's key.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// Names the entry: one per file and plan.
    pub(super) name: String,
    /// Everything compared on a lookup.
    pub(super) key: Vec<u8>,
    changed_ns: i128,
    /// The filesystem, when it keeps no trustworthy ctime and the key is
    /// the whole file's SHA-256 (`fs_trust.rs`).
    hashed_whole: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.name)
    }
}

impl Identity {
    /// The identity of `file` for a plan that needs `needs` (an encoding of
    /// the paths watched, the codec, anything that changes what the scan
    /// records).
    pub fn of(file: &File, needs: &[u8]) -> io::Result<Identity> {
        let meta = file.metadata()?;
        let size = meta.len();
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let ctime_ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        let mut samples = Sha256::new();
        let hashed_whole = super::fs_trust::classify(super::fs_trust::magic_of(file)?).err();
        if hashed_whole.is_some() {
            // No ctime to trust: only the very same bytes match.
            samples.update(b"whole");
            let mut block = vec![0u8; 1 << 20];
            let mut at = 0;
            loop {
                let n = read_full_at(file, &mut block, at)?;
                if n == 0 {
                    break;
                }
                samples.update(&block[..n]);
                at += n as u64;
            }
        } else {
            let mut block = vec![0u8; SAMPLE_LEN];
            let last = size.saturating_sub(SAMPLE_LEN as u64);
            for i in 0..SAMPLES {
                let at = last / (SAMPLES - 1) * i;
                let at = if i == SAMPLES - 1 { last } else { at };
                let n = read_full_at(file, &mut block, at)?;
                samples.update(&block[..n]);
            }
        }
        let mut name = Sha256::new();
        name.update(meta.dev().to_le_bytes());
        name.update(meta.ino().to_le_bytes());
        name.update(needs);
        let mut key = Vec::new();
        for v in [meta.dev(), meta.ino(), size] {
            key.extend_from_slice(&v.to_le_bytes());
        }
        key.extend_from_slice(&mtime_ns.to_le_bytes());
        key.extend_from_slice(&ctime_ns.to_le_bytes());
        key.extend_from_slice(&samples.finalize());
        key.extend_from_slice(needs);
        Ok(Identity {
            name: hex::encode(&name.finalize()[..16]),
            key,
            changed_ns: mtime_ns.max(ctime_ns),
            hashed_whole,
        })
    }

    /// The filesystem named when the key had to be the whole file's
    /// digest (its ctime cannot be trusted), for `-v`.
    pub fn hashed_whole(&self) -> Option<&str> {
        self.hashed_whole.as_deref()
    }

    /// Whether the file changed so recently that a change within the same
    /// clock tick could go unseen: such a file is read but not cached.
    pub fn is_racy(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.changed_ns < RACY.as_nanos() as i128
    }
}

fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn content_and_needs_change_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        std::fs::write(&path, vec![1u8; 100_000]).unwrap();
        let a = Identity::of(&File::open(&path).unwrap(), b"plan").unwrap();
        assert_eq!(
            a,
            Identity::of(&File::open(&path).unwrap(), b"plan").unwrap()
        );
        let other_plan = Identity::of(&File::open(&path).unwrap(), b"other").unwrap();
        assert_ne!(a.name, other_plan.name);
        assert!(a.is_racy(), "just written");
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&[2]).unwrap();
        let b = Identity::of(&File::open(&path).unwrap(), b"plan").unwrap();
        assert_eq!(a.name, b.name);
        assert_ne!(a.key, b.key);
    }
}
