//! Raw ext2/3/4 images: made with mke2fs at test time, provisioned by the
//! real binary, checked with e2fsck -fn, debugfs, imprint verify and, where
//! the machine allows, a read-only loop mount through the kernel.

use crate::common;
use crate::ext4_overlay;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use ext4_overlay::*;
use imprint::stub::StubServer;
use tempfile::TempDir;

/// How /etc is laid out in the input.
#[derive(Debug, Clone, Copy)]
enum Etc {
    /// A handful of entries in one linear block.
    Small,
    /// 150 entries over a few blocks, indexed by `e2fsck -fyD` (it leaves
    /// one-block directories linear).
    SmallIndexed,
    /// 1200 entries, as mke2fs -d leaves them.
    Large,
    /// 1200 entries, htree-indexed by `e2fsck -fyD`.
    LargeIndexed,
}

impl Etc {
    fn extra(self) -> usize {
        match self {
            Etc::Small => 0,
            Etc::SmallIndexed => 150,
            Etc::Large | Etc::LargeIndexed => 1200,
        }
    }
    fn indexed(self) -> bool {
        matches!(self, Etc::SmallIndexed | Etc::LargeIndexed)
    }
}

/// Builds one input image for a matrix cell.
fn build_input(dir: &Path, opts: &[&str], etc: Etc, azaion: Azaion) -> PathBuf {
    let tree = ext4_tree(dir, etc.extra(), azaion);
    let img = dir.join("in.img");
    let o = mkfs(&tree, &img, opts, "32M");
    assert!(o.status.success(), "mke2fs {opts:?}: {}", stderr(&o));
    if azaion == Azaion::EmptyDir {
        debugfs_write(&img, "sif /etc/azaion uid 1001");
        debugfs_write(&img, "sif /etc/azaion gid 1001");
    }
    if etc.indexed() {
        // -D optimizes (and indexes) directories; exit 1 means "changed".
        let o = run(std::process::Command::new("e2fsck").arg("-fyD").arg(&img));
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "e2fsck -fyD: {}",
            stdout(&o)
        );
        let htree = debugfs(&img, "htree /etc");
        assert!(
            htree.contains("Root node dump"),
            "/etc is not htree-indexed after e2fsck -fyD:\n{htree}"
        );
    }
    assert_fsck_clean(&img);
    img
}

/// Checks one output with every tool; returns the expected (uid, gid).
fn check_output(input_names: &[String], out: &Path, uid: u32, gid: u32, azaion: Azaion) {
    assert_fsck_clean(out);
    // The digest is taken while writing (holes hashed as zeros): the
    // sidecar must match the file as it is on disk.
    let name = out.file_name().unwrap().to_str().unwrap();
    sh(&format!(
        "cd {} && sha256sum -c --quiet {name}.sha256",
        out.parent().unwrap().display()
    ));
    assert_eq!(
        debugfs_stat(out, "/etc/azaion/device.conf"),
        (0o600, uid, gid)
    );
    assert_eq!(
        debugfs(out, "cat /etc/azaion/device.conf"),
        conf_text(EMAIL, PASSWORD)
    );
    let azaion_dir = debugfs_stat(out, "/etc/azaion");
    match azaion {
        Azaion::EmptyDir => assert_eq!(azaion_dir, (0o750, 1001, 1001), "an existing dir is kept"),
        _ => assert_eq!(azaion_dir.0, 0o755),
    }
    assert_eq!(
        debugfs_names(out, "/etc/azaion"),
        [".", "..", "device.conf"]
    );
    let mut names = debugfs_names(out, "/etc");
    names.sort();
    let mut want: Vec<String> = input_names.to_vec();
    if !want.iter().any(|n| n == "azaion") {
        want.push("azaion".into());
    }
    want.sort();
    assert_eq!(names.len(), want.len());
    assert_eq!(names, want);
}

