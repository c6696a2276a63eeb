//! zstd read with an index of block boundaries, and rewritten by keeping
//! the compressed blocks before the first change.
//!
//! A zstd frame is a header, a run of blocks and an optional checksum (the
//! low 32 bits of XXH64 of the content). Compressed blocks depend on the
//! decoder's state (the window, entropy tables, repeat offsets), so new
//! *compressed* blocks cannot follow kept ones without that state; *raw*
//! blocks depend on nothing. So the rewrite keeps the input's blocks up to
//! the one that holds the first change, and writes the rest (a few KiB:
//! the end of that block, the new entries, the end-of-archive marker) as
//! raw blocks, then the new content size in the header and the checksum.
//! Only single-frame inputs qualify (what `zstd` writes, threads or not).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use zstd::zstd_safe::{self, DCtx, InBuffer, OutBuffer};

use super::invalid_data;
use super::recent::RecentBoundaries;
use super::xxh64::Xxh64;

const MAGIC: u32 = 0xFD2F_B528;
/// The largest block: min(window size, 128 KiB).
const MAX_BLOCK: usize = 128 * 1024;

/// A hash of the content so far: XXH64 with seed 0, whose low 32 bits are
/// the checksum a zstd frame may end with.
fn content_hash() -> Xxh64 {
    Xxh64::new()
}

/// A skippable frame's magic: 0x184D2A50 to 0x184D2A5F, little-endian.
fn is_skippable(magic: &[u8]) -> bool {
    magic.len() >= 4 && magic[0] & 0xF0 == 0x50 && magic[1..4] == [0x2A, 0x4D, 0x18]
}

/// Whether `head` starts with a skippable frame followed by a zstd frame,
/// as pzstd writes (its skippable frame records the compressed sizes). A
/// skippable frame alone says nothing: lz4 uses the same magics.
pub(crate) fn after_skippable(head: &[u8]) -> bool {
    if !is_skippable(head) || head.len() < 8 {
        return false;
    }
    let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let at = 8usize.saturating_add(size);
    head.get(at..at + 4) == Some(&MAGIC.to_le_bytes()[..])
}

/// The largest window imprint decodes: 2^27 bytes, libzstd's default
/// limit and what `zstd -d` accepts without `--long`/`--memory`. The
/// decoder holds a window of this size at most, which bounds its memory.
pub(crate) const MAX_WINDOW: u64 = 1 << 27;

/// The window the first zstd frame in `head` (after a pzstd skippable
/// frame) needs to be decoded: the window descriptor's size, or the
/// content size of a single-segment frame (libzstd's rule).
pub(crate) fn window_needed(head: &[u8]) -> Option<u64> {
    let at = if after_skippable(head) {
        8 + u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize
    } else {
        0
    };
    let header = FrameHeader::parse(head.get(at..)?).ok()?;
    match header.window {
        Some(w) => {
            let base = 1u64 << (10 + (w >> 3));
            Some(base + (base / 8) * u64::from(w & 7))
        }
        None => header.content_size,
    }
}

/// Where the zstd and skippable frames at the start of a file of `len`
/// bytes end (the first byte that starts neither), found by walking frame
/// and block headers without decoding; None if a frame runs past the end
/// of the file.
pub(crate) fn frames_end(file: &File, len: u64) -> io::Result<Option<u64>> {
    let read = |buf: &mut [u8], at: u64| -> io::Result<bool> {
        if at.saturating_add(buf.len() as u64) > len {
            return Ok(false);
        }
        file.read_exact_at(buf, at)?;
        Ok(true)
    };
    let mut at = 0u64;
    loop {
        let mut magic = [0u8; 8];
        if !read(&mut magic[..4], at)? {
            return Ok(Some(at));
        }
        if is_skippable(&magic) {
            if !read(&mut magic[4..], at + 4)? {
                return Ok(None);
            }
            at += 8 + u64::from(u32::from_le_bytes([magic[4], magic[5], magic[6], magic[7]]));
            continue;
        }
        if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) != MAGIC {
            return Ok(Some(at));
        }
        let mut d = [0u8; 1];
        if !read(&mut d, at + 4)? {
            return Ok(None);
        }
        at += 5 + FrameHeader::rest_len(d[0]) as u64;
        loop {
            let mut bh = [0u8; 3];
            if !read(&mut bh, at)? {
                return Ok(None);
            }
            let raw = u32::from_le_bytes([bh[0], bh[1], bh[2], 0]);
            // An RLE block's body is the one byte it repeats.
            let body = if (raw >> 1) & 3 == 1 {
                1
            } else {
                u64::from(raw >> 3)
            };
            at += 3 + body;
            if raw & 1 == 1 {
                break;
            }
        }
        if d[0] & 0x04 != 0 {
            at += 4;
        }
        if at > len {
            return Ok(None);
        }
    }
}

