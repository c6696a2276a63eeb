//! The one walk over a tar archive's headers: the scan (`scan.rs`) and
//! `ls`/`cat` (`listing.rs`) are visitors on it.
//!
//! [`Entries`] reads the decompressed archive block by block: it checks
//! each header's checksum, takes in extension headers (pax, GNU long names,
//! global pax headers, the first bounded by [`MAX_DB_SIZE`]) and GNU sparse
//! extension blocks, and yields each real entry with its parsed header,
//! where its first extension header starts, where its data starts, and
//! its headers as raw bytes. Before the next entry it skips whatever of the
//! data the visitor did not read.

use std::path::Path;

use super::header::{self, BadHeader, DataSize, Extensions, Header, HeaderStyle};
use super::pax::Record;
use super::sparse;
use super::stream::Stream;
use super::{TarError, MAX_DB_SIZE};
use crate::compress::Compression;

/// One entry of the archive, as the walk found it.
pub(super) struct Entry<M> {
    /// Its header, with the extension headers before it applied.
    pub(super) header: Header,
    /// Offset of its first extension header (pax, GNU long name), or of
    /// its header when it has none: where its bytes start.
    pub(super) start: u64,
    /// What the walk's mark said at `start`.
    pub(super) start_mark: M,
    /// Offset of the header block itself.
    pub(super) at: u64,
    /// Offset of its data (after any GNU sparse extension blocks).
    pub(super) data_at: u64,
}

impl<M> Entry<M> {
    /// Where its bytes end: after its data's padding.
    pub(super) fn end(&self) -> u64 {
        self.data_at + self.header.data_size.padded()
    }
}

/// Where the entries end.
pub(super) struct End<M> {
    /// Offset of the first end-of-archive zero block, or of the end of the
    /// stream in an archive without one.
    pub(super) at: u64,
    /// What the walk's mark said there.
    pub(super) mark: M,
    /// Whether a zero block ended the entries (the stream goes on after
    /// it: the rest of the end marker and the record's padding).
    pub(super) marker: bool,
}

/// The entries of an archive, one at a time.
///
/// `mark` is asked at every header block for what the visitor wants to
/// know of the bytes before it (the scan of a plain archive for writing:
/// the SHA-256 state of its prefix); an entry carries the mark taken at its
/// first extension header.
pub(super) struct Entries<'a, M, F: FnMut() -> M> {
    stream: Stream<'a>,
    path: &'a Path,
    mark: F,
    ext: Extensions,
    style: Option<HeaderStyle>,
    /// The current entry's extension headers, header and sparse blocks.
    raw: Vec<u8>,
    /// Where the current entry's data ends (with padding).
    data_end: u64,
    end: Option<End<M>>,
}

/// The entries of the archive file `path` under `codec`, from its start
/// (for walks that need no marks).
pub(super) fn open(path: &Path, codec: Compression) -> Result<Entries<'_, (), fn()>, TarError> {
    let file = std::fs::File::open(path).map_err(|source| TarError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let stream = Stream::new(codec.decoder(file), 0, path, codec);
    Ok(Entries::new(stream, path, (|| ()) as fn()))
}

impl<'a, M, F: FnMut() -> M> Entries<'a, M, F> {
    /// Walks the archive `path` that `stream` reads, from its start.
    pub(super) fn new(stream: Stream<'a>, path: &'a Path, mark: F) -> Self {
        Entries {
            data_end: stream.pos,
            stream,
            path,
            mark,
            ext: Extensions::default(),
            style: None,
            raw: Vec::new(),
            end: None,
        }
    }

