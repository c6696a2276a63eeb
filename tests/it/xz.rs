//! xz tarballs as `xz -T`, `pixz -t` and Yocto write them (many blocks) and as
//! plain `xz` writes them (one block): the output keeps the input's blocks
//! before the one holding the first change byte for byte, decompresses to
//! what a full rewrite gives, keeps the input's check type and filters,
//! and passes `xz -t`, `xz -lvv`, GNU tar and bsdtar.
//!
//! The system `xz` (5.4.1 on the CI image) writes every BCJ filter but
//! RISC-V (`--riscv` came with 5.6), so RISC-V inputs are not built here.

use crate::common::*;
use crate::fast_paths::{check_archive, decompressed, provision, tar_of, tree, Place};

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A 1 MiB tarball (2 MiB with data after the device file) with the device file at `place`, compressed by the shell
/// command `compress` (reading stdin).
fn input(d: &Path, label: &str, place: Place, compress: &str) -> PathBuf {
    let root = tree(d, place, true);
    let plain = d.join(format!("{label}.tar"));
    tar_of(&root, &plain);
    let xz = d.join(format!("{label}.tar.xz"));
    sh(&format!(
        "{compress} < {} > {}",
        plain.display(),
        xz.display()
    ));
    xz
}

/// The output of the fast path and of a full rewrite of `input`: both
/// decompress to the same archive, which GNU tar and bsdtar read; the
/// fast one is returned.
fn rewrite(d: &Path, label: &str, input: &Path) -> PathBuf {
    let pw = write_password(d, PASSWORD);
    let fast = d.join(format!("{label}-fast.tar.xz"));
    let slow = d.join(format!("{label}-slow.tar.xz"));
    provision(input, &fast, &pw, false);
    provision(input, &slow, &pw, true);
    assert!(
        decompressed(&fast, "xz") == decompressed(&slow, "xz"),
        "{label}: contents differ"
    );
    check_archive(&fast, Some("xz"));
    fast
}

/// The fast path's output alone (the full rewrite's equality is shown by
/// the tests above): `xz -t`, GNU tar and bsdtar read it.
fn fast_only(d: &Path, label: &str, input: &Path) -> PathBuf {
    let pw = write_password(d, PASSWORD);
    let fast = d.join(format!("{label}-fast.tar.xz"));
    provision(input, &fast, &pw, false);
    check_archive(&fast, Some("xz"));
    fast
}

/// How many leading bytes two files share.
fn same_prefix(a: &Path, b: &Path) -> usize {
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    a.iter().zip(&b).take_while(|(x, y)| x == y).count()
}

/// `xz -lvv`'s line for the whole file, and its block lines.
fn listing_of(path: &Path) -> String {
    let o = run(std::process::Command::new("xz").arg("-lvv").arg(path));
    assert!(o.status.success(), "xz -lvv: {}", stderr(&o));
    stdout(&o)
}

/// The check `xz -lvv` names for the file.
fn check_named(path: &Path) -> String {
    listing_of(path)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Check:")
                .map(|c| c.trim().to_string())
        })
        .expect("a Check: line")
}

/// Blocks of `xz -T2` in 256 KiB: a change at the start rewrites all,
/// in the middle keeps the blocks before it, at the end keeps all but the
/// last; a fast path that kept nothing fails the prefix assertions.
#[test]
fn multi_block_xz_keeps_the_blocks_before_a_change_at_the_start() {
    multi_block_case(Place::Start);
}

#[test]
fn multi_block_xz_keeps_the_blocks_before_a_change_in_the_middle() {
    multi_block_case(Place::Middle);
}

#[test]
fn multi_block_xz_keeps_the_blocks_before_a_change_at_the_end() {
    multi_block_case(Place::End);
}

fn multi_block_case(place: Place) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let label = format!("{place:?}");
    let xz = input(d, &label, place, "xz -T2 -6 --block-size=256KiB");
    let fast = rewrite(d, &label, &xz);
    let kept = same_prefix(&xz, &fast);
    let len = fs::metadata(&xz).unwrap().len() as usize;
    match place {
        // The device file sorts after the first half of the data.
        Place::Middle => assert!(kept > len * 4 / 10, "{label}: {kept} of {len} kept"),
        Place::End => assert!(kept > len * 8 / 10, "{label}: {kept} of {len} kept"),
        Place::Start => {}
    }
    // The index lists every block, kept and new, as xz reads them.
    let listing = listing_of(&fast);
    assert!(listing.contains("Sizes in headers:  Yes"), "{listing}");
    let out_len = fs::metadata(&fast).unwrap().len();
    // Within 1% (plus a block's worth of slack for tiny inputs).
    assert!(
        out_len.abs_diff(len as u64) < (len as u64 / 100).max(64 << 10),
        "{label}: {len} -> {out_len}"
    );
}

