//! Overlays beyond device.conf (issue 15): host-file sources, per-device
//! variables from a devices file, `--dry-run`, `-` for stdin, and the
//! examples in overlays/examples/. The real binary against the real stub,
//! outputs read back with GNU tar, bsdtar, debugfs and the host.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use imprint::stub::StubServer;

/// The password file every offline run here uses.
const PASSWORD: &str = "0123456789abcdef0123456789abcdef";

/// A gzip tar of testdata's rootfs (users root and azaion).
fn base_tar(dir: &Path) -> PathBuf {
    let root = make_rootfs(dir, "rootfs");
    let tar = dir.join("rootfs.tar.gz");
    make_tar(&root, &tar, "tar.gz", "gnu", true);
    tar
}

/// `imprint provision --offline` with the password file, and `args`.
fn offline(dir: &Path, args: &[&str]) -> Command {
    let pw = write_password(dir, PASSWORD);
    let mut c = bin();
    c.args(["provision", "--offline", "--password-file"])
        .arg(pw)
        .args(args);
    c
}

/// Runs `cmd` with `input` on its standard input.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// A file of `archive` as GNU tar and bsdtar extract it (they must agree).
fn tar_file(archive: &Path, path: &str) -> Vec<u8> {
    let gnu = sh(&format!("tar -xOf {} ./{path}", archive.display())).stdout;
    let bsd = sh(&format!("bsdtar -xOf {} ./{path}", archive.display())).stdout;
    assert!(gnu == bsd, "GNU tar and bsdtar disagree on {path}");
    gnu
}

/// `tar tv` owner and mode of one entry, e.g. ("-rw-------", "1001/1001").
fn tar_meta(archive: &Path, path: &str) -> (String, String) {
    let line = stdout(&sh(&format!(
        "tar --numeric-owner -tvf {} ./{path}",
        archive.display()
    )));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

/// Everything under `dir`: relative path -> (mode, size, content hash).
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, u64, String)> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    let names = stdout(&sh(&format!("cd {} && find . | sort", dir.display())));
    for name in names.lines() {
        let p = dir.join(name);
        let m = fs::symlink_metadata(&p).unwrap();
        let hash = if m.is_file() {
            sha256(&p)
        } else {
            String::new()
        };
        out.insert(name.to_string(), (m.mode(), m.size(), hash));
    }
    out
}

const CERT_SPEC: &str = r#"
[[entry]]
path = "/etc/ssl"
type = "dir"
mode = "0755"
owner = "0:0"

[[entry]]
path = "/etc/ssl/private"
type = "dir"
mode = "0700"
owner = "0:0"

[[entry]]
path = "/etc/ssl/private/{serial}.key"
type = "file"
mode = "0600"
owner = "{owner}"
source = "keys/{serial}.key"
"#;

