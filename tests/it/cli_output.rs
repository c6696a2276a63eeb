//! What the CLI prints around the result: progress only on a terminal,
//! -v/-vv detail, and never a secret in any of it.

use crate::common;

use std::process::Command;

use common::*;
use imprint::stub::{Fault, StubServer};
use tempfile::TempDir;

/// Runs a command line under a pseudo-terminal (util-linux `script`), so
/// stderr is a terminal; returns everything the terminal showed.
fn on_a_terminal(command_line: &str) -> String {
    let o = Command::new("script")
        .args(["-qec", command_line, "/dev/null"])
        .env("IMPRINT_PROGRESS_DELAY_MS", "0")
        .env_remove("IMPRINT_API_TOKEN")
        .output()
        .expect("`script` (Debian package bsdutils) runs commands on a pseudo-terminal");
    assert!(
        o.status.success(),
        "{command_line}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn progress_appears_only_on_a_terminal_and_not_with_quiet() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = small_ext4(d, "in.img");
    let pw = write_password(d, PASSWORD);
    let exe = env!("CARGO_BIN_EXE_imprint");
    let line = |out: &str, extra: &str| {
        format!(
            "{exe} provision {extra} --serial {SERIAL} --offline --password-file {} --image {} --output {}",
            pw.display(),
            img.display(),
            d.join(out).display()
        )
    };
    let shown = on_a_terminal(&line("a.img", ""));
    assert!(
        shown.contains("ETA") && shown.contains("writing"),
        "{shown}"
    );
    assert!(!shown.contains(PASSWORD));
    let quiet = on_a_terminal(&line("b.img", "--quiet"));
    assert!(!quiet.contains("ETA"), "{quiet}");

    // Not a terminal: no bar, no escape sequences.
    let o = run(provision_offline(&img, &d.join("c.img"), "root", &pw)
        .env("IMPRINT_PROGRESS_DELAY_MS", "0"));
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(
        !err.contains("ETA") && !err.contains('\u{1b}') && !err.contains('\r'),
        "{err:?}"
    );
}

#[test]
fn verbose_levels_add_detail_but_no_secret() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
    let input = d.join("in.tar.gz");
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let server = StubServer::start().unwrap();
    server.require_token(Some("token-abc-123".into()));
    server.push_fault("POST", "/users", Fault::Status(503));
    let token = d.join("token");
    std::fs::write(&token, "token-abc-123\n").unwrap();
    let out = d.join("out.tar.gz");
    let o = run(provision_online(&input, &out, &server.url())
        .arg("-vv")
        .arg("--api-token-file")
        .arg(&token));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("tar plan") && err.contains("first_change"),
        "{err}"
    );
    assert!(err.contains("retrying") && err.contains("503"), "{err}");
    let password = server.password_of(EMAIL).unwrap();
    for secret in [password.as_str(), "token-abc-123"] {
        assert!(
            !err.contains(secret) && !stdout(&o).contains(secret),
            "secret leaked:\n{err}"
        );
    }
    // Without -v the retry is not mentioned; -v alone shows it.
    server.push_fault("PATCH", "/users/password", Fault::Status(503));
    let o = run(provision_online(&input, &out, &server.url())
        .args(["--force", "--api-token-file"])
        .arg(&token));
    assert!(o.status.success());
    assert!(!stderr(&o).contains("retrying"));

    // -v on a terminal (it used to matter: colour support) runs cleanly.
    let shown = on_a_terminal(&format!(
        "{} -v verify {}",
        env!("CARGO_BIN_EXE_imprint"),
        d.join("out.tar.gz").display()
    ));
    assert!(shown.contains("all checks passed"), "{shown}");
}

#[test]
fn demo_runs_end_to_end_and_without_e2fsprogs_skips_only_the_sparse_part() {
    let dir = TempDir::new().unwrap();
    let o = run(bin().arg("demo").arg("--dir").arg(dir.path()));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    for name in ["AZJN-0042-rootfs.tar.gz", "AZJN-0043-system.img"] {
        assert!(dir.path().join(name).is_file(), "{name}: {}", stdout(&o));
        assert!(dir.path().join(format!("{name}.sha256")).is_file());
    }
    assert!(stdout(&o).contains("login"));

    let dir = TempDir::new().unwrap();
    let o = run(bin()
        .env("IMPRINT_LIBEXT2FS", "/nonexistent/libext2fs.so.2")
        .arg("demo")
        .arg("--dir")
        .arg(dir.path()));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("skipping the sparse system.img"),
        "{}",
        stdout(&o)
    );
    assert!(dir.path().join("AZJN-0042-rootfs.tar.gz").is_file());
}

