//! Decoding an xz file stream by stream (on all cores where its blocks
//! carry their sizes), noting its layout for the boundaries.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use liblzma::stream::MtStreamBuilder;

use super::{layout, Index, SharedIndex};

/// The memory liblzma's threaded decoder may take for its threads (past
/// it, it starts no further thread; a block larger than all of it is
/// decoded on one): a thread on an `xz -T -6` block holds the 24 MiB it
/// decodes, the ~6 MiB compressed and an 8 MiB dictionary, so two threads
/// fit. More only queues finished blocks the reader has not taken yet:
/// at 128 MiB a 1 GB tarball's cold run peaked at 159 MiB, at 80 MiB at
/// 104 MiB in the same time (`xz -T2 -dc`: 137 MiB).
pub(super) const DECODE_MEMLIMIT: u64 = 80 << 20;

/// A decoder over each stream in turn (liblzma's threaded decoder decodes
/// the blocks of a stream on all cores when their headers carry sizes, as
/// `xz -T` writes them).
pub(crate) struct StreamsDecoder {
    file: File,
    streams: std::vec::IntoIter<(u64, u64)>,
    current: Option<liblzma::bufread::XzDecoder<io::BufReader<crate::io::progress::Reader<Span>>>>,
    threads: u32,
}

impl StreamsDecoder {
    fn next_stream(&mut self) -> io::Result<bool> {
        let Some((start, end)) = self.streams.next() else {
            self.current = None;
            return Ok(false);
        };
        let part = Span {
            file: self.file.try_clone()?,
            at: start,
            end,
        };
        let reader = io::BufReader::with_capacity(1 << 20, crate::io::progress::Reader(part));
        let stream = MtStreamBuilder::new()
            .threads(self.threads)
            .memlimit_threading(DECODE_MEMLIMIT)
            .memlimit_stop(u64::MAX)
            .decoder()
            .map_err(io::Error::other)?;
        self.current = Some(liblzma::bufread::XzDecoder::new_stream(reader, stream));
        Ok(true)
    }
}

impl Read for StreamsDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(d) = &mut self.current else {
                return Ok(0);
            };
            let n = d.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if !self.next_stream()? {
                return Ok(0);
            }
        }
    }
}

/// Bytes `at..end` of a file, read at their offsets: clones of one file
/// share its position, so seeking one would move the others.
pub(crate) struct Span {
    pub(super) file: File,
    pub(super) at: u64,
    pub(super) end: u64,
}

impl Read for Span {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 && want > 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// A decoder that notes the file's layout: each block start is a
/// boundary, and each LZMA2 chunk start inside a block whose only filter
/// is LZMA2 (found from the chunk headers before decoding). A file whose layout cannot be read (damage) is decoded plainly, which
/// says what is wrong, and has no boundaries.
pub(crate) fn indexing_decoder(file: File) -> (Box<dyn Read + Send>, Option<SharedIndex>) {
    let streams = file
        .metadata()
        .and_then(|m| layout(&file, m.len()))
        .ok()
        .flatten();
    let Some(streams) = streams else {
        return (super::super::Compression::Xz.decoder(file), None);
    };
    let spans: Vec<(u64, u64)> = streams.iter().map(|s| (s.start, s.end)).collect();
    let cuts = super::cut::cuttable(&file, &streams);
    let mut decoder = StreamsDecoder {
        file,
        streams: spans.into_iter(),
        current: None,
        threads: super::super::worker_count() as u32,
    };
    if let Err(e) = decoder.next_stream() {
        return (Box::new(super::super::FailingReader(Some(e))), None);
    }
    (Box::new(decoder), Some(Arc::new(Index { streams, cuts })))
}
