//! Directory entries through libext2fs beyond creating files: listing a
//! directory, lookups that fold case in case-folded (`+F`) directories as
//! the kernel does, symlinks, and removing names (a file loses a link and
//! is freed with its blocks and attributes when none is left; a directory
//! only when empty, or recursively).

use std::ffi::{c_char, c_int, c_void, CString};

use super::format::{kind_of_mode, CASEFOLD_FL, S_IFLNK};
use super::libext2fs::{describe, inode_kind, put16, put32, set_attributes, Ext2fsHandle, Ino};
use super::{CorruptKind, Ext4Error};
use crate::image::EntryType;
use crate::plan::PlanEntry;

/// How deep a recursive removal may go: far beyond any real tree, and a
/// bound on a damaged one whose directories loop.
const MAX_DEPTH: usize = 256;

/// One name in a directory, as stored.
pub(super) struct DirEntry {
    pub(super) name: Vec<u8>,
    pub(super) ino: Ino,
}

unsafe extern "C" fn collect(
    _dir: Ino,
    _entry: c_int,
    dirent: *mut c_void,
    _offset: c_int,
    _blocksize: c_int,
    _buf: *mut c_char,
    data: *mut c_void,
) -> c_int {
    // SAFETY: data is the Vec passed by `list_dir`; dirent points at a
    // directory entry (inode, rec_len, name_len, file type, name) that
    // libext2fs checked lies inside its block.
    let out = &mut *(data as *mut Vec<DirEntry>);
    let d = dirent as *const u8;
    let ino = u32::from_le_bytes([*d, *d.add(1), *d.add(2), *d.add(3)]);
    let name = std::slice::from_raw_parts(d.add(8), usize::from(*d.add(6))).to_vec();
    if ino != 0 && name != b"." && name != b".." {
        out.push(DirEntry { name, ino });
    }
    0
}

