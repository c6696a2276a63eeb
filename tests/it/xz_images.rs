//! Raw and disk images in multi-block xz (`xz -T2 --block-size=...`, as
//! Yocto's `wic.xz` and vendors' `img.xz` are made): every block whose
//! bytes did not change is kept as the input's compressed bytes, wherever
//! it lies, and only the blocks holding a change are encoded again. Judged
//! by xz itself (`xz -t`, `xz --robot -lvv`, `xz -dc`), e2fsck, sgdisk,
//! cmp against the uncompressed image provisioned the same way, and
//! `verify`.

use crate::common;
use crate::disk_images::assert_verifies;
use crate::require::require_tools;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

/// One block as `xz --robot -lvv` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct XzBlock {
    comp_offset: u64,
    uncomp_offset: u64,
    total_size: u64,
    uncomp_size: u64,
    check: String,
}

fn xz_blocks(path: &Path) -> Vec<XzBlock> {
    let o = sh(&format!("xz --robot -lvv {}", path.display()));
    stdout(&o)
        .lines()
        .filter(|l| l.starts_with("block\t"))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            XzBlock {
                comp_offset: f[4].parse().unwrap(),
                uncomp_offset: f[5].parse().unwrap(),
                total_size: f[6].parse().unwrap(),
                uncomp_size: f[7].parse().unwrap(),
                check: f[9].to_string(),
            }
        })
        .collect()
}

/// Per block of `input`, whether `output` has its compressed bytes as
/// they are, at the same uncompressed offset. The output's blocks tile the
/// data (`assert_tiles`), each with the input's check; a block holding a
/// change may be several in the output (its chunks before the change,
/// then new blocks).
fn kept_blocks(input: &Path, output: &Path) -> Vec<bool> {
    let (a, b) = (xz_blocks(input), xz_blocks(output));
    let (da, db) = (fs::read(input).unwrap(), fs::read(output).unwrap());
    assert!(a.len() > 2, "{}: {} blocks", input.display(), a.len());
    assert_tiles(&b, a.iter().map(|x| x.uncomp_size).sum());
    assert!(b.iter().all(|y| y.check == a[0].check), "{b:?}");
    let slice = |d: &[u8], k: &XzBlock| {
        d[k.comp_offset as usize..(k.comp_offset + k.total_size) as usize].to_vec()
    };
    a.iter()
        .map(|x| {
            b.iter().any(|y| {
                (x.uncomp_offset, x.uncomp_size) == (y.uncomp_offset, y.uncomp_size)
                    && slice(&da, x) == slice(&db, y)
            })
        })
        .collect()
}

/// Asserts that `xz --robot -lvv`'s blocks follow each other without gap
/// or overlap, in the file and in the data, and cover `total` bytes.
fn assert_tiles(blocks: &[XzBlock], total: u64) {
    let (mut comp, mut uncomp) = (blocks[0].comp_offset, 0);
    for k in blocks {
        assert_eq!(
            (k.comp_offset, k.uncomp_offset),
            (comp, uncomp),
            "{blocks:?}"
        );
        comp += k.total_size.div_ceil(4) * 4;
        uncomp += k.uncomp_size;
    }
    assert_eq!(uncomp, total, "{blocks:?}");
}

/// Asserts that a block after the first one that changed was kept: the
/// rewrite does not stop keeping at the first change.
fn assert_kept_after_first_change(kept: &[bool]) {
    let first = kept
        .iter()
        .position(|k| !k)
        .expect("some block holds a change");
    assert!(
        kept[first + 1..].iter().any(|&k| k),
        "no block after the first change ({first}) was kept: {kept:?}"
    );
}

/// `imprint provision` with a fixed SOURCE_DATE_EPOCH, so that two runs
/// make the same filesystem changes.
fn provision(input: &Path, output: &Path, pw: &Path, partition: Option<&str>) {
    let mut c = provision_offline(input, output, "azaion", pw);
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    if let Some(p) = partition {
        c.args(["--partition", p]);
    }
    let o = run(&mut c);
    assert!(
        o.status.success(),
        "provision {}: {}",
        input.display(),
        stderr(&o)
    );
}

