//! Shared helpers for the integration tests: run the real binary, build
//! rootfs trees and archives with the real tools, inspect outputs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const SERIAL: &str = "AZJN-0042";
pub const EMAIL: &str = "azaion-jetson-0042@azaion.com";

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imprint"));
    // The scan cache of test runs stays out of the user's own.
    // (under target/tmp, which cargo keeps for tests, not the system's /tmp)
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("imprint-test-cache-{}", std::process::id()));
    c.env_remove("IMPRINT_API_TOKEN")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("IMPRINT_CACHE_DIR")
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null());
    c
}

/// Runs a command, returning its output; panics if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a shell command line and asserts success.
pub fn sh(script: &str) -> Output {
    let o = run(Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script));
    assert!(
        o.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    o
}

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Copies testdata/rootfs into `dir/name` with root ownership and fixed
/// times, and adds a few more entries that exercise the tar paths: a long
/// name, a symlink, a hard link, an empty dir and a bigger binary-ish file.
pub fn make_rootfs(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    sh(&format!(
        "cp -a {src}/. {root}/ 2>/dev/null || (mkdir -p {root} && cp -a {src}/. {root}/)",
        src = testdata().join("rootfs").display(),
        root = root.display()
    ));
    let long_dir = root.join("usr/share/doc/a-package-with-a-rather-long-name-for-testing-long-paths/and-a-subdirectory-too");
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(
        long_dir.join("changelog-with-a-long-file-name.txt"),
        "long name entry\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    std::os::unix::fs::symlink("../usr/bin/azaion-loader", root.join("etc/loader-link")).unwrap();
    fs::hard_link(
        root.join("etc/hostname"),
        root.join("etc/hostname.hardlink"),
    )
    .unwrap();
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(root.join("usr/bin/blob"), blob).unwrap();
    fs::set_permissions(root.join("usr/bin/blob"), fs::Permissions::from_mode(0o755)).unwrap();
    sh(&format!(
        "chown -R 0:0 {r} && chown -R 1001:1001 {r}/home/azaion && find {r} -exec touch -h -d @1700000000 {{}} +",
        r = root.display()
    ));
    root
}

/// Compressor command for a file extension used by the tests.
pub fn compressor(ext: &str) -> &'static str {
    match ext {
        "tar" => "cat",
        "tar.gz" => "gzip -6 -n",
        "tbz2" => "bzip2 -9",
        "tar.zst" => "zstd -q -3",
        "tar.xz" => "xz -6",
        _ => panic!("unknown extension {ext}"),
    }
}

pub const EXTENSIONS: [&str; 5] = ["tar", "tar.gz", "tbz2", "tar.zst", "tar.xz"];

