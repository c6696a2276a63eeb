//! [`Inspect`] for the readers that hold an ext2/3/4 filesystem: raw or in
//! a disk image, sparse, or expanded from a compressed file. The tar and
//! staging-directory readers have their own, in their modules.

use std::io::Write;

use super::compressed::CompressedReader;
use super::ext4::Ext4Reader;
use super::sparse::SparseReader;
use super::{FileMeta, ImageError, Inspect, Listed};
use crate::plan::ImagePath;

impl Inspect for Ext4Reader {
    fn list(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
    ) -> Result<Option<Vec<Listed>>, ImageError> {
        self.image.list(path, recursive)
    }

    fn cat(
        &mut self,
        path: &ImagePath,
        out: &mut dyn Write,
    ) -> Result<Option<FileMeta>, ImageError> {
        self.image.cat(path, out)
    }
}

impl Inspect for SparseReader {
    fn list(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
    ) -> Result<Option<Vec<Listed>>, ImageError> {
        self.image.list(path, recursive)
    }

    fn cat(
        &mut self,
        path: &ImagePath,
        out: &mut dyn Write,
    ) -> Result<Option<FileMeta>, ImageError> {
        self.image.cat(path, out)
    }
}

impl Inspect for CompressedReader {
    fn list(
        &mut self,
        path: Option<&ImagePath>,
        recursive: bool,
    ) -> Result<Option<Vec<Listed>>, ImageError> {
        self.inner.list(path, recursive)
    }

    fn cat(
        &mut self,
        path: &ImagePath,
        out: &mut dyn Write,
    ) -> Result<Option<FileMeta>, ImageError> {
        self.inner.cat(path, out)
    }
}
