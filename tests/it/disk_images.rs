//! Partitioned disk images, compressed raw images and block maps, built the
//! way the real tools build them: GPT disks as NVIDIA's
//! jetson-disk-image-creator.sh makes SD card images (`sgdisk -og`, then
//! one `sgdisk -n -c -t` per partition), DOS disks as sfdisk lays out
//! Buildroot's genimage layouts, every codec's own CLI, `bmaptool create`.
//! The real binary provisions them; sgdisk, e2fsck, debugfs, the codecs'
//! `-t`, `bmaptool copy` and, where the machine allows, the kernel check
//! the outputs.

use crate::common;
use crate::ext4_overlay;
use crate::fixtures;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use tempfile::TempDir;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

/// Where a partition lies in its disk, in bytes, as the partitioning
/// tool reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    offset: u64,
    len: u64,
}

impl Span {
    fn end(self) -> u64 {
        self.offset + self.len
    }
}

/// One partition to lay out: its GPT name, its type (an sgdisk type code
/// or an sfdisk type) and its size.
struct Layout {
    name: &'static str,
    kind: &'static str,
    size: u64,
}

fn part(name: &'static str, kind: &'static str, size: u64) -> Layout {
    Layout { name, kind, size }
}

/// A private directory for outputs (imprint refuses shared ones).
fn out_dir(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    sh(&format!("mkdir -m 700 {}", out.display()));
    out
}

/// A sparse file of `size` bytes.
fn blank(img: &Path, size: u64) {
    let _ = fs::remove_file(img);
    fs::File::create(img).unwrap().set_len(size).unwrap();
}

/// A GPT disk as jetson-disk-image-creator.sh writes one: `sgdisk -og`,
/// then one `sgdisk -n N:start:end -c N:NAME -t N:TYPE` per partition, the
/// partitions one after another from `first` (sectors), each start rounded
/// up to `align` sectors (`align` 1 passes `-a 1`: no alignment at all).
/// Returns each partition's span as `sgdisk -i` reports it.
fn sgdisk_disk(img: &Path, size: u64, parts: &[Layout], first: u64, align: u64) -> Vec<Span> {
    blank(img, size);
    sh(&format!("sgdisk -og {} >/dev/null", img.display()));
    let mut start = first;
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        start = start.div_ceil(align) * align;
        let end = start + p.size / SECTOR - 1;
        sh(&format!(
            "sgdisk {a} -n {n}:{start}:{end} -c {n}:{name} -t {n}:{kind} {img} >/dev/null",
            a = if align == 1 { "-a 1" } else { "" },
            name = p.name,
            kind = p.kind,
            img = img.display()
        ));
        start = end + 1;
    }
    (1..=parts.len()).map(|n| sgdisk_span(img, n)).collect()
}

/// A partition's span from `sgdisk -i`.
fn sgdisk_span(img: &Path, n: usize) -> Span {
    let info = stdout(&sh(&format!("sgdisk -i {n} {}", img.display())));
    let sector = |key: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in sgdisk -i {n}:\n{info}"));
        line[key.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (first, last) = (sector("First sector:"), sector("Last sector:"));
    Span {
        offset: first * SECTOR,
        len: (last - first + 1) * SECTOR,
    }
}

/// A DOS-labelled disk from an sfdisk script; returns the span of each
/// partition `sfdisk -d` lists, by partition number.
fn sfdisk_disk(img: &Path, size: u64, script: &str) -> Vec<(u32, Span)> {
    blank(img, size);
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk:\n{script}");
    let dump = stdout(&sh(&format!("sfdisk -d {}", img.display())));
    let name = img.display().to_string();
    dump.lines()
        .filter_map(|l| l.strip_prefix(&name))
        .map(|l| {
            let (number, fields) = l.split_once(':').unwrap();
            let field = |key: &str| -> u64 {
                let at = fields.find(key).unwrap() + key.len();
                fields[at..]
                    .split(',')
                    .next()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            (
                number.trim().parse().unwrap(),
                Span {
                    offset: field("start=") * SECTOR,
                    len: field("size=") * SECTOR,
                },
            )
        })
        .collect()
}

/// Fills a partition with random bytes, as a bootloader or kernel blob.
fn fill_random(img: &Path, span: Span) {
    sh(&format!(
        "head -c {len} /dev/urandom | dd of={img} bs=1M iflag=fullblock oflag=seek_bytes seek={seek} conv=notrunc status=none",
        len = span.len,
        img = img.display(),
        seek = span.offset
    ));
}

/// Makes an ext4 filesystem of `tree` in a partition, in place:
/// `mke2fs -E offset=...`.
fn mkfs_in_place(img: &Path, span: Span, tree: &Path) {
    sh(&format!(
        "mke2fs -F -q -t ext4 -E offset={},root_owner=0:0 -d {} {} {}k",
        span.offset,
        tree.display(),
        img.display(),
        span.len / 1024
    ));
}

/// Makes an ext4 image of `tree` the partition's size and copies it into
/// the partition with dd, as image assemblers do.
fn mkfs_and_dd(img: &Path, span: Span, tree: &Path) {
    let fs_img = img.with_extension("part.ext4");
    let o = mkfs(
        tree,
        &fs_img,
        &["-t", "ext4"],
        &format!("{}k", span.len / 1024),
    );
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    sh(&format!(
        "dd if={fs} of={img} bs=1M oflag=seek_bytes seek={seek} conv=notrunc,sparse status=none",
        fs = fs_img.display(),
        img = img.display(),
        seek = span.offset
    ));
    fs::remove_file(fs_img).unwrap();
}

/// A tree for a second filesystem that is not a rootfs (no /etc).
fn data_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("data-tree");
    fs::create_dir_all(tree.join("logs")).unwrap();
    fs::write(tree.join("logs/boot.log"), "data partition\n").unwrap();
    tree
}

/// The sha256 of a partition's bytes, read with dd.
fn span_sha(img: &Path, span: Span) -> String {
    let o = sh(&format!(
        "dd if={} bs=1M iflag=skip_bytes,count_bytes skip={} count={} status=none | sha256sum",
        img.display(),
        span.offset,
        span.len
    ));
    stdout(&o).split_whitespace().next().unwrap().to_string()
}

/// Copies a partition out with dd (holes kept).
fn extract(img: &Path, span: Span, to: &Path) {
    let _ = fs::remove_file(to);
    sh(&format!(
        "dd if={} of={} bs=1M iflag=skip_bytes,count_bytes skip={} count={} conv=sparse status=none",
        img.display(),
        to.display(),
        span.offset,
        span.len
    ));
}

/// Allocated bytes (what du counts).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Checks a provisioned disk against its input: the same size; every byte
/// outside the rootfs partition the input's (partition tables, the
/// protective MBR, gaps and the other partitions, each also by its own
/// digest); the rootfs clean to e2fsck with device.conf as provisioned
/// for `azaion` (1001:1001); holes kept.
fn check_disk(input: &Path, out: &Path, parts: &[Span], rootfs: Span, scratch: &Path) {
    assert_eq!(
        fs::metadata(out).unwrap().len(),
        fs::metadata(input).unwrap().len(),
        "the output's size"
    );
    sh(&format!(
        "cmp -n {} {i} {o} && cmp -i {} {i} {o}",
        rootfs.offset,
        rootfs.end(),
        i = input.display(),
        o = out.display()
    ));
    for &p in parts.iter().filter(|&&p| p != rootfs) {
        assert_eq!(span_sha(out, p), span_sha(input, p), "partition at {p:?}");
    }
    assert_ne!(span_sha(out, rootfs), span_sha(input, rootfs));
    let fs_img = scratch.join("rootfs-out.ext4");
    extract(out, rootfs, &fs_img);
    assert_fsck_clean(&fs_img);
    assert_eq!(
        debugfs_stat(&fs_img, "/etc/azaion/device.conf"),
        (0o600, 1001, 1001)
    );
    assert_eq!(
        debugfs(&fs_img, "cat /etc/azaion/device.conf"),
        conf_text(EMAIL, PASSWORD)
    );
    fs::remove_file(fs_img).unwrap();
    // Holes stay holes: the output costs about what the input does (less
    // where the input had zeros written out).
    let (a_in, a_out) = (allocated(input), allocated(out));
    assert!(
        a_out <= a_in + MIB,
        "the output takes {a_out} bytes on disk, the input {a_in}"
    );
}

fn assert_gpt_clean(img: &Path) {
    let v = stdout(&sh(&format!("sgdisk -v {}", img.display())));
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
}

fn provision(input: &Path, output: &Path, pw: &Path, partition: Option<&str>) -> Command {
    let mut c = provision_offline(input, output, "azaion", pw);
    if let Some(p) = partition {
        c.args(["--partition", p]);
    }
    c
}

fn provisioned(input: &Path, output: &Path, pw: &Path, partition: Option<&str>) {
    let o = run(&mut provision(input, output, pw, partition));
    assert!(
        o.status.success(),
        "provision {} --partition {partition:?}: {}",
        input.display(),
        stderr(&o)
    );
    assert!(!stdout(&o).contains(PASSWORD) && !stderr(&o).contains(PASSWORD));
}

pub(crate) fn verify(out: &Path, partition: Option<&str>) -> std::process::Output {
    let mut c = bin();
    c.arg("verify")
        .arg(out)
        .args(["--serial", SERIAL, "--owner", "azaion"]);
    if let Some(p) = partition {
        c.args(["--partition", p]);
    }
    run(&mut c)
}

/// `verify` of `out` (in `partition`) passes, e2fsck included.
pub(crate) fn assert_verifies(out: &Path, partition: Option<&str>) {
    let v = verify(out, partition);
    assert!(
        v.status.success(),
        "verify {} --partition {partition:?}:\n{}{}",
        out.display(),
        stdout(&v),
        stderr(&v)
    );
    assert!(stdout(&v).contains("e2fsck"), "{}", stdout(&v));
}

/// Mounts the partition at `span` of `img` read-only through the kernel
/// and checks device.conf; does nothing where the machine does not allow
/// loop mounts.
fn kernel_check(img: &Path, span: Span) {
    let conf = "/etc/azaion/device.conf";
    if let Some((stat, content)) = kernel_read_at(img, Some((span.offset, span.len)), conf) {
        assert_eq!(stat, "600 1001 1001");
        assert_eq!(content, conf_text(EMAIL, PASSWORD));
    }
}

/// The SD card layout of jetson-disk-image-creator.sh: bootloader and
/// kernel blobs around `APP`, the rootfs, made in place with
/// `mke2fs -E offset`. A recovery rootfs that also holds /etc shows the
/// name `APP` decides, not the contents.
fn jetson_sd_card(img: &Path, first: u64, align: u64) -> (Vec<Span>, usize) {
    let (built, parts) = fixtures::shared(&format!("jetson-sd-{first}-{align}"), |dir| {
        let tree = ext4_tree(dir, 40, Azaion::Absent);
        let img = dir.join("disk.img");
        let parts = sgdisk_disk(
            &img,
            96 * MIB,
            &[
                part("kernel", "8300", MIB),
                part("kernel-dtb", "8300", MIB / 2),
                part("APP", "8300", 48 * MIB),
                part("recovery", "8300", 2 * MIB),
                part("RECROOTFS", "8300", 16 * MIB),
                part("kernel_b", "8300", MIB),
            ],
            first,
            align,
        );
        for i in [0, 1, 3, 5] {
            fill_random(&img, parts[i]);
        }
        mkfs_in_place(&img, parts[2], &tree);
        mkfs_in_place(&img, parts[4], &tree);
        assert_gpt_clean(&img);
        parts
    });
    fixtures::copy(&built, "disk.img", img);
    (parts, 2)
}

#[test]
fn jetson_sd_card_image() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let img = dir.path().join("sd-blob.img");
    let (parts, app) = jetson_sd_card(&img, 2048, 2048);
    let before = sha256(&img);
    let out = out_dir(dir.path(), "out");
    provisioned(&img, &out, &pw, None);
    assert_eq!(sha256(&img), before, "the input changed");
    let written = out.join(format!("{SERIAL}-sd-blob.img"));
    assert_eq!(
        listing(&out),
        [
            format!("{SERIAL}-sd-blob.img"),
            format!("{SERIAL}-sd-blob.img.sha256")
        ],
        "no block map without one beside the input, no scratch left"
    );
    check_disk(&img, &written, &parts, parts[app], dir.path());
    assert_gpt_clean(&written);
    assert_verifies(&written, None);
    kernel_check(&written, parts[app]);
}

