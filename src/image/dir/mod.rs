//! A staging directory: the runbook's original flow, where the rootfs is an
//! extracted tree that flash.sh will pack. Files are written atomically
//! (temp file, then rename) and never through a symlink, since a symlink in
//! a rootfs points into the *device's* tree, not the host's: a symlinked
//! `/etc` is resolved inside the tree first, as for every image format,
//! and the resolved path walked. The tree may be writable by another user
//! while imprint runs, so it is only ever walked from directory handles
//! (see `handle.rs`).

mod changes;
mod handle;
mod listing;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use thiserror::Error;

use super::{EntryType, Found, ImageError, ImageFacts, ImageReader};
use crate::io::output;
use crate::plan::{Existing, ImagePath, Plan, PlanKind};
use changes::Removal;
use handle::{Stat, Walk, WalkError};

#[derive(Debug, Error)]
pub enum DirError {
    #[error("{0} is not a directory; --rootfs-dir takes the extracted rootfs staging tree")]
    NotADirectory(PathBuf),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    // `cause` is said in the message (the advice follows it), so it is
    // not also a `source()`.
    #[error("cannot give {path} owner {uid}:{gid}: {cause}. Run imprint as root (as the runbook does) to stage files for other users")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        cause: io::Error,
    },
    #[error("{path} is a {kind}, not a directory; imprint will not write through it. Make it a real directory and try again")]
    NotDirectory { path: PathBuf, kind: &'static str },
    #[error("{path} was replaced while imprint was using it; make sure nothing else changes the staging tree while imprint runs, and try again")]
    Replaced { path: PathBuf },
    #[error("{path} is a directory that is not empty; imprint removes it only with `recursive = true` in its entry")]
    NotEmpty { path: PathBuf },
    // As for Chown: the cause is in the message, with the advice after it.
    #[error("cannot set the attribute {name} on {path}: {cause}. security.* and trusted.* need root, and the staging tree's filesystem must support extended attributes")]
    Xattr {
        path: PathBuf,
        name: String,
        cause: io::Error,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> DirError + 'p {
    move |source| DirError::Io {
        op,
        path: path.to_path_buf(),
        source,
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

/// A path of the tree as the plan's checks see it.
fn existing(st: &Stat) -> Existing {
    const WHERE: &str = "in the staging tree";
    match st.kind {
        // Says how many links a hard-linked file has, like the other formats.
        EntryType::Regular => Existing::new(EntryType::Regular, st.links, WHERE),
        kind => Existing {
            kind,
            links: 1,
            what: format!("a {} {WHERE}", describe(kind)),
        },
    }
}

/// A staging tree, held open by its root directory.
pub struct StagingDir {
    root: PathBuf,
    fd: OwnedFd,
}

/// The directory holding a path's last component, and that component's
/// `lstat` if it exists.
struct Located {
    parent: OwnedFd,
    parent_path: PathBuf,
    name: String,
    stat: Option<Stat>,
}

impl Located {
    fn host(&self) -> PathBuf {
        self.parent_path.join(handle::os_name(&self.name))
    }
}

impl StagingDir {
    pub fn open(root: &Path) -> Result<StagingDir, DirError> {
        let fd = handle::open_root(root).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => DirError::NotADirectory(root.to_path_buf()),
            _ => io_err("open", root)(e),
        })?;
        Ok(StagingDir {
            root: root.to_path_buf(),
            fd,
        })
    }

    /// Host path of the first components of an image path, for messages
    /// and signal cleanup (never for acting on the tree).
    fn host(&self, parts: &[String]) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(parts.iter().map(|part| handle::os_name(part)));
        p
    }

    /// Opens the directory `parts` below the root; `None` if a component
    /// is absent, an error if one is not a directory.
    fn open_dir(&self, parts: &[String]) -> Result<Option<OwnedFd>, DirError> {
        match handle::walk(self.fd.as_fd(), parts) {
            Ok(Walk::Found(fd)) => Ok(Some(fd)),
            Ok(Walk::Missing) => Ok(None),
            Ok(Walk::Blocked { depth, kind }) => Err(DirError::NotDirectory {
                path: self.host(&parts[..depth]),
                kind: describe(kind),
            }),
            Ok(Walk::Replaced { depth }) => Err(DirError::Replaced {
                path: self.host(&parts[..depth]),
            }),
            Err(WalkError { depth, source }) => {
                Err(io_err("open", &self.host(&parts[..depth]))(source))
            }
        }
    }

    /// Finds `path`'s parent directory, checked not to be or pass through
    /// a symlink, and inspects the last component there. `None` if a
    /// parent is absent.
    fn locate(&self, path: &ImagePath) -> Result<Option<Located>, DirError> {
        let parts = path.components();
        let parents = &parts[..parts.len() - 1];
        let Some(parent) = self.open_dir(parents)? else {
            return Ok(None);
        };
        let name = path.file_name().to_string();
        let parent_path = self.host(parents);
        let stat = handle::stat_at(parent.as_fd(), &name)
            .map_err(|e| io_err("inspect", &parent_path.join(&name))(e))?;
        Ok(Some(Located {
            parent,
            parent_path,
            name,
            stat,
        }))
    }

    /// The target of the symlink at `path` (its parents resolved, so
    /// none of them is a link), if one is there.
    fn symlink_at(&self, path: &ImagePath) -> Result<Option<String>, ImageError> {
        let found = match self.locate(path) {
            Ok(Some(found)) => found,
            // A parent that is a file: no link; the plan's checks say what.
            Ok(None) | Err(DirError::NotDirectory { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if found.stat.map(|s| s.kind) != Some(EntryType::Symlink) {
            return Ok(None);
        }
        let host = found.parent_path.join(&found.name);
        let target = match handle::read_link_at(found.parent.as_fd(), &found.name) {
            Ok(target) => target,
            // It was a link when looked at and is not (EINVAL) or gone
            // (ENOENT) when read: something swapped it meanwhile.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidInput | io::ErrorKind::NotFound
                ) =>
            {
                return Err(DirError::Replaced { path: host }.into())
            }
            Err(e) => return Err(io_err("read the symlink", &host)(e).into()),
        };
        Ok(Some(target))
    }

    /// Like [`locate`](Self::locate), for writing: a parent that is absent
    /// now (it was checked before) is an error.
    fn locate_for_write(&self, path: &ImagePath) -> Result<Located, DirError> {
        self.locate(path)?.ok_or_else(|| {
            let parent = path.parent().map(|p| p.components().to_vec());
            io_err("open", &self.host(&parent.unwrap_or_default()))(io::ErrorKind::NotFound.into())
        })
    }

    /// A small regular file's bytes; `None` if it is absent or anything
    /// but a regular file. Symlinks on the way resolve as in a chroot at
    /// the tree's root (an `/etc/passwd -> ../usr/lib/passwd` image), never
    /// leaving it; where the kernel cannot do that (no openat2), none is
    /// followed.
    fn read_small(&self, rel: &str) -> Result<Option<Vec<u8>>, DirError> {
        const MAX: u64 = 16 << 20;
        let host = self.root.join(rel);
        match handle::open_in_root(self.fd.as_fd(), rel) {
            Ok(Some(mut file)) => {
                let st = handle::stat(file.as_fd()).map_err(io_err("read", &host))?;
                if st.kind != EntryType::Regular || st.size > MAX {
                    return Ok(None);
                }
                let mut data = Vec::new();
                file.read_to_end(&mut data).map_err(io_err("read", &host))?;
                return Ok(Some(data));
            }
            Ok(None) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(io_err("read", &host)(e)),
        }
        let path = ImagePath::parse(&format!("/{rel}")).expect("static path");
        let found = match self.locate(&path) {
            Ok(Some(found)) => found,
            Ok(None) | Err(DirError::NotDirectory { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if found.stat.map(|s| s.kind) != Some(EntryType::Regular) {
            return Ok(None);
        }
        read_file(&found, MAX).map(|(_, data)| data)
    }

    pub fn facts(&self) -> Result<ImageFacts, DirError> {
        let reference_mtime = handle::stat_at(self.fd.as_fd(), "etc")
            .ok()
            .flatten()
            .map_or(0, |s| s.mtime);
        Ok(ImageFacts {
            passwd: self.read_small("etc/passwd")?,
            group: self.read_small("etc/group")?,
            reference_mtime,
            ..ImageFacts::default()
        })
    }

    /// Creates the plan's directories and writes its files to temp names
    /// beside their final names. Nothing is visible under a final name until
    /// [`Staged::commit`].
    pub fn stage(&self, plan: &Plan) -> Result<Staged, ImageError> {
        let existing = |p: &ImagePath| {
            let found = self.locate(p)?;
            Ok::<_, ImageError>(found.and_then(|f| f.stat).map(|s| existing(&s)))
        };
        // Symlinks in the tree resolve as in a chroot at its root, as the
        // image formats do; the entries are then written to the resolved
        // paths by the same walk as always, which refuses any symlink on
        // the way: a link swapped in after this check is refused, never
        // followed.
        let plan = &plan.follow_links(|p| self.symlink_at(p))?.check(existing)?;
        plan.check_existing(existing)?;
        let mut staged = Staged {
            files: Vec::new(),
            removals: Vec::new(),
        };
        let mtime = UNIX_EPOCH + Duration::from_secs(plan.mtime.max(0) as u64);
        for entry in &plan.entries {
            let at = self.locate_for_write(&entry.path)?;
            let (uid, gid) = (entry.owner.uid, entry.owner.gid);
            match &entry.kind {
                // Plan::check_existing above refused anything in the way; if
                // it was swapped since, the walk to its children refuses it.
                PlanKind::Dir if at.stat.is_some() => {}
                PlanKind::Dir => {
                    let host = at.host();
                    handle::make_dir_at(at.parent.as_fd(), &at.name, 0o700)
                        .map_err(io_err("create directory", &host))?;
                    let dir = File::from(open_created_dir(&at)?);
                    finish(&dir, &host, entry.mode, uid, gid, mtime)?;
                    changes::set_xattrs(&dir, &host, &entry.xattrs)?;
                }
                PlanKind::File(content) => {
                    let xattrs = changes::xattrs_for(entry, &at)?;
                    let file = StagedFile::create(at, None)?;
                    // Registered from here on: dropping `staged` removes it.
                    staged.files.push(file);
                    let file = staged.files.last().expect("just pushed");
                    let temp = &file.temp_path;
                    let mut f = file.temp.as_ref().expect("a file");
                    f.write_all(content).map_err(io_err("write", temp))?;
                    finish(f, temp, entry.mode, uid, gid, mtime)?;
                    // After chown, which drops security.capability.
                    changes::set_xattrs(f, temp, &xattrs)?;
                    f.sync_all().map_err(io_err("sync", temp))?;
                }
                PlanKind::Symlink(target) => {
                    let link = StagedFile::create(at, Some(target))?;
                    staged.files.push(link);
                    let link = staged.files.last().expect("just pushed");
                    let (dir, temp) = (link.dir.as_fd(), &link.temp_path);
                    handle::own_link_at(dir, &link.temp_name, uid, gid, plan.mtime).map_err(
                        |cause| DirError::Chown {
                            path: temp.clone(),
                            uid,
                            gid,
                            cause,
                        },
                    )?;
                    changes::set_link_xattrs(dir, &link.temp_name, temp, &entry.xattrs)?;
                }
                PlanKind::Absent { recursive } => {
                    staged.removals.extend(Removal::plan(at, *recursive)?);
                }
            }
        }
        Ok(staged)
    }
}

/// Opens the directory just created at `at`, refusing whatever was put in
/// its place since.
fn open_created_dir(at: &Located) -> Result<OwnedFd, DirError> {
    let host = at.host();
    handle::open_dir_at(at.parent.as_fd(), &at.name).map_err(|e| {
        let swapped = matches!(
            e.raw_os_error(),
            Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT)
        );
        match handle::stat_at(at.parent.as_fd(), &at.name) {
            Ok(Some(st)) if swapped && st.kind != EntryType::Dir => DirError::NotDirectory {
                path: host.clone(),
                kind: describe(st.kind),
            },
            _ if swapped => DirError::Replaced { path: host.clone() },
            _ => io_err("open", &host)(e),
        }
    })
}

/// Gives an open file or directory its owner, mode and time, all through
/// the descriptor.
fn finish(
    file: &File,
    path: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: std::time::SystemTime,
) -> Result<(), DirError> {
    std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|cause| DirError::Chown {
        path: path.to_path_buf(),
        uid,
        gid,
        cause,
    })?;
    // After chown, which may clear set-id bits.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set the mode of", path))?;
    file.set_modified(mtime)
        .map_err(io_err("set the time of", path))
}

/// Reads a regular file found by [`StagingDir::locate`], at most
/// `max_content` bytes of it (else no content). The metadata is that of
/// the file opened, so both describe the same file.
fn read_file(found: &Located, max_content: u64) -> Result<(Stat, Option<Vec<u8>>), DirError> {
    let host = found.host();
    let mut file =
        handle::open_file_at(found.parent.as_fd(), &found.name).map_err(io_err("read", &host))?;
    let st = handle::stat(file.as_fd()).map_err(io_err("read", &host))?;
    if st.kind != EntryType::Regular || st.size > max_content {
        return Ok((st, None));
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err("read", &host))?;
    Ok((st, Some(data)))
}

/// One file (or symlink) written under a temp name in the directory it is
/// for.
struct StagedFile {
    dir: File,
    temp_name: String,
    name: String,
    /// The open file; `None` for a symlink.
    temp: Option<File>,
    /// Full paths, for messages and the signal handler's cleanup.
    temp_path: PathBuf,
    target: PathBuf,
}

impl StagedFile {
    /// Creates `.NAME.imprint-PID-RANDOM.tmp` (the names
    /// [`output`] uses, so a batch removes one left by a killed run) next to
    /// the final name.
    /// A symlink to `link` instead of a file, when given.
    fn create(at: Located, link: Option<&str>) -> Result<StagedFile, DirError> {
        let target = at.host();
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| {
            io_err("create a temp file for", &target)(io::Error::other(e.to_string()))
        })?;
        let temp_name = format!(
            ".{}.imprint-{}-{}.tmp",
            at.name,
            std::process::id(),
            hex::encode(random)
        );
        let temp_path = at.parent_path.join(&temp_name);
        output::register(&temp_path);
        let made = match link {
            None => handle::create_at(at.parent.as_fd(), &temp_name).map(Some),
            Some(target) => handle::symlink_at(at.parent.as_fd(), &temp_name, target).map(|_| None),
        };
        match made {
            Ok(temp) => Ok(StagedFile {
                dir: File::from(at.parent),
                temp_name,
                name: at.name,
                temp,
                temp_path,
                target,
            }),
            Err(e) => {
                output::unregister(&temp_path);
                Err(io_err("create", &temp_path)(e))
            }
        }
    }

    /// Renames the temp file to its final name inside the directory held
    /// since it was created.
    fn commit(&self) -> Result<(), DirError> {
        handle::rename_at(self.dir.as_fd(), &self.temp_name, &self.name)
            .map_err(io_err("rename into place", &self.target))?;
        output::unregister(&self.temp_path);
        let _ = self.dir.sync_all();
        Ok(())
    }
}

/// Files written under temp names, and removals, waiting for the API to
/// accept the password. Dropping it uncommitted removes the temp files and
/// removes nothing else.
pub struct Staged {
    files: Vec<StagedFile>,
    removals: Vec<Removal>,
}

impl Staged {
    pub fn commit(mut self) -> Result<Vec<PathBuf>, DirError> {
        let mut done = Vec::new();
        let mut files = std::mem::take(&mut self.files).into_iter();
        while let Some(file) = files.next() {
            if let Err(e) = file.commit() {
                // Drop removes this temp file and the ones not renamed yet.
                self.files.push(file);
                self.files.extend(files);
                return Err(e);
            }
            done.push(file.target);
        }
        for removal in std::mem::take(&mut self.removals) {
            removal.commit()?;
        }
        Ok(done)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for file in &self.files {
            let _ = handle::remove_at(file.dir.as_fd(), &file.temp_name);
            output::unregister(&file.temp_path);
        }
    }
}

/// Reads single files of a staging tree (verify).
pub struct DirReader {
    root: PathBuf,
    dir: Option<StagingDir>,
}

impl DirReader {
    pub fn new(root: &Path) -> DirReader {
        DirReader {
            root: root.to_path_buf(),
            dir: None,
        }
    }
}

impl ImageReader for DirReader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        let found = match self.tree()?.locate(path) {
            Ok(Some(found)) => found,
            Ok(None) | Err(DirError::NotDirectory { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(mut st) = found.stat else {
            return Ok(None);
        };
        let mut content = None;
        if st.kind == EntryType::Regular && st.size <= max_content {
            (st, content) = read_file(&found, max_content)?;
        }
        Ok(Some((listing::meta_of(&st, None), content)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Password;
    use crate::owner::{OwnerSpec, UserDb};
    use crate::plan::{DeviceVars, OverlaySpec};
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt};

    const MTIME: i64 = 1_700_000_123;

    /// A staging tree with /etc/passwd and /etc/group, and a directory
    /// beside it standing for the host.
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let host = tmp.path().join("host");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir(&host).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        fs::write(host.join("passwd"), "host:x:0:0::/:/bin/sh\n").unwrap();
        (tmp, root, host)
    }

    /// The default overlay, owned by whoever runs the test (so it passes
    /// without root too).
    fn plan() -> Plan {
        let password = Password::from_plain("0123456789abcdef0123456789abcdef");
        let vars = DeviceVars {
            serial: "AZJN-0042",
            email: "azaion-jetson-0042@azaion.com",
            password: &password,
        };
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let owner: OwnerSpec = format!("{uid}:{gid}").parse().unwrap();
        let db = UserDb::parse(None, None);
        Plan::resolve(&OverlaySpec::default_spec(), &vars, &db, &owner, MTIME).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn staging_dir_writes_temps_then_commits() {
        let (_tmp, root, _) = tree();
        let plan = plan();
        let staged = StagingDir::open(&root).unwrap().stage(&plan).unwrap();
        let azaion = root.join("etc/azaion");
        let temps = names(&azaion);
        assert_eq!(temps.len(), 1, "{temps:?}");
        let pid = std::process::id();
        assert!(temps[0].starts_with(&format!(".device.conf.imprint-{pid}-")));
        assert!(temps[0].ends_with(".tmp"));
        let done = staged.commit().unwrap();
        assert_eq!(done, [azaion.join("device.conf")]);
        assert_eq!(names(&azaion), ["device.conf"]);
        let conf = fs::symlink_metadata(azaion.join("device.conf")).unwrap();
        assert_eq!((conf.mode() & 0o7777, conf.mtime()), (0o600, MTIME));
        assert_eq!(
            fs::read(azaion.join("device.conf")).unwrap(),
            plan.entries[1].content().unwrap()
        );
        let dir = fs::symlink_metadata(&azaion).unwrap();
        assert_eq!((dir.mode() & 0o7777, dir.is_dir()), (0o755, true));
        // A second run replaces the file and keeps the directory.
        StagingDir::open(&root)
            .unwrap()
            .stage(&plan)
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(names(&azaion), ["device.conf"]);
    }

    #[test]
    fn staging_dir_dropped_uncommitted_leaves_no_temp() {
        let (_tmp, root, _) = tree();
        drop(StagingDir::open(&root).unwrap().stage(&plan()).unwrap());
        assert!(names(&root.join("etc/azaion")).is_empty());
    }

    #[test]
    fn staging_dir_refuses_symlinks_and_hard_links() {
        // What is in the way, how to put it there (in root, pointing to
        // host), and the error that names it.
        type Setup = dyn Fn(&Path, &Path);
        let cases: [(&str, &Setup, &str); 3] = [
            (
                "etc",
                &|root, host| {
                    fs::rename(root.join("etc"), root.join("etc.real")).unwrap();
                    symlink(host, root.join("etc")).unwrap();
                },
                // Resolved inside the tree, where the host's path is not.
                "/etc/azaion lies behind a symlink in the image: /etc -> ",
            ),
            (
                "etc/azaion",
                &|root, host| symlink(host, root.join("etc/azaion")).unwrap(),
                "/etc/azaion lies behind a symlink in the image: /etc/azaion -> ",
            ),
            (
                "device.conf",
                &|root, host| {
                    fs::create_dir(root.join("etc/azaion")).unwrap();
                    symlink(host.join("passwd"), root.join("etc/azaion/device.conf")).unwrap();
                },
                "/etc/azaion/device.conf is a symbolic link in the staging tree; imprint only replaces a regular file there",
            ),
        ];
        for (what, make, message) in cases {
            let (_tmp, root, host) = tree();
            make(&root, &host);
            let err = StagingDir::open(&root)
                .unwrap()
                .stage(&plan())
                .err()
                .unwrap_or_else(|| panic!("{what}: staged"));
            assert!(err.to_string().contains(message), "{what}: {err}");
            assert_eq!(names(&host), ["passwd"], "{what}");
        }
    }

    #[test]
    fn a_symlink_on_the_way_is_named() {
        let (_tmp, root, host) = tree();
        let plan = Plan {
            entries: plan().entries.split_off(1),
            mtime: MTIME,
        };
        fs::rename(root.join("etc"), root.join("etc.real")).unwrap();
        symlink(&host, root.join("etc")).unwrap();
        let err = StagingDir::open(&root).unwrap().stage(&plan).err().unwrap();
        assert!(
            err.to_string().contains(&format!(
                "/etc -> {} leads to {}, which the image does not hold",
                host.display(),
                host.display()
            )),
            "{err}"
        );
        assert_eq!(names(&host), ["passwd"]);
    }

    /// An absolute link resolves from the tree's root, as in a chroot:
    /// the host's directory of the same name is never written.
    #[test]
    fn an_absolute_etc_link_resolves_inside_the_tree() {
        let (_tmp, root, host) = tree();
        let inside = root.join(host.strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        fs::rename(root.join("etc"), root.join("etc.real")).unwrap();
        symlink(&host, root.join("etc")).unwrap();
        let staged = StagingDir::open(&root).unwrap().stage(&plan()).unwrap();
        staged.commit().unwrap();
        assert_eq!(names(&inside.join("azaion")), ["device.conf"]);
        assert_eq!(names(&host), ["passwd"]);
    }

    #[test]
    fn facts_and_verify_never_read_through_symlinks() {
        let (_tmp, root, host) = tree();
        let dir = StagingDir::open(&root).unwrap();
        let facts = dir.facts().unwrap();
        assert_eq!(
            facts.passwd.as_deref(),
            Some(&b"root:x:0:0::/:/bin/sh\n"[..])
        );
        fs::remove_file(root.join("etc/passwd")).unwrap();
        symlink(host.join("passwd"), root.join("etc/passwd")).unwrap();
        assert_eq!(dir.facts().unwrap().passwd, None);
        fs::rename(root.join("etc"), root.join("etc.real")).unwrap();
        symlink(&host, root.join("etc")).unwrap();
        let facts = dir.facts().unwrap();
        assert_eq!((facts.passwd, facts.group), (None, None));

        let path = ImagePath::parse("/etc/passwd").unwrap();
        let mut reader = DirReader::new(&root);
        assert!(reader.lookup(&path, 1 << 20).unwrap().is_none());
        fs::remove_file(root.join("etc")).unwrap();
        fs::rename(root.join("etc.real"), root.join("etc")).unwrap();
        let (meta, content) = reader.lookup(&path, 1 << 20).unwrap().unwrap();
        assert_eq!(meta.kind, EntryType::Symlink);
        assert_eq!(content, None);
        let group = ImagePath::parse("/etc/group").unwrap();
        let (meta, content) = reader.lookup(&group, 1 << 20).unwrap().unwrap();
        assert_eq!((meta.kind, meta.size), (EntryType::Regular, 10));
        assert_eq!(content.as_deref(), Some(&b"root:x:0:\n"[..]));
        let (_, content) = reader.lookup(&group, 9).unwrap().unwrap();
        assert_eq!(content, None);
    }

    #[test]
    fn passwd_behind_a_symlink_resolves_inside_the_tree() {
        let (_tmp, root, _host) = tree();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::rename(root.join("etc/passwd"), root.join("usr/lib/passwd")).unwrap();
        for target in [
            "../usr/lib/passwd",
            "/usr/lib/passwd",
            "../../../../usr/lib/passwd",
        ] {
            let _ = fs::remove_file(root.join("etc/passwd"));
            symlink(target, root.join("etc/passwd")).unwrap();
            let facts = StagingDir::open(&root).unwrap().facts().unwrap();
            assert_eq!(
                facts.passwd.as_deref(),
                Some(&b"root:x:0:0::/:/bin/sh\n"[..]),
                "{target}"
            );
        }
    }

    #[test]
    fn symlinks_removals_and_xattrs_are_staged_and_committed() {
        let (_tmp, root, host) = tree();
        fs::write(root.join("etc/motd"), "old").unwrap();
        fs::create_dir_all(root.join("etc/old/deep/er")).unwrap();
        fs::write(root.join("etc/old/deep/er/f"), "x").unwrap();
        symlink(&host, root.join("etc/old/deep/out")).unwrap();
        fs::create_dir(root.join("etc/empty")).unwrap();
        fs::create_dir(root.join("etc/full")).unwrap();
        fs::write(root.join("etc/full/f"), "x").unwrap();
        fs::write(root.join("etc/labelled"), "old").unwrap();
        let set = |name: &str, value: &str| {
            let flags = rustix::fs::XattrFlags::empty();
            rustix::fs::setxattr(root.join("etc/labelled"), name, value.as_bytes(), flags)
        };
        let have_xattrs =
            set("security.imprint-test", "label").is_ok() && set("user.old", "u").is_ok();
        let spec = OverlaySpec::parse(
            "[[entry]]\npath='/etc/motd'\ntype='symlink'\ntarget='../run/motd'\n\
             [[entry]]\npath='/etc/old'\ntype='absent'\nrecursive=true\n\
             [[entry]]\npath='/etc/empty'\ntype='absent'\n\
             [[entry]]\npath='/etc/never'\ntype='absent'\n\
             [[entry]]\npath='/etc/labelled'\ntype='file'\nmode='0644'\nowner='0:0'\ncontent='new'\nxattrs={'user.new'='n'}\n",
            "t",
        )
        .unwrap();
        let db = UserDb::parse(Some(b"root:x:0:0::/:/bin/sh\n"), Some(b"root:x:0:\n"));
        let password = Password::from_plain("pw");
        let vars = DeviceVars {
            serial: "AZJN-0042",
            email: "e",
            password: &password,
        };
        let plan =
            Plan::resolve(&spec, &vars, &db, &OwnerSpec::User("root".into()), MTIME).unwrap();
        let dir = StagingDir::open(&root).unwrap();
        // Dropped uncommitted: nothing changes.
        drop(dir.stage(&plan).unwrap());
        assert!(root.join("etc/old/deep/er/f").exists() && root.join("etc/empty").exists());
        assert_eq!(fs::read_to_string(root.join("etc/motd")).unwrap(), "old");
        dir.stage(&plan).unwrap().commit().unwrap();
        assert_eq!(
            fs::read_link(root.join("etc/motd")).unwrap(),
            Path::new("../run/motd")
        );
        assert_eq!(
            fs::symlink_metadata(root.join("etc/motd")).unwrap().mtime(),
            MTIME
        );
        assert!(!root.join("etc/old").exists() && !root.join("etc/empty").exists());
        assert!(
            host.join("passwd").exists(),
            "the removal followed a symlink"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/labelled")).unwrap(),
            "new"
        );
        if have_xattrs {
            let f = File::open(root.join("etc/labelled")).unwrap();
            let names = handle::xattr_names(f.as_fd()).unwrap();
            assert!(
                names.contains(&"security.imprint-test".to_string()),
                "{names:?}"
            );
            assert!(names.contains(&"user.new".to_string()), "{names:?}");
            assert!(!names.contains(&"user.old".to_string()), "{names:?}");
        }
        // A full directory without `recursive` is refused before anything.
        let spec = OverlaySpec::parse("[[entry]]\npath='/etc/full'\ntype='absent'\n", "t").unwrap();
        let plan =
            Plan::resolve(&spec, &vars, &db, &OwnerSpec::User("root".into()), MTIME).unwrap();
        let err = dir.stage(&plan).err().unwrap();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert!(root.join("etc/full/f").exists());
    }

    #[test]
    fn staging_root_must_be_a_directory() {
        let (_tmp, root, _) = tree();
        let err = StagingDir::open(&root.join("etc/passwd")).err().unwrap();
        assert!(matches!(err, DirError::NotADirectory(_)), "{err}");
        let err = StagingDir::open(&root.join("absent")).err().unwrap();
        assert!(err.to_string().starts_with("cannot open "), "{err}");
    }
}
