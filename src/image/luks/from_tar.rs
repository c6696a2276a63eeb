//! The filesystem `provision --luks-encrypt` puts in the container when
//! the input is a tarball of the rootfs (L4T's `rootfs/`): what flash.sh's
//! `build_enc_root_fsimg` (tools/disk_encryption/
//! disk_encryption_helper.func, r35/r36) makes in the dm-crypt mapping, as
//! root, and here in a private scratch file without root:
//!
//! - `mkfs -t ext4` over the whole mapping (line 577): the container's
//!   size less its 16 MiB header;
//! - `(cd ${__rootfs_dir}; tar --exclude=boot -cf - *) | tar xf -` (line
//!   586): every member but those GNU tar's unanchored `--exclude=boot`
//!   drops (any path with a component named `boot`, /boot and its files
//!   first) and those the shell's `*` does not name (the root itself and
//!   top-level names starting with a dot), with owners, modes and times
//!   as tar extracts them as root. The tarball's extended attributes
//!   (`security.capability` among them) are kept: flash.sh's own copy
//!   drops them (GNU tar without `--xattrs`), which leaves file
//!   capabilities such as ping's off the device; the tarball is the
//!   rootfs as the user built it.
//!
//! - then /etc/fstab (lines 588-597): its last line dropped (`head -n
//!   -1`), `/dev/mapper/crypt_root / ext4 defaults 0 1` and
//!   `PARTUUID=<APP's UUID> /boot ext4 defaults 0 1` appended (the UUID
//!   from l4t-bootpart-uuid.txt, which flash.sh always has with
//!   ROOTFS_ENC=1: bootpartuuid_restore, helper.func 93-120, makes one if
//!   missing). The file keeps the member's owner, mode and time; with no
//!   /etc/fstab in the tarball it holds the two lines (root, 0644), as the
//!   `>>` of flash.sh's root shell makes it. The A/B twin
//!   (`crypt_root_other`, lines 599-602) and `enc_user_disk_list` mounts
//!   (lines 605-612) are not made: `--luks-encrypt` builds one container.

use std::path::Path;

use super::build::LuksBuild;
use super::format::DATA_OFFSET;
use super::LuksError;
use crate::compress::Compression;
use crate::image::ext4::{populate, Ext4Error};
use crate::image::tar::members::{self, Member, MemberKind};
use crate::image::ImageError;
use crate::io::output::Scratch;

/// The smallest filesystem made: mke2fs refuses ext4 much below this.
const MIN_FS: u64 = 4 << 20;

const FSTAB: &str = "etc/fstab";
/// An /etc/fstab larger than this is no fstab.
const MAX_FSTAB: u64 = 1 << 20;

/// /etc/fstab as flash.sh leaves it (lines 588-597): `text` without its
/// last line (`head -n -1`, which also drops an unterminated one), then
/// the crypt_root and /boot lines.
pub(super) fn edited_fstab(text: &[u8], boot_partuuid: &str) -> Vec<u8> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut out = match body.iter().rposition(|&b| b == b'\n') {
        Some(end) => body[..=end].to_vec(),
        None => Vec::new(),
    };
    out.extend_from_slice(b"/dev/mapper/crypt_root / ext4 defaults 0 1\n");
    out.extend_from_slice(format!("PARTUUID={boot_partuuid} /boot ext4 defaults 0 1\n").as_bytes());
    out
}

/// Whether flash.sh's copy carries the member at `path` (normalised).
pub(super) fn copied_by_flash_sh(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('.') && !path.split('/').any(|c| c == "boot")
}

