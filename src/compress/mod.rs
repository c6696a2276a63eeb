//! The compression layer: detection by magic bytes, and streaming decoders
//! and encoders for gzip, bzip2, zstd, xz and lz4.
//!
//! For gzip, bzip2 and zstd the codec modules also read with an index of
//! *boundaries* (places where decoding can resume and a rewrite can
//! continue after the input's own compressed bytes) and write such a
//! continuation, so a small change near the end of a big file does not
//! recompress all of it.

pub(crate) mod boundary;
pub(crate) mod bzip2;
pub(crate) mod gzip;
pub(crate) mod lz4;
mod recent;
pub(crate) mod trailing;
pub(crate) mod unsupported;
pub(crate) mod xxh64;
pub(crate) mod xz;
pub(crate) mod zstd;

use std::fs::File;
use std::io::{self, BufReader, Read, Write};

/// A file's outer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Zstd,
    Xz,
    Lz4,
}

/// What may follow a codec's last stream (see `trailing.rs`): each codec's
/// own tool decides, and imprint does as it does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Padding {
    /// Nothing is compressed, nothing is padding.
    None,
    /// Any number of zero bytes, read as padding (`gzip -t`, `bzip2 -t`).
    AnyZeros,
    /// Zeros in multiples of `unit` bytes after the stream's `footer`
    /// magic (xz); other lengths are refused, as `xz -t` refuses them.
    Multiple {
        unit: u64,
        footer: &'static [u8],
        rule: &'static str,
    },
    /// None at all (zstd): `data_end` finds where the codec's data ends
    /// in a file of the given length (`None`: it cannot tell, damage).
    Refused {
        data_end: fn(&File, u64) -> io::Result<Option<u64>>,
        rule: &'static str,
    },
}

/// How a rewrite keeps the input's compressed bytes before the first
/// change (`image/tar/write.rs`, `image/compressed/recompress.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tail {
    /// Uncompressed: the input's own bytes up to the change.
    Plain,
    /// `indexing` decodes while noting boundaries (`boundary::BlockIndex`),
    /// and a tail writer continues the stream after one (gzip, bzip2,
    /// zstd, xz; see "Adding a compression" in docs/architecture.md). An
    /// xz file of a single block has its LZMA2 chunk starts
    /// (`compress/xz/cut.rs`); behind a BCJ or delta filter it has none
    /// past its start, and the tar scan compresses it speculatively as it
    /// reads (`image/tar/speculate.rs`).
    Boundaries {
        indexing: fn(File) -> (Box<dyn Read + Send>, boundary::BlockIndex),
    },
    /// Nothing kept: every rewrite compresses the whole output anew (what
    /// a new codec gets until it has boundaries; lz4, see `lz4.rs`).
    Rewrite,
}

/// Everything imprint knows about one codec, in one place: adding a codec
/// is a [`Compression`] variant, its row in [`Compression::facts`], its
/// magic in `detect`, and its `decoder` and `encoder`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec {
    /// As messages to users name it.
    pub(crate) name: &'static str,
    /// The suffix its files usually carry: `NAME.wic.bmap` is found for
    /// `NAME.wic.zst`, and the output's block map named the same way.
    pub(crate) suffix: Option<&'static str>,
    /// The magic every stream starts with: what may follow a stream's end
    /// besides padding (concatenated gzip members, bzip2 streams).
    pub(crate) stream_magic: &'static [u8],
    pub(crate) padding: Padding,
    pub(crate) tail: Tail,
    /// Compresses on [`worker_count`] threads (the bytes do not depend on
    /// how many).
    pub(crate) parallel_encode: bool,
    /// Its boundary-noting decoder also decodes on [`worker_count`]
    /// threads (bzip2's blocks; xz's blocks whose headers carry their
    /// sizes, as `xz -T` writes them), so it is worth using even where no
    /// boundary is needed.
    pub(crate) parallel_decode: bool,
}

