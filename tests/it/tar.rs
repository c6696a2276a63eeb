//! The tarball and staging-directory paths, end to end: the real binary
//! against the loopback stub API, outputs extracted by GNU tar and bsdtar.

use crate::common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use imprint::stub::{Fault, StubServer};

struct Case {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    input: PathBuf,
    out: PathBuf,
}

/// A rootfs tree, its archive with `ext`, and an empty output directory.
fn case(ext: &str, format: &str, dot: bool) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let root = make_rootfs(&dir, "rootfs");
    let input = dir.join(format!("rootfs.{ext}"));
    make_tar(&root, &input, ext, format, dot);
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    Case {
        _dir: tmp,
        dir,
        root,
        input,
        out,
    }
}

fn provision(c: &Case, server: &StubServer, extra: &[&str]) -> std::process::Output {
    let mut cmd = bin();
    cmd.args(["provision", "--serial", SERIAL, "--api-url", &server.url()])
        .arg("--image")
        .arg(&c.input)
        .arg("--output")
        .arg(format!("{}/", c.out.display()))
        .args(extra);
    run(&mut cmd)
}

fn output_of(c: &Case) -> PathBuf {
    c.out.join(format!(
        "{SERIAL}-{}",
        c.input.file_name().unwrap().to_string_lossy()
    ))
}

/// Every entry of the input is in the output unchanged, and the output has
/// exactly device.conf (and etc/azaion when `new_dir`) more.
fn check_extracted(c: &Case, tool: &str, server: &StubServer, owner: (u32, u32), new_dir: bool) {
    let output = output_of(c);
    let a = c.dir.join(format!("x-in-{tool}"));
    let b = c.dir.join(format!("x-out-{tool}"));
    extract(tool, &c.input, &a);
    extract(tool, &output, &b);
    let before = read_tree(&a);
    let mut after = read_tree(&b);
    let conf = after
        .remove("etc/azaion/device.conf")
        .expect("device.conf in the output");
    let password = server.password_of(EMAIL).expect("account on the server");
    assert_eq!(conf.0, 'f');
    assert_eq!(conf.1, 0o600, "{tool}: mode");
    assert_eq!((conf.2, conf.3), owner, "{tool}: owner");
    assert_eq!(conf.4, 1_700_000_000, "{tool}: mtime is etc/'s");
    assert_eq!(
        String::from_utf8(conf.5).unwrap(),
        conf_text(EMAIL, &password)
    );
    if new_dir {
        let d = after.remove("etc/azaion").expect("etc/azaion created");
        assert_eq!((d.0, d.1, d.2, d.3, d.4), ('d', 0o755, 0, 0, 1_700_000_000));
    }
    let mut before = before;
    before.remove("etc/azaion/device.conf");
    if !new_dir {
        assert_eq!(
            before.get("etc/azaion").map(|e| e.0),
            after.get("etc/azaion").map(|e| e.0)
        );
    }
    assert_eq!(before.len(), after.len(), "{tool}: entry count");
    for (path, entry) in &before {
        assert_eq!(after.get(path), Some(entry), "{tool}: {path} differs");
    }
}

#[test]
fn every_compression_round_trips_through_gnu_tar_and_bsdtar() {
    let server = StubServer::start().unwrap();
    for ext in EXTENSIONS {
        let c = case(ext, "gnu", true);
        let o = provision(&c, &server, &["--owner", "azaion"]);
        assert!(o.status.success(), "{ext}: {}", stderr(&o));
        let output = output_of(&c);
        // Same compression as the input, by magic bytes.
        let magic = |p: &Path| fs::read(p).unwrap()[..4].to_vec();
        if ext != "tar" {
            assert_eq!(magic(&output), magic(&c.input), "{ext}: compression kept");
        }
        for tool in ["gnutar", "bsdtar"] {
            check_extracted(&c, tool, &server, (1001, 1001), true);
        }
        // 0600 output, sidecar that sha256sum -c accepts.
        assert_eq!(
            fs::metadata(&output).unwrap().permissions().mode() & 0o777,
            0o600
        );
        sh(&format!(
            "cd {} && sha256sum -c --strict {}.sha256",
            c.out.display(),
            output.file_name().unwrap().to_string_lossy()
        ));
        // The input is untouched and only the image and sidecar are left.
        assert_eq!(listing(&c.out).len(), 2, "{ext}: {:?}", listing(&c.out));
        let entries = stdout(&sh(&format!("tar -tvf {}", output.display())));
        assert_eq!(entries.matches("etc/azaion/device.conf").count(), 1);
        assert!(
            entries.contains("azaion/azaion"),
            "{ext}: uname/gname from the image:\n{entries}"
        );
    }
}

