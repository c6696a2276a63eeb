//! Real-world inputs, round 3 (issue 26): an ea_inode device.conf, a
//! pending orphan list, an external journal, overlapping and ambiguous GPT
//! partitions, codecs imprint does not write, and messages that must point
//! the right way. Inputs are made with mke2fs, debugfs, sgdisk, img2simg and
//! each codec's own tool; outputs judged with e2fsck, debugfs, sgdisk and
//! imprint verify.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tempfile::TempDir;

fn provision(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let pw = write_password(input.parent().unwrap(), PASSWORD);
    let _ = fs::remove_file(out);
    run(provision_offline(input, out, "azaion", &pw).args(extra))
}

fn verify(out: &Path, extra: &[&str]) -> std::process::Output {
    run(bin()
        .arg("verify")
        .arg(out)
        .args(["--serial", SERIAL, "--owner", "azaion"])
        .args(extra))
}

/// `i_blocks` of `path` as debugfs's stat shows it (512-byte units).
fn blockcount(img: &Path, path: &str) -> u64 {
    let text = debugfs(img, &format!("stat {path}"));
    let at = text.find("Blockcount:").expect("stat shows Blockcount");
    text[at + 11..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `File ACL:` (the attribute block) of `path` as debugfs's stat shows it.
fn file_acl(img: &Path, path: &str) -> u64 {
    let text = debugfs(img, &format!("stat {path}"));
    let at = text.find("File ACL:").expect("stat shows File ACL");
    text[at + 9..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// ---- item 1: a device.conf whose attribute lives in an EA inode ----------

#[test]
fn a_dropped_ea_inode_attribute_leaves_i_blocks_consistent() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::OldConf);
    let img = d.join("in.img");
    let o = mkfs(
        &tree,
        &img,
        &["-t", "ext4", "-b", "4096", "-O", "ea_inode"],
        "32M",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A 12 KiB value: too large for the inode and its block, so it goes
    // to its own inode (three blocks). libext2fs does not charge it to
    // the owner's i_blocks as the kernel does; e2fsck -fy settles the count
    // as a kernel-written image has it.
    let value = d.join("value");
    fs::write(&value, "v".repeat(12 * 1024)).unwrap();
    debugfs_write(
        &img,
        &format!(
            "ea_set -f {} /etc/azaion/device.conf user.big",
            value.display()
        ),
    );
    let o = run(Command::new("e2fsck").arg("-fy").arg(&img));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stdout(&o));
    assert_fsck_clean(&img);
    let before = blockcount(&img, "/etc/azaion/device.conf");
    assert!(before > 8, "the EA inode is not charged: {before}");

    let out = d.join("out.img");
    let o = provision(&img, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    assert!(!debugfs(&out, "ea_list /etc/azaion/device.conf").contains("user.big"));
    // One data block (4 KiB = 8 sectors), nothing charged any more.
    assert_eq!(blockcount(&out, "/etc/azaion/device.conf"), 8);
    let v = verify(&out, &[]);
    assert!(v.status.success(), "{}", stdout(&v));
}

#[test]
fn a_replaced_file_loses_its_emptied_attribute_block() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::OldConf);
    let img = d.join("in.img");
    // 128-byte inodes keep every attribute in a block.
    let o = mkfs(&tree, &img, &["-t", "ext4", "-I", "128"], "16M");
    assert!(o.status.success(), "{}", stderr(&o));
    debugfs_write(&img, "ea_set /etc/azaion/device.conf user.note x");
    assert_ne!(file_acl(&img, "/etc/azaion/device.conf"), 0);
    let free_before = free_blocks(&img);
    let out = d.join("out.img");
    let o = provision(&img, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    assert_eq!(file_acl(&out, "/etc/azaion/device.conf"), 0);
    // The block went back to the free pool (the new content fits the old
    // data block).
    assert_eq!(free_blocks(&out), free_before + 1);
}

fn free_blocks(img: &Path) -> u64 {
    let o = run(Command::new("dumpe2fs").arg("-h").arg(img));
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("Free blocks:"))
        .expect("dumpe2fs shows free blocks");
    line[12..].trim().parse().unwrap()
}

// ---- item 2: a pending orphan list, an external journal ------------------

/// An image whose /var/tmpfile was deleted while open, as the kernel leaves
/// it for the next mount: no name, links_count 0, on s_last_orphan.
fn orphan_image(d: &Path) -> PathBuf {
    let tree = ext4_tree(d, 0, Azaion::Absent);
    fs::create_dir_all(tree.join("var")).unwrap();
    fs::write(tree.join("var/tmpfile"), "gone\n").unwrap();
    let img = d.join("orphan.img");
    let o = mkfs(&tree, &img, &["-t", "ext4"], "16M");
    assert!(o.status.success(), "{}", stderr(&o));
    let stat = debugfs(&img, "stat /var/tmpfile");
    let ino: u32 = stat.split_whitespace().nth(1).unwrap().parse().unwrap();
    debugfs_write(&img, "unlink /var/tmpfile");
    debugfs_write(&img, &format!("sif <{ino}> links_count 0"));
    debugfs_write(&img, &format!("ssv last_orphan {ino}"));
    img
}

#[test]
fn a_pending_orphan_list_is_refused_with_the_way_through_which_works() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = orphan_image(d);
    let before = sha256(&img);
    fs::create_dir(d.join("out")).unwrap();
    let out = d.join("out").join("o.img");
    let o = provision(&img, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("orphan inodes") && err.contains("e2fsck -fy COPY"),
        "{err}"
    );
    assert_eq!(sha256(&img), before);
    assert!(listing(&d.join("out")).is_empty());

    // The way the message gives.
    let copy = d.join("copy.img");
    fs::copy(&img, &copy).unwrap();
    let o = run(Command::new("e2fsck").arg("-fy").arg(&copy));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stdout(&o));
    let o = provision(&copy, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    assert!(verify(&out, &[]).status.success());
}

