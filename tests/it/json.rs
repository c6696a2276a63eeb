//! The JSON documents of provision and verify (docs/json.md), parsed and
//! checked field by field.

use crate::common;

use std::fs;

use common::*;
use imprint::stub::StubServer;
use serde_json::Value;
use tempfile::TempDir;

fn parse(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn provision_and_verify_documents() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let server = StubServer::start().unwrap();
    let img = small_ext4(d, "system.img.raw");
    let out = d.join("out.img");
    let o = run(provision_online(&img, &out, &server.url()).args(["--json", "--owner", "azaion"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).is_empty(),
        "--json keeps stderr quiet: {}",
        stderr(&o)
    );
    let doc = parse(&o);
    let password = server.password_of(EMAIL).unwrap();
    assert!(!stdout(&o).contains(&password));
    assert_eq!(doc["schema"], "imprint.provision/1");
    assert_eq!(doc["serial"], SERIAL);
    assert_eq!(doc["email"], EMAIL);
    assert_eq!(doc["input_kind"], "raw ext2/3/4 image");
    assert_eq!(doc["output"], out.display().to_string());
    assert_eq!(doc["sha256"], sha256(&out));
    assert_eq!(doc["size"], fs::metadata(&out).unwrap().len());
    assert_eq!(doc["sidecar"], format!("{}.sha256", out.display()));
    assert_eq!(doc["staged"], serde_json::json!([]));
    assert_eq!(doc["device_conf"]["path"], "/etc/azaion/device.conf");
    assert_eq!(doc["device_conf"]["mode"], "0600");
    assert_eq!(doc["device_conf"]["uid"], 1001);
    assert_eq!(doc["device_conf"]["gid"], 1001);
    assert_eq!(doc["device_conf"]["user"], "azaion");
    assert_eq!(doc["device_conf"]["group"], "azaion");
    assert_eq!(doc["account"], "created");

    let v = run(bin().arg("verify").arg(&out).args([
        "--json",
        "--serial",
        SERIAL,
        "--owner",
        "azaion",
        "--login-url",
        &server.url(),
    ]));
    assert!(v.status.success());
    let doc = parse(&v);
    assert!(!stdout(&v).contains(&password));
    assert_eq!(doc["schema"], "imprint.verify/1");
    assert_eq!(doc["image"], out.display().to_string());
    assert_eq!(doc["passed"], true);
    let names: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "checksum",
            "present",
            "regular file",
            "mode",
            "owner",
            "email",
            "password",
            "email matches serial",
            "e2fsck",
            "login"
        ]
    );
    for c in doc["checks"].as_array().unwrap() {
        assert_eq!(c["passed"], true, "{c}");
        assert!(c["detail"].is_string());
    }

    // A failing verify says so in the document and the exit code.
    fs::write(
        format!("{}.sha256", out.display()),
        format!("{}  out.img\n", "0".repeat(64)),
    )
    .unwrap();
    let v = run(bin().arg("verify").arg(&out).arg("--json"));
    assert_eq!(v.status.code(), Some(1));
    let doc = parse(&v);
    assert_eq!(doc["passed"], false);
    assert_eq!(doc["checks"][0]["name"], "checksum");
    assert_eq!(doc["checks"][0]["passed"], false);
}

#[test]
fn batch_document() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
    let input = d.join("base.tar.gz");
    make_tar(&root, &input, "tar.gz", "gnu", true);
    let out = d.join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("AZJN-0002-base.tar.gz"), "not ours").unwrap();
    let pw = write_password(d, PASSWORD);
    let o = run(bin()
        .args(["provision", "--json", "--offline", "--password-file"])
        .arg(&pw)
        .args(["--serial", "AZJN-0001", "--serial", "AZJN-0002", "--image"])
        .arg(&input)
        .arg("--output")
        .arg(&out));
    assert_eq!(o.status.code(), Some(1));
    let doc = parse(&o);
    assert!(!stdout(&o).contains(PASSWORD));
    assert_eq!(doc["schema"], "imprint.batch/1");
    assert_eq!(
        doc["manifest"],
        out.join("manifest.json").display().to_string()
    );
    assert_eq!(doc["failed"], 1);
    assert_eq!(
        doc["results"][0],
        serde_json::json!({"serial": "AZJN-0001", "status": "written"})
    );
    assert_eq!(doc["results"][1]["serial"], "AZJN-0002");
    assert_eq!(doc["results"][1]["status"], "failed");
    assert!(doc["results"][1]["error"]
        .as_str()
        .unwrap()
        .contains("--force"));
}