#[test]
fn untouched_bytes_are_identical_and_only_appended_at_the_end() {
    let server = StubServer::start().unwrap();
    for (format, dot) in [
        ("gnu", true),
        ("pax", false),
        ("ustar", true),
        ("gnu", false),
    ] {
        let c = case("tar", format, dot);
        let o = provision(&c, &server, &[]);
        assert!(o.status.success(), "{format}: {}", stderr(&o));
        let input = fs::read(&c.input).unwrap();
        let output = fs::read(output_of(&c)).unwrap();
        // The input's entries end where its zero blocks begin.
        let end = (0..input.len() / 512)
            .find(|i| input[i * 512..(i + 1) * 512].iter().all(|&b| b == 0))
            .unwrap()
            * 512;
        assert_eq!(
            &output[..end],
            &input[..end],
            "{format}: prefix kept byte for byte"
        );
        assert_eq!(output.len() % 10240, 0, "{format}: record padding kept");
        let names = stdout(&sh(&format!("tar -tf {}", output_of(&c).display())));
        let prefix = if dot { "./" } else { "" };
        assert!(
            names.contains(&format!("\n{prefix}etc/azaion/\n")),
            "{format}: {names}"
        );
        // The new entries, then etc/ again: GNU tar sets its mtime after
        // etc/azaion went into it.
        assert!(
            names.ends_with(&format!("{prefix}etc/azaion/device.conf\n{prefix}etc/\n")),
            "{names}"
        );
        assert!(names.contains("changelog-with-a-long-file-name.txt"));
        for tool in ["gnutar", "bsdtar"] {
            check_extracted(&c, tool, &server, (0, 0), true);
        }
    }
}

#[test]
fn existing_device_conf_is_replaced_in_place() {
    let server = StubServer::start().unwrap();
    for (ext, format) in [("tar", "pax"), ("tar.gz", "gnu"), ("tbz2", "ustar")] {
        let tmp = tempfile::tempdir().unwrap();
        let root = make_rootfs(tmp.path(), "rootfs");
        fs::create_dir(root.join("etc/azaion")).unwrap();
        fs::write(root.join("etc/azaion/device.conf"), conf_text(EMAIL, "old")).unwrap();
        fs::write(root.join("etc/azaion/other.conf"), "keep me\n").unwrap();
        sh(&format!(
            "touch -d @1700000000 {0}/etc/azaion {0}/etc/azaion/*",
            root.display()
        ));
        let input = tmp.path().join(format!("r.{ext}"));
        make_tar(&root, &input, ext, format, true);
        let out = tmp.path().join("out.img");
        let o = run(&mut provision_online(&input, &out, &server.url()));
        assert!(o.status.success(), "{}", stderr(&o));
        let list = stdout(&sh(&format!("tar -tf {}", out.display())));
        assert_eq!(list.matches("device.conf").count(), 1, "{list}");
        assert_eq!(list.matches("etc/azaion/\n").count(), 1, "{list}");
        // In place: the entry keeps its position before other.conf.
        let pos = |n: &str| list.find(n).unwrap();
        assert!(pos("device.conf") < pos("other.conf"), "{list}");
        let x = tmp.path().join("x");
        extract("bsdtar", &out, &x);
        let pw = server.password_of(EMAIL).unwrap();
        assert_eq!(
            fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap(),
            conf_text(EMAIL, &pw)
        );
        assert_eq!(
            fs::read_to_string(x.join("etc/azaion/other.conf")).unwrap(),
            "keep me\n"
        );
    }
}