/// A binary key per device: NUL bytes, every byte value, 1 MiB.
fn key_for(serial: &str) -> Vec<u8> {
    let mut key: Vec<u8> = (0..1usize << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    key[..serial.len()].copy_from_slice(serial.as_bytes());
    key[100..104].copy_from_slice(&[0, 0, 0, 0]);
    key
}

fn write_cert_spec(dir: &Path, serials: &[&str]) -> PathBuf {
    let spec_dir = dir.join("spec");
    fs::create_dir_all(spec_dir.join("keys")).unwrap();
    for s in serials {
        fs::write(spec_dir.join(format!("keys/{s}.key")), key_for(s)).unwrap();
    }
    let spec = spec_dir.join("certs.toml");
    fs::write(&spec, CERT_SPEC).unwrap();
    spec
}

#[test]
fn host_sources_are_copied_byte_for_byte_into_tar_ext4_and_staging_trees() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = write_cert_spec(d, &[SERIAL]);
    let key = key_for(SERIAL);
    let rel = format!("etc/ssl/private/{SERIAL}.key");
    // Run from elsewhere: the source is relative to the spec, not the cwd.
    let elsewhere = d.join("cwd");
    fs::create_dir(&elsewhere).unwrap();

    let tar = base_tar(d);
    let out = d.join("out.tar.gz");
    let overlay = spec.to_str().unwrap();
    ok(&run(offline(
        d,
        &[
            "--serial",
            SERIAL,
            "--owner",
            "azaion",
            "--overlay",
            overlay,
        ],
    )
    .arg("--image")
    .arg(&tar)
    .arg("--output")
    .arg(&out)
    .current_dir(&elsewhere)));
    assert!(
        tar_file(&out, &rel) == key,
        "the key differs in the archive"
    );
    assert_eq!(
        tar_meta(&out, &rel),
        ("-rw-------".into(), "1001/1001".into())
    );
    assert_eq!(tar_meta(&out, "etc/ssl/private").0, "drwx------");

    let img = small_ext4(d, "rootfs.img");
    let out_img = d.join("out.img");
    ok(&run(offline(
        d,
        &[
            "--serial",
            SERIAL,
            "--owner",
            "1001:1001",
            "--overlay",
            overlay,
        ],
    )
    .arg("--image")
    .arg(&img)
    .arg("--output")
    .arg(&out_img)));
    assert_fsck_clean(&out_img);
    let dumped = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{rel}"))
        .arg(&out_img))
    .stdout;
    assert!(dumped == key, "the key differs in the ext4 image");
    assert_eq!(
        debugfs_stat(&out_img, &format!("/{rel}")),
        (0o600, 1001, 1001)
    );

    let stage = make_rootfs(d, "stage");
    ok(&run(offline(
        d,
        &[
            "--serial",
            SERIAL,
            "--owner",
            "1001:1001",
            "--overlay",
            overlay,
        ],
    )
    .arg("--rootfs-dir")
    .arg(&stage)));
    assert!(fs::read(stage.join(&rel)).unwrap() == key);
    let m = fs::metadata(stage.join(&rel)).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 1001, 1001));
}

#[test]
fn a_missing_or_oversized_source_fails_before_any_account_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = write_cert_spec(d, &["AZJN-0001"]);
    let tar = base_tar(d);
    let server = StubServer::start().unwrap();
    let devices = d.join("devices.csv");
    fs::write(&devices, "serial\nAZJN-0001\nAZJN-0002\n").unwrap();
    let out = d.join("out");
    let o = run(bin()
        .args(["provision", "--api-url", &server.url(), "--overlay"])
        .arg(&spec)
        .arg("--devices")
        .arg(&devices)
        .arg("--image")
        .arg(&tar)
        .arg("--output")
        .arg(&out)
        .env("IMPRINT_API_TOKEN", "t"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("device AZJN-0002") && err.contains("keys/AZJN-0002.key"),
        "{err}"
    );
    assert!(server.requests().is_empty(), "the API was called");
    assert!(!out.exists(), "a failed check left {}", out.display());

    // 16 MiB is the most a source may have.
    let big = d.join("spec/keys/AZJN-0002.key");
    fs::File::create(&big)
        .unwrap()
        .set_len((16 << 20) + 1)
        .unwrap();
    let o = run(offline(
        d,
        &["--serial", "AZJN-0002", "--overlay", spec.to_str().unwrap()],
    )
    .arg("--image")
    .arg(&tar)
    .arg("--output")
    .arg(d.join("x.tar.gz")));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("at most 16777216 (16 MiB)"),
        "{}",
        stderr(&o)
    );
    fs::File::create(&big).unwrap().set_len(16 << 20).unwrap();
    ok(&run(offline(
        d,
        &["--serial", "AZJN-0002", "--overlay", spec.to_str().unwrap()],
    )
    .arg("--image")
    .arg(&tar)
    .arg("--output")
    .arg(d.join("x.tar.gz"))));
}

const HOSTNAME_SPEC: &str = r#"
[[entry]]
path = "/etc/hostname"
type = "file"
mode = "0644"
owner = "0:0"
content = "{hostname}\n"

[[entry]]
path = "/etc/motd"
type = "file"
mode = "0644"
owner = "0:0"
content = "Site {site}; shell vars like ${HOME} and JSON {\"a\": 1} stay as written\n"
multiline = ["site"]
"#;

