//! `imprint ls` and `cat` (and the provisioning that reads the same
//! archives) on the shapes that real tools make and that an earlier round
//! got wrong: GNU sparse files in every format GNU tar writes, v7 and
//! pre-POSIX directories, GNU incremental dumpdirs, volume labels,
//! concatenated archives, special files, hostile names, a reader that
//! goes away, links to the root and deep trees; and that `ls` streams
//! (memory flat in the number of entries). Inputs are built with GNU tar,
//! bsdtar, Python's tarfile, mke2fs -d and debugfs; outputs judged by
//! GNU tar, bsdtar and e2fsck.

use crate::common;
use crate::require::require_tools;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nazaion:x:1001:996::/home/azaion:/bin/sh\n";
const GROUP: &str = "root:x:0:\nazaion:x:996:\n";

/// A small rootfs without /etc/azaion, owned by root, one mtime.
fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["etc", "usr/bin", "home/azaion"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/passwd"), PASSWD).unwrap();
    fs::write(root.join("etc/group"), GROUP).unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    sh(&format!(
        "chown -R 0:0 {r} && find {r} -exec touch -h -d @1700000000 {{}} +",
        r = root.display()
    ));
    root
}

/// `imprint ARGS IMAGE REST`, its output.
fn imprint(args: &[&str], image: &Path, rest: &[&str]) -> std::process::Output {
    run(bin().args(args).arg(image).args(rest))
}

/// `imprint ls --json -R IMAGE`: path -> (type, size).
fn ls_json(image: &Path) -> Vec<(String, String, u64)> {
    let o = imprint(&["ls", "--json", "-R"], image, &[]);
    assert!(o.status.success(), "ls {}: {}", image.display(), stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["schema"], "imprint.ls/1");
    let mut v: Vec<_> = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Provisions `input` offline for azaion into `out` and checks device.conf
/// as GNU tar and bsdtar extract it.
fn provision_and_check(dir: &Path, input: &Path, out: &Path) {
    let pw = write_password(dir, PASSWORD);
    let o = run(&mut provision_offline(input, out, "azaion", &pw));
    assert!(o.status.success(), "{}: {}", input.display(), stderr(&o));
    for (tool, x) in [("gnutar", "x-gnu"), ("bsdtar", "x-bsd")] {
        let x = dir.join(x);
        let _ = fs::remove_dir_all(&x);
        extract(tool, out, &x);
        let conf = x.join("etc/azaion/device.conf");
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            conf_text(EMAIL, PASSWORD),
            "{tool}"
        );
        assert!(
            x.join("etc").is_dir() && x.join("etc/passwd").is_file(),
            "{tool}"
        );
    }
}

