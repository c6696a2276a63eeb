//! Writes a plan into an ext2/3/4 filesystem through libext2fs, the library
//! e2fsck and mke2fs are built on, over imprint's own I/O manager (see
//! `io_manager.rs`): the library reads the image and its writes are kept in
//! memory, for the format backend to place into the output.
//!
//! The library is loaded at run time (`libext2fs.so.2`) so that building
//! imprint needs no -dev package and a machine without e2fsprogs still runs
//! every other format. Only a handful of entry points are used, and beyond
//! the public I/O manager interface no struct layouts are shared: inodes
//! are passed as raw on-disk bytes (the in-memory `ext2_inode_large` is the
//! little-endian on-disk layout on the little-endian hosts imprint
//! supports), so a libext2fs upgrade cannot silently shift a field under us.

// Inodes cross as raw on-disk bytes, which are little-endian, where
// libext2fs expects its in-memory `ext2_inode_large`: the two agree only on
// a little-endian host. Refuse to build rather than corrupt images.
#[cfg(target_endian = "big")]
compile_error!(
    "imprint's ext2/3/4 writer needs a little-endian host: it passes little-endian on-disk \
     inodes to libext2fs as its in-memory struct ext2_inode_large"
);

use std::ffi::{c_char, c_int, c_long, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;

use libloading::Library;

use super::format::{
    feature, kind_of_mode, CASEFOLD_FL, EXTENTS_FL, EXTENT_MAGIC, INLINE_DATA_FL, ROOT_INO,
    S_IFDIR, S_IFREG,
};
use super::io_manager::{self, Device, Errcode};
use super::reader::Superblock;
use super::{CorruptKind, Ext4Error};
use crate::image::EntryType;
use crate::plan::{Plan, PlanEntry, PlanKind};

pub(super) type Fs = *mut c_void;
pub(super) type Ino = u32;
/// `ext2fs_dir_iterate2`'s callback: dir, entry kind, dirent, offset,
/// block size, block buffer, private data.
pub(super) type DirCallback =
    unsafe extern "C" fn(Ino, c_int, *mut c_void, c_int, c_int, *mut c_char, *mut c_void) -> c_int;
/// `ext2fs_xattrs_iterate`'s callback: name, value, length, private data.
pub(super) type XattrCallback =
    unsafe extern "C" fn(*mut c_char, *mut c_char, usize, *mut c_void) -> c_int;

// Flags and error codes from <ext2fs/ext2fs.h> and <ext2fs/ext2_err.h>.
pub(super) const FLAG_RW: c_int = 0x01;
/// Write only the primary superblock and group descriptors, as e2fsck
/// does: backups stay byte-identical to the input.
const FLAG_MASTER_SB_ONLY: c_int = 0x200;
pub(super) const FLAG_64BITS: c_int = 0x20000;
pub(super) const FILE_WRITE: c_int = 0x1;
const FT_REG_FILE: c_int = 1;

const ET_GDESC_BAD_BLOCK_MAP: Errcode = 2133571352;
const ET_GDESC_BAD_INODE_MAP: Errcode = 2133571353;
const ET_GDESC_BAD_INODE_TABLE: Errcode = 2133571354;
const ET_DIR_NO_SPACE: Errcode = 2133571366;
const ET_UNSUPP_FEATURE: Errcode = 2133571395;
const ET_RO_UNSUPP_FEATURE: Errcode = 2133571396;
const ET_BLOCK_ALLOC_FAIL: Errcode = 2133571400;
const ET_INODE_ALLOC_FAIL: Errcode = 2133571401;
const ET_FILE_NOT_FOUND: Errcode = 2133571404;
const ET_BAD_DESC_SIZE: Errcode = 2133571473;

/// The entry points imprint uses, resolved once per process.
pub(super) struct Api {
    open2: unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        c_int,
        c_int,
        c_uint,
        *const c_void,
        *mut Fs,
    ) -> Errcode,
    close_free: unsafe extern "C" fn(*mut Fs) -> Errcode,
    free: unsafe extern "C" fn(Fs),
    check_desc: unsafe extern "C" fn(Fs) -> Errcode,
    read_bitmaps: unsafe extern "C" fn(Fs) -> Errcode,
    lookup: unsafe extern "C" fn(Fs, Ino, *const c_char, c_int, *mut c_char, *mut Ino) -> Errcode,
    mkdir: unsafe extern "C" fn(Fs, Ino, Ino, *const c_char) -> Errcode,
    expand_dir: unsafe extern "C" fn(Fs, Ino) -> Errcode,
    pub(super) new_inode: unsafe extern "C" fn(Fs, Ino, c_int, *mut c_void, *mut Ino) -> Errcode,
    pub(super) link: unsafe extern "C" fn(Fs, Ino, *const c_char, Ino, c_int) -> Errcode,
    pub(super) inode_alloc_stats2: unsafe extern "C" fn(Fs, Ino, c_int, c_int),
    pub(super) read_inode_full: unsafe extern "C" fn(Fs, Ino, *mut u8, c_int) -> Errcode,
    write_inode_full: unsafe extern "C" fn(Fs, Ino, *const u8, c_int) -> Errcode,
    inline_data_init: unsafe extern "C" fn(Fs, Ino) -> Errcode,
    pub(super) file_open: unsafe extern "C" fn(Fs, Ino, c_int, *mut *mut c_void) -> Errcode,
    pub(super) file_write:
        unsafe extern "C" fn(*mut c_void, *const c_void, c_uint, *mut c_uint) -> Errcode,
    pub(super) file_set_size2: unsafe extern "C" fn(*mut c_void, u64) -> Errcode,
    pub(super) file_close: unsafe extern "C" fn(*mut c_void) -> Errcode,
    pub(super) file_llseek: unsafe extern "C" fn(*mut c_void, u64, c_int, *mut u64) -> Errcode,
    pub(super) symlink: unsafe extern "C" fn(Fs, Ino, Ino, *const c_char, *const c_char) -> Errcode,
    pub(super) unlink: unsafe extern "C" fn(Fs, Ino, *const c_char, Ino, c_int) -> Errcode,
    pub(super) punch: unsafe extern "C" fn(Fs, Ino, *mut u8, *mut c_char, u64, u64) -> Errcode,
    pub(super) has_valid_blocks2: unsafe extern "C" fn(Fs, *const u8) -> c_int,
    pub(super) dir_iterate2:
        unsafe extern "C" fn(Fs, Ino, c_int, *mut c_char, DirCallback, *mut c_void) -> Errcode,
    pub(super) xattrs_open: unsafe extern "C" fn(Fs, Ino, *mut *mut c_void) -> Errcode,
    pub(super) xattrs_read: unsafe extern "C" fn(*mut c_void) -> Errcode,
    pub(super) xattrs_iterate:
        unsafe extern "C" fn(*mut c_void, XattrCallback, *mut c_void) -> Errcode,
    pub(super) xattr_set:
        unsafe extern "C" fn(*mut c_void, *const c_char, *const c_void, usize) -> Errcode,
    pub(super) xattr_remove: unsafe extern "C" fn(*mut c_void, *const c_char) -> Errcode,
    pub(super) xattrs_flags: unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut c_uint) -> Errcode,
    pub(super) xattrs_close: unsafe extern "C" fn(*mut *mut c_void) -> Errcode,
    pub(super) read_ext_attr3: unsafe extern "C" fn(Fs, u64, *mut u8, Ino) -> Errcode,
    pub(super) free_ext_attr: unsafe extern "C" fn(Fs, Ino, *mut u8) -> Errcode,
    pub(super) iblk_add_blocks: unsafe extern "C" fn(Fs, *mut u8, u64) -> Errcode,
    pub(super) iblk_sub_blocks: unsafe extern "C" fn(Fs, *mut u8, u64) -> Errcode,
    /// Casefolding (e2fsprogs >= 1.45, as is the casefold feature itself).
    pub(super) load_nls_table: Option<unsafe extern "C" fn(c_int) -> *const c_void>,
    pub(super) casefold_cmp:
        Option<unsafe extern "C" fn(*const c_void, *const u8, usize, *const u8, usize) -> c_int>,
    error_message: Option<unsafe extern "C" fn(c_long) -> *const c_char>,
    // Keep the libraries loaded for as long as the pointers above live.
    _libs: Vec<Library>,
}

