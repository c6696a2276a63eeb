//! `imprint demo`: the whole flow on a sample rootfs, against the loopback
//! stand-in API, so a newcomer sees it work in one command.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use imprint::admin::AdminConfig;
use imprint::identity::Serial;
use imprint::image::codec::Compression;
use imprint::overlay::OverlaySpec;
use imprint::provision::{self, Request, Target};
use imprint::stub::StubServer;
use imprint::verify::{self, Expectations};

/// A small rootfs, the files in `testdata/rootfs` (built into the binary so
/// the demo runs from anywhere): (path, mode, uid, gid, content).
pub const SAMPLE_FILES: &[(&str, u32, u32, u32, &[u8])] = &[
    (
        "etc/passwd",
        0o644,
        0,
        0,
        include_bytes!("../testdata/rootfs/etc/passwd"),
    ),
    (
        "etc/group",
        0o644,
        0,
        0,
        include_bytes!("../testdata/rootfs/etc/group"),
    ),
    (
        "etc/hostname",
        0o644,
        0,
        0,
        include_bytes!("../testdata/rootfs/etc/hostname"),
    ),
    (
        "etc/os-release",
        0o644,
        0,
        0,
        include_bytes!("../testdata/rootfs/etc/os-release"),
    ),
    (
        "usr/bin/azaion-loader",
        0o755,
        0,
        0,
        include_bytes!("../testdata/rootfs/usr/bin/azaion-loader"),
    ),
    (
        "home/azaion/.profile",
        0o644,
        1001,
        1001,
        include_bytes!("../testdata/rootfs/home/azaion/.profile"),
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

pub fn run(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let server = StubServer::start().context("cannot start the stand-in API on 127.0.0.1")?;
    println!(
        "1. Started a stand-in admin API and Loader at {}",
        server.url()
    );

    let base = dir.join("rootfs.tar.gz");
    write_sample_tar(&base, Compression::Gzip, 1_700_000_000)?;
    println!("2. Built a sample rootfs: {}", base.display());

    let serial = Serial::parse("AZJN-0042")?;
    let output = dir.join(format!("{serial}-rootfs.tar.gz"));
    let _ = std::fs::remove_file(&output);
    let request = Request {
        serial: serial.clone(),
        target: Target::Image {
            input: base.clone(),
            output: output.clone(),
        },
        owner: "azaion".parse()?,
        password: None,
        overlay: OverlaySpec::default_spec(),
        api: Some(AdminConfig::new(&server.url())),
    };
    let report = provision::run(&request, &mut |line| println!("   {line}"))?;
    let emitted = report.emitted.context("no image was written")?;
    println!(
        "3. Provisioned {} ({}) and wrote {} with /etc/azaion/device.conf (0600, owner azaion)",
        serial,
        report.email,
        emitted.path.display()
    );
    println!(
        "   sha256 {} recorded in {}",
        emitted.sha256,
        imprint::output::sidecar_path(&emitted.path).display()
    );

    let expect = Expectations {
        serial: Some(serial),
        owner: Some("azaion".parse()?),
        login: Some(AdminConfig::new(&server.url())),
    };
    let verified = verify::verify(&emitted.path, &expect)?;
    println!("4. Verified the image:");
    for c in &verified.checks {
        println!(
            "   {} {:<22} {}",
            if c.passed { "pass" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    anyhow::ensure!(verified.passed(), "the demo image did not verify");
    println!(
        "Done. Try: tar -tvzf {} ./etc/azaion/device.conf",
        emitted.path.display()
    );
    Ok(())
}
