//! ext2/3/4 inputs from the real-world issue: a device.conf carrying an ACL
//! and user/trusted/security attributes, a device.conf with a second hard
//! link, a case-folded /etc already holding `Azaion`, quota-enabled
//! filesystems, and /etc/passwd as a symlink. Inputs are made by mke2fs -d
//! and debugfs; outputs checked with e2fsck, debugfs, imprint verify and,
//! where the machine allows, a read-only loop mount with getfacl/getfattr.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tempfile::TempDir;

/// The on-disk (ext4_acl) form of `user::rw- user:1234:r-- group::r--
/// mask::r-- other::r--`, as mke2fs -d stores what `setfacl -m u:1234:r`
/// made: version 1, then short entries and one long (user) entry.
const ACL_USER_1234: &[u8] = &[
    1, 0, 0, 0, 1, 0, 6, 0, 2, 0, 4, 0, 0xd2, 4, 0, 0, 4, 0, 4, 0, 0x10, 0, 4, 0, 0x20, 0, 4, 0,
];

const LABEL: &str = "system_u:object_r:etc_t:s0";

/// An image of [`ext4_tree`] with an old device.conf (mke2fs `opts`).
fn old_conf_image(dir: &Path, opts: &[&str]) -> PathBuf {
    let tree = ext4_tree(dir, 0, Azaion::OldConf);
    let img = dir.join("in.img");
    let o = mkfs(&tree, &img, opts, "16M");
    assert!(o.status.success(), "mke2fs {opts:?}: {}", stderr(&o));
    img
}

/// Gives `path` in `img` an ACL for uid 1234, a user, a trusted and a
/// security attribute, through debugfs (the raw ACL bytes, so the test
/// does not depend on the host filesystem supporting ACLs).
fn add_attributes(dir: &Path, img: &Path, path: &str) {
    let acl = dir.join("acl.bin");
    fs::write(&acl, ACL_USER_1234).unwrap();
    debugfs_write(
        img,
        &format!(
            "ea_set -r -f {} {path} system.posix_acl_access",
            acl.display()
        ),
    );
    debugfs_write(img, &format!("ea_set {path} user.note keep-me-not"));
    debugfs_write(img, &format!("ea_set {path} trusted.t 1"));
    debugfs_write(img, &format!("ea_set {path} security.selinux {LABEL}"));
    let list = debugfs(img, &format!("ea_list {path}"));
    for name in [
        "system.posix_acl_access",
        "user.note",
        "trusted.t",
        "security.selinux",
    ] {
        assert!(list.contains(name), "{name} not set on {path}:\n{list}");
    }
    assert_fsck_clean(img);
}

/// The attribute names debugfs lists for `path`, but inline data.
fn ea_names(img: &Path, path: &str) -> Vec<String> {
    let mut names: Vec<String> = debugfs(img, &format!("ea_list {path}"))
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n.contains('.'))
        // Inline data (file content) is kept in an attribute.
        .filter(|n| n != "system.data")
        .collect();
    names.sort();
    names
}

fn provision(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let pw = write_password(input.parent().unwrap(), PASSWORD);
    let _ = fs::remove_file(out);
    run(provision_offline(input, out, "azaion", &pw).args(extra))
}

fn verify(out: &Path) -> std::process::Output {
    run(bin()
        .arg("verify")
        .arg(out)
        .args(["--serial", SERIAL, "--owner", "azaion"]))
}

/// Mounts `img` read-only and runs `script` with `$M` the mount point;
/// None where loop mounts are not allowed.
fn with_mount(img: &Path, script: &str) -> Option<String> {
    if !require(
        can_loop_mount(),
        "kernel check: mount -o ro,loop needs root and loop devices",
    ) {
        return None;
    }
    let dir = TempDir::new().unwrap();
    let mnt = dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let o = run(Command::new("mount")
        .args(["-o", "ro,loop"])
        .arg(img)
        .arg(&mnt));
    assert!(o.status.success(), "mount: {}", stderr(&o));
    let out = run(Command::new("bash").arg("-c").arg(script).env("M", &mnt));
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    Some(stdout(&out))
}

// ---- case 4 / issue 15 item 4: attributes of a replaced file ------------

