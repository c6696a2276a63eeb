//! `imprint ls` and `cat` on an ext2/3/4 filesystem (raw, in a disk image,
//! sparse or expanded from a compressed file), through imprint's own
//! reader: directory entries read from the directory's blocks, file
//! content streamed block by block.

use std::io::Write;

use super::format::INLINE_DATA_FL;
use super::reader::{FsReader, Inode};
use super::{CorruptKind, Ext4Error, Ext4Inspector};
use crate::image::{EntryType, FileMeta, ImageError, Listed};
use crate::io::read_at::ReadAt;
use crate::plan::{name, ImagePath};

/// How deep `ls -R` goes. A real tree can be deeper than a path the
/// kernel resolves in one call (4096 bytes, so ~2048 levels); loops are
/// caught apart from the depth (a directory below itself), so the bound
/// only keeps the recursion's stack in reach.
const MAX_DEPTH: usize = 4096;

impl<R: ReadAt> FsReader<R> {
    fn list_into(
        &self,
        dir: &Inode,
        prefix: &str,
        recursive: bool,
        ancestors: &mut Vec<u32>,
        visit: &mut dyn FnMut(&Listed) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        if ancestors.len() > MAX_DEPTH {
            return Err(Ext4Error::TooDeep {
                path: format!("/{prefix}"),
                levels: MAX_DEPTH,
            }
            .into());
        }
        let mut children: Vec<(Vec<u8>, u32)> = self
            .dir_entries(dir)?
            .into_iter()
            .filter(|(name, ino)| *ino != 0 && name != b"." && name != b"..")
            .collect();
        // Sorted by their bytes, as `ls` in the C locale sorts.
        children.sort();
        for (name, ino) in children {
            // Names are bytes in any charset; carried losslessly.
            let name = name::from_bytes(&name).into_owned();
            let inode = self.inode(ino)?;
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            visit(&Listed {
                path: path.clone(),
                meta: self.meta(&inode)?,
                hard_link: None,
            })?;
            if recursive && inode.kind() == EntryType::Dir {
                // A directory that is its own ancestor: the tree loops,
                // which only damage does (directories have one parent).
                if ancestors.contains(&ino) {
                    return Err(Ext4Error::Corrupt {
                        why: CorruptKind::DirectoryLoop {
                            path: format!("/{path}"),
                            ino,
                        },
                    }
                    .into());
                }
                ancestors.push(ino);
                self.list_into(&inode, &path, true, ancestors, visit)?;
                ancestors.pop();
            }
        }
        Ok(())
    }

    /// Writes a regular file's content to `out`, one block at a time.
    fn copy_content(&self, inode: &Inode, out: &mut dyn Write) -> Result<(), ImageError> {
        let write =
            |out: &mut dyn Write, data: &[u8]| out.write_all(data).map_err(ImageError::Output);
        if inode.flags & INLINE_DATA_FL != 0 {
            return write(out, &self.read_content(inode, inode.size)?);
        }
        let bs = self.sb.block_size;
        let zeros = vec![0u8; bs as usize];
        let mut left = inode.size;
        let mut logical = 0;
        while left > 0 {
            let want = left.min(bs) as usize;
            match self.map_block(inode, logical)? {
                Some(block) => write(out, &self.read_block(block)?[..want])?,
                None => write(out, &zeros[..want])?,
            }
            left -= want as u64;
            logical += 1;
        }
        Ok(())
    }
}

impl<R: ReadAt> Ext4Inspector<R> {
    /// See [`crate::image::Inspect::list`].
    pub(crate) fn list(
        &self,
        path: Option<&ImagePath>,
        recursive: bool,
    ) -> Result<Option<Vec<Listed>>, ImageError> {
        let mut out = Vec::new();
        let found = self.list_each(path, recursive, &mut |l| {
            out.push(l.clone());
            Ok(())
        })?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found.then_some(out))
    }

    /// See [`crate::image::Inspect::list_each`]: each directory's entries
    /// sorted by name, a directory's contents right after it; memory holds
    /// one directory's names per level, never the whole tree.
    pub(crate) fn list_each(
        &self,
        path: Option<&ImagePath>,
        recursive: bool,
        visit: &mut dyn FnMut(&Listed) -> Result<(), ImageError>,
    ) -> Result<bool, ImageError> {
        let parts = path.map(|p| p.components()).unwrap_or_default();
        let Some((ino, inode)) = self.fs.resolve(parts)? else {
            return Ok(false);
        };
        let prefix = path.map(ImagePath::relative).unwrap_or_default();
        if inode.kind() != EntryType::Dir {
            visit(&Listed {
                path: prefix,
                meta: self.fs.meta(&inode)?,
                hard_link: None,
            })?;
            return Ok(true);
        }
        let mut ancestors = vec![ino];
        self.fs
            .list_into(&inode, &prefix, recursive, &mut ancestors, visit)?;
        Ok(true)
    }

    /// See [`crate::image::Inspect::cat`].
    pub(crate) fn cat(
        &self,
        path: &ImagePath,
        out: &mut dyn Write,
    ) -> Result<Option<FileMeta>, ImageError> {
        let Some((_, inode)) = self.fs.resolve(path.components())? else {
            return Ok(None);
        };
        let meta = self.fs.meta(&inode)?;
        if meta.kind == EntryType::Regular {
            self.fs.copy_content(&inode, out)?;
        }
        Ok(Some(meta))
    }
}
