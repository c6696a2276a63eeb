//! Block maps (`.bmap`), the sidecar `bmaptool copy` reads to flash only the
//! mapped blocks of a raw image and to check each mapped range's SHA-256.
//!
//! An output of an image that came with a bmap gets one too: the input's
//! mapped ranges plus every block imprint changed, each range hashed while
//! the raw output streams past ([`RangeHasher`]), so a compressed output
//! needs no second pass. The file layout is bmaptool's format 2.0.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BmapError {
    #[error("cannot read the block map {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the block map {path} is not one imprint can read")]
    Format {
        path: PathBuf,
        #[source]
        problem: BmapProblem,
    },
}

/// What is wrong with a block map's content.
#[derive(Debug, Error)]
pub enum BmapProblem {
    #[error("it is not well-formed XML")]
    Xml(#[source] quick_xml::DeError),
    #[error("it has no <bmap> element")]
    NoBmap,
    #[error("it has no version")]
    NoVersion,
    #[error("format version {0} is not supported (1.x and 2.x are)")]
    Version(String),
    #[error("<{0}> is missing")]
    Missing(&'static str),
    #[error("<{0}> is not a number")]
    NotANumber(&'static str),
    #[error("its image size, block size and block count disagree")]
    Disagree,
    #[error("range {} is not a block range", crate::excerpt::quoted(.0))]
    NotARange(String),
    #[error("range {} is out of order or outside the image", crate::excerpt::quoted(.0))]
    OutOfOrder(String),
}

/// A block map: which blocks of an image of `image_size` bytes hold data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Inclusive block ranges, sorted, not overlapping.
    pub ranges: Vec<(u64, u64)>,
}

/// The elements of a bmap file imprint reads, as bmaptool writes them
/// (format 1.x and 2.x name them alike); the others (checksums, counts
/// bmaptool recomputes) are ignored. Text is kept as written: bmaptool
/// pads values with spaces.
#[derive(Deserialize)]
struct BmapXml {
    #[serde(rename = "@version")]
    version: Option<String>,
    #[serde(rename = "ImageSize")]
    image_size: Option<String>,
    #[serde(rename = "BlockSize")]
    block_size: Option<String>,
    #[serde(rename = "BlocksCount")]
    blocks_count: Option<String>,
    #[serde(rename = "BlockMap")]
    block_map: Option<BlockMapXml>,
}

#[derive(Deserialize)]
struct BlockMapXml {
    #[serde(rename = "Range", default)]
    ranges: Vec<RangeXml>,
}

#[derive(Deserialize)]
struct RangeXml {
    #[serde(rename = "$text", default)]
    text: String,
}

/// Whether the document's root element is `<bmap>` (the deserializer
/// takes any root).
fn root_is_bmap(xml: &str) -> Result<bool, BmapProblem> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => return Ok(e.name().as_ref() == b"bmap"),
            Ok(Event::Eof) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(BmapProblem::Xml(e.into())),
        }
    }
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
        Bmap::parse(&text).map_err(|problem| BmapError::Format {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Reads the fields imprint needs from a format 1.x or 2.x bmap.
    pub fn parse(xml: &str) -> Result<Bmap, BmapProblem> {
        if !root_is_bmap(xml)? {
            return Err(BmapProblem::NoBmap);
        }
        let doc: BmapXml = quick_xml::de::from_str(xml).map_err(BmapProblem::Xml)?;
        let version = doc.version.ok_or(BmapProblem::NoVersion)?;
        if !(version.starts_with("1.") || version.starts_with("2.")) {
            return Err(BmapProblem::Version(version));
        }
        let number = |text: Option<String>, tag: &'static str| -> Result<u64, BmapProblem> {
            text.ok_or(BmapProblem::Missing(tag))?
                .trim()
                .parse()
                .map_err(|_| BmapProblem::NotANumber(tag))
        };
        let image_size = number(doc.image_size, "ImageSize")?;
        let block_size = number(doc.block_size, "BlockSize")?;
        let blocks = number(doc.blocks_count, "BlocksCount")?;
        if block_size == 0 || image_size.div_ceil(block_size) != blocks {
            return Err(BmapProblem::Disagree);
        }
        let map = doc.block_map.ok_or(BmapProblem::Missing("BlockMap"))?;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for range in map.ranges {
            let body = range.text.trim();
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (body, body),
            };
            let parse = |t: &str| {
                t.parse::<u64>()
                    .map_err(|_| BmapProblem::NotARange(body.to_string()))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            if last < first || last >= blocks || ranges.last().is_some_and(|&(_, l)| first <= l) {
                return Err(BmapProblem::OutOfOrder(body.to_string()));
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
        assert!(matches!(
            Bmap::parse("<bmap version=\"2.0\"> <!-- open"),
            Err(BmapProblem::Xml(_))
        ));
    }

    /// A map as `bmaptool create` writes it (format 2.0, its header
    /// comment naming the elements, values padded with spaces) reads as
    /// the blocks the image holds data in.
    #[test]
    fn reads_what_bmaptool_writes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let file = std::fs::File::create(&image).unwrap();
        // Data in blocks 0, 5-6 and the last (partial) block; holes between.
        let size = 40 * 4096 + 100;
        file.set_len(size).unwrap();
        file.write_all_at(&[1u8; 4096], 0).unwrap();
        file.write_all_at(&[2u8; 2 * 4096], 5 * 4096).unwrap();
        file.write_all_at(&[3u8; 100], 40 * 4096).unwrap();
        file.sync_all().unwrap();
        let bmap = dir.path().join("disk.bmap");
        let status = std::process::Command::new("bmaptool")
            .arg("create")
            .arg("-o")
            .arg(&bmap)
            .arg(&image)
            .status()
            .expect("bmaptool (bmap-tools) is needed: .ci/run installs it");
        assert!(status.success());
        let map = Bmap::load(&bmap).unwrap();
        assert_eq!((map.image_size, map.block_size), (size, 4096));
        assert_eq!(map.ranges, vec![(0, 0), (5, 6), (40, 40)]);
        // And a map imprint renders from it reads back the same.
        let digests = vec!["0".repeat(64); map.ranges.len()];
        assert_eq!(Bmap::parse(&map.render(&digests)).unwrap(), map);
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        assert!(matches!(
            Bmap::parse("<bmap version=\"3.0\"></bmap>"),
            Err(BmapProblem::Version(v)) if v == "3.0"
        ));
        let bad = "<bmap version=\"2.0\"><ImageSize> 8192 </ImageSize><BlockSize> 4096 </BlockSize><BlocksCount> 2 </BlocksCount><BlockMap><Range> 1-5 </Range></BlockMap></bmap>";
        assert!(matches!(Bmap::parse(bad), Err(BmapProblem::OutOfOrder(r)) if r == "1-5"));
        let no_map = "<bmap version=\"2.0\"><ImageSize> 8192 </ImageSize><BlockSize> 4096 </BlockSize><BlocksCount> 2 </BlocksCount></bmap>";
        assert!(matches!(
            Bmap::parse(no_map),
            Err(BmapProblem::Missing("BlockMap"))
        ));
        let text = no_map.replace(" 8192 ", " 8k ");
        assert!(matches!(
            Bmap::parse(&text),
            Err(BmapProblem::NotANumber("ImageSize"))
        ));
        assert!(matches!(
            Bmap::parse("<other version=\"2.0\"/>"),
            Err(BmapProblem::NoBmap)
        ));
        assert!(matches!(
            Bmap::parse("<bmap><BlockMap/></bmap>"),
            Err(BmapProblem::NoVersion)
        ));
        let range = "<bmap version=\"2.0\"><ImageSize> 8192 </ImageSize><BlockSize> 4096 </BlockSize><BlocksCount> 2 </BlocksCount><BlockMap><Range> one </Range></BlockMap></bmap>";
        assert!(matches!(Bmap::parse(range), Err(BmapProblem::NotARange(r)) if r == "one"));
        // The cause is said once: the file's error names the file, the
        // problem follows as its source.
        let err = BmapError::Format {
            path: "x.bmap".into(),
            problem: BmapProblem::Disagree,
        };
        assert_eq!(
            crate::error_chain(&err),
            "the block map x.bmap is not one imprint can read: its image size, block size and block count disagree"
        );
    }
}