/// The frame checksum for the content `hash` has seen.
fn frame_checksum(hash: &Xxh64) -> [u8; 4] {
    (hash.digest() as u32).to_le_bytes()
}

/// A zstd frame header, as far as the rewrite needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes, magic included.
    pub len: usize,
    descriptor: u8,
    window: Option<u8>,
    dict_id: Vec<u8>,
    content_size: Option<u64>,
}

impl FrameHeader {
    /// Bytes after the 5 of magic and descriptor.
    fn rest_len(descriptor: u8) -> usize {
        let single = descriptor & 0x20 != 0;
        let dict = [0, 1, 2, 4][usize::from(descriptor & 3)];
        let fcs = match descriptor >> 6 {
            0 if single => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        usize::from(!single) + dict + fcs
    }

    /// Parses a header from its first bytes (magic, descriptor, the rest).
    fn parse(bytes: &[u8]) -> io::Result<FrameHeader> {
        if bytes.len() < 5 || u32::from_le_bytes(bytes[..4].try_into().expect("4")) != MAGIC {
            return Err(invalid_data("not a zstd frame"));
        }
        let d = bytes[4];
        if d & 0x08 != 0 {
            return Err(invalid_data("zstd frame header has a reserved bit set"));
        }
        let len = 5 + Self::rest_len(d);
        if bytes.len() < len {
            return Err(invalid_data("zstd frame header cut short"));
        }
        let single = d & 0x20 != 0;
        let mut at = 5;
        let window = (!single).then(|| {
            at += 1;
            bytes[5]
        });
        let dict_len = [0, 1, 2, 4][usize::from(d & 3)];
        let dict_id = bytes[at..at + dict_len].to_vec();
        at += dict_len;
        let fcs = &bytes[at..len];
        let content_size = match fcs.len() {
            0 => None,
            1 => Some(u64::from(fcs[0])),
            2 => Some(u64::from(u16::from_le_bytes([fcs[0], fcs[1]])) + 256),
            4 => Some(u64::from(u32::from_le_bytes(fcs.try_into().expect("4")))),
            _ => Some(u64::from_le_bytes(fcs.try_into().expect("8"))),
        };
        Ok(FrameHeader {
            len,
            descriptor: d,
            window,
            dict_id,
            content_size,
        })
    }

    fn has_checksum(&self) -> bool {
        self.descriptor & 0x04 != 0
    }

    /// The largest block a frame of `content_size` bytes may hold:
    /// min(window size, 128 KiB), the window being the content size for a
    /// single-segment frame.
    fn max_block(&self, content_size: u64) -> usize {
        let window = match self.window {
            None => content_size,
            Some(w) => {
                let base = 1u64 << (10 + (w >> 3));
                base + (base / 8) * u64::from(w & 7)
            }
        };
        window.min(MAX_BLOCK as u64).max(1) as usize
    }

    /// The same header for a frame of `size` content bytes.
    pub fn with_content_size(&self, size: u64) -> Vec<u8> {
        let single = self.window.is_none();
        let (flag, fcs): (u8, Vec<u8>) = match self.content_size {
            None => (0, Vec::new()),
            Some(_) if single && size < 256 => (0, vec![size as u8]),
            Some(_) if (256..256 + 65536).contains(&size) => {
                (1, ((size - 256) as u16).to_le_bytes().to_vec())
            }
            Some(_) if size <= u64::from(u32::MAX) && !(single && size < 256) => {
                (2, (size as u32).to_le_bytes().to_vec())
            }
            Some(_) => (3, size.to_le_bytes().to_vec()),
        };
        let mut out = MAGIC.to_le_bytes().to_vec();
        out.push((self.descriptor & 0x3f) | (flag << 6));
        out.extend(self.window);
        out.extend_from_slice(&self.dict_id);
        out.extend(fcs);
        out
    }
}

/// Where a block starts: a rewrite keeps the blocks before it and goes on
/// with what this holds.
#[derive(Clone)]
pub struct Boundary {
    /// File offset of the block's header.
    pub offset: u64,
    /// Uncompressed bytes before the block.
    pub out: u64,
    /// The content hash over those bytes.
    hash: Xxh64,
    /// The block's own content, re-emitted raw up to the cut.
    pub data: Arc<Vec<u8>>,
    pub header: Arc<FrameHeader>,
}

// The block content is image data: keep it out of debug output.
impl std::fmt::Debug for Boundary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Boundary {{ offset: {}, out: {} }}",
            self.offset, self.out
        )
    }
}

