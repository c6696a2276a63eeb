//! [`Inspect`] for the reader of an ext2/3/4 filesystem on any volume: raw
//! or in a disk image, sparse, or expanded from a compressed file. The tar and
//! staging-directory readers have their own, in their modules.

use std::io::Write;

use super::ext4::Ext4Reader;
use super::{FileMeta, ImageError, Inspect, Listed};
use crate::plan::ImagePath;

/// `Inspect` for a reader whose `$field` is an `Ext4Inspector` (or another
/// such reader).
macro_rules! through {
    ($reader:ty, $field:ident) => {
        impl Inspect for $reader {
            fn list(
                &mut self,
                path: Option<&ImagePath>,
                recursive: bool,
            ) -> Result<Option<Vec<Listed>>, ImageError> {
                self.$field.list(path, recursive)
            }

            fn list_each(
                &mut self,
                path: Option<&ImagePath>,
                recursive: bool,
                visit: &mut dyn FnMut(&Listed) -> Result<(), ImageError>,
            ) -> Result<bool, ImageError> {
                self.$field.list_each(path, recursive, visit)
            }

            fn cat(
                &mut self,
                path: &ImagePath,
                out: &mut dyn Write,
            ) -> Result<Option<FileMeta>, ImageError> {
                self.$field.cat(path, out)
            }
        }
    };
}

through!(Ext4Reader, image);
