//! Android sparse images.
//! (Being written; see the ext4 issue.)

use std::path::Path;

use thiserror::Error;

/// The sparse file magic, little-endian at offset 0.
pub const MAGIC: u32 = 0xed26_ff3a;

use super::{Found, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::output::TempOutput;
use crate::overlay::{ImagePath, Plan};

#[derive(Debug, Error)]
pub enum SparseError {
    #[error("sparse image support is not built yet")]
    NotYet,
}

pub struct SparseBackend;

impl SparseBackend {
    pub fn open(_path: &Path) -> Result<SparseBackend, SparseError> {
        Err(SparseError::NotYet)
    }
}

impl ImageBackend for SparseBackend {
    fn facts(&mut self) -> Result<ImageFacts, ImageError> {
        Err(SparseError::NotYet.into())
    }
    fn apply(&mut self, _plan: &Plan, _out: &mut TempOutput) -> Result<(), ImageError> {
        Err(SparseError::NotYet.into())
    }
}

pub struct SparseReader;

impl SparseReader {
    pub fn open(_path: &Path) -> Result<SparseReader, SparseError> {
        Err(SparseError::NotYet)
    }
}

impl ImageReader for SparseReader {
    fn lookup(&mut self, _path: &ImagePath, _max: u64) -> Result<Option<Found>, ImageError> {
        Err(SparseError::NotYet.into())
    }
}
