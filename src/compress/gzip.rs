//! gzip read with an index of deflate block boundaries, and rewritten by
//! keeping the compressed prefix and deflating only the tail.
//!
//! Deflate blocks start at bit positions, and a block may refer back 32 KiB
//! into earlier blocks. So to continue a stream at a block boundary one
//! needs the bit position, the 32 KiB window before it and the CRC so far.
//! The decoder here records those for the last few boundaries as it goes
//! (memory stays fixed), and the tar scan keeps the ones just before places
//! the plan may change. Writing then copies the compressed bytes up to the
//! boundary, primes a new deflate stream with the leftover bits and the
//! window, and deflates only what follows (the technique of zlib's
//! gzappend.c). The result is one valid gzip member.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use libz_rs_sys as z;

use super::invalid_data;
use super::recent::RecentBoundaries;

const WINDOW: usize = 32 * 1024;
const IN_BUF: usize = 256 * 1024;
const STREAM_SIZE: i32 = std::mem::size_of::<z::z_stream>() as i32;

/// Where a new deflate block starts: decoding can resume there (with the
/// window), and a rewrite keeps everything before it.
#[derive(Clone, PartialEq, Eq)]
pub struct Boundary {
    /// Bit offset in the gzip file.
    pub bit: u64,
    /// Uncompressed bytes before it.
    pub out: u64,
    /// CRC-32 of those bytes.
    pub crc: u32,
    /// The last (up to) 32 KiB of them.
    pub window: Vec<u8>,
}

/// What the decoder learned about the file, shared with the tar scan.
#[derive(Default)]
pub struct Index {
    recent: RecentBoundaries<Boundary>,
    /// False once a second gzip member (or anything after the first) shows
    /// up: the tail technique handles one member only.
    pub single_member: bool,
}

// The window is uncompressed image data: keep it out of debug output.
impl std::fmt::Debug for Boundary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Boundary {{ bit: {}, out: {} }}", self.bit, self.out)
    }
}

impl Index {
    /// The latest remembered boundary with at most `out` uncompressed
    /// bytes before it.
    pub fn boundary_before(&self, out: u64) -> Option<Boundary> {
        self.recent.latest(|b| b.out <= out)
    }
}

pub type SharedIndex = Arc<Mutex<Index>>;

/// The error for a zlib call that returned `code`.
fn zerr(what: &str, code: i32) -> io::Error {
    invalid_data(format!("{what} (zlib code {code})"))
}

/// Turns a zlib return code other than Z_OK into an error.
fn check(what: &str, code: i32) -> io::Result<()> {
    if code == z::Z_OK {
        Ok(())
    } else {
        Err(zerr(what, code))
    }
}

/// What went wrong when zlib's `call` refused to continue from `from`.
fn resume_failed(call: &str, from: &Boundary) -> String {
    format!(
        "cannot continue the deflate stream at bit {} of the gzip file: {call} failed",
        from.bit
    )
}

/// A raw (headerless) inflate or deflate stream; boxed because zlib keeps a
/// pointer back to it.
struct ZStream {
    strm: Box<z::z_stream>,
    deflate: bool,
}

// The stream owns its state exclusively; nothing in it is tied to a thread.
unsafe impl Send for ZStream {}

impl ZStream {
    fn inflate() -> io::Result<ZStream> {
        // SAFETY: init receives a zeroed, boxed (never moved) stream.
        Self::start(false, |strm| unsafe {
            z::inflateInit2_(strm, -15, z::zlibVersion(), STREAM_SIZE)
        })
    }

    fn deflate(level: i32) -> io::Result<ZStream> {
        // Raw deflate (-15), zlib's default memory level and strategy.
        // SAFETY: as above.
        Self::start(true, |strm| unsafe {
            z::deflateInit2_(
                strm,
                level,
                z::Z_DEFLATED,
                -15,
                8,
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                STREAM_SIZE,
            )
        })
    }

    fn start(deflate: bool, init: impl FnOnce(&mut z::z_stream) -> i32) -> io::Result<ZStream> {
        // SAFETY: a zeroed z_stream is the documented starting state.
        let mut strm: Box<z::z_stream> = Box::new(unsafe { std::mem::zeroed() });
        check("cannot start zlib", init(&mut strm))?;
        Ok(ZStream { strm, deflate })
    }

