//! Root-filesystem images: format detection and the two things every format
//! backend does, reading the few files planning needs and applying a plan.

mod compressed;
mod detect;
pub(crate) mod dir;
pub(crate) mod disk;
pub(crate) mod ext4;
mod formats;
mod listing;
pub(crate) mod luks;
pub(crate) mod resolve;
// Public for the integration tests and the demo alone, which need sparse
// images with DONT_CARE chunks that no installed tool makes.
#[doc(hidden)]
pub mod sparse;
pub(crate) mod tar;
mod volume;
#[cfg(test)]
mod xor_test;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use crate::io::bmap::BmapError;
use crate::io::output::TempOutput;
pub use crate::plan::model::{EntryType, FileMeta, Special};
use crate::plan::{ImagePath, OverlayError, Plan};
pub use detect::ImageKind;
pub(crate) use detect::{detect, Content};
pub use dir::DirError;
pub use disk::{DiskError, GptCopy, PartitionChoice, TablePart, TableProblem, Unusable};
pub use ext4::{use_library, CorruptKind, Ext4Error, NotExt4Kind};
// Built from the command line's flags (a library user leaves
// `ImageOptions::luks_build` unset).
#[cfg(feature = "cli")]
pub(crate) use luks::build::LuksBuild;
pub use luks::{LuksError, LuksKey};
pub use sparse::SparseError;
pub use tar::TarError;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("cannot read {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a rootfs image imprint knows ({found}): expected a tar archive, a raw ext2/3/4 image, a GPT or MBR disk image (each plain or compressed with gzip, bzip2, zstd, xz or lz4), or an Android sparse image")]
    Unknown { path: PathBuf, found: String },
    #[error("{path} is compressed with {codec}, which imprint does not read. Convert it to zstd (which imprint reads and writes back) and stamp that: `{convert}`")]
    UnreadCodec {
        path: PathBuf,
        codec: &'static str,
        convert: String,
    },
    #[error("{path} is {found}; imprint does not edit that under a codec. Decompress it first (`{codec} -dc IN > OUT`), stamp the result, and compress it again")]
    Unsupported {
        path: PathBuf,
        found: String,
        /// The codec around it, whose own tool decompresses it.
        codec: &'static str,
    },
    #[error("{path} is an Android sparse image of a whole {inside} (as `img2simg` of a disk makes); imprint reads a disk image only as a plain file. Expand it (`simg2img IN OUT.img`), stamp OUT.img, and make that sparse again (`img2simg`) if you need to")]
    SparseDisk { path: PathBuf, inside: String },
    #[error("{path}: the {codec} data ends at byte {data_end} and {zeros} zero bytes of padding follow it (as `dd` to a block device leaves); {rule}, and so does imprint. Cut it off a copy (`truncate -s {data_end} COPY`) and stamp that")]
    Padding {
        path: PathBuf,
        codec: &'static str,
        data_end: u64,
        zeros: u64,
        rule: &'static str,
    },
    #[error("{path}: its zstd frame needs a {window_mib} MiB window (as `zstd --long=31` makes); imprint decodes windows up to {max_mib} MiB, as `zstd -d` does without --long, to keep its memory bounded. Recompress it with a smaller window (`zstd -d --long=31 -c IN | zstd -T0 --long=27 -o OUT.zst`) and stamp that")]
    ZstdWindow {
        path: PathBuf,
        window_mib: u64,
        max_mib: u64,
    },
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error("partition {wanted} was asked for (--partition), but {path} is a {found}, not a partitioned disk image; leave --partition out")]
    NotADisk {
        path: PathBuf,
        wanted: disk::PartitionChoice,
        found: String,
    },
    #[error(
        "{path}: this reads one partition, and --partition chose {}; name one",
        disk::PartitionId::list(chosen)
    )]
    SeveralPartitions {
        path: PathBuf,
        chosen: Vec<disk::PartitionId>,
    },
    #[error("{path}: cannot decompress the {codec} stream (the file is corrupt or truncated; fetch or rebuild it)")]
    Decompress {
        path: PathBuf,
        codec: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tar(#[from] tar::TarError),
    #[error(transparent)]
    Ext4(#[from] ext4::Ext4Error),
    /// The one way a sparse image's error reaches the user: with the
    /// file's name (a write error of the output is [`ImageError::Output`]).
    #[error("{path}")]
    SparseInput {
        path: PathBuf,
        source: sparse::SparseError,
    },
    #[error(transparent)]
    Dir(#[from] dir::DirError),
    #[error(transparent)]
    Luks(#[from] luks::LuksError),
    #[error(transparent)]
    Plan(#[from] OverlayError),
    #[error(transparent)]
    Bmap(#[from] crate::io::bmap::BmapError),
    #[error("writing the output failed")]
    Output(#[source] std::io::Error),
    #[error("{path} is {what} in the archive; imprint cannot read its content")]
    Unreadable { path: String, what: &'static str },
    #[error("the block map beside {image} describes an image of {bmap_size} bytes, but the image has {image_size}; it belongs to another image. Remove or replace it")]
    BmapMismatch {
        image: PathBuf,
        bmap_size: u64,
        image_size: u64,
    },
}

/// What planning needs to know about an image before writing into it.
#[derive(Debug, Default)]
pub(crate) struct ImageFacts {
    pub passwd: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
    /// The time new entries get when SOURCE_DATE_EPOCH is unset: a time
    /// taken from the image itself (e.g. the mtime of its `etc/`), so that
    /// the same input gives the same output.
    pub reference_mtime: i64,
    /// What is at /etc/passwd and /etc/group when it is there but cannot be
    /// read as a file (a dangling or looping symlink, a directory), for the
    /// error that a missing user then gives.
    pub passwd_found: Option<String>,
    pub group_found: Option<String>,
}

/// A format backend for an input image file. Backends never open the input
/// for writing; they write a complete new image into `out`.
///
/// An output holds one filesystem, or, for a disk image stamped in several
/// partitions (the slots of an A/B layout), one per partition: each is
/// planned against its own users (`facts`) and gets its own plan.
pub(crate) trait ImageBackend {
    /// Reads /etc/passwd, /etc/group and the reference mtime of each
    /// filesystem the output holds, in the order of [`partitions`].
    ///
    /// [`partitions`]: ImageBackend::partitions
    fn facts(&mut self) -> Result<Vec<ImageFacts>, ImageError>;
    /// Writes the input with `plans[i]` applied to its filesystem `i` (one
    /// plan per entry of [`facts`]) into `out`.
    ///
    /// [`facts`]: ImageBackend::facts
    fn apply(&mut self, plans: &[Plan], out: &mut TempOutput) -> Result<(), ImageError>;
    /// The partitions of a disk image written into, in table order; empty
    /// for inputs without partitions.
    fn partitions(&self) -> Vec<disk::PartitionId> {
        Vec::new()
    }
}

/// The one plan of a backend whose output holds one filesystem.
pub(crate) fn single(plans: &[Plan]) -> &Plan {
    assert_eq!(plans.len(), 1, "one plan per filesystem (a bug in imprint)");
    &plans[0]
}

/// One name found by [`Inspect::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listed {
    /// Relative to the image's root, e.g. `etc/azaion/device.conf`. Names
    /// in images are bytes: a byte that is not part of valid UTF-8 (a
    /// legacy charset) is carried as one character of U+10FF80..=U+10FFFF,
    /// so no two names are alike here; [`Listed::path_bytes`] gives the
    /// bytes back. `meta.target` and `hard_link` are carried alike.
    pub path: String,
    pub meta: FileMeta,
    /// A tar hard-link entry: the path (relative) it names.
    pub hard_link: Option<String>,
}

impl Listed {
    /// The path's bytes as the image stores them.
    pub fn path_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        crate::plan::name::to_bytes(&self.path)
    }
}

/// Looking inside an image (`imprint ls` and `cat`), read-only, through
/// the same readers as `verify`.
pub trait Inspect {
    /// What is at `path` (`None`: the root): a directory's entries (with
    /// `recursive`, everything below it), or the one entry for anything
    /// else; sorted by path. `None` when nothing is there. Symlinks are
    /// listed, not followed; their `meta.target` is set.
    fn list(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
    ) -> Result<Option<Vec<Listed>>, ImageError>;

    /// As [`Inspect::list`], handing each entry to `visit` as it is found
    /// rather than holding them all (`imprint ls` of an archive of a
    /// million names): in the image's own order (an archive's entries as
    /// `tar -tv` lists them, a path stored twice twice). Returns whether
    /// anything is at `path`; `visit`'s error ends the walk and is
    /// returned.
    fn list_each(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
        visit: &mut dyn FnMut(&Listed) -> Result<(), ImageError>,
    ) -> Result<bool, ImageError> {
        let Some(found) = self.list(path, recursive)? else {
            return Ok(false);
        };
        for l in &found {
            visit(l)?;
        }
        Ok(true)
    }

    /// Copies the content of the regular file at `path` to `out` as it is
    /// read (never the whole file in memory) and returns its metadata.
    /// Anything but a regular file is returned without writing (a symlink
    /// with its `target`: the caller decides whether to follow it); `None`
    /// when nothing is there.
    fn cat(
        &mut self,
        path: &ImagePath,
        out: &mut dyn std::io::Write,
    ) -> Result<Option<FileMeta>, ImageError>;
}

/// Reads single files out of an image, for `verify`, `ls` and `cat`.
pub trait ImageReader: Inspect {
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
#[non_exhaustive]
pub struct ImageOptions {
    /// Decompress and recompress the whole image even where a faster path
    /// would keep the input's bytes: tests and benchmarks compare the two.
    pub full_rewrite: bool,
    /// The partitions of a disk image to stamp (each with the device's
    /// credentials, in one output) or read ([`disk::PartitionChoice`]); empty:
    /// the one named `APP`, else the only ext2/3/4 partition with `/etc`.
    pub partitions: Vec<disk::PartitionChoice>,
    /// Where tar scans are kept for the next run from the same input
    /// (`src/cache/`); `None` scans every time.
    pub(crate) cache: Option<crate::cache::Cache>,
    /// How a LUKS container in the image is opened ([`LuksKey`]);
    /// `None` refuses one, saying what to pass.
    pub luks: Option<LuksKey>,
    /// Write the output as a new LUKS2 container around the stamped
    /// filesystem (`provision --luks-encrypt`), its keyslot opened by
    /// [`ImageOptions::luks`].
    pub(crate) luks_build: Option<luks::build::LuksBuild>,
}

impl ImageOptions {
    /// Keeps what a tarball's scan learned for the next run from the same
    /// input, in the scan cache where the environment puts it
    /// (`$IMPRINT_CACHE_DIR`, else `$XDG_CACHE_HOME/imprint`, else
    /// `~/.cache/imprint`; docs/formats.md, "Scan cache"), as `imprint
    /// provision` does unless `--no-cache`. Without such a place, every
    /// run scans.
    ///
    /// ```
    /// let options = imprint::ImageOptions::default().with_scan_cache();
    /// # let _ = options;
    /// ```
    pub fn with_scan_cache(mut self) -> ImageOptions {
        self.cache = crate::cache::Cache::from_env();
        self
    }
}

/// Opens `path` for writing plans over `targets` into outputs that go in
/// `output_dir` (where a backend may keep large scratch files). The layers
/// compose outside in, as the format table (`formats.rs`) says: a codec
/// around a raw image decompresses it into a scratch file first; a disk
/// image narrows to its rootfs partition; the content (tar, ext2/3/4) is
/// what the plan is written into.
pub(crate) fn open_backend(
    path: &Path,
    kind: ImageKind,
    targets: &[ImagePath],
    output_dir: &Path,
    options: &ImageOptions,
) -> Result<Box<dyn ImageBackend>, ImageError> {
    check_partition_applies(path, kind, options)?;
    formats::open_backend(
        path,
        kind.compression,
        kind.content,
        targets,
        output_dir,
        options,
    )
}

/// `--partition` names a partition of a disk image; for any other input it
/// is a mistake worth saying, not an option to ignore. `all-rootfs` alone
/// is the exception: an input without partitions is its one rootfs, so
/// one run (a Buildroot post-image script) can say it for every image.
fn check_partition_applies(
    path: &Path,
    kind: ImageKind,
    options: &ImageOptions,
) -> Result<(), ImageError> {
    if formats::row_of(kind.content).partitioned {
        return Ok(());
    }
    match options
        .partitions
        .iter()
        .find(|p| **p != disk::PartitionChoice::AllRootfs)
    {
        None => Ok(()),
        Some(wanted) => Err(ImageError::NotADisk {
            path: path.to_path_buf(),
            wanted: wanted.clone(),
            found: kind.describe(),
        }),
    }
}

/// The block map beside an input image, if there is one.
fn bmap_of(
    path: &Path,
    codec_suffix: Option<&str>,
) -> Result<Option<crate::io::bmap::Bmap>, ImageError> {
    use crate::io::bmap::Bmap;
    Bmap::beside(path, codec_suffix)
        .map(|p| Bmap::load(&p))
        .transpose()
        .map_err(ImageError::from)
}

/// One filesystem of an image opened for reading, with the partition of a
/// disk image it is in (`None` for other inputs).
pub type SlotReader = (Option<disk::Partition>, Box<dyn ImageReader>);

/// Opens an image (or a staging directory) for reading, for `verify`,
/// `ls` and `cat`: one reader, or for a disk image one per partition
/// [`ImageOptions::partitions`] selects, in table order.
pub fn open_readers(path: &Path, options: &ImageOptions) -> Result<Vec<SlotReader>, ImageError> {
    if path.is_dir() {
        return Ok(vec![(None, Box::new(dir::DirReader::new(path)))]);
    }
    let kind = detect(path)?;
    check_partition_applies(path, kind, options)?;
    formats::open_readers(path, kind.compression, kind.content, options)
}

/// Opens an image (or a staging directory) for reading one filesystem
/// ([`open_readers`] where the options select one partition at most), for
/// `verify`, `imprint ls` and `imprint cat`. Every format imprint writes
/// is read, and nothing is ever written.
///
/// ```
/// use imprint::image::{open_reader, ImageOptions, Inspect};
/// use imprint::plan::ImagePath;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let root = dir.path();
/// # std::fs::create_dir(root.join("etc"))?;
/// # std::fs::write(root.join("etc/hostname"), "jetson\n")?;
/// // `root` is a staging tree; an image file is opened the same way.
/// let mut reader = open_reader(root, &ImageOptions::default())?;
/// let etc = ImagePath::parse("/etc").unwrap();
/// let names: Vec<_> = reader.list(Some(&etc), false)?.unwrap()
///     .into_iter().map(|l| l.path).collect();
/// assert_eq!(names, ["etc/hostname"]);
/// let mut text = Vec::new();
/// reader.cat(&ImagePath::parse("/etc/hostname").unwrap(), &mut text)?;
/// assert_eq!(text, b"jetson\n");
/// # Ok(())
/// # }
/// ```
pub fn open_reader(
    path: &Path,
    options: &ImageOptions,
) -> Result<Box<dyn ImageReader>, ImageError> {
    let mut readers = open_readers(path, options)?;
    if readers.len() != 1 {
        return Err(ImageError::SeveralPartitions {
            path: path.to_path_buf(),
            chosen: readers
                .iter()
                .filter_map(|(p, _)| p.as_ref().map(disk::Partition::id))
                .collect(),
        });
    }
    Ok(readers.remove(0).1)
}
