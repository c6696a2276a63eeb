//! A small read-only ext2/3/4 reader: superblock, inodes, extents, block
//! maps, inline data and directory lookup.
//!
//! It exists so that planning and `verify` read images through code that
//! shares nothing with the writer (libext2fs): a bug in one is caught by the
//! other. It reads only what imprint needs (a few files by path), and it
//! handles the features ext4-view refuses (inline_data, large_dir, meta_bg).
//! Directory lookup scans every block of a directory: htree internal nodes
//! look like empty entries to a linear scan, so indexed directories need no
//! special case.

use super::casefold;
use super::format::{
    feature, kind_of_mode, CASEFOLD_FL, EXTENTS_FL, EXTENT_MAGIC, INLINE_DATA_FL, ROOT_INO,
    STATE_ERRORS,
};
use super::{CorruptKind, Ext4Error, NotExt4Kind};
use crate::image::{EntryType, FileMeta};
use crate::io::read_at::ReadAt;

/// The superblock fields imprint looks at.
#[derive(Debug, Clone)]
pub struct Superblock {
    pub(crate) block_size: u64,
    pub(crate) blocks_count: u64,
    pub(crate) first_data_block: u64,
    pub(crate) blocks_per_group: u64,
    pub(crate) inodes_per_group: u64,
    pub(crate) inodes_count: u64,
    pub(crate) inode_size: u64,
    pub(crate) desc_size: u64,
    pub(crate) first_meta_bg: u64,
    pub(crate) compat: u32,
    pub(crate) incompat: u32,
    pub(crate) ro_compat: u32,
    pub(crate) state: u16,
    pub(crate) backup_bgs: [u32; 2],
    /// `s_encoding`: the name encoding of case-folded directories
    /// (1 = UTF-8 12.1).
    pub(crate) encoding: u16,
    /// Bytes per allocation cluster (the block size unless bigalloc).
    pub(crate) cluster_size: u64,
    /// `s_last_orphan`: the head of the orphan list the kernel leaves for
    /// the next mount (or e2fsck) to finish, 0 when there is none.
    pub(crate) last_orphan: u32,
    /// `s_journal_inum`: the journal's inode; 0 with has_journal set
    /// means the journal lives on another device (`mke2fs -J device=`).
    pub(crate) journal_inum: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn corrupt(why: CorruptKind) -> Ext4Error {
    Ext4Error::Corrupt { why }
}

impl Superblock {
    pub(crate) const OFFSET: u64 = 1024;
    pub(crate) const SIZE: usize = 1024;

    pub(crate) fn read(dev: &dyn ReadAt) -> Result<Superblock, Ext4Error> {
        let mut raw = vec![0u8; Self::SIZE];
        dev.read_at(Self::OFFSET, &mut raw)
            .map_err(|e| Ext4Error::NotExt4 {
                why: NotExt4Kind::Unreadable(e.to_string()),
            })?;
        Self::parse(&raw)
    }

