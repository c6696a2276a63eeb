//! `provision --luks-encrypt` from a tarball of the rootfs (L4T's
//! `rootfs/` as a tar): the ext4 flash.sh's build_enc_root_fsimg would put
//! in APP_ENC, made without extracting anything and without root, then
//! encrypted. Judged without imprint: the archive is made by GNU tar
//! (`--xattrs --sparse`, long names, hard links, a fifo) with entries
//! appended by Python's tarfile (owners, a device pair, a file
//! capability); cryptsetup opens the container with the passphrase Python
//! derives, Python AES-XTS decrypts it, e2fsck checks the ext4, and a
//! Python walk compares every inode debugfs shows with what Python's own
//! tar reader says the archive holds (kind, mode, owner, time, size,
//! content, link target, device numbers, extended attributes), less what
//! flash.sh's `tar --exclude=boot -cf - *` leaves out, with /etc/fstab as
//! flash.sh edits it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use crate::luks::{ok, segment, tools_ok, L4T_PY, XTS_PY};

const UUID: &str = "2f8e0c1a-5b4d-4e6f-9a7b-3c2d1e0f9a8b";
const BOOT_UUID: &str = "8c3b7d2e-1f4a-4b5c-9d6e-7f8a9b0c1d2e";
const EKB: &str = "00112233445566778899aabbccddeeff";
const ECID: &str = "0x0123456789abcdef0123456789abcdef";
/// The container's size (APP_ENC's partition): 16 MiB of header and a
/// 48 MiB filesystem.
const SIZE: u64 = 64 << 20;

/// Appends to the uncompressed archive argv[1], as a pax archive would
/// carry them: root-owned 0600 etc/shadow (group shadow, 42), a home
/// owned 1001, a binary with cap_net_raw (security.capability v2, as
/// setcap writes it), a character device 1:3 and a block device whose
/// minor needs the new encoding (259:70000), and a file whose pax mtime
/// is past 2038.
const APPEND_PY: &str = r#"
import io, sys, tarfile
cap = bytes([1, 0, 0, 2, 0, 0x20, 0, 0]) + bytes(12)
with tarfile.open(sys.argv[1], "a", format=tarfile.PAX_FORMAT) as t:
    def add(name, kind, mode, uid, gid, data=b"", pax=None, **kw):
        i = tarfile.TarInfo(name)
        i.type, i.mode, i.uid, i.gid, i.mtime = kind, mode, uid, gid, 1700000000
        i.uname = i.gname = ""
        for k, v in kw.items():
            setattr(i, k, v)
        if pax:
            i.pax_headers = pax
        i.size = len(data) if kind == tarfile.REGTYPE else 0
        t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    add("./etc/shadow", tarfile.REGTYPE, 0o600, 0, 42, b"root:*:19000:0:99999:7:::\n")
    add("./home/azaion", tarfile.DIRTYPE, 0o750, 1001, 1001)
    add("./home/azaion/.profile", tarfile.REGTYPE, 0o644, 1001, 1001, b"PATH=/usr/bin\n")
    add("./usr/bin/ping", tarfile.REGTYPE, 0o755, 0, 0, b"\x7fELF ping\n",
        pax={"SCHILY.xattr.security.capability": cap.decode("ascii")})
    add("./dev/null", tarfile.CHRTYPE, 0o666, 0, 0, devmajor=1, devminor=3)
    add("./dev/bigblk", tarfile.BLKTYPE, 0o660, 0, 6, devmajor=259, devminor=70000)
    add("./var/late", tarfile.REGTYPE, 0o644, 0, 0, b"2040\n", mtime=2208988800)
"#;

/// Compares the ext4 image argv[2] with the archive argv[1] as flash.sh
/// copies it (argv[3]: the boot partition's UUID for /etc/fstab). Prints
/// each difference; exits 1 if there is one.
const COMPARE_PY: &str = r#"
import hashlib, re, subprocess, sys, tarfile
tar, img, boot = sys.argv[1:4]
def dbg(cmd):
    return subprocess.run(["debugfs", "-R", cmd, img], capture_output=True).stdout
def norm(n):
    while n.startswith("./"):
        n = n[2:]
    n = n.strip("/")
    return "" if n == "." else n