#[test]
fn devices_csv_values_with_quotes_commas_and_newlines_reach_each_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tar = base_tar(d);
    let spec = d.join("hostname.toml");
    fs::write(&spec, HOSTNAME_SPEC).unwrap();
    let devices = d.join("devices.csv");
    fs::write(
        &devices,
        "serial,hostname,site\r\nAZJN-0001,jet-0001,\"Berlin, \"\"Nord\"\"\"\r\nAZJN-0002,jet-0002,\"two\nlines\"\r\n",
    )
    .unwrap();
    let out = d.join("out");
    ok(&run(offline(d, &["--overlay", spec.to_str().unwrap()])
        .arg("--devices")
        .arg(&devices)
        .arg("--image")
        .arg(&tar)
        .arg("--output")
        .arg(&out)));
    let one = out.join("AZJN-0001-rootfs.tar.gz");
    let two = out.join("AZJN-0002-rootfs.tar.gz");
    assert_eq!(tar_file(&one, "etc/hostname"), b"jet-0001\n");
    assert_eq!(tar_file(&two, "etc/hostname"), b"jet-0002\n");
    assert_eq!(
        String::from_utf8(tar_file(&one, "etc/motd")).unwrap(),
        "Site Berlin, \"Nord\"; shell vars like ${HOME} and JSON {\"a\": 1} stay as written\n"
    );
    assert!(String::from_utf8(tar_file(&two, "etc/motd"))
        .unwrap()
        .starts_with("Site two\nlines;"));

    // A blank value, or a variable with no column, stops the run before
    // any device is written; the message names the device and the name.
    // Bytes that are not UTF-8 are refused where they are, not replaced.
    let not_utf8 = format!("{}, line 3: not UTF-8 text", devices.display());
    for (csv, says) in [
        (
            &b"serial,hostname,site\nAZJN-0001,a,b\nAZJN-0002,,b\n"[..],
            "device AZJN-0002: the overlay uses {hostname}",
        ),
        (
            b"serial,hostname\nAZJN-0001,a\n",
            "device AZJN-0001: the overlay uses {site}",
        ),
        (
            b"serial,hostname,site\nAZJN-0001,a\n",
            "line 2: 2 fields, but the header names 3",
        ),
        (
            b"serial,hostname,site\nAZJN-0001,a,b\nAZJN-0002,b,M\xfcnchen\n",
            &not_utf8,
        ),
    ] {
        fs::write(&devices, csv).unwrap();
        let csv = String::from_utf8_lossy(csv);
        let out = d.join("refused");
        let o = run(offline(d, &["--overlay", spec.to_str().unwrap()])
            .arg("--devices")
            .arg(&devices)
            .arg("--image")
            .arg(&tar)
            .arg("--output")
            .arg(&out));
        assert_eq!(o.status.code(), Some(1), "{csv:?}");
        assert!(stderr(&o).contains(says), "{csv:?}: {}", stderr(&o));
        assert!(!out.exists(), "{csv:?} left output");
    }

    // A value with a line break goes only where the entry allows it
    // (motd lists {site} in multiline, hostname does not), and a source
    // path from a value stays in the overlay's directory: refused before
    // any output, naming the devices file's line.
    fs::create_dir_all(d.join("certs")).unwrap();
    fs::write(d.join("certs/AZJN-0001.pem"), "cert\n").unwrap();
    fs::write(d.join("hostsecret"), "host secret\n").unwrap();
    let cert_spec = d.join("cert.toml");
    fs::write(
        &cert_spec,
        "[[entry]]\npath='/etc/c.pem'\ntype='file'\nmode='0644'\nowner='0:0'\nsource='certs/{cert}'\n\
         [[entry]]\npath='/etc/d.pem'\ntype='file'\nmode='0644'\nowner='0:0'\nsource='{other}'\n",
    )
    .unwrap();
    let dev_line = |n: usize| format!("{}, line {n}", devices.display());
    for (overlay, csv, says) in [
        (
            &spec,
            "serial,hostname,site\nAZJN-0001,a,b\nAZJN-0002,\"jet\nAZAION_DEVICE_PASSWORD=x\",b\n",
            format!("device AZJN-0002 ({}): the value of {{hostname}} holds a line break, which would add lines to /etc/hostname", dev_line(3)),
        ),
        (
            &cert_spec,
            "serial,cert,other\nAZJN-0001,AZJN-0001.pem,certs/AZJN-0001.pem\nAZJN-0002,../hostsecret,certs/AZJN-0001.pem\n",
            format!("device AZJN-0002 ({}): the value of {{cert}} climbs out with '..'", dev_line(3)),
        ),
        (
            &cert_spec,
            "serial,cert,other\nAZJN-0001,AZJN-0001.pem,/etc/passwd\n",
            format!("device AZJN-0001 ({}): the value of {{other}} is an absolute path", dev_line(2)),
        ),
    ] {
        fs::write(&devices, csv).unwrap();
        let out = d.join("refused");
        let o = run(offline(d, &["--overlay", overlay.to_str().unwrap()])
            .arg("--devices")
            .arg(&devices)
            .arg("--image")
            .arg(&tar)
            .arg("--output")
            .arg(&out));
        assert_eq!(o.status.code(), Some(1), "{csv:?}");
        assert!(stderr(&o).contains(&says), "{csv:?}: {}", stderr(&o));
        assert!(!out.exists(), "{csv:?} left output");
    }

    // With --serial, the devices file only gives that device's variables:
    // a single run, into a staging tree.
    fs::write(
        &devices,
        "serial\thostname\tsite\nAZJN-0042\tjet-0042\tHH\n",
    )
    .unwrap();
    let stage = make_rootfs(d, "stage");
    // (A hostname with a second name is never rewritten: see tests/it/tar.rs.)
    fs::remove_file(stage.join("etc/hostname.hardlink")).unwrap();
    ok(&run(offline(
        d,
        &["--serial", SERIAL, "--overlay", spec.to_str().unwrap()],
    )
    .arg("--devices")
    .arg(&devices)
    .arg("--rootfs-dir")
    .arg(&stage)));
    assert_eq!(
        fs::read_to_string(stage.join("etc/hostname")).unwrap(),
        "jet-0042\n"
    );
}

