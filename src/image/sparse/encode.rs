//! The encoder: the input's chunks with the changed blocks spliced in.
//!
//! libext2fs edits the filesystem through [`writable`] (the sparse view
//! with its writes kept in memory); [`encode_edited`] then writes every
//! input chunk nothing changed as it was, a changed RAW chunk whole from the
//! edited image, and FILL and DONT_CARE chunks split so that only their
//! changed runs become RAW. A raw image is encoded the same way
//! ([`encode_raw`]): it is the all-DONT_CARE layout with its non-zero
//! blocks written in.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::format::{
    self, Chunk, ChunkData, ChunkLayout, CHUNK_DONT_CARE, CHUNK_FILL, CHUNK_HEADER_LEN, CHUNK_RAW,
};
use super::view::SparseView;
use super::{SparseError, IO_BUF};
use crate::image::ext4::{ChangedBlocks, Device};

/// Where the bytes of an output RAW chunk come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The input sparse file (an untouched RAW chunk), read in one piece.
    Original,
    /// The edited image, the written blocks over the input.
    Edited,
}

/// What one chunk of the output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Raw(Source),
    Fill([u8; 4]),
    DontCare,
}

/// One chunk of the output. The whole list is worked out before anything
/// is written because the file header carries the chunk count and `out`
/// cannot seek back to patch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutChunk {
    first_block: u64,
    blocks: u64,
    body: Body,
}

/// The image under `view`, made writable: writes are kept in memory a
/// sparse block at a time, as [`encode_edited`] reads them.
pub(crate) fn writable(view: &SparseView) -> ChangedBlocks<&SparseView> {
    let layout = view.layout();
    ChangedBlocks::new(view, layout.raw_size(), layout.block_size)
}

/// The most blocks one RAW chunk can hold: its total_sz field, header
/// included, is 32 bits.
fn max_raw_blocks(block_size: u32) -> u64 {
    (u32::MAX as u64 - CHUNK_HEADER_LEN as u64) / block_size as u64
}

/// Appends `piece` to `chunks`, split so that every chunk's size fields fit
/// in 32 bits (a run of edited blocks carved out of a huge DONT_CARE chunk
/// can exceed 4 GiB of data).
fn push_split(chunks: &mut Vec<OutChunk>, piece: OutChunk, max_raw_blocks: u64) {
    let limit = match piece.body {
        Body::Raw(_) => max_raw_blocks,
        Body::Fill(_) | Body::DontCare => u32::MAX as u64,
    };
    let end = piece.first_block + piece.blocks;
    let mut first_block = piece.first_block;
    while first_block < end {
        let blocks = (end - first_block).min(limit);
        chunks.push(OutChunk {
            first_block,
            blocks,
            body: piece.body,
        });
        first_block += blocks;
    }
}

fn push_run(runs: &mut Vec<(bool, u64)>, changed: bool, blocks: u64) {
    match runs.last_mut() {
        Some((c, len)) if *c == changed => *len += blocks,
        _ if blocks > 0 => runs.push((changed, blocks)),
        _ => {}
    }
}

/// Whether a block of `chunk` whose new content is `new` differs from what
/// the chunk holds (`old`: the original bytes, for RAW chunks).
///
/// In DONT_CARE chunks only a non-zero block counts as changed: the flasher
/// never writes those blocks, so a zero block there carries nothing the
/// device needs, and the expansion reads zeros there anyway.
fn block_changed(chunk: &Chunk, new: &[u8], old: &[u8]) -> bool {
    match chunk.data {
        ChunkData::Raw { .. } => new != old,
        ChunkData::Fill(p) => new.chunks_exact(4).any(|w| w != p),
        ChunkData::DontCare => new.iter().any(|&b| b != 0),
    }
}

