//! Directory handles for a staging tree that someone else may be changing
//! while imprint works in it: the tree is often writable by a build user
//! while imprint runs as root. Every step below the root is taken from an
//! open directory descriptor by a single name without following symlinks,
//! and every change is made through a descriptor or by name inside a held
//! directory. No path is resolved twice, so nothing that was checked can be
//! swapped for a symlink before it is used.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

use crate::plan::EntryType;

/// What `lstat` says about one name, as much as the staging tree needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub kind: EntryType,
    /// Permission bits only.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub links: u32,
    pub special: Option<crate::plan::model::Special>,
}

impl Stat {
    // The field types of `struct stat` differ between targets (nlink is
    // u64 on some and u32 on others).
    #[allow(clippy::unnecessary_cast)]
    fn from_raw(st: &rustix::fs::Stat) -> Stat {
        let kind = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::Symlink => EntryType::Symlink,
            FileType::Directory => EntryType::Dir,
            FileType::RegularFile => EntryType::Regular,
            _ => EntryType::Other,
        };
        use crate::plan::model::Special;
        let special = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::Fifo => Some(Special::Fifo),
            FileType::Socket => Some(Special::Socket),
            FileType::CharacterDevice => Some(Special::CharDevice),
            FileType::BlockDevice => Some(Special::BlockDevice),
            _ => None,
        };
        Stat {
            special,
            kind,
            mode: (st.st_mode as u32) & 0o7777,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            mtime: st.st_mtime as i64,
            size: st.st_size as u64,
            links: (st.st_nlink as u64).min(u64::from(u32::MAX)) as u32,
        }
    }
}

/// What walking down to a directory found.
#[derive(Debug)]
pub(super) enum Walk {
    /// The directory, opened.
    Found(OwnedFd),
    /// A component is absent.
    Missing,
    /// The first `depth` components end in something that is not a
    /// directory (a symlink, a file, ...), of this kind.
    Blocked { depth: usize, kind: EntryType },
    /// The first `depth` components end in a directory that was not one
    /// a moment before: someone is swapping it.
    Replaced { depth: usize },
}

/// A walk that failed for another reason at the first `depth` components.
#[derive(Debug)]
pub(super) struct WalkError {
    pub depth: usize,
    pub source: io::Error,
}

/// Set once the kernel said it has no openat2 (before Linux 5.6).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the tree's root. Following a symlink here is the operator's choice
/// (they named the path); everything below it is walked without.
pub(super) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)?;
    Ok(file.into())
}

/// Opens the directory `parts` below `root` without following any symlink.
pub(super) fn walk(root: BorrowedFd, parts: &[String]) -> Result<Walk, WalkError> {
    walk_with(root, parts, !NO_OPENAT2.load(Ordering::Relaxed))
}

fn walk_with(root: BorrowedFd, parts: &[String], try_openat2: bool) -> Result<Walk, WalkError> {
    if try_openat2 && !parts.is_empty() {
        match openat2_beneath(root, &parts.join("/")) {
            Ok(fd) => return Ok(Walk::Found(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed)
            }
            // Any refusal is told apart by the step-by-step walk below,
            // which also names the component at fault.
            Err(_) => {}
        }
    }
    let mut held: Option<OwnedFd> = None;
    for (i, name) in parts.iter().enumerate() {
        let here = held.as_ref().map_or(root, AsFd::as_fd);
        let depth = i + 1;
        match open_dir_at(here, name) {
            Ok(fd) => held = Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Walk::Missing),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return match stat_at(here, name) {
                    Ok(None) => Ok(Walk::Missing),
                    Ok(Some(st)) if st.kind != EntryType::Dir => Ok(Walk::Blocked {
                        depth,
                        kind: st.kind,
                    }),
                    Ok(Some(_)) => Ok(Walk::Replaced { depth }),
                    Err(source) => Err(WalkError { depth, source }),
                };
            }
            Err(source) => return Err(WalkError { depth, source }),
        }
    }
    match held {
        Some(fd) => Ok(Walk::Found(fd)),
        None => root
            .try_clone_to_owned()
            .map(Walk::Found)
            .map_err(|source| WalkError { depth: 0, source }),
    }
}

/// openat2 with every component required to be a real directory below
/// `root`: no symlink anywhere, no escape by `..`.
fn openat2_beneath(root: BorrowedFd, relative: &str) -> io::Result<OwnedFd> {
    openat2(
        root,
        relative,
        OFlags::RDONLY | OFlags::DIRECTORY,
        ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
    )
}

/// The openat2 system call (Linux 5.6 and later; ENOSYS before).
fn openat2(
    root: BorrowedFd,
    relative: &str,
    flags: OFlags,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let path = c_name(relative)?;
    let flags = flags | OFlags::CLOEXEC;
    Ok(rustix::fs::openat2(
        root,
        &path,
        flags,
        Mode::empty(),
        resolve,
    )?)
}