impl Ext2fsHandle<'_> {
    /// The names in directory `dir`, without `.` and `..`.
    pub(super) fn list_dir(&self, dir: Ino) -> Result<Vec<DirEntry>, Ext4Error> {
        let mut out: Vec<DirEntry> = Vec::new();
        // SAFETY: collect only appends to `out`, which outlives the call.
        let code = unsafe {
            (self.api.dir_iterate2)(
                self.fs,
                dir,
                0,
                std::ptr::null_mut(),
                collect,
                (&mut out as *mut Vec<DirEntry>).cast(),
            )
        };
        self.check(code, || format!("list directory inode {dir}"))?;
        Ok(out)
    }

    /// Whether lookups in `dir` fold case: the filesystem has the casefold
    /// feature and the directory the +F flag.
    pub(super) fn folds_case(&self, dir_raw: &[u8]) -> bool {
        self.casefold.is_some()
            && u32::from_le_bytes([dir_raw[32], dir_raw[33], dir_raw[34], dir_raw[35]])
                & CASEFOLD_FL
                != 0
    }

    /// The entry of `dir` whose name matches `name` after Unicode case
    /// folding and normalization (libext2fs's copy of the kernel's utf8
    /// tables); a name that is not valid UTF-8 matches only itself, as in
    /// the kernel's non-strict mode. Returns the name as stored.
    pub(super) fn lookup_folded(
        &self,
        dir: Ino,
        name: &str,
    ) -> Result<Option<(Ino, Vec<u8>)>, Ext4Error> {
        let Some(fold) = &self.casefold else {
            return Ok(None);
        };
        let (Some(table), Some(cmp)) = (fold.table, self.api.casefold_cmp) else {
            return Err(Ext4Error::Unsupported {
                features: format!(
                    "case-folded directories with encoding {} (this libext2fs cannot fold it)",
                    fold.encoding
                ),
            });
        };
        let want = name.as_bytes();
        for e in self.list_dir(dir)? {
            // SAFETY: table came from ext2fs_load_nls_table; both slices
            // are valid for their lengths.
            let r = unsafe {
                cmp(
                    table,
                    want.as_ptr(),
                    want.len(),
                    e.name.as_ptr(),
                    e.name.len(),
                )
            };
            if r == 0 || e.name == want {
                return Ok(Some((e.ino, e.name)));
            }
        }
        Ok(None)
    }

    /// Removes the name `name` (as stored) of inode `ino` from `dir`.
    fn unlink_name(&self, dir: Ino, name: &[u8], ino: Ino, what: &str) -> Result<(), Ext4Error> {
        let c = CString::new(name).map_err(|_| Ext4Error::Unexpected {
            path: what.to_string(),
            what: "a name holding a NUL byte".into(),
        })?;
        // SAFETY: c is a C string for the duration of the call.
        let code = unsafe { (self.api.unlink)(self.fs, dir, c.as_ptr(), ino, 0) };
        self.check(code, || format!("remove the name {what}"))
    }

    /// Drops one link of non-directory `ino`; frees it when none is left.
    fn drop_link(&self, ino: Ino, mtime: i64, what: &str) -> Result<(), Ext4Error> {
        let mut raw = self.read_inode(ino)?;
        let links = u16::from_le_bytes([raw[26], raw[27]]);
        if links > 1 {
            put16(&mut raw, 26, links - 1);
            return self.write_inode(ino, &raw);
        }
        self.free_inode(ino, false, mtime, what)
    }

    /// Releases `ino`: its attributes, its blocks, then the inode itself
    /// (bitmap and group counts), as fuse2fs does when the last name goes.
    fn free_inode(&self, ino: Ino, is_dir: bool, mtime: i64, what: &str) -> Result<(), Ext4Error> {
        self.clear_xattrs(ino, what)?;
        let mut raw = self.read_inode(ino)?;
        // SAFETY: raw holds a whole inode, of which libext2fs reads the
        // first 128 bytes.
        if unsafe { (self.api.has_valid_blocks2)(self.fs, raw.as_ptr()) } != 0 {
            // SAFETY: as above; punch updates the inode through the pointer
            // and writes it.
            let code = unsafe {
                (self.api.punch)(self.fs, ino, raw.as_mut_ptr(), std::ptr::null_mut(), 0, !0)
            };
            self.check(code, || format!("free the blocks of {what}"))?;
            raw = self.read_inode(ino)?;
        }
        put16(&mut raw, 26, 0);
        // i_dtime: when it was deleted, the plan's time (never the clock).
        put32(&mut raw, 20, mtime.clamp(1, i64::from(u32::MAX)) as u32);
        self.write_inode(ino, &raw)?;
        // SAFETY: ino is in use; -1 frees it.
        unsafe { (self.api.inode_alloc_stats2)(self.fs, ino, -1, c_int::from(is_dir)) };
        Ok(())
    }

    /// Removes whatever `name` (as stored) in `parent` is: a file, symlink
    /// or device node loses this link; a directory goes if empty, or with
    /// everything in it when `recursive`. `what` is its path in the image.
    pub(super) fn remove(
        &self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        recursive: bool,
        mtime: i64,
        what: &str,
    ) -> Result<(), Ext4Error> {
        let raw = self.read_inode(ino)?;
        if kind_of_mode(u16::from_le_bytes([raw[0], raw[1]])) != EntryType::Dir {
            self.unlink_name(parent, name, ino, what)?;
            return self.drop_link(ino, mtime, what);
        }
        // The path grows by a component per level walked down.
        if what.matches('/').count() > MAX_DEPTH {
            return Err(Ext4Error::Corrupt {
                why: CorruptKind::TooDeepUnder {
                    under: what.to_string(),
                    max: MAX_DEPTH,
                },
            });
        }
        let children = self.list_dir(ino)?;
        if !children.is_empty() && !recursive {
            return Err(Ext4Error::NotEmpty {
                path: what.to_string(),
                count: children.len(),
            });
        }
        for child in children {
            let child_what = format!("{what}/{}", String::from_utf8_lossy(&child.name));
            self.remove(ino, &child.name, child.ino, true, mtime, &child_what)?;
        }
        self.unlink_name(parent, name, ino, what)?;
        self.free_inode(ino, true, mtime, what)?;
        // The directory's `..` was a link to the parent. With dir_nlink a
        // count of 1 means "too many to count" and stays.
        let mut praw = self.read_inode(parent)?;
        let links = u16::from_le_bytes([praw[26], praw[27]]);
        if links > 2 {
            put16(&mut praw, 26, links - 1);
            self.write_inode(parent, &praw)?;
        }
        Ok(())
    }

    /// Creates symlink `entry` to `target` in `parent`, with the plan's
    /// owner and times; libext2fs stores a target shorter than 60 bytes in
    /// the inode (a fast symlink) and a longer one in a block (or inline).
    pub(super) fn make_symlink(
        &self,
        parent: Ino,
        entry: &PlanEntry,
        target: &str,
        mtime: i64,
    ) -> Result<Ino, Ext4Error> {
        let what = entry.path.to_string();
        if target.is_empty() || target.len() >= self.block_size as usize {
            return Err(Ext4Error::SymlinkTarget {
                path: what,
                len: target.len(),
                block_size: self.block_size,
            });
        }
        let name = CString::new(entry.path.file_name()).expect("ImagePath has no NUL");
        let target_c = CString::new(target).map_err(|_| Ext4Error::SymlinkTarget {
            path: what.clone(),
            len: target.len(),
            block_size: self.block_size,
        })?;
        // SAFETY: name and target are C strings for the duration of the call.
        self.with_dir_space(parent, &what, || unsafe {
            (self.api.symlink)(self.fs, parent, 0, name.as_ptr(), target_c.as_ptr())
        })?;
        let ino = self.find_created(parent, entry)?;
        let mut raw = self.read_inode(ino)?;
        set_attributes(&mut raw, S_IFLNK | 0o777, entry, mtime, true);
        self.write_inode(ino, &raw)?;
        Ok(ino)
    }

    /// What `ino` is, for an error.
    pub(super) fn describe_inode(&self, ino: Ino) -> Result<String, Ext4Error> {
        let raw = self.read_inode(ino)?;
        Ok(describe(
            inode_kind(&raw),
            u16::from_le_bytes([raw[26], raw[27]]),
        ))
    }
}
