//! The on-disk format (AOSP libsparse, sparse_format.h): a file header and a
//! list of chunks, each a chunk header and maybe data. Parsing turns it into
//! a [`ChunkLayout`], which says where every block of the expanded image
//! comes from; the encoder writes it back with [`file_header`] and
//! [`chunk_header`].

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::problem::{ChunkProblem, Cut, HeaderProblem};
use super::SparseError;

/// The sparse file magic, little-endian at offset 0.
pub(crate) const MAGIC: u32 = 0xed26_ff3a;

/// The header sizes of version 1.0, the least a file may declare (longer
/// ones come from newer writers and are honoured) and what imprint writes.
pub(super) const FILE_HEADER_LEN: usize = 28;
pub(super) const CHUNK_HEADER_LEN: usize = 12;

pub(super) const CHUNK_RAW: u16 = 0xCAC1;
pub(super) const CHUNK_FILL: u16 = 0xCAC2;
pub(super) const CHUNK_DONT_CARE: u16 = 0xCAC3;
pub(super) const CHUNK_CRC32: u16 = 0xCAC4;

/// The largest sparse block size accepted.
const MAX_BLOCK_SIZE: u32 = 1 << 20;

/// Where a chunk's blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkData {
    /// Stored in the sparse file at this byte offset.
    Raw { offset: u64 },
    /// Every 4 bytes are this pattern.
    Fill([u8; 4]),
    /// Not stored; reads as zeros, and the flasher leaves the blocks alone.
    DontCare,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub first_block: u64,
    pub blocks: u64,
    pub data: ChunkData,
}

/// The parsed chunk list (CRC32 chunks are checked for shape and dropped:
/// they would not match after an edit anyway).
#[derive(Debug, Clone)]
pub struct ChunkLayout {
    pub block_size: u32,
    pub total_blocks: u64,
    pub chunks: Vec<Chunk>,
}

pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ChunkLayout {
    /// Parses and validates the header and the whole chunk list; RAW data
    /// is skipped, not read.
    pub fn parse(file: &File) -> Result<ChunkLayout, SparseError> {
        let file_len = file.metadata().map_err(SparseError::Read)?.len();
        let read = |offset: u64, len: usize, what: &'static str| -> Result<Vec<u8>, SparseError> {
            if offset + len as u64 > file_len {
                return Err(SparseError::Truncated(Cut::Structure {
                    what,
                    offset,
                    len,
                    file_len,
                }));
            }
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(SparseError::Read)?;
            Ok(buf)
        };
        let h = read(0, FILE_HEADER_LEN, "the file header")?;
        if le32(&h, 0) != MAGIC {
            return Err(SparseError::Header(HeaderProblem::NoMagic));
        }
        if le16(&h, 4) != 1 {
            return Err(SparseError::Header(HeaderProblem::MajorVersion(le16(
                &h, 4,
            ))));
        }
        let file_header_len = le16(&h, 8) as usize;
        let chunk_header_len = le16(&h, 10) as usize;
        let block_size = le32(&h, 12);
        let total_blocks = le32(&h, 16) as u64;
        let total_chunks = le32(&h, 20);
        if file_header_len < FILE_HEADER_LEN || chunk_header_len < CHUNK_HEADER_LEN {
            return Err(SparseError::Header(HeaderProblem::HeaderSizes {
                file: file_header_len,
                chunk: chunk_header_len,
            }));
        }
        check_block_size(block_size)?;
        // Buffers are sized in blocks; real images use 4 KiB (ext4 blocks
        // are at most 64 KiB), so a huge value is damage, not a format.
        if block_size > MAX_BLOCK_SIZE {
            return Err(SparseError::Header(HeaderProblem::BlockTooLarge {
                size: block_size,
                max: MAX_BLOCK_SIZE,
            }));
        }
        if (file_header_len as u64) > file_len {
            return Err(SparseError::Truncated(Cut::FileHeader {
                claimed: file_header_len,
                file_len,
            }));
        }
        let bs = block_size as u64;
        let mut chunks = Vec::new();
        let mut pos = file_header_len as u64;
        let mut next_block = 0u64;
        let mut index = 0u32;
        while pos < file_len && index < total_chunks {
            let c = read(pos, chunk_header_len, "a chunk header")?;
            let (kind, blocks, total) = (le16(&c, 0), le32(&c, 4) as u64, le32(&c, 8) as u64);
            let body = pos + chunk_header_len as u64;
            let bad = |why: ChunkProblem| SparseError::Chunk {
                index,
                offset: pos,
                why,
            };
            let expected_total = chunk_header_len as u64
                + match kind {
                    CHUNK_RAW => blocks * bs,
                    CHUNK_FILL | CHUNK_CRC32 => 4,
                    CHUNK_DONT_CARE => 0,
                    other => return Err(bad(ChunkProblem::UnknownType(other))),
                };
            if total != expected_total {
                return Err(bad(ChunkProblem::Size {
                    total,
                    blocks,
                    expected: expected_total,
                }));
            }
            if pos + total > file_len {
                return Err(SparseError::Truncated(Cut::Chunk {
                    index,
                    offset: pos,
                    total,
                    file_len,
                }));
            }
            let data = match kind {
                CHUNK_RAW => Some(ChunkData::Raw { offset: body }),
                CHUNK_FILL => {
                    let p = read(body, 4, "a fill pattern")?;
                    Some(ChunkData::Fill([p[0], p[1], p[2], p[3]]))
                }
                CHUNK_DONT_CARE => Some(ChunkData::DontCare),
                _ => None, // CRC32
            };
            if let Some(data) = data {
                if blocks > 0 {
                    chunks.push(Chunk {
                        first_block: next_block,
                        blocks,
                        data,
                    });
                }
                next_block += blocks;
            }
            pos += total;
            index += 1;
        }
        if index != total_chunks {
            // The file ended cleanly after a chunk. If blocks are missing too
            // it was cut short; if not, the chunk count is what is wrong.
            return Err(if next_block < total_blocks {
                SparseError::Truncated(Cut::Chunks {
                    declared: total_chunks,
                    found: index,
                })
            } else {
                SparseError::ChunkCount {
                    declared: total_chunks,
                    found: index,
                }
            });
        }
        if pos < file_len {
            return Err(SparseError::TrailingData(file_len - pos));
        }
        if next_block != total_blocks {
            return Err(SparseError::BlockCount {
                declared: total_blocks,
                found: next_block,
            });
        }
        Ok(ChunkLayout {
            block_size,
            total_blocks,
            chunks,
        })
    }

    /// The size of the expanded image.
    pub fn raw_size(&self) -> u64 {
        self.total_blocks * self.block_size as u64
    }

    /// One DONT_CARE chunk over the whole of a raw image of `raw_size`
    /// bytes: the image's non-zero blocks spliced into this layout make it a
    /// sparse image.
    pub(crate) fn all_dont_care(
        raw_size: u64,
        block_size: u32,
    ) -> Result<ChunkLayout, SparseError> {
        check_block_size(block_size)?;
        if raw_size % block_size as u64 != 0 {
            return Err(SparseError::Header(HeaderProblem::PartialBlock {
                raw_size,
                block_size,
            }));
        }
        let blocks = raw_size / block_size as u64;
        if blocks > u32::MAX as u64 {
            return Err(SparseError::TooLarge { blocks });
        }
        Ok(ChunkLayout {
            block_size,
            total_blocks: blocks,
            chunks: vec![Chunk {
                first_block: 0,
                blocks,
                data: ChunkData::DontCare,
            }],
        })
    }
}

/// FILL patterns are 4 bytes and repeat within every block.
fn check_block_size(block_size: u32) -> Result<(), SparseError> {
    if block_size == 0 || block_size % 4 != 0 {
        return Err(SparseError::Header(HeaderProblem::BlockSize(block_size)));
    }
    Ok(())
}

/// The file header imprint writes: version 1.0, 28/12-byte headers and an
/// image checksum of 0 (none: one would need every block read).
pub(super) fn file_header(
    block_size: u32,
    total_blocks: u32,
    total_chunks: u32,
) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&1u16.to_le_bytes());
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..10].copy_from_slice(&(FILE_HEADER_LEN as u16).to_le_bytes());
    h[10..12].copy_from_slice(&(CHUNK_HEADER_LEN as u16).to_le_bytes());
    h[12..16].copy_from_slice(&block_size.to_le_bytes());
    h[16..20].copy_from_slice(&total_blocks.to_le_bytes());
    h[20..24].copy_from_slice(&total_chunks.to_le_bytes());
    h
}

