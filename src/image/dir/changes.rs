//! The staging tree's symlinks, removals and extended attributes: a symlink
//! is made under a temp name and renamed over its final name like a file;
//! a removal waits for the commit, so a run that fails before the API call
//! leaves the tree as it was; attributes are set through descriptors.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::handle::{self, Stat};
use super::{io_err, DirError, Located};
use crate::plan::{kept_on_replace, EntryType, PlanEntry, Xattr};

/// How deep a recursive removal goes: deeper trees are not a rootfs.
const MAX_DEPTH: usize = 256;

/// The attributes a new file gets: the entry's, and for a replaced file
/// also the old file's security labels the entry does not set.
pub(super) fn xattrs_for(entry: &PlanEntry, at: &Located) -> Result<Vec<Xattr>, DirError> {
    let mut out = entry.xattrs.clone();
    if at.stat.map(|s| s.kind) != Some(EntryType::Regular) {
        return Ok(out);
    }
    let host = at.host();
    let old = handle::open_file_at(at.parent.as_fd(), &at.name).map_err(io_err("read", &host))?;
    let names =
        handle::xattr_names(old.as_fd()).map_err(io_err("read the attributes of", &host))?;
    for name in names {
        if kept_on_replace(&name) && !out.iter().any(|x| x.name == name) {
            let value = handle::get_xattr(old.as_fd(), &name)
                .map_err(io_err("read the attributes of", &host))?;
            out.push(Xattr { name, value });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Sets `xattrs` on the open file `file` (`path` for messages).
pub(super) fn set_xattrs(file: &File, path: &Path, xattrs: &[Xattr]) -> Result<(), DirError> {
    for x in xattrs {
        handle::set_xattr(file.as_fd(), &x.name, &x.value).map_err(|e| xattr_error(path, x, e))?;
    }
    Ok(())
}

/// Sets `xattrs` on the symlink `name` in `dir`.
pub(super) fn set_link_xattrs(
    dir: BorrowedFd,
    name: &str,
    path: &Path,
    xattrs: &[Xattr],
) -> Result<(), DirError> {
    for x in xattrs {
        handle::set_link_xattr(dir, name, &x.name, &x.value)
            .map_err(|e| xattr_error(path, x, e))?;
    }
    Ok(())
}

fn xattr_error(path: &Path, x: &Xattr, cause: io::Error) -> DirError {
    DirError::Xattr {
        path: path.to_path_buf(),
        name: x.name.clone(),
        cause,
    }
}

/// Something to remove when the device's files are committed.
pub(super) struct Removal {
    dir: File,
    name: String,
    kind: EntryType,
    recursive: bool,
    host: PathBuf,
}

impl Removal {
    /// Checks that what is at `at` may go (a directory only when empty or
    /// `recursive`); `None` when nothing is there.
    pub(super) fn plan(at: Located, recursive: bool) -> Result<Option<Removal>, DirError> {
        let Some(Stat { kind, .. }) = at.stat else {
            return Ok(None);
        };
        let host = at.host();
        if kind == EntryType::Dir && !recursive {
            let dir =
                handle::open_dir_at(at.parent.as_fd(), &at.name).map_err(io_err("open", &host))?;
            if !handle::names_in(dir.as_fd())
                .map_err(io_err("list", &host))?
                .is_empty()
            {
                return Err(DirError::NotEmpty { path: host });
            }
        }
        Ok(Some(Removal {
            dir: File::from(at.parent),
            name: at.name,
            kind,
            recursive,
            host,
        }))
    }

    /// Removes it, never following a symlink: a directory's contents are
    /// walked from its own handle.
    pub(super) fn commit(&self) -> Result<(), DirError> {
        let dir = self.dir.as_fd();
        let result = match self.kind {
            EntryType::Dir if self.recursive => remove_tree(dir, &self.name, &self.host, 0),
            EntryType::Dir => {
                handle::remove_dir_at(dir, &self.name).map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOTEMPTY | libc::EEXIST) => DirError::NotEmpty {
                        path: self.host.clone(),
                    },
                    _ => io_err("remove", &self.host)(e),
                })
            }
            _ => handle::remove_at(dir, &self.name).map_err(io_err("remove", &self.host)),
        };
        match result {
            // Gone already: what the entry asks for.
            Err(DirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }?;
        let _ = self.dir.sync_all();
        Ok(())
    }
}

/// Removes the directory `name` in `dir` and everything below it.
fn remove_tree(dir: BorrowedFd, name: &str, host: &Path, depth: usize) -> Result<(), DirError> {
    if depth > MAX_DEPTH {
        return Err(io_err("remove", host)(io::Error::other(format!(
            "directories nest deeper than {MAX_DEPTH} levels"
        ))));
    }
    let sub = handle::open_dir_at(dir, name).map_err(io_err("open", host))?;
    for child in handle::names_in(sub.as_fd()).map_err(io_err("list", host))? {
        let child_host = host.join(handle::os_name(&child));
        match handle::stat_at(sub.as_fd(), &child).map_err(io_err("inspect", &child_host))? {
            Some(st) if st.kind == EntryType::Dir => {
                remove_tree(sub.as_fd(), &child, &child_host, depth + 1)?
            }
            Some(_) => {
                handle::remove_at(sub.as_fd(), &child).map_err(io_err("remove", &child_host))?
            }
            None => {}
        }
    }
    handle::remove_dir_at(dir, name).map_err(io_err("remove", host))
}
