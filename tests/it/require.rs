//! What a test needs of the machine, and what happens when it is missing:
//! one policy for the integration tests (`tests/it/common.rs` re-exports
//! this module) and the library's unit tests (`src/lib.rs` includes this
//! same file under `cfg(test)`).
//!
//! - A tool, a program some package installs (`sgdisk`, `bmaptool`,
//!   `img2simg`, ...): [`require_tool`] fails the test wherever it runs,
//!   naming the package. Anyone can install it, and a green run must mean
//!   that every check ran; a skip would let a contributor's run pass
//!   without the checks CI makes.
//! - A privilege of the machine (root, loop devices, tmpfs mounts) or a
//!   kernel or e2fsprogs feature the distribution may lack: [`require`]
//!   skips the check with a `SKIPPED:` line locally, where a contributor
//!   cannot be asked to run tests as root, and fails it under CI, which
//!   runs as root with every tool `.ci/run` installs, so no check is ever
//!   skipped there unnoticed.
#![allow(dead_code)]

use std::path::Path;

/// Whether this run is CI's (.ci/run sets CI=true, runs as root and
/// installs every tool the tests use).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether a check that needs a privilege of the machine may run. Without
/// it the check is skipped with a note that shows even when cargo captures
/// the test's output; under CI that is a failure.
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

/// Whether `name` is a program on PATH (or in the system's sbin
/// directories, where e2fsprogs puts its tools).
pub fn tool_exists(name: &str) -> bool {
    if name.contains('/') {
        return is_executable(Path::new(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails the test, locally and under CI alike, when the program `name` is
/// not installed, saying how to install it.
pub fn require_tool(name: &str) {
    require_installed(tool_exists(name), name, &how_to_install(name));
}

/// Fails the test, locally and under CI alike, when `what` (a tool, or a
/// package of one that is not a program on PATH) is not installed; `how`
/// says how to install it.
pub fn require_installed(present: bool, what: &str, how: &str) {
    assert!(
        present,
        "{what} is not installed, and this test needs it: {how} (.ci/run installs every tool the tests use)"
    );
}

/// [`require_tool`] for each of `names`.
pub fn require_tools(names: &[&str]) {
    for name in names {
        require_tool(name);
    }
}

/// Where each tool the tests run comes from, on Debian.
fn how_to_install(name: &str) -> String {
    let package = match name {
        "mke2fs" | "debugfs" | "e2fsck" | "tune2fs" | "resize2fs" => "e2fsprogs",
        "img2simg" | "simg2img" => "android-sdk-libsparse-utils",
        "sgdisk" => "gdisk",
        "cryptsetup" => "cryptsetup-bin",
        "sfdisk" => "fdisk",
        "bmaptool" => "bmap-tools",
        "bsdtar" => "libarchive-tools",
        "xz" => "xz-utils",
        "pzstd" => "zstd",
        "bzip2recover" => "bzip2",
        "setfacl" | "getfacl" => "acl",
        "setfattr" | "getfattr" => "attr",
        "dpkg-deb" => "dpkg",
        "objdump" => "binutils",
        "groff" => "groff-base",
        "mount" | "umount" => "mount",
        "taskset" | "script" => "util-linux",
        "/usr/bin/time" => "time",
        "fusermount" => "fuse3",
        "cargo-deb" => return "cargo install cargo-deb --locked --version 3.6.0".to_string(),
        other => other,
    };
    format!("apt-get install {package}")
}
