//! The Debian package as a flashing station gets it: packaging/deb.sh
//! builds it (cargo-zigbuild, linked against glibc 2.31's symbols, then
//! cargo-deb), and it is installed with `apt install` into a clean Debian
//! bullseye root (glibc 2.31, as Ubuntu 20.04, the oldest host NVIDIA
//! supports for current JetPack) and run there in a chroot.
//!
//! Slow: a whole release build for the package's target and, the first
//! time, a debootstrap of bullseye (kept in target/debootstrap/). .ci/run
//! runs it with the other slow-tier tests (`cargo test --release --
//! --ignored`).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tempfile::TempDir;

/// The oldest glibc the package runs on: Ubuntu 20.04's and bullseye's.
const GLIBC: (u32, u32) = (2, 31);

fn tool_runs(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn root_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// PATH with zig and cargo-zigbuild where .ci/run installs them
/// (`pip install --target target/zigbuild-py`) first.
fn build_path() -> String {
    let py = root_dir().join("target/zigbuild-py");
    format!(
        "{}:{}:{}",
        py.join("bin").display(),
        py.join("ziglang").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The highest `GLIBC_x.y` version among the binary's dynamic symbols.
fn highest_glibc(binary: &Path) -> (u32, u32) {
    let o = run(Command::new("objdump").arg("-T").arg(binary));
    assert!(o.status.success(), "objdump: {}", stderr(&o));
    let text = stdout(&o);
    let versions: Vec<(u32, u32)> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some((major, minor))
        })
        .collect();
    assert!(!versions.is_empty(), "no GLIBC_ symbols in\n{text}");
    versions.into_iter().max().unwrap()
}

/// A clean Debian bullseye root, made once with debootstrap (minbase, with
/// libext2fs2 and e2fsprogs, which the package depends on and recommends)
/// and kept in target/debootstrap/bullseye; each test works on a copy.
fn bullseye_root() -> PathBuf {
    let cache = root_dir().join("target/debootstrap");
    let root = cache.join("bullseye");
    if !root.join("usr/bin/apt").exists() {
        let tmp = cache.join("bullseye.tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&cache).unwrap();
        let o = run(Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=libext2fs2,e2fsprogs",
                "bullseye",
            ])
            .arg(&tmp)
            .arg("http://deb.debian.org/debian"));
        assert!(
            o.status.success(),
            "debootstrap bullseye: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        fs::rename(&tmp, &root).unwrap();
    }
    root
}

/// `sh -c script` inside the chroot `root`, with a clean environment.
fn in_chroot(root: &Path, script: &str) -> std::process::Output {
    run(Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8"))
}

#[test]
#[ignore = "slow tier: a release build for glibc 2.31 and a debootstrap of bullseye (run by .ci/run)"]
fn the_deb_installs_with_apt_on_glibc_2_31_and_runs() {
    let is_root = stdout(&sh("id -u")).trim() == "0";
    let path = build_path();
    // Tools fail the test when missing; only the privilege is a skip
    // outside CI (tests/it/require.rs).
    require_installed(
        tool_runs(Command::new("cargo").args(["deb", "--version"])),
        "cargo-deb",
        "cargo install cargo-deb --locked, as .ci/run does",
    );
    require_installed(
        tool_runs(
            Command::new("cargo-zigbuild")
                .arg("--version")
                .env("PATH", &path),
        ) && tool_runs(Command::new("zig").arg("version").env("PATH", &path)),
        "cargo-zigbuild and zig",
        "pip install --target target/zigbuild-py ziglang cargo-zigbuild, as .ci/run does",
    );
    require_tools(&["dpkg-deb", "objdump", "debootstrap"]);
    if !require(is_root, "root, for debootstrap and chroot") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("deb");
    let o = run(Command::new(root_dir().join("packaging/deb.sh"))
        .arg("--output")
        .arg(&out)
        .env("PATH", &path)
        .current_dir(root_dir()));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let debs: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = &debs[0];
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("imprint_{}", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );

    let info = stdout(&run(Command::new("dpkg-deb").arg("--info").arg(deb)));
    let depends = info
        .lines()
        .find(|l| l.trim_start().starts_with("Depends:"))
        .unwrap_or_else(|| panic!("no Depends in\n{info}"));
    assert!(depends.contains("libext2fs2t64 | libext2fs2"), "{depends}");
    assert!(depends.contains("libc6 (>= 2.31)"), "{depends}");

    // The packaged binary needs no newer glibc symbol than 2.31.
    let unpacked = dir.path().join("unpacked");
    let o = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked));
    assert!(o.status.success(), "{}", stderr(&o));
    let highest = highest_glibc(&unpacked.join("usr/bin/imprint"));
    assert!(
        highest <= GLIBC,
        "the binary needs GLIBC_{}.{}",
        highest.0,
        highest.1
    );

    // apt installs it in a clean bullseye root, with what the root has.
    let root = dir.path().join("bullseye");
    let o = sh(&format!(
        "cp -a {} {}",
        bullseye_root().display(),
        root.display()
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = in_chroot(&root, "ldd --version | head -n1");
    assert!(
        stdout(&o).contains(" 2.31"),
        "not glibc 2.31: {}",
        stdout(&o)
    );
    fs::copy(deb, root.join("tmp").join(&name)).unwrap();
    let o = in_chroot(&root, &format!("apt-get install -y /tmp/{name}"));
    assert!(o.status.success(), "apt: {}\n{}", stdout(&o), stderr(&o));
    let o = in_chroot(&root, "dpkg -s imprint");
    assert!(
        stdout(&o).contains("Status: install ok installed"),
        "{}",
        stdout(&o)
    );
    let o = in_chroot(&root, "imprint --version");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("imprint {}", env!("CARGO_PKG_VERSION"))
    );

    // What the package puts where the README, --help and the man pages
    // say it is.
    for f in [
        "usr/share/man/man1/imprint.1.gz",
        "usr/share/man/man1/imprint-provision.1.gz",
        "usr/share/man/man1/imprint-manifest-merge.1.gz",
        "usr/share/bash-completion/completions/imprint",
        "usr/share/zsh/vendor-completions/_imprint",
        "usr/share/fish/vendor_completions.d/imprint.fish",
        "usr/share/doc/imprint/README.md",
        "usr/share/doc/imprint/copyright",
        "usr/share/doc/imprint/recipes/l4t/initrd-station.sh",
        "usr/share/imprint/overlays/README.md",
        "usr/share/imprint/overlays/device-conf.toml",
        "usr/share/imprint/overlays/examples/hostname.toml",
        "usr/share/imprint/overlays/examples/devices.csv",
    ] {
        assert!(root.join(f).is_file(), "{f} is not installed");
    }
    let page = stdout(&sh(&format!(
        "gzip -dc {}",
        root.join("usr/share/man/man1/imprint-provision.1.gz")
            .display()
    )));
    assert!(page.contains("skip\\-existing"), "{page}");
    let o = sh(&format!(
        "bash -c 'source {} && complete -p imprint'",
        root.join("usr/share/bash-completion/completions/imprint")
            .display()
    ));
    assert!(stdout(&o).contains("imprint"), "{}", stdout(&o));

    // Real work inside the root: a tarball stamped with the installed
    // example overlay and devices file, and an ext4 image made by
    // bullseye's mke2fs, stamped through bullseye's libext2fs; each
    // verified there.
    let tree = make_rootfs(dir.path(), "tree");
    make_tar(
        &tree,
        &root.join("tmp/rootfs.tar.gz"),
        "tar.gz",
        "gnu",
        true,
    );
    write_password(&root.join("tmp"), PASSWORD);
    let o = sh(&format!(
        "cp -a {} {}",
        tree.display(),
        root.join("tmp/tree").display()
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let ex = "/usr/share/imprint/overlays/examples";
    let script = format!(
        "set -e; cd /tmp; \
         mke2fs -q -F -t ext4 -d tree rootfs.ext4 32M; \
         imprint provision --offline --serial {SERIAL} --owner azaion \
           --password-file password.txt --devices {ex}/devices.csv --overlay {ex}/hostname.toml \
           --image rootfs.tar.gz --output out.tar.gz; \
         imprint verify out.tar.gz --serial {SERIAL} --owner azaion; \
         imprint cat out.tar.gz /etc/hostname; \
         imprint provision --offline --serial {SERIAL} --owner azaion \
           --password-file password.txt --image rootfs.ext4 --output out.ext4; \
         imprint verify out.ext4 --serial {SERIAL} --owner azaion; \
         e2fsck -fn out.ext4 >/dev/null"
    );
    let o = in_chroot(&root, &script);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("jetson-0042\n"), "{}", stdout(&o));
}