/// Partitions on odd sectors (`sgdisk -a 1`): the changed filesystem
/// blocks straddle the host's 4 KiB blocks and the input's holes.
#[test]
fn gpt_partitions_on_odd_sectors() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let img = dir.path().join("odd.img");
    let (parts, app) = jetson_sd_card(&img, 2049, 1);
    assert!(parts[app].offset % 4096 != 0, "{:?}", parts[app]);
    let out = out_dir(dir.path(), "out");
    let written = out.join("odd.img");
    provisioned(&img, &written, &pw, None);
    check_disk(&img, &written, &parts, parts[app], dir.path());
    assert_gpt_clean(&written);
    assert_verifies(&written, None);
    kernel_check(&written, parts[app]);
}

/// Buildroot's genimage layout for an SD card: a FAT boot partition
/// (random bytes here), then the ext4 rootfs, copied in from its own image
/// file. With no names, the only ext partition holding /etc is chosen.
#[test]
fn mbr_genimage_layout() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let tree = ext4_tree(dir.path(), 0, Azaion::Absent);
    let img = dir.path().join("sdcard.img");
    let parts = sfdisk_disk(
        &img,
        80 * MIB,
        "label: dos\nstart=8192, size=32768, type=c, bootable\nstart=40960, size=98304, type=83\n",
    );
    assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
    fill_random(&img, parts[0].1);
    mkfs_and_dd(&img, parts[1].1, &tree);
    let spans: Vec<Span> = parts.iter().map(|p| p.1).collect();
    let out = out_dir(dir.path(), "out");
    let written = out.join("sdcard.img");
    provisioned(&img, &written, &pw, None);
    check_disk(&img, &written, &spans, spans[1], dir.path());
    assert_eq!(
        stdout(&sh(&format!("sfdisk -d {} | sed 1,3d", written.display())))
            .replace(&written.display().to_string(), "X"),
        stdout(&sh(&format!("sfdisk -d {} | sed 1,3d", img.display())))
            .replace(&img.display().to_string(), "X"),
    );
    assert_verifies(&written, None);
    kernel_check(&written, spans[1]);
}

/// The rootfs in a logical partition (6), after a data filesystem without
/// /etc in another (5), inside an extended partition.
#[test]
fn mbr_rootfs_in_a_logical_partition() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let tree = ext4_tree(dir.path(), 0, Azaion::Absent);
    let data = data_tree(dir.path());
    let img = dir.path().join("logical.img");
    let parts = sfdisk_disk(
        &img,
        96 * MIB,
        "label: dos\n\
         start=2048, size=8192, type=c, bootable\n\
         start=10240, size=180224, type=5\n\
         start=12288, size=16384, type=83\n\
         start=30720, size=98304, type=83\n",
    );
    assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 5, 6]);
    let span = |n: u32| parts.iter().find(|p| p.0 == n).unwrap().1;
    fill_random(&img, span(1));
    mkfs_and_dd(&img, span(5), &data);
    mkfs_and_dd(&img, span(6), &tree);
    // The extended partition's span holds the logical ones: compare the
    // primary and the logical partitions, and everything else with cmp.
    let spans = [span(1), span(5), span(6)];
    let out = out_dir(dir.path(), "out");
    let written = out.join("logical.img");
    provisioned(&img, &written, &pw, None);
    check_disk(&img, &written, &spans, span(6), dir.path());
    assert_verifies(&written, None);
    assert_verifies(&written, Some("6"));
    kernel_check(&written, span(6));
}