/// Every layout of /etc and /etc/azaion for one mke2fs configuration.
fn matrix(opts: &[&str]) {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let cells = [
        (Etc::Small, Azaion::Absent, "azaion", (1001, 1001)),
        (
            Etc::Small,
            Azaion::EmptyDir,
            "big",
            (4_000_000_000, 4_000_000_001),
        ),
        (Etc::Small, Azaion::OldConf, "root", (0, 0)),
        (Etc::SmallIndexed, Azaion::Absent, "azaion:root", (1001, 0)),
        (Etc::SmallIndexed, Azaion::OldConf, "azaion", (1001, 1001)),
        (Etc::Large, Azaion::Absent, "azaion", (1001, 1001)),
        (Etc::Large, Azaion::OldConf, "azaion", (1001, 1001)),
        (
            Etc::LargeIndexed,
            Azaion::Absent,
            "big",
            (4_000_000_000, 4_000_000_001),
        ),
        (Etc::LargeIndexed, Azaion::EmptyDir, "azaion", (1001, 1001)),
        (
            Etc::LargeIndexed,
            Azaion::OldConf,
            "1234:5678",
            (1234, 5678),
        ),
    ];
    let mut mounted = false;
    for (etc, azaion, owner, (uid, gid)) in cells {
        let what = format!("{opts:?} {etc:?} {azaion:?}");
        let input = build_input(dir.path(), opts, etc, azaion);
        let before = sha256(&input);
        let names = debugfs_names(&input, "/etc");
        let out = dir.path().join("out.img");
        let _ = fs::remove_file(&out);
        let o = run(&mut provision_offline(&input, &out, owner, &pw));
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        assert!(!stdout(&o).contains(PASSWORD) && !stderr(&o).contains(PASSWORD));
        assert_eq!(sha256(&input), before, "{what}: the input changed");
        check_output(&names, &out, uid, gid, azaion);
        let v = run(bin()
            .arg("verify")
            .arg(&out)
            .args(["--serial", SERIAL, "--owner", owner]));
        assert!(v.status.success(), "{what}: verify:\n{}", stdout(&v));
        assert!(stdout(&v).contains("e2fsck"), "{}", stdout(&v));
        if !mounted {
            mounted = true;
            if let Some((stat, content)) = kernel_read(&out, "/etc/azaion/device.conf") {
                assert_eq!(stat, format!("600 {uid} {gid}"), "{what}");
                assert_eq!(content, conf_text(EMAIL, PASSWORD));
            }
        }
    }
}

#[test]
fn matrix_ext4_4k_blocks() {
    matrix(&["-t", "ext4", "-b", "4096"]);
}

#[test]
fn matrix_ext4_1k_blocks() {
    matrix(&["-t", "ext4", "-b", "1024"]);
}

#[test]
fn matrix_ext4_without_metadata_csum_and_64bit() {
    matrix(&["-t", "ext4", "-O", "^metadata_csum,^64bit"]);
}

#[test]
fn matrix_ext4_inline_data() {
    matrix(&["-t", "ext4", "-O", "inline_data"]);
}

#[test]
fn matrix_ext2() {
    matrix(&["-t", "ext2"]);
}

#[test]
fn matrix_ext3() {
    matrix(&["-t", "ext3"]);
}

#[test]
fn matrix_ext4_orphan_file_and_csum_seed() {
    let probe = TempDir::new().unwrap();
    let img = probe.path().join("probe.img");
    let o = run(std::process::Command::new("mke2fs")
        .args([
            "-F",
            "-q",
            "-t",
            "ext4",
            "-O",
            "orphan_file,metadata_csum_seed",
        ])
        .arg(&img)
        .arg("8M"));
    // mke2fs knows these features from e2fsprogs 1.47 on.
    if !require(
        o.status.success(),
        &format!(
            "this mke2fs cannot make orphan_file,metadata_csum_seed: {}",
            stderr(&o).trim()
        ),
    ) {
        return;
    }
    matrix(&["-t", "ext4", "-O", "orphan_file,metadata_csum_seed"]);
}

