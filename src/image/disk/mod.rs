//! The disk container layer: a partitioned disk image (GPT or MBR) holding
//! the root filesystem in one of its partitions, as SD card images, Yocto
//! `.wic` files and NVIDIA's `sd-blob.img` are. This layer finds the
//! partitions and chooses one; the filesystem inside is read and edited
//! through a window onto the partition's bytes, and every byte outside
//! that partition is kept as it is.

mod gpt;
mod mbr;
mod problem;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

use crate::image::ext4::{Ext4Error, Ext4Inspector};
use crate::io::read_at::{ReadAt, Window};
use crate::plan::{EntryType, ImagePath};

pub use problem::{GptCopy, TablePart, TableProblem};

/// The rootfs partition name in NVIDIA's flash layouts, and so in the SD
/// card images jetson-disk-image-creator.sh writes.
pub const NVIDIA_ROOTFS_NAME: &str = "APP";

/// The second rootfs slot in NVIDIA's A/B layouts (`ROOTFS_AB=1`: flash.sh
/// writes `system.img_b` into it).
pub const NVIDIA_ROOTFS_B_NAME: &str = "APP_b";

/// The rootfs partitions of NVIDIA's encrypted layouts (`ROOTFS_ENC=1`,
/// e.g. bootloader/t186ref/cfg/flash_t234_qspi_sdmmc_enc_rfs.xml line
/// 736): LUKS2 containers, while `APP` then holds only `/boot` (flash.sh
/// builds it from `rootfs/boot`, lines 1260-1262).
pub const NVIDIA_ENC_ROOTFS_NAME: &str = "APP_ENC";
pub const NVIDIA_ENC_ROOTFS_B_NAME: &str = "APP_ENC_b";

/// What `--partition` takes for "every rootfs slot" (see [`select`]).
pub const ALL_ROOTFS: &str = "all-rootfs";

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("cannot read {what}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("{part} is corrupt: {why}")]
    Corrupt { part: TablePart, why: TableProblem },
    #[error("no partition {wanted} in the image; it has:\n{candidates}")]
    NoSuchPartition {
        wanted: PartitionChoice,
        candidates: Candidates,
    },
    #[error("imprint cannot tell which partition holds the root filesystem; name it with --partition NAME or NUMBER (repeat it for several slots, or --partition all-rootfs for every one). The image has:\n{candidates}")]
    Ambiguous { candidates: Candidates },
    #[error("--partition all-rootfs found no rootfs slot: no GPT partition is named APP and no partition holds an ext2/3/4 filesystem with /etc. The image has:\n{candidates}")]
    NoRootfs { candidates: Candidates },
    #[error("partition {number} is not an ext2/3/4 filesystem; choose the rootfs partition with --partition. The image has:\n{candidates}")]
    NotExt4 { number: u32, candidates: Candidates },
    #[error("{partition} holds an ext2/3/4 filesystem imprint cannot use: {why}")]
    Unusable { partition: String, why: Unusable },
    #[error("more than one partition is named \"{name}\" ({}), so imprint cannot tell which is meant; choose by number with --partition N (repeat it for several). The image has:\n{candidates}", PartitionId::list(.matches))]
    DuplicateName {
        name: String,
        matches: Vec<PartitionId>,
        candidates: Candidates,
    },
    #[error("the {scheme} is corrupt: {} and {} overlap (LBA {}..={} and {}..={} in {sector}-byte sectors), so a write into one would change the other. Repair the table (`sgdisk -v` shows the problem) or rebuild the image", .first.0, .second.0, .first.1, .first.2, .second.1, .second.2)]
    Overlap {
        scheme: &'static str,
        sector: u64,
        first: (PartitionId, u64, u64),
        second: (PartitionId, u64, u64),
    },
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
        self.id().to_string()
    }

    /// Its number and name, as reports show it.
    pub fn id(&self) -> PartitionId {
        PartitionId {
            number: self.number,
            name: self.name.clone().filter(|n| !n.is_empty()),
        }
    }
}

/// A partition as reports name it: its number and, on GPT, its name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionId {
    // In alphabetical order, as the JSON documents' fields are.
    pub name: Option<String>,
    pub number: u32,
}

impl PartitionId {
    /// `2 "APP"` (or `2` without a name), as lists of them show it.
    pub fn short(&self) -> String {
        match &self.name {
            Some(n) => format!("{} \"{n}\"", self.number),
            None => self.number.to_string(),
        }
    }

