//! What a cut inside an xz block needs that only decoding the block up to
//! the cut gives, kept by the tar scan cache (`image/tar/cached.rs`) so
//! that a warm run decodes nothing up to the cut: the check's state over
//! the block's bytes before the cut, the bytes the encoder is primed with
//! (the last MiB before it at most), and the uncompressed bytes the
//! writer read from the cut on (up to the first change, usually a few
//! hundred KiB). Like a gzip boundary's window, these are bytes of the
//! base image (SECURITY.md).
//!
//! A state is used only for the cut it was made at (block, chunk and
//! uncompressed offsets, the dictionary's length and the check's kind
//! must match); the input past the bytes kept is decoded from the block's
//! start only if a writer reads that far.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use super::primed::BlockCheck;
use super::Boundary;
use crate::cache::format::{Dec, Enc};
use crate::io::sha256::Sha256;

/// The most uncompressed bytes after a cut a state keeps.
const AHEAD: usize = 3 << 20;
/// States kept: a batch's outputs share one cut; a few cover plans whose
/// first change moves.
const STATES: usize = 2;

/// The dictionary and check at a cut, and input bytes after it.
#[derive(Clone)]
pub(crate) struct CutState {
    /// File offset of the block's header, offset of the chunk in its
    /// LZMA2 data, and uncompressed bytes before the cut (in the file).
    pub(crate) offset: u64,
    pub(crate) at: u64,
    pub(crate) out: u64,
    pub(crate) check: BlockCheck,
    pub(crate) dict: Vec<u8>,
    pub(crate) ahead: Vec<u8>,
}

impl CutState {
    /// Whether this state is the one for a cut at block `offset`, chunk
    /// `at` and uncompressed `out`, whose encoder takes `dict_len` bytes
    /// and whose block has `check`'s kind.
    pub(super) fn fits(
        &self,
        offset: u64,
        at: u64,
        out: u64,
        dict_len: u64,
        check: &BlockCheck,
    ) -> bool {
        (self.offset, self.at, self.out) == (offset, at, out)
            && self.dict.len() as u64 == dict_len
            && self.check.kind() == check.kind()
    }

    fn boundary_matches(&self, b: &Boundary) -> bool {
        b.offset == self.offset && b.out == self.out && b.chunk.is_some_and(|c| c.at == self.at)
    }

    /// Appends the state to a cache payload.
    pub(crate) fn put(&self, e: &mut Enc) {
        e.u64(self.offset);
        e.u64(self.at);
        e.u64(self.out);
        e.u8(self.check.kind());
        e.bytes(&self.check.export());
        e.bytes(&self.dict);
        e.bytes(&self.ahead);
    }

    /// A state as [`CutState::put`] wrote it, if its fields are
    /// consistent: a known check whose state has the right length, at most
    /// a MiB of dictionary and [`AHEAD`] bytes after the cut, a chunk past
    /// the block's header and a dictionary no longer than the bytes before
    /// the cut.
    pub(crate) fn get(d: &mut Dec) -> Option<CutState> {
        let (offset, at, out) = (d.u64()?, d.u64()?, d.u64()?);
        let kind = d.u8()?;
        let check = BlockCheck::import(kind, d.bytes()?)?;
        let dict = d.bytes()?.to_vec();
        let ahead = d.bytes()?.to_vec();
        let ok = offset >= 12
            && at > 0
            && dict.len() as u64 <= super::cut::PRIME.min(out)
            && ahead.len() <= AHEAD;
        ok.then_some(CutState {
            offset,
            at,
            out,
            check,
            dict,
            ahead,
        })
    }
}

/// The states of the cuts used, kept across runs by the scan cache.
#[derive(Default)]
pub(crate) struct CutStates {
    states: Vec<CutState>,
    /// A state was added since [`CutStates::seed`]: worth caching.
    pub(crate) added: bool,
}

impl CutStates {
    /// The state for the cut at `b`, if one is known.
    pub(crate) fn find(&self, b: &Boundary) -> Option<&CutState> {
        self.states.iter().find(|s| s.boundary_matches(b))
    }

