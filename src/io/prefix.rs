//! Kept prefixes: an output that starts with the input's own (compressed)
//! bytes up to a boundary, and the SHA-256 state after them, computed once
//! and reused, since every serial of a batch keeps the same prefix (and the
//! tar scan cache keeps the states for the next run).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::output::{self, TempOutput};
use super::sha256::Sha256;

/// The start of an output: new bytes, then the input's bytes in a range.
pub(crate) type PrefixKey = (Vec<u8>, u64, u64);

/// Which side failed while keeping a prefix.
#[derive(Debug)]
pub(crate) enum KeepError {
    /// Reading the input.
    Read(io::Error),
    /// Writing the output.
    Write(io::Error),
}

/// The SHA-256 states after outputs' kept prefixes.
#[derive(Default)]
pub(crate) struct PrefixCache {
    entries: Vec<(PrefixKey, Sha256)>,
    /// A state was computed since [`PrefixCache::seed`]: worth caching.
    pub(crate) added: bool,
}

/// States kept: a plan keeps one prefix; a few cover plans whose first
/// change moves (a zstd header with another content size).
const PREFIX_STATES: usize = 4;

impl PrefixCache {
    /// SHA-256 state after `head` and then the input's bytes `from..end`
    /// (the input's own head may be replaced, e.g. a zstd frame header).
    pub(crate) fn state(
        &mut self,
        file: &File,
        head: &[u8],
        from: u64,
        end: u64,
    ) -> io::Result<Sha256> {
        let key = (head.to_vec(), from, end);
        if let Some((_, state)) = self.entries.iter().find(|(k, _)| *k == key) {
            return Ok(state.clone());
        }
        let mut start = Sha256::new();
        start.update(head);
        let state = output::hash_range(start, file, from, end.saturating_sub(from))?;
        if self.entries.len() == PREFIX_STATES {
            self.entries.remove(0);
        }
        self.entries.push((key, state.clone()));
        self.added = true;
        Ok(state)
    }

    /// Starts `out` with the input's bytes before bit `bit` (a block
    /// boundary of a gzip or bzip2 stream) and returns the byte that holds
    /// the bits before `bit` in its partial byte (0 when `bit` is on a byte
    /// boundary): the tail writer carries them on.
    pub(crate) fn keep_bits(
        &mut self,
        file: &File,
        bit: u64,
        out: &mut TempOutput,
    ) -> Result<u8, KeepError> {
        let keep = bit / 8;
        let hashed = self.state(file, &[], 0, keep).map_err(KeepError::Read)?;
        out.splice_prefix(file, keep, hashed)
            .map_err(KeepError::Write)?;
        let mut last = [0u8; 1];
        if bit % 8 != 0 {
            file.read_exact_at(&mut last, keep)
                .map_err(KeepError::Read)?;
        }
        Ok(last[0])
    }

    pub(crate) fn entries(&self) -> &[(PrefixKey, Sha256)] {
        &self.entries
    }

    /// Starts from states a cached scan kept.
    pub(crate) fn seed(&mut self, entries: Vec<(PrefixKey, Sha256)>) {
        self.entries = entries;
        self.entries.truncate(PREFIX_STATES);
        self.added = false;
    }
}