    /// `partition 2 "APP"`, or `partitions 2 "APP", 4 "APP_b"`.
    pub fn list(ids: &[PartitionId]) -> String {
        let all: Vec<String> = ids.iter().map(PartitionId::short).collect();
        match ids.len() {
            1 => format!("partition {}", all[0]),
            _ => format!("partitions {}", all.join(", ")),
        }
    }
}

/// `partition 1 "APP"`.
impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {}", self.short())
    }
}

/// Which partition the user asked for (`--partition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionChoice {
    Number(u32),
    Name(String),
    /// Every rootfs slot (`all-rootfs`): `APP` and `APP_b` on a disk with a
    /// partition named `APP`, else every ext2/3/4 partition holding `/etc`
    /// (docs/formats.md).
    AllRootfs,
}

impl FromStr for PartitionChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse::<u32>() {
            Ok(n) => PartitionChoice::Number(n),
            Err(_) if s == ALL_ROOTFS => PartitionChoice::AllRootfs,
            Err(_) => PartitionChoice::Name(s.to_string()),
        })
    }
}

impl fmt::Display for PartitionChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionChoice::Number(n) => write!(f, "{n}"),
            PartitionChoice::Name(n) => write!(f, "named \"{n}\""),
            PartitionChoice::AllRootfs => f.write_str(ALL_ROOTFS),
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

/// Where a GPT disk ends, from its first sectors alone (`DETECT_HEAD`
/// bytes): after its backup header, which is the disk's last sector by
/// definition. `None` for anything else: a DOS table says nothing of the
/// disk's end (space after its last partition is the disk's).
/// (The codec layer stores no further; [`partitions`] is what decides
/// whether the disk is well formed.)
pub(crate) fn end_in_head(head: &[u8]) -> Option<u64> {
    match detect(head)? {
        Scheme::Gpt if gpt::present(head, 512) => gpt::end_in_head(head, 512),
        Scheme::Gpt => gpt::end_in_head(head, 4096),
        Scheme::Mbr => None,
    }
}

/// The first bytes [`end_in_head`] needs: a GPT header on a disk of
/// 4 KiB sectors ends at 8 KiB.
pub(crate) const DETECT_HEAD: usize = 8192;

/// Reads the partition table of a disk image.
pub fn partitions(file: &File, head: &[u8], disk_size: u64) -> Result<Vec<Partition>, DiskError> {
    let (parts, sector) = match detect(head) {
        Some(Scheme::Gpt) => {
            let sector = if gpt::present(head, 512) { 512 } else { 4096 };
            (gpt::partitions(file, disk_size, sector)?, sector)
        }
        Some(Scheme::Mbr) => mbr_partitions(file, disk_size)?,
        None => return Ok(Vec::new()),
    };
    no_overlap(&parts, sector)?;
    Ok(parts)
}

/// A DOS table's partitions and its sector size. A DOS table does not say
/// its sector size: 512 unless no partition holds a filesystem or
/// container at 512-byte LBAs and one does at 4096-byte LBAs (a 4Kn
/// disk's image, `sfdisk --sector-size 4096`), which would otherwise be
/// listed at 1/8 of its sizes with nothing recognisable inside.
fn mbr_partitions(file: &File, disk_size: u64) -> Result<(Vec<Partition>, u64), DiskError> {
    let small = mbr::partitions(file, disk_size, mbr::SECTOR)?;
    let known = |parts: &[Partition]| parts.iter().any(|p| holds_known(file, p));
    if !known(&small) {
        if let Ok(large) = mbr::partitions(file, disk_size, 4096) {
            if known(&large) {
                return Ok((large, 4096));
            }
        }
    }
    Ok((small, mbr::SECTOR))
}

/// Whether a partition starts with an ext2/3/4 superblock or a LUKS header.
fn holds_known(file: &File, p: &Partition) -> bool {
    let mut head = [0u8; 1024 + 58];
    if p.size < head.len() as u64 || file.read_exact_at(&mut head, p.offset).is_err() {
        return false;
    }
    head[1024 + 56..] == [0x53, 0xEF] || head.starts_with(b"LUKS\xba\xbe")
}

/// Refuses two partitions sharing bytes (as `sgdisk -v` reports "partitions
/// 2 and 1 overlap"): a write into either would change the other.
fn no_overlap(parts: &[Partition], sector: u64) -> Result<(), DiskError> {
    let mut by_start: Vec<&Partition> = parts.iter().collect();
    by_start.sort_by_key(|p| (p.offset, p.number));
    let lba = |p: &Partition| (p.id(), p.offset / sector, (p.offset + p.size) / sector - 1);
    for pair in by_start.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.offset < a.offset + a.size {
            let (first, second) = if a.number < b.number { (a, b) } else { (b, a) };
            return Err(DiskError::Overlap {
                scheme: match a.scheme {
                    Scheme::Gpt => "GPT",
                    Scheme::Mbr => "partition table",
                },
                sector,
                first: lba(first),
                second: lba(second),
            });
        }
    }
    Ok(())
}