    /// One call of inflate from `input` into `buf`.
    fn inflate_step(&mut self, input: &[u8], buf: &mut [u8], flush: i32) -> Step {
        let strm = &mut *self.strm;
        strm.next_in = input.as_ptr() as *mut u8;
        strm.avail_in = input.len() as u32;
        strm.next_out = buf.as_mut_ptr();
        strm.avail_out = buf.len() as u32;
        // SAFETY: next_in/next_out point into live buffers of the given
        // sizes; inflate only reads the input.
        let code = unsafe { z::inflate(strm, flush) };
        Step {
            code,
            consumed: input.len() - strm.avail_in as usize,
            produced: buf.len() - strm.avail_out as usize,
            data_type: strm.data_type,
        }
    }

    /// The last (up to) 32 KiB inflate produced.
    fn window(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; WINDOW];
        let mut len: u32 = 0;
        // SAFETY: buf holds 32 KiB, the most inflate keeps.
        let code = unsafe { z::inflateGetDictionary(&*self.strm, buf.as_mut_ptr(), &mut len) };
        check("cannot read the inflate window", code)?;
        buf.truncate(len as usize);
        Ok(buf)
    }
}

impl Drop for ZStream {
    fn drop(&mut self) {
        // The codes say whether the stream was complete, which a stream
        // dropped early (after an error) is not; either way the memory is
        // freed.
        // SAFETY: initialised in the constructors, ended once.
        unsafe {
            if self.deflate {
                z::deflateEnd(&mut *self.strm);
            } else {
                z::inflateEnd(&mut *self.strm);
            }
        }
    }
}

/// What one inflate call did.
struct Step {
    code: i32,
    consumed: usize,
    produced: usize,
    /// zlib's bit flags about where inflate stopped (see Z_BLOCK).
    data_type: i32,
}

/// Length of the gzip member header at the start of `head`, or None if
/// `head` is not (or not enough of) a gzip header.
fn header_len(head: &[u8]) -> Option<usize> {
    if head.len() < 10 || head[0] != 0x1f || head[1] != 0x8b || head[2] != 8 {
        return None;
    }
    let flags = head[3];
    let mut at = 10;
    if flags & 4 != 0 {
        let xlen = u16::from_le_bytes([*head.get(at)?, *head.get(at + 1)?]) as usize;
        at += 2 + xlen;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            at += head.get(at..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    (at <= head.len()).then_some(at)
}

/// Decodes a gzip file (any number of members), recording block boundaries
/// of the first member into a shared [`Index`].
pub struct IndexingDecoder {
    file: File,
    /// File offset of `input[0]`.
    input_at: u64,
    input: Vec<u8>,
    /// Bytes of `input` consumed by inflate.
    used: usize,
    eof: bool,
    z: ZStream,
    crc: crc32fast::Hasher,
    member_out: u64,
    total_out: u64,
    first_member: bool,
    done: bool,
    index: SharedIndex,
}

impl IndexingDecoder {
    pub fn new(file: File) -> (IndexingDecoder, SharedIndex) {
        let index = Arc::new(Mutex::new(Index {
            recent: RecentBoundaries::default(),
            single_member: true,
        }));
        let decoder = IndexingDecoder {
            file,
            input_at: 0,
            input: Vec::with_capacity(IN_BUF),
            used: 0,
            eof: false,
            z: ZStream::inflate().expect("inflateInit2 with constant arguments"),
            crc: crc32fast::Hasher::new(),
            member_out: 0,
            total_out: 0,
            first_member: true,
            done: false,
            index: index.clone(),
        };
        (decoder, index)
    }

    /// Makes sure at least `want` unconsumed bytes are buffered, unless the
    /// file ends first.
    fn refill(&mut self, want: usize) -> io::Result<()> {
        if self.input.len() - self.used >= want || self.eof {
            return Ok(());
        }
        self.input.drain(..self.used);
        self.input_at += self.used as u64;
        self.used = 0;
        let have = self.input.len();
        self.input.resize(IN_BUF.max(want), 0);
        let mut filled = have;
        while filled < self.input.len() {
            let n = self
                .file
                .read_at(&mut self.input[filled..], self.input_at + filled as u64)?;
            crate::io::progress::advance(n as u64);
            if n == 0 {
                self.eof = true;
                break;
            }
            filled += n;
        }
        self.input.truncate(filled);
        Ok(())
    }

    fn truncated() -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, "the gzip stream is truncated")
    }

    /// Reads a member header at the current position.
    fn start_member(&mut self) -> io::Result<()> {
        self.refill(64 * 1024)?;
        let rest = &self.input[self.used..];
        let len = header_len(rest)
            .ok_or_else(|| invalid_data("not a gzip header (corrupt data after a gzip member?)"))?;
        self.used += len;
        Ok(())
    }

    /// Checks the trailer after a member's deflate data and looks for a
    /// next member.
    fn end_member(&mut self) -> io::Result<()> {
        self.refill(8)?;
        let rest = &self.input[self.used..];
        if rest.len() < 8 {
            return Err(Self::truncated());
        }
        let crc = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let ours = std::mem::take(&mut self.crc).finalize();
        if crc != ours || size != self.member_out as u32 {
            return Err(invalid_data(
                "gzip checksum or length mismatch: the file is corrupt",
            ));
        }
        self.used += 8;
        self.refill(1)?;
        if self.used == self.input.len() {
            self.done = true;
            return Ok(());
        }
        // A member never starts with a zero: zeros after the last one are
        // padding (as `dd` to a block device leaves), which gzip reads.
        if self.input[self.used] == 0 {
            self.skip_padding()?;
            self.done = true;
            return Ok(());
        }
        self.first_member = false;
        crate::sync::lock(&self.index).single_member = false;
        self.member_out = 0;
        // SAFETY: the stream was initialised; reset keeps its settings.
        let code = unsafe { z::inflateReset(&mut *self.z.strm) };
        check("cannot reset inflate for the next gzip member", code)?;
        self.start_member()
    }
}

