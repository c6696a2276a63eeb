//! LUKS1 and LUKS2 containers, with cryptsetup as the oracle (no
//! device-mapper: `cryptsetup reencrypt --encrypt` encrypts a plain ext4
//! offline in userspace, `luksFormat` writes headers onto files) and
//! Python's `cryptography` AES-XTS as the independent decryptor: what
//! imprint writes inside is read back without imprint.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::fixtures;

const PASSPHRASE: &[u8] = b"correct horse battery staple";

/// Decrypts (or with `encrypt`, encrypts) `len` bytes at `offset` of
/// `src` with aes-xts-plain64 (IV: the offset in 512-byte units plus
/// `tweak`) into `out`, with Python's `cryptography`.
pub(crate) const XTS_PY: &str = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
mode, src, keyf, off, length, sec, tweak, out = sys.argv[1:]
off, length, sec, tweak = int(off), int(length), int(sec), int(tweak)
key = open(keyf, 'rb').read()
data = open(src, 'rb').read()[off:off + length]
res = bytearray()
for i in range(0, len(data), sec):
    iv = ((tweak + i // 512) % 2**64).to_bytes(16, 'little')
    c = Cipher(algorithms.AES(key), modes.XTS(iv))
    c = c.decryptor() if mode == 'dec' else c.encryptor()
    res += c.update(data[i:i + sec]) + c.finalize()
open(out, 'wb').write(res)
"#;

/// Rewrites the JSON of both LUKS2 header copies (`old` -> `new`, every
/// occurrence) and their checksums, as a header written that way would be.
const REWRITE_PY: &str = r#"
import sys, hashlib, struct
path, old, new = sys.argv[1:]
f = open(path, 'r+b')
hdr = f.read(4096)
size = struct.unpack('>Q', hdr[8:16])[0]
for at in (0, size):
    f.seek(at); h = bytearray(f.read(size))
    js = bytes(h[4096:]).rstrip(b'\0').replace(old.encode(), new.encode())
    h[4096:] = js + b'\0' * (size - 4096 - len(js))
    h[448:512] = b'\0' * 64
    h[448:480] = hashlib.sha256(bytes(h)).digest()
    f.seek(at); f.write(h)
"#;

/// cryptsetup, e2fsprogs and Python's `cryptography`: a missing one fails
/// the test (tests/it/require.rs).
pub(crate) fn tools_ok() -> bool {
    require_tools(&["cryptsetup", "mke2fs", "e2fsck", "debugfs", "python3"]);
    let py = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    require_installed(
        py,
        "python3 cryptography",
        "apt-get install python3-cryptography",
    );
    true
}

pub(crate) fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?}: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// The segment of a container as luksDump tells it: (offset, sector size).
pub(crate) fn segment(img: &Path) -> (u64, u64) {
    let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(img));
    if let Some(off) = dump.lines().find_map(|l| l.strip_prefix("Payload offset:")) {
        return (off.trim().parse::<u64>().unwrap() * 512, 512);
    }
    let seg = &dump[dump.find("Data segments:").unwrap()..];
    let field = |key: &str| -> u64 {
        let line = seg
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap();
        let v = line.split(':').nth(1).unwrap().trim();
        v.split_whitespace().next().unwrap().parse().unwrap()
    };
    (field("offset:"), field("sector:"))
}

struct Fixture {
    dir: tempfile::TempDir,
    /// The plain ext4 that was encrypted.
    plain: PathBuf,
    /// The container.
    img: PathBuf,
    pass: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The volume key (raw), as cryptsetup dumps it.
    fn volume_key(&self, img: &Path) -> PathBuf {
        let out = self.path("vk.bin");
        let _ = fs::remove_file(&out);
        ok(Command::new("cryptsetup")
            .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
            .arg(&out)
            .arg("--key-file")
            .arg(&self.pass)
            .arg(img));
        out
    }

    /// The ext4 inside `img`, decrypted by Python into `name`.
    fn decrypt(&self, img: &Path, name: &str) -> PathBuf {
        let (offset, sector) = segment(img);
        let out = self.path(name);
        let len = fs::metadata(&self.plain).unwrap().len();
        ok(Command::new("python3")
            .args(["-c", XTS_PY, "dec"])
            .arg(img)
            .arg(self.volume_key(img))
            .args([
                offset.to_string(),
                len.to_string(),
                sector.to_string(),
                "0".into(),
            ])
            .arg(&out));
        out
    }
}

