//! Blocks encoded anew by a rewrite that keeps the rest (`sparse.rs`):
//! each on a thread of its own, with the filters of the input block it
//! replaces (the LZMA2 dictionary at most `DICT_MAX`), into an unlinked
//! scratch file, so that memory holds no block; and the headers written
//! for them once their sizes are known.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use liblzma_sys as sys;

use super::blocks::header_filters;
use super::layout::put_vli;
use super::primed::BlockCheck;
use super::{vli, LZMA2};
use crate::io::output::Scratch;

/// The largest LZMA2 dictionary a block encoded anew gets (the input's,
/// if smaller). liblzma's preset-6 encoder needs about 11 x its dictionary
/// (`lzma_raw_encoder_memusage`: 94 MiB at xz's default 8 MiB, 37 MiB at
/// 3 MiB), and such blocks are encoded two at a time on two cores: 3 MiB
/// keeps both under 80 MiB. Only the bytes encoded anew, a small part of
/// the file, pay for the smaller dictionary (docs/formats.md has the
/// numbers). A constant, not a function of the core count, so that every
/// machine writes the same bytes.
pub(crate) const DICT_MAX: u32 = 3 << 20;

/// What the block encoders together may take (liblzma's own estimate);
/// one always runs.
pub(crate) const ENCODERS_MEMORY: u64 = 80 << 20;

/// How many raw pieces may wait for an encoder thread.
const QUEUED: usize = 2;

/// LZMA2's dictionary size property byte for at most `dict` bytes.
pub(super) fn dict_prop(dict: u32) -> u8 {
    (0u8..40)
        .rev()
        .find(|&p| (2 | u32::from(p & 1)) << (p / 2 + 11) <= dict)
        .unwrap_or(0)
}

#[cfg(test)]
pub(super) fn dict_of(prop: u8) -> u32 {
    (2 | u32::from(prop & 1)) << (prop / 2 + 11)
}

/// liblzma's memory estimate for a preset-6 LZMA2 encoder with `dict`.
pub(crate) fn encoder_memory(dict: u32) -> u64 {
    // SAFETY: lzma_options_lzma is plain data for which all zeros is
    // valid; lzma_lzma_preset sets every field the estimate reads.
    let mut opts: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
    // SAFETY: `opts` is a valid, writable lzma_options_lzma.
    if unsafe { sys::lzma_lzma_preset(&mut opts, 6) } != 0 {
        return u64::MAX;
    }
    opts.dict_size = dict;
    let filters = super::primed::lzma2_chain(&mut opts);
    // SAFETY: `filters` is terminated by LZMA_VLI_UNKNOWN and its options
    // outlive the call, which only reads them.
    unsafe { sys::lzma_raw_encoder_memusage(filters.as_ptr()) }
}

/// A block header's filter flags (from after its size fields to its
/// padding), with the LZMA2 dictionary property at most `DICT_MAX`; None
/// when the chain is not one the encoder takes.
pub(super) fn filter_flags(header: &[u8]) -> Option<Vec<u8>> {
    header_filters(header)?;
    let flags = *header.get(1)?;
    let mut at = 2;
    for bit in [0x40, 0x80] {
        if flags & bit != 0 {
            vli(header, &mut at)?;
        }
    }
    let start = at;
    let mut lzma2_prop = None;
    for _ in 0..=(flags & 3) {
        let id = vli(header, &mut at)?;
        let n = usize::try_from(vli(header, &mut at)?).ok()?;
        if id == LZMA2 && n == 1 {
            lzma2_prop = Some(at - start);
        }
        at += n;
    }
    let mut out = header.get(start..at)?.to_vec();
    let p = lzma2_prop?;
    out[p] = out[p].min(dict_prop(DICT_MAX));
    Some(out)
}

/// A block header with both sizes and `filter_flags` (whose first byte
/// count is `filters`).
pub(super) fn block_header(
    filters: u8,
    filter_flags: &[u8],
    compressed: u64,
    uncompressed: u64,
) -> Vec<u8> {
    let mut h = vec![0u8, (filters - 1) | 0x40 | 0x80];
    put_vli(&mut h, compressed);
    put_vli(&mut h, uncompressed);
    h.extend_from_slice(filter_flags);
    h.resize((h.len() + 4).div_ceil(4) * 4 - 4, 0);
    h[0] = ((h.len() + 4) / 4 - 1) as u8;
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// An encoder thread, giving its block when done.
pub(super) type Job = JoinHandle<io::Result<Done>>;

/// A block encoded anew: its data (LZMA2 with its end marker) in an
/// unlinked scratch file.
pub(super) struct Done {
    pub(super) data: File,
    pub(super) compressed: u64,
    pub(super) uncompressed: u64,
    pub(super) check: Vec<u8>,
    pub(super) filter_flags: Vec<u8>,
    pub(super) filters: u8,
}

impl Done {
    /// The block's header, with its sizes.
    pub(super) fn header(&self) -> Vec<u8> {
        block_header(
            self.filters,
            &self.filter_flags,
            self.compressed,
            self.uncompressed,
        )
    }
}

/// A thread encoding one block like the one with `header` (its filters,
/// the dictionary at most `DICT_MAX`) and check `check_id`, from the raw
/// pieces sent to it until the sender is dropped.
pub(super) fn spawn_encoder(
    header: &[u8],
    check_id: u8,
    dir: &Path,
) -> io::Result<(SyncSender<Vec<u8>>, Job)> {
    let filter_flags =
        filter_flags(header).ok_or_else(|| io::Error::other("unexpected xz filters"))?;
    let filters = (header[1] & 3) + 1;
    let data = Scratch::create_in(dir, "xz-block")?.into_unlinked()?;
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUED);
    let job = std::thread::Builder::new().name("xz block".into()).spawn(
        move || -> io::Result<Done> {
            // The encoder's filters from a header of the new flags alone.
            let mut bare = vec![0u8, filters - 1];
            bare.extend_from_slice(&filter_flags);
            let chain =
                header_filters(&bare).ok_or_else(|| io::Error::other("unexpected xz filters"))?;
            let stream =
                liblzma::stream::Stream::new_raw_encoder(&chain).map_err(io::Error::other)?;
            let mut check =
                BlockCheck::new(check_id).ok_or_else(|| io::Error::other("unknown xz check"))?;
            let mut encoder = liblzma::write::XzEncoder::new_stream(
                BufWriter::with_capacity(1 << 20, &data),
                stream,
            );
            let mut uncompressed = 0u64;
            for piece in rx {
                check.update(&piece);
                uncompressed += piece.len() as u64;
                encoder.write_all(&piece)?;
            }
            let mut out = encoder.finish()?;
            out.flush()?;
            drop(out);
            let compressed = data.metadata()?.len();
            Ok(Done {
                data,
                compressed,
                uncompressed,
                check: check.finish(),
                filter_flags,
                filters,
            })
        },
    )?;
    Ok((tx, job))
}
