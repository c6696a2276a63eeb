//! LZMA2 chunk boundaries, found from the chunk headers alone.
//!
//! An xz block's LZMA2 data is a run of chunks, each starting with a
//! control byte that says what it is and how long it is, so the chunk
//! starts can be walked without decoding anything:
//!
//! - `0x00`: the end of the data (one byte).
//! - `0x01` / `0x02`: an uncompressed chunk, with (`0x01`) or without a
//!   dictionary reset; a 16-bit big-endian size minus one follows.
//! - `0x80..=0xFF`: an LZMA chunk. Bits 5-6 say what it resets (0: nothing,
//!   1: the state, 2: the state and new properties, 3: also the
//!   dictionary), bits 0-4 are the top of its unpacked size minus one;
//!   then 16 bits more of that, 16 bits of its packed size minus one, and
//!   from `0xC0` on a properties byte (lc, lp, pb).
//!
//! Any chunk start is a place an encoder can continue from: a decoder
//! that has read the chunks before it holds their output as its
//! dictionary, and a chunk that resets the state and sets new properties
//! (`0xC0`, what liblzma's LZMA2 encoder begins with when it is given a
//! preset dictionary) is valid there. The rules checked are liblzma's
//! (`lzma2_decoder.c`): the first chunk resets the dictionary, and an LZMA
//! chunk after a dictionary reset sets properties.

/// A chunk start in a block's LZMA2 data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Offset of its control byte in the LZMA2 data.
    pub(crate) at: u64,
    /// Uncompressed bytes before it.
    pub(crate) out: u64,
    /// Uncompressed offset of the last dictionary reset at or before it:
    /// a decoder's dictionary there holds nothing older.
    pub(crate) dict_start: u64,
}

/// More chunks than this and a block is not cut inside (a real block has
/// one per 64 KiB of compressed data; a hostile one could have one per 4
/// bytes).
pub(crate) const MAX_CHUNKS: usize = 1 << 20;

/// A chunk header: its length and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Bytes of the header itself.
    pub(crate) len: u64,
    /// Compressed bytes after the header.
    pub(crate) packed: u64,
    /// Uncompressed bytes the chunk decodes to.
    pub(crate) unpacked: u64,
    pub(crate) dict_reset: bool,
    /// An LZMA chunk (not an uncompressed one).
    pub(crate) lzma: bool,
    /// It sets new properties (lc, lp, pb).
    pub(crate) props: bool,
}

/// The header at the start of `head` (at most 6 bytes are looked at);
/// `Ok(None)` for the end marker, `Err(())` for a control byte or
/// properties liblzma refuses, or a header cut short.
#[allow(clippy::result_unit_err)]
pub(crate) fn parse(head: &[u8]) -> Result<Option<Header>, ()> {
    let control = *head.first().ok_or(())?;
    let be16 = |i: usize| -> Result<u64, ()> {
        let b = head.get(i..i + 2).ok_or(())?;
        Ok(u64::from(u16::from_be_bytes([b[0], b[1]])))
    };
    match control {
        0x00 => Ok(None),
        0x01 | 0x02 => {
            let size = be16(1)? + 1;
            Ok(Some(Header {
                len: 3,
                packed: size,
                unpacked: size,
                dict_reset: control == 0x01,
                lzma: false,
                props: false,
            }))
        }
        0x03..=0x7f => Err(()),
        _ => {
            let unpacked = (u64::from(control & 0x1f) << 16) + be16(1)? + 1;
            let packed = be16(3)? + 1;
            let props = control >= 0xc0;
            if props {
                // lc + lp <= 4 and pb <= 4, as LZMA2 allows.
                let p = *head.get(5).ok_or(())?;
                let (lc, lp, pb) = (p % 9, (p / 9) % 5, p / 45);
                if p > 224 || lc + lp > 4 || pb > 4 {
                    return Err(());
                }
            }
            Ok(Some(Header {
                len: if props { 6 } else { 5 },
                packed,
                unpacked,
                dict_reset: control >= 0xe0,
                lzma: true,
                props,
            }))
        }
    }
}

/// Every chunk start of LZMA2 data `len` bytes long, and the uncompressed
/// bytes it decodes to, read with `read_at` (which fills as much of the
/// buffer as the data has from an offset and says how much). `Ok(None)` when the headers do not walk to an end
/// marker at the data's last byte (damage: the decoder says what is
/// wrong), break liblzma's rules, or are too many.
pub(crate) fn walk<E>(
    len: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
) -> Result<Option<(Vec<Chunk>, u64)>, E> {
    let mut chunks = Vec::new();
    let (mut at, mut out, mut dict_start) = (0u64, 0u64, 0u64);
    let mut need_props = true;
    let mut head = [0u8; 6];
    while at < len {
        let want = head.len().min((len - at) as usize);
        let n = read_at(at, &mut head[..want])?;
        let Ok(header) = parse(&head[..n.min(want)]) else {
            return Ok(None);
        };
        let Some(h) = header else {
            // The end marker must be the data's last byte.
            return Ok((at + 1 == len).then_some((chunks, out)));
        };
        if at == 0 && !h.dict_reset {
            return Ok(None);
        }
        if h.dict_reset {
            dict_start = out;
            need_props = true;
        }
        if h.lzma {
            if need_props && !h.props {
                return Ok(None);
            }
            need_props = false;
        }
        if chunks.len() == MAX_CHUNKS {
            return Ok(None);
        }
        chunks.push(Chunk {
            at,
            out,
            dict_start,
        });
        at = match at.checked_add(h.len + h.packed) {
            Some(next) => next,
            None => return Ok(None),
        };
        out += h.unpacked;
    }
    Ok(None)
}