/// The owner rule: without --owner, device.conf is root's, and an image
/// with the Loader's service user `azaion` (which cannot read a root-owned
/// 0600 file) gets a warning on stderr and in the JSON documents, once per
/// batch; --owner (azaion, or root:root on purpose) and images without
/// that user are quiet, and their documents have no `warnings` field.
#[test]
fn a_default_owner_the_service_user_cannot_read_warns() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let with_user = d.join("with.tar");
    make_tar(&make_rootfs(d, "with"), &with_user, "tar", "gnu", true);
    let plain_root = make_rootfs(d, "plain");
    std::fs::write(
        plain_root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n",
    )
    .unwrap();
    let without_user = d.join("without.tar");
    make_tar(&plain_root, &without_user, "tar", "gnu", true);
    let provision = |input: &std::path::Path, name: &str, extra: &[&str]| {
        let o = run(bin()
            .args(["provision", "--offline", "--serial", SERIAL, "--json"])
            .arg("--password-file")
            .arg(&pw)
            .arg("--image")
            .arg(input)
            .arg("--output")
            .arg(d.join(name))
            .args(extra));
        assert!(o.status.success(), "{}", stderr(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (stderr(&o), doc)
    };
    let (err, doc) = provision(&with_user, "a.tar", &[]);
    assert!(
        err.contains("imprint: warning: ")
            && err.contains("device.conf gets owner 0:0 and mode 0600, but the image has the user azaion (uid 1001)")
            && err.contains("pass --owner azaion"),
        "{err}"
    );
    assert_eq!(doc["device_conf"]["uid"], 0);
    let warnings = doc["warnings"].as_array().expect("a warnings field");
    assert_eq!(warnings.len(), 1);
    assert!(err.contains(warnings[0].as_str().unwrap()));
    for (input, name, extra) in [
        (&with_user, "b.tar", &["--owner", "azaion"][..]),
        (&with_user, "c.tar", &["--owner", "root:root"]),
        (&without_user, "d.tar", &[]),
    ] {
        let (err, doc) = provision(input, name, extra);
        assert!(!err.contains("warning"), "{extra:?}: {err}");
        assert!(doc.get("warnings").is_none(), "{extra:?}: {doc}");
    }
    // A batch says it once, and its document carries it once.
    let out = d.join("out");
    let o = run(bin()
        .args(["provision", "--offline", "--json", "--serial", "AZJN-0001"])
        .args(["--serial", "AZJN-0002", "--password-file"])
        .arg(&pw)
        .arg("--image")
        .arg(&with_user)
        .arg("--output")
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("imprint: warning:").count(),
        1,
        "{}",
        stderr(&o)
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 1);
}

/// An overlay that writes `{password}` into a file the group or others
/// can read is warned about, on stderr and in the JSON document, as the
/// owner rule is; the same file 0600 is quiet.
#[test]
fn a_password_in_a_file_others_can_read_warns() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let pw = write_password(d, PASSWORD);
    let input = d.join("in.tar");
    make_tar(&make_rootfs(d, "root"), &input, "tar", "gnu", true);
    for (mode, says) in [
        (
            "0644",
            Some("mode 0644, which lets every user of the device read it"),
        ),
        ("0640", Some("mode 0640, which lets its group read it")),
        ("0600", None),
    ] {
        let spec = d.join(format!("env-{mode}.toml"));
        std::fs::write(
            &spec,
            format!("[[entry]]\npath='/etc/azaion/env'\ntype='file'\nmode='{mode}'\nowner='{{owner}}'\ncontent='PW={{password}}\\n'\n"),
        )
        .unwrap();
        let o = run(bin()
            .args([
                "provision",
                "--offline",
                "--serial",
                SERIAL,
                "--json",
                "--owner",
                "azaion",
            ])
            .arg("--password-file")
            .arg(&pw)
            .arg("--overlay")
            .arg(&spec)
            .arg("--image")
            .arg(&input)
            .arg("--output")
            .arg(d.join(format!("out-{mode}.tar"))));
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        match says {
            Some(says) => {
                let want = format!("imprint: warning: the overlay writes {{password}} into /etc/azaion/env with {says}; give the entry mode \"0600\"");
                assert!(err.contains(&want), "{mode}: {err}");
                let warnings = doc["warnings"].as_array().expect("a warnings field");
                assert_eq!(warnings.len(), 1, "{mode}: {doc}");
                assert!(err.contains(warnings[0].as_str().unwrap()));
                assert!(
                    !err.contains(PASSWORD)
                        && !o
                            .stdout
                            .windows(PASSWORD.len())
                            .any(|w| w == PASSWORD.as_bytes())
                );
            }
            None => {
                assert!(!err.contains("warning"), "{mode}: {err}");
                assert!(doc.get("warnings").is_none(), "{mode}: {doc}");
            }
        }
    }
}