#[test]
fn a_replaced_device_conf_keeps_only_its_security_label() {
    // 256-byte inodes keep small attributes in the inode; 128-byte ones
    // (and inline_data files) put them in an attribute block.
    for opts in [
        &["-t", "ext4"][..],
        &["-t", "ext4", "-I", "128"],
        &["-t", "ext4", "-O", "inline_data"],
        &["-t", "ext2"],
    ] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let img = old_conf_image(d, opts);
        add_attributes(d, &img, "/etc/azaion/device.conf");
        let out = d.join("out.img");
        let o = provision(&img, &out, &[]);
        assert!(o.status.success(), "{opts:?}: {}", stderr(&o));
        assert_fsck_clean(&out);
        assert_eq!(
            ea_names(&out, "/etc/azaion/device.conf"),
            ["security.selinux"],
            "{opts:?}"
        );
        assert!(
            debugfs(&out, "ea_get /etc/azaion/device.conf security.selinux").contains(LABEL),
            "{opts:?}: the label changed"
        );
        assert_eq!(
            debugfs_stat(&out, "/etc/azaion/device.conf"),
            (0o600, 1001, 1001)
        );
        let v = verify(&out);
        assert!(v.status.success(), "{opts:?}: {}", stdout(&v));
        if opts == ["-t", "ext4"] {
            if let Some(text) = with_mount(
                &out,
                "getfacl -n \"$M/etc/azaion/device.conf\"; getfattr -d -m - \"$M/etc/azaion/device.conf\"",
            ) {
                assert!(!text.contains("1234"), "the ACL survived:\n{text}");
                assert!(!text.contains("mask::"), "{text}");
                assert!(!text.contains("user.note") && !text.contains("trusted.t"), "{text}");
                assert!(text.contains(&format!("security.selinux=\"{LABEL}\"")), "{text}");
            }
        }
    }
}

#[test]
fn overlay_xattrs_are_set_on_new_and_replaced_entries() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = old_conf_image(d, &["-t", "ext4"]);
    debugfs_write(&img, "ea_set /etc/hostname security.selinux old_label");
    debugfs_write(&img, "ea_set /etc/hostname user.old 1");
    let spec = d.join("x.toml");
    fs::write(
        &spec,
        r#"
[[entry]]
path = "/etc/hostname"
type = "file"
mode = "0644"
owner = "0:0"
content = "{serial}\n"
xattrs = { "security.selinux" = "system_u:object_r:etc_t:s0", "user.site" = "kyiv" }

[[entry]]
path = "/etc/new-dir"
type = "dir"
mode = "0755"
owner = "0:0"
xattrs = { "user.d" = "1" }

[[entry]]
path = "/etc/new-dir/link"
type = "symlink"
target = "../hostname"
xattrs = { "security.selinux" = "system_u:object_r:etc_t:s0" }
"#,
    )
    .unwrap();
    let out = d.join("out.img");
    let o = provision(&img, &out, &["--overlay", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    assert_eq!(
        ea_names(&out, "/etc/hostname"),
        ["security.selinux", "user.site"]
    );
    let label = debugfs(&out, "ea_get /etc/hostname security.selinux");
    assert!(
        label.contains(LABEL) && !label.contains("old_label"),
        "{label}"
    );
    assert_eq!(ea_names(&out, "/etc/new-dir"), ["user.d"]);
    assert_eq!(ea_names(&out, "/etc/new-dir/link"), ["security.selinux"]);
    assert_eq!(debugfs(&out, "cat /etc/hostname"), format!("{SERIAL}\n"));
}

// ---- case 3: device.conf with a second hard link --------------------------

#[test]
fn a_hard_linked_device_conf_is_replaced_and_the_other_name_keeps_the_old_file() {
    for opts in [&["-t", "ext4"][..], &["-t", "ext4", "-O", "inline_data"]] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let img = old_conf_image(d, opts);
        add_attributes(d, &img, "/etc/azaion/device.conf");
        debugfs_write(
            &img,
            "ln /etc/azaion/device.conf /etc/azaion/device.conf.bak",
        );
        debugfs_write(&img, "sif /etc/azaion/device.conf links_count 2");
        assert_fsck_clean(&img);
        let old_ino = debugfs(&img, "stat /etc/azaion/device.conf");
        let out = d.join("out.img");
        let o = provision(&img, &out, &[]);
        assert!(o.status.success(), "{opts:?}: {}", stderr(&o));
        assert_fsck_clean(&out);
        // The other name: the old file, untouched, now with one link.
        let bak = debugfs(&out, "stat /etc/azaion/device.conf.bak");
        assert!(bak.contains("Links: 1"), "{bak}");
        assert_eq!(
            debugfs_stat(&out, "/etc/azaion/device.conf.bak"),
            (0o644, 0, 0)
        );
        // (debugfs pads an inline file it prints to the 60-byte i_block.)
        assert_eq!(
            debugfs(&out, "cat /etc/azaion/device.conf.bak").trim_end_matches('\0'),
            "AZAION_DEVICE_EMAIL=old@example\nAZAION_DEVICE_PASSWORD=old\n"
        );
        assert!(ea_names(&out, "/etc/azaion/device.conf.bak").contains(&"user.note".into()));
        // device.conf: a new inode with one link, the new content, only the label.
        let conf = debugfs(&out, "stat /etc/azaion/device.conf");
        assert!(conf.contains("Links: 1"), "{conf}");
        let inode_of = |stat: &str| stat.split_whitespace().nth(1).unwrap().to_string();
        assert_ne!(inode_of(&conf), inode_of(&old_ino), "rewritten in place");
        assert_eq!(
            debugfs(&out, "cat /etc/azaion/device.conf"),
            conf_text(EMAIL, PASSWORD)
        );
        assert_eq!(
            ea_names(&out, "/etc/azaion/device.conf"),
            ["security.selinux"]
        );
        let v = verify(&out);
        assert!(v.status.success(), "{opts:?}: {}", stdout(&v));
    }
}

