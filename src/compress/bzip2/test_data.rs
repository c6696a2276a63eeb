//! Sample data and round trips shared by the bzip2 tests.

use std::io::{self, Read, Write};

use super::{BlockEncoder, Boundary, ParallelDecoder};

/// Bytes with long runs, short runs and noise, so both the run-length
/// limit and the size cap of a block are reached.
pub(super) fn sample(len: usize) -> Vec<u8> {
    sample_runs(len, 70_000)
}

pub(super) fn sample_runs(len: usize, max_run: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 7 {
            0 => data.extend(std::iter::repeat_n(0u8, (x >> 40) as usize % max_run)),
            1 => data.extend(std::iter::repeat_n(b'a', 4)),
            _ => data.extend_from_slice(&x.to_le_bytes()[..(x >> 60) as usize % 8]),
        }
    }
    data.truncate(len);
    data
}

/// `stream` decoded by libbz2.
pub(super) fn sequential(stream: &[u8]) -> Vec<u8> {
    let mut back = Vec::new();
    ::bzip2::read::MultiBzDecoder::new(stream)
        .read_to_end(&mut back)
        .unwrap();
    back
}

/// `stream` decoded by the parallel reader, with every boundary it
/// remembered along the way.
pub(super) fn parallel(stream: Vec<u8>) -> io::Result<(Vec<u8>, Vec<Boundary>)> {
    let (mut d, index) = ParallelDecoder::new(io::Cursor::new(stream), None);
    let mut back = Vec::new();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        let n = d.read(&mut buf)?;
        for b in index.lock().unwrap().recent.iter() {
            if !seen.contains(b) {
                seen.push(b.clone());
            }
        }
        if n == 0 {
            return Ok((back, seen));
        }
        back.extend_from_slice(&buf[..n]);
    }
}

/// `data` compressed by the block encoder.
pub(super) fn encode(data: &[u8], level: u8) -> Vec<u8> {
    let mut e = BlockEncoder::new(Vec::new(), level);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