/// A small ext4 (8 MiB) encrypted into a LUKS2 container by cryptsetup
/// itself, `extra` its format options.
fn luks2(sector: u32, extra: &[&str]) -> Fixture {
    // Built once per test binary for each set of options (several tests
    // start from the same container), copied for each test.
    let key = format!("luks2-{sector}-{}", extra.join("_"));
    let (built, ()) = fixtures::shared(&key, |dir| {
        let tree = ext4_tree(dir, 0, Azaion::Absent);
        let plain = dir.join("plain.img");
        let o = mkfs(&tree, &plain, &["-t", "ext4", "-b", "4096"], "8M");
        assert!(o.status.success(), "mke2fs: {}", stderr(&o));
        let img = dir.join("rootfs.luks");
        let pass = dir.join("pass");
        fs::write(&pass, PASSPHRASE).unwrap();
        let mut data = fs::read(&plain).unwrap();
        data.resize(data.len() + (4 << 20), 0);
        fs::write(&img, data).unwrap();
        ok(Command::new("cryptsetup")
            .args(["reencrypt", "--encrypt", "--type", "luks2", "-q"])
            .args(["--reduce-device-size", "4M", "--sector-size"])
            .arg(sector.to_string())
            .args(extra)
            .arg("--key-file")
            .arg(&pass)
            .arg(&img));
    });
    let dir = tempfile::tempdir().unwrap();
    let [plain, img, pass] = ["plain.img", "rootfs.luks", "pass"].map(|name| {
        let to = dir.path().join(name);
        fixtures::copy(&built, name, &to);
        to
    });
    Fixture {
        dir,
        plain,
        img,
        pass,
    }
}

fn pbkdf2_fast() -> [&'static str; 4] {
    ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
}

/// Stamps `input` into `output` with the LUKS flag `flag FILE`.
fn stamp(f: &Fixture, input: &Path, output: &Path, flag: &str, key: &Path) -> std::process::Output {
    let pw = write_password(f.dir.path(), PASSWORD);
    run(provision_offline(input, output, "root:root", &pw)
        .arg(flag)
        .arg(key))
}

/// Everything a stamped container must be: cryptsetup reads its header and
/// opens its keyslot; decrypted without imprint, the ext4 inside is clean
/// with device.conf 0600 root:root; only sectors of changed blocks differ
/// from the input, in the ciphertext as in the plaintext.
fn check_stamped(f: &Fixture, input: &Path, output: &Path) {
    ok(Command::new("cryptsetup").arg("luksDump").arg(output));
    ok(Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&f.pass)
        .arg(output));
    let before = f.decrypt(input, "before.img");
    let after = f.decrypt(output, "after.img");
    assert_fsck_clean(&after);
    assert_eq!(
        debugfs(&after, "cat /etc/azaion/device.conf"),
        conf_text(EMAIL, PASSWORD)
    );
    assert_eq!(
        debugfs_stat(&after, "/etc/azaion/device.conf"),
        (0o600, 0, 0)
    );
    let (offset, sector) = segment(input);
    let (a, b) = (fs::read(input).unwrap(), fs::read(output).unwrap());
    let (pa, pb) = (fs::read(&before).unwrap(), fs::read(&after).unwrap());
    assert_eq!(a.len(), b.len());
    assert_eq!(
        a[..offset as usize],
        b[..offset as usize],
        "headers and keyslots kept"
    );
    let s = sector as usize;
    let mut changed = 0;
    for i in 0..(a.len() - offset as usize) / s {
        let c = offset as usize + i * s;
        let cipher_differs = a[c..c + s] != b[c..c + s];
        let plain_differs = pa.get(i * s..(i + 1) * s) != pb.get(i * s..(i + 1) * s);
        assert_eq!(cipher_differs, plain_differs, "sector {i}");
        changed += usize::from(cipher_differs);
    }
    assert!(
        changed > 0 && changed * s < 1 << 20,
        "{changed} sectors changed"
    );
}

