//! DOS (MBR) partition tables, as sfdisk, Buildroot's genimage and many SD
//! card images lay them out: four primary entries, and logical partitions
//! chained through extended boot records inside an extended partition.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::problem::{TablePart, TableProblem};
use super::{DiskError, Partition, Scheme};

/// The sector size a DOS table's LBAs count in, unless the disk is one
/// of 4 KiB sectors (see `disk::partitions`).
pub(super) const SECTOR: u64 = 512;
/// Logical partitions are a linked list on disk; a loop or a runaway chain
/// is cut here (Linux itself stops far earlier in practice).
const MAX_LOGICAL: u32 = 256;

/// A DOS partition table: the boot signature, no protective GPT entry, and
/// entries whose fields make sense (a FAT or ext boot sector also ends in
/// 0x55AA, so the signature alone is not enough).
pub(super) fn present(head: &[u8]) -> bool {
    if head.len() < 512 || head[510..512] != [0x55, 0xAA] {
        return false;
    }
    let mut any = false;
    for i in 0..4 {
        let e = &head[446 + i * 16..462 + i * 16];
        let (status, kind) = (e[0], e[4]);
        if status != 0 && status != 0x80 {
            return false;
        }
        if kind == 0xEE {
            return false;
        }
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if kind != 0 {
            if sectors == 0 {
                return false;
            }
            any = true;
        }
    }
    any
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: u8,
    start: u64,
    sectors: u64,
}

fn entries(sector: &[u8]) -> [Entry; 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + i * 16..462 + i * 16];
        Entry {
            kind: e[4],
            start: u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64,
            sectors: u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64,
        }
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn type_name(kind: u8) -> String {
    match kind {
        0x83 => "Linux".into(),
        0x0B | 0x0C => "W95 FAT32".into(),
        0x0E => "W95 FAT16 (LBA)".into(),
        0x06 => "FAT16".into(),
        0x82 => "Linux swap".into(),
        0xEF => "EFI system".into(),
        0xDA => "non-FS data".into(),
        other => format!("type 0x{other:02x}"),
    }
}

fn read_sector(file: &File, lba: u64, sector: u64, what: &str) -> Result<Vec<u8>, DiskError> {
    // The table is in the first 512 bytes of a sector of any size.
    let mut buf = vec![0u8; SECTOR as usize];
    file.read_exact_at(&mut buf, lba * sector)
        .map_err(|source| DiskError::Read {
            what: what.to_string(),
            source,
        })?;
    Ok(buf)
}

fn checked(
    number: u32,
    e: Entry,
    base: u64,
    disk_size: u64,
    sector: u64,
) -> Result<Partition, DiskError> {
    let start = base + e.start;
    let end = (start + e.sectors) * sector;
    if end > disk_size {
        return Err(DiskError::Corrupt {
            part: TablePart::MbrPartition(number),
            why: TableProblem::PastEnd { end, disk_size },
        });
    }
    Ok(Partition {
        number,
        name: None,
        type_name: type_name(e.kind),
        offset: start * sector,
        size: e.sectors * sector,
        scheme: Scheme::Mbr,
    })
}

/// Reads the primary and logical partitions. Numbers follow Linux: 1-4
/// for primary entries, 5 and up for logical ones in chain order; LBAs
/// count `sector`-byte sectors.
pub(super) fn partitions(
    file: &File,
    disk_size: u64,
    sector: u64,
) -> Result<Vec<Partition>, DiskError> {
    let mbr = read_sector(file, 0, sector, "the MBR")?;
    let mut found = Vec::new();
    let mut extended = None;
    for (i, e) in entries(&mbr).into_iter().enumerate() {
        if e.kind == 0 {
            continue;
        }
        if is_extended(e.kind) {
            extended = Some(e);
            continue;
        }
        found.push(checked(i as u32 + 1, e, 0, disk_size, sector)?);
    }
    if let Some(ext) = extended {
        // Each EBR holds one logical partition (relative to the EBR) and a
        // link to the next EBR (relative to the extended partition).
        let mut ebr_lba = ext.start;
        for n in 0..MAX_LOGICAL {
            let ebr = read_sector(file, ebr_lba, sector, "an extended boot record")?;
            if ebr[510..512] != [0x55, 0xAA] {
                return Err(DiskError::Corrupt {
                    part: TablePart::Ebr(ebr_lba),
                    why: TableProblem::NoBootSignature,
                });
            }
            let [logical, next, ..] = entries(&ebr);
            if logical.kind != 0 {
                found.push(checked(5 + n, logical, ebr_lba, disk_size, sector)?);
            }
            if !is_extended(next.kind) || next.start == 0 {
                return Ok(found);
            }
            ebr_lba = ext.start + next.start;
        }
        return Err(DiskError::Corrupt {
            part: TablePart::Extended,
            why: TableProblem::LogicalLoop(MAX_LOGICAL),
        });
    }
    Ok(found)
}

