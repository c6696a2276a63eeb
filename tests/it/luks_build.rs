//! `provision --luks-encrypt`: a new LUKS2 container per device, built
//! from a plain ext4 (raw or Android sparse) as L4T's flash.sh builds
//! system_root_encrypted.img. Judged without imprint: cryptsetup reads the
//! header and opens the keyslot with the passphrase Python derives on its
//! own (the L4T KDF), dumps the volume key, Python AES-XTS decrypts the
//! payload, and e2fsck and debugfs read the ext4 inside.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use crate::luks::{ok, segment, tools_ok, L4T_PY, XTS_PY};

const UUID: &str = "2f8e0c1a-5b4d-4e6f-9a7b-3c2d1e0f9a8b";
const EKB: &str = "00112233445566778899aabbccddeeff";
const ECID: &str = "0x0123456789abcdef0123456789abcdef";

struct Setup {
    dir: tempfile::TempDir,
    plain: PathBuf,
    ekb: PathBuf,
    uuid_file: PathBuf,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A 24 MiB ext4 with little in it (blocks of `block` bytes: 1024 gives
/// three groups, two of them BLOCK_UNINIT), the EKB key file and
/// flash.sh's UUID file (bootloader/l4t-rootfs-uuid.txt_enc).
fn setup(block: &str) -> Setup {
    tools_ok();
    let dir = tempfile::tempdir().unwrap();
    let tree = ext4_tree(dir.path(), 3, Azaion::Absent);
    let plain = dir.path().join("plain.img");
    let o = mkfs(&tree, &plain, &["-t", "ext4", "-b", block], "24M");
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    let ekb = dir.path().join("ekb.txt");
    fs::write(&ekb, format!("{EKB}\n")).unwrap();
    let uuid_file = dir.path().join("l4t-rootfs-uuid.txt_enc");
    fs::write(&uuid_file, format!("{UUID}\n")).unwrap();
    Setup {
        dir,
        plain,
        ekb,
        uuid_file,
    }
}

/// `imprint provision --luks-encrypt` of `input` into `output`.
fn build(s: &Setup, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let pw = write_password(s.dir.path(), PASSWORD);
    run(provision_offline(input, output, "azaion", &pw)
        .args(["--luks-encrypt", "--luks-uuid-file"])
        .arg(&s.uuid_file)
        .arg("--l4t-ekb-key")
        .arg(&s.ekb)
        .args(["--ecid", ECID])
        .args(extra))
}

/// The passphrase flash.sh would pipe to cryptsetup, derived by Python.
fn derived_passphrase(s: &Setup) -> PathBuf {
    let pass = ok(Command::new("python3").args(["-c", L4T_PY, EKB, ECID, UUID]));
    let file = s.path("derived.pass");
    fs::write(&file, pass).unwrap();
    file
}

/// What a built container must be: cryptsetup reads it and opens it with
/// the derived passphrase; decrypted by Python, the ext4 is clean and
/// holds device.conf 0600 azaion; free blocks are holes.
fn check_built(s: &Setup, raw: &Path, sector: u64) {
    let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(raw));
    assert!(dump.contains(&format!("UUID:          \t{UUID}")), "{dump}");
    assert!(
        dump.contains("pbkdf2") && dump.contains("aes-xts-plain64"),
        "{dump}"
    );
    let pass = derived_passphrase(s);
    ok(Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&pass)
        .arg(raw));
    let vk = s.path("vk.bin");
    let _ = fs::remove_file(&vk);
    ok(Command::new("cryptsetup")
        .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
        .arg(&vk)
        .arg("--key-file")
        .arg(&pass)
        .arg(raw));
    assert_eq!(
        fs::metadata(&vk).unwrap().len(),
        32,
        "-s 256: two AES-128 keys"
    );
    let (offset, seg_sector) = segment(raw);
    assert_eq!((offset, seg_sector), (16 << 20, sector));
    let len = fs::metadata(&s.plain).unwrap().len();
    assert_eq!(fs::metadata(raw).unwrap().len(), offset + len);
    let inner = s.path("decrypted.img");
    ok(Command::new("python3")
        .args(["-c", XTS_PY, "dec"])
        .arg(raw)
        .arg(&vk)
        .args([offset.to_string(), len.to_string(), sector.to_string()])
        .arg("0")
        .arg(&inner));
    assert_fsck_clean(&inner);
    assert_eq!(
        debugfs(&inner, "cat /etc/azaion/device.conf"),
        conf_text(EMAIL, PASSWORD)
    );
    assert_eq!(
        debugfs_stat(&inner, "/etc/azaion/device.conf"),
        (0o600, 1001, 1001)
    );
    assert_eq!(debugfs(&inner, "cat /etc/hostname"), "jetson\n");
}

