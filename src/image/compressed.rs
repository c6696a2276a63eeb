//! The codec layer around a raw image (`system.img.zst`, `rootfs.ext4.gz`,
//! `core-image.wic.xz`): the input is decompressed once into a private
//! scratch file beside the output (zero runs become holes, so a mostly
//! empty 16 GiB image costs its data on disk), the filesystem inside is
//! edited like any raw image, and the output streams from that scratch
//! file through the input's codec, on all cores where the codec allows
//! (xz: one thread, to stay in its memory bound; see XZ_DICT_MAX).
//!
//! Unlike tar archives, no compressed prefix is kept: ext4 changes its
//! superblock (at byte 1024) on every write, so the first changed block is
//! always at the very start.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::ext4::{Ext4Backend, Ext4Reader, Region};
use super::{
    disk, Content, Found, ImageBackend, ImageError, ImageFacts, ImageOptions, ImageReader,
};
use crate::compress::{Compression, Encoder};
use crate::io::bmap::Bmap;
use crate::io::output::{Scratch, TempOutput};
use crate::io::sink::RawSink;
use crate::plan::{ImagePath, Plan};
use std::io::Write;
use xz2::stream::{Check, Filters, LzmaOptions};

/// The suffix a codec's files usually carry, to find `NAME.wic.bmap` for
/// `NAME.wic.zst` and to name the output's block map the same way.
fn codec_suffix(codec: Compression) -> Option<&'static str> {
    match codec {
        Compression::None => None,
        Compression::Gzip => Some(".gz"),
        Compression::Bzip2 => Some(".bz2"),
        Compression::Zstd => Some(".zst"),
        Compression::Xz => Some(".xz"),
    }
}

/// Decompresses `path` into a scratch file in `dir`, keeping zero blocks
/// as holes.
fn expand(path: &Path, codec: Compression, dir: &Path) -> Result<Scratch, ImageError> {
    let open = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open)?;
    let compressed_len = file.metadata().map_err(open)?.len();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let scratch = Scratch::create_in(dir, &name).map_err(ImageError::Output)?;
    crate::io::progress::start("decompressing", compressed_len);
    let mut decoder = codec.decoder(file);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = fill(&mut decoder, &mut buf).map_err(|source| ImageError::Decompress {
            path: path.to_path_buf(),
            codec: codec.name(),
            source,
        })?;
        if n == 0 {
            break;
        }
        for piece in buf[..n].chunks(4096) {
            if piece.iter().any(|&b| b != 0) {
                scratch
                    .file()
                    .write_all_at(piece, at)
                    .map_err(ImageError::Output)?;
            }
            at += piece.len() as u64;
        }
    }
    // Trailing zeros were skipped: the length makes them a hole.
    scratch.file().set_len(at).map_err(ImageError::Output)?;
    crate::io::progress::finish();
    Ok(scratch)
}

/// Reads until `buf` is full or the stream ends.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether a zstd input's first frame carries a content checksum, so the
/// output keeps or omits it as the input did (the frame does not record
/// the level; the output uses zstd's default, 3).
fn zstd_checksum(path: &Path) -> bool {
    let mut head = [0u8; 32];
    let Ok(n) = File::open(path).and_then(|f| f.read_at(&mut head, 0)) else {
        return false;
    };
    let head = &head[..n];
    // pzstd puts a skippable frame (8 bytes and its size) before the first.
    let at = if crate::compress::zstd::after_skippable(head) {
        8 + u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize
    } else {
        0
    };
    head.get(at + 4)
        .is_some_and(|descriptor| descriptor & 0x04 != 0)
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
/// most 4 MiB (or the input's, if smaller), in one thread. Memory is what
/// decides this: `xz -T2 -6` (an 8 MiB dictionary in 24 MiB blocks, each
/// thread holding a match finder of about 11 x the dictionary and its
/// block in and out) peaks near 300 MiB, and even one thread of it in 24
/// MiB blocks needs 165 MiB. Multi-threaded blocks small enough for two
/// threads in 85 MiB (a 2 MiB dictionary, 6 MiB blocks) came out 7.8%
/// larger than `xz -T2 -6`; one thread with a 4 MiB dictionary and no
/// blocks came out 0.4% smaller, in about 50 MiB and the same CPU time, at
/// half the speed on two cores. README "Compressed inputs" has the
/// numbers.
const XZ_DICT_MAX: u32 = 4 << 20;

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
fn xz_encoder(input: &Path) -> io::Result<xz2::stream::Stream> {
    let dict = xz_input_dict(input).map_or(XZ_DICT_MAX, |d| d.min(XZ_DICT_MAX));
    let mut lzma = LzmaOptions::new_preset(6).map_err(io::Error::other)?;
    lzma.dict_size(dict);
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    xz2::stream::Stream::new_stream_encoder(&filters, Check::Crc64).map_err(io::Error::other)
}

/// An encoder for the output, like the input's.
fn encoder_for<'w>(
    codec: Compression,
    input: &Path,
    out: &'w mut TempOutput,
) -> io::Result<Box<dyn Encoder + 'w>> {
    if codec == Compression::Zstd {
        use ::zstd::stream::raw::CParameter;
        let mut encoder = ::zstd::stream::write::Encoder::new(out, 3)?;
        encoder.include_checksum(zstd_checksum(input))?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        encoder.multithread(threads as u32)?;
        // The job size and overlap, not the thread count, decide the
        // bytes, so every machine writes the same output.
        encoder.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
        encoder.set_parameter(CParameter::OverlapSizeLog(ZSTD_OVERLAP_LOG))?;
        return Ok(Box::new(encoder));
    }
    if codec == Compression::Xz {
        let stream = xz_encoder(input)?;
        return Ok(Box::new(xz2::write::XzEncoder::new_stream(out, stream)));
    }
    codec.encoder(out)
}