/// Where the partitions start, read from the disk's first bytes alone:
/// the primary entries, and the logical ones as far as their chain of
/// extended boot records lies in `head` (the extended partition's own
/// start stands in for the rest). For the codec layer, as in
/// `gpt::starts_in_head`.
pub(super) fn starts_in_head(head: &[u8]) -> Option<Vec<u64>> {
    let mbr = head.get(..SECTOR as usize)?;
    let mut starts = Vec::new();
    for e in entries(mbr).into_iter().filter(|e| e.kind != 0) {
        starts.push(e.start * SECTOR);
        if !is_extended(e.kind) {
            continue;
        }
        let mut ebr_lba = e.start;
        for _ in 0..MAX_LOGICAL {
            let at = usize::try_from(ebr_lba * SECTOR).ok()?;
            let Some(ebr) = head.get(at..at + SECTOR as usize) else {
                break;
            };
            let [logical, next, ..] = entries(ebr);
            if ebr[510..512] != [0x55, 0xAA] {
                break;
            }
            if logical.kind != 0 {
                starts.push((ebr_lba + logical.start) * SECTOR);
            }
            if !is_extended(next.kind) || next.start == 0 {
                break;
            }
            ebr_lba = e.start + next.start;
        }
    }
    starts.sort_unstable();
    Some(starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(parts: &[(u8, u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, &(status, kind, start, sectors)) in parts.iter().enumerate() {
            let e = &mut s[446 + i * 16..462 + i * 16];
            e[0] = status;
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&sectors.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn tells_tables_from_boot_sectors() {
        assert!(present(&table(&[
            (0x80, 0x0C, 2048, 4096),
            (0, 0x83, 8192, 4096)
        ])));
        // A protective MBR belongs to a GPT.
        assert!(!present(&table(&[(0, 0xEE, 1, 0xFFFF_FFFF)])));
        // No entry, or a garbage status byte: a boot sector, not a table.
        assert!(!present(&table(&[])));
        assert!(!present(&table(&[(0x12, 0x83, 1, 2)])));
    }

    #[test]
    fn partition_starts_from_the_head_alone() {
        // Boot at sector 64, an extended partition at 1024 whose first EBR
        // holds a logical partition 64 sectors in and links to a second
        // EBR 4096 sectors into the extended partition.
        let mut head = table(&[(0x80, 0x0C, 64, 512), (0, 0x05, 1024, 65536)]);
        head.resize(1 << 20, 0);
        let first = table(&[(0, 0x83, 64, 2048), (0, 0x05, 4096, 8192)]);
        head[1024 * 512..1025 * 512].copy_from_slice(&first);
        let mut want = vec![64 * 512, 1024 * 512, (1024 + 64) * 512];
        // The second EBR lies past the first MiB: only what is in `head`.
        assert_eq!(starts_in_head(&head), Some(want.clone()));
        let second = table(&[(0, 0x83, 64, 2048)]);
        head.resize(4 << 20, 0);
        let at = (1024 + 4096) * 512;
        head[at..at + 512].copy_from_slice(&second);
        want.push((1024 + 4096 + 64) * 512);
        assert_eq!(starts_in_head(&head), Some(want));
        assert_eq!(starts_in_head(&head[..100]), None);
    }
}