#[test]
fn owner_by_name_group_number_and_unknown() {
    let server = StubServer::start().unwrap();
    let c = case("tar.gz", "gnu", true);
    for (owner, want) in [
        ("azaion", Some((1001, 1001))),
        ("azaion:video", Some((1001, 44))),
        ("4000000:4000001", Some((4_000_000, 4_000_001))),
        ("root", Some((0, 0))),
        ("nosuchuser", None),
        ("azaion:nosuchgroup", None),
    ] {
        let output = output_of(&c);
        let o = provision(&c, &server, &["--owner", owner, "--force"]);
        match want {
            Some((uid, gid)) => {
                assert!(o.status.success(), "{owner}: {}", stderr(&o));
                let x = c.dir.join(format!("x-{}", owner.replace(':', "_")));
                extract("gnutar", &output, &x);
                let m = fs::metadata(x.join("etc/azaion/device.conf")).unwrap();
                assert_eq!((m.uid(), m.gid()), (uid, gid), "{owner}");
            }
            None => {
                assert_eq!(o.status.code(), Some(1), "{owner}");
                let err = stderr(&o);
                assert!(
                    err.contains("is not in the image's /etc/"),
                    "{owner}: {err}"
                );
                assert!(err.contains(owner.rsplit(':').next().unwrap()), "{err}");
            }
        }
    }
}

#[test]
fn api_contract_against_the_stub() {
    let c = case("tar.gz", "gnu", true);
    let server = StubServer::start().unwrap();
    let output = output_of(&c);

    // 201: created.
    let o = provision(&c, &server, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("account created"));
    let first = server.password_of(EMAIL).unwrap();
    assert_eq!(first.len(), 32);
    assert!(first
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    // 409 -> PATCH: the second run updates the password.
    let o = provision(&c, &server, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("password updated"), "{}", stderr(&o));
    let second = server.password_of(EMAIL).unwrap();
    assert_ne!(first, second);
    let reqs = server.requests();
    let calls: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        ["POST /users", "POST /users", "PATCH /users/password"]
    );
    assert_eq!(server.user_count(), 1);

    // The image carries exactly the password the server has.
    let x = c.dir.join("x1");
    extract("gnutar", &output, &x);
    assert_eq!(
        fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap(),
        conf_text(EMAIL, &second)
    );

    // 500 then success: retried.
    server.push_fault("POST", "/users", Fault::Status(500));
    let o = provision(&c, &server, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // PATCH fails: error names the step and status, no output.
    fs::remove_file(&output).unwrap();
    fs::remove_file(format!("{}.sha256", output.display())).unwrap();
    for _ in 0..10 {
        server.push_fault("PATCH", "/users/password", Fault::Status(500));
    }
    let o = run(bin()
        .args([
            "provision",
            "--serial",
            SERIAL,
            "--api-url",
            &server.url(),
            "--api-retries",
            "1",
            "--image",
        ])
        .arg(&c.input)
        .arg("--output")
        .arg(&c.out));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("PATCH /users/password") && err.contains("500"),
        "{err}"
    );
    assert!(
        listing(&c.out).is_empty(),
        "no output after an API failure: {:?}",
        listing(&c.out)
    );
}

