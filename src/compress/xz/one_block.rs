//! One more block after a tail's new blocks, in the same stream: pixz's
//! file index, which pixz reads from its stream's last block.

use std::io::{self, Write};

use liblzma::stream::{Filters, LzmaOptions};

use super::super::invalid_data;
use super::layout::parse_index;
use super::{check_of, index_and_footer, Record, FOOTER_MAGIC};

/// A stream's blocks written so far, its index and footer still to come.
pub(crate) struct Blocks<W: Write> {
    pub(super) sink: W,
    pub(super) records: Vec<Record>,
    pub(super) flags: [u8; 2],
}

impl<W: Write> Blocks<W> {
    /// A writer of one more block, with the stream's check: LZMA2 with a
    /// 1 MiB dictionary (what goes there is small), its header without
    /// sizes, as pixz and a single-threaded xz write theirs. pixz, reading
    /// from a pipe, takes an unsized block after sized ones for its file
    /// index.
    pub(crate) fn block(&mut self) -> io::Result<OneBlock<'_, W>> {
        let check = check_of(self.flags).ok_or_else(|| invalid_data("unknown xz check"))?;
        let mut lzma = LzmaOptions::new_preset(6).map_err(io::Error::other)?;
        lzma.dict_size(1 << 20);
        let mut filters = Filters::new();
        filters.lzma2(&lzma);
        let stream = liblzma::stream::Stream::new_stream_encoder(&filters, check)
            .map_err(io::Error::other)?;
        let held = HeldBack {
            sink: &mut self.sink,
            skip: 12,
            held: Vec::new(),
            passed: 0,
        };
        Ok(OneBlock {
            inner: liblzma::write::XzEncoder::new_stream(held, stream),
            records: &mut self.records,
        })
    }

    /// Ends the stream: the index of every block, and the footer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.sink
            .write_all(&index_and_footer(self.flags, &self.records))?;
        self.sink.flush()?;
        Ok(self.sink)
    }
}

/// One block of a stream: liblzma writes it as a stream of its own, whose
/// header is dropped and whose index and footer (the last bytes, held
/// back) give the block's record.
pub(crate) struct OneBlock<'b, W: Write> {
    inner: liblzma::write::XzEncoder<HeldBack<&'b mut W>>,
    records: &'b mut Vec<Record>,
}

impl<W: Write> Write for OneBlock<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Flushing would end an LZMA2 chunk early; nothing needs it.
        Ok(())
    }
}

impl<W: Write> OneBlock<'_, W> {
    /// Ends the block and notes its record.
    pub(crate) fn finish(self) -> io::Result<()> {
        let mut held = self.inner.finish()?;
        let tail = std::mem::take(&mut held.held);
        let bad = || invalid_data("liblzma's one-block stream has an unexpected end");
        let footer = tail.len().checked_sub(12).ok_or_else(bad)?;
        if tail[footer + 10..] != FOOTER_MAGIC {
            return Err(bad());
        }
        let backward =
            u32::from_le_bytes(tail[footer + 4..footer + 8].try_into().expect("4 bytes"));
        let index_len = (backward as usize + 1) * 4;
        let index_at = footer.checked_sub(index_len).ok_or_else(bad)?;
        let records = parse_index(&tail[index_at..footer]).ok_or_else(bad)?;
        let [record] = records[..] else {
            return Err(bad());
        };
        held.sink.write_all(&tail[..index_at])?;
        if held.passed + index_at as u64 != record.padded() {
            return Err(bad());
        }
        self.records.push(record);
        Ok(())
    }
}

/// Passes bytes on after dropping the first `skip`, holding the last few
/// back: a one-block stream's index and footer are at most 40 bytes.
struct HeldBack<W: Write> {
    sink: W,
    skip: usize,
    held: Vec<u8>,
    passed: u64,
}

impl<W: Write> Write for HeldBack<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let skip = self.skip.min(buf.len());
        self.skip -= skip;
        self.held.extend_from_slice(&buf[skip..]);
        const KEEP: usize = 64;
        if self.held.len() > 4 * KEEP {
            let pass = self.held.len() - KEEP;
            self.sink.write_all(&self.held[..pass])?;
            self.passed += pass as u64;
            self.held.drain(..pass);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data::{data, xz};
    use super::super::{last_block_out, layout, Continuation, FIRST_BLOCK};
    use super::*;
    use liblzma::stream::Check;
    use std::fs::File;
    use std::io::Read;

    /// After new blocks, one more block of other content (pixz's file
    /// index) ends the same stream, with every check, small or large: the
    /// file decodes to both, its layout names the last block where the
    /// extra content starts, and that block's header has no sizes.
    #[test]
    fn one_more_block_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.xz");
        for check in [Check::None, Check::Crc32, Check::Crc64, Check::Sha256] {
            for extra in [data(20), data(700_000)] {
                let file = xz(&data(300_000), 2, 100_000, check);
                std::fs::write(&path, &file).unwrap();
                let f = File::open(&path).unwrap();
                let c = Continuation::at(&f, file.len() as u64, &FIRST_BLOCK)
                    .unwrap()
                    .unwrap();
                // The stream header is kept.
                let mut out = file[..FIRST_BLOCK.offset as usize].to_vec();
                let mut e = c.encoder(&mut out, 2).unwrap();
                e.write_all(&data(250_000)).unwrap();
                let mut blocks = e.end_blocks().unwrap();
                let mut one = blocks.block().unwrap();
                one.write_all(&extra).unwrap();
                one.finish().unwrap();
                blocks.finish().unwrap();
                let mut back = Vec::new();
                liblzma::read::XzDecoder::new_multi_decoder(&out[..])
                    .read_to_end(&mut back)
                    .unwrap();
                let mut want = data(250_000);
                want.extend(&extra);
                assert!(back == want, "{check:?} {}", extra.len());
                std::fs::write(&path, &out).unwrap();
                let f = File::open(&path).unwrap();
                assert_eq!(last_block_out(&f).unwrap(), Some(250_000));
                let streams = layout(&f, out.len() as u64).unwrap().unwrap();
                let (at, _, _) = streams[0].blocks().last().unwrap();
                assert_eq!(out[at as usize + 1] & 0xc0, 0, "sizes in the header");
            }
        }
    }
}
