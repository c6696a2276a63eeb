//! Extended attributes through libext2fs's xattr handle: what a new or
//! replaced inode carries (the plan's rule: a new entry gets exactly the
//! plan's attributes; a replaced file keeps only its `security.*` label,
//! losing ACLs and user/trusted attributes), and clearing an inode's
//! attributes before it is freed.
//!
//! The handle is switched to raw mode: values cross unchanged. (By default
//! libext2fs translates POSIX ACLs between the kernel's xattr format and
//! the on-disk one; imprint never writes ACLs, and raw mode copies a label
//! byte for byte.)

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use super::libext2fs::{Ext2fsHandle, Ino};
use super::Ext4Error;
use crate::plan::{kept_on_replace, PlanEntry, Xattr};

/// `EXT2_ET_MISSING_EA_FEATURE`: neither ext_attr nor inline_data is on.
const ET_MISSING_EA_FEATURE: i64 = 2133571328 + 164;
/// `EXT2_ET_EA_NO_SPACE`.
const ET_EA_NO_SPACE: i64 = 2133571328 + 163;
const XATTR_HANDLE_FLAG_RAW: c_uint = 1;
/// The in-inode attribute holding inline data beyond the first 60 bytes:
/// file content, not an attribute anyone set.
const INLINE_DATA: &str = "system.data";

/// `EXT2_EXT_ATTR_MAGIC`, opening both the in-inode area and a block.
const EA_MAGIC: u32 = 0xEA02_0000;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What [`Ext2fsHandle::ea_store`] finds.
#[derive(Default)]
struct EaStore {
    /// Clusters of values kept in EA inodes (`e_value_inum` set).
    charge: u64,
    /// An attribute block is attached and holds no entry.
    block_empty: bool,
}

/// `(e_value_inum, e_value_size)` of each entry in an attribute area (the
/// entries after the magic), up to the zero word that ends them.
fn entries(area: &[u8]) -> impl Iterator<Item = (u32, u32)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at + 16 > area.len() || le32(area, at) == 0 {
            return None;
        }
        let item = (le32(area, at + 4), le32(area, at + 8));
        // Entry: 16 bytes, then the name, padded to 4 bytes.
        at += (16 + usize::from(area[at]) + 3) & !3;
        Some(item)
    })
}

/// An open, read xattr handle of one inode; closed on drop.
struct Handle<'a> {
    fs: &'a Ext2fsHandle<'a>,
    h: *mut c_void,
    ino: Ino,
}

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        // SAFETY: h came from ext2fs_xattrs_open and is not used after.
        unsafe { (self.fs.api.xattrs_close)(&mut self.h) };
    }
}

unsafe extern "C" fn collect(
    name: *mut c_char,
    value: *mut c_char,
    len: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: data is the Vec passed by `list`; name is a C string and
    // value holds len bytes, both owned by the handle during the call.
    let out = &mut *(data as *mut Vec<Xattr>);
    let value = if len == 0 || value.is_null() {
        Vec::new()
    } else {
        std::slice::from_raw_parts(value as *const u8, len).to_vec()
    };
    out.push(Xattr {
        name: CStr::from_ptr(name).to_string_lossy().into_owned(),
        value,
    });
    0
}

