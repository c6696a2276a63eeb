//! Which blocks of an ext2/3/4 filesystem hold anything: what must be
//! carried into a new encrypted container (`image::luks::build`), while
//! free blocks may stay holes. Read from the group descriptors and block
//! bitmaps; a group whose bitmap was never written (BLOCK_UNINIT) counts
//! its own metadata as libext2fs would compute it, and every group's
//! bitmaps and inode table are counted wherever flex_bg put them.
//!
//! The answer may call a free block used (it is then encrypted, which is
//! harmless) but never a used block free: a used block left out would
//! read back as garbage on the device (an inode table mke2fs marked
//! zeroed, a file's block).

use super::format::feature;
use super::reader::Superblock;
use super::{CorruptKind, Ext4Error};
use crate::io::read_at::ReadAt;

/// Group descriptor flags (ext4 disk layout, "Block Group Descriptors").
const BG_BLOCK_UNINIT: u16 = 0x2;

/// One bit per filesystem block: set where the block is in use.
pub(crate) struct UsedBlocks {
    bits: Vec<u64>,
    blocks: u64,
    block_size: u64,
}

impl UsedBlocks {
    fn new(blocks: u64, block_size: u64) -> UsedBlocks {
        UsedBlocks {
            bits: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            block_size,
        }
    }

    fn mark(&mut self, first: u64, count: u64) {
        let end = first.saturating_add(count).min(self.blocks);
        for b in first.min(end)..end {
            self.bits[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    fn all(blocks: u64, block_size: u64) -> UsedBlocks {
        let mut used = UsedBlocks::new(blocks, block_size);
        used.mark(0, blocks);
        used
    }

    /// Whether any byte of `offset..offset + len` lies in a used block.
    /// Bytes past the filesystem's end count as used (they are whatever
    /// the image holds there).
    pub(crate) fn any_in(&self, offset: u64, len: u64) -> bool {
        let first = offset / self.block_size;
        let last = (offset + len).div_ceil(self.block_size);
        if last > self.blocks {
            return true;
        }
        (first..last).any(|b| self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0)
    }

    /// How many blocks are in use.
    pub(crate) fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        b[at..at + 4].try_into().expect("4 bytes"),
    ))
}

fn corrupt(why: CorruptKind) -> Ext4Error {
    Ext4Error::Corrupt { why }
}

/// The used blocks of the filesystem on `dev`.
pub(crate) fn used_blocks(dev: &dyn ReadAt, sb: &Superblock) -> Result<UsedBlocks, Ext4Error> {
    let read = |at: u64, len: usize| -> Result<Vec<u8>, Ext4Error> {
        let mut buf = vec![0u8; len];
        dev.read_at(at, &mut buf).map_err(|e| {
            corrupt(CorruptKind::Unreadable {
                len,
                offset: at,
                cause: e.to_string(),
            })
        })?;
        Ok(buf)
    };
    let bs = sb.block_size;
    // bigalloc's bitmaps count clusters; rare on a rootfs: all blocks.
    if sb.ro_compat & feature::RO_COMPAT_BIGALLOC != 0 {
        return Ok(UsedBlocks::all(sb.blocks_count, bs));
    }
    let raw_sb = read(Superblock::OFFSET, Superblock::SIZE)?;
    let reserved_gdt = u64::from(le16(&raw_sb, 0xCE));
    let groups = sb.group_count();
    let meta_bg = sb.incompat & feature::INCOMPAT_META_BG != 0;
    let gdt_blocks = if meta_bg {
        sb.first_meta_bg
    } else {
        (groups * sb.desc_size).div_ceil(bs)
    };
    // A superblock copy, its descriptor table and the reserved room for it
    // to grow; with meta_bg, a group may also hold one descriptor block.
    let group_meta = 1 + gdt_blocks + reserved_gdt + u64::from(meta_bg);
    let csum = sb.ro_compat & (feature::RO_COMPAT_GDT_CSUM | feature::RO_COMPAT_METADATA_CSUM) != 0;
    let table_blocks = (sb.inodes_per_group * sb.inode_size).div_ceil(bs);
    let mut used = UsedBlocks::new(sb.blocks_count, bs);
    // The boot block and the primary superblock and descriptors.
    used.mark(0, sb.first_data_block + group_meta);
    for g in 0..groups {
        let desc = read(sb.descriptor_offset(g), sb.desc_size as usize)?;
        let hi = |at: usize| {
            if sb.desc_size >= 64 {
                le32(&desc, at) << 32
            } else {
                0
            }
        };
        let block_bitmap = le32(&desc, 0) | hi(0x20);
        let inode_bitmap = le32(&desc, 4) | hi(0x24);
        let inode_table = le32(&desc, 8) | hi(0x28);
        if block_bitmap >= sb.blocks_count || inode_table >= sb.blocks_count {
            return Err(corrupt(CorruptKind::GroupTables(g)));
        }
        used.mark(block_bitmap, 1);
        used.mark(inode_bitmap, 1);
        used.mark(inode_table, table_blocks);
        let start = sb.first_data_block + g * sb.blocks_per_group;
        let end = (start + sb.blocks_per_group).min(sb.blocks_count);
        let flags = if csum { le16(&desc, 0x12) } else { 0 };
        if flags & BG_BLOCK_UNINIT != 0 {
            if sb.group_has_super(g) || meta_bg {
                used.mark(start, group_meta);
            }
            continue;
        }
        let bitmap = read(block_bitmap * bs, bs as usize)?;
        for i in 0..end - start {
            if bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                used.mark(start + i, 1);
            }
        }
    }
    Ok(used)
}
