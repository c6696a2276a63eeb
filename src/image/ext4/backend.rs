//! The ext2/3/4 content layer over a region of a file: the whole file for
//! a raw image, one partition for a disk image. libext2fs edits the
//! filesystem in memory over the input; the output is then the whole file,
//! written front to back with the changed blocks in place (see [`raw`]),
//! into the output file or a compressor, with a block map when the input
//! came with one.
//!
//! [`raw`]: super::raw

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::raw::{write_patched, Patches};
use super::{ensure_loaded, write_plan_to_device, ChangedBlocks, Ext4Inspector};
use crate::image::disk::{Partition, PartitionId};
use crate::image::{Found, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::io::bmap::{Bmap, RangeHasher};
use crate::io::output::TempOutput;
use crate::io::read_at::Window;
use crate::io::sink::{BmapTap, RawSink};
use crate::plan::{ImagePath, Plan};

/// Where the filesystem lies in its file: bytes `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub offset: u64,
    pub len: u64,
}

fn open_file(path: &Path) -> Result<(File, u64), ImageError> {
    let open = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open)?;
    let len = file.metadata().map_err(open)?.len();
    Ok((file, len))
}

/// Opens the filesystem in `region` of `path` (the whole file if `None`).
fn inspect(
    path: &Path,
    region: Option<Region>,
) -> Result<(u64, Region, Ext4Inspector<Window<File>>), ImageError> {
    let (file, file_len) = open_file(path)?;
    let region = region.unwrap_or(Region {
        offset: 0,
        len: file_len,
    });
    let window = Window::new(file, region.offset, region.len);
    Ok((file_len, region, Ext4Inspector::open(window, region.len)?))
}

/// One filesystem written into: the whole file, or a partition.
struct Slot {
    partition: Option<Partition>,
    region: Region,
    image: Ext4Inspector<Window<File>>,
}

/// Writes plans into copies of a file holding ext2/3/4 filesystems: the
/// whole file, or partitions of a disk image (several slots of an A/B
/// layout into one output).
pub(crate) struct Ext4Backend {
    input: PathBuf,
    file_len: u64,
    slots: Vec<Slot>,
    /// The input's block map, if it came with one: the output gets one.
    bmap: Option<Bmap>,
}

impl Ext4Backend {
    /// Over the whole file (`partitions` empty) or each partition in it.
    pub(crate) fn open(
        path: &Path,
        partitions: Vec<Partition>,
        bmap: Option<Bmap>,
    ) -> Result<Ext4Backend, ImageError> {
        let regions: Vec<Option<Partition>> = if partitions.is_empty() {
            vec![None]
        } else {
            partitions.into_iter().map(Some).collect()
        };
        let mut slots = Vec::with_capacity(regions.len());
        let mut file_len = 0;
        for partition in regions {
            let region = partition.as_ref().map(|p| Region {
                offset: p.offset,
                len: p.size,
            });
            let (len, region, image) = inspect(path, region)?;
            image.check_writable()?;
            file_len = len;
            slots.push(Slot {
                partition,
                region,
                image,
            });
        }
        ensure_loaded()?;
        if let Some(map) = &bmap {
            if map.image_size != file_len {
                return Err(ImageError::BmapMismatch {
                    image: path.to_path_buf(),
                    bmap_size: map.image_size,
                    image_size: file_len,
                });
            }
        }
        Ok(Ext4Backend {
            input: path.to_path_buf(),
            file_len,
            slots,
            bmap,
        })
    }