impl<'a> Handle<'a> {
    /// Opens and reads `ino`'s attributes; None when the filesystem can
    /// hold none (no ext_attr feature).
    fn open(fs: &'a Ext2fsHandle<'a>, ino: Ino) -> Result<Option<Handle<'a>>, Ext4Error> {
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: h is a valid out pointer.
        let code = unsafe { (fs.api.xattrs_open)(fs.fs, ino, &mut h) };
        if code == ET_MISSING_EA_FEATURE {
            return Ok(None);
        }
        fs.check(code, || {
            format!("open the extended attributes of inode {ino}")
        })?;
        let handle = Handle { fs, h, ino };
        let mut old: c_uint = 0;
        let mut raw = XATTR_HANDLE_FLAG_RAW;
        // SAFETY: h is open; both pointers are valid.
        let code = unsafe { (fs.api.xattrs_flags)(h, &mut raw, &mut old) };
        fs.check(code, || "switch the xattr handle to raw values".into())?;
        // SAFETY: h is open.
        let code = unsafe { (fs.api.xattrs_read)(h) };
        fs.check(code, || {
            format!("read the extended attributes of inode {ino}")
        })?;
        Ok(Some(handle))
    }

    fn list(&self) -> Result<Vec<Xattr>, Ext4Error> {
        let mut out: Vec<Xattr> = Vec::new();
        // SAFETY: collect only appends to `out`, which outlives the call.
        let code = unsafe {
            (self.fs.api.xattrs_iterate)(self.h, collect, (&mut out as *mut Vec<Xattr>).cast())
        };
        self.fs.check(code, || {
            format!("list the extended attributes of inode {}", self.ino)
        })?;
        Ok(out)
    }

    fn set(&self, x: &Xattr, path: &str) -> Result<(), Ext4Error> {
        let name = CString::new(x.name.as_str()).map_err(|_| Ext4Error::Library {
            doing: format!("set {} on {path}", x.name),
            message: "the name holds a NUL byte".into(),
        })?;
        // SAFETY: name is a C string, value holds value.len() bytes.
        let code = unsafe {
            (self.fs.api.xattr_set)(
                self.h,
                name.as_ptr(),
                x.value.as_ptr().cast(),
                x.value.len(),
            )
        };
        if code == ET_EA_NO_SPACE {
            return Err(Ext4Error::XattrNoSpace {
                path: path.to_string(),
                name: x.name.clone(),
            });
        }
        self.fs.check(code, || format!("set {} on {path}", x.name))
    }

    fn remove(&self, name: &str, path: &str) -> Result<(), Ext4Error> {
        let c = CString::new(name).expect("names come from C strings");
        // SAFETY: c is a C string; h is open.
        let code = unsafe { (self.fs.api.xattr_remove)(self.h, c.as_ptr()) };
        self.fs.check(code, || format!("remove {name} from {path}"))
    }
}

