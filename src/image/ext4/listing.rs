//! `imprint ls` and `cat` on an ext2/3/4 filesystem (raw, in a disk image,
//! sparse or expanded from a compressed file), through imprint's own
//! reader: directory entries read from the directory's blocks, file
//! content streamed block by block.

use std::io::Write;

use super::format::{feature, INLINE_DATA_FL};
use super::reader::{FsReader, Inode};
use super::{Ext4Error, Ext4Inspector};
use crate::image::{EntryType, FileMeta, ImageError, Listed};
use crate::io::read_at::ReadAt;
use crate::plan::ImagePath;

/// A directory bigger than this is damaged, not real (as for lookups).
const MAX_DIR: u64 = 64 << 20;
/// Longest symlink target Linux allows.
const MAX_TARGET: u64 = 4096;
/// How deep `ls -R` goes: deeper trees are loops in a damaged image.
const MAX_DEPTH: usize = 64;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The (inode, name) records of one directory block or inline area,
/// without `.`, `..`, deleted entries and htree nodes (inode 0).
fn records(area: &[u8], filetype: bool, out: &mut Vec<(u32, String)>) {
    let mut at = 0;
    while at + 8 <= area.len() {
        let ino = le32(area, at);
        let rec_len = le16(area, at + 4) as usize;
        let name_len = if filetype {
            area[at + 6] as usize
        } else {
            le16(area, at + 6) as usize
        };
        if rec_len < 8 || at + rec_len > area.len() {
            return;
        }
        if ino != 0 && 8 + name_len <= rec_len {
            let name = String::from_utf8_lossy(&area[at + 8..at + 8 + name_len]).into_owned();
            if name != "." && name != ".." {
                out.push((ino, name));
            }
        }
        at += rec_len;
    }
}

impl<R: ReadAt> FsReader<R> {
    /// The entries of a directory, unsorted.
    fn entries(&self, dir: &Inode) -> Result<Vec<(u32, String)>, Ext4Error> {
        if dir.size > MAX_DIR {
            return Err(Ext4Error::Corrupt {
                why: format!("a directory claims {} bytes", dir.size),
            });
        }
        let content = self.read_content(dir, MAX_DIR)?;
        let filetype = self.sb.incompat & feature::INCOMPAT_FILETYPE != 0;
        let mut out = Vec::new();
        if dir.flags & INLINE_DATA_FL != 0 {
            // The parent's inode number, then entries; more may follow in
            // the system.data attribute.
            records(
                &content[4.min(content.len())..60.min(content.len())],
                filetype,
                &mut out,
            );
            records(content.get(60..).unwrap_or_default(), filetype, &mut out);
        } else {
            for block in content.chunks(self.sb.block_size as usize) {
                records(block, filetype, &mut out);
            }
        }
        Ok(out)
    }

    /// An inode's metadata as `ls` shows it.
    fn listed_meta(&self, inode: &Inode) -> Result<FileMeta, Ext4Error> {
        let mut meta = inode.meta();
        meta.links = u32::from(inode.links);
        if meta.kind == EntryType::Symlink {
            let target = self.read_content(inode, MAX_TARGET)?;
            meta.target = Some(String::from_utf8_lossy(&target).into_owned());
        }
        Ok(meta)
    }

    fn list_into(
        &self,
        dir: &Inode,
        prefix: &str,
        recursive: bool,
        depth: usize,
        out: &mut Vec<Listed>,
    ) -> Result<(), Ext4Error> {
        if depth > MAX_DEPTH {
            return Err(Ext4Error::Corrupt {
                why: format!("directories nest deeper than {MAX_DEPTH} levels at {prefix}"),
            });
        }
        let mut children = self.entries(dir)?;
        children.sort_by(|a, b| a.1.cmp(&b.1));
        for (ino, name) in children {
            let inode = self.inode(ino)?;
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            out.push(Listed {
                path: path.clone(),
                meta: self.listed_meta(&inode)?,
                hard_link: None,
            });
            if recursive && inode.kind() == EntryType::Dir {
                self.list_into(&inode, &path, true, depth + 1, out)?;
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
        let parts = path.map(|p| p.components()).unwrap_or_default();
        let Some((_, inode)) = self.fs.resolve(parts)? else {
            return Ok(None);
        };
        let prefix = path.map(ImagePath::relative).unwrap_or_default();
        if inode.kind() != EntryType::Dir {
            return Ok(Some(vec![Listed {
                path: prefix,
                meta: self.fs.listed_meta(&inode)?,
                hard_link: None,
            }]));
        }
        let mut out = Vec::new();
        self.fs.list_into(&inode, &prefix, recursive, 0, &mut out)?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Some(out))
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
        let meta = self.fs.listed_meta(&inode)?;
        if meta.kind == EntryType::Regular {
            self.fs.copy_content(&inode, out)?;
        }
        Ok(Some(meta))
    }
}