/// The filesystem's region inside the expanded image.
fn region_of(
    scratch: &Path,
    content: Content,
    options: &ImageOptions,
) -> Result<Option<Region>, ImageError> {
    match content {
        Content::Disk(_) => Ok(Some(disk::locate(scratch, options.partition.as_ref())?)),
        _ => Ok(None),
    }
}

/// Writes plans into recompressed copies of a compressed raw image.
pub(crate) struct CompressedBackend {
    input: std::path::PathBuf,
    codec: Compression,
    inner: Ext4Backend,
    // Dropped after `inner`, which reads from it.
    _scratch: Scratch,
}

impl CompressedBackend {
    pub(crate) fn open(
        path: &Path,
        codec: Compression,
        content: Content,
        output_dir: &Path,
        options: &ImageOptions,
    ) -> Result<CompressedBackend, ImageError> {
        let scratch = expand(path, codec, output_dir)?;
        let region = region_of(scratch.path(), content, options)?;
        let bmap = super::bmap_of(path, codec_suffix(codec))?;
        let inner = Ext4Backend::open(scratch.path(), region, bmap)?;
        Ok(CompressedBackend {
            input: path.to_path_buf(),
            codec,
            inner,
            _scratch: scratch,
        })
    }
}

impl ImageBackend for CompressedBackend {
    fn facts(&mut self) -> Result<ImageFacts, ImageError> {
        self.inner.facts()
    }

    fn apply(&mut self, plan: &Plan, out: &mut TempOutput) -> Result<(), ImageError> {
        let encoder = encoder_for(self.codec, &self.input, out).map_err(ImageError::Output)?;
        let mut sink = Compressing::new(encoder);
        let bmap = self.inner.write_raw(plan, &mut sink)?;
        sink.finish().map_err(ImageError::Output)?;
        if let Some(bmap) = bmap {
            let path = Bmap::for_output(out.final_path(), codec_suffix(self.codec));
            out.add_sidecar(path, bmap.into_bytes());
        }
        Ok(())
    }
}

/// Reads files out of a compressed raw image for `verify`.
pub(crate) struct CompressedReader {
    pub(crate) inner: Ext4Reader,
    _scratch: Scratch,
}

impl CompressedReader {
    pub(crate) fn open(
        path: &Path,
        codec: Compression,
        content: Content,
        options: &ImageOptions,
    ) -> Result<CompressedReader, ImageError> {
        let dir = std::env::temp_dir();
        let scratch = expand(path, codec, &dir)?;
        let region = region_of(scratch.path(), content, options)?;
        let inner = Ext4Reader::open(scratch.path(), region)?;
        Ok(CompressedReader {
            inner,
            _scratch: scratch,
        })
    }
}

impl ImageReader for CompressedReader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        self.inner.lookup(path, max_content)
    }

    fn fsck(&mut self) -> Option<Result<(), String>> {
        self.inner.fsck()
    }
}

/// A raw image compressed as it is written.
struct Compressing<'a> {
    encoder: Box<dyn Encoder + 'a>,
}

impl<'a> Compressing<'a> {
    fn new(encoder: Box<dyn Encoder + 'a>) -> Compressing<'a> {
        Compressing { encoder }
    }

    /// Ends the compressed stream (its trailer and checksums).
    fn finish(self) -> io::Result<()> {
        self.encoder.finish_stream()
    }
}

impl RawSink for Compressing<'_> {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.encoder.write_all(data)
    }

    fn skip_zeros(&mut self, mut len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.encoder.write_all(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }
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
                    None => {
                        xz2::stream::Stream::new_easy_encoder(preset, xz2::stream::Check::Crc64)
                    }
                    Some(t) => xz2::stream::MtStreamBuilder::new()
                        .preset(preset)
                        .threads(t)
                        .encoder(),
                }
                .unwrap();
                let mut e = xz2::write::XzEncoder::new_stream(File::create(&path).unwrap(), stream);
                e.write_all(&data).unwrap();
                e.finish().unwrap();
                assert_eq!(xz_input_dict(&path), Some(dict), "-{preset} {threads:?}");
            }
        }
        std::fs::write(&path, b"not xz at all").unwrap();
        assert_eq!(xz_input_dict(&path), None);
    }
}