def copied(p):
    return p != "" and not p.startswith(".") and "boot" not in p.split("/")
want, links = {}, []
with tarfile.open(tar) as t:
    for m in t:
        p = norm(m.name)
        if not copied(p):
            continue
        if m.islnk():
            links.append((p, norm(m.linkname)))
            continue
        x = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
             for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        e = {"mode": m.mode & 0o7777, "uid": m.uid, "gid": m.gid, "mtime": int(m.mtime), "xattrs": x}
        if m.isreg():
            data = t.extractfile(m).read()
            if p == "etc/fstab":
                body = data[:-1] if data.endswith(b"\n") else data
                data = body[:body.rfind(b"\n") + 1] if b"\n" in body else b""
                data += b"/dev/mapper/crypt_root / ext4 defaults 0 1\n"
                data += ("PARTUUID=%s /boot ext4 defaults 0 1\n" % boot).encode()
            e.update(kind="regular", size=len(data), sha=hashlib.sha256(data).hexdigest())
        elif m.isdir():
            e.update(kind="directory")
        elif m.issym():
            e.update(kind="symlink", target=m.linkname)
        elif m.ischr() or m.isblk():
            e.update(kind="character special" if m.ischr() else "block special",
                     dev=(m.devmajor, m.devminor))
        elif m.isfifo():
            e.update(kind="FIFO")
        want[p] = e
bad = []
def stat(p):
    s = dbg("stat /" + p).decode("utf-8", "replace")
    f = lambda r: re.search(r, s)
    out = {
        "ino": int(f(r"Inode: (\d+)").group(1)),
        "kind": f(r"Type: (.+?)\s+Mode:").group(1),
        "mode": int(f(r"Mode:\s+(\d+)").group(1), 8),
        "uid": int(f(r"User:\s+(\d+)").group(1)),
        "gid": int(f(r"Group:\s+(\d+)").group(1)),
        "size": int(f(r"Size: (\d+)").group(1)),
        "links": int(f(r"Links: (\d+)").group(1)),
        "mtime": f(r"mtime: (0x[0-9a-f]+)(?::([0-9a-f]+))?"),
    }
    t = out["mtime"]
    lo = int(t.group(1), 16)
    lo = lo - (1 << 32) if lo >= 1 << 31 else lo
    out["mtime"] = lo + ((int(t.group(2), 16) & 3) << 32 if t.group(2) else 0)
    d = f(r"Device major/minor number: ([0-9a-f]+):([0-9a-f]+)")
    if d:
        out["dev"] = (int(d.group(1)), int(d.group(2)))
    l = f(r'Fast link dest: "(.*)"')
    out["target"] = l.group(1) if l else None
    return out
# Every inode in the image, by a walk of debugfs' parseable listing.
have, todo = {}, [""]
while todo:
    d = todo.pop()
    for line in dbg("ls -p /" + d).decode("utf-8", "surrogateescape").splitlines():
        f = line.split("/")
        if len(f) < 7 or f[5] in (".", ".."):
            continue
        p = (d + "/" + f[5]).strip("/")
        have[p] = int(f[1])
        if f[2].startswith("04"):
            todo.append(p)
# Parents the archive never names are made as tar -x makes them: 0755,
# root's (the extracting user's).
implicit = {"/".join(p.split("/")[:i]) for p in want for i in range(1, p.count("/") + 1)} - set(want)
for p in sorted(implicit):
    s = stat(p) if p in have else None
    if s is None or (s["kind"], s["mode"], s["uid"], s["gid"]) != ("directory", 0o755, 0, 0):
        bad.append("implicit parent %s: %r" % (p, s))
extra = set(have) - set(want) - implicit - {l for l, _ in links} - {"lost+found", "etc/azaion", "etc/azaion/device.conf"}
if extra:
    bad.append("in the image, not in the archive: %s" % sorted(extra))