/// A .wic-like GPT with two root filesystems (an A/B layout): imprint
/// cannot tell which to stamp and says what it found; `--partition`
/// chooses by name or number; wrong choices are clear errors. Nothing is
/// written when it refuses.
#[test]
fn wic_with_two_rootfs_partitions() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let tree = ext4_tree(dir.path(), 0, Azaion::Absent);
    let img = dir.path().join("core-image.wic");
    let parts = sgdisk_disk(
        &img,
        72 * MIB,
        &[
            part("bootblob", "EF00", 4 * MIB),
            part("rootfsA", "8300", 24 * MIB),
            part("rootfsB", "8300", 32 * MIB),
        ],
        2048,
        2048,
    );
    fill_random(&img, parts[0]);
    mkfs_in_place(&img, parts[1], &tree);
    mkfs_in_place(&img, parts[2], &tree);
    let out = out_dir(dir.path(), "out");

    let refused = |partition: Option<&str>, says: &[&str]| {
        let o = run(&mut provision(&img, &out, &pw, partition));
        assert!(!o.status.success(), "--partition {partition:?} succeeded");
        let err = stderr(&o);
        for s in says {
            assert!(
                err.contains(s),
                "--partition {partition:?}: no {s:?} in:\n{err}"
            );
        }
        assert!(
            listing(&out).is_empty(),
            "--partition {partition:?} left {:?}",
            listing(&out)
        );
        err
    };
    let err = refused(None, &["--partition"]);
    for (number, name, size) in [(2, "rootfsA", "24.0 MiB"), (3, "rootfsB", "32.0 MiB")] {
        let line = err
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{err}"));
        assert!(
            line.trim_start().starts_with(&number.to_string())
                && line.contains(size)
                && line.contains("holds /etc"),
            "{line}"
        );
    }
    assert!(err.contains("bootblob"), "{err}");
    refused(Some("9"), &["no partition 9", "rootfsA", "rootfsB"]);
    refused(Some("rootfsC"), &["no partition named \"rootfsC\""]);
    refused(Some("bootblob"), &["partition 1 is not an ext2/3/4"]);
    refused(Some("1"), &["partition 1 is not an ext2/3/4"]);
    // Compressed, the same refusal comes after the image was decompressed
    // into a scratch file beside the output: none is left behind.
    let zst = dir.path().join("core-image.wic.zst");
    sh(&format!("zstd -q -c {} > {}", img.display(), zst.display()));
    let o = run(&mut provision(&zst, &out, &pw, None));
    assert!(
        !o.status.success() && stderr(&o).contains("holds /etc"),
        "{}",
        stderr(&o)
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    // Chosen, it is stamped there, and verify looks there too.
    let written = out.join("by-name.wic.zst");
    provisioned(&zst, &written, &pw, Some("rootfsB"));
    assert_verifies(&written, Some("rootfsB"));
    assert!(!verify(&written, Some("rootfsA")).status.success());
    let raw = dir.path().join("by-name.wic");
    sh(&format!(
        "zstd -q -d {} -o {}",
        written.display(),
        raw.display()
    ));
    check_disk(&img, &raw, &parts, parts[2], dir.path());
    fs::remove_file(&raw).unwrap();
    for name in listing(&out) {
        fs::remove_file(out.join(name)).unwrap();
    }

    for (choice, chosen, other) in [("rootfsB", 2, 1), ("2", 1, 2)] {
        let written = out.join(format!("by-{choice}.wic"));
        provisioned(&img, &written, &pw, Some(choice));
        check_disk(&img, &written, &parts, parts[chosen], dir.path());
        assert_gpt_clean(&written);
        assert_eq!(
            span_sha(&written, parts[other]),
            span_sha(&img, parts[other])
        );
        let number = (chosen + 1).to_string();
        assert_verifies(&written, Some(choice));
        assert_verifies(&written, Some(&number));
        // The other rootfs has no device.conf: verify looks where it is told.
        let v = verify(&written, Some(&(other + 1).to_string()));
        assert!(!v.status.success(), "{}", stdout(&v));
        // Without --partition, verify cannot choose either.
        let v = verify(&written, None);
        assert!(
            !v.status.success() && stderr(&v).contains("--partition"),
            "{}{}",
            stdout(&v),
            stderr(&v)
        );
    }
}

/// An APP partition smaller than the filesystem in it (a partition table
/// edited after the fact): refused, saying so, before anything is written;
/// `verify` says the same.
#[test]
fn filesystem_larger_than_its_partition() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let tree = ext4_tree(dir.path(), 0, Azaion::Absent);
    let img = dir.path().join("shrunk.img");
    let parts = sgdisk_disk(
        &img,
        48 * MIB,
        &[
            part("APP", "8300", 16 * MIB),
            part("recovery", "8300", 8 * MIB),
        ],
        2048,
        2048,
    );
    // The filesystem runs 8 MiB on into the recovery partition (blank).
    mkfs_in_place(
        &img,
        Span {
            offset: parts[0].offset,
            len: 24 * MIB,
        },
        &tree,
    );
    let out = out_dir(dir.path(), "out");
    let o = run(&mut provision(&img, &out, &pw, None));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("partition 1 \"APP\" holds an ext2/3/4 filesystem imprint cannot use")
            && err.contains("larger than its partition")
            && err.contains("24.0 MiB")
            && err.contains("16.0 MiB"),
        "{err}"
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    let v = verify(&img, None);
    assert!(
        !v.status.success() && stderr(&v).contains("larger than its partition"),
        "{}{}",
        stdout(&v),
        stderr(&v)
    );
}

// ---- compressed raw images ---------------------------------------------

/// A way to compress an image, with its codec's own checks.
struct Codec {
    label: &'static str,
    /// Compresses stdin to stdout.
    compress: &'static str,
    suffix: &'static str,
    /// The codec's own integrity test and decompressor, given a file.
    test: &'static str,
    decompress: &'static str,
}

const CODECS: [Codec; 7] = [
    Codec {
        label: "gzip",
        compress: "gzip -6 -n -c",
        suffix: ".gz",
        test: "gzip -t",
        decompress: "gzip -dc",
    },
    Codec {
        label: "pigz",
        compress: "pigz -c",
        suffix: ".gz",
        test: "gzip -t",
        decompress: "gzip -dc",
    },
    Codec {
        label: "bzip2",
        compress: "bzip2 -9 -c",
        suffix: ".bz2",
        test: "bzip2 -t",
        decompress: "bzip2 -dc",
    },
    Codec {
        label: "pbzip2",
        compress: "pbzip2 -c",
        suffix: ".bz2",
        test: "bzip2 -t",
        decompress: "bzip2 -dc",
    },
    Codec {
        label: "zstd",
        compress: "zstd -q -c",
        suffix: ".zst",
        test: "zstd -q -t",
        decompress: "zstd -q -dc",
    },
    Codec {
        label: "zstd-no-check",
        compress: "zstd -q --no-check -c",
        suffix: ".zst",
        test: "zstd -q -t",
        decompress: "zstd -q -dc",
    },
    Codec {
        label: "xz",
        compress: "xz -T0 -c",
        suffix: ".xz",
        test: "xz -t",
        decompress: "xz -dc",
    },
];

fn compress(codec: &Codec, input: &Path, to: &Path) {
    sh(&format!(
        "{} < {} > {}",
        codec.compress,
        input.display(),
        to.display()
    ));
}