    /// Notes a state made by decoding (replacing one for the same cut).
    pub(crate) fn add(&mut self, state: CutState) {
        self.states
            .retain(|s| (s.offset, s.at, s.out) != (state.offset, state.at, state.out));
        if self.states.len() == STATES {
            self.states.remove(0);
        }
        self.states.push(state);
        self.added = true;
    }

    pub(crate) fn states(&self) -> &[CutState] {
        &self.states
    }

    /// Starts from states a cached scan kept.
    pub(crate) fn seed(&mut self, mut states: Vec<CutState>) {
        states.truncate(STATES);
        self.states = states;
        self.added = false;
    }
}

/// A state made by decoding, still missing the bytes the writer reads
/// after the cut (which [`Tee`] notes).
pub(crate) struct Fresh {
    pub(super) state: CutState,
    pub(super) seen: Arc<Mutex<Vec<u8>>>,
}

impl Fresh {
    /// The state, with the bytes read after the cut so far.
    pub(crate) fn state(self) -> CutState {
        let mut state = self.state;
        state.ahead = std::mem::take(&mut *crate::sync::lock(&self.seen));
        state
    }
}

/// Passes a reader on, noting the first [`AHEAD`] bytes read.
pub(crate) struct Tee<R> {
    inner: R,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read> Tee<R> {
    pub(crate) fn new(inner: R) -> (Tee<R>, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            Tee {
                inner,
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut seen = crate::sync::lock(&self.seen);
        let room = AHEAD.saturating_sub(seen.len()).min(n);
        seen.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

/// What starts a decoder from a block's start.
type Start = Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>;

/// A reader started only when first read: a decoder from the block's
/// start, whose first `skip` bytes (those before the cut and those kept
/// after it) are dropped.
pub(crate) struct Lazy {
    start: Option<Start>,
    inner: Option<Box<dyn Read + Send>>,
    skip: u64,
}

impl Lazy {
    pub(crate) fn new(
        start: impl FnOnce() -> io::Result<Box<dyn Read + Send>> + Send + 'static,
        skip: u64,
    ) -> Lazy {
        Lazy {
            start: Some(Box::new(start)),
            inner: None,
            skip,
        }
    }
}

impl Read for Lazy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.is_none() {
            let start = self
                .start
                .take()
                .ok_or_else(|| io::Error::other("the xz decoder failed to start before"))?;
            let mut inner = start()?;
            tracing::info!(
                "xz: the scan cache's bytes after the cut are used up; decoding the block again"
            );
            let skipped = io::copy(&mut (&mut inner).take(self.skip), &mut io::sink())?;
            if skipped != self.skip {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            self.inner = Some(inner);
        }
        self.inner.as_mut().expect("set above").read(buf)
    }
}

impl BlockCheck {
    /// The check's kind: the stream flags' check id.
    pub(crate) fn kind(&self) -> u8 {
        match self {
            BlockCheck::None => 0,
            BlockCheck::Crc32(_) => 1,
            BlockCheck::Crc64(_) => 4,
            BlockCheck::Sha256(_) => 10,
        }
    }

    /// The state so far, to continue later with [`BlockCheck::import`].
    pub(crate) fn export(&self) -> Vec<u8> {
        match self {
            BlockCheck::None => Vec::new(),
            BlockCheck::Crc32(h) => h.clone().finalize().to_le_bytes().to_vec(),
            BlockCheck::Crc64(c) => c.to_le_bytes().to_vec(),
            BlockCheck::Sha256(h) => h.export(),
        }
    }

    /// A state [`BlockCheck::export`] gave, if it fits the kind.
    pub(crate) fn import(kind: u8, state: &[u8]) -> Option<BlockCheck> {
        Some(match kind {
            0 => state.is_empty().then_some(BlockCheck::None)?,
            1 => BlockCheck::Crc32(crc32fast::Hasher::new_with_initial(u32::from_le_bytes(
                state.try_into().ok()?,
            ))),
            4 => BlockCheck::Crc64(u64::from_le_bytes(state.try_into().ok()?)),
            10 => BlockCheck::Sha256(Sha256::import(state)?),
            _ => return None,
        })
    }
}