/// Runs provision on a bad input and checks that it failed cleanly.
fn assert_refused(dir: &Path, input: &Path, owner: &str, needle: &str) {
    let pw = write_password(dir, PASSWORD);
    let outdir = dir.join("out");
    let _ = fs::remove_dir_all(&outdir);
    fs::create_dir(&outdir).unwrap();
    let before = sha256(input);
    let o = run(&mut provision_offline(
        input,
        &outdir.join("x.img"),
        owner,
        &pw,
    ));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{needle}: {err}");
    assert!(
        err.starts_with("imprint: error:") || err.contains("\nimprint: error:"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "wanted {needle:?} in: {err}"
    );
    assert_eq!(sha256(input), before, "the input changed");
    assert!(
        listing(&outdir).is_empty(),
        "left behind: {:?}",
        listing(&outdir)
    );
}

#[test]
fn refusals_leave_the_input_alone_and_no_output() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let good = |azaion| {
        let tree = ext4_tree(d, 0, azaion);
        let img = d.join(format!("{azaion:?}.img"));
        assert!(mkfs(&tree, &img, &["-t", "ext4"], "16M").status.success());
        img
    };

    let img = good(Azaion::Absent);
    debugfs_write(&img, "feature needs_recovery");
    assert_refused(d, &img, "root", "journal needs recovery");

    let img = good(Azaion::Absent);
    debugfs_write(&img, "ssv state 2");
    assert_refused(d, &img, "root", "errors");

    let img = good(Azaion::Absent);
    debugfs_write(&img, "feature FEATURE_I31");
    assert_refused(d, &img, "root", "unsupported feature");

    let img = good(Azaion::Absent);
    debugfs_write(&img, "feature FEATURE_R31");
    assert_refused(d, &img, "root", "unsupported feature");

    assert_refused(d, &good(Azaion::Symlink), "root", "symlink");
    assert_refused(d, &good(Azaion::File), "root", "not a directory");
    assert_refused(d, &good(Azaion::Absent), "nobody", "nobody");

    // device.conf as a symlink. (A file with a second hard link is
    // replaced: tests/realworld_ext4.rs.)
    let img = good(Azaion::OldConf);
    debugfs_write(&img, "rm /etc/azaion/device.conf");
    debugfs_write(&img, "symlink /etc/azaion/device.conf /etc/hostname");
    assert_refused(d, &img, "root", "symlink");

    // No /etc at all.
    let bare = d.join("bare");
    fs::create_dir_all(bare.join("usr")).unwrap();
    let img = d.join("bare.img");
    assert!(mkfs(&bare, &img, &["-t", "ext4"], "16M").status.success());
    assert_refused(d, &img, "0:0", "/etc");

    // Truncated: the superblock describes more than the file holds.
    let img = good(Azaion::Absent);
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    assert_refused(d, &img, "root", "truncated");

    // ext4 magic on garbage.
    let img = d.join("garbage.img");
    let mut junk = vec![0x5au8; 1 << 20];
    junk[1024 + 56] = 0x53;
    junk[1024 + 57] = 0xEF;
    fs::write(&img, junk).unwrap();
    assert_refused(d, &img, "root", "error");
}

