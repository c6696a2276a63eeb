//! The bad-input matrix in one place: each case is one clear error line
//! (exit 1; 2 for usage errors) with --quiet (without it, progress lines
//! come first), names what is wrong, and leaves nothing behind. Format-specific shapes (ext4 refusals, sparse chunks, archive
//! entries in the way) have their own files; this covers the rest.

use crate::common;

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
            "cannot decompress the gzip stream (the file is corrupt or truncated; fetch or rebuild it): the gzip stream is truncated",
        ),
        (
            truncated(d, &i.tar, "bzip2"),
            "cannot decompress the bzip2 stream",
        ),
        (
            // A bzip2 block whose CRC does not match its data: the
            // parallel reader's own decoder finds it, and the sequential
            // libbz2 read it falls back to says so.
            {
                let bad = d.join("bad-crc.tbz2");
                sh(&format!("bzip2 -c {} > {}", i.tar.display(), bad.display()));
                let mut bytes = fs::read(&bad).unwrap();
                bytes[12] ^= 0x01; // the first block's CRC (bytes 10..14)
                fs::write(&bad, bytes).unwrap();
                bad
            },
            "bad-crc.tbz2: cannot decompress the bzip2 stream",
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

/// Tar headers whose sizes overflow 64-bit arithmetic (the fuzz seeds in
/// testdata/fuzz/tarball), plain and gzip-compressed: a clear error naming
/// the archive, never a panic (exit 101).
#[test]
fn tar_sizes_past_any_archive_are_refused_not_panicked_on() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let out_of_range =
        "out of range for a tar archive; the archive is corrupt: fetch or rebuild it";
    let cases = [
        (
            "size-base256-max.tar",
            format!(
                "the tar header at byte 2048 has a size of 18446744073709551615, {out_of_range}"
            ),
        ),
        (
            "size-base256-rounds-past-2p64.tar",
            format!(
                "the tar header at byte 2048 has a size of 18446744073709551105, {out_of_range}"
            ),
        ),
        (
            "size-pax-max.tar",
            format!(
                "the tar header at byte 4096 has a pax size of 18446744073709551615, {out_of_range}"
            ),
        ),
        (
            // Just under 2^63: a size GNU tar takes too, then finds the end.
            "size-pax-under-2p63.tar",
            "the archive ends in the middle of an entry (at byte 5632); it is truncated".into(),
        ),
    ];
    for (seed, message) in &cases {
        let plain = dir.path().join(seed);
        fs::copy(testdata().join("fuzz/tarball").join(seed), &plain).unwrap();
        let gz = dir.path().join(format!("{seed}.gz"));
        sh(&format!(
            "gzip -n -c {} > {}",
            plain.display(),
            gz.display()
        ));
        for input in [&plain, &gz] {
            let image = input.to_str().unwrap();
            let args = [
                "provision",
                "--quiet",
                "--serial",
                SERIAL,
                "--offline",
                "--password-file",
                pw.to_str().unwrap(),
                "--image",
                image,
                "--output",
                "out.tar",
            ];
            // The line starts with the archive's path.
            refused(&args, input, &format!("error: {image}: {message}"), 1);
        }
    }
}

/// A file dated 1950 (GNU tar writes its mtime in base-256, negative): the
/// archive provisions, and GNU tar lists the untouched entry with its date
/// and its header bytes as they were.
#[test]
fn a_gnu_tar_entry_from_before_1970_is_kept_as_it_was() {
    let dir = TempDir::new().unwrap();
    let root = make_rootfs(dir.path(), "rootfs");
    sh(&format!(
        "echo old > {r}/etc/motd.1950 && TZ=UTC touch -d '1950-01-01 12:34' {r}/etc/motd.1950",
        r = root.display()
    ));
    let input = dir.path().join("old.tar");
    make_tar(&root, &input, "tar", "gnu", true);
    let pw = write_password(dir.path(), PASSWORD);
    let output = dir.path().join("out.tar");
    let o = run(&mut provision_offline(&input, &output, "root", &pw));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let header = |archive: &Path| -> [u8; 512] {
        let bytes = fs::read(archive).unwrap();
        let at = bytes
            .chunks(512)
            .position(|b| b.starts_with(b"./etc/motd.1950\0"))
            .unwrap_or_else(|| panic!("no ./etc/motd.1950 header in {}", archive.display()));
        bytes[at * 512..at * 512 + 512].try_into().unwrap()
    };
    let before = header(&input);
    // The mtime field: GNU base-256, negative.
    assert_eq!(before[136], 0xff, "GNU tar wrote {:x?}", &before[136..148]);
    assert_eq!(header(&output), before);

    let listed = sh(&format!("TZ=UTC tar -tvf {}", output.display()));
    let line = stdout(&listed)
        .lines()
        .find(|l| l.ends_with(" ./etc/motd.1950"))
        .map(str::to_string);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains(" 1950-01-01 12:34 ")),
        "{line:?}"
    );
    assert!(stdout(&listed).contains("./etc/azaion/device.conf"));
}

/// 30 MB of zeros on `--serials -` is one enormous "serial": the error
/// quotes at most a few hundred bytes of it, and the run stays small in
/// memory (it once printed a 63 MB line and used 1.5 GB for 300 MB).
/// More than 64 MiB on standard input is refused without reading it all.
#[test]
fn an_enormous_serial_on_stdin_gives_a_short_error() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let zeros = d.join("zeros");
    fs::write(&zeros, vec![0u8; 30 << 20]).unwrap();
    let input = small_ext4(d, "base.ext4");
    let pw = write_password(d, PASSWORD);
    let args = |c: &mut std::process::Command| {
        c.arg("provision")
            .arg("--password-file")
            .arg(&pw)
            .args(["--offline", "--owner", "azaion", "--serials", "-"])
            .arg("--image")
            .arg(&input)
            .arg("--output")
            .arg(d.join("out"));
    };
    let mut cmd = bin();
    args(&mut cmd);
    let rss = d.join("rss");
    let o = timed(&cmd, &rss)
        .stdin(fs::File::open(&zeros).unwrap())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{}", &err[..err.len().min(2000)]);
    assert!(err.len() < 2000, "{} bytes of error", err.len());
    assert!(err.contains("invalid serial"), "{err}");
    assert!(err.contains("bytes in all"), "{err}");
    let peak = read_peak_kib(&rss) << 10;
    assert!(peak < 200 << 20, "peak {peak} bytes for 30 MB on stdin");
    // Past the bound: refused, whatever it holds.
    let big = d.join("big");
    fs::File::create(&big).unwrap().set_len(65 << 20).unwrap();
    let mut cmd = bin();
    args(&mut cmd);
    let o = run(cmd.stdin(fs::File::open(&big).unwrap()));
    assert!(
        stderr(&o).contains("larger than 64 MiB"),
        "{}",
        stderr(&o).len()
    );
}