for p, e in sorted(want.items()):
    if p not in have:
        bad.append("missing: " + p)
        continue
    s = stat(p)
    for k in ("kind", "mode", "uid", "gid", "mtime"):
        if s[k] != e[k]:
            bad.append("%s: %s is %r, the archive says %r" % (p, k, s[k], e[k]))
    if e["kind"] == "regular":
        data = dbg("cat /" + p)
        if s["size"] != e["size"] or hashlib.sha256(data).hexdigest() != e["sha"]:
            bad.append("%s: content differs (%d bytes)" % (p, s["size"]))
    if e["kind"] == "symlink":
        target = s["target"]
        if target is None:
            target = dbg("cat /" + p).decode()
        if target != e["target"]:
            bad.append("%s: symlink to %r, not %r" % (p, target, e["target"]))
    if "dev" in e and s.get("dev") != e["dev"]:
        bad.append("%s: device %r, not %r" % (p, s.get("dev"), e["dev"]))
    names = re.findall(r"^\s+(\S+) \(\d+\)", dbg("ea_list /" + p).decode("utf-8", "replace"), re.M)
    if sorted(names) != sorted(e["xattrs"]):
        bad.append("%s: xattrs %r, not %r" % (p, names, sorted(e["xattrs"])))
    for name, value in e["xattrs"].items():
        got = subprocess.run(["debugfs", "-R", "ea_get -f /dev/stdout /%s %s" % (p, name), img],
                             capture_output=True).stdout
        if got != value:
            bad.append("%s: %s = %r, not %r" % (p, name, got, value))
for l, target in links:
    if have.get(l) is None or have.get(l) != have.get(target):
        bad.append("hard link %s is inode %r, %s is %r" % (l, have.get(l), target, have.get(target)))
    elif stat(l)["links"] != 1 + sum(1 for _, t in links if t == target):
        bad.append("hard link %s: link count %d" % (l, stat(l)["links"]))
print("\n".join(bad) if bad else "same: %d entries, %d hard links" % (len(want), len(links)))
sys.exit(1 if bad else 0)
"#;

