//! lz4's frame format (`lz4`, `bsdtar --lz4`, `zstd --format=lz4`, and
//! Buildroot's and Yocto's `.tar.lz4` and `.ext4.lz4`), read and written
//! with lz4_flex.
//!
//! A rewrite compresses the whole output anew ([`super::Tail::Rewrite`]):
//! keeping the input's bytes before the first change would need every
//! block before it independent (lz4 writes them so, `zstd --format=lz4`
//! links each to the one before) and the frame's content checksum (xxh32
//! over everything, on by default in both) continued from that point,
//! which no decoder exposes. lz4 compresses at several hundred MB/s, so
//! the whole output costs seconds where gzip's or xz's would cost minutes.
//!
//! The legacy format (`lz4 -l`, the kernel's) is not this codec: its
//! magic differs, and `compress::unsupported` names it.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;

/// The frame magic, 0x184D2204 little-endian.
pub(crate) const MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// Skippable frames: 0x184D2A50..=0x184D2A5F, then a 4-byte length.
fn skippable(magic: u32) -> bool {
    magic & 0xFFFF_FFF0 == 0x184D_2A50
}

/// Where the last lz4 frame of a file of `len` bytes ends, walking frame
/// headers and block sizes (nothing is decompressed); `None` when a frame
/// is damaged or cut short. `lz4 -t` refuses anything after that point
/// ("Stream followed by undecodable data"), zero padding included.
pub(crate) fn frames_end(file: &File, len: u64) -> io::Result<Option<u64>> {
    let read = |at: u64, buf: &mut [u8]| -> io::Result<bool> {
        if at + buf.len() as u64 > len {
            return Ok(false);
        }
        file.read_exact_at(buf, at)?;
        Ok(true)
    };
    let mut at = 0u64;
    let mut word = [0u8; 4];
    loop {
        if at == len || !read(at, &mut word)? {
            return Ok(Some(at));
        }
        let magic = u32::from_le_bytes(word);
        if skippable(magic) {
            if !read(at + 4, &mut word)? {
                return Ok(None);
            }
            at += 8 + u64::from(u32::from_le_bytes(word));
            if at > len {
                return Ok(None);
            }
            continue;
        }
        if word != MAGIC {
            // Not a frame: the data ended at the last one (padding or
            // other bytes follow, which the caller refuses).
            return Ok((at > 0).then_some(at));
        }
        let mut descriptor = [0u8; 2];
        if !read(at + 4, &mut descriptor)? {
            return Ok(None);
        }
        let flags = descriptor[0];
        if flags >> 6 != 1 {
            return Ok(None);
        }
        let block_checksum = flags & 0x10 != 0;
        let content_size = flags & 0x08 != 0;
        let content_checksum = flags & 0x04 != 0;
        let dict_id = flags & 0x01 != 0;
        // Magic, FLG, BD, optional content size and dictionary id, HC.
        at += 4 + 2 + if content_size { 8 } else { 0 } + if dict_id { 4 } else { 0 } + 1;
        loop {
            if !read(at, &mut word)? {
                return Ok(None);
            }
            let size = u32::from_le_bytes(word) & 0x7FFF_FFFF;
            at += 4;
            if size == 0 {
                break;
            }
            at += u64::from(size) + if block_checksum { 4 } else { 0 };
        }
        if content_checksum {
            at += 4;
        }
        if at > len {
            return Ok(None);
        }
    }
}

/// Reads every frame of a file one after another, as `lz4 -d` does
/// (lz4_flex's decoder reports the end of each frame as the end of input).
pub(crate) struct Frames<R: BufRead>(lz4_flex::frame::FrameDecoder<R>);

impl<R: BufRead> Frames<R> {
    pub(crate) fn new(input: R) -> Self {
        Frames(lz4_flex::frame::FrameDecoder::new(input))
    }
}

impl<R: BufRead> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.0.read(buf)?;
            // A frame ended: the input's end only if nothing follows.
            if n > 0 || buf.is_empty() || self.0.get_mut().fill_buf()?.is_empty() {
                return Ok(n);
            }
        }
    }
}

/// An lz4 frame as the `lz4` tool writes one by default: 4 MiB independent
/// blocks and a content checksum (no content size, which a stream does
/// not know up front).
pub(crate) fn encoder<W: Write>(sink: W) -> lz4_flex::frame::FrameEncoder<W> {
    let info = lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max4MB)
        .block_mode(lz4_flex::frame::BlockMode::Independent)
        .content_checksum(true);
    lz4_flex::frame::FrameEncoder::with_frame_info(info, sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8]) -> Vec<u8> {
        let mut e = encoder(Vec::new());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn end_of(bytes: &[u8]) -> Option<u64> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        frames_end(&File::open(&p).unwrap(), bytes.len() as u64).unwrap()
    }

    #[test]
    fn frames_end_walks_concatenated_and_skippable_frames() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let one = frame(&data);
        assert_eq!(end_of(&one), Some(one.len() as u64));
        let mut two = one.clone();
        two.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        two.extend_from_slice(&one);
        assert_eq!(end_of(&two), Some(two.len() as u64));
        let mut padded = one.clone();
        padded.extend_from_slice(&[0; 512]);
        assert_eq!(end_of(&padded), Some(one.len() as u64));
        assert_eq!(end_of(&one[..one.len() - 3]), None);
        // lz4_flex reads what it wrote, concatenated frames too (not
        // skippable ones: it stops there with an error naming them).
        let mut cat = one.clone();
        cat.extend_from_slice(&one);
        let mut back = Vec::new();
        Frames::new(&cat[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 2 * data.len());
    }
}
