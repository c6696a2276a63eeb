//! The encoders that recompress a raw image with its input's codec: zstd
//! on all cores in small jobs, xz in one thread with a bounded dictionary,
//! gzip and bzip2 as the codec layer makes them. Each choice is about
//! memory staying bounded whatever the image size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use liblzma::stream::{Check, Filters, LzmaOptions};

use crate::compress::{Compression, Encoder};
use crate::io::output::TempOutput;

/// What the output keeps of a zstd input's first frame header: whether
/// the frame carries a content checksum and whether it records its content
/// size (`zstd FILE` does, `zstd < FILE` cannot). The frame does not record
/// the level; the output uses zstd's default, 3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ZstdFlags {
    checksum: bool,
    content_size: bool,
}

fn zstd_flags(path: &Path) -> ZstdFlags {
    let mut head = [0u8; 32];
    let Ok(n) = File::open(path).and_then(|f| f.read_at(&mut head, 0)) else {
        return ZstdFlags::default();
    };
    let head = &head[..n];
    // pzstd puts a skippable frame (8 bytes and its size) before the first.
    let at = if crate::compress::zstd::after_skippable(head) {
        8 + u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize
    } else {
        0
    };
    let Some(&descriptor) = head.get(at + 4) else {
        return ZstdFlags::default();
    };
    ZstdFlags {
        checksum: descriptor & 0x04 != 0,
        // The size field's flag, or a single segment (which always has it).
        content_size: descriptor >> 6 != 0 || descriptor & 0x20 != 0,
    }
}

/// zstd's worker jobs: by default 4 windows (8 MiB at level 3), with
/// about (4 x workers + 4) such buffers in flight for input and output,
/// which took a 2 GiB image past 110 MiB of memory on 2 cores and 160 MiB
/// on 8. 2 MiB jobs keep it near 40 and 75 MiB.
const ZSTD_JOB_SIZE: u32 = 2 << 20;
/// Each job sees half a window of the data before it (the default at
/// level 3 is an eighth), so smaller jobs cost no ratio: on a 2 GiB
/// rootfs image the output came out 0.2% smaller than with the defaults,
/// for about 5% more CPU time.
const ZSTD_OVERLAP_LOG: u32 = 8;

/// xz output: LZMA2 at preset 6 (`xz`'s default) with a dictionary of at
/// most 6 MiB (or the input's, if smaller), in one thread. Memory is what
/// decides this: `xz -T2 -6` (an 8 MiB dictionary in 24 MiB blocks, each
/// thread holding a match finder of about 11 x the dictionary and its
/// block in and out) peaks near 300 MiB, and even one thread of it in 24
/// MiB blocks needs 165 MiB. Multi-threaded blocks small enough for two
/// threads in 85 MiB (a 2 MiB dictionary, 6 MiB blocks) came out 7.8%
/// larger than `xz -T2 -6`; one thread with a 4 MiB dictionary and no
/// blocks came out 0.4% smaller, in about 50 MiB and the same CPU time, at
/// half the speed on two cores. Against a single-block input (`xz -6`,
/// 8 MiB) the dictionary decides the size: on the benchmark's 2 GiB ext4
/// (58.34 MB) 4 MiB wrote 59.07 MB (+1.3%), 6 MiB 58.58 MB (+0.4%), in
/// 85 MiB peak RSS; 3 MiB in 24 MiB blocks on two threads 60.26 MB
/// (+3.3%). (A multi-block input is not recompressed whole:
/// `xz::Sparse`.) docs/formats.md "Compressed inputs" has the numbers.
const XZ_DICT_MAX: u32 = 6 << 20;

