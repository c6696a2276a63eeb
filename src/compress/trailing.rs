//! What may follow the last compressed stream of a file.
//!
//! Files copied to a block device with `dd` and read back, or cut by some
//! upload tools, end in zero bytes after the compressed data. Each codec's
//! own tool decides what it accepts, and imprint does the same:
//! - gzip (`gzip -t`, pigz) and bzip2 (`bzip2 -t`, pbzip2, lbzip2) read any
//!   number of zeros after the last stream, and so do GNU tar and bsdtar
//!   through them: [`Members`] reads them as padding;
//! - xz allows stream padding in multiples of 4 bytes (liblzma reads it);
//!   other lengths, and any zeros after a zstd frame, are refused by `xz`,
//!   `zstd`, GNU tar and bsdtar: [`padding_refused`] says so before any
//!   decoding starts, with the length to cut the file to.
//!
//! Outputs never carry the padding: they end with their last stream.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;

use super::{invalid_data, Compression, Padding};

/// A single-stream decoder over a buffered reader that stops exactly at
/// its stream's end, leaving what follows unread.
pub(crate) trait Member<R: BufRead>: Read {
    fn start(input: R) -> Self;
    fn into_input(self) -> R;
}

impl<R: BufRead> Member<R> for flate2::bufread::GzDecoder<R> {
    fn start(input: R) -> Self {
        flate2::bufread::GzDecoder::new(input)
    }
    fn into_input(self) -> R {
        self.into_inner()
    }
}

impl<R: BufRead> Member<R> for ::bzip2::bufread::BzDecoder<R> {
    fn start(input: R) -> Self {
        ::bzip2::bufread::BzDecoder::new(input)
    }
    fn into_input(self) -> R {
        self.into_inner()
    }
}

enum State<D> {
    Decoding(D),
    /// Only while a stream's end is being looked past.
    Between,
    Done,
}

/// Concatenated streams (gzip members, bzip2 streams as pbzip2 writes
/// them), then optionally zeros up to the end of the file.
pub(crate) struct Members<R: BufRead, D: Member<R>> {
    state: State<D>,
    codec: Compression,
    input: PhantomData<fn() -> R>,
}

impl<R: BufRead, D: Member<R>> Members<R, D> {
    pub(crate) fn new(input: R, codec: Compression) -> Self {
        Members {
            state: State::Decoding(D::start(input)),
            codec,
            input: PhantomData,
        }
    }
}

/// What comes after a stream's end.
enum After {
    End,
    Stream,
}

/// Looks past the end of a stream: the end of the file, another stream,
/// or zeros up to the end of the file (which it reads).
fn after_stream(input: &mut impl BufRead, codec: Compression) -> io::Result<After> {
    let next = input.fill_buf()?;
    let Some(&first) = next.first() else {
        return Ok(After::End);
    };
    if first != 0 {
        let magic = codec.facts().stream_magic;
        let n = next.len().min(magic.len());
        if next[..n] != magic[..n] {
            return Err(invalid_data(format!(
                "the {} stream is followed by bytes that are neither another {0} stream nor zero padding",
                codec.name()
            )));
        }
        return Ok(After::Stream);
    }
    loop {
        let rest = input.fill_buf()?;
        if rest.is_empty() {
            return Ok(After::End);
        }
        if rest.iter().any(|&b| b != 0) {
            return Err(invalid_data(format!(
                "the {} stream is followed by zero padding and then other bytes; only zeros may follow the last stream",
                codec.name()
            )));
        }
        let n = rest.len();
        input.consume(n);
    }
}

impl<R: BufRead, D: Member<R>> Read for Members<R, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let State::Decoding(decoder) = &mut self.state else {
                return Ok(0);
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let State::Decoding(decoder) = std::mem::replace(&mut self.state, State::Between)
            else {
                unreachable!("matched above");
            };
            let mut input = decoder.into_input();
            self.state = match after_stream(&mut input, self.codec)? {
                After::End => State::Done,
                After::Stream => State::Decoding(D::start(input)),
            };
        }
    }
}

/// Reads a bzip2 file (all its streams and any zero padding) sequentially.
pub(crate) fn bzip2_reader<R: BufRead>(input: R) -> impl Read {
    Members::<R, ::bzip2::bufread::BzDecoder<R>>::new(input, Compression::Bzip2)
}

/// Reads a gzip file (all its members and any zero padding).
pub(crate) fn gzip_reader<R: BufRead>(input: R) -> impl Read {
    Members::<R, flate2::bufread::GzDecoder<R>>::new(input, Compression::Gzip)
}

/// Zero padding after the compressed data that the codec's own tool
/// refuses, found before decoding so the message can say what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedPadding {
    /// Where the compressed data ends: the length to cut the file to.
    pub data_end: u64,
    /// Zero bytes after it.
    pub zeros: u64,
    /// What the codec's tool allows, for the message.
    pub rule: &'static str,
}

