//! The codec layer around a raw image (`system.img.zst`, `rootfs.ext4.gz`,
//! `core-image.wic.xz`): the input is decompressed once into a private
//! scratch file (`expand`), the filesystem inside is edited like any raw
//! image, and the output streams from that scratch file through the
//! input's codec (`recompress`, with the encoders of `encoders`).
//!
//! A disk image keeps the input's compressed bytes before its rootfs
//! partition where the codec has boundaries (gzip, bzip2, zstd). A raw
//! ext4 image has nothing to keep: ext4 changes its superblock (at byte
//! 1024) on every write, so its first changed block is the first.

mod encoders;
mod expand;
mod recompress;

use std::io;
use std::path::Path;
use std::sync::Arc;

use self::expand::expand;
use self::recompress::{InputRead, Recompressing, Start};
use super::ext4::{Ext4Backend, Ext4Reader};
use super::{
    disk, Content, Found, ImageBackend, ImageError, ImageFacts, ImageOptions, ImageReader,
};
use crate::compress::boundary::Boundary;
use crate::compress::Compression;
use crate::io::bmap::Bmap;
use crate::io::output::{Scratch, TempOutput};
use crate::io::prefix::PrefixCache;
use crate::plan::{ImagePath, Plan};

/// The suffix a codec's files usually carry, to find `NAME.wic.bmap` for
/// `NAME.wic.zst` and to name the output's block map the same way.
fn codec_suffix(codec: Compression) -> Option<&'static str> {
    match codec {
        Compression::None => None,
        Compression::Gzip => Some(".gz"),
        Compression::Bzip2 => Some(".bz2"),
        Compression::Zstd => Some(".zst"),
        Compression::Xz => Some(".xz"),
    }
}

/// The partitions chosen inside the expanded image (none for a raw
/// filesystem image: the whole of it).
fn partitions_of(
    scratch: &Path,
    content: Content,
    options: &ImageOptions,
) -> Result<Vec<disk::Partition>, ImageError> {
    match content {
        Content::Disk(_) => disk::locate(scratch, &options.partitions),
        _ => Ok(Vec::new()),
    }
}

/// Writes plans into recompressed copies of a compressed raw image.
pub(crate) struct CompressedBackend {
    input: std::path::PathBuf,
    codec: Compression,
    inner: Ext4Backend,
    /// The raw image's length.
    len: u64,
    /// The input's boundaries before partition starts.
    boundaries: Vec<Boundary>,
    /// The kept prefix's SHA-256 state, shared by every serial of a batch.
    prefixes: PrefixCache,
    // Dropped after `inner`, which reads from it.
    _scratch: Scratch,
}

impl CompressedBackend {
    pub(crate) fn open(
        path: &Path,
        codec: Compression,
        content: Content,
        output_dir: &Path,
        options: &ImageOptions,
    ) -> Result<CompressedBackend, ImageError> {
        let is_disk = matches!(content, Content::Disk(_));
        let expanded = expand(path, codec, output_dir, is_disk)?;
        let scratch = expanded.scratch;
        let len = scratch.file().metadata().map_err(ImageError::Output)?.len();
        let partitions = partitions_of(scratch.path(), content, options)?;
        let bmap = super::bmap_of(path, codec_suffix(codec))?;
        let inner = Ext4Backend::open(scratch.path(), partitions, bmap)?;
        Ok(CompressedBackend {
            input: path.to_path_buf(),
            codec,
            inner,
            len,
            boundaries: expanded.boundaries,
            prefixes: PrefixCache::default(),
            _scratch: scratch,
        })
    }
}

impl ImageBackend for CompressedBackend {
    fn facts(&mut self) -> Result<Vec<ImageFacts>, ImageError> {
        self.inner.facts()
    }

    fn partitions(&self) -> Vec<disk::PartitionId> {
        self.inner.partitions()
    }

    fn apply(&mut self, plans: &[Plan], out: &mut TempOutput) -> Result<(), ImageError> {
        let mut sink = Recompressing::new(Start {
            out: &mut *out,
            input: &self.input,
            codec: self.codec,
            len: self.len,
            boundaries: &self.boundaries,
            prefixes: &mut self.prefixes,
        });
        let read_or_write = |e: io::Error| match InputRead::take(e) {
            Ok(InputRead { path, source }) => ImageError::Open { path, source },
            Err(e) => ImageError::Output(e),
        };
        let bmap = self
            .inner
            .write_raw(plans, &mut sink)
            .map_err(|e| match e {
                ImageError::Output(e) => read_or_write(e),
                other => other,
            })?;
        sink.finish().map_err(read_or_write)?;
        if let Some(bmap) = bmap {
            let path = Bmap::for_output(out.final_path(), codec_suffix(self.codec));
            out.add_sidecar(path, bmap.into_bytes());
        }
        Ok(())
    }
}

/// Reads files out of a compressed raw image for `verify`.
pub(crate) struct CompressedReader {
    pub(crate) inner: Ext4Reader,
    /// The expanded image, shared by the readers of its partitions.
    _scratch: Arc<Scratch>,
}

impl CompressedReader {
    /// One reader for a raw filesystem image, one per partition chosen
    /// for a disk image, over one expansion of it.
    pub(crate) fn open(
        path: &Path,
        codec: Compression,
        content: Content,
        options: &ImageOptions,
    ) -> Result<Vec<super::SlotReader>, ImageError> {
        let dir = std::env::temp_dir();
        let scratch = Arc::new(expand(path, codec, &dir, false)?.scratch);
        let partitions = partitions_of(scratch.path(), content, options)?;
        let slots: Vec<Option<disk::Partition>> = if partitions.is_empty() {
            vec![None]
        } else {
            partitions.into_iter().map(Some).collect()
        };
        slots
            .into_iter()
            .map(|p| {
                let inner = Ext4Reader::open(scratch.path(), p.as_ref().map(|p| p.region()))?;
                let reader = CompressedReader {
                    inner,
                    _scratch: Arc::clone(&scratch),
                };
                Ok((p, Box::new(reader) as Box<dyn ImageReader>))
            })
            .collect()
    }
}

impl ImageReader for CompressedReader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        self.inner.lookup(path, max_content)
    }

    fn fsck(&mut self) -> Option<Result<(), String>> {
        self.inner.fsck()
    }
}