/// Splits `chunk` into runs of (changed?, blocks). Only the `written`
/// blocks can have changed; `old` is a block-sized buffer.
fn changed_runs(
    original: &SparseView,
    written: &BTreeMap<u64, Box<[u8]>>,
    chunk: &Chunk,
    old: &mut [u8],
) -> Result<Vec<(bool, u64)>, SparseError> {
    let bs = old.len() as u64;
    let mut runs = Vec::new();
    let mut next = chunk.first_block;
    let end = chunk.first_block + chunk.blocks;
    for (&block, new) in written.range(chunk.first_block..end) {
        if let ChunkData::Raw { .. } = chunk.data {
            original
                .read_at(block * bs, old)
                .map_err(SparseError::Read)?;
        }
        if block_changed(chunk, new, old) {
            push_run(&mut runs, false, block - next);
            push_run(&mut runs, true, 1);
            next = block + 1;
        }
    }
    push_run(&mut runs, false, end - next);
    Ok(runs)
}

/// The output chunks: the input's, with the changed runs spliced in.
/// Returns them and how many blocks changed.
fn splice(edited: &ChangedBlocks<&SparseView>) -> Result<(Vec<OutChunk>, u64), SparseError> {
    let original: &SparseView = edited.base();
    let layout = original.layout();
    let max_raw = max_raw_blocks(layout.block_size);
    let mut old = vec![0u8; layout.block_size as usize];
    let mut chunks = Vec::with_capacity(layout.chunks.len());
    let mut changed_total = 0u64;
    for chunk in &layout.chunks {
        let runs = changed_runs(original, edited.written(), chunk, &mut old)?;
        let changed: u64 = runs.iter().filter(|r| r.0).map(|r| r.1).sum();
        changed_total += changed;
        let whole = |body| OutChunk {
            first_block: chunk.first_block,
            blocks: chunk.blocks,
            body,
        };
        match chunk.data {
            ChunkData::Raw { .. } if changed == 0 => {
                push_split(&mut chunks, whole(Body::Raw(Source::Original)), max_raw)
            }
            // One changed block rewrites the whole RAW chunk: splitting it
            // would not save a byte of data and only add chunk headers.
            ChunkData::Raw { .. } => {
                push_split(&mut chunks, whole(Body::Raw(Source::Edited)), max_raw)
            }
            ChunkData::Fill(_) | ChunkData::DontCare => {
                let same = match chunk.data {
                    ChunkData::Fill(p) => Body::Fill(p),
                    _ => Body::DontCare,
                };
                let mut first_block = chunk.first_block;
                for (is_changed, blocks) in runs {
                    let body = if is_changed {
                        Body::Raw(Source::Edited)
                    } else {
                        same
                    };
                    push_split(
                        &mut chunks,
                        OutChunk {
                            first_block,
                            blocks,
                            body,
                        },
                        max_raw,
                    );
                    first_block += blocks;
                }
            }
        }
    }
    Ok((chunks, changed_total))
}

/// Encodes the image under `edited` (see [`writable`]) into `out`, keeping
/// every untouched chunk exactly as it was and touching only the written
/// blocks. Returns how many blocks changed.
///
/// The output always has 28/12-byte headers and no CRC32 chunks, so an
/// untouched image that already had those comes out byte for byte the same
/// (bar a non-zero image checksum, which is written as 0). Memory is the
/// written blocks plus a small descriptor per output chunk.
pub(crate) fn encode_edited(
    edited: &ChangedBlocks<&SparseView>,
    out: &mut dyn Write,
) -> Result<u64, SparseError> {
    let layout = edited.base().layout();
    debug_assert_eq!(
        (edited.size(), edited.block_size()),
        (layout.raw_size(), layout.block_size as u64),
        "the overlay was not made by `writable`"
    );
    let (chunks, changed) = splice(edited)?;
    crate::io::progress::start("writing", layout.raw_size());
    write_chunks(edited, &chunks, out)?;
    Ok(changed)
}

