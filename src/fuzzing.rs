//! The fuzz harnesses: one function per target, called by the cargo-fuzz
//! targets in `fuzz/` and, on stable in CI, by `tests/fuzz_corpus.rs`,
//! which replays every seed and every past crash in `testdata/fuzz/`.
//!
//! Each function takes arbitrary bytes and must return without panicking
//! (a panic is a bug), checking along the way that what imprint writes it
//! can read back.

use std::io::{self, Read, Write};
use std::path::Path;

use crate::compress::bzip2;
use crate::identity::{self, Password, Serial};
use crate::image::ext4::Ext4Inspector;
use crate::image::sparse::{self, SparseLayout, SparseView};
use crate::image::{self, ImageKind};
use crate::owner::{OwnerSpec, UserDb};
use crate::pipeline::{self, Request, Target};
use crate::plan::{DeviceVars, ImagePath, OverlaySpec, Plan};

const PASSWORD: &str = "0123456789abcdef0123456789abcdef";

fn scratch() -> tempfile::TempDir {
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    tempfile::tempdir_in(base).expect("a scratch directory")
}

/// Any bytes as a tarball (plain, gzip with the tail rewrite, bzip2, zstd,
/// xz): the whole offline provisioning path.
pub fn tarball(data: &[u8]) {
    let dir = scratch();
    let input = dir.path().join("in");
    std::fs::write(&input, data).expect("scratch write");
    // ext4 and sparse inputs have their own targets.
    if !matches!(image::detect(&input), Ok(ImageKind::Tar(_))) {
        return;
    }
    let output = dir.path().join("out");
    let request = Request {
        serial: Serial::parse("AZJN-0042").expect("constant"),
        target: Target::Image {
            input,
            output: output.clone(),
        },
        owner: "root".parse().expect("constant"),
        password: Some(Password::from_plain(PASSWORD)),
        overlay: OverlaySpec::default_spec(),
        api: None,
        sha1sum: false,
    };
    if pipeline::run(&request, &mut |_| {}).is_ok() {
        let mut reader = image::open_reader(&output).expect("our own output opens");
        let conf = ImagePath::parse("/etc/azaion/device.conf").expect("constant");
        let found = reader
            .lookup(&conf, 4096)
            .expect("our own output reads back");
        assert!(found.is_some(), "device.conf missing from our own output");
    }
}

/// Any bytes as a bzip2 file for the parallel block reader and the block
/// rewriter: what the parallel reader accepts, libbz2 must read the same
/// way, and continuing the stream after its last block must give a valid
/// stream.
pub fn bzip2(data: &[u8]) {
    // Enough to read any seed; bzip2 inflates up to 45x per block.
    const LIMIT: u64 = 64 << 20;
    let (decoder, index) = bzip2::ParallelDecoder::new(io::Cursor::new(data.to_vec()), None);
    let mut parallel = Vec::new();
    let parallel_ok = decoder.take(LIMIT).read_to_end(&mut parallel).is_ok();
    if !parallel_ok || parallel.len() as u64 == LIMIT {
        return;
    }
    let mut sequential = Vec::new();
    let sequential_ok = ::bzip2::read::MultiBzDecoder::new(data)
        .read_to_end(&mut sequential)
        .is_ok();
    assert!(
        sequential_ok && sequential == parallel,
        "the parallel bzip2 reader accepted what libbz2 reads differently"
    );
    let last = index
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .boundary_before(u64::MAX);
    if let Some(at) = last {
        let keep = (at.bit / 8) as usize;
        let mut out = data[..keep].to_vec();
        let mut encoder = bzip2::BlockEncoder::resume(&mut out, &at, data[keep]);
        encoder.write_all(b"new tail").expect("writing to memory");
        encoder.finish().expect("writing to memory");
        let mut back = Vec::new();
        ::bzip2::read::MultiBzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .expect("a resumed stream decodes");
        let mut want = parallel[..at.out as usize].to_vec();
        want.extend_from_slice(b"new tail");
        assert!(back == want, "a resumed stream decodes to other bytes");
    }
}

/// Any bytes as an Android sparse image: parse, read, expand, re-encode.
pub fn sparse(data: &[u8]) {
    let dir = scratch();
    let path = dir.path().join("in.img");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("scratch write");
    let file = std::fs::File::open(&path).expect("scratch read");
    let Ok(layout) = SparseLayout::parse(&file) else {
        return;
    };
    if layout.raw_size() > 16 << 20 {
        return; // valid but big: expanding it teaches nothing more
    }
    let view = SparseView::new(file, layout);
    let size = view.layout().raw_size();
    let mut buf = vec![0u8; (size - size / 3).min(4096) as usize];
    let _ = view.read_at(size / 3, &mut buf);
    let raw = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("raw"))
        .expect("scratch file");
    if sparse::expand(&view, &raw).is_ok() {
        let mut encoded = Vec::new();
        let changed = sparse::encode(&view, &raw, &mut encoded).expect("re-encoding an expansion");
        assert_eq!(changed, 0, "an unedited expansion has no changed blocks");
    }
}