/// What `mke2fs -J device=JDEV` leaves in the filesystem (it needs a block
/// device, so root; debugfs sets the same fields on a file): has_journal,
/// no journal inode, the journal device's UUID and number.
fn external_journal_image(d: &Path) -> PathBuf {
    let jdev = d.join("journal.img");
    let o = run(Command::new("mke2fs")
        .args(["-q", "-F", "-O", "journal_dev", "-b", "4096"])
        .arg(&jdev)
        .arg("4M"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(Command::new("dumpe2fs").arg("-h").arg(&jdev));
    let uuid = stdout(&o)
        .lines()
        .find(|l| l.starts_with("Filesystem UUID:"))
        .map(|l| l[16..].trim().to_string())
        .expect("the journal device has a UUID");
    let tree = ext4_tree(d, 0, Azaion::Absent);
    let img = d.join("extj.img");
    let o = mkfs(&tree, &img, &["-t", "ext4", "-O", "^has_journal"], "16M");
    assert!(o.status.success(), "{}", stderr(&o));
    debugfs_write(&img, "feature has_journal");
    debugfs_write(&img, &format!("ssv journal_uuid {uuid}"));
    debugfs_write(&img, "ssv journal_dev 0x0701");
    let o = run(Command::new("dumpe2fs").arg("-h").arg(&img));
    assert!(stdout(&o).contains("Journal device:"), "{}", stdout(&o));
    img
}

#[test]
fn an_external_journal_is_refused_with_the_way_through_which_works() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = external_journal_image(d);
    // e2fsck cannot check the image without its journal device.
    let o = run(Command::new("e2fsck").arg("-fn").arg(&img));
    assert!(!o.status.success());
    let before = sha256(&img);
    fs::create_dir(d.join("out")).unwrap();
    let out = d.join("out").join("o.img");
    let o = provision(&img, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("journal on another device")
            && err.contains("tune2fs -f -O ^has_journal COPY"),
        "{err}"
    );
    assert_eq!(sha256(&img), before);
    assert!(listing(&d.join("out")).is_empty());

    let copy = d.join("copy.img");
    fs::copy(&img, &copy).unwrap();
    let o = run(Command::new("tune2fs")
        .args(["-f", "-O", "^has_journal"])
        .arg(&copy));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = provision(&copy, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    let v = verify(&out, &[]);
    assert!(v.status.success(), "{}", stdout(&v));
    // And the journal the message offers to add back.
    let o = run(Command::new("tune2fs").arg("-j").arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
}

// ---- items 3 and 4: overlapping and same-named GPT partitions ------------

/// A 48 MiB GPT disk from sgdisk: partitions named `names`, 16 MiB each
/// from sector 2048, each holding an ext4 rootfs (mke2fs -E offset).
fn gpt_rootfs_disk(d: &Path, names: &[&str]) -> PathBuf {
    let img = d.join("disk.img");
    fs::File::create(&img).unwrap().set_len(48 << 20).unwrap();
    sh(&format!("sgdisk -og {} >/dev/null", img.display()));
    let tree = ext4_tree(d, 0, Azaion::Absent);
    for (i, name) in names.iter().enumerate() {
        let n = i + 1;
        let start = 2048 + i as u64 * 32768;
        let o = sh(&format!(
            "sgdisk -n {n}:{start}:{end} -c {n}:{name} -t {n}:8300 {img} >/dev/null && \
             mke2fs -F -q -t ext4 -E offset={off},root_owner=0:0 -d {tree} {img} 16M",
            end = start + 32767,
            off = start * 512,
            tree = tree.display(),
            img = img.display()
        ));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    img
}

#[test]
fn overlapping_gpt_partitions_are_refused_naming_both() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = d.join("disk.img");
    fs::File::create(&img).unwrap().set_len(48 << 20).unwrap();
    sh(&format!(
        "sgdisk -og -n 1:2048:+16M -c 1:esp -t 1:ef00 -n 2:0:+16M -c 2:APP -t 2:8300 {} >/dev/null",
        img.display()
    ));
    // Move APP's start 8 MiB back, into the ESP, rewriting both entry
    // arrays and headers with their CRCs (as a hand-edited or buggy
    // generator leaves it); then put its filesystem there.
    let o = run(Command::new("python3").arg("-c").arg(
        r#"
import struct, sys, zlib
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
def fix(hdr_lba):
    h = hdr_lba * 512
    entries_lba, count, size = struct.unpack_from('<QII', b, h + 72)
    e = entries_lba * 512 + size          # entry 2
    first, last = struct.unpack_from('<QQ', b, e + 32)
    struct.pack_into('<Q', b, e + 32, first - 16384)
    struct.pack_into('<I', b, h + 88, zlib.crc32(b[entries_lba * 512:entries_lba * 512 + count * size]))
    hsize = struct.unpack_from('<I', b, h + 12)[0]
    struct.pack_into('<I', b, h + 16, 0)
    struct.pack_into('<I', b, h + 16, zlib.crc32(b[h:h + hsize]))
    return first - 16384
start = fix(1)
fix(len(b) // 512 - 1)
open(p, 'wb').write(b)
print(start)
"#,
    ).arg(&img));
    assert!(o.status.success(), "{}", stderr(&o));
    let start: u64 = stdout(&o).trim().parse().unwrap();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    sh(&format!(
        "mke2fs -F -q -t ext4 -E offset={},root_owner=0:0 -d {} {} 16M",
        start * 512,
        tree.display(),
        img.display()
    ));
    let v = stdout(&sh(&format!("sgdisk -v {}", img.display())));
    assert!(v.contains("overlap"), "sgdisk -v does not see it:\n{v}");

    let before = sha256(&img);
    fs::create_dir(d.join("out")).unwrap();
    let out = d.join("out").join("o.img");
    let o = provision(&img, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("overlap")
            && err.contains("partition 1 \"esp\"")
            && err.contains("partition 2 \"APP\""),
        "{err}"
    );
    assert_eq!(sha256(&img), before);
    assert!(listing(&d.join("out")).is_empty());
    // inspect and verify read the same table.
    let o = run(bin().arg("ls").arg(&img).arg("/etc"));
    assert!(
        !o.status.success() && stderr(&o).contains("overlap"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn two_partitions_named_app_are_refused_listing_both() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = gpt_rootfs_disk(d, &["APP", "APP"]);
    fs::create_dir(d.join("out")).unwrap();
    let out = d.join("out").join("o.img");
    for extra in [
        &[][..],
        &["--partition", "APP"],
        &["--partition", "all-rootfs"],
    ] {
        let o = provision(&img, &out, extra);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("more than one partition is named \"APP\"")
                && err.contains("partitions 1 \"APP\", 2 \"APP\"")
                && err.contains("--partition N"),
            "{extra:?}: {err}"
        );
        assert!(listing(&d.join("out")).is_empty());
    }
    // Chosen by number: the result line and the JSON name it.
    let o = provision(&img, &out, &["--partition", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("partition 2 \"APP\""), "{}", stdout(&o));
    let o = provision(&img, &out, &["--partition", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["partitions"][0]["number"], 2, "{doc}");
    assert_eq!(doc["partitions"][0]["name"], "APP", "{doc}");
    let v = verify(&out, &["--partition", "2"]);
    assert!(v.status.success(), "{}", stdout(&v));
    // Only partition 2 changed: partition 1 reads as the input's.
    let span1 = |p: &Path| {
        stdout(&sh(&format!(
            "dd if={} bs=1M skip=1 count=16 status=none | sha256sum",
            p.display()
        )))
    };
    assert_eq!(span1(&img), span1(&out));
}

// ---- item 6: lz4, read and written; other codecs named --------------------

/// The stamped device.conf of an lz4 tar as GNU tar lists it, after `lz4
/// -t` passed on the archive.
fn check_lz4_tar(out: &Path) {
    let t = sh(&format!("lz4 -t {}", out.display()));
    assert!(t.status.success(), "lz4 -t: {}", stderr(&t));
    let list = stdout(&sh(&format!("lz4 -dc {} | tar -tvf -", out.display())));
    let line = list
        .lines()
        .find(|l| l.ends_with("etc/azaion/device.conf"))
        .unwrap_or_else(|| panic!("no device.conf in:\n{list}"));
    assert!(line.starts_with("-rw-------"), "{line}");
    let v = verify(out, &[]);
    assert!(v.status.success(), "{}", stdout(&v));
}

#[test]
fn lz4_tars_from_lz4_bsdtar_and_zstd_are_stamped_as_lz4() {
    require_tools(&["lz4", "bsdtar", "zstd"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "root");
    let r = root.display();
    // (bsdtar writing to a pipe pads its last block with zeros, which
    // `lz4 -t` refuses; to a file it writes the frame alone.)
    for (name, cmd) in [
        ("lz4", "tar --format=gnu -C ROOT -cf - . | lz4 -q > OUT"),
        ("bsdtar", "bsdtar --lz4 -C ROOT -cf OUT ."),
        (
            "zstd",
            "tar --format=pax -C ROOT -cf - . | zstd -q --format=lz4 > OUT",
        ),
    ] {
        let input = d.join(format!("{name}.tar.lz4"));
        let cmd = cmd
            .replace("ROOT", &r.to_string())
            .replace("OUT", &input.to_string_lossy());
        let o = sh(&cmd);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        let out = d.join(format!("{name}-out.tar.lz4"));
        let p = provision(&input, &out, &[]);
        assert!(p.status.success(), "{name}: {}", stderr(&p));
        check_lz4_tar(&out);
    }
    // lz4 -t refuses zeros after the last frame; so does imprint, with
    // the length to cut to.
    let input = d.join("lz4.tar.lz4");
    let len = fs::metadata(&input).unwrap().len();
    let padded = d.join("padded.tar.lz4");
    sh(&format!(
        "cat {} > {p} && head -c 4096 /dev/zero >> {p}",
        input.display(),
        p = padded.display()
    ));
    assert!(!run(Command::new("lz4").arg("-t").arg(&padded))
        .status
        .success());
    let p = provision(&padded, &d.join("x.tar.lz4"), &[]);
    assert_eq!(p.status.code(), Some(1));
    assert!(
        stderr(&p).contains(&format!("truncate -s {len}")),
        "{}",
        stderr(&p)
    );
}

#[test]
fn lz4_raw_and_disk_images_are_stamped_as_lz4() {
    require_tools(&["lz4", "sgdisk", "e2fsck"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let raw = small_ext4(d, "rootfs.ext4");
    let disk = gpt_rootfs_disk(d, &["APP"]);
    for img in [raw, disk] {
        let input = img.with_extension("lz4");
        sh(&format!("lz4 -q {} {}", img.display(), input.display()));
        let out = d.join("out.lz4");
        let p = provision(&input, &out, &[]);
        assert!(p.status.success(), "{}", stderr(&p));
        assert!(sh(&format!("lz4 -t {}", out.display())).status.success());
        let plain = d.join("out.plain");
        sh(&format!("lz4 -dc {} > {}", out.display(), plain.display()));
        if input.to_string_lossy().contains("disk") {
            let v = stdout(&sh(&format!("sgdisk -v {}", plain.display())));
            assert!(v.contains("No problems found"), "{v}");
            let part = d.join("part.img");
            sh(&format!(
                "dd if={} of={} bs=512 skip=2048 count=32768 status=none",
                plain.display(),
                part.display()
            ));
            assert_fsck_clean(&part);
        } else {
            assert_fsck_clean(&plain);
        }
        let v = verify(&out, &[]);
        assert!(v.status.success(), "{}", stdout(&v));
    }
}

#[test]
fn codecs_imprint_does_not_read_are_named_with_a_command_that_converts_them() {
    require_tools(&["lzip", "lzop", "compress", "lz4", "xz", "lrzip", "zstd"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "root");
    let tar = d.join("rootfs.tar");
    make_tar(&root, &tar, "tar", "gnu", true);
    let t = tar.display();
    for (file, make, name) in [
        ("rootfs.tar.lz", format!("lzip -c {t}"), "lzip"),
        ("rootfs.tar.lzo", format!("lzop -c {t}"), "lzop"),
        ("rootfs.tar.Z", format!("compress -c {t}"), "compress"),
        ("rootfs.tar.lz4", format!("lz4 -l -c {t}"), "legacy lz4"),
        (
            "rootfs.tar.lzma",
            format!("xz --format=lzma -c {t}"),
            "legacy lzma",
        ),
        ("rootfs.tar.lrz", format!("lrzip -q -o - {t}"), "lrzip"),
    ] {
        let sub = d.join(name.replace(' ', "-"));
        fs::create_dir(&sub).unwrap();
        let input = sub.join(file);
        let o = sh(&format!("{make} > {}", input.display()));
        assert!(o.status.success(), "{make}: {}", stderr(&o));
        let out = d.join("out.tar.zst");
        let p = provision(&input, &out, &[]);
        assert_eq!(p.status.code(), Some(1), "{name}");
        let err = stderr(&p);
        assert!(
            err.contains(name) && err.contains("which imprint does not read"),
            "{err}"
        );
        // The command the message gives, run as it is, makes an input
        // imprint stamps.
        let cmd = err
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("no command in: {err}"));
        let o = sh(cmd);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        let converted = sub.join("rootfs.tar.zst");
        assert!(
            converted.exists(),
            "{cmd} did not write {}",
            converted.display()
        );
        let p = provision(&converted, &out, &[]);
        assert!(p.status.success(), "{name}: {}", stderr(&p));
    }
}