/// Opens the directory `name` inside `dir`, refusing a symlink there.
pub(super) fn open_dir_at(dir: BorrowedFd, name: &str) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
    open_at(dir, name, flags, Mode::empty())
}

/// Opens the file `name` inside `dir` for reading, refusing a symlink;
/// non-blocking, so a fifo put there after a check cannot hang the read.
pub(super) fn open_file_at(dir: BorrowedFd, name: &str) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    open_at(dir, name, flags, Mode::empty()).map(File::from)
}

/// Creates the new file `name` inside `dir`, 0600 (the umask can only
/// remove bits); fails if anything, a symlink included, is there.
pub(super) fn create_at(dir: BorrowedFd, name: &str) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
    open_at(dir, name, flags, Mode::RUSR | Mode::WUSR).map(File::from)
}

fn open_at(dir: BorrowedFd, name: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    Ok(rustix::fs::openat(
        dir,
        &name,
        flags | OFlags::CLOEXEC,
        mode,
    )?)
}

/// `lstat` of `name` inside `dir`; `None` if it is absent.
pub(super) fn stat_at(dir: BorrowedFd, name: &str) -> io::Result<Option<Stat>> {
    let name = c_name(name)?;
    match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(Stat::from_raw(&st))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `fstat` of an open descriptor.
pub(super) fn stat(fd: BorrowedFd) -> io::Result<Stat> {
    Ok(Stat::from_raw(&rustix::fs::fstat(fd)?))
}

/// Creates the directory `name` inside `dir` with `mode` (less the umask).
pub(super) fn make_dir_at(dir: BorrowedFd, name: &str, mode: u32) -> io::Result<()> {
    let name = c_name(name)?;
    Ok(rustix::fs::mkdirat(dir, &name, Mode::from_raw_mode(mode))?)
}

/// Renames `from` to `to`, both inside `dir`.
pub(super) fn rename_at(dir: BorrowedFd, from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    Ok(rustix::fs::renameat(dir, &from, dir, &to)?)
}

/// Removes the file `name` inside `dir`.
pub(super) fn remove_at(dir: BorrowedFd, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    Ok(rustix::fs::unlinkat(dir, &name, AtFlags::empty())?)
}

/// Creates the symlink `name` inside `dir`, pointing at `target`.
pub(super) fn symlink_at(dir: BorrowedFd, name: &str, target: &str) -> io::Result<()> {
    let (name, target) = (c_name(name)?, c_name(target)?);
    Ok(rustix::fs::symlinkat(&target, dir, &name)?)
}

/// Gives the symlink `name` inside `dir` its owner and time, never
/// following it.
pub(super) fn own_link_at(
    dir: BorrowedFd,
    name: &str,
    uid: u32,
    gid: u32,
    mtime: i64,
) -> io::Result<()> {
    let name = c_name(name)?;
    let flags = AtFlags::SYMLINK_NOFOLLOW;
    // from_raw_unchecked: any u32 is passed on as the kernel takes it, as
    // fchownat(2) would (-1, "leave as is", is never asked for here).
    let (uid, gid) = (
        rustix::fs::Uid::from_raw_unchecked(uid),
        rustix::fs::Gid::from_raw_unchecked(gid),
    );
    rustix::fs::chownat(dir, &name, Some(uid), Some(gid), flags)?;
    let time = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    Ok(rustix::fs::utimensat(dir, &name, &times, flags)?)
}

/// Removes the empty directory `name` inside `dir`.
pub(super) fn remove_dir_at(dir: BorrowedFd, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    Ok(rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR)?)
}

/// Opens `relative` below `root` for reading, resolving symlinks as a
/// chroot at `root` would (absolute targets start at `root`, `..` stops
/// there): openat2 with RESOLVE_IN_ROOT. `Ok(None)` where the kernel has
/// no openat2 (before Linux 5.6).
pub(super) fn open_in_root(root: BorrowedFd, relative: &str) -> io::Result<Option<File>> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    match openat2(root, relative, flags, resolve) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names of the extended attributes of an open file.
pub(super) fn xattr_names(file: BorrowedFd) -> io::Result<Vec<String>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = match rustix::fs::flistxattr(file, &mut buf[..]) {
        Ok(n) => n,
        // A filesystem without xattrs has none to keep.
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    buf.truncate(n);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

/// The value of one extended attribute of an open file.
pub(super) fn get_xattr(file: BorrowedFd, name: &str) -> io::Result<Vec<u8>> {
    let name = c_name(name)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::fgetxattr(file, &name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

/// Sets one extended attribute of an open file.
pub(super) fn set_xattr(file: BorrowedFd, name: &str, value: &[u8]) -> io::Result<()> {
    let name = c_name(name)?;
    let flags = rustix::fs::XattrFlags::empty();
    Ok(rustix::fs::fsetxattr(file, &name, value, flags)?)
}

/// Sets one extended attribute of the symlink `name` inside `dir`
/// (through /proc, as no call takes a directory and a name; `lsetxattr`
/// does not follow the link itself).
pub(super) fn set_link_xattr(
    dir: BorrowedFd,
    name: &str,
    attr: &str,
    value: &[u8],
) -> io::Result<()> {
    let path = c_name(&format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))?;
    let attr = c_name(attr)?;
    let flags = rustix::fs::XattrFlags::empty();
    Ok(rustix::fs::lsetxattr(&path, &attr, value, flags)?)
}

/// The names in the open directory `dir`, without `.` and `..`.
pub(super) fn names_in(dir: BorrowedFd) -> io::Result<Vec<String>> {
    // A duplicate shares its offset with `dir`: the stream starts from the
    // top (rewind), and closing it leaves `dir` open.
    let mut stream = rustix::fs::Dir::new(dir.try_clone_to_owned()?)?;
    stream.rewind();
    let mut names = Vec::new();
    while let Some(entry) = stream.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            // Names are bytes in any charset; carried losslessly.
            names.push(crate::plan::name::from_bytes(name).into_owned());
        }
    }
    Ok(names)
}