#[test]
fn dry_run_writes_nothing_calls_no_api_and_fails_as_a_real_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tar = base_tar(d);
    let spec = write_cert_spec(d, &["AZJN-0001", "AZJN-0002"]);
    let server = StubServer::start().unwrap();
    let stage = make_rootfs(d, "stage");
    let before = (snapshot(d), snapshot(&stage));
    let out = d.join("out");
    let dry = |extra: &[&str]| {
        let mut c = bin();
        c.args([
            "provision",
            "--dry-run",
            "--api-url",
            &server.url(),
            "--overlay",
        ])
        .arg(&spec)
        .args(extra)
        .env("IMPRINT_API_TOKEN", "t");
        c
    };
    let o = run(dry(&[
        "--serial",
        "AZJN-0001",
        "--serial",
        "AZJN-0002",
        "--owner",
        "azaion",
        "--json",
    ])
    .arg("--image")
    .arg(&tar)
    .arg("--output")
    .arg(&out));
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["schema"], "imprint.dry-run/1");
    let devices = doc["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let image = &devices[1]["images"][0];
    assert_eq!(
        image["output"].as_str().unwrap(),
        out.join("AZJN-0002-rootfs.tar.gz").to_str().unwrap()
    );
    let entries: BTreeMap<&str, &serde_json::Value> = image["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e))
        .collect();
    let key = entries["/etc/ssl/private/AZJN-0002.key"];
    assert_eq!(key["action"], "create");
    assert_eq!(key["size"], 1 << 20);
    assert_eq!(key["mode"], "0600");
    assert_eq!(
        (key["uid"].as_u64(), key["user"].as_str()),
        (Some(1001), Some("azaion"))
    );
    let conf = entries["/etc/azaion/device.conf"];
    assert_eq!(conf["action"], "create");
    // No content, no password: only sizes.
    assert!(!stdout(&o).contains("AZAION_DEVICE_PASSWORD"));
    assert!(!stdout(&o).contains("\"content\""));

    // Text form, for a staging tree: an existing file shows as replaced.
    let o = run(dry(&["--serial", "AZJN-0001"])
        .arg("--rootfs-dir")
        .arg(&stage));
    ok(&o);
    let text = stdout(&o);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("create")
            && l.ends_with("/etc/ssl/private/AZJN-0001.key")),
        "{text}"
    );
    assert!(stderr(&o).contains("dry run: nothing was written and no API was called"));

    // The errors a real run would hit: an owner the image lacks, an output
    // that exists.
    let o = run(dry(&["--serial", "AZJN-0001", "--owner", "nobody-here"])
        .arg("--image")
        .arg(&tar)
        .arg("--output")
        .arg(&out));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nobody-here"), "{}", stderr(&o));
    let o = run(dry(&["--serial", "AZJN-0001"])
        .arg("--image")
        .arg(&tar)
        .arg("--output")
        .arg(&tar));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    assert!(server.requests().is_empty(), "a dry run called the API");
    assert_eq!(
        (snapshot(d), snapshot(&stage)),
        before,
        "a dry run changed files"
    );
}

