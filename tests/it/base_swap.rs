//! A base replaced while a batch runs (`mv other.ext4 base.ext4`, as an
//! rsync, a CI download or an admin updating it does). The swap happens at
//! a known step, not after a guessed delay: the stub API runs it while it
//! answers the second account call, with one API worker (`--jobs 1`), so
//! the writer has written at most serials 1 to 4 by then and serial 5 is
//! always written after it. The batch must stop with an error naming the
//! base; every image under a final name, its sidecar, its manifest line
//! and its account come from the original base.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use imprint::stub::{Fault, Hook, StubServer};
use serde_json::Value;
use tempfile::TempDir;

const SERIALS: [&str; 6] = [
    "AZJN-0001",
    "AZJN-0002",
    "AZJN-0003",
    "AZJN-0004",
    "AZJN-0005",
    "AZJN-0006",
];

/// What the base's /etc/hostname says in an output image.
fn hostname_in(image: &Path, name: &str) -> String {
    if name.ends_with(".ext4") {
        return debugfs(image, "cat /etc/hostname");
    }
    let o = sh(&format!("tar -xOf {} ./etc/hostname", image.display()));
    stdout(&o)
}

/// Runs a batch over `base` that swaps `other` over it on the second
/// account call, and checks what it left.
fn swap_mid_batch(dir: &Path, base: &Path, other: &Path) {
    let name = base.file_name().unwrap().to_str().unwrap().to_string();
    let base_sha = sha256(base);
    let server = StubServer::start().unwrap();
    server.push_fault("POST", "/users", Fault::Delay(Duration::ZERO));
    let (from, to) = (other.to_path_buf(), base.to_path_buf());
    server.push_fault(
        "POST",
        "/users",
        Fault::Run(Hook::new(move || fs::rename(&from, &to).unwrap())),
    );
    let serials = dir.join("serials.txt");
    fs::write(&serials, SERIALS.join("\n")).unwrap();
    let out = dir.join("out");
    let o = run(bin()
        .args(["provision", "--owner", "azaion", "--jobs", "1", "--api-url"])
        .arg(server.url())
        .arg("--image")
        .arg(base)
        .arg("--output")
        .arg(&out)
        .arg("--serials")
        .arg(&serials));
    let (text, err) = (stdout(&o), stderr(&o));
    assert!(
        !o.status.success(),
        "{name}: exit 0 after its base changed\n{text}\n{err}"
    );
    assert!(
        text.contains(&format!(
            "{} changed while imprint was using it",
            base.display()
        )),
        "{name}: {text}\n{err}"
    );
    assert!(text.contains("FAILED"), "{text}");
    // Serials 5 and 6 were written after the swap, if at all.
    for s in &SERIALS[4..] {
        assert!(
            text.contains(&format!("{s}: FAILED")),
            "{name}: {s} not failed\n{text}"
        );
    }
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inputs"][0]["sha256"], base_sha.as_str());
    let listed = manifest["images"].as_array().unwrap();
    let finals: Vec<PathBuf> = listing(&out)
        .into_iter()
        .filter(|n| n.ends_with(&name))
        .map(|n| out.join(n))
        .collect();
    assert!(
        listing(&out).iter().all(|n| !n.starts_with('.')),
        "temp files left: {:?}",
        listing(&out)
    );
    // Images written before the swap stand, each with its account.
    assert!(finals.len() >= 3, "{name}: {finals:?}\n{text}");
    assert_eq!(finals.len(), listed.len(), "{name}: {text}");
    assert_eq!(finals.len(), server.user_count(), "{name}: {text}");
    for image in &finals {
        let sha = sha256(image);
        let side = fs::read_to_string(output_sidecar(image)).unwrap();
        assert!(
            side.starts_with(&sha),
            "{}: sidecar mismatch",
            image.display()
        );
        let entry = listed
            .iter()
            .find(|e| e["output"] == image.file_name().unwrap().to_str().unwrap())
            .unwrap();
        assert_eq!(entry["sha256"], sha.as_str());
        assert_eq!(
            hostname_in(image, &name).trim(),
            "jetson",
            "{} was made from the other base",
            image.display()
        );
        if name.ends_with(".ext4") {
            assert_fsck_clean(image);
        } else if name.ends_with(".zst") {
            sh(&format!("zstd -qt {}", image.display()));
        } else {
            sh(&format!("tar -tf {} >/dev/null", image.display()));
        }
    }
}

fn output_sidecar(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

#[test]
fn a_raw_ext4_base_replaced_mid_batch_stops_it() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    let base = d.join("base.ext4");
    assert!(mkfs(&tree, &base, &["-t", "ext4"], "16M").status.success());
    fs::write(tree.join("etc/hostname"), "other\n").unwrap();
    let other = d.join("other.ext4");
    assert!(mkfs(&tree, &other, &["-t", "ext4"], "16M").status.success());
    swap_mid_batch(d, &base, &other);
}

#[test]
fn a_tar_zst_base_replaced_mid_batch_stops_it() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
    let base = d.join("base.tar.zst");
    make_tar(&root, &base, "tar.zst", "gnu", true);
    fs::write(root.join("etc/hostname"), "other-host-name\n").unwrap();
    let other = d.join("other.tar.zst");
    make_tar(&root, &other, "tar.zst", "gnu", true);
    swap_mid_batch(d, &base, &other);
}

#[test]
fn a_plain_tar_base_replaced_by_one_of_the_same_size_mid_batch_stops_it() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
    let base = d.join("base.tar");
    make_tar(&root, &base, "tar", "gnu", true);
    // Same length, same times: only the bytes differ.
    fs::write(root.join("etc/hostname"), "OTHER!\n").unwrap();
    sh(&format!(
        "touch -d @1700000000 {}",
        root.join("etc/hostname").display()
    ));
    let other = d.join("other.tar");
    make_tar(&root, &other, "tar", "gnu", true);
    assert_eq!(
        fs::metadata(&base).unwrap().len(),
        fs::metadata(&other).unwrap().len()
    );
    swap_mid_batch(d, &base, &other);
}