// SAFETY: the function pointers are immutable after loading; libext2fs
// keeps no thread-affine state in them.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

const LIBRARY: &str = "libext2fs.so.2";

/// Another libext2fs to load (a path), e.g. a newer e2fsprogs build; set
/// by the CLI from `IMPRINT_LIBEXT2FS` before the library is first used.
static LIBRARY_PATH: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Loads libext2fs from `path` instead of the system's `libext2fs.so.2`.
/// Has no effect once libext2fs was loaded.
pub fn use_library(path: std::path::PathBuf) {
    let _ = LIBRARY_PATH.set(path);
}

/// Why libext2fs could not be used, kept for every later caller.
enum LoadFailure {
    /// The library itself did not load.
    Missing(String),
    /// It loaded but lacks an entry point imprint calls.
    TooOld(&'static str),
}

pub(super) fn api() -> Result<&'static Api, Ext4Error> {
    static API: OnceLock<Result<Api, LoadFailure>> = OnceLock::new();
    // SAFETY: loading libext2fs runs its initialisers, which only set up
    // its error table.
    match API.get_or_init(|| unsafe { load() }) {
        Ok(api) => Ok(api),
        Err(LoadFailure::Missing(why)) => Err(Ext4Error::LibraryMissing { why: why.clone() }),
        Err(LoadFailure::TooOld(symbol)) => Err(Ext4Error::LibraryTooOld { symbol }),
    }
}

