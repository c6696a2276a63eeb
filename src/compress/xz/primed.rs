//! A raw LZMA2 encoder primed with a preset dictionary, and an xz block's
//! check computed as its data streams.
//!
//! liblzma's LZMA2 encoder given a preset dictionary starts its output
//! with a chunk that resets the state and sets new properties but keeps
//! the dictionary (control byte `0xC0`, `lzma2_encoder.c`: `need_dictionary_reset`
//! is false when `preset_dict` is set), so its output is valid right after
//! any chunk of another LZMA2 stream whose decoder holds those bytes as its
//! dictionary. The `liblzma` crate's `LzmaOptions` has no setter for
//! `preset_dict`, so this uses liblzma-sys, the C API the crate wraps.

use std::io::{self, Write};

use liblzma_sys as sys;

use crate::io::sha256::Sha256;

/// The preset whose match finder and nice length the encoder takes (xz's
/// default); the dictionary size is the input's.
const PRESET: u32 = 6;

/// A raw LZMA2 encoder (no xz framing) writing into `sink`, ending its
/// data with the end marker.
pub(crate) struct PrimedEncoder<W: Write> {
    strm: Box<sys::lzma_stream>,
    /// Taken by `finish`.
    sink: Option<W>,
    buf: Vec<u8>,
    /// Compressed bytes written to the sink.
    pub(crate) written: u64,
}

// SAFETY: the stream's pointers are liblzma's own allocations (and the
// input and output buffers only during one `lzma_code` call); nothing is
// shared with another thread.
unsafe impl<W: Write + Send> Send for PrimedEncoder<W> {}

/// A filter chain of LZMA2 alone with `opts`, as liblzma's raw coders
/// take it (terminated by LZMA_VLI_UNKNOWN); it points into `opts`.
pub(super) fn lzma2_chain(opts: &mut sys::lzma_options_lzma) -> [sys::lzma_filter; 2] {
    [
        sys::lzma_filter {
            id: sys::LZMA_FILTER_LZMA2,
            options: (opts as *mut sys::lzma_options_lzma).cast(),
        },
        sys::lzma_filter {
            id: sys::LZMA_VLI_UNKNOWN,
            options: std::ptr::null_mut(),
        },
    ]
}

fn lzma_error(what: &str, ret: sys::lzma_ret) -> io::Error {
    io::Error::other(format!(
        "liblzma's LZMA2 encoder failed ({what}: code {ret})"
    ))
}

impl<W: Write> PrimedEncoder<W> {
    /// An encoder with a `dict_size` dictionary holding `dict` (its last
    /// `dict_size` bytes) already.
    pub(crate) fn new(sink: W, dict_size: u32, dict: &[u8]) -> io::Result<PrimedEncoder<W>> {
        let dict = &dict[dict.len().saturating_sub(dict_size as usize)..];
        // SAFETY: lzma_options_lzma is plain data (integers, enums and
        // pointers) for which all zeros is a valid value; lzma_lzma_preset
        // then sets every field it reads.
        let mut opts: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
        // SAFETY: `opts` is a valid, writable lzma_options_lzma.
        if unsafe { sys::lzma_lzma_preset(&mut opts, PRESET) } != 0 {
            return Err(io::Error::other("liblzma has no preset 6"));
        }
        opts.dict_size = dict_size;
        opts.preset_dict = dict.as_ptr();
        opts.preset_dict_size = u32::try_from(dict.len()).map_err(io::Error::other)?;
        let filters = lzma2_chain(&mut opts);
        // SAFETY: all zeros is LZMA_STREAM_INIT, the documented initial
        // value of an lzma_stream.
        let mut strm: Box<sys::lzma_stream> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `strm` is initialised as liblzma requires; `filters` is
        // terminated by LZMA_VLI_UNKNOWN and its options (and the preset
        // dictionary they point at) outlive the call, which copies the
        // dictionary into the encoder's own buffer (lz_encoder.c,
        // lz_encoder_prepare: `memcpy(mf->buffer, preset_dict ...)`) and
        // keeps no pointer to either.
        let ret = unsafe { sys::lzma_raw_encoder(&mut *strm, filters.as_ptr()) };
        if ret != sys::LZMA_OK {
            // SAFETY: lzma_end on a stream whose init failed is allowed.
            unsafe { sys::lzma_end(&mut *strm) };
            return Err(lzma_error("start", ret));
        }
        Ok(PrimedEncoder {
            strm,
            sink: Some(sink),
            buf: vec![0u8; 1 << 16],
            written: 0,
        })
    }

