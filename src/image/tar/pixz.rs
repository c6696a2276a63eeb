//! pixz's file index, carried over to the output.
//!
//! `pixz` (and `tar -Ipixz`) writes a tar as xz blocks and then, as the
//! stream's last block, a file index: the little-endian u64 [`MAGIC`], then
//! per entry its name as libarchive reports it (the pax path, GNU long name
//! or ustar prefix/name, `./` and a directory's `/` included) and a NUL,
//! and the little-endian u64 offset of its first header (extension
//! headers included); last an empty name with the length of the tar (end
//! marker and record padding included), which is where the index starts
//! in the decompressed stream. Entries whose base name starts with `._`
//! (AppleDouble headers) get no record of their own: their offset goes to
//! the next record. pixz's blocks are of a fixed size, not aligned to
//! entries. `pixz -l` prints the names; `pixz -x NAME` decodes the blocks
//! that hold the named entries' byte ranges (from a record's offset to the
//! next one's); `pixz -d` and `pixz -x` read those ranges with libarchive
//! and fail when a name or a size differs from the index. (vasi/pixz,
//! src/write.c `add_file`/`write_file_index`, src/common.c
//! `read_file_index`, src/read.c `wanted_files` and the checks in
//! `pixz_read`.)
//!
//! An output keeps every input entry it copies byte for byte, so their
//! records are the input's, at the offsets they move to; the entries the
//! plan writes get records named as their headers name them. The scan
//! checks the input's index as it reads it ([`check`]); the writer reads
//! it again from the decoded tail and writes the new one ([`rebuild`]).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::edit::Piece;
use super::header::{self, Extensions};
use super::stream::Stream;
use super::{TarError, BLOCK};
use crate::compress::{xz, Compression};

/// The first 8 bytes of pixz's file index: the little-endian u64
/// 0xDBAE14D62E324CA6 (`PIXZ_INDEX_MAGIC` in vasi/pixz src/pixz.h).
pub(super) const MAGIC: [u8; 8] = 0xDBAE_14D6_2E32_4CA6u64.to_le_bytes();

/// Longer names are not credible (Linux paths stop at 4 KiB; pax allows
/// more, and libarchive reads up to 1 MiB of them).
const MAX_NAME: usize = 1 << 20;

/// One record: an entry's name, or none for the end record, and where it
/// starts.
struct Record {
    name: Vec<u8>,
    offset: u64,
}

/// The records of an index in the decompressed stream, checked as they
/// are read: offsets rising, every entry before the index, the end record
/// saying where the index starts, nothing after it.
struct Records<'s, 'a> {
    stream: &'s mut Stream<'a>,
    path: &'s Path,
    index_at: u64,
    buf: Vec<u8>,
    at: usize,
    last: Option<u64>,
    done: bool,
}

impl<'s, 'a> Records<'s, 'a> {
    /// The index at `index_at` of the archive `path`, which `stream` reads
    /// after the `read` bytes already taken from it.
    fn open(
        stream: &'s mut Stream<'a>,
        index_at: u64,
        read: &[u8],
        path: &'s Path,
    ) -> Result<Self, TarError> {
        let mut r = Records {
            stream,
            path,
            index_at,
            buf: read.to_vec(),
            at: 0,
            last: None,
            done: false,
        };
        r.want(MAGIC.len())?;
        if r.buf[..MAGIC.len()] != MAGIC {
            return Err(r.fault("does not start with pixz's magic number".into()));
        }
        r.at = MAGIC.len();
        Ok(r)
    }

    fn fault(&self, problem: String) -> TarError {
        fault(self.path, self.index_at, problem)
    }

    /// Reads more of the stream; false at its end.
    fn more(&mut self) -> Result<bool, TarError> {
        self.buf.drain(..self.at);
        self.at = 0;
        let have = self.buf.len();
        self.buf.resize(have + (64 << 10), 0);
        let n = self.stream.fill(&mut self.buf[have..])?;
        self.buf.truncate(have + n);
        Ok(n > 0)
    }

    /// Makes `n` unread bytes available, or says the index is cut short.
    fn want(&mut self, n: usize) -> Result<(), TarError> {
        while self.buf.len() - self.at < n {
            if !self.more()? {
                return Err(self.fault("ends in the middle of a record".into()));
            }
        }
        Ok(())
    }