#[test]
fn full_filesystems_are_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();

    // No free inode: few inodes, then every free one used.
    let tree = ext4_tree(d, 0, Azaion::Absent);
    let img = d.join("inodes.img");
    assert!(mkfs(&tree, &img, &["-t", "ext4", "-N", "32"], "8M")
        .status
        .success());
    let free = free_count(&img, "Free inodes:");
    let cmds: String = (0..free)
        .map(|i| format!("write /dev/null /f{i}\n"))
        .collect();
    fs::write(d.join("cmds"), cmds).unwrap();
    sh(&format!(
        "debugfs -w -f {} {} >/dev/null 2>&1",
        d.join("cmds").display(),
        img.display()
    ));
    assert_eq!(free_count(&img, "Free inodes:"), 0);
    assert_refused(d, &img, "root", "no free inode");

    // No free block: one file preallocates every free block.
    let img = d.join("blocks.img");
    assert!(mkfs(&tree, &img, &["-t", "ext4", "-b", "1024"], "4M")
        .status
        .success());
    let free = free_count(&img, "Free blocks:");
    debugfs_write(&img, "write /dev/null /big");
    // fallocate stops with an error once the disk is full, which is the point.
    let _ = debugfs(&img, &format!("fallocate /big 0 {}", free + 100));
    let o = std::process::Command::new("debugfs")
        .args(["-w", "-R", &format!("fallocate /big 0 {}", free + 100)])
        .arg(&img)
        .output()
        .unwrap();
    drop(o);
    assert_eq!(free_count(&img, "Free blocks:"), 0);
    assert_refused(d, &img, "root", "no free block");
}

fn free_count(img: &Path, key: &str) -> u64 {
    let o = run(std::process::Command::new("dumpe2fs").arg("-h").arg(img));
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} in {text}"));
    line[key.len()..].trim().parse().unwrap()
}

