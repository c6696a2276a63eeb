//! Batches: many serials from one base image, a manifest, failures that do
//! not stop the others, and --skip-existing.

use crate::common;

use std::fs;
use std::path::Path;

use common::*;
use imprint::stub::StubServer;
use serde_json::Value;
use tempfile::TempDir;

fn batch(server: &StubServer, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    run(bin()
        .args([
            "provision",
            "--owner",
            "azaion",
            "--api-url",
            &server.url(),
            "--image",
        ])
        .arg(input)
        .arg("--output")
        .arg(out)
        .args(extra))
}

fn setup() -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    let root = make_rootfs(dir.path(), "rootfs");
    let input = dir.path().join("base.tar.gz");
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(
        dir.path().join("serials.txt"),
        "# station 3, shift 1\nAZJN-0001\nAZJN-0002  # spare\n\nAZJN-0003\n",
    )
    .unwrap();
    (dir, input, out)
}

fn manifest(out: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_batch_writes_every_image_and_a_complete_manifest() {
    let (dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    let serials_file = dir.path().join("serials.txt");
    let o = batch(
        &server,
        &input,
        &out,
        &[
            "--serials",
            serials_file.to_str().unwrap(),
            "--serial",
            "AZJN-0004",
            "--serial",
            "AZJN-0005",
        ],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("5 of 5 written, 0 skipped, 0 failed"),
        "{}",
        stdout(&o)
    );

    let m = manifest(&out);
    assert_eq!(m["input"], "base.tar.gz");
    assert_eq!(m["input_sha256"], sha256(&input));
    assert!(m["tool"].as_str().unwrap().starts_with("imprint "));
    let images = m["images"].as_array().unwrap();
    assert_eq!(images.len(), 5);
    let manifest_text = fs::read_to_string(out.join("manifest.json")).unwrap();
    for (i, entry) in images.iter().enumerate() {
        let serial = format!("AZJN-000{}", i + 1);
        assert_eq!(entry["serial"], serial.as_str());
        let email = format!("azaion-jetson-000{}@azaion.com", i + 1);
        assert_eq!(entry["email"], email.as_str());
        let file = out.join(entry["output"].as_str().unwrap());
        assert_eq!(file, out.join(format!("{serial}-base.tar.gz")));
        assert_eq!(entry["sha256"], sha256(&file));
        assert_eq!(entry["size"], fs::metadata(&file).unwrap().len());
        let password = server.password_of(&email).unwrap();
        assert!(!manifest_text.contains(&password));
        assert!(!stdout(&o).contains(&password) && !stderr(&o).contains(&password));
        let v = run(bin().arg("verify").arg(&file).args([
            "--serial",
            &serial,
            "--owner",
            "azaion",
            "--login-url",
            &server.url(),
        ]));
        assert!(v.status.success(), "{serial}: {}", stdout(&v));
    }
}

#[test]
fn a_failing_serial_does_not_stop_the_others() {
    let (dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    // The middle serial's output already exists (and is not ours).
    fs::write(out.join("AZJN-0002-base.tar.gz"), "something else").unwrap();
    let serials_file = dir.path().join("serials.txt");
    let o = batch(
        &server,
        &input,
        &out,
        &["--serials", serials_file.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(
        text.contains("AZJN-0002: FAILED") && text.contains("--force"),
        "{text}"
    );
    assert!(
        text.contains("2 of 3 written, 0 skipped, 1 failed"),
        "{text}"
    );
    assert_eq!(
        fs::read(out.join("AZJN-0002-base.tar.gz")).unwrap(),
        b"something else"
    );
    let serials: Vec<String> = manifest(&out)["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["serial"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(serials, ["AZJN-0001", "AZJN-0003"]);
    assert!(
        server
            .password_of("azaion-jetson-0002@azaion.com")
            .is_none(),
        "no account for a failed image"
    );
    let hidden: Vec<String> = listing(&out)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temp files left: {hidden:?}");
}

#[test]
fn skip_existing_skips_verified_outputs_and_keeps_the_manifest() {
    let (dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    let serials_file = dir.path().join("serials.txt");
    let args = [
        "--serials",
        serials_file.to_str().unwrap(),
        "--skip-existing",
    ];
    assert!(batch(&server, &input, &out, &args).status.success());
    let calls = server.requests().len();
    let before = fs::read_to_string(out.join("manifest.json")).unwrap();

    // Damage one output: it no longer verifies. It is not ours to replace
    // without --force; with it, it is rebuilt.
    fs::write(out.join("AZJN-0003-base.tar.gz"), "truncated").unwrap();
    let o = batch(&server, &input, &out, &args);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("AZJN-0003: FAILED"), "{}", stdout(&o));
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = batch(&server, &input, &out, &forced);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("1 of 3 written, 2 skipped, 0 failed"),
        "{}",
        stdout(&o)
    );
    assert!(server.requests().len() > calls);
    let m = manifest(&out);
    assert_eq!(m["images"].as_array().unwrap().len(), 3);
    assert_ne!(
        fs::read_to_string(out.join("manifest.json")).unwrap(),
        before
    );

    // Everything verifies now: no API call at all.
    let calls = server.requests().len();
    let o = batch(&server, &input, &out, &args);
    assert!(
        stdout(&o).contains("0 of 3 written, 3 skipped"),
        "{}",
        stdout(&o)
    );
    assert_eq!(server.requests().len(), calls);
    assert_eq!(manifest(&out)["images"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_batches_are_refused_up_front() {
    let (dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    let o = batch(
        &server,
        &input,
        &out,
        &["--serial", "AZJN-0001", "--serial", "AZJN-0001"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("listed twice"), "{}", stderr(&o));
    fs::write(dir.path().join("bad.txt"), "AZJN-0001\nazjn-2\n").unwrap();
    let bad = dir.path().join("bad.txt");
    let o = batch(&server, &input, &out, &["--serials", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    assert_eq!(server.requests().len(), 0);
    assert!(listing(&out).is_empty());
}

/// Output directories that do not exist yet are made (0700, never open to
/// others); one that another user could write to is refused.
#[test]
fn output_directories_are_made_private_and_shared_ones_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, input, _) = setup();
    let server = StubServer::start().unwrap();
    let new_batch_dir = dir.path().join("new/batch");
    let o = batch(
        &server,
        &input,
        &new_batch_dir,
        &["--serial", "AZJN-0001", "--serial", "AZJN-0002"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = fs::metadata(&new_batch_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    assert!(new_batch_dir.join("AZJN-0002-base.tar.gz").is_file());

    let single = dir.path().join("single/");
    let o = batch(&server, &input, &single, &["--serial", "AZJN-0003"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(single.join("AZJN-0003-base.tar.gz").is_file());

    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let o = batch(&server, &input, &shared, &["--serial", "AZJN-0004"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("others can write to it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read_dir(&shared).unwrap().count(), 0);
}

/// Several images of one device: one account call after all are written,
/// the same password in each; if one cannot be written, no call and no
/// output at all.
#[test]
fn several_images_of_one_device_share_one_password_and_one_call() {
    let (dir, tar_gz, _) = setup();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs2");
    let tbz2 = d.join("base.tbz2");
    make_tar(&root, &tbz2, "tbz2", "gnu", true);
    let ext4 = d.join("base.ext4");
    let mk = run(std::process::Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&ext4)
        .arg("16M"));
    assert!(mk.status.success(), "{}", stderr(&mk));
    let server = StubServer::start().unwrap();
    let out = d.join("multi");
    let images = [&tar_gz, &tbz2, &ext4];
    let mut cmd = bin();
    cmd.args([
        "provision",
        "--serial",
        SERIAL,
        "--owner",
        "azaion",
        "--json",
    ])
    .args(["--api-url", &server.url(), "--output"])
    .arg(&out);
    for image in images {
        cmd.arg("--image").arg(image);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let posts = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "one account call for all the images");
    let password = server.password_of(EMAIL).unwrap();
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["images"].as_array().unwrap().len(), 3, "{doc}");
    for (image, listed) in images.iter().zip(doc["images"].as_array().unwrap()) {
        let name = format!("{SERIAL}-{}", image.file_name().unwrap().to_string_lossy());
        assert_eq!(listed["output"], out.join(&name).display().to_string());
        let v = run(bin().arg("verify").arg(out.join(&name)).args([
            "--serial",
            SERIAL,
            "--owner",
            "azaion",
            "--login-url",
            &server.url(),
        ]));
        assert!(v.status.success(), "{name}: {}", stdout(&v));
    }
    let x = d.join("x");
    extract("gnutar", &out.join(format!("{SERIAL}-base.tbz2")), &x);
    assert_eq!(
        fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap(),
        conf_text(EMAIL, &password)
    );

    // One input that cannot be written (no /etc in it): nothing at all.
    let bad = d.join("bad.tar");
    let empty = d.join("empty-root");
    fs::create_dir_all(empty.join("usr")).unwrap();
    make_tar(&empty, &bad, "tar", "gnu", true);
    let server = StubServer::start().unwrap();
    let out = d.join("multi-bad");
    let o = run(bin()
        .args(["provision", "--serial", SERIAL, "--owner", "azaion"])
        .args(["--api-url", &server.url(), "--output"])
        .arg(&out)
        .arg("--image")
        .arg(&tar_gz)
        .arg("--image")
        .arg(&bad));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(server.requests().is_empty(), "no account call");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "no output");
}

/// A batch with several images: every serial gets every image, with one
/// password, and the manifest lists each image with the input it came from.
#[test]
fn a_batch_of_several_images_gives_each_serial_every_image() {
    let (dir, tar_gz, out) = setup();
    let d = dir.path();
    let tar = d.join("base.tar");
    make_tar(&make_rootfs(d, "rootfs3"), &tar, "tar", "gnu", true);
    let server = StubServer::start().unwrap();
    let o = batch(
        &server,
        &tar_gz,
        &out,
        &[
            "--image",
            tar.to_str().unwrap(),
            "--serial",
            "AZJN-0001",
            "--serial",
            "AZJN-0002",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = manifest(&out);
    let images = m["images"].as_array().unwrap();
    assert_eq!(images.len(), 4, "{m}");
    assert_eq!(m["inputs"].as_array().unwrap().len(), 2, "{m}");
    for serial in ["AZJN-0001", "AZJN-0002"] {
        let email = format!("azaion-jetson-{}@azaion.com", &serial[5..]);
        let password = server.password_of(&email).unwrap();
        for input in ["base.tar.gz", "base.tar"] {
            let name = format!("{serial}-{input}");
            assert!(
                images
                    .iter()
                    .any(|e| e["output"] == name && e["input"] == input),
                "{name} in {m}"
            );
            let x = d.join(format!("x-{name}"));
            extract("gnutar", &out.join(&name), &x);
            assert_eq!(
                fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap(),
                conf_text(&email, &password)
            );
        }
    }
}

/// A single run into a directory whose manifest already gives the account
/// to another serial says so (the earlier image's password goes stale).
#[test]
fn a_single_run_warns_when_the_manifest_gives_its_account_to_another_serial() {
    let (_dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    let o = batch(
        &server,
        &input,
        &out,
        &["--serial", "AZJN-0007", "--serial", "AZJN-0008"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = batch(&server, &input, &out, &["--serial", "AZXB-0007"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already holds azaion-jetson-0007@azaion.com for AZJN-0007"),
        "{}",
        stderr(&o)
    );
    let o = batch(&server, &input, &out, &["--serial", "AZXB-0009"]);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

/// device.conf and /etc/version of a gzip tar output, read with GNU tar.
fn conf_and_version(image: &Path) -> (String, String) {
    let read = |member: &str| {
        let o = sh(&format!("tar -xzOf {} ./{member}", image.display()));
        stdout(&o)
    };
    (read("etc/azaion/device.conf"), read("etc/version"))
}

/// A rebuilt base (a new /etc/version) makes every output stale: a
/// `--skip-existing` rerun rebuilds each from the new base with the
/// password the old image carried, and the API gets that same password
/// (a flashed device keeps logging in); the manifest lists every image
/// with the new base's digest. `--rotate` gives new passwords instead.
#[test]
fn skip_existing_rebuilds_outputs_of_an_older_base_keeping_their_passwords() {
    let (dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    let serials_file = dir.path().join("serials.txt");
    let args = [
        "--serials",
        serials_file.to_str().unwrap(),
        "--skip-existing",
    ];
    let root = dir.path().join("rootfs");
    fs::write(root.join("etc/version"), "base 1\n").unwrap();
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let o = batch(&server, &input, &out, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let serials = ["AZJN-0001", "AZJN-0002", "AZJN-0003"];
    let image = |s: &str| out.join(format!("{s}-base.tar.gz"));
    let email = |s: &str| format!("azaion-jetson-{}@azaion.com", &s[5..]);
    let first: Vec<(String, String)> = serials
        .iter()
        .map(|s| conf_and_version(&image(s)))
        .collect();
    for (s, (conf, version)) in serials.iter().zip(&first) {
        assert_eq!(version, "base 1\n");
        let pw = server.password_of(&email(s)).unwrap();
        assert_eq!(conf, &conf_text(&email(s), &pw));
    }

    // The base is rebuilt: same users, a new /etc/version.
    fs::write(root.join("etc/version"), "base 2\n").unwrap();
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let o = batch(&server, &input, &out, &args);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    for s in serials {
        assert!(
            stdout(&o).contains(&format!("{s}: rebuilt from the new base, password kept")),
            "{}",
            stdout(&o)
        );
    }
    let base_sha = sha256(&input);
    let m = manifest(&out);
    assert_eq!(m["input_sha256"], base_sha.as_str());
    let images = m["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "{m}");
    for (s, (old_conf, _)) in serials.iter().zip(&first) {
        let (conf, version) = conf_and_version(&image(s));
        assert_eq!(version, "base 2\n", "{s} was rebuilt from the new base");
        assert_eq!(&conf, old_conf, "{s} kept its password");
        let pw = server.password_of(&email(s)).unwrap();
        assert_eq!(conf, conf_text(&email(s), &pw), "the API has it too");
        let entry = images.iter().find(|e| e["serial"] == *s).unwrap();
        assert_eq!(entry["input_sha256"], base_sha.as_str());
        assert_eq!(entry["sha256"], sha256(&image(s)).as_str());
    }

    // Now everything is current: skipped, no API call, all still listed.
    let calls = server.requests().len();
    let o = batch(&server, &input, &out, &args);
    assert!(
        stdout(&o).contains("0 of 3 written, 3 skipped"),
        "{}",
        stdout(&o)
    );
    assert_eq!(server.requests().len(), calls);
    assert_eq!(manifest(&out)["images"].as_array().unwrap().len(), 3);

    // --rotate: a new base and new passwords.
    fs::write(root.join("etc/version"), "base 3\n").unwrap();
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let mut rotate = args.to_vec();
    rotate.push("--rotate");
    let o = batch(&server, &input, &out, &rotate);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("3 of 3 written, 0 skipped"),
        "{}",
        stdout(&o)
    );
    for (s, (old_conf, _)) in serials.iter().zip(&first) {
        let (conf, version) = conf_and_version(&image(s));
        assert_eq!(version, "base 3\n");
        assert_ne!(&conf, old_conf, "{s} got a new password");
        let pw = server.password_of(&email(s)).unwrap();
        assert_eq!(conf, conf_text(&email(s), &pw));
    }
    // --rotate means nothing without --skip-existing.
    let o = batch(
        &server,
        &input,
        &out,
        &["--serial", "AZJN-0001", "--rotate"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Outputs that verify but that no manifest accounts for (the manifest was
/// lost) are rebuilt with their passwords, not skipped on trust.
#[test]
fn skip_existing_without_a_manifest_rebuilds_keeping_passwords() {
    let (dir, input, out) = setup();
    let root = dir.path().join("rootfs");
    fs::write(root.join("etc/version"), "base 1\n").unwrap();
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let server = StubServer::start().unwrap();
    let o = batch(
        &server,
        &input,
        &out,
        &["--serial", "AZJN-0001", "--serial", "AZJN-0002"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let image = out.join("AZJN-0001-base.tar.gz");
    let (conf, _) = conf_and_version(&image);
    fs::remove_file(out.join("manifest.json")).unwrap();
    let o = batch(
        &server,
        &input,
        &out,
        &[
            "--serial",
            "AZJN-0001",
            "--serial",
            "AZJN-0002",
            "--skip-existing",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("AZJN-0001: rebuilt"), "{}", stdout(&o));
    assert_eq!(conf_and_version(&image).0, conf);
    assert_eq!(manifest(&out)["images"].as_array().unwrap().len(), 2);
}

/// A rerun for some serials from a new base keeps the others listed with
/// the base they were made from, so a later run still rebuilds them.
#[test]
fn outputs_of_an_older_base_stay_listed_as_such_until_rebuilt() {
    let (dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    let root = dir.path().join("rootfs");
    let all = [
        "--serial",
        "AZJN-0001",
        "--serial",
        "AZJN-0002",
        "--skip-existing",
    ];
    fs::write(root.join("etc/version"), "base 1\n").unwrap();
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let old_sha = sha256(&input);
    assert!(batch(&server, &input, &out, &all).status.success());

    fs::write(root.join("etc/version"), "base 2\n").unwrap();
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let new_sha = sha256(&input);
    let o = batch(
        &server,
        &input,
        &out,
        &[
            "--serial",
            "AZJN-0001",
            "--serial",
            "AZJN-0003",
            "--skip-existing",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = manifest(&out);
    let base_of = |serial: &str| {
        m["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["serial"] == serial)
            .map(|e| e["input_sha256"].as_str().unwrap().to_string())
    };
    assert_eq!(base_of("AZJN-0001").unwrap(), new_sha);
    assert_eq!(base_of("AZJN-0002").unwrap(), old_sha, "{m}");
    assert_eq!(base_of("AZJN-0003").unwrap(), new_sha);

    let o = batch(&server, &input, &out, &all);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("AZJN-0002: rebuilt") && stdout(&o).contains("AZJN-0001: skipped"),
        "{}",
        stdout(&o)
    );
    let (_, version) = conf_and_version(&out.join("AZJN-0002-base.tar.gz"));
    assert_eq!(version, "base 2\n");
}

/// `imprint manifest merge`: the shards of one run join into one manifest;
/// a shard of another base is refused, naming its file, and nothing is
/// written.
#[test]
fn manifest_merge_joins_shards_and_refuses_other_bases() {
    let (dir, input, _) = setup();
    let server = StubServer::start().unwrap();
    let shard = |input: &Path, name: &str, serials: [&str; 2]| {
        let out = dir.path().join(name);
        let o = batch(
            &server,
            input,
            &out,
            &["--serial", serials[0], "--serial", serials[1]],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        out.join("manifest.json")
    };
    let merge = |output: &Path, parts: [&Path; 2]| {
        run(bin()
            .args(["manifest", "merge", "--output"])
            .arg(output)
            .args(parts))
    };
    let a = shard(&input, "a", ["AZJN-0001", "AZJN-0002"]);
    let b = shard(&input, "b", ["AZJN-0003", "AZJN-0004"]);
    let merged = dir.path().join("merged.json");
    let o = merge(&merged, [&a, &b]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&fs::read_to_string(&merged).unwrap()).unwrap();
    let serials: Vec<&str> = m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["serial"].as_str().unwrap())
        .collect();
    assert_eq!(
        serials,
        ["AZJN-0001", "AZJN-0002", "AZJN-0003", "AZJN-0004"]
    );
    assert_eq!(m["input_sha256"], sha256(&input).as_str());

    let other = dir.path().join("other.tar");
    make_tar(&dir.path().join("rootfs"), &other, "tar", "gnu", true);
    let c = shard(&other, "c", ["AZJN-0005", "AZJN-0006"]);
    let refused = dir.path().join("refused.json");
    let o = merge(&refused, [&a, &c]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&c.display().to_string()) && stderr(&o).contains("other base images"),
        "{}",
        stderr(&o)
    );
    assert!(!refused.exists());
}

/// Sharded runs: two shards whose serials map to one account (`AZJN-0007`
/// and `AZXB-0007`) are caught before any API call by a dry run of the
/// whole list (as the CI recipes run it), and by `manifest merge`, which
/// names both shards; a shard edited by hand (a serial with a shell
/// command, an output climbing out, a foreign email, a digest that is
/// none) is refused naming the shard and the image, and nothing is
/// written.
#[test]
fn manifest_merge_rechecks_every_shard() {
    let (dir, input, _) = setup();
    let server = StubServer::start().unwrap();
    let shard = |name: &str, serial: &str| {
        let out = dir.path().join(name);
        let o = batch(
            &server,
            &input,
            &out,
            &["--serial", serial, "--serial", "AZJN-1000"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        out.join("manifest.json")
    };
    let merge = |output: &Path, parts: &[&Path]| {
        run(bin()
            .args(["manifest", "merge", "--output"])
            .arg(output)
            .args(parts))
    };
    // The whole list, checked as one batch before any shard runs.
    let all = dir.path().join("all.txt");
    fs::write(&all, "AZJN-0007\nAZJN-1000\nAZXB-0007\n").unwrap();
    let o = run(bin()
        .args(["provision", "--dry-run", "--owner", "azaion", "--image"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("dry"))
        .arg("--serials")
        .arg(&all));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("AZJN-0007 and AZXB-0007 both map to the account"),
        "{}",
        stderr(&o)
    );

    let a = shard("a", "AZJN-0007");
    let b = shard("b", "AZXB-0007");
    let merged = dir.path().join("merged.json");
    let o = merge(&merged, &[&a, &b]);
    assert_eq!(o.status.code(), Some(1));
    let said = stderr(&o);
    for want in [
        "AZJN-0007",
        "AZXB-0007",
        &a.display().to_string(),
        &b.display().to_string(),
        "azaion-jetson-0007@azaion.com",
    ] {
        assert!(said.contains(want), "{want}: {said}");
    }
    assert!(!merged.exists());

    let text = fs::read_to_string(&a).unwrap();
    let digest = serde_json::from_str::<Value>(&text).unwrap()["images"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let email = "azaion-jetson-0007@azaion.com";
    for (from, to, want) in [
        (
            "\"serial\": \"AZJN-0007\"",
            "\"serial\": \"AZJN-9999; rm -rf /\"",
            "serial \"AZJN-9999; rm -rf /\"",
        ),
        (
            "\"AZJN-0007-base.tar.gz\"",
            "\"../../../etc/shadow\"",
            "output \"../../../etc/shadow\"",
        ),
        (email, "admin@example.com", "email \"admin@example.com\""),
        (digest.as_str(), "not-a-digest", "sha256 \"not-a-digest\""),
    ] {
        assert!(text.contains(from), "{from}: {text}");
        let crafted = dir.path().join("crafted.json");
        fs::write(&crafted, text.replacen(from, to, 1)).unwrap();
        let o = merge(&merged, &[&crafted]);
        assert_eq!(o.status.code(), Some(1), "{to}");
        let said = stderr(&o);
        assert!(
            said.contains(&format!("{}, image ", crafted.display())) && said.contains(want),
            "{want}: {said}"
        );
        assert!(!merged.exists(), "{to}");
    }
}

/// How many requests of each kind the stub has seen.
fn calls(server: &StubServer) -> (usize, usize) {
    let r = server.requests();
    let count = |m: &str| r.iter().filter(|q| q.method == m).count();
    (count("POST"), count("PATCH"))
}

/// `--no-rotate`: "create or reuse, never rotate". A rerun over the
/// previous outputs keeps every password without a PATCH (a changed base
/// included); a rerun without them fails every existing account loudly,
/// writing nothing and changing no password; `--password-file` is a
/// password given on purpose and is set. One device alone: the output
/// `--force` replaces, or the staging tree, lends its password.
#[test]
fn no_rotate_reuses_earlier_passwords_or_fails_and_never_patches() {
    let (dir, input, out) = setup();
    let server = StubServer::start().unwrap();
    let serials_file = dir.path().join("serials.txt");
    let args = [
        "--serials",
        serials_file.to_str().unwrap(),
        "--skip-existing",
        "--no-rotate",
    ];
    let serials = ["AZJN-0001", "AZJN-0002", "AZJN-0003"];
    let image = |d: &Path, s: &str| d.join(format!("{s}-base.tar.gz"));
    let email = |s: &str| format!("azaion-jetson-{}@azaion.com", &s[5..]);
    let passwords = || -> Vec<String> {
        serials
            .iter()
            .map(|s| server.password_of(&email(s)).unwrap())
            .collect()
    };
    let o = batch(&server, &input, &out, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(calls(&server), (3, 0));
    let first = passwords();

    // A rebuilt base, the previous outputs kept: every password stays,
    // in the images and at the API, and nothing is PATCHed.
    let root = dir.path().join("rootfs");
    fs::write(root.join("etc/version"), "base 2\n").unwrap();
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let o = batch(&server, &input, &out, &args);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(calls(&server), (6, 0), "one POST each (409), no PATCH");
    assert_eq!(passwords(), first);
    for (s, pw) in serials.iter().zip(&first) {
        assert!(
            stdout(&o).contains(&format!("{s}: rebuilt from the new base, password kept")),
            "{}",
            stdout(&o)
        );
        let (conf, version) = conf_and_version(&image(&out, s));
        assert_eq!(
            (conf, version),
            (conf_text(&email(s), pw), "base 2\n".into())
        );
    }
    assert!(
        stderr(&o).contains("it keeps its password (--no-rotate)"),
        "{}",
        stderr(&o)
    );

    // The previous outputs lost: every account exists and no password is
    // known, so every device fails, saying what to do, and none is written.
    let fresh = dir.path().join("fresh");
    let o = batch(&server, &input, &fresh, &args);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    for s in serials {
        let line = stdout(&o)
            .lines()
            .find(|l| l.starts_with(&format!("{s}: FAILED")))
            .unwrap_or_else(|| panic!("no failure for {s}:\n{}", stdout(&o)))
            .to_string();
        for what in [
            "already exists",
            "--no-rotate",
            "--skip-existing",
            "--password-file",
        ] {
            assert!(line.contains(what), "{what}: {line}");
        }
        assert!(!image(&fresh, s).exists());
    }
    assert!(
        stdout(&o).contains("0 of 3 written, 0 skipped, 3 failed"),
        "{}",
        stdout(&o)
    );
    assert_eq!(calls(&server), (9, 0));
    assert_eq!(passwords(), first);
    assert_eq!(manifest(&fresh)["images"], serde_json::json!([]));
    assert_eq!(listing(&fresh), ["manifest.json"], "no temp file left");

    // A password given on purpose is set (that is no silent rotation).
    let pw = write_password(dir.path(), PASSWORD);
    let o = batch(
        &server,
        &input,
        &fresh,
        &[
            "--serial",
            "AZJN-0001",
            "--no-rotate",
            "--password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(calls(&server), (10, 1));
    assert_eq!(server.password_of(&email("AZJN-0001")).unwrap(), PASSWORD);

    // One device: a new output elsewhere fails the same way ...
    let single = |out: &Path, extra: &[&str]| {
        run(bin()
            .args([
                "provision",
                "--serial",
                "AZJN-0002",
                "--no-rotate",
                "--owner",
                "azaion",
            ])
            .args(["--api-url", &server.url(), "--image"])
            .arg(&input)
            .arg("--output")
            .arg(out)
            .args(extra))
    };
    let elsewhere = dir.path().join("one.tar.gz");
    let o = single(&elsewhere, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert!(!elsewhere.exists());
    assert_eq!(calls(&server), (11, 1));
    // ... and replacing its earlier output reuses that output's password.
    let o = single(&image(&out, "AZJN-0002"), &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("reusing the password"),
        "{}",
        stderr(&o)
    );
    assert_eq!(calls(&server), (12, 1));
    assert_eq!(passwords()[1], first[1]);
    let (conf, _) = conf_and_version(&image(&out, "AZJN-0002"));
    assert_eq!(conf, conf_text(&email("AZJN-0002"), &first[1]));

    // The runbook's staging tree: a rerun keeps the password it holds.
    let staging = make_rootfs(dir.path(), "staging");
    let stage = |extra: &[&str]| {
        run(bin()
            .args([
                "provision",
                "--serial",
                "AZJN-0042",
                "--api-url",
                &server.url(),
            ])
            .args(extra)
            .arg("--rootfs-dir")
            .arg(&staging))
    };
    assert!(stage(&[]).status.success());
    let staged = server.password_of(EMAIL).unwrap();
    let o = stage(&["--no-rotate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(calls(&server), (14, 1));
    assert_eq!(server.password_of(EMAIL).unwrap(), staged);

    // Meaningless combinations are refused.
    let o = batch(&server, &input, &out, &[&args[..], &["--rotate"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(bin()
        .args([
            "provision",
            "--serial",
            "AZJN-0002",
            "--no-rotate",
            "--offline",
        ])
        .arg("--password-file")
        .arg(&pw)
        .arg("--image")
        .arg(&input)
        .arg("--output")
        .arg(&elsewhere));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--no-rotate"), "{}", stderr(&o));
}
