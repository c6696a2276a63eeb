//! The ext2/3/4 content layer over a [`Volume`]: the bytes a container
//! gives it (a whole raw image, one partition of a disk, a sparse image
//! through its chunk index, anything that transforms bytes on the way).
//! libext2fs edits the filesystem in memory over the volume; the changed
//! blocks are then carried out through the volume's layers to the base
//! ([`Changes`]), and the base's [`Outlet`] writes the output from them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::raw::{write_patched, Patches};
use super::reader::Superblock;
use super::{
    ensure_loaded, write_plan_to_device, ChangedBlocks, CorruptKind, Ext4Error, Ext4Inspector,
    NotExt4Kind,
};
use crate::image::disk::{Partition, PartitionId};
use crate::image::formats::Slot;
use crate::image::volume::{Changes, Volume};
use crate::image::{Found, ImageBackend, ImageError, ImageFacts, ImageReader};
use crate::io::bmap::{Bmap, RangeHasher};
use crate::io::output::{Scratch, TempOutput};
use crate::io::sink::{BmapTap, RawSink};
use crate::plan::{ImagePath, Plan};

/// A filesystem read through imprint's own reader over its volume.
pub(crate) type Filesystem = Ext4Inspector<Box<dyn Volume>>;

/// Opens the filesystem on `volume`.
pub(crate) fn open_filesystem(volume: Box<dyn Volume>) -> Result<Filesystem, ImageError> {
    let len = volume.len();
    Ok(Ext4Inspector::open(volume, len)?)
}

/// Edits `fs` in memory (nothing is written if libext2fs fails, e.g. for
/// want of space) and returns the changed blocks as they arrive at the
/// base.
pub(crate) fn edit(fs: &Filesystem, plan: &Plan) -> Result<Changes, ImageError> {
    let plan = &fs.preflight(plan)?;
    let sb = fs.superblock();
    let volume = fs.device();
    // A transforming layer turns whole sectors back; the filesystem's
    // blocks are kept in memory in units of both.
    let block = sb.block_size.max(volume.unit());
    let block = u32::try_from(block).map_err(|_| Ext4Error::Corrupt {
        why: CorruptKind::BlockTooLarge(block),
    })?;
    let mut changed = ChangedBlocks::new(volume, volume.len(), block);
    write_plan_to_device(&mut changed, sb, plan)?;
    tracing::debug!(written_blocks = changed.written().len(), "libext2fs done");
    let changes =
        Changes::carry(volume.as_ref(), changed.take_written()).map_err(Ext4Error::Device)?;
    Ok(changes)
}

/// How the output is made from the changed blocks that arrived at the
/// base: a copy of the base file with them patched in ([`PatchOutlet`]),
/// recompressed ([the codec layer](crate::image::compressed)), or the
/// base's sparse chunks with them spliced in (`sparse::SpliceOutlet`).
pub(crate) trait Outlet: Send {
    fn write(&mut self, changes: &Changes, out: &mut TempOutput) -> Result<(), ImageError>;
}

/// The output is the base file, front to back, with the changed bytes in
/// place (see [`raw`](super::raw)): holes stay holes, and a block map comes
/// with it when the input had one.
pub(crate) struct PatchOutlet {
    base: PathBuf,
    len: u64,
    /// The input's block map, if it came with one: the output gets one.
    bmap: Option<Bmap>,
}

impl PatchOutlet {
    /// Over the base file at `base`, `len` bytes; `input` names the image
    /// the block map belongs to in errors.
    pub(crate) fn new(
        base: &Path,
        len: u64,
        bmap: Option<Bmap>,
        input: &Path,
    ) -> Result<PatchOutlet, ImageError> {
        if let Some(map) = &bmap {
            if map.image_size != len {
                return Err(ImageError::BmapMismatch {
                    image: input.to_path_buf(),
                    bmap_size: map.image_size,
                    image_size: len,
                });
            }
        }
        Ok(PatchOutlet {
            base: base.to_path_buf(),
            len,
            bmap,
        })
    }

