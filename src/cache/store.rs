//! Entries on disk: one file per input and plan in a private directory,
//! written whole through a temp file and a rename (two processes may race:
//! the last rename wins, neither sees half a file), checked whole when
//! read, and evicted least recently used first.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::format::{Dec, Enc};
use super::key::Identity;
use crate::io::sha256::Sha256;

const MAGIC: &[u8; 16] = b"imprint-scan-idx";
/// The entry layout; a build of another version never reads an entry
/// either (the version is part of every entry).
const FORMAT: u32 = 1;
/// No entry is near this big (a few boundaries of at most 128 KiB).
const MAX_ENTRY: u64 = 16 << 20;
const SUFFIX: &str = ".idx";
/// Every file imprint makes in the directory starts so: the directory may
/// be one the user shares with other tools (`IMPRINT_CACHE_DIR`), whose
/// files are never counted, evicted or removed.
const PREFIX: &str = "imprint-scan-";
/// Temp files older than this are a killed run's.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Why a lookup found nothing usable; every one is a full scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No entry for this input and plan.
    Absent,
    /// The entry is damaged or cut short.
    Damaged,
    /// Written by another imprint version or format.
    OtherVersion,
    /// The input's identity changed (rewritten, touched, replaced).
    Changed,
    /// The cache directory cannot be used safely.
    Unusable,
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Miss::Absent => "no entry",
            Miss::Damaged => "the entry is damaged",
            Miss::OtherVersion => "the entry is from another imprint version",
            Miss::Changed => "the input changed since it was cached",
            Miss::Unusable => "the cache directory is not private to this user",
        })
    }
}

/// The scan cache: a directory and its size bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

impl Cache {
    /// A cache in `dir` holding at most `max_bytes` of entries.
    pub fn at(dir: PathBuf, max_bytes: u64) -> Cache {
        Cache { dir, max_bytes }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `id`'s entry.
    pub fn entry_path(&self, id: &Identity) -> PathBuf {
        self.dir.join(format!("{PREFIX}{}{SUFFIX}", id.name))
    }

    /// The payload stored for `id`. A hit marks the entry recently used.
    pub fn load(&self, id: &Identity) -> Result<Vec<u8>, Miss> {
        if !self.dir.exists() {
            return Err(Miss::Absent);
        }
        if !self.private_dir(false) {
            return Err(Miss::Unusable);
        }
        let path = self.entry_path(id);
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(_) => return Err(Miss::Absent),
        };
        let mut bytes = Vec::new();
        (&file)
            .take(MAX_ENTRY + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| Miss::Damaged)?;
        let payload = decode_entry(&bytes, &id.key)?;
        // Recency for eviction: the entry file's mtime (its owner may set
        // it through a read-only descriptor).
        let _ = file.set_modified(SystemTime::now());
        Ok(payload)
    }

    /// Stores `payload` for `id`, then evicts the least recently used
    /// entries beyond the size bound.
    pub fn save(&self, id: &Identity, payload: &[u8]) -> io::Result<()> {
        if !self.private_dir(true) {
            return Err(io::Error::other(Miss::Unusable.to_string()));
        }
        let bytes = encode_entry(&id.key, payload);
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let temp = self.dir.join(format!(
            ".{PREFIX}{}.{}-{}.tmp",
            id.name,
            std::process::id(),
            hex::encode(random)
        ));
        let result = crate::io::output::create_private(&temp).and_then(|mut f| {
            f.write_all(&bytes)?;
            fs::rename(&temp, self.entry_path(id))
        });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result?;
        self.evict(&self.entry_path(id));
        Ok(())
    }

    /// Whether the directory is ours alone (created 0700 if `create`): a
    /// directory another user can write could feed us entries. One that
    /// exists is never chmodded: it may be shared with other tools, and
    /// its entries are 0600 whatever the directory's mode.
    fn private_dir(&self, create: bool) -> bool {
        if create {
            if let Some(parent) = self.dir.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = fs::DirBuilder::new().mode(0o700).create(&self.dir);
        }
        let Ok(meta) = fs::symlink_metadata(&self.dir) else {
            return false;
        };
        let uid = rustix::process::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != uid {
            return false;
        }
        // Writable by others: someone else may have planted entries.
        meta.mode() & 0o022 == 0
    }

    /// Removes the oldest entries until the rest fit the bound (`keep`,
    /// just written, stays), and temp files a killed run left.
    fn evict(&self, keep: &Path) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let ours = |prefix: &str, suffix: &str| {
                name.starts_with(prefix) && name.ends_with(suffix) && meta.is_file()
            };
            if ours(&format!(".{PREFIX}"), ".tmp") {
                if now.duration_since(used).unwrap_or_default() > STALE_TEMP {
                    let _ = fs::remove_file(entry.path());
                }
            } else if ours(PREFIX, SUFFIX) && starts_with_magic(&entry.path()) {
                entries.push((used, meta.len(), entry.path()));
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                tracing::debug!(entry = %path.display(), "scan cache: evicted");
                total -= len;
            }
        }
    }
}

