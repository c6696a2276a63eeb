//! Root-filesystem images: format detection and the two things every format
//! backend does, reading the few files planning needs and applying a plan.

pub mod dir;
pub mod disk;
pub mod ext4;
pub mod sparse;
pub mod tar;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::io::output::TempOutput;
pub use crate::plan::model::{EntryType, FileMeta};
use crate::plan::{ImagePath, OverlayError, Plan};

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a rootfs image imprint knows: expected a tar archive (plain, gzip, bzip2, zstd or xz), a raw ext2/3/4 image or an Android sparse image")]
    Unknown { path: PathBuf },
    #[error(transparent)]
    Tar(#[from] tar::TarError),
    #[error(transparent)]
    Ext4(#[from] ext4::Ext4Error),
    #[error(transparent)]
    Sparse(#[from] sparse::SparseError),
    #[error(transparent)]
    Dir(#[from] dir::DirError),
    #[error(transparent)]
    Plan(#[from] OverlayError),
    #[error("writing the output failed: {0}")]
    Output(std::io::Error),
}

/// The kinds of input imprint accepts, told apart by content, not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Tar(crate::compress::Compression),
    Ext4,
    Sparse,
}

impl ImageKind {
    pub fn describe(self) -> String {
        match self {
            ImageKind::Tar(c) => format!("tar archive ({})", c.name()),
            ImageKind::Ext4 => "raw ext2/3/4 image".into(),
            ImageKind::Sparse => "Android sparse image".into(),
        }
    }
}

/// Detects the image kind from its first bytes.
pub fn detect(path: &Path) -> Result<ImageKind, ImageError> {
    let open_err = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut head = vec![0u8; 2048];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(open_err)? {
            0 => break,
            n => filled += n,
        }
    }
    head.truncate(filled);
    if head.len() >= 4 && head[..4] == sparse::MAGIC.to_le_bytes() {
        return Ok(ImageKind::Sparse);
    }
    // The ext2/3/4 superblock sits at byte 1024, its magic 0xEF53 at +56.
    if head.len() >= 1024 + 58 && head[1024 + 56..1024 + 58] == [0x53, 0xEF] {
        return Ok(ImageKind::Ext4);
    }
    if let Some(c) = crate::compress::Compression::detect(&head) {
        return Ok(ImageKind::Tar(c));
    }
    if tar::looks_like_tar(&head) {
        return Ok(ImageKind::Tar(crate::compress::Compression::None));
    }
    Err(ImageError::Unknown {
        path: path.to_path_buf(),
    })
}

/// What planning needs to know about an image before writing into it.
#[derive(Debug, Default)]
pub struct ImageFacts {
    pub passwd: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
    /// The time new entries get when SOURCE_DATE_EPOCH is unset: a time
    /// taken from the image itself (e.g. the mtime of its `etc/`), so that
    /// the same input gives the same output.
    pub reference_mtime: i64,
}

/// A format backend for an input image file. Backends never open the input
/// for writing; they write a complete new image into `out`.
pub trait ImageBackend {
    /// Reads /etc/passwd, /etc/group and the reference mtime.
    fn facts(&mut self) -> Result<ImageFacts, ImageError>;
    /// Writes the input with `plan` applied into `out`.
    fn apply(&mut self, plan: &Plan, out: &mut TempOutput) -> Result<(), ImageError>;
}

/// Reads single files out of an image, for `verify`.
pub trait ImageReader {
    /// Metadata and, for a regular file, the content of `path`. The content
    /// of files larger than `max_content` is not read.
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError>;

    /// Several lookups; formats that must stream the whole image to find a
    /// file (tar) override this to do it in one pass.
    fn lookup_many(
        &mut self,
        paths: &[ImagePath],
        max_content: u64,
    ) -> Result<Vec<Option<Found>>, ImageError> {
        paths.iter().map(|p| self.lookup(p, max_content)).collect()
    }

    /// A filesystem consistency check (e2fsck -fn for ext4), if the format
    /// has one and the tool is installed: `None` when not applicable.
    fn fsck(&mut self) -> Option<Result<(), String>> {
        None
    }
}

/// Metadata and (for regular files within the size asked for) content.
pub type Found = (FileMeta, Option<Vec<u8>>);

/// How inputs are read and outputs written, beyond the plan itself.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// Decompress and recompress the whole image even where a faster path
    /// would keep the input's bytes: tests and benchmarks compare the two.
    pub full_rewrite: bool,
}

/// Opens `path` for writing plans over `targets` into outputs that go in
/// `output_dir` (where a backend may keep large scratch files).
pub fn open_backend(
    path: &Path,
    kind: ImageKind,
    targets: &[ImagePath],
    output_dir: &Path,
    options: &ImageOptions,
) -> Result<Box<dyn ImageBackend>, ImageError> {
    Ok(match kind {
        ImageKind::Tar(c) => Box::new(tar::TarBackend::open(path, c, targets, output_dir, options)),
        ImageKind::Ext4 => Box::new(ext4::Ext4Backend::open(path)?),
        ImageKind::Sparse => Box::new(sparse::SparseBackend::open(path)?),
    })
}

/// Opens an image (or a staging directory) for reading, for `verify`.
pub fn open_reader(path: &Path) -> Result<Box<dyn ImageReader>, ImageError> {
    if path.is_dir() {
        return Ok(Box::new(dir::DirReader::new(path)));
    }
    Ok(match detect(path)? {
        ImageKind::Tar(c) => Box::new(tar::TarReader::open(path, c)?),
        ImageKind::Ext4 => Box::new(ext4::Ext4Reader::open(path)?),
        ImageKind::Sparse => Box::new(sparse::SparseReader::open(path)?),
    })
}
