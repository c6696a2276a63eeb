//! Inputs the xz unit tests share: files as `xz -T` writes them (liblzma's
//! threaded encoder: blocks that carry their sizes), and data that
//! compresses somewhat.

use std::io::Write;

use liblzma::stream::{Check, MtStreamBuilder};

/// `data` as an xz file at `preset`, in blocks of `block` bytes encoded on
/// `threads` threads, with `check`.
pub(super) fn xz_at(preset: u32, data: &[u8], threads: u32, block: u64, check: Check) -> Vec<u8> {
    let stream = MtStreamBuilder::new()
        .preset(preset)
        .threads(threads)
        .block_size(block)
        .check(check)
        .encoder()
        .unwrap();
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// [`xz_at`] preset 1: quick, for tests of the layout.
pub(super) fn xz(data: &[u8], threads: u32, block: u64, check: Check) -> Vec<u8> {
    xz_at(1, data, threads, block, check)
}

/// `n` bytes with short repeats, so blocks compress but not to nothing.
pub(super) fn data(n: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i / 5) % 253) as u8 ^ (i % 7) as u8)
        .collect()
}

/// `n` bytes of which the first `plain` of every 4096 repeat a short
/// pattern and the rest are pseudo-random: an LZMA2 stream of many chunks
/// (each holds at most 64 KiB of compressed data).
pub(super) fn noisy(n: usize, plain: usize) -> Vec<u8> {
    let mut x = 7u64;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            if i % 4096 < plain {
                b"abcdefgh"[i % 8]
            } else {
                (x >> 40) as u8
            }
        })
        .collect()
}