/// Zero padding at the end of `file` that `codec`'s tool refuses, as its
/// [`Padding`] says: any for zstd, a length that is not a multiple of 4
/// for xz. None if the file does not end in such padding (damage is left
/// to the decoder).
pub fn padding_refused(file: &File, codec: Compression) -> io::Result<Option<RefusedPadding>> {
    let len = file.metadata()?.len();
    let (data_end, rule) = match codec.facts().padding {
        Padding::None | Padding::AnyZeros => return Ok(None),
        Padding::Refused { data_end, rule } => {
            // Quick answer for the usual file, which ends in non-zero.
            if last_nonzero(file, len, 1)?.is_some_and(|at| at + 1 == len) {
                return Ok(None);
            }
            let Some(end) = data_end(file, len)? else {
                return Ok(None);
            };
            // Only zeros after the data make padding; anything else is
            // damage, for the decoder to report.
            if end == 0 || last_nonzero(file, len, len - end)?.is_some() {
                return Ok(None);
            }
            (end, rule)
        }
        Padding::Multiple { unit, footer, rule } => {
            // The stream ends with its footer's magic (xz: "YZ"), never a
            // zero, so the padding is exactly the zeros at the end.
            let Some(last) = last_nonzero(file, len, u64::MAX)? else {
                return Ok(None);
            };
            let end = last + 1;
            let n = footer.len() as u64;
            let mut found = vec![0u8; footer.len()];
            if end < n || file.read_exact_at(&mut found, end - n).is_err() || found != footer {
                return Ok(None);
            }
            if (len - end) % unit == 0 {
                return Ok(None);
            }
            (end, rule)
        }
    };
    Ok((data_end < len).then_some(RefusedPadding {
        data_end,
        zeros: len - data_end,
        rule,
    }))
}

/// The offset of the last non-zero byte of a file of `len` bytes, looking
/// back at most `max` bytes.
fn last_nonzero(file: &File, len: u64, max: u64) -> io::Result<Option<u64>> {
    let stop = len.saturating_sub(max);
    let mut buf = vec![0u8; 1 << 20];
    let mut end = len;
    while end > stop {
        let start = end.saturating_sub(buf.len() as u64).max(stop);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut e = ::bzip2::write::BzEncoder::new(Vec::new(), ::bzip2::Compression::new(9));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read(r: impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut r = r;
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn zeros_after_the_last_stream_are_padding_anything_else_is_refused() {
        let a = b"first member ".repeat(1000);
        let b = b"second member".repeat(1000);
        let mut whole = a.clone();
        whole.extend_from_slice(&b);
        for (codec, make) in [
            (Compression::Gzip, gzip as fn(&[u8]) -> Vec<u8>),
            (Compression::Bzip2, bzip2),
        ] {
            let reader = |bytes: Vec<u8>| -> io::Result<Vec<u8>> {
                // A small buffer, so padding and magics straddle refills.
                let input = io::BufReader::with_capacity(7, io::Cursor::new(bytes));
                match codec {
                    Compression::Gzip => read(gzip_reader(input)),
                    _ => read(bzip2_reader(input)),
                }
            };
            let mut two = make(&a);
            two.extend(make(&b));
            assert_eq!(reader(two.clone()).unwrap(), whole, "{codec:?}");
            for pad in [1usize, 3, 512, 100_000] {
                let mut padded = two.clone();
                padded.resize(two.len() + pad, 0);
                assert_eq!(reader(padded).unwrap(), whole, "{codec:?} + {pad}");
            }
            let mut garbage = two.clone();
            garbage.extend_from_slice(b"garbage");
            assert!(reader(garbage).is_err(), "{codec:?} garbage");
            let mut zeros_then_garbage = two.clone();
            zeros_then_garbage.extend_from_slice(&[0, 0, 0, 1]);
            let err = reader(zeros_then_garbage).unwrap_err();
            assert!(err.to_string().contains("only zeros"), "{err}");
        }
    }

    #[test]
    fn padding_zstd_and_xz_refuse_is_found_with_the_length_to_cut_to() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"some data ".repeat(10_000);
        let check = |codec: Compression, body: &[u8], pad: usize| {
            let path = dir.path().join("f");
            let mut bytes = body.to_vec();
            bytes.resize(body.len() + pad, 0);
            std::fs::write(&path, &bytes).unwrap();
            padding_refused(&File::open(&path).unwrap(), codec).unwrap()
        };
        let zst = ::zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(check(Compression::Zstd, &zst, 0), None);
        let refused = check(Compression::Zstd, &zst, 4096).unwrap();
        assert_eq!((refused.data_end, refused.zeros), (zst.len() as u64, 4096));
        let mut xz = Vec::new();
        liblzma::read::XzEncoder::new(&data[..], 6)
            .read_to_end(&mut xz)
            .unwrap();
        assert_eq!(check(Compression::Xz, &xz, 0), None);
        assert_eq!(check(Compression::Xz, &xz, 4096), None);
        let refused = check(Compression::Xz, &xz, 4097).unwrap();
        assert_eq!((refused.data_end, refused.zeros), (xz.len() as u64, 4097));
        // gzip and bzip2 padding is read, not refused.
        assert_eq!(check(Compression::Gzip, &gzip(&data), 4096), None);
    }
}
