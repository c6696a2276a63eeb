//! GNU sparse files in tar archives, as GNU tar writes them (`--sparse`):
//! the old GNU `S` entries, whose map of data extents is in the header and
//! the extension blocks after it, and the three pax forms (the GNU tar
//! manual, "Storing Sparse Files"):
//!
//! - 0.0: `GNU.sparse.size` (the real size) and repeated
//!   `GNU.sparse.offset` / `GNU.sparse.numbytes` records; the header names
//!   the file itself;
//! - 0.1: the map in one `GNU.sparse.map` record (`off,len,off,len`), the
//!   real name in `GNU.sparse.name` (the header names a placeholder,
//!   `DIR/GNUSparseFile.PID/NAME`);
//! - 1.0: `GNU.sparse.major=1`, `GNU.sparse.name`, `GNU.sparse.realsize`,
//!   and the map at the start of the data: decimal numbers, one a line
//!   (the count, then offset and length of each extent), padded to a
//!   512-byte block.
//!
//! The stored data is the extents' bytes one after the other; the rest of
//! the file reads as zeros. `imprint ls` shows the real name and size and
//! `cat` expands the file as `tar -xO` does.

use std::io::Write;

use super::stream::Stream;
use super::TarError;
use crate::image::ImageError;

/// (offset, length) of each data extent, in order.
type Extents = Vec<(u64, u64)>;

/// Where a sparse entry's map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Map {
    /// In the headers: (offset, length) of each data extent, in order.
    Known(Extents),
    /// At the start of the data (pax 1.0).
    InData,
}

/// A sparse entry: its real size and its map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sparse {
    pub(super) real_size: u64,
    pub(super) map: Map,
}

/// The `GNU.sparse.*` records of one pax header.
#[derive(Debug, Default, Clone)]
pub(super) struct PaxSparse {
    size: Option<u64>,
    major: Option<u64>,
    name: Option<String>,
    map: Option<String>,
    offsets: Vec<u64>,
    lengths: Vec<u64>,
}

impl PaxSparse {
    /// Takes in one record (any key; others are ignored).
    pub(super) fn set(&mut self, key: &str, value: &str) {
        let number = || value.trim().parse::<u64>().ok();
        match key {
            "GNU.sparse.size" | "GNU.sparse.realsize" => self.size = number(),
            "GNU.sparse.major" => self.major = number(),
            "GNU.sparse.name" => self.name = Some(value.to_string()),
            "GNU.sparse.map" => self.map = Some(value.to_string()),
            // 0.0 repeats these two, in order: each pair is an extent.
            "GNU.sparse.offset" => self.offsets.extend(number()),
            "GNU.sparse.numbytes" => self.lengths.extend(number()),
            _ => {}
        }
    }

    /// The real name (0.1 and 1.0).
    pub(super) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// What the records say, if they describe a sparse file.
    pub(super) fn sparse(&self) -> Option<Sparse> {
        let real_size = self.size?;
        let map = if self.major == Some(1) {
            Map::InData
        } else if let Some(text) = &self.map {
            let numbers: Vec<u64> = text
                .split(',')
                .map(|n| n.trim().parse().unwrap_or(u64::MAX))
                .collect();
            Map::Known(
                numbers
                    .chunks(2)
                    .map(|c| (c[0], *c.get(1).unwrap_or(&u64::MAX)))
                    .collect(),
            )
        } else {
            Map::Known(
                self.offsets
                    .iter()
                    .copied()
                    .zip(self.lengths.iter().copied())
                    .collect(),
            )
        };
        Some(Sparse { real_size, map })
    }
}

/// The map of an old GNU `S` entry from its header block and the sparse
/// extension blocks after it (`blocks`: the header first); `None` when a
/// number does not read.
pub(super) fn old_gnu(blocks: &[u8]) -> Option<Sparse> {
    let header = blocks.get(..512)?;
    let mut map = Vec::new();
    let mut push = |field: &[u8]| -> Option<bool> {
        let (off, len) = (octal(&field[..12])?, octal(&field[12..24])?);
        if off == 0 && len == 0 && field.iter().all(|&b| b == 0) {
            return Some(false);
        }
        map.push((off, len));
        Some(true)
    };
    // struct oldgnu_header: sp[4] at 386, isextended at 482, realsize at 483.
    for i in 0..4 {
        if !push(&header[386 + 24 * i..410 + 24 * i])? {
            break;
        }
    }
    for ext in blocks[512..].chunks(512) {
        // struct sparse_header: sp[21], isextended at 504.
        for i in 0..21 {
            if !push(&ext[24 * i..24 * (i + 1)])? {
                break;
            }
        }
    }
    Some(Sparse {
        real_size: octal(&header[483..495])?,
        map: Map::Known(map),
    })
}

