//! GUID partition tables, as `sgdisk -og` writes them (NVIDIA's
//! jetson-disk-image-creator.sh, Yocto's wic): a protective MBR, the primary
//! header at LBA 1 with its entry array, and a backup header at the last LBA.
//! Both headers and the entry array are checked by CRC32 before anything is
//! trusted; only the primary is used, the backup must agree on the entries.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::problem::{GptCopy, TablePart, TableProblem};
use super::{DiskError, Partition, Scheme};

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The smallest header the UEFI spec allows (92 bytes, revision 1.0).
const MIN_HEADER: usize = 92;
/// Entries are at least 128 bytes; more than this many is not a disk image.
const MAX_ENTRIES: u32 = 4096;

/// The header fields imprint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    current_lba: u64,
    backup_lba: u64,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// Does `file` start with a protective MBR and a GPT header at LBA 1 for
/// `sector` bytes a sector?
pub(super) fn present(head: &[u8], sector: u64) -> bool {
    let at = sector as usize;
    head.len() >= at + 8 && &head[at..at + 8] == SIGNATURE && protective_mbr(head)
}

/// A protective (or hybrid) MBR: the boot signature and an entry of type
/// 0xEE.
fn protective_mbr(head: &[u8]) -> bool {
    head.len() >= 512
        && head[510..512] == [0x55, 0xAA]
        && (0..4).any(|i| head[446 + i * 16 + 4] == 0xEE)
}