/// `Check: XXH64` or `Check: None` from `zstd -lv`.
fn zstd_check(path: &Path) -> String {
    let o = sh(&format!("zstd -lv {} 2>&1", path.display()));
    stdout(&o)
        .lines()
        .find(|l| l.trim_start().starts_with("Check:"))
        .unwrap_or_else(|| panic!("no Check: in zstd -lv:\n{}", stdout(&o)))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// A password file, a raw ext4 image (`rootfs.ext4`) and a small GPT disk
/// (`sd.img`: random `kernel`, the same filesystem in `APP`) in `dir`,
/// with the disk's partition spans.
fn raw_and_disk(dir: &Path) -> (PathBuf, PathBuf, PathBuf, Vec<Span>) {
    let (built, parts) = fixtures::shared("raw-and-disk", |dir| {
        let tree = ext4_tree(dir, 20, Azaion::Absent);
        let o = mkfs(&tree, &dir.join("rootfs.ext4"), &["-t", "ext4"], "24M");
        assert!(o.status.success(), "mke2fs: {}", stderr(&o));
        let disk = dir.join("sd.img");
        let parts = sgdisk_disk(
            &disk,
            48 * MIB,
            &[part("kernel", "8300", MIB), part("APP", "8300", 32 * MIB)],
            2048,
            2048,
        );
        fill_random(&disk, parts[0]);
        mkfs_in_place(&disk, parts[1], &tree);
        parts
    });
    let pw = write_password(dir, PASSWORD);
    let (ext4, disk) = (dir.join("rootfs.ext4"), dir.join("sd.img"));
    fixtures::copy(&built, "rootfs.ext4", &ext4);
    fixtures::copy(&built, "sd.img", &disk);
    (pw, ext4, disk, parts)
}

/// Every codec around a raw ext4 image and around a disk image: the
/// output is the input's codec (its `-t` passes; zstd keeps the input's
/// checksum flag), and decompressed it is byte for byte what a run on
/// the decompressed input writes.
#[test]
fn compressed_raw_and_disk_images_in_every_codec() {
    let dir = TempDir::new().unwrap();
    let (pw, ext4, disk, _) = raw_and_disk(dir.path());

    let out = out_dir(dir.path(), "out");
    for plain in [&ext4, &disk] {
        let name = plain.file_name().unwrap().to_str().unwrap();
        let reference = out.join(format!("plain-{name}"));
        provisioned(plain, &reference, &pw, None);
        let want = sha256(&reference);
        for codec in &CODECS {
            require_tool(codec.compress.split_whitespace().next().unwrap());
            let what = format!("{name} with {}", codec.label);
            let input = dir
                .path()
                .join(format!("{}-{name}{}", codec.label, codec.suffix));
            compress(codec, plain, &input);
            let written = out.join(format!("{}-{name}{}", codec.label, codec.suffix));
            provisioned(&input, &written, &pw, None);
            sh(&format!("{} {}", codec.test, written.display()));
            let o = sh(&format!(
                "{} {} | sha256sum",
                codec.decompress,
                written.display()
            ));
            assert_eq!(
                stdout(&o).split_whitespace().next().unwrap(),
                want,
                "{what}: decompressed, the output differs from the plain run's"
            );
            if codec.suffix == ".zst" {
                assert_eq!(zstd_check(&written), zstd_check(&input), "{what}");
            }
            assert_verifies(&written, None);
            fs::remove_file(&input).unwrap();
            fs::remove_file(&written).unwrap();
            fs::remove_file(out.join(format!("{}-{name}{}.sha256", codec.label, codec.suffix)))
                .unwrap();
        }
        let mut left = listing(&out);
        left.sort();
        assert_eq!(
            left,
            [format!("plain-{name}"), format!("plain-{name}.sha256")],
            "no scratch file is left beside the outputs"
        );
        fs::remove_file(&reference).unwrap();
        fs::remove_file(out.join(format!("plain-{name}.sha256"))).unwrap();
    }
    // The checks above compare with the input's flag; make sure both
    // flags were seen.
    let probe = dir.path().join("probe.zst");
    compress(&CODECS[5], &ext4, &probe);
    assert_eq!(zstd_check(&probe), "None");
    compress(&CODECS[4], &ext4, &probe);
    assert_eq!(zstd_check(&probe), "XXH64");
}

/// How many bytes two files share at the same offsets from `from` on.
fn same_bytes_from(a: &Path, b: &Path, from: usize) -> usize {
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    a.iter()
        .zip(&b)
        .skip(from)
        .take_while(|(x, y)| x == y)
        .count()
}

/// A compressed disk whose rootfs is not the first partition (a `.wic` or
/// genimage layout: boot first) keeps the input's compressed bytes before
/// the rootfs partition, in every codec that has block boundaries (zstd
/// closes the kept frame at the boundary and starts a new one); the output
/// passes the codec's own test and decompresses to what a run on the
/// plain disk writes. Inputs the boundaries cannot serve (several gzip
/// members, pzstd's frames, single-block xz behind a BCJ filter) are
/// compressed anew, as correctly. Multi-block xz keeps its blocks before
/// the rootfs, single-block xz its LZMA2 chunks.
//
// Each case is its own test (they run side by side; the disk, the plain
// run's output and the compressed size of what lies before the rootfs are
// built once, `fixtures::shared`).
#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_gzip() {
    compressed_disk_case(
        "gzip",
        "gzip -6 -n -c IN > OUT",
        "gzip -t",
        "gzip -dc",
        true,
    );
}

#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_pigz() {
    compressed_disk_case("pigz", "pigz -c IN > OUT", "gzip -t", "gzip -dc", true);
}

#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_bzip2() {
    compressed_disk_case(
        "bzip2",
        "bzip2 -9 -c IN > OUT",
        "bzip2 -t",
        "bzip2 -dc",
        true,
    );
}

#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_pbzip2() {
    compressed_disk_case(
        "pbzip2",
        "pbzip2 -c IN > OUT",
        "bzip2 -t",
        "bzip2 -dc",
        true,
    );
}

/// From a file zstd records the content size; from a pipe it cannot.
#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_zstd() {
    compressed_disk_case(
        "zstd",
        "zstd -q -T0 -c IN > OUT",
        "zstd -q -t",
        "zstd -q -dc",
        true,
    );
}

#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_zstd_from_a_pipe() {
    compressed_disk_case(
        "zstd-pipe",
        "zstd -q --no-check -c < IN > OUT",
        "zstd -q -t",
        "zstd -q -dc",
        true,
    );
}

#[test]
fn compressed_disks_in_gzip_members_are_compressed_anew() {
    compressed_disk_case(
        "gzip-members",
        "head -c 1M IN | gzip -c > OUT && tail -c +1048577 IN | gzip -c >> OUT",
        "gzip -t",
        "gzip -dc",
        false,
    );
}

#[test]
fn compressed_disks_in_pzstd_frames_are_compressed_anew() {
    compressed_disk_case(
        "pzstd",
        "pzstd -q -p 2 -c IN > OUT",
        "zstd -q -t",
        "zstd -q -dc",
        false,
    );
}

/// Yocto's `xz -T`: blocks, the ones before the rootfs kept.
#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_xz_blocks() {
    compressed_disk_case(
        "xz-blocks",
        "xz -T2 -6 --block-size=1MiB -c IN > OUT",
        "xz -t",
        "xz -dc",
        true,
    );
}

/// Plain `xz`: one block, its LZMA2 chunks before the rootfs kept.
#[test]
fn compressed_disks_keep_the_bytes_before_the_rootfs_xz_one_block() {
    compressed_disk_case("xz-one-block", "xz -3 -c IN > OUT", "xz -t", "xz -dc", true);
}

/// One block behind an x86 BCJ filter: not cut inside, nothing kept.
#[test]
fn compressed_disks_in_one_xz_block_behind_bcj_are_compressed_anew() {
    compressed_disk_case(
        "xz-one-block-x86",
        "xz --x86 --lzma2=preset=3 -c IN > OUT",
        "xz -t",
        "xz -dc",
        false,
    );
}

/// The `.wic` the compressed-disk cases start from, built once: a 16 MiB
/// boot partition of text, then the rootfs. Returns the disk (in the
/// fixture directory: read only), the rootfs's offset and the SHA-256 of
/// what a run on the plain disk writes.
fn wic_with_boot_first() -> (PathBuf, u64, String) {
    let (built, (rootfs, want)) = fixtures::shared("wic-boot-first", |dir| {
        let pw = write_password(dir, PASSWORD);
        let tree = ext4_tree(dir, 20, Azaion::Absent);
        let disk = dir.join("core-image.wic");
        let parts = sgdisk_disk(
            &disk,
            36 * MIB,
            &[
                part("boot", "0700", 16 * MIB),
                part("root", "8300", 16 * MIB),
            ],
            2048,
            2048,
        );
        // A boot partition's kernel and firmware compress, as text does.
        sh(&format!(
            "{{ seq 1 4000000 || true; }} | head -c {} | dd of={} bs=1M iflag=fullblock oflag=seek_bytes seek={} conv=notrunc status=none",
            parts[0].len,
            disk.display(),
            parts[0].offset
        ));
        mkfs_in_place(&disk, parts[1], &tree);
        let out = out_dir(dir, "out");
        let reference = out.join("plain.wic");
        provisioned(&disk, &reference, &pw, None);
        (parts[1].offset, sha256(&reference))
    });
    (built.join("core-image.wic"), rootfs, want)
}

