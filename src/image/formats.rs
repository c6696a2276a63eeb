//! The one table of formats: what detection found -> how it is written and
//! read. `open_backend` and `open_reader` (in `image/mod.rs`) only walk it;
//! a new container or content format is its module plus one row here.
//!
//! A block image is a stack of volumes (see `image::volume`): a *base*
//! (the input file, the scratch file a codec expanded it into, or an
//! Android sparse image read through its chunk index), then the container
//! rows found in it (a disk's partitions, a container that transforms
//! bytes), down to the filesystem the plan is written into. The base's
//! outlet makes the output from the changed blocks that come back.

use std::path::Path;
use std::sync::Arc;

use super::compressed;
use super::disk;
use super::ext4::{Ext4Backend, Ext4Reader, Outlet, PatchOutlet};
use super::volume::{FileVolume, Volume};
use super::{
    sparse, tar, Content, ImageBackend, ImageError, ImageOptions, ImageReader, SlotReader,
};
use crate::compress::Compression;
use crate::io::read_at::Window;
use crate::plan::ImagePath;

/// Opens a stream format's writer: `(input, codec, targets, output_dir,
/// options)`.
pub(crate) type StreamWriter = fn(
    &Path,
    Compression,
    &[ImagePath],
    &Path,
    &ImageOptions,
) -> Result<Box<dyn ImageBackend>, ImageError>;

/// Opens a stream format's reader: `(input, codec)`.
pub(crate) type StreamReader = fn(&Path, Compression) -> Result<Box<dyn ImageReader>, ImageError>;

/// The volumes inside a container: `(the container's bytes, the base file
/// they are read from, the input's name for errors (the base file is a
/// scratch file under a codec), options)`.
pub(crate) type Inner =
    fn(Box<dyn Volume>, &Path, &Path, &ImageOptions) -> Result<Vec<Slot>, ImageError>;

/// A volume inside a container, with the partition of a disk image it is
/// (or is inside of): reports name it, and each gets its own plan.
pub(crate) struct Slot {
    pub(crate) volume: Box<dyn Volume>,
    /// `None` where no disk partition is involved, or for a volume inside
    /// a container that is itself in a partition (it inherits that one).
    pub(crate) partition: Option<disk::Partition>,
}

impl Slot {
    /// A volume that is no partition of its own.
    pub(crate) fn whole(volume: Box<dyn Volume>) -> Slot {
        Slot {
            volume,
            partition: None,
        }
    }
}

/// A base's bytes as a volume, and the way out.
pub(crate) type Base = (Box<dyn Volume>, Box<dyn Outlet>);

/// Opens a base with its own index and output encoding.
pub(crate) type OpenBase = fn(&Path) -> Result<Base, ImageError>;

/// One format imprint reads and writes.
pub(crate) struct Format {
    /// Tells the format from the first bytes (up to 64 KiB, decompressed);
    /// rows are tried in table order.
    pub(crate) detect: fn(&[u8]) -> Option<Content>,
    /// Whether a detected content is this row's.
    pub(crate) is: fn(Content) -> bool,
    /// A partitioned disk: `--partition` applies, and a codec around it
    /// notes its boundaries before partition starts, so a rewrite keeps the
    /// compressed bytes before the rootfs.
    pub(crate) partitioned: bool,
    pub(crate) open: Open,
}

/// How a row's format is opened.
pub(crate) enum Open {
    /// Content with a stream format of its own, read under any codec (tar).
    Stream {
        writer: StreamWriter,
        reader: StreamReader,
    },
    /// A base with its own index and output encoding (Android sparse),
    /// never under a codec; the layers inside are found as in a container.
    Base(OpenBase),
    /// A container over a block device (the file, or the scratch file a
    /// codec expanded it into): the volumes inside it to stamp. `nests`:
    /// also looked for inside other containers (a transforming container in
    /// a partition or a sparse image).
    Container { inner: Inner, nests: bool },
    /// The ext2/3/4 filesystem the plan is written into: the end of a stack.
    Filesystem,
}

/// The formats, in detection order: a sparse header, a partition table
/// (GPT before MBR), an ext2/3/4 superblock, a tar header.
const ROWS: &[Format] = &[
    Format {
        detect: |head| {
            (head.len() >= 4 && head[..4] == sparse::MAGIC.to_le_bytes()).then_some(Content::Sparse)
        },
        is: |c| c == Content::Sparse,
        partitioned: false,
        open: Open::Base(open_sparse),
    },
    Format {
        detect: |head| disk::detect(head).map(Content::Disk),
        is: |c| matches!(c, Content::Disk(_)),
        partitioned: true,
        open: Open::Container {
            inner: disk_partitions,
            nests: false,
        },
    },
    super::luks::ROW,
    Format {
        // The ext2/3/4 superblock sits at byte 1024, its magic 0xEF53 at +56.
        detect: |head| {
            (head.len() >= 1024 + 58 && head[1024 + 56..1024 + 58] == [0x53, 0xEF])
                .then_some(Content::Ext4)
        },
        is: |c| c == Content::Ext4,
        partitioned: false,
        open: Open::Filesystem,
    },
    Format {
        detect: |head| tar::looks_like_tar(head).then_some(Content::Tar),
        is: |c| c == Content::Tar,
        partitioned: false,
        open: Open::Stream {
            writer: |path, codec, targets, output_dir, options| {
                Ok(Box::new(tar::TarBackend::open(
                    path, codec, targets, output_dir, options,
                )))
            },
            reader: |path, codec| Ok(Box::new(tar::TarReader::open(path, codec)?)),
        },
    },
];

