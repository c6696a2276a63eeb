//! `imprint ls` and `cat` on a staging tree, walked from directory handles
//! like everything else here: nothing below the root is followed.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::handle::{self, Stat};
use super::{io_err, DirError, DirReader, Located, StagingDir};
use crate::image::{EntryType, FileMeta, ImageError, Inspect, Listed};
use crate::plan::{name, ImagePath};

/// How deep `ls -R` goes.
const MAX_DEPTH: usize = 256;

pub(super) fn meta_of(st: &Stat, target: Option<String>) -> FileMeta {
    FileMeta {
        kind: st.kind,
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        mtime: st.mtime,
        size: st.size,
        links: st.links,
        target,
        special: st.special,
        ..Default::default()
    }
}

/// The metadata of `name` in `dir` (with a symlink's target).
fn entry_meta(dir: BorrowedFd, name: &str, host: &Path) -> Result<Option<FileMeta>, DirError> {
    let Some(st) = handle::stat_at(dir, name).map_err(io_err("inspect", host))? else {
        return Ok(None);
    };
    let target = if st.kind == EntryType::Symlink {
        Some(handle::read_link_at(dir, name).map_err(io_err("read the link", host))?)
    } else {
        None
    };
    Ok(Some(meta_of(&st, target)))
}

fn list_into(
    dir: BorrowedFd,
    host: &Path,
    prefix: &str,
    recursive: bool,
    depth: usize,
    out: &mut Vec<Listed>,
) -> Result<(), DirError> {
    let mut names = handle::names_in(dir).map_err(io_err("list", host))?;
    // Sorted by their bytes, as `ls` in the C locale sorts.
    names.sort_by(|a, b| name::to_bytes(a).cmp(&name::to_bytes(b)));
    for name in names {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let child_host = host.join(handle::os_name(&name));
        // Gone since the directory was read: not listed.
        let Some(meta) = entry_meta(dir, &name, &child_host)? else {
            continue;
        };
        let is_dir = meta.kind == EntryType::Dir;
        out.push(Listed {
            path: path.clone(),
            meta,
            hard_link: None,
        });
        if recursive && is_dir && depth < MAX_DEPTH {
            let sub = handle::open_dir_at(dir, &name).map_err(io_err("open", &child_host))?;
            list_into(sub.as_fd(), &child_host, &path, true, depth + 1, out)?;
        }
    }
    Ok(())
}

impl DirReader {
    pub(super) fn tree(&mut self) -> Result<&StagingDir, DirError> {
        Ok(match &mut self.dir {
            Some(dir) => dir,
            none => none.insert(StagingDir::open(&self.root)?),
        })
    }

    /// Where `path` is and what is there (with a symlink's target); `None`
    /// when nothing is, or a component on the way is not a directory.
    fn entry(&mut self, path: &ImagePath) -> Result<Option<(Located, FileMeta)>, DirError> {
        let found = match self.tree()?.locate(path) {
            Ok(Some(found)) => found,
            Ok(None) | Err(DirError::NotDirectory { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = entry_meta(found.parent.as_fd(), &found.name, &found.host())?;
        Ok(meta.map(|meta| (found, meta)))
    }
}

impl Inspect for DirReader {
    fn list(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
    ) -> Result<Option<Vec<Listed>>, ImageError> {
        let mut out = Vec::new();
        let Some(path) = path else {
            let tree = self.tree()?;
            list_into(tree.fd.as_fd(), &tree.root, "", recursive, 0, &mut out)?;
            return Ok(Some(out));
        };
        let Some((found, meta)) = self.entry(path)? else {
            return Ok(None);
        };
        let host = found.host();
        if meta.kind != EntryType::Dir {
            return Ok(Some(vec![Listed {
                path: path.relative(),
                meta,
                hard_link: None,
            }]));
        }
        let dir = handle::open_dir_at(found.parent.as_fd(), &found.name)
            .map_err(io_err("open", &host))?;
        list_into(dir.as_fd(), &host, &path.relative(), recursive, 0, &mut out)?;
        Ok(Some(out))
    }

    fn cat(
        &mut self,
        path: &ImagePath,
        out: &mut dyn Write,
    ) -> Result<Option<FileMeta>, ImageError> {
        let Some((found, meta)) = self.entry(path)? else {
            return Ok(None);
        };
        let host = found.host();
        if meta.kind != EntryType::Regular {
            return Ok(Some(meta));
        }
        let mut file = handle::open_file_at(found.parent.as_fd(), &found.name)
            .map_err(io_err("read", &host))?;
        // What was opened is what is described and copied.
        let st = handle::stat(file.as_fd()).map_err(io_err("read", &host))?;
        if st.kind != EntryType::Regular {
            return Ok(Some(meta_of(&st, None)));
        }
        // The file was opened non-blocking (against a fifo swapped in);
        // a regular file reads the same either way.
        std::io::copy(&mut file, out).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::WriteZero => ImageError::Output(e),
            _ => io_err("read", &host)(e).into(),
        })?;
        Ok(Some(meta_of(&st, None)))
    }
}