    /// The base's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Writes the whole base with `changes` in place into `sink`. Returns
    /// the output's block map, if the input had one.
    pub(crate) fn write_raw(
        &self,
        changes: &Changes,
        sink: &mut dyn RawSink,
    ) -> Result<Option<String>, ImageError> {
        let patches: Vec<(u64, &[u8])> = changes.iter().collect();
        let input = File::open(&self.base).map_err(|source| ImageError::Open {
            path: self.base.clone(),
            source,
        })?;
        let write_err = |source| ImageError::Output(source);
        let first_change = patches.first().map(|(at, _)| *at);
        sink.first_change(first_change.unwrap_or(self.len))
            .map_err(write_err)?;
        crate::io::progress::start("writing", self.len);
        let Some(map) = &self.bmap else {
            write_patched(&input, self.len, &patches, sink).map_err(write_err)?;
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
        write_patched(&input, self.len, &patches as &Patches, &mut tap).map_err(write_err)?;
        let digests = tap.hasher.finish().ok_or_else(|| {
            ImageError::Output(std::io::Error::other(
                "the block map's ranges outrun the image",
            ))
        })?;
        Ok(Some(map.render(&digests)))
    }
}

impl Outlet for PatchOutlet {
    fn write(&mut self, changes: &Changes, out: &mut TempOutput) -> Result<(), ImageError> {
        if let Some(bmap) = self.write_raw(changes, out)? {
            let path = Bmap::for_output(out.final_path(), None);
            out.add_sidecar(path, bmap.into_bytes());
        }
        Ok(())
    }
}

/// Writes plans into the ext2/3/4 filesystems on the volumes a container
/// gave (one, or several partitions of one disk: the slots of an A/B
/// layout), all into one output, each with its own plan.
pub(crate) struct Ext4Backend {
    filesystems: Vec<Filesystem>,
    /// The partition each filesystem is in (disk images only).
    partitions: Vec<PartitionId>,
    // Dropped after the filesystems, whose volumes may read its files.
    outlet: Box<dyn Outlet>,
}

impl Ext4Backend {
    pub(crate) fn open(
        slots: Vec<Slot>,
        outlet: Box<dyn Outlet>,
    ) -> Result<Ext4Backend, ImageError> {
        let partitions = slots
            .iter()
            .filter_map(|s| s.partition.as_ref().map(Partition::id))
            .collect();
        let filesystems = slots
            .into_iter()
            .map(|s| open_filesystem(s.volume))
            .collect::<Result<Vec<_>, _>>()?;
        if filesystems.is_empty() {
            return Err(Ext4Error::NotExt4 {
                why: NotExt4Kind::EmptyContainer,
            }
            .into());
        }
        for fs in &filesystems {
            fs.check_writable()?;
        }
        ensure_loaded()?;
        Ok(Ext4Backend {
            filesystems,
            partitions,
            outlet,
        })
    }
}

impl ImageBackend for Ext4Backend {
    /// Each filesystem's own: the slots of one disk may differ (another
    /// release in slot B, another uid for the same user).
    fn facts(&mut self) -> Result<Vec<ImageFacts>, ImageError> {
        self.filesystems.iter().map(|fs| Ok(fs.facts()?)).collect()
    }

    fn partitions(&self) -> Vec<PartitionId> {
        self.partitions.clone()
    }

    /// Every filesystem is edited in memory before anything is written:
    /// one that cannot take its plan (no space) fails the whole output.
    fn apply(&mut self, plans: &[Plan], out: &mut TempOutput) -> Result<(), ImageError> {
        assert_eq!(
            plans.len(),
            self.filesystems.len(),
            "one plan per filesystem (a bug in imprint)"
        );
        let mut changes = Changes::default();
        for (fs, plan) in self.filesystems.iter().zip(plans) {
            changes.extend(edit(fs, plan)?).map_err(Ext4Error::Device)?;
        }
        tracing::debug!(
            changed_blocks = changes.len(),
            filesystems = self.filesystems.len(),
            "changes carried out to the base"
        );
        self.outlet.write(&changes, out)
    }
}

/// Reads files out of an ext2/3/4 filesystem on a volume, for `verify`,
/// `ls` and `cat`.
pub(crate) struct Ext4Reader {
    /// The base file, for e2fsck where the volume is plain bytes in it.
    base: PathBuf,
    pub(crate) image: Filesystem,
    /// A scratch file the volume reads (a codec's expansion), kept while
    /// the reader lives (the readers of a disk's partitions share it).
    _scratch: Option<Arc<Scratch>>,
}

impl Ext4Reader {
    pub(crate) fn open(
        base: &Path,
        volume: Box<dyn Volume>,
        scratch: Option<Arc<Scratch>>,
    ) -> Result<Ext4Reader, ImageError> {
        Ok(Ext4Reader {
            base: base.to_path_buf(),
            image: open_filesystem(volume)?,
            _scratch: scratch,
        })
    }
}

impl ImageReader for Ext4Reader {
    fn lookup(&mut self, path: &ImagePath, max_content: u64) -> Result<Option<Found>, ImageError> {
        Ok(self.image.lookup(path, max_content)?)
    }

