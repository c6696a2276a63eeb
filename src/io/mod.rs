//! Small I/O adapters every layer shares: positioned reads and windows,
//! raw output sinks, output files with their sidecars, block maps, and
//! progress.

pub mod bmap;
pub(crate) mod heap;
pub mod output;
pub(crate) mod pin;
pub(crate) mod prefix;
pub mod progress;
pub mod read_at;
pub mod sha256;
pub mod sink;
