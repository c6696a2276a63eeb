//! Multi-block xz tarballs (`xz -T`) cut inside the block that holds the
//! first change: the blocks before it are kept byte for byte, and so are
//! that block's LZMA2 chunks before the change (past its header, whose
//! size fields change); the output equals a full rewrite's, keeps the
//! input's check, passes `xz -t`, GNU tar, bsdtar and a consistent
//! `xz -lvv`; a warm run (scan cache hit) writes the same bytes without
//! decoding up to the cut.

use crate::common::*;
use crate::fast_paths::{check_archive, decompressed, provision, tar_of, tree, Place};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

/// One block of `xz --robot -lvv`: file offset, uncompressed offset,
/// total size, uncompressed size and header size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    offset: u64,
    out: u64,
    total: u64,
    size: u64,
    header: u64,
}

/// The blocks `xz --robot -lvv` lists, checked to tile the file's
/// uncompressed bytes (`xz -dc`'s length) without gaps.
fn blocks_of(path: &Path) -> Vec<Block> {
    let o = run(Command::new("xz").args(["--robot", "-lvv"]).arg(path));
    assert!(o.status.success(), "xz -lvv: {}", stderr(&o));
    let blocks: Vec<Block> = stdout(&o)
        .lines()
        .filter(|l| l.starts_with("block\t"))
        .map(|l| {
            let f: Vec<u64> = l.split('\t').map(|x| x.parse().unwrap_or(0)).collect();
            Block {
                offset: f[4],
                out: f[5],
                total: f[6],
                size: f[7],
                header: f[11],
            }
        })
        .collect();
    let mut out = 0;
    for b in &blocks {
        assert_eq!(b.out, out, "{blocks:?}");
        out += b.size;
    }
    assert_eq!(out, decompressed(path, "xz").len() as u64, "{blocks:?}");
    blocks
}

/// The tarball of `place`'s tree and where its first change falls: the
/// device file's header (Middle), or the end of the entries (End).
fn plain_tar(d: &Path, place: Place) -> (PathBuf, u64) {
    let root = tree(d, place, true);
    let plain = d.join(format!("{place:?}.tar"));
    tar_of(&root, &plain);
    let bytes = fs::read(&plain).unwrap();
    let change = match place {
        Place::Middle => {
            let data = bytes
                .windows(23)
                .position(|w| w == b"AZAION_DEVICE_EMAIL=old")
                .unwrap();
            data as u64 - 512
        }
        _ => {
            // Past the last block that is not all zeros.
            let last = bytes.iter().rposition(|&b| b != 0).unwrap();
            (last as u64 / 512 + 1) * 512
        }
    };
    (plain, change)
}

fn compress(plain: &Path, out: &Path, options: &str) {
    sh(&format!(
        "xz -T2 -6 {options} < {} > {}",
        plain.display(),
        out.display()
    ));
}

/// The fast output and a full rewrite decompress alike, GNU tar and
/// bsdtar read the fast one (`xz -t` in `check_archive`), and `xz -lvv`
/// lists a consistent index; the fast run says (in -v) that it cut a block
/// inside, past its first chunk: re-encoding a block from its start gives
/// the same leading bytes, so only this tells the cut apart. Returns the
/// fast output.
fn rewrite(d: &Path, label: &str, input: &Path) -> PathBuf {
    let pw = write_password(d, PASSWORD);
    let fast = d.join(format!("{label}-fast.tar.xz"));
    let slow = d.join(format!("{label}-slow.tar.xz"));
    let said = verbose_run(input, &fast, &d.join("no-cache"), &["--no-cache"]);
    let at: u64 = said
        .split("xz block cut at byte ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{label}: no cut inside a block: {said}"));
    assert!(at > 0, "{label}: {said}");
    assert!(
        said.contains("bytes of the block decoded up to the cut"),
        "{said}"
    );
    provision(input, &slow, &pw, true);
    assert!(
        decompressed(&fast, "xz") == decompressed(&slow, "xz"),
        "{label}: contents differ"
    );
    check_archive(&fast, Some("xz"));
    blocks_of(&fast);
    fast
}

/// The block of `blocks` holding uncompressed byte `at`.
fn holding(blocks: &[Block], at: u64) -> Block {
    *blocks
        .iter()
        .find(|b| b.out <= at && at < b.out + b.size)
        .unwrap()
}

/// Asserts that the output keeps the blocks before the one holding
/// `change` as they are, and that block's data past its header for more
/// than `min` bytes: the fast path cut inside it. Returns the bytes of
/// the cut block's data kept.
fn kept_inside(input: &Path, output: &Path, change: u64, min: u64, label: &str) -> u64 {
    let (a, b) = (fs::read(input).unwrap(), fs::read(output).unwrap());
    let cut = holding(&blocks_of(input), change);
    let ours = holding(&blocks_of(output), change);
    assert_eq!(ours.offset, cut.offset, "{label}: blocks before it differ");
    let o = cut.offset as usize;
    assert!(a[..o] == b[..o], "{label}: a block before the cut differs");
    let (da, db) = (o + cut.header as usize, o + ours.header as usize);
    let kept = a[da..]
        .iter()
        .zip(&b[db..])
        .take_while(|(x, y)| x == y)
        .count() as u64;
    assert!(
        kept > min,
        "{label}: only {kept} bytes of the cut block's data kept ({cut:?})"
    );
    kept
}

