//! `imprint ls` and `imprint cat` against the formats' own tools' view:
//! GNU tar's `tvf` and `-xO` for archives in every codec, debugfs `ls -p`
//! and `cat` for raw ext4, disk images (sgdisk), compressed raw images and
//! sparse images (expanded by simg2img), and the host's own view of a
//! staging tree.

use crate::common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;

/// A tree with what ls and cat must tell apart: binary content with NUL
/// bytes, a 3 MiB file, relative and absolute symlinks (one to /etc/passwd
/// as some images have), a hard link, set-id and sticky bits, owners.
fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["etc/azaion", "usr/lib", "var/tmp", "opt/a/b/c"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("usr/lib/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    symlink("../usr/lib/passwd", root.join("etc/passwd")).unwrap();
    symlink("/usr/lib/passwd", root.join("etc/passwd.abs")).unwrap();
    // A merged-/usr image: /lib is a symlink to a directory.
    symlink("usr/lib", root.join("lib")).unwrap();
    fs::write(root.join("etc/azaion/bin"), b"a\0b\0\xff\xfe").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(root.join("opt/a/b/c/big"), &big).unwrap();
    fs::hard_link(root.join("opt/a/b/c/big"), root.join("opt/big.link")).unwrap();
    fs::write(root.join("usr/lib/suid"), "#!/bin/sh\n").unwrap();
    // Set-id and sticky bits are set after chown, which clears them.
    sh(&format!(
        "chown -R 0:0 {r} && chown 1001:996 {r}/etc/azaion/bin && chmod 4755 {r}/usr/lib/suid && chmod 1777 {r}/var/tmp \
         && find {r} -exec touch -h -d @1700000000 {{}} +",
        r = root.display()
    ));
    root
}

/// `imprint ARGS`, asserting success; stdout as bytes.
fn imprint(args: &[&str], image: &Path) -> Vec<u8> {
    let (head, rest) = args.split_at(1);
    let o = run(bin().args(head).arg(image).args(rest));
    assert!(
        o.status.success(),
        "imprint {args:?} {}: {}",
        image.display(),
        stderr(&o)
    );
    o.stdout
}

/// `imprint ls --json -R IMAGE [PATH]`: path -> (type, mode, uid, gid, size, target).
type Entries = Vec<(String, String, u32, u32, u32, u64, Option<String>)>;

fn ls_json(image: &Path, path: &str) -> Entries {
    let out = imprint(&["ls", "--json", "-R", path], image);
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["schema"], "imprint.ls/1");
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
                u32::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap(),
                e["uid"].as_u64().unwrap() as u32,
                e["gid"].as_u64().unwrap() as u32,
                e["size"].as_u64().unwrap(),
                e["target"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn tar_listing_and_content_match_gnu_tar_in_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    for ext in EXTENSIONS {
        for format in ["gnu", "pax"] {
            let archive = dir.path().join(format!("r-{format}.{ext}"));
            make_tar(&root, &archive, ext, format, true);
            // GNU tar's own listing, with numeric owners, as ls -l lines.
            let tvf = stdout(&sh(&format!(
                "tar --numeric-owner --full-time -tvf {}",
                archive.display()
            )));
            let mut want: Vec<String> = tvf
                .lines()
                .filter(|l| !l.ends_with(" ./"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let name = f[5].trim_start_matches("./").trim_end_matches('/');
                    let rest = f[6..].join(" ").replace("link to ./", "link to /");
                    let owner = f[1].replace('/', ":");
                    let time = &f[4][..5];
                    format!("{} {owner} {} {} {time} {name} {rest}", f[0], f[2], f[3])
                        .trim_end()
                        .to_string()
                })
                .collect();
            want.sort();
            let ours = String::from_utf8(imprint(&["ls", "-R"], &archive)).unwrap();
            let mut got: Vec<String> = ours
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            got.sort();
            assert_eq!(got, want, "{format} {ext}");
            for file in ["etc/azaion/bin", "opt/a/b/c/big", "usr/lib/passwd"] {
                let by_tar = sh(&format!("tar -xOf {} ./{file}", archive.display())).stdout;
                let ours = imprint(&["cat", &format!("/{file}")], &archive);
                assert!(ours == by_tar, "{format} {ext}: cat /{file} differs");
            }
            // Through a hard link and through symlinks, inside the archive.
            let big = fs::read(root.join("opt/a/b/c/big")).unwrap();
            assert!(imprint(&["cat", "/opt/big.link"], &archive) == big);
            for link in ["/etc/passwd", "/etc/passwd.abs", "/lib/passwd"] {
                assert_eq!(
                    imprint(&["cat", link], &archive),
                    b"root:x:0:0::/root:/bin/sh\n"
                );
            }
        }
    }
}

/// debugfs `ls -p DIR`: name -> (mode with type, uid, gid, size).
fn debugfs_ls(img: &Path, dir: &str) -> Vec<(String, u32, u32, u32, u64)> {
    let mut out: Vec<_> = debugfs(img, &format!("ls -p {dir}"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            if f.len() < 7 || f[5].is_empty() || f[5] == "." || f[5] == ".." {
                return None;
            }
            Some((
                f[5].to_string(),
                u32::from_str_radix(f[2], 8).unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                f[6].parse().unwrap_or(0),
            ))
        })
        .collect();
    out.sort();
    out
}

/// Checks every directory of the tree in `raw` (an ext4 image debugfs
/// reads) against `imprint ls` of `image` (the same filesystem in any
/// container), and file contents against debugfs `cat`.
fn ext4_matches_debugfs(image: &Path, raw: &Path, extra: &[&str]) {
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(extra.iter().map(|a| a.to_string()))
            .collect()
    };
    let entries = {
        let args = with(&["ls", "--json", "-R", "/"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = imprint(&args, image);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        doc["entries"].as_array().unwrap().clone()
    };
    let mut dirs = vec!["/".to_string()];
    dirs.extend(
        entries
            .iter()
            .filter(|e| e["type"] == "dir")
            .map(|e| e["path"].as_str().unwrap().to_string()),
    );
    for d in &dirs {
        let want = debugfs_ls(raw, d);
        let prefix = if d == "/" {
            "/".to_string()
        } else {
            format!("{d}/")
        };
        let mut got: Vec<_> = entries
            .iter()
            .filter(|e| {
                let p = e["path"].as_str().unwrap();
                p.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            })
            .map(|e| {
                let kind = match e["type"].as_str().unwrap() {
                    "dir" => 0o040000,
                    "symlink" => 0o120000,
                    _ => 0o100000,
                };
                (
                    e["path"].as_str().unwrap()[prefix.len()..].to_string(),
                    kind | u32::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap(),
                    e["uid"].as_u64().unwrap() as u32,
                    e["gid"].as_u64().unwrap() as u32,
                    // debugfs `ls -p` leaves a directory's size out.
                    if kind == 0o040000 {
                        0
                    } else {
                        e["size"].as_u64().unwrap()
                    },
                )
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "{} {d}", image.display());
    }
    for file in ["/etc/azaion/bin", "/opt/a/b/c/big", "/usr/lib/passwd"] {
        let by_debugfs = run(std::process::Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {file}"))
            .arg(raw))
        .stdout;
        let args = with(&["cat", file]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert!(
            imprint(&args, image) == by_debugfs,
            "cat {file} of {}",
            image.display()
        );
    }
    for link in ["/etc/passwd", "/lib/passwd"] {
        let args = with(&["cat", link]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(imprint(&args, image), b"root:x:0:0::/root:/bin/sh\n");
    }
    // `ls` goes through a symlinked directory on the way (and shows a
    // symlink itself as the link, as ls -l does).
    let args = with(&["ls", "/lib/suid"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let listed = String::from_utf8(imprint(&args, image)).unwrap();
    assert!(listed.trim_end().ends_with(" /usr/lib/suid"), "{listed}");
    assert!(listed.starts_with("-rwsr-xr-x "), "{listed}");
    let links: Vec<_> = entries
        .iter()
        .filter(|e| e["type"] == "symlink")
        .map(|e| (e["path"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        links,
        [
            ("/etc/passwd", "../usr/lib/passwd"),
            ("/etc/passwd.abs", "/usr/lib/passwd"),
            ("/lib", "usr/lib")
        ]
    );
}

#[test]
fn ext4_listing_and_content_match_debugfs_raw_compressed_sparse_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let raw = dir.path().join("r.img");
    let o = mkfs(&root, &raw, &["-t", "ext4"], "32M");
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    ext4_matches_debugfs(&raw, &raw, &[]);

    let zst = dir.path().join("r.img.zst");
    sh(&format!("zstd -q {} -o {}", raw.display(), zst.display()));
    ext4_matches_debugfs(&zst, &raw, &[]);

    if require(
        run(std::process::Command::new("sh")
            .args(["-c", "command -v img2simg && command -v simg2img"]))
        .status
        .success(),
        "img2simg/simg2img (android-sdk-libsparse-utils) not installed",
    ) {
        let sparse = dir.path().join("r.simg");
        let expanded = dir.path().join("r.expanded.img");
        sh(&format!("img2simg {} {}", raw.display(), sparse.display()));
        sh(&format!(
            "simg2img {} {}",
            sparse.display(),
            expanded.display()
        ));
        ext4_matches_debugfs(&sparse, &expanded, &[]);
    }

    // A GPT disk with the filesystem in partition 2, named APP.
    let disk = dir.path().join("disk.img");
    sh(&format!(
        "truncate -s 40M {d} && sgdisk -og {d} >/dev/null && sgdisk -n 1:2048:4095 -c 1:BOOT {d} >/dev/null \
         && sgdisk -n 2:4096:69631 -c 2:APP {d} >/dev/null && dd if={r} of={d} bs=512 seek=4096 conv=notrunc status=none",
        d = disk.display(),
        r = raw.display()
    ));
    ext4_matches_debugfs(&disk, &raw, &[]);
    ext4_matches_debugfs(&disk, &raw, &["--partition", "APP"]);
    ext4_matches_debugfs(&disk, &raw, &["--partition", "2"]);
}

#[test]
fn staging_tree_listing_and_content_match_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let entries = ls_json(&root, "/");
    let mut want = Vec::new();
    sh(&format!(
        "cd {} && find . -mindepth 1 | sort > ../names",
        root.display()
    ));
    for name in fs::read_to_string(dir.path().join("names"))
        .unwrap()
        .lines()
    {
        let p = root.join(&name[2..]);
        let m = fs::symlink_metadata(&p).unwrap();
        let kind = if m.is_dir() {
            "dir"
        } else if m.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let target = m
            .file_type()
            .is_symlink()
            .then(|| fs::read_link(&p).unwrap().display().to_string());
        want.push((
            name[1..].to_string(),
            kind.to_string(),
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.size(),
            target,
        ));
    }
    let mut got = entries;
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        imprint(&["cat", "/opt/a/b/c/big"], &root),
        fs::read(root.join("opt/a/b/c/big")).unwrap()
    );
    assert_eq!(
        imprint(&["cat", "/etc/passwd"], &root),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(
        imprint(&["cat", "/lib/passwd"], &root),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    // A symlink that climbs out of the tree stays inside it, as in a chroot.
    symlink("../../../../../usr/lib/passwd", root.join("etc/escape")).unwrap();
    assert_eq!(
        imprint(&["cat", "/etc/escape"], &root),
        b"root:x:0:0::/root:/bin/sh\n"
    );
}

#[test]
fn ls_of_one_file_and_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let archive = dir.path().join("r.tar.gz");
    make_tar(&root, &archive, "tar.gz", "gnu", true);
    let one = String::from_utf8(imprint(&["ls", "/etc/passwd"], &archive)).unwrap();
    assert_eq!(
        one.split_whitespace().collect::<Vec<_>>(),
        [
            "lrwxrwxrwx",
            "0:0",
            "0",
            "2023-11-14",
            "22:13",
            "/etc/passwd",
            "->",
            "../usr/lib/passwd"
        ]
    );
    for (args, says) in [
        (vec!["cat", "/etc"], "/etc is a directory"),
        (vec!["cat", "/nope"], "has no /nope"),
        (vec!["ls", "/nope"], "has nothing at /nope"),
        (vec!["cat", "etc/passwd"], "not a path inside the image"),
    ] {
        let o = run(bin().arg(args[0]).arg(&archive).args(&args[1..]));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    // A symlink loop ends with an error, not a hang.
    symlink("loop2", root.join("etc/loop1")).unwrap();
    symlink("loop1", root.join("etc/loop2")).unwrap();
    let o = run(bin().arg("cat").arg(&root).arg("/etc/loop1"));
    assert!(stderr(&o).contains("it loops"), "{}", stderr(&o));
    // --partition is for disk images only.
    let o = run(bin().args(["ls", "--partition", "APP"]).arg(&archive));
    assert!(
        stderr(&o).contains("leave --partition out"),
        "{}",
        stderr(&o)
    );
}

/// `cat` streams: a 256 MiB file out of a gzip tar and a raw ext4 image
/// never makes the process hold the file in memory.
#[test]
fn cat_streams_large_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    sh(&format!(
        "head -c 268435456 /dev/zero | tr '\\0' 'x' > {}/etc/huge",
        root.display()
    ));
    let archive = dir.path().join("h.tar.gz");
    sh(&format!(
        "tar -C {} -cf - . | gzip -1 > {}",
        root.display(),
        archive.display()
    ));
    let raw = dir.path().join("h.img");
    let o = mkfs(&root, &raw, &["-t", "ext4"], "300M");
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    fs::remove_file(root.join("etc/huge")).unwrap();
    for image in [&archive, &raw] {
        let o = sh(&format!(
            "/usr/bin/time -f %M {} cat {} /etc/huge 2>&1 >/dev/null | tail -1",
            env!("CARGO_BIN_EXE_imprint"),
            image.display()
        ));
        let kib: u64 = stdout(&o).trim().parse().unwrap();
        assert!(kib < 100 * 1024, "{}: peak RSS {kib} KiB", image.display());
        let o = sh(&format!(
            "{} cat {} /etc/huge | wc -c",
            env!("CARGO_BIN_EXE_imprint"),
            image.display()
        ));
        assert_eq!(stdout(&o).trim(), "268435456");
    }
}
