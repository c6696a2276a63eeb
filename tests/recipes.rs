//! The build-system recipes in recipes/, run for real where they can run
//! here: Buildroot's post-image script, the L4T station and sample-rootfs
//! scripts, and the Yocto class's shell function.

mod common;

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

/// A shell command with the built imprint first on PATH.
fn shell(script: &Path) -> Command {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_imprint"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new(script);
    c.env("PATH", path)
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

#[test]
fn buildroot_post_image_script() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let images = d.join("images");
    fs::create_dir(&images).unwrap();
    let tree = ext4_tree(d, 0, Azaion::Absent);
    assert!(
        mkfs(&tree, &images.join("rootfs.ext4"), &["-t", "ext4"], "16M")
            .status
            .success()
    );
    let pw = write_password(d, PASSWORD);
    let o = run(shell(&recipe("buildroot/post-image.sh"))
        .arg(&images)
        .env("IMPRINT_SERIALS", serials_file(d))
        .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 images"), "{}", stdout(&o));
    for s in ["AZJN-0101", "AZJN-0102"] {
        verifies(&images.join(format!("per-serial/{s}-rootfs.ext4")), s);
    }
}

#[test]
fn l4t_station_flashes_a_verified_per_device_image() {
    let dir = TempDir::new().unwrap();
    let l4t = dir.path().join("Linux_for_Tegra");
    fs::create_dir_all(l4t.join("bootloader")).unwrap();
    let tree = ext4_tree(dir.path(), 0, Azaion::Absent);
    let raw = dir.path().join("system.img.raw");
    assert!(mkfs(&tree, &raw, &["-t", "ext4"], "16M").status.success());
    let system = l4t.join("bootloader/system.img");
    imprint::image::sparse::encode_raw(
        &fs::File::open(&raw).unwrap(),
        4096,
        &mut fs::File::create(&system).unwrap(),
    )
    .unwrap();
    let base_hash = sha256(&system);
    // A stand-in flash.sh that records its arguments and the image it saw.
    fs::write(
        l4t.join("flash.sh"),
        "#!/bin/sh\necho \"$@\" > flashed-args\nsha256sum bootloader/system.img | cut -d' ' -f1 > flashed-image\n",
    )
    .unwrap();
    sh(&format!("chmod +x {}", l4t.join("flash.sh").display()));
    let pw = write_password(dir.path(), PASSWORD);
    let o = run(shell(&recipe("l4t/station.sh"))
        .current_dir(&l4t)
        .args(["AZJN-0042", "jetson-orin-nano-devkit", "internal"])
        .env("IMPRINT_OFFLINE_PASSWORD_FILE", &pw));
    // Run by anyone but root, station.sh calls flash.sh through sudo.
    let sudo_refused = !o.status.success() && stderr(&o).contains("sudo");
    if !require(
        !sudo_refused,
        &format!(
            "station.sh needs root or sudo to call flash.sh: {}",
            stderr(&o).lines().last().unwrap_or_default()
        ),
    ) {
        return;
    }
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        fs::read_to_string(l4t.join("flashed-args")).unwrap().trim(),
        "-r jetson-orin-nano-devkit internal"
    );
    assert_eq!(
        fs::read_to_string(l4t.join("flashed-image"))
            .unwrap()
            .trim(),
        sha256(&system)
    );
    assert_eq!(
        sha256(&l4t.join("bootloader/system.img.base")),
        base_hash,
        "the base is kept"
    );
    verifies(&system, "AZJN-0042");
}

#[test]
fn l4t_sample_rootfs_tbz2_per_serial() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = make_rootfs(d, "rootfs");
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
        verifies(&image, s);
        // As NVIDIA documents: tar -xpf into Linux_for_Tegra/rootfs.
        let x = d.join(format!("rootfs-{s}"));
        fs::create_dir(&x).unwrap();
        sh(&format!("tar -xpf {} -C {}", image.display(), x.display()));
        let conf = fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap();
        assert!(conf.starts_with(&format!(
            "AZAION_DEVICE_EMAIL=azaion-jetson-{}@azaion.com\n",
            &s[5..]
        )));
    }
}

#[test]
fn yocto_class_postprocess_function() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let deploy = d.join("deploy");
    fs::create_dir(&deploy).unwrap();
    small_ext4(&deploy, "azaion-image-jetson.rootfs.ext4");
    let server = StubServer::start().unwrap();
    // The class's function body, run by sh with the variables BitBake would
    // expand and stand-ins for bbnote/bbfatal.
    let class = fs::read_to_string(recipe("yocto/imprint.bbclass")).unwrap();
    let start = class.find("imprint_per_serial() {").unwrap();
    let end = start + class[start..].find("\n}\n").unwrap() + 3;
    let script = format!(
        "#!/bin/sh\nset -e\nbbnote() {{ echo \"$*\"; }}\nbbfatal() {{ echo \"$*\" >&2; exit 1; }}\n{}\nimprint_per_serial\n",
        &class[start..end]
    )
    .replace("${IMGDEPLOYDIR}", &deploy.display().to_string())
    .replace("${IMAGE_NAME}", "azaion-image-jetson")
    .replace("${IMAGE_NAME_SUFFIX}", ".rootfs")
    .replace("${IMPRINT_SERIALS}", &serials_file(d).display().to_string())
    .replace("${IMPRINT_API_URL}", &server.url())
    .replace("${IMPRINT_OWNER}", "azaion")
    .replace("${IMPRINT_IMAGE_TYPES}", "ext4 ext4.simg");
    let path = d.join("postprocess.sh");
    fs::write(&path, script).unwrap();
    sh(&format!("chmod +x {}", path.display()));
    let o = run(&mut shell(&path));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    for s in ["AZJN-0101", "AZJN-0102"] {
        let image = deploy.join(format!("per-serial/{s}-azaion-image-jetson.rootfs.ext4"));
        verifies(&image, s);
        let email = format!("azaion-jetson-{}@azaion.com", &s[5..]);
        assert!(server.password_of(&email).is_some());
    }
}

/// The CI recipes cannot run here; check that they are valid YAML of the
/// expected shape and that every imprint flag they use exists.
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
        "ci/gitlab-ci.yml",
        "buildroot/post-image.sh",
        "yocto/imprint.bbclass",
        "l4t/station.sh",
        "l4t/sample-rootfs.sh",
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
                    let flag = flag.trim_end_matches(['"', ';', ')']);
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