#[test]
fn luks2_pbkdf2_512_byte_sectors_stamped_and_read_back() {
    if !tools_ok() {
        return;
    }
    let f = luks2(512, &pbkdf2_fast());
    let kind = ok(bin()
        .args(["ls", "--json"])
        .arg(&f.img)
        .arg("--luks-passphrase-file")
        .arg(&f.pass));
    assert!(kind.contains("\"/etc\""), "{kind}");
    let out = f.path("out.luks");
    let o = stamp(&f, &f.img, &out, "--luks-passphrase-file", &f.pass);
    assert!(o.status.success(), "{}", stderr(&o));
    check_stamped(&f, &f.img, &out);
    // The dry run reads through it too, and writes nothing.
    let pw = write_password(f.dir.path(), PASSWORD);
    let dry = f.path("dry.luks");
    let o = run(provision_offline(&f.img, &dry, "root:root", &pw)
        .args(["--dry-run", "--luks-passphrase-file"])
        .arg(&f.pass));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("/etc/azaion/device.conf"),
        "{}",
        stdout(&o)
    );
    assert!(!dry.exists());
    // verify, ls and cat read through the container, with either key.
    let o = run(bin()
        .args(["verify", "--serial", SERIAL])
        .arg(&out)
        .arg("--luks-passphrase-file")
        .arg(&f.pass));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let vk = f.volume_key(&out);
    let conf = ok(bin()
        .arg("cat")
        .arg(&out)
        .arg("/etc/azaion/device.conf")
        .arg("--luks-volume-key-file")
        .arg(&vk));
    assert_eq!(conf, conf_text(EMAIL, PASSWORD));
    // No secret reached the output of any of them.
    for text in [stdout(&o), stderr(&o)] {
        assert!(!text.contains(std::str::from_utf8(PASSPHRASE).unwrap()));
    }
}

#[test]
fn luks2_argon2id_4096_byte_sectors_stamped_with_the_volume_key() {
    if !tools_ok() {
        return;
    }
    let f = luks2(
        4096,
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "1024",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
        ],
    );
    let out = f.path("out.luks");
    // Argon2id through the passphrase, then the volume key for the stamp.
    let o = run(bin()
        .arg("ls")
        .arg(&f.img)
        .arg("/etc")
        .arg("--luks-passphrase-file")
        .arg(&f.pass));
    assert!(o.status.success(), "{}", stderr(&o));
    let vk = f.volume_key(&f.img);
    let o = stamp(&f, &f.img, &out, "--luks-volume-key-file", &vk);
    assert!(o.status.success(), "{}", stderr(&o));
    check_stamped(&f, &f.img, &out);
}

#[test]
fn luks1_sha1_payload_encrypted_independently() {
    if !tools_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = ext4_tree(dir.path(), 0, Azaion::Absent);
    let plain = dir.path().join("plain.img");
    let o = mkfs(&tree, &plain, &["-t", "ext4", "-b", "4096"], "8M");
    assert!(o.status.success());
    let img = dir.path().join("rootfs.luks1");
    let pass = dir.path().join("pass");
    fs::write(&pass, PASSPHRASE).unwrap();
    let plain_len = fs::metadata(&plain).unwrap().len();
    fs::write(&img, vec![0u8; (plain_len + (2 << 20)) as usize]).unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks1", "-q", "--hash", "sha1"])
        .args(["--pbkdf-force-iterations", "1000", "--key-size", "256"])
        .arg("--key-file")
        .arg(&pass)
        .arg(&img));
    let f = Fixture {
        dir,
        plain,
        img,
        pass,
    };
    // The payload: the plain ext4, encrypted by Python, at the offset.
    let (offset, _) = segment(&f.img);
    let enc = f.path("enc.bin");
    ok(Command::new("python3")
        .args(["-c", XTS_PY, "enc"])
        .arg(&f.plain)
        .arg(f.volume_key(&f.img))
        .args([
            "0".to_string(),
            plain_len.to_string(),
            "512".into(),
            "0".into(),
        ])
        .arg(&enc));
    let mut bytes = fs::read(&f.img).unwrap();
    bytes.truncate(offset as usize);
    bytes.extend(fs::read(&enc).unwrap());
    fs::write(&f.img, bytes).unwrap();
    let kind = ok(bin()
        .arg("ls")
        .arg(&f.img)
        .arg("/")
        .arg("--luks-passphrase-file")
        .arg(&f.pass));
    assert!(kind.contains("etc"), "{kind}");
    let out = f.path("out.luks1");
    let o = stamp(&f, &f.img, &out, "--luks-passphrase-file", &f.pass);
    assert!(o.status.success(), "{}", stderr(&o));
    check_stamped(&f, &f.img, &out);
}

