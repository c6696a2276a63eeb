//! The disk container layer: a partitioned disk image (GPT or MBR) holding
//! the root filesystem in one of its partitions, as SD card images, Yocto
//! `.wic` files and NVIDIA's `sd-blob.img` are. This layer finds the
//! partitions and chooses one; the filesystem inside is read and edited
//! through a window onto the partition's bytes, and every byte outside
//! that partition is kept as it is.

mod gpt;
mod mbr;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;

use thiserror::Error;

use crate::image::ext4::{Ext4Error, Ext4Inspector};
use crate::image::volume::Region;
use crate::io::read_at::{ReadAt, Window};
use crate::plan::{EntryType, ImagePath};

/// The rootfs partition name in NVIDIA's flash layouts, and so in the SD
/// card images jetson-disk-image-creator.sh writes.
pub const NVIDIA_ROOTFS_NAME: &str = "APP";

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("cannot read {what}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} is corrupt: {why}")]
    Corrupt { what: String, why: String },
    #[error("no partition {wanted} in the image; it has:\n{candidates}")]
    NoSuchPartition {
        wanted: PartitionChoice,
        candidates: Candidates,
    },
    #[error("imprint cannot tell which partition holds the root filesystem; name it with --partition NAME or NUMBER. The image has:\n{candidates}")]
    Ambiguous { candidates: Candidates },
    #[error("partition {number} is not an ext2/3/4 filesystem; choose the rootfs partition with --partition. The image has:\n{candidates}")]
    NotExt4 { number: u32, candidates: Candidates },
    #[error("{partition} holds an ext2/3/4 filesystem imprint cannot use: {why}")]
    Unusable { partition: String, why: String },
}

/// The partition table's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Gpt,
    Mbr,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Gpt => "GPT",
            Scheme::Mbr => "MBR",
        }
    }
}

/// One partition: where its bytes are in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// As Linux numbers it (`/dev/sdX<number>`), from 1.
    pub number: u32,
    /// The GPT partition name (`APP`); MBR partitions have none.
    pub name: Option<String>,
    pub type_name: String,
    /// Byte offset and length in the image.
    pub offset: u64,
    pub size: u64,
    pub scheme: Scheme,
}

impl Partition {
    /// How errors and `-v` name it: `partition 1 "APP"`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => format!("partition {} \"{n}\"", self.number),
            _ => format!("partition {}", self.number),
        }
    }
}

/// Which partition the user asked for (`--partition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionChoice {
    Number(u32),
    Name(String),
}

impl FromStr for PartitionChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse::<u32>() {
            Ok(n) => PartitionChoice::Number(n),
            Err(_) => PartitionChoice::Name(s.to_string()),
        })
    }
}

impl fmt::Display for PartitionChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionChoice::Number(n) => write!(f, "{n}"),
            PartitionChoice::Name(n) => write!(f, "named \"{n}\""),
        }
    }
}

/// The partitions with what was found in each, listed in errors so the
/// user can choose.
#[derive(Debug, Clone)]
pub struct Candidates(pub Vec<(Partition, Option<String>)>);