fn read(file: &File, offset: u64, len: usize, what: &str) -> Result<Vec<u8>, DiskError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|source| DiskError::Read {
            what: what.to_string(),
            source,
        })?;
    Ok(buf)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn parse_header(block: &[u8], lba: u64, which: GptCopy) -> Result<Header, DiskError> {
    let bad = |why: TableProblem| DiskError::Corrupt {
        part: TablePart::GptHeader(which),
        why,
    };
    if &block[..8] != SIGNATURE {
        return Err(bad(TableProblem::NoSignature));
    }
    let size = u32_at(block, 12) as usize;
    if size < MIN_HEADER || size > block.len() {
        return Err(bad(TableProblem::HeaderSize(size)));
    }
    let mut copy = block[..size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != u32_at(block, 16) {
        return Err(bad(TableProblem::Crc32));
    }
    let header = Header {
        current_lba: u64_at(block, 24),
        backup_lba: u64_at(block, 32),
        entries_lba: u64_at(block, 72),
        entry_count: u32_at(block, 80),
        entry_size: u32_at(block, 84),
        entries_crc: u32_at(block, 88),
    };
    if header.current_lba != lba {
        return Err(bad(TableProblem::Misplaced {
            claimed: header.current_lba,
            read_at: lba,
        }));
    }
    if header.entry_size < 128 || header.entry_size % 8 != 0 || header.entry_count > MAX_ENTRIES {
        return Err(bad(TableProblem::EntryArray {
            count: header.entry_count,
            size: header.entry_size,
        }));
    }
    Ok(header)
}

fn read_entries(
    file: &File,
    header: &Header,
    sector: u64,
    which: GptCopy,
) -> Result<Vec<u8>, DiskError> {
    let len = header.entry_count as usize * header.entry_size as usize;
    let offset = header
        .entries_lba
        .checked_mul(sector)
        .ok_or(DiskError::Corrupt {
            part: TablePart::GptHeader(which),
            why: TableProblem::EntriesBeyondDisk,
        })?;
    let entries = read(file, offset, len, &TablePart::GptEntries(which).to_string())?;
    if crc32fast::hash(&entries) != header.entries_crc {
        return Err(DiskError::Corrupt {
            part: TablePart::GptEntries(which),
            why: TableProblem::Crc32,
        });
    }
    Ok(entries)
}

/// Reads the partitions of a GPT disk of `disk_size` bytes.
pub(super) fn partitions(
    file: &File,
    disk_size: u64,
    sector: u64,
) -> Result<Vec<Partition>, DiskError> {
    let primary = read(file, sector, sector as usize, "the primary GPT header")?;
    let header = parse_header(&primary, 1, GptCopy::Primary)?;
    let entries = read_entries(file, &header, sector, GptCopy::Primary)?;

    // The backup must be where the primary says, valid, and describe the
    // same partitions: a disk whose two tables disagree is not one imprint
    // can keep intact.
    let last_lba = disk_size / sector - 1;
    if header.backup_lba > last_lba {
        // Growing the file back is the way through: `sgdisk -e` alone
        // refuses when the cut came right after the last partition.
        return Err(DiskError::Corrupt {
            part: TablePart::Gpt,
            why: TableProblem::BackupCut {
                last_lba,
                claimed: header.backup_lba,
                size: header.backup_lba.saturating_add(1).saturating_mul(sector),
            },
        });
    }
    if header.backup_lba != last_lba {
        return Err(DiskError::Corrupt {
            part: TablePart::Gpt,
            why: TableProblem::BackupMisplaced {
                last_lba,
                claimed: header.backup_lba,
            },
        });
    }
    let backup_block = read(
        file,
        last_lba * sector,
        sector as usize,
        "the backup GPT header",
    )?;
    let backup = parse_header(&backup_block, last_lba, GptCopy::Backup)?;
    let backup_entries = read_entries(file, &backup, sector, GptCopy::Backup)?;
    if backup_entries != entries {
        return Err(DiskError::Corrupt {
            part: TablePart::Gpt,
            why: TableProblem::CopiesDiffer,
        });
    }

    let mut found = Vec::new();
    for (i, e) in entries.chunks(header.entry_size as usize).enumerate() {
        let type_guid = &e[..16];
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if last < first || last > last_lba {
            return Err(DiskError::Corrupt {
                part: TablePart::GptPartition(i as u32 + 1),
                why: TableProblem::OutsideDisk { first, last },
            });
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        found.push(Partition {
            number: i as u32 + 1,
            name: Some(String::from_utf16_lossy(&name)),
            type_name: guid_type_name(type_guid),
            offset: first * sector,
            size: (last - first + 1) * sector,
            scheme: Scheme::Gpt,
        });
    }
    Ok(found)
}

/// Where the partitions of the primary table start, read from the disk's
/// first bytes alone: `None` while `head` does not hold the header and the
/// whole entry array, or when they are not valid. (The codec layer asks
/// this while it decompresses, to keep its place before each partition;
/// [`partitions`] is what decides.)
pub(super) fn starts_in_head(head: &[u8], sector: u64) -> Option<Vec<u64>> {
    let block = head.get(sector as usize..2 * sector as usize)?;
    let header = parse_header(block, 1, GptCopy::Primary).ok()?;
    let from = usize::try_from(header.entries_lba.checked_mul(sector)?).ok()?;
    let len = header.entry_count as usize * header.entry_size as usize;
    let entries = head.get(from..from.checked_add(len)?)?;
    if crc32fast::hash(entries) != header.entries_crc {
        return None;
    }
    let mut starts: Vec<u64> = entries
        .chunks(header.entry_size as usize)
        .filter(|e| e[..16].iter().any(|&b| b != 0))
        .filter_map(|e| u64_at(e, 32).checked_mul(sector))
        .collect();
    starts.sort_unstable();
    Some(starts)
}

/// Where the disk ends by its primary GPT header alone: after the backup
/// header's sector (the alternate LBA), which `partitions` requires to be
/// the disk's last. `None` unless `head` holds a valid primary header.
pub(super) fn end_in_head(head: &[u8], sector: u64) -> Option<u64> {
    let block = head.get(sector as usize..2 * sector as usize)?;
    let header = parse_header(block, 1, GptCopy::Primary).ok()?;
    header.backup_lba.checked_add(1)?.checked_mul(sector)
}

/// A GUID in its usual text form (the first three fields little-endian).
fn guid_text(g: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..16]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

/// A readable name for the common partition types, else the GUID.
fn guid_type_name(g: &[u8]) -> String {
    let text = guid_text(g);
    let known = match text.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM64)",
        _ => return text,
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_is_mixed_endian() {
        // The Linux filesystem type as stored on disk.
        let stored = [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ];
        assert_eq!(guid_type_name(&stored), "Linux filesystem");
    }

    #[test]
    fn header_crc_is_checked() {
        let mut block = vec![0u8; 512];
        block[..8].copy_from_slice(SIGNATURE);
        block[12..16].copy_from_slice(&92u32.to_le_bytes());
        block[24..32].copy_from_slice(&1u64.to_le_bytes());
        block[84..88].copy_from_slice(&128u32.to_le_bytes());
        let crc = crc32fast::hash(&block[..92]);
        block[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(parse_header(&block, 1, GptCopy::Primary).is_ok());
        block[40] ^= 1;
        let err = parse_header(&block, 1, GptCopy::Primary).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Corrupt {
                    why: TableProblem::Crc32,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A protective MBR, a primary header at LBA 1 and 128 entries at
    /// LBA 2 with partitions starting at the given LBAs.
    fn head_with(first_lbas: &[u64]) -> Vec<u8> {
        let mut head = vec![0u8; 34 * 512];
        head[446 + 4] = 0xEE;
        head[510] = 0x55;
        head[511] = 0xAA;
        let entries = &mut head[1024..1024 + 128 * 128];
        for (i, &first) in first_lbas.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0] = 1; // any type GUID but zero
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&(first + 99).to_le_bytes());
        }
        let entries_crc = crc32fast::hash(&head[1024..1024 + 128 * 128]);
        let h = &mut head[512..1024];
        h[..8].copy_from_slice(SIGNATURE);
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        head
    }

    #[test]
    fn partition_starts_from_the_head_alone() {
        let head = head_with(&[34816, 2048]);
        assert!(present(&head, 512));
        assert_eq!(
            starts_in_head(&head, 512),
            Some(vec![2048 * 512, 34816 * 512])
        );
        // Not all of the entry array yet, or a damaged one: not known.
        assert_eq!(starts_in_head(&head[..10_000], 512), None);
        let mut bad = head.clone();
        bad[1024 + 40] ^= 1;
        assert_eq!(starts_in_head(&bad, 512), None);
    }
}