#[test]
fn an_l4t_container_is_built_per_device_from_raw_ext4_512_and_4096_byte_sectors() {
    let s = setup("4096");
    let before = sha256(&s.plain);
    for sector in [512u64, 4096] {
        let out = s.path(&format!("system_root_encrypted-{sector}.img"));
        let o = build(
            &s,
            &s.plain,
            &out,
            &["--luks-sector-size", &sector.to_string()],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        check_built(&s, &out, sector);
        // Free space stays holes: far less allocated than the image (the
        // journal is used blocks, encrypted as flash.sh's mkfs writes it).
        let meta = fs::metadata(&out).unwrap();
        assert!(
            meta.blocks() * 512 < meta.len() / 4,
            "{} bytes allocated",
            meta.blocks() * 512
        );
        assert_eq!(meta.mode() & 0o777, 0o600);
        let sidecar = fs::read_to_string(format!("{}.sha256", out.display())).unwrap();
        assert!(sidecar.starts_with(&sha256(&out)), "{sidecar}");
    }
    assert_eq!(sha256(&s.plain), before, "the input is never modified");
    // A new random volume key and salts every time: two builds differ.
    let again = s.path("again.img");
    assert!(build(&s, &s.plain, &again, &[]).status.success());
    assert_ne!(
        sha256(&again),
        sha256(&s.path("system_root_encrypted-512.img"))
    );
}

/// One device's two encrypted rootfs slots (ROOTFS_AB=1: APP_ENC and
/// APP_ENC_b) in one call: each --image gets the --luks-uuid-file given in
/// the same place, and its keyslot the passphrase derived with that UUID
/// as context (as flash.sh builds system_root_encrypted.img_b with
/// rootfsuuid_b_enc), so each opens with its own slot's passphrase only.
#[test]
fn one_devices_slots_get_a_container_uuid_each() {
    const UUID_B: &str = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let s = setup("4096");
    let slot_b = s.path("plain_b.img");
    fs::copy(&s.plain, &slot_b).unwrap();
    let uuid_b = s.path("l4t-rootfs-uuid.txt_b_enc");
    fs::write(&uuid_b, format!("{UUID_B}\n")).unwrap();
    let pw = write_password(s.dir.path(), PASSWORD);
    let out = s.path("out");
    let mut c = bin();
    c.args([
        "provision",
        "--offline",
        "--owner",
        "azaion",
        "--serial",
        SERIAL,
    ])
    .arg("--password-file")
    .arg(&pw)
    .arg("--image")
    .arg(&s.plain)
    .arg("--luks-uuid-file")
    .arg(&s.uuid_file)
    .arg("--image")
    .arg(&slot_b)
    .arg("--luks-uuid-file")
    .arg(&uuid_b)
    .arg("--output")
    .arg(format!("{}/", out.display()))
    .args(["--luks-encrypt", "--ecid", ECID])
    .arg("--l4t-ekb-key")
    .arg(&s.ekb);
    let o = run(&mut c);
    assert!(o.status.success(), "{}", stderr(&o));
    check_built(&s, &out.join(format!("{SERIAL}-plain.img")), 512);
    let b = out.join(format!("{SERIAL}-plain_b.img"));
    let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(&b));
    assert!(
        dump.contains(&format!("UUID:          \t{UUID_B}")),
        "{dump}"
    );
    let pass_b = s.path("b.pass");
    fs::write(
        &pass_b,
        ok(Command::new("python3").args(["-c", L4T_PY, EKB, ECID, UUID_B])),
    )
    .unwrap();
    ok(Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&pass_b)
        .arg(&b));
    let o = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(derived_passphrase(&s))
        .arg(&b)
        .output()
        .unwrap();
    assert!(!o.status.success(), "slot B opens with slot A's passphrase");
}