/// The rootfs tarball: GNU tar's archive of a tree, with Python's
/// appended entries, gzip-compressed.
fn rootfs_tarball(dir: &Path) -> PathBuf {
    let tree = dir.join("rootfs");
    let long = "d".repeat(120);
    let o = sh(&format!(
        r#"mkdir -p {tree} && cd {tree}
        mkdir -p etc usr/bin usr/lib usr/share/boot-scripts usr/share/{long} var/lib boot/extlinux .cache
        printf 'root:x:0:0:root:/root:/bin/bash\nazaion:x:1001:1001::/home/azaion:/bin/bash\n' > etc/passwd
        printf 'root:x:0:\nshadow:x:42:\nazaion:x:1001:\n' > etc/group
        echo jetson > etc/hostname
        printf '# <file system> <mount point>\n/dev/root / ext4 defaults 0 1\n' > etc/fstab
        printf '#!/bin/sh\n' > usr/bin/sudo && chmod 4755 usr/bin/sudo
        ln -s ping usr/bin/ping6
        ln -s ../../{long_target} usr/bin/far
        head -c 10000 /dev/urandom > usr/lib/libx.so.1 && ln usr/lib/libx.so.1 usr/lib/libx-hard.so.1
        ln usr/lib/libx.so.1 usr/lib/libx-third.so.1
        mkfifo var/lib/fifo
        truncate -s 3M var/lib/sparse && printf 'data' | dd of=var/lib/sparse bs=1 seek=2000000 conv=notrunc 2>/dev/null
        printf 'tail' | dd of=var/lib/sparse bs=1 seek=3145700 conv=notrunc 2>/dev/null
        head -c 9000 /dev/zero > var/lib/zeros && printf x >> var/lib/zeros
        : > var/lib/empty
        echo deep > usr/share/{long}/file-with-a-long-name-{long}
        echo kernel > boot/Image && echo conf > boot/extlinux/extlinux.conf
        echo no > usr/share/boot-scripts/boot && echo yes > usr/share/boot-scripts/bootx
        echo hidden > .cache/x && echo hidden > .hidden
        setfattr -n user.origin -v azaion usr/bin/sudo
        setfattr -n trusted.t -v 1 etc/hostname 2>/dev/null || true
        chmod 0700 var/lib
        touch -d @1690000000 etc/hostname
        tar --xattrs --sparse --numeric-owner --owner=0 --group=0 -cf ../rootfs.tar .
        "#,
        tree = tree.display(),
        long_target = "x".repeat(70),
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let tar = dir.join("rootfs.tar");
    ok(Command::new("python3").args(["-c", APPEND_PY]).arg(&tar));
    // GNU tar reads the whole archive back: the appended entries too.
    let listing = ok(Command::new("tar").arg("-tvf").arg(&tar));
    assert!(
        listing.contains("./dev/bigblk") && listing.contains("var/lib/sparse"),
        "{listing}"
    );
    let o = sh(&format!("gzip -n {}", tar.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join("rootfs.tar.gz")
}

fn build(dir: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let pw = write_password(dir, PASSWORD);
    let ekb = dir.join("ekb.txt");
    fs::write(&ekb, format!("{EKB}\n")).unwrap();
    let boot = dir.join("l4t-bootpart-uuid.txt");
    fs::write(&boot, format!("{BOOT_UUID}\n")).unwrap();
    run(provision_offline(input, output, "azaion", &pw)
        .args(["--luks-encrypt", "--luks-uuid", UUID, "--ecid", ECID])
        .arg("--l4t-ekb-key")
        .arg(&ekb)
        .arg("--luks-boot-partuuid-file")
        .arg(&boot)
        .args(extra))
}

/// Opens the sparse container `out` as cryptsetup would with the derived
/// passphrase and decrypts its filesystem with Python into `dir/inner.img`.
fn decrypted(dir: &Path, out: &Path) -> PathBuf {
    let raw = dir.join("container.img");
    let o = sh(&format!("simg2img {} {}", out.display(), raw.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::metadata(&raw).unwrap().len(),
        SIZE,
        "the partition's size"
    );
    let pass = dir.join("derived.pass");
    fs::write(
        &pass,
        ok(Command::new("python3").args(["-c", L4T_PY, EKB, ECID, UUID])),
    )
    .unwrap();
    ok(Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&pass)
        .arg(&raw));
    let vk = dir.join("vk.bin");
    ok(Command::new("cryptsetup")
        .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
        .arg(&vk)
        .arg("--key-file")
        .arg(&pass)
        .arg(&raw));
    let (offset, sector) = segment(&raw);
    assert_eq!((offset, sector), (16 << 20, 512));
    let inner = dir.join("inner.img");
    ok(Command::new("python3")
        .args(["-c", XTS_PY, "dec"])
        .arg(&raw)
        .arg(&vk)
        .args([
            offset.to_string(),
            (SIZE - offset).to_string(),
            sector.to_string(),
        ])
        .arg("0")
        .arg(&inner));
    inner
}

#[test]
fn a_rootfs_tarball_becomes_the_container_flash_sh_would_build() {
    tools_ok();
    require_tools(&["simg2img", "setfattr", "mkfifo", "gzip"]);
    let dir = tempfile::tempdir().unwrap();
    let tarball = rootfs_tarball(dir.path());
    let before = sha256(&tarball);
    let out = dir.path().join("system_root_encrypted.img");
    let o = build(dir.path(), &tarball, &out, &["--luks-size", "64M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&tarball), before, "the input is never modified");
    // The sparse form flash.sh -r flashes, about the size of the data.
    let head = fs::read(&out).unwrap();
    assert_eq!(&head[..4], &[0x3a, 0xff, 0x26, 0xed]);
    assert!(head.len() < 12 << 20, "{} bytes", head.len());
    // No scratch file is left beside the output.
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("scratch") || n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let inner = decrypted(dir.path(), &out);
    assert_fsck_clean(&inner);
    let cmp = run(Command::new("python3")
        .args(["-c", COMPARE_PY])
        .arg(&tarball)
        .arg(&inner)
        .arg(BOOT_UUID));
    assert!(cmp.status.success(), "{}{}", stdout(&cmp), stderr(&cmp));
    assert!(stdout(&cmp).starts_with("same: "), "{}", stdout(&cmp));
    // The stamp is in, as in any image.
    assert_eq!(
        debugfs(&inner, "cat /etc/azaion/device.conf"),
        conf_text(EMAIL, PASSWORD)
    );
    assert_eq!(
        debugfs_stat(&inner, "/etc/azaion/device.conf"),
        (0o600, 1001, 1001)
    );
    // What flash.sh's copy leaves out is not there.
    let root = debugfs_names(&inner, "/");
    assert!(
        !root
            .iter()
            .any(|n| n == "boot" || n.starts_with('.') && n.len() > 2),
        "{root:?}"
    );
    // The sparse member kept its holes: 3 MiB long, two blocks of data.
    let blocks = debugfs(&inner, "stat /var/lib/sparse");
    assert!(blocks.contains("Size: 3145728"), "{blocks}");
    assert!(
        debugfs(&inner, "blocks /var/lib/sparse")
            .split_whitespace()
            .count()
            <= 3,
        "{}",
        debugfs(&inner, "blocks /var/lib/sparse")
    );
    // imprint verifies its own output with the key.
    let o = run(bin()
        .args(["verify", "--serial", SERIAL, "--owner", "azaion"])
        .arg(&out)
        .arg("--l4t-ekb-key")
        .arg(dir.path().join("ekb.txt"))
        .args(["--ecid", ECID]));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn a_tarball_without_size_or_boot_uuid_is_refused_saying_what_to_pass() {
    tools_ok();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("t/etc")).unwrap();
    fs::write(dir.path().join("t/etc/hostname"), "x\n").unwrap();
    let tar = dir.path().join("rootfs.tar");
    let o = sh(&format!(
        "tar -C {} -cf {} .",
        dir.path().join("t").display(),
        tar.display()
    ));
    assert!(o.status.success());
    let out = dir.path().join("enc.img");
    let o = build(dir.path(), &tar, &out, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("rootfs.tar") && stderr(&o).contains("--luks-size"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = build(dir.path(), &tar, &out, &["--luks-size", "8M"]);
    assert!(
        !o.status.success() && stderr(&o).contains("at least"),
        "{}",
        stderr(&o)
    );
    let pw = write_password(dir.path(), PASSWORD);
    let o = run(provision_offline(&tar, &out, "azaion", &pw).args([
        "--luks-encrypt",
        "--luks-uuid",
        UUID,
        "--l4t-generic",
        "--luks-size",
        "64M",
    ]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--luks-boot-partuuid-file"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    // A hard link to a file flash.sh's copy leaves out (under boot/), and
    // an archive larger than the size given: each named, with what to do.
    let o = sh(&format!(
        "cd {d}/t && mkdir -p boot usr && echo k > boot/x && ln boot/x usr/y && tar -cf ../hl.tar . && rm usr/y && head -c 6000000 /dev/urandom > usr/big && tar -cf ../big.tar .",
        d = dir.path().display()
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = build(
        dir.path(),
        &dir.path().join("hl.tar"),
        &out,
        &["--luks-size", "64M"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(
            "hl.tar: cannot put /usr/y into the new filesystem: it is a hard link to /boot/x"
        ) && err.contains("give the file its own data")
            && !err.contains("inconsistent"),
        "{err}"
    );
    let o = build(
        dir.path(),
        &dir.path().join("big.tar"),
        &out,
        &["--luks-size", "21M"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("big.tar: ") && err.contains("larger --luks-size"),
        "{err}"
    );
    assert!(!out.exists());
    // One device's A/B slots from tarballs: their fstabs (crypt_root_other,
    // each slot's /boot) are not written, so the run is refused.
    let ab = dir.path().join("ab");
    let o = run(bin()
        .args([
            "provision",
            "--offline",
            "--owner",
            "root",
            "--serial",
            SERIAL,
        ])
        .arg("--password-file")
        .arg(&pw)
        .arg("--image")
        .arg(&tar)
        .args(["--luks-uuid", UUID, "--image"])
        .arg(dir.path().join("hl.tar"))
        .args(["--luks-uuid", BOOT_UUID, "--luks-encrypt", "--l4t-generic"])
        .args(["--luks-size", "64M", "--luks-boot-partuuid", BOOT_UUID])
        .arg("--output")
        .arg(format!("{}/", ab.display())));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("one slot's container"),
        "{}",
        stderr(&o)
    );
    let left = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("scratch"));
    assert!(!left, "a scratch file was left");
}