impl IndexingDecoder {
    /// Reads the rest of the file, which must be zeros.
    fn skip_padding(&mut self) -> io::Result<()> {
        loop {
            if self.input[self.used..].iter().any(|&b| b != 0) {
                return Err(invalid_data(
                    "the gzip stream is followed by zero padding and then other bytes; only zeros may follow the last stream",
                ));
            }
            self.used = self.input.len();
            self.refill(1)?;
            if self.used == self.input.len() {
                return Ok(());
            }
        }
    }
}

impl Read for IndexingDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.input_at == 0 && self.used == 0 && self.total_out == 0 {
            self.start_member()?;
        }
        loop {
            self.refill(1)?;
            let step = self
                .z
                .inflate_step(&self.input[self.used..], buf, z::Z_BLOCK);
            let (code, produced, data_type) = (step.code, step.produced, step.data_type);
            self.used += step.consumed;
            self.crc.update(&buf[..produced]);
            self.member_out += produced as u64;
            self.total_out += produced as u64;
            match code {
                z::Z_STREAM_END => {
                    self.end_member()?;
                    if produced > 0 || self.done {
                        return Ok(produced);
                    }
                    continue;
                }
                z::Z_OK | z::Z_BUF_ERROR => {}
                _ => return Err(zerr("corrupt deflate data", code)),
            }
            // Bit 128: stopped right after a block ended; bit 64: that was
            // not the last block... (64 means the *current* block is last).
            if self.first_member && data_type & 128 != 0 && data_type & 64 == 0 {
                let bit = (self.input_at + self.used as u64) * 8 - (data_type & 7) as u64;
                let boundary = Boundary {
                    bit,
                    out: self.total_out,
                    crc: self.crc.clone().finalize(),
                    window: self.z.window()?,
                };
                let mut index = crate::sync::lock(&self.index);
                if index.recent.last().is_none_or(|b| b.bit != bit) {
                    index.recent.push(boundary);
                }
            }
            if produced > 0 {
                return Ok(produced);
            }
            if code == z::Z_BUF_ERROR && self.eof && self.used == self.input.len() {
                return Err(Self::truncated());
            }
        }
    }
}

/// Inflates the rest of a gzip member from a boundary: the uncompressed
/// bytes after its `out`.
pub struct TailInflater {
    file: File,
    at: u64,
    input: Vec<u8>,
    used: usize,
    z: ZStream,
    done: bool,
}

impl TailInflater {
    pub fn new(file: File, from: &Boundary) -> io::Result<TailInflater> {
        let mut z = ZStream::inflate()?;
        let byte_at = from.bit / 8;
        let bits = (from.bit % 8) as i32;
        let mut at = byte_at;
        if bits > 0 {
            // The boundary's byte: its high bits start the next block.
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, byte_at)?;
            // SAFETY: valid stream.
            let code = unsafe { z::inflatePrime(&mut *z.strm, 8 - bits, (b[0] >> bits) as i32) };
            check(&resume_failed("inflatePrime", from), code)?;
            at += 1;
        }
        // SAFETY: valid stream; the window slice outlives the call.
        let code = unsafe {
            z::inflateSetDictionary(&mut *z.strm, from.window.as_ptr(), from.window.len() as u32)
        };
        check(&resume_failed("inflateSetDictionary", from), code)?;
        Ok(TailInflater {
            file,
            at,
            input: Vec::new(),
            used: 0,
            z,
            done: false,
        })
    }
}