impl Compression {
    /// What imprint knows about the codec (see [`Codec`]).
    pub(crate) const fn facts(self) -> Codec {
        match self {
            Compression::None => Codec {
                name: "uncompressed",
                suffix: None,
                stream_magic: &[],
                padding: Padding::None,
                tail: Tail::Plain,
                parallel_encode: false,
                parallel_decode: false,
            },
            Compression::Gzip => Codec {
                name: "gzip",
                suffix: Some(".gz"),
                stream_magic: &[0x1f, 0x8b],
                padding: Padding::AnyZeros,
                tail: Tail::Boundaries {
                    indexing: boundary::BlockIndex::gzip,
                },
                parallel_encode: false,
                parallel_decode: false,
            },
            Compression::Bzip2 => Codec {
                name: "bzip2",
                suffix: Some(".bz2"),
                stream_magic: b"BZh",
                padding: Padding::AnyZeros,
                tail: Tail::Boundaries {
                    indexing: boundary::BlockIndex::bzip2,
                },
                parallel_encode: true,
                parallel_decode: true,
            },
            Compression::Zstd => Codec {
                name: "zstd",
                suffix: Some(".zst"),
                stream_magic: &[0x28, 0xb5, 0x2f, 0xfd],
                padding: Padding::Refused {
                    data_end: zstd::frames_end,
                    rule: "zstd, GNU tar and bsdtar refuse anything after the last zstd frame",
                },
                tail: Tail::Boundaries {
                    indexing: boundary::BlockIndex::zstd,
                },
                parallel_encode: true,
                parallel_decode: false,
            },
            Compression::Xz => Codec {
                name: "xz",
                suffix: Some(".xz"),
                stream_magic: &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
                padding: Padding::Multiple {
                    unit: 4,
                    footer: b"YZ",
                    rule: "xz allows zero padding only in multiples of 4 bytes (`xz -t` refuses this file too)",
                },
                tail: Tail::Boundaries {
                    indexing: boundary::BlockIndex::xz,
                },
                parallel_encode: true,
                parallel_decode: true,
            },
            Compression::Lz4 => Codec {
                name: "lz4",
                suffix: Some(".lz4"),
                stream_magic: &lz4::MAGIC,
                padding: Padding::Refused {
                    data_end: lz4::frames_end,
                    rule: "`lz4 -t` refuses anything after the last lz4 frame",
                },
                tail: Tail::Rewrite,
                parallel_encode: false,
                parallel_decode: false,
            },
        }
    }

    /// Recognises the compressed formats by their magic numbers.
    pub fn detect(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(b"BZh") && head.len() > 3 && (b'1'..=b'9').contains(&head[3]) {
            Some(Compression::Bzip2)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || zstd::after_skippable(head) {
            Some(Compression::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if head.starts_with(&lz4::MAGIC) {
            Some(Compression::Lz4)
        } else {
            None
        }
    }

    /// The format's name, as in messages to users.
    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// A streaming decoder over `file`. Multi-member gzip, multi-stream
    /// bzip2 (as pbzip2/lbzip2 write) and multi-frame zstd/xz are read
    /// whole, and so is the zero padding gzip, bzip2 and xz allow after the
    /// last stream (see `compress::trailing`).
    pub fn decoder(self, file: File) -> Box<dyn Read + Send> {
        let buffered = BufReader::with_capacity(1 << 20, crate::io::progress::Reader(file));
        match self {
            Compression::None => Box::new(buffered),
            Compression::Gzip => Box::new(trailing::gzip_reader(buffered)),
            Compression::Bzip2 => Box::new(trailing::bzip2_reader(buffered)),
            Compression::Zstd => match ::zstd::stream::read::Decoder::with_buffer(buffered) {
                Ok(d) => Box::new(d),
                Err(e) => Box::new(FailingReader(Some(e))),
            },
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buffered)),
            Compression::Lz4 => Box::new(lz4::Frames::new(buffered)),
        }
    }

    /// A streaming encoder into `sink`. Levels are the tools' defaults, and
    /// every header field that could carry a time or a name is left empty,
    /// so the same input gives the same bytes.
    pub fn encoder<'w, W: Write + Send + 'w>(self, sink: W) -> io::Result<Box<dyn Encoder + 'w>> {
        Ok(match self {
            Compression::None => Box::new(Plain(sink)),
            Compression::Gzip => Box::new(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(sink, flate2::Compression::new(6)),
            ),
            // Blocks compress on all cores; the bytes do not depend on
            // how many.
            Compression::Bzip2 => Box::new(self::bzip2::BlockEncoder::new(sink, b'9')),
            Compression::Zstd => {
                let mut encoder = ::zstd::stream::write::Encoder::new(sink, 3)?;
                // Worker threads compress while this thread reads the input;
                // the output bytes do not depend on the thread count.
                encoder.multithread(self.workers() as u32)?;
                Box::new(encoder)
            }
            Compression::Xz => self.xz_encoder(sink, liblzma::stream::Check::Crc64)?,
            Compression::Lz4 => Box::new(lz4::encoder(sink)),
        })
    }

