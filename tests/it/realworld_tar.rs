//! Tar archives as tools nobody here wrote make them (Python tarfile, GNU
//! tar, bsdtar), with the shapes that real root filesystems have: a pax
//! global header, numeric owners, hard links to device.conf, passwd behind
//! a hard link or a symlink, attributes and ACLs. Every output is
//! extracted by GNU tar and bsdtar (as root, with and without
//! `--numeric-owner`) and checked with `imprint verify`.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use imprint::stub::StubServer;

/// azaion is 1001:996 in these images, as on the issue's device.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nazaion:x:1001:996::/home/azaion:/bin/sh\n";
const GROUP: &str = "root:x:0:\nazaion:x:996:\n";

fn is_root() -> bool {
    stdout(&sh("id -u")).trim() == "0"
}

/// A small rootfs: /etc with passwd and group, /etc/azaion, /usr, /home,
/// everything at mtime 1700000000 and owned by root.
fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["etc/azaion", "usr/bin", "home/azaion"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/passwd"), PASSWD).unwrap();
    fs::write(root.join("etc/group"), GROUP).unwrap();
    fs::write(root.join("etc/hostname"), "jetson\n").unwrap();
    fs::write(root.join("etc/azaion/loader.conf"), "keep\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    settle(&root);
    root
}

/// Root ownership (azaion's home 1001:996) and one mtime everywhere.
fn settle(root: &Path) {
    sh(&format!(
        "chown -R 0:0 {r} && chown -R 1001:996 {r}/home/azaion && find {r} -exec touch -h -d @1700000000 {{}} +",
        r = root.display()
    ));
}

fn python(script: &str) {
    sh(&format!("python3 - <<'EOF'\n{script}\nEOF"));
}

/// `imprint provision` of `input` into `out` (a file) for azaion.
fn provision(
    input: &Path,
    out: &Path,
    server: &StubServer,
    extra: &[&str],
) -> std::process::Output {
    run(provision_online(input, out, &server.url())
        .args(["--owner", "azaion"])
        .args(extra))
}

fn provision_ok(input: &Path, out: &Path, server: &StubServer, extra: &[&str]) {
    let o = provision(input, out, server, extra);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn verify(image: &Path, owner: &str) -> std::process::Output {
    run(bin().arg("verify").arg(image).args(["--owner", owner]))
}

/// The ways the tests extract: GNU tar as root mapping names (as NVIDIA's
/// `sudo tar xpf` does), GNU tar with numeric ids, bsdtar.
const EXTRACTORS: [&str; 3] = ["gnutar", "gnutar-numeric", "bsdtar"];

fn extract_with(tool: &str, archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let (a, d) = (archive.display(), into.display());
    sh(&match tool {
        "gnutar" => {
            format!("tar --xattrs --xattrs-include='*' --acls --same-owner -xpf {a} -C {d}")
        }
        "gnutar-numeric" => format!(
            "tar --xattrs --xattrs-include='*' --acls --numeric-owner --same-owner -xpf {a} -C {d}"
        ),
        "bsdtar" => format!("bsdtar -xp --xattrs --acls -f {a} -C {d}"),
        _ => unreachable!(),
    });
}

/// (mode, uid, gid, mtime, link count, content) of a file.
fn stat(path: &Path) -> (u32, u32, u32, i64, u64, String) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (
        m.mode() & 0o7777,
        m.uid(),
        m.gid(),
        m.mtime(),
        m.nlink(),
        fs::read_to_string(path).unwrap_or_default(),
    )
}

fn xattrs(path: &Path) -> String {
    stdout(&sh(&format!(
        "getfattr -h -d -m- --absolute-names {} || true",
        path.display()
    )))
}

/// device.conf as every extractor gives it: 0600, 1001:996, the password.
fn assert_conf_everywhere(dir: &Path, out: &Path, server: &StubServer) {
    let password = server.password_of(EMAIL).expect("account on the server");
    for tool in EXTRACTORS {
        let x = dir.join(format!("x-{tool}"));
        extract_with(tool, out, &x);
        let (mode, uid, gid, _, links, text) = stat(&x.join("etc/azaion/device.conf"));
        assert_eq!((mode, uid, gid), (0o600, 1001, 996), "{tool}");
        assert_eq!(links, 1, "{tool}: one name");
        assert_eq!(text, conf_text(EMAIL, &password), "{tool}");
    }
}

/// Case 1: a pax global header gives every entry 0:0 root/root under GNU
/// tar (bsdtar ignores it); device.conf must extract as the plan's owner
/// under both, and verify must fail an output that does not.
#[test]
fn a_pax_global_header_does_not_change_the_new_entries_owner() {
    if !require(is_root(), "extracting with owners needs root") {
        return;
    }
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    for (ext, mode) in [("tar", "w"), ("tar.gz", "w:gz"), ("tar.xz", "w:xz")] {
        let input = tmp.path().join(format!("global.{ext}"));
        python(&format!(
            r#"
import tarfile
with tarfile.open("{input}", "{mode}", format=tarfile.PAX_FORMAT,
                  pax_headers={{"uid": "0", "gid": "0", "uname": "root", "gname": "root"}}) as t:
    t.add("{root}", arcname=".")
"#,
            input = input.display(),
            root = root.display()
        ));
        let out = tmp.path().join(format!("out.{ext}"));
        provision_ok(&input, &out, &server, &[]);
        assert_conf_everywhere(&tmp.path().join(ext), &out, &server);
        let v = verify(&out, "azaion");
        assert!(v.status.success(), "{ext}: {}", stdout(&v));
    }
    let out = tmp.path().join("out.tar");

    // What imprint wrote before: device.conf with ustar fields only, after
    // the global header. GNU tar gives it 0:0; verify must say so.
    let bad = tmp.path().join("bad.tar");
    python(&format!(
        r#"
import io, tarfile
src = tarfile.open("{out}")
with tarfile.open("{bad}", "w", format=tarfile.PAX_FORMAT,
                  pax_headers={{"uid": "0", "gid": "0", "uname": "root", "gname": "root"}}) as t:
    for m in src.getmembers():
        data = src.extractfile(m).read() if m.isfile() else None
        m.pax_headers = {{}}
        if m.name.endswith("device.conf"):
            m.uname = m.gname = ""
        t.addfile(m, io.BytesIO(data) if data is not None else None)
"#,
        out = out.display(),
        bad = bad.display()
    ));
    let x = tmp.path().join("x-bad");
    extract_with("gnutar", &bad, &x);
    assert_eq!(
        stat(&x.join("etc/azaion/device.conf")).1,
        0,
        "the bug shows"
    );
    let v = verify(&bad, "azaion");
    assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
    assert!(
        stdout(&v)
            .lines()
            .any(|l| l.starts_with("FAIL owner") && l.contains("0:0")),
        "{}",
        stdout(&v)
    );
}

/// Case 6: an archive made with --numeric-owner gets new entries without
/// names; an archive with names gets the image's names.
#[test]
fn owner_names_follow_the_archives_convention() {
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    for (numeric, flag) in [(true, "--numeric-owner"), (false, "")] {
        let input = tmp.path().join(format!("in-{numeric}.tar"));
        sh(&format!(
            "tar --format=gnu {flag} --sort=name -C {} -cf {} .",
            root.display(),
            input.display()
        ));
        let out = tmp.path().join(format!("out-{numeric}.tar"));
        provision_ok(&input, &out, &server, &[]);
        let listing = stdout(&sh(&format!(
            "tar --numeric-owner -tvf {0} && tar -tvf {0}",
            out.display()
        )));
        let conf: Vec<&str> = listing
            .lines()
            .filter(|l| l.ends_with("etc/azaion/device.conf"))
            .collect();
        assert_eq!(conf.len(), 2, "{listing}");
        let names = stdout(&sh(&format!(
            "python3 -c 'import tarfile; m = tarfile.open(\"{}\").getmember(\"./etc/azaion/device.conf\"); print(m.uname + \":\" + m.gname, m.uid, m.gid)'",
            out.display()
        )));
        if numeric {
            assert_eq!(names.trim(), ": 1001 996", "{listing}");
        } else {
            assert_eq!(names.trim(), "azaion:azaion 1001 996", "{listing}");
        }
        let v = verify(&out, "azaion");
        assert!(v.status.success(), "{}", stdout(&v));
    }
}

/// verify fails an entry whose owner name is not the image's name for
/// its id: GNU tar as root would map it through the host's database.
#[test]
fn verify_fails_names_the_image_does_not_give_the_id() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    fs::write(
        root.join("etc/azaion/device.conf"),
        conf_text(EMAIL, PASSWORD),
    )
    .unwrap();
    settle(&root);
    sh(&format!(
        "chown 1001:996 {0}/etc/azaion/device.conf && chmod 600 {0}/etc/azaion/device.conf",
        root.display()
    ));
    let input = tmp.path().join("names.tar");
    sh(&format!(
        "tar --format=posix --owner-map=<(echo '+1001 admin:1001') -C {} -cf {} .",
        root.display(),
        input.display()
    ));
    let v = verify(&input, "azaion");
    assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
    assert!(
        stdout(&v)
            .lines()
            .any(|l| l.starts_with("FAIL owner") && l.contains("\"admin\"")),
        "{}",
        stdout(&v)
    );
}

