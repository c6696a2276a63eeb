//! An input image held open for the whole run, and the check that its path
//! still names that very file, unchanged.
//!
//! The layers below open the input by path more than once (detection, the
//! scan or the scan cache's lookup, the write of each output, the batch's
//! digest). If the path is given another file meanwhile (`mv new.ext4
//! base.ext4`, an rsync or a CI download finishing), or the file is
//! changed in place, those reads would mix two bases into one output. The
//! pin opens the input once, before anything else reads it, and keeps the
//! descriptor: while it is held the inode cannot be freed and its number
//! reused, so "the path still names the pinned inode, and the inode's size,
//! mtime and ctime are as they were" proves every read between two checks
//! read the pinned file. A rename away and back changes the inode's ctime,
//! as any write does; the ctime cannot be set back by a user (on
//! filesystems that keep one: see `cache::fs_trust`).

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What must stay the same for the input to be the one pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// What differs between `self` (the pinned file) and `now`, said for
    /// an error message; `None` when nothing does.
    fn differs(&self, now: &Stamp) -> Option<&'static str> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("its path now names another file")
        } else if self.size != now.size {
            Some("its size changed")
        } else if self.mtime != now.mtime {
            Some("its modification time changed")
        } else if self.ctime != now.ctime {
            Some("its inode change time (ctime) changed: it was written, renamed or had its times set")
        } else {
            None
        }
    }
}

/// Why an input is no longer the one pinned.
#[derive(Debug)]
pub(crate) enum Changed {
    /// The path or the file is not what was pinned; says what differs.
    Differs(&'static str),
    /// The path can no longer be looked at.
    Gone(io::Error),
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Changed::Differs(what) => f.write_str(what),
            Changed::Gone(e) => write!(f, "it can no longer be looked at ({e})"),
        }
    }
}

/// An input opened read-only once, with what it was when opened.
#[derive(Debug)]
pub(crate) struct InputPin {
    path: PathBuf,
    file: File,
    stamp: Stamp,
}

impl InputPin {
    /// Opens `path` read-only and notes its identity.
    pub fn open(path: &Path) -> io::Result<InputPin> {
        let file = File::open(path)?;
        let stamp = Stamp::of(&file.metadata()?);
        Ok(InputPin {
            path: path.to_path_buf(),
            file,
            stamp,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the pinned file and the file is as it
    /// was when pinned (device, inode, size, mtime, ctime). Everything read
    /// by path between [`InputPin::open`] and a passing check was read from
    /// the pinned file as it was.
    pub fn check(&self) -> Result<(), Changed> {
        // The path first: a file renamed over it also changes the pinned
        // inode's ctime (its link count dropped), and "another file" is
        // the truer reason.
        let named = Stamp::of(&std::fs::metadata(&self.path).map_err(Changed::Gone)?);
        if let Some(what) = self.stamp.differs(&named) {
            return Err(Changed::Differs(what));
        }
        let held = Stamp::of(&self.file.metadata().map_err(Changed::Gone)?);
        match self.stamp.differs(&held) {
            Some(what) => Err(Changed::Differs(what)),
            None => Ok(()),
        }
    }

    /// The SHA-256 of the pinned file, read through the pinned descriptor
    /// (never by path) with positioned reads, so that it can run on another
    /// thread while the scan reads the same file.
    pub fn sha256(&self) -> io::Result<String> {
        use sha2::Digest;
        let file = self.file.try_clone()?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let n = match file.read_at(&mut buf, at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_file_renamed_over_the_path_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (base, other) = (dir.path().join("base"), dir.path().join("other"));
        std::fs::write(&base, b"one base").unwrap();
        std::fs::write(&other, b"two base").unwrap();
        let pin = InputPin::open(&base).unwrap();
        pin.check().unwrap();
        std::fs::rename(&other, &base).unwrap();
        let err = pin.check().unwrap_err().to_string();
        assert!(err.contains("another file"), "{err}");
    }

    #[test]
    fn a_change_in_place_with_its_mtime_put_back_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::write(&base, b"one base").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&base)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let pin = InputPin::open(&base).unwrap();
        // Same size, same mtime: only the ctime tells.
        std::thread::sleep(Duration::from_millis(20));
        let f = File::options().write(true).open(&base).unwrap();
        f.write_at(b"two", 0).unwrap();
        f.set_modified(old).unwrap();
        let err = pin.check().unwrap_err().to_string();
        assert!(err.contains("ctime"), "{err}");
    }

    #[test]
    fn renamed_away_and_back_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (base, aside) = (dir.path().join("base"), dir.path().join("aside"));
        std::fs::write(&base, b"one base").unwrap();
        let pin = InputPin::open(&base).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::rename(&base, &aside).unwrap();
        std::fs::rename(&aside, &base).unwrap();
        assert!(pin.check().is_err());
    }

    #[test]
    fn the_digest_is_the_pinned_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::write(&base, b"abc").unwrap();
        let pin = InputPin::open(&base).unwrap();
        std::fs::write(dir.path().join("new"), b"xyz").unwrap();
        std::fs::rename(dir.path().join("new"), &base).unwrap();
        assert_eq!(
            pin.sha256().unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