/// A few MiB of ext4 holding small files and 3 MiB of random ones (so
/// that kept blocks are not all zeros).
fn ext4_with_data(dir: &Path, name: &str, size: &str) -> PathBuf {
    let tree = ext4_tree(dir, 30, Azaion::Absent);
    fs::create_dir_all(tree.join("usr/lib")).unwrap();
    for i in 0..3 {
        sh(&format!(
            "head -c {MIB} /dev/urandom > {}/usr/lib/lib{i}.so",
            tree.display()
        ));
    }
    let img = dir.join(name);
    let o = mkfs(&tree, &img, &["-t", "ext4"], size);
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    img
}

fn xz_into(plain: &Path, to: &Path, check: &str) {
    sh(&format!(
        "xz -T2 -6 --block-size=512KiB -C {check} -c {} > {}",
        plain.display(),
        to.display()
    ));
}

/// A raw ext4 image in multi-block xz, with each check xz writes: the
/// output passes `xz -t`, decompresses to exactly what provisioning the
/// uncompressed image gives, passes e2fsck and `verify`, keeps the input's
/// blocks and check, and keeps blocks after the first change.
#[test]
fn raw_image_in_multi_block_xz_keeps_every_unchanged_block() {
    require_tools(&["xz", "e2fsck"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let raw = ext4_with_data(d, "system.img", "8M");
    let full = d.join("full.img");
    provision(&raw, &full, &pw, None);
    for check in ["none", "crc32", "crc64", "sha256"] {
        let input = d.join(format!("in-{check}.img.xz"));
        xz_into(&raw, &input, check);
        let out = d.join(format!("out-{check}.img.xz"));
        provision(&input, &out, &pw, None);
        sh(&format!("xz -t {}", out.display()));
        let back = d.join(format!("back-{check}.img"));
        sh(&format!("xz -dc {} > {}", out.display(), back.display()));
        sh(&format!("cmp {} {}", full.display(), back.display()));
        assert_fsck_clean(&back);
        assert_verifies(&out, None);
        let kept = kept_blocks(&input, &out);
        assert_kept_after_first_change(&kept);
        // xz -lvv names them "None", "CRC32", "CRC64", "SHA-256".
        let named = xz_blocks(&out)[0].check.to_lowercase().replace('-', "");
        assert_eq!(named, check);
        eprintln!("{check}: kept {kept:?}");
    }
}

/// A 16 MiB GPT disk (as sgdisk lays it out) whose second partition, APP,
/// is an ext4 rootfs, after a 3 MiB partition of random data; and where
/// APP starts and ends.
fn gpt_disk(d: &Path) -> (PathBuf, u64, u64) {
    let fs_img = ext4_with_data(d, "rootfs.ext4", "10M");
    let disk = d.join("disk.wic");
    let i = disk.display();
    sh(&format!(
        "truncate -s 16M {i} && sgdisk -og {i} >/dev/null && \
         sgdisk -n 1:2048:+3M -c 1:boot -t 1:8300 {i} >/dev/null && \
         sgdisk -n 2:8192:+10M -c 2:APP -t 2:8300 {i} >/dev/null && \
         head -c {} /dev/urandom | dd of={i} bs=512 seek=2048 conv=notrunc status=none && \
         dd if={} of={i} bs=512 seek=8192 conv=notrunc status=none",
        3 * MIB,
        fs_img.display()
    ));
    (disk, 8192 * 512, 8192 * 512 + 10 * MIB)
}

/// A GPT disk (as sgdisk lays it out) whose rootfs is its second partition,
/// after 3 MiB of random data, in multi-block xz: the output passes `xz
/// -t`, `sgdisk -v`, e2fsck on its rootfs and `verify`; outside the rootfs
/// it decompresses to the input's bytes; every block before the rootfs is
/// kept, and blocks after the first change too.
#[test]
fn disk_image_in_multi_block_xz_keeps_every_unchanged_block() {
    require_tools(&["xz", "sgdisk", "e2fsck"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let (disk, start, end) = gpt_disk(d);
    let input = d.join("disk.wic.xz");
    xz_into(&disk, &input, "crc32");
    let out = d.join("out.wic.xz");
    provision(&input, &out, &pw, Some("APP"));
    sh(&format!("xz -t {}", out.display()));
    let back = d.join("back.wic");
    sh(&format!("xz -dc {} > {}", out.display(), back.display()));
    let v = stdout(&sh(&format!("sgdisk -v {}", back.display())));
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let (a, b) = (fs::read(&disk).unwrap(), fs::read(&back).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(
        a[..start as usize] == b[..start as usize],
        "before the rootfs"
    );
    assert!(a[end as usize..] == b[end as usize..], "after the rootfs");
    let part = d.join("part.ext4");
    fs::write(&part, &b[start as usize..end as usize]).unwrap();
    assert_fsck_clean(&part);
    assert_verifies(&out, Some("APP"));
    let kept = kept_blocks(&input, &out);
    let blocks = xz_blocks(&input);
    for (k, blk) in kept.iter().zip(&blocks) {
        if blk.uncomp_offset + blk.uncomp_size <= start {
            assert!(k, "a block before the rootfs was encoded again: {kept:?}");
        }
    }
    assert_kept_after_first_change(&kept);
    eprintln!("disk: kept {kept:?}");
}

/// A GPT disk in 5 MiB xz blocks: the first block holds the 3 MiB of
/// random data and the rootfs's start, so it is cut at its last LZMA2
/// chunk start before the rootfs (its chunks before that kept byte for
/// byte, then it ends) and the rest of it is a new block. The output
/// passes `xz -t` with each check and decompresses to exactly what
/// provisioning the uncompressed disk gives; its blocks tile the data;
/// the block after the rootfs is kept; two runs give the same bytes.
/// Fails when nothing of the cut block is kept.
#[test]
fn a_block_holding_the_rootfs_start_keeps_its_chunks_before_it() {
    require_tools(&["xz", "sgdisk", "e2fsck"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let (disk, start, end) = gpt_disk(d);
    let full = d.join("full.wic");
    provision(&disk, &full, &pw, Some("APP"));
    for check in ["none", "crc32", "crc64", "sha256"] {
        let input = d.join(format!("in-{check}.wic.xz"));
        sh(&format!(
            "xz -6 -T2 --block-size=5MiB -C {check} -c {} > {}",
            disk.display(),
            input.display()
        ));
        let out = d.join(format!("out-{check}.wic.xz"));
        provision(&input, &out, &pw, Some("APP"));
        sh(&format!("xz -t {}", out.display()));
        let back = d.join(format!("back-{check}.wic"));
        sh(&format!("xz -dc {} > {}", out.display(), back.display()));
        sh(&format!("cmp {} {}", full.display(), back.display()));
        let kept = kept_blocks(&input, &out);
        assert_eq!(kept.len(), 4);
        assert!(!kept[0] && kept[3], "{kept:?}");
        let blocks = xz_blocks(&out);
        // The first block ends at a chunk start at or before the rootfs,
        // past the random data, which it holds as the input did.
        let head = &blocks[0];
        assert!(
            head.uncomp_size <= start && head.uncomp_size > 3 * MIB,
            "{blocks:?}"
        );
        assert_eq!(blocks[1].uncomp_offset, head.uncomp_size);
        let (a, b) = (fs::read(&input).unwrap(), fs::read(&out).unwrap());
        let (ha, hb) = (usize::from(a[12]) * 4 + 4, usize::from(b[12]) * 4 + 4);
        // (The chunk that holds the rootfs's start holds the random
        // data's last KiB too.)
        let n = (5 * MIB / 2) as usize;
        assert!(a[12 + ha..12 + ha + n] == b[12 + hb..12 + hb + n]);
        let named = head.check.to_lowercase().replace('-', "");
        assert_eq!(named, check);
        let again = d.join(format!("again-{check}.wic.xz"));
        provision(&input, &again, &pw, Some("APP"));
        sh(&format!("cmp {} {}", out.display(), again.display()));
    }
    let part = d.join("part.ext4");
    let b = fs::read(d.join("back-crc64.wic")).unwrap();
    fs::write(&part, &b[start as usize..end as usize]).unwrap();
    assert_fsck_clean(&part);
}