/// A boundary's parts as the scan cache (`src/cache/`) keeps them.
pub struct BoundaryParts {
    pub offset: u64,
    pub out: u64,
    /// [`Xxh64::export`] of the content hash before the block.
    pub hash: Vec<u8>,
    pub data: Vec<u8>,
    /// The frame header's bytes as the input has them.
    pub header: Vec<u8>,
}

impl Boundary {
    /// Its parts; `file_head` is the input's first bytes (at least the
    /// frame header).
    pub fn export(&self, file_head: &[u8]) -> Option<BoundaryParts> {
        Some(BoundaryParts {
            offset: self.offset,
            out: self.out,
            hash: self.hash.export().to_vec(),
            data: self.data.as_ref().clone(),
            header: file_head.get(..self.header.len)?.to_vec(),
        })
    }

    /// The boundary `parts` describe, if they can describe one.
    pub fn import(parts: BoundaryParts) -> Option<Boundary> {
        let header = FrameHeader::parse(&parts.header).ok()?;
        (header.len == parts.header.len()
            && parts.data.len() <= MAX_BLOCK
            && parts.offset >= header.len as u64)
            .then_some(())?;
        Some(Boundary {
            offset: parts.offset,
            out: parts.out,
            hash: Xxh64::import(&parts.hash)?,
            data: Arc::new(parts.data),
            header: Arc::new(header),
        })
    }
}

impl Boundary {
    /// Cuts the frame here, for a rewrite that keeps the blocks before the
    /// boundary and starts a new frame after them: the frame header for
    /// the `out` bytes before the boundary, and what ends the frame after
    /// those blocks (an empty last block, and the checksum if the frame has
    /// one). Header, the input's bytes from the end of its own header to
    /// `offset`, and the end make one valid frame.
    pub fn cut_frame(&self) -> (Vec<u8>, Vec<u8>) {
        let header = self.header.with_content_size(self.out);
        // A raw block of no bytes, marked last: 3 bytes, little-endian.
        let mut end = vec![1, 0, 0];
        if self.header.has_checksum() {
            end.extend(frame_checksum(&self.hash));
        }
        (header, end)
    }
}

/// What the decoder learned about the file, shared with the tar scan.
#[derive(Default)]
pub struct Index {
    recent: RecentBoundaries<Boundary>,
    /// False when the file is not exactly one frame.
    pub single_frame: bool,
}

impl Index {
    /// The latest remembered boundary with at most `out` uncompressed
    /// bytes before it.
    pub fn boundary_before(&self, out: u64) -> Option<Boundary> {
        self.recent.latest(|b| b.out <= out)
    }
}

pub type SharedIndex = Arc<Mutex<Index>>;