    /// One `lzma_code` call over `input` into the buffer, which is passed
    /// on; returns the input bytes taken and liblzma's answer.
    fn code(
        &mut self,
        input: &[u8],
        action: sys::lzma_action,
    ) -> io::Result<(usize, sys::lzma_ret)> {
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = input.len();
        self.strm.next_out = self.buf.as_mut_ptr();
        self.strm.avail_out = self.buf.len();
        // SAFETY: the stream was initialised by lzma_raw_encoder; next_in
        // and next_out point at `input` and `self.buf`, valid for the
        // lengths given, for the duration of this call.
        let ret = unsafe { sys::lzma_code(&mut *self.strm, action) };
        let taken = input.len() - self.strm.avail_in;
        let made = self.buf.len() - self.strm.avail_out;
        self.strm.next_in = std::ptr::null();
        self.strm.next_out = std::ptr::null_mut();
        if ret != sys::LZMA_OK && ret != sys::LZMA_STREAM_END {
            return Err(lzma_error("encode", ret));
        }
        self.sink
            .as_mut()
            .ok_or_else(|| io::Error::other("the encoder has finished"))?
            .write_all(&self.buf[..made])?;
        self.written += made as u64;
        Ok((taken, ret))
    }

    /// Ends the data with its end marker; returns the sink and the
    /// compressed bytes written.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        while self.code(&[], sys::LZMA_FINISH)?.1 != sys::LZMA_STREAM_END {}
        let sink = self.sink.take().expect("only finish takes the sink");
        Ok((sink, self.written))
    }
}

impl<W: Write> Write for PrimedEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let (taken, _) = self.code(rest, sys::LZMA_RUN)?;
            rest = &rest[taken..];
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        // A flush would end a chunk early; the sink is flushed at the end.
        Ok(())
    }
}

impl<W: Write> Drop for PrimedEncoder<W> {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new`; lzma_end frees it
        // and leaves it ended.
        unsafe { sys::lzma_end(&mut *self.strm) };
    }
}

/// An xz block's check over its uncompressed data, fed as it streams.
#[derive(Clone)]
pub(crate) enum BlockCheck {
    None,
    Crc32(crc32fast::Hasher),
    Crc64(u64),
    Sha256(Sha256),
}

impl BlockCheck {
    /// The check with this id (the stream flags' low nibble), for the ones
    /// liblzma writes.
    pub(crate) fn new(id: u8) -> Option<BlockCheck> {
        Some(match id {
            0 => BlockCheck::None,
            1 => BlockCheck::Crc32(crc32fast::Hasher::new()),
            4 => BlockCheck::Crc64(0),
            10 => BlockCheck::Sha256(Sha256::new()),
            _ => return None,
        })
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            BlockCheck::None => {}
            BlockCheck::Crc32(h) => h.update(data),
            BlockCheck::Crc64(c) => {
                // SAFETY: `data` is valid for reads of its length.
                *c = unsafe { sys::lzma_crc64(data.as_ptr(), data.len(), *c) };
            }
            BlockCheck::Sha256(h) => h.update(data),
        }
    }

    /// The check field as the block stores it (little-endian CRCs).
    pub(crate) fn finish(self) -> Vec<u8> {
        match self {
            BlockCheck::None => Vec::new(),
            BlockCheck::Crc32(h) => h.finalize().to_le_bytes().to_vec(),
            BlockCheck::Crc64(c) => c.to_le_bytes().to_vec(),
            BlockCheck::Sha256(h) => h.finalize().to_vec(),
        }
    }
}