#[test]
fn token_is_sent_and_401_is_not_retried() {
    let c = case("tar", "gnu", true);
    let server = StubServer::start().unwrap();
    server.require_token(Some("s3cret-token".into()));

    // No token: 401, not retried, no output.
    let o = provision(&c, &server, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    assert_eq!(server.requests().len(), 1, "401 is not retried");
    assert!(listing(&c.out).is_empty());

    // Token from a file, then from the environment.
    let token_file = c.dir.join("token");
    fs::write(&token_file, "s3cret-token\n").unwrap();
    let o = provision(
        &c,
        &server,
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let last = server.requests().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer s3cret-token"));
    let mut cmd = bin();
    cmd.env("IMPRINT_API_TOKEN", "s3cret-token")
        .args([
            "provision",
            "--serial",
            SERIAL,
            "--api-url",
            &server.url(),
            "--force",
            "--image",
        ])
        .arg(&c.input)
        .arg("--output")
        .arg(format!("{}/", c.out.display()));
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("s3cret") && !stderr(&o).contains("s3cret"));
}

#[test]
fn api_failure_leaves_no_output_and_write_failure_makes_no_call() {
    let c = case("tar.gz", "gnu", true);
    let server = StubServer::start().unwrap();
    // Unreachable API: nothing emitted.
    let o = run(bin()
        .args([
            "provision",
            "--serial",
            SERIAL,
            "--api-url",
            "http://127.0.0.1:9",
            "--api-retries",
            "0",
            "--image",
        ])
        .arg(&c.input)
        .arg("--output")
        .arg(&c.out));
    assert_eq!(o.status.code(), Some(1));
    assert!(listing(&c.out).is_empty(), "{:?}", listing(&c.out));

    // A truncated input fails while writing: the API is never called.
    let truncated = c.dir.join("trunc.tar.gz");
    let bytes = fs::read(&c.input).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let before = sha256(&truncated);
    let o = run(&mut provision_online(&truncated, &c.out, &server.url()));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("corrupt or truncated"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        server.requests().len(),
        0,
        "no API call after a failed write"
    );
    assert!(listing(&c.out).is_empty());
    assert_eq!(sha256(&truncated), before);
}

/// A full disk: a 64 KiB tmpfs as the output directory (needs root).
#[test]
fn a_full_disk_fails_the_write_and_makes_no_call() {
    let c = case("tar.gz", "gnu", true);
    let server = StubServer::start().unwrap();
    let small = c.dir.join("small");
    fs::create_dir(&small).unwrap();
    if !require(
        mount_tmpfs(&small, "64k"),
        "full-disk check: mounting a tmpfs needs root",
    ) {
        return;
    }
    // The uncompressed archive is larger than the 64 KiB filesystem.
    let plain = c.dir.join("plain.tar");
    make_tar(&c.root, &plain, "tar", "gnu", true);
    let o = run(&mut provision_online(&plain, &small, &server.url()));
    let left = listing(&small);
    sh(&format!("umount {}", small.display()));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).to_lowercase().contains("no space"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        server.requests().len(),
        0,
        "no API call after a failed write"
    );
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn password_never_printed() {
    let c = case("tar.gz", "gnu", true);
    let server = StubServer::start().unwrap();
    let pw_file = write_password(&c.dir, "Supplied-Passw0rd-XYZ");
    let o = provision(&c, &server, &["--password-file", pw_file.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "the runbook's form is the default policy"
    );
    assert!(
        stderr(&o).contains("--password-policy any"),
        "{}",
        stderr(&o)
    );
    let o = provision(
        &c,
        &server,
        &[
            "--password-policy",
            "any",
            "--password-file",
            pw_file.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        server.password_of(EMAIL).as_deref(),
        Some("Supplied-Passw0rd-XYZ")
    );
    let strict = run(bin()
        .arg("verify")
        .arg(output_of(&c))
        .args(["--serial", SERIAL]));
    assert_eq!(strict.status.code(), Some(1), "{}", stdout(&strict));
    assert!(
        stdout(&strict).contains("FAIL password"),
        "{}",
        stdout(&strict)
    );
    let v = run(bin().arg("verify").arg(output_of(&c)).args([
        "--serial",
        SERIAL,
        "--password-policy",
        "any",
        "--login-url",
        &server.url(),
    ]));
    assert!(v.status.success(), "{}", stdout(&v));
    // Generated: take it from the server.
    let o2 = provision(&c, &server, &["--force"]);
    let generated = server.password_of(EMAIL).unwrap();
    for (o, pw) in [
        (&o, "Supplied-Passw0rd-XYZ"),
        (&v, "Supplied-Passw0rd-XYZ"),
        (&o2, generated.as_str()),
    ] {
        assert!(!stdout(o).contains(pw), "password in stdout");
        assert!(!stderr(o).contains(pw), "password in stderr");
    }
}

#[test]
fn offline_needs_a_password_file_and_calls_nothing() {
    let c = case("tar", "gnu", true);
    let o = run(bin()
        .args(["provision", "--serial", SERIAL, "--offline", "--image"])
        .arg(&c.input)
        .arg("--output")
        .arg(&c.out));
    assert_eq!(o.status.code(), Some(2), "usage error: {}", stderr(&o));
    let pw = write_password(&c.dir, "0ff1ce0ff1ce0ff1ce0ff1ce0ff1ce00");
    let o = run(bin()
        .args([
            "provision",
            "--serial",
            SERIAL,
            "--offline",
            "--password-file",
        ])
        .arg(&pw)
        .arg("--image")
        .arg(&c.input)
        .arg("--output")
        .arg(&c.out));
    assert!(o.status.success(), "{}", stderr(&o));
    let x = c.dir.join("x");
    extract("gnutar", &output_of(&c), &x);
    assert_eq!(
        fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap(),
        conf_text(EMAIL, "0ff1ce0ff1ce0ff1ce0ff1ce0ff1ce00")
    );
}

#[test]
fn serials_and_output_paths() {
    let c = case("tar", "gnu", true);
    let server = StubServer::start().unwrap();
    for bad in [
        "azjn-0042",
        "AZJN0042",
        "AZJN-",
        "AZ/JN-1",
        "../X-1",
        "AZJN 0042",
        "AZJN-00é",
        "",
    ] {
        let o = run(bin()
            .args([
                "provision",
                "--serial",
                bad,
                "--api-url",
                &server.url(),
                "--image",
            ])
            .arg(&c.input)
            .arg("--output")
            .arg(&c.out));
        assert_eq!(o.status.code(), Some(1), "{bad:?}");
        assert!(
            stderr(&o).contains("invalid serial"),
            "{bad:?}: {}",
            stderr(&o)
        );
    }
    assert_eq!(server.requests().len(), 0);
    assert!(listing(&c.out).is_empty());

    // Output equal to input is refused, an existing output needs --force.
    let o = run(&mut provision_online(&c.input, &c.input, &server.url()));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is the input image"), "{}", stderr(&o));
    let named = c.out.join("custom.tar");
    for (force, ok) in [(false, true), (false, false), (true, true)] {
        let mut cmd = provision_online(&c.input, &named, &server.url());
        if force {
            cmd.arg("--force");
        }
        let o = run(&mut cmd);
        assert_eq!(o.status.success(), ok, "force={force}: {}", stderr(&o));
        if !ok {
            assert!(stderr(&o).contains("--force"));
        }
    }
    assert_eq!(listing(&c.out), ["custom.tar", "custom.tar.sha256"]);
}

#[test]
fn refuses_bad_archive_shapes() {
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 4] = [
        (
            "symlink-azaion",
            // Followed inside the archive as a chroot would; /tmp is not
            // in it, so the link leads nowhere.
            "ln -s /tmp {r}/etc/azaion",
            "/etc/azaion lies behind a symlink in the image: /etc/azaion -> /tmp leads to /tmp, which the image does not hold",
        ),
        (
            "conf-dir",
            "mkdir -p {r}/etc/azaion/device.conf",
            "is a directory in the archive",
        ),
        (
            "conf-symlink",
            "mkdir {r}/etc/azaion && ln -s ../hostname {r}/etc/azaion/device.conf",
            "is a symbolic link in the archive",
        ),
        ("no-etc", "rm -rf {r}/etc", "/etc"),
    ];
    for (name, script, message) in cases {
        let root = make_rootfs(tmp.path(), name);
        sh(&script.replace("{r}", &root.display().to_string()));
        let input = tmp.path().join(format!("{name}.tar"));
        make_tar(&root, &input, "tar", "gnu", true);
        let out = tmp.path().join(format!("{name}-out"));
        fs::create_dir(&out).unwrap();
        let before = sha256(&input);
        let o = run(&mut provision_online(&input, &out, &server.url()));
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(stderr(&o).contains(message), "{name}: {}", stderr(&o));
        assert_eq!(
            stderr(&o)
                .lines()
                .filter(|l| l.starts_with("imprint: error"))
                .count(),
            1,
            "{name}: one error line: {}",
            stderr(&o)
        );
        assert!(listing(&out).is_empty());
        assert_eq!(sha256(&input), before);
    }
    // A header with a bad checksum.
    let c = case("tar", "gnu", true);
    let mut bytes = fs::read(&c.input).unwrap();
    bytes[512 + 10] ^= 0x55;
    fs::write(&c.input, &bytes).unwrap();
    let o = provision(&c, &server, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad checksum"), "{}", stderr(&o));
    assert_eq!(server.requests().len(), 0);
}

#[test]
fn staging_directory_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let root = make_rootfs(tmp.path(), "staging");
    let server = StubServer::start().unwrap();
    let stage = || {
        run(bin()
            .args([
                "provision",
                "--serial",
                SERIAL,
                "--api-url",
                &server.url(),
                "--owner",
                "azaion:video",
                "--rootfs-dir",
            ])
            .arg(&root))
    };
    let o = stage();
    assert!(o.status.success(), "{}", stderr(&o));
    let conf = root.join("etc/azaion/device.conf");
    let m = fs::metadata(&conf).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!((m.uid(), m.gid()), (1001, 44));
    let d = fs::metadata(root.join("etc/azaion")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o755, 0, 0));
    let pw = server.password_of(EMAIL).unwrap();
    assert_eq!(fs::read_to_string(&conf).unwrap(), conf_text(EMAIL, &pw));
    assert_eq!(
        listing(&root.join("etc/azaion")),
        ["device.conf"],
        "no temp files left"
    );
    // Re-run: replaced, and verify agrees.
    let o = stage();
    assert!(o.status.success());
    assert_ne!(server.password_of(EMAIL).unwrap(), pw);
    let v = run(bin().arg("verify").arg(&root).args([
        "--serial",
        SERIAL,
        "--owner",
        "azaion:video",
        "--login-url",
        &server.url(),
    ]));
    assert!(v.status.success(), "{}", stdout(&v));
    // API failure: the old file stays, no temp file.
    let old = fs::read(&conf).unwrap();
    server.require_token(Some("t".into()));
    let o = run(bin()
        .args([
            "provision",
            "--serial",
            SERIAL,
            "--api-url",
            &server.url(),
            "--rootfs-dir",
        ])
        .arg(&root));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(fs::read(&conf).unwrap(), old);
    assert_eq!(listing(&root.join("etc/azaion")), ["device.conf"]);
}

#[test]
fn verify_passes_and_fails() {
    let c = case("tar.gz", "gnu", true);
    let server = StubServer::start().unwrap();
    assert!(provision(&c, &server, &["--owner", "azaion"])
        .status
        .success());
    let output = output_of(&c);
    let verify = |extra: &[&str]| run(bin().arg("verify").arg(&output).args(extra));

    let ok = verify(&[
        "--serial",
        SERIAL,
        "--owner",
        "azaion",
        "--login-url",
        &server.url(),
    ]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    for check in [
        "present",
        "mode",
        "owner",
        "email matches serial",
        "checksum",
        "login",
    ] {
        assert!(
            stdout(&ok)
                .lines()
                .any(|l| l.starts_with("pass") && l.contains(check)),
            "{check}: {}",
            stdout(&ok)
        );
    }
    let json = verify(&["--serial", SERIAL, "--owner", "azaion", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true));

    let failing = [
        (vec!["--serial", "AZJN-0043"], "email matches serial"),
        (vec!["--owner", "root"], "owner"),
    ];
    for (args, check) in failing {
        let o = verify(&args.iter().map(|s| &**s).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stdout(&o)
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains(check)),
            "{}",
            stdout(&o)
        );
    }
    // A wrong password on the server: login fails.
    let pw = c.dir.join("pw");
    fs::write(&pw, "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0").unwrap();
    let o = run(bin()
        .args([
            "provision",
            "--serial",
            SERIAL,
            "--api-url",
            &server.url(),
            "--password-file",
        ])
        .arg(&pw)
        .arg("--image")
        .arg(&c.input)
        .arg("--output")
        .arg(c.dir.join("other.tar.gz")));
    assert!(o.status.success());
    let o = verify(&["--login-url", &server.url(), "--owner", "azaion"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("login")),
        "{}",
        stdout(&o)
    );
    // A corrupted sidecar.
    let sidecar = PathBuf::from(format!("{}.sha256", output.display()));
    let text = fs::read_to_string(&sidecar).unwrap();
    fs::write(&sidecar, format!("{}{}", "0".repeat(64), &text[64..])).unwrap();
    let o = verify(&["--owner", "azaion"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o)
        .lines()
        .any(|l| l.starts_with("FAIL") && l.contains("checksum")));
    // Wrong mode, missing file: a hand-made archive.
    let tmp = tempfile::tempdir().unwrap();
    let root = make_rootfs(tmp.path(), "r");
    fs::create_dir(root.join("etc/azaion")).unwrap();
    fs::write(root.join("etc/azaion/device.conf"), conf_text(EMAIL, "x")).unwrap();
    fs::set_permissions(
        root.join("etc/azaion/device.conf"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let bad = tmp.path().join("bad.tar");
    make_tar(&root, &bad, "tar", "gnu", true);
    let o = run(bin().arg("verify").arg(&bad));
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o)
        .lines()
        .any(|l| l.starts_with("FAIL") && l.contains("mode") && l.contains("0644")));
    let plain = tmp.path().join("plain.tar");
    make_tar(&make_rootfs(tmp.path(), "p"), &plain, "tar", "gnu", true);
    let o = run(bin().arg("verify").arg(&plain));
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("FAIL present"), "{}", stdout(&o));
}