impl fmt::Display for Candidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, fs)) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "  {:>3}  {:<12} {:<22} {:>10}  {}",
                p.number,
                p.name.as_deref().unwrap_or("-"),
                p.type_name,
                human_size(p.size),
                fs.as_deref().unwrap_or("unknown contents")
            )?;
        }
        Ok(())
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Tells a partitioned disk from its first sectors (at least 8 KiB: GPT
/// headers on 4 KiB-sector disks sit at byte 4096).
pub fn detect(head: &[u8]) -> Option<Scheme> {
    if gpt::present(head, 512) || gpt::present(head, 4096) {
        Some(Scheme::Gpt)
    } else if mbr::present(head) {
        Some(Scheme::Mbr)
    } else {
        None
    }
}

/// Where a disk's partitions start, from its first bytes alone (see
/// `gpt::starts_in_head`): `None` if `head` is not (yet) enough to tell.
pub(crate) fn starts_in_head(head: &[u8]) -> Option<Vec<u64>> {
    match detect(head)? {
        Scheme::Gpt if gpt::present(head, 512) => gpt::starts_in_head(head, 512),
        Scheme::Gpt => gpt::starts_in_head(head, 4096),
        Scheme::Mbr => mbr::starts_in_head(head),
    }
}

/// Reads the partition table of a disk image.
pub fn partitions(file: &File, head: &[u8], disk_size: u64) -> Result<Vec<Partition>, DiskError> {
    match detect(head) {
        Some(Scheme::Gpt) => {
            let sector = if gpt::present(head, 512) { 512 } else { 4096 };
            gpt::partitions(file, disk_size, sector)
        }
        Some(Scheme::Mbr) => mbr::partitions(file, disk_size),
        None => Ok(Vec::new()),
    }
}

/// Chooses the rootfs partition: the one asked for; else the GPT partition
/// named `APP`; else the only ext2/3/4 partition holding `/etc`. `probe`
/// says what a partition holds ("ext4, has /etc", "ext4, no /etc", or
/// `None` for anything else) and whether it is a candidate.
pub fn choose(
    parts: &[Partition],
    wanted: Option<&PartitionChoice>,
    mut probe: impl FnMut(&Partition) -> Probe,
) -> Result<Partition, DiskError> {
    let mut probes: Vec<Option<Probe>> = vec![None; parts.len()];
    let mut probe_at =
        |i: usize| -> Probe { probes[i].get_or_insert_with(|| probe(&parts[i])).clone() };
    let picked = match wanted {
        Some(PartitionChoice::Number(n)) => parts.iter().position(|p| p.number == *n),
        Some(PartitionChoice::Name(name)) => {
            parts.iter().position(|p| p.name.as_deref() == Some(name))
        }
        None => parts
            .iter()
            .position(|p| p.scheme == Scheme::Gpt && p.name.as_deref() == Some(NVIDIA_ROOTFS_NAME)),
    };
    let index = match (picked, wanted) {
        (Some(i), _) => Some(i),
        (None, Some(_)) => None,
        (None, None) => {
            let rootfs: Vec<usize> = (0..parts.len()).filter(|&i| probe_at(i).has_etc).collect();
            (rootfs.len() == 1).then(|| rootfs[0])
        }
    };
    let list = |probe_at: &mut dyn FnMut(usize) -> Probe| {
        Candidates(
            (0..parts.len())
                .map(|i| (parts[i].clone(), probe_at(i).description))
                .collect(),
        )
    };
    match (index, wanted) {
        (Some(i), _) => {
            let found = probe_at(i);
            if let Some(why) = found.unusable {
                return Err(DiskError::Unusable {
                    partition: parts[i].label(),
                    why,
                });
            }
            if !found.is_ext {
                return Err(DiskError::NotExt4 {
                    number: parts[i].number,
                    candidates: list(&mut probe_at),
                });
            }
            Ok(parts[i].clone())
        }
        (None, Some(w)) => Err(DiskError::NoSuchPartition {
            wanted: w.clone(),
            candidates: list(&mut probe_at),
        }),
        (None, None) => Err(DiskError::Ambiguous {
            candidates: list(&mut probe_at),
        }),
    }
}

/// Opens the disk image at `path`, reads its partition table and chooses
/// the partition to stamp (see [`choose`]): the region of the file that
/// holds the root filesystem.
pub(crate) fn locate(
    path: &Path,
    wanted: Option<&PartitionChoice>,
) -> Result<Region, crate::image::ImageError> {
    use crate::image::ImageError;
    let open = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open)?;
    let size = file.metadata().map_err(open)?.len();
    let mut head = vec![0u8; 8192.min(size as usize)];
    file.read_exact_at(&mut head, 0).map_err(open)?;
    let parts = partitions(&file, &head, size)?;
    let chosen = choose(&parts, wanted, |p| probe(&file, p))?;
    tracing::info!(partition = %chosen.label(), offset = chosen.offset, size = chosen.size, "rootfs partition");
    Ok(Region {
        offset: chosen.offset,
        len: chosen.size,
    })
}

/// Looks into a partition with imprint's own ext2/3/4 reader.
fn probe(file: &File, part: &Partition) -> Probe {
    let window = Window::new(file, part.offset, part.size);
    let mut magic = [0u8; 2];
    // The ext2/3/4 superblock sits at byte 1024, its magic 0xEF53 at +56.
    if window.read_at(1024 + 56, &mut magic).is_err() || magic != [0x53, 0xEF] {
        return Probe::default();
    }
    let fs = match Ext4Inspector::open(window, part.size) {
        Ok(fs) => fs,
        Err(e) => {
            // Said, not skipped: "not an ext2/3/4 filesystem" would send
            // the user looking in the wrong place.
            let why = match e {
                Ext4Error::Truncated { expected, actual } => format!(
                    "it is larger than its partition (its superblock describes {}, the partition has {}); was the partition shrunk, or the filesystem made with the wrong size?",
                    human_size(expected),
                    human_size(actual)
                ),
                other => other.to_string(),
            };
            return Probe {
                description: Some("ext2/3/4, unusable".to_string()),
                unusable: Some(why),
                ..Probe::default()
            };
        }
    };
    let etc = ImagePath::parse("/etc").expect("a valid constant");
    let has_etc = matches!(fs.lookup(&etc, 0), Ok(Some((meta, _))) if meta.kind == EntryType::Dir);
    Probe {
        is_ext: true,
        has_etc,
        description: Some(if has_etc {
            "ext2/3/4, holds /etc".to_string()
        } else {
            "ext2/3/4, no /etc".to_string()
        }),
        unusable: None,
    }
}

