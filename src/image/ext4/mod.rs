//! ext2/3/4 images: written through libext2fs (see `libext2fs.rs`), read
//! through imprint's own small reader (see [`reader`]), so the two check each
//! other.
//!
//! libext2fs edits the filesystem through an I/O manager (`io_manager.rs`)
//! over a device that reads the input and keeps the blocks written in
//! memory (`ChangedBlocks`); a raw output is then a hole-preserving copy
//! of the input with those blocks written in, a sparse one the input's
//! chunks with them spliced in. The input is only ever opened for reading.
//! The on-disk format's numbers live in `format.rs`.

mod backend;
mod casefold;
mod changed_blocks;
mod corrupt;
mod entries;
mod format;
mod io_manager;
mod libext2fs;
mod listing;
mod raw;
pub mod reader;
mod used;
mod xattrs;

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use zeroize::Zeroizing;

use super::{Found, ImageError, ImageFacts};
use crate::io::read_at::ReadAt;
use crate::plan::{Existing, ImagePath, Plan, PlanKind};
use format::feature;
use reader::{FsReader, Superblock};

pub(crate) use backend::{Ext4Backend, Ext4Reader, Outlet, PatchOutlet};
pub(crate) use changed_blocks::ChangedBlocks;
pub use corrupt::{CorruptKind, NotExt4Kind};
pub(crate) use io_manager::Device;
pub(crate) use libext2fs::ensure_loaded;
pub use libext2fs::use_library;
pub(crate) use used::{used_blocks, UsedBlocks};

