//! The expanded image's bytes, read through the chunk index: the sparse
//! file is never expanded for libext2fs or imprint's reader, only for
//! e2fsck, which needs a raw file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::format::{ChunkData, ChunkLayout};
use super::{SparseError, IO_BUF};
use crate::io::read_at::ReadAt;

/// Random-access reads of the expanded image, without expanding it.
pub(crate) struct SparseView {
    file: File,
    layout: ChunkLayout,
}

impl SparseView {
    pub(crate) fn new(file: File, layout: ChunkLayout) -> SparseView {
        SparseView { file, layout }
    }

    pub(crate) fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    /// Fills `buf` with the expanded bytes starting at `offset`.
    pub(crate) fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        let bs = self.layout.block_size as u64;
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.layout.raw_size()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end of the {}-byte sparse image",
                    buf.len(),
                    self.layout.raw_size()
                ),
            ));
        }
        while !buf.is_empty() {
            let block = offset / bs;
            let i = self
                .layout
                .chunks
                .partition_point(|c| c.first_block + c.blocks <= block);
            // Parsed layouts cover every block; a hand-made one may not.
            let chunk = match self.layout.chunks.get(i) {
                Some(c) if c.first_block <= block => c,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("block {block} is in no chunk of the sparse layout"),
                    ))
                }
            };
            let start = chunk.first_block * bs;
            let end = start + chunk.blocks * bs;
            let n = buf.len().min((end - offset) as usize);
            let (now, rest) = buf.split_at_mut(n);
            match chunk.data {
                ChunkData::Raw { offset: data } => {
                    self.file.read_exact_at(now, data + (offset - start))?
                }
                ChunkData::Fill(p) => {
                    for (k, b) in now.iter_mut().enumerate() {
                        *b = p[((offset + k as u64) % 4) as usize];
                    }
                }
                ChunkData::DontCare => now.fill(0),
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }
}

impl ReadAt for SparseView {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        SparseView::read_at(self, offset, buf)
    }
}

/// Writes the expanded image's first `limit` bytes (the filesystem's own
/// size; a FILL chunk can claim terabytes) into the empty file `out`.
/// DONT_CARE and all-zero FILL chunks stay holes.
pub(crate) fn expand(view: &SparseView, out: &File, limit: u64) -> Result<(), SparseError> {
    let layout = view.layout();
    let size = layout.raw_size().min(limit);
    crate::io::progress::start("expanding", size);
    out.set_len(size).map_err(SparseError::Write)?;
    let bs = layout.block_size as u64;
    let mut buf = vec![0u8; IO_BUF];
    for chunk in &layout.chunks {
        if matches!(
            chunk.data,
            ChunkData::DontCare | ChunkData::Fill([0, 0, 0, 0])
        ) {
            continue;
        }
        let start = chunk.first_block * bs;
        if start >= size {
            continue;
        }
        let len = (chunk.blocks * bs).min(size - start);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(IO_BUF as u64) as usize;
            view.read_at(start + done, &mut buf[..n])
                .map_err(SparseError::Read)?;
            out.write_all_at(&buf[..n], start + done)
                .map_err(SparseError::Write)?;
            done += n as u64;
            crate::io::progress::advance(n as u64);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::format::Chunk;
    use super::super::testing::*;
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn read_at_matches_the_expansion_everywhere() {
        for shape in [PLAIN_4K, WIDE_1K] {
            let specs = mixed(shape);
            let view = view_of(&build(shape, &specs));
            let want = expansion(shape, &specs);
            let bs = shape.block_size as usize;
            let size = want.len();
            // Whole image, single bytes at chunk edges, odd-length spans
            // across every boundary, and a fill read at an unaligned offset.
            let mut cases = vec![(0, size), (size - 1, 1), (bs * 3 + 1, 5)];
            for edge in [3, 7, 12, 14] {
                cases.push((edge * bs - 1, 1));
                cases.push((edge * bs, 1));
                cases.push((edge * bs - 37, 101));
                cases.push((edge * bs - bs - 3, 2 * bs + 9));
            }
            for (at, len) in cases {
                let mut buf = vec![0x55u8; len];
                view.read_at(at as u64, &mut buf).unwrap();
                assert!(
                    buf == want[at..at + len],
                    "block size {bs}: {len} bytes at {at} differ"
                );
            }
            let mut empty = [];
            view.read_at(size as u64, &mut empty).unwrap();
        }
    }

    #[test]
    fn read_at_past_the_end_is_unexpected_eof() {
        let view = view_of(&build(PLAIN_4K, &mixed(PLAIN_4K)));
        let size = view.layout().raw_size();
        for (at, len) in [(size - 1, 2), (size, 1), (u64::MAX, 1), (u64::MAX - 1, 4)] {
            let mut buf = vec![0u8; len];
            let e = view.read_at(at, &mut buf).unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::UnexpectedEof,
                "{len} bytes at {at}"
            );
        }
    }

    #[test]
    fn read_at_refuses_a_layout_with_a_gap() {
        let layout = ChunkLayout {
            block_size: 4096,
            total_blocks: 4,
            chunks: vec![Chunk {
                first_block: 2,
                blocks: 2,
                data: ChunkData::DontCare,
            }],
        };
        let view = SparseView::new(tempfile::tempfile().unwrap(), layout);
        let mut buf = [0u8; 8];
        let e = view.read_at(0, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        view.read_at(3 * 4096, &mut buf).unwrap();
    }

    /// Where the next data is at or after `from`, per SEEK_DATA; the file
    /// size if there is none.
    fn next_data(file: &File, from: u64) -> u64 {
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(from)) {
            Ok(at) => at,
            Err(e) => {
                assert_eq!(e, rustix::io::Errno::NXIO);
                file.metadata().unwrap().len()
            }
        }
    }

    #[test]
    fn expand_writes_data_and_leaves_dont_care_and_zero_fill_as_holes() {
        // Big, page-aligned holes so any filesystem with holes shows them.
        let bs = 4096;
        let specs = vec![
            Spec::Raw(data(2 * bs, 3)),
            Spec::DontCare(256),
            Spec::Fill([1, 2, 3, 4], 2),
            Spec::Fill([0; 4], 256),
            Spec::Raw(data(bs, 4)),
        ];
        let view = view_of(&build(PLAIN_4K, &specs));
        let out = tempfile::tempfile().unwrap();
        expand(&view, &out, u64::MAX).unwrap();
        let meta = out.metadata().unwrap();
        assert_eq!(meta.len(), 517 * 4096);
        let mut got = vec![0u8; meta.len() as usize];
        out.read_exact_at(&mut got, 0).unwrap();
        assert!(got == expansion(PLAIN_4K, &specs), "expansion differs");
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "{} bytes allocated for a {}-byte file with 2 MiB of holes",
            meta.blocks() * 512,
            meta.len()
        );
        assert_eq!(
            next_data(&out, 2 * 4096),
            258 * 4096,
            "DONT_CARE was written"
        );
        assert_eq!(
            next_data(&out, 260 * 4096),
            516 * 4096,
            "zero FILL was written"
        );
    }
}