/// Finding 26.9: `cat` expands GNU sparse files as `tar -xO` does (the
/// old GNU `S` entries and pax 0.0, 0.1, 1.0, as
/// libarchive's test_read_format_gtar_sparse_1_17_posix* hold them) and
/// `ls` shows the real name and size, not `GNUSparseFile.NNN/`.
#[test]
fn sparse_files_expand_as_gnu_tar_does() {
    require_tools(&["tar"]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // 3 MiB with two data extents and holes around them.
    sh(&format!(
        "cd {s} && head -c 5000 /dev/urandom > data && truncate -s 3M sparse \
         && dd if=data of=sparse bs=1 seek=1048576 conv=notrunc status=none \
         && dd if=data of=sparse bs=1 seek=2500000 count=100 conv=notrunc status=none",
        s = src.display()
    ));
    let want = fs::read(src.join("sparse")).unwrap();
    for (name, flags) in [
        ("gnu", "--format=gnu"),
        ("pax00", "--format=posix --sparse-version=0.0"),
        ("pax01", "--format=posix --sparse-version=0.1"),
        ("pax10", "--format=posix --sparse-version=1.0"),
    ] {
        let archive = dir.path().join(format!("{name}.tar"));
        sh(&format!(
            "tar --sparse {flags} -cf {} -C {} sparse",
            archive.display(),
            src.display()
        ));
        // The archive really is sparse: less data stored than the file.
        assert!(fs::metadata(&archive).unwrap().len() < 100_000, "{name}");
        let by_tar = sh(&format!("tar -xOf {} sparse", archive.display())).stdout;
        assert!(by_tar == want, "{name}: GNU tar's own view differs");
        let o = imprint(&["cat"], &archive, &["/sparse"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(
            o.stdout == want,
            "{name}: cat gave {} bytes",
            o.stdout.len()
        );
        assert_eq!(
            ls_json(&archive),
            [("/sparse".to_string(), "file".to_string(), 3 << 20)],
            "{name}"
        );
        let text = stdout(&imprint(&["ls"], &archive, &[]));
        assert!(text.starts_with("-rw"), "{name}: {text}");
    }
}

/// Finding 26.5 and 26.9: directories as v7 archives (bsdtar
/// `--format=v7`: `name/`, typeflag NUL), pre-POSIX ones (typeflag `0`
/// with a trailing `/`) and GNU incremental dumpdirs (`tar -g`: `D`) are
/// directories to `ls` and to provisioning, as GNU tar and bsdtar extract
/// them.
#[test]
fn v7_pre_posix_and_dumpdir_directories_are_directories() {
    require_tools(&["tar", "bsdtar", "python3"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let v7 = dir.path().join("v7.tar");
    sh(&format!(
        "cd {} && bsdtar --format=v7 -cf {} etc usr home",
        root.display(),
        v7.display()
    ));
    let incremental = dir.path().join("incr.tar");
    sh(&format!(
        "tar -g {}/snap -cf {} -C {} .",
        dir.path().display(),
        incremental.display(),
        root.display()
    ));
    // Pre-POSIX: typeflag '0' and a trailing slash, as
    // libarchive's test_compat_tar_directory_1 holds them.
    let old = dir.path().join("old.tar");
    sh(&format!(
        "python3 - <<'EOF'\nimport tarfile, io\nwith tarfile.open('{}', 'w', format=tarfile.USTAR_FORMAT) as t:\n    for d in ['etc/', 'etc/sub/']:\n        i = tarfile.TarInfo(d); i.type = tarfile.REGTYPE; i.mode = 0o755; i.mtime = 1700000000\n        t.addfile(i)\n    for n, data in [('etc/passwd', {:?}), ('etc/group', {:?})]:\n        i = tarfile.TarInfo(n); i.size = len(data); i.mode = 0o644; i.mtime = 1700000000\n        t.addfile(i, io.BytesIO(data.encode()))\nEOF",
        old.display(),
        PASSWD,
        GROUP
    ));
    // GNU tar itself calls them directories.
    for archive in [&v7, &old] {
        let listed = stdout(&sh(&format!("tar -tvf {}", archive.display())));
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with('d') && l.ends_with("etc/")),
            "{listed}"
        );
    }
    let incr_listed = stdout(&sh(&format!("tar -tvf {}", incremental.display())));
    assert!(
        incr_listed
            .lines()
            .any(|l| l.starts_with('d') && l.contains("./etc/")),
        "{incr_listed}"
    );
    for archive in [&v7, &incremental, &old] {
        let entries = ls_json(archive);
        let kind = |p: &str| entries.iter().find(|e| e.0 == p).map(|e| e.1.clone());
        assert_eq!(
            kind("/etc").as_deref(),
            Some("dir"),
            "{}: {entries:?}",
            archive.display()
        );
        if archive == &old {
            assert_eq!(kind("/etc/sub").as_deref(), Some("dir"), "{entries:?}");
        }
        let text = stdout(&imprint(&["ls"], archive, &[]));
        assert!(
            text.lines()
                .any(|l| l.starts_with('d') && l.ends_with(" etc")),
            "{}: {text}",
            archive.display()
        );
        let out = dir.path().join("out.tar");
        let _ = fs::remove_file(&out);
        provision_and_check(dir.path(), archive, &out);
    }
}

/// Finding 26.9 / 26.8: a GNU volume label (`tar -V`) names the archive,
/// not a path: it is not listed, a label `etc` does not make /etc a
/// "special entry", and new entries keep the `./` of the entries after it.
#[test]
fn a_volume_label_is_not_a_path() {
    require_tools(&["tar", "bsdtar"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let archive = dir.path().join("labelled.tar");
    sh(&format!(
        "tar -V etc -cf {} -C {} .",
        archive.display(),
        root.display()
    ));
    let entries = ls_json(&archive);
    assert!(entries.iter().all(|e| e.1 != "other"), "{entries:?}");
    assert_eq!(
        entries.iter().filter(|e| e.0 == "/etc").count(),
        1,
        "{entries:?}"
    );
    let out = dir.path().join("out.tar");
    provision_and_check(dir.path(), &archive, &out);
    let names = stdout(&sh(&format!("tar -tf {}", out.display())));
    assert!(
        names.lines().any(|l| l == "./etc/azaion/device.conf"),
        "{names}"
    );
    assert!(
        !names.lines().any(|l| l == "etc/azaion/device.conf"),
        "{names}"
    );
}

/// Finding 26.9: whatever follows the first end-of-archive marker (a
/// second archive joined with `cat`, an appended signature) would be lost
/// from the output: refused, naming what it is; nothing written.
#[test]
fn data_after_the_end_of_archive_is_refused_naming_it() {
    require_tools(&["tar"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let first = dir.path().join("first.tar");
    sh(&format!(
        "tar -cf {} -C {} .",
        first.display(),
        root.display()
    ));
    let second_root = dir.path().join("second");
    fs::create_dir_all(&second_root).unwrap();
    fs::write(second_root.join("file2"), "two\n").unwrap();
    let second = dir.path().join("second.tar");
    sh(&format!(
        "tar -cf {} -C {} file2",
        second.display(),
        second_root.display()
    ));
    let joined = dir.path().join("joined.tar");
    sh(&format!(
        "cat {} {} > {}",
        first.display(),
        second.display(),
        joined.display()
    ));
    // GNU tar -i sees file2.
    assert!(stdout(&sh(&format!("tar -tif {}", joined.display()))).contains("file2"));
    let signed = dir.path().join("signed.tar");
    sh(&format!(
        "cat {} > {s} && printf -- '-----BEGIN PGP SIGNATURE-----\\nxyz\\n' >> {s}",
        first.display(),
        s = signed.display()
    ));
    let pw = write_password(dir.path(), PASSWORD);
    for (input, says) in [
        (&joined, "a second tar archive"),
        (&signed, "not a tar entry"),
    ] {
        let out = dir.path().join("out.tar");
        let o = run(&mut provision_offline(input, &out, "azaion", &pw));
        assert!(!o.status.success(), "{}: accepted", input.display());
        let err = stderr(&o);
        assert!(
            err.contains(says) && err.contains("end-of-archive"),
            "{err}"
        );
        assert!(!out.exists());
    }
}

/// Finding 22.14: FIFOs, sockets and devices are listed with their `ls -l`
/// letters (and JSON words), in tar and in ext4.
#[test]
fn special_files_are_listed_with_their_types() {
    require_tools(&["python3", "mke2fs", "debugfs"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("dev.tar");
    sh(&format!(
        "python3 - <<'EOF'\nimport tarfile\nwith tarfile.open('{}', 'w', format=tarfile.GNU_FORMAT) as t:\n    for n, ty in [('dev/fifo', tarfile.FIFOTYPE), ('dev/null', tarfile.CHRTYPE), ('dev/sda', tarfile.BLKTYPE)]:\n        i = tarfile.TarInfo(n); i.type = ty; i.mode = 0o600; i.devmajor = 8\n        t.addfile(i)\nEOF",
        archive.display()
    ));
    let root = tree(dir.path());
    let img = dir.path().join("dev.ext4");
    sh(&format!(
        "mkdir -p {r}/dev && mkfifo {r}/dev/fifo && python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('{r}/dev/sock')\"",
        r = root.display()
    ));
    let o = mkfs(&root, &img, &["-t", "ext4"], "8M");
    assert!(o.status.success(), "{}", stderr(&o));
    // debugfs makes the device nodes (mknod needs root; `mknod /dev/x`
    // with a path does not link the node: cd first).
    let cmds = dir.path().join("cmds");
    fs::write(&cmds, "cd /dev\nmknod null c 1 3\nmknod sda b 8 0\n").unwrap();
    sh(&format!(
        "debugfs -w -f {} {}",
        cmds.display(),
        img.display()
    ));
    assert_fsck_clean(&img);
    for (image, want) in [
        (
            &archive,
            vec![
                ("fifo", 'p', "fifo"),
                ("null", 'c', "chardev"),
                ("sda", 'b', "blockdev"),
            ],
        ),
        (
            &img,
            vec![
                ("fifo", 'p', "fifo"),
                ("null", 'c', "chardev"),
                ("sda", 'b', "blockdev"),
                ("sock", 's', "socket"),
            ],
        ),
    ] {
        let o = imprint(&["ls"], image, &["/dev"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        let entries = ls_json(image);
        for (name, letter, word) in want {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(letter) && l.ends_with(&format!(" {name}"))),
                "{}: {name}: {text}",
                image.display()
            );
            let path = format!("/dev/{name}");
            assert!(
                entries.iter().any(|e| e.0 == path && e.1 == word),
                "{}: {entries:?}",
                image.display()
            );
        }
    }
}

/// Finding 22.8: names are escaped as GNU `ls -b` does in text (an entry
/// named with OSC 52 and a newline cannot spoof the listing or reach the
/// terminal); JSON carries the name as it is (JSON escapes by itself).
#[test]
fn control_characters_in_names_are_escaped() {
    require_tools(&["python3"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hostile.tar");
    let name = "etc/x\u{1b}]52;c;aGk=\u{7}\n-rw-r--r-- 0:0 1 2023-11-14 22:13 passwd";
    let py_name = "etc/x\\x1b]52;c;aGk=\\x07\\n-rw-r--r-- 0:0 1 2023-11-14 22:13 passwd";
    sh(&format!(
        "python3 - <<'EOF'\nimport tarfile, io\nwith tarfile.open('{}', 'w', format=tarfile.PAX_FORMAT) as t:\n    i = tarfile.TarInfo('{py_name}'); i.size = 2\n    t.addfile(i, io.BytesIO(b'hi'))\n    l = tarfile.TarInfo('etc/l\\x1b[2J'); l.type = tarfile.SYMTYPE; l.linkname = 'x\\x1b[2J'\n    t.addfile(l)\nEOF",
        archive.display()
    ));
    let o = imprint(&["ls", "-R"], &archive, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !o.stdout.contains(&0x1b) && !o.stdout.contains(&0x07),
        "{:?}",
        stdout(&o)
    );
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains("etc/x\\033]52;c;aGk=\\a\\n-rw-r--r--"),
        "{text}"
    );
    assert!(text.contains("etc/l\\033[2J -> x\\033[2J"), "{text}");
    let entries = ls_json(&archive);
    assert!(
        entries.iter().any(|e| e.0 == format!("/{name}")),
        "{entries:?}"
    );
    // cat's errors about such a name escape it too.
    let o = imprint(&["cat"], &archive, &["/etc/nope\u{1b}]52;c;aGk=\u{7}"]);
    assert!(!o.status.success());
    assert!(!o.stderr.contains(&0x1b), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope\\033]52"), "{}", stderr(&o));
}

/// Finding 22.13: a reader that goes away (`| head -c 400`) ends
/// `ls --json`, `cat` and `verify` quietly: exit 0, no "internal error".
/// The pipe's read end is closed before the command starts, so every
/// write fails (no race with a `head` that has not exited yet).
#[test]
fn a_closed_stdout_ends_quietly() {
    require_tools(&["python3"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    for i in 0..300 {
        fs::write(root.join(format!("usr/bin/tool{i:04}")), "x\n").unwrap();
    }
    let archive = dir.path().join("r.tar");
    sh(&format!(
        "tar -cf {} -C {} .",
        archive.display(),
        root.display()
    ));
    let out = dir.path().join("out.tar");
    provision_and_check(dir.path(), &archive, &out);
    let cases: [&[&str]; 5] = [
        &["ls", "--json", "-R"],
        &["ls", "-R"],
        &["cat", "/etc/passwd"],
        &["verify", "--json", "--owner", "azaion"],
        &["verify", "--owner", "azaion"],
    ];
    for args in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (head, rest) = args.split_at(1);
        let o = bin()
            .args(head)
            .arg(&out)
            .args(rest)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            o.status.code() == Some(0) || o.status.code() == Some(141),
            "{args:?}: {:?} {err}",
            o.status
        );
        assert!(
            !err.contains("internal error") && !err.contains("bug"),
            "{args:?}: {err}"
        );
    }
}

/// Finding 22.6: `ls` streams: its peak memory over a tar.gz of 80,000
/// long names is that over 20,000 (it held every entry: 640 MB at 100k).
#[test]
fn ls_memory_does_not_grow_with_entries() {
    require_tools(&["python3", "gzip"]);
    let dir = tempfile::tempdir().unwrap();
    let make = |n: usize| {
        let archive = dir.path().join(format!("{n}.tar.gz"));
        sh(&format!(
            "python3 - <<'EOF'\nimport tarfile\nwith tarfile.open('{}', 'w:gz', format=tarfile.GNU_FORMAT, compresslevel=1) as t:\n    for d in range(4):\n        i = tarfile.TarInfo('usr/share/d%d' % d); i.type = tarfile.DIRTYPE; t.addfile(i)\n    for k in range({n}):\n        i = tarfile.TarInfo('usr/share/d%d/%s-%07d' % (k % 4, 'n' * 180, k))\n        t.addfile(i)\nEOF",
            archive.display()
        ));
        archive
    };
    let small = make(20_000);
    let large = make(80_000);
    for json in [false, true] {
        let peak = |archive: &Path| {
            let mut c = bin();
            c.arg("ls").arg("-R").arg(archive);
            if json {
                c.arg("--json");
            }
            let log = dir.path().join("ls.out");
            let (ok, rss) = peak_rss(&mut c, &log);
            assert!(
                ok,
                "{}",
                fs::read_to_string(log.with_extension("err")).unwrap()
            );
            let lines = fs::read_to_string(&log).unwrap().lines().count();
            (rss, lines)
        };
        let (small_rss, small_lines) = peak(&small);
        let (large_rss, large_lines) = peak(&large);
        assert!(
            large_lines > 80_000 && small_lines > 20_000,
            "{small_lines} {large_lines}"
        );
        // Four times the entries; the same memory within 4 MiB (the
        // growth was ~6 KB an entry: 360 MB more here).
        assert!(
            large_rss < small_rss + (4 << 20),
            "json {json}: {small_rss} bytes for 20k entries, {large_rss} for 80k"
        );
    }
}

/// Finding 22.14: a symlink to the root (`/etc/rootlink -> /`) leads
/// back inside the image, in tar and ext4, as a chroot would.
#[test]
fn a_symlink_to_the_root_resolves_inside_the_image() {
    require_tools(&["tar", "mke2fs"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    symlink("/", root.join("etc/rootlink")).unwrap();
    let archive = dir.path().join("r.tar");
    sh(&format!(
        "tar -cf {} -C {} .",
        archive.display(),
        root.display()
    ));
    let img = dir.path().join("r.ext4");
    let o = mkfs(&root, &img, &["-t", "ext4"], "8M");
    assert!(o.status.success(), "{}", stderr(&o));
    for image in [&archive, &img] {
        let o = imprint(&["cat"], image, &["/etc/rootlink/etc/passwd"]);
        assert!(o.status.success(), "{}: {}", image.display(), stderr(&o));
        assert_eq!(stdout(&o), PASSWD);
        let o = imprint(&["ls"], image, &["/etc/rootlink/usr/bin"]);
        assert!(o.status.success(), "{}: {}", image.display(), stderr(&o));
        assert!(stdout(&o).trim_end().ends_with(" tool"), "{}", stdout(&o));
    }
}

/// Finding 22.14: `ls -R` of a tree deeper than 64 levels lists it all
/// (it said "damaged, run e2fsck", and e2fsck finds nothing).
#[test]
fn a_deep_tree_is_listed_not_called_damaged() {
    require_tools(&["mke2fs", "e2fsck"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let mut deep = root.join("deep");
    for _ in 0..100 {
        deep = deep.join("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), "leaf\n").unwrap();
    let img = dir.path().join("deep.ext4");
    let o = mkfs(&root, &img, &["-t", "ext4"], "8M");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&img);
    let entries = ls_json(&img);
    let leaf = format!("/deep{}/leaf", "/d".repeat(100));
    assert!(
        entries.iter().any(|e| e.0 == leaf),
        "{} entries",
        entries.len()
    );
}

/// `ls` output stays a valid document when nothing matches below a
/// directory: an empty directory lists as an empty array.
#[test]
fn an_empty_directory_lists_as_an_empty_document() {
    require_tools(&["tar"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    fs::create_dir_all(root.join("empty")).unwrap();
    let archive = dir.path().join("r.tar");
    sh(&format!(
        "tar -cf {} -C {} .",
        archive.display(),
        root.display()
    ));
    let o = imprint(&["ls", "--json"], &archive, &["/empty"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["entries"].as_array().unwrap().len(), 0);
    assert_eq!(doc["path"], "/empty");
}

/// Finding 22.9 (preview): the xattrs an overlay writes are shown by
/// `--dry-run`, names and values (text when printable, hex always), and
/// `ls --xattrs` shows the names the written file carries.
#[test]
fn the_preview_shows_the_xattrs_an_overlay_writes() {
    require_tools(&["tar"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let archive = dir.path().join("r.tar");
    sh(&format!(
        "tar -cf {} -C {} .",
        archive.display(),
        root.display()
    ));
    let spec = dir.path().join("x.toml");
    fs::write(
        &spec,
        "[[entry]]\npath = \"/usr/bin/ping\"\ntype = \"file\"\nmode = \"0755\"\nowner = \"0:0\"\ncontent = \"x\"\n\
         xattrs = { \"security.selinux\" = \"system_u:object_r:ping_exec_t:s0\", \"trusted.bin\" = \"\\u0001\\u0002\", \"user.site\" = \"kyiv\" }\n",
    )
    .unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    let out = dir.path().join("out.tar");
    let dry = |json: bool| {
        let mut c = provision_offline(&archive, &out, "azaion", &pw);
        c.arg("--overlay").arg(&spec).arg("--dry-run");
        if json {
            c.arg("--json");
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    let doc: serde_json::Value = serde_json::from_slice(&dry(true)).unwrap();
    let entries = doc["devices"][0]["images"][0]["entries"]
        .as_array()
        .unwrap();
    let ping = entries
        .iter()
        .find(|e| e["path"] == "/usr/bin/ping")
        .unwrap();
    assert_eq!(
        ping["xattrs"],
        serde_json::json!([
            {"name": "security.selinux", "hex": "73797374656d5f753a6f626a6563745f723a70696e675f657865635f743a7330", "text": "system_u:object_r:ping_exec_t:s0"},
            {"name": "trusted.bin", "hex": "0102"},
            {"name": "user.site", "hex": "6b796976", "text": "kyiv"},
        ])
    );
    let text = String::from_utf8(dry(false)).unwrap();
    for line in [
        "xattr security.selinux=\"system_u:object_r:ping_exec_t:s0\"",
        "xattr trusted.bin=0x0102",
        "xattr user.site=\"kyiv\"",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(!out.exists());
    // Written, `ls --xattrs` names them (as GNU tar lists them).
    let o = run(provision_offline(&archive, &out, "azaion", &pw)
        .arg("--overlay")
        .arg(&spec));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = imprint(&["ls", "--xattrs"], &out, &["/usr/bin/ping"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    for name in ["security.selinux", "trusted.bin", "user.site"] {
        assert!(listed.contains(&format!("    xattr {name}\n")), "{listed}");
    }
    let o = imprint(&["ls", "--xattrs", "--json"], &out, &["/usr/bin/ping"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        doc["entries"][0]["xattrs"],
        serde_json::json!(["security.selinux", "trusted.bin", "user.site"])
    );
}
