//! The Debian package: packaging/deb.sh builds it with cargo-deb from the
//! binary under test, and it is installed into a scratch root with
//! `dpkg -x` and run from there.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use tempfile::TempDir;

fn tool_runs(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_deb_installs_and_runs() {
    let root_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // cargo-deb packages target/release/imprint: the binary under test
    // only when the tests are built with --release (as CI runs them).
    let bin = Path::new(env!("CARGO_BIN_EXE_imprint"));
    let release = root_dir.join("target/release/imprint");
    let same = bin.canonicalize().ok() == release.canonicalize().ok();
    if !require(
        same,
        "the package is built from target/release/imprint: run the tests with --release",
    ) || !require(
        tool_runs(Command::new("cargo").args(["deb", "--version"])),
        "cargo-deb (cargo install cargo-deb --locked, as .ci/run does)",
    ) || !require(
        tool_runs(Command::new("dpkg-deb").arg("--version")),
        "dpkg-deb",
    ) {
        return;
    }
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("deb");
    let o = run(Command::new(root_dir.join("packaging/deb.sh"))
        .arg("--no-build")
        .arg("--output")
        .arg(&out)
        .current_dir(root_dir));
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
    assert!(depends.contains("libc6"), "{depends}");

    // Installed into a scratch root, as dpkg would lay it out.
    let root = dir.path().join("root");
    let o = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    assert!(o.status.success(), "{}", stderr(&o));
    let installed = root.join("usr/bin/imprint");
    let o = run(Command::new(&installed).arg("--version"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("imprint {}", env!("CARGO_PKG_VERSION"))
    );
    let man = root.join("usr/share/man/man1/imprint.1.gz");
    let page = stdout(&sh(&format!("gzip -dc {}", man.display())));
    assert!(
        page.starts_with(".ie") || page.contains(".TH imprint"),
        "{page}"
    );
    assert!(page.contains("provision"));
    // A page per subcommand, with its flags.
    let provision = root.join("usr/share/man/man1/imprint-provision.1.gz");
    let page = stdout(&sh(&format!("gzip -dc {}", provision.display())));
    assert!(page.contains("skip\\-existing"), "{page}");
    let bash = root.join("usr/share/bash-completion/completions/imprint");
    let o = sh(&format!(
        "bash -c 'source {} && complete -p imprint'",
        bash.display()
    ));
    assert!(stdout(&o).contains("imprint"), "{}", stdout(&o));
    for f in [
        "usr/share/zsh/vendor-completions/_imprint",
        "usr/share/fish/vendor_completions.d/imprint.fish",
        "usr/share/doc/imprint/README.md",
        "usr/share/doc/imprint/usage.md",
        "usr/share/doc/imprint/formats.md",
        "usr/share/doc/imprint/json.md",
        "usr/share/doc/imprint/copyright",
        "usr/share/doc/imprint/recipes/l4t/initrd-station.sh",
    ] {
        assert!(root.join(f).is_file(), "{f} is not in the package");
    }

    // The installed binary does real work: libext2fs comes from the host
    // at run time.
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let input = small_ext4(&work, "rootfs.ext4");
    let pw = write_password(&work, PASSWORD);
    let output = work.join("AZJN-0042-rootfs.ext4");
    let o = run(Command::new(&installed)
        .args([
            "provision",
            "--offline",
            "--serial",
            SERIAL,
            "--owner",
            "azaion",
        ])
        .arg("--password-file")
        .arg(&pw)
        .arg("--image")
        .arg(&input)
        .arg("--output")
        .arg(&output));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(Command::new(&installed)
        .arg("verify")
        .arg(&output)
        .args(["--serial", SERIAL, "--owner", "azaion"]));
    assert!(o.status.success(), "{}", stdout(&o));
}
