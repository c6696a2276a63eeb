//! The build-system recipes in recipes/, run for real where they can run
//! here: Buildroot's post-image script, the L4T station and sample-rootfs
//! scripts, and the Yocto class's shell function.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use imprint::stub::StubServer;
use tempfile::TempDir;

fn recipe(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes")
        .join(path)
}

/// PATH with the built imprint first.
fn task_path() -> String {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_imprint")).parent().unwrap();
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A shell command with the built imprint first on PATH.
fn shell(script: &Path) -> Command {
    let mut c = Command::new(script);
    c.env("PATH", task_path())
        .env_remove("IMPRINT_API_TOKEN")
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

fn serials_file(dir: &Path) -> PathBuf {
    let p = dir.join("serials.txt");
    fs::write(&p, "# line 3\nAZJN-0101\nAZJN-0102  # spare\n").unwrap();
    p
}

fn verifies(image: &Path, serial: &str) {
    let v = run(bin()
        .arg("verify")
        .arg(image)
        .args(["--serial", serial, "--owner", "azaion"]));
    assert!(v.status.success(), "{}: {}", image.display(), stdout(&v));
}

/// Logs in with the credentials inside `image` at the stub's /login: the
/// image carries the password the API has now.
fn logs_in(image: &Path, serial: &str, server: &StubServer) {
    let v = run(bin().arg("verify").arg(image).args([
        "--serial",
        serial,
        "--owner",
        "azaion",
        "--login-url",
        &server.url(),
    ]));
    assert!(
        v.status.success(),
        "{}: {}{}",
        image.display(),
        stdout(&v),
        stderr(&v)
    );
}

/// Buildroot's images directory: rootfs.ext2 with the rootfs.ext4 symlink
/// Buildroot makes, rootfs.tar.gz, and genimage's sdcard.img (MBR: a boot
/// partition, then the rootfs).
fn buildroot_images(d: &Path, tree: &Path) -> PathBuf {
    let images = d.join("images");
    fs::create_dir_all(&images).unwrap();
    let ext2 = images.join("rootfs.ext2");
    assert!(mkfs(tree, &ext2, &["-t", "ext4"], "16M").status.success());
    let _ = fs::remove_file(images.join("rootfs.ext4"));
    std::os::unix::fs::symlink("rootfs.ext2", images.join("rootfs.ext4")).unwrap();
    sh(&format!(
        "tar --sort=name --owner=0 --group=0 -C {t} -czf {i}/rootfs.tar.gz . && \
         truncate -s 24M {i}/sdcard.img && \
         printf 'label: dos\\nstart=2048, size=6144, type=c\\nstart=8192, type=83\\n' | sfdisk -q {i}/sdcard.img && \
         dd if={i}/rootfs.ext2 of={i}/sdcard.img bs=512 seek=8192 conv=notrunc status=none",
        t = tree.display(),
        i = images.display()
    ));
    images
}

/// Every image Buildroot made gets a per-serial copy, one password per
/// serial across them; a rebuilt rootfs.tar.gz (a new /etc/version) makes
/// the rerun rebuild each serial's copies from the new images with the
/// same password, and the manifest lists them all.
#[test]
fn buildroot_post_image_script() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    fs::write(tree.join("etc/version"), "1\n").unwrap();
    let images = buildroot_images(d, &tree);
    let server = StubServer::start().unwrap();
    let post_image = |images: &Path| {
        run(shell(&recipe("buildroot/post-image.sh"))
            .arg(images)
            .env("IMPRINT_SERIALS", serials_file(d))
            .env("IMPRINT_API_URL", server.url()))
    };
    let o = post_image(&images);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("6 images"), "{}", stdout(&o));
    let outputs = ["rootfs.ext2", "rootfs.tar.gz", "sdcard.img"];
    let per_serial = images.join("per-serial");
    assert!(!per_serial.join("AZJN-0101-rootfs.ext4").exists());
    let mut passwords = Vec::new();
    for s in ["AZJN-0101", "AZJN-0102"] {
        for name in outputs {
            logs_in(&per_serial.join(format!("{s}-{name}")), s, &server);
        }
        passwords.push(server.password_of(&email_of(s)).unwrap());
    }

    // A rebuild changes rootfs.tar.gz only.
    fs::write(tree.join("etc/version"), "2\n").unwrap();
    sh(&format!(
        "tar --sort=name --owner=0 --group=0 -C {} -czf {}/rootfs.tar.gz .",
        tree.display(),
        images.display()
    ));
    let o = post_image(&images);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("6 images"), "{}", stdout(&o));
    for (s, pw) in ["AZJN-0101", "AZJN-0102"].iter().zip(&passwords) {
        let tar = per_serial.join(format!("{s}-rootfs.tar.gz"));
        let version = stdout(&sh(&format!("tar -xzOf {} ./etc/version", tar.display())));
        assert_eq!(version, "2\n", "{s}: rebuilt from the new rootfs.tar.gz");
        assert_eq!(&server.password_of(&email_of(s)).unwrap(), pw, "{s}");
        for name in outputs {
            logs_in(&per_serial.join(format!("{s}-{name}")), s, &server);
        }
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(per_serial.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["images"].as_array().unwrap().len(), 6);

    // No image at all is an error, not "0 images".
    let empty = d.join("empty");
    fs::create_dir(&empty).unwrap();
    let o = post_image(&empty);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no rootfs.tar"), "{}", stderr(&o));
}

/// genimage's A/B sdcard.img, as MBR (a boot partition, then rootfsA and
/// rootfsB; MBR stores no names) and as GPT (named rootfsA and rootfsB):
/// post-image.sh stamps both slots of each serial's copy with one
/// password and one account call, and each slot logs in.
#[test]
fn buildroot_post_image_ab_sdcard() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    for gpt in [false, true] {
        let images = d.join(if gpt { "gpt" } else { "mbr" });
        fs::create_dir_all(&images).unwrap();
        let ext2 = images.join("rootfs.ext2");
        assert!(mkfs(&tree, &ext2, &["-t", "ext4"], "8M").status.success());
        let table = if gpt {
            "label: gpt\nstart=2048, size=4096, type=uefi, name=boot\nstart=8192, size=16384, name=rootfsA\nstart=24576, size=16384, name=rootfsB\n"
        } else {
            "label: dos\nstart=2048, size=4096, type=c\nstart=8192, size=16384, type=83\nstart=24576, size=16384, type=83\n"
        };
        sh(&format!(
            "truncate -s 21M {i}/sdcard.img && printf '{table}' | sfdisk -q {i}/sdcard.img && \
             dd if={e} of={i}/sdcard.img bs=512 seek=8192 conv=notrunc status=none && \
             dd if={e} of={i}/sdcard.img bs=512 seek=24576 conv=notrunc status=none",
            i = images.display(),
            e = ext2.display()
        ));
        let server = StubServer::start().unwrap();
        let o = run(shell(&recipe("buildroot/post-image.sh"))
            .arg(&images)
            .env("IMPRINT_SERIALS", serials_file(d))
            .env("IMPRINT_API_URL", server.url()));
        assert!(
            o.status.success(),
            "gpt {gpt}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stdout(&o).contains("4 images"), "{}", stdout(&o));
        let slots = if gpt {
            "sdcard.img: partitions 2 \"rootfsA\", 3 \"rootfsB\""
        } else {
            "sdcard.img: partitions 2, 3"
        };
        assert!(stdout(&o).contains(slots), "{}", stdout(&o));
        let posts = server
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count();
        assert_eq!(posts, 2, "one account call per serial");
        assert_eq!(server.requests().len(), 2);
        for s in ["AZJN-0101", "AZJN-0102"] {
            let card = images.join(format!("per-serial/{s}-sdcard.img"));
            let mut confs = Vec::new();
            for slot in ["2", "3"] {
                let v = run(bin().arg("verify").arg(&card).args([
                    "--serial",
                    s,
                    "--owner",
                    "azaion",
                    "--partition",
                    slot,
                    "--login-url",
                    &server.url(),
                ]));
                assert!(
                    v.status.success(),
                    "gpt {gpt} {s} partition {slot}: {}{}",
                    stdout(&v),
                    stderr(&v)
                );
                let c = run(bin()
                    .arg("cat")
                    .arg(&card)
                    .arg("/etc/azaion/device.conf")
                    .args(["--partition", slot]));
                assert!(c.status.success(), "{}", stderr(&c));
                confs.push(c.stdout);
            }
            assert_eq!(
                confs[0], confs[1],
                "gpt {gpt} {s}: both slots, one device.conf"
            );
            logs_in(
                &images.join(format!("per-serial/{s}-rootfs.ext2")),
                s,
                &server,
            );
        }
        // A rebuilt sdcard.img (a new boot partition) is stamped again in
        // both slots with the password its copies carry: no account call
        // changes a password.
        let passwords: Vec<String> = ["AZJN-0101", "AZJN-0102"]
            .iter()
            .map(|s| server.password_of(&email_of(s)).unwrap())
            .collect();
        sh(&format!(
            "printf new | dd of={}/sdcard.img bs=512 seek=2048 conv=notrunc status=none",
            images.display()
        ));
        let o = run(shell(&recipe("buildroot/post-image.sh"))
            .arg(&images)
            .env("IMPRINT_SERIALS", serials_file(d))
            .env("IMPRINT_API_URL", server.url()));
        assert!(
            o.status.success(),
            "gpt {gpt}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(
            stdout(&o).contains("AZJN-0101: rebuilt from the new base, password kept"),
            "{}",
            stdout(&o)
        );
        for (s, pw) in ["AZJN-0101", "AZJN-0102"].iter().zip(&passwords) {
            assert_eq!(&server.password_of(&email_of(s)).unwrap(), pw, "{s}");
            let card = images.join(format!("per-serial/{s}-sdcard.img"));
            for slot in ["2", "3"] {
                let c = run(bin()
                    .arg("cat")
                    .arg(&card)
                    .arg("/etc/azaion/device.conf")
                    .args(["--partition", slot]));
                assert!(
                    String::from_utf8_lossy(&c.stdout).contains(pw.as_str()),
                    "gpt {gpt} {s} partition {slot}"
                );
            }
        }
    }
}

/// The stand-ins for NVIDIA's scripts (tests/standins/l4t): flash.sh and
/// tools/kernel_flash/l4t_initrd_flash.sh, with the files and flags of the
/// real ones.
fn standin(path: &str) -> PathBuf {
    standin_dir("l4t").join(path)
}

fn standin_dir(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/standins")
        .join(path)
}

const BOARD: &str = "jetson-orin-nano-devkit";

/// A Linux_for_Tegra tree: the stand-in scripts, a board config, and a
/// rootfs/ as it is after apply_binaries.sh and l4t_create_default_user.sh
/// (an azaion user), with a file capability on a binary (an extended
/// attribute, as the real rootfs has).
fn l4t_tree(dir: &Path) -> PathBuf {
    let l4t = dir.join("Linux_for_Tegra");
    fs::create_dir_all(l4t.join("bootloader")).unwrap();
    fs::create_dir_all(l4t.join("tools/kernel_flash")).unwrap();
    for script in ["flash.sh", "tools/kernel_flash/l4t_initrd_flash.sh"] {
        fs::copy(standin(script), l4t.join(script)).unwrap();
    }
    fs::write(l4t.join(format!("{BOARD}.conf")), "# board config\n").unwrap();
    let root = make_rootfs(dir, "rootfs-src");
    sh(&format!(
        "mv {} {l}/rootfs && setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= {l}/rootfs/usr/bin/blob && setfattr -n user.l4t -v kept {l}/rootfs/usr/bin/blob",
        root.display(),
        l = l4t.display()
    ));
    l4t
}

fn email_of(serial: &str) -> String {
    format!("azaion-jetson-{}@azaion.com", &serial[5..])
}

/// What the device got on its APP partition: device.conf's text, its
/// owner and mode, and an extended attribute of usr/bin/blob, from an
/// extracted tree or an ext4 image. A tree has its user.l4t attribute:
/// `tar --xattrs -xpf`, as l4t_flash_from_kernel.sh runs it, restores only
/// user.* ones. An image has its file capability, as hex.
fn app_partition(target: &Path) -> (String, String, String) {
    if target.is_dir() {
        let conf = target.join("etc/azaion/device.conf");
        let owner = stdout(&sh(&format!("stat -c '%u:%g %a' {}", conf.display())));
        let cap = stdout(&sh(&format!(
            "getfattr -n user.l4t --only-values {}/usr/bin/blob",
            target.display()
        )));
        (
            fs::read_to_string(conf).unwrap(),
            owner.trim().to_string(),
            cap,
        )
    } else {
        let conf = debugfs(target, "cat /etc/azaion/device.conf");
        let (mode, uid, gid) = debugfs_stat(target, "/etc/azaion/device.conf");
        let cap = debugfs(target, "ea_get -x /usr/bin/blob security.capability");
        let cap: String = cap
            .split_whitespace()
            .filter(|w| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit()))
            .collect();
        (conf, format!("{uid}:{gid} {:o}", mode & 0o7777), cap)
    }
}

const CAPABILITY_HEX: &str = "0100000200200000000000000000000000000000";