/// Writes the header and `chunks` sequentially.
fn write_chunks(
    edited: &ChangedBlocks<&SparseView>,
    chunks: &[OutChunk],
    out: &mut dyn Write,
) -> Result<(), SparseError> {
    let original: &SparseView = edited.base();
    let layout = original.layout();
    let bs = layout.block_size as u64;
    let mut out = BufWriter::with_capacity(IO_BUF, out);
    let mut put = |bytes: &[u8]| out.write_all(bytes).map_err(SparseError::Write);

    // Both counts fit: no layout holds more than u32::MAX blocks (see
    // `ChunkLayout::parse` and `all_dont_care`), and every output chunk
    // holds at least one block.
    put(&format::file_header(
        layout.block_size,
        layout.total_blocks as u32,
        chunks.len() as u32,
    ))?;

    let mut buf = vec![0u8; (IO_BUF as u64 / bs).max(1) as usize * bs as usize];
    for piece in chunks {
        let (kind, body_len) = match piece.body {
            Body::Raw(_) => (CHUNK_RAW, piece.blocks * bs),
            Body::Fill(_) => (CHUNK_FILL, 4),
            Body::DontCare => (CHUNK_DONT_CARE, 0),
        };
        put(&format::chunk_header(
            kind,
            piece.blocks as u32,
            (CHUNK_HEADER_LEN as u64 + body_len) as u32,
        ))?;
        match piece.body {
            Body::Fill(p) => put(&p)?,
            Body::DontCare => {}
            Body::Raw(source) => {
                let start = piece.first_block * bs;
                let mut done = 0u64;
                while done < body_len {
                    let n = (body_len - done).min(buf.len() as u64) as usize;
                    match source {
                        Source::Edited => edited.read_at(start + done, &mut buf[..n]),
                        Source::Original => original.read_at(start + done, &mut buf[..n]),
                    }
                    .map_err(SparseError::Read)?;
                    put(&buf[..n])?;
                    done += n as u64;
                }
            }
        }
    }
    out.flush().map_err(SparseError::Write)
}

