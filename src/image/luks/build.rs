//! A new LUKS2 container per device, built from a plain ext2/3/4 image
//! (`provision --luks-encrypt`): what L4T's flash.sh builds as root
//! through a loop device and dm-crypt (`build_enc_root_fsimg` in
//! tools/disk_encryption/disk_encryption_helper.func, lines 503-626:
//! luksFormat, luksOpen, mkfs, copy the rootfs, luksClose, mksparse),
//! written here as a file: the header of `format.rs`, then the
//! filesystem's used blocks (the device's credentials stamped in)
//! encrypted with the new volume key; free blocks stay holes, so the
//! Android sparse form (what flash.sh -r flashes as
//! system_root_encrypted.img) stays about the size of the data.
//!
//! The filesystem is stamped as any plain one (`Ext4Backend`); this is its
//! outlet: the changed blocks come back plain, at their offsets in the
//! plain image, and are encrypted here with the rest.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::format::{self, DATA_OFFSET};
use super::xts::XtsKey;
use super::{LuksError, LuksKey};
use crate::compress::Compression;
use crate::image::ext4::reader::Superblock;
use crate::image::ext4::{used_blocks, Ext4Backend, Outlet, UsedBlocks};
use crate::image::formats::Slot;
use crate::image::volume::{Changes, Volume};
use crate::image::{Content, ImageBackend, ImageError, ImageOptions};
use crate::io::output::TempOutput;
use crate::io::sink::RawSink;

/// What `--luks-encrypt` asks for.
#[derive(Debug, Clone)]
pub(crate) struct LuksBuild {
    /// The container's UUID: the one flash.sh puts on the kernel command
    /// line and in the initrd's crypttab (bootloader/l4t-rootfs-uuid.txt_enc).
    pub(crate) uuid: String,
    /// With several inputs (one device's rootfs slots: L4T's APP_ENC and
    /// APP_ENC_b), each input's UUID in input order; empty: `uuid` only.
    pub(crate) per_input: Vec<String>,
    /// The data segment's sector size: 512 (cryptsetup on a loop device,
    /// as flash.sh runs it) or 4096.
    pub(crate) sector_size: u64,
}

impl LuksBuild {
    /// What input `index` of the run is built with: its own UUID when
    /// one was given per input.
    pub(crate) fn for_input(&self, index: usize) -> LuksBuild {
        LuksBuild {
            uuid: self.per_input.get(index).unwrap_or(&self.uuid).clone(),
            per_input: Vec::new(),
            sector_size: self.sector_size,
        }
    }

    /// Whether `uuid` is a UUID as flash.sh takes it.
    pub(crate) fn is_uuid(uuid: &str) -> bool {
        format::is_uuid(uuid)
    }
}

/// The output's block: Android sparse images (mksparse's default) and the
/// unit used blocks are found in.
const BLOCK: u64 = 4096;
/// Bytes encrypted and written at a time.
const RUN: u64 = 1 << 20;
/// The most bytes one sparse RAW chunk takes here (its size field is 32
/// bits).
const MAX_CHUNK: u64 = 64 << 20;

/// Opens `path`, a plain ext2/3/4 image (raw or Android sparse,
/// uncompressed), to be stamped and written as a new LUKS2 container.
pub(crate) fn open_backend(
    path: &Path,
    codec: Compression,
    content: Content,
    build: &LuksBuild,
    options: &ImageOptions,
) -> Result<Box<dyn ImageBackend>, ImageError> {
    let not_plain = |found: String| LuksError::BuildInput {
        path: path.to_path_buf(),
        found,
    };
    if codec != Compression::None || !matches!(content, Content::Ext4 | Content::Sparse) {
        let kind = crate::image::ImageKind {
            compression: codec,
            content,
        };
        let mut found = kind.describe();
        if (super::ROW.is)(content) {
            found += " already (stamp it as it is: without --luks-encrypt)";
        }
        return Err(not_plain(found).into());
    }
    let passphrase = match &options.luks {
        Some(LuksKey::L4t { ekb, ecid }) => {
            super::l4t::passphrase(ekb, ecid.as_deref(), &build.uuid)
                .map_err(|why| LuksError::Ecid { why })?
        }
        Some(LuksKey::Passphrase(pass)) => Zeroizing::new(pass.to_vec()),
        Some(LuksKey::VolumeKey(_)) | None => {
            return Err(LuksError::BuildKey {
                path: path.to_path_buf(),
            }
            .into())
        }
    };
    super::register_passphrase(&passphrase);
    let sparse = content == Content::Sparse;
    let [fs_volume, plain] = crate::image::formats::plain_base(path, sparse)?;
    let mut head = [0u8; 2048];
    fs_volume
        .read_at(0, &mut head[..fs_volume.len().min(2048) as usize])
        .map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if super::header::detect(&head).is_some() {
        return Err(not_plain(
            "an Android sparse image of a LUKS container already (stamp it as it is: without --luks-encrypt)".into(),
        )
        .into());
    }
    if head[1080..1082] != [0x53, 0xEF] {
        return Err(not_plain(
            "an Android sparse image without an ext2/3/4 filesystem inside".into(),
        )
        .into());
    }
    if fs_volume.len() % build.sector_size != 0 {
        return Err(not_plain(format!(
            "an ext2/3/4 image of {} bytes, not whole {}-byte sectors",
            fs_volume.len(),
            build.sector_size
        ))
        .into());
    }
    let outlet = BuildOutlet {
        plain,
        input: path.to_path_buf(),
        uuid: build.uuid.clone(),
        sector: build.sector_size,
        passphrase,
        sparse,
    };
    Ok(Box::new(Ext4Backend::open(
        vec![Slot::whole(fs_volume)],
        Box::new(outlet),
    )?))
}