/// Every row: the table, and in unit tests the toy containers that prove
/// a transforming container is one module plus one row.
fn rows() -> impl Iterator<Item = &'static Format> {
    #[cfg(test)]
    let test_rows = super::xor_test::ROWS;
    #[cfg(not(test))]
    let test_rows: &[Format] = &[];
    test_rows.iter().chain(ROWS)
}

/// What uncompressed bytes are, if imprint knows.
pub(crate) fn content_of(head: &[u8]) -> Option<Content> {
    rows().find_map(|row| (row.detect)(head))
}

/// The row of a detected content.
pub(crate) fn row_of(content: Content) -> &'static Format {
    rows()
        .find(|row| (row.is)(content))
        .expect("every content detection reports has a row")
}

/// The partitions of a disk image the options ask for (the default rootfs
/// if none; several for the slots of an A/B layout), each a window onto
/// the disk's bytes.
fn disk_partitions(
    disk: Box<dyn Volume>,
    file: &Path,
    _name: &Path,
    options: &ImageOptions,
) -> Result<Vec<Slot>, ImageError> {
    let disk: Arc<dyn Volume> = Arc::from(disk);
    Ok(disk::locate(file, &options.partitions)?
        .into_iter()
        .map(|p| Slot {
            volume: Box::new(Window::new(Arc::clone(&disk), p.offset, p.size)),
            partition: Some(p),
        })
        .collect())
}

fn open_sparse(path: &Path) -> Result<Base, ImageError> {
    let view = std::sync::Arc::new(sparse::open_view(path)?);
    let outlet = sparse::SpliceOutlet::new(path, view.clone());
    Ok((Box::new(view), Box::new(outlet)))
}

/// Two views of a plain image's bytes (a raw file, or an Android sparse
/// image through its chunk index): one for the filesystem, one for an
/// outlet that writes the output from the plain bytes (a new LUKS
/// container, `luks::build`).
pub(super) fn plain_base(path: &Path, sparse: bool) -> Result<[Box<dyn Volume>; 2], ImageError> {
    if sparse {
        let view = Arc::new(sparse::open_view(path)?);
        return Ok([Box::new(view.clone()), Box::new(view)]);
    }
    Ok([file_volume(path)?.0, file_volume(path)?.0])
}

/// How much of a volume is read to find what is inside it.
const HEAD: u64 = 64 * 1024;

/// The filesystems below `volume`, which `row` describes: a container's
/// volumes, each looked into in turn, down to the filesystems.
fn filesystems(
    row: &Format,
    slot: Slot,
    file: &Path,
    name: &Path,
    options: &ImageOptions,
) -> Result<Vec<Slot>, ImageError> {
    let inner = match row.open {
        Open::Filesystem => return Ok(vec![slot]),
        Open::Container { inner, .. } => inner(slot.volume, file, name, options)?,
        // A base's bytes, or bytes a stream format would read: look inside.
        Open::Base(_) | Open::Stream { .. } => vec![Slot::whole(slot.volume)],
    };
    let mut found = Vec::new();
    for mut inside in inner {
        if let Open::Base(_) = row.open {
            refuse_disk_inside(&*inside.volume, name)?;
        }
        let row = row_inside(&*inside.volume).map_err(|source| ImageError::Open {
            path: name.to_path_buf(),
            source,
        })?;
        if inside.partition.is_none() {
            inside.partition = slot.partition.clone();
        }
        found.extend(filesystems(row, inside, file, name, options)?);
    }
    Ok(found)
}

/// A base (an Android sparse image) of a whole disk, as `img2simg` of a
/// disk image makes: refused naming what it is and the way through (a
/// disk's partitions are located in its file, not in a base's volume).
fn refuse_disk_inside(volume: &dyn Volume, name: &Path) -> Result<(), ImageError> {
    let mut head = vec![0u8; HEAD.min(volume.len()) as usize];
    volume
        .read_at(0, &mut head)
        .map_err(|source| ImageError::Open {
            path: name.to_path_buf(),
            source,
        })?;
    match content_of(&head) {
        Some(content @ Content::Disk(_)) => Err(ImageError::SparseDisk {
            path: name.to_path_buf(),
            inside: super::ImageKind {
                compression: Compression::None,
                content,
            }
            .describe(),
        }),
        _ => Ok(()),
    }
}

