//! Why a sparse image is refused, as kinds a caller can match (the model is
//! ext4-view's `Corrupt(CorruptKind)`); each kind's text is the message
//! imprint has always printed.

/// What is wrong with the file header (or a layout asked for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderProblem {
    #[error("no sparse magic 0xed26ff3a")]
    NoMagic,
    #[error("major version {0} (only 1 exists)")]
    MajorVersion(u16),
    #[error("header sizes {file}/{chunk} are below the minimum 28/12")]
    HeaderSizes { file: usize, chunk: usize },
    #[error("block size {0} is not a positive multiple of 4")]
    BlockSize(u32),
    #[error("block size {size} is larger than the {max} bytes imprint accepts")]
    BlockTooLarge { size: u32, max: u32 },
    #[error("a {raw_size}-byte image is not a whole number of {block_size}-byte blocks")]
    PartialBlock { raw_size: u64, block_size: u32 },
}

/// What is wrong with one chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkProblem {
    #[error("unknown chunk type 0x{0:04X}")]
    UnknownType(u16),
    #[error("its size field says {total} bytes but a chunk of this type and {blocks} blocks takes {expected}")]
    Size {
        total: u64,
        blocks: u64,
        expected: u64,
    },
}

/// Where the file ends too early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Cut {
    /// A fixed-size structure (`what`: "the file header", "a chunk
    /// header", "a fill pattern") runs past the end.
    #[error("{what} at byte {offset} needs {len} bytes but the file ends at {file_len}")]
    Structure {
        what: &'static str,
        offset: u64,
        len: usize,
        file_len: u64,
    },
    #[error("the file header says it is {claimed} bytes but the file ends at {file_len}")]
    FileHeader { claimed: usize, file_len: u64 },
    #[error("chunk {index} at byte {offset} needs {total} bytes but the file ends at {file_len}")]
    Chunk {
        index: u32,
        offset: u64,
        total: u64,
        file_len: u64,
    },
    #[error("the header promises {declared} chunks but the file ends after {found}")]
    Chunks { declared: u32, found: u32 },
}
