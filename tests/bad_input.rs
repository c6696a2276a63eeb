//! The bad-input matrix in one place: each case is one clear error line
//! (exit 1; 2 for usage errors) with --quiet (without it, progress lines
//! come first), names what is wrong, and leaves nothing behind. Format-specific shapes (ext4 refusals, sparse chunks, archive
//! entries in the way) have their own files; this covers the rest.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

struct Inputs {
    dir: TempDir,
    tar: PathBuf,
    pw: PathBuf,
}

fn inputs() -> Inputs {
    let dir = TempDir::new().unwrap();
    let root = make_rootfs(dir.path(), "rootfs");
    let tar = dir.path().join("rootfs.tar");
    make_tar(&root, &tar, "tar", "gnu", true);
    let pw = write_password(dir.path(), PASSWORD);
    Inputs { dir, tar, pw }
}

/// A copy of `src` compressed with `tool` and cut in half.
fn truncated(dir: &Path, src: &Path, tool: &str) -> PathBuf {
    let out = dir.join(format!("cut.{tool}"));
    sh(&format!(
        "{tool} -c {} > {o}.full && head -c $(( $(stat -c %s {o}.full) / 2 )) {o}.full > {o}",
        src.display(),
        o = out.display()
    ));
    out
}

/// Runs `args` with an empty output directory; checks the exit code, one
/// error line holding `message`, an unchanged input and nothing left.
fn refused(args: &[&str], input: &Path, message: &str, code: i32) {
    let out = TempDir::new().unwrap();
    let before = fs::read(input).unwrap();
    let o = run(bin().args(args).current_dir(out.path()));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(message),
        "{args:?}: wanted {message:?} in {err}"
    );
    if code == 1 {
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {err}");
        assert!(lines[0].starts_with("imprint: error: "), "{err}");
    }
    assert!(!err.contains(PASSWORD) && !stdout(&o).contains(PASSWORD));
    assert_eq!(
        fs::read(input).unwrap(),
        before,
        "{args:?}: the input changed"
    );
    assert!(
        listing(out.path()).is_empty(),
        "{args:?}: left {:?}",
        listing(out.path())
    );
}

#[test]
fn bad_inputs_give_one_clear_line_and_leave_nothing() {
    let i = inputs();
    let d = i.dir.path();
    let pw = i.pw.to_str().unwrap();
    // provision --offline of `image`, then `extra`.
    let offline = |image: &str, extra: &[&str]| -> Vec<String> {
        [
            "provision",
            "--quiet",
            "--serial",
            SERIAL,
            "--offline",
            "--password-file",
            pw,
            "--image",
            image,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            truncated(d, &i.tar, "gzip"),
            "cannot decompress the gzip stream: the gzip stream is truncated",
        ),
        (
            truncated(d, &i.tar, "bzip2"),
            "cannot decompress the bzip2 stream",
        ),
        (
            truncated(d, &i.tar, "zstd"),
            "cannot decompress the zstd stream",
        ),
        (
            truncated(d, &i.tar, "xz"),
            "cannot decompress the xz stream",
        ),
        (
            {
                let bad = d.join("bad-checksum.tar");
                let mut bytes = fs::read(&i.tar).unwrap();
                bytes[100] ^= 0x01; // the first header's mode field
                fs::write(&bad, bytes).unwrap();
                bad
            },
            "the tar header at byte 0 of the archive has a bad checksum",
        ),
        (
            {
                let junk = d.join("junk.bin");
                fs::write(&junk, vec![0x42u8; 4096]).unwrap();
                junk
            },
            "is not a rootfs image imprint knows",
        ),
    ];
    for (input, message) in &cases {
        let args = offline(input.to_str().unwrap(), &["--output", "out.img"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, input, message, 1);
    }

    let tar = i.tar.to_str().unwrap();
    let online = |url: &str| -> Vec<String> {
        [
            "provision",
            "--quiet",
            "--serial",
            SERIAL,
            "--api-url",
            url,
            "--image",
            tar,
            "--output",
            "out.tar",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (url, message) in [
        (
            "admin.example",
            "invalid API URL \"admin.example\": expected http://",
        ),
        ("ftp://admin.example", "invalid API URL"),
        (
            "http://ops:hunter2@admin.example",
            "credentials in the URL are refused",
        ),
    ] {
        let args = online(url);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, &i.tar, message, 1);
        let o = run(bin().args(&args));
        assert!(
            !stderr(&o).contains("hunter2"),
            "the URL's password was printed"
        );
    }

    for (extra, message) in [
        (
            &["--output", "/proc/out.tar"][..],
            "cannot create the output file in /proc",
        ),
        (
            &["--output", tar][..],
            "is the input image; choose another output path",
        ),
        (&["--output", "out.tar", "--owner", "nobody"][..], "nobody"),
        (&["--output", "no/such/dir/out.tar"][..], "does not exist"),
    ] {
        let args = offline(tar, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, &i.tar, message, 1);
    }

    // Usage errors: exit 2, clap's message.
    refused(
        &["provision", "--image", tar, "--output", "out.tar"],
        &i.tar,
        "--serial",
        2,
    );
    refused(
        &[
            "provision",
            "--serial",
            SERIAL,
            "--offline",
            "--image",
            tar,
            "--output",
            "x",
        ],
        &i.tar,
        "--password-file",
        2,
    );
    refused(
        &[
            "provision",
            "--serial",
            SERIAL,
            "--api-url",
            "http://x",
            "--api-token",
            "t",
        ],
        &i.tar,
        "unexpected argument",
        2,
    );
}