unsafe fn load() -> Result<Api, LoadFailure> {
    let lib = match LIBRARY_PATH.get() {
        Some(path) => Library::new(path),
        None => Library::new(LIBRARY),
    }
    .map_err(|e| LoadFailure::Missing(e.to_string()))?;
    // A libext2fs without one of these predates what imprint supports.
    macro_rules! sym {
        ($name:literal) => {
            *lib.get(concat!($name, "\0").as_bytes())
                .map_err(|_| LoadFailure::TooOld($name))?
        };
    }
    // com_err turns error codes into messages; libext2fs depends on it, so
    // it is present whenever libext2fs is.
    let com_err = Library::new("libcom_err.so.2").ok();
    let error_message = com_err
        .as_ref()
        .and_then(|l| l.get(b"error_message\0").ok().map(|s| *s));
    let init_table: Option<unsafe extern "C" fn()> =
        lib.get(b"initialize_ext2_error_table\0").ok().map(|s| *s);
    if let Some(init) = init_table {
        init();
    }
    let api = Api {
        open2: sym!("ext2fs_open2"),
        close_free: sym!("ext2fs_close_free"),
        free: sym!("ext2fs_free"),
        check_desc: sym!("ext2fs_check_desc"),
        read_bitmaps: sym!("ext2fs_read_bitmaps"),
        lookup: sym!("ext2fs_lookup"),
        mkdir: sym!("ext2fs_mkdir"),
        expand_dir: sym!("ext2fs_expand_dir"),
        new_inode: sym!("ext2fs_new_inode"),
        link: sym!("ext2fs_link"),
        inode_alloc_stats2: sym!("ext2fs_inode_alloc_stats2"),
        read_inode_full: sym!("ext2fs_read_inode_full"),
        write_inode_full: sym!("ext2fs_write_inode_full"),
        inline_data_init: sym!("ext2fs_inline_data_init"),
        file_open: sym!("ext2fs_file_open"),
        file_write: sym!("ext2fs_file_write"),
        file_set_size2: sym!("ext2fs_file_set_size2"),
        file_close: sym!("ext2fs_file_close"),
        file_llseek: sym!("ext2fs_file_llseek"),
        symlink: sym!("ext2fs_symlink"),
        unlink: sym!("ext2fs_unlink"),
        punch: sym!("ext2fs_punch"),
        has_valid_blocks2: sym!("ext2fs_inode_has_valid_blocks2"),
        dir_iterate2: sym!("ext2fs_dir_iterate2"),
        xattrs_open: sym!("ext2fs_xattrs_open"),
        xattrs_read: sym!("ext2fs_xattrs_read"),
        xattrs_iterate: sym!("ext2fs_xattrs_iterate"),
        xattr_set: sym!("ext2fs_xattr_set"),
        xattr_remove: sym!("ext2fs_xattr_remove"),
        xattrs_flags: sym!("ext2fs_xattrs_flags"),
        xattrs_close: sym!("ext2fs_xattrs_close"),
        read_ext_attr3: sym!("ext2fs_read_ext_attr3"),
        free_ext_attr: sym!("ext2fs_free_ext_attr"),
        iblk_add_blocks: sym!("ext2fs_iblk_add_blocks"),
        iblk_sub_blocks: sym!("ext2fs_iblk_sub_blocks"),
        load_nls_table: lib.get(b"ext2fs_load_nls_table\0").ok().map(|s| *s),
        casefold_cmp: lib.get(b"ext2fs_casefold_cmp\0").ok().map(|s| *s),
        error_message,
        _libs: [Some(lib), com_err].into_iter().flatten().collect(),
    };
    Ok(api)
}