/// Case 7: a new file in an existing directory leaves the directory's
/// mtime as the archive says, under GNU tar and bsdtar.
#[test]
fn an_existing_directory_keeps_its_mtime() {
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    for ext in ["tar", "tar.gz", "tar.xz"] {
        let input = tmp.path().join(format!("dir.{ext}"));
        make_tar(&root, &input, ext, "gnu", true);
        let out = tmp.path().join(format!("out.{ext}"));
        provision_ok(&input, &out, &server, &[]);
        for tool in ["gnutar", "bsdtar"] {
            let x = tmp.path().join(format!("x-{ext}-{tool}"));
            extract(tool, &out, &x);
            for dir in ["etc", "etc/azaion"] {
                assert_eq!(stat(&x.join(dir)).3, 1_700_000_000, "{ext} {tool}: {dir}");
            }
        }
        // A new directory in etc/ keeps etc/'s mtime too.
        let bare = tmp.path().join(format!("bare-{ext}"));
        sh(&format!("cp -a {} {}", root.display(), bare.display()));
        fs::remove_dir_all(bare.join("etc/azaion")).unwrap();
        settle(&bare);
        let input = tmp.path().join(format!("bare.{ext}"));
        make_tar(&bare, &input, ext, "pax", false);
        let out = tmp.path().join(format!("bare-out.{ext}"));
        provision_ok(&input, &out, &server, &[]);
        let x = tmp.path().join(format!("xb-{ext}"));
        extract("gnutar", &out, &x);
        assert_eq!(stat(&x.join("etc")).3, 1_700_000_000, "{ext}: etc");
    }
}