    pub(crate) fn parse(raw: &[u8]) -> Result<Superblock, Ext4Error> {
        if le16(raw, 0x38) != 0xEF53 {
            return Err(Ext4Error::NotExt4 {
                why: NotExt4Kind::NoMagic,
            });
        }
        let log_block = le32(raw, 0x18);
        if log_block > 6 {
            return Err(corrupt(CorruptKind::BlockSize(log_block)));
        }
        let incompat = le32(raw, 0x60);
        let rev = le32(raw, 0x4C);
        let inode_size = if rev == 0 {
            128
        } else {
            le16(raw, 0x58) as u64
        };
        let is_64 = incompat & feature::INCOMPAT_64BIT != 0;
        let desc_size = if is_64 { le16(raw, 0xFE) as u64 } else { 32 };
        let mut blocks_count = le32(raw, 0x4) as u64;
        if is_64 {
            blocks_count |= (le32(raw, 0x150) as u64) << 32;
        }
        let sb = Superblock {
            block_size: 1024 << log_block,
            blocks_count,
            first_data_block: le32(raw, 0x14) as u64,
            blocks_per_group: le32(raw, 0x20) as u64,
            inodes_per_group: le32(raw, 0x28) as u64,
            inodes_count: le32(raw, 0x0) as u64,
            inode_size,
            desc_size,
            first_meta_bg: le32(raw, 0x104) as u64,
            compat: le32(raw, 0x5C),
            incompat,
            ro_compat: le32(raw, 0x64),
            state: le16(raw, 0x3A),
            backup_bgs: [le32(raw, 0x24C), le32(raw, 0x250)],
            encoding: le16(raw, 0x27C),
            cluster_size: if le32(raw, 0x64) & feature::RO_COMPAT_BIGALLOC != 0 {
                1024u64 << le32(raw, 0x1C).min(30)
            } else {
                1024 << log_block
            },
            last_orphan: le32(raw, 0xE8),
            journal_inum: le32(raw, 0xE0),
        };
        if sb.blocks_per_group == 0
            || sb.inodes_per_group == 0
            || sb.inode_size < 128
            || !sb.inode_size.is_power_of_two()
            || sb.inode_size > sb.block_size
            || sb.desc_size < 32
            || !sb.desc_size.is_power_of_two()
            || sb.desc_size > sb.block_size
            || sb.first_data_block >= sb.blocks_count
            || sb.blocks_count.checked_mul(sb.block_size).is_none()
        {
            return Err(corrupt(CorruptKind::Geometry));
        }
        Ok(sb)
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.state & STATE_ERRORS != 0
    }

    pub(crate) fn image_bytes(&self) -> u64 {
        self.blocks_count * self.block_size
    }

    pub(crate) fn group_count(&self) -> u64 {
        (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    pub(crate) fn group_has_super(&self, group: u64) -> bool {
        if group == 0 {
            return true;
        }
        if self.compat & feature::COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.contains(&(group as u32));
        }
        if self.ro_compat & feature::RO_COMPAT_SPARSE_SUPER == 0 || group == 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut n = base;
            while n < group {
                match n.checked_mul(base) {
                    Some(next) => n = next,
                    None => return false,
                }
            }
            n == group
        })
    }

    /// The block holding a group's superblock (copy), given the group's
    /// first block: with 1 KiB blocks and bigalloc the first data block is
    /// 0, yet the superblock is still at byte 1024, block 1 (as libext2fs's
    /// `ext2fs_descriptor_block_loc2` has it).
    fn past_superblock(&self, group_block: u64) -> u64 {
        if group_block == 0 && self.block_size == 1024 {
            1
        } else {
            group_block
        }
    }

    /// Where the descriptor of `group` lives, in bytes.
    pub(crate) fn descriptor_offset(&self, group: u64) -> u64 {
        let per_block = self.block_size / self.desc_size;
        let meta_group = group / per_block;
        let block =
            if self.incompat & feature::INCOMPAT_META_BG != 0 && meta_group >= self.first_meta_bg {
                // meta_bg: each meta group's descriptors sit in its first group,
                // right after that group's superblock backup, if any.
                let first = meta_group * per_block;
                self.past_superblock(self.first_data_block + first * self.blocks_per_group)
                    + u64::from(self.group_has_super(first))
            } else {
                self.past_superblock(self.first_data_block) + 1 + meta_group
            };
        block * self.block_size + (group % per_block) * self.desc_size
    }
}

/// An inode's fields that imprint reads.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    pub(crate) raw: Vec<u8>,
    pub(crate) mode: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) flags: u32,
    pub(crate) links: u16,
}

impl Inode {
    pub(crate) fn kind(&self) -> EntryType {
        kind_of_mode(self.mode)
    }

    fn block_area(&self) -> &[u8] {
        &self.raw[40..100]
    }