#[test]
fn copy_keeps_holes_and_runs_are_reproducible() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 10, Azaion::Absent);
    let img = d.join("big.img");
    assert!(mkfs(&tree, &img, &["-t", "ext4"], "256M").status.success());
    let pw = write_password(d, PASSWORD);
    let mtime = fs::metadata(&img).unwrap().modified().unwrap();

    let outs: Vec<PathBuf> = (0..2).map(|i| d.join(format!("out{i}.img"))).collect();
    for (i, out) in outs.iter().enumerate() {
        if i == 1 {
            // A different wall-clock second must not change a byte.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let o = run(&mut provision_offline(&img, out, "azaion", &pw));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(fs::metadata(&img).unwrap().modified().unwrap(), mtime);
    use std::os::unix::fs::MetadataExt;
    let allocated = fs::metadata(&outs[0]).unwrap().blocks() * 512;
    assert_eq!(fs::metadata(&outs[0]).unwrap().len(), 256 << 20);
    assert!(
        allocated < 32 << 20,
        "the copy allocated {allocated} bytes: holes were filled"
    );
    assert_eq!(sha256(&outs[0]), sha256(&outs[1]), "two runs differ");
    assert_eq!(
        fs::read_to_string(d.join("out0.img.sha256"))
            .unwrap()
            .split_whitespace()
            .next(),
        fs::read_to_string(d.join("out1.img.sha256"))
            .unwrap()
            .split_whitespace()
            .next()
    );

    // With SOURCE_DATE_EPOCH, every new timestamp is that time.
    for out in &outs {
        let _ = fs::remove_file(out);
        let o =
            run(provision_offline(&img, out, "azaion", &pw).env("SOURCE_DATE_EPOCH", "1700000000"));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(sha256(&outs[0]), sha256(&outs[1]));
    let stat = debugfs(&outs[0], "stat /etc/azaion/device.conf");
    assert!(stat.contains("mtime: 0x6553f100"), "{stat}");
    assert!(stat.contains("crtime: 0x6553f100"), "{stat}");
    let sb = sh(&format!("dumpe2fs -h {} 2>/dev/null", outs[0].display()));
    let want = sh("LC_ALL=C TZ=UTC date -d @1700000000 '+%a %b %e %H:%M:%S %Y'");
    let want = stdout(&want);
    assert!(
        stdout(&sb)
            .lines()
            .any(|l| l.starts_with("Last write time:") && l.contains(want.trim())),
        "superblock write time is not SOURCE_DATE_EPOCH ({}):\n{}",
        want.trim(),
        stdout(&sb)
    );
}

#[test]
fn online_provisioning_and_verify_catches_tampering() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let server = StubServer::start().unwrap();
    let img = small_ext4(d, "in.img");
    let out = d.join("good.img");
    let o = run(provision_online(&img, &out, &server.url()).args(["--owner", "azaion"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let password = server.password_of(EMAIL).expect("the account exists");
    assert_eq!(
        debugfs(&out, "cat /etc/azaion/device.conf"),
        conf_text(EMAIL, &password)
    );
    assert!(!stdout(&o).contains(&password) && !stderr(&o).contains(&password));

    let verify = |image: &Path| {
        run(bin().arg("verify").arg(image).args([
            "--serial",
            SERIAL,
            "--owner",
            "azaion",
            "--login-url",
            &server.url(),
        ]))
    };
    let v = verify(&out);
    assert!(v.status.success(), "{}", stdout(&v));
    assert!(stdout(&v).contains("login"));

    let tampered = |name: &str, edits: &[&str], failing: &[&str]| {
        let copy = d.join(name);
        fs::copy(&out, &copy).unwrap();
        let sidecar = fs::read_to_string(d.join("good.img.sha256")).unwrap();
        fs::write(
            d.join(format!("{name}.sha256")),
            sidecar.replace("good.img", name),
        )
        .unwrap();
        for e in edits {
            debugfs_write(&copy, e);
        }
        let v = verify(&copy);
        assert_eq!(v.status.code(), Some(1), "{name}: {}", stdout(&v));
        for check in failing {
            assert!(
                stdout(&v)
                    .lines()
                    .any(|l| l.starts_with("FAIL") && l.contains(check)),
                "{name}: no FAIL line for {check}:\n{}",
                stdout(&v)
            );
        }
    };
    tampered(
        "mode.img",
        &["sif /etc/azaion/device.conf mode 0100644"],
        &["mode", "checksum"],
    );
    tampered(
        "owner.img",
        &["sif /etc/azaion/device.conf uid 5"],
        &["owner", "checksum"],
    );
    let wrong = d.join("wrong.conf");
    fs::write(&wrong, conf_text(EMAIL, "ffffffffffffffffffffffffffffffff")).unwrap();
    let write = format!("write {} /etc/azaion/device.conf", wrong.display());
    tampered(
        "password.img",
        &[
            "rm /etc/azaion/device.conf",
            &write,
            "sif /etc/azaion/device.conf mode 0100600",
            "sif /etc/azaion/device.conf uid 1001",
            "sif /etc/azaion/device.conf gid 1001",
        ],
        &["login", "checksum"],
    );
}

#[test]
fn a_missing_libext2fs_is_named_and_verify_does_not_need_it() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = small_ext4(d, "in.img");
    let pw = write_password(d, PASSWORD);
    let out = d.join("out.img");
    let o = run(provision_offline(&img, &out, "azaion", &pw)
        .env("IMPRINT_LIBEXT2FS", "/nonexistent/libext2fs.so.2"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("libext2fs.so.2") && stderr(&o).contains("e2fsprogs"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    // The reader is imprint's own: verify works without libext2fs.
    assert!(run(&mut provision_offline(&img, &out, "azaion", &pw))
        .status
        .success());
    let v = run(bin()
        .env("IMPRINT_LIBEXT2FS", "/nonexistent/libext2fs.so.2")
        .arg("verify")
        .arg(&out)
        .args(["--serial", SERIAL, "--owner", "azaion"]));
    assert!(v.status.success(), "{}", stdout(&v));
}

#[test]
fn a_libext2fs_without_an_entry_point_is_named_too_old() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = small_ext4(d, "in.img");
    let pw = write_password(d, PASSWORD);
    let out = d.join("out.img");
    // libcom_err loads (libext2fs needs it) but has none of libext2fs's
    // entry points: it stands in for a libext2fs older than 1.43.
    let o =
        run(provision_offline(&img, &out, "azaion", &pw)
            .env("IMPRINT_LIBEXT2FS", "libcom_err.so.2"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o)
            .contains("libext2fs is too old: it lacks ext2fs_open2 (e2fsprogs >= 1.43 needed)"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn a_group_descriptor_pointing_into_metadata_is_refused() {
    // libext2fs's allocator trusts the descriptors: with group 0's block
    // bitmap inside its inode table, the bitmap written back on close
    // would overwrite inodes (and nothing else in the chain notices on
    // ext2, which has no checksums).
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    let img = d.join("in.img");
    assert!(mkfs(&tree, &img, &["-t", "ext2"], "16M").status.success());
    let stats = debugfs(&img, "show_super_stats");
    let table: u64 = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("Group  0:"))
        .and_then(|l| l.split("inode table at ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no inode table for group 0 in:\n{stats}"));
    debugfs_write(&img, &format!("set_bg 0 block_bitmap {}", table + 1));
    assert_refused(d, &img, "azaion", "damaged: Corrupt group descriptor");
}

// ---- overlay symlinks and removals -----------------------------------------

/// Free inodes and blocks from the superblock.
fn free_counts(img: &Path) -> (u64, u64) {
    (
        free_count(img, "Free inodes:"),
        free_count(img, "Free blocks:"),
    )
}

#[test]
fn overlay_symlinks_and_removals() {
    for opts in [
        &["-t", "ext4"][..],
        &["-t", "ext4", "-b", "1024"],
        &["-t", "ext4", "-O", "inline_data"],
        &["-t", "ext2"],
        // bigalloc with 1 KiB blocks: the first data block is 0 but the
        // superblock (and the descriptors after it) still at byte 1024.
        &["-t", "ext4", "-b", "1024", "-O", "bigalloc", "-C", "16384"],
    ] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let tree = ext4_tree(d, 0, Azaion::Absent);
        add_removal_targets(&tree);
        let img = d.join("in.img");
        let o = mkfs(&tree, &img, opts, "16M");
        assert!(o.status.success(), "{}", stderr(&o));
        let spec = d.join("links.toml");
        fs::write(&spec, SYMLINKS_AND_REMOVALS).unwrap();
        let pw = write_password(d, PASSWORD);
        let out = d.join("out.img");
        let o = run(provision_offline(&img, &out, "azaion", &pw)
            .arg("--overlay")
            .arg(&spec));
        assert!(o.status.success(), "{opts:?}: {}", stderr(&o));
        check_symlinks_and_removals(&out);
        if opts == ["-t", "ext4"] {
            // Another wall-clock second, the same bytes: freed inodes get
            // the plan's time as their deletion time, never the clock's.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let again = d.join("again.img");
            let o = run(provision_offline(&img, &again, "azaion", &pw)
                .arg("--overlay")
                .arg(&spec));
            assert!(o.status.success(), "{}", stderr(&o));
            assert_eq!(sha256(&again), sha256(&out), "two runs differ");
        }
        // The removed tree's 300 kB came back as free blocks; its inodes
        // (tree, sub, deeper, big, small, link; shared lives on) too.
        let (inodes_in, blocks_in) = free_counts(&img);
        let (inodes_out, blocks_out) = free_counts(&out);
        assert!(
            blocks_out > blocks_in,
            "{opts:?}: {blocks_in} -> {blocks_out}"
        );
        // Removed 10 inodes (machine-id, dangling, empty-dir, 6 in tree,
        // hostname's and old-link's replaced ones = 2 more), created
        // azaion, device.conf and 4 symlinks.
        assert_eq!(inodes_out, inodes_in + 11 - 6, "{opts:?}");
        let v = run(bin()
            .arg("verify")
            .arg(&out)
            .args(["--serial", SERIAL, "--owner", "azaion"]));
        assert!(v.status.success(), "{opts:?}: {}", stdout(&v));
    }
}

#[test]
fn removing_a_directory_that_is_not_empty_needs_recursive() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    add_removal_targets(&tree);
    let img = d.join("in.img");
    assert!(mkfs(&tree, &img, &["-t", "ext4"], "16M").status.success());
    let spec = d.join("rm.toml");
    fs::write(
        &spec,
        "[[entry]]\npath = \"/etc/tree\"\ntype = \"absent\"\n",
    )
    .unwrap();
    let pw = write_password(d, PASSWORD);
    let outdir = d.join("out");
    fs::create_dir(&outdir).unwrap();
    let before = sha256(&img);
    let o = run(
        provision_offline(&img, &outdir.join("x.img"), "azaion", &pw)
            .arg("--overlay")
            .arg(&spec),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/etc/tree") && stderr(&o).contains("recursive = true"),
        "{}",
        stderr(&o)
    );
    assert_eq!(sha256(&img), before);
    assert!(listing(&outdir).is_empty(), "{:?}", listing(&outdir));
}

#[test]
fn a_symlink_target_longer_than_a_block_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    let img = d.join("in.img");
    assert!(mkfs(&tree, &img, &["-t", "ext4", "-b", "1024"], "16M")
        .status
        .success());
    let spec = d.join("long.toml");
    let target = format!("/{}", "t".repeat(1100));
    fs::write(
        &spec,
        format!("[[entry]]\npath = \"/etc/long\"\ntype = \"symlink\"\ntarget = \"{target}\"\n"),
    )
    .unwrap();
    let pw = write_password(d, PASSWORD);
    let outdir = d.join("out");
    fs::create_dir(&outdir).unwrap();
    let before = sha256(&img);
    let o = run(
        provision_offline(&img, &outdir.join("x.img"), "azaion", &pw)
            .arg("--overlay")
            .arg(&spec),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/etc/long") && stderr(&o).contains("1 to 1023 bytes"),
        "{}",
        stderr(&o)
    );
    assert_eq!(sha256(&img), before);
    assert!(listing(&outdir).is_empty(), "{:?}", listing(&outdir));
}

/// `verify --no-credentials` on raw ext4 (mke2fs -d), its img2simg sparse
/// form and zstd/xz compressed copies: a fresh base passes, a stamped
/// image fails naming device.conf. Metadata only: the password is never
/// read, so never shown.
#[test]
fn no_credentials_on_raw_sparse_and_compressed_ext4() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let clean = small_ext4(d, "clean.img");
    let stamped = d.join("stamped.img");
    let pw = write_password(d, PASSWORD);
    let o = run(&mut provision_offline(&clean, &stamped, "azaion", &pw));
    assert!(o.status.success(), "{}", stderr(&o));
    let sparse = require(
        run(std::process::Command::new("bash")
            .arg("-c")
            .arg("command -v img2simg"))
        .status
        .success(),
        "img2simg (android-sdk-libsparse-utils) not installed",
    );
    for (name, image, want) in [("clean", &clean, 0), ("stamped", &stamped, 1)] {
        let mut forms = vec![image.clone()];
        if sparse {
            let simg = d.join(format!("{name}.simg"));
            sh(&format!("img2simg {} {}", image.display(), simg.display()));
            forms.push(simg);
        }
        for (codec, suffix) in [("zstd -q -k -f", "zst"), ("xz -k -f -T1", "xz")] {
            sh(&format!("{codec} {}", image.display()));
            forms.push(PathBuf::from(format!("{}.{suffix}", image.display())));
        }
        for form in &forms {
            let o = run(bin().args(["verify", "--no-credentials"]).arg(form));
            let out = stdout(&o);
            assert_eq!(
                o.status.code(),
                Some(want),
                "{}: {out}{}",
                form.display(),
                stderr(&o)
            );
            assert!(!out.contains(PASSWORD));
            if want == 0 {
                assert!(out.contains("pass absent"), "{out}");
                assert!(out.contains("clean, no device credentials"), "{out}");
            } else {
                assert!(
                    out.contains("FAIL absent                 /etc/azaion/device.conf is present: file 0600 1001:1001, 106 bytes"),
                    "{}: {out}",
                    form.display()
                );
            }
        }
    }
}