// ---- case 5: case-folded /etc -----------------------------------------------

/// The +F flag of `chattr`, `EXT4_CASEFOLD_FL`.
const CASEFOLD_FL: u32 = 0x4000_0000;

/// An inode's flags, as debugfs's `stat` shows them.
fn inode_flags(img: &Path, path: &str) -> u32 {
    let stat = debugfs(img, &format!("stat {path}"));
    stat.split("Flags: 0x")
        .nth(1)
        .and_then(|f| u32::from_str_radix(f.split_whitespace().next()?, 16).ok())
        .unwrap_or_else(|| panic!("no flags in stat {path}:\n{stat}"))
}

/// A casefold filesystem whose /etc is +F and holds `Azaion` (or nothing)
/// and, when `upper_conf`, `Azaion/DEVICE.CONF`.
fn casefold_image(dir: &Path, azaion: bool, upper_conf: bool) -> Option<PathBuf> {
    let tree = ext4_tree(dir, 0, Azaion::Absent);
    if azaion {
        fs::create_dir(tree.join("etc/Azaion")).unwrap();
        fs::write(tree.join("etc/Azaion/keep"), "keep\n").unwrap();
        if upper_conf {
            fs::write(tree.join("etc/Azaion/DEVICE.CONF"), "old\n").unwrap();
        }
    }
    let img = dir.join("cf.img");
    let o = mkfs(&tree, &img, &["-t", "ext4", "-O", "casefold"], "16M");
    if !require(
        o.status.success(),
        &format!("this mke2fs cannot make casefold: {}", stderr(&o).trim()),
    ) {
        return None;
    }
    // chattr +F needs a mounted filesystem (and a kernel with
    // CONFIG_UNICODE); debugfs sets the flag on the small, linear /etc.
    let dirs: &[&str] = if upper_conf {
        &["/etc", "/etc/Azaion"]
    } else {
        &["/etc"]
    };
    for path in dirs {
        let flags = inode_flags(&img, path) | CASEFOLD_FL;
        debugfs_write(&img, &format!("sif {path} flags 0x{flags:x}"));
    }
    assert_fsck_clean(&img);
    Some(img)
}

/// `e2fsck -fyD` on a copy (-n and -D do not go together): it must find
/// no duplicate or non-unique names to fix.
fn assert_no_duplicate_names(img: &Path) {
    let copy = img.with_extension("fyD");
    fs::copy(img, &copy).unwrap();
    let o = run(Command::new("e2fsck").arg("-fyD").arg(&copy));
    let text = stdout(&o);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{text}");
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("duplicate") && !lower.contains("non-unique"),
        "{text}"
    );
}