/// Chooses the partitions to stamp or read, in table order, each once:
/// with nothing asked for, the GPT partition named `APP`, else the only
/// ext2/3/4 partition holding `/etc`; else each one asked for by number or
/// GPT name, and for [`PartitionChoice::AllRootfs`] every rootfs slot: the
/// GPT partitions named `APP` and `APP_b` when there is an `APP` (NVIDIA's
/// slots; its recovery rootfs is not one), else every partition holding an
/// ext2/3/4 filesystem with `/etc`. Every partition chosen must hold a
/// usable ext2/3/4 filesystem. `probe` says what a partition holds.
pub fn select(
    parts: &[Partition],
    wanted: &[PartitionChoice],
    mut probe: impl FnMut(&Partition) -> Probe,
) -> Result<Vec<Partition>, DiskError> {
    let mut probes: Vec<Option<Probe>> = vec![None; parts.len()];
    let mut probe_at =
        |i: usize| -> Probe { probes[i].get_or_insert_with(|| probe(&parts[i])).clone() };
    let list = |probe_at: &mut dyn FnMut(usize) -> Probe| {
        Candidates(
            (0..parts.len())
                .map(|i| (parts[i].clone(), probe_at(i).description))
                .collect(),
        )
    };
    // Every partition of that GPT name; two of them is an error, since
    // taking the first would stamp a slot that may not be the live one.
    let named = |name: &str, probe_at: &mut dyn FnMut(usize) -> Probe| {
        let all: Vec<usize> = (0..parts.len())
            .filter(|&i| parts[i].scheme == Scheme::Gpt && parts[i].name.as_deref() == Some(name))
            .collect();
        if all.len() > 1 {
            return Err(DiskError::DuplicateName {
                name: name.to_string(),
                matches: all.iter().map(|&i| parts[i].id()).collect(),
                candidates: list(probe_at),
            });
        }
        Ok(all.first().copied())
    };
    let mut chosen: Vec<usize> = Vec::new();
    if wanted.is_empty() {
        let index = match named(NVIDIA_ENC_ROOTFS_NAME, &mut probe_at)? {
            Some(enc) => Some(enc),
            None => named(NVIDIA_ROOTFS_NAME, &mut probe_at)?,
        }
        .or_else(|| {
            let rootfs: Vec<usize> = (0..parts.len()).filter(|&i| probe_at(i).has_etc).collect();
            (rootfs.len() == 1).then(|| rootfs[0])
        });
        match index {
            Some(i) => chosen.push(i),
            None => {
                return Err(DiskError::Ambiguous {
                    candidates: list(&mut probe_at),
                })
            }
        }
    }
    for w in wanted {
        let found: Vec<usize> = match w {
            PartitionChoice::Number(n) => parts
                .iter()
                .position(|p| p.number == *n)
                .into_iter()
                .collect(),
            PartitionChoice::Name(name) => named(name, &mut probe_at)?.into_iter().collect(),
            PartitionChoice::AllRootfs => {
                let enc = named(NVIDIA_ENC_ROOTFS_NAME, &mut probe_at)?;
                let app = named(NVIDIA_ROOTFS_NAME, &mut probe_at)?;
                match (enc, app) {
                    (Some(enc), _) => std::iter::once(enc)
                        .chain(named(NVIDIA_ENC_ROOTFS_B_NAME, &mut probe_at)?)
                        .collect(),
                    (None, Some(app)) => std::iter::once(app)
                        .chain(named(NVIDIA_ROOTFS_B_NAME, &mut probe_at)?)
                        .collect(),
                    (None, None) => (0..parts.len()).filter(|&i| probe_at(i).has_etc).collect(),
                }
            }
        };
        if found.is_empty() {
            let candidates = list(&mut probe_at);
            return Err(match w {
                PartitionChoice::AllRootfs => DiskError::NoRootfs { candidates },
                _ => DiskError::NoSuchPartition {
                    wanted: w.clone(),
                    candidates,
                },
            });
        }
        chosen.extend(found);
    }
    chosen.sort_unstable();
    chosen.dedup();
    for &i in &chosen {
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
    }
    Ok(chosen.into_iter().map(|i| parts[i].clone()).collect())
}