/// Case 3: device.conf as the target of a later hard link, and as a hard
/// link itself: the other name keeps the old file, device.conf is new.
#[test]
fn hard_links_to_device_conf_keep_the_old_file() {
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    fs::write(root.join("etc/azaion/device.conf"), "old secret\n").unwrap();
    fs::hard_link(
        root.join("etc/azaion/device.conf"),
        root.join("etc/azaion/device.conf.bak"),
    )
    .unwrap();
    settle(&root);
    sh(&format!(
        "chown 5:6 {0}/etc/azaion/device.conf && chmod 640 {0}/etc/azaion/device.conf",
        root.display()
    ));
    // device.conf first (sorted), then device.conf.bak linking to it; and
    // the reverse, device.conf the link.
    let forward = tmp.path().join("forward.tar");
    sh(&format!(
        "tar --format=gnu --sort=name -C {} -cf {} .",
        root.display(),
        forward.display()
    ));
    let reverse = tmp.path().join("reverse.tar.gz");
    sh(&format!(
        "cd {} && (echo ./etc/azaion/device.conf.bak; find . ! -name device.conf.bak | sort) | tar --format=posix --no-recursion -T - -czf {}",
        root.display(),
        reverse.display()
    ));
    let listing = stdout(&sh(&format!("tar -tvf {}", reverse.display())));
    assert!(
        listing.contains("device.conf link to ./etc/azaion/device.conf.bak"),
        "{listing}"
    );
    let before = verify(&forward, "5:6");
    assert!(
        stdout(&before)
            .lines()
            .any(|l| l.starts_with("FAIL regular file") && l.contains("2 names")),
        "{}",
        stdout(&before)
    );
    for input in [&forward, &reverse] {
        let name = input.file_name().unwrap().to_string_lossy();
        let out = tmp.path().join(format!("out-{name}"));
        provision_ok(input, &out, &server, &[]);
        assert_conf_everywhere(&tmp.path().join(format!("x-{name}")), &out, &server);
        for tool in EXTRACTORS {
            let x = tmp
                .path()
                .join(format!("x-{name}"))
                .join(format!("x-{tool}"));
            let (mode, uid, gid, _, links, text) = stat(&x.join("etc/azaion/device.conf.bak"));
            assert_eq!(
                (mode, uid, gid, links, text.as_str()),
                (0o640, 5, 6, 1, "old secret\n"),
                "{name} {tool}"
            );
        }
        let v = verify(&out, "azaion");
        assert!(v.status.success(), "{name}: {}", stdout(&v));
    }
}

