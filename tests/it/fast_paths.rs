//! The tail-only rewrites (plain tar: the prefix copied as is; gzip: the
//! compressed prefix kept up to a deflate block boundary; bzip2: the blocks
//! before the first change kept) must give exactly the archive the full
//! rewrite gives, once decompressed.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// /etc/azaion/device.conf exists and is the first entry with data.
    Start,
    /// It exists between a lot of data before and after.
    Middle,
    /// It does not exist: new entries go at the end.
    End,
}

/// Deterministic text-like bytes: compressible, but not trivially.
pub(crate) fn filler(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "jetson", "rootfs", "kernel", "module", "azaion", "device", "loader", "config", "\n",
    ];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
        out.push(b' ' + ((x >> 20) as u8 % 64));
    }
    out.truncate(len);
    out
}

/// A tree with /etc/azaion/device.conf at `place` and bytes of [`filler`]
/// in each of the directories before and after it: 2000 (one compressed
/// block of any codec) or, `big`, 1 MiB: more blocks than any fast path
/// needs (bzip2 -1's 100 kB, xz's 256 KiB, lbzip2's 900 kB, zstd's
/// 128 KiB) and few enough that xz -6 and bzip2 -9, several times per
/// case, stay quick. (It was 3 MiB; only the share of the prefix kept
/// needs more, see [`tree_of`].)
pub(crate) fn tree(dir: &Path, place: Place, big: bool) -> PathBuf {
    tree_of(dir, place, if big { 1 << 20 } else { 2000 })
}

/// [`tree`] with `bulk` bytes of data in each directory around /etc.
fn tree_of(dir: &Path, place: Place, bulk: usize) -> PathBuf {
    let root = dir.join(format!("tree-{place:?}-{bulk}"));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nazaion:x:1001:1001::/home/azaion:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nazaion:x:1001:\n").unwrap();
    if place != Place::End {
        fs::create_dir(root.join("etc/azaion")).unwrap();
        fs::write(
            root.join("etc/azaion/device.conf"),
            "AZAION_DEVICE_EMAIL=old\n",
        )
        .unwrap();
    }
    // --sort=name puts "a-..." before "etc" and "z-..." after it.
    let before = if place == Place::Start {
        "zz-before-is-after"
    } else {
        "a-before"
    };
    for (dir_name, seed) in [(before, 1u64), ("z-after", 2)] {
        if place == Place::End && dir_name == "z-after" {
            continue;
        }
        fs::create_dir_all(root.join(dir_name)).unwrap();
        for i in 0..4 {
            fs::write(
                root.join(dir_name).join(format!("f{i}")),
                filler(seed * 10 + i, bulk / 4),
            )
            .unwrap();
        }
    }
    root
}

pub(crate) fn tar_of(root: &Path, out: &Path) {
    sh(&format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C {} -cf {} .",
        root.display(),
        out.display()
    ));
}