impl Ext2fsHandle<'_> {
    /// The attributes of `ino` that survive its replacement
    /// ([`kept_on_replace`]), to carry over to the inode taking its place.
    pub(super) fn kept_xattrs(&self, ino: Ino) -> Result<Vec<Xattr>, Ext4Error> {
        let Some(h) = Handle::open(self, ino)? else {
            return Ok(Vec::new());
        };
        Ok(h.list()?
            .into_iter()
            .filter(|x| kept_on_replace(&x.name))
            .collect())
    }

    /// Gives `ino` the attributes the plan says: `entry.xattrs`, plus
    /// `kept` where the plan sets no value of that name. With `in_place`
    /// (a file rewritten in its own inode) every other attribute the inode
    /// has is removed, except kept ones and inline data.
    ///
    /// libext2fs leaves two things for the caller, which the kernel does
    /// itself: an attribute block emptied by the removals stays allocated
    /// (it is freed here), and a value stored in its own inode (ea_inode)
    /// is charged to the owner's `i_blocks` by the kernel but not by
    /// libext2fs, so freeing one leaves a count e2fsck rejects ("i_blocks
    /// is 32, should be 8"). The charge is settled here by the difference
    /// before and after.
    pub(super) fn apply_xattrs(
        &self,
        ino: Ino,
        entry: &PlanEntry,
        kept: &[Xattr],
        in_place: bool,
    ) -> Result<(), Ext4Error> {
        if entry.xattrs.is_empty() && kept.is_empty() && !in_place {
            return Ok(());
        }
        let before = self.ea_store(ino)?;
        self.set_xattrs(ino, entry, kept, in_place)?;
        let after = self.ea_store(ino)?;
        let path = entry.path.to_string();
        let mut raw = self.read_inode(ino)?;
        let mut dirty = false;
        if after.block_empty {
            // SAFETY: raw holds a whole inode; libext2fs reads and updates
            // its i_file_acl and i_blocks fields through the pointer.
            let code = unsafe { (self.api.free_ext_attr)(self.fs, ino, raw.as_mut_ptr()) };
            self.check(code, || {
                format!("free the emptied attribute block of {path}")
            })?;
            dirty = true;
        }
        if after.charge != before.charge {
            let (f, n) = if after.charge > before.charge {
                (self.api.iblk_add_blocks, after.charge - before.charge)
            } else {
                (self.api.iblk_sub_blocks, before.charge - after.charge)
            };
            // SAFETY: as above; the count is in clusters, as the kernel's
            // quota charge for an EA inode is.
            let code = unsafe { f(self.fs, raw.as_mut_ptr(), n) };
            // An input made by libext2fs (debugfs ea_set) never charged
            // the values: nothing to take back (EOVERFLOW), and e2fsck
            // flagged that input already.
            if code != 0 && code != i64::from(rustix::io::Errno::OVERFLOW.raw_os_error()) {
                self.check(code, || format!("count the attribute inodes of {path}"))?;
            }
            dirty |= code == 0;
        }
        if dirty {
            self.write_inode(ino, &raw)?;
        }
        Ok(())
    }

    /// Where `ino`'s attributes live: the clusters of values stored in
    /// their own inodes, and whether an attribute block with no entry is
    /// attached.
    fn ea_store(&self, ino: Ino) -> Result<EaStore, Ext4Error> {
        let raw = self.read_inode(ino)?;
        let mut store = EaStore::default();
        let cluster = self.cluster_size.max(1);
        let mut charge = |area: &[u8]| {
            for (inum, size) in entries(area) {
                if inum != 0 {
                    store.charge += u64::from(size).div_ceil(cluster);
                }
            }
        };
        if raw.len() > 132 {
            let at = 128 + usize::from(u16::from_le_bytes([raw[128], raw[129]]));
            if at + 4 <= raw.len() && le32(&raw, at) == EA_MAGIC {
                charge(&raw[at + 4..]);
            }
        }
        let block =
            u64::from(le32(&raw, 104)) | u64::from(u16::from_le_bytes([raw[118], raw[119]])) << 32;
        if block != 0 {
            let mut buf = vec![0u8; self.block_size as usize];
            // SAFETY: buf holds one block, what libext2fs reads into it.
            let code = unsafe { (self.api.read_ext_attr3)(self.fs, block, buf.as_mut_ptr(), ino) };
            self.check(code, || format!("read the attribute block of inode {ino}"))?;
            charge(&buf[32..]);
            store.block_empty = le32(&buf, 32) == 0;
        }
        Ok(store)
    }

    /// The attribute edits of [`Self::apply_xattrs`].
    fn set_xattrs(
        &self,
        ino: Ino,
        entry: &PlanEntry,
        kept: &[Xattr],
        in_place: bool,
    ) -> Result<(), Ext4Error> {
        let path = entry.path.to_string();
        let Some(h) = Handle::open(self, ino)? else {
            return match entry.xattrs.first() {
                Some(x) => Err(Ext4Error::NoXattrs {
                    path,
                    name: x.name.clone(),
                }),
                None => Ok(()),
            };
        };
        if in_place {
            let planned = |name: &str| entry.xattrs.iter().any(|x| x.name == name);
            for x in h.list()? {
                if x.name != INLINE_DATA && !kept_on_replace(&x.name) && !planned(&x.name) {
                    tracing::debug!(path = %path, name = %x.name, "dropping xattr of replaced file");
                    h.remove(&x.name, &path)?;
                }
            }
        }
        for x in kept {
            if !entry.xattrs.iter().any(|p| p.name == x.name) {
                h.set(x, &path)?;
            }
        }
        for x in &entry.xattrs {
            h.set(x, &path)?;
        }
        Ok(())
    }

    /// Removes every attribute of `ino` (before the inode is freed): the
    /// attribute block's reference is dropped (freed when it was the last)
    /// and any value inodes are released.
    pub(super) fn clear_xattrs(&self, ino: Ino, what: &str) -> Result<(), Ext4Error> {
        let Some(h) = Handle::open(self, ino)? else {
            return Ok(());
        };
        for x in h.list()? {
            h.remove(&x.name, what)?;
        }
        Ok(())
    }
}