#[test]
fn stdin_takes_serials_devices_or_an_overlay_but_only_one_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tar = base_tar(d);
    let spec = d.join("hostname.toml");
    fs::write(&spec, HOSTNAME_SPEC).unwrap();
    let out = d.join("out");
    let image_args = |c: &mut Command| {
        c.arg("--image").arg(&tar).arg("--output").arg(&out);
    };

    let mut c = offline(d, &["--serials", "-"]);
    image_args(&mut c);
    ok(&with_stdin(&mut c, "# from a pipe\nAZJN-0001\nAZJN-0002\n"));
    assert!(out.join("AZJN-0002-rootfs.tar.gz").is_file());

    let mut c = offline(
        d,
        &[
            "--devices",
            "-",
            "--overlay",
            spec.to_str().unwrap(),
            "--force",
        ],
    );
    image_args(&mut c);
    ok(&with_stdin(
        &mut c,
        "{\"serial\": \"AZJN-0003\", \"hostname\": \"from-json\", \"site\": \"x\"}\n",
    ));
    assert_eq!(
        tar_file(&out.join("AZJN-0003-rootfs.tar.gz"), "etc/hostname"),
        b"from-json\n"
    );

    let mut c = offline(d, &["--serial", "AZJN-0004", "--overlay", "-"]);
    image_args(&mut c);
    ok(&with_stdin(
        &mut c,
        "[[entry]]\npath = \"/etc/issue\"\ntype = \"file\"\nmode = \"0644\"\nowner = \"0:0\"\ncontent = \"{serial}\\n\"\n",
    ));
    assert_eq!(
        tar_file(&out.join("AZJN-0004-rootfs.tar.gz"), "etc/issue"),
        b"AZJN-0004\n"
    );

    let mut c = offline(d, &["--devices", "-", "--overlay", "-"]);
    image_args(&mut c);
    let o = with_stdin(&mut c, "serial\nAZJN-0005\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("which can be read only once"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("AZJN-0005-rootfs.tar.gz").exists());
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("overlays/examples")
        .join(name)
}

#[test]
fn every_example_parses() {
    let dir = example("");
    let mut specs = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                imprint::plan::OverlaySpec::load(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                specs += 1;
            }
            Some("csv") => {
                let text = fs::read_to_string(&path).unwrap();
                imprint::plan::devices::parse(&text, &path.display().to_string()).unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(specs, 4, "overlays/README.md shows four examples");
}

#[test]
fn example_device_certificate_into_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec_dir = d.join("spec");
    fs::create_dir_all(spec_dir.join("certs")).unwrap();
    fs::copy(example("device-certificate.toml"), spec_dir.join("c.toml")).unwrap();
    let pem = b"-----BEGIN CERTIFICATE-----\nAZJN-0042\n-----END CERTIFICATE-----\n";
    let key = key_for(SERIAL);
    fs::write(spec_dir.join(format!("certs/{SERIAL}.pem")), pem).unwrap();
    fs::write(spec_dir.join(format!("certs/{SERIAL}.key")), &key).unwrap();
    let tar = base_tar(d);
    let out = d.join("out.tar.gz");
    ok(&run(offline(
        d,
        &["--serial", SERIAL, "--owner", "azaion", "--overlay"],
    )
    .arg(spec_dir.join("c.toml"))
    .arg("--image")
    .arg(&tar)
    .arg("--output")
    .arg(&out)));
    assert_eq!(tar_file(&out, "etc/azaion/tls/device.pem"), pem);
    assert!(tar_file(&out, "etc/azaion/tls/device.key") == key);
    assert_eq!(
        tar_meta(&out, "etc/azaion/tls/device.key"),
        ("-rw-------".into(), "1001/1001".into())
    );
    assert_eq!(tar_meta(&out, "etc/azaion/tls").0, "drwxr-x---");
}