/// What a partition holds, for choosing and for listing.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub is_ext: bool,
    pub has_etc: bool,
    /// e.g. "ext4, holds /etc"; `None` when nothing known was found.
    pub description: Option<String>,
    /// Why the ext2/3/4 filesystem found here cannot be used (larger than
    /// its partition, a damaged superblock), if that is so.
    pub unusable: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, name: &str, scheme: Scheme) -> Partition {
        Partition {
            number,
            name: (!name.is_empty()).then(|| name.to_string()),
            type_name: "Linux filesystem".into(),
            offset: number as u64 * 1024 * 1024,
            size: 1024 * 1024,
            scheme,
        }
    }

    fn ext(has_etc: bool) -> Probe {
        Probe {
            is_ext: true,
            has_etc,
            description: Some(format!("ext4{}", if has_etc { ", holds /etc" } else { "" })),
            unusable: None,
        }
    }

    #[test]
    fn app_wins_then_the_only_rootfs() {
        let gpt = [part(1, "kernel", Scheme::Gpt), part(2, "APP", Scheme::Gpt)];
        let chosen = choose(&gpt, None, |_| ext(true)).unwrap();
        assert_eq!(chosen.number, 2);

        let mbr = [part(1, "", Scheme::Mbr), part(2, "", Scheme::Mbr)];
        let chosen = choose(&mbr, None, |p| ext(p.number == 2)).unwrap();
        assert_eq!(chosen.number, 2);

        let err = choose(&mbr, None, |_| ext(true)).unwrap_err().to_string();
        assert!(
            err.contains("--partition") && err.contains("holds /etc"),
            "{err}"
        );
    }

    #[test]
    fn asked_for_by_name_or_number() {
        let wic = [
            part(1, "boot", Scheme::Gpt),
            part(2, "root", Scheme::Gpt),
            part(3, "data", Scheme::Gpt),
        ];
        let by_name = choose(&wic, Some(&"data".parse().unwrap()), |_| ext(true)).unwrap();
        assert_eq!(by_name.number, 3);
        let by_number = choose(&wic, Some(&"2".parse().unwrap()), |_| ext(true)).unwrap();
        assert_eq!(by_number.number, 2);
        let missing = choose(&wic, Some(&"9".parse().unwrap()), |_| ext(true)).unwrap_err();
        assert!(missing.to_string().contains("no partition 9"), "{missing}");
        let not_ext = choose(&wic, Some(&"1".parse().unwrap()), |p| {
            if p.number == 1 {
                Probe::default()
            } else {
                ext(true)
            }
        })
        .unwrap_err();
        assert!(not_ext.to_string().contains("not an ext2/3/4"), "{not_ext}");
    }

    /// A damaged filesystem where one was asked for is said to be one, in
    /// its own words, not called "not ext2/3/4".
    #[test]
    fn an_unusable_filesystem_is_named() {
        let gpt = [part(1, "APP", Scheme::Gpt)];
        let err = choose(&gpt, None, |_| Probe {
            description: Some("ext2/3/4, unusable".into()),
            unusable: Some("it is larger than its partition".into()),
            ..Probe::default()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "partition 1 \"APP\" holds an ext2/3/4 filesystem imprint cannot use: it is larger than its partition"
        );
    }

    fn run(cmd: &mut std::process::Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install gdisk and fdisk)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn read_table(path: &std::path::Path) -> Result<Vec<Partition>, DiskError> {
        let file = File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        let mut head = vec![0u8; 8192];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).unwrap();
        assert!(detect(&head).is_some());
        partitions(&file, &head, size)
    }

    /// Tables as sgdisk and sfdisk write them, read back as they list them.
    #[test]
    fn reads_sgdisk_and_sfdisk_tables() {
        let dir = tempfile::tempdir().unwrap();
        let gpt = dir.path().join("gpt.img");
        std::fs::File::create(&gpt)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run(std::process::Command::new("sgdisk").arg("-og").arg(&gpt));
        run(std::process::Command::new("sgdisk")
            .args(["-n", "1:2048:+8M", "-c", "1:kernel", "-t", "1:0700"])
            .args(["-n", "2:0:+16M", "-c", "2:APP", "-t", "2:8300"])
            .arg(&gpt));
        let parts = read_table(&gpt).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].name.as_deref(), Some("APP"));
        assert_eq!(
            (parts[1].offset, parts[1].size),
            ((2048 + 16384) * 512, 16 << 20)
        );
        assert_eq!(parts[1].type_name, "Linux filesystem");

        // A damaged backup header is found, not trusted blindly.
        let mut bytes = std::fs::read(&gpt).unwrap();
        let last = bytes.len() - 512;
        bytes[last + 40] ^= 0xFF;
        std::fs::write(&gpt, &bytes).unwrap();
        let err = read_table(&gpt).unwrap_err().to_string();
        assert!(
            err.contains("backup GPT header") && err.contains("CRC32"),
            "{err}"
        );

        let dos = dir.path().join("dos.img");
        std::fs::File::create(&dos)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let layout = "label: dos\nstart=2048, size=8192, type=c, bootable\nstart=10240, size=40960, type=5\nstart=12288, size=8192, type=83\nstart=22528, size=16384, type=83\n";
        let mut child = std::process::Command::new("sfdisk")
            .arg("-q")
            .arg(&dos)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk (install fdisk)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(layout.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let parts = read_table(&dos).unwrap();
        let numbers: Vec<(u32, u64, u64)> = parts
            .iter()
            .map(|p| (p.number, p.offset / 512, p.size / 512))
            .collect();
        assert_eq!(
            numbers,
            vec![(1, 2048, 8192), (5, 12288, 8192), (6, 22528, 16384)]
        );
    }
}
