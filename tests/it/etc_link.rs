//! `/etc` as a symlink (`etc -> usr/etc`, `etc -> /usr/etc`), issue 26
//! item 5: writing follows it inside the image as a chroot would, and the
//! output holds device.conf under the resolved path, so GNU tar and bsdtar
//! (which refuses to extract through a symlink) both extract it. Inputs are
//! made with GNU tar, bsdtar and mke2fs -d; outputs judged with both tars,
//! e2fsck and debugfs.

use crate::common;
use crate::require::{require, require_tools};

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

/// A rootfs tree whose /etc is a symlink to `link` and whose real
/// /usr/etc holds the users (azaion is 1001:1001).
fn linked_tree(d: &Path, link: &str) -> PathBuf {
    let root = d.join("tree");
    fs::create_dir_all(root.join("usr/etc")).unwrap();
    fs::write(
        root.join("usr/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nazaion:x:1001:1001::/home/azaion:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("usr/etc/group"), "root:x:0:\nazaion:x:1001:\n").unwrap();
    std::os::unix::fs::symlink(link, root.join("etc")).unwrap();
    root
}

fn provision(input: &Path, out: &Path) -> std::process::Output {
    let pw = write_password(input.parent().unwrap(), PASSWORD);
    run(&mut provision_offline(input, out, "azaion", &pw))
}

/// device.conf in an extracted tree: content, mode and owner.
fn check_conf(path: &Path, owners: bool) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(text, conf_text(EMAIL, PASSWORD), "{}", path.display());
    let meta = fs::metadata(path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    if owners {
        assert_eq!((meta.uid(), meta.gid()), (1001, 1001), "{}", path.display());
    }
}

/// `imprint verify`, `ls` and `cat` find device.conf through the link.
fn check_through_link(out: &Path) {
    let o = run(bin()
        .arg("verify")
        .arg(out)
        .args(["--serial", SERIAL, "--owner", "azaion"]));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = run(bin().arg("cat").arg(out).arg("/etc/azaion/device.conf"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), conf_text(EMAIL, PASSWORD));
    let o = run(bin().arg("ls").arg(out).arg("/etc/azaion"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("-rw------- 1001:1001") && stdout(&o).contains("device.conf"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn tars_with_a_symlinked_etc_get_device_conf_under_the_resolved_path() {
    require_tools(&["tar", "bsdtar"]);
    let root = rustix::process::geteuid().is_root();
    for (maker, link) in [
        ("tar", "usr/etc"),
        ("tar", "/usr/etc"),
        ("bsdtar", "usr/etc"),
        ("bsdtar", "/usr/etc"),
    ] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let tree = linked_tree(d, link);
        let input = d.join("in.tar");
        sh(&format!(
            "{maker} -cf {} -C {} .",
            input.display(),
            tree.display()
        ));
        let out = d.join("out.tar");
        let o = provision(&input, &out);
        assert!(o.status.success(), "{maker} {link}: {}", stderr(&o));
        // No entry goes through the link: every new one is under usr/etc.
        let listed = stdout(&sh(&format!("tar -tvf {}", out.display())));
        let conf_line = listed
            .lines()
            .find(|l| l.ends_with("usr/etc/azaion/device.conf"))
            .unwrap_or_else(|| panic!("{maker} {link}: no usr/etc/azaion/device.conf\n{listed}"));
        assert!(
            conf_line.starts_with("-rw------- azaion/azaion")
                || conf_line.starts_with("-rw------- 1001/1001"),
            "{conf_line}"
        );
        assert!(
            !listed
                .lines()
                .any(|l| l.contains(" ./etc/azaion") || l.contains(" etc/azaion")),
            "{maker} {link}: an entry through the link\n{listed}"
        );
        for tool in ["gnutar", "bsdtar"] {
            let x = d.join(format!("x-{tool}"));
            extract(tool, &out, &x);
            check_conf(&x.join("usr/etc/azaion/device.conf"), root);
            // The link is extracted as it was; a relative one reaches the
            // file from the tree's /etc (an absolute one, the host's).
            assert_eq!(fs::read_link(x.join("etc")).unwrap(), Path::new(link));
            if !link.starts_with('/') {
                check_conf(&x.join("etc/azaion/device.conf"), root);
            }
        }
        check_through_link(&out);
    }
    require(root, "extracted owners are checked only as root");
}

#[test]
fn an_ext4_with_a_symlinked_etc_gets_device_conf_in_the_resolved_directory() {
    require_tools(&["mke2fs", "e2fsck", "debugfs"]);
    for link in ["usr/etc", "/usr/etc"] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let tree = linked_tree(d, link);
        let img = d.join("in.img");
        let o = mkfs(&tree, &img, &["-t", "ext4"], "16M");
        assert!(o.status.success(), "mke2fs: {}", stderr(&o));
        let out = d.join("out.img");
        let o = provision(&img, &out);
        assert!(o.status.success(), "{link}: {}", stderr(&o));
        assert_fsck_clean(&out);
        assert_eq!(
            debugfs(&out, "cat /usr/etc/azaion/device.conf"),
            conf_text(EMAIL, PASSWORD)
        );
        assert_eq!(
            debugfs_stat(&out, "/usr/etc/azaion/device.conf"),
            (0o600, 1001, 1001)
        );
        // The link is kept, and nothing else is called etc.
        let stat = debugfs(&out, "stat /etc");
        assert!(stat.contains("Type: symlink"), "{stat}");
        assert!(
            debugfs_names(&out, "/")
                .iter()
                .filter(|n| *n == "etc")
                .count()
                == 1
        );
        check_through_link(&out);
    }
}

#[test]
fn a_staging_tree_with_a_symlinked_etc_gets_device_conf_in_the_resolved_directory() {
    // Giving a staged file another user's owner needs root.
    if !require(
        rustix::process::geteuid().is_root(),
        "staging for azaion needs root",
    ) {
        return;
    }
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = linked_tree(d, "usr/etc");
    let pw = write_password(d, PASSWORD);
    let o = run(bin()
        .args(["provision", "--offline", "--password-file"])
        .arg(&pw)
        .args(["--serial", SERIAL, "--owner", "azaion", "--rootfs-dir"])
        .arg(&tree));
    assert!(o.status.success(), "{}", stderr(&o));
    check_conf(&tree.join("usr/etc/azaion/device.conf"), true);
    check_conf(&tree.join("etc/azaion/device.conf"), true);
    assert!(fs::symlink_metadata(tree.join("etc"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_dangling_or_looping_etc_is_refused_naming_the_link_and_an_escaping_one_stays_inside() {
    require_tools(&["tar", "mke2fs", "debugfs"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let make = |name: &str, link: &str| {
        let root = d.join(name);
        fs::create_dir_all(root.join("usr")).unwrap();
        std::os::unix::fs::symlink(link, root.join("etc")).unwrap();
        let tar = d.join(format!("{name}.tar"));
        sh(&format!(
            "tar -cf {} -C {} .",
            tar.display(),
            root.display()
        ));
        let img = d.join(format!("{name}.img"));
        let o = mkfs(&root, &img, &["-t", "ext4"], "8M");
        assert!(o.status.success(), "mke2fs: {}", stderr(&o));
        (tar, img)
    };
    for (name, link, want) in [
        (
            "dangling",
            "usr/etc",
            "/etc -> usr/etc leads to /usr/etc, which the image does not hold",
        ),
        (
            "proc",
            "/proc/1/root/etc",
            "leads to /proc/1/root/etc, which the image does not hold",
        ),
        ("loop", "etc", "more than 40 symlinks"),
    ] {
        let (tar, img) = make(name, link);
        for input in [tar, img] {
            let out = d.join("out");
            let o = run(&mut provision_offline(&input, &out, "root", &pw));
            let err = stderr(&o);
            assert!(!o.status.success(), "{name}: accepted");
            assert!(
                err.contains("/etc/azaion lies behind a symlink in the image")
                    && err.contains(want),
                "{name}: {err}"
            );
            assert!(!out.exists());
        }
    }
    // `..` stops at the image's root: etc -> ../../.. is the root itself,
    // and the file goes to /azaion/device.conf inside the image.
    let (tar, img) = make("climb", "../../..");
    let out = d.join("climb-out.tar");
    let o = run(&mut provision_offline(&tar, &out, "root", &pw));
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&sh(&format!("tar -tf {}", out.display())));
    assert!(
        listed.lines().any(|l| l == "./azaion/device.conf"),
        "{listed}"
    );
    let out = d.join("climb-out.img");
    let o = run(&mut provision_offline(&img, &out, "root", &pw));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    assert_eq!(
        debugfs(&out, "cat /azaion/device.conf"),
        conf_text(EMAIL, PASSWORD)
    );
}