#[test]
fn example_hostname_from_the_shipped_devices_csv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tar = base_tar(d);
    let out = d.join("out");
    ok(&run(offline(d, &["--overlay"])
        .arg(example("hostname.toml"))
        .arg("--devices")
        .arg(example("devices.csv"))
        .arg("--image")
        .arg(&tar)
        .arg("--output")
        .arg(&out)));
    let one = out.join("AZJN-0041-rootfs.tar.gz");
    assert_eq!(tar_file(&one, "etc/hostname"), b"jetson-0041\n");
    assert_eq!(
        tar_file(&one, "etc/azaion/site.conf"),
        b"SITE=Hamburg, dock 3\nDEVICE=AZJN-0041\n"
    );
    let two = out.join("AZJN-0042-rootfs.tar.gz");
    assert_eq!(tar_file(&two, "etc/hostname"), b"jetson-0042\n");
}

#[test]
fn example_enable_unit_in_a_staging_tree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stage = make_rootfs(d, "stage");
    // One existing link, replaced; its directory already there.
    let wants = stage.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("/dev/null", wants.join("azaion-loader.service")).unwrap();
    ok(&run(offline(d, &["--serial", SERIAL, "--overlay"])
        .arg(example("enable-unit.toml"))
        .arg("--rootfs-dir")
        .arg(&stage)));
    assert_eq!(
        fs::read_link(wants.join("azaion-loader.service")).unwrap(),
        Path::new("/etc/systemd/system/azaion-loader.service")
    );
    let unit = fs::read_to_string(stage.join("etc/systemd/system/azaion-loader.service")).unwrap();
    assert!(
        unit.contains("Description=Azaion loader for AZJN-0042"),
        "{unit}"
    );
    // `imprint cat` follows the link inside the tree.
    let o = run(bin()
        .arg("cat")
        .arg(&stage)
        .arg("/etc/systemd/system/multi-user.target.wants/azaion-loader.service"));
    ok(&o);
    assert_eq!(stdout(&o), unit);
}

#[test]
fn example_remove_defaults_in_a_staging_tree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stage = make_rootfs(d, "stage");
    fs::write(stage.join("etc/motd"), "welcome\n").unwrap();
    fs::create_dir_all(stage.join("var/lib/dbus")).unwrap();
    fs::write(stage.join("var/lib/dbus/machine-id"), "0123\n").unwrap();
    fs::create_dir_all(stage.join("etc/azaion/samples/more")).unwrap();
    fs::write(stage.join("etc/azaion/samples/more/a.conf"), "x").unwrap();
    fs::write(stage.join("etc/machine-id"), "0123\n").unwrap();
    let spec = example("remove-defaults.toml");
    let o = run(offline(d, &["--serial", SERIAL, "--dry-run", "--overlay"])
        .arg(&spec)
        .arg("--rootfs-dir")
        .arg(&stage));
    ok(&o);
    for path in [
        "/etc/motd",
        "/var/lib/dbus/machine-id",
        "/etc/azaion/samples",
    ] {
        assert!(
            stdout(&o)
                .lines()
                .any(|l| l.trim_start().starts_with("remove") && l.ends_with(path)),
            "{path}: {}",
            stdout(&o)
        );
    }
    assert!(stage.join("etc/motd").exists(), "the dry run removed it");
    ok(&run(offline(d, &["--serial", SERIAL, "--overlay"])
        .arg(&spec)
        .arg("--rootfs-dir")
        .arg(&stage)));
    for gone in ["etc/motd", "var/lib/dbus/machine-id", "etc/azaion/samples"] {
        assert!(!stage.join(gone).exists(), "{gone}");
    }
    let m = fs::metadata(stage.join("etc/machine-id")).unwrap();
    assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o444));
    // Again: nothing left to remove is not an error.
    ok(&run(offline(d, &["--serial", SERIAL, "--overlay"])
        .arg(&spec)
        .arg("--rootfs-dir")
        .arg(&stage)));
}