    /// The next record; after the end record, `None`.
    fn next(&mut self) -> Result<Option<Record>, TarError> {
        if self.done {
            return Ok(None);
        }
        let mut searched = 0;
        let len = loop {
            let unread = &self.buf[self.at..];
            if let Some(nul) = unread[searched..].iter().position(|&b| b == 0) {
                break searched + nul;
            }
            searched = unread.len();
            if searched > MAX_NAME {
                return Err(self.fault("names an entry with more than 1 MiB of name".into()));
            }
            if !self.more()? {
                return Err(self.fault(if searched == 0 {
                    "ends before its end record".into()
                } else {
                    "ends in the middle of a record".into()
                }));
            }
        };
        let name = self.buf[self.at..self.at + len].to_vec();
        self.at += len + 1;
        self.want(8)?;
        let offset = u64::from_le_bytes(self.buf[self.at..self.at + 8].try_into().expect("8"));
        self.at += 8;
        let shown = String::from_utf8_lossy(&name).into_owned();
        if let Some(last) = self.last.filter(|&l| offset <= l) {
            return Err(self.fault(format!(
                "puts {shown} at byte {offset}, not after the entry before it (at byte {last})"
            )));
        }
        self.last = Some(offset);
        if name.is_empty() {
            if offset != self.index_at {
                return Err(self.fault(format!(
                    "says the archive ends at byte {offset}, where it is {} bytes long",
                    self.index_at
                )));
            }
            if self.at < self.buf.len() || self.more()? {
                return Err(self.fault("goes on after its end record".into()));
            }
            self.done = true;
        } else if offset >= self.index_at {
            return Err(self.fault(format!(
                "puts {shown} at byte {offset}, past the end of the archive (byte {})",
                self.index_at
            )));
        }
        Ok(Some(Record { name, offset }))
    }
}

fn fault(path: &Path, offset: u64, problem: String) -> TarError {
    TarError::PixzIndex {
        path: path.to_path_buf(),
        offset,
        problem,
    }
}

/// The scan's check of the index at `index_at` of the archive `path`
/// (`codec`), which `stream` reads after the `read` bytes already taken
/// from it: where pixz looks for it, and sound.
pub(super) fn check(
    stream: &mut Stream,
    index_at: u64,
    read: &[u8],
    path: &Path,
    codec: Compression,
) -> Result<(), TarError> {
    let last_block = match codec {
        Compression::Xz => File::open(path)
            .and_then(|f| xz::last_block_out(&f))
            .map_err(|source| TarError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        _ => None,
    };
    if last_block != Some(index_at) {
        let problem = match codec {
            Compression::Xz => {
                "is not the last block of a one-stream xz file, where pixz looks for it"
            }
            _ => "is not in an xz file, where pixz looks for it",
        };
        // Read to the end first: a damaged stream says so instead.
        stream.drain()?;
        return Err(fault(path, index_at, problem.into()));
    }
    let mut records = Records::open(stream, index_at, read, path)?;
    while records.next()?.is_some() {}
    Ok(())
}

/// Writes the index of the output that `pieces` make into `sink`, from the
/// input's index at `index_at`, which `input` (at or before it, past every
/// byte the pieces copy) reads.
pub(super) fn rebuild(
    input: &mut Stream,
    index_at: u64,
    pieces: &[Piece],
    sink: &mut dyn Write,
    path: &Path,
    out_path: &Path,
) -> Result<(), TarError> {
    let ahead = index_at.checked_sub(input.pos).ok_or_else(|| {
        fault(
            path,
            index_at,
            format!(
                "starts at byte {index_at}, before byte {} of the entries",
                input.pos
            ),
        )
    })?;
    input.skip(ahead)?;
    let mut old = Records::open(input, index_at, &[], path)?;
    let mut new = Writer {
        sink,
        out_path,
        multi_from: None,
    };
    new.bytes(&MAGIC)?;
    let mut next = old.next()?;
    let mut out = 0;
    for piece in pieces {
        match piece {
            Piece::Copy { start, end } => {
                // Records of entries the output drops.
                while next
                    .as_ref()
                    .is_some_and(|r| !r.name.is_empty() && r.offset < *start)
                {
                    next = old.next()?;
                }
                // A copy starts at an entry: the start of the archive or
                // the end of a dropped one.
                if !next
                    .as_ref()
                    .is_some_and(|r| !r.name.is_empty() && r.offset == *start)
                {
                    return Err(old.fault(format!(
                        "names no entry at byte {start}, where one starts; it does not belong to this archive"
                    )));
                }
                while let Some(r) = next.take_if(|r| !r.name.is_empty() && r.offset < *end) {
                    new.record(&r.name, out + r.offset - start)?;
                    next = old.next()?;
                }
            }
            Piece::Insert(bytes) => {
                for (name, at) in entries_in(bytes, out_path)? {
                    // The name's bytes, as the header holds them.
                    new.record(&crate::plan::name::to_bytes(&name), out + at)?;
                }
            }
        }
        out += piece.len();
    }
    while next.take_if(|r| !r.name.is_empty()).is_some() {
        next = old.next()?;
    }
    // `Records` ends only after the end record.
    new.record(b"", out)
}

/// The new index, as it is written.
struct Writer<'w> {
    sink: &'w mut dyn Write,
    out_path: &'w Path,
    /// Where a run of `._` entries started, which the next record takes.
    multi_from: Option<u64>,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) -> Result<(), TarError> {
        self.sink
            .write_all(bytes)
            .map_err(|source| TarError::Write {
                path: self.out_path.to_path_buf(),
                source,
            })
    }

    /// A record, folding `._` entries into the next one as pixz does.
    fn record(&mut self, name: &[u8], at: u64) -> Result<(), TarError> {
        let base = name.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if base.starts_with(b"._") {
            self.multi_from.get_or_insert(at);
            return Ok(());
        }
        let at = self.multi_from.take().unwrap_or(at);
        self.bytes(name)?;
        self.bytes(&[0])?;
        self.bytes(&at.to_le_bytes())
    }
}

