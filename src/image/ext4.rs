//! ext2/3/4 images: writes through libext2fs, reads through ext4-view.
//! (Being written; see the ext4 issue.)

use std::path::Path;

use thiserror::Error;

use super::{Found, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::output::TempOutput;
use crate::overlay::{ImagePath, Plan};

#[derive(Debug, Error)]
pub enum Ext4Error {
    #[error("ext4 support is not built yet")]
    NotYet,
}

pub struct Ext4Backend;

impl Ext4Backend {
    pub fn open(_path: &Path) -> Result<Ext4Backend, Ext4Error> {
        Err(Ext4Error::NotYet)
    }
}

impl ImageBackend for Ext4Backend {
    fn facts(&mut self) -> Result<ImageFacts, ImageError> {
        Err(Ext4Error::NotYet.into())
    }
    fn apply(&mut self, _plan: &Plan, _out: &mut TempOutput) -> Result<(), ImageError> {
        Err(Ext4Error::NotYet.into())
    }
}

pub struct Ext4Reader;

impl Ext4Reader {
    pub fn open(_path: &Path) -> Result<Ext4Reader, Ext4Error> {
        Err(Ext4Error::NotYet)
    }
}

impl ImageReader for Ext4Reader {
    fn lookup(&mut self, _path: &ImagePath, _max: u64) -> Result<Option<Found>, ImageError> {
        Err(Ext4Error::NotYet.into())
    }
}