/// flash.sh station: --prepare builds the base with `flash.sh --no-flash`
/// and keeps its UUID file; each device is flashed with `flash.sh -r` and
/// gets its own credentials on the APP partition, under the UUID its
/// extlinux.conf boots; the base is back in bootloader/ after each run,
/// also when flashing fails; a UUID file that changed is refused.
#[test]
fn l4t_station_flashes_each_device_and_restores_the_base() {
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let log = dir.path().join("flash-args");
    let pw = write_password(dir.path(), PASSWORD);
    let station = |args: &[&str], fail: bool| {
        run(shell(&recipe("l4t/station.sh"))
            .current_dir(&l4t)
            .args(args)
            .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw)
            .env("L4T_STANDIN_DEVICE", &device)
            .env("L4T_STANDIN_FAIL", if fail { "1" } else { "0" })
            .env("L4T_STANDIN_LOG", &log))
    };
    let o = station(&["AZJN-0042", BOARD, "mmcblk0p1"], false);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--prepare"), "{}", stderr(&o));

    let o = station(&["--prepare", BOARD, "mmcblk0p1"], false);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        fs::read_to_string(&log).unwrap().trim(),
        format!("--no-flash {BOARD} mmcblk0p1")
    );
    let system = l4t.join("bootloader/system.img");
    let base_sha = sha256(&system);
    assert_eq!(sha256(&l4t.join("bootloader/system.img.base")), base_sha);

    for serial in ["AZJN-0042", "AZJN-0043"] {
        let o = station(&[serial, BOARD, "mmcblk0p1"], false);
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        assert_eq!(
            fs::read_to_string(&log).unwrap().trim(),
            format!("-r {BOARD} mmcblk0p1")
        );
        let app = device.join("APP.img");
        let (conf, owner, cap) = app_partition(&app);
        assert_eq!(conf, conf_text(&email_of(serial), PASSWORD));
        assert_eq!(owner, "1001:1001 600");
        assert_eq!(cap, CAPABILITY_HEX);
        verifies(&app, serial);
        // The partition's UUID is the one extlinux.conf boots.
        let uuid = fs::read_to_string(device.join("APP.partuuid")).unwrap();
        let extlinux = debugfs(&app, "cat /boot/extlinux/extlinux.conf");
        assert!(
            extlinux.contains(&format!("root=PARTUUID={}", uuid.trim())),
            "{extlinux}"
        );
        assert_eq!(sha256(&system), base_sha, "the base is back");
    }

    // A failed flash leaves the base in place too.
    let o = station(&["AZJN-0044", BOARD, "mmcblk0p1"], true);
    assert!(!o.status.success());
    assert_eq!(sha256(&system), base_sha);

    // Another UUID file (a flash.sh run for another board) is refused
    // before anything is flashed.
    let flashed = sha256(&device.join("APP.img"));
    fs::write(
        l4t.join("bootloader/l4t-rootfs-uuid.txt"),
        "0b5a4b5e-0000-4000-8000-000000000000\n",
    )
    .unwrap();
    let o = station(&["AZJN-0045", BOARD, "mmcblk0p1"], false);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("would not boot"), "{}", stderr(&o));
    assert_eq!(sha256(&device.join("APP.img")), flashed);
    assert_eq!(sha256(&system), base_sha);
}

/// Files that hold `needle` (the password, stored as is in ext4 and
/// sparse images), below each of `dirs`.
fn holding(needle: &str, dirs: &[&Path]) -> Vec<String> {
    let list = dirs
        .iter()
        .map(|d| format!("'{}'", d.display()))
        .collect::<Vec<_>>()
        .join(" ");
    let o = sh_status(&format!("grep -rlaF -- '{needle}' {list} || true"));
    stdout(&o).lines().map(str::to_string).collect()
}

fn sh_status(script: &str) -> std::process::Output {
    Command::new("bash").args(["-c", script]).output().unwrap()
}

/// The station keeps the password only in 0600 files while it flashes,
/// and nowhere after, also when flashing fails and a slot's base is lost
/// meanwhile (the restore trap goes on with the other slot and the work
/// directory instead of stopping at the first failure under set -e).
#[test]
fn l4t_station_leaves_no_copy_of_the_password() {
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let pw = write_password(dir.path(), PASSWORD);
    // flash.sh, wrapped: on -r it records the mode of every file below
    // the tree and TMPDIR that holds the password, and with LOSE_BASE
    // removes slot A's base and fails, as a lost disk would.
    fs::rename(l4t.join("flash.sh"), l4t.join("flash-standin.sh")).unwrap();
    let seen = dir.path().join("seen");
    fs::write(
        l4t.join("flash.sh"),
        format!(
            "#!/bin/bash\nset -e\ncd \"$(dirname \"$0\")\"\n\
             if [ \"$1\" = -r ]; then grep -rlaF -f '{pw}' . '{tmp}' | xargs -r stat -c '%a %n' >> '{seen}'; fi\n\
             if [ \"$1\" = -r ] && [ -n \"$LOSE_BASE\" ]; then rm -f bootloader/system.img.base; exit 1; fi\n\
             exec ./flash-standin.sh \"$@\"\n",
            tmp = tmp.display(),
            seen = seen.display(),
            pw = pw.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}/flash.sh", l4t.display()));
    let station = |args: &[&str], lose: bool| {
        let mut c = shell(&recipe("l4t/station.sh"));
        c.current_dir(&l4t)
            .args(args)
            .env("ROOTFS_AB", "1")
            .env("TMPDIR", &tmp)
            .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw)
            .env("L4T_STANDIN_DEVICE", &device);
        if lose {
            c.env("LOSE_BASE", "1");
        }
        run(&mut c)
    };
    let o = station(&["--prepare", BOARD, "mmcblk0p1"], false);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let o = station(&["AZJN-0042", BOARD, "mmcblk0p1"], false);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let during = fs::read_to_string(&seen).unwrap();
    assert!(during.lines().count() >= 2, "both slots hold it: {during}");
    for line in during.lines() {
        assert!(
            line.starts_with("600 "),
            "readable by others while flashing: {line}"
        );
    }
    assert_eq!(holding(PASSWORD, &[&l4t, &tmp]), Vec::<String>::new());

    let o = station(&["AZJN-0043", BOARD, "mmcblk0p1"], true);
    assert!(!o.status.success());
    assert_eq!(
        holding(PASSWORD, &[&l4t, &tmp]),
        Vec::<String>::new(),
        "after a failure"
    );
    assert!(
        stderr(&o).contains("could not be put back"),
        "{}",
        stderr(&o)
    );
    assert!(
        fs::read_dir(&tmp).unwrap().next().is_none(),
        "the work directory is gone"
    );
}

/// Initrd flash, in every form the APP image takes: the R35/R36 xattr tar
/// and sparse image, and the newer zstd tar and zstd raw image, internal
/// and external. Each device's credentials reach the partition that
/// l4t_flash_from_kernel.sh writes (through flash.cfg and the .sha1sum
/// beside the image), file capabilities survive, and images/ holds the
/// pristine images again afterwards.
#[test]
fn l4t_initrd_station_stamps_what_initrd_flash_reads() {
    let external: &[&str] = &[
        "--external-device",
        "nvme0n1p1",
        "-c",
        "tools/kernel_flash/flash_l4t_t234_nvme.xml",
    ];
    for (release, extra) in [
        ("r36", &[][..]),
        ("r36", &["--sparse"][..]),
        ("r38", &[][..]),
        ("r38", &["--sparse"][..]),
        ("r36", external),
    ] {
        let what = format!("{release} {extra:?}");
        let dir = TempDir::new().unwrap();
        let l4t = l4t_tree(dir.path());
        let device = dir.path().join("device");
        let log = dir.path().join("flash-args");
        let pw = write_password(dir.path(), PASSWORD);
        let station_failing = |first: &str, fail: &str| {
            run(shell(&recipe("l4t/initrd-station.sh"))
                .current_dir(&l4t)
                .arg(first)
                .args(extra)
                .args([BOARD, "internal"])
                .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw)
                .env("L4T_STANDIN_DEVICE", &device)
                .env("L4T_STANDIN_RELEASE", release)
                .env("L4T_STANDIN_FAIL", fail)
                .env("L4T_STANDIN_LOG", &log))
        };
        let station = |first: &str| station_failing(first, "0");
        let o = station("--prepare");
        assert!(o.status.success(), "{what}: {}\n{}", stdout(&o), stderr(&o));
        let images = l4t.join("tools/kernel_flash/images");
        let locations: Vec<(&str, &str)> = if extra.contains(&"--external-device") {
            vec![("internal", "APP"), ("external", "APP_ext")]
        } else {
            vec![("internal", "APP")]
        };
        let pristine: Vec<String> = locations
            .iter()
            .map(|(loc, _)| sha256(&images.join(loc).join("system.img")))
            .collect();
        for serial in ["AZJN-0042", "AZJN-0043"] {
            let o = station(serial);
            assert!(o.status.success(), "{what}: {}\n{}", stdout(&o), stderr(&o));
            let calls = fs::read_to_string(&log).unwrap();
            assert!(
                calls.lines().last().unwrap().starts_with("0 1 "),
                "{what}: not --flash-only: {calls}"
            );
            for ((loc, var), pristine) in locations.iter().zip(&pristine) {
                let img = device.join(format!("{loc}-{var}.img"));
                let target = if img.exists() {
                    img
                } else {
                    device.join(format!("{loc}-{var}"))
                };
                let (conf, owner, cap) = app_partition(&target);
                assert_eq!(conf, conf_text(&email_of(serial), PASSWORD), "{what} {loc}");
                assert_eq!(owner, "1001:1001 600", "{what} {loc}");
                let attr = if target.is_dir() {
                    "kept"
                } else {
                    CAPABILITY_HEX
                };
                assert_eq!(cap, attr, "{what} {loc}: extended attributes kept");
                // Back to the pristine image, with its own digest.
                let image = images.join(loc).join("system.img");
                assert_eq!(&sha256(&image), pristine, "{what} {loc}");
                let sha1 = stdout(&sh(&format!("sha1sum {}", image.display())));
                assert_eq!(
                    fs::read_to_string(images.join(loc).join("system.img.sha1sum")).unwrap(),
                    format!("{}\n", sha1.split_whitespace().next().unwrap()),
                    "{what} {loc}"
                );
            }
        }
        // A flash that fails leaves the pristine images in place too.
        let o = station_failing("AZJN-0044", "1");
        assert!(!o.status.success(), "{what}");
        for ((loc, _), pristine) in locations.iter().zip(&pristine) {
            let image = images.join(loc).join("system.img");
            assert_eq!(
                &sha256(&image),
                pristine,
                "{what} {loc}: after a failed flash"
            );
        }
    }
}

