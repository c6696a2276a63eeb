//! A toy container that transforms bytes, in tests only: proof that a
//! container like LUKS (sectors decrypted on the way in, changed blocks
//! encrypted on the way out) is this one module plus its row in the format
//! table (`formats.rs` adds [`ROWS`] to the table in tests).
//!
//! Layout: a 4 KiB header (`MAGIC`, then an 8-byte little-endian key
//! seed), then the payload, each 512-byte sector XORed with a key of its
//! own (derived from the seed and the sector number, as XTS tweaks its key
//! with the sector number).

use std::io;

use super::formats::{Format, Open, Slot};
use super::volume::Volume;
use super::{Content, ImageError, ImageOptions};
use crate::io::read_at::ReadAt;

const MAGIC: &[u8; 8] = b"IMPRXOR1";
const HEADER: u64 = 4096;
const SECTOR: u64 = 512;
const NAME: &str = "XOR test container";

/// The row: found by its magic, also inside partitions and sparse images.
pub(super) const ROWS: &[Format] = &[Format {
    detect: |head| head.starts_with(MAGIC).then_some(Content::Container(NAME)),
    is: |c| c == Content::Container(NAME),
    partitioned: false,
    open: Open::Container {
        inner: open,
        nests: true,
    },
}];

fn open(
    outer: Box<dyn Volume>,
    _: &std::path::Path,
    _: &std::path::Path,
    _: &ImageOptions,
) -> Result<Vec<Slot>, ImageError> {
    let mut header = [0u8; 16];
    outer.read_at(0, &mut header).map_err(ImageError::Output)?;
    let seed = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    Ok(vec![Slot::whole(Box::new(Xor { outer, seed }))])
}

/// The key byte at byte `at` of the payload.
fn key(seed: u64, at: u64) -> u8 {
    let sector = at / SECTOR;
    let within = at % SECTOR;
    let word = seed ^ sector.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (word >> ((within % 8) * 8)) as u8 ^ within as u8
}

/// XORs `data`, which starts at byte `at` of the payload, with its keys
/// (its own inverse).
pub(crate) fn xor(seed: u64, at: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key(seed, at + i as u64);
    }
}

struct Xor {
    outer: Box<dyn Volume>,
    seed: u64,
}

impl ReadAt for Xor {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.outer.read_at(HEADER + offset, buf)?;
        xor(self.seed, offset, buf);
        Ok(())
    }
}

impl Volume for Xor {
    fn len(&self) -> u64 {
        self.outer.len().saturating_sub(HEADER)
    }

    /// Sectors are transformed whole.
    fn unit(&self) -> u64 {
        SECTOR.max(self.outer.unit())
    }

