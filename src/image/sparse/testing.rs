//! Hand-built sparse files and views of them, for the tests of every part
//! of the sparse module. The builder writes the format itself, independently
//! of the code under test.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::unix::fs::FileExt;

use super::format::{CHUNK_CRC32, CHUNK_DONT_CARE, CHUNK_FILL, CHUNK_RAW, MAGIC};
use super::{expand, ChunkData, ChunkLayout, SparseError, SparseView};

/// A chunk to put in a hand-built sparse file.
#[derive(Clone)]
pub(super) enum Spec {
    Raw(Vec<u8>),
    Fill([u8; 4], u32),
    DontCare(u32),
    Crc(u32),
}

/// Header sizes and block size of a hand-built file.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub block_size: u32,
    pub file_header: u16,
    pub chunk_header: u16,
}

pub(super) const PLAIN_4K: Shape = Shape {
    block_size: 4096,
    file_header: 28,
    chunk_header: 12,
};
pub(super) const WIDE_1K: Shape = Shape {
    block_size: 1024,
    file_header: 36,
    chunk_header: 20,
};

fn blocks_of(shape: Shape, spec: &Spec) -> u32 {
    match spec {
        Spec::Raw(d) => (d.len() / shape.block_size as usize) as u32,
        Spec::Fill(_, n) | Spec::DontCare(n) => *n,
        Spec::Crc(_) => 0,
    }
}

/// Builds a well-formed sparse file; the padding in longer headers is
/// junk so that a parser reading it as data would be caught.
pub(super) fn build(shape: Shape, specs: &[Spec]) -> Vec<u8> {
    let total_blocks: u32 = specs.iter().map(|s| blocks_of(shape, s)).sum();
    let mut f = Vec::new();
    f.extend(MAGIC.to_le_bytes());
    f.extend(1u16.to_le_bytes());
    f.extend(0u16.to_le_bytes());
    f.extend(shape.file_header.to_le_bytes());
    f.extend(shape.chunk_header.to_le_bytes());
    f.extend(shape.block_size.to_le_bytes());
    f.extend(total_blocks.to_le_bytes());
    f.extend((specs.len() as u32).to_le_bytes());
    f.extend(0u32.to_le_bytes());
    f.resize(shape.file_header as usize, 0xAA);
    for spec in specs {
        let (kind, body): (u16, Vec<u8>) = match spec {
            Spec::Raw(d) => (CHUNK_RAW, d.clone()),
            Spec::Fill(p, _) => (CHUNK_FILL, p.to_vec()),
            Spec::DontCare(_) => (CHUNK_DONT_CARE, vec![]),
            Spec::Crc(c) => (CHUNK_CRC32, c.to_le_bytes().to_vec()),
        };
        f.extend(kind.to_le_bytes());
        f.extend(0u16.to_le_bytes());
        f.extend(blocks_of(shape, spec).to_le_bytes());
        f.extend((shape.chunk_header as u32 + body.len() as u32).to_le_bytes());
        f.extend(std::iter::repeat_n(0xBB, shape.chunk_header as usize - 12));
        f.extend(body);
    }
    f
}

/// What `specs` expand to, computed independently of the code under test.
pub(super) fn expansion(shape: Shape, specs: &[Spec]) -> Vec<u8> {
    let mut raw = Vec::new();
    for spec in specs {
        let n = blocks_of(shape, spec) as usize * shape.block_size as usize;
        match spec {
            Spec::Raw(d) => raw.extend(d),
            Spec::Fill(p, _) => raw.extend(p.iter().cycle().take(n)),
            Spec::DontCare(_) => raw.resize(raw.len() + n, 0),
            Spec::Crc(_) => {}
        }
    }
    raw
}

/// A mixed image: RAW, FILL, DONT_CARE, a CRC32, zero FILL, RAW.
pub(super) fn mixed(shape: Shape) -> Vec<Spec> {
    let bs = shape.block_size as usize;
    vec![
        Spec::Raw(data(3 * bs, 1)),
        Spec::Fill([0xDE, 0xAD, 0xBE, 0xEF], 4),
        Spec::DontCare(5),
        Spec::Crc(0x1234_5678),
        Spec::Fill([0; 4], 2),
        Spec::Raw(data(2 * bs, 2)),
    ]
}

/// Non-repeating, non-zero bytes, different for each `seed`.
pub(super) fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 251 + seed as usize * 13) % 255) as u8 + 1)
        .collect()
}

pub(super) fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.rewind().unwrap();
    f
}

pub(super) fn parse_bytes(bytes: &[u8]) -> Result<ChunkLayout, SparseError> {
    ChunkLayout::parse(&file_with(bytes))
}

pub(super) fn view_of(bytes: &[u8]) -> SparseView {
    let file = file_with(bytes);
    let layout = ChunkLayout::parse(&file).unwrap();
    SparseView::new(file, layout)
}

pub(super) fn expand_to_vec(view: &SparseView) -> Vec<u8> {
    let out = tempfile::tempfile().unwrap();
    expand(view, &out, u64::MAX).unwrap();
    let mut bytes = vec![0u8; out.metadata().unwrap().len() as usize];
    out.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

/// The chunk list as (kind, first block, blocks, fill pattern), without
/// RAW offsets, which move when chunks before them change size.
pub(super) fn shape_of(layout: &ChunkLayout) -> Vec<(&'static str, u64, u64, Option<[u8; 4]>)> {
    layout
        .chunks
        .iter()
        .map(|c| match c.data {
            ChunkData::Raw { .. } => ("raw", c.first_block, c.blocks, None),
            ChunkData::Fill(p) => ("fill", c.first_block, c.blocks, Some(p)),
            ChunkData::DontCare => ("dont-care", c.first_block, c.blocks, None),
        })
        .collect()
}

/// The stored bytes of each RAW chunk.
pub(super) fn raw_payloads(bytes: &[u8], layout: &ChunkLayout) -> Vec<Vec<u8>> {
    let bs = layout.block_size as usize;
    layout
        .chunks
        .iter()
        .filter_map(|c| match c.data {
            ChunkData::Raw { offset } => {
                let at = offset as usize;
                Some(bytes[at..at + c.blocks as usize * bs].to_vec())
            }
            _ => None,
        })
        .collect()
}
