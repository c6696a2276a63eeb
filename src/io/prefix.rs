//! Kept prefixes: an output that starts with the input's own (compressed)
//! bytes up to a boundary, and the SHA-256 state after them, computed once
//! and reused, since every serial of a batch keeps the same prefix (and the
//! tar scan cache keeps the states for the next run).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::thread::{Scope, ScopedJoinHandle};

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

    /// [`PrefixCache::keep_bits`] with the prefix copied and its SHA-256
    /// state computed on threads of `scope` while the caller writes what
    /// follows into the returned [`AfterPrefix`]: the state of a cold
    /// run's prefix is not known yet, and hashing it (77 MB for a 256 MB
    /// `.tbz2`), copying it, writing it to disk and recompressing the tail
    /// block one after the other left a core idle at the end of every cold
    /// run.
    pub(crate) fn keep_bits_hashing<'scope, 'env>(
        &'env mut self,
        scope: &'scope Scope<'scope, 'env>,
        file: &'env File,
        bit: u64,
        out: &'env mut TempOutput,
    ) -> Result<(u8, AfterPrefix<'scope, 'env>), KeepError> {
        let keep = bit / 8;
        let mut last = [0u8; 1];
        if bit % 8 != 0 {
            file.read_exact_at(&mut last, keep)
                .map_err(KeepError::Read)?;
        }
        let copier = out.prefix_copier().map_err(KeepError::Write)?;
        let copying = scope.spawn(move || copier.copy(file, keep));
        let hashing = scope.spawn(move || self.state(file, &[], 0, keep));
        let after = AfterPrefix {
            out,
            keep,
            threads: Some((copying, hashing)),
            held: Vec::new(),
            read_failed: None,
        };
        Ok((last[0], after))
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

type Threads<'scope> = (
    ScopedJoinHandle<'scope, io::Result<()>>,
    ScopedJoinHandle<'scope, io::Result<Sha256>>,
);

/// What an [`AfterPrefix`] holds in memory at most while the prefix is
/// still being hashed; past it, writing waits for the hash.
const HOLD: usize = 4 << 20;

/// The output after a kept prefix still being copied and hashed
/// ([`PrefixCache::keep_bits_hashing`]): writes are held (up to [`HOLD`]
/// bytes) until both are done, then the held bytes follow the prefix.
pub(crate) struct AfterPrefix<'scope, 'env> {
    out: &'env mut TempOutput,
    keep: u64,
    /// Copying the prefix, and hashing it.
    threads: Option<Threads<'scope>>,
    held: Vec<u8>,
    /// Reading the input for the hash failed (a `Write` error can only
    /// say so through [`AfterPrefix::read_error`]).
    read_failed: Option<io::Error>,
}

impl AfterPrefix<'_, '_> {
    /// Waits for the copy and the hash, and writes the held bytes.
    fn settle(&mut self) -> Result<(), KeepError> {
        let Some((copying, hashing)) = self.threads.take() else {
            return Ok(());
        };
        let copied = copying.join();
        let hashed = hashing.join();
        let hashed = match hashed {
            Ok(result) => result.map_err(KeepError::Read)?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match copied {
            Ok(result) => result.map_err(KeepError::Write)?,
            Err(panic) => std::panic::resume_unwind(panic),
        }
        self.out
            .adopt_prefix(self.keep, hashed)
            .map_err(KeepError::Write)?;
        let held = std::mem::take(&mut self.held);
        self.out.write_all(&held).map_err(KeepError::Write)
    }

    fn settle_for_write(&mut self) -> io::Result<()> {
        self.settle().map_err(|e| match e {
            KeepError::Write(e) => e,
            KeepError::Read(e) => {
                let said = io::Error::new(e.kind(), e.to_string());
                self.read_failed = Some(e);
                said
            }
        })
    }

    /// Everything written is in the output (the prefix first).
    pub(crate) fn finish(mut self) -> Result<(), KeepError> {
        if let Some(e) = self.read_failed.take() {
            return Err(KeepError::Read(e));
        }
        self.settle()?;
        self.out.flush().map_err(KeepError::Write)
    }

    /// The input read error behind a failed write, if that is what it was.
    pub(crate) fn read_error(&mut self) -> Option<io::Error> {
        self.read_failed.take()
    }
}

impl Write for AfterPrefix<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.threads.is_some() {
            if self.held.len() + buf.len() <= HOLD {
                self.held.extend_from_slice(buf);
                return Ok(buf.len());
            }
            self.settle_for_write()?;
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.threads.is_some() {
            return Ok(());
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// The tail written while the prefix is hashed lands after it, held
    /// or (past [`HOLD`]) written once the hash is in, and the digest is
    /// the output's.
    #[test]
    fn writes_after_a_prefix_being_hashed_follow_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let input: Vec<u8> = (0..1_000_000u32).map(|i| ((i * 7) >> 3) as u8).collect();
        let src = dir.path().join("in");
        std::fs::write(&src, &input).unwrap();
        let file = File::open(&src).unwrap();
        let tail: Vec<u8> = (0..HOLD as u32 + 300_000)
            .map(|i| (i % 251) as u8)
            .collect();
        for (bit, len) in [(8 * 500_000 + 3, 1000), (8 * 400_000, tail.len())] {
            let mut out = TempOutput::create(&dir.path().join(format!("out{bit}"))).unwrap();
            let mut prefixes = PrefixCache::default();
            let last = std::thread::scope(|scope| {
                let (last, mut after) = prefixes
                    .keep_bits_hashing(scope, &file, bit, &mut out)
                    .unwrap();
                for chunk in tail[..len].chunks(65_536) {
                    after.write_all(chunk).unwrap();
                }
                after.finish().unwrap();
                last
            });
            let keep = (bit / 8) as usize;
            assert_eq!(last, if bit % 8 == 0 { 0 } else { input[keep] });
            let emitted = out.commit_without_sidecar().unwrap();
            let mut want = input[..keep].to_vec();
            want.extend_from_slice(&tail[..len]);
            assert!(std::fs::read(&emitted.path).unwrap() == want, "bit {bit}");
            assert_eq!(emitted.sha256, hex::encode(sha2::Sha256::digest(&want)));
        }
    }
}