#[test]
fn the_demo_stamps_a_hostname_from_a_device_variable_and_looks_inside() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin().arg("demo").arg("--dir").arg(dir.path()));
    ok(&o);
    assert!(
        stdout(&o).contains("and /etc/hostname says \"jetson-0042\""),
        "{}",
        stdout(&o)
    );
    let out = dir.path().join("AZJN-0042-rootfs.tar.gz");
    let gnu = sh(&format!("tar -xOf {} etc/hostname", out.display())).stdout;
    assert_eq!(gnu, b"jetson-0042\n");
}

/// Issue 13, case 12 for staging trees (and dry runs of any format):
/// /etc/passwd as a symlink resolves inside the image, as in a chroot.
#[test]
fn passwd_behind_a_symlink_is_read_inside_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stage = make_rootfs(d, "stage");
    fs::create_dir_all(stage.join("usr/lib")).unwrap();
    fs::rename(stage.join("etc/passwd"), stage.join("usr/lib/passwd")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/passwd", stage.join("etc/passwd")).unwrap();
    let tar = d.join("linked.tar");
    make_tar(&stage, &tar, "tar", "gnu", true);
    let o = run(offline(
        d,
        &[
            "--serial",
            SERIAL,
            "--owner",
            "azaion",
            "--dry-run",
            "--json",
        ],
    )
    .arg("--image")
    .arg(&tar)
    .arg("--output")
    .arg(d.join("out.tar")));
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let conf = doc["devices"][0]["images"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/etc/azaion/device.conf")
        .unwrap()
        .clone();
    assert_eq!(
        (conf["uid"].as_u64(), conf["user"].as_str()),
        (Some(1001), Some("azaion"))
    );

    ok(&run(offline(d, &["--serial", SERIAL, "--owner", "azaion"])
        .arg("--rootfs-dir")
        .arg(&stage)));
    let m = fs::metadata(stage.join("etc/azaion/device.conf")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1001, 1001));
}

#[test]
fn dry_run_on_an_ext4_image_reads_it_and_leaves_it_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = small_ext4(d, "rootfs.img");
    let before = sha256(&img);
    let spec = d.join("hostname.toml");
    fs::write(&spec, HOSTNAME_SPEC).unwrap();
    let devices = d.join("devices.csv");
    fs::write(&devices, "serial,hostname,site\nAZJN-0042,jet,HH\n").unwrap();
    let o = run(
        offline(d, &["--serial", SERIAL, "--dry-run", "--json", "--overlay"])
            .arg(&spec)
            .arg("--devices")
            .arg(&devices)
            .arg("--image")
            .arg(&img)
            .arg("--output")
            .arg(d.join("out.img")),
    );
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let image = &doc["devices"][0]["images"][0];
    assert_eq!(image["input_kind"], "raw ext2/3/4 image");
    let actions: BTreeMap<String, String> = image["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // What debugfs sees decides create or replace.
    let has = |p: &str| !debugfs(&img, &format!("stat {p}")).is_empty();
    for (path, action) in &actions {
        let want = match (path.as_str(), has(path)) {
            ("/etc/azaion", true) => "keep",
            (_, true) => "replace",
            (_, false) => "create",
        };
        assert_eq!(action, want, "{path}");
    }
    assert!(
        actions.contains_key("/etc/hostname") && actions.len() == 4,
        "{actions:?}"
    );
    assert_eq!(sha256(&img), before);
    assert!(!d.join("out.img").exists());
}