/// Decodes a zstd file, feeding the first frame block by block so that it
/// knows where each block's output starts.
pub struct IndexingDecoder {
    input: BufReader<crate::io::progress::Reader<File>>,
    offset: u64,
    dctx: DCtx<'static>,
    header: Option<Arc<FrameHeader>>,
    /// The first frame is done; the rest is decoded as a plain stream.
    past_first: bool,
    eof: bool,
    /// Output being decoded, then `piece` once complete.
    decoded: Vec<u8>,
    piece: Arc<Vec<u8>>,
    piece_at: usize,
    /// Uncompressed bytes handed on so far.
    out: u64,
    /// The content hash of the first frame's blocks decoded so far.
    hash: Xxh64,
    index: SharedIndex,
}

impl IndexingDecoder {
    pub fn new(file: File) -> (IndexingDecoder, SharedIndex) {
        let index = SharedIndex::default();
        let decoder = IndexingDecoder {
            input: BufReader::with_capacity(1 << 20, crate::io::progress::Reader(file)),
            offset: 0,
            dctx: DCtx::create(),
            header: None,
            past_first: false,
            eof: false,
            decoded: Vec::new(),
            piece: Arc::default(),
            piece_at: 0,
            out: 0,
            hash: content_hash(),
            index: index.clone(),
        };
        (decoder, index)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid_data(format!(
                    "the zstd stream is cut short at byte {}",
                    self.offset
                ))
            } else {
                e
            }
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Feeds `input` to the decoder and appends all it gives to
    /// `self.decoded`.
    fn decode(&mut self, input: &[u8]) -> io::Result<()> {
        let mut src = InBuffer::around(input);
        loop {
            let start = self.decoded.len();
            self.decoded
                .resize(start + MAX_BLOCK.max(zstd_safe::DCtx::out_size()), 0);
            let mut dst = OutBuffer::around(&mut self.decoded[start..]);
            let result = self.dctx.decompress_stream(&mut dst, &mut src);
            let n = dst.pos();
            self.decoded.truncate(start + n);
            result.map_err(|code| {
                invalid_data(format!("zstd: {}", zstd_safe::get_error_name(code)))
            })?;
            if src.pos() == input.len() && n == 0 {
                return Ok(());
            }
        }
    }

    /// Decodes the next piece of output into `self.piece`; false at the
    /// end.
    fn next_piece(&mut self) -> io::Result<bool> {
        self.decoded = Vec::with_capacity(MAX_BLOCK);
        let more = self.decode_piece()?;
        self.piece = Arc::new(std::mem::take(&mut self.decoded));
        self.piece_at = 0;
        if let Some(mut boundary) = more {
            boundary.data = self.piece.clone();
            let mut index = crate::sync::lock(&self.index);
            index.recent.push(boundary);
        }
        Ok(!self.eof)
    }