struct BuildOutlet {
    /// The plain image (a second view of the filesystem's base).
    plain: Box<dyn Volume>,
    input: PathBuf,
    uuid: String,
    sector: u64,
    passphrase: Zeroizing<Vec<u8>>,
    /// Android sparse output (the input was sparse), else raw with holes.
    sparse: bool,
}

/// A stretch of the output's data segment, in bytes from its start:
/// encrypted data, or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    at: u64,
    len: u64,
    used: bool,
}

impl BuildOutlet {
    /// The segment's used and free stretches: a block is used if the
    /// filesystem uses it or the stamp changed it.
    fn runs(&self, used: &UsedBlocks, changes: &[(u64, &[u8])]) -> Vec<Run> {
        let len = self.plain.len();
        let unit = BLOCK.max(self.sector);
        let mut runs: Vec<Run> = Vec::new();
        let mut at = 0;
        while at < len {
            let n = unit.min(len - at);
            let is_used = used.any_in(at, n) || overlapping(changes, at, n).next().is_some();
            match runs.last_mut() {
                Some(r) if r.used == is_used && (!is_used || r.len + n <= MAX_CHUNK) => r.len += n,
                _ => runs.push(Run {
                    at,
                    len: n,
                    used: is_used,
                }),
            }
            at += n;
        }
        runs
    }

    /// Reads `buf.len()` plain bytes at `at` with the changes over them,
    /// and encrypts them in place.
    fn encrypted(
        &self,
        key: &XtsKey,
        changes: &[(u64, &[u8])],
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), ImageError> {
        self.plain
            .read_at(at, buf)
            .map_err(|source| ImageError::Open {
                path: self.input.clone(),
                source,
            })?;
        let end = at + buf.len() as u64;
        for (c_at, data) in overlapping(changes, at, buf.len() as u64) {
            let from = c_at.max(at);
            let to = (c_at + data.len() as u64).min(end);
            buf[(from - at) as usize..(to - at) as usize]
                .copy_from_slice(&data[(from - c_at) as usize..(to - c_at) as usize]);
        }
        // plain64: the IV counts 512-byte units from the segment's start,
        // whatever the sector size (see crypt.rs).
        key.encrypt(buf, self.sector as usize, at / 512, self.sector / 512);
        Ok(())
    }
}