/// The enable-unit and remove-defaults examples in a tarball and in a raw
/// ext4 image: the same tree in, the same result out, read back with GNU
/// tar and bsdtar, and with debugfs and `e2fsck -fn`.
#[test]
fn examples_enable_unit_and_remove_defaults_in_an_archive_and_an_ext4_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
    fs::write(root.join("etc/motd"), "welcome\n").unwrap();
    fs::create_dir_all(root.join("var/lib/dbus")).unwrap();
    fs::write(root.join("var/lib/dbus/machine-id"), "0123\n").unwrap();
    fs::create_dir_all(root.join("etc/azaion/samples/more")).unwrap();
    fs::write(root.join("etc/azaion/samples/more/a.conf"), "x").unwrap();
    fs::write(root.join("etc/machine-id"), "0123\n").unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("/dev/null", wants.join("azaion-loader.service")).unwrap();
    let unit_path = "etc/systemd/system/azaion-loader.service";
    let link_path = "etc/systemd/system/multi-user.target.wants/azaion-loader.service";
    let stamp = |input: &Path, out: &Path| {
        ok(&run(offline(d, &["--serial", SERIAL, "--overlay"])
            .arg(example("enable-unit.toml"))
            .arg("--overlay")
            .arg(example("remove-defaults.toml"))
            .arg("--image")
            .arg(input)
            .arg("--output")
            .arg(out)));
    };

    // A gzip tar, as GNU tar makes it.
    let tar = d.join("rootfs.tar.gz");
    make_tar(&root, &tar, "tar.gz", "gnu", true);
    let out_tar = d.join("out.tar.gz");
    stamp(&tar, &out_tar);
    let unit = String::from_utf8(tar_file(&out_tar, unit_path)).unwrap();
    assert!(
        unit.contains("Description=Azaion loader for AZJN-0042"),
        "{unit}"
    );
    for tool in ["gnutar", "bsdtar"] {
        let into = d.join(format!("x-{tool}"));
        extract(tool, &out_tar, &into);
        assert_eq!(
            fs::read_link(into.join(link_path)).unwrap(),
            Path::new("/etc/systemd/system/azaion-loader.service"),
            "{tool}"
        );
        for gone in ["etc/motd", "var/lib/dbus/machine-id", "etc/azaion/samples"] {
            assert!(!into.join(gone).exists(), "{tool}: {gone} is still there");
        }
        assert!(into.join("var/lib/dbus").is_dir(), "{tool}");
        let m = fs::metadata(into.join("etc/machine-id")).unwrap();
        assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o444), "{tool}");
    }

    // A raw ext4 image, as mke2fs -d makes it.
    let img = d.join("rootfs.ext4");
    let o = mkfs(&root, &img, &["-t", "ext4"], "32M");
    assert!(o.status.success(), "mke2fs: {}", stderr(&o));
    let out_img = d.join("out.ext4");
    stamp(&img, &out_img);
    assert_fsck_clean(&out_img);
    let unit = debugfs(&out_img, &format!("cat /{unit_path}"));
    assert!(
        unit.contains("Description=Azaion loader for AZJN-0042"),
        "{unit}"
    );
    let link = debugfs(&out_img, &format!("stat /{link_path}"));
    assert!(
        link.contains("Fast link dest: \"/etc/systemd/system/azaion-loader.service\""),
        "{link}"
    );
    assert!(!debugfs_names(&out_img, "/etc").contains(&"motd".to_string()));
    assert!(!debugfs_names(&out_img, "/var/lib/dbus").contains(&"machine-id".to_string()));
    assert!(!debugfs_names(&out_img, "/etc/azaion").contains(&"samples".to_string()));
    let (mode, uid, gid) = debugfs_stat(&out_img, "/etc/machine-id");
    assert_eq!((mode & 0o7777, uid, gid), (0o444, 0, 0));
    // imprint's own reader agrees with debugfs.
    let o = run(bin().arg("cat").arg(&out_img).arg(format!("/{link_path}")));
    ok(&o);
    assert_eq!(stdout(&o), unit);
}