/// Provisions a case-folded image and checks that device.conf went into
/// the existing `Azaion` as `conf_name`, beside `keep`, with no second
/// name that folds to the same.
fn check_casefold(upper_conf: bool, conf_name: &str) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let Some(img) = casefold_image(d, true, upper_conf) else {
        return;
    };
    let out = d.join("out.img");
    let o = provision(&img, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    assert_no_duplicate_names(&out);
    let etc = debugfs_names(&out, "/etc");
    assert!(etc.contains(&"Azaion".to_string()), "{etc:?}");
    assert!(
        !etc.contains(&"azaion".to_string()),
        "a second directory: {etc:?}"
    );
    let mut inside = debugfs_names(&out, "/etc/Azaion");
    inside.sort();
    let mut want = vec![".", "..", conf_name, "keep"];
    want.sort();
    assert_eq!(inside, want);
    assert_eq!(
        debugfs(&out, &format!("cat /etc/Azaion/{conf_name}")),
        conf_text(EMAIL, PASSWORD)
    );
    // imprint's own reader folds case too: verify finds /etc/azaion/device.conf.
    let v = verify(&out);
    assert!(v.status.success(), "{}", stdout(&v));
}

#[test]
fn a_case_folded_etc_finds_the_existing_azaion_directory() {
    check_casefold(false, "device.conf");
}

#[test]
fn a_case_folded_lookup_replaces_device_conf_in_another_case() {
    check_casefold(true, "DEVICE.CONF");
}

#[test]
fn a_new_directory_in_a_case_folded_etc_folds_case_too() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let Some(img) = casefold_image(d, false, false) else {
        return;
    };
    let out = d.join("out.img");
    let o = provision(&img, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    let flags = inode_flags(&out, "/etc/azaion");
    assert_ne!(
        flags & CASEFOLD_FL,
        0,
        "no +F on the new directory: 0x{flags:x}"
    );
    let v = verify(&out);
    assert!(v.status.success(), "{}", stdout(&v));
}

// ---- case 2: quota ---------------------------------------------------------

#[test]
fn quota_filesystems_are_refused_with_the_way_out_which_works() {
    for (features, quota_types) in [
        ("quota", "usrquota,grpquota"),
        ("quota,project", "usrquota,grpquota,prjquota"),
    ] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let tree = ext4_tree(d, 0, Azaion::Absent);
        let img = d.join("q.img");
        let o = mkfs(&tree, &img, &["-t", "ext4", "-O", features], "16M");
        assert!(o.status.success(), "{}", stderr(&o));
        // mke2fs 1.47.0 -d leaves the root's quota usage uncounted; e2fsck
        // -fy settles it (exit 1: fixed), giving a clean quota input.
        let o = run(Command::new("e2fsck").arg("-fy").arg(&img));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stdout(&o));
        assert_fsck_clean(&img);
        let before = sha256(&img);
        let out = d.join("out").join("q.img");
        fs::create_dir(d.join("out")).unwrap();
        let o = provision(&img, &out, &[]);
        assert_eq!(o.status.code(), Some(1), "{features}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("quota") && err.contains("tune2fs -O ^quota"),
            "{err}"
        );
        assert_eq!(sha256(&img), before);
        assert!(listing(&d.join("out")).is_empty());

        // The way the message gives: quota off on a copy, stamp, quota on.
        let copy = d.join("copy.img");
        fs::copy(&img, &copy).unwrap();
        sh(&format!("tune2fs -O ^quota {} >/dev/null", copy.display()));
        let o = provision(&copy, &out, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        sh(&format!(
            "tune2fs -O quota -Q {quota_types} {} >/dev/null",
            out.display()
        ));
        assert_fsck_clean(&out);
    }
}

// ---- case 12: /etc/passwd as a symlink --------------------------------------