/// Archives `root` with GNU tar: `./`-prefixed paths when `dot` (tar -C
/// root .), else plain `etc/...` paths; `format` is gnu, pax or ustar.
pub fn make_tar(root: &Path, out: &Path, ext: &str, format: &str, dot: bool) {
    let what = if dot {
        ".".to_string()
    } else {
        fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    sh(&format!(
        "tar --format={format} --sort=name -C {root} -cf - {what} | {comp} > {out}",
        root = root.display(),
        comp = compressor(ext),
        out = out.display()
    ));
}

/// Decompresses any of the test formats to raw tar bytes.
pub fn decompress(path: &Path) -> Vec<u8> {
    let o = sh(&format!(
        "case $(head -c4 {p} | od -An -tx1 | tr -d ' ') in \
           1f8b*) gzip -dc {p};; 425a68*) bzip2 -dc {p};; 28b52ffd) zstd -dc {p};; fd377a58) xz -dc {p};; *) cat {p};; esac",
        p = path.display()
    ));
    o.stdout
}

/// What an extracted tree holds: path -> (kind, mode, uid, gid, mtime, content or link target).
pub type Tree = BTreeMap<String, (char, u32, u32, u32, i64, Vec<u8>)>;

pub fn read_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, data) = if m.file_type().is_symlink() {
                (
                    'l',
                    fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .as_bytes()
                        .to_vec(),
                )
            } else if m.is_dir() {
                ('d', Vec::new())
            } else {
                ('f', fs::read(&p).unwrap())
            };
            out.insert(
                rel,
                (kind, m.mode() & 0o7777, m.uid(), m.gid(), m.mtime(), data),
            );
            if kind == 'd' {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Extracts an archive with GNU tar or bsdtar (both decompress by
/// themselves) keeping owners and modes.
pub fn extract(tool: &str, archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let cmd = match tool {
        "gnutar" => format!(
            "tar --same-owner -xpf {} -C {}",
            archive.display(),
            into.display()
        ),
        "bsdtar" => format!("bsdtar -xpf {} -C {}", archive.display(), into.display()),
        _ => unreachable!(),
    };
    sh(&cmd);
}

pub fn sha256(path: &Path) -> String {
    let o = sh(&format!("sha256sum {}", path.display()));
    stdout(&o).split_whitespace().next().unwrap().to_string()
}

/// Names of every file in `dir`, hidden ones included, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn write_password(dir: &Path, pw: &str) -> PathBuf {
    let p = dir.join("password.txt");
    fs::write(&p, format!("{pw}\n")).unwrap();
    p
}

/// device.conf as imprint writes it.
pub fn conf_text(email: &str, password: &str) -> String {
    format!("AZAION_DEVICE_EMAIL={email}\nAZAION_DEVICE_PASSWORD={password}\n")
}

// ---- ext2/3/4 and sparse images -------------------------------------------

pub const PASSWORD: &str = "5f0c2a9e8b7d6c4e3f2a1b0c9d8e7f6a";

/// A rootfs tree for mke2fs -d: users root, azaion (1001) and big (32-bit
/// ids), `extra_etc` more files in /etc, and /etc/azaion as `azaion` says.
pub fn ext4_tree(dir: &Path, extra_etc: usize, azaion: Azaion) -> PathBuf {
    let root = dir.join("tree");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nazaion:x:1001:1001::/home/azaion:/bin/bash\nbig:x:4000000000:4000000001::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nazaion:x:1001:\nbig:x:4000000001:\n",
    )
    .unwrap();
    fs::write(root.join("etc/hostname"), "jetson\n").unwrap();
    fs::write(root.join("usr/bin/azaion-loader"), vec![0x7fu8; 5000]).unwrap();
    for i in 0..extra_etc {
        fs::write(
            root.join(format!("etc/conf-entry-with-a-long-name-{i:05}")),
            format!("{i}\n"),
        )
        .unwrap();
    }
    match azaion {
        Azaion::Absent => {}
        Azaion::EmptyDir => {
            fs::create_dir(root.join("etc/azaion")).unwrap();
            fs::set_permissions(root.join("etc/azaion"), fs::Permissions::from_mode(0o750))
                .unwrap();
        }
        Azaion::OldConf => {
            fs::create_dir(root.join("etc/azaion")).unwrap();
            fs::write(
                root.join("etc/azaion/device.conf"),
                "AZAION_DEVICE_EMAIL=old@example\nAZAION_DEVICE_PASSWORD=old\n",
            )
            .unwrap();
            fs::set_permissions(
                root.join("etc/azaion/device.conf"),
                fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }
        Azaion::Symlink => std::os::unix::fs::symlink("/tmp", root.join("etc/azaion")).unwrap(),
        Azaion::File => fs::write(root.join("etc/azaion"), "not a dir\n").unwrap(),
    }
    root
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Azaion {
    Absent,
    EmptyDir,
    OldConf,
    Symlink,
    File,
}

/// Runs `mke2fs -F -q -d tree OPTS img SIZE` (the root directory owned by
/// 0:0; other entries keep the tree's owners).
pub fn mkfs(tree: &Path, img: &Path, opts: &[&str], size: &str) -> Output {
    let _ = fs::remove_file(img);
    run(Command::new("mke2fs")
        .args(["-F", "-q", "-E", "root_owner=0:0"])
        .args(opts)
        .arg("-d")
        .arg(tree)
        .arg(img)
        .arg(size))
}

/// Output of a debugfs request (stderr, with its banner, dropped).
pub fn debugfs(img: &Path, request: &str) -> String {
    let o = run(Command::new("debugfs").arg("-R").arg(request).arg(img));
    stdout(&o)
}

pub fn debugfs_write(img: &Path, request: &str) {
    let o = run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(request)
        .arg(img));
    assert!(
        o.status.success(),
        "debugfs -w -R {request}: {}",
        stderr(&o)
    );
}

/// Asserts `e2fsck -fn` finds nothing wrong.
pub fn assert_fsck_clean(img: &Path) {
    let o = run(Command::new("e2fsck").arg("-fn").arg(img));
    assert!(
        o.status.success(),
        "e2fsck -fn {} exited {:?}:\n{}",
        img.display(),
        o.status.code(),
        stdout(&o)
    );
}

/// Mode, uid and gid of a path as debugfs's `stat` shows them.
pub fn debugfs_stat(img: &Path, path: &str) -> (u32, u32, u32) {
    let text = debugfs(img, &format!("stat {path}"));
    let field = |key: &str| -> i64 {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in stat {path}:\n{text}"));
        text[at + key.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mode = u32::from_str_radix(&field("Mode:").to_string(), 8).unwrap();
    // debugfs prints ids with %d: 32-bit ids above 2^31 come out negative.
    (mode, field("User:") as u32, field("Group:") as u32)
}

/// The names in an image directory, from debugfs `ls -p`.
pub fn debugfs_names(img: &Path, dir: &str) -> Vec<String> {
    debugfs(img, &format!("ls -p {dir}"))
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect()
}

// ---- capabilities ------------------------------------------------------

/// Whether this run is CI's (.ci/run sets CI=true, runs as root and
/// installs every tool the tests use).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether a check that needs a capability of the machine (root, loop
/// devices, a tool) may run. Without the capability the check is skipped
/// with a note that shows even when cargo captures the test's output; but
/// under CI, which has every capability, that is a failure, so no check is
/// ever skipped there unnoticed.
pub fn require(available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !under_ci(),
        "{why}: CI runs as root with every tool .ci/run installs, so this check must run"
    );
    // Straight to the process's stderr: the test harness captures only
    // eprintln!, and a skip should not pass unseen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    false
}

/// Whether the machine lets us loop-mount an ext4 image (root and loop
/// devices), found once by mounting a small image mke2fs just made.
pub fn can_loop_mount() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (img, mnt) = (dir.path().join("probe.img"), dir.path().join("mnt"));
        fs::create_dir(&mnt).unwrap();
        let made = run(Command::new("mke2fs")
            .args(["-F", "-q", "-t", "ext4"])
            .arg(&img)
            .arg("4M"));
        assert!(made.status.success(), "mke2fs: {}", stderr(&made));
        let mounted = run(Command::new("mount")
            .args(["-o", "ro,loop"])
            .arg(&img)
            .arg(&mnt));
        if mounted.status.success() {
            sh(&format!("umount {}", mnt.display()));
        }
        mounted.status.success()
    })
}