/// The target of the symlink `name` inside `dir`.
pub(super) fn read_link_at(dir: BorrowedFd, name: &str) -> io::Result<String> {
    let name = c_name(name)?;
    let target = rustix::fs::readlinkat(dir, &name, Vec::new())?;
    Ok(crate::plan::name::from_bytes(target.as_bytes()).into_owned())
}

/// A name (or relative path) for a host path (messages, cleanup): the
/// bytes it was read as (`plan::name`).
pub(super) fn os_name(name: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(crate::plan::name::to_bytes(name).into_owned())
}

/// A name (or relative path) for the kernel: the bytes it was read as
/// (`plan::name`).
fn c_name(name: &str) -> io::Result<CString> {
    CString::new(crate::plan::name::to_bytes(name).into_owned())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn parts(p: &str) -> Vec<String> {
        p.split('/').map(str::to_string).collect()
    }

    #[test]
    fn walk_refuses_symlinks_with_and_without_openat2() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(root.join("a/file"), "x").unwrap();
        symlink("b", root.join("a/inner")).unwrap();
        symlink(&outside, root.join("a/out")).unwrap();
        let fd = open_root(&root).unwrap();
        for try_openat2 in [true, false] {
            let walk = |p: &str| walk_with(fd.as_fd(), &parts(p), try_openat2).unwrap();
            let Walk::Found(c) = walk("a/b/c") else {
                panic!("a/b/c not found")
            };
            assert_eq!(stat(c.as_fd()).unwrap().kind, EntryType::Dir);
            assert!(matches!(walk("a/x/y"), Walk::Missing));
            for (path, kind) in [
                ("a/inner/c", EntryType::Symlink),
                ("a/inner", EntryType::Symlink),
                ("a/out", EntryType::Symlink),
                ("a/file/c", EntryType::Regular),
            ] {
                match walk(path) {
                    Walk::Blocked { depth, kind: k } => assert_eq!((depth, k), (2, kind), "{path}"),
                    other => panic!("{path}: {other:?}"),
                }
            }
            assert!(matches!(
                walk_with(fd.as_fd(), &[], try_openat2),
                Ok(Walk::Found(_))
            ));
        }
        // Where the kernel has openat2, it alone refuses every symlink.
        match openat2_beneath(fd.as_fd(), "a/b/c") {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            found => {
                found.unwrap();
                for path in ["a/inner/c", "a/out"] {
                    let e = openat2_beneath(fd.as_fd(), path).unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{path}");
                }
            }
        }
    }

    #[test]
    fn names_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_root(tmp.path()).unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        symlink(&target, tmp.path().join("link")).unwrap();
        let d = dir.as_fd();
        assert_eq!(
            create_at(d, "link").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            open_file_at(d, "link").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert!(open_dir_at(d, "link").is_err());
        assert_eq!(
            stat_at(d, "link").unwrap().unwrap().kind,
            EntryType::Symlink
        );
        assert_eq!(stat_at(d, "absent").unwrap(), None);
        let mut f = create_at(d, "new").unwrap();
        io::Write::write_all(&mut f, b"data").unwrap();
        assert_eq!(stat(f.as_fd()).unwrap().mode, 0o600 & !current_umask());
        rename_at(d, "new", "link").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("link")).unwrap(), b"data");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        remove_at(d, "link").unwrap();
        assert_eq!(stat_at(d, "link").unwrap(), None);
        make_dir_at(d, "sub", 0o700).unwrap();
        assert_eq!(stat_at(d, "sub").unwrap().unwrap().kind, EntryType::Dir);
    }

    fn current_umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line[6..].trim(), 8).unwrap()
    }
}