/// Any bytes as an ext2/3/4 image for imprint's own reader.
pub fn ext4(data: &[u8]) {
    let len = data.len() as u64;
    let Ok(fs) = Ext4Inspector::open(data.to_vec(), len) else {
        return;
    };
    let _ = fs.check_writable();
    let _ = fs.facts();
    for p in ["/etc/azaion/device.conf", "/etc/passwd", "/etc"] {
        let _ = fs.lookup(&ImagePath::parse(p).expect("constant"), 1 << 20);
    }
}

/// Any bytes as a raw ext2/3/4 image, provisioned offline: libext2fs edits
/// it through imprint's I/O manager, the riskiest code in the crate (C on
/// numbers a damaged image chose, callbacks across the FFI boundary). The
/// seeds are small mke2fs images the fuzzer damages; whatever the damage,
/// the result is an output imprint reads back or a clean error.
pub fn ext4_write(data: &[u8]) {
    let dir = scratch();
    let input = dir.path().join("in.img");
    std::fs::write(&input, data).expect("scratch write");
    if !matches!(image::detect(&input), Ok(ImageKind::Ext4)) {
        return;
    }
    let output = dir.path().join("out.img");
    let request = Request {
        serial: Serial::parse("AZJN-0042").expect("constant"),
        target: Target::Image {
            input,
            output: output.clone(),
        },
        owner: "azaion".parse().expect("constant"),
        password: Some(Password::from_plain(PASSWORD)),
        overlay: OverlaySpec::default_spec(),
        api: None,
        sha1sum: false,
    };
    if pipeline::run(&request, &mut |_| {}).is_ok() {
        let mut reader = image::open_reader(&output).expect("our own output opens");
        let conf = ImagePath::parse("/etc/azaion/device.conf").expect("constant");
        let found = reader
            .lookup(&conf, 4096)
            .expect("our own output reads back");
        let (meta, content) = found.expect("device.conf is in our own output");
        assert_eq!(meta.kind, image::EntryType::Regular, "device.conf kind");
        let content = content.expect("device.conf content");
        let conf = identity::parse_device_conf(&content);
        assert_eq!(
            conf.password.as_ref().map(|p| p.expose()),
            Some(PASSWORD),
            "device.conf in our own output holds another password"
        );
    }
}

/// `passwd`, a NUL byte, `group`: parsing and owner resolution.
pub fn userdb(data: &[u8]) {
    let (passwd, group) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let db = UserDb::parse(Some(passwd), Some(group));
    for spec in ["root", "azaion", "azaion:video", "root:root", "1001:1001"] {
        let _ = db.resolve(&spec.parse::<OwnerSpec>().expect("constant"));
    }
    if let Ok(text) = std::str::from_utf8(passwd) {
        let _ = text.parse::<OwnerSpec>();
    }
}

/// device.conf as read back from an image; serials; rendering round-trips.
pub fn device_conf(data: &[u8]) {
    let conf = identity::parse_device_conf(data);
    if let Some(p) = &conf.password {
        let _ = identity::password_is_well_formed(p.expose());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Serial::parse(text);
        let password = Password::from_plain(text);
        if identity::password_is_well_formed(password.expose()) {
            let rendered = identity::render_device_conf("azaion-jetson-0042@azaion.com", &password);
            let back = identity::parse_device_conf(&rendered);
            assert_eq!(
                back.password.as_ref().map(|p| p.expose()),
                Some(password.expose()),
                "device.conf does not round-trip"
            );
        }
    }
}

/// Overlay specs: parse and resolve; a plan never escapes the image.
pub fn overlay(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = OverlaySpec::parse(text, "fuzz") else {
        return;
    };
    let db = UserDb::parse(
        Some(b"root:x:0:0::/:/bin/sh\nazaion:x:1001:1001::/:/bin/sh\n"),
        Some(b"root:x:0:\n"),
    );
    let password = Password::from_plain(PASSWORD);
    let vars = DeviceVars {
        serial: "AZJN-0042",
        email: "azaion-jetson-0042@azaion.com",
        password: &password,
    };
    let owner = "root".parse().expect("constant");
    if let Ok(plan) = Plan::resolve(&spec, &vars, &db, &owner, 0) {
        for e in &plan.entries {
            assert!(
                e.path
                    .components()
                    .iter()
                    .all(|c| c != ".." && c != "." && !c.is_empty()),
                "a plan path escapes: {}",
                e.path
            );
        }
    }
}

/// The harness for a target name, for replaying corpora.
pub fn harness(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "tarball" => tarball,
        "sparse" => sparse,
        "bzip2" => bzip2,
        "ext4" => ext4,
        "ext4_write" => ext4_write,
        "userdb" => userdb,
        "device_conf" => device_conf,
        "overlay" => overlay,
        _ => return None,
    })
}