#[test]
fn without_a_key_or_with_a_wrong_one_the_error_says_what_to_pass() {
    if !tools_ok() {
        return;
    }
    let f = luks2(512, &pbkdf2_fast());
    let uuid = ok(Command::new("cryptsetup").arg("luksUUID").arg(&f.img));
    let before = sha256(&f.img);
    let pw = write_password(f.dir.path(), PASSWORD);
    let out = f.path("out.luks");
    let o = run(&mut provision_offline(&f.img, &out, "root:root", &pw));
    assert!(!o.status.success());
    let expect = format!(
        "{}: LUKS2 container (aes-xts-plain64, UUID {}): pass --luks-passphrase-file FILE, or --luks-volume-key-file FILE, or (L4T) --l4t-ekb-key FILE with --ecid ECID or --l4t-generic",
        f.img.display(),
        uuid.trim()
    );
    assert!(stderr(&o).contains(&expect), "{}", stderr(&o));
    let wrong = f.path("wrong");
    fs::write(&wrong, b"not the passphrase").unwrap();
    let o = stamp(&f, &f.img, &out, "--luks-passphrase-file", &wrong);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the passphrase opens none of its 1 keyslots"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("not the passphrase"));
    let o = stamp(&f, &f.img, &out, "--luks-volume-key-file", &wrong);
    assert!(
        stderr(&o).contains("is not this container's"),
        "{}",
        stderr(&o)
    );
    // ls says the same.
    let o = run(bin().arg("ls").arg(&f.img));
    assert!(
        stderr(&o).contains("pass --luks-passphrase-file FILE"),
        "{}",
        stderr(&o)
    );
    assert_eq!(sha256(&f.img), before, "input untouched");
    assert!(!out.exists(), "no output under the final name");
}

#[test]
fn a_damaged_primary_header_is_read_from_its_secondary_copy() {
    if !tools_ok() {
        return;
    }
    let f = luks2(512, &pbkdf2_fast());
    let damaged = f.path("damaged.luks");
    let mut bytes = fs::read(&f.img).unwrap();
    bytes[4096 + 10] ^= 0xff; // inside the primary's JSON: its checksum fails
    fs::write(&damaged, &bytes).unwrap();
    let o = run(bin()
        .args(["-v", "ls"])
        .arg(&damaged)
        .arg("/etc")
        .arg("--luks-passphrase-file")
        .arg(&f.pass));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("secondary copy"), "{}", stderr(&o));
    // Both copies damaged: said plainly.
    bytes[16384 + 4096 + 10] ^= 0xff;
    fs::write(&damaged, &bytes).unwrap();
    let o = run(bin()
        .arg("ls")
        .arg(&damaged)
        .arg("--luks-passphrase-file")
        .arg(&f.pass));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("both LUKS2 header copies are damaged"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unknown_cipher_is_refused_by_name() {
    if !tools_ok() {
        return;
    }
    let f = luks2(512, &pbkdf2_fast());
    ok(Command::new("python3")
        .args(["-c", REWRITE_PY])
        .arg(&f.img)
        .args([
            "\"encryption\":\"aes-xts-plain64\",\"sector_size\"",
            "\"encryption\":\"serpent-xts-plain64\",\"sector_size\"",
        ]));
    let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(&f.img));
    assert!(dump.contains("serpent-xts-plain64"), "{dump}");
    let o = run(bin()
        .arg("ls")
        .arg(&f.img)
        .arg("--luks-passphrase-file")
        .arg(&f.pass));
    assert!(!o.status.success());
    assert!(
        stderr(&o)
            .contains("its cipher is serpent-xts-plain64; imprint decrypts only aes-xts-plain64"),
        "{}",
        stderr(&o)
    );
}