/// Makes the filesystem from the tarball `path` (under `codec`) in a
/// scratch file in `output_dir`.
pub(super) fn filesystem(
    path: &Path,
    codec: Compression,
    build: &LuksBuild,
    output_dir: &Path,
) -> Result<Scratch, ImageError> {
    if build.slots > 1 {
        // flash.sh's A/B containers each mount the other slot's
        // (crypt_root_other, helper.func 599-602) and their own slot's
        // /boot: not written here.
        return Err(LuksError::BuildMember {
            path: path.to_path_buf(),
            why: "--luks-encrypt from a tarball builds one slot's container (its /etc/fstab as flash.sh writes it without A/B); for A/B containers give plain ext4 images, one per slot".into(),
        }
        .into());
    }
    let min = DATA_OFFSET + MIN_FS;
    let size = match build.size {
        Some(size) if size >= min => size,
        _ => {
            return Err(LuksError::BuildSize {
                path: path.to_path_buf(),
                min,
            }
            .into())
        }
    };
    let boot = build
        .boot_partuuid
        .as_deref()
        .ok_or_else(|| LuksError::BuildBootUuid {
            path: path.to_path_buf(),
        })?;
    // Whole 4 KiB blocks, as mke2fs uses of a device.
    let fs_size = (size - DATA_OFFSET) / 4096 * 4096;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scratch = Scratch::create_in(output_dir, &name).map_err(ImageError::Output)?;
    let failed = |why: String| LuksError::BuildFilesystem {
        path: path.to_path_buf(),
        scratch: scratch.path().to_path_buf(),
        why,
    };
    scratch
        .file()
        .set_len(fs_size)
        .map_err(|e| failed(format!("cannot size it: {e}")))?;
    populate::make_filesystem(scratch.path(), fs_size, build.epoch).map_err(failed)?;
    let mut members_in = 0u64;
    let named = |e: ImageError| match e {
        ImageError::Ext4(e @ Ext4Error::Member { .. }) => LuksError::BuildMember {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
        .into(),
        ImageError::Ext4(e @ (Ext4Error::NoFreeBlock { .. } | Ext4Error::NoFreeInode { .. })) => {
            LuksError::BuildMember {
                path: path.to_path_buf(),
                why: format!("{e} (here: give a larger --luks-size)"),
            }
            .into()
        }
        e => e,
    };
    populate::populate(scratch.file(), &mut |p| {
        let mut fstab = false;
        members::for_each(path, codec, &mut |m, data| {
            if !copied_by_flash_sh(&m.path) {
                tracing::debug!(path = %m.path, "left out, as flash.sh's copy leaves it");
                return Ok(());
            }
            members_in += 1;
            if m.path != FSTAB {
                return p.add(m, data);
            }
            if m.kind != MemberKind::File || m.size > MAX_FSTAB {
                return Err(LuksError::BuildFstab {
                    path: path.to_path_buf(),
                }
                .into());
            }
            let mut text = vec![0u8; m.size as usize];
            data.extents(&mut |at, bytes| {
                text[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
                Ok(())
            })?;
            fstab = true;
            p.add_bytes(m, &edited_fstab(&text, boot))
        })?;
        if !fstab {
            let m = Member {
                path: FSTAB.into(),
                kind: MemberKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: build.epoch.unwrap_or(0),
                size: 0,
                xattrs: Vec::new(),
                acl: false,
            };
            p.add_bytes(&m, &edited_fstab(b"", boot))?;
        }
        Ok(())
    })
    .map_err(named)?;
    tracing::debug!(
        members = members_in,
        bytes = fs_size,
        "filesystem made from the tarball"
    );
    Ok(scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_loses_its_last_line_as_head_n_minus_1_drops_it() {
        let tail =
            "/dev/mapper/crypt_root / ext4 defaults 0 1\nPARTUUID=u /boot ext4 defaults 0 1\n";
        for (input, kept) in [
            ("a\nb\n/dev/root / ext4 defaults 0 1\n", "a\nb\n"),
            ("a\nlast", "a\n"),
            ("only\n", ""),
            ("", ""),
            ("a\n\n", "a\n"),
        ] {
            let out = edited_fstab(input.as_bytes(), "u");
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{kept}{tail}"),
                "{input:?}"
            );
        }
    }

    #[test]
    fn flash_sh_leaves_out_boot_anywhere_and_top_level_dot_names() {
        for kept in ["etc", "etc/fstab", "usr/bootx", "usr/lib/.hidden", "reboot"] {
            assert!(copied_by_flash_sh(kept), "{kept}");
        }
        for left in [
            "",
            "boot",
            "boot/Image",
            "usr/boot",
            "a/boot/x",
            ".hidden",
            ".cache/x",
        ] {
            assert!(!copied_by_flash_sh(left), "{left}");
        }
    }
}