    /// Decodes a block of the first frame (returning its boundary) or a
    /// chunk of what follows it.
    fn decode_piece(&mut self) -> io::Result<Option<Boundary>> {
        if self.past_first {
            let mut chunk = vec![0u8; 1 << 17];
            let n = self.input.read(&mut chunk)?;
            if n == 0 {
                self.eof = true;
                return Ok(None);
            }
            self.offset += n as u64;
            // Anything after the first frame (another frame, a skippable
            // frame) rules the block rewrite out; it is still decoded.
            crate::sync::lock(&self.index).single_frame = false;
            self.decode(&chunk[..n])?;
            return Ok(None);
        }
        let header = match &self.header {
            Some(h) => h.clone(),
            None => {
                let mut head = vec![0u8; 5];
                self.read_exact(&mut head[..4])?;
                if is_skippable(&head) {
                    // pzstd starts with a skippable frame: no block
                    // rewrite, the whole stream is decoded as it comes.
                    self.decode(&head[..4])?;
                    self.past_first = true;
                    return Ok(None);
                }
                self.read_exact(&mut head[4..])?;
                let rest = FrameHeader::rest_len(head[4]);
                head.resize(5 + rest, 0);
                self.read_exact(&mut head[5..])?;
                let header = Arc::new(FrameHeader::parse(&head)?);
                self.decode(&head)?;
                crate::sync::lock(&self.index).single_frame = true;
                self.header = Some(header.clone());
                header
            }
        };
        let block_offset = self.offset;
        let mut bh = [0u8; 3];
        self.read_exact(&mut bh)?;
        let raw = u32::from_le_bytes([bh[0], bh[1], bh[2], 0]);
        let last = raw & 1 == 1;
        let size = (raw >> 3) as usize;
        let body = match (raw >> 1) & 3 {
            0 | 2 => size,
            1 => 1,
            _ => return Err(invalid_data("zstd block of the reserved type")),
        };
        if body > MAX_BLOCK {
            return Err(invalid_data("zstd block larger than 128 KiB"));
        }
        let mut block = vec![0u8; 3 + body];
        block[..3].copy_from_slice(&bh);
        self.read_exact(&mut block[3..])?;
        let hash_before = self.hash.clone();
        self.decode(&block)?;
        if last && header.has_checksum() {
            let mut sum = [0u8; 4];
            self.read_exact(&mut sum)?;
            self.decode(&sum)?;
        }
        // Only a frame that carries a checksum needs one for its new tail.
        if header.has_checksum() {
            self.hash.update(&self.decoded);
        }
        if last {
            self.past_first = true;
        }
        Ok(Some(Boundary {
            offset: block_offset,
            out: self.out,
            hash: hash_before,
            data: Arc::default(),
            header,
        }))
    }
}

impl Read for IndexingDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece_at == self.piece.len() {
            if self.eof || !self.next_piece()? {
                return Ok(0);
            }
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.piece.len() - self.piece_at);
        buf[..n].copy_from_slice(&self.piece[self.piece_at..self.piece_at + n]);
        self.piece_at += n;
        self.out += n as u64;
        Ok(n)
    }
}

/// Writes the rest of a frame after kept blocks: raw blocks, then the
/// checksum if the frame has one.
pub struct TailWriter<W: Write> {
    sink: W,
    pending: Vec<u8>,
    max_block: usize,
    hash: Xxh64,
    checksum: bool,
}

impl<W: Write> TailWriter<W> {
    /// Continues the frame after the blocks before `from`; the frame will
    /// hold `content_size` bytes in all.
    pub fn new(sink: W, from: &Boundary, content_size: u64) -> Self {
        let max_block = from.header.max_block(content_size);
        TailWriter {
            sink,
            pending: Vec::with_capacity(max_block),
            max_block,
            hash: from.hash.clone(),
            checksum: from.header.has_checksum(),
        }
    }

    fn block(&mut self, last: bool) -> io::Result<()> {
        let header = ((self.pending.len() as u32) << 3) | u32::from(last);
        self.sink.write_all(&header.to_le_bytes()[..3])?;
        self.sink.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    /// Writes the last block and the checksum, and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.block(true)?;
        if self.checksum {
            self.sink.write_all(&frame_checksum(&self.hash))?;
        }
        self.sink.flush()?;
        Ok(self.sink)
    }
}

