//! Small I/O pieces: output files with their sidecars, and progress.

pub mod bmap;
pub mod output;
pub mod progress;