/// An octal field (an empty one is 0).
fn octal(field: &[u8]) -> Option<u64> {
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// Writes the expanded file to `out`, reading its `stored` bytes of data
/// from `s` (at the entry's data). `name` names it in errors.
pub(super) fn expand(
    sparse: &Sparse,
    stored: u64,
    s: &mut Stream,
    out: &mut dyn Write,
    name: &str,
) -> Result<(), ImageError> {
    let mut pos = 0u64;
    let zeros = |n: u64, out: &mut dyn Write| -> Result<(), ImageError> {
        let z = [0u8; 1 << 12];
        let mut n = n;
        while n > 0 {
            let k = n.min(z.len() as u64) as usize;
            out.write_all(&z[..k]).map_err(ImageError::Output)?;
            n -= k as u64;
        }
        Ok(())
    };
    extents(sparse, stored, s, name, &mut |off, data| {
        zeros(off - pos, out)?;
        out.write_all(data).map_err(ImageError::Output)?;
        pos = off + data.len() as u64;
        Ok(())
    })?;
    zeros(sparse.real_size - pos, out)
}

/// Calls `put(offset, bytes)` for the file's data extents in order
/// (chunks of at most 1 MiB), reading its `stored` bytes of data from `s`;
/// the rest of the file is holes. The map is checked: extents in order,
/// inside the real size and the stored data.
pub(super) fn extents(
    sparse: &Sparse,
    stored: u64,
    s: &mut Stream,
    name: &str,
    put: &mut super::members::PutExtent,
) -> Result<(), ImageError> {
    let damaged = || ImageError::Unreadable {
        path: name.to_string(),
        what: "a GNU sparse file whose map does not fit its data",
    };
    let mut left = stored;
    let map = match &sparse.map {
        Map::Known(map) => map.clone(),
        Map::InData => {
            let (map, used) = map_in_data(s, stored).map_err(|e| match e {
                Some(e) => ImageError::from(e),
                None => damaged(),
            })?;
            left -= used;
            map
        }
    };
    let mut pos = 0u64;
    for &(off, len) in &map {
        let end = off.checked_add(len).ok_or_else(damaged)?;
        if off < pos || end > sparse.real_size || len > left {
            return Err(damaged());
        }
        super::members::copy_extent(s, off, len, put)?;
        left -= len;
        pos = end;
    }
    Ok(())
}

/// Reads a pax 1.0 map at the start of the data: the extents and how many
/// bytes (whole blocks) the map took. `None` inside the error: damaged.
fn map_in_data(s: &mut Stream, stored: u64) -> Result<(Extents, u64), Option<TarError>> {
    let mut used = 0u64;
    let mut block = [0u8; 512];
    let mut text = Vec::new();
    let mut numbers = Vec::new();
    let mut want: Option<u64> = None;
    loop {
        if used + 512 > stored {
            return Err(None);
        }
        s.read_exact(&mut block).map_err(Some)?;
        used += 512;
        for &b in &block {
            if b != b'\n' {
                text.push(b);
                continue;
            }
            let n: u64 = std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(None)?;
            text.clear();
            match want {
                None if n > stored => return Err(None),
                None => want = Some(n * 2),
                Some(_) => numbers.push(n),
            }
            if want == Some(numbers.len() as u64) {
                let map = numbers.chunks(2).map(|c| (c[0], c[1])).collect();
                return Ok((map, used));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_of_each_version_give_the_map() {
        let mut v00 = PaxSparse::default();
        for (k, v) in [
            ("GNU.sparse.size", "3145728"),
            ("GNU.sparse.offset", "1048576"),
            ("GNU.sparse.numbytes", "4096"),
            ("GNU.sparse.offset", "3145728"),
            ("GNU.sparse.numbytes", "0"),
        ] {
            v00.set(k, v);
        }
        let want = Sparse {
            real_size: 3_145_728,
            map: Map::Known(vec![(1_048_576, 4096), (3_145_728, 0)]),
        };
        assert_eq!(v00.sparse(), Some(want.clone()));
        let mut v01 = PaxSparse::default();
        v01.set("GNU.sparse.size", "3145728");
        v01.set("GNU.sparse.map", "1048576,4096,3145728,0");
        v01.set("GNU.sparse.name", "sparse");
        assert_eq!(v01.sparse(), Some(want));
        assert_eq!(v01.name(), Some("sparse"));
        assert_eq!(PaxSparse::default().sparse(), None);
    }
}