    /// The next entry, with the stream at its data; `None` at the end of
    /// the entries ([`Entries::end`] says where).
    pub(super) fn next_entry(&mut self) -> Result<Option<Entry<M>>, TarError> {
        if self.end.is_some() {
            return Ok(None);
        }
        // A visitor reads at most the entry's data.
        let left = self.data_end.saturating_sub(self.stream.pos);
        self.stream.skip(left)?;
        self.raw.clear();
        // The first extension header's offset and mark.
        let mut pending: Option<(u64, M)> = None;
        let mut block = [0u8; 512];
        loop {
            let at = self.stream.pos;
            let at_mark = (self.mark)();
            let n = self.stream.fill(&mut block)?;
            if n == 0 {
                // No end-of-archive marker; tolerated as GNU tar does.
                return Ok(self.ended(at, at_mark, false));
            }
            if n < block.len() {
                return Err(TarError::Truncated {
                    path: self.path.to_path_buf(),
                    offset: at,
                });
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(self.ended(at, at_mark, true));
            }
            if !header::checksum_ok(&block) {
                return Err(TarError::BadChecksum {
                    path: self.path.to_path_buf(),
                    offset: at,
                });
            }
            let bad_header = |e: BadHeader| e.at(self.path, at);
            let typeflag = header::typeflag(&block);
            let size = header::size(&block).map_err(bad_header)?;
            if matches!(self.style, None | Some(HeaderStyle::Ustar)) {
                if let Some(style) = header::style_of(&block) {
                    self.style = Some(style);
                }
            }
            if header::is_extension(typeflag) || typeflag == b'g' {
                self.extension(&block, size, at)?;
                // Global pax headers apply to the archive, not one entry:
                // they stay where they are.
                if typeflag != b'g' && pending.is_none() {
                    pending = Some((at, at_mark));
                }
                continue;
            }
            let header_at = self.raw.len();
            self.raw.extend_from_slice(&block);
            if header::sparse_headers_follow(&block) {
                loop {
                    let mut more = [0u8; 512];
                    self.stream.read_exact(&mut more)?;
                    self.raw.extend_from_slice(&more);
                    if !header::sparse_extension_continues(&more) {
                        break;
                    }
                }
            }
            let mut header =
                header::parse_entry(&block, size, &mut self.ext).map_err(bad_header)?;
            if typeflag == b'S' {
                // An old GNU sparse file: its map is in the header blocks.
                let sparse = sparse::old_gnu(&self.raw[header_at..])
                    .ok_or(BadHeader::Unreadable("sparse map"))
                    .map_err(bad_header)?;
                header.meta.size = sparse.real_size;
                header.sparse = Some(sparse);
            }
            let (start, start_mark) = pending.unwrap_or((at, at_mark));
            let data_at = self.stream.pos;
            self.data_end = data_at + header.data_size.padded();
            return Ok(Some(Entry {
                header,
                start,
                start_mark,
                at,
                data_at,
            }));
        }
    }

    /// Takes in the extension header `block` at `at` and its data.
    fn extension(&mut self, block: &[u8; 512], size: DataSize, at: u64) -> Result<(), TarError> {
        let typeflag = header::typeflag(block);
        if size.bytes() > MAX_DB_SIZE {
            return Err(BadHeader::Unreadable("extended header size").at(self.path, at));
        }
        let mut data = buffer(size, self.path, at)?;
        self.stream.read_exact(&mut data)?;
        self.stream.skip(size.padding())?;
        self.ext
            .add(typeflag, &data)
            .map_err(|e| e.at(self.path, at))?;
        if typeflag != b'g' {
            self.raw.extend_from_slice(block);
            self.raw.extend_from_slice(&data);
            self.raw.resize(self.raw.len() + size.padding() as usize, 0);
        }
        Ok(())
    }

    fn ended(&mut self, at: u64, mark: M, marker: bool) -> Option<Entry<M>> {
        self.end = Some(End { at, mark, marker });
        None
    }

    /// Where the entries ended, once [`Entries::next_entry`] said so.
    pub(super) fn end(&mut self) -> Option<End<M>> {
        self.end.take()
    }

    /// The current entry's extension headers, header and GNU sparse
    /// blocks, as in the input.
    pub(super) fn raw_header(&self) -> &[u8] {
        &self.raw
    }

    /// The archive's header style, from the headers so far.
    pub(super) fn style(&self) -> Option<HeaderStyle> {
        self.style
    }

    /// The records of the global pax headers so far, merged.
    pub(super) fn globals(&self) -> &[Record] {
        self.ext.globals()
    }

    /// The stream, at the current entry's data (or past the end marker).
    pub(super) fn stream(&mut self) -> &mut Stream<'a> {
        &mut self.stream
    }

    /// Reads the current entry's data whole: the caller has bounded its
    /// size.
    pub(super) fn read_data(&mut self, entry: &Entry<M>) -> Result<Vec<u8>, TarError> {
        let mut data = buffer(entry.header.data_size, self.path, entry.at)?;
        self.stream.read_exact(&mut data)?;
        Ok(data)
    }
}

/// A buffer for data of `size`, which the header at `offset` of `path`
/// gives; the callers bound `size` well below what memory holds.
fn buffer(size: DataSize, path: &Path, offset: u64) -> Result<Vec<u8>, TarError> {
    let len = usize::try_from(size.bytes()).map_err(|_| {
        BadHeader::OutOfRange {
            field: "size",
            value: size.bytes().to_string(),
        }
        .at(path, offset)
    })?;
    Ok(vec![0u8; len])
}