/// Cases 11 and 12: passwd and group as hard links to earlier entries,
/// and as relative, absolute and chained symlinks, are read as a chroot
/// would; a dangling one says where it leads.
#[test]
fn passwd_behind_hard_links_and_symlinks_is_read() {
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let setups: [(&str, &str); 4] = [
        (
            "hardlink",
            "mkdir -p {r}/aaa && ln {r}/etc/passwd {r}/aaa/passwd && ln {r}/etc/group {r}/aaa/group",
        ),
        (
            "relative",
            "mkdir -p {r}/usr/share/base && mv {r}/etc/passwd {r}/etc/group {r}/usr/share/base/ && ln -s ../usr/share/base/passwd {r}/etc/passwd && ln -s ../usr/share/base/group {r}/etc/group",
        ),
        (
            "absolute",
            "mkdir -p {r}/usr/share/base && mv {r}/etc/passwd {r}/etc/group {r}/usr/share/base/ && ln -s /usr/share/base/passwd {r}/etc/passwd && ln -s /usr/share/base/group {r}/etc/group",
        ),
        (
            "chained",
            "mkdir -p {r}/usr/share/base && mv {r}/etc/passwd {r}/etc/group {r}/usr/share/base/ && ln -s base {r}/usr/share/db && ln -s ../../../../usr/share/db/passwd {r}/etc/passwd && ln -s /usr/share/db/group {r}/etc/group",
        ),
    ];
    for (name, script) in setups {
        let root = tree(&tmp.path().join(name));
        sh(&script.replace("{r}", &root.display().to_string()));
        settle(&root);
        for ext in ["tar", "tar.zst"] {
            let input = tmp.path().join(format!("{name}.{ext}"));
            // aaa/ sorts before etc/: etc/passwd is the hard link.
            make_tar(&root, &input, ext, "gnu", true);
            let out = tmp.path().join(format!("{name}-out.{ext}"));
            provision_ok(&input, &out, &server, &[]);
            let x = tmp.path().join(format!("x-{name}-{ext}"));
            extract("gnutar", &out, &x);
            let (_, uid, gid, ..) = stat(&x.join("etc/azaion/device.conf"));
            assert_eq!((uid, gid), (1001, 996), "{name} {ext}");
            let v = verify(&out, "azaion");
            assert!(v.status.success(), "{name} {ext}: {}", stdout(&v));
        }
    }
    // Dangling: the message says where it leads.
    let root = tree(&tmp.path().join("dangling"));
    sh(&format!(
        "rm {0}/etc/passwd && ln -s /nowhere/passwd {0}/etc/passwd",
        root.display()
    ));
    let input = tmp.path().join("dangling.tar");
    make_tar(&root, &input, "tar", "gnu", true);
    let o = provision(&input, &tmp.path().join("d-out.tar"), &server, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o)
            .contains("/etc/passwd resolves to /nowhere/passwd (/etc/passwd -> /nowhere/passwd)"),
        "{}",
        stderr(&o)
    );
}

const OVERLAY: &str = r#"
[[entry]]
path = "/etc/systemd/system/multi-user.target.wants/azaion.service"
type = "symlink"
target = "/lib/systemd/system/azaion.service"

