//! Android sparse images (`system.img` for flash.sh, meta-tegra's
//! `ext4.simg`): parsed (`format`), read in place (`view`) and re-encoded
//! after an edit (`encode`).
//!
//! The format (AOSP libsparse, sparse_format.h) is a 28-byte file header and
//! a list of chunks, each a 12-byte header and maybe data: RAW blocks, a
//! 4-byte FILL pattern, DONT_CARE (no data; the flasher leaves those blocks
//! alone) or a CRC32 of what came before. Both header sizes are recorded in
//! the file header and honoured, so newer, longer headers still parse.
//!
//! The sparse image is a base in the volume stack (see `image::volume`):
//! the ext4 inside (or a container around it) reads it through
//! `SparseView` (the chunk index), without expanding it; the changed blocks
//! that come back are spliced into the input's chunks (`SpliceOutlet`,
//! `encode_edited`), keeping every untouched chunk as it was. `expand` is
//! used only where a raw image is needed (e2fsck in `verify`), and
//! [`encode_raw`] turns a raw image into a sparse one through the same
//! encoder (the demo, tests).

mod encode;
mod format;
mod problem;
#[cfg(test)]
mod testing;
mod view;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use std::sync::Arc;

use super::ext4::{Device, Outlet};
use super::volume::{Changes, Volume};
use super::ImageError;
use crate::io::output::TempOutput;

pub use encode::encode_raw;
pub(crate) use encode::{encode_edited, writable};
pub(crate) use format::MAGIC;
pub use format::{Chunk, ChunkData, ChunkLayout};
pub use problem::{ChunkProblem, Cut, HeaderProblem};
pub(crate) use view::{expand, SparseView};

/// Bytes moved per read or write, whatever the image size.
const IO_BUF: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum SparseError {
    #[error("reading the sparse image failed: {0}")]
    Read(io::Error),
    #[error("not a valid sparse image: {0}")]
    Header(HeaderProblem),
    #[error("sparse image chunk {index} (at byte {offset}): {why}; the file is corrupt")]
    Chunk {
        index: u32,
        offset: u64,
        why: ChunkProblem,
    },
    #[error("the sparse image is truncated: {0}")]
    Truncated(Cut),
    #[error("the sparse image's chunks cover {found} blocks but its header says {declared}; the file is corrupt")]
    BlockCount { declared: u64, found: u64 },
    #[error("the sparse image has {0} bytes after its last chunk; the file is corrupt")]
    TrailingData(u64),
    #[error("the sparse image's header says {declared} chunks but it holds {found}; the file is corrupt")]
    ChunkCount { declared: u32, found: u32 },
    #[error("writing the sparse image failed: {0}")]
    Write(io::Error),
    #[error(
        "a {blocks}-block image is too large for a sparse image, which counts blocks in 32 bits"
    )]
    TooLarge { blocks: u64 },
}

/// Opens the sparse image at `path`: its chunk index, read in place.
pub(crate) fn open_view(path: &Path) -> Result<SparseView, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let layout = ChunkLayout::parse(&file).map_err(|source| ImageError::SparseInput {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SparseView::new(file, layout))
}

/// The expanded image as a volume: read through the chunk index, changed
/// blocks a sparse block each (the output splices whole blocks).
impl Volume for SparseView {
    fn len(&self) -> u64 {
        self.layout().raw_size()
    }

    fn unit(&self) -> u64 {
        u64::from(self.layout().block_size)
    }

    fn carry_out(&self, offset: u64, _: &mut [u8]) -> io::Result<u64> {
        Ok(offset)
    }

    fn expand_into(&self, out: &File, limit: u64) -> io::Result<()> {
        expand(self, out, limit).map_err(|e| match e {
            SparseError::Read(e) | SparseError::Write(e) => e,
            other => io::Error::other(other),
        })
    }
}

/// The output of a sparse base: the input's chunks with the changed blocks
/// spliced in. Nothing is expanded, and only the changed blocks are
/// compared; every untouched chunk is kept as it was.
pub(crate) struct SpliceOutlet {
    path: PathBuf,
    view: Arc<SparseView>,
}

impl SpliceOutlet {
    pub(crate) fn new(path: &Path, view: Arc<SparseView>) -> SpliceOutlet {
        SpliceOutlet {
            path: path.to_path_buf(),
            view,
        }
    }
}

impl Outlet for SpliceOutlet {
    fn write(&mut self, changes: &Changes, out: &mut TempOutput) -> Result<(), ImageError> {
        let mut edited = writable(&self.view);
        for (at, data) in changes.iter() {
            edited
                .write_at(at, data)
                .map_err(|source| ImageError::SparseInput {
                    path: self.path.clone(),
                    source: SparseError::Read(source),
                })?;
        }
        // A write error is the output's (the pipeline names it); anything
        // else came from reading the input.
        let changed = encode_edited(&edited, out).map_err(|e| match e {
            SparseError::Write(source) => ImageError::Output(source),
            source => ImageError::SparseInput {
                path: self.path.clone(),
                source,
            },
        })?;
        tracing::debug!(
            changed_blocks = changed,
            chunks = self.view.layout().chunks.len(),
            "sparse re-encoded"
        );
        Ok(())
    }
}