pub(crate) fn provision(input: &Path, output: &Path, pw: &Path, full: bool) {
    let mut cmd = provision_offline(input, output, "azaion", pw);
    cmd.env("SOURCE_DATE_EPOCH", "1700000000");
    if full {
        cmd.env("IMPRINT_FULL_REWRITE", "1");
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The decompressing tool for a compressing command ("gzip -6" -> gzip).
fn tool_of(compress: &str) -> &str {
    match compress.split(' ').next().unwrap() {
        "lbzip2" => "bzip2",
        tool => tool,
    }
}

pub(crate) fn decompressed(path: &Path, tool: &str) -> Vec<u8> {
    let o = run(Command::new(tool).arg("-dc").arg(path));
    assert!(
        o.status.success(),
        "{tool} -dc {}: {}",
        path.display(),
        stderr(&o)
    );
    o.stdout
}

/// `tool -t` (when compressed), GNU tar and bsdtar all accept the archive.
pub(crate) fn check_archive(path: &Path, tool: Option<&str>) {
    if let Some(tool) = tool {
        sh(&format!("{tool} -t {}", path.display()));
    }
    for tool in ["gnutar", "bsdtar"] {
        let x = path.with_extension(format!("x-{tool}"));
        let _ = fs::remove_dir_all(&x);
        extract(tool, path, &x);
        assert_eq!(
            fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap(),
            conf_text(EMAIL, PASSWORD)
        );
    }
}

fn case(dir: &Path, place: Place, big: bool, compress: Option<&str>) {
    let label = format!("{place:?}-{big}-{}", compress.unwrap_or("plain")).replace(" ", "_");
    let root = tree(dir, place, big);
    let plain = dir.join(format!("{label}.tar"));
    tar_of(&root, &plain);
    let input = match compress {
        None => plain.clone(),
        Some(command) => {
            let compressed = dir.join(format!("{label}.tar.{}", tool_of(command)));
            sh(&format!(
                "{command} -c {} > {}",
                plain.display(),
                compressed.display()
            ));
            compressed
        }
    };
    let pw = write_password(dir, PASSWORD);
    let fast = dir.join(format!("{label}-fast"));
    let slow = dir.join(format!("{label}-slow"));
    provision(&input, &fast, &pw, false);
    provision(&input, &slow, &pw, true);
    match compress {
        None => assert_eq!(
            fs::read(&fast).unwrap(),
            fs::read(&slow).unwrap(),
            "{label}"
        ),
        Some(command) => assert!(
            decompressed(&fast, tool_of(command)) == decompressed(&slow, tool_of(command)),
            "{label}: contents differ"
        ),
    }
    check_archive(&fast, compress.map(tool_of));
    let v = run(bin()
        .arg("verify")
        .arg(&fast)
        .args(["--serial", SERIAL, "--owner", "azaion"]));
    assert!(v.status.success(), "{label}: {}", stdout(&v));
}

#[test]
fn gzip_tail_rewrite_equals_full_rewrite() {
    let dir = TempDir::new().unwrap();
    for place in [Place::Start, Place::Middle, Place::End] {
        for big in [false, true] {
            case(dir.path(), place, big, Some("gzip -6"));
        }
    }
    case(dir.path(), Place::Middle, true, Some("gzip -1"));
    case(dir.path(), Place::End, true, Some("gzip -9 -n"));
}

#[test]
fn bzip2_tail_rewrite_equals_full_rewrite() {
    let dir = TempDir::new().unwrap();
    for place in [Place::Start, Place::Middle, Place::End] {
        // One block (2 kB of data), and 1 MiB in 100 kB blocks.
        case(dir.path(), place, false, Some("bzip2 -9"));
        case(dir.path(), place, true, Some("bzip2 -1"));
    }
    // lbzip2's encoder, as factories often use it.
    case(dir.path(), Place::Middle, true, Some("lbzip2 -9"));
}

/// An archive that only gains a file has a one-block tail (the block that
/// held its end, up to 900 kB at bzip2 -9): it is rewritten in blocks of
/// at most 128 KiB, so that all cores compress it. bzip2recover (bzip2's
/// own tool, one file per block it finds) counts them, and each of them,
/// the whole file, lbzip2, GNU tar and bsdtar read it.
#[test]
fn bzip2_tail_is_rewritten_in_small_blocks() {
    crate::require::require_tools(&["bzip2recover", "lbzip2"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = tree(d, Place::End, true);
    let plain = d.join("in.tar");
    tar_of(&root, &plain);
    let input = d.join("in.tar.bz2");
    sh(&format!(
        "bzip2 -9 -c {} > {}",
        plain.display(),
        input.display()
    ));
    let pw = write_password(d, PASSWORD);
    let out = d.join("out.tar.bz2");
    provision(&input, &out, &pw, false);
    check_archive(&out, Some("bzip2"));
    sh(&format!("lbzip2 -t {}", out.display()));
    let blocks = |path: &Path| {
        let split = d.join(format!(
            "rec-{}",
            path.file_name().unwrap().to_str().unwrap()
        ));
        fs::create_dir_all(&split).unwrap();
        let copy = split.join("f.bz2");
        fs::copy(path, &copy).unwrap();
        sh(&format!("cd {} && bzip2recover f.bz2", split.display()));
        let mut n = 0;
        for entry in fs::read_dir(&split).unwrap() {
            let name = entry.unwrap().path();
            if name
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("rec")
            {
                sh(&format!("bzip2 -t {}", name.display()));
                n += 1;
            }
        }
        n
    };
    // The 1 MiB archive: a 900 kB block and a ~150 kB one, which the
    // rewrite cuts in two (the new file's entry is only 2 kB).
    assert_eq!(blocks(&input), 2);
    assert_eq!(blocks(&out), 3);
    let again = d.join("again.tar.bz2");
    provision(&input, &again, &pw, false);
    assert_eq!(sha256(&out), sha256(&again), "the block cut moved");
}

/// zstd: when the plan only appends, the input's blocks are kept up to
/// the one holding the end of the entries and the rest is written as raw
/// blocks (new content size, new checksum); with and without a checksum or
/// a content size in the header, tiny and large. xz: the frame compressed
/// during the scan is kept and a second one holds the new entries. When an
/// entry is replaced, both are rewritten whole.
#[test]
fn zstd_and_xz_tail_rewrites_equal_full_rewrite() {
    let dir = TempDir::new().unwrap();
    for command in ["zstd -q -3", "xz -6"] {
        for place in [Place::Start, Place::Middle, Place::End] {
            case(dir.path(), place, true, Some(command));
        }
    }
    for command in [
        "zstd -q -19 --no-check",
        "zstd -q --no-content-size",
        "zstd -q -1 -T2",
        // A 4 KiB window: blocks, kept and new, are at most 4 KiB.
        "zstd -q --zstd=wlog=12",
    ] {
        case(dir.path(), Place::End, true, Some(command));
        case(dir.path(), Place::End, false, Some(command));
    }
}

/// pzstd and `cat a.zst b.zst` give several frames: rewritten whole.
#[test]
fn multi_frame_zstd_takes_the_full_rewrite() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = tree(d, Place::End, true);
    let plain = d.join("in.tar");
    tar_of(&root, &plain);
    let zst = d.join("in.tar.zst");
    sh(&format!(
        "(head -c 1000000 {p} | zstd -q; tail -c +1000001 {p} | zstd -q) > {z}",
        p = plain.display(),
        z = zst.display()
    ));
    let pw = write_password(d, PASSWORD);
    let (fast, slow) = (d.join("fast"), d.join("slow"));
    provision(&zst, &fast, &pw, false);
    provision(&zst, &slow, &pw, true);
    assert_eq!(fs::read(&fast).unwrap(), fs::read(&slow).unwrap());
    check_archive(&fast, Some("zstd"));
}

/// pbzip2 and `cat a.bz2 b.bz2` give several streams in one file.
#[test]
fn multi_stream_bzip2_is_rewritten_from_its_last_stream() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    for place in [Place::Start, Place::End] {
        let root = tree(d, place, true);
        let plain = d.join("in.tar");
        tar_of(&root, &plain);
        let bz = d.join(format!("in-{place:?}.tar.bz2"));
        sh(&format!(
            "(head -c 500000 {p} | bzip2 -1; tail -c +500001 {p} | bzip2 -1) > {b}",
            p = plain.display(),
            b = bz.display()
        ));
        let pw = write_password(d, PASSWORD);
        let fast = d.join(format!("fast-{place:?}"));
        let slow = d.join(format!("slow-{place:?}"));
        provision(&bz, &fast, &pw, false);
        provision(&bz, &slow, &pw, true);
        assert!(decompressed(&fast, "bzip2") == decompressed(&slow, "bzip2"));
        check_archive(&fast, Some("bzip2"));
        if place == Place::End {
            // The first stream and most of the second are kept.
            let (a, b) = (fs::read(&bz).unwrap(), fs::read(&fast).unwrap());
            let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            assert!(same > a.len() * 9 / 10, "only {same} of {} kept", a.len());
        }
    }
}

#[test]
fn plain_tar_prefix_copy_equals_full_rewrite() {
    let dir = TempDir::new().unwrap();
    for place in [Place::Start, Place::Middle, Place::End] {
        case(dir.path(), place, true, None);
    }
}

#[test]
fn the_compressed_prefix_is_kept_byte_for_byte() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    // The kept prefix ends some way before the change (the decoder reads
    // ahead of the scan): 3 MiB makes that slack under a tenth.
    let root = tree_of(d, Place::End, 3 << 20);
    let plain = d.join("in.tar");
    tar_of(&root, &plain);
    for command in ["gzip -6", "bzip2 -1", "zstd -q -3"] {
        let input = d.join(format!("in.tar.{}", tool_of(command)));
        sh(&format!(
            "{command} -c {} > {}",
            plain.display(),
            input.display()
        ));
        let pw = write_password(d, PASSWORD);
        let out = d.join("out");
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(d.join("out.sha256"));
        provision(&input, &out, &pw, false);
        let (a, b) = (fs::read(&input).unwrap(), fs::read(&out).unwrap());
        // A zstd frame header carries the content size, which changes.
        let skip = if command.starts_with("zstd") { 20 } else { 0 };
        let same = a[skip..]
            .iter()
            .zip(&b[skip..])
            .take_while(|(x, y)| x == y)
            .count();
        assert!(
            same > a.len() * 9 / 10,
            "{command}: only {same} of {} compressed bytes kept",
            a.len()
        );
    }
}

#[test]
fn multi_member_gzip_takes_the_full_rewrite() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = tree(d, Place::Middle, false);
    let plain = d.join("in.tar");
    tar_of(&root, &plain);
    // Two gzip members: the first 10 KiB and the rest.
    let gz = d.join("in.tar.gz");
    sh(&format!(
        "(head -c 10240 {p} | gzip -c; tail -c +10241 {p} | gzip -c) > {g}",
        p = plain.display(),
        g = gz.display()
    ));
    let pw = write_password(d, PASSWORD);
    let fast = d.join("fast");
    let slow = d.join("slow");
    provision(&gz, &fast, &pw, false);
    provision(&gz, &slow, &pw, true);
    assert_eq!(fs::read(&fast).unwrap(), fs::read(&slow).unwrap());
    check_archive(&fast, Some("gzip"));
}