/// One compressed-disk case: `label`, how the input is made from the disk
/// (IN) into OUT, the codec's test, its decompressor, and whether the
/// prefix is kept.
fn compressed_disk_case(label: &str, make: &str, test: &str, decompress: &str, kept: bool) {
    require_tool(make.split_whitespace().next().unwrap());
    let (disk, rootfs, want) = wic_with_boot_first();
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let out = out_dir(dir.path(), "out");
    let (suffix, sizing) = match test.split_whitespace().next().unwrap() {
        "gzip" => (".gz", "gzip -6 -c"),
        "bzip2" => (".bz2", "bzip2 -9 -c"),
        // In 1 MiB blocks: one `xz -6` stream over this text is
        // chaotic, its size 355 to 617 kB from run to run as the GPT's
        // random GUIDs change a few bytes; blocks keep that to one.
        "xz" => (".xz", "xz -6 --block-size=1MiB -c"),
        _ => (".zst", "zstd -q -c"),
    };
    let input = dir.path().join(format!("{label}.wic{suffix}"));
    sh(&make
        .replace("IN", &disk.display().to_string())
        .replace("OUT", &input.display().to_string()));
    let written = out.join(format!("{label}.wic{suffix}"));
    provisioned(&input, &written, &pw, None);
    sh(&format!("{test} {}", written.display()));
    let o = sh(&format!("{decompress} {} | sha256sum", written.display()));
    assert_eq!(
        stdout(&o).split_whitespace().next().unwrap(),
        want,
        "{label}: decompressed, the output differs from the plain run's"
    );
    assert_verifies(&written, None);
    // What the boot partition and the table before it take compressed
    // on their own: the kept prefix is about that (it ends at a block
    // boundary a little before the rootfs). Past a zstd frame header,
    // whose content size changes. The same for every tool of one codec:
    // measured once.
    let (_, before) = fixtures::shared(&format!("wic-boot-first-before{suffix}"), |_| {
        let o = sh(&format!(
            "head -c {rootfs} {} | {sizing} | wc -c",
            disk.display(),
        ));
        stdout(&o).trim().parse::<usize>().unwrap()
    });
    let same = same_bytes_from(&input, &written, 32);
    eprintln!("{label}: {same} bytes kept; before the rootfs alone: {before}");
    if kept {
        assert!(
            same * 10 >= before * 9,
            "{label}: {same} bytes kept of the {before} the partitions before the rootfs take"
        );
    } else {
        assert!(same * 2 < before, "{label}: {same} of {before} bytes kept");
    }
    fs::remove_file(&input).unwrap();
    fs::remove_file(&written).unwrap();
    fs::remove_file(out.join(format!("{label}.wic{suffix}.sha256"))).unwrap();
}

/// Compressed data that is no image: refused, saying what was found, and
/// no output.
#[test]
fn compressed_non_images_are_refused() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let random = dir.path().join("random.img.gz");
    sh(&format!(
        "head -c 300000 /dev/urandom | gzip -c > {}",
        random.display()
    ));
    let text = dir.path().join("notes.img.zst");
    sh(&format!(
        "seq 1 100000 | sed 's/^/line /' | zstd -q -c > {}",
        text.display()
    ));
    // A raw image cut short in transfer: refused, and the scratch file it
    // was being decompressed into is gone.
    let short = dir.path().join("short.img.zst");
    let ext4 = small_ext4(dir.path(), "whole.ext4");
    sh(&format!(
        "head -c 300000 /dev/urandom >> {e} && zstd -q -c {e} > {s} && truncate -s 200000 {s}",
        e = ext4.display(),
        s = short.display()
    ));
    let out = out_dir(dir.path(), "out");
    let o = run(&mut provision(&short, &out, &pw, None));
    assert!(!o.status.success(), "a truncated .zst was accepted");
    assert!(
        stderr(&o).contains("cannot decompress the zstd stream"),
        "{}",
        stderr(&o)
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    for (input, codec) in [(&random, "gzip"), (&text, "zstd")] {
        let o = run(&mut provision(input, &out, &pw, None));
        assert!(!o.status.success(), "{} was accepted", input.display());
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "{codec}-compressed data that is neither a tar archive nor a filesystem or disk image"
            )),
            "{err}"
        );
        assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    }
}

// ---- block maps --------------------------------------------------------

/// The mapped ranges of a bmap file, in bytes `[start, end)`.
fn bmap_ranges(path: &Path) -> Vec<(u64, u64)> {
    let xml = fs::read_to_string(path).unwrap();
    let number = |tag: &str| -> u64 {
        let open = format!("<{tag}>");
        // The last occurrence: bmaptool's header comment names the tags.
        let at = xml.rfind(&open).unwrap() + open.len();
        xml[at..].split('<').next().unwrap().trim().parse().unwrap()
    };
    let (size, block) = (number("ImageSize"), number("BlockSize"));
    xml.lines()
        .filter(|l| l.trim_start().starts_with("<Range"))
        .map(|l| {
            let body = l
                .split('>')
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .trim();
            let (a, b) = body.split_once('-').unwrap_or((body, body));
            let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            (a * block, ((b + 1) * block).min(size))
        })
        .collect()
}

/// Whether every range of `inner` lies inside a range of `outer`.
fn covered(inner: &[(u64, u64)], outer: &[(u64, u64)]) -> bool {
    inner
        .iter()
        .all(|&(a, b)| outer.iter().any(|&(c, d)| c <= a && b <= d))
}

/// The sha256 of bytes `[a, b)` of a file.
fn range_sha(path: &Path, (a, b): (u64, u64)) -> String {
    span_sha(
        path,
        Span {
            offset: a,
            len: b - a,
        },
    )
}

/// `bmaptool copy` of an output with its block map into a regular file:
/// bmaptool checks every range's digest; the copy equals the output on
/// every mapped range, and everywhere else both read as zeros.
fn bmaptool_copy(bmap: &Path, image: &Path, raw: &Path, dir: &Path) {
    let target = dir.join("flashed.img");
    let _ = fs::remove_file(&target);
    sh(&format!(
        "bmaptool copy --bmap {} {} {} 2>&1",
        bmap.display(),
        image.display(),
        target.display()
    ));
    for range in bmap_ranges(bmap) {
        assert_eq!(
            range_sha(&target, range),
            range_sha(raw, range),
            "{range:?}"
        );
    }
    sh(&format!("cmp {} {}", target.display(), raw.display()));
    fs::remove_file(&target).unwrap();
}

#[test]
fn block_maps_follow_their_images() {
    require_tool("bmaptool");
    let dir = TempDir::new().unwrap();
    let (pw, ext4, disk, parts) = raw_and_disk(dir.path());
    let out = out_dir(dir.path(), "out");

    // Without a block map beside the input, none beside the output.
    for input in [&ext4, &disk] {
        let written = out.join(input.file_name().unwrap());
        provisioned(input, &written, &pw, None);
        assert!(
            listing(&out).iter().all(|n| !n.ends_with(".bmap")),
            "{:?}",
            listing(&out)
        );
        fs::remove_file(&written).unwrap();
    }

    for input in [&ext4, &disk] {
        let name = input.file_name().unwrap().to_str().unwrap();
        let in_bmap = dir.path().join(format!("{name}.bmap"));
        sh(&format!(
            "bmaptool create -o {} {}",
            in_bmap.display(),
            input.display()
        ));
        let written = out.join(format!("new-{name}"));
        provisioned(input, &written, &pw, None);
        let out_bmap = out.join(format!("new-{name}.bmap"));
        assert!(out_bmap.is_file(), "{:?}", listing(&out));
        assert!(covered(&bmap_ranges(&in_bmap), &bmap_ranges(&out_bmap)));
        bmaptool_copy(&out_bmap, &written, &written, dir.path());
        if input == &disk {
            check_disk(&disk, &written, &parts, parts[1], dir.path());
        }
        assert_verifies(&written, None);
    }

    // Yocto's deploy directory: X.wic.zst with X.wic.bmap beside it.
    let wic_dir = dir.path().join("deploy");
    fs::create_dir(&wic_dir).unwrap();
    let wic = wic_dir.join("core-image.wic");
    sh(&format!(
        "cp --sparse=always {} {}",
        disk.display(),
        wic.display()
    ));
    sh(&format!(
        "cd {} && bmaptool create -o core-image.wic.bmap core-image.wic && zstd -q --rm core-image.wic",
        wic_dir.display()
    ));
    let zst = wic_dir.join("core-image.wic.zst");
    let written = out.join("device.wic.zst");
    provisioned(&zst, &written, &pw, None);
    let out_bmap = out.join("device.wic.bmap");
    assert!(out_bmap.is_file(), "{:?}", listing(&out));
    assert!(!out.join("device.wic.zst.bmap").exists());
    let raw = dir.path().join("device.wic");
    sh(&format!(
        "zstd -q -d {} -o {}",
        written.display(),
        raw.display()
    ));
    assert!(covered(
        &bmap_ranges(&wic_dir.join("core-image.wic.bmap")),
        &bmap_ranges(&out_bmap)
    ));
    bmaptool_copy(&out_bmap, &written, &raw, dir.path());
    check_disk(&disk, &raw, &parts, parts[1], dir.path());
    assert_verifies(&written, None);
}

// ---- size and memory ---------------------------------------------------