/// Whether the file at `path` begins as an entry does: a file that only
/// has our name is still not ours to evict.
fn starts_with_magic(path: &Path) -> bool {
    let mut head = [0u8; MAGIC.len()];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == *MAGIC)
}

fn encode_entry(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(MAGIC);
    e.u32(FORMAT);
    e.str(env!("CARGO_PKG_VERSION"));
    e.bytes(key);
    e.bytes(payload);
    let sum = Sha256::digest(&e.0);
    e.0.extend_from_slice(&sum);
    e.0
}

/// The payload of an entry file's `bytes` if they are whole, of this
/// version and for `key`.
pub fn decode_entry(bytes: &[u8], key: &[u8]) -> Result<Vec<u8>, Miss> {
    if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
        return Err(Miss::Damaged);
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body)[..] != *sum {
        return Err(Miss::Damaged);
    }
    let mut d = Dec::new(&body[MAGIC.len()..]);
    if d.u32() != Some(FORMAT) || d.str().as_deref() != Some(env!("CARGO_PKG_VERSION")) {
        return Err(Miss::OtherVersion);
    }
    if d.bytes().ok_or(Miss::Damaged)? != key {
        return Err(Miss::Changed);
    }
    let payload = d.bytes().ok_or(Miss::Damaged)?.to_vec();
    if !d.is_done() {
        return Err(Miss::Damaged);
    }
    Ok(payload)
}

/// A file's bytes, for tests that damage entries.
#[cfg(test)]
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(SUFFIX))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::PermissionsExt;

    fn input(dir: &Path, name: &str) -> (PathBuf, File) {
        let path = dir.join(name);
        fs::write(&path, name.repeat(1000)).unwrap();
        let f = File::open(&path).unwrap();
        (path, f)
    }

    #[test]
    fn a_saved_entry_loads_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("c/imprint"), 1 << 20);
        let (_, f) = input(dir.path(), "a");
        let id = Identity::of(&f, b"needs").unwrap();
        assert_eq!(cache.load(&id), Err(Miss::Absent));
        cache.save(&id, b"payload").unwrap();
        let meta = fs::metadata(cache.dir()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        let path = &entries(cache.dir())[0];
        assert_eq!(fs::metadata(path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(cache.load(&id).unwrap(), b"payload");
        let other = Identity::of(&f, b"other needs").unwrap();
        assert_eq!(cache.load(&other), Err(Miss::Absent));
        let good = fs::read(path).unwrap();
        for cut in [0, 10, good.len() / 2, good.len() - 1] {
            fs::write(path, &good[..cut]).unwrap();
            assert_eq!(cache.load(&id), Err(Miss::Damaged), "cut at {cut}");
        }
        fs::write(path, vec![0u8; good.len()]).unwrap();
        assert_eq!(cache.load(&id), Err(Miss::Damaged));
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        fs::write(path, &flipped).unwrap();
        assert_eq!(cache.load(&id), Err(Miss::Damaged));
        // Another version's entry: its checksum is right, its version not.
        let mut e = Enc::default();
        e.0.extend_from_slice(MAGIC);
        e.u32(FORMAT);
        e.str("0.0.0-other");
        e.bytes(&id.key);
        e.bytes(b"payload");
        let sum = Sha256::digest(&e.0);
        e.0.extend_from_slice(&sum);
        fs::write(path, &e.0).unwrap();
        assert_eq!(cache.load(&id), Err(Miss::OtherVersion));
        fs::write(path, &good).unwrap();
        assert_eq!(cache.load(&id).unwrap(), b"payload");
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("cache"), 2500);
        let ids: Vec<Identity> = ["a", "b", "c"]
            .iter()
            .map(|n| Identity::of(&input(dir.path(), n).1, b"n").unwrap())
            .collect();
        cache.save(&ids[0], &[1u8; 1000]).unwrap();
        cache.save(&ids[1], &[2u8; 1000]).unwrap();
        // Make "a" the older one, then use it: "b" is now the least recent.
        let old = SystemTime::now() - Duration::from_secs(100);
        for p in entries(cache.dir()) {
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert!(cache.load(&ids[0]).is_ok());
        cache.save(&ids[2], &[3u8; 1000]).unwrap();
        assert!(cache.load(&ids[0]).is_ok());
        assert_eq!(cache.load(&ids[1]), Err(Miss::Absent));
        assert!(cache.load(&ids[2]).is_ok());
    }

    #[test]
    fn a_directory_others_can_write_is_refused_and_one_they_can_read_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let cache = Cache::at(open.clone(), 1 << 20);
        let id = Identity::of(&input(dir.path(), "a").1, b"n").unwrap();
        assert!(cache.save(&id, b"x").is_err());
        assert_eq!(cache.load(&id), Err(Miss::Unusable));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        cache.save(&id, b"x").unwrap();
        assert_eq!(fs::metadata(&open).unwrap().mode() & 0o777, 0o755);
        let entry = fs::metadata(cache.entry_path(&id)).unwrap();
        assert_eq!(entry.mode() & 0o777, 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let linked = Cache::at(link, 1 << 20);
        assert_eq!(linked.load(&id), Err(Miss::Unusable));
        assert!(linked.save(&id, b"x").is_err());
    }
}
