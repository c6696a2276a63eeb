//! The layout of an xz file read from its ends: each stream's footer and
//! index, without decoding anything; and an index and footer written anew.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{FOOTER_MAGIC, MAGIC, MAX_BLOCKS};

/// An xz variable-length integer at `at`, which it moves past it.
pub(crate) fn vli(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (i == 0 || b != 0).then_some(value);
        }
    }
    None
}

pub(super) fn put_vli(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One index record: a block's unpadded and uncompressed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) unpadded: u64,
    pub(crate) uncompressed: u64,
}

impl Record {
    /// The block's bytes in the file, with its padding.
    pub(super) fn padded(&self) -> u64 {
        self.unpadded.div_ceil(4) * 4
    }
}

/// One stream of a file, as its footer and index describe it.
#[derive(Debug, Clone)]
pub(crate) struct StreamLayout {
    /// File offset of its header.
    pub(crate) start: u64,
    /// File offset just past its footer.
    pub(crate) end: u64,
    pub(crate) flags: [u8; 2],
    /// Uncompressed bytes in the streams before it.
    pub(crate) out: u64,
    pub(crate) records: Vec<Record>,
}

impl StreamLayout {
    /// Each block's file offset and uncompressed offset (in the file).
    pub(super) fn blocks(&self) -> impl Iterator<Item = (u64, u64, &Record)> {
        let (mut at, mut out) = (self.start + 12, self.out);
        self.records.iter().map(move |r| {
            let here = (at, out, r);
            at += r.padded();
            out += r.uncompressed;
            here
        })
    }

    fn uncompressed(&self) -> u64 {
        self.records.iter().map(|r| r.uncompressed).sum()
    }
}

/// Reads the layout of every stream of a file of `len` bytes from its
/// footers and indexes; None when the file is not a well-formed xz file
/// (the decoder then says what is wrong) or lists too many blocks.
pub(crate) fn layout(file: &File, len: u64) -> io::Result<Option<Vec<StreamLayout>>> {
    let mut streams = Vec::new();
    let mut pos = len;
    let mut blocks = 0usize;
    loop {
        // Stream padding: zeros in 4-byte units before the end or the
        // next stream.
        while pos >= 4 {
            let mut w = [0u8; 4];
            file.read_exact_at(&mut w, pos - 4)?;
            if w != [0; 4] {
                break;
            }
            pos -= 4;
        }
        if pos == 0 {
            break;
        }
        if pos % 4 != 0 || pos < 24 {
            return Ok(None);
        }
        let mut footer = [0u8; 12];
        file.read_exact_at(&mut footer, pos - 12)?;
        if footer[10..] != FOOTER_MAGIC
            || crc32fast::hash(&footer[4..10])
                != u32::from_le_bytes(footer[..4].try_into().expect("4"))
        {
            return Ok(None);
        }
        let flags = [footer[8], footer[9]];
        let index_len =
            (u64::from(u32::from_le_bytes(footer[4..8].try_into().expect("4"))) + 1) * 4;
        let Some(index_start) = (pos - 12).checked_sub(index_len) else {
            return Ok(None);
        };
        if index_len > 64 << 20 {
            return Ok(None);
        }
        let mut index = vec![0u8; index_len as usize];
        file.read_exact_at(&mut index, index_start)?;
        let Some(records) = parse_index(&index) else {
            return Ok(None);
        };
        blocks += records.len();
        if blocks > MAX_BLOCKS {
            return Ok(None);
        }
        let body: u64 = records.iter().map(Record::padded).sum();
        let Some(start) = index_start
            .checked_sub(body)
            .and_then(|s| s.checked_sub(12))
        else {
            return Ok(None);
        };
        let mut header = [0u8; 12];
        file.read_exact_at(&mut header, start)?;
        if header[..6] != MAGIC
            || header[6..8] != flags
            || crc32fast::hash(&header[6..8])
                != u32::from_le_bytes(header[8..].try_into().expect("4"))
        {
            return Ok(None);
        }
        streams.push(StreamLayout {
            start,
            end: pos,
            flags,
            out: 0,
            records,
        });
        pos = start;
    }
    streams.reverse();
    let mut out = 0u64;
    for s in &mut streams {
        s.out = out;
        out += s.uncompressed();
    }
    Ok((!streams.is_empty()).then_some(streams))
}

/// The stream whose blocks hold file offset `at` (past its header,
/// before its end).
pub(super) fn stream_at(streams: &[StreamLayout], at: u64) -> Option<&StreamLayout> {
    streams.iter().find(|s| s.start < at && at < s.end)
}

/// An index's records, if its indicator, padding and CRC32 are right.
pub(super) fn parse_index(index: &[u8]) -> Option<Vec<Record>> {
    let n = index.len();
    if n < 8 || index[0] != 0 {
        return None;
    }
    let crc = u32::from_le_bytes(index[n - 4..].try_into().ok()?);
    if crc32fast::hash(&index[..n - 4]) != crc {
        return None;
    }
    let mut at = 1;
    let count = vli(index, &mut at)?;
    let mut records = Vec::new();
    for _ in 0..count {
        let unpadded = vli(index, &mut at)?;
        let uncompressed = vli(index, &mut at)?;
        // At least a block header (8) and one byte of data... the xz
        // format's minimum unpadded size is 5.
        if unpadded < 5 || records.len() >= MAX_BLOCKS {
            return None;
        }
        records.push(Record {
            unpadded,
            uncompressed,
        });
    }
    // Padding to 4 bytes, then the CRC32.
    if at.div_ceil(4) * 4 != n - 4 || index[at..n - 4].iter().any(|&b| b != 0) {
        return None;
    }
    Some(records)
}

/// The index and footer of a stream with `flags` holding `records`.
pub(crate) fn index_and_footer(flags: [u8; 2], records: &[Record]) -> Vec<u8> {
    let mut index = vec![0u8];
    put_vli(&mut index, records.len() as u64);
    for r in records {
        put_vli(&mut index, r.unpadded);
        put_vli(&mut index, r.uncompressed);
    }
    index.resize(index.len().div_ceil(4) * 4, 0);
    let crc = crc32fast::hash(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let backward = (index.len() / 4 - 1) as u32;
    let mut tail = backward.to_le_bytes().to_vec();
    tail.extend_from_slice(&flags);
    let crc = crc32fast::hash(&tail);
    index.extend_from_slice(&crc.to_le_bytes());
    index.extend_from_slice(&tail);
    index.extend_from_slice(&FOOTER_MAGIC);
    index
}

#[cfg(test)]
mod tests {
    use super::super::test_data::{data, xz};

    use liblzma::stream::Check;

    use super::*;

    #[test]
    fn damaged_ends_give_no_layout() {
        let file = xz(&data(100_000), 1, 30_000, Check::Crc64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        for cut in [1usize, 4, 12, 13] {
            std::fs::write(&path, &file[..file.len() - cut]).unwrap();
            let f = File::open(&path).unwrap();
            assert!(
                layout(&f, (file.len() - cut) as u64).unwrap().is_none(),
                "{cut}"
            );
        }
    }

    #[test]
    fn index_round_trips() {
        let records = [
            Record {
                unpadded: 5,
                uncompressed: 0,
            },
            Record {
                unpadded: 1 << 40,
                uncompressed: 300,
            },
        ];
        let bytes = index_and_footer([0, 4], &records);
        let back = parse_index(&bytes[..bytes.len() - 12]).unwrap();
        assert_eq!(back, records);
    }
}