/// Checks that libext2fs can be loaded, so a missing library is reported
/// before any work (or API call) is done.
pub(crate) fn ensure_loaded() -> Result<(), Ext4Error> {
    api().map(|_| ())
}

fn message(api: &Api, code: Errcode) -> String {
    if let Some(f) = api.error_message {
        // SAFETY: error_message returns a static or thread-local C string.
        let text = unsafe { CStr::from_ptr(f(code)) };
        return text.to_string_lossy().into_owned();
    }
    format!("error code {code}")
}

/// An open filesystem; freed without flushing unless `close` succeeds, so
/// an error half-way leaves nothing to flush into the (discarded) copy.
pub(super) struct Ext2fsHandle<'a> {
    pub(super) api: &'a Api,
    pub(super) fs: Fs,
    pub(super) inode_size: usize,
    pub(super) block_size: u64,
    /// Bytes per allocation cluster: the unit of an EA inode's charge.
    pub(super) cluster_size: u64,
    inline_data: bool,
    extents: bool,
    /// Set when the filesystem has the casefold feature.
    pub(super) casefold: Option<Casefold>,
}

/// The filesystem's name encoding, for lookups in case-folded directories.
pub(super) struct Casefold {
    pub(super) encoding: u16,
    /// libext2fs's table for it; None when it does not know the encoding.
    pub(super) table: Option<*const c_void>,
}

impl Drop for Ext2fsHandle<'_> {
    fn drop(&mut self) {
        if !self.fs.is_null() {
            // SAFETY: fs came from ext2fs_open2 and is not used afterwards.
            unsafe { (self.api.free)(self.fs) };
        }
    }
}

