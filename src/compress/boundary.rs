//! A boundary of any codec that has them (gzip, bzip2, zstd, xz), and the index
//! its decoder fills while it reads: what both the tar scan and the codec
//! layer around raw images use to keep the input's compressed bytes before
//! a first change.

use std::fs::File;
use std::io::Read;

use super::{bzip2 as bz2, gzip, xz, zstd as zst, Compression, Tail};

/// A block boundary of a compressed input a rewrite may start from.
#[derive(Debug, Clone)]
pub(crate) enum Boundary {
    Gzip(gzip::Boundary),
    Bzip2(bz2::Boundary),
    Zstd(zst::Boundary),
    Xz(xz::Boundary),
}

impl Boundary {
    /// Uncompressed bytes before it.
    pub(crate) fn out(&self) -> u64 {
        match self {
            Boundary::Gzip(b) => b.out,
            Boundary::Bzip2(b) => b.out,
            Boundary::Zstd(b) => b.out,
            Boundary::Xz(b) => b.out,
        }
    }
}

/// Where a compressed stream can be cut and continued, as its decoder
/// found them while reading.
pub(crate) enum BlockIndex {
    Gzip(gzip::SharedIndex),
    Bzip2(bz2::SharedIndex),
    Zstd(zst::SharedIndex),
    /// None: the file's layout could not be read (it is decoded plainly).
    Xz(Option<xz::SharedIndex>),
}

impl BlockIndex {
    /// A decoder over `file` that fills an index as it reads, for the
    /// codecs that have boundaries; the plain decoder for the others.
    pub(crate) fn decoder(
        codec: Compression,
        file: File,
    ) -> (Box<dyn Read + Send>, Option<BlockIndex>) {
        match codec.facts().tail {
            Tail::Boundaries { indexing } => {
                let (decoder, index) = indexing(file);
                (decoder, Some(index))
            }
            Tail::Plain | Tail::Rewrite => (codec.decoder(file), None),
        }
    }

    /// gzip's indexing decoder ([`Tail::Boundaries`]).
    pub(crate) fn gzip(file: File) -> (Box<dyn Read + Send>, BlockIndex) {
        let (decoder, index) = gzip::IndexingDecoder::new(file);
        (Box::new(decoder), BlockIndex::Gzip(index))
    }

    /// bzip2's, which also decodes on all cores.
    pub(crate) fn bzip2(file: File) -> (Box<dyn Read + Send>, BlockIndex) {
        let (decoder, index) = bz2::ParallelDecoder::open(file);
        (Box::new(decoder), BlockIndex::Bzip2(index))
    }

    /// zstd's.
    pub(crate) fn zstd(file: File) -> (Box<dyn Read + Send>, BlockIndex) {
        let (decoder, index) = zst::IndexingDecoder::new(file);
        (Box::new(decoder), BlockIndex::Zstd(index))
    }

    /// xz's: the layout from the file's indexes; every block start.
    pub(crate) fn xz(file: File) -> (Box<dyn Read + Send>, BlockIndex) {
        let (decoder, index) = xz::indexing_decoder(file);
        (decoder, BlockIndex::Xz(index))
    }

    /// The boundary the decoder remembers at or before uncompressed
    /// `offset`.
    pub(crate) fn boundary_before(&self, offset: u64) -> Option<Boundary> {
        match self {
            BlockIndex::Gzip(i) => crate::sync::lock(i)
                .boundary_before(offset)
                .map(Boundary::Gzip),
            BlockIndex::Bzip2(i) => crate::sync::lock(i)
                .boundary_before(offset)
                .map(Boundary::Bzip2),
            BlockIndex::Zstd(i) => crate::sync::lock(i)
                .boundary_before(offset)
                .map(Boundary::Zstd),
            BlockIndex::Xz(i) => i.as_ref()?.boundary_before(offset).map(Boundary::Xz),
        }
    }

    /// Whether the file is one stream the tail technique can continue
    /// (one gzip member, one zstd frame; bzip2 streams chain freely).
    pub(crate) fn whole_file(&self) -> bool {
        match self {
            BlockIndex::Gzip(i) => crate::sync::lock(i).single_member,
            BlockIndex::Bzip2(_) => true,
            BlockIndex::Zstd(i) => crate::sync::lock(i).single_frame,
            // Any block of any stream can be continued.
            BlockIndex::Xz(i) => i.is_some(),
        }
    }

    /// Whether a rewrite could keep anything: an xz file of one block
    /// with a BCJ or delta filter cannot (its scan compresses
    /// speculatively instead).
    pub(crate) fn keeps_blocks(&self) -> bool {
        match self {
            BlockIndex::Xz(i) => i.as_ref().is_some_and(|i| i.keeps_something()),
            _ => true,
        }
    }
}
