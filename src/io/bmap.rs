//! Block maps (`.bmap`), the sidecar `bmaptool copy` reads to flash only the
//! mapped blocks of a raw image and to check each mapped range's SHA-256.
//!
//! An output of an image that came with a bmap gets one too: the input's
//! mapped ranges plus every block imprint changed, each range hashed while
//! the raw output streams past ([`RangeHasher`]), so a compressed output
//! needs no second pass. The file layout is bmaptool's format 2.0.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BmapError {
    #[error("cannot read the block map {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the block map {path} is not one imprint can read: {why}")]
    Format { path: PathBuf, why: String },
}

/// A block map: which blocks of an image of `image_size` bytes hold data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Inclusive block ranges, sorted, not overlapping.
    pub ranges: Vec<(u64, u64)>,
}

/// `xml` without its `<!-- ... -->` comments: bmaptool's own header
/// comment names `<MappedBlocksCount>` and `<BlocksCount>` in its prose,
/// which a search for the element would otherwise find first.
fn without_comments(xml: &str) -> Result<String, String> {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let end = rest[start + 4..]
            .find("-->")
            .ok_or("a comment is not closed")?;
        rest = &rest[start + 4 + end + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The text between `<tag>` and `</tag>`, trimmed.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
}

impl Bmap {
    /// The bmap beside an image: `NAME.bmap`, or for `NAME.wic.zst` the
    /// `NAME.wic.bmap` Yocto writes beside the compressed image.
    pub fn beside(image: &Path, codec_suffix: Option<&str>) -> Option<PathBuf> {
        let mut candidates = vec![with_suffix(image, ".bmap")];
        if let Some(suffix) = codec_suffix {
            let name = image.file_name()?.to_string_lossy();
            if let Some(stem) = name.strip_suffix(suffix) {
                candidates.push(image.with_file_name(format!("{stem}.bmap")));
            }
        }
        candidates.into_iter().find(|p| p.is_file())
    }

    /// Where an output's block map goes: `NAME.bmap`, or for a compressed
    /// `NAME.wic.zst` the `NAME.wic.bmap` Yocto's deploy directory has.
    pub fn for_output(image: &Path, codec_suffix: Option<&str>) -> PathBuf {
        let name = image.file_name().unwrap_or_default().to_string_lossy();
        let stem = codec_suffix
            .and_then(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        image.with_file_name(format!("{stem}.bmap"))
    }

    pub fn load(path: &Path) -> Result<Bmap, BmapError> {
        let text = std::fs::read_to_string(path).map_err(|source| BmapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Bmap::parse(&text).map_err(|why| BmapError::Format {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Reads the fields imprint needs from a format 1.x or 2.x bmap.
    pub fn parse(xml: &str) -> Result<Bmap, String> {
        let xml = &without_comments(xml)?;
        let start = xml.find("<bmap").ok_or("it has no <bmap> element")?;
        let version = xml[start..]
            .split_once("version=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(v, _)| v)
            .ok_or("it has no version")?;
        if !(version.starts_with("1.") || version.starts_with("2.")) {
            return Err(format!(
                "format version {version} is not supported (1.x and 2.x are)"
            ));
        }
        let number = |tag: &str| -> Result<u64, String> {
            element(xml, tag)
                .ok_or(format!("<{tag}> is missing"))?
                .parse()
                .map_err(|_| format!("<{tag}> is not a number"))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        let blocks = number("BlocksCount")?;
        if block_size == 0 || image_size.div_ceil(block_size) != blocks {
            return Err("its image size, block size and block count disagree".into());
        }
        let map = element(xml, "BlockMap").ok_or("<BlockMap> is missing")?;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for piece in map.split("<Range").skip(1) {
            let body = piece
                .split_once('>')
                .and_then(|(_, rest)| rest.split_once("</Range>"))
                .map(|(b, _)| b.trim())
                .ok_or("a <Range> is not closed")?;
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (body, body),
            };
            let parse = |t: &str| {
                t.parse::<u64>()
                    .map_err(|_| format!("range {body:?} is not a block range"))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            if last < first || last >= blocks || ranges.last().is_some_and(|&(_, l)| first <= l) {
                return Err(format!(
                    "range {body:?} is out of order or outside the image"
                ));
            }
            ranges.push((first, last));
        }
        Ok(Bmap {
            image_size,
            block_size,
            ranges,
        })
    }

    /// Adds the blocks covering byte range `[from, to)` to the map.
    pub fn add_bytes(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let (first, last) = (from / self.block_size, (to - 1) / self.block_size);
        self.ranges.push((first, last));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(a, b) in &self.ranges {
            match merged.last_mut() {
                Some((_, end)) if a <= *end + 1 => *end = (*end).max(b),
                _ => merged.push((a, b)),
            }
        }
        self.ranges = merged;
    }

    /// The mapped ranges in bytes, `[start, end)`, clipped to the image.
    pub fn byte_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges
            .iter()
            .map(|&(a, b)| {
                (
                    a * self.block_size,
                    ((b + 1) * self.block_size).min(self.image_size),
                )
            })
            .collect()
    }

    /// Renders the map in bmaptool's format 2.0 with a SHA-256 for each
    /// range (in `digests`' order) and the file's own checksum.
    pub fn render(&self, digests: &[String]) -> String {
        assert_eq!(digests.len(), self.ranges.len(), "one digest per range");
        let blocks = self.image_size.div_ceil(self.block_size);
        let mapped: u64 = self.ranges.iter().map(|(a, b)| b - a + 1).sum();
        let mut xml = String::new();
        xml.push_str("<?xml version=\"1.0\" ?>\n");
        xml.push_str("<!-- Block map written by imprint: the input's mapped blocks and the\n");
        xml.push_str("     blocks imprint changed. `bmaptool copy` checks each range. -->\n");
        xml.push_str("<bmap version=\"2.0\">\n");
        let _ = writeln!(xml, "    <ImageSize> {} </ImageSize>", self.image_size);
        let _ = writeln!(xml, "    <BlockSize> {} </BlockSize>", self.block_size);
        let _ = writeln!(xml, "    <BlocksCount> {blocks} </BlocksCount>");
        let _ = writeln!(xml, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>");
        xml.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
        xml.push_str("    <BmapFileChecksum> ");
        let checksum_at = xml.len();
        xml.push_str(&"0".repeat(64));
        xml.push_str(" </BmapFileChecksum>\n    <BlockMap>\n");
        for (&(a, b), digest) in self.ranges.iter().zip(digests) {
            if a == b {
                let _ = writeln!(xml, "        <Range chksum=\"{digest}\"> {a} </Range>");
            } else {
                let _ = writeln!(xml, "        <Range chksum=\"{digest}\"> {a}-{b} </Range>");
            }
        }
        xml.push_str("    </BlockMap>\n</bmap>\n");
        // The file's checksum is taken with its own field all zeros.
        let own = hex::encode(Sha256::digest(xml.as_bytes()));
        xml.replace_range(checksum_at..checksum_at + 64, &own);
        xml
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Hashes each mapped byte range of a stream as it goes past, in order:
/// fed every byte of the raw image once (zeros of holes included), it
/// yields one SHA-256 per range.
pub struct RangeHasher {
    ranges: Vec<(u64, u64)>,
    next: usize,
    pos: u64,
    current: Sha256,
    digests: Vec<String>,
}

impl RangeHasher {
    pub fn new(ranges: Vec<(u64, u64)>) -> RangeHasher {
        RangeHasher {
            ranges,
            next: 0,
            pos: 0,
            current: Sha256::new(),
            digests: Vec::new(),
        }
    }

    /// The next `data.len()` bytes of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let Some(&(start, end)) = self.ranges.get(self.next) else {
                self.pos += data.len() as u64;
                return;
            };
            if self.pos < start {
                let skip = (start - self.pos).min(data.len() as u64);
                self.pos += skip;
                data = &data[skip as usize..];
                continue;
            }
            let take = (end - self.pos).min(data.len() as u64) as usize;
            self.current.update(&data[..take]);
            self.pos += take as u64;
            data = &data[take..];
            if self.pos == end {
                let done = std::mem::take(&mut self.current);
                self.digests.push(hex::encode(done.finalize()));
                self.next += 1;
            }
        }
    }

    /// `len` zero bytes (a hole): hashed only where a range covers them.
    pub fn update_zeros(&mut self, mut len: u64) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while len > 0 {
            let Some(&(start, _)) = self.ranges.get(self.next) else {
                self.pos += len;
                return;
            };
            if self.pos + len <= start {
                self.pos += len;
                return;
            }
            let n = len.min(ZEROS.len() as u64);
            self.update(&ZEROS[..n as usize]);
            len -= n;
        }
    }

    /// One digest per range; `None` if the stream ended before the last.
    pub fn finish(self) -> Option<Vec<String>> {
        (self.digests.len() == self.ranges.len()).then_some(self.digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_render_round_trip_and_merge() {
        let mut map = Bmap {
            image_size: 10 * 4096 + 100,
            block_size: 4096,
            ranges: vec![(0, 1), (5, 5)],
        };
        map.add_bytes(2 * 4096 + 10, 2 * 4096 + 20);
        map.add_bytes(9 * 4096, 10 * 4096 + 100);
        assert_eq!(map.ranges, vec![(0, 2), (5, 5), (9, 10)]);
        let text = map.render(&["a".repeat(64), "b".repeat(64), "c".repeat(64)]);
        assert_eq!(Bmap::parse(&text).unwrap(), map);
        assert_eq!(map.byte_ranges().last(), Some(&(9 * 4096, 10 * 4096 + 100)));
    }

    #[test]
    fn range_hasher_matches_a_direct_hash() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        let ranges = vec![(0, 10), (4096, 8192), (40_000, 50_000)];
        let mut h = RangeHasher::new(ranges.clone());
        h.update(&data[..5000]);
        h.update(&data[5000..]);
        let got = h.finish().unwrap();
        for (digest, (a, b)) in got.iter().zip(ranges) {
            assert_eq!(
                digest,
                &hex::encode(Sha256::digest(&data[a as usize..b as usize]))
            );
        }
        let mut zeros = RangeHasher::new(vec![(100, 200)]);
        zeros.update_zeros(1 << 20);
        assert_eq!(
            zeros.finish().unwrap()[0],
            hex::encode(Sha256::digest([0u8; 100]))
        );
    }

    /// bmaptool's header comment speaks of `<BlocksCount>` before the
    /// element itself; each field has a comment of its own too.
    #[test]
    fn elements_named_in_comments_are_not_elements() {
        let xml = "<?xml version=\"1.0\" ?>\n<!-- copy <MappedBlocksCount> blocks, not\n     <BlocksCount> blocks -->\n<bmap version=\"2.0\">\n    <!-- size -->\n    <ImageSize> 8192 </ImageSize>\n    <BlockSize> 4096 </BlockSize>\n    <!-- <BlocksCount> is the count -->\n    <BlocksCount> 2 </BlocksCount>\n    <BlockMap>\n        <!-- <Range> 0-1 </Range> is not one -->\n        <Range chksum=\"ab\"> 1 </Range>\n    </BlockMap>\n</bmap>\n";
        let map = Bmap::parse(xml).unwrap();
        assert_eq!((map.image_size, map.block_size), (8192, 4096));
        assert_eq!(map.ranges, vec![(1, 1)]);
        assert!(Bmap::parse("<bmap version=\"2.0\"> <!-- open").is_err());
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        assert!(Bmap::parse("<bmap version=\"3.0\"></bmap>").is_err());
        let bad = "<bmap version=\"2.0\"><ImageSize> 8192 </ImageSize><BlockSize> 4096 </BlockSize><BlocksCount> 2 </BlocksCount><BlockMap><Range> 1-5 </Range></BlockMap></bmap>";
        assert!(Bmap::parse(bad).unwrap_err().contains("outside"));
    }
}
