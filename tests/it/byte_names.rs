//! Names inside images are bytes (issue 26, item 9): names in legacy
//! charsets (koi8-r, cp866, EUC-JP) and lone bytes that are not UTF-8, in
//! every tar header form (ustar with prefix, GNU long names, pax `path=` as
//! GNU tar writes it and under `hdrcharset=BINARY` as bsdtar and Python
//! write it), in ext4 directories (mke2fs -d) and in a staging tree. `ls`
//! spells each name as `tar -tvf` does (`\377`), two names differing only
//! in such bytes stay two; `cat` takes the path as bytes and gives the
//! bytes `tar -xO` gives; `--json` carries the exact spelling beside the
//! text; a hard link rewritten while stamping keeps its name's bytes.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::require::{require_tool, require_tools};

/// `dir` + 12 × koi8-r "тест", then `sub` + 8 × "тест": 141 bytes, too
/// long for a ustar name field, so GNU tar writes a long name for the
/// file in it and ustar splits off a prefix.
fn long_dir() -> Vec<u8> {
    let mut d = b"dir\xd4\xc5\xd3\xd4".repeat(12);
    d.push(b'/');
    d.extend(b"sub\xd4\xc5\xd3\xd4".repeat(8));
    d
}

/// Files of the tree: (name bytes, content).
fn files() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut long = long_dir();
    long.extend_from_slice(b"/f\xff");
    vec![
        (b"a\xff".to_vec(), b"ff\n".to_vec()),
        (b"a\xfe".to_vec(), b"fe\n".to_vec()),
        // koi8-r and cp866 "тест", EUC-JP "日本".
        (b"\xd4\xc5\xd3\xd4".to_vec(), b"koi8-r\n".to_vec()),
        (b"\xe2\xa5\xe1\xe2".to_vec(), b"cp866\n".to_vec()),
        (b"\xc6\xfc\xcb\xdc".to_vec(), b"euc-jp\n".to_vec()),
        // Printable but special: a backslash, a newline.
        (b"b\\c".to_vec(), b"backslash\n".to_vec()),
        (b"n\nl".to_vec(), b"newline\n".to_vec()),
        (long, b"long\n".to_vec()),
    ]
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// The tree on disk (names are raw bytes), owned by root, one mtime, with
/// a symlink whose name and target are not UTF-8 either.
fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("tree");
    fs::create_dir_all(root.join(os(&long_dir()))).unwrap();
    for (name, content) in files() {
        fs::write(root.join(os(&name)), content).unwrap();
    }
    std::os::unix::fs::symlink(os(b"a\xff"), root.join(os(b"l\xfe"))).unwrap();
    sh(&format!(
        "chown -R 0:0 {r} && find {r} -exec touch -h -d @1700000000 {{}} +",
        r = root.display()
    ));
    root
}

/// What follows the five leading fields of a `tar -tv` or `imprint ls`
/// line (mode, owner, size, date, time): the name, ` -> target` after it.
fn name_field(line: &str) -> String {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(' ').expect("five fields")..];
    }
    rest.trim_start().to_string()
}

/// The names `tar -tvf` prints in a UTF-8 locale, without `./` and a
/// directory's trailing `/`, sorted; the root itself left out.
fn tar_names(archive: &Path) -> Vec<String> {
    let o = run(Command::new("tar")
        .env("LC_ALL", "C.UTF-8")
        .arg("-tvf")
        .arg(archive));
    assert!(
        o.status.success(),
        "tar -tvf {}: {}",
        archive.display(),
        stderr(&o)
    );
    let mut names: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            let n = name_field(l);
            let n = n.strip_prefix("./").unwrap_or(&n);
            n.strip_suffix('/').unwrap_or(n).to_string()
        })
        .filter(|n| !n.is_empty() && n != ".")
        .collect();
    names.sort();
    names
}

/// The names `imprint ls -R` prints, sorted (ext4's lost+found left out).
fn imprint_names(image: &Path) -> Vec<String> {
    let o = run(bin().args(["ls", "-R"]).arg(image));
    assert!(o.status.success(), "ls {}: {}", image.display(), stderr(&o));
    let mut names: Vec<String> = stdout(&o)
        .lines()
        .map(name_field)
        .filter(|n| n != "lost+found")
        .collect();
    names.sort();
    names
}