/// The output keeps the input's check (none, CRC32, CRC64, SHA-256),
/// kept blocks or not: multi-block and single-block inputs.
#[test]
fn the_check_type_none_is_kept() {
    check_type_case("none", "None");
}

#[test]
fn the_check_type_crc32_is_kept() {
    check_type_case("crc32", "CRC32");
}

#[test]
fn the_check_type_crc64_is_kept() {
    check_type_case("crc64", "CRC64");
}

#[test]
fn the_check_type_sha256_is_kept() {
    check_type_case("sha256", "SHA-256");
}

fn check_type_case(check: &str, named: &str) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    for (kind, command) in [
        ("multi", format!("xz -T2 -3 --block-size=512KiB -C {check}")),
        ("single", format!("xz -3 -C {check}")),
    ] {
        let label = format!("{check}-{kind}");
        let xz = input(d, &label, Place::End, &command);
        assert_eq!(check_named(&xz), named);
        let fast = fast_only(d, &label, &xz);
        assert_eq!(check_named(&fast), named, "{label}");
        // Blocks or LZMA2 chunks before the change kept.
        let kept = same_prefix(&xz, &fast);
        let len = fs::metadata(&xz).unwrap().len() as usize;
        assert!(kept > len / 2, "{label}: only {kept} of {len} bytes kept");
    }
}

/// The bytes of the one block's LZMA2 data two single-block files share
/// from its start (past each one's block header, whose size fields
/// change).
fn same_block_data(a: &Path, b: &Path) -> usize {
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    let data = |f: &[u8]| 12 + (usize::from(f[12]) + 1) * 4;
    a[data(&a)..]
        .iter()
        .zip(&b[data(&b)..])
        .take_while(|(x, y)| x == y)
        .count()
}

// The single-block cases (`single_block_case`), each kind and place its
// own test: they run side by side instead of one after another at the end
// of the run, where little else is left to run beside them.
#[test]
fn single_block_plain_xz_keeps_the_chunks_before_a_change_at_the_start() {
    single_block_case(PLAIN, Place::Start);
}

#[test]
fn single_block_plain_xz_keeps_the_chunks_before_a_change_in_the_middle() {
    single_block_case(PLAIN, Place::Middle);
}

#[test]
fn single_block_plain_xz_keeps_the_chunks_before_a_change_at_the_end() {
    single_block_case(PLAIN, Place::End);
}

#[test]
fn single_block_sized_xz_keeps_the_chunks_before_a_change_at_the_start() {
    single_block_case(SIZED, Place::Start);
}

#[test]
fn single_block_sized_xz_keeps_the_chunks_before_a_change_in_the_middle() {
    single_block_case(SIZED, Place::Middle);
}

#[test]
fn single_block_sized_xz_keeps_the_chunks_before_a_change_at_the_end() {
    single_block_case(SIZED, Place::End);
}