/// Memory does not grow with the image, shown at two sizes instead of a
/// gigabyte (which the slow tier's [`gigabyte_images_in_little_memory`]
/// adds): a disk whose APP partition is 48 MiB holding 32 MiB of
/// incompressible files, and 96 MiB holding 64 MiB, plain and in zstd,
/// bzip2 (pbzip2) and gzip (pigz). The larger run's peak RSS is within
/// 8 MiB of the smaller one's (where one run at each size is not, the
/// larger's lower of two runs against the smaller's higher), all are
/// under 100 MiB, and the outputs verify. The smaller
/// image is as large as it is because a bound is only shown once every
/// queue is full: libzstd's multithreaded encoder touches its last output
/// buffers after about 32 MiB of incompressible data (16 MiB left its
/// peak at 30 to 36 MiB from run to run, 32 MiB at 38 MiB each time),
/// bzip2's decode and encode queues after a dozen blocks (2 MiB of such
/// data left the queues part empty and its peak 11 MiB below the larger
/// run's, in CI).
//
// Each codec is its own test (they run side by side); the two disks are
// built once (`fixtures::shared`), each test compresses them in its codec.
#[test]
fn memory_does_not_grow_with_the_image_plain() {
    memory_case("sd.img", None);
}

#[test]
fn memory_does_not_grow_with_the_image_zstd() {
    memory_case("sd.img.zst", Some("zstd -q -c"));
}

#[test]
fn memory_does_not_grow_with_the_image_bzip2() {
    memory_case("sd.img.bz2", Some("pbzip2 -c"));
}

#[test]
fn memory_does_not_grow_with_the_image_gzip() {
    memory_case("sd.img.gz", Some("pigz -c"));
}

/// The disks of the memory cases, built once: `x1/sd.img` (APP 48 MiB,
/// 32 MiB of random files) and `x2/sd.img` (96 MiB, 64 MiB), in the
/// returned fixture directory (read only).
fn memory_disks() -> PathBuf {
    let (built, ()) = fixtures::shared("memory-disks", |dir| {
        for (scale, app) in [(1, 48 * MIB), (2, 96 * MIB)] {
            let d = dir.join(format!("x{scale}"));
            fs::create_dir(&d).unwrap();
            let tree = ext4_tree(&d, 20, Azaion::Absent);
            fs::create_dir_all(tree.join("usr/lib")).unwrap();
            for i in 0..4 {
                sh(&format!(
                    "head -c {} /dev/urandom > {}/usr/lib/lib{i}.so",
                    scale * 8 * MIB,
                    tree.display()
                ));
            }
            let disk = d.join("sd.img");
            let parts = sgdisk_disk(
                &disk,
                app + 4 * MIB,
                &[part("kernel", "8300", MIB), part("APP", "8300", app)],
                2048,
                2048,
            );
            fill_random(&disk, parts[0]);
            mkfs_in_place(&disk, parts[1], &tree);
            fs::remove_dir_all(&tree).unwrap();
        }
    });
    built
}

/// One codec of the memory test: the disk at both scales as `name`
/// (compressed by the shell command `compress`, reading a file), peak RSS
/// under 100 MiB at each, the larger within 8 MiB of the smaller, and the
/// outputs verify.
fn memory_case(name: &str, compress: Option<&str>) {
    require_tools(&["pbzip2", "pigz"]);
    let disks = memory_disks();
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let out = out_dir(dir.path(), "out");
    let mut cases = Vec::new();
    for scale in [1, 2] {
        let d = dir.path().join(format!("x{scale}"));
        fs::create_dir(&d).unwrap();
        let disk = disks.join(format!("x{scale}/sd.img"));
        let input = match compress {
            Some(command) => {
                let input = d.join(name);
                sh(&format!(
                    "{command} {} > {}",
                    disk.display(),
                    input.display()
                ));
                input
            }
            None => disk,
        };
        cases.push((
            scale,
            input,
            out.join(format!("x{scale}-{name}")),
            d.join("run.log"),
        ));
    }
    // One run at each size; its peak RSS.
    let peak = |(scale, input, written, log): &(u32, PathBuf, PathBuf, PathBuf)| {
        let _ = fs::remove_file(written);
        let _ = fs::remove_file(written.with_file_name(format!("x{scale}-{name}.sha256")));
        let (ok, r) = peak_rss(&mut provision(input, written, &pw, None), log);
        let err = fs::read_to_string(log.with_extension("err")).unwrap();
        assert!(ok, "provision x{scale} {name}: {err}");
        eprintln!("x{scale} {name}: peak RSS {} KiB", r >> 10);
        r
    };
    let mut peaks: Vec<u64> = cases.iter().map(peak).collect();
    for ((scale, _, written, _), rss) in cases.iter().zip(&peaks) {
        assert!(
            *rss < 100 * MIB,
            "x{scale} {name}: peak RSS {} MiB",
            rss / MIB
        );
        assert_verifies(written, None);
    }
    // A codec's peak moves from run to run at one size with how full its
    // threads' queues get (bzip2: 46.7 to 56.8 MiB measured idle; zstd:
    // 26 and 38 MiB at the smaller size on a loaded machine, where its
    // workers did not always fill), so where the first pair disagrees a
    // second pair runs (over the random data it costs much of this test's
    // time, so only when needed) and the larger disk's lower peak is held
    // against the smaller disk's higher one: memory that grows with the
    // image (the 64 MiB more data held: +32 MiB or more) still fails by
    // far, run-to-run noise below the plateau does not.
    if peaks[1] > peaks[0] + 8 * MIB {
        let again: Vec<u64> = cases.iter().map(peak).collect();
        for ((scale, _, _, _), rss) in cases.iter().zip(&again) {
            assert!(
                *rss < 100 * MIB,
                "x{scale} {name}: peak RSS {} MiB",
                rss / MIB
            );
        }
        peaks = vec![peaks[0].max(again[0]), peaks[1].min(again[1])];
    }
    assert!(
        peaks[1] <= peaks[0] + 8 * MIB,
        "{name}: peak RSS {} KiB for the 48 MiB partition, {} KiB for the 96 MiB one",
        peaks[0] >> 10,
        peaks[1] >> 10
    );
}

/// Real sizes: a disk image with a 1 GiB APP partition and a 2 GiB raw
/// ext4 image inside zstd, each holding 64 MiB of incompressible files,
/// and the disk in bzip2 and gzip: imprint stays under 100 MiB of memory
/// and the outputs verify.
#[test]
#[ignore = "slow tier: a 1.1 GB disk and a 2 GiB image with 64 MiB of random data in four codecs"]
fn gigabyte_images_in_little_memory() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let tree = ext4_tree(dir.path(), 100, Azaion::Absent);
    fs::create_dir_all(tree.join("usr/lib")).unwrap();
    for i in 0..4 {
        sh(&format!(
            "head -c {} /dev/urandom > {}/usr/lib/lib{i}.so",
            16 * MIB,
            tree.display()
        ));
    }
    let disk = dir.path().join("sd-blob.img");
    let parts = sgdisk_disk(
        &disk,
        1100 * MIB,
        &[
            part("kernel", "8300", 8 * MIB),
            part("APP", "8300", 1024 * MIB),
            part("recovery", "8300", 8 * MIB),
        ],
        2048,
        2048,
    );
    fill_random(&disk, parts[0]);
    fill_random(&disk, parts[2]);
    mkfs_in_place(&disk, parts[1], &tree);
    let raw = dir.path().join("system.img");
    let o = mkfs(&tree, &raw, &["-t", "ext4"], "2G");
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    sh(&format!("zstd -q -T0 --rm {}", raw.display()));
    let zst = dir.path().join("system.img.zst");
    // The disk compressed as the parallel tools do: bzip2 fills a block
    // only after 45 MB of zeros, which once took the encoder past 100 MiB.
    let bz2 = dir.path().join("sd-blob.img.bz2");
    let gz = dir.path().join("sd-blob.img.gz");
    sh(&format!(
        "pbzip2 -c {d} > {b} && pigz -c {d} > {g}",
        d = disk.display(),
        b = bz2.display(),
        g = gz.display()
    ));

    let out = out_dir(dir.path(), "out");
    const LIMIT: u64 = 100 * MIB;
    for (input, name) in [
        (&disk, "sd-blob.img"),
        (&zst, "system.img.zst"),
        (&bz2, "sd-blob.img.bz2"),
        (&gz, "sd-blob.img.gz"),
    ] {
        let written = out.join(name);
        let log = dir.path().join("run.log");
        let started = std::time::Instant::now();
        let (ok, rss) = peak_rss(&mut provision(input, &written, &pw, None), &log);
        let err = fs::read_to_string(log.with_extension("err")).unwrap();
        assert!(ok, "provision {name}: {err}");
        eprintln!(
            "{name}: {:.1} s, peak RSS {} MiB",
            started.elapsed().as_secs_f64(),
            rss / MIB
        );
        assert!(rss < LIMIT, "{name}: peak RSS {} MiB", rss / MIB);
        assert_verifies(&written, None);
    }
    check_disk(
        &disk,
        &out.join("sd-blob.img"),
        &parts,
        parts[1],
        dir.path(),
    );
    assert_eq!(
        fs::metadata(out.join("sd-blob.img")).unwrap().len(),
        1100 * MIB
    );
    sh(&format!(
        "zstd -q -t {} && bzip2 -t {} && gzip -t {}",
        out.join("system.img.zst").display(),
        out.join("sd-blob.img.bz2").display(),
        out.join("sd-blob.img.gz").display()
    ));
    // Decompressed, the compressed disks are the plain run's output.
    let want = sha256(&out.join("sd-blob.img"));
    for (name, decompress) in [
        ("sd-blob.img.bz2", "bzip2 -dc"),
        ("sd-blob.img.gz", "gzip -dc"),
    ] {
        let o = sh(&format!(
            "{decompress} {} | sha256sum",
            out.join(name).display()
        ));
        assert_eq!(
            stdout(&o).split_whitespace().next().unwrap(),
            want,
            "{name}"
        );
    }
}

