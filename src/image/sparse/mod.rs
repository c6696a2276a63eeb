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
//! The ext4 inside is edited by the ext4 module without expanding the image:
//! libext2fs reads it through `SparseView` (the chunk index) and its writes
//! stay in memory (`writable`); `encode_edited` then writes the input's
//! chunks with the changed blocks spliced in, keeping every untouched chunk
//! as it was. `expand` is used only where a raw image is needed (e2fsck in
//! `verify`), and [`encode_raw`] turns a raw image into a sparse one through
//! the same encoder (the demo, tests).

mod encode;
mod format;
#[cfg(test)]
mod testing;
mod view;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::ext4::{self, Ext4Inspector};
use super::{Found, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::io::output::{Scratch, TempOutput};
use crate::plan::{ImagePath, Plan};

pub use encode::encode_raw;
pub(crate) use encode::{encode_edited, writable};
pub(crate) use format::MAGIC;
pub use format::{Chunk, ChunkData, ChunkLayout};
pub(crate) use view::{expand, SparseView};

/// Bytes moved per read or write, whatever the image size.
const IO_BUF: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum SparseError {
    #[error("reading the sparse image failed: {0}")]
    Read(io::Error),
    #[error("not a valid sparse image: {0}")]
    Header(String),
    #[error("sparse image chunk {index} (at byte {offset}): {why}; the file is corrupt")]
    Chunk {
        index: u32,
        offset: u64,
        why: String,
    },
    #[error("the sparse image is truncated: {0}")]
    Truncated(String),
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

fn open_sparse(path: &Path) -> Result<(SparseView, u64), ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let layout = ChunkLayout::parse(&file).map_err(|source| ImageError::SparseInput {
        path: path.to_path_buf(),
        source,
    })?;
    let size = layout.raw_size();
    Ok((SparseView::new(file, layout), size))
}

/// Writes plans into copies of an Android sparse image of an ext2/3/4
/// filesystem.
pub struct SparseBackend {
    path: PathBuf,
    image: Ext4Inspector<SparseView>,
}

impl SparseBackend {
    pub fn open(path: &Path) -> Result<SparseBackend, ImageError> {
        let (view, size) = open_sparse(path)?;
        let image = Ext4Inspector::open(view, size)?;
        image.check_writable()?;
        ext4::ensure_loaded()?;
        Ok(SparseBackend {
            path: path.to_path_buf(),
            image,
        })
    }
}

impl ImageBackend for SparseBackend {
    fn facts(&mut self) -> Result<Vec<ImageFacts>, ImageError> {
        Ok(vec![self.image.facts()?])
    }

    /// libext2fs edits the filesystem through an I/O manager that reads the
    /// sparse file through its chunk index and keeps the blocks it writes in
    /// memory; the output is then the input's chunks with those blocks
    /// spliced in. Nothing is expanded, and only the written blocks are
    /// compared.
    fn apply(&mut self, plans: &[Plan], out: &mut TempOutput) -> Result<(), ImageError> {
        let plan = crate::image::single(plans);
        self.image.preflight(plan)?;
        let view = self.image.device();
        let mut edited = writable(view);
        ext4::write_plan_to_device(&mut edited, self.image.superblock(), plan)?;
        tracing::debug!(written_blocks = edited.written().len(), "libext2fs done");
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
            chunks = view.layout().chunks.len(),
            "sparse re-encoded"
        );
        Ok(())
    }
}

/// Reads files out of a sparse image for `verify`, without expanding it.
pub struct SparseReader {
    path: PathBuf,
    pub(crate) image: Ext4Inspector<SparseView>,
}

impl SparseReader {
    pub fn open(path: &Path) -> Result<SparseReader, ImageError> {
        let (view, size) = open_sparse(path)?;
        Ok(SparseReader {
            path: path.to_path_buf(),
            image: Ext4Inspector::open(view, size)?,
        })
    }
}

impl ImageReader for SparseReader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        Ok(self.image.lookup(path, max_content)?)
    }

    /// e2fsck needs a raw image: expand into a private scratch file in the
    /// temp directory first.
    fn fsck(&mut self) -> Option<Result<(), String>> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let scratch = match Scratch::create_in(&std::env::temp_dir(), &name) {
            Ok(s) => s,
            Err(e) => return Some(Err(format!("cannot create a scratch file for e2fsck: {e}"))),
        };
        if let Err(e) = expand(self.image.device(), scratch.file()) {
            return Some(Err(format!("cannot expand the image for e2fsck: {e}")));
        }
        ext4::e2fsck(scratch.path(), 0)
    }
}
