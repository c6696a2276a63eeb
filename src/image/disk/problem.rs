//! Why a partition table is refused, as kinds a caller can match (the
//! model is ext4-view's `Corrupt(CorruptKind)`); each kind's text is the
//! message imprint has always printed.

use std::fmt;

/// Which copy of a GPT structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GptCopy {
    Primary,
    Backup,
}

impl fmt::Display for GptCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GptCopy::Primary => "primary",
            GptCopy::Backup => "backup",
        })
    }
}

/// The part of a partition table that is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TablePart {
    #[error("the {0} GPT header")]
    GptHeader(GptCopy),
    #[error("the {0} GPT entry array")]
    GptEntries(GptCopy),
    /// The two copies taken together.
    #[error("the GPT")]
    Gpt,
    #[error("GPT partition {0}")]
    GptPartition(u32),
    #[error("MBR partition {0}")]
    MbrPartition(u32),
    #[error("the extended boot record at LBA {0}")]
    Ebr(u64),
    #[error("the extended partition")]
    Extended,
}

/// What is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableProblem {
    #[error("its signature is missing")]
    NoSignature,
    #[error("its size {0} is impossible")]
    HeaderSize(usize),
    #[error("its CRC32 does not match")]
    Crc32,
    #[error("it says it is at LBA {claimed} but was read at LBA {read_at}")]
    Misplaced { claimed: u64, read_at: u64 },
    #[error("{count} entries of {size} bytes is not a valid entry array")]
    EntryArray { count: u32, size: u32 },
    #[error("its entry array lies beyond any disk")]
    EntriesBeyondDisk,
    #[error("the backup header should be at the last LBA {last_lba} but the primary says {claimed} (was the image grown? `sgdisk -e` moves it)")]
    BackupMisplaced { last_lba: u64, claimed: u64 },
    /// The file ends before the backup table: cut short, perhaps right
    /// after the last partition, where `sgdisk -e` alone refuses (the
    /// backup table would overlap that partition).
    #[error("the image ends at LBA {last_lba}, before the backup header the primary places at LBA {claimed} (was it truncated?); grow it back to the size its table says and rebuild the backup from the primary: `truncate -s {size} FILE && sgdisk -e FILE`")]
    BackupCut {
        last_lba: u64,
        claimed: u64,
        /// The size in bytes the primary header implies.
        size: u64,
    },
    #[error("the primary and backup entry arrays differ")]
    CopiesDiffer,
    #[error("it spans LBA {first}..={last}, outside the disk")]
    OutsideDisk { first: u64, last: u64 },
    #[error(
        "it ends at byte {end}, beyond the image's {disk_size} bytes (was the image truncated?)"
    )]
    PastEnd { end: u64, disk_size: u64 },
    #[error("its boot signature is missing")]
    NoBootSignature,
    #[error("its chain of logical partitions is longer than {0} (a loop?)")]
    LogicalLoop(u32),
}