#[test]
fn reproducible_with_source_date_epoch() {
    let c = case("tar.gz", "gnu", true);
    let pw = write_password(&c.dir, "f1eedf1eedf1eedf1eedf1eedf1eed00");
    let mut digests = Vec::new();
    for i in 0..2 {
        let out = c.out.join(format!("r{i}.tar.gz"));
        let o = run(bin()
            .env("SOURCE_DATE_EPOCH", "1234567890")
            .args([
                "provision",
                "--serial",
                SERIAL,
                "--offline",
                "--password-file",
            ])
            .arg(&pw)
            .arg("--image")
            .arg(&c.input)
            .arg("--output")
            .arg(&out));
        assert!(o.status.success(), "{}", stderr(&o));
        digests.push(sha256(&out));
        let x = c.dir.join(format!("rx{i}"));
        extract("gnutar", &out, &x);
        assert_eq!(
            fs::metadata(x.join("etc/azaion/device.conf"))
                .unwrap()
                .mtime(),
            1_234_567_890
        );
    }
    assert_eq!(digests[0], digests[1]);
}

/// pzstd writes a skippable frame (its own index) before the zstd frames:
/// such an archive is read, and rewritten whole (the block rewrite needs a
/// single frame); zstd, GNU tar and bsdtar accept the output.
#[test]
fn a_pzstd_archive_is_read_and_rewritten() {
    let c = case("tar", "gnu", true);
    let pz = c.dir.join("rootfs.tar.zst");
    let made = run(std::process::Command::new("pzstd")
        .args(["-q", "-p", "2"])
        .arg(&c.input)
        .arg("-o")
        .arg(&pz));
    assert!(made.status.success(), "pzstd: {}", stderr(&made));
    let head = fs::read(&pz).unwrap();
    assert_eq!(
        &head[1..4],
        &[0x2A, 0x4D, 0x18],
        "pzstd starts with a skippable frame"
    );
    let c = Case { input: pz, ..c };
    let server = StubServer::start().unwrap();
    let o = provision(&c, &server, &["-vv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("full rewrite"), "{}", stderr(&o));
    let t = run(std::process::Command::new("zstd")
        .arg("-qt")
        .arg(output_of(&c)));
    assert!(t.status.success(), "{}", stderr(&t));
    for tool in ["gnutar", "bsdtar"] {
        check_extracted(&c, tool, &server, (0, 0), true);
    }
}

/// `verify --no-credentials PATH` of one base: exit code and stdout.
fn check_clean(base: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let o = run(bin()
        .args(["verify", "--no-credentials"])
        .arg(base)
        .args(extra));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    (o.status.code(), stdout(&o))
}

/// The clean-base check on a staging tree and on GNU tar archives of it
/// in every codec: passes before the tree is stamped, fails after naming
/// each file that holds a password (device.conf and an overlay's own),
/// never showing the password; files without one are not its business.
#[test]
fn no_credentials_on_a_staging_tree_and_every_tar_codec() {
    let tmp = tempfile::tempdir().unwrap();
    let root = make_rootfs(tmp.path(), "rootfs");
    let key_spec = tmp.path().join("key.toml");
    fs::write(
        &key_spec,
        r#"
[[entry]]
path = "/etc/azaion/keys"
type = "dir"
mode = "0700"
owner = "0:0"

[[entry]]
path = "/etc/azaion/keys/{serial}.secret"
type = "file"
mode = "0600"
owner = "0:0"
content = "{email} {password}\n"

[[entry]]
path = "/etc/azaion/serial"
type = "file"
mode = "0644"
owner = "0:0"
content = "{serial}\n"
"#,
    )
    .unwrap();
    let with_key = ["--overlay", key_spec.to_str().unwrap()];
    let archives = |tag: &str| -> Vec<PathBuf> {
        EXTENSIONS
            .iter()
            .map(|ext| {
                let out = tmp.path().join(format!("{tag}.{ext}"));
                make_tar(&root, &out, ext, "gnu", true);
                out
            })
            .collect()
    };
    for base in std::iter::once(root.clone()).chain(archives("clean")) {
        let (code, out) = check_clean(&base, &with_key);
        assert_eq!(code, Some(0), "{}: {out}", base.display());
        assert!(out.contains("pass absent"), "{out}");
        assert!(out.contains("/etc/azaion/keys/{serial}.secret"), "{out}");
        assert!(
            out.ends_with(&format!(
                "{}: clean, no device credentials in it\n",
                base.display()
            )),
            "{out}"
        );
        let json = run(bin()
            .args(["verify", "--no-credentials", "--json"])
            .arg(&base));
        assert_eq!(json.status.code(), Some(0));
        let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "schema": "imprint.verify-clean/1",
                "image": base.display().to_string(),
                "passed": true,
                "targets": ["/etc/azaion/device.conf"],
                "found": [],
            })
        );
    }

    // The runbook's flow stamps the tree in place, with the extra overlay.
    let pw = write_password(tmp.path(), PASSWORD);
    let o = run(bin()
        .args(["provision", "--offline", "--serial", SERIAL])
        .args(with_key)
        .arg("--password-file")
        .arg(&pw)
        .arg("--rootfs-dir")
        .arg(&root));
    assert!(o.status.success(), "{}", stderr(&o));
    let dirty = archives("stamped");
    for base in std::iter::once(root.clone()).chain(dirty.iter().cloned()) {
        let (code, out) = check_clean(&base, &with_key);
        assert_eq!(code, Some(1), "{}: {out}", base.display());
        assert!(!out.contains(PASSWORD), "{out}");
        for found in [
            "FAIL absent                 /etc/azaion/device.conf is present: file 0600 0:0, 106 bytes",
            &format!("FAIL absent                 /etc/azaion/keys/{SERIAL}.secret is present: file 0600 0:0"),
        ] {
            assert!(out.contains(found), "{}: no {found:?} in\n{out}", base.display());
        }
        assert!(!out.contains("/etc/azaion/serial"), "{out}");
        assert!(out.contains("NOT CLEAN"), "{out}");
        // Without the overlay, only device.conf is looked for.
        let (code, out) = check_clean(&base, &[]);
        assert_eq!(code, Some(1));
        assert!(out.contains("/etc/azaion/device.conf is present"), "{out}");
        assert!(!out.contains(".secret"), "{out}");
    }
    let json = run(bin()
        .args(["verify", "--no-credentials", "--json"])
        .args(with_key)
        .arg(&dirty[1]));
    assert_eq!(json.status.code(), Some(1));
    assert!(!stdout(&json).contains(PASSWORD));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["schema"], "imprint.verify-clean/1");
    assert_eq!(doc["passed"], false);
    assert_eq!(
        doc["targets"],
        serde_json::json!([
            "/etc/azaion/device.conf",
            "/etc/azaion/keys/{serial}.secret"
        ])
    );
    assert_eq!(
        doc["found"][0],
        serde_json::json!({
            "path": "/etc/azaion/device.conf",
            "template": "/etc/azaion/device.conf",
            "type": "file",
            "mode": "0600",
            "uid": 0,
            "gid": 0,
            "size": 106,
            "target": null,
        })
    );
    assert_eq!(
        doc["found"][1]["path"],
        format!("/etc/azaion/keys/{SERIAL}.secret")
    );
    assert_eq!(doc["found"].as_array().unwrap().len(), 2);
}

/// What a clean-base check cannot mean is refused by the command line.
#[test]
fn no_credentials_refuses_device_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = make_rootfs(tmp.path(), "rootfs");
    for extra in [
        &["--serial", SERIAL][..],
        &["--owner", "azaion"],
        &["--login-url", "http://127.0.0.1:9"],
        &["--password-policy", "any"],
        &["--api-timeout", "3"],
    ] {
        let o = run(bin()
            .args(["verify", "--no-credentials"])
            .arg(&root)
            .args(extra));
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(
            stderr(&o).contains("cannot be used with"),
            "{extra:?}: {}",
            stderr(&o)
        );
    }
    let spec = tmp.path().join("x.toml");
    fs::write(&spec, "").unwrap();
    let o = run(bin().arg("verify").arg(&root).arg("--overlay").arg(&spec));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--no-credentials"), "{}", stderr(&o));
}