/// A sparse input gives the sparse output flash.sh -r flashes: small, and
/// simg2img expands it to a container that opens and holds the stamp.
#[test]
fn a_sparse_input_gives_a_small_sparse_container() {
    require_tools(&["img2simg", "simg2img"]);
    let s = setup("1024");
    let groups = ok(Command::new("dumpe2fs").arg(&s.plain));
    assert!(
        groups.contains("Group 2:") && groups.contains("BLOCK_UNINIT"),
        "{groups}"
    );
    let simg = s.path("system.simg");
    let o = sh(&format!(
        "img2simg {} {}",
        s.plain.display(),
        simg.display()
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = sha256(&simg);
    let out = s.path("system_root_encrypted.img");
    let o = build(&s, &simg, &out, &["--checksum", "sha256,sha1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&simg), before);
    let len = fs::metadata(&out).unwrap().len();
    assert!(len < 8 << 20, "sparse output of {len} bytes is small");
    assert!(Path::new(&format!("{}.sha1sum", out.display())).exists());
    let raw = s.path("expanded.img");
    let o = sh(&format!("simg2img {} {}", out.display(), raw.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    check_built(&s, &raw, 512);
    // imprint reads its own output back with the same key.
    let o = run(bin()
        .args(["verify", "--serial", SERIAL, "--owner", "azaion"])
        .arg(&out)
        .arg("--l4t-ekb-key")
        .arg(&s.ekb)
        .args(["--ecid", ECID]));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// No secret reaches stdout, stderr or the JSON report, even at -vv: not
/// the password, the EKB key, the derived passphrase or the volume key.
#[test]
fn secrets_stay_out_of_reports_and_logs() {
    let s = setup("4096");
    let out = s.path("enc.img");
    let o = build(&s, &s.plain, &out, &["--json", "-vv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = format!("{}{}", stdout(&o), stderr(&o));
    let pass = fs::read_to_string(derived_passphrase(&s)).unwrap();
    let vk = s.path("vk.bin");
    ok(Command::new("cryptsetup")
        .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
        .arg(&vk)
        .arg("--key-file")
        .arg(s.path("derived.pass"))
        .arg(&out));
    let vk_hex: String = fs::read(&vk)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for secret in [PASSWORD, EKB, pass.trim(), &vk_hex] {
        assert!(!text.contains(secret), "a secret in the output: {text}");
    }
}

/// Wrong inputs fail with what to do, and leave no output.
#[test]
fn missing_keys_and_wrong_inputs_are_refused_clearly() {
    let s = setup("4096");
    let out = s.path("enc.img");
    let pw = write_password(s.dir.path(), PASSWORD);
    let expect_err = |o: Output, says: &[&str]| {
        assert!(!o.status.success());
        let err = stderr(&o);
        for want in says {
            assert!(err.contains(want), "{want:?} not in: {err}");
        }
        assert!(!out.exists());
    };
    // The EKB key file is missing, or not 32 hex digits.
    let mut c = provision_offline(&s.plain, &out, "azaion", &pw);
    c.args(["--luks-encrypt", "--luks-uuid", UUID, "--ecid", ECID])
        .arg("--l4t-ekb-key")
        .arg(s.path("nope.txt"));
    expect_err(run(&mut c), &["nope.txt", "cannot read the LUKS key file"]);
    fs::write(s.path("bad-ekb"), "not hex\n").unwrap();
    let mut c = provision_offline(&s.plain, &out, "azaion", &pw);
    c.args(["--luks-encrypt", "--luks-uuid", UUID, "--ecid", ECID])
        .arg("--l4t-ekb-key")
        .arg(s.path("bad-ekb"));
    expect_err(run(&mut c), &["bad-ekb", "32 hex digits"]);
    // No passphrase for the keyslot.
    let mut c = provision_offline(&s.plain, &out, "azaion", &pw);
    c.args(["--luks-encrypt", "--luks-uuid", UUID]);
    expect_err(run(&mut c), &["plain.img", "--ecid", "--l4t-generic"]);
    // No UUID, or a file without one.
    let mut c = provision_offline(&s.plain, &out, "azaion", &pw);
    c.args(["--luks-encrypt", "--l4t-generic"]);
    expect_err(
        run(&mut c),
        &["--luks-uuid-file", "l4t-rootfs-uuid.txt_enc"],
    );
    fs::write(s.path("uuid-bad"), "NOT-A-UUID\n").unwrap();
    let mut c = provision_offline(&s.plain, &out, "azaion", &pw);
    c.args(["--luks-encrypt", "--l4t-generic", "--luks-uuid-file"])
        .arg(s.path("uuid-bad"));
    expect_err(run(&mut c), &["uuid-bad", "holds no line that is a UUID"]);
    // A container already, or a tarball: not a plain ext4 image.
    let enc = s.path("first.img");
    assert!(build(&s, &s.plain, &enc, &[]).status.success());
    expect_err(
        build(&s, &enc, &out, &[]),
        &["first.img", "LUKS2 container already"],
    );
    let tar = s.path("rootfs.tar");
    let o = sh(&format!(
        "tar -C {} -cf {} .",
        s.dir.path().join("tree").display(),
        tar.display()
    ));
    assert!(o.status.success());
    expect_err(
        build(&s, &tar, &out, &[]),
        &["rootfs.tar", "plain ext2/3/4 image"],
    );
    // A batch: the passphrase is one chip's.
    let mut c = bin();
    c.args([
        "provision",
        "--offline",
        "--serial",
        SERIAL,
        "--serial",
        "AZJN-0043",
    ])
    .arg("--password-file")
    .arg(&pw)
    .arg("--image")
    .arg(&s.plain)
    .arg("--output")
    .arg(s.path("batch/"))
    .args(["--luks-encrypt", "--luks-uuid", UUID, "--l4t-generic"]);
    expect_err(run(&mut c), &["one device's container"]);
    // One device's two rootfs slots (APP_ENC, APP_ENC_b): a UUID for
    // each, and not the same one twice.
    let copy = s.path("plain_b.img");
    fs::copy(&s.plain, &copy).unwrap();
    let slots = |uuids: &[&str]| {
        let mut c = bin();
        c.args(["provision", "--offline", "--serial", SERIAL])
            .arg("--password-file")
            .arg(&pw)
            .arg("--image")
            .arg(&s.plain)
            .arg("--image")
            .arg(&copy)
            .arg("--output")
            .arg(s.path("slots/"))
            .args(["--luks-encrypt", "--l4t-generic"]);
        for uuid in uuids {
            c.args(["--luks-uuid", uuid]);
        }
        run(&mut c)
    };
    expect_err(
        slots(&[UUID]),
        &[
            "1 container UUIDs for 2 --image inputs",
            "l4t-rootfs-uuid.txt_b_enc",
        ],
    );
    expect_err(slots(&[UUID, UUID]), &[UUID, "twice"]);
    assert!(!s.path("slots").exists());
}

/// Under a codec the container is read from a scratch file; errors name
/// the input the user gave, never the scratch file.
#[test]
fn errors_inside_a_compressed_container_name_the_input() {
    require_tool("zstd");
    let s = setup("4096");
    let enc = s.path("enc.img");
    assert!(build(&s, &s.plain, &enc, &[]).status.success());
    let zst = s.path("enc.img.zst");
    let o = sh(&format!("zstd -q {} -o {}", enc.display(), zst.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(bin().arg("ls").arg(&zst).arg("/etc"));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}: LUKS2 container", zst.display())) && !err.contains("scratch"),
        "{err}"
    );
}