impl<W: Write> Write for TailWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.pending.len() == self.max_block {
            self.block(false)?;
        }
        let n = data.len().min(self.max_block - self.pending.len());
        self.pending.extend_from_slice(&data[..n]);
        self.hash.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skippable_frame_counts_only_before_a_zstd_frame() {
        let mut pzstd = vec![0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 9, 9, 9, 9];
        pzstd.extend_from_slice(&MAGIC.to_le_bytes());
        assert!(after_skippable(&pzstd));
        // An lz4 file may start with the same skippable magics.
        let mut lz4 = pzstd[..12].to_vec();
        lz4.extend_from_slice(&0x184D_2204u32.to_le_bytes());
        assert!(!after_skippable(&lz4));
        assert!(!after_skippable(&pzstd[..10]));
        assert!(!after_skippable(&[0xFF; 4]));
    }

    #[test]
    fn content_hash_is_xxh64_and_gives_the_frame_checksum() {
        let digest = |data: &[u8]| {
            let mut h = content_hash();
            h.update(data);
            h.digest()
        };
        assert_eq!(digest(b"abc"), xxhash_rust::xxh64::xxh64(b"abc", 0));
        assert_eq!(digest(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(digest(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(digest(b"abc"), 0x44BC_2CF5_AD77_0999);
        // Byte-at-a-time updates give the same as one update, and a state
        // cloned midway (as a boundary keeps it) goes on alike.
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = content_hash();
        for b in &long[..333] {
            h.update(std::slice::from_ref(b));
        }
        let mut kept = h.clone();
        for b in &long[333..] {
            h.update(std::slice::from_ref(b));
        }
        kept.update(&long[333..]);
        assert_eq!(h.digest(), digest(&long));
        assert_eq!(kept.digest(), digest(&long));
        // The checksum is the one the zstd library writes.
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.include_checksum(true).unwrap();
        let frame = c.compress(&long).unwrap();
        let mut h = content_hash();
        h.update(&long);
        assert_eq!(frame_checksum(&h), frame[frame.len() - 4..]);
    }

    #[test]
    fn blocks_stay_within_the_window() {
        let with_window = |window| FrameHeader {
            len: 0,
            descriptor: 0x04,
            window,
            dict_id: Vec::new(),
            content_size: None,
        };
        // Exponent 2 (4 KiB), exponent 2 with mantissa 1 (+1/8), 2 MiB.
        assert_eq!(with_window(Some(0x10)).max_block(1 << 30), 4096);
        assert_eq!(with_window(Some(0x11)).max_block(1 << 30), 4608);
        assert_eq!(with_window(Some(0x58)).max_block(1 << 30), MAX_BLOCK);
        // Single segment: the window is the content.
        assert_eq!(with_window(None).max_block(3000), 3000);
        assert_eq!(with_window(None).max_block(1 << 30), MAX_BLOCK);
    }

    #[test]
    fn header_content_size_round_trips() {
        for (descriptor, window) in [(0x84u8, Some(0x58u8)), (0xa4, None), (0x04, Some(0x58))] {
            let h = FrameHeader {
                len: 0,
                descriptor,
                window,
                dict_id: Vec::new(),
                content_size: (descriptor >> 6 != 0 || window.is_none()).then_some(1000),
            };
            for size in [0u64, 255, 256, 65791, 65792, 1 << 31, 1 << 40] {
                let bytes = h.with_content_size(size);
                let back = FrameHeader::parse(&bytes).unwrap();
                assert_eq!(back.len, bytes.len());
                let want = h.content_size.map(|_| size);
                assert_eq!(back.content_size, want, "{descriptor:#x} {size}");
                assert_eq!(back.has_checksum(), h.has_checksum());
            }
        }
    }

    #[test]
    fn a_frame_cut_at_any_boundary_decodes_to_the_bytes_before_it() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| ((i / 7) % 251) as u8 ^ (i % 13) as u8)
            .collect();
        for checksum in [true, false] {
            let mut e = ::zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            e.include_checksum(checksum).unwrap();
            e.set_pledged_src_size(Some(data.len() as u64)).unwrap();
            e.write_all(&data).unwrap();
            let file = e.finish().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.zst");
            std::fs::write(&path, &file).unwrap();
            let (mut d, index) = IndexingDecoder::new(File::open(&path).unwrap());
            let mut cut_any = false;
            let mut buf = vec![0u8; 200_000];
            let mut at = 0u64;
            loop {
                let n = d.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                at += n as u64;
                let Some(b) = crate::sync::lock(&index).boundary_before(at) else {
                    continue;
                };
                let (head, end) = b.cut_frame();
                let old_header = b.header.len;
                let mut frame = head;
                frame.extend_from_slice(&file[old_header..b.offset as usize]);
                frame.extend_from_slice(&end);
                let back = ::zstd::stream::decode_all(&frame[..]).unwrap();
                assert!(back == data[..b.out as usize], "cut at {}", b.out);
                cut_any = true;
            }
            assert!(cut_any);
        }
    }
}