    /// Edits each filesystem in memory with its plan (nothing is written
    /// if libext2fs fails, e.g. for want of space), then writes the whole
    /// file with the changed blocks of all into `sink`. Returns the
    /// output's block map, if the input had one.
    pub(crate) fn write_raw(
        &mut self,
        plans: &[Plan],
        sink: &mut dyn RawSink,
    ) -> Result<Option<String>, ImageError> {
        assert_eq!(plans.len(), self.slots.len(), "one plan per filesystem");
        for (slot, plan) in self.slots.iter().zip(plans) {
            slot.image.preflight(plan)?;
        }
        let mut edited = Vec::with_capacity(self.slots.len());
        for (slot, plan) in self.slots.iter().zip(plans) {
            let sb = slot.image.superblock();
            let mut changed =
                ChangedBlocks::new(slot.image.device(), slot.region.len, sb.block_size as u32);
            write_plan_to_device(&mut changed, sb, plan)?;
            tracing::debug!(written_blocks = changed.written().len(), "libext2fs done");
            edited.push((slot.region.offset, changed));
        }
        // Partitions do not overlap: the patches of all, sorted, do not.
        let mut patches: Vec<(u64, &[u8])> = edited
            .iter()
            .flat_map(|(offset, changed)| {
                let block = changed.block_size();
                changed
                    .written()
                    .iter()
                    .map(move |(&n, data)| (offset + n * block, &data[..]))
            })
            .collect();
        patches.sort_by_key(|(at, _)| *at);
        let (input, _) = open_file(&self.input)?;
        let write_err = |source| ImageError::Output(source);
        let first_change = patches.iter().map(|(at, _)| *at).min();
        sink.first_change(first_change.unwrap_or(self.file_len))
            .map_err(write_err)?;
        crate::io::progress::start("writing", self.file_len);
        let Some(map) = &self.bmap else {
            write_patched(&input, self.file_len, &patches, sink).map_err(write_err)?;
            return Ok(None);
        };
        let mut map = map.clone();
        for (off, data) in &patches {
            map.add_bytes(*off, off + data.len() as u64);
        }
        let mut tap = BmapTap {
            inner: sink,
            hasher: RangeHasher::new(map.byte_ranges()),
        };
        write_patched(&input, self.file_len, &patches as &Patches, &mut tap).map_err(write_err)?;
        let digests = tap.hasher.finish().ok_or_else(|| {
            ImageError::Output(std::io::Error::other(
                "the block map's ranges outrun the image",
            ))
        })?;
        Ok(Some(map.render(&digests)))
    }
}

impl ImageBackend for Ext4Backend {
    fn facts(&mut self) -> Result<Vec<ImageFacts>, ImageError> {
        self.slots.iter().map(|s| Ok(s.image.facts()?)).collect()
    }

    fn partitions(&self) -> Vec<PartitionId> {
        self.slots
            .iter()
            .filter_map(|s| s.partition.as_ref().map(Partition::id))
            .collect()
    }

    fn apply(&mut self, plans: &[Plan], out: &mut TempOutput) -> Result<(), ImageError> {
        if let Some(bmap) = self.write_raw(plans, out)? {
            let path = Bmap::for_output(out.final_path(), None);
            out.add_sidecar(path, bmap.into_bytes());
        }
        Ok(())
    }
}

/// Reads files out of an ext2/3/4 filesystem in a file, for `verify`.
pub(crate) struct Ext4Reader {
    path: PathBuf,
    region: Region,
    pub(crate) image: Ext4Inspector<Window<File>>,
}

impl Ext4Reader {
    pub(crate) fn open(path: &Path, region: Option<Region>) -> Result<Ext4Reader, ImageError> {
        let (_, region, image) = inspect(path, region)?;
        Ok(Ext4Reader {
            path: path.to_path_buf(),
            region,
            image,
        })
    }
}

impl ImageReader for Ext4Reader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        Ok(self.image.lookup(path, max_content)?)
    }

    fn fsck(&mut self) -> Option<Result<(), String>> {
        e2fsck(&self.path, self.region.offset)
    }
}

/// Where e2fsck is looked for: the system's own directories, never PATH
/// (a PATH entry writable by someone else could stand in for it).
const E2FSCK: [&str; 2] = ["/usr/sbin/e2fsck", "/sbin/e2fsck"];

/// Runs `e2fsck -fn` on the filesystem at byte `offset` of `raw`, with an
/// empty environment (it needs none, and must not see the API token).
/// `None` when e2fsck is not installed.
pub(crate) fn e2fsck(raw: &Path, offset: u64) -> Option<Result<(), String>> {
    let program = E2FSCK.iter().find(|p| Path::new(p).is_file())?;
    // e2fsprogs reads `FILE?offset=N` as the filesystem at byte N.
    let mut target = raw.as_os_str().to_owned();
    if offset > 0 {
        target.push(format!("?offset={offset}"));
    }
    let out = match Command::new(program)
        .env_clear()
        .arg("-fn")
        .arg(&target)
        .output()
    {
        Ok(o) => o,
        Err(e) => return Some(Err(format!("cannot run {program}: {e}"))),
    };
    if out.status.success() {
        return Some(Ok(()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .collect();
    Some(Err(format!(
        "e2fsck -fn exited with {}: {}",
        out.status.code().unwrap_or(-1),
        summary.join(" / ")
    )))
}