    /// The value of the in-inode extended attribute `system.data`, which
    /// holds inline data beyond the first 60 bytes.
    fn inline_tail(&self) -> Vec<u8> {
        let extra = if self.raw.len() > 130 {
            le16(&self.raw, 128) as usize
        } else {
            return Vec::new();
        };
        let start = 128 + extra;
        if start + 4 > self.raw.len() || le32(&self.raw, start) != 0xEA02_0000 {
            return Vec::new();
        }
        let entries = start + 4;
        let mut at = entries;
        while at + 16 <= self.raw.len() && le32(&self.raw, at) != 0 {
            let name_len = self.raw[at] as usize;
            let index = self.raw[at + 1];
            let value_offs = le16(&self.raw, at + 2) as usize;
            let value_size = le32(&self.raw, at + 8) as usize;
            let name_end = at + 16 + name_len;
            if name_end > self.raw.len() {
                break;
            }
            if index == 7 && &self.raw[at + 16..name_end] == b"data" {
                let v = entries + value_offs;
                return self
                    .raw
                    .get(v..v + value_size)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
            }
            at = (name_end + 3) & !3;
        }
        Vec::new()
    }
}

/// Decodes an ext4 timestamp: 32 signed bits plus two epoch bits from the
/// `_extra` field, when the inode is large enough to have one.
fn timestamp(raw: &[u8], lo_at: usize, extra_at: usize) -> i64 {
    let lo = le32(raw, lo_at) as i32 as i64;
    let extra_isize = if raw.len() > 130 {
        le16(raw, 128) as usize
    } else {
        0
    };
    if extra_at + 4 <= 128 + extra_isize && extra_at + 4 <= raw.len() {
        lo + (((le32(raw, extra_at) & 3) as i64) << 32)
    } else {
        lo
    }
}

/// imprint's own read-only view of an ext2/3/4 filesystem on a device:
/// inodes, file content and path lookup, read straight from the on-disk
/// structures.
pub(crate) struct FsReader<R> {
    dev: R,
    pub(crate) sb: Superblock,
}

impl<R: ReadAt> FsReader<R> {
    pub(crate) fn open(dev: R) -> Result<Self, Ext4Error> {
        let sb = Superblock::read(&dev)?;
        Ok(FsReader { dev, sb })
    }

