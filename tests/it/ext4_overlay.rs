//! An overlay of symlinks and removals, the tree it works on and the
//! checks of its output, shared by the raw, sparse and disk image tests.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use crate::common::*;

/// An overlay that makes symlinks (new fast and slow ones, one replacing
/// a file, one replacing a symlink) and removes a file, a symlink, an
/// empty directory and a tree holding a second name of a file outside it.
pub const SYMLINKS_AND_REMOVALS: &str = r#"
[[entry]]
path = "/etc/localtime"
type = "symlink"
target = "/usr/share/zoneinfo/Europe/Kyiv"

[[entry]]
path = "/etc/long-link"
type = "symlink"
target = "/usr/share/zoneinfo/a-target-longer-than-sixty-bytes-so-it-needs-a-block/{serial}"

[[entry]]
path = "/etc/hostname"
type = "symlink"
target = "/run/hostname"

[[entry]]
path = "/etc/old-link"
type = "symlink"
target = "new-target"

[[entry]]
path = "/etc/machine-id"
type = "absent"

[[entry]]
path = "/etc/dangling"
type = "absent"

[[entry]]
path = "/etc/empty-dir"
type = "absent"

[[entry]]
path = "/etc/tree"
type = "absent"
recursive = true

[[entry]]
path = "/etc/not-there"
type = "absent"

[[entry]]
path = "/etc/no-such-dir/file"
type = "absent"

[[entry]]
path = "/etc/passwd/not-a-dir"
type = "absent"
"#;

/// Adds what [`SYMLINKS_AND_REMOVALS`] works on to an ext4 tree.
pub fn add_removal_targets(tree: &Path) {
    let etc = tree.join("etc");
    fs::write(etc.join("machine-id"), "0123456789abcdef\n").unwrap();
    std::os::unix::fs::symlink("nowhere", etc.join("dangling")).unwrap();
    std::os::unix::fs::symlink("old-target", etc.join("old-link")).unwrap();
    fs::create_dir(etc.join("empty-dir")).unwrap();
    fs::create_dir_all(etc.join("tree/sub/deeper")).unwrap();
    fs::write(etc.join("tree/sub/deeper/big"), vec![7u8; 300_000]).unwrap();
    fs::write(etc.join("tree/small"), "x\n").unwrap();
    std::os::unix::fs::symlink("small", etc.join("tree/link")).unwrap();
    // A second name outside the removed tree keeps the file alive.
    fs::write(etc.join("tree/shared"), "shared\n").unwrap();
    fs::hard_link(etc.join("tree/shared"), tree.join("usr/shared")).unwrap();
}

/// Checks an output of [`SYMLINKS_AND_REMOVALS`] (a raw image).
pub fn check_symlinks_and_removals(out: &Path) {
    assert_fsck_clean(out);
    let names = debugfs_names(out, "/etc");
    for gone in ["machine-id", "dangling", "empty-dir", "tree", "not-there"] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} is still there: {names:?}"
        );
    }
    let fast = debugfs(out, "stat /etc/localtime");
    assert!(fast.contains("Type: symlink"), "{fast}");
    assert!(
        fast.contains("Fast link dest: \"/usr/share/zoneinfo/Europe/Kyiv\""),
        "{fast}"
    );
    let slow = debugfs(out, "stat /etc/long-link");
    assert!(slow.contains("Type: symlink"), "{slow}");
    // With inline_data the target lives in the inode's data attribute
    // (debugfs calls that a fast link too); otherwise in a block.
    if !slow.contains("Flags: 0x10000000") {
        assert!(
            !slow.contains("Fast link") && !slow.contains("Blockcount: 0"),
            "{slow}"
        );
    }
    let target = format!(
        "/usr/share/zoneinfo/a-target-longer-than-sixty-bytes-so-it-needs-a-block/{SERIAL}"
    );
    assert!(slow.contains(&format!("Size: {}", target.len())), "{slow}");
    // debugfs `cat` of a slow symlink prints its target block.
    assert!(debugfs(out, "cat /etc/long-link").starts_with(&target));
    for (path, target) in [
        ("/etc/hostname", "/run/hostname"),
        ("/etc/old-link", "new-target"),
    ] {
        let stat = debugfs(out, &format!("stat {path}"));
        assert!(
            stat.contains("Type: symlink") && stat.contains(&format!("\"{target}\"")),
            "{path}: {stat}"
        );
    }
    let shared = debugfs(out, "stat /usr/shared");
    assert!(shared.contains("Links: 1"), "{shared}");
    // (debugfs pads an inline file it prints to the 60-byte i_block.)
    assert_eq!(
        debugfs(out, "cat /usr/shared").trim_end_matches('\0'),
        "shared\n"
    );
}
