//! Why an ext2/3/4 filesystem is refused, as kinds a caller can match (the
//! model is ext4-view's `Corrupt(CorruptKind)`); each kind's text is the
//! message imprint has always printed.

/// Why the bytes are not an ext2/3/4 filesystem at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotExt4Kind {
    /// The superblock could not be read (`0` is the I/O error's text).
    #[error("cannot read the superblock: {0}")]
    Unreadable(String),
    #[error("no ext2/3/4 superblock magic at byte 1080")]
    NoMagic,
    /// A container (LUKS, ...) whose payload holds nothing.
    #[error("the container holds no filesystem")]
    EmptyContainer,
}

/// What is damaged in a filesystem that is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptKind {
    #[error("block size 2^(10+{0}) is invalid")]
    BlockSize(u32),
    #[error("the superblock's geometry is invalid")]
    Geometry,
    #[error("a block of {0} bytes is too large")]
    BlockTooLarge(u64),
    /// A read inside the filesystem failed (`cause` is the I/O error's
    /// text).
    #[error("cannot read {len} bytes at offset {offset}: {cause} (is the image truncated?)")]
    Unreadable {
        len: usize,
        offset: u64,
        cause: String,
    },
    #[error("block {0} is beyond the end of the filesystem")]
    BlockOutside(u64),
    #[error("inode number {0} is out of range")]
    InodeNumber(u32),
    #[error("inode {0} is in a group that does not exist")]
    InodeGroup(u32),
    #[error("group {0}'s inode table lies outside the filesystem")]
    InodeTable(u64),
    #[error("group {0}'s bitmap or inode table lies outside the filesystem")]
    GroupTables(u64),
    #[error("an extent tree node is damaged")]
    ExtentNode,
    #[error("an extent tree node claims too many entries")]
    ExtentEntries,
    #[error("a directory claims {0} bytes")]
    DirectorySize(u64),
    #[error("the extended attribute block {0} has no magic number")]
    XattrMagic(u64),
    /// Found while changing the tree under `under`.
    #[error("directories under {under} nest deeper than {max} levels")]
    TooDeepUnder { under: String, max: usize },
    /// A directory that is its own ancestor.
    #[error("directory {path} (inode {ino}) is inside itself")]
    DirectoryLoop { path: String, ino: u32 },
    /// An entry imprint wrote reads back different.
    #[error("{0} does not read back as it was written")]
    ReadBack(String),
    /// libext2fs found the damage; its own message.
    #[error("{0}")]
    Library(String),
}

#[cfg(test)]
mod tests {
    use super::super::reader::Superblock;
    use super::super::Ext4Error;
    use super::*;

    /// A caller can tell "not ext4" from "damaged ext4", and which damage,
    /// by kind; the text is what it always was.
    #[test]
    fn superblock_refusals_are_kinds_with_the_old_text() {
        let mut raw = vec![0u8; Superblock::SIZE];
        let e = Superblock::parse(&raw).unwrap_err();
        assert!(
            matches!(
                e,
                Ext4Error::NotExt4 {
                    why: NotExt4Kind::NoMagic
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "not an ext2/3/4 filesystem: no ext2/3/4 superblock magic at byte 1080"
        );
        raw[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        raw[0x18..0x1C].copy_from_slice(&7u32.to_le_bytes());
        let e = Superblock::parse(&raw).unwrap_err();
        assert!(
            matches!(
                e,
                Ext4Error::Corrupt {
                    why: CorruptKind::BlockSize(7)
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "the ext2/3/4 filesystem is damaged: block size 2^(10+7) is invalid. Check it with e2fsck -f"
        );
    }
}