    /// e2fsck reads the filesystem where it lies as it is in the base file;
    /// anything else (a sparse image, a transforming container) is expanded
    /// into a private scratch file in the temp directory first.
    fn fsck(&mut self) -> Option<Result<(), String>> {
        let volume = self.image.device();
        if let Some(offset) = volume.plain_at() {
            return e2fsck(&self.base, offset);
        }
        let name = self
            .base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        // Unlinked before a byte is written: the expansion holds the
        // image's password, and a SIGKILL must leave no file behind.
        let scratch = match Scratch::create_in(&std::env::temp_dir(), &name)
            .and_then(Scratch::into_unlinked)
        {
            Ok(f) => f,
            Err(e) => return Some(Err(format!("cannot create a scratch file for e2fsck: {e}"))),
        };
        // Only the filesystem's own blocks: whatever its container claims
        // past them (a FILL chunk of terabytes) is not e2fsck's business.
        let limit = Superblock::read(volume)
            .map(|sb| sb.image_bytes())
            .unwrap_or(u64::MAX);
        if let Err(e) = volume.expand_into(&scratch, limit) {
            return Some(Err(format!("cannot expand the image for e2fsck: {e}")));
        }
        e2fsck_inherited(&scratch)
    }
}

/// Where e2fsck is looked for: the system's own directories, never PATH
/// (a PATH entry writable by someone else could stand in for it).
const E2FSCK: [&str; 2] = ["/usr/sbin/e2fsck", "/sbin/e2fsck"];

/// Runs `e2fsck -fn` on the filesystem at byte `offset` of `raw`, with an
/// empty environment (it needs none, and must not see the API token).
/// `None` when e2fsck is not installed.
pub(crate) fn e2fsck(raw: &Path, offset: u64) -> Option<Result<(), String>> {
    // e2fsprogs reads `FILE?offset=N` as the filesystem at byte N.
    let mut target = raw.as_os_str().to_owned();
    if offset > 0 {
        target.push(format!("?offset={offset}"));
    }
    run_e2fsck(&target, None)
}

/// Runs `e2fsck -fn` on an unlinked file: e2fsck inherits its descriptor
/// and opens it as `/proc/self/fd/N` (its own), so no name ever exists.
fn e2fsck_inherited(file: &std::fs::File) -> Option<Result<(), String>> {
    use std::os::fd::AsRawFd;
    let target = format!("/proc/self/fd/{}", file.as_raw_fd());
    run_e2fsck(std::ffi::OsStr::new(&target), Some(file))
}

fn run_e2fsck(
    target: &std::ffi::OsStr,
    inherit: Option<&std::fs::File>,
) -> Option<Result<(), String>> {
    let program = E2FSCK.iter().find(|p| Path::new(p).is_file())?;
    let mut command = Command::new(program);
    command.env_clear().arg("-fn").arg(target);
    if let Some(file) = inherit {
        use std::os::fd::{AsRawFd, BorrowedFd};
        use std::os::unix::process::CommandExt;
        let fd = file.as_raw_fd();
        // SAFETY: between fork and exec the closure only calls fcntl
        // (async-signal-safe) on a descriptor this process holds open
        // for the whole call (`file` outlives `output()`).
        unsafe {
            command.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
    }
    let out = match command.output() {
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
