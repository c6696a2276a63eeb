//! `imprint demo`: the whole flow on a sample rootfs, against the loopback
//! stand-in API, so a newcomer sees it work in one command.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::admin::AdminConfig;
use crate::compress::Compression;
use crate::identity::Serial;
use crate::image::{self, sparse};
use crate::io::output::TempOutput;
use crate::owner::Owner;
use crate::pipeline::{self, Request, Settings, Source};
use crate::plan::{ExtraVars, ImagePath, OverlaySpec, Plan, PlanEntry, PlanKind};
use crate::stub::StubServer;
use crate::verify::{self, Expectations};
use zeroize::Zeroizing;

/// A small rootfs, the files in `testdata/rootfs` (built into the binary so
/// the demo runs from anywhere): (path, mode, uid, gid, content).
pub const SAMPLE_FILES: &[(&str, u32, u32, u32, &[u8])] = &[
    (
        "etc/passwd",
        0o644,
        0,
        0,
        include_bytes!("../../testdata/rootfs/etc/passwd"),
    ),
    (
        "etc/group",
        0o644,
        0,
        0,
        include_bytes!("../../testdata/rootfs/etc/group"),
    ),
    (
        "etc/hostname",
        0o644,
        0,
        0,
        include_bytes!("../../testdata/rootfs/etc/hostname"),
    ),
    (
        "etc/os-release",
        0o644,
        0,
        0,
        include_bytes!("../../testdata/rootfs/etc/os-release"),
    ),
    (
        "usr/bin/azaion-loader",
        0o755,
        0,
        0,
        include_bytes!("../../testdata/rootfs/usr/bin/azaion-loader"),
    ),
    (
        "home/azaion/.profile",
        0o644,
        1001,
        1001,
        include_bytes!("../../testdata/rootfs/home/azaion/.profile"),
    ),
];

const SAMPLE_DIRS: &[(&str, u32, u32)] = &[
    ("", 0, 0),
    ("etc", 0, 0),
    ("usr", 0, 0),
    ("usr/bin", 0, 0),
    ("home", 0, 0),
    ("home/azaion", 1001, 1001),
];

/// Writes the sample rootfs as a tar archive with `./` paths (as NVIDIA's
/// sample rootfs has), GNU headers and a fixed mtime.
pub fn write_sample_tar(path: &Path, compression: Compression, mtime: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let encoder = compression.encoder(file)?;
    let mut builder = tar::Builder::new(encoder);
    let name_of = |id: u32| if id == 0 { "root" } else { "azaion" };
    for (dir, uid, gid) in SAMPLE_DIRS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(*uid as u64);
        h.set_gid(*gid as u64);
        h.set_username(name_of(*uid))?;
        h.set_groupname(name_of(*gid))?;
        h.set_mtime(mtime);
        h.set_size(0);
        builder.append_data(&mut h, format!("./{dir}"), std::io::empty())?;
    }
    for (name, mode, uid, gid, content) in SAMPLE_FILES {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_uid(*uid as u64);
        h.set_gid(*gid as u64);
        h.set_username(name_of(*uid))?;
        h.set_groupname(name_of(*gid))?;
        h.set_mtime(mtime);
        h.set_size(content.len() as u64);
        builder.append_data(&mut h, format!("./{name}"), *content)?;
    }
    let mut encoder = builder.into_inner()?;
    encoder.flush()?;
    encoder.finish_stream()?;
    Ok(())
}

/// Builds the sample rootfs as flash.sh's `system.img`: an empty ext4
/// filesystem from mke2fs, encoded as an Android sparse image and filled
/// through imprint's own sparse backend (libext2fs), which sets owners
/// without needing root.
pub fn write_sample_sparse(path: &Path, mtime: i64) -> Result<()> {
    let raw = path.with_extension("img.raw");
    let empty = path.with_extension("img.empty");
    let made = write_empty_sparse(&raw, &empty).and_then(|()| fill_sample(&empty, path, mtime));
    for scratch in [&raw, &empty] {
        let _ = std::fs::remove_file(scratch);
    }
    made
}