/// The row of what a volume holds: a container that nests, else the
/// filesystem (whose reader says what is wrong if it is none).
fn row_inside(volume: &dyn Volume) -> std::io::Result<&'static Format> {
    let mut head = vec![0u8; HEAD.min(volume.len()) as usize];
    volume.read_at(0, &mut head)?;
    let nests = |row: &&Format| matches!(row.open, Open::Container { nests: true, .. });
    Ok(rows()
        .filter(nests)
        .find(|row| (row.detect)(&head).is_some())
        .unwrap_or_else(|| {
            rows()
                .find(|row| matches!(row.open, Open::Filesystem))
                .expect("the table has a filesystem row")
        }))
}

/// A block image's base and the layers inside it, opened for writing or
/// reading.
struct Stack {
    /// The filesystems to stamp.
    volumes: Vec<Slot>,
    /// The file the base reads (the input, or a codec's scratch file).
    file: std::path::PathBuf,
}

fn file_volume(path: &Path) -> Result<(Box<dyn Volume>, u64), ImageError> {
    let open = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open)?;
    let len = file.metadata().map_err(open)?.len();
    Ok((Box::new(FileVolume::new(file, len)), len))
}

/// The stack over `base`, read from `file`; errors name `name` (the
/// input, where `file` is a codec's scratch file).
fn stack(
    row: &Format,
    base: Box<dyn Volume>,
    file: &Path,
    name: &Path,
    options: &ImageOptions,
) -> Result<Stack, ImageError> {
    Ok(Stack {
        volumes: filesystems(row, Slot::whole(base), file, name, options)?,
        file: file.to_path_buf(),
    })
}

/// Opens `path`, of `content` under `codec`, for writing plans over
/// `targets` (see `image::open_backend`).
pub(crate) fn open_backend(
    path: &Path,
    codec: Compression,
    content: Content,
    targets: &[ImagePath],
    output_dir: &Path,
    options: &ImageOptions,
) -> Result<Box<dyn ImageBackend>, ImageError> {
    if let Some(build) = &options.luks_build {
        return super::luks::build::open_backend(path, codec, content, build, output_dir, options);
    }
    let row = row_of(content);
    match (&row.open, codec) {
        (Open::Stream { writer, .. }, codec) => writer(path, codec, targets, output_dir, options),
        (Open::Base(open), Compression::None) => {
            let (base, outlet) = open(path)?;
            let stack = stack(row, base, path, path, options)?;
            Ok(Box::new(Ext4Backend::open(stack.volumes, outlet)?))
        }
        (Open::Container { .. } | Open::Filesystem, Compression::None) => {
            let (base, len) = file_volume(path)?;
            let outlet = PatchOutlet::new(path, len, super::bmap_of(path, None)?, path)?;
            let stack = stack(row, base, path, path, options)?;
            Ok(Box::new(Ext4Backend::open(
                stack.volumes,
                Box::new(outlet),
            )?))
        }
        (Open::Container { .. } | Open::Filesystem, codec) => {
            let base = compressed::Base::expand(path, codec, output_dir, row.partitioned)?;
            let stack = stack(row, base.volume()?, base.scratch.path(), path, options)?;
            let outlet = base.outlet(path, codec)?;
            Ok(Box::new(Ext4Backend::open(
                stack.volumes,
                Box::new(outlet),
            )?))
        }
        (Open::Base(_), _) => Err(unsupported(path, codec, content)),
    }
}

/// Opens `path`, of `content` under `codec`, for reading (see
/// `image::open_readers`): one reader per filesystem the layers give.
pub(crate) fn open_readers(
    path: &Path,
    codec: Compression,
    content: Content,
    options: &ImageOptions,
) -> Result<Vec<SlotReader>, ImageError> {
    let row = row_of(content);
    let (stack, scratch) = match (&row.open, codec) {
        (Open::Stream { reader, .. }, codec) => return Ok(vec![(None, reader(path, codec)?)]),
        (Open::Base(open), Compression::None) => {
            let (base, _) = open(path)?;
            (stack(row, base, path, path, options)?, None)
        }
        (Open::Container { .. } | Open::Filesystem, Compression::None) => {
            let (base, _) = file_volume(path)?;
            (stack(row, base, path, path, options)?, None)
        }
        (Open::Container { .. } | Open::Filesystem, codec) => {
            let base = compressed::Base::expand(path, codec, &std::env::temp_dir(), false)?;
            let stack = stack(row, base.volume()?, base.scratch.path(), path, options)?;
            (stack, Some(Arc::new(base.scratch)))
        }
        (Open::Base(_), _) => return Err(unsupported(path, codec, content)),
    };
    if stack.volumes.is_empty() {
        return Err(ImageError::Unknown {
            path: path.to_path_buf(),
            found: "a container with no filesystem inside".into(),
        });
    }
    stack
        .volumes
        .into_iter()
        .map(|slot| {
            let reader = Ext4Reader::open(&stack.file, slot.volume, scratch.clone())?;
            Ok((slot.partition, Box::new(reader) as Box<dyn ImageReader>))
        })
        .collect()
}

fn unsupported(path: &Path, codec: Compression, content: Content) -> ImageError {
    ImageError::Unsupported {
        path: path.to_path_buf(),
        found: super::ImageKind {
            compression: codec,
            content,
        }
        .describe(),
        codec: codec.name(),
    }
}