/// bzip2, zstd and xz compress on worker threads; the bytes must not
/// depend on how many cores the machine has.
#[test]
fn compressed_outputs_do_not_depend_on_the_core_count() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = tree(d, Place::Middle, true);
    let plain = d.join("in.tar");
    tar_of(&root, &plain);
    let pw = write_password(d, PASSWORD);
    for (tool, ext) in [
        ("bzip2 -9", "bz2"),
        ("zstd -q -T2", "zst"),
        ("xz -T2", "xz"),
    ] {
        let input = d.join(format!("in.tar.{ext}"));
        sh(&format!(
            "{tool} -c {} > {}",
            plain.display(),
            input.display()
        ));
        let many = d.join(format!("many.{ext}"));
        provision(&input, &many, &pw, false);
        // The same run pinned to one core.
        let one = d.join(format!("one.{ext}"));
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0", env!("CARGO_BIN_EXE_imprint")])
            .args([
                "provision",
                "--serial",
                SERIAL,
                "--offline",
                "--owner",
                "azaion",
                "--password-file",
            ])
            .arg(&pw)
            .arg("--image")
            .arg(&input)
            .arg("--output")
            .arg(&one)
            .env("SOURCE_DATE_EPOCH", "1700000000");
        let o = run(&mut cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            sha256(&many),
            sha256(&one),
            "{ext}: output depends on the core count"
        );
    }
}