impl Read for TailInflater {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.done && !buf.is_empty() {
            if self.used == self.input.len() {
                self.input.resize(IN_BUF, 0);
                let n = self.file.read_at(&mut self.input, self.at)?;
                crate::io::progress::advance(n as u64);
                self.input.truncate(n);
                self.at += n as u64;
                self.used = 0;
                if n == 0 {
                    return Err(IndexingDecoder::truncated());
                }
            }
            let step = self
                .z
                .inflate_step(&self.input[self.used..], buf, z::Z_NO_FLUSH);
            self.used += step.consumed;
            let produced = step.produced;
            match step.code {
                z::Z_STREAM_END => self.done = true,
                z::Z_OK | z::Z_BUF_ERROR => {}
                _ => return Err(zerr("corrupt deflate data", step.code)),
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
        Ok(0)
    }
}

/// Deflates the new tail after a kept prefix and ends the gzip member with
/// the CRC and length of the whole uncompressed stream.
pub struct TailDeflater<W: Write> {
    sink: W,
    z: ZStream,
    crc: crc32fast::Hasher,
    len: u64,
    buf: Vec<u8>,
}

impl<W: Write> TailDeflater<W> {
    /// Continues the member after the kept prefix that ends at `from`;
    /// `last_byte` is the file byte holding the boundary's first bit: its
    /// low bits belong to the kept prefix and are re-emitted here.
    pub fn new(sink: W, from: &Boundary, last_byte: u8, level: i32) -> io::Result<Self> {
        let mut z = ZStream::deflate(level)?;
        let bits = (from.bit % 8) as i32;
        if bits > 0 {
            let low = (last_byte & ((1u8 << bits) - 1)) as i32;
            // SAFETY: valid stream.
            let code = unsafe { z::deflatePrime(&mut *z.strm, bits, low) };
            check(&resume_failed("deflatePrime", from), code)?;
        }
        // SAFETY: valid stream; the window slice outlives the call.
        let code = unsafe {
            z::deflateSetDictionary(&mut *z.strm, from.window.as_ptr(), from.window.len() as u32)
        };
        check(&resume_failed("deflateSetDictionary", from), code)?;
        Ok(TailDeflater {
            sink,
            z,
            crc: crc32fast::Hasher::new_with_initial_len(from.crc, from.out),
            len: from.out,
            buf: vec![0u8; IN_BUF],
        })
    }

    fn run(&mut self, data: &[u8], flush: i32) -> io::Result<()> {
        let strm = &mut *self.z.strm;
        strm.next_in = data.as_ptr() as *mut u8;
        strm.avail_in = data.len() as u32;
        loop {
            strm.next_out = self.buf.as_mut_ptr();
            strm.avail_out = self.buf.len() as u32;
            // SAFETY: live buffers of the given sizes.
            let code = unsafe { z::deflate(strm, flush) };
            let produced = self.buf.len() - strm.avail_out as usize;
            self.sink.write_all(&self.buf[..produced])?;
            match code {
                z::Z_STREAM_END => return Ok(()),
                z::Z_OK | z::Z_BUF_ERROR => {}
                _ => return Err(zerr("deflate failed", code)),
            }
            if strm.avail_in == 0 && strm.avail_out != 0 && flush != z::Z_FINISH {
                return Ok(());
            }
        }
    }

    /// Ends the deflate stream and writes the gzip trailer.
    pub fn finish(mut self) -> io::Result<W> {
        self.run(&[], z::Z_FINISH)?;
        let crc = self.crc.clone().finalize();
        self.sink.write_all(&crc.to_le_bytes())?;
        self.sink.write_all(&(self.len as u32).to_le_bytes())?;
        Ok(self.sink)
    }
}

impl<W: Write> Write for TailDeflater<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.crc.update(data);
        self.len += data.len() as u64;
        self.run(data, z::Z_NO_FLUSH)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        let plain = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        assert_eq!(header_len(&plain), Some(10));
        let mut named = plain.to_vec();
        named[3] = 8;
        named.extend(b"rootfs.tar\0");
        assert_eq!(header_len(&named), Some(21));
        assert_eq!(header_len(b"not gzip at all"), None);
    }
}