/// An L4T recipe (`l4t/station.sh`, `l4t/initrd-station.sh`) run in `l4t`
/// with the stand-in flash tools against the stub API: `env` adds to the
/// environment (ROOTFS_AB, ROOTFS_ENC, ...).
fn l4t_recipe(
    script: &str,
    l4t: &Path,
    device: &Path,
    server: &StubServer,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut c = shell(&recipe(script));
    c.current_dir(l4t)
        .args(args)
        .env("IMPRINT_API_URL", server.url())
        .env("L4T_STANDIN_DEVICE", device)
        .env_remove("ROOTFS_AB")
        .env_remove("ROOTFS_ENC");
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

fn station_online(
    l4t: &Path,
    device: &Path,
    server: &StubServer,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    l4t_recipe("l4t/station.sh", l4t, device, server, env, args)
}

/// The account calls the stub saw (its /login checks left out).
fn account_calls(server: &StubServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.path != "/login")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// The password in a device.conf.
fn password_in(conf: &str) -> String {
    conf.lines()
        .find_map(|l| l.strip_prefix("AZAION_DEVICE_PASSWORD="))
        .unwrap_or_else(|| panic!("no password in {conf}"))
        .trim_matches('"')
        .to_string()
}

/// ROOTFS_ENC=1: --prepare keeps the plain root filesystem the container
/// holds and its UUID file; per device (ECID, ENC_RFS_KEY), imprint builds
/// the LUKS2 container system_root_encrypted.img, and flash.sh -r flashes
/// it: the device's container opens with that chip's passphrase (derived
/// by Python, as NVIDIA's gen_luks_passphrase.py) and, decrypted by
/// Python, holds its credentials 0600 under the UUID the command line
/// boots; one account call; flash.sh's image is back afterwards and no
/// copy of the password is left. Without ECID or the key nothing happens.
#[test]
fn l4t_station_enc_builds_each_devices_container() {
    use crate::luks::{segment, L4T_PY, XTS_PY};
    let ecid = "0x0123456789abcdef0123456789abcdef";
    let ekb = "00112233445566778899aabbccddeeff";
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let modes = dir.path().join("modes");
    let server = StubServer::start().unwrap();
    let key = dir.path().join("ekb.key");
    fs::write(&key, format!("{ekb}\n")).unwrap();
    let o = station_online(
        &l4t,
        &device,
        &server,
        &[("ROOTFS_ENC", "1")],
        &["--prepare", BOARD, "mmcblk0p1"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let bl = l4t.join("bootloader");
    let enc = bl.join("system_root_encrypted.img");
    let orig_sha = sha256(&enc);
    let uuid = fs::read_to_string(bl.join("l4t-rootfs-uuid.txt_enc")).unwrap();
    let pass = dir.path().join("device.pass");
    fs::write(
        &pass,
        crate::luks::ok(Command::new("python3").args(["-c", L4T_PY, ekb, ecid, uuid.trim()])),
    )
    .unwrap();
    let key_s = key.to_str().unwrap();
    let pass_s = pass.to_str().unwrap();
    let modes_s = modes.to_str().unwrap();
    let env = [
        ("ROOTFS_ENC", "1"),
        ("ECID", ecid),
        ("ENC_RFS_KEY", key_s),
        ("L4T_STANDIN_PASSPHRASE_FILE", pass_s),
        ("L4T_STANDIN_MODES", modes_s),
    ];
    // Without the ECID or the key: refused before any account call.
    for drop in ["ECID", "ENC_RFS_KEY"] {
        let env: Vec<_> = env.iter().copied().filter(|(k, _)| *k != drop).collect();
        let o = station_online(
            &l4t,
            &device,
            &server,
            &env,
            &["AZJN-0042", BOARD, "mmcblk0p1"],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("set {drop}")),
            "{}",
            stderr(&o)
        );
    }
    // Nor without ROOTFS_ENC after an encrypted --prepare.
    let o = station_online(
        &l4t,
        &device,
        &server,
        &[],
        &["AZJN-0042", BOARD, "mmcblk0p1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--prepare ran with ROOTFS_ENC=1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(server.requests().len(), 0);
    assert!(!device.exists());

    let o = station_online(
        &l4t,
        &device,
        &server,
        &env,
        &["AZJN-0042", BOARD, "mmcblk0p1"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        account_calls(&server).len(),
        1,
        "{:?}",
        account_calls(&server)
    );
    let flashed = device.join("APP_ENC.img");
    let dump = crate::luks::ok(Command::new("cryptsetup").arg("luksDump").arg(&flashed));
    assert!(dump.contains(uuid.trim()), "{dump}");
    crate::luks::ok(
        Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(&pass)
            .arg(&flashed),
    );
    let vk = dir.path().join("vk.bin");
    crate::luks::ok(
        Command::new("cryptsetup")
            .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
            .arg(&vk)
            .arg("--key-file")
            .arg(&pass)
            .arg(&flashed),
    );
    let (offset, sector) = segment(&flashed);
    let len = fs::metadata(&flashed).unwrap().len() - offset;
    let inner = dir.path().join("inner.img");
    crate::luks::ok(
        Command::new("python3")
            .args(["-c", XTS_PY, "dec"])
            .arg(&flashed)
            .arg(&vk)
            .args([offset.to_string(), len.to_string(), sector.to_string()])
            .arg("0")
            .arg(&inner),
    );
    assert_fsck_clean(&inner);
    let conf = debugfs(&inner, "cat /etc/azaion/device.conf");
    assert!(conf.contains(&email_of("AZJN-0042")), "{conf}");
    assert_eq!(
        debugfs_stat(&inner, "/etc/azaion/device.conf"),
        (0o600, 1001, 1001)
    );
    // Filled as build_enc_root_fsimg fills it: no /boot, the crypt_root
    // line in /etc/fstab; /boot is the APP partition, booting the
    // container's UUID.
    let fstab = debugfs(&inner, "cat /etc/fstab");
    assert!(fstab.contains("/dev/mapper/crypt_root / ext4"), "{fstab}");
    let boot_uuid = fs::read_to_string(device.join("APP.partuuid")).unwrap();
    assert!(
        fstab.contains(&format!("PARTUUID={} /boot", boot_uuid.trim())),
        "{fstab}"
    );
    assert!(debugfs(&inner, "ls /").find("boot").is_none());
    let extlinux = debugfs(&device.join("APP.img"), "cat /boot/extlinux/extlinux.conf");
    assert!(
        extlinux.contains(&format!("root=UUID={}", uuid.trim())),
        "{extlinux}"
    );
    // The container was flashed 0600; flash.sh's image is back; nothing
    // is left holding the password.
    let modes = fs::read_to_string(&modes).unwrap();
    assert!(modes.contains("system_root_encrypted.img 600\n"), "{modes}");
    assert_eq!(sha256(&enc), orig_sha);
    let password = password_in(&conf);
    assert_eq!(holding(&password, &[&l4t]), Vec::<String>::new());
    let left = || -> Vec<String> {
        fs::read_dir(&bl)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".station") || n.contains("standin"))
            .collect()
    };
    assert_eq!(left(), Vec::<String>::new());

    // Another chip's passphrase does not open it: the stand-in refuses to
    // flash a container the device cannot open.
    let other = dir.path().join("other.pass");
    fs::write(
        &other,
        crate::luks::ok(Command::new("python3").args(["-c", L4T_PY, ekb, "0x42", uuid.trim()])),
    )
    .unwrap();
    let other_s = other.to_str().unwrap();
    let mut env2 = env.to_vec();
    env2[3] = ("L4T_STANDIN_PASSPHRASE_FILE", other_s);
    let before = sha256(&flashed);
    let o = station_online(
        &l4t,
        &device,
        &server,
        &env2,
        &["AZJN-0043", BOARD, "mmcblk0p1"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("does not open with this device's passphrase"),
        "{}",
        stderr(&o)
    );
    assert_eq!(sha256(&flashed), before);
    assert_eq!(sha256(&enc), orig_sha);
    assert_eq!(left(), Vec::<String>::new(), "also when flashing fails");
}

/// The L4T passphrase flash.sh pipes to cryptsetup for a container
/// (EKB key, ECID, the container's UUID as context), derived by Python.
fn l4t_passphrase(dir: &Path, name: &str, ekb: &str, ecid: &str, uuid: &str) -> PathBuf {
    let file = dir.join(name);
    fs::write(
        &file,
        crate::luks::ok(Command::new("python3").args(["-c", crate::luks::L4T_PY, ekb, ecid, uuid])),
    )
    .unwrap();
    file
}

/// A flashed container judged without imprint: cryptsetup reads its UUID
/// and opens it with `pass`; Python decrypts it with the dumped volume key
/// into `inner`, a clean ext4.
fn decrypted(flashed: &Path, pass: &Path, uuid: &str, inner: &Path) {
    use crate::luks::{segment, XTS_PY};
    let dump = crate::luks::ok(Command::new("cryptsetup").arg("luksDump").arg(flashed));
    assert!(dump.contains(&format!("UUID:          \t{uuid}")), "{dump}");
    crate::luks::ok(
        Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(pass)
            .arg(flashed),
    );
    let vk = inner.with_extension("vk");
    crate::luks::ok(
        Command::new("cryptsetup")
            .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
            .arg(&vk)
            .arg("--key-file")
            .arg(pass)
            .arg(flashed),
    );
    let (offset, sector) = segment(flashed);
    let len = fs::metadata(flashed).unwrap().len() - offset;
    crate::luks::ok(
        Command::new("python3")
            .args(["-c", XTS_PY, "dec"])
            .arg(flashed)
            .arg(&vk)
            .args([offset.to_string(), len.to_string(), sector.to_string()])
            .arg("0")
            .arg(inner),
    );
    fs::remove_file(&vk).unwrap();
    assert_fsck_clean(inner);
}

/// ROOTFS_AB=1 with ROOTFS_ENC=1: flash.sh flashes two slots, each a boot
/// partition and a container (APP_ENC under l4t-rootfs-uuid.txt_enc,
/// APP_ENC_b under l4t-rootfs-uuid.txt_b_enc, each passphrase derived
/// with its own UUID as context). Per device both containers are built in
/// one imprint call (one account call, one password): each opens with its
/// slot's passphrase (derived by Python) and not the other's, holds the
/// same device.conf 0600, and is filled as build_enc_root_fsimg fills it
/// (its slot's /boot, the other slot's container on crypt_root_other);
/// slot B boots its own UUID. flash.sh's containers are back afterwards,
/// and a run without ROOTFS_AB after this --prepare is refused.
#[test]
fn l4t_station_enc_ab_builds_both_slots_containers() {
    let ecid = "0x0123456789abcdef0123456789abcdef";
    let ekb = "00112233445566778899aabbccddeeff";
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let modes = dir.path().join("modes");
    let server = StubServer::start().unwrap();
    let key = dir.path().join("ekb.key");
    fs::write(&key, format!("{ekb}\n")).unwrap();
    let ab_enc = [("ROOTFS_ENC", "1"), ("ROOTFS_AB", "1")];
    let o = station_online(
        &l4t,
        &device,
        &server,
        &ab_enc,
        &["--prepare", BOARD, "mmcblk0p1"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let bl = l4t.join("bootloader");
    let uuid_a = fs::read_to_string(bl.join("l4t-rootfs-uuid.txt_enc")).unwrap();
    let uuid_b = fs::read_to_string(bl.join("l4t-rootfs-uuid.txt_b_enc")).unwrap();
    let (uuid_a, uuid_b) = (uuid_a.trim(), uuid_b.trim());
    assert_ne!(uuid_a, uuid_b);
    let orig = [
        sha256(&bl.join("system_root_encrypted.img")),
        sha256(&bl.join("system_root_encrypted.img_b")),
    ];
    let pass_a = l4t_passphrase(dir.path(), "a.pass", ekb, ecid, uuid_a);
    let pass_b = l4t_passphrase(dir.path(), "b.pass", ekb, ecid, uuid_b);
    let key_s = key.to_str().unwrap();
    let (pass_a_s, pass_b_s) = (pass_a.to_str().unwrap(), pass_b.to_str().unwrap());
    let env = [
        ("ROOTFS_ENC", "1"),
        ("ROOTFS_AB", "1"),
        ("ECID", ecid),
        ("ENC_RFS_KEY", key_s),
        ("L4T_STANDIN_PASSPHRASE_FILE", pass_a_s),
        ("L4T_STANDIN_PASSPHRASE_FILE_B", pass_b_s),
        ("L4T_STANDIN_MODES", modes.to_str().unwrap()),
    ];
    // Without ROOTFS_AB after an A/B --prepare: slot B would be left out.
    let o = station_online(
        &l4t,
        &device,
        &server,
        &env[..1]
            .iter()
            .chain(&env[2..])
            .copied()
            .collect::<Vec<_>>(),
        &["AZJN-0042", BOARD, "mmcblk0p1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--prepare ran with ROOTFS_AB=1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(server.requests().len(), 0);
    assert!(!device.exists());

    let o = station_online(
        &l4t,
        &device,
        &server,
        &env,
        &["AZJN-0042", BOARD, "mmcblk0p1"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        account_calls(&server).len(),
        1,
        "{:?}",
        account_calls(&server)
    );
    let mut confs = Vec::new();
    for (slot, uuid, pass, other, boot) in [
        ("APP_ENC", uuid_a, &pass_a, &pass_b, "APP"),
        ("APP_ENC_b", uuid_b, &pass_b, &pass_a, "APP_b"),
    ] {
        let flashed = device.join(format!("{slot}.img"));
        // The other slot's passphrase does not open it.
        let o = Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(other)
            .arg(&flashed)
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "{slot} opens with the other slot's passphrase"
        );
        let inner = dir.path().join(format!("{slot}.inner"));
        decrypted(&flashed, pass, uuid, &inner);
        let conf = debugfs(&inner, "cat /etc/azaion/device.conf");
        assert!(conf.contains(&email_of("AZJN-0042")), "{conf}");
        assert_eq!(
            debugfs_stat(&inner, "/etc/azaion/device.conf"),
            (0o600, 1001, 1001)
        );
        let fstab = debugfs(&inner, "cat /etc/fstab");
        let boot_uuid = fs::read_to_string(device.join(format!("{boot}.partuuid"))).unwrap();
        assert!(fstab.contains("/dev/mapper/crypt_root / ext4"), "{fstab}");
        assert!(
            fstab.contains(&format!("PARTUUID={} /boot", boot_uuid.trim())),
            "{fstab}"
        );
        assert!(
            fstab.contains("/dev/mapper/crypt_root_other /mnt/crypt_root_other ext4"),
            "{fstab}"
        );
        assert!(debugfs(&inner, "ls /mnt").contains("crypt_root_other"));
        let extlinux = debugfs(
            &device.join(format!("{boot}.img")),
            "cat /boot/extlinux/extlinux.conf",
        );
        assert!(
            extlinux.contains(&format!("root=UUID={uuid}")),
            "{extlinux}"
        );
        confs.push(conf);
    }
    assert_eq!(confs[0], confs[1], "one password in both slots");
    let modes = fs::read_to_string(&modes).unwrap();
    for file in [
        "system_root_encrypted.img 600\n",
        "system_root_encrypted.img_b 600\n",
    ] {
        assert!(modes.contains(file), "{modes}");
    }
    assert_eq!(
        [
            sha256(&bl.join("system_root_encrypted.img")),
            sha256(&bl.join("system_root_encrypted.img_b")),
        ],
        orig
    );
    assert_eq!(
        holding(&password_in(&confs[0]), &[&l4t]),
        Vec::<String>::new()
    );
    // The flash fails: both of flash.sh's containers are back all the same.
    let mut failing = env.to_vec();
    failing.push(("L4T_STANDIN_FAIL", "1"));
    let o = station_online(
        &l4t,
        &device,
        &server,
        &failing,
        &["AZJN-0043", BOARD, "mmcblk0p1"],
    );
    assert!(!o.status.success());
    assert_eq!(
        [
            sha256(&bl.join("system_root_encrypted.img")),
            sha256(&bl.join("system_root_encrypted.img_b")),
        ],
        orig,
        "also when flashing fails"
    );
    let pw = server.password_of(&email_of("AZJN-0043")).unwrap();
    assert_eq!(holding(&pw, &[&l4t]), Vec::<String>::new());
}

/// ROOTFS_AB=1: flash.sh -r also flashes bootloader/system.img_b to APP_b
/// and boots it with the UUID in l4t-rootfs-uuid.txt_b. --prepare keeps
/// both images and both UUID files; each device gets its credentials in
/// both slots with one password and one account call; slot B boots under
/// its own UUID; both bases are back afterwards, also when flashing fails;
/// a run without ROOTFS_AB after an A/B --prepare is refused.
#[test]
fn l4t_station_ab_stamps_both_slots_with_one_password() {
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let server = StubServer::start().unwrap();
    let ab = [("ROOTFS_AB", "1")];
    let o = station_online(
        &l4t,
        &device,
        &server,
        &ab,
        &["--prepare", BOARD, "mmcblk0p1"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let bl = l4t.join("bootloader");
    for f in ["system.img", "system.img_b"] {
        assert_eq!(sha256(&bl.join(format!("{f}.base"))), sha256(&bl.join(f)));
    }
    assert_eq!(
        fs::read(bl.join("system.img_b.base.uuid")).unwrap(),
        fs::read(bl.join("l4t-rootfs-uuid.txt_b")).unwrap()
    );
    let bases = [
        sha256(&bl.join("system.img")),
        sha256(&bl.join("system.img_b")),
    ];

    let modes = dir.path().join("modes");
    let mut ab_modes = ab.to_vec();
    let modes_str = modes.to_string_lossy().to_string();
    ab_modes.push(("L4T_STANDIN_MODES", &modes_str));
    for (n, serial) in ["AZJN-0042", "AZJN-0043"].iter().enumerate() {
        let o = station_online(
            &l4t,
            &device,
            &server,
            &ab_modes,
            &[serial, BOARD, "mmcblk0p1"],
        );
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        let calls = account_calls(&server);
        assert_eq!(calls.len(), n + 1, "one account call per device: {calls:?}");
        assert_eq!(calls[n], "POST /users");
        let pw = server.password_of(&email_of(serial)).unwrap();
        for slot in ["APP", "APP_b"] {
            let img = device.join(format!("{slot}.img"));
            let (conf, owner, cap) = app_partition(&img);
            assert_eq!(
                password_in(&conf),
                pw,
                "{serial} {slot}: the API's password"
            );
            assert_eq!(owner, "1001:1001 600", "{serial} {slot}");
            assert_eq!(cap, CAPABILITY_HEX, "{serial} {slot}");
            logs_in(&img, serial, &server);
            let uuid = fs::read_to_string(device.join(format!("{slot}.partuuid"))).unwrap();
            let extlinux = debugfs(&img, "cat /boot/extlinux/extlinux.conf");
            assert!(
                extlinux.contains(&format!("root=PARTUUID={}", uuid.trim())),
                "{slot}: {extlinux}"
            );
        }
        assert_ne!(
            fs::read_to_string(device.join("APP.partuuid")).unwrap(),
            fs::read_to_string(device.join("APP_b.partuuid")).unwrap()
        );
        assert_eq!(
            fs::read_to_string(&modes).unwrap(),
            "system.img 600\nsystem.img_b 600\n".repeat(n + 1),
            "the stamped copies flashed are 0600"
        );
        assert_eq!(sha256(&bl.join("system.img")), bases[0], "base A is back");
        assert_eq!(sha256(&bl.join("system.img_b")), bases[1], "base B is back");
    }

    // A failed flash puts both bases back.
    let mut fail = ab.to_vec();
    fail.push(("L4T_STANDIN_FAIL", "1"));
    let o = station_online(
        &l4t,
        &device,
        &server,
        &fail,
        &["AZJN-0044", BOARD, "mmcblk0p1"],
    );
    assert!(!o.status.success());
    assert_eq!(sha256(&bl.join("system.img")), bases[0]);
    assert_eq!(sha256(&bl.join("system.img_b")), bases[1]);

    // Without ROOTFS_AB after an A/B --prepare: refused, no account call.
    let calls = account_calls(&server).len();
    let o = station_online(
        &l4t,
        &device,
        &server,
        &[],
        &["AZJN-0045", BOARD, "mmcblk0p1"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ROOTFS_AB=1"), "{}", stderr(&o));
    assert_eq!(account_calls(&server).len(), calls);
}

/// ROOTFS_ENC=1 makes flash.sh flash system_boot.img and the LUKS container
/// system_root_encrypted.img, not system.img: refused with a message that
/// says so, on a fresh tree and on one prepared without it, before any
/// account call or flash. A layout whose APP image is not the system.img
/// flash.sh builds is refused too.
#[test]
fn l4t_station_refuses_what_it_cannot_stamp() {
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let server = StubServer::start().unwrap();
    let enc = [("ROOTFS_ENC", "1")];
    let o = station_online(
        &l4t,
        &device,
        &server,
        &[],
        &["--prepare", BOARD, "mmcblk0p1"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let o = station_online(
        &l4t,
        &device,
        &server,
        &enc,
        &["AZJN-0043", BOARD, "mmcblk0p1"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("run ROOTFS_ENC=1 station.sh --prepare"),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("flashed"), "{}", stdout(&o));
    assert!(!device.exists(), "nothing was flashed");
    assert_eq!(server.requests().len(), 0);

    // A board whose layout flashes another file to APP.
    fs::write(
        l4t.join("custom.xml"),
        "<partition_layout>\n    <device type=\"sdmmc_user\">\n        <partition name=\"APP\" type=\"data\">\n            <unique_guid> APPUUID </unique_guid>\n            <filename> custom_rootfs.img </filename>\n        </partition>\n    </device>\n</partition_layout>\n",
    )
    .unwrap();
    fs::write(l4t.join("custom_rootfs.img"), "").unwrap();
    fs::copy(
        l4t.join("custom_rootfs.img"),
        l4t.join("bootloader/custom_rootfs.img"),
    )
    .unwrap();
    fs::write(l4t.join(format!("{BOARD}.conf")), "EMMC_CFG=custom.xml\n").unwrap();
    // The board config changed after --prepare: refused per device.
    let o = station_online(
        &l4t,
        &device,
        &server,
        &[],
        &["AZJN-0043", BOARD, "mmcblk0p1"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not the one --prepare read"),
        "{}",
        stderr(&o)
    );
    assert!(!device.exists());
    let o = station_online(
        &l4t,
        &device,
        &server,
        &[],
        &["--prepare", BOARD, "mmcblk0p1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("custom_rootfs.img"), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot stamp"), "{}", stderr(&o));
    assert!(!l4t.join("bootloader/system.img.base").exists());
}

fn initrd_station(
    l4t: &Path,
    device: &Path,
    server: &StubServer,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    l4t_recipe("l4t/initrd-station.sh", l4t, device, server, env, args)
}

/// --massflash flashes every device in recovery mode from one images/, so
/// they would all get one serial's credentials: refused at --prepare and
/// per device, before any account call or flash, with what to do instead.
/// ROOTFS_ENC=1 on an external device is refused too.
#[test]
fn l4t_initrd_station_refuses_massflash_and_external_encryption() {
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let server = StubServer::start().unwrap();
    let rcm = [("L4T_STANDIN_RCM", "1-1 1-2 1-3")];
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &rcm,
        &["--prepare", "--massflash", "3", BOARD, "internal"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    for what in [
        "--massflash",
        "same tools/kernel_flash/images/",
        "--usb-instance",
    ] {
        assert!(stderr(&o).contains(what), "{what}: {}", stderr(&o));
    }
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &rcm,
        &["--prepare", BOARD, "internal"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &rcm,
        &["AZJN-0042", "--massflash", "3", BOARD, "internal"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("--massflash"), "{}", stderr(&o));
    assert_eq!(server.requests().len(), 0);
    assert!(!device.exists(), "nothing was flashed");

    // One device of the three, chosen by its USB port, is fine.
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &rcm,
        &["AZJN-0042", "--usb-instance", "1-2", BOARD, "internal"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    verifies(&device.join("internal-APP"), "AZJN-0042");

    // With ROOTFS_ENC=1 the container would open on one chip only.
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &[("ROOTFS_ENC", "1"), ("L4T_STANDIN_RCM", "1-1 1-2")],
        &["--prepare", "--massflash", "2", BOARD, "internal"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    for what in ["--massflash", "one chip's ECID", "--usb-instance"] {
        assert!(stderr(&o).contains(what), "{what}: {}", stderr(&o));
    }
    // ROOTFS_ENC=1 on an external device is not served: refused before
    // the flash tool runs.
    let log = dir.path().join("log");
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &[
            ("ROOTFS_ENC", "1"),
            ("L4T_STANDIN_LOG", log.to_str().unwrap()),
        ],
        &[
            "--prepare",
            "--external-device",
            "nvme0n1p1",
            BOARD,
            "external",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("the external device's encrypted rootfs"),
        "{}",
        stderr(&o)
    );
    assert!(!log.exists(), "the flash tool ran");
    assert_eq!(account_calls(&server).len(), 1);
}

/// Initrd flash with ROOTFS_ENC=1 (and ROOTFS_AB=1 when `ab`): the flash
/// tool packages system_boot.img(_b) as flash.cfg's APP image(s) and
/// copies the containers named in flash.idx into images/internal; per
/// device the station builds each container (one account call, one
/// password), --flash-only writes them; each opens with its slot's
/// passphrase (derived by Python) only, holds the device.conf 0600 and
/// is filled as flash.sh fills it; images/ is as --prepare left it
/// afterwards and holds no password. Without ECID nothing happens.
fn initrd_station_enc(ab: bool) {
    let ecid = "0x0123456789abcdef0123456789abcdef";
    let ekb = "00112233445566778899aabbccddeeff";
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let server = StubServer::start().unwrap();
    let key = dir.path().join("ekb.key");
    fs::write(&key, format!("{ekb}\n")).unwrap();
    let mut env = vec![("ROOTFS_ENC", "1")];
    if ab {
        env.push(("ROOTFS_AB", "1"));
    }
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &env,
        &["--prepare", BOARD, "internal"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let images = l4t.join("tools/kernel_flash/images/internal");
    let cfg = fs::read_to_string(images.join("flash.cfg")).unwrap();
    assert!(cfg.contains("APP=system_boot.img\n"), "{cfg}");
    let bl = l4t.join("bootloader");
    let mut slots = vec![("APP_ENC", "system_root_encrypted.img", "", "APP")];
    if ab {
        slots.push(("APP_ENC_b", "system_root_encrypted.img_b", "_b", "APP_b"));
    }
    let pristine: Vec<_> = slots.iter().map(|s| sha256(&images.join(s.1))).collect();
    let key_s = key.to_str().unwrap();
    let mut run_env = env.clone();
    run_env.extend([("ENC_RFS_KEY", key_s)]);
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &run_env,
        &["AZJN-0042", BOARD, "internal"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("set ECID"), "{}", stderr(&o));
    assert_eq!(server.requests().len(), 0);
    assert!(!device.exists());
    run_env.push(("ECID", ecid));
    // Without ROOTFS_ENC after this --prepare, or (A/B) without ROOTFS_AB:
    // refused before any account call.
    let mut mismatches = vec![(
        run_env
            .iter()
            .copied()
            .filter(|(k, _)| *k != "ROOTFS_ENC")
            .collect::<Vec<_>>(),
        "ROOTFS_ENC=1",
    )];
    if ab {
        mismatches.push((
            run_env
                .iter()
                .copied()
                .filter(|(k, _)| *k != "ROOTFS_AB")
                .collect(),
            "--prepare ran with ROOTFS_AB=1",
        ));
    }
    for (env, says) in mismatches {
        let o = initrd_station(
            &l4t,
            &device,
            &server,
            &env,
            &["AZJN-0042", BOARD, "internal"],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{says}: {}", stderr(&o));
    }
    assert_eq!(server.requests().len(), 0);
    assert!(!device.exists());
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &run_env,
        &["AZJN-0042", BOARD, "internal"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(account_calls(&server), ["POST /users"]);
    let pw = server.password_of(&email_of("AZJN-0042")).unwrap();
    let passes: Vec<_> = slots
        .iter()
        .map(|(slot, _, b, _)| {
            let uuid = fs::read_to_string(bl.join(format!("l4t-rootfs-uuid.txt{b}_enc"))).unwrap();
            let uuid = uuid.trim().to_string();
            (
                l4t_passphrase(dir.path(), &format!("{slot}.pass"), ekb, ecid, &uuid),
                uuid,
            )
        })
        .collect();
    for (i, (slot, _, b, boot)) in slots.iter().enumerate() {
        let flashed = device.join(format!("internal-{slot}.img"));
        let (pass, uuid) = &passes[i];
        if let Some((other, _)) = passes.get(1 - i) {
            let o = Command::new("cryptsetup")
                .args(["open", "--test-passphrase", "--key-file"])
                .arg(other)
                .arg(&flashed)
                .output()
                .unwrap();
            assert!(
                !o.status.success(),
                "{slot} opens with the other slot's passphrase"
            );
        }
        let inner = dir.path().join(format!("{slot}.inner"));
        decrypted(&flashed, pass, uuid, &inner);
        let conf = debugfs(&inner, "cat /etc/azaion/device.conf");
        assert_eq!(password_in(&conf), pw, "{slot}");
        assert_eq!(
            debugfs_stat(&inner, "/etc/azaion/device.conf"),
            (0o600, 1001, 1001)
        );
        let fstab = debugfs(&inner, "cat /etc/fstab");
        let boot_uuid = fs::read_to_string(bl.join(format!("l4t-bootpart-uuid.txt{b}"))).unwrap();
        assert!(fstab.contains("/dev/mapper/crypt_root / ext4"), "{fstab}");
        assert!(
            fstab.contains(&format!("PARTUUID={} /boot", boot_uuid.trim())),
            "{fstab}"
        );
        assert_eq!(
            fstab.contains("/dev/mapper/crypt_root_other"),
            ab,
            "{fstab}"
        );
        let extlinux =
            fs::read_to_string(device.join(format!("internal-{boot}/boot/extlinux/extlinux.conf")))
                .unwrap();
        assert!(
            extlinux.contains(&format!("root=UUID={uuid}")),
            "{extlinux}"
        );
    }
    let now: Vec<_> = slots.iter().map(|s| sha256(&images.join(s.1))).collect();
    assert_eq!(now, pristine);
    assert_eq!(holding(&pw, &[&l4t]), Vec::<String>::new());
    // The flash fails: the containers from --prepare are back all the same.
    run_env.push(("L4T_STANDIN_FAIL", "1"));
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &run_env,
        &["AZJN-0043", BOARD, "internal"],
    );
    assert!(!o.status.success());
    let now: Vec<_> = slots.iter().map(|s| sha256(&images.join(s.1))).collect();
    assert_eq!(now, pristine, "also when flashing fails");
    let pw = server.password_of(&email_of("AZJN-0043")).unwrap();
    assert_eq!(holding(&pw, &[&l4t]), Vec::<String>::new());
}

#[test]
fn l4t_initrd_station_enc_builds_each_devices_container() {
    initrd_station_enc(false);
}

#[test]
fn l4t_initrd_station_enc_ab_builds_both_slots_containers() {
    initrd_station_enc(true);
}

/// Initrd flash with ROOTFS_AB=1: flash.cfg names APP=system.img and
/// APP_b=system.img_b; both slots get the device's credentials with one
/// password and one account call, and images/ is pristine afterwards.
#[test]
fn l4t_initrd_station_ab_stamps_both_slots() {
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let server = StubServer::start().unwrap();
    let ab = [("ROOTFS_AB", "1")];
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &ab,
        &["--prepare", BOARD, "internal"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let images = l4t.join("tools/kernel_flash/images/internal");
    let cfg = fs::read_to_string(images.join("flash.cfg")).unwrap();
    assert!(
        cfg.contains("APP=system.img\n") && cfg.contains("APP_b=system.img_b\n"),
        "{cfg}"
    );
    let pristine = [
        sha256(&images.join("system.img")),
        sha256(&images.join("system.img_b")),
    ];
    let o = initrd_station(
        &l4t,
        &device,
        &server,
        &ab,
        &["AZJN-0042", BOARD, "internal"],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(account_calls(&server), ["POST /users"]);
    let pw = server.password_of(&email_of("AZJN-0042")).unwrap();
    for slot in ["APP", "APP_b"] {
        let target = device.join(format!("internal-{slot}"));
        let (conf, owner, _) = app_partition(&target);
        assert_eq!(password_in(&conf), pw, "{slot}");
        assert_eq!(owner, "1001:1001 600", "{slot}");
        logs_in(&target, "AZJN-0042", &server);
    }
    assert_eq!(sha256(&images.join("system.img")), pristine[0]);
    assert_eq!(sha256(&images.join("system.img_b")), pristine[1]);
}

/// Image-based OTA: ota-package.sh refuses to build the payload from a
/// stamped rootfs/, adds etc/azaion/device.conf to the backup list, and
/// builds it from the clean tree; the payload carries no credentials; the
/// OTA updater run over a stamped device keeps its device.conf (content,
/// owner, mode) while replacing the rest. With the list as NVIDIA ships it
/// the same update loses the file.
#[test]
fn l4t_ota_keeps_device_conf_and_builds_only_from_a_clean_base() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let l4t = l4t_tree(d);
    let ota = l4t.join("tools/ota_tools/version_upgrade");
    fs::create_dir_all(&ota).unwrap();
    for f in [
        "l4t_generate_ota_package.sh",
        "nv_ota_preserve_data.sh",
        "nv_ota_rootfs_updater.sh",
        "ota_backup_files_list.txt",
    ] {
        fs::copy(
            standin(&format!("tools/ota_tools/version_upgrade/{f}")),
            ota.join(f),
        )
        .unwrap();
    }
    let pw = write_password(d, PASSWORD);
    // A device in the field, flashed with its credentials (release 1).
    fs::write(l4t.join("rootfs/etc/release"), "1\n").unwrap();
    let app = d.join("device-APP");
    sh(&format!("cp -a {}/rootfs {}", l4t.display(), app.display()));
    let stamp = |tree: &Path| {
        let o = run(&mut provision_offline_dir(tree, &pw));
        assert!(o.status.success(), "{}", stderr(&o));
    };
    stamp(&app);
    let stamped = fs::read_to_string(app.join("etc/azaion/device.conf")).unwrap();

    // Release 2, with the runbook's staging tree left stamped: refused.
    fs::write(l4t.join("rootfs/etc/release"), "2\n").unwrap();
    stamp(&l4t.join("rootfs"));
    let package = |env: &[(&str, &str)]| {
        let mut c = shell(&recipe("l4t/ota-package.sh"));
        c.current_dir(&l4t).args([BOARD, "R35-3"]);
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c)
    };
    let payload = l4t.join(format!("bootloader/{BOARD}/ota_payload_package.tar.gz"));
    let o = package(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("holds device credentials"),
        "{}",
        stderr(&o)
    );
    assert!(!payload.exists(), "no payload from a stamped tree");

    fs::remove_file(l4t.join("rootfs/etc/azaion/device.conf")).unwrap();
    let o = package(&[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let list = fs::read_to_string(ota.join("ota_backup_files_list.txt")).unwrap();
    assert!(
        list.lines().any(|l| l == "etc/azaion/device.conf"),
        "{list}"
    );
    // Run again: the entry is not added twice.
    assert!(package(&[]).status.success());
    let list = fs::read_to_string(ota.join("ota_backup_files_list.txt")).unwrap();
    assert_eq!(list.matches("etc/azaion/device.conf").count(), 1, "{list}");

    // On the device: the payload unpacked into the OTA work directory,
    // then the rootfs updater.
    let update = |app: &Path, payload: &Path| {
        let work = d.join(format!(
            "work-{}",
            app.file_name().unwrap().to_string_lossy()
        ));
        fs::create_dir_all(&work).unwrap();
        sh(&format!(
            "tar -xzf {p} -C {w} && tar -xf {w}/ota_package.tar -C {w}",
            p = payload.display(),
            w = work.display()
        ));
        let listing = stdout(&sh(&format!(
            "tar -tzf {}",
            work.join("internal_device/system.img").display()
        )));
        assert!(
            !listing.contains("azaion/device.conf"),
            "the payload carries credentials"
        );
        let o = run(Command::new(work.join("nv_ota_rootfs_updater.sh"))
            .arg("-p")
            .arg(app)
            .arg("-d")
            .arg(&work)
            .arg(work.join("internal_device/system.img")));
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        assert_eq!(fs::read_to_string(app.join("etc/release")).unwrap(), "2\n");
    };
    update(&app, &payload);
    let conf = app.join("etc/azaion/device.conf");
    assert_eq!(fs::read_to_string(&conf).unwrap(), stamped);
    let o = sh(&format!("stat -c '%u:%g %a' {}", conf.display()));
    assert_eq!(stdout(&o).trim(), "1001:1001 600");
    verifies(&app, "AZJN-0042");

    // The list as shipped: the update deletes device.conf.
    fs::copy(
        standin("tools/ota_tools/version_upgrade/ota_backup_files_list.txt"),
        ota.join("ota_backup_files_list.txt"),
    )
    .unwrap();
    let o = run(Command::new(ota.join("l4t_generate_ota_package.sh"))
        .current_dir(&l4t)
        .args([BOARD, "R35-3"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let other = d.join("device2-APP");
    sh(&format!("cp -a {} {}", app.display(), other.display()));
    update(&other, &payload);
    assert!(!other.join("etc/azaion/device.conf").exists());

    // A list naming /etc/azaion/device.conf is refused: that form is not kept.
    fs::write(
        ota.join("ota_backup_files_list.txt"),
        "/etc/azaion/device.conf\n",
    )
    .unwrap();
    let o = package(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Write it as etc/azaion/device.conf"),
        "{}",
        stderr(&o)
    );
}

/// `imprint provision --offline --rootfs-dir TREE` for AZJN-0042, owned by
/// azaion.
fn provision_offline_dir(tree: &Path, pw: &Path) -> Command {
    let mut c = bin();
    c.args([
        "provision",
        "--offline",
        "--serial",
        "AZJN-0042",
        "--owner",
        "azaion",
    ])
    .arg("--password-file")
    .arg(pw)
    .arg("--rootfs-dir")
    .arg(tree);
    c
}

/// The sample rootfs has no user yet (l4t_create_default_user.sh adds one
/// later): per-serial tarballs get a numeric owner, 1000:1000 (useradd's
/// first UID), which is the azaion user once it is created.
#[test]
fn l4t_sample_rootfs_tarballs_get_the_first_users_ids() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
    // NVIDIA's sample rootfs: system users only.
    sh(&format!(
        "sed -i '/^azaion:/d' {r}/etc/passwd {r}/etc/group",
        r = root.display()
    ));
    let tbz2 = d.join("Tegra_Linux_Sample-Root-Filesystem_R36.4.0_aarch64.tbz2");
    make_tar(&root, &tbz2, "tbz2", "gnu", true);
    let pw = write_password(d, PASSWORD);
    let out = d.join("out");
    let o = run(shell(&recipe("l4t/sample-rootfs.sh"))
        .arg(&tbz2)
        .arg(serials_file(d))
        .arg(&out)
        .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    for s in ["AZJN-0101", "AZJN-0102"] {
        let image = out.join(format!(
            "{s}-{}",
            tbz2.file_name().unwrap().to_string_lossy()
        ));
        // As NVIDIA documents: tar -xpf into Linux_for_Tegra/rootfs.
        let x = d.join(format!("rootfs-{s}"));
        fs::create_dir(&x).unwrap();
        sh(&format!("tar -xpf {} -C {}", image.display(), x.display()));
        let conf = x.join("etc/azaion/device.conf");
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            conf_text(&email_of(s), PASSWORD)
        );
        let o = sh(&format!("stat -c '%u:%g %a' {}", conf.display()));
        assert_eq!(stdout(&o).trim(), "1000:1000 600");
        // What l4t_create_default_user.sh -u azaion then adds.
        sh(&format!(
            "echo 'azaion:x:1000:1000::/home/azaion:/bin/bash' >> {x}/etc/passwd && echo 'azaion:x:1000:' >> {x}/etc/group",
            x = x.display()
        ));
        verifies(&x, s);
    }
}

/// The staging flow: after apply_binaries.sh and l4t_create_default_user.sh
/// the user exists, device.conf is written into rootfs/ in place, owned by
/// it by name, the flash command runs with it there, and afterwards the
/// file is gone and the tree passes the clean-base check, also when the
/// flash fails.
#[test]
fn l4t_sample_rootfs_staging_tree_after_the_user_exists() {
    let dir = TempDir::new().unwrap();
    let root = make_rootfs(dir.path(), "rootfs");
    let pw = write_password(dir.path(), PASSWORD);
    let flashed = dir.path().join("flashed.conf");
    // The flash command: copies what flash.sh would build system.img from.
    let flash = format!(
        "cp {} {}",
        root.join("etc/azaion/device.conf").display(),
        flashed.display()
    );
    let staging = |cmd: &str| {
        run(shell(&recipe("l4t/sample-rootfs.sh"))
            .arg("--rootfs-dir")
            .arg(&root)
            .args(["AZJN-0042", "--", "sh", "-c", cmd])
            .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw))
    };
    let o = staging(&flash);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        fs::read_to_string(&flashed).unwrap(),
        conf_text(EMAIL, PASSWORD)
    );
    assert!(!root.join("etc/azaion/device.conf").exists());
    let clean = run(bin().args(["verify", "--no-credentials"]).arg(&root));
    assert!(clean.status.success(), "{}", stderr(&clean));

    let o = staging("exit 3");
    assert!(!o.status.success());
    assert!(
        !root.join("etc/azaion/device.conf").exists(),
        "removed after a failed flash"
    );

    // No flash command: refused, nothing written.
    let o = run(shell(&recipe("l4t/sample-rootfs.sh"))
        .arg("--rootfs-dir")
        .arg(&root)
        .arg("AZJN-0042")
        .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw));
    assert_eq!(o.status.code(), Some(2));
    assert!(!root.join("etc/azaion/device.conf").exists());
}

/// The staging flow with the stand-in flash.sh and ROOTFS_ENC=1: flash.sh
/// builds the encrypted rootfs image from the stamped rootfs/, so the
/// device's APP_ENC partition carries the credentials (the stand-in does
/// not encrypt: this checks which file goes where), and rootfs/ is clean
/// afterwards.
#[test]
fn l4t_sample_rootfs_staging_tree_serves_encrypted_rootfs() {
    let dir = TempDir::new().unwrap();
    let l4t = l4t_tree(dir.path());
    let device = dir.path().join("device");
    let pw = write_password(dir.path(), PASSWORD);
    let o = run(shell(&recipe("l4t/sample-rootfs.sh"))
        .current_dir(&l4t)
        .args([
            "--rootfs-dir",
            "rootfs",
            "AZJN-0042",
            "--",
            "./flash.sh",
            BOARD,
            "mmcblk0p1",
        ])
        .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw)
        .env("ROOTFS_ENC", "1")
        .env("L4T_STANDIN_DEVICE", &device));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let (conf, owner, _) = app_partition(&device.join("APP_ENC.img"));
    assert_eq!(conf, conf_text(EMAIL, PASSWORD));
    assert_eq!(owner, "1001:1001 600");
    assert!(!l4t.join("rootfs/etc/azaion/device.conf").exists());
}

/// Where .ci/run installs BitBake's `bb` package (the bitbake-setup wheel
/// from PyPI carries it), for the class to be parsed and run by BitBake.
fn bitbake_pythonpath() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bitbake-py");
    dir.join("bb/parse/__init__.py").is_file().then_some(dir)
}

/// A layer with the class, a recipe that inherits it, and what OE-core's
/// bitbake.conf and logging.bbclass give a real build (the variables and
/// the bbnote/bbfatal shell functions the class uses).
fn bitbake_layer(d: &Path, recipe_lines: &str) -> PathBuf {
    let layer = d.join("layer");
    fs::create_dir_all(layer.join("conf")).unwrap();
    fs::create_dir_all(layer.join("classes")).unwrap();
    fs::copy(
        recipe("yocto/imprint.bbclass"),
        layer.join("classes/imprint.bbclass"),
    )
    .unwrap();
    fs::write(
        layer.join("conf/bitbake.conf"),
        "PN = \"azaion-image\"\n\
         DEPLOY_DIR_IMAGE = \"${TOPDIR}/deploy\"\n\
         IMAGE_BASENAME = \"azaion-image\"\n\
         MACHINE = \"jetson-orin-nano-devkit\"\n\
         IMAGE_LINK_NAME = \"${IMAGE_BASENAME}-${MACHINE}\"\n\
         DATETIME = \"20260101000000\"\n\
         IMAGE_NAME = \"${IMAGE_LINK_NAME}-${DATETIME}\"\n\
         WORKDIR = \"${TOPDIR}/tmp/work/${PN}\"\n\
         T = \"${WORKDIR}/temp\"\n\
         B = \"${WORKDIR}\"\n",
    )
    .unwrap();
    fs::write(
        layer.join("classes/base.bbclass"),
        "addtask build\nbbnote() {\n    echo \"NOTE: $*\"\n}\nbbfatal() {\n    echo \"ERROR: $*\"\n    exit 1\n}\n",
    )
    .unwrap();
    fs::write(layer.join("classes/image.bbclass"), IMAGE_BBCLASS).unwrap();
    fs::write(
        layer.join("azaion-image.bb"),
        format!("inherit image\ninherit imprint\n{recipe_lines}"),
    )
    .unwrap();
    layer
}

/// A stand-in for OE-core's meta/classes-recipe/image.bbclass with what
/// imprint.bbclass relies on: every image recipe inherits the classes of
/// IMAGE_CLASSES (oe-core image.bbclass, line 14: `IMGCLASSES =
/// "rootfs_${IMAGE_PKGTYPE} image_types ${IMAGE_CLASSES}"`, line 24:
/// `inherit ${IMGCLASSES}`, at 10cbde44), and do_image_complete comes
/// before do_build. Here the images are put in DEPLOY_DIR_IMAGE by the
/// test; do_image_complete notes that it ran.
const IMAGE_BBCLASS: &str = "IMAGE_CLASSES ??= \"\"\n\
    IMGCLASSES = \"${IMAGE_CLASSES}\"\n\
    inherit ${IMGCLASSES}\n\
    do_image_complete() {\n    echo \"${PN} image complete\" > ${T}/image_complete\n}\n\
    addtask image_complete before do_build\n";

fn bitbake(pythonpath: &Path, layer: &Path, run_task: bool) -> std::process::Output {
    let mut c = shell(Path::new("python3"));
    c.arg(standin_dir("bitbake/parse.py"))
        .arg(layer)
        .arg(layer.join("azaion-image.bb"))
        .env("PYTHONPATH", pythonpath);
    if run_task {
        c.arg("run");
    }
    run(&mut c)
}

/// A tegraflash package as meta-tegra's create_tegraflash_pkg leaves it:
/// the flash scripts and layout, and the rootfs image under
/// IMAGE_BASENAME.IMAGE_TEGRAFLASH_FS_TYPE, packed with tar.
fn tegraflash_package(d: &Path, image: &Path, fs_type: &str, out: &Path, compress: &str) {
    let pkg = d.join("pkg");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(
        pkg.join("doflash.sh"),
        "#!/bin/sh\n./tegra-flash-helper.sh flash.xml.in\n",
    )
    .unwrap();
    fs::write(
        pkg.join("flash.xml.in"),
        "<partition name=\"APP\"><filename>APPFILE</filename></partition>\n",
    )
    .unwrap();
    fs::copy(image, pkg.join(format!("azaion-image.{fs_type}"))).unwrap();
    sh(&format!(
        "tar --sparse --numeric-owner --transform='s,^\\./,,' -C {} -cf - . | {compress} > {}",
        pkg.display(),
        out.display()
    ));
    fs::remove_dir_all(&pkg).unwrap();
}

/// The class, parsed and run by BitBake itself (bb.parse, bb.build): the
/// task comes after do_image_complete with network access, reruns when
/// the serials file changes, exports nothing; run, it stamps every image
/// type with one password per serial through --api-token-file (the token
/// appears in no run script), and swaps each serial's image into a copy of
/// the tegraflash package under the name the package's flash layout
/// reads. On scarthgap (ext4, tegraflash.tar.gz) and master for non-T234
/// (ext4.simg, tegraflash-tar.zst); a missing image type is fatal.
#[test]
fn yocto_class_runs_in_bitbake() {
    let pythonpath = bitbake_pythonpath();
    require_installed(
        pythonpath.is_some(),
        "BitBake's bb package in target/bitbake-py",
        "python3 -m pip install --target target/bitbake-py bitbake-setup==2.19.0",
    );
    let pythonpath = pythonpath.unwrap();
    for (fs_type, fstypes, pkg_type, compress) in [
        ("ext4", "ext4 tegraflash", "tegraflash.tar.gz", "gzip -n"),
        (
            "ext4.simg",
            "ext4 ext4.simg tegraflash-tar.zst",
            "tegraflash-tar.zst",
            "zstd -q",
        ),
    ] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let server = StubServer::start().unwrap();
        let token = "tok-3f9a1c";
        server.require_token(Some(token.into()));
        fs::write(d.join("token"), format!("{token}\n")).unwrap();
        let layer = bitbake_layer(
            d,
            &format!(
                "IMAGE_FSTYPES = \"{fstypes}\"\n\
                 IMAGE_TEGRAFLASH_FS_TYPE = \"{fs_type}\"\n\
                 IMPRINT_SERIALS = \"{serials}\"\n\
                 IMPRINT_API_URL = \"{url}\"\n\
                 IMPRINT_API_TOKEN_FILE = \"{token_file}\"\n",
                serials = serials_file(d).display(),
                url = server.url(),
                token_file = d.join("token").display()
            ),
        );
        let o = bitbake(&pythonpath, &layer, false);
        assert!(o.status.success(), "{}", stderr(&o));
        let parsed: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(
            parsed["imprint_deps"],
            serde_json::json!(["do_image_complete"])
        );
        assert!(parsed["build_deps"]
            .as_array()
            .unwrap()
            .contains(&"do_imprint".into()));
        assert_eq!(parsed["network"], "1");
        assert_eq!(
            parsed["file_checksums"].as_str().unwrap().trim(),
            format!("{}:True", serials_file(d).display())
        );
        assert_eq!(parsed["exported"], serde_json::json!([]));
        assert_eq!(parsed["image_types"], fs_type, "the type meta-tegra packs");
        assert_eq!(parsed["tegraflash_pkg"], pkg_type);
        let script = parsed["imprint_images"].as_str().unwrap();
        assert!(!script.contains("20260101000000"), "no DATETIME: {script}");
        assert_eq!(script.matches("imprint provision").count(), 1);

        // The deploy directory do_image_complete leaves.
        let deploy = layer.join("deploy");
        fs::create_dir_all(&deploy).unwrap();
        let link = "azaion-image-jetson-orin-nano-devkit";
        let ext4 = small_ext4(&deploy, &format!("{link}.ext4"));
        let simg = deploy.join(format!("{link}.ext4.simg"));
        imprint::image::sparse::encode_raw(
            &fs::File::open(&ext4).unwrap(),
            4096,
            &mut fs::File::create(&simg).unwrap(),
        )
        .unwrap();
        let fs_image = deploy.join(format!("{link}.{fs_type}"));
        tegraflash_package(
            d,
            &fs_image,
            fs_type,
            &deploy.join(format!("{link}.{pkg_type}")),
            compress,
        );

        // Stamp ext4 and ext4.simg in one go: one password per serial.
        let both = fs::read_to_string(layer.join("azaion-image.bb")).unwrap()
            + "IMPRINT_IMAGE_TYPES = \"ext4 ext4.simg\"\n";
        fs::write(layer.join("azaion-image.bb"), both).unwrap();
        let o = bitbake(&pythonpath, &layer, true);
        assert!(
            o.status.success(),
            "{fs_type}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        let out = layer.join(format!("imprint/{link}"));
        for s in ["AZJN-0101", "AZJN-0102"] {
            for t in ["ext4", "ext4.simg"] {
                logs_in(&out.join(format!("{s}-{link}.{t}")), s, &server);
            }
            // The per-serial package: the stamped image in place of the
            // rootfs, every other file as it was.
            let x = d.join(format!("pkg-{s}"));
            fs::create_dir_all(&x).unwrap();
            sh(&format!(
                "tar -xf {} -C {}",
                out.join(format!("{s}-{link}.tegraflash.tar")).display(),
                x.display()
            ));
            assert_eq!(
                sha256(&x.join(format!("azaion-image.{fs_type}"))),
                sha256(&out.join(format!("{s}-{link}.{fs_type}"))),
                "{fs_type}: {s}"
            );
            assert!(x.join("doflash.sh").is_file() && x.join("flash.xml.in").is_file());
            // The stamped image in it is 0600, and so is the package.
            let pack = out.join(format!("{s}-{link}.tegraflash.tar"));
            let listing = stdout(&sh(&format!("tar -tvf {}", pack.display())));
            let entry = listing
                .lines()
                .find(|l| l.ends_with(&format!("azaion-image.{fs_type}")))
                .unwrap();
            assert!(entry.starts_with("-rw------- "), "{fs_type}: {entry}");
            let mode = stdout(&sh(&format!("stat -c %a {}", pack.display())));
            assert_eq!(mode.trim(), "600", "{fs_type}");
        }
        // No per-serial copy is left beside the outputs.
        let left: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tegraflash"))
            .collect();
        assert!(left.is_empty(), "{fs_type}: {left:?}");
        // A package that cannot be written (here: a directory in its
        // place) fails the task and still leaves no copy behind.
        let blocked = out.join(format!("AZJN-0101-{link}.tegraflash.tar"));
        fs::remove_file(&blocked).unwrap();
        fs::create_dir_all(blocked.join("x")).unwrap();
        let o = bitbake(&pythonpath, &layer, true);
        assert!(!o.status.success(), "{fs_type}: {}", stdout(&o));
        let left: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tegraflash"))
            .collect();
        assert!(left.is_empty(), "{fs_type}: {left:?}");
        fs::remove_dir_all(&blocked).unwrap();
        let temp = layer.join("tmp/work/azaion-image/temp");
        for f in fs::read_dir(&temp).unwrap() {
            let text = fs::read_to_string(f.unwrap().path()).unwrap();
            assert!(!text.contains(token), "the token is in a run script");
        }

        // A type that was not built is fatal, not skipped.
        fs::remove_file(&simg).unwrap();
        let o = bitbake(&pythonpath, &layer, true);
        assert!(!o.status.success());
        assert!(
            stdout(&o).contains(&format!("{link}.ext4.simg does not exist")),
            "{}",
            stdout(&o)
        );
    }
}

/// A build directory and a layer as a user has them, built by
/// tests/standins/bitbake/build.py (BitBake's cooker parsing and task
/// runner): conf/bblayers.conf, conf/local.conf with `local_conf`, the
/// class in the layer's classes/, the image.bbclass stand-in, and three
/// recipes: the image to stamp, meta-tegra's initramfs image (an image
/// recipe too, inherits core-image, cpio only) and busybox (no image).
fn bitbake_build_dir(d: &Path, local_conf: &str, busybox_lines: &str) -> PathBuf {
    let build = d.join("build");
    let layer = d.join("meta-azaion");
    for dir in [
        build.join("conf"),
        layer.join("conf"),
        layer.join("classes"),
        layer.join("classes-global"),
        layer.join("classes-recipe"),
        layer.join("recipes"),
    ] {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(
        build.join("conf/bblayers.conf"),
        format!(
            "BBPATH = \"${{TOPDIR}}\"\nBBFILES ?= \"\"\nBBLAYERS = \"{}\"\n",
            layer.display()
        ),
    )
    .unwrap();
    fs::write(build.join("conf/local.conf"), local_conf).unwrap();
    fs::write(
        layer.join("conf/layer.conf"),
        "BBPATH .= \":${LAYERDIR}\"\n\
         BBFILES += \"${LAYERDIR}/recipes/*.bb\"\n\
         BBFILE_COLLECTIONS += \"azaion\"\n\
         BBFILE_PATTERN_azaion = \"^${LAYERDIR}/\"\n\
         LAYERSERIES_CORENAMES = \"scarthgap\"\n\
         LAYERSERIES_COMPAT_azaion = \"scarthgap\"\n",
    )
    .unwrap();
    // OE-core's conf/bitbake.conf, reduced to the variables the class
    // uses; it ends with `include conf/local.conf` as OE-core's does.
    // Tasks run with the PATH it exports (OE's has HOSTTOOLS_DIR, where
    // `HOSTTOOLS += "imprint"` links imprint): here the test's, which
    // starts with the built imprint's directory.
    fs::write(
        layer.join("conf/bitbake.conf"),
        format!(
            "PN = \"${{@bb.parse.vars_from_file(d.getVar('FILE', False), d)[0]}}\"\n\
         TMPDIR = \"${{TOPDIR}}/tmp\"\n\
         WORKDIR = \"${{TMPDIR}}/work/${{PN}}\"\n\
         T = \"${{WORKDIR}}/temp\"\n\
         B = \"${{WORKDIR}}/build\"\n\
         STAMP = \"${{TMPDIR}}/stamps/${{PN}}\"\n\
         DEPLOY_DIR_IMAGE = \"${{TOPDIR}}/deploy\"\n\
         MACHINE = \"jetson-orin-nano-devkit\"\n\
         IMAGE_BASENAME = \"${{PN}}\"\n\
         IMAGE_LINK_NAME = \"${{IMAGE_BASENAME}}-${{MACHINE}}\"\n\
         export PATH = \"{path}\"\n\
         include conf/local.conf\n",
            path = task_path()
        ),
    )
    .unwrap();
    fs::write(
        layer.join("classes-global/base.bbclass"),
        "bbnote() {\n    echo \"NOTE: $*\"\n}\nbbfatal() {\n    echo \"ERROR: $*\"\n    exit 1\n}\n\
         do_build[noexec] = \"1\"\naddtask build\n",
    )
    .unwrap();
    fs::write(layer.join("classes-recipe/image.bbclass"), IMAGE_BBCLASS).unwrap();
    fs::copy(
        recipe("yocto/imprint.bbclass"),
        layer.join("classes/imprint.bbclass"),
    )
    .unwrap();
    fs::write(
        layer.join("recipes/azaion-image.bb"),
        "IMAGE_FSTYPES = \"ext4\"\ninherit image\n",
    )
    .unwrap();
    fs::write(
        layer.join("recipes/tegra-minimal-initramfs.bb"),
        "IMAGE_FSTYPES = \"cpio.gz\"\ninherit image\n",
    )
    .unwrap();
    fs::write(
        layer.join("recipes/busybox.bb"),
        format!(
            "do_compile() {{\n    mkdir -p ${{B}}\n    echo busybox > ${{B}}/busybox\n}}\n\
             addtask compile before do_build\n{busybox_lines}"
        ),
    )
    .unwrap();
    let deploy = build.join("deploy");
    fs::create_dir_all(&deploy).unwrap();
    small_ext4(&deploy, "azaion-image-jetson-orin-nano-devkit.ext4");
    fs::write(
        deploy.join("tegra-minimal-initramfs-jetson-orin-nano-devkit.cpio.gz"),
        "initramfs",
    )
    .unwrap();
    build
}

fn bitbake_build(pythonpath: &Path, build: &Path, targets: &[&str]) -> std::process::Output {
    let mut c = shell(Path::new("python3"));
    c.arg(standin_dir("bitbake/build.py"))
        .arg(build)
        .args(targets)
        .env("PYTHONPATH", pythonpath);
    run(&mut c)
}

/// The tasks `build.py` says a recipe has.
fn tasks_of(out: &str, pn: &str) -> Vec<String> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("TASKS {pn}:")))
        .unwrap_or_else(|| panic!("no tasks for {pn} in\n{out}"));
    line.split_whitespace().skip(2).map(String::from).collect()
}

/// The forms users write in local.conf, built with BitBake's cooker
/// parsing and task runner in one run with a non-image recipe:
/// `IMAGE_CLASSES += "imprint"` (OE-core's image.bbclass inherits it in
/// every image recipe) with IMPRINT_IMAGES naming the image to stamp, and
/// a global `INHERIT += "imprint"`. The image is stamped for every serial;
/// busybox and the initramfs image are built with the tasks they have
/// without the class, and nothing of theirs is stamped. A non-image recipe
/// that inherits the class itself is refused at parse time, naming it.
#[test]
fn yocto_local_conf_forms_stamp_images_only() {
    let Some(pythonpath) = bitbake_pythonpath() else {
        require(
            false,
            "BitBake's bb package in target/bitbake-py (pip install --target target/bitbake-py bitbake-setup==2.19.0, as .ci/run does)",
        );
        return;
    };
    let link = "azaion-image-jetson-orin-nano-devkit";
    for form in ["IMAGE_CLASSES += \"imprint\"", "INHERIT += \"imprint\""] {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let server = StubServer::start().unwrap();
        let token = "tok-77e2d0";
        server.require_token(Some(token.into()));
        fs::write(d.join("token"), format!("{token}\n")).unwrap();
        let local_conf = format!(
            "{form}\n\
             IMPRINT_IMAGES = \"azaion-image\"\n\
             IMPRINT_SERIALS = \"{serials}\"\n\
             IMPRINT_API_URL = \"{url}\"\n\
             IMPRINT_API_TOKEN_FILE = \"{token_file}\"\n",
            serials = serials_file(d).display(),
            url = server.url(),
            token_file = d.join("token").display()
        );
        let build = bitbake_build_dir(d, &local_conf, "");
        let o = bitbake_build(
            &pythonpath,
            &build,
            &["azaion-image", "tegra-minimal-initramfs", "busybox"],
        );
        let out = stdout(&o);
        assert!(o.status.success(), "{form}: {out}\n{}", stderr(&o));
        assert_eq!(
            tasks_of(&out, "azaion-image"),
            ["do_build", "do_image_complete", "do_imprint"],
            "{form}"
        );
        assert!(
            out.contains("NOTE: azaion-image:do_imprint Succeeded"),
            "{out}"
        );
        for s in ["AZJN-0101", "AZJN-0102"] {
            logs_in(
                &build.join(format!("imprint/{link}/{s}-{link}.ext4")),
                s,
                &server,
            );
        }
        // Untouched: the tasks they have without the class, built, and
        // no output of imprint for them.
        assert_eq!(
            tasks_of(&out, "busybox"),
            ["do_build", "do_compile"],
            "{form}"
        );
        assert_eq!(
            tasks_of(&out, "tegra-minimal-initramfs"),
            ["do_build", "do_image_complete"],
            "{form}"
        );
        assert!(out.contains("NOTE: busybox:do_compile Succeeded"), "{out}");
        assert!(out.contains("NOTE: tegra-minimal-initramfs:do_image_complete Succeeded"));
        assert_eq!(
            fs::read_to_string(build.join("tmp/work/busybox/build/busybox")).unwrap(),
            "busybox\n"
        );
        let outputs: Vec<_> = fs::read_dir(build.join("imprint"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outputs, [link], "{form}");
        assert_eq!(server.user_count(), 2);
    }

    // `inherit imprint` in a recipe that is no image: refused, by name.
    let dir = TempDir::new().unwrap();
    let build = bitbake_build_dir(dir.path(), "IMPRINT_SERIALS = \"\"\n", "inherit imprint\n");
    let o = bitbake_build(&pythonpath, &build, &["busybox"]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("imprint: busybox is not an image recipe") && out.contains("IMAGE_CLASSES"),
        "{out}"
    );
    assert!(!out.contains("do_compile Succeeded"), "{out}");
}

// ---- CI recipes, run step by step ------------------------------------------

/// What a CI run here gets: the stub API, the base image served at a
/// file:// URL with its digest, a serials file, and a directory standing
/// for the CI's artifact store.
struct CiRun {
    dir: TempDir,
    server: StubServer,
    base: PathBuf,
    base_sha256: String,
    /// `github.run_id`: one per workflow run (all jobs of a run share it).
    run_id: std::cell::Cell<u32>,
    /// The `rotate` input (GitHub) or `ROTATE` pipeline variable (GitLab).
    rotate: std::cell::Cell<bool>,
}

impl CiRun {
    fn new(serials: &[String]) -> CiRun {
        let dir = TempDir::new().unwrap();
        let tree = ext4_tree(dir.path(), 0, Azaion::Absent);
        let base = dir.path().join("release/system.img");
        fs::create_dir_all(base.parent().unwrap()).unwrap();
        assert!(mkfs(&tree, &base, &["-t", "ext4"], "16M").status.success());
        let repo = dir.path().join("repo/factory");
        fs::create_dir_all(&repo).unwrap();
        fs::write(
            repo.join("serials.txt"),
            format!("# batch 17\n{}\n", serials.join("\n")),
        )
        .unwrap();
        let base_sha256 = sha256(&base);
        CiRun {
            dir,
            server: StubServer::start().unwrap(),
            base,
            base_sha256,
            run_id: std::cell::Cell::new(1),
            rotate: std::cell::Cell::new(false),
        }
    }

    /// A new release of the base: the same tree with an /etc/version.
    fn rebuild_base(&mut self, version: &str) {
        let tree = self.dir.path().join("tree");
        fs::write(tree.join("etc/version"), version).unwrap();
        assert!(mkfs(&tree, &self.base, &["-t", "ext4"], "16M")
            .status
            .success());
        self.base_sha256 = sha256(&self.base);
    }

    /// Every serial's password at the API.
    fn passwords(&self, serials: &[String]) -> Vec<String> {
        serials
            .iter()
            .map(|s| self.server.password_of(&email_of(s)).unwrap())
            .collect()
    }

    fn patches(&self) -> usize {
        let r = self.server.requests();
        r.iter().filter(|q| q.method == "PATCH").count()
    }

    /// The next workflow run.
    fn next_run(&self) {
        self.run_id.set(self.run_id.get() + 1);
    }

    /// Where the CI keeps caches (GitHub: immutable entries by key, in the
    /// order saved; GitLab: one per key, overwritten).
    fn caches(&self) -> PathBuf {
        self.dir.path().join("caches")
    }

    /// The cache entries saved so far, oldest first.
    fn cache_keys(&self) -> Vec<String> {
        fs::read_to_string(self.caches().join("index"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Copies `ws/path` into the cache under `key` (nothing when the path
    /// is absent, as the cache actions and GitLab only warn then).
    fn save_cache(&self, ws: &Path, path: &str, key: &str, immutable: bool) {
        let from = ws.join(path.trim_end_matches('/'));
        if !from.exists() {
            return;
        }
        let entry = self.caches().join(key);
        if immutable {
            assert!(!entry.exists(), "cache key {key} saved twice");
        }
        let _ = fs::remove_dir_all(&entry);
        fs::create_dir_all(&entry).unwrap();
        sh(&format!(
            "cd {} && cp -a --parents {} {}/",
            ws.display(),
            path.trim_end_matches('/'),
            entry.display()
        ));
        let mut keys = self.cache_keys();
        keys.retain(|k| k != key);
        keys.push(key.to_string());
        fs::write(self.caches().join("index"), keys.join("\n")).unwrap();
    }

    /// Restores the entry `key`, else the newest whose key starts with
    /// `prefix`, into the workspace.
    fn restore_cache(&self, ws: &Path, key: &str, prefix: Option<&str>) {
        let keys = self.cache_keys();
        let hit = keys.iter().find(|k| *k == key).or_else(|| {
            let prefix = prefix?;
            keys.iter().rev().find(|k| k.starts_with(prefix))
        });
        if let Some(hit) = hit {
            sh(&format!(
                "cp -a {}/. {}/",
                self.caches().join(hit).display(),
                ws.display()
            ));
        }
    }

    /// A fresh workspace: a checkout of the repository.
    fn workspace(&self, name: &str) -> PathBuf {
        let ws = self.dir.path().join("ws").join(name);
        fs::create_dir_all(&ws).unwrap();
        sh(&format!(
            "cp -a {}/. {}",
            self.dir.path().join("repo").display(),
            ws.display()
        ));
        ws
    }

    /// This run's artifact store.
    fn artifacts(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("artifacts/run{}", self.run_id.get()))
    }

    /// What the CI's variables and secrets hold.
    fn value(&self, expr: &str) -> String {
        match expr {
            "inputs.serials" => "factory/serials.txt".into(),
            "inputs.base_sha256" => self.base_sha256.clone(),
            "inputs.rotate" => self.rotate.get().to_string(),
            "github.run_id" => self.run_id.get().to_string(),
            "github.run_attempt" => "1".into(),
            "vars.BASE_IMAGE_URL" => format!("file://{}", self.base.display()),
            "vars.IMPRINT_API_URL" => self.server.url(),
            "secrets.IMPRINT_API_TOKEN" => "ci-token".into(),
            other => panic!("no value for ${{{{ {other} }}}}"),
        }
    }

    /// Runs a script as the CI would (bash -eo pipefail), with imprint on
    /// PATH and the install lines left out (imprint is already built).
    fn script(&self, ws: &Path, text: &str, env: &[(String, String)]) -> std::process::Output {
        let text: String = text
            .lines()
            .filter(|l| !l.contains("apt-get") && !l.contains("cargo install"))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = ws.join(".ci-step.sh");
        fs::write(&path, format!("#!/bin/bash\nset -eo pipefail\n{text}")).unwrap();
        sh(&format!("chmod +x {}", path.display()));
        let mut c = shell(&path);
        c.current_dir(ws);
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c)
    }
}

/// `${{ a.b }}` expressions replaced with their values.
fn expand(text: &str, ci: &CiRun, matrix: Option<&str>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${{") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find("}}").unwrap() + at;
        let expr = rest[at + 3..end].trim();
        out.push_str(&match expr {
            "matrix.shard" => matrix.unwrap().to_string(),
            e => ci.value(e),
        });
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn yaml_env(map: &serde_yaml::Value, ci: &CiRun, matrix: Option<&str>) -> Vec<(String, String)> {
    map.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = match v {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_string(),
            };
            (k.as_str().unwrap().to_string(), expand(&v, ci, matrix))
        })
        .collect()
}

/// Runs one GitHub Actions job (one matrix entry) step by step; `uses:`
/// steps for checkout and artifacts act on the workspace and the store.
fn github_job(
    ci: &CiRun,
    workflow: &serde_yaml::Value,
    job: &str,
    matrix: Option<&str>,
) -> std::process::Output {
    let spec = &workflow["jobs"][job];
    let ws = ci.workspace(&format!(
        "{job}-{}-run{}",
        matrix.unwrap_or(""),
        ci.run_id.get()
    ));
    let mut env = yaml_env(&workflow["env"], ci, matrix);
    env.extend(yaml_env(&spec["env"], ci, matrix));
    let mut last = None;
    let mut failed = None;
    for step in spec["steps"].as_sequence().unwrap() {
        // After a failure only `if: always()` steps run; no other
        // condition is used by the recipes.
        let always = match step["if"].as_str() {
            None => false,
            Some("always()") => true,
            Some(other) => panic!("{job}: unexpected if: {other}"),
        };
        if failed.is_some() && !always {
            continue;
        }
        if let Some(script) = step["run"].as_str() {
            let mut step_env = env.clone();
            step_env.extend(yaml_env(&step["env"], ci, matrix));
            let o = ci.script(&ws, script, &step_env);
            if !o.status.success() {
                failed = Some(o);
                continue;
            }
            last = Some(o);
            continue;
        }
        let uses = step["uses"].as_str().unwrap();
        let with = yaml_env(&step["with"], ci, matrix);
        let get = |k: &str| with.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if uses.starts_with("actions/cache/restore") {
            ci.restore_cache(&ws, &get("key").unwrap(), get("restore-keys").as_deref());
        } else if uses.starts_with("actions/cache/save") {
            ci.save_cache(&ws, &get("path").unwrap(), &get("key").unwrap(), true);
        } else if uses.starts_with("actions/upload-artifact") {
            let name = get("name").unwrap();
            let days: u32 = get("retention-days")
                .expect("retention-days")
                .parse()
                .unwrap();
            assert!(days <= 7, "{job}: artifacts kept {days} days");
            let into = ci.artifacts().join(name);
            fs::create_dir_all(&into).unwrap();
            sh(&format!(
                "cp -a {}/{} {}/",
                ws.display(),
                get("path").unwrap().trim_end_matches('/'),
                into.display()
            ));
        } else if uses.starts_with("actions/download-artifact") {
            let pattern = get("pattern").unwrap();
            assert_eq!(get("merge-multiple").as_deref(), Some("true"));
            let into = ws.join(get("path").unwrap());
            fs::create_dir_all(&into).unwrap();
            sh(&format!(
                "for a in {}/{pattern}; do cp -a \"$a\"/*/. {}/; done",
                ci.artifacts().display(),
                into.display()
            ));
        } else {
            assert!(uses.starts_with("actions/checkout"), "{job}: {uses}");
        }
    }
    failed.or(last).unwrap()
}

fn serials(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("AZJN-{:04}", 100 + i)).collect()
}

fn ci_yaml(name: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&fs::read_to_string(recipe(name)).unwrap()).unwrap()
}

/// The rules every GitHub workflow keeps: inputs only through env:, a
/// read-only token, one run at a time, a manual trigger.
fn github_rules(workflow: &serde_yaml::Value, name: &str) {
    assert_eq!(workflow["permissions"]["contents"], "read", "{name}");
    assert!(
        workflow["permissions"].as_mapping().unwrap().len() == 1,
        "{name}"
    );
    assert_eq!(
        workflow["concurrency"]["cancel-in-progress"], false,
        "{name}"
    );
    assert!(workflow["concurrency"]["group"].is_string(), "{name}");
    let on = workflow["on"].as_mapping().unwrap();
    assert_eq!(on.len(), 1, "{name}: only workflow_dispatch");
    assert!(on.contains_key("workflow_dispatch"), "{name}");
    for (job, spec) in workflow["jobs"].as_mapping().unwrap() {
        for step in spec["steps"].as_sequence().unwrap() {
            if let Some(script) = step["run"].as_str() {
                assert!(
                    !script.contains("${{"),
                    "{name} {job:?}: an expression spliced into run: {script}"
                );
            }
        }
    }
}

fn assert_images_log_in(ci: &CiRun, dir: &Path, serials: &[String]) {
    for s in serials {
        logs_in(&dir.join(format!("{s}-system.img")), s, &ci.server);
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let listed: Vec<&str> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["serial"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        serials.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(manifest["input_sha256"], ci.base_sha256.as_str());
}

/// The GitHub workflow, run step by step: the base image is checked, every
/// serial gets an image that logs in, the artifact is kept a day; a base
/// with another digest stops the job before any API call.
#[test]
fn ci_github_workflow_runs() {
    let workflow = ci_yaml("ci/github-actions.yml");
    github_rules(&workflow, "github-actions.yml");
    let list = serials(3);
    let mut ci = CiRun::new(&list);
    let o = github_job(&ci, &workflow, "images", None);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_images_log_in(&ci, &ci.artifacts().join("per-serial-images/out"), &list);
    let first = ci.passwords(&list);

    // Reruns on fresh runners keep every password (no PATCH): of the same
    // base (nothing rebuilt), and of a new base (rebuilt, passwords kept).
    for version in [None, Some("release 2\n")] {
        if let Some(v) = version {
            ci.rebuild_base(v);
        }
        ci.next_run();
        let o = github_job(&ci, &workflow, "images", None);
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        assert_eq!(ci.passwords(&list), first, "a rerun changed passwords");
        assert_eq!(ci.patches(), 0);
        assert_images_log_in(&ci, &ci.artifacts().join("per-serial-images/out"), &list);
    }
    // Rotation is asked for explicitly: every serial gets a new password.
    ci.next_run();
    ci.rotate.set(true);
    let o = github_job(&ci, &workflow, "images", None);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let rotated = ci.passwords(&list);
    assert!(rotated.iter().zip(&first).all(|(a, b)| a != b));
    assert_images_log_in(&ci, &ci.artifacts().join("per-serial-images/out"), &list);
    ci.rotate.set(false);

    // A base that already holds a device's credentials stops the job
    // before any API call.
    let calls = ci.server.requests().len();
    let pw = write_password(ci.dir.path(), PASSWORD);
    let stamped = ci.dir.path().join("stamped.img");
    let o = run(&mut provision_offline(&ci.base, &stamped, "azaion", &pw));
    assert!(o.status.success(), "{}", stderr(&o));
    fs::copy(&stamped, &ci.base).unwrap();
    ci.base_sha256 = sha256(&ci.base);
    ci.next_run();
    let o = github_job(&ci, &workflow, "images", None);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("NOT CLEAN"), "{}", stdout(&o));
    assert_eq!(ci.server.requests().len(), calls);
    assert_eq!(ci.passwords(&list), rotated);

    let mut bad = CiRun::new(&list);
    bad.base_sha256 = "0".repeat(64);
    let o = github_job(&bad, &workflow, "images", None);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("system.img: FAILED"), "{}", stdout(&o));
    assert_eq!(bad.server.requests().len(), 0);
}

/// The sharded GitHub workflow: each matrix job provisions its part of the
/// serials, and the manifest job merges the parts into one manifest that
/// lists every serial once.
#[test]
fn ci_github_sharded_workflow_runs_and_merges() {
    let workflow = ci_yaml("ci/github-actions-sharded.yml");
    github_rules(&workflow, "github-actions-sharded.yml");
    let shards = workflow["jobs"]["images"]["strategy"]["matrix"]["shard"]
        .as_sequence()
        .unwrap()
        .clone();
    assert_eq!(
        workflow["env"]["SHARDS"].as_str().unwrap(),
        shards.len().to_string(),
        "SHARDS matches the matrix"
    );
    let list = serials(10);
    let ci = CiRun::new(&list);
    for shard in &shards {
        let shard = shard.as_u64().unwrap().to_string();
        let o = github_job(&ci, &workflow, "images", Some(&shard));
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    }
    let o = github_job(&ci, &workflow, "manifest", None);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("10 images from 4 manifests"),
        "{}",
        stdout(&o)
    );
    let merged = ci.artifacts().join("per-serial-manifest/manifest.json");
    let out = ci.dir.path().join("ws/manifest--run1/out");
    assert_eq!(
        fs::read_to_string(&merged).unwrap(),
        fs::read_to_string(out.join("manifest.json")).unwrap()
    );
    assert_images_log_in(&ci, &out, &list);

    // A rerun: every shard's outputs come back from its cache; no
    // password changes, and the merge lists every serial again.
    let first = ci.passwords(&list);
    ci.next_run();
    for shard in &shards {
        let shard = shard.as_u64().unwrap().to_string();
        let o = github_job(&ci, &workflow, "images", Some(&shard));
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    }
    let o = github_job(&ci, &workflow, "manifest", None);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(ci.passwords(&list), first);
    assert_eq!(ci.patches(), 0);
    assert_images_log_in(&ci, &ci.dir.path().join("ws/manifest--run2/out"), &list);
}

/// One GitLab job, `parallel` runs of it if it has them, with the hidden
/// job it extends merged in; `needs` brings the artifacts of the jobs it
/// needs into its workspace.
fn gitlab_job(ci: &CiRun, file: &serde_yaml::Value, job: &str) -> Vec<std::process::Output> {
    let mut spec = file[job].as_mapping().unwrap().clone();
    if let Some(parent) = spec.get("extends").and_then(|e| e.as_str()) {
        for (k, v) in file[parent].as_mapping().unwrap() {
            if !spec.contains_key(k) {
                spec.insert(k.clone(), v.clone());
            }
        }
    }
    let spec = serde_yaml::Value::Mapping(spec);
    let total = spec["parallel"].as_u64().unwrap_or(1);
    let mut outputs = Vec::new();
    for index in 1..=total {
        let ws = ci.workspace(&format!("{job}-{index}-run{}", ci.run_id.get()));
        let cache = &spec["cache"];
        let cache_key = cache["key"]
            .as_str()
            .map(|k| k.replace("$CI_NODE_INDEX", &index.to_string()));
        if let Some(key) = &cache_key {
            ci.restore_cache(&ws, key, None);
        }
        for need in spec["needs"].as_sequence().into_iter().flatten() {
            // imprint-build's artifact is not made here: the test's
            // imprint is on PATH already.
            sh(&format!(
                "for a in {}/{}-*; do if [ -e \"$a\" ]; then cp -a \"$a\"/. {}/; fi; done",
                ci.artifacts().display(),
                need.as_str().unwrap(),
                ws.display()
            ));
        }
        let mut env = yaml_env(&spec["variables"], ci, None);
        env.extend([
            ("BASE_IMAGE_URL".into(), ci.value("vars.BASE_IMAGE_URL")),
            ("BASE_SHA256".into(), ci.base_sha256.clone()),
            ("IMPRINT_API_URL".into(), ci.value("vars.IMPRINT_API_URL")),
            ("CI_NODE_INDEX".into(), index.to_string()),
            ("CI_NODE_TOTAL".into(), total.to_string()),
        ]);
        // The token's environment scope: only jobs of that environment.
        if spec["environment"]["name"].as_str() == Some("factory") {
            env.push(("IMPRINT_API_TOKEN".into(), "ci-token".into()));
        }
        // A pipeline variable overrides the job's.
        if ci.rotate.get() {
            env.push(("ROTATE".into(), "true".into()));
        }
        let lines: Vec<&str> = ["before_script", "script"]
            .iter()
            .flat_map(|k| spec[*k].as_sequence().into_iter().flatten())
            .map(|l| l.as_str().unwrap())
            .collect();
        let o = ci.script(&ws, &lines.join("\n"), &env);
        if let Some(key) = &cache_key {
            if o.status.success() || cache["when"].as_str() == Some("always") {
                for path in cache["paths"].as_sequence().unwrap() {
                    ci.save_cache(&ws, path.as_str().unwrap(), key, false);
                }
            }
        }
        if o.status.success() {
            let into = ci.artifacts().join(format!("{job}-{index}"));
            fs::create_dir_all(&into).unwrap();
            for path in spec["artifacts"]["paths"].as_sequence().unwrap() {
                sh(&format!(
                    "cd {} && cp -a --parents {} {}/",
                    ws.display(),
                    path.as_str().unwrap().trim_end_matches('/'),
                    into.display()
                ));
            }
        }
        outputs.push(o);
    }
    outputs
}

/// The GitLab jobs: never on a push, a manual start, one run at a time,
/// artifacts kept a day for developers only; run for real, one batch and
/// the sharded jobs with their merge.
#[test]
fn ci_gitlab_jobs_run() {
    let file = ci_yaml("ci/gitlab-ci.yml");
    let base = &file[".per-serial"];
    let rule = &base["rules"][0];
    assert_eq!(rule["when"], "manual");
    let condition = rule["if"].as_str().unwrap();
    assert!(
        condition.contains("\"web\"") && !condition.contains("push"),
        "{condition}"
    );
    assert!(base["resource_group"].is_string());
    for job in [
        "per-serial-images",
        "per-serial-images-sharded",
        "per-serial-manifest",
    ] {
        let artifacts = &file[job]["artifacts"];
        assert_eq!(artifacts["expire_in"], "1 day", "{job}");
        assert_eq!(artifacts["access"], "developer", "{job}");
        let rules = if file[job]["rules"].is_null() {
            &base["rules"]
        } else {
            &file[job]["rules"]
        };
        assert!(!rules[0]["if"].as_str().unwrap().contains("push"), "{job}");
    }

    // One batch: run, rerun (same base, then a new one), then ROTATE.
    let list = serials(5);
    let mut ci = CiRun::new(&list);
    let mut first = None;
    for version in [None, None, Some("release 2\n")] {
        if let Some(v) = version {
            ci.rebuild_base(v);
        }
        for o in gitlab_job(&ci, &file, "per-serial-images") {
            assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        }
        assert_images_log_in(&ci, &ci.artifacts().join("per-serial-images-1/out"), &list);
        let now = ci.passwords(&list);
        assert_eq!(first.get_or_insert_with(|| now.clone()), &now);
        assert_eq!(ci.patches(), 0);
        ci.next_run();
    }
    ci.rotate.set(true);
    for o in gitlab_job(&ci, &file, "per-serial-images") {
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    }
    assert_images_log_in(&ci, &ci.artifacts().join("per-serial-images-1/out"), &list);
    let first = first.unwrap();
    assert!(ci.passwords(&list).iter().zip(&first).all(|(a, b)| a != b));

    // Sharded: run and rerun, each merged; no password changes.
    let list = serials(9);
    let ci = CiRun::new(&list);
    let mut first = None;
    for _ in 0..2 {
        for o in gitlab_job(&ci, &file, "per-serial-images-sharded") {
            assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        }
        for o in gitlab_job(&ci, &file, "per-serial-manifest") {
            assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
        }
        let ws = format!("ws/per-serial-manifest-1-run{}/out", ci.run_id.get());
        assert_images_log_in(&ci, &ci.dir.path().join(ws), &list);
        let now = ci.passwords(&list);
        assert_eq!(first.get_or_insert_with(|| now.clone()), &now);
        assert_eq!(ci.patches(), 0);
        ci.next_run();
    }
}

/// The API token reaches only the steps that provision: on GitLab it is
/// scoped to the `factory` environment, and no job of that environment
/// builds anything (cargo's build scripts run in imprint-build, without
/// it), nor does the merge job have it; on GitHub it is in the provision
/// step's env alone. GitHub installs a pinned imprint release, never the
/// moving default branch.
#[test]
fn ci_recipes_scope_the_token_and_pin_imprint() {
    let gitlab = ci_yaml("ci/gitlab-ci.yml");
    let jobs = gitlab.as_mapping().unwrap();
    let merged = |job: &serde_yaml::Value| -> serde_yaml::Mapping {
        let mut spec = job.as_mapping().unwrap().clone();
        if let Some(parent) = job["extends"].as_str() {
            for (k, v) in gitlab[parent].as_mapping().unwrap() {
                if !spec.contains_key(k) {
                    spec.insert(k.clone(), v.clone());
                }
            }
        }
        spec
    };
    let mut with_token = Vec::new();
    for (name, job) in jobs {
        let name = name.as_str().unwrap();
        if name.starts_with('.') || !job.is_mapping() {
            continue;
        }
        let spec = serde_yaml::Value::Mapping(merged(job));
        let lines: Vec<&str> = ["before_script", "script"]
            .iter()
            .flat_map(|k| spec[*k].as_sequence().into_iter().flatten())
            .map(|l| l.as_str().unwrap())
            .collect();
        if spec["environment"]["name"].as_str() == Some("factory") {
            with_token.push(name.to_string());
            assert!(
                !lines.iter().any(|l| l.contains("cargo")),
                "{name}: builds with the token present: {lines:?}"
            );
            assert!(
                spec["needs"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|n| n == "imprint-build"),
                "{name}"
            );
        } else {
            assert!(spec["environment"].is_null(), "{name}");
        }
        let text = serde_yaml::to_string(&spec).unwrap();
        assert!(
            !text.contains("IMPRINT_API_TOKEN"),
            "{name}: names the token itself"
        );
    }
    with_token.sort();
    assert_eq!(
        with_token,
        ["per-serial-images", "per-serial-images-sharded"]
    );
    assert!(gitlab["imprint-build"]["script"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|l| l
            .as_str()
            .unwrap()
            .contains("cargo install --locked --path .")));
    let manifest = &gitlab["per-serial-manifest"];
    assert!(manifest["environment"].is_null() && manifest["before_script"].is_null());

    let version = env!("CARGO_PKG_VERSION");
    for file in ["ci/github-actions.yml", "ci/github-actions-sharded.yml"] {
        let workflow = ci_yaml(file);
        let text = fs::read_to_string(recipe(file)).unwrap();
        assert!(
            text.contains(&format!("IMPRINT_TAG: v{version}")),
            "{file}: pins imprint {version}"
        );
        for (job, spec) in workflow["jobs"].as_mapping().unwrap() {
            for step in spec["steps"].as_sequence().unwrap() {
                let run = step["run"].as_str().unwrap_or_default();
                for line in run.lines().filter(|l| l.contains("cargo install")) {
                    assert!(
                        line.contains("--locked") && line.contains("--tag \"$IMPRINT_TAG\""),
                        "{file} {job:?}: unpinned: {line}"
                    );
                }
                let has_token = serde_yaml::to_string(&step["env"])
                    .unwrap()
                    .contains("IMPRINT_API_TOKEN");
                assert_eq!(
                    has_token,
                    step["name"] == "provision",
                    "{file} {job:?}: the token only in the provision step"
                );
            }
            assert!(
                !serde_yaml::to_string(&spec["env"])
                    .unwrap()
                    .contains("IMPRINT_API_TOKEN"),
                "{file} {job:?}"
            );
        }
        assert!(!serde_yaml::to_string(&workflow["env"])
            .unwrap()
            .contains("IMPRINT_API_TOKEN"));
    }
}

/// Every imprint flag the recipes use exists.
#[test]
fn ci_recipes_parse_and_use_real_flags() {
    let github: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(recipe("ci/github-actions.yml")).unwrap())
            .unwrap();
    let steps = github["jobs"]["images"]["steps"]
        .as_sequence()
        .expect("jobs.images.steps");
    assert!(steps.iter().any(|s| s["run"]
        .as_str()
        .is_some_and(|r| r.contains("imprint provision"))));
    assert!(steps.iter().any(|s| s["uses"]
        .as_str()
        .is_some_and(|u| u.starts_with("actions/upload-artifact"))));
    let gitlab: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(recipe("ci/gitlab-ci.yml")).unwrap()).unwrap();
    let job = &gitlab["per-serial-images"];
    assert!(job["script"].as_sequence().unwrap().len() >= 3);
    assert!(job["artifacts"]["paths"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p.as_str() == Some("out/manifest.json")));

    let help = |sub: &str| stdout(&run(bin().args([sub, "--help"])));
    let (provision_help, verify_help) = (help("provision"), help("verify"));
    let mut checked = 0;
    for file in [
        "ci/github-actions.yml",
        "ci/github-actions-sharded.yml",
        "ci/gitlab-ci.yml",
        "buildroot/post-image.sh",
        "yocto/imprint.bbclass",
        "l4t/station.sh",
        "l4t/initrd-station.sh",
        "l4t/sample-rootfs.sh",
        "l4t/ota-package.sh",
    ] {
        let text = fs::read_to_string(recipe(file))
            .unwrap()
            .replace("\\\n", " ");
        for line in text.lines() {
            for (sub, help) in [
                ("imprint provision", &provision_help),
                ("imprint verify", &verify_help),
            ] {
                let Some(at) = line.find(sub) else { continue };
                for flag in line[at..]
                    .split_whitespace()
                    .filter(|w| w.starts_with("--"))
                {
                    let flag = flag.trim_end_matches(['"', ';', ')', '`']);
                    assert!(help.contains(flag), "{file}: `{sub}` has no flag {flag}");
                    checked += 1;
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} flags found: is the scan broken?"
    );
}