/// The change at the start (past its first LZMA2 chunk), middle and end
/// of the last block (block sizes picked so), and in a middle block: the
/// output keeps the chunks before it, the cut block stays within the
/// input's block size, and the output's size is within 1% of the input's.
#[test]
fn multi_block_xz_is_cut_inside_the_last_block_near_its_start() {
    cut_case(Place::End, "last-start", 1.45);
}

#[test]
fn multi_block_xz_is_cut_inside_the_last_block_in_its_middle() {
    cut_case(Place::End, "last-middle", 1.7);
}

#[test]
fn multi_block_xz_is_cut_inside_the_last_block_near_its_end() {
    cut_case(Place::End, "last-end", 1.97);
}

#[test]
fn multi_block_xz_is_cut_inside_a_middle_block() {
    cut_case(Place::Middle, "middle-block", 1.6);
}

fn cut_case(place: Place, label: &str, at: f64) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let (plain, change) = plain_tar(d, place);
    // The change at fraction `at - 1` of the second block.
    let block = (change as f64 / at) as u64;
    let xz = d.join(format!("{label}.tar.xz"));
    compress(&plain, &xz, &format!("--block-size={block}"));
    let blocks = blocks_of(&xz);
    assert!(blocks.len() >= 2, "{label}: {blocks:?}");
    let fast = rewrite(d, label, &xz);
    kept_inside(&xz, &fast, change, 16 << 10, label);
    for b in blocks_of(&fast) {
        assert!(b.size <= block.max(1 << 20), "{label}: {b:?}");
    }
    let (len, out_len) = (
        fs::metadata(&xz).unwrap().len(),
        fs::metadata(&fast).unwrap().len(),
    );
    assert!(
        out_len.abs_diff(len) < (len / 100).max(16 << 10),
        "{label}: {len} -> {out_len}"
    );
}

/// Every check (none, CRC32, CRC64, SHA-256): the cut block's check is
/// continued from its state at the cut (`xz -t` verifies it) and the
/// output keeps the input's check.
#[test]
fn check_none_continues_inside_a_block_of_many() {
    check_case("none");
}

#[test]
fn check_crc32_continues_inside_a_block_of_many() {
    check_case("crc32");
}

#[test]
fn check_crc64_continues_inside_a_block_of_many() {
    check_case("crc64");
}

#[test]
fn check_sha256_continues_inside_a_block_of_many() {
    check_case("sha256");
}

fn check_case(check: &str) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let (plain, change) = plain_tar(d, Place::End);
    let block = (change as f64 / 1.7) as u64;
    let xz = d.join(format!("{check}.tar.xz"));
    compress(&plain, &xz, &format!("--block-size={block} -C {check}"));
    let fast = rewrite(d, check, &xz);
    kept_inside(&xz, &fast, change, 16 << 10, check);
    let o = run(Command::new("xz").arg("-lvv").arg(&fast));
    let want = match check {
        "none" => "None",
        "crc32" => "CRC32",
        "crc64" => "CRC64",
        _ => "SHA-256",
    };
    assert!(
        stdout(&o).contains(&format!("Check:             {want}")),
        "{}",
        stdout(&o)
    );
}

/// `imprint -v provision` with the scan cache in `home` (and `extra`
/// options); returns what it said on stderr.
fn verbose_run(input: &Path, output: &Path, home: &Path, extra: &[&str]) -> String {
    let _ = fs::remove_file(output);
    let pw = write_password(output.parent().unwrap(), PASSWORD);
    let o = run(bin()
        .env("XDG_CACHE_HOME", home)
        .env_remove("IMPRINT_CACHE_DIR")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["-v", "provision", "--serial", SERIAL, "--offline"])
        .args(extra)
        .args(["--owner", "azaion", "--password-file"])
        .arg(pw)
        .arg("--image")
        .arg(input)
        .arg("--output")
        .arg(output));
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

/// Multi-block and single-block: the first run decodes the cut block up
/// to the cut and caches what that gave; the second hits the cache,
/// decodes nothing up to the cut (said in -v) and writes the same bytes.
#[test]
fn a_warm_multi_block_run_starts_at_the_cut_without_decoding() {
    warm_case("multi");
}

#[test]
fn a_warm_single_block_run_starts_at_the_cut_without_decoding() {
    warm_case("single");
}

fn warm_case(label: &str) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let (plain, change) = plain_tar(d, Place::End);
    let block = (change as f64 / 1.7) as u64;
    let options = match label {
        "multi" => format!("--block-size={block}"),
        _ => "-T1".to_string(),
    };
    let xz = d.join(format!("warm-{label}.tar.xz"));
    compress(&plain, &xz, &options);
    // A file changed in the last seconds is not cached.
    std::thread::sleep(Duration::from_millis(2100));
    let home = d.join(format!("home-{label}"));
    let (cold, warm) = (
        d.join(format!("{label}-cold.tar.xz")),
        d.join(format!("{label}-warm.tar.xz")),
    );
    let first = verbose_run(&xz, &cold, &home, &[]);
    assert!(first.contains("scan cache miss"), "{first}");
    assert!(
        first.contains("bytes of the block decoded up to the cut"),
        "{first}"
    );
    let second = verbose_run(&xz, &warm, &home, &[]);
    assert!(second.contains("scan cache hit"), "{second}");
    assert!(
        second.contains("nothing decoded up to the cut"),
        "{label}: {second}"
    );
    assert!(!second.contains("decoding the block again"), "{second}");
    assert!(
        fs::read(&cold).unwrap() == fs::read(&warm).unwrap(),
        "{label}"
    );
    check_archive(&warm, Some("xz"));
    if label == "multi" {
        kept_inside(&xz, &warm, change, 16 << 10, label);
    }
}