/// Encodes a raw image as a sparse image: zero blocks become DONT_CARE,
/// the rest RAW. The non-zero blocks are held in memory, which suits the
/// demo's and the tests' small images that this is for.
pub fn encode_raw(raw: &File, block_size: u32, out: &mut dyn Write) -> Result<(), SparseError> {
    let size = raw.metadata().map_err(SparseError::Read)?.len();
    let layout = ChunkLayout::all_dont_care(size, block_size)?;
    // The view never reads its file: DONT_CARE reads as zeros.
    let view = SparseView::new(raw.try_clone().map_err(SparseError::Read)?, layout);
    let mut edited = writable(&view);
    let bs = block_size as usize;
    let mut buf = vec![0u8; (IO_BUF / bs).max(1) * bs];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        raw.read_exact_at(&mut buf[..n], at)
            .map_err(SparseError::Read)?;
        for (k, block) in buf[..n].chunks_exact(bs).enumerate() {
            if block.iter().any(|&b| b != 0) {
                edited
                    .write_at(at + (k * bs) as u64, block)
                    .expect("a whole block inside the image is kept without a read");
            }
        }
        at += n as u64;
    }
    encode_edited(&edited, out).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::format::{le16, le32};
    use super::super::testing::*;
    use super::*;
    use std::path::Path;
    use std::process::Command;
    use tempfile::{NamedTempFile, TempDir};

    /// Writes `edits` (offset, bytes) into `view` made writable, encodes it
    /// and checks the encoding expands back to the input's expansion with
    /// the edits applied. Returns the encoded file's layout, its bytes and
    /// the changed block count.
    fn edit_and_encode(view: &SparseView, edits: &[(u64, &[u8])]) -> (ChunkLayout, Vec<u8>, u64) {
        let mut want = expand_to_vec(view);
        let mut edited = writable(view);
        for &(at, bytes) in edits {
            edited.write_at(at, bytes).unwrap();
            want[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        }
        let mut encoded = Vec::new();
        let changed = encode_edited(&edited, &mut encoded).unwrap();
        let layout = parse_bytes(&encoded).unwrap();
        assert!(
            expand_to_vec(&view_of(&encoded)) == want,
            "the encoding does not expand to the edited image"
        );
        (layout, encoded, changed)
    }

    #[test]
    fn encode_unchanged_is_byte_identical_with_plain_headers() {
        for shape in [
            PLAIN_4K,
            Shape {
                block_size: 1024,
                ..PLAIN_4K
            },
        ] {
            let specs: Vec<Spec> = mixed(shape)
                .into_iter()
                .filter(|s| !matches!(s, Spec::Crc(_)))
                .collect();
            let bytes = build(shape, &specs);
            let view = view_of(&bytes);
            let (_, encoded, changed) = edit_and_encode(&view, &[]);
            assert_eq!(changed, 0);
            assert!(
                encoded == bytes,
                "block size {}: unchanged output differs",
                shape.block_size
            );
        }
    }

    #[test]
    fn encode_unchanged_keeps_chunks_and_data_from_wide_headers() {
        let bytes = build(WIDE_1K, &mixed(WIDE_1K));
        let view = view_of(&bytes);
        let (layout, encoded, changed) = edit_and_encode(&view, &[]);
        assert_eq!(changed, 0);
        assert_eq!(shape_of(&layout), shape_of(view.layout()));
        assert_eq!(
            raw_payloads(&encoded, &layout),
            raw_payloads(&bytes, view.layout())
        );
        // Normalised headers: 28/12 bytes, minor 0, no CRC32, checksum 0.
        assert_eq!(le16(&encoded, 6), 0);
        assert_eq!((le16(&encoded, 8), le16(&encoded, 10)), (28, 12));
        assert_eq!(le32(&encoded, 20), 5, "total_chunks");
        assert_eq!(le32(&encoded, 24), 0, "image_checksum");
        assert_eq!((le32(&encoded, 12), le32(&encoded, 16)), (1024, 16));
    }

    #[test]
    fn blocks_rewritten_with_what_they_held_are_no_change() {
        let specs: Vec<Spec> = mixed(PLAIN_4K)
            .into_iter()
            .filter(|s| !matches!(s, Spec::Crc(_)))
            .collect();
        let bytes = build(PLAIN_4K, &specs);
        let view = view_of(&bytes);
        let before = expand_to_vec(&view);
        // A RAW block, a FILL block and a DONT_CARE block, each whole, and
        // a few bytes across the edge of a zero FILL and a RAW chunk.
        let block = |n: usize| &before[n * 4096..(n + 1) * 4096];
        let edge = &before[14 * 4096 - 3..14 * 4096 + 5];
        let edits = [
            (4096, block(1)),
            (4 * 4096, block(4)),
            (8 * 4096, block(8)),
            (14 * 4096 - 3, edge),
        ];
        let (_, encoded, changed) = edit_and_encode(&view, &edits);
        assert_eq!(changed, 0);
        assert!(encoded == bytes, "unchanged output differs");
    }

    #[test]
    fn encode_splits_a_dont_care_chunk_around_a_changed_block() {
        let view = view_of(&build(WIDE_1K, &mixed(WIDE_1K)));
        // DONT_CARE covers blocks 7..12.
        let (layout, _, changed) = edit_and_encode(&view, &[(9 * 1024, &data(1024, 9))]);
        assert_eq!(changed, 1);
        let fill = Some([0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(
            shape_of(&layout),
            vec![
                ("raw", 0, 3, None),
                ("fill", 3, 4, fill),
                ("dont-care", 7, 2, None),
                ("raw", 9, 1, None),
                ("dont-care", 10, 2, None),
                ("fill", 12, 2, Some([0; 4])),
                ("raw", 14, 2, None),
            ]
        );
    }

    #[test]
    fn encode_splits_a_fill_chunk_around_changed_blocks() {
        let view = view_of(&build(PLAIN_4K, &mixed(PLAIN_4K)));
        // FILL covers blocks 3..7; change its first and its third block.
        let (layout, _, changed) = edit_and_encode(
            &view,
            &[(3 * 4096, &data(4096, 5)), (5 * 4096 + 1, &[0xDE])],
        );
        assert_eq!(changed, 2);
        let fill = Some([0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(
            shape_of(&layout)[..5],
            [
                ("raw", 0, 3, None),
                ("raw", 3, 1, None),
                ("fill", 4, 1, fill),
                ("raw", 5, 1, None),
                ("fill", 6, 1, fill),
            ]
        );
    }

    #[test]
    fn encode_rewrites_a_changed_raw_chunk_whole() {
        let bytes = build(PLAIN_4K, &mixed(PLAIN_4K));
        let view = view_of(&bytes);
        // The first RAW chunk covers blocks 0..3; change one byte of block 1.
        let (layout, encoded, changed) = edit_and_encode(&view, &[(4096 + 100, &[0])]);
        assert_eq!(changed, 1);
        assert_eq!(shape_of(&layout), shape_of(view.layout()));
        let mut want = data(3 * 4096, 1);
        want[4096 + 100] = 0;
        let payloads = raw_payloads(&encoded, &layout);
        assert!(payloads[0] == want, "edited RAW data not written");
        assert!(
            payloads[1] == data(2 * 4096, 2),
            "untouched RAW chunk changed"
        );
    }

    #[test]
    fn zeros_written_into_dont_care_are_no_change() {
        let bytes = build(PLAIN_4K, &mixed(PLAIN_4K));
        let view = view_of(&bytes);
        let (layout, _, changed) = edit_and_encode(&view, &[(8 * 4096, &[0u8; 8192])]);
        assert_eq!(changed, 0);
        assert_eq!(shape_of(&layout), shape_of(view.layout()));
    }

    #[test]
    fn zero_blocks_written_over_a_fill_become_raw() {
        // A zero block inside a non-zero FILL is a change: the flasher would
        // otherwise write the pattern there.
        let view = view_of(&build(PLAIN_4K, &mixed(PLAIN_4K)));
        let (layout, _, changed) = edit_and_encode(&view, &[(6 * 4096, &[0u8; 4096])]);
        assert_eq!(changed, 1);
        assert_eq!(shape_of(&layout)[2], ("raw", 6, 1, None));
    }

    #[test]
    fn long_runs_are_split_to_fit_32_bit_sizes() {
        let mut chunks = Vec::new();
        let run = |body| OutChunk {
            first_block: 10,
            blocks: 7,
            body,
        };
        push_split(&mut chunks, run(Body::Raw(Source::Edited)), 3);
        push_split(&mut chunks, run(Body::DontCare), 3);
        let got: Vec<_> = chunks.iter().map(|p| (p.first_block, p.blocks)).collect();
        assert_eq!(got, [(10, 3), (13, 3), (16, 1), (10, 7)]);
        assert_eq!(max_raw_blocks(4096), 1_048_575);
        assert!(CHUNK_HEADER_LEN as u64 + max_raw_blocks(1024) * 1024 <= u32::MAX as u64);
    }

    #[test]
    fn encode_raw_turns_zero_blocks_into_dont_care() {
        let bs = 4096;
        let mut raw = vec![0u8; 8 * bs];
        raw[bs..3 * bs].copy_from_slice(&data(2 * bs, 6));
        raw[7 * bs + 5] = 1;
        let mut out = Vec::new();
        encode_raw(&file_with(&raw), 4096, &mut out).unwrap();
        let layout = parse_bytes(&out).unwrap();
        assert_eq!(
            shape_of(&layout),
            [
                ("dont-care", 0, 1, None),
                ("raw", 1, 2, None),
                ("dont-care", 3, 4, None),
                ("raw", 7, 1, None),
            ]
        );
        assert!(expand_to_vec(&view_of(&out)) == raw);
        for bad in [0, 6] {
            let e = encode_raw(&file_with(&raw), bad, &mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains("multiple of 4"), "{e}");
        }
        let e = encode_raw(&file_with(&raw[..100]), 4096, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
    }

    /// Runs an AOSP libsparse tool, failing with the package to install if
    /// it is missing.
    fn libsparse_tool(name: &str, args: &[&Path]) -> std::process::Output {
        crate::require::require_tool(name);
        Command::new(name)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
    }

    /// A 4 MiB raw image with data, zero runs and a repeated-pattern run
    /// (img2simg makes FILL chunks of those).
    fn raw_for_img2simg(path: &Path) -> Vec<u8> {
        let mib = 1 << 20;
        let mut raw = vec![0u8; 4 * mib];
        raw[..300_000].copy_from_slice(&data(300_000, 7));
        for w in raw[mib..mib + 256 * 1024].chunks_exact_mut(4) {
            w.copy_from_slice(&[0x11, 0x22, 0x33, 0x44]);
        }
        raw[2 * mib + 5000..2 * mib + 70_000].copy_from_slice(&data(65_000, 8));
        raw[4 * mib - 10] = 0x99;
        std::fs::write(path, &raw).unwrap();
        raw
    }

    #[test]
    fn img2simg_images_parse_expand_and_reencode_losslessly() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let raw_path = d.join("raw.img");
        let raw = raw_for_img2simg(&raw_path);
        for block_size in ["4096", "1024"] {
            let bs_arg = Path::new(block_size);
            let plain = d.join(format!("plain-{block_size}.simg"));
            let made = libsparse_tool("img2simg", &[&raw_path, &plain, bs_arg]);
            assert!(
                made.status.success(),
                "img2simg {block_size}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            let mut inputs = vec![("plain", plain)];
            // Newer img2simg has -s (DONT_CARE instead of zero FILL); the
            // packaged version may not, and then the plain form is enough.
            let with_s = d.join(format!("s-{block_size}.simg"));
            let s_flag = Path::new("-s");
            if libsparse_tool("img2simg", &[s_flag, &raw_path, &with_s, bs_arg])
                .status
                .success()
            {
                inputs.push(("-s", with_s));
            }
            for (form, sparse) in inputs {
                let label = format!("img2simg {form}, {block_size}-byte blocks");
                let input = std::fs::read(&sparse).unwrap();
                let file = File::open(&sparse).unwrap();
                let layout = ChunkLayout::parse(&file).unwrap();
                assert_eq!(layout.block_size.to_string(), block_size, "{label}");
                let kinds = shape_of(&layout);
                assert!(
                    kinds.iter().any(|c| c.0 == "raw") && kinds.iter().any(|c| c.0 != "raw"),
                    "{label}: expected RAW and other chunks: {kinds:?}"
                );
                let view = SparseView::new(file, layout);
                assert!(expand_to_vec(&view) == raw, "{label}: expansion differs");

                let mut encoded = NamedTempFile::new_in(d).unwrap();
                let changed = encode_edited(&writable(&view), encoded.as_file_mut()).unwrap();
                assert_eq!(changed, 0, "{label}");
                let ours = std::fs::read(encoded.path()).unwrap();
                if le16(&input, 8) == 28 && le16(&input, 10) == 12 && le32(&input, 24) == 0 {
                    assert!(
                        ours == input,
                        "{label}: unchanged encoding differs from the input"
                    );
                }
                let back = d.join("back.img");
                let o = libsparse_tool("simg2img", &[encoded.path(), &back]);
                assert!(
                    o.status.success(),
                    "{label}: simg2img refused our encoding: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                assert!(
                    std::fs::read(&back).unwrap() == raw,
                    "{label}: simg2img of our encoding differs"
                );
            }
        }
    }
}