/// The chunk starts of LZMA2 data held in memory and its uncompressed
/// length (see [`walk`]); the unit tests' and fuzz harness's entry (the
/// writer walks a file).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn chunks(data: &[u8]) -> Option<(Vec<Chunk>, u64)> {
    let read = |at: u64, buf: &mut [u8]| -> Result<usize, std::convert::Infallible> {
        let from = &data[at as usize..];
        let n = buf.len().min(from.len());
        buf[..n].copy_from_slice(&from[..n]);
        Ok(n)
    };
    match walk(data.len() as u64, read) {
        Ok(found) => found,
        Err(never) => match never {},
    }
}

/// The latest chunk of `chunks` that starts after the data's first byte
/// and at or before uncompressed offset `out`.
pub(crate) fn last_at_or_before(chunks: &[Chunk], out: u64) -> Option<Chunk> {
    let i = chunks.partition_point(|c| c.out <= out);
    chunks[..i].iter().rev().find(|c| c.at > 0).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::{Filters, LzmaOptions, Stream};

    fn raw_lzma2(data: &[u8], preset: u32) -> Vec<u8> {
        let mut f = Filters::new();
        f.lzma2(&LzmaOptions::new_preset(preset).unwrap());
        let mut s = Stream::new_raw_encoder(&f).unwrap();
        let mut out = Vec::with_capacity(data.len() + 1024);
        s.process_vec(data, &mut out, liblzma::stream::Action::Finish)
            .unwrap();
        while s
            .process_vec(&[], &mut out, liblzma::stream::Action::Finish)
            .unwrap()
            != liblzma::stream::Status::StreamEnd
        {
            out.reserve(1 << 16);
        }
        out
    }

    #[test]
    fn headers_say_their_kind_and_sizes() {
        assert_eq!(parse(&[0]), Ok(None));
        let h = parse(&[1, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.len, h.packed, h.unpacked), (3, 257, 257));
        assert!(h.dict_reset && !h.lzma);
        let h = parse(&[0x81, 0x00, 0x02, 0x00, 0x09]).unwrap().unwrap();
        assert_eq!((h.len, h.packed, h.unpacked), (5, 10, (1 << 16) + 3));
        assert!(!h.dict_reset && h.lzma && !h.props);
        let h = parse(&[0xe0, 0, 0, 0, 0, 0x5d]).unwrap().unwrap();
        assert!(h.dict_reset && h.props && h.len == 6);
        // Control bytes 3..=0x7f, and properties past lc + lp = 4.
        assert_eq!(parse(&[0x03, 0, 0]), Err(()));
        assert_eq!(parse(&[0xc0, 0, 0, 0, 0, 225]), Err(()));
        assert_eq!(parse(&[0xc0, 0, 0, 0, 0, 4 + 9]), Err(()));
        assert_eq!(parse(&[0x80, 0, 0]), Err(()));
    }

    #[test]
    fn the_walk_matches_what_liblzma_wrote() {
        // Text-like data of several MiB: many chunks (64 KiB compressed or
        // 2 MiB uncompressed each), and random bytes: uncompressed chunks.
        let mut data: Vec<u8> = (0..3_000_000u32)
            .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ ((i / 997) % 3) as u8)
            .collect();
        let mut x = 1u64;
        data.extend((0..300_000).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        }));
        let lz = raw_lzma2(&data, 6);
        let (chunks, total) = chunks(&lz).unwrap();
        assert_eq!(total, data.len() as u64);
        assert!(chunks.len() > 5, "{}", chunks.len());
        assert_eq!(
            chunks[0],
            Chunk {
                at: 0,
                out: 0,
                dict_start: 0
            }
        );
        for w in chunks.windows(2) {
            assert!(w[0].at < w[1].at && w[0].out < w[1].out);
        }
        // Each chunk's output is where the decoder says: decoding the
        // data up to a chunk start gives exactly `out` bytes.
        for c in [chunks[1], chunks[chunks.len() / 2], *chunks.last().unwrap()] {
            let mut cut = lz[..c.at as usize].to_vec();
            cut.push(0);
            let mut f = Filters::new();
            f.lzma2(&LzmaOptions::new_preset(6).unwrap());
            let mut d = Stream::new_raw_decoder(&f).unwrap();
            let mut back = Vec::with_capacity(data.len());
            d.process_vec(&cut, &mut back, liblzma::stream::Action::Finish)
                .unwrap();
            assert_eq!(back.len() as u64, c.out);
            assert!(back[..] == data[..c.out as usize]);
        }
        // Cut short, or a byte past the end marker: no walk.
        assert!(super::chunks(&lz[..lz.len() - 1]).is_none());
        let mut longer = lz.clone();
        longer.push(0);
        assert!(super::chunks(&longer).is_none());
        assert_eq!(
            last_at_or_before(&chunks, chunks[3].out + 1),
            Some(chunks[3])
        );
        assert_eq!(last_at_or_before(&chunks, chunks[1].out - 1), None);
    }

    #[test]
    fn the_first_chunk_resets_the_dictionary() {
        // A chunk without a dictionary reset first, an LZMA chunk without
        // properties after a reset: liblzma refuses both.
        assert!(chunks(&[0x02, 0, 0, b'a', 0]).is_none());
        assert!(chunks(&[0x01, 0, 0, b'a', 0x80, 0, 0, 0, 0, 0, 0]).is_none());
        let (ok, total) = chunks(&[0x01, 0, 0, b'a', 0x02, 0, 1, b'b', b'c', 0]).unwrap();
        assert_eq!(total, 3);
        assert_eq!(ok.len(), 2);
        assert_eq!(
            ok[1],
            Chunk {
                at: 4,
                out: 1,
                dict_start: 0
            }
        );
    }
}