/// The entries in bytes the plan inserts (whole entries, then perhaps the
/// end marker): each one's name as written and the offset of its first
/// header.
fn entries_in(bytes: &[u8], out_path: &Path) -> Result<Vec<(String, u64)>, TarError> {
    let block_at = |at: usize| -> Option<&[u8; 512]> { bytes.get(at..at + 512)?.try_into().ok() };
    let mut ext = Extensions::default();
    let mut found = Vec::new();
    let mut first_header = None;
    let mut at = 0usize;
    while let Some(block) = block_at(at) {
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let bad = |e: header::BadHeader| e.at(out_path, at as u64);
        let typeflag = header::typeflag(block);
        let size = header::size(block).map_err(bad)?;
        let data = at + BLOCK as usize;
        let first = *first_header.get_or_insert(at);
        if header::is_extension(typeflag) || typeflag == b'g' {
            let end = data + size.bytes() as usize;
            let content = bytes
                .get(data..end)
                .ok_or(header::BadHeader::Unreadable("size"))
                .map_err(bad)?;
            ext.add(typeflag, content).map_err(bad)?;
            at = data + size.padded() as usize;
            continue;
        }
        let mut after = data;
        if header::sparse_headers_follow(block) {
            while let Some(more) = block_at(after) {
                after += BLOCK as usize;
                if !header::sparse_extension_continues(more) {
                    break;
                }
            }
        }
        let entry = header::parse_entry(block, size, &mut ext).map_err(bad)?;
        found.push((entry.written, first as u64));
        first_header = None;
        at = after + entry.data_size.padded() as usize;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{EntryType, FileMeta};
    use header::{HeaderStyle, NewEntry};

    fn entry(style: HeaderStyle, name: &str, content: &[u8]) -> Vec<u8> {
        let dir = name.ends_with('/');
        let meta = FileMeta {
            kind: if dir {
                EntryType::Dir
            } else {
                EntryType::Regular
            },
            mode: 0o644,
            size: content.len() as u64,
            ..Default::default()
        };
        header::encode_entry(
            style,
            &NewEntry {
                name: name.into(),
                file_name: name.trim_end_matches('/').rsplit('/').next().unwrap(),
                typeflag: if dir {
                    ::tar::EntryType::Directory
                } else {
                    ::tar::EntryType::Regular
                },
                meta,
                uname: "",
                gname: "",
                linkname: None,
                records: Vec::new(),
                content,
            },
        )
        .to_vec()
    }

    /// Inserted entries are named as written (long names through pax
    /// or GNU extension headers) at their first header, up to the end
    /// marker.
    #[test]
    fn inserted_entries_are_named_as_written_at_their_first_header() {
        let long = format!("./etc/{}/device.conf", "d".repeat(150));
        for style in [HeaderStyle::Ustar, HeaderStyle::Pax, HeaderStyle::Gnu] {
            let mut bytes = entry(style, "./etc/azaion/", b"");
            let second = bytes.len() as u64;
            bytes.extend(entry(style, &long, &[7u8; 700]));
            let third = bytes.len() as u64;
            bytes.extend(entry(style, "etc/x", b"x"));
            bytes.extend([0u8; 1024]);
            bytes.extend(entry(style, "after/the/end", b""));
            let found = entries_in(&bytes, Path::new("out")).unwrap();
            let want = [
                ("./etc/azaion/".to_string(), 0),
                (long.clone(), second),
                ("etc/x".to_string(), third),
            ];
            assert_eq!(found, want, "{style:?}");
        }
    }

    /// `._` entries give their offset to the next record, as pixz's
    /// `add_file` does; the end record takes a trailing run's.
    #[test]
    fn appledouble_entries_fold_into_the_next_record() {
        let mut out = Vec::new();
        let mut w = Writer {
            sink: &mut out,
            out_path: Path::new("out"),
            multi_from: None,
        };
        for (name, at) in [
            (&b"./a"[..], 0u64),
            (b"./d/._b", 512),
            (b"./d/._c", 1024),
            (b"./d/b", 1536),
            (b"._z", 2048),
            (b"", 2560),
        ] {
            w.record(name, at).unwrap();
        }
        let mut want = Vec::new();
        for (name, at) in [(&b"./a"[..], 0u64), (b"./d/b", 512), (b"", 2048)] {
            want.extend(name);
            want.push(0);
            want.extend(at.to_le_bytes());
        }
        assert_eq!(out, want);
    }

    #[test]
    fn the_magic_is_what_pixz_writes() {
        // `xz -dc` of pixz 1.0.7's output, right after the tar.
        assert_eq!(MAGIC, [0xa6, 0x4c, 0x32, 0x2e, 0xd6, 0x14, 0xae, 0xdb]);
    }
}