/// A 12-byte chunk header; `total_len` counts the header and the body.
pub(super) fn chunk_header(kind: u16, blocks: u32, total_len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[0..2].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&blocks.to_le_bytes());
    h[8..12].copy_from_slice(&total_len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn parse_honours_wide_headers_and_drops_crc_chunks() {
        let specs = mixed(WIDE_1K);
        let bytes = build(WIDE_1K, &specs);
        let layout = parse_bytes(&bytes).unwrap();
        assert_eq!(layout.block_size, 1024);
        assert_eq!(layout.total_blocks, 16);
        assert_eq!(layout.raw_size(), 16 * 1024);
        // RAW data starts right after each (20-byte) chunk header.
        let first_raw = 36 + 20;
        let second_raw = first_raw + 3 * 1024 + (20 + 4) + 20 + (20 + 4) + (20 + 4) + 20;
        assert_eq!(
            layout.chunks,
            vec![
                Chunk {
                    first_block: 0,
                    blocks: 3,
                    data: ChunkData::Raw { offset: first_raw }
                },
                Chunk {
                    first_block: 3,
                    blocks: 4,
                    data: ChunkData::Fill([0xDE, 0xAD, 0xBE, 0xEF])
                },
                Chunk {
                    first_block: 7,
                    blocks: 5,
                    data: ChunkData::DontCare
                },
                Chunk {
                    first_block: 12,
                    blocks: 2,
                    data: ChunkData::Fill([0; 4])
                },
                Chunk {
                    first_block: 14,
                    blocks: 2,
                    data: ChunkData::Raw { offset: second_raw }
                },
            ]
        );
        assert_eq!(raw_payloads(&bytes, &layout)[1], data(2 * 1024, 2));
    }

    #[test]
    fn parse_accepts_4k_blocks_and_any_minor_version() {
        let mut bytes = build(PLAIN_4K, &mixed(PLAIN_4K));
        bytes[6..8].copy_from_slice(&3u16.to_le_bytes());
        let layout = parse_bytes(&bytes).unwrap();
        assert_eq!((layout.block_size, layout.total_blocks), (4096, 16));
        assert_eq!(layout.chunks.len(), 5);
    }

    /// Parses `bytes` and returns the error message, failing if it parses.
    fn parse_error(bytes: &[u8]) -> (SparseError, String) {
        match parse_bytes(bytes) {
            Ok(layout) => panic!("parsed a corrupt image: {layout:?}"),
            Err(e) => {
                let msg = e.to_string();
                (e, msg)
            }
        }
    }

    fn good() -> Vec<u8> {
        build(PLAIN_4K, &mixed(PLAIN_4K))
    }

    /// Byte offset of chunk `index`'s header in `good()`.
    fn chunk_at(index: usize) -> usize {
        let bytes = good();
        let mut at = 28;
        for _ in 0..index {
            at += le32(&bytes, at + 8) as usize;
        }
        at
    }

    fn set32(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn bad_magic_and_version_are_refused() {
        let mut b = good();
        b[0] ^= 1;
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(e, SparseError::Header(HeaderProblem::NoMagic)),
            "{msg}"
        );
        let mut b = good();
        b[4..6].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            parse_error(&b).0,
            SparseError::Header(HeaderProblem::MajorVersion(2))
        ));
    }

    #[test]
    fn bad_header_sizes_and_block_sizes_are_refused() {
        let mut b = good();
        b[8..10].copy_from_slice(&24u16.to_le_bytes());
        assert!(matches!(
            parse_error(&b).0,
            SparseError::Header(HeaderProblem::HeaderSizes { file: 24, .. })
        ));
        let mut b = good();
        b[10..12].copy_from_slice(&8u16.to_le_bytes());
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(
                e,
                SparseError::Header(HeaderProblem::HeaderSizes { chunk: 8, .. })
            ),
            "{msg}"
        );
        assert_eq!(
            msg,
            "not a valid sparse image: header sizes 28/8 are below the minimum 28/12"
        );
        for bs in [0, 1022] {
            let mut b = good();
            set32(&mut b, 12, bs);
            assert!(
                matches!(parse_error(&b).0, SparseError::Header(HeaderProblem::BlockSize(s)) if s == bs),
                "{bs}"
            );
        }
    }

    #[test]
    fn truncated_headers_are_refused() {
        let (e, msg) = parse_error(&good()[..10]);
        assert!(
            matches!(
                e,
                SparseError::Truncated(Cut::Structure {
                    what: "the file header",
                    ..
                })
            ),
            "{msg}"
        );
        assert_eq!(
            msg,
            "the sparse image is truncated: the file header at byte 0 needs 28 bytes but the file ends at 10"
        );
        // A file header claiming to be longer than the file.
        let mut b = good()[..28].to_vec();
        b[8..10].copy_from_slice(&64u16.to_le_bytes());
        assert!(matches!(
            parse_error(&b).0,
            SparseError::Truncated(Cut::FileHeader { claimed: 64, .. })
        ));
        // Cut inside a chunk header.
        let (e, msg) = parse_error(&good()[..chunk_at(1) + 6]);
        assert!(
            matches!(
                e,
                SparseError::Truncated(Cut::Structure {
                    what: "a chunk header",
                    ..
                })
            ),
            "{msg}"
        );
    }

    #[test]
    fn truncated_raw_data_is_refused() {
        let b = good();
        let (e, msg) = parse_error(&b[..b.len() - 1]);
        assert!(
            matches!(e, SparseError::Truncated(Cut::Chunk { index: 5, .. })),
            "{msg}"
        );
    }

    #[test]
    fn unknown_chunk_type_is_refused() {
        let mut b = good();
        let at = chunk_at(2);
        b[at..at + 2].copy_from_slice(&0xCAC9u16.to_le_bytes());
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(
                e,
                SparseError::Chunk {
                    index: 2,
                    why: ChunkProblem::UnknownType(0xCAC9),
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("unknown chunk type 0xCAC9"), "{msg}");
    }

    #[test]
    fn chunk_sizes_that_disagree_with_their_type_are_refused() {
        // RAW: 3 blocks need 12 + 12288 bytes.
        let mut b = good();
        set32(&mut b, 28 + 8, 12 + 8192);
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(
                e,
                SparseError::Chunk {
                    index: 0,
                    why: ChunkProblem::Size {
                        total: 8204,
                        blocks: 3,
                        expected: 12300
                    },
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("8204") && msg.contains("12300"), "{msg}");
        // RAW whose block count grew but whose size did not.
        let mut b = good();
        set32(&mut b, 28 + 4, 4);
        assert!(matches!(
            parse_error(&b).0,
            SparseError::Chunk { index: 0, .. }
        ));
        // FILL and DONT_CARE with extra bytes.
        for index in [1, 2] {
            let mut b = good();
            let at = chunk_at(index);
            let total = le32(&b, at + 8);
            set32(&mut b, at + 8, total + 4);
            assert!(
                matches!(parse_error(&b).0, SparseError::Chunk { index: i, .. } if i == index as u32),
                "chunk {index}"
            );
        }
    }

    #[test]
    fn block_counts_must_add_up() {
        let mut b = good();
        set32(&mut b, 16, 17);
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(
                e,
                SparseError::BlockCount {
                    declared: 17,
                    found: 16
                }
            ),
            "{msg}"
        );
        // A DONT_CARE that claims more blocks than the header allows.
        let mut b = good();
        set32(&mut b, chunk_at(2) + 4, 6);
        assert!(matches!(parse_error(&b).0, SparseError::BlockCount { .. }));
    }

    #[test]
    fn chunk_counts_must_match() {
        // Too many: the file ends cleanly but blocks add up, so the count
        // is what is wrong.
        let mut b = good();
        set32(&mut b, 20, 7);
        let (e, msg) = parse_error(&b);
        assert!(
            matches!(
                e,
                SparseError::ChunkCount {
                    declared: 7,
                    found: 6
                }
            ),
            "{msg}"
        );
        // Too many and blocks missing: the file was cut at a chunk boundary.
        let b = good();
        let (e, msg) = parse_error(&b[..chunk_at(5)]);
        assert!(
            matches!(
                e,
                SparseError::Truncated(Cut::Chunks {
                    declared: 6,
                    found: 5
                })
            ),
            "{msg}"
        );
        // Too few: what follows the declared chunks is trailing data.
        let mut b = good();
        set32(&mut b, 20, 5);
        assert!(matches!(parse_error(&b).0, SparseError::TrailingData(_)));
    }

    #[test]
    fn all_dont_care_refuses_what_a_sparse_image_cannot_hold() {
        let layout = ChunkLayout::all_dont_care(8 * 4096, 4096).unwrap();
        assert_eq!((layout.total_blocks, layout.raw_size()), (8, 8 * 4096));
        assert_eq!(layout.chunks.len(), 1);
        for bad in [0, 6] {
            let e = ChunkLayout::all_dont_care(8 * 4096, bad).unwrap_err();
            assert!(e.to_string().contains("multiple of 4"), "{e}");
        }
        let e = ChunkLayout::all_dont_care(100, 4096).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        let blocks = u32::MAX as u64 + 1;
        let e = ChunkLayout::all_dont_care(blocks * 4, 4).unwrap_err();
        assert!(
            matches!(e, SparseError::TooLarge { blocks: b } if b == blocks),
            "{e}"
        );
        ChunkLayout::all_dont_care(u32::MAX as u64 * 4, 4).unwrap();
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut b = good();
        b.extend([0u8; 7]);
        let (e, msg) = parse_error(&b);
        assert!(matches!(e, SparseError::TrailingData(7)), "{msg}");
        assert!(msg.contains("7 bytes after its last chunk"), "{msg}");
    }
}