[[entry]]
path = "/etc/localtime"
type = "symlink"
target = "../usr/share/zoneinfo/UTC"

[[entry]]
path = "/etc/machine-id"
type = "absent"

[[entry]]
path = "/etc/old"
type = "absent"
recursive = true

[[entry]]
path = "/etc/hostname"
type = "file"
mode = "0644"
owner = "0:0"
content = "{serial}\n"
xattrs = { "security.selinux" = "system_u:object_r:etc_t:s0", "user.b" = "2" }
"#;

/// A tree with attributes and ACLs on the files the overlay replaces, a
/// file and a directory to remove (a hard link outside names a file in
/// it), and a file a symlink replaces.
fn attributed_tree(dir: &Path) -> PathBuf {
    let root = tree(dir);
    let r = root.display();
    sh(&format!(
        "mkdir -p {r}/etc/systemd/system/multi-user.target.wants {r}/etc/old/sub {r}/usr/share/zoneinfo \
         && echo UTC > {r}/usr/share/zoneinfo/UTC && echo zone > {r}/etc/localtime \
         && echo 0123 > {r}/etc/machine-id && echo old > {r}/etc/old/sub/f && echo o2 > {r}/etc/old/g \
         && ln {r}/etc/old/sub/f {r}/usr/bin/zz-linked \
         && echo old-conf > {r}/etc/azaion/device.conf"
    ));
    settle(&root);
    sh(&format!(
        "setfattr -n security.selinux -v system_u:object_r:azaion_conf_t:s0 {r}/etc/azaion/device.conf \
         && setfattr -n user.x -v 1 {r}/etc/azaion/device.conf \
         && setfacl -m u:1234:r {r}/etc/azaion/device.conf \
         && setfattr -n security.selinux -v old_t {r}/etc/hostname \
         && setfattr -n user.a -v 1 {r}/etc/hostname"
    ));
    root
}

/// Issue 15 items 3 and 4, and issue 13 case 4 for tar: symlinks, removals
/// and attributes, read back by GNU tar and bsdtar as root.
#[test]
fn symlinks_removals_and_attributes() {
    if !require(is_root(), "restoring security.* attributes needs root") {
        return;
    }
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = attributed_tree(tmp.path());
    let spec = tmp.path().join("extra.toml");
    fs::write(&spec, OVERLAY).unwrap();
    for (ext, comp) in [("tar", "cat"), ("tar.gz", "gzip -n"), ("tar.xz", "xz")] {
        let input = tmp.path().join(format!("attr.{ext}"));
        sh(&format!(
            "tar --format=posix --xattrs --xattrs-include='*' --acls --sort=name -C {} -cf - . | {comp} > {}",
            root.display(),
            input.display()
        ));
        let out = tmp.path().join(format!("out.{ext}"));
        provision_ok(
            &input,
            &out,
            &server,
            &["--overlay", spec.to_str().unwrap()],
        );
        for tool in EXTRACTORS {
            let x = tmp.path().join(format!("x-{ext}-{tool}"));
            extract_with(tool, &out, &x);
            let link = |p: &str| fs::read_link(x.join(p)).map(|t| t.display().to_string());
            assert_eq!(
                link("etc/systemd/system/multi-user.target.wants/azaion.service").unwrap(),
                "/lib/systemd/system/azaion.service",
                "{ext} {tool}"
            );
            assert_eq!(link("etc/localtime").unwrap(), "../usr/share/zoneinfo/UTC");
            for gone in ["etc/machine-id", "etc/old"] {
                assert!(!x.join(gone).exists(), "{ext} {tool}: {gone}");
            }
            // The hard link outside the removed directory keeps the file.
            assert_eq!(stat(&x.join("usr/bin/zz-linked")).5, "old\n");
            let conf = xattrs(&x.join("etc/azaion/device.conf"));
            assert!(
                conf.contains("security.selinux=\"system_u:object_r:azaion_conf_t:s0\""),
                "{ext} {tool}: the label stays: {conf}"
            );
            assert!(
                !conf.contains("user.x") && !conf.contains("posix_acl"),
                "{ext} {tool}: user attributes and ACLs go: {conf}"
            );
            let host = xattrs(&x.join("etc/hostname"));
            assert!(
                host.contains("security.selinux=\"system_u:object_r:etc_t:s0\"")
                    && host.contains("user.b=\"2\"")
                    && !host.contains("user.a"),
                "{ext} {tool}: {host}"
            );
            assert_eq!(stat(&x.join("etc/hostname")).5, format!("{SERIAL}\n"));
            // Everything else is as it was.
            assert_eq!(stat(&x.join("etc/azaion/loader.conf")).5, "keep\n");
        }
        let v = verify(&out, "azaion");
        assert!(v.status.success(), "{ext}: {}", stdout(&v));
        // The input's ACL on device.conf fails verify.
        let v = verify(&input, "0:0");
        assert!(
            stdout(&v)
                .lines()
                .any(|l| l.starts_with("FAIL mode") && l.contains("system.posix_acl_access")),
            "{}",
            stdout(&v)
        );
    }
}