    /// An encoder like [`Compression::encoder`] for an output made from
    /// `input`: xz keeps the input's check type (none, CRC32, CRC64,
    /// SHA-256).
    pub(crate) fn encoder_like<'w, W: Write + Send + 'w>(
        self,
        sink: W,
        input: &File,
    ) -> io::Result<Box<dyn Encoder + 'w>> {
        match self {
            Compression::Xz => self.xz_encoder(sink, xz::input_check(input)),
            _ => self.encoder(sink),
        }
    }

    fn xz_encoder<'w, W: Write + Send + 'w>(
        self,
        sink: W,
        check: liblzma::stream::Check,
    ) -> io::Result<Box<dyn Encoder + 'w>> {
        // Multithreaded xz cuts the input into blocks of a size set by the
        // preset, not by the thread count, so the bytes are the same on
        // any machine.
        let stream = liblzma::stream::MtStreamBuilder::new()
            .preset(6)
            .threads(self.workers() as u32)
            .check(check)
            .encoder()
            .map_err(io::Error::other)?;
        Ok(Box::new(liblzma::write::XzEncoder::new_stream(
            sink, stream,
        )))
    }
}

impl Compression {
    /// Threads the codec compresses on.
    pub(crate) fn workers(self) -> usize {
        if self.facts().parallel_encode {
            worker_count()
        } else {
            1
        }
    }
}

/// Threads a parallel codec compresses or decodes on: one per core, at
/// most 8.
fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// The error for input that is not what its format says.
fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A decoder that could not even start reports its error on first read.
struct FailingReader(Option<io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("decoder failed")))
    }
}

/// A compressing writer that must be told when the stream ends.
pub trait Encoder: Write {
    /// Writes the stream's trailer and flushes the underlying writer.
    fn finish_stream(self: Box<Self>) -> io::Result<()>;
}

struct Plain<W: Write>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Encoder for Plain<W> {
    fn finish_stream(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Encoder for flate2::write::GzEncoder<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish()?.flush()
    }
}

impl<W: Write> Encoder for gzip::TailDeflater<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish()?.flush()
    }
}

impl<W: Write> Encoder for ::zstd::stream::write::Encoder<'_, W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish()?.flush()
    }
}

impl<W: Write> Encoder for lz4_flex::frame::FrameEncoder<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish().map_err(io::Error::other)?.flush()
    }
}

impl<W: Write> Encoder for liblzma::write::XzEncoder<W> {
    fn finish_stream(self: Box<Self>) -> io::Result<()> {
        self.finish()?.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_codec() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Bzip2,
            Compression::Zstd,
            Compression::Xz,
            Compression::Lz4,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x");
            let mut enc = c.encoder(File::create(&path).unwrap()).unwrap();
            enc.write_all(&data).unwrap();
            enc.finish_stream().unwrap();
            let head = std::fs::read(&path).unwrap();
            if c != Compression::None {
                assert_eq!(Compression::detect(&head), Some(c));
            }
            // The facts row says what the codec writes.
            assert!(head.starts_with(c.facts().stream_magic), "{c:?}");
            let mut back = Vec::new();
            c.decoder(File::open(&path).unwrap())
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }
}