#[test]
fn passwd_and_group_are_read_through_symlinks_inside_the_image() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    for (passwd_target, group_target) in [
        ("../usr/lib/passwd", "/usr/lib/group"),
        // Climbing above the root stays at the root, as in a chroot.
        ("../../../../usr/lib/passwd", "../usr/lib/group-link"),
    ] {
        let tree = ext4_tree(d, 0, Azaion::Absent);
        fs::create_dir_all(tree.join("usr/lib")).unwrap();
        fs::rename(tree.join("etc/passwd"), tree.join("usr/lib/passwd")).unwrap();
        fs::rename(tree.join("etc/group"), tree.join("usr/lib/group")).unwrap();
        std::os::unix::fs::symlink("group", tree.join("usr/lib/group-link")).unwrap();
        std::os::unix::fs::symlink(passwd_target, tree.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(group_target, tree.join("etc/group")).unwrap();
        let img = d.join("in.img");
        assert!(mkfs(&tree, &img, &["-t", "ext4"], "16M").status.success());
        let out = d.join("out.img");
        let o = provision(&img, &out, &[]);
        assert!(o.status.success(), "{passwd_target}: {}", stderr(&o));
        assert_eq!(
            debugfs_stat(&out, "/etc/azaion/device.conf"),
            (0o600, 1001, 1001)
        );
        assert_fsck_clean(&out);
    }

    // A loop of symlinks ends, as "no /etc/passwd".
    let tree = ext4_tree(d, 0, Azaion::Absent);
    fs::remove_file(tree.join("etc/passwd")).unwrap();
    std::os::unix::fs::symlink("passwd2", tree.join("etc/passwd")).unwrap();
    std::os::unix::fs::symlink("passwd", tree.join("etc/passwd2")).unwrap();
    let img = d.join("loop.img");
    assert!(mkfs(&tree, &img, &["-t", "ext4"], "16M").status.success());
    let out = d.join("loop-out.img");
    let o = provision(&img, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    // The error says what is there instead of a bare "no /etc/passwd".
    assert!(
        stderr(&o).contains(
            "/etc/passwd is a symlink to \"passwd2\", which leads to no file inside the image"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

// ---- what imprint's own reader reports (verify, ls) ------------------------

#[test]
fn the_reader_reports_links_symlink_targets_and_xattr_names() {
    use imprint::image::{open_reader, EntryType, ImageOptions};
    use imprint::plan::ImagePath;

    let long = format!("/usr/share/{}", "long-target/".repeat(8));
    for opts in [
        &["-t", "ext4"][..],
        &["-t", "ext4", "-I", "128"],
        &["-t", "ext4", "-O", "inline_data"],
    ] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let tree = ext4_tree(d, 0, Azaion::OldConf);
        std::os::unix::fs::symlink("../usr/bin/azaion-loader", tree.join("etc/fast")).unwrap();
        std::os::unix::fs::symlink(&long, tree.join("etc/slow")).unwrap();
        fs::hard_link(tree.join("etc/hostname"), tree.join("etc/hostname.bak")).unwrap();
        let img = d.join("r.img");
        let o = mkfs(&tree, &img, opts, "16M");
        assert!(o.status.success(), "{}", stderr(&o));
        add_attributes(d, &img, "/etc/azaion/device.conf");

        let mut reader = open_reader(&img, &ImageOptions::default()).unwrap();
        let mut meta = |p: &str| {
            reader
                .lookup(&ImagePath::parse(p).unwrap(), 0)
                .unwrap()
                .unwrap_or_else(|| panic!("{p} not found"))
                .0
        };
        let fast = meta("/etc/fast");
        assert_eq!(fast.kind, EntryType::Symlink);
        assert_eq!(fast.target.as_deref(), Some("../usr/bin/azaion-loader"));
        let slow = meta("/etc/slow");
        assert_eq!(slow.target.as_deref(), Some(long.as_str()), "{opts:?}");
        assert_eq!(slow.size, long.len() as u64);
        assert_eq!(meta("/etc/hostname").links, 2);
        assert_eq!(meta("/etc/passwd").links, 1);
        assert_eq!(meta("/etc/passwd").target, None);
        assert_eq!(
            meta("/etc/azaion/device.conf").xattrs,
            [
                "security.selinux",
                "system.posix_acl_access",
                "trusted.t",
                "user.note"
            ],
            "{opts:?}"
        );
        assert!(meta("/etc/group").xattrs.is_empty(), "{opts:?}");
    }
}