    fn carry_out(&self, offset: u64, data: &mut [u8]) -> io::Result<u64> {
        if offset % SECTOR != 0 || data.len() as u64 % SECTOR != 0 {
            return Err(io::Error::other(
                "a changed block that is not whole sectors",
            ));
        }
        xor(self.seed, offset, data);
        self.outer.carry_out(HEADER + offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Password;
    use crate::io::output::TempOutput;
    use crate::owner::{OwnerSpec, UserDb};
    use crate::plan::{DeviceVars, ImagePath, OverlaySpec, Plan};
    use std::path::Path;
    use std::process::Command;

    const SEED: u64 = 0x0123_4567_89ab_cdef;
    const EMAIL: &str = "azaion-jetson-0042@azaion.com";

    fn run(cmd: &mut Command) -> Vec<u8> {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// An ext4 image with /etc/passwd and /etc/group, as plain bytes.
    fn plain_ext4(dir: &Path) -> Vec<u8> {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(tree.join("etc/group"), "root:x:0:\n").unwrap();
        let img = dir.join("plain.img");
        run(Command::new("mke2fs")
            .args(["-F", "-q", "-t", "ext4", "-b", "4096", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("16M")
            .env("E2FSPROGS_FAKE_TIME", "1700000000"));
        std::fs::read(&img).unwrap()
    }

    /// `plain` inside the toy container.
    fn wrap(plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER as usize];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&SEED.to_le_bytes());
        let mut payload = plain.to_vec();
        xor(SEED, 0, &mut payload);
        out.extend(payload);
        out
    }

    fn plan() -> Plan {
        let password = Password::from_plain("0123456789abcdef0123456789abcdef");
        let vars = DeviceVars {
            serial: "AZJN-0042",
            email: EMAIL,
            password: &password,
        };
        let owner: OwnerSpec = "0:0".parse().unwrap();
        let db = UserDb::parse(None, None);
        Plan::resolve(
            &OverlaySpec::default_spec(),
            &vars,
            &db,
            &owner,
            1_700_000_000,
        )
        .unwrap()
    }

    /// Stamps `input` through `open_backend` into `out`.
    fn stamp(input: &Path, out: &Path) {
        let kind = crate::image::detect(input).unwrap();
        let targets = OverlaySpec::default_spec().targets();
        let dir = out.parent().unwrap();
        let mut backend =
            crate::image::open_backend(input, kind, &targets, dir, &Default::default()).unwrap();
        let facts = backend.facts().unwrap();
        assert_eq!(facts.len(), 1, "one filesystem");
        assert!(facts[0].passwd.is_some(), "read through the container");
        let mut temp = TempOutput::create(out).unwrap();
        backend.apply(&[plan()], &mut temp).unwrap();
        temp.commit().unwrap();
    }

    /// The payload of a container file, un-transformed, checked by e2fsck
    /// and debugfs; returns it.
    fn check_payload(container: &[u8], dir: &Path) -> Vec<u8> {
        assert_eq!(&container[..8], MAGIC, "the header is kept");
        let mut plain = container[HEADER as usize..].to_vec();
        xor(SEED, 0, &mut plain);
        let img = dir.join("check.img");
        std::fs::write(&img, &plain).unwrap();
        run(Command::new("e2fsck").arg("-fn").arg(&img));
        let conf = run(Command::new("debugfs")
            .args(["-R", "cat /etc/azaion/device.conf"])
            .arg(&img));
        assert!(
            String::from_utf8_lossy(&conf).contains(EMAIL),
            "device.conf inside: {}",
            String::from_utf8_lossy(&conf)
        );
        plain
    }

    #[test]
    fn a_transforming_container_is_stamped_read_and_checked_through() {
        crate::require::require_tools(&["mke2fs", "e2fsck", "debugfs"]);
        let dir = tempfile::tempdir().unwrap();
        let plain = plain_ext4(dir.path());
        let input = dir.path().join("in.xor");
        std::fs::write(&input, wrap(&plain)).unwrap();
        let kind = crate::image::detect(&input).unwrap();
        assert_eq!(kind.describe(), NAME);

        let out = dir.path().join("out.xor");
        stamp(&input, &out);
        let stamped = std::fs::read(&out).unwrap();
        assert_eq!(stamped.len(), HEADER as usize + plain.len());
        let back = check_payload(&stamped, dir.path());
        // Only the sectors of changed blocks differ, and they differ in the
        // ciphertext too: the rest of the container is its input's.
        let input_bytes = std::fs::read(&input).unwrap();
        let changed_sectors = (0..plain.len() / SECTOR as usize)
            .filter(|s| {
                let r = s * SECTOR as usize..(s + 1) * SECTOR as usize;
                back[r.clone()] != plain[r]
            })
            .count();
        let changed_cipher = (0..plain.len() / SECTOR as usize)
            .filter(|s| {
                let r = HEADER as usize + s * SECTOR as usize..HEADER as usize + (s + 1) * 512;
                stamped[r.clone()] != input_bytes[r]
            })
            .count();
        assert_eq!(changed_sectors, changed_cipher);
        assert!(
            changed_sectors > 0 && changed_sectors < 200,
            "{changed_sectors}"
        );

        // Read back through the same row: lookup, and e2fsck on the
        // expanded (un-transformed) volume.
        let mut reader = crate::image::open_reader(&out, &Default::default()).unwrap();
        let conf = ImagePath::parse("/etc/azaion/device.conf").unwrap();
        let (meta, content) = reader.lookup(&conf, 4096).unwrap().unwrap();
        assert_eq!(meta.mode & 0o7777, 0o600);
        assert!(String::from_utf8_lossy(&content.unwrap()).contains(EMAIL));
        assert_eq!(reader.fsck(), Some(Ok(())));
    }

    /// The same container inside an Android sparse image: the row nests,
    /// and its changed sectors are spliced into the sparse chunks.
    #[test]
    fn a_transforming_container_nests_inside_a_sparse_image() {
        crate::require::require_tools(&["mke2fs", "e2fsck", "debugfs", "img2simg", "simg2img"]);
        let dir = tempfile::tempdir().unwrap();
        let plain = plain_ext4(dir.path());
        let raw = dir.path().join("in.xor");
        std::fs::write(&raw, wrap(&plain)).unwrap();
        let input = dir.path().join("in.simg");
        run(Command::new("img2simg").arg(&raw).arg(&input));
        let out = dir.path().join("out.simg");
        stamp(&input, &out);
        let expanded = dir.path().join("out.raw");
        run(Command::new("simg2img").arg(&out).arg(&expanded));
        check_payload(&std::fs::read(&expanded).unwrap(), dir.path());
        let mut reader = crate::image::open_reader(&out, &Default::default()).unwrap();
        assert_eq!(reader.fsck(), Some(Ok(())));
    }
}
