//! The codec layer around a raw image (`system.img.zst`, `rootfs.ext4.gz`,
//! `core-image.wic.xz`): the input is decompressed once into a private
//! scratch file (`expand`), the filesystem inside is edited like any raw
//! image, and the output streams from that scratch file through the
//! input's codec (`recompress`, with the encoders of `encoders`).
//!
//! A disk image keeps the input's compressed bytes before its rootfs
//! partition where the codec has boundaries (gzip, bzip2, zstd). A raw
//! ext4 image has nothing before its first change to keep: ext4 changes
//! its superblock (at byte 1024) on every write. A multi-block xz input,
//! raw or disk, keeps every block that holds no changed byte, wherever it
//! lies (`xz::Sparse`, given the changed ranges).

mod encoders;
mod expand;
mod recompress;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use self::expand::expand;
use self::recompress::{InputRead, Recompressing, Start};
use super::ext4::{Outlet, PatchOutlet};
use super::volume::{Changes, FileVolume, Volume};
use super::ImageError;
use crate::compress::boundary::Boundary;
use crate::compress::Compression;
use crate::io::bmap::Bmap;
use crate::io::output::{Scratch, TempOutput};
use crate::io::prefix::PrefixCache;

/// A compressed raw image, decompressed into a scratch file: the base the
/// layers inside read, as an uncompressed image's own file would be.
pub(crate) struct Base {
    pub(crate) scratch: Scratch,
    /// The raw image's length.
    pub(crate) len: u64,
    /// The input's boundaries before partition starts (a disk image
    /// being written).
    boundaries: Vec<Boundary>,
}

impl Base {
    /// Decompresses `path` into a scratch file in `dir`; `for_disk` notes
    /// the codec's boundaries before partition starts, so that a rewrite
    /// can keep the compressed bytes before the rootfs.
    pub(crate) fn expand(
        path: &Path,
        codec: Compression,
        dir: &Path,
        for_disk: bool,
    ) -> Result<Base, ImageError> {
        let expanded = expand(path, codec, dir, for_disk)?;
        let len = expanded
            .scratch
            .file()
            .metadata()
            .map_err(ImageError::Output)?
            .len();
        Ok(Base {
            scratch: expanded.scratch,
            len,
            boundaries: expanded.boundaries,
        })
    }

    /// The decompressed bytes, as a volume.
    pub(crate) fn volume(&self) -> Result<Box<dyn Volume>, ImageError> {
        let file = File::open(self.scratch.path()).map_err(ImageError::Output)?;
        Ok(Box::new(FileVolume::new(file, self.len)))
    }

    /// The way out: the decompressed bytes with the changes patched in,
    /// through the input's codec. `path` is the compressed input.
    pub(crate) fn outlet(
        self,
        path: &Path,
        codec: Compression,
    ) -> Result<RecompressOutlet, ImageError> {
        let bmap = super::bmap_of(path, codec.facts().suffix)?;
        let raw = PatchOutlet::new(self.scratch.path(), self.len, bmap, path)?;
        Ok(RecompressOutlet {
            input: path.to_path_buf(),
            codec,
            raw,
            boundaries: self.boundaries,
            prefixes: PrefixCache::default(),
            _scratch: self.scratch,
        })
    }
}

/// Writes the raw output through the input's codec, keeping the input's
/// compressed bytes before the first change where the codec allows.
pub(crate) struct RecompressOutlet {
    input: PathBuf,
    codec: Compression,
    raw: PatchOutlet,
    /// The input's boundaries before partition starts.
    boundaries: Vec<Boundary>,
    /// The kept prefix's SHA-256 state, shared by every serial of a batch.
    prefixes: PrefixCache,
    // The file `raw` reads.
    _scratch: Scratch,
}

impl Outlet for RecompressOutlet {
    fn write(&mut self, changes: &Changes, out: &mut TempOutput) -> Result<(), ImageError> {
        let changed: Vec<(u64, u64)> = changes
            .iter()
            .map(|(at, data)| (at, at + data.len() as u64))
            .collect();
        let mut sink = Recompressing::new(Start {
            out: &mut *out,
            input: &self.input,
            codec: self.codec,
            len: self.raw.len(),
            boundaries: &self.boundaries,
            prefixes: &mut self.prefixes,
            changed: &changed,
        });
        let read_or_write = |e: io::Error| match InputRead::take(e) {
            Ok(InputRead { path, source }) => ImageError::Open { path, source },
            Err(e) => ImageError::Output(e),
        };
        let bmap = self
            .raw
            .write_raw(changes, &mut sink)
            .map_err(|e| match e {
                ImageError::Output(e) => read_or_write(e),
                other => other,
            })?;
        sink.finish().map_err(read_or_write)?;
        if let Some(bmap) = bmap {
            let path = Bmap::for_output(out.final_path(), self.codec.facts().suffix);
            out.add_sidecar(path, bmap.into_bytes());
        }
        Ok(())
    }
}