/// `--partition` on an input that has no partitions is a mistake to say,
/// not an option to ignore; nothing is written.
#[test]
fn partition_on_an_input_without_partitions_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
    let raw = d.join("root.ext4");
    let mk = run(std::process::Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&raw)
        .arg("16M"));
    assert!(mk.status.success(), "{}", stderr(&mk));
    let pw = write_password(d, PASSWORD);
    let out = d.join("out");
    let o = run(bin()
        .args([
            "provision",
            "--serial",
            SERIAL,
            "--offline",
            "--partition",
            "APP",
        ])
        .arg("--password-file")
        .arg(&pw)
        .arg("--image")
        .arg(&raw)
        .arg("--output")
        .arg(&out));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a partitioned disk image"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
}

/// Symlinks and removals in the rootfs partition of a GPT disk: the
/// partition comes out as the raw image's tests expect, the rest of the
/// disk as it was.
#[test]
fn disk_overlay_symlinks_and_removals() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    ext4_overlay::add_removal_targets(&tree);
    let img = d.join("disk.img");
    let parts = sgdisk_disk(
        &img,
        48 * MIB,
        &[part("kernel", "8300", MIB), part("APP", "8300", 32 * MIB)],
        2048,
        2048,
    );
    fill_random(&img, parts[0]);
    mkfs_in_place(&img, parts[1], &tree);
    let spec = d.join("links.toml");
    fs::write(&spec, ext4_overlay::SYMLINKS_AND_REMOVALS).unwrap();
    let pw = write_password(d, PASSWORD);
    let out = out_dir(d, "out").join("disk.img");
    let o = run(provision(&img, &out, &pw, None).arg("--overlay").arg(&spec));
    assert!(o.status.success(), "{}", stderr(&o));
    check_disk(&img, &out, &parts, parts[1], d);
    let fs_img = d.join("rootfs.ext4");
    extract(&out, parts[1], &fs_img);
    ext4_overlay::check_symlinks_and_removals(&fs_img);
    assert_gpt_clean(&out);
    assert_verifies(&out, None);
}

/// Every byte of `out` outside `slots` is the input's (`cmp` over each gap:
/// the tables, the gaps and every other partition).
fn same_outside(input: &Path, out: &Path, slots: &[Span]) {
    assert_eq!(
        fs::metadata(out).unwrap().len(),
        fs::metadata(input).unwrap().len(),
        "the output's size"
    );
    let mut slots = slots.to_vec();
    slots.sort_by_key(|s| s.offset);
    let mut at = 0;
    let end = fs::metadata(input).unwrap().len();
    for gap_end in slots.iter().map(|s| s.offset).chain([end]) {
        if gap_end > at {
            sh(&format!(
                "cmp -n {n} <(tail -c +{from} {i}) <(tail -c +{from} {o})",
                n = gap_end - at,
                from = at + 1,
                i = input.display(),
                o = out.display()
            ));
        }
        at = slots
            .iter()
            .find(|s| s.offset == gap_end)
            .map_or(end, |s| s.end());
    }
}

/// The device.conf in the filesystem at `span` of `img` (dd'ed out, clean
/// to e2fsck -fn): its text and `(mode, uid, gid)`.
fn slot_conf(img: &Path, span: Span, scratch: &Path) -> (String, (u32, u32, u32)) {
    let fs_img = scratch.join("slot.ext4");
    extract(img, span, &fs_img);
    assert_fsck_clean(&fs_img);
    let found = (
        debugfs(&fs_img, "cat /etc/azaion/device.conf"),
        debugfs_stat(&fs_img, "/etc/azaion/device.conf"),
    );
    fs::remove_file(fs_img).unwrap();
    found
}

/// `imprint provision` of `input` for SERIAL against `url`, with each of
/// `partitions` as a --partition.
fn provision_slots(input: &Path, output: &Path, url: &str, partitions: &[&str]) -> Command {
    let mut c = provision_online(input, output, url);
    c.args(["--owner", "azaion"]);
    for p in partitions {
        c.args(["--partition", p]);
    }
    c
}

/// `imprint verify` of `out` with each of `partitions`.
fn verify_slots(out: &Path, partitions: &[&str], json: bool) -> std::process::Output {
    let mut c = bin();
    c.arg("verify")
        .arg(out)
        .args(["--serial", SERIAL, "--owner", "azaion"]);
    for p in partitions {
        c.args(["--partition", p]);
    }
    if json {
        c.arg("--json");
    }
    run(&mut c)
}