/// Opens the disk image at `path`, reads its partition table and chooses
/// the partitions to stamp or read (see [`select`]), in table order.
pub(crate) fn locate(
    path: &Path,
    wanted: &[PartitionChoice],
) -> Result<Vec<Partition>, crate::image::ImageError> {
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
    let chosen = select(&parts, wanted, |p| probe(&file, p))?;
    for p in &chosen {
        tracing::info!(partition = %p.label(), offset = p.offset, size = p.size, "rootfs partition");
    }
    Ok(chosen)
}

/// Looks into a partition with imprint's own ext2/3/4 reader.
fn probe(file: &File, part: &Partition) -> Probe {
    let window = Window::new(file, part.offset, part.size);
    // A LUKS container (L4T's APP_ENC) is stamped through, once a key
    // opens it: chosen by --partition (its /etc cannot be seen before).
    let mut head = vec![0u8; (64 << 10).min(part.size as usize)];
    if window.read_at(0, &mut head).is_ok() {
        if let Some(version) = crate::image::luks::header::detect(&head) {
            return Probe {
                is_ext: true,
                has_etc: false,
                description: Some(format!("LUKS{version} container")),
                unusable: None,
            };
        }
    }
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
                Ext4Error::Truncated { expected, actual } => {
                    Unusable::LargerThanPartition { expected, actual }
                }
                other => Unusable::Refused(Arc::new(other)),
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
    /// An ext2/3/4 filesystem, or a container that holds one (LUKS).
    pub is_ext: bool,
    pub has_etc: bool,
    /// e.g. "ext4, holds /etc"; `None` when nothing known was found.
    pub description: Option<String>,
    /// Why the ext2/3/4 filesystem found here cannot be used (larger than
    /// its partition, a damaged superblock), if that is so.
    pub unusable: Option<Unusable>,
}