/// `imprint cat IMAGE PATH`, PATH given as bytes.
fn cat(image: &Path, path: &[u8]) -> Vec<u8> {
    let o = run(bin().arg("cat").arg(image).arg(os(path)));
    assert!(
        o.status.success(),
        "cat {} {}: {}",
        image.display(),
        String::from_utf8_lossy(path),
        stderr(&o)
    );
    o.stdout
}

/// `tar -xOf ARCHIVE MEMBER`, the member named as stored.
fn tar_cat(archive: &Path, member: &[u8]) -> Vec<u8> {
    let o = run(Command::new("tar").arg("-xOf").arg(archive).arg(os(member)));
    assert!(o.status.success(), "tar -xOf: {}", stderr(&o));
    o.stdout
}

/// Every file's bytes through `imprint cat`, the path given as bytes, and
/// through the symlink; each as `want(name)` says.
fn check_cat(image: &Path, want: impl Fn(&[u8]) -> Vec<u8>) {
    for (name, content) in files() {
        let mut path = b"/".to_vec();
        path.extend_from_slice(&name);
        let got = cat(image, &path);
        assert_eq!(
            got,
            content,
            "{} {:?}",
            image.display(),
            String::from_utf8_lossy(&name)
        );
        assert_eq!(got, want(&name), "{}", image.display());
    }
    assert_eq!(
        cat(image, b"/l\xfe"),
        b"ff\n",
        "{}: through the link",
        image.display()
    );
}

/// The listing's spelling of the tree, as GNU tar prints it: checked
/// against the literal escapes, so a listing that is merely equal to
/// tar's is also the expected one.
fn expected_spelling(names: &[String]) {
    for want in [
        "a\\377",
        "a\\376",
        "\\324\\305\\323\\324",
        "\\342\\245\\341\\342",
        "\\306\\374\\313\\334",
        "b\\\\c",
        "n\\nl",
        "l\\376 -> a\\377",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:#?}");
    }
    assert_eq!(names.len(), files().len() + 3, "{names:#?}");
}