#[test]
fn sha1sum_file_for_nvidia_kernel_flash_tools() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let img = small_ext4(d, "system.img.raw");
    let pw = write_password(d, PASSWORD);
    let out = d.join("system.img");
    let o = run(provision_offline(&img, &out, "azaion", &pw).args([
        "--checksum",
        "sha256,sha1",
        "--json",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = parse(&o);
    let sha1_file = d.join("system.img.sha1sum");
    assert_eq!(doc["sha1sum"], sha1_file.display().to_string());
    let text = fs::read_to_string(&sha1_file).unwrap();
    assert_eq!(text.trim().len(), 40, "the digest alone: {text:?}");
    // How l4t_flash_from_kernel.sh compares it, and sha1sum -c of the same.
    sh(&format!(
        "cd {} && [ \"$(sha1sum system.img | cut -d' ' -f1)\" = \"$(cat system.img.sha1sum)\" ] \
         && echo \"$(cat system.img.sha1sum)  system.img\" | sha1sum -c -",
        d.display()
    ));
    sh(&format!(
        "cd {} && sha256sum -c system.img.sha256",
        d.display()
    ));
    // Without sha1 in --checksum, no .sha1sum file.
    let plain = d.join("plain.img");
    assert!(run(&mut provision_offline(&img, &plain, "azaion", &pw))
        .status
        .success());
    assert!(!d.join("plain.img.sha1sum").exists());
}

#[test]
fn completions_and_man_page() {
    let o = run(bin().args(["completions", "bash"]));
    assert!(o.status.success());
    assert!(stdout(&o).contains("_imprint") && stdout(&o).contains("--serials"));
    for shell in ["zsh", "fish"] {
        assert!(run(bin().args(["completions", shell])).status.success());
    }
    let o = run(bin().arg("man"));
    assert!(o.status.success());
    assert!(stdout(&o).contains(".TH imprint 1"), "{}", stdout(&o));
    // A reader that stops early is not an error.
    let o = sh(&format!("{} man | head -1", env!("CARGO_BIN_EXE_imprint")));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

/// The field names of a pretty-printed document, in the order printed.
fn keys(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix('"')?.split_once("\":"))
        .map(|(key, _)| key)
        .collect()
}

/// The documents' text stays as it was: fields in the order they have
/// always been printed in, and the staging-directory form of provision
/// byte for byte (nulls for an image file's fields and for owner names the
/// image does not know).
#[test]
fn documents_keep_their_text() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "staging");
    let pw = write_password(d, PASSWORD);
    let o = run(bin()
        .args(["provision", "--json", "--offline", "--password-file"])
        .arg(&pw)
        .args(["--serial", SERIAL, "--owner", "4242:4243", "--rootfs-dir"])
        .arg(&root));
    assert!(o.status.success(), "{}", stderr(&o));
    let staged =
        serde_json::to_string(&root.join("etc/azaion/device.conf").display().to_string()).unwrap();
    assert_eq!(
        stdout(&o),
        format!(
            r#"{{
  "account": null,
  "device_conf": {{
    "gid": 4243,
    "group": null,
    "mode": "0600",
    "path": "/etc/azaion/device.conf",
    "uid": 4242,
    "user": null
  }},
  "email": "{EMAIL}",
  "images": [],
  "input_kind": "staging directory",
  "output": null,
  "schema": "imprint.provision/1",
  "serial": "{SERIAL}",
  "sha1sum": null,
  "sha256": null,
  "sidecar": null,
  "size": null,
  "staged": [
    {staged}
  ]
}}
"#
        )
    );

    let v = run(bin().arg("verify").arg(&root).args([
        "--json",
        "--serial",
        SERIAL,
        "--owner",
        "4242:4243",
    ]));
    assert!(v.status.success(), "{}", stdout(&v));
    let checks = parse(&v)["checks"].as_array().unwrap().len();
    let mut expected = vec!["checks"];
    for _ in 0..checks {
        expected.extend(["detail", "name", "passed"]);
    }
    expected.extend(["image", "passed", "schema"]);
    assert_eq!(keys(&stdout(&v)), expected);

    let input = d.join("base.tar");
    make_tar(&root, &input, "tar", "gnu", true);
    let out = d.join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("AZJN-0002-base.tar"), "not ours").unwrap();
    // An owner given (no warning): the document as it always was.
    let b = run(bin()
        .args(["provision", "--json", "--offline", "--password-file"])
        .arg(&pw)
        .args(["--owner", "root:root"])
        .args(["--serial", "AZJN-0001", "--serial", "AZJN-0002", "--image"])
        .arg(&input)
        .arg("--output")
        .arg(&out));
    assert_eq!(b.status.code(), Some(1), "{}", stderr(&b));
    assert_eq!(
        keys(&stdout(&b)),
        [
            "failed", "manifest", "results", "serial", "status", "error", "serial", "status",
            "schema"
        ]
    );
}