/// Why an ext2/3/4 filesystem found in a partition cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Unusable {
    #[error("it is larger than its partition (its superblock describes {}, the partition has {}); was the partition shrunk, or the filesystem made with the wrong size?", human_size(*expected), human_size(*actual))]
    LargerThanPartition { expected: u64, actual: u64 },
    /// Refused for the reason the ext2/3/4 reader gives, in its words.
    #[error("{0}")]
    Refused(Arc<Ext4Error>),
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

    /// One partition asked for (or none), as `--partition` once.
    fn choose(
        parts: &[Partition],
        wanted: Option<&PartitionChoice>,
        probe: impl FnMut(&Partition) -> Probe,
    ) -> Result<Partition, DiskError> {
        let wanted: Vec<PartitionChoice> = wanted.into_iter().cloned().collect();
        let mut chosen = select(parts, &wanted, probe)?;
        assert_eq!(chosen.len(), 1);
        Ok(chosen.remove(0))
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

    /// An encrypted L4T layout: APP holds /boot, APP_ENC (a LUKS
    /// container) the rootfs, and is the default; all-rootfs is APP_ENC and
    /// APP_ENC_b.
    #[test]
    fn an_encrypted_layout_picks_app_enc() {
        let enc = [
            part(1, "APP", Scheme::Gpt),
            part(2, "APP_ENC", Scheme::Gpt),
            part(3, "APP_b", Scheme::Gpt),
            part(4, "APP_ENC_b", Scheme::Gpt),
        ];
        let luks = |p: &Partition| {
            if p.name.as_deref().is_some_and(|n| n.contains("ENC")) {
                Probe {
                    is_ext: true,
                    has_etc: false,
                    description: Some("LUKS2 container".into()),
                    unusable: None,
                }
            } else {
                ext(false)
            }
        };
        assert_eq!(choose(&enc, None, luks).unwrap().number, 2);
        let all = select(&enc, &[PartitionChoice::AllRootfs], luks).unwrap();
        let numbers: Vec<u32> = all.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [2, 4]);
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

    /// Several partitions, in table order and each once; all-rootfs is
    /// APP and APP_b on an NVIDIA layout (not its recovery rootfs), else
    /// every ext partition holding /etc; a missing one among several is
    /// named.
    #[test]
    fn several_partitions_and_all_rootfs() {
        let choices = |text: &[&str]| -> Vec<PartitionChoice> {
            text.iter().map(|t| t.parse().unwrap()).collect()
        };
        let numbers = |chosen: Vec<Partition>| chosen.iter().map(|p| p.number).collect::<Vec<_>>();
        let nvidia = [
            part(1, "kernel", Scheme::Gpt),
            part(2, "APP", Scheme::Gpt),
            part(3, "RECROOTFS", Scheme::Gpt),
            part(4, "APP_b", Scheme::Gpt),
        ];
        let rootfs = |p: &Partition| ext(p.number != 1);
        let all = choices(&["all-rootfs"]);
        assert_eq!(all, vec![PartitionChoice::AllRootfs]);
        assert_eq!(numbers(select(&nvidia, &all, rootfs).unwrap()), [2, 4]);
        let both = choices(&["APP_b", "APP", "2"]);
        assert_eq!(numbers(select(&nvidia, &both, rootfs).unwrap()), [2, 4]);
        let err = select(&nvidia, &choices(&["APP", "APP_c"]), rootfs)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no partition named \"APP_c\""), "{err}");
        // APP_b without a filesystem is refused, not skipped.
        let err = select(&nvidia, &all, |p| {
            if p.number == 4 {
                Probe::default()
            } else {
                rootfs(p)
            }
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("partition 4 is not an ext2/3/4"), "{err}");

        let wic = [
            part(1, "boot", Scheme::Gpt),
            part(2, "rootfsA", Scheme::Gpt),
            part(3, "rootfsB", Scheme::Gpt),
            part(4, "data", Scheme::Gpt),
        ];
        let slots = |p: &Partition| ext(matches!(p.number, 2 | 3));
        assert_eq!(numbers(select(&wic, &all, slots).unwrap()), [2, 3]);
        let mbr = [
            part(1, "", Scheme::Mbr),
            part(2, "", Scheme::Mbr),
            part(3, "", Scheme::Mbr),
        ];
        let slots = |p: &Partition| ext(p.number != 1);
        assert_eq!(numbers(select(&mbr, &all, slots).unwrap()), [2, 3]);
        let err = select(&mbr, &all, |_| Probe::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("all-rootfs found no rootfs slot"), "{err}");
    }

    /// A damaged filesystem where one was asked for is said to be one, in
    /// its own words, not called "not ext2/3/4".
    #[test]
    fn a_name_two_partitions_carry_is_refused_with_both_numbers() {
        let gpt = [
            part(1, "APP", Scheme::Gpt),
            part(2, "APP", Scheme::Gpt),
            part(3, "APP_b", Scheme::Gpt),
        ];
        for wanted in [None, Some("APP"), Some("all-rootfs")] {
            let wanted: Vec<PartitionChoice> =
                wanted.into_iter().map(|w| w.parse().unwrap()).collect();
            let err = select(&gpt, &wanted, |_| ext(true)).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, DiskError::DuplicateName { .. }), "{text}");
            assert!(
                text.contains("partitions 1 \"APP\", 2 \"APP\"") && text.contains("--partition N"),
                "{text}"
            );
        }
        let chosen = choose(&gpt, Some(&"2".parse().unwrap()), |_| ext(true)).unwrap();
        assert_eq!(chosen.number, 2);
    }

    #[test]
    fn overlapping_partitions_are_refused() {
        let mut parts = vec![part(1, "esp", Scheme::Gpt), part(2, "APP", Scheme::Gpt)];
        assert!(no_overlap(&parts, 512).is_ok());
        parts[1].offset -= 512;
        let err = no_overlap(&parts, 512).unwrap_err().to_string();
        assert!(
            err.contains("partition 1 \"esp\" and partition 2 \"APP\" overlap"),
            "{err}"
        );
    }

    #[test]
    fn an_unusable_filesystem_is_named() {
        let gpt = [part(1, "APP", Scheme::Gpt)];
        let err = choose(&gpt, None, |_| Probe {
            description: Some("ext2/3/4, unusable".into()),
            unusable: Some(Unusable::LargerThanPartition {
                expected: 64 << 20,
                actual: 32 << 20,
            }),
            ..Probe::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Unusable {
                    why: Unusable::LargerThanPartition { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "partition 1 \"APP\" holds an ext2/3/4 filesystem imprint cannot use: it is larger than its partition (its superblock describes 64.0 MiB, the partition has 32.0 MiB); was the partition shrunk, or the filesystem made with the wrong size?"
        );
    }

    fn run(cmd: &mut std::process::Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
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
        crate::require::require_tools(&["sgdisk", "sfdisk"]);
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
        let err = read_table(&gpt).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Corrupt {
                    part: TablePart::GptHeader(GptCopy::Backup),
                    why: TableProblem::Crc32,
                }
            ),
            "{err}"
        );
        // The message a user reads is the one it always was.
        assert_eq!(
            err.to_string(),
            "the backup GPT header is corrupt: its CRC32 does not match"
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
            .expect("sfdisk");
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