#[derive(Debug, Error)]
pub enum Ext4Error {
    #[error("not an ext2/3/4 filesystem: {why}")]
    NotExt4 { why: NotExt4Kind },
    #[error("the ext2/3/4 filesystem is damaged: {why}. Check it with e2fsck -f")]
    Corrupt { why: CorruptKind },
    /// Not damage: a tree deeper than `ls -R` walks.
    #[error("directories below {path} nest more than {levels} levels deep, further than `imprint ls -R` goes; list a directory deeper down")]
    TooDeep { path: String, levels: usize },
    #[error("the image is truncated: its superblock describes {expected} bytes but there are only {actual}")]
    Truncated { expected: u64, actual: u64 },
    #[error("the filesystem's journal needs recovery (it was not cleanly unmounted). Replay it on a copy with `e2fsck -fy`, or rebuild the image, then try again")]
    NeedsRecovery,
    #[error("the filesystem is marked as having errors. Repair it with `e2fsck -f` (or rebuild the image), then try again")]
    HasErrors,
    #[error("the filesystem has orphan inodes waiting to be cleaned up (deleted or truncated while open when it was last used, as an image cloned from a running device has; {list}), which e2fsck would flag in the output. Clean them up on a copy with `e2fsck -fy COPY` (for a sparse image convert it with simg2img first), then stamp the copy")]
    OrphansPresent { list: String },
    #[error("the filesystem keeps its journal on another device (made with `mke2fs -J device=...`), which neither imprint nor e2fsck can see in this image, so the output could not be checked (`e2fsck -fn` and `imprint verify` stop at the missing journal). Drop the journal on a copy with `tune2fs -f -O ^has_journal COPY` (for a sparse image convert it with simg2img first), stamp the copy, and give the output a journal again if it needs one (`tune2fs -j OUTPUT` for an internal one)")]
    ExternalJournal,
    #[error("the filesystem tracks disk usage in quota files (the quota feature), which imprint does not update, so e2fsck would flag the result. Turn quota off on a copy (`tune2fs -O ^quota COPY`; for a sparse image convert it with simg2img first), stamp the copy, then turn it back on in the output (`tune2fs -O quota -Q usrquota,grpquota OUTPUT`, adding prjquota if it had project quota): tune2fs counts the usage afresh")]
    Quota,
    #[error(
        "the filesystem uses unsupported feature flags ({features}); imprint will not write to it"
    )]
    Unsupported { features: String },
    #[error("no free inode left in the filesystem while trying to {doing}. Build the image with more inodes (mke2fs -N) or free some")]
    NoFreeInode { doing: String },
    #[error("no free block left in the filesystem while trying to {doing}. Build a larger image or free some space")]
    NoFreeBlock { doing: String },
    #[error("{path} is {what} to libext2fs, but imprint's own reader saw something writable there; the filesystem is inconsistent. Check it with e2fsck -f")]
    Unexpected { path: String, what: String },
    #[error("{path} is a directory holding {count} entries; imprint removes a directory only when it is empty, or with `recursive = true` in its overlay entry")]
    NotEmpty { path: String, count: usize },
    #[error("cannot make {path} a symlink: its target is {len} bytes, and an ext2/3/4 symlink target must be 1 to {} bytes on this filesystem (block size {block_size})", block_size - 1)]
    SymlinkTarget {
        path: String,
        len: usize,
        block_size: u64,
    },
    #[error("cannot set {name} on {path}: the filesystem has no room for extended attributes (the ext_attr feature is off). Enable it on a copy with `tune2fs -O ext_attr`, or drop the xattrs from the overlay")]
    NoXattrs { path: String, name: String },
    #[error("cannot set {name} on {path}: no room left for its extended attributes (in the inode or one attribute block). Use shorter values or fewer attributes")]
    XattrNoSpace { path: String, name: String },
    #[error(transparent)]
    Plan(#[from] crate::plan::OverlayError),
    #[error("libext2fs failed to {doing}: {message}")]
    Library { doing: String, message: String },
    #[error("cannot load libext2fs.so.2, which imprint uses to write ext2/3/4 images ({why}). Install e2fsprogs (Debian/Ubuntu: apt-get install e2fsprogs libext2fs2)")]
    LibraryMissing { why: String },
    #[error("libext2fs is too old: it lacks {symbol} (e2fsprogs >= 1.43 needed)")]
    LibraryTooOld { symbol: &'static str },
    #[error("libext2fs could not read or write the input image")]
    Device(#[source] io::Error),
    #[error("cannot stamp the write time into the image's superblock")]
    WriteTime(#[source] io::Error),
    #[error("cannot edit {path} in place")]
    EditInPlace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An ext2/3/4 filesystem image inspected through imprint's own reader
/// (a raw image, or a sparse image through its chunk index): the facts
/// planning needs, lookups for `verify`, and the checks before writing.
pub struct Ext4Inspector<R> {
    fs: FsReader<R>,
}

impl<R: ReadAt> Ext4Inspector<R> {
    /// Reads and sanity-checks the superblock. `available` is how many
    /// bytes the image really has.
    pub fn open(dev: R, available: u64) -> Result<Self, Ext4Error> {
        let fs = FsReader::open(dev)?;
        if fs.sb.image_bytes() > available {
            return Err(Ext4Error::Truncated {
                expected: fs.sb.image_bytes(),
                actual: available,
            });
        }
        Ok(Ext4Inspector { fs })
    }

    pub fn superblock(&self) -> &Superblock {
        &self.fs.sb
    }

    /// The device the filesystem is read from.
    pub(crate) fn device(&self) -> &R {
        self.fs.device()
    }

    /// Refuses filesystems that must not be written as they are.
    pub(crate) fn check_writable(&self) -> Result<(), Ext4Error> {
        let sb = &self.fs.sb;
        if sb.incompat & feature::INCOMPAT_RECOVER != 0 {
            return Err(Ext4Error::NeedsRecovery);
        }
        if sb.has_errors() {
            return Err(Ext4Error::HasErrors);
        }
        // The kernel's list (s_last_orphan) and the orphan_file feature's
        // flag: imprint keeps neither consistent with what it frees.
        if sb.last_orphan != 0 {
            return Err(Ext4Error::OrphansPresent {
                list: format!("the superblock's list starts at inode {}", sb.last_orphan),
            });
        }
        if sb.ro_compat & feature::RO_COMPAT_ORPHAN_PRESENT != 0 {
            return Err(Ext4Error::OrphansPresent {
                list: "listed in the orphan file".into(),
            });
        }
        if sb.compat & feature::COMPAT_HAS_JOURNAL != 0 && sb.journal_inum == 0 {
            return Err(Ext4Error::ExternalJournal);
        }
        // e2fsck checks the quota files' usage against the inodes; imprint
        // does not rewrite the quota tree, so it refuses rather than write
        // an image e2fsck flags.
        if sb.ro_compat & feature::RO_COMPAT_QUOTA != 0 {
            return Err(Ext4Error::Quota);
        }
        let bad_incompat = sb.incompat & !feature::INCOMPAT_WRITABLE;
        let bad_ro = sb.ro_compat & !feature::RO_COMPAT_WRITABLE;
        if bad_incompat != 0 || bad_ro != 0 {
            return Err(Ext4Error::Unsupported {
                features: format!("incompat 0x{bad_incompat:x}, ro_compat 0x{bad_ro:x}"),
            });
        }
        Ok(())
    }

    pub(crate) fn lookup(
        &self,
        path: &ImagePath,
        max_content: u64,
    ) -> Result<Option<Found>, Ext4Error> {
        let Some((_, inode)) = self.fs.resolve(path.components())? else {
            return Ok(None);
        };
        let meta = self.fs.meta(&inode)?;
        let content = if meta.kind == super::EntryType::Regular && meta.size <= max_content {
            Some(self.fs.read_content(&inode, max_content)?)
        } else {
            None
        };
        Ok(Some((meta, content)))
    }

    fn existing(&self, path: &ImagePath) -> Result<Option<Existing>, Ext4Error> {
        Ok(self
            .fs
            .resolve(path.components())?
            .map(|(_, inode)| Existing::new(inode.kind(), u32::from(inode.links), "in the image")))
    }

    /// /etc/passwd, /etc/group and the mtime of /etc.
    pub(crate) fn facts(&self) -> Result<ImageFacts, Ext4Error> {
        const MAX_DB: u64 = 16 << 20;
        // Symlinks are followed inside the image, as a chroot would
        // (/etc/passwd -> ../usr/lib/passwd on some distributions).
        // The data, or what is there instead (said in the owner error).
        type Read = (Option<Vec<u8>>, Option<String>);
        let read = |p: &str| -> Result<Read, Ext4Error> {
            let path = ImagePath::parse(p).expect("constant path");
            match self.fs.resolve_following(path.components())? {
                Some((_, inode))
                    if inode.kind() == super::EntryType::Regular && inode.size <= MAX_DB =>
                {
                    return Ok((Some(self.fs.read_content(&inode, MAX_DB)?), None));
                }
                Some((_, inode)) if inode.kind() == super::EntryType::Regular => {
                    return Ok((
                        None,
                        Some(format!(
                            "{p} is {} bytes, larger than imprint reads",
                            inode.size
                        )),
                    ));
                }
                Some((_, inode)) => {
                    let what = Existing::new(inode.kind(), u32::from(inode.links), "");
                    return Ok((None, Some(format!("{p} leads to {}", what.what.trim_end()))));
                }
                None => {}
            }
            // Not there, or a symlink that leads nowhere: say which.
            let found = match self.fs.resolve(path.components())? {
                Some((_, inode)) if inode.kind() == super::EntryType::Symlink => {
                    let target = self.fs.meta(&inode)?.target.unwrap_or_default();
                    Some(format!(
                        "{p} is a symlink to {target:?}, which leads to no file inside the image (a dangling link or a loop)"
                    ))
                }
                _ => None,
            };
            Ok((None, found))
        };
        let etc = self.fs.resolve_following(&["etc".to_string()])?;
        let (passwd, passwd_found) = read("/etc/passwd")?;
        let (group, group_found) = read("/etc/group")?;
        Ok(ImageFacts {
            passwd,
            group,
            reference_mtime: etc.map(|(_, i)| i.mtime).unwrap_or(0),
            passwd_found,
            group_found,
        })
    }

    /// The target of the symlink at `path` (its parents resolved), if a
    /// symlink is there.
    fn symlink_at(&self, path: &ImagePath) -> Result<Option<String>, Ext4Error> {
        match self.fs.resolve(path.components())? {
            Some((_, inode)) if inode.kind() == super::EntryType::Symlink => {
                Ok(self.fs.meta(&inode)?.target)
            }
            _ => Ok(None),
        }
    }

    /// Everything that can be checked before a byte is written; gives the
    /// plan with its paths resolved through the image's symlinks (see
    /// [`Plan::follow_links`]), the one to write.
    pub(crate) fn preflight(&self, plan: &Plan) -> Result<Plan, ImageError> {
        self.check_writable()?;
        let existing = |p: &ImagePath| self.existing(p).map_err(ImageError::from);
        let plan = plan
            .follow_links(|p| self.symlink_at(p).map_err(ImageError::from))?
            .check(existing)?;
        plan.check_existing(existing)?;
        Ok(plan)
    }
}

/// Writes `plan` into the filesystem on `device` (reads from the image,
/// writes kept aside; see [`ChangedBlocks`]).
pub(crate) fn write_plan_to_device(
    device: &mut dyn Device,
    sb: &Superblock,
    plan: &Plan,
) -> Result<(), Ext4Error> {
    libext2fs::apply_to_device(device, sb, plan)?;
    let mut sb = vec![0u8; Superblock::SIZE];
    device
        .read_at(Superblock::OFFSET, &mut sb)
        .map_err(Ext4Error::WriteTime)?;
    stamp_write_time(&mut sb, plan.mtime);
    device
        .write_at(Superblock::OFFSET, &sb)
        .map_err(Ext4Error::WriteTime)?;
    check_written(device, plan)
}

/// A [`Device`] as imprint's own reader reads it.
struct DeviceReader<'a>(&'a dyn Device);

impl ReadAt for DeviceReader<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
}

/// Reads every file of `plan` back from `device` through imprint's own
/// reader. libext2fs trusts the allocation bitmaps: on a damaged image (a
/// block bitmap that calls metadata free) it places the new file over the
/// filesystem's own structures, and that must end as an error, not as an
/// image.
fn check_written(device: &dyn Device, plan: &Plan) -> Result<(), Ext4Error> {
    let fs = FsReader::open(DeviceReader(device))?;
    for entry in &plan.entries {
        let found = fs.resolve(entry.path.components())?;
        let same = match (&entry.kind, &found) {
            (PlanKind::Absent { .. }, found) => found.is_none(),
            (PlanKind::Symlink(target), Some((_, inode))) => {
                fs.meta(inode)?.target.as_deref() == Some(target.as_str())
            }
            (PlanKind::Symlink(_), None) => false,
            _ => true,
        };
        if !same {
            return Err(Ext4Error::Corrupt {
                why: CorruptKind::ReadBack(entry.path.to_string()),
            });
        }
        let Some(want) = entry.content() else {
            continue;
        };
        let same = match found {
            Some((_, inode))
                if inode.kind() == super::EntryType::Regular && inode.size == want.len() as u64 =>
            {
                let back = Zeroizing::new(fs.read_content(&inode, inode.size)?);
                back.as_slice() == want
            }
            _ => false,
        };
        if !same {
            return Err(Ext4Error::Corrupt {
                why: CorruptKind::ReadBack(entry.path.to_string()),
            });
        }
    }
    Ok(())
}

/// Sets the primary superblock's last-write time (libext2fs stamps the
/// wall clock there on close) and refreshes its checksum.
fn stamp_write_time(sb: &mut [u8], time: i64) {
    let t = time.max(0);
    sb[0x30..0x34].copy_from_slice(&(t as u32).to_le_bytes());
    sb[0x274] = (t >> 32) as u8;
    let ro_compat = u32::from_le_bytes(sb[0x64..0x68].try_into().expect("4 bytes"));
    if ro_compat & feature::RO_COMPAT_METADATA_CSUM != 0 {
        let sum = crc32c_raw(!0, &sb[..0x3FC]);
        sb[0x3FC..].copy_from_slice(&sum.to_le_bytes());
    }
}

/// CRC-32C as ext4 uses it: seeded, without the final inversion.
fn crc32c_raw(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_shows_a_directory_as_mke2fs_made_it() {
        // A real image, as mke2fs -d makes it from a tree.
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("etc/sub")).unwrap();
        std::fs::write(tree.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("passwd", tree.join("etc/link")).unwrap();
        let img = dir.path().join("i.img");
        crate::require::require_tool("mke2fs");
        for opts in [&["-t", "ext4"][..], &["-t", "ext4", "-O", "inline_data"]] {
            let ok = std::process::Command::new("mke2fs")
                .args(["-F", "-q"])
                .args(opts)
                .arg("-d")
                .arg(&tree)
                .arg(&img)
                .arg("8M")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "mke2fs {opts:?} failed");
            let bytes = std::fs::read(&img).unwrap();
            let fs = Ext4Inspector::open(bytes.clone(), bytes.len() as u64).unwrap();
            let path = |p: &str| ImagePath::parse(p).unwrap();
            let etc = fs.list(Some(&path("/etc")), false).unwrap().unwrap();
            let names: Vec<&str> = etc.iter().map(|l| l.path.as_str()).collect();
            assert_eq!(names, ["etc/link", "etc/passwd", "etc/sub"], "{opts:?}");
            assert_eq!(etc[0].meta.target.as_deref(), Some("passwd"));
            assert_eq!(etc[2].meta.kind, super::super::EntryType::Dir);
            let root = fs.list(None, false).unwrap().unwrap();
            assert!(root.iter().any(|l| l.path == "etc"), "{root:?}");
            // A file lists as itself, as `ls -l FILE` does.
            let file = fs.list(Some(&path("/etc/passwd")), false).unwrap().unwrap();
            assert_eq!(file.len(), 1);
        }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" is 0xE3069283 with the
        // usual final inversion.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }
}