/// A removal in the middle of the archive: the tail rewrite starts there
/// and gives exactly the bytes of the full rewrite.
#[test]
fn a_removal_in_the_middle_rewrites_from_there() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    sh(&format!(
        "mkdir -p {0}/etc/systemd/system/multi-user.target.wants {0}/etc/old/sub {0}/usr/share/zoneinfo && echo 1 > {0}/etc/machine-id && echo 2 > {0}/etc/old/sub/f && echo z > {0}/etc/localtime && head -c 3000000 /dev/urandom > {0}/usr/bin/zz-big",
        root.display()
    ));
    settle(&root);
    let spec = tmp.path().join("extra.toml");
    fs::write(&spec, OVERLAY).unwrap();
    let pw = write_password(tmp.path(), PASSWORD);
    for (ext, comp, tool) in [
        ("tar", "cat", "cat"),
        ("tar.gz", "gzip -n", "gzip -dc"),
        ("tar.bz2", "bzip2", "bzip2 -dc"),
        ("tar.zst", "zstd -q", "zstd -dc"),
        ("tar.xz", "xz", "xz -dc"),
    ] {
        let input = tmp.path().join(format!("mid.{ext}"));
        sh(&format!(
            "tar --format=gnu --sort=name -C {} -cf - . | {comp} > {}",
            root.display(),
            input.display()
        ));
        let mut outs = Vec::new();
        for full in [false, true] {
            let out = tmp.path().join(format!("out-{full}.{ext}"));
            let mut cmd = provision_offline(&input, &out, "azaion", &pw);
            cmd.env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["--overlay", spec.to_str().unwrap()]);
            if full {
                cmd.env("IMPRINT_FULL_REWRITE", "1");
            }
            let o = run(&mut cmd);
            assert!(o.status.success(), "{ext}: {}", stderr(&o));
            outs.push(stdout(&sh(&format!(
                "{tool} {} | sha256sum",
                out.display()
            ))));
            let names = stdout(&sh(&format!("tar -tf {}", out.display())));
            assert!(
                !names.contains("machine-id") && !names.contains("etc/old"),
                "{names}"
            );
        }
        assert_eq!(outs[0], outs[1], "{ext}: tail rewrite equals full rewrite");
    }
}

/// Removing a directory that holds entries needs `recursive = true`.
#[test]
fn removing_a_directory_with_entries_needs_recursive() {
    let server = StubServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    sh(&format!(
        "mkdir -p {0}/etc/old && echo x > {0}/etc/old/f",
        root.display()
    ));
    settle(&root);
    let input = tmp.path().join("in.tar");
    make_tar(&root, &input, "tar", "gnu", true);
    let spec = tmp.path().join("rm.toml");
    fs::write(&spec, "[[entry]]\npath = \"/etc/old\"\ntype = \"absent\"\n").unwrap();
    let before = sha256(&input);
    let out = tmp.path().join("out.tar");
    let o = provision(
        &input,
        &out,
        &server,
        &["--overlay", spec.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/etc/old") && stderr(&o).contains("recursive = true"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    assert_eq!(sha256(&input), before);
    assert!(server.requests().is_empty());
}
