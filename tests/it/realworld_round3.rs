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