impl Ext2fsHandle<'_> {
    pub(super) fn check(
        &self,
        code: Errcode,
        op: impl FnOnce() -> String,
    ) -> Result<(), Ext4Error> {
        match code {
            0 => Ok(()),
            ET_INODE_ALLOC_FAIL => Err(Ext4Error::NoFreeInode { doing: op() }),
            ET_BLOCK_ALLOC_FAIL | ET_DIR_NO_SPACE => Err(Ext4Error::NoFreeBlock { doing: op() }),
            ET_UNSUPP_FEATURE | ET_RO_UNSUPP_FEATURE => Err(Ext4Error::Unsupported {
                features: message(self.api, code),
            }),
            ET_GDESC_BAD_BLOCK_MAP
            | ET_GDESC_BAD_INODE_MAP
            | ET_GDESC_BAD_INODE_TABLE
            | ET_BAD_DESC_SIZE => Err(Ext4Error::Corrupt {
                why: CorruptKind::Library(message(self.api, code)),
            }),
            _ => Err(Ext4Error::Library {
                doing: op(),
                message: message(self.api, code),
            }),
        }
    }

    /// Finds `name` in `dir`, folding case where the directory does.
    pub(super) fn lookup(&self, dir: Ino, name: &str) -> Result<Option<Ino>, Ext4Error> {
        Ok(self.lookup_entry(dir, name)?.map(|(ino, _)| ino))
    }

    /// As [`Self::lookup`], with the name as stored (which differs in
    /// case-folded directories).
    pub(super) fn lookup_entry(
        &self,
        dir: Ino,
        name: &str,
    ) -> Result<Option<(Ino, Vec<u8>)>, Ext4Error> {
        if self.casefold.is_some() && self.folds_case(&self.read_inode(dir)?) {
            return self.lookup_folded(dir, name);
        }
        Ok(self
            .lookup_exact(dir, name)?
            .map(|ino| (ino, name.as_bytes().to_vec())))
    }

    fn lookup_exact(&self, dir: Ino, name: &str) -> Result<Option<Ino>, Ext4Error> {
        let mut ino: Ino = 0;
        // SAFETY: name is valid for name.len() bytes; ino is a valid out pointer.
        let code = unsafe {
            (self.api.lookup)(
                self.fs,
                dir,
                name.as_ptr().cast(),
                name.len() as c_int,
                std::ptr::null_mut(),
                &mut ino,
            )
        };
        if code == ET_FILE_NOT_FOUND {
            return Ok(None);
        }
        self.check(code, || format!("look up {name}"))?;
        Ok(Some(ino))
    }

    pub(super) fn read_inode(&self, ino: Ino) -> Result<Vec<u8>, Ext4Error> {
        let mut raw = vec![0u8; self.inode_size];
        // SAFETY: raw holds inode_size bytes, the size we pass.
        let code = unsafe {
            (self.api.read_inode_full)(self.fs, ino, raw.as_mut_ptr(), raw.len() as c_int)
        };
        self.check(code, || format!("read inode {ino}"))?;
        Ok(raw)
    }

    pub(super) fn write_inode(&self, ino: Ino, raw: &[u8]) -> Result<(), Ext4Error> {
        // SAFETY: raw holds inode_size bytes, the size we pass.
        let code =
            unsafe { (self.api.write_inode_full)(self.fs, ino, raw.as_ptr(), raw.len() as c_int) };
        self.check(code, || format!("write inode {ino}"))
    }

    /// Walks `components` from the root without following symlinks.
    pub(super) fn resolve(&self, components: &[String]) -> Result<Option<Ino>, Ext4Error> {
        let mut ino = ROOT_INO;
        for (i, name) in components.iter().enumerate() {
            if i > 0 && inode_kind(&self.read_inode(ino)?) != EntryType::Dir {
                return Ok(None);
            }
            match self.lookup(ino, name)? {
                Some(next) => ino = next,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    /// Adds a directory entry, growing the directory by a block when full,
    /// the way e2fsprogs' own tools do.
    pub(super) fn with_dir_space(
        &self,
        dir: Ino,
        what: &str,
        mut add: impl FnMut() -> Errcode,
    ) -> Result<(), Ext4Error> {
        let mut code = add();
        if code == ET_DIR_NO_SPACE {
            // SAFETY: plain call on an open fs.
            let grown = unsafe { (self.api.expand_dir)(self.fs, dir) };
            self.check(grown, || {
                format!("grow the directory that will hold {what}")
            })?;
            code = add();
        }
        self.check(code, || format!("add {what}"))
    }

    /// The inode of `entry`, which a libext2fs call just made in `parent`.
    pub(super) fn find_created(&self, parent: Ino, entry: &PlanEntry) -> Result<Ino, Ext4Error> {
        self.lookup(parent, entry.path.file_name())?
            .ok_or_else(|| Ext4Error::Library {
                doing: format!("find {} after creating it", entry.path),
                message: "it is not there".into(),
            })
    }

    pub(super) fn make_dir(
        &self,
        parent: Ino,
        entry: &PlanEntry,
        mtime: i64,
    ) -> Result<(), Ext4Error> {
        let name = CString::new(entry.path.file_name()).expect("ImagePath has no NUL");
        let what = entry.path.to_string();
        // SAFETY: name is a valid C string for the duration of the call.
        self.with_dir_space(parent, &what, || unsafe {
            (self.api.mkdir)(self.fs, parent, 0, name.as_ptr())
        })?;
        let ino = self.find_created(parent, entry)?;
        let mut raw = self.read_inode(ino)?;
        set_attributes(&mut raw, S_IFDIR | entry.mode as u16, entry, mtime, true);
        // The kernel gives a new directory its parent's +F (casefold) flag;
        // ext2fs_mkdir does not.
        if self.folds_case(&self.read_inode(parent)?) {
            let flags = u32::from_le_bytes([raw[32], raw[33], raw[34], raw[35]]);
            put32(&mut raw, 32, flags | CASEFOLD_FL);
        }
        self.write_inode(ino, &raw)?;
        self.apply_xattrs(ino, entry, &[], false)
    }

    /// Allocates an empty regular file and links it into `parent`.
    pub(super) fn create_file(
        &self,
        parent: Ino,
        entry: &PlanEntry,
        mtime: i64,
    ) -> Result<Ino, Ext4Error> {
        let what = entry.path.to_string();
        let mut ino: Ino = 0;
        // SAFETY: ino is a valid out pointer; a null bitmap means the fs's own.
        let code = unsafe {
            (self.api.new_inode)(
                self.fs,
                parent,
                c_int::from(S_IFREG) | entry.mode as c_int,
                std::ptr::null_mut(),
                &mut ino,
            )
        };
        self.check(code, || format!("allocate an inode for {what}"))?;
        let name = CString::new(entry.path.file_name()).expect("ImagePath has no NUL");
        // SAFETY: name is a valid C string for the duration of the call.
        self.with_dir_space(parent, &what, || unsafe {
            (self.api.link)(self.fs, parent, name.as_ptr(), ino, FT_REG_FILE)
        })?;
        // SAFETY: ino was just allocated by ext2fs_new_inode.
        unsafe { (self.api.inode_alloc_stats2)(self.fs, ino, 1, 0) };

        let mut raw = vec![0u8; self.inode_size];
        if self.inode_size > 128 {
            // i_extra_isize: the fixed extra fields (times, crtime) we fill.
            let extra = (self.inode_size - 128).min(32) as u16;
            raw[128..130].copy_from_slice(&extra.to_le_bytes());
        }
        put16(&mut raw, 26, 1); // one link
        if self.inline_data {
            put32(&mut raw, 32, INLINE_DATA_FL);
        } else if self.extents {
            put32(&mut raw, 32, EXTENTS_FL);
            // An empty extent tree root: magic, 0 entries, room for 4, depth 0.
            put16(&mut raw, 40, EXTENT_MAGIC);
            put16(&mut raw, 44, 4);
        }
        set_attributes(&mut raw, S_IFREG | entry.mode as u16, entry, mtime, true);
        self.write_inode(ino, &raw)?;
        if self.inline_data {
            // SAFETY: plain call on an open fs and an inode we own.
            let code = unsafe { (self.api.inline_data_init)(self.fs, ino) };
            self.check(code, || format!("set up inline data for {what}"))?;
        }
        Ok(ino)
    }

    /// Replaces the whole content of regular file `ino`.
    fn write_content(&self, ino: Ino, content: &[u8], what: &str) -> Result<(), Ext4Error> {
        let mut file: *mut c_void = std::ptr::null_mut();
        // SAFETY: file is a valid out pointer.
        let code = unsafe { (self.api.file_open)(self.fs, ino, FILE_WRITE, &mut file) };
        self.check(code, || format!("open {what}"))?;
        let result = (|| {
            // SAFETY: file is open; content outlives the calls.
            let code = unsafe { (self.api.file_set_size2)(file, 0) };
            self.check(code, || format!("truncate {what}"))?;
            let mut done = 0usize;
            while done < content.len() {
                let mut written: c_uint = 0;
                let rest = &content[done..];
                // SAFETY: file is open; `rest` is valid for the length
                // passed and `written` is a valid out pointer.
                let code = unsafe {
                    (self.api.file_write)(
                        file,
                        rest.as_ptr().cast(),
                        rest.len() as c_uint,
                        &mut written,
                    )
                };
                self.check(code, || format!("write {what}"))?;
                if written == 0 {
                    return Err(Ext4Error::NoFreeBlock {
                        doing: format!("write {what}"),
                    });
                }
                done += written as usize;
            }
            Ok(())
        })();
        // SAFETY: file is open and not used after this.
        let closed = unsafe { (self.api.file_close)(file) };
        result?;
        self.check(closed, || format!("finish writing {what}"))
    }

    /// Writes `content` at `entry`'s path. An existing file with one link
    /// is rewritten in its own inode and loses every attribute but its
    /// security label; one with more links is never rewritten (its other
    /// names keep the old file): this name is unlinked and a new inode,
    /// carrying the old one's label, takes its place.
    fn write_file(
        &self,
        parent: Ino,
        entry: &PlanEntry,
        content: &[u8],
        mtime: i64,
    ) -> Result<(), Ext4Error> {
        let what = entry.path.to_string();
        let (ino, kept, in_place) = match self.lookup_entry(parent, entry.path.file_name())? {
            Some((ino, stored)) => {
                let raw = self.read_inode(ino)?;
                let kind = inode_kind(&raw);
                let links = u16::from_le_bytes([raw[26], raw[27]]);
                if kind != EntryType::Regular {
                    return Err(Ext4Error::Unexpected {
                        path: what,
                        what: describe(kind, links),
                    });
                }
                if links == 1 {
                    (ino, Vec::new(), true)
                } else {
                    tracing::debug!(path = %what, links, "unlinking a hard-linked file to replace it");
                    let kept = self.kept_xattrs(ino)?;
                    self.remove(parent, &stored, ino, false, mtime, &what)?;
                    (self.create_file(parent, entry, mtime)?, kept, false)
                }
            }
            None => (self.create_file(parent, entry, mtime)?, Vec::new(), false),
        };
        self.write_content(ino, content, &what)?;
        self.apply_xattrs(ino, entry, &kept, in_place)?;
        // The file API rewrote size and block count; put our metadata last.
        let mut raw = self.read_inode(ino)?;
        set_attributes(&mut raw, S_IFREG | entry.mode as u16, entry, mtime, false);
        self.write_inode(ino, &raw)
    }

    /// Makes `entry` a symlink to `target`, replacing a file or symlink
    /// there (whose security label the new inode keeps).
    fn write_symlink(
        &self,
        parent: Ino,
        entry: &PlanEntry,
        target: &str,
        mtime: i64,
    ) -> Result<(), Ext4Error> {
        let what = entry.path.to_string();
        let kept = match self.lookup_entry(parent, entry.path.file_name())? {
            Some((ino, stored)) => {
                let kind = inode_kind(&self.read_inode(ino)?);
                if !matches!(kind, EntryType::Regular | EntryType::Symlink) {
                    return Err(Ext4Error::Unexpected {
                        path: what,
                        what: self.describe_inode(ino)?,
                    });
                }
                let kept = self.kept_xattrs(ino)?;
                self.remove(parent, &stored, ino, false, mtime, &what)?;
                kept
            }
            None => Vec::new(),
        };
        let ino = self.make_symlink(parent, entry, target, mtime)?;
        self.apply_xattrs(ino, entry, &kept, false)
    }

    pub(super) fn close(mut self) -> Result<(), Ext4Error> {
        // SAFETY: close_free flushes, frees and nulls fs.
        let code = unsafe { (self.api.close_free)(&mut self.fs) };
        self.fs = std::ptr::null_mut();
        self.check(code, || "write the filesystem's metadata".into())
    }
}

pub(super) fn describe(kind: EntryType, links: u16) -> String {
    match kind {
        EntryType::Symlink => "a symlink".into(),
        EntryType::Dir => "a directory".into(),
        EntryType::Regular => format!("a file with {links} hard links"),
        EntryType::Other => "a device, fifo or socket".into(),
    }
}

pub(super) fn inode_kind(raw: &[u8]) -> EntryType {
    kind_of_mode(u16::from_le_bytes([raw[0], raw[1]]))
}

pub(super) fn put16(raw: &mut [u8], at: usize, v: u16) {
    raw[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put32(raw: &mut [u8], at: usize, v: u32) {
    raw[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Sets mode, owner (32-bit ids split into the low and high halves) and
/// every timestamp to `mtime`, so no wall-clock time reaches the image.
pub(super) fn set_attributes(raw: &mut [u8], mode: u16, entry: &PlanEntry, mtime: i64, new: bool) {
    put16(raw, 0, mode);
    put16(raw, 2, entry.owner.uid as u16);
    put16(raw, 120, (entry.owner.uid >> 16) as u16);
    put16(raw, 24, entry.owner.gid as u16);
    put16(raw, 122, (entry.owner.gid >> 16) as u16);
    let t = mtime.clamp(i32::MIN as i64, (i32::MAX as i64) + (3 << 32));
    let lo = t as u32;
    // Seconds beyond 2038 go into the two epoch bits of the _extra fields.
    let epoch = ((t - i64::from(lo as i32)) >> 32) as u32 & 3;
    for at in [8, 12, 16] {
        put32(raw, at, lo);
    }
    let extra_end = if raw.len() > 130 {
        128 + u16::from_le_bytes([raw[128], raw[129]]) as usize
    } else {
        128
    };
    for at in [132, 136, 140] {
        if at + 4 <= extra_end {
            put32(raw, at, epoch);
        }
    }
    if new && 152 <= extra_end {
        put32(raw, 144, lo);
        put32(raw, 148, epoch);
    }
}

/// Applies `plan` to the filesystem on `device` (see `io_manager.rs`).
pub(super) fn apply_to_device(
    device: &mut dyn Device,
    sb: &Superblock,
    plan: &Plan,
) -> Result<(), Ext4Error> {
    let api = api()?;
    let manager = &io_manager::MANAGER as *const io_manager::IoManager as *const c_void;
    let (result, io_error) =
        io_manager::with_device(device, || edit(api, c"imprint", manager, sb, plan));
    match io_error {
        // The device's own error says more than libext2fs's short read.
        Some(e) => Err(Ext4Error::Device(e)),
        None => result,
    }
}

/// Opens the filesystem named `name` through `manager` with `flags`,
/// checks its group descriptors and reads its bitmaps.
pub(super) fn open_fs<'a>(
    api: &'a Api,
    name: &CStr,
    manager: *const c_void,
    sb: &Superblock,
    flags: c_int,
) -> Result<Ext2fsHandle<'a>, Ext4Error> {
    let mut fs: Fs = std::ptr::null_mut();
    // SAFETY: name is a valid C string; fs is a valid out pointer.
    let code = unsafe {
        (api.open2)(
            name.as_ptr(),
            std::ptr::null(),
            flags,
            0,
            0,
            manager,
            &mut fs,
        )
    };
    let open = Ext2fsHandle {
        api,
        fs: if code == 0 { fs } else { std::ptr::null_mut() },
        inode_size: sb.inode_size as usize,
        block_size: sb.block_size,
        cluster_size: sb.cluster_size,
        casefold: (sb.incompat & feature::INCOMPAT_CASEFOLD != 0).then(|| Casefold {
            encoding: sb.encoding,
            // SAFETY: a plain lookup of a static table.
            table: api
                .load_nls_table
                .map(|load| unsafe { load(c_int::from(sb.encoding)) })
                .filter(|t| !t.is_null()),
        }),
        inline_data: sb.incompat & feature::INCOMPAT_INLINE_DATA != 0,
        extents: sb.incompat & feature::INCOMPAT_EXTENTS != 0,
    };
    open.check(code, || "open the filesystem".into())?;
    // e2fsck's first check: every group's bitmaps and inode table inside
    // the filesystem and clear of each other and of the superblocks and
    // descriptors. libext2fs's allocator trusts the descriptors (a bitmap
    // it cannot read counts as all free), so a damaged one would have new
    // file data written over metadata.
    // SAFETY: plain call on an open fs.
    let code = unsafe { (api.check_desc)(open.fs) };
    open.check(code, || "check the group descriptors".into())?;
    // SAFETY: plain call on an open fs.
    let code = unsafe { (api.read_bitmaps)(open.fs) };
    open.check(code, || "read the allocation bitmaps".into())?;
    Ok(open)
}

/// Opens the filesystem named `name` through `manager`, applies the plan,
/// and closes it (flushing) only if every step succeeded.
fn edit(
    api: &Api,
    name: &CStr,
    manager: *const c_void,
    sb: &Superblock,
    plan: &Plan,
) -> Result<(), Ext4Error> {
    let open = open_fs(
        api,
        name,
        manager,
        sb,
        FLAG_RW | FLAG_64BITS | FLAG_MASTER_SB_ONLY,
    )?;

    for entry in &plan.entries {
        let components = entry.path.components();
        let parent_components = &components[..components.len() - 1];
        let parent = match open.resolve(parent_components)? {
            Some(ino) if inode_kind(&open.read_inode(ino)?) == EntryType::Dir => Some(ino),
            _ => None,
        };
        let Some(parent) = parent else {
            // Nothing to remove where there is no directory to hold it.
            if matches!(entry.kind, PlanKind::Absent { .. }) {
                continue;
            }
            return Err(Ext4Error::Unexpected {
                path: format!("/{}", parent_components.join("/")),
                what: "missing or not a directory".into(),
            });
        };
        match &entry.kind {
            PlanKind::Dir => match open.lookup(parent, entry.path.file_name())? {
                Some(ino) => {
                    let kind = inode_kind(&open.read_inode(ino)?);
                    if kind != EntryType::Dir {
                        return Err(Ext4Error::Unexpected {
                            path: entry.path.to_string(),
                            what: describe(kind, 1),
                        });
                    }
                }
                None => {
                    tracing::debug!(path = %entry.path, "creating directory with ext2fs_mkdir");
                    open.make_dir(parent, entry, plan.mtime)?
                }
            },
            PlanKind::File(content) => {
                tracing::debug!(path = %entry.path, bytes = content.len(), "writing file");
                open.write_file(parent, entry, content, plan.mtime)?
            }
            PlanKind::Symlink(target) => {
                tracing::debug!(path = %entry.path, "writing symlink");
                open.write_symlink(parent, entry, target, plan.mtime)?
            }
            PlanKind::Absent { recursive } => {
                if let Some((ino, stored)) = open.lookup_entry(parent, entry.path.file_name())? {
                    tracing::debug!(path = %entry.path, recursive, "removing");
                    let what = entry.path.to_string();
                    open.remove(parent, &stored, ino, *recursive, plan.mtime, &what)?
                }
            }
        }
    }
    open.close()
}