/// Makes an empty ext4 filesystem at `raw` and encodes it as the sparse
/// image `sparse_path`.
fn write_empty_sparse(raw: &Path, sparse_path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(raw);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "APP"])
        .arg(raw)
        .arg("32M")
        .output()
        .context("cannot run mke2fs (install e2fsprogs)")?;
    anyhow::ensure!(
        out.status.success(),
        "mke2fs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut out = File::create(sparse_path)
        .with_context(|| format!("cannot create {}", sparse_path.display()))?;
    sparse::encode_raw(&File::open(raw)?, 4096, &mut out)?;
    Ok(())
}

/// Writes the sample rootfs into a copy of the sparse image `empty` at
/// `path`, as provisioning writes its files.
fn fill_sample(empty: &Path, path: &Path, mtime: i64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut backend =
        image::open_backend(empty, image::detect(empty)?, &[], dir, &Default::default())?;
    let mut out =
        TempOutput::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    backend.apply(&[sample_plan(mtime)], &mut out)?;
    out.commit_without_sidecar()?;
    // Outputs are private; the sample is readable like the sample tarball.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// The sample directories and files as a plan.
fn sample_plan(mtime: i64) -> Plan {
    let owner = |id: u32| {
        if id == 0 {
            Owner::root()
        } else {
            Owner {
                uid: id,
                gid: id,
                user_name: Some("azaion".into()),
                group_name: Some("azaion".into()),
            }
        }
    };
    let path_of = |p: &str| ImagePath::parse(&format!("/{p}")).expect("sample paths are valid");
    let dirs = SAMPLE_DIRS
        .iter()
        .filter(|(d, ..)| !d.is_empty())
        .map(|(d, uid, _)| PlanEntry {
            path: path_of(d),
            kind: PlanKind::Dir,
            mode: 0o755,
            owner: owner(*uid),
            xattrs: Vec::new(),
        });
    let files = SAMPLE_FILES
        .iter()
        .map(|(name, mode, uid, _, content)| PlanEntry {
            path: path_of(name),
            kind: PlanKind::File(Zeroizing::new(content.to_vec())),
            mode: *mode,
            owner: owner(*uid),
            xattrs: Vec::new(),
        });
    Plan {
        entries: dirs.chain(files).collect(),
        mtime,
    }
}

pub fn run(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let server = StubServer::start().context("cannot start the stand-in API on 127.0.0.1")?;
    println!(
        "1. Started a stand-in admin API and Loader at {}",
        server.url()
    );

    let tarball = dir.join("rootfs.tar.gz");
    write_sample_tar(&tarball, Compression::Gzip, 1_700_000_000)?;
    let system_img = dir.join("system.img");
    // The sparse part needs e2fsprogs (mke2fs, libext2fs); without them the
    // tarball part still shows the whole flow.
    let sparse = match write_sample_sparse(&system_img, 1_700_000_000) {
        Ok(()) => {
            println!(
                "2. Built a sample rootfs twice: {} and the sparse ext4 {}",
                tarball.display(),
                system_img.display()
            );
            true
        }
        Err(e) => {
            println!("2. Built a sample rootfs: {}", tarball.display());
            println!("   (skipping the sparse system.img: {e:#})");
            false
        }
    };

    // One device per image: each serial's account ends up with the
    // password stamped into its own image.
    let tar_serial = Serial::parse("AZJN-0042")?;
    let img_serial = Serial::parse("AZJN-0043")?;
    provision_and_verify(&server, &tar_serial, &tarball, dir, 3)?;
    if sparse {
        provision_and_verify(&server, &img_serial, &system_img, dir, 4)?;
    }
    println!(
        "Done. Try: imprint ls {}/{tar_serial}-rootfs.tar.gz /etc/azaion",
        dir.display()
    );
    println!(
        "     and: tar -tvzf {}/{tar_serial}-rootfs.tar.gz ./etc/azaion/device.conf",
        dir.display()
    );
    if sparse {
        println!(
            "     and: simg2img {dir}/{img_serial}-system.img /tmp/x.raw && debugfs -R 'stat /etc/azaion/device.conf' /tmp/x.raw",
            dir = dir.display()
        );
    }
    Ok(())
}

/// Provisions `serial` into a copy of `input` against the stand-in API and
/// verifies the result, including a login with the stamped credentials.
fn provision_and_verify(
    server: &StubServer,
    serial: &Serial,
    input: &Path,
    dir: &Path,
    step: u32,
) -> Result<()> {
    let name = input
        .file_name()
        .context("input has a name")?
        .to_string_lossy();
    let output = dir.join(format!("{serial}-{name}"));
    let _ = std::fs::remove_file(&output);
    // An extra overlay with a per-device variable, as `--overlay` and
    // `--devices` give one (overlays/README.md).
    let mut settings = Settings::new("azaion".parse()?);
    settings
        .overlay
        .extend(OverlaySpec::parse(DEMO_OVERLAY, "demo overlay")?);
    let number = serial.as_str().rsplit('-').next().unwrap_or_default();
    let hostname = format!("jetson-{number}");
    let vars = ExtraVars::new([("hostname".to_string(), hostname)].into());
    settings.devices = std::sync::Arc::new([(serial.to_string(), vars)].into());
    let request = Request {
        serial: serial.clone(),
        inputs: vec![(Source::Image(input.to_path_buf()), Some(output.clone()))],
        password: None,
        settings,
        api: Some(AdminConfig::new(&server.url())),
    };
    let report = pipeline::run(request, &mut |line| println!("   {line}"))?;
    let emitted = report
        .outputs
        .into_iter()
        .find_map(|o| o.emitted)
        .context("no image was written")?;
    println!(
        "{step}. Provisioned {} ({}) and wrote {} with /etc/azaion/device.conf (0600, owner azaion)",
        serial,
        report.email,
        emitted.path.display()
    );
    println!(
        "   sha256 {} recorded in {}",
        emitted.sha256,
        crate::io::output::sidecar_path(&emitted.path).display()
    );
    let expect = Expectations {
        password_policy: Default::default(),
        image: Default::default(),
        serial: Some(serial.clone()),
        owner: Some("azaion".parse()?),
        login: Some(AdminConfig::new(&server.url())),
    };
    let verified = verify::verify(&emitted.path, &expect)?;
    println!("   Verified {}:", emitted.path.display());
    for c in &verified.checks {
        println!("   {c}");
    }
    anyhow::ensure!(
        verified.passed(),
        "the demo image {} did not verify",
        emitted.path.display()
    );
    // What `imprint ls OUT /etc/azaion` and `imprint cat OUT /etc/hostname` show.
    let mut reader = image::open_reader(&emitted.path, &Default::default())?;
    let azaion = ImagePath::parse("/etc/azaion").expect("constant");
    println!("   Inside it, /etc/azaion holds:");
    for l in reader.list(Some(&azaion), false)?.unwrap_or_default() {
        let m = &l.meta;
        println!(
            "     {:04o} {}:{} {:>4} bytes  /{}",
            m.mode, m.uid, m.gid, m.size, l.path
        );
    }
    let mut hostname = Vec::new();
    let hostname_path = ImagePath::parse("/etc/hostname").expect("constant");
    reader.cat(&hostname_path, &mut hostname)?;
    println!(
        "   and /etc/hostname says {:?}",
        String::from_utf8_lossy(&hostname).trim_end()
    );
    Ok(())
}

/// The demo's extra overlay: a hostname from a device variable.
const DEMO_OVERLAY: &str = r#"
[[entry]]
path = "/etc/hostname"
type = "file"
mode = "0644"
owner = "0:0"
content = "{hostname}\n"
"#;