/// The container found where other layers are: inside an Android sparse
/// image, as the GPT partition APP_ENC of a disk image (L4T's name), and
/// under zstd; each output, brought back to the bare container, checks as
/// a stamped one.
#[test]
fn a_container_nests_in_sparse_disk_and_compressed_images() {
    tools_ok();
    require_tools(&["img2simg", "simg2img", "sgdisk", "zstd"]);
    let f = luks2(512, &pbkdf2_fast());
    let p = |n: &str| f.path(n);
    // Sparse.
    ok(Command::new("img2simg").arg(&f.img).arg(p("in.simg")));
    let o = stamp(
        &f,
        &p("in.simg"),
        &p("out.simg"),
        "--luks-passphrase-file",
        &f.pass,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    ok(Command::new("simg2img")
        .arg(p("out.simg"))
        .arg(p("out-simg.raw")));
    check_stamped(&f, &f.img, &p("out-simg.raw"));
    // A GPT partition named APP_ENC, 1 MiB in.
    let len = fs::metadata(&f.img).unwrap().len();
    let mut disk = vec![0u8; (len + (2 << 20)) as usize];
    disk[1 << 20..(1 << 20) + len as usize].copy_from_slice(&fs::read(&f.img).unwrap());
    fs::write(p("disk.img"), disk).unwrap();
    ok(Command::new("sgdisk")
        .args(["-n", &format!("1:2048:+{}K", len / 1024), "-c", "1:APP_ENC"])
        .arg(p("disk.img")));
    let o = run(provision_offline(
        &p("disk.img"),
        &p("out-disk.img"),
        "root:root",
        &write_password(f.dir.path(), PASSWORD),
    )
    .args(["--partition", "APP_ENC", "--luks-passphrase-file"])
    .arg(&f.pass));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = fs::read(p("out-disk.img")).unwrap();
    fs::write(p("out-part.raw"), &out[1 << 20..(1 << 20) + len as usize]).unwrap();
    check_stamped(&f, &f.img, &p("out-part.raw"));
    // zstd.
    ok(Command::new("zstd")
        .args(["-q", "-f"])
        .arg(&f.img)
        .arg("-o")
        .arg(p("in.luks.zst")));
    let o = stamp(
        &f,
        &p("in.luks.zst"),
        &p("out.luks.zst"),
        "--luks-passphrase-file",
        &f.pass,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    ok(Command::new("zstd")
        .args(["-q", "-d", "-f"])
        .arg(p("out.luks.zst"))
        .arg("-o")
        .arg(p("out-zst.raw")));
    check_stamped(&f, &f.img, &p("out-zst.raw"));
}

/// L4T's passphrase (NIST SP 800-108 counter-mode KDF with AES-CMAC, as
/// NVIDIA's gen_luks_passphrase.py), written independently with Python's
/// `cryptography`: `ekb_hex ecid|- uuid` -> the passphrase.
pub(crate) const L4T_PY: &str = r#"
import sys
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
ekb, ecid, uuid = sys.argv[1:]
def kdf(key, context, label):
    c = cmac.CMAC(algorithms.AES(key))
    c.update(b"\x01" + label.encode() + b"\x00" + context.encode() + (128).to_bytes(4, "big"))
    return c.finalize()
key = bytes.fromhex(ekb)
if ecid == "-":
    k = kdf(key, "generic-key", "luks-srv-generic"); label = "luks-srv-passphrase-generic"
else:
    e = int(ecid, 16) & ((1 << 100) - 1)
    k = kdf(key, "%032x" % e, "luks-srv-ecid"); label = "luks-srv-passphrase-unique"
sys.stdout.write(kdf(k, uuid, label).hex())
"#;

/// A container made as flash.sh makes APP_ENC (`--uuid`, the derived
/// passphrase) opens with the EKB key file and the ECID, or generic.
#[test]
fn l4t_passphrases_from_the_ekb_key_and_ecid() {
    tools_ok();
    const UUID: &str = "5a6b7c8d-0000-4000-8000-123456789abc";
    const EKB: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f";
    const ECID: &str = "0x0123456789abcdef0123456789abcdef";
    for ecid in [Some(ECID), None] {
        let derived =
            ok(Command::new("python3").args(["-c", L4T_PY, EKB, ecid.unwrap_or("-"), UUID]));
        assert_eq!(derived.len(), 32);
        let f = luks2(512, &[&pbkdf2_fast()[..], &["--uuid", UUID]].concat());
        fs::write(f.path("old"), PASSPHRASE).unwrap();
        fs::write(&f.pass, &derived).unwrap();
        ok(Command::new("cryptsetup")
            .args([
                "luksChangeKey",
                "-q",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
            ])
            .arg(f.path("old"))
            .arg(&f.img)
            .arg(&f.pass));
        let ekb = f.path("ekb.txt");
        fs::write(&ekb, format!("0x{EKB}\n")).unwrap();
        let mut ls = bin();
        ls.arg("ls")
            .arg(&f.img)
            .arg("/etc")
            .arg("--l4t-ekb-key")
            .arg(&ekb);
        match ecid {
            Some(e) => ls.args(["--ecid", e]),
            None => ls.arg("--l4t-generic"),
        };
        let o = run(&mut ls);
        assert!(o.status.success(), "{ecid:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("passwd"), "{}", stdout(&o));
        // Another chip's ECID is a wrong passphrase.
        let o = run(bin()
            .arg("ls")
            .arg(&f.img)
            .arg("--l4t-ekb-key")
            .arg(&ekb)
            .args(["--ecid", "0x1"]));
        assert!(stderr(&o).contains("opens none of its"), "{}", stderr(&o));
    }
}