    pub(crate) fn device(&self) -> &R {
        &self.dev
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Ext4Error> {
        let mut buf = vec![0u8; len];
        self.dev.read_at(offset, &mut buf).map_err(|e| {
            corrupt(CorruptKind::Unreadable {
                len,
                offset,
                cause: e.to_string(),
            })
        })?;
        Ok(buf)
    }

    pub(crate) fn read_block(&self, block: u64) -> Result<Vec<u8>, Ext4Error> {
        if block >= self.sb.blocks_count {
            return Err(corrupt(CorruptKind::BlockOutside(block)));
        }
        self.read(block * self.sb.block_size, self.sb.block_size as usize)
    }

    pub(crate) fn inode(&self, ino: u32) -> Result<Inode, Ext4Error> {
        let sb = &self.sb;
        if ino == 0 || u64::from(ino) > sb.inodes_count {
            return Err(corrupt(CorruptKind::InodeNumber(ino)));
        }
        let index = u64::from(ino - 1);
        let group = index / sb.inodes_per_group;
        if group >= sb.group_count() {
            return Err(corrupt(CorruptKind::InodeGroup(ino)));
        }
        let desc = self.read(sb.descriptor_offset(group), sb.desc_size as usize)?;
        let mut table = le32(&desc, 8) as u64;
        if sb.desc_size >= 64 {
            table |= (le32(&desc, 0x28) as u64) << 32;
        }
        if table >= sb.blocks_count {
            return Err(corrupt(CorruptKind::InodeTable(group)));
        }
        let offset = table * sb.block_size + (index % sb.inodes_per_group) * sb.inode_size;
        let raw = self.read(offset, sb.inode_size as usize)?;
        Ok(Inode {
            mode: le16(&raw, 0),
            uid: u32::from(le16(&raw, 2)) | u32::from(le16(&raw, 120)) << 16,
            gid: u32::from(le16(&raw, 24)) | u32::from(le16(&raw, 122)) << 16,
            size: u64::from(le32(&raw, 4)) | u64::from(le32(&raw, 108)) << 32,
            mtime: timestamp(&raw, 16, 136),
            flags: le32(&raw, 32),
            links: le16(&raw, 26),
            raw,
        })
    }

    /// The physical block holding logical block `logical`, or None for a
    /// hole or an unwritten extent (both read as zeros).
    pub(crate) fn map_block(&self, inode: &Inode, logical: u64) -> Result<Option<u64>, Ext4Error> {
        if inode.flags & EXTENTS_FL != 0 {
            self.map_extent(inode.block_area().to_vec(), logical, 0)
        } else {
            self.map_indirect(inode, logical)
        }
    }

    fn map_extent(
        &self,
        node: Vec<u8>,
        logical: u64,
        depth_seen: u32,
    ) -> Result<Option<u64>, Ext4Error> {
        if le16(&node, 0) != EXTENT_MAGIC || depth_seen > 5 {
            return Err(corrupt(CorruptKind::ExtentNode));
        }
        let entries = le16(&node, 2) as usize;
        let depth = le16(&node, 6);
        if 12 + entries * 12 > node.len() {
            return Err(corrupt(CorruptKind::ExtentEntries));
        }
        let entry = |i: usize| &node[12 + i * 12..24 + i * 12];
        if depth == 0 {
            for i in 0..entries {
                let e = entry(i);
                let first = le32(e, 0) as u64;
                let raw_len = le16(e, 4) as u64;
                let (len, unwritten) = if raw_len > 32768 {
                    (raw_len - 32768, true)
                } else {
                    (raw_len, false)
                };
                if logical >= first && logical < first + len {
                    if unwritten {
                        return Ok(None);
                    }
                    let start = (le16(e, 6) as u64) << 32 | le32(e, 8) as u64;
                    return Ok(Some(start + logical - first));
                }
            }
            return Ok(None);
        }
        // Index node: the last entry whose first block is <= logical.
        let mut child = None;
        for i in 0..entries {
            let e = entry(i);
            if le32(e, 0) as u64 <= logical {
                child = Some((le16(e, 8) as u64) << 32 | le32(e, 4) as u64);
            }
        }
        match child {
            Some(block) => self.map_extent(self.read_block(block)?, logical, depth_seen + 1),
            None => Ok(None),
        }
    }

    fn map_indirect(&self, inode: &Inode, logical: u64) -> Result<Option<u64>, Ext4Error> {
        let per = self.sb.block_size / 4;
        let slot = |i: usize| le32(inode.block_area(), i * 4) as u64;
        let (mut block, mut rest, levels) = if logical < 12 {
            (slot(logical as usize), 0, 0)
        } else if logical < 12 + per {
            (slot(12), logical - 12, 1)
        } else if logical < 12 + per + per * per {
            (slot(13), logical - 12 - per, 2)
        } else {
            (slot(14), logical - 12 - per - per * per, 3)
        };
        for level in (0..levels).rev() {
            if block == 0 {
                return Ok(None);
            }
            let span = per.pow(level);
            let table = self.read_block(block)?;
            block = le32(&table, ((rest / span) * 4) as usize) as u64;
            rest %= span;
        }
        Ok((block != 0).then_some(block))
    }

    /// Reads up to `limit` bytes of a file's (or directory's) content.
    pub(crate) fn read_content(&self, inode: &Inode, limit: u64) -> Result<Vec<u8>, Ext4Error> {
        let len = inode.size.min(limit) as usize;
        if inode.flags & INLINE_DATA_FL != 0 {
            let mut data = inode.block_area().to_vec();
            data.extend(inode.inline_tail());
            data.resize(len.max(data.len()), 0);
            data.truncate(len);
            return Ok(data);
        }
        // Fast symlinks keep their target in the block area.
        if inode.kind() == EntryType::Symlink && inode.size < 60 && inode.flags & EXTENTS_FL == 0 {
            let mut data = inode.block_area().to_vec();
            data.truncate(len);
            return Ok(data);
        }
        let bs = self.sb.block_size;
        let mut data = Vec::with_capacity(len);
        let mut logical = 0;
        while data.len() < len {
            let want = (len - data.len()).min(bs as usize);
            match self.map_block(inode, logical)? {
                Some(block) => data.extend_from_slice(&self.read_block(block)?[..want]),
                None => data.resize(data.len() + want, 0),
            }
            logical += 1;
        }
        Ok(data)
    }

    /// Finds `name` in directory `dir`.
    pub(crate) fn find_in_dir(&self, dir: &Inode, name: &str) -> Result<Option<u32>, Ext4Error> {
        let name = &*crate::plan::name::to_bytes(name);
        let folds =
            self.sb.incompat & feature::INCOMPAT_CASEFOLD != 0 && dir.flags & CASEFOLD_FL != 0;
        Ok(self
            .dir_entries(dir)?
            .into_iter()
            .find(|(stored, _)| {
                if folds {
                    casefold::matches(stored, name)
                } else {
                    stored == name
                }
            })
            .map(|(_, ino)| ino))
    }

    /// Every name in directory `dir` with its inode number, in on-disk
    /// order (`.` and `..` included where stored).
    pub(crate) fn dir_entries(&self, dir: &Inode) -> Result<Vec<(Vec<u8>, u32)>, Ext4Error> {
        // A directory's size comes from the image; a damaged one must not
        // make us allocate gigabytes. Real /etc directories are kilobytes.
        const MAX_DIR: u64 = 64 << 20;
        if dir.size > MAX_DIR {
            return Err(corrupt(CorruptKind::DirectorySize(dir.size)));
        }
        let content = self.read_content(dir, MAX_DIR)?;
        let filetype = self.sb.incompat & feature::INCOMPAT_FILETYPE != 0;
        let mut out = Vec::new();
        if dir.flags & INLINE_DATA_FL != 0 {
            // Inline directories start with the parent's inode number, then
            // entries; more entries may follow in the system.data attribute.
            let head = &content[4.min(content.len())..60.min(content.len())];
            let tail = content.get(60..).unwrap_or_default();
            scan_entries(head, filetype, &mut out);
            scan_entries(tail, filetype, &mut out);
        } else {
            for block in content.chunks(self.sb.block_size as usize) {
                scan_entries(block, filetype, &mut out);
            }
        }
        Ok(out)
    }

    /// Everything `verify` and `ls` show of an inode: type, mode, owner,
    /// times, size, link count, a symlink's target and the names of its
    /// extended attributes.
    pub(crate) fn meta(&self, inode: &Inode) -> Result<FileMeta, Ext4Error> {
        let target = if inode.kind() == EntryType::Symlink {
            let bytes = self.read_content(inode, MAX_TARGET)?;
            Some(crate::plan::name::from_bytes(&bytes).into_owned())
        } else {
            None
        };
        Ok(FileMeta {
            kind: inode.kind(),
            mode: u32::from(inode.mode & 0o7777),
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            size: inode.size,
            links: u32::from(inode.links),
            target,
            xattrs: self.xattr_names(inode)?,
            names: None,
            special: super::format::special_of_mode(inode.mode),
        })
    }

    /// Names of the extended attributes in the inode body and in its
    /// attribute block, sorted; inline data (`system.data`) is content and
    /// not listed.
    pub(crate) fn xattr_names(&self, inode: &Inode) -> Result<Vec<String>, Ext4Error> {
        let mut names = Vec::new();
        let raw = &inode.raw;
        if raw.len() > 130 {
            let start = 128 + le16(raw, 128) as usize;
            if start + 4 <= raw.len() && le32(raw, start) == XATTR_MAGIC {
                names.extend(xattr_entries(&raw[start + 4..]));
            }
        }
        let block = u64::from(le32(raw, 104)) | u64::from(le16(raw, 118)) << 32;
        if block != 0 {
            let data = self.read_block(block)?;
            if le32(&data, 0) != XATTR_MAGIC {
                return Err(corrupt(CorruptKind::XattrMagic(block)));
            }
            names.extend(xattr_entries(&data[32..]));
        }
        names.retain(|n| n != "system.data");
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Resolves an absolute path as a process chrooted into the image
    /// would: symlinks are followed (absolute targets from the image's
    /// root, `..` stopping at the root), at most 40 of them, so a path can
    /// never leave the image or loop forever.
    pub(crate) fn resolve_following(
        &self,
        components: &[String],
    ) -> Result<Option<(u32, Inode)>, Ext4Error> {
        const MAX_LINKS: usize = 40;
        let mut pending: std::collections::VecDeque<String> = components.iter().cloned().collect();
        // The directories walked so far, root first, for `..`.
        let mut walked: Vec<(u32, Inode)> = vec![(ROOT_INO, self.inode(ROOT_INO)?)];
        let mut followed = 0;
        while let Some(name) = pending.pop_front() {
            let (_, dir) = walked.last().expect("the root stays");
            match name.as_str() {
                "" | "." => continue,
                ".." => {
                    if walked.len() > 1 {
                        walked.pop();
                    }
                    continue;
                }
                _ => {}
            }
            if dir.kind() != EntryType::Dir {
                return Ok(None);
            }
            let Some(ino) = self.find_in_dir(dir, &name)? else {
                return Ok(None);
            };
            let inode = self.inode(ino)?;
            if inode.kind() != EntryType::Symlink {
                walked.push((ino, inode));
                continue;
            }
            followed += 1;
            if followed > MAX_LINKS {
                return Ok(None);
            }
            let target = self.read_content(&inode, MAX_TARGET)?;
            let target = crate::plan::name::from_bytes(&target).into_owned();
            if target.is_empty() {
                return Ok(None);
            }
            if target.starts_with('/') {
                walked.truncate(1);
            }
            for part in target.split('/').rev() {
                pending.push_front(part.to_string());
            }
        }
        Ok(walked.pop())
    }

    /// Resolves an absolute path given as components, without following
    /// symlinks. A symlink or non-directory in the middle yields None.
    pub(crate) fn resolve(&self, components: &[String]) -> Result<Option<(u32, Inode)>, Ext4Error> {
        let mut ino = ROOT_INO;
        let mut inode = self.inode(ino)?;
        for name in components {
            if inode.kind() != EntryType::Dir {
                return Ok(None);
            }
            match self.find_in_dir(&inode, name)? {
                Some(next) => {
                    ino = next;
                    inode = self.inode(ino)?;
                }
                None => return Ok(None),
            }
        }
        Ok(Some((ino, inode)))
    }
}

/// The magic number of in-inode attribute areas and attribute blocks.
const XATTR_MAGIC: u32 = 0xEA02_0000;

/// The longest symlink target read (the kernel's PATH_MAX).
const MAX_TARGET: u64 = 4096;

/// The full names of the attribute entries in `entries` (an in-inode area
/// after its magic, or a block after its header), up to the first empty
/// entry or the end of the area.
fn xattr_entries(entries: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    while at + 16 <= entries.len() && le32(entries, at) != 0 {
        let name_len = entries[at] as usize;
        let end = at + 16 + name_len;
        let Some(short) = entries.get(at + 16..end) else {
            break;
        };
        let prefix = match entries[at + 1] {
            1 => "user.",
            2 => "system.posix_acl_access",
            3 => "system.posix_acl_default",
            4 => "trusted.",
            6 => "security.",
            7 => "system.",
            8 => "system.richacl",
            _ => "",
        };
        names.push(format!("{prefix}{}", String::from_utf8_lossy(short)));
        at = (end + 3) & !3;
    }
    names
}

/// Appends the directory entries in `records` (one block, or one inline
/// area) to `out`. Entries with inode 0 (deleted entries, htree internal
/// nodes, checksum tails) are skipped; a damaged record ends the area.
fn scan_entries(records: &[u8], filetype: bool, out: &mut Vec<(Vec<u8>, u32)>) {
    let mut at = 0;
    while at + 8 <= records.len() {
        let ino = le32(records, at);
        let rec_len = le16(records, at + 4) as usize;
        let name_len = if filetype {
            records[at + 6] as usize
        } else {
            le16(records, at + 6) as usize
        };
        if rec_len < 8 || at + rec_len > records.len() {
            return;
        }
        if ino != 0 && 8 + name_len <= rec_len {
            out.push((records[at + 8..at + 8 + name_len].to_vec(), ino));
        }
        at += rec_len;
    }
}
