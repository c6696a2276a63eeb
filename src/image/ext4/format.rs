//! Numbers from the ext2/3/4 on-disk format, in one place for imprint's
//! reader (`reader.rs`), the checks before writing (`mod.rs`) and the
//! libext2fs glue (`libext2fs.rs`). Names follow the kernel's
//! `EXT4_FEATURE_*`, `EXT4_*_FL` and `S_IF*` constants.

use crate::image::EntryType;

/// Superblock feature bits.
pub(crate) mod feature {
    pub(crate) const COMPAT_HAS_JOURNAL: u32 = 0x4;
    pub(crate) const COMPAT_SPARSE_SUPER2: u32 = 0x200;

    pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
    pub(crate) const INCOMPAT_RECOVER: u32 = 0x4;
    pub(crate) const INCOMPAT_META_BG: u32 = 0x10;
    pub(crate) const INCOMPAT_EXTENTS: u32 = 0x40;
    pub(crate) const INCOMPAT_64BIT: u32 = 0x80;
    pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x200;
    pub(crate) const INCOMPAT_EA_INODE: u32 = 0x400;
    pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
    pub(crate) const INCOMPAT_LARGEDIR: u32 = 0x4000;
    pub(crate) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
    pub(crate) const INCOMPAT_ENCRYPT: u32 = 0x1_0000;
    pub(crate) const INCOMPAT_CASEFOLD: u32 = 0x2_0000;

    pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
    pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
    pub(crate) const RO_COMPAT_HUGE_FILE: u32 = 0x8;
    pub(crate) const RO_COMPAT_GDT_CSUM: u32 = 0x10;
    pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x20;
    pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
    pub(crate) const RO_COMPAT_QUOTA: u32 = 0x100;
    pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x200;
    pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
    pub(crate) const RO_COMPAT_READONLY: u32 = 0x1000;
    pub(crate) const RO_COMPAT_PROJECT: u32 = 0x2000;
    pub(crate) const RO_COMPAT_VERITY: u32 = 0x8000;
    pub(crate) const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x1_0000;

    /// Incompatible features imprint's reader and libext2fs's writer both
    /// handle. Anything else (compression, a journal device, MMP, dirdata,
    /// unknown bits) is refused rather than risked; RECOVER is refused
    /// with its own message.
    pub(crate) const INCOMPAT_WRITABLE: u32 = INCOMPAT_FILETYPE
        | INCOMPAT_META_BG
        | INCOMPAT_EXTENTS
        | INCOMPAT_64BIT
        | INCOMPAT_FLEX_BG
        | INCOMPAT_EA_INODE
        | INCOMPAT_CSUM_SEED
        | INCOMPAT_LARGEDIR
        | INCOMPAT_INLINE_DATA
        | INCOMPAT_ENCRYPT
        | INCOMPAT_CASEFOLD;

    /// Read-only-compatible features imprint writes to. Not: btree_dir
    /// (never implemented), replica, shared_blocks (e2fsck's dedup) and
    /// orphan_present (refused with its own message).
    pub(crate) const RO_COMPAT_WRITABLE: u32 = RO_COMPAT_SPARSE_SUPER
        | RO_COMPAT_LARGE_FILE
        | RO_COMPAT_HUGE_FILE
        | RO_COMPAT_GDT_CSUM
        | RO_COMPAT_DIR_NLINK
        | RO_COMPAT_EXTRA_ISIZE
        | RO_COMPAT_QUOTA
        | RO_COMPAT_BIGALLOC
        | RO_COMPAT_METADATA_CSUM
        | RO_COMPAT_READONLY
        | RO_COMPAT_PROJECT
        | RO_COMPAT_VERITY;
}

/// `s_state`: the filesystem was found to have errors.
pub(crate) const STATE_ERRORS: u16 = 0x2;

/// The root directory's inode number.
pub(crate) const ROOT_INO: u32 = 2;

/// Inode flags (`i_flags`).
pub(crate) const EXTENTS_FL: u32 = 0x0008_0000;
pub(crate) const INLINE_DATA_FL: u32 = 0x1000_0000;
/// A directory whose lookups fold case (`chattr +F`).
pub(crate) const CASEFOLD_FL: u32 = 0x4000_0000;

/// The first two bytes of every extent tree node.
pub(crate) const EXTENT_MAGIC: u16 = 0xF30A;

/// File type bits of `i_mode`.
pub(crate) const S_IFMT: u16 = 0xF000;
pub(crate) const S_IFREG: u16 = 0x8000;
pub(crate) const S_IFDIR: u16 = 0x4000;
pub(crate) const S_IFLNK: u16 = 0xA000;

/// The kind of file an inode's `i_mode` describes.
pub(crate) fn kind_of_mode(mode: u16) -> EntryType {
    match mode & S_IFMT {
        S_IFREG => EntryType::Regular,
        S_IFDIR => EntryType::Dir,
        S_IFLNK => EntryType::Symlink,
        _ => EntryType::Other,
    }
}

/// What kind of special file an inode's `i_mode` describes, if any.
pub(crate) fn special_of_mode(mode: u16) -> Option<crate::plan::model::Special> {
    use crate::plan::model::Special;
    match mode & S_IFMT {
        0x1000 => Some(Special::Fifo),
        0x2000 => Some(Special::CharDevice),
        0x6000 => Some(Special::BlockDevice),
        0xC000 => Some(Special::Socket),
        _ => None,
    }
}
