//! Refusals that must point the right way (issue 26, item 7): each names
//! what the input really is and a command that gets through, and each test
//! runs that command on a copy and stamps the result.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A private directory for outputs (imprint refuses shared ones).
fn out_dir(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    sh(&format!("mkdir -m 700 {}", out.display()));
    out
}

/// Stamps `input` into `out/NAME`: the process's output.
fn stamp(input: &Path, out: &Path, pw: &Path) -> std::process::Output {
    let name = input.file_name().unwrap();
    run(provision_offline(input, &out.join(name), "azaion", pw)
        .env("SOURCE_DATE_EPOCH", "1700000000"))
}

/// Asserts a refusal (exit 1, input untouched, nothing written) and
/// returns its message.
fn refused(input: &Path, out: &Path, pw: &Path) -> String {
    let before = fs::read(input).unwrap();
    let o = stamp(input, out, pw);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(fs::read(input).unwrap(), before, "input changed");
    assert!(listing(out).is_empty(), "left {:?}", listing(out));
    stderr(&o)
}

fn stamped(input: &Path, out: &Path, pw: &Path) {
    let o = stamp(input, out, pw);
    assert!(o.status.success(), "{}: {}", input.display(), stderr(&o));
}

/// A GPT disk (sgdisk, as image creators make them) with one ext4 rootfs
/// partition that ends at the disk's last usable sector.
fn gpt_disk(d: &Path, name: &str) -> PathBuf {
    require_tools(&["sgdisk", "mke2fs"]);
    let img = d.join(name);
    let tree = ext4_tree(d, 0, Azaion::Absent);
    sh(&format!(
        "truncate -s 24MiB {img} && sgdisk -og {img} >/dev/null && \
         sgdisk -n 1:2048:0 -c 1:APP -t 1:8300 {img} >/dev/null && \
         first=$(sgdisk -i 1 {img} | awk '/^First sector/ {{print $3}}') && \
         last=$(sgdisk -i 1 {img} | awk '/^Last sector/ {{print $3}}') && \
         mke2fs -F -q -t ext4 -E offset=$((first*512)),root_owner=0:0 -d {tree} {img} $(( (last-first+1)/2 ))k",
        img = img.display(),
        tree = tree.display()
    ));
    img
}

#[test]
fn a_compressed_sparse_image_names_its_codec() {
    require_tools(&["img2simg", "gzip"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let raw = small_ext4(d, "fs.raw");
    let gz = d.join("system.simg.gz");
    sh(&format!(
        "img2simg {raw} {d}/system.simg && gzip -n {d}/system.simg",
        raw = raw.display(),
        d = d.display()
    ));
    let err = refused(&gz, &out_dir(d, "out"), &pw);
    assert!(err.contains("gzip -dc"), "{err}");
    assert!(!err.contains("zstd"), "{err}");
    // The way through it names: decompress, stamp the sparse image.
    sh(&format!(
        "gzip -dc {gz} > {d}/plain.simg",
        gz = gz.display(),
        d = d.display()
    ));
    stamped(&d.join("plain.simg"), &out_dir(d, "out2"), &pw);
}

#[test]
fn a_sparse_image_of_a_whole_disk_says_so() {
    require_tools(&["img2simg", "simg2img"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let disk = gpt_disk(d, "disk.img");
    let simg = d.join("disk.simg");
    sh(&format!("img2simg {} {}", disk.display(), simg.display()));
    let err = refused(&simg, &out_dir(d, "out"), &pw);
    assert!(err.contains("GPT disk image"), "{err}");
    assert!(err.contains("simg2img"), "{err}");
    assert!(!err.contains("superblock"), "{err}");
    sh(&format!(
        "simg2img {} {d}/expanded.img",
        simg.display(),
        d = d.display()
    ));
    stamped(&d.join("expanded.img"), &out_dir(d, "out2"), &pw);
}

#[test]
fn a_gpt_cut_after_its_last_partition_gets_a_hint_that_works() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let disk = gpt_disk(d, "cut.img");
    // Cut right after the last partition: no room for the backup table.
    let end = stdout(&sh(&format!(
        "echo $(( ($(sgdisk -i 1 {} | awk '/^Last sector/ {{print $3}}') + 1) * 512 ))",
        disk.display()
    )))
    .trim()
    .to_string();
    sh(&format!("truncate -s {end} {}", disk.display()));
    // The old hint, plain `sgdisk -e`, fails here (on a copy).
    let old = d.join("old-hint.img");
    fs::copy(&disk, &old).unwrap();
    assert!(
        !run(std::process::Command::new("sgdisk").arg("-e").arg(&old))
            .status
            .success()
    );
    let err = refused(&disk, &out_dir(d, "out"), &pw);
    let hint = err
        .split('`')
        .find(|s| s.starts_with("truncate"))
        .unwrap_or_else(|| panic!("no truncate hint in {err}"));
    let copy = d.join("copy.img");
    fs::copy(&disk, &copy).unwrap();
    sh(&hint.replace("FILE", &copy.display().to_string()));
    stamped(&copy, &out_dir(d, "out2"), &pw);
}

#[test]
fn a_dos_table_of_4k_sectors_is_read_in_4k_sectors() {
    require_tools(&["sfdisk", "mke2fs", "debugfs"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let tree = ext4_tree(d, 0, Azaion::Absent);
    let img = d.join("4kn.img");
    // A 4Kn disk's table: its LBAs count 4096-byte sectors. This sfdisk
    // has no --sector-size, so the same numbers are written through a
    // 512-byte view (they fit it: the disk is 8 times larger than they say
    // there); the table's bytes are what a 4Kn sfdisk writes.
    let (start, sectors) = (256u64, 40 * 256 - 256);
    sh(&format!(
        "truncate -s 40MiB {img} && echo 'start={start}, size={sectors}, type=83' | sfdisk -q {img} && \
         mke2fs -F -q -t ext4 -E offset={off},root_owner=0:0 -d {tree} {img} {k}k",
        img = img.display(),
        off = start * 4096,
        k = sectors * 4,
        tree = tree.display()
    ));
    let out = out_dir(d, "out");
    stamped(&img, &out, &pw);
    let part = d.join("part.ext4");
    sh(&format!(
        "dd if={o} of={p} bs=4096 skip={start} count={sectors} status=none",
        o = out.join("4kn.img").display(),
        p = part.display()
    ));
    assert_fsck_clean(&part);
    assert!(
        debugfs(&part, "cat /etc/azaion/device.conf").contains("AZAION_DEVICE_PASSWORD="),
        "no device.conf in the 4 KiB-sector partition"
    );
}