/// Mounts a tmpfs of `size` at `at`; false where the machine does not
/// allow it (not root).
pub fn mount_tmpfs(at: &Path, size: &str) -> bool {
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}")])
        .arg("tmpfs")
        .arg(at))
    .status
    .success()
}

/// Mounts `img` read-only through the kernel's ext4 driver and returns
/// `stat -c '%a %u %g'` and the content of `path`; None where the machine
/// does not allow loop mounts (see [`require`]). Where it does, an image
/// the kernel refuses fails the test.
pub fn kernel_read(img: &Path, path: &str) -> Option<(String, String)> {
    kernel_read_at(img, None, path)
}

/// As [`kernel_read`], for the filesystem at `(offset, len)` of `img` (a
/// partition of a disk image: `mount -o ro,loop,offset=N,sizelimit=L`).
pub fn kernel_read_at(
    img: &Path,
    region: Option<(u64, u64)>,
    path: &str,
) -> Option<(String, String)> {
    if !require(
        can_loop_mount(),
        "kernel mount check: mount -o ro,loop needs root and loop devices",
    ) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let options = match region {
        Some((offset, len)) => format!("ro,loop,offset={offset},sizelimit={len}"),
        None => "ro,loop".to_string(),
    };
    let o = run(Command::new("mount")
        .args(["-o", &options])
        .arg(img)
        .arg(&mnt));
    assert!(
        o.status.success(),
        "the kernel refuses {} ({options}): {}",
        img.display(),
        stderr(&o).trim()
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let file = mnt.join(path.trim_start_matches('/'));
    let meta = fs::metadata(&file).unwrap();
    let stat = format!(
        "{:o} {} {}",
        meta.permissions().mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    Some((stat, fs::read_to_string(&file).unwrap()))
}

/// `imprint provision --offline` of one image with a password file.
pub fn provision_offline(input: &Path, output: &Path, owner: &str, pw: &Path) -> Command {
    let mut c = bin();
    c.args([
        "provision",
        "--serial",
        SERIAL,
        "--offline",
        "--owner",
        owner,
    ])
    .arg("--password-file")
    .arg(pw)
    .arg("--image")
    .arg(input)
    .arg("--output")
    .arg(output);
    c
}

/// A 16 MiB ext4 image of [`ext4_tree`] (no /etc/azaion) at `dir/name`.
pub fn small_ext4(dir: &Path, name: &str) -> PathBuf {
    let tree = ext4_tree(dir, 0, Azaion::Absent);
    let img = dir.join(name);
    let o = mkfs(&tree, &img, &["-t", "ext4"], "16M");
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    img
}

/// `imprint provision` of one image against the API at `url`.
pub fn provision_online(input: &Path, output: &Path, url: &str) -> Command {
    let mut c = bin();
    c.args(["provision", "--serial", SERIAL, "--api-url", url, "--image"])
        .arg(input)
        .arg("--output")
        .arg(output);
    c
}

/// Runs `cmd` and returns its exit status and the peak resident memory
/// of the process (and any it waited for), from wait4's rusage.
// wait4 below reaps the child; std's `Child` never learns of it.
#[allow(clippy::zombie_processes)]
pub fn peak_rss(cmd: &mut Command, log: &Path) -> (bool, u64) {
    let child = cmd
        .stdout(fs::File::create(log).unwrap())
        .stderr(fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with pointers to locals; `child` is
    // never waited for again.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4: {}", std::io::Error::last_os_error());
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, usage.ru_maxrss as u64 * 1024)
}
