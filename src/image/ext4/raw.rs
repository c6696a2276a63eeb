//! Writing a raw image with some of its bytes replaced, front to back in
//! one pass: data regions are read, patched and passed on; holes stay holes
//! (never read, passed on as zero runs); so a mostly empty 16 GiB image
//! costs the I/O of its data, once. Raw ext4 images, disk images (the
//! patches at the partition's offset) and compressed raw images (the sink
//! a compressor) are all written this way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::io::sink::RawSink;

/// Bytes that replace the input's at an offset, sorted, not overlapping.
pub(crate) type Patches<'a> = [(u64, &'a [u8])];

/// The data regions of `file` (start, end), as SEEK_DATA/SEEK_HOLE see
/// them; everything else reads as zeros.
pub(crate) fn data_regions(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut regions = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        // lseek takes a signed offset: past i64::MAX there is nothing.
        if i64::try_from(pos).is_err() {
            break;
        }
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = seek(file, SeekFrom::Hole(data))?;
        regions.push((data, hole.min(len)));
        pos = hole;
    }
    Ok(regions)
}

/// The parts of `patches` inside `[from, to)`, clipped to it.
fn overlapping<'p>(
    patches: &'p Patches<'p>,
    from: u64,
    to: u64,
) -> impl Iterator<Item = (u64, &'p [u8])> + 'p {
    let first = patches.partition_point(|(off, bytes)| off + bytes.len() as u64 <= from);
    patches[first..]
        .iter()
        .take_while(move |(off, _)| *off < to)
        .map(move |&(off, bytes)| {
            let start = off.max(from);
            let end = (off + bytes.len() as u64).min(to);
            (start, &bytes[(start - off) as usize..(end - off) as usize])
        })
}

/// Writes the first `len` bytes of `input` with `patches` applied into
/// `sink`, in order.
pub(crate) fn write_patched(
    input: &File,
    len: u64,
    patches: &Patches<'_>,
    sink: &mut dyn RawSink,
) -> io::Result<()> {
    // Zeros from `from` to `to`, but for the patches that fall there.
    let hole = |sink: &mut dyn RawSink, from: u64, to: u64| -> io::Result<()> {
        let mut at = from;
        for (off, bytes) in overlapping(patches, from, to) {
            sink.skip_zeros(off - at)?;
            sink.write_all(bytes)?;
            at = off + bytes.len() as u64;
        }
        sink.skip_zeros(to - at)?;
        crate::io::progress::advance(to - from);
        Ok(())
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    for (start, end) in data_regions(input, len)? {
        hole(sink, pos, start)?;
        let mut at = start;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            input.read_exact_at(chunk, at)?;
            for (off, bytes) in overlapping(patches, at, at + n as u64) {
                let i = (off - at) as usize;
                chunk[i..i + bytes.len()].copy_from_slice(bytes);
            }
            sink.write_all(chunk)?;
            crate::io::progress::advance(n as u64);
            at += n as u64;
        }
        pos = end;
    }
    hole(sink, pos, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<u8>);

    impl RawSink for Collect {
        fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
            self.0.extend_from_slice(data);
            Ok(())
        }
        fn skip_zeros(&mut self, len: u64) -> io::Result<()> {
            self.0.resize(self.0.len() + len as usize, 0);
            Ok(())
        }
    }

    /// Patches land where they belong, in data and in holes, also when
    /// one straddles a hole's edge (a partition not aligned to the host's
    /// blocks).
    #[test]
    fn patches_in_data_holes_and_across_their_edges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = File::create(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
        file.write_all_at(&data, 65536).unwrap();
        file.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        let (a, b, c) = (vec![7u8; 100], vec![8u8; 600], vec![9u8; 10]);
        let patches: Vec<(u64, &[u8])> = vec![(10, &a), (65536 - 300, &b), (65536 + 8190, &c)];
        let mut out = Collect(Vec::new());
        write_patched(&file, 1 << 20, &patches, &mut out).unwrap();
        let mut want = vec![0u8; 1 << 20];
        want[65536..65536 + 8192].copy_from_slice(&data);
        for (off, bytes) in &patches {
            want[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
        }
        assert!(out.0 == want);
    }
}
