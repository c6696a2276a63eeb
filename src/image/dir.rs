//! A staging directory: the runbook's original flow, where the rootfs is an
//! extracted tree that flash.sh will pack. Files are written atomically
//! (temp file, then rename) and never through a symlink, since a symlink in
//! a rootfs points into the *device's* tree, not the host's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use thiserror::Error;

use super::{EntryType, FileMeta, Found, ImageError, ImageFacts, ImageReader};
use crate::io::output;
use crate::plan::{Existing, ImagePath, Plan, PlanKind};

#[derive(Debug, Error)]
pub enum DirError {
    #[error("{0} is not a directory; --rootfs-dir takes the extracted rootfs staging tree")]
    NotADirectory(PathBuf),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot give {path} owner {uid}:{gid}: {source}. Run imprint as root (as the runbook does) to stage files for other users")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("{path} is a {kind}, not a directory; imprint will not write through it. Make it a real directory and try again")]
    NotDirectory { path: PathBuf, kind: &'static str },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> DirError + 'p {
    move |source| DirError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn kind_of(meta: &fs::Metadata) -> EntryType {
    let t = meta.file_type();
    if t.is_symlink() {
        EntryType::Symlink
    } else if t.is_dir() {
        EntryType::Dir
    } else if t.is_file() {
        EntryType::Regular
    } else {
        EntryType::Other
    }
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Regular => "regular file",
        EntryType::Dir => "directory",
        EntryType::Symlink => "symbolic link",
        EntryType::Other => "special file",
    }
}

/// A staging tree.
pub struct StagingDir {
    root: PathBuf,
}

impl StagingDir {
    pub fn open(root: &Path) -> Result<StagingDir, DirError> {
        let meta = fs::metadata(root).map_err(io_err("open", root))?;
        if !meta.is_dir() {
            return Err(DirError::NotADirectory(root.to_path_buf()));
        }
        Ok(StagingDir {
            root: root.to_path_buf(),
        })
    }

    /// Host path of an image path, with every component below the root
    /// checked not to be a symlink. Returns the metadata of the last
    /// component if it exists.
    fn resolve(&self, path: &ImagePath) -> Result<(PathBuf, Option<fs::Metadata>), DirError> {
        let mut host = self.root.clone();
        let parts = path.components();
        for (i, part) in parts.iter().enumerate() {
            host.push(part);
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Ok((self.join(path), None))
                }
                Err(e) => return Err(io_err("inspect", &host)(e)),
            };
            let last = i + 1 == parts.len();
            if !last && !meta.is_dir() {
                return Err(DirError::NotDirectory {
                    path: host,
                    kind: describe(kind_of(&meta)),
                });
            }
            if last {
                return Ok((host, Some(meta)));
            }
        }
        Ok((host, None))
    }

    fn join(&self, path: &ImagePath) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(path.components());
        p
    }

    fn read_small(&self, rel: &str) -> Result<Option<Vec<u8>>, DirError> {
        let path = ImagePath::parse(&format!("/{rel}")).expect("static path");
        match self.resolve(&path) {
            Ok((host, Some(meta))) if meta.is_file() => {
                fs::read(&host).map(Some).map_err(io_err("read", &host))
            }
            Ok(_) | Err(DirError::NotDirectory { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn facts(&self) -> Result<ImageFacts, DirError> {
        let etc = self.root.join("etc");
        let reference_mtime = fs::symlink_metadata(&etc).map(|m| m.mtime()).unwrap_or(0);
        Ok(ImageFacts {
            passwd: self.read_small("etc/passwd")?,
            group: self.read_small("etc/group")?,
            reference_mtime,
        })
    }

    /// Creates the plan's directories and writes its files to temp names
    /// beside their final names. Nothing is visible under a final name until
    /// [`Staged::commit`].
    pub fn stage(&self, plan: &Plan) -> Result<Staged, ImageError> {
        plan.check_existing(|p| {
            let (_, meta) = self.resolve(p)?;
            Ok::<_, ImageError>(meta.map(|m| {
                let kind = kind_of(&m);
                Existing {
                    kind,
                    links: if kind == EntryType::Regular {
                        m.nlink() as u32
                    } else {
                        1
                    },
                    what: format!("a {} in the staging tree", describe(kind)),
                }
            }))
        })?;
        let mut staged = Staged { files: Vec::new() };
        let mtime = UNIX_EPOCH + Duration::from_secs(plan.mtime.max(0) as u64);
        for entry in &plan.entries {
            let (host, existing) = self.resolve(&entry.path)?;
            let kind = existing.as_ref().map(kind_of);
            match &entry.kind {
                // Plan::check_existing above refused anything in the way.
                PlanKind::Dir => match kind {
                    Some(_) => {}
                    None => {
                        fs::create_dir(&host).map_err(io_err("create directory", &host))?;
                        fs::set_permissions(&host, fs::Permissions::from_mode(entry.mode))
                            .map_err(io_err("set the mode of", &host))?;
                        chown(&host, entry.owner.uid, entry.owner.gid)?;
                        File::open(&host)
                            .and_then(|f| f.set_modified(mtime))
                            .map_err(io_err("set the time of", &host))?;
                    }
                },
                PlanKind::File(content) => {
                    let temp = host.with_file_name(format!(
                        ".{}.imprint-{}.tmp",
                        entry.path.file_name(),
                        std::process::id()
                    ));
                    let _ = fs::remove_file(&temp);
                    output::register(&temp);
                    staged.files.push((temp.clone(), host));
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&temp)
                        .map_err(io_err("create", &temp))?;
                    f.write_all(content).map_err(io_err("write", &temp))?;
                    chown(&temp, entry.owner.uid, entry.owner.gid)?;
                    // After chown, which may clear set-id bits.
                    f.set_permissions(fs::Permissions::from_mode(entry.mode))
                        .map_err(io_err("set the mode of", &temp))?;
                    f.set_modified(mtime)
                        .map_err(io_err("set the time of", &temp))?;
                    f.sync_all().map_err(io_err("sync", &temp))?;
                }
            }
        }
        Ok(staged)
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), DirError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|source| DirError::Chown {
        path: path.to_path_buf(),
        uid,
        gid,
        source,
    })
}

/// Files written under temp names, waiting for the API to accept the
/// password. Dropping it uncommitted removes them.
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    pub fn commit(mut self) -> Result<Vec<PathBuf>, DirError> {
        let mut done = Vec::new();
        for (temp, target) in std::mem::take(&mut self.files) {
            fs::rename(&temp, &target).map_err(io_err("rename into place", &target))?;
            output::unregister(&temp);
            if let Some(dir) = target.parent() {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
            done.push(target);
        }
        Ok(done)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (temp, _) in &self.files {
            let _ = fs::remove_file(temp);
            output::unregister(temp);
        }
    }
}

/// Reads single files of a staging tree (verify).
pub struct DirReader {
    dir: StagingDir,
}

impl DirReader {
    pub fn new(root: &Path) -> DirReader {
        DirReader {
            dir: StagingDir {
                root: root.to_path_buf(),
            },
        }
    }
}

impl ImageReader for DirReader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        let (host, meta) = match self.dir.resolve(path) {
            Ok(found) => found,
            Err(DirError::NotDirectory { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(meta) = meta else { return Ok(None) };
        let info = FileMeta {
            kind: kind_of(&meta),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size: meta.len(),
        };
        let content = if info.kind == EntryType::Regular && info.size <= max_content {
            let mut data = Vec::new();
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&host)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| ImageError::from(io_err("read", &host)(e)))?;
            Some(data)
        } else {
            None
        };
        Ok(Some((info, content)))
    }
}