/// The LZMA2 dictionary size in the first block header of an xz file: the
/// output uses no larger one than the input did.
fn xz_input_dict(path: &Path) -> Option<u32> {
    let mut buf = [0u8; 12 + 1024];
    let n = File::open(path).and_then(|f| f.read_at(&mut buf, 0)).ok()?;
    // The stream header (magic, flags, CRC32) is 12 bytes; a block header
    // follows, its first byte giving its size in 4-byte units (0 would be
    // the index of an empty stream).
    let block = buf[..n].get(12..)?;
    let size = (usize::from(*block.first().filter(|&&b| b != 0)?) + 1) * 4;
    let block = block.get(..size)?;
    let flags = block[1];
    let mut at = 2;
    // Compressed and uncompressed sizes, when present.
    for bit in [0x40, 0x80] {
        if flags & bit != 0 {
            vli(block, &mut at)?;
        }
    }
    for _ in 0..=(flags & 3) {
        let id = vli(block, &mut at)?;
        let props = vli(block, &mut at)?;
        if id == 0x21 && props == 1 {
            let p = *block.get(at)?;
            return match p {
                0..=39 => Some((2 | u32::from(p & 1)) << (p / 2 + 11)),
                40 => Some(u32::MAX),
                _ => None,
            };
        }
        at += usize::try_from(props).ok()?;
    }
    None
}

/// An xz variable-length integer at `at`, which it moves past it.
fn vli(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The xz encoder for the output (see XZ_DICT_MAX).
fn xz_encoder(input: &Path) -> io::Result<liblzma::stream::Stream> {
    let dict = xz_input_dict(input).map_or(XZ_DICT_MAX, |d| d.min(XZ_DICT_MAX));
    let mut lzma = LzmaOptions::new_preset(6).map_err(io::Error::other)?;
    lzma.dict_size(dict);
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    let check = File::open(input).map_or(Check::Crc64, |f| crate::compress::xz::input_check(&f));
    liblzma::stream::Stream::new_stream_encoder(&filters, check).map_err(io::Error::other)
}

/// An encoder for the output, like the input's, that will be given `len`
/// bytes.
pub(super) fn encoder_for<'w>(
    codec: Compression,
    input: &Path,
    out: &'w mut TempOutput,
    len: u64,
) -> io::Result<Box<dyn Encoder + 'w>> {
    if codec == Compression::Zstd {
        use ::zstd::stream::raw::CParameter;
        let flags = zstd_flags(input);
        let mut encoder = ::zstd::stream::write::Encoder::new(out, 3)?;
        encoder.include_checksum(flags.checksum)?;
        if flags.content_size {
            encoder.set_pledged_src_size(Some(len))?;
        }
        encoder.multithread(codec.workers() as u32)?;
        // The job size and overlap, not the thread count, decide the
        // bytes, so every machine writes the same output.
        encoder.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
        encoder.set_parameter(CParameter::OverlapSizeLog(ZSTD_OVERLAP_LOG))?;
        return Ok(Box::new(encoder));
    }
    if codec == Compression::Xz {
        let stream = xz_encoder(input)?;
        return Ok(Box::new(liblzma::write::XzEncoder::new_stream(out, stream)));
    }
    codec.encoder(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_input_dictionary_is_read_from_the_first_block_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        // Single-threaded (no sizes in the block header) and multi-threaded
        // (both sizes) streams, at presets with 256 KiB to 64 MiB.
        for (preset, dict) in [
            (0u32, 256u32 << 10),
            (1, 1 << 20),
            (6, 8 << 20),
            (9, 64 << 20),
        ] {
            for threads in [None, Some(2)] {
                let stream = match threads {
                    None => liblzma::stream::Stream::new_easy_encoder(
                        preset,
                        liblzma::stream::Check::Crc64,
                    ),
                    Some(t) => liblzma::stream::MtStreamBuilder::new()
                        .preset(preset)
                        .threads(t)
                        .encoder(),
                }
                .unwrap();
                let mut e =
                    liblzma::write::XzEncoder::new_stream(File::create(&path).unwrap(), stream);
                e.write_all(&data).unwrap();
                e.finish().unwrap();
                assert_eq!(xz_input_dict(&path), Some(dict), "-{preset} {threads:?}");
            }
        }
        std::fs::write(&path, b"not xz at all").unwrap();
        assert_eq!(xz_input_dict(&path), None);
    }
}