/// An NVIDIA A/B SD card layout (APP and APP_b, a recovery rootfs that
/// also holds /etc, blobs between them), each rootfs made with mke2fs -d:
/// `--partition APP --partition APP_b` stamps both slots in one output
/// with one account call and the same device.conf; every byte outside
/// the two slots stays the input's; `all-rootfs` picks the same two slots
/// (not the recovery rootfs) and writes the same bytes; verify checks
/// each slot and names one without credentials; a missing partition among
/// several is refused naming it, with nothing written and no API call;
/// ls and cat read one partition and say so when given several.
#[test]
fn ab_gpt_slots_get_one_identity() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    let img = d.join("sd-blob.img");
    let parts = sgdisk_disk(
        &img,
        40 * MIB,
        &[
            part("kernel", "8300", MIB),
            part("APP", "8300", 12 * MIB),
            part("kernel_b", "8300", MIB),
            part("APP_b", "8300", 12 * MIB),
            part("RECROOTFS", "8300", 8 * MIB),
        ],
        2048,
        2048,
    );
    for i in [0, 2] {
        fill_random(&img, parts[i]);
    }
    for i in [1, 3, 4] {
        mkfs_in_place(&img, parts[i], &tree);
    }
    assert_gpt_clean(&img);
    let input_sha = sha256(&img);
    let server = imprint::stub::StubServer::start().unwrap();
    let out = out_dir(d, "out");

    // A partition that is not there, among several: refused naming it,
    // before any API call, with nothing written.
    let o = run(&mut provision_slots(
        &img,
        &out,
        &server.url(),
        &["APP", "APP_c"],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no partition named \"APP_c\"") && stderr(&o).contains("APP_b"),
        "{}",
        stderr(&o)
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    let written = out.join("sd-blob.img");
    let o = run(provision_slots(&img, &written, &server.url(), &["APP", "APP_b"]).arg("--json"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&img), input_sha, "the input was modified");
    let posts: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(server.requests().len(), 1);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let named = |v: &serde_json::Value| -> Vec<(u64, String)> {
        v.as_array()
            .unwrap_or_else(|| panic!("no partitions in {doc}"))
            .iter()
            .map(|p| {
                (
                    p["number"].as_u64().unwrap(),
                    p["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let slots = vec![(2, "APP".to_string()), (4, "APP_b".to_string())];
    assert_eq!(named(&doc["partitions"]), slots, "{doc}");
    assert_eq!(named(&doc["images"][0]["partitions"]), slots, "{doc}");

    let password = server.password_of(EMAIL).unwrap();
    for i in [1, 3] {
        assert_eq!(
            slot_conf(&written, parts[i], d),
            (conf_text(EMAIL, &password), (0o600, 1001, 1001)),
            "partition {}",
            i + 1
        );
    }
    same_outside(&img, &written, &[parts[1], parts[3]]);
    assert_eq!(span_sha(&written, parts[4]), span_sha(&img, parts[4]));
    assert_gpt_clean(&written);

    // verify checks every slot named, and all-rootfs means the same two.
    for partitions in [&["APP", "APP_b"][..], &["all-rootfs"]] {
        let v = verify_slots(&written, partitions, false);
        assert!(v.status.success(), "{partitions:?}:\n{}", stdout(&v));
        let text = stdout(&v);
        assert!(
            text.contains("partition 2 \"APP\"") && text.contains("partition 4 \"APP_b\""),
            "{text}"
        );
        assert!(!text.contains("RECROOTFS"), "{text}");
    }
    // A dry run lists each slot's entries.
    let o = run(bin()
        .args([
            "provision",
            "--dry-run",
            "--json",
            "--serial",
            SERIAL,
            "--image",
        ])
        .arg(&img)
        .arg("--output")
        .arg(out.join("dry.img"))
        .args(["--partition", "all-rootfs", "--owner", "azaion"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let images = doc["devices"][0]["images"].as_array().unwrap();
    let listed: Vec<u64> = images
        .iter()
        .map(|i| i["partition"]["number"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [2, 4], "{doc}");
    let v = verify_slots(&written, &["all-rootfs"], true);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&v)).unwrap();
    assert_eq!(named(&doc["partitions"]), slots, "{doc}");
    assert_eq!(doc["passed"], true);

    // all-rootfs writes what naming both slots writes (one password).
    let pw = write_password(d, PASSWORD);
    let (by_name, all) = (out.join("by-name.img"), out.join("all.img"));
    for (to, partitions) in [(&by_name, &["APP", "APP_b"][..]), (&all, &["all-rootfs"])] {
        let mut c = provision_offline(&img, to, "azaion", &pw);
        for p in partitions {
            c.args(["--partition", p]);
        }
        let o = run(c.env("SOURCE_DATE_EPOCH", "1700000000"));
        assert!(o.status.success(), "{partitions:?}: {}", stderr(&o));
        let line = stdout(&o);
        assert!(
            line.contains("partitions 2 \"APP\", 4 \"APP_b\""),
            "the result line names the slots: {line}"
        );
    }
    sh(&format!("cmp {} {}", by_name.display(), all.display()));

    // One slot stamped: verify of both names the one without credentials.
    let one = out.join("one.img");
    let o = run(provision_offline(&img, &one, "azaion", &pw).args(["--partition", "APP"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v = verify_slots(&one, &["all-rootfs"], false);
    assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
    let text = stdout(&v);
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failed.len() == 1 && failed[0].contains("partition 4 \"APP_b\""),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("verification FAILED: partition 4 \"APP_b\""),
        "{text}"
    );

    // ls and cat read one partition.
    for cmd in ["ls", "cat"] {
        let o = run(bin().arg(cmd).arg(&written).arg("/etc/hostname").args([
            "--partition",
            "APP",
            "--partition",
            "APP_b",
        ]));
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        assert!(
            stderr(&o).contains(&format!("imprint {cmd} reads one partition"))
                && stderr(&o).contains("APP, APP_b"),
            "{cmd}: {}",
            stderr(&o)
        );
        let o = run(bin()
            .arg(cmd)
            .arg(&written)
            .arg("/etc/hostname")
            .args(["--partition", "APP_b"]));
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
    }
}

/// A genimage-style MBR disk with two ext4 rootfs slots (mke2fs -d, dd'ed
/// in) whose images differ: slot B's /etc/passwd gives azaion another uid.
/// `--partition 2 --partition 3` and `all-rootfs` stamp both, each slot's
/// owner looked up in its own /etc/passwd, one account call; the same
/// through gzip; the partition table and every byte outside the slots
/// stay the input's.
#[test]
fn ab_mbr_slots_get_one_identity() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = d.join("sdcard.img");
    let parts = sfdisk_disk(
        &img,
        36 * MIB,
        "label: dos\nstart=2048, size=4096, type=c, bootable\nstart=6144, size=28672, type=83\nstart=34816, size=28672, type=83\n",
    );
    assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
    let spans: Vec<Span> = parts.iter().map(|p| p.1).collect();
    fill_random(&img, spans[0]);
    let tree = ext4_tree(d, 0, Azaion::Absent);
    mkfs_and_dd(&img, spans[1], &tree);
    let tree = ext4_tree(d, 0, Azaion::Absent);
    fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nazaion:x:1002:1002::/home/azaion:/bin/bash\n",
    )
    .unwrap();
    fs::write(tree.join("etc/group"), "root:x:0:\nazaion:x:1002:\n").unwrap();
    mkfs_and_dd(&img, spans[2], &tree);
    let table = |p: &Path| {
        stdout(&sh(&format!("sfdisk -d {} | sed 1,3d", p.display())))
            .replace(&p.display().to_string(), "X")
    };
    let server = imprint::stub::StubServer::start().unwrap();
    let out = out_dir(d, "out");
    let gz = d.join("sdcard.img.gz");
    sh(&format!("gzip -c {} > {}", img.display(), gz.display()));
    for (input, name, partitions) in [
        (&img, "numbers.img", &["2", "3"][..]),
        (&img, "all.img", &["all-rootfs"]),
        (&gz, "all.img.gz", &["all-rootfs"]),
    ] {
        // The first run creates the account (POST); the next ones find it
        // (409) and set the new password (PATCH): once per run either way.
        let posts = || {
            server
                .requests()
                .iter()
                .filter(|r| r.method == "POST")
                .count()
        };
        let before = posts();
        let written = out.join(name);
        let o = run(&mut provision_slots(
            input,
            &written,
            &server.url(),
            partitions,
        ));
        assert!(o.status.success(), "{partitions:?}: {}", stderr(&o));
        assert_eq!(posts(), before + 1, "one account call");
        assert!(
            stdout(&o).contains("partitions 2, 3"),
            "{partitions:?}: {}",
            stdout(&o)
        );
        let raw = if name.ends_with(".gz") {
            let raw = d.join("unzipped.img");
            sh(&format!(
                "gzip -dc {} > {}",
                written.display(),
                raw.display()
            ));
            raw
        } else {
            written.clone()
        };
        let password = server.password_of(EMAIL).unwrap();
        let conf = conf_text(EMAIL, &password);
        assert_eq!(
            slot_conf(&raw, spans[1], d),
            (conf.clone(), (0o600, 1001, 1001))
        );
        assert_eq!(slot_conf(&raw, spans[2], d), (conf, (0o600, 1002, 1002)));
        same_outside(&img, &raw, &spans[1..]);
        assert_eq!(table(&raw), table(&img));
        let v = verify_slots(&written, partitions, false);
        assert!(v.status.success(), "{partitions:?}:\n{}", stdout(&v));
        let v = verify_slots(&written, &["2", "3"], false);
        assert!(v.status.success(), "{partitions:?}:\n{}", stdout(&v));
    }
    // Without --partition the two slots are still ambiguous.
    let o = run(&mut provision_online(
        &img,
        &out.join("none.img"),
        &server.url(),
    ));
    assert!(
        !o.status.success() && stderr(&o).contains("all-rootfs"),
        "{}",
        stderr(&o)
    );
}

/// `verify --no-credentials` on a GPT SD card image: the fresh one passes,
/// the stamped one fails on its APP partition, and `--partition` checks
/// another (the recovery rootfs, which the run left alone).
#[test]
fn no_credentials_on_a_disk_image() {
    let dir = TempDir::new().unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let img = dir.path().join("sd-blob.img");
    jetson_sd_card(&img, 2048, 2048);
    let stamped = dir.path().join("stamped.img");
    provisioned(&img, &stamped, &pw, None);
    let check = |image: &Path, extra: &[&str]| {
        let o = run(bin()
            .args(["verify", "--no-credentials"])
            .arg(image)
            .args(extra));
        assert!(!stdout(&o).contains(PASSWORD));
        (o.status.code(), stdout(&o))
    };
    let (code, out) = check(&img, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("clean, no device credentials"), "{out}");
    let (code, out) = check(&stamped, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("/etc/azaion/device.conf is present: file 0600 1001:1001"),
        "{out}"
    );
    let (code, out) = check(&stamped, &["--partition", "RECROOTFS"]);
    assert_eq!(code, Some(0), "{out}");
}