/// The changed blocks that overlap `at..at + len` (`changes` sorted, not
/// overlapping each other).
fn overlapping<'c>(
    changes: &'c [(u64, &'c [u8])],
    at: u64,
    len: u64,
) -> impl Iterator<Item = (u64, &'c [u8])> + 'c {
    let first = changes.partition_point(|(c, d)| c + d.len() as u64 <= at);
    changes[first..]
        .iter()
        .take_while(move |(c, _)| *c < at + len)
        .copied()
}

impl Outlet for BuildOutlet {
    fn write(&mut self, changes: &Changes, out: &mut TempOutput) -> Result<(), ImageError> {
        let invalid = |why: String| LuksError::Invalid {
            path: self.input.clone(),
            why,
        };
        let sb = Superblock::read(&self.plain)?;
        let used = used_blocks(&self.plain, &sb)?;
        let changes: Vec<(u64, &[u8])> = changes.iter().collect();
        let runs = self.runs(&used, &changes);
        tracing::debug!(
            used_blocks = used.count(),
            runs = runs.len(),
            "building the LUKS2 container"
        );
        let header =
            format::new_header(&self.uuid, self.sector, &self.passphrase).map_err(invalid)?;
        let key = XtsKey::new(&header.volume_key)
            .ok_or_else(|| invalid("a volume key of the wrong size".into()))?;
        let data_len = self.plain.len().div_ceil(BLOCK) * BLOCK;
        let total = DATA_OFFSET + data_len;
        crate::io::progress::start("encrypting", total);
        let mut buf = Zeroizing::new(vec![0u8; RUN as usize]);
        let w = ImageError::Output;
        if self.sparse {
            let head_len = (header.bytes.len() as u64).div_ceil(BLOCK) * BLOCK;
            let mut chunks = vec![
                Run {
                    at: 0,
                    len: head_len,
                    used: true,
                },
                Run {
                    at: head_len,
                    len: DATA_OFFSET - head_len,
                    used: false,
                },
            ];
            chunks.extend(runs.iter().map(|r| Run {
                at: DATA_OFFSET + r.at,
                len: r.len.div_ceil(BLOCK) * BLOCK,
                used: r.used,
            }));
            RawSink::write_all(out, &sparse_file_header(total / BLOCK, chunks.len())).map_err(w)?;
            let mut head = header.bytes.clone();
            head.resize(head_len as usize, 0);
            RawSink::write_all(out, &chunk_header(true, head_len)).map_err(w)?;
            RawSink::write_all(out, &head).map_err(w)?;
            RawSink::write_all(out, &chunk_header(false, chunks[1].len)).map_err(w)?;
            for r in &runs {
                let padded = r.len.div_ceil(BLOCK) * BLOCK;
                RawSink::write_all(out, &chunk_header(r.used, padded)).map_err(w)?;
                if r.used {
                    self.write_run(&key, &changes, *r, &mut buf, &mut |d| {
                        RawSink::write_all(out, d)
                    })?;
                    let pad = vec![0u8; (padded - r.len) as usize];
                    RawSink::write_all(out, &pad).map_err(w)?;
                }
            }
        } else {
            RawSink::write_all(out, &header.bytes).map_err(w)?;
            out.skip_zeros(DATA_OFFSET - header.bytes.len() as u64)
                .map_err(w)?;
            for r in &runs {
                if r.used {
                    self.write_run(&key, &changes, *r, &mut buf, &mut |d| {
                        RawSink::write_all(out, d)
                    })?;
                } else {
                    out.skip_zeros(r.len).map_err(w)?;
                }
            }
            out.skip_zeros(data_len - self.plain.len()).map_err(w)?;
        }
        crate::io::progress::finish();
        Ok(())
    }
}

impl BuildOutlet {
    fn write_run(
        &self,
        key: &XtsKey,
        changes: &[(u64, &[u8])],
        run: Run,
        buf: &mut [u8],
        put: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ImageError> {
        let mut at = run.at;
        while at < run.at + run.len {
            let n = (run.at + run.len - at).min(RUN) as usize;
            self.encrypted(key, changes, at, &mut buf[..n])?;
            put(&buf[..n]).map_err(ImageError::Output)?;
            crate::io::progress::advance(n as u64);
            at += n as u64;
        }
        Ok(())
    }
}

/// An Android sparse file header (system/core/libsparse/sparse_format.h:
/// magic, version 1.0, header sizes 28 and 12, block size, total blocks,
/// total chunks, no checksum).
fn sparse_file_header(blocks: u64, chunks: usize) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&crate::image::sparse::MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&1u16.to_le_bytes());
    h[8..10].copy_from_slice(&28u16.to_le_bytes());
    h[10..12].copy_from_slice(&12u16.to_le_bytes());
    h[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(blocks as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(chunks as u32).to_le_bytes());
    h
}

/// A RAW chunk of `len` bytes (data follows) or a DONT_CARE chunk.
fn chunk_header(raw: bool, len: u64) -> [u8; 12] {
    let mut h = [0u8; 12];
    let (kind, body) = if raw { (0xCAC1u16, len) } else { (0xCAC3, 0) };
    h[0..2].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&((len / BLOCK) as u32).to_le_bytes());
    h[8..12].copy_from_slice(&((12 + body) as u32).to_le_bytes());
    h
}