#[test]
fn tar_names_are_bytes_in_every_header_form() {
    require_tools(&["tar", "bsdtar", "python3"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let mut archives: Vec<(PathBuf, &[u8])> = Vec::new();
    // GNU tar: GNU long names, ustar prefix, pax `path=` (which GNU tar
    // writes with the raw bytes, warning that they are not UTF-8).
    for format in ["gnu", "ustar", "posix"] {
        let out = dir.path().join(format!("gnu-{format}.tar"));
        let o = run(Command::new("tar")
            .arg(format!("--format={format}"))
            .args(["--sort=name", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&root)
            .arg("."));
        assert!(o.status.success(), "tar --format={format}: {}", stderr(&o));
        archives.push((out, b"./"));
    }
    // bsdtar: pax with `hdrcharset=BINARY`, and ustar.
    for format in ["pax", "ustar"] {
        let out = dir.path().join(format!("bsd-{format}.tar"));
        sh(&format!(
            "cd {} && bsdtar --format={format} -cf {} .",
            root.display(),
            out.display()
        ));
        archives.push((out, b"./"));
    }
    // Python's tarfile: pax under `hdrcharset=BINARY` from surrogate-
    // escaped names, and GNU with latin-1 names.
    let py = dir.path().join("py");
    sh(&format!(
        r#"python3 - {root} {py} <<'EOF'
import os, sys, tarfile
root, out = sys.argv[1], sys.argv[2]
for fmt, suffix, enc in [(tarfile.PAX_FORMAT, "pax", "utf-8"), (tarfile.GNU_FORMAT, "gnu", "latin-1")]:
    with tarfile.open(out + "-" + suffix + ".tar", "w", format=fmt, encoding=enc, errors="surrogateescape") as t:
        for name in sorted(os.listdir(root)):
            t.add(os.path.join(root, name), arcname=name)
EOF"#,
        root = root.display(),
        py = py.display()
    ));
    for suffix in ["pax", "gnu"] {
        archives.push((dir.path().join(format!("py-{suffix}.tar")), b""));
    }
    for (archive, prefix) in &archives {
        let names = imprint_names(archive);
        assert_eq!(names, tar_names(archive), "{}", archive.display());
        expected_spelling(&names);
        check_cat(archive, |name| tar_cat(archive, &[*prefix, name].concat()));
    }
}

#[test]
fn ext4_and_staging_names_are_bytes() {
    require_tools(&["mke2fs", "tar"]);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    // GNU tar's spelling of the same tree.
    let reference = dir.path().join("reference.tar");
    sh(&format!(
        "tar --format=gnu -cf {} -C {} .",
        reference.display(),
        root.display()
    ));
    let img = dir.path().join("names.ext4");
    let o = mkfs(&root, &img, &["-t", "ext4"], "8M");
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    for image in [&img, &root] {
        let names = imprint_names(image);
        assert_eq!(names, tar_names(&reference), "{}", image.display());
        expected_spelling(&names);
        check_cat(image, |name| fs::read(root.join(os(name))).unwrap());
    }
}

#[test]
fn json_carries_the_exact_spelling_beside_the_text() {
    require_tool("tar");
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let archive = dir.path().join("names.tar");
    sh(&format!(
        "tar --format=gnu -cf {} -C {} .",
        archive.display(),
        root.display()
    ));
    let o = run(bin().args(["ls", "--json"]).arg(&archive));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    let by_escaped = |e: &str| {
        entries
            .iter()
            .find(|x| x["path_escaped"] == e)
            .unwrap_or_else(|| panic!("no entry {e}: {entries:#?}"))
    };
    for (escaped, text) in [("/a\\377", "/a\u{FFFD}"), ("/a\\376", "/a\u{FFFD}")] {
        assert_eq!(by_escaped(escaped)["path"], text);
    }
    let link = by_escaped("/l\\376");
    assert_eq!(link["target"], "a\u{FFFD}");
    assert_eq!(link["target_escaped"], "a\\377");
    // UTF-8 names are themselves, JSON-escaped by JSON alone.
    for plain in ["/b\\c", "/n\nl"] {
        let e = entries.iter().find(|x| x["path"] == plain).unwrap();
        assert!(e.get("path_escaped").is_none(), "{e}");
    }
    // The path listed, given as bytes.
    let o = run(bin()
        .args(["ls", "--json"])
        .arg(&archive)
        .arg(os(b"/a\xfe")));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["path_escaped"], "/a\\376");
    assert_eq!(doc["entries"][0]["path_escaped"], "/a\\376");
    assert_eq!(doc["entries"][0]["size"], 3);
    // A path that is not there is named as tar would spell it.
    let o = run(bin().arg("cat").arg(&archive).arg(os(b"/zz\xff")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no /zz\\377"), "{}", stderr(&o));
}

#[test]
fn a_rewritten_hard_link_keeps_its_name_bytes() {
    require_tool("tar");
    let dir = tempfile::tempdir().unwrap();
    let root = make_rootfs(dir.path(), "rootfs");
    let azaion = root.join("etc/azaion");
    fs::create_dir_all(&azaion).unwrap();
    fs::write(azaion.join("device.conf"), "old\n").unwrap();
    // Stored after device.conf (sorted by name), as a hard link to it:
    // replacing device.conf turns it into a file of its own.
    fs::hard_link(azaion.join("device.conf"), azaion.join(os(b"old\xff"))).unwrap();
    let input = dir.path().join("in.tar");
    sh(&format!(
        "tar --sort=name --format=gnu -cf {} -C {} .",
        input.display(),
        root.display()
    ));
    assert!(
        tar_names(&input).contains(&"etc/azaion/old\\377 link to ./etc/azaion/device.conf".into())
    );
    let out = dir.path().join("out.tar");
    let pw = write_password(dir.path(), PASSWORD);
    let o = run(&mut provision_offline(&input, &out, "azaion", &pw));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        tar_names(&out).contains(&"etc/azaion/old\\377".into()),
        "{:#?}",
        tar_names(&out)
    );
    assert_eq!(tar_cat(&out, b"./etc/azaion/old\xff"), b"old\n");
}