/// Plain `xz` (no sizes in its block header) and `xz -T2` of a file under
/// its block size (sizes in it): kind, command, "Sizes in headers".
type SingleBlock = (&'static str, &'static str, &'static str);
const PLAIN: SingleBlock = ("plain", "xz -6", "No");
const SIZED: SingleBlock = ("sized", "xz -T2 -6 --block-size=64MiB", "Yes");

/// Plain `xz` (one block, no sizes in its header) and `xz -T2` of a file
/// smaller than its block size (one block with sizes): the output keeps
/// the input's LZMA2 chunks before the change byte for byte and continues
/// the block with an encoder primed with the dictionary there; a fast path
/// that kept nothing fails the prefix assertions. `xz -lvv` lists one
/// block, with sizes in its header as the input had them.
fn single_block_case((kind, command, sizes): SingleBlock, place: Place) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let label = format!("{kind}-{place:?}");
    let xz = input(d, &label, place, command);
    let before = listing_of(&xz);
    assert!(
        before.contains(&format!("Sizes in headers:  {sizes}")),
        "{before}"
    );
    let fast = rewrite(d, &label, &xz);
    let kept = same_block_data(&xz, &fast);
    let len = fs::metadata(&xz).unwrap().len() as usize;
    match place {
        // The change lies halfway through the data; up to one
        // chunk (64 KiB compressed) before it is rewritten too,
        // which is a seventh of these 2 MiB inputs.
        Place::Middle => assert!(kept > len * 3 / 10, "{label}: {kept} of {len} kept"),
        // All but the chunk holding the change (at most 64 KiB
        // compressed) and the new entries after it.
        Place::End => assert!(len - kept < 96 << 10, "{label}: {kept} of {len} kept"),
        Place::Start => {}
    }
    if kind == "plain" && place != Place::Start {
        // The stream and block headers too: the same bytes.
        assert!(same_prefix(&xz, &fast) > kept, "{label}");
    }
    let listing = listing_of(&fast);
    if place != Place::Start {
        // Cut inside: one block, sizes as the input had them (a
        // change in the first chunk is a full rewrite).
        assert!(listing.contains("Blocks:            1"), "{listing}");
        assert!(
            listing.contains(&format!("Sizes in headers:  {sizes}")),
            "{listing}"
        );
    }
    let out_len = fs::metadata(&fast).unwrap().len();
    assert!(
        out_len.abs_diff(len as u64) < (len as u64 / 100).max(16 << 10),
        "{label}: {len} -> {out_len}"
    );
}

/// One block behind a BCJ filter (x86, ARM64): not cut inside (the
/// filter has its own state there); the output still equals a full
/// rewrite's, which `xz -t`, GNU tar and bsdtar read.
#[test]
fn single_block_x86_bcj_is_rewritten_correctly() {
    single_block_bcj_case("x86");
}

#[test]
fn single_block_arm64_bcj_is_rewritten_correctly() {
    single_block_bcj_case("arm64");
}

fn single_block_bcj_case(filter: &str) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let xz = input(
        d,
        filter,
        Place::Middle,
        &format!("xz --{filter} --lzma2=preset=3"),
    );
    let fast = rewrite(d, filter, &xz);
    sh(&format!("xz -t {}", fast.display()));
}

/// Every BCJ filter the system xz writes, before LZMA2: read, its blocks
/// kept, and the new blocks use the same filter chain.
#[test]
fn bcj_filters_are_read_and_repeated() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    for filter in [
        "x86", "arm64", "arm", "armthumb", "powerpc", "sparc", "ia64",
    ] {
        let xz = input(
            d,
            filter,
            Place::End,
            &format!("xz -T2 --block-size=512KiB --{filter} --lzma2=preset=3"),
        );
        let fast = fast_only(d, filter, &xz);
        let kept = same_prefix(&xz, &fast);
        let len = fs::metadata(&xz).unwrap().len() as usize;
        assert!(kept > len / 2, "{filter}: only {kept} of {len} bytes kept");
        let listing = listing_of(&fast);
        let blocks: Vec<&str> = listing.lines().filter(|l| l.contains("--lzma2=")).collect();
        assert!(blocks.len() > 2, "{listing}");
        for b in blocks {
            assert!(b.contains(&format!("--{filter} ")), "{filter}: {b}");
        }
    }
}

/// Several streams with stream padding between and after them (`cat` of
/// two `xz -T2` files, as split builds produce): the first stream is kept
/// whole, the second up to its block holding the change; padding and
/// stream count as xz reads them.
#[test]
fn several_streams_and_padding() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = tree(d, Place::End, true);
    let plain = d.join("in.tar");
    tar_of(&root, &plain);
    let xz = d.join("two.tar.xz");
    sh(&format!(
        "(head -c 500000 {p} | xz -T2 -3 --block-size=256KiB -C crc32; \
          head -c 8 /dev/zero; \
          tail -c +500001 {p} | xz -T2 -3 --block-size=256KiB -C crc32; \
          head -c 12 /dev/zero) > {x}",
        p = plain.display(),
        x = xz.display()
    ));
    sh(&format!("xz -t {}", xz.display()));
    let fast = rewrite(d, "two", &xz);
    let kept = same_prefix(&xz, &fast);
    let len = fs::metadata(&xz).unwrap().len() as usize;
    assert!(kept > len * 8 / 10, "{kept} of {len} kept");
    let listing = listing_of(&fast);
    assert!(listing.contains("Streams:           2"), "{listing}");
}
