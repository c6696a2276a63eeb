//! The scan cache: a warm run (the scan read back from the cache, the
//! prefix copied, the tail rewritten) gives exactly the bytes of a cold
//! run; anything that does not match the input or does not read back whole
//! is a miss, never an error or a wrong output; processes racing on the
//! cache leave it whole. Every test points XDG_CACHE_HOME at its own
//! temp dir.

use crate::common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// device.conf exists and is the first entry with data.
    Start,
    /// device.conf exists between megabytes of data.
    Middle,
    /// No device.conf: the new entries go at the end.
    End,
}

/// Text-like bytes that compress, but not trivially.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let words = ["jetson", "rootfs", "kernel", "module", "loader", "\n"];
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
        out.push(b' ' + ((x >> 20) as u8 % 64));
    }
    out.truncate(len);
    out
}

/// A rootfs tree with four files of `file_len` bytes on each side of
/// /etc; `seed` varies the data.
fn tree(dir: &Path, place: Place, seed: u64, file_len: usize) -> PathBuf {
    let root = dir.join(format!("tree-{place:?}-{seed}"));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nazaion:x:1001:1001::/home/azaion:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nazaion:x:1001:\n").unwrap();
    if place != Place::End {
        fs::create_dir(root.join("etc/azaion")).unwrap();
        fs::write(
            root.join("etc/azaion/device.conf"),
            "AZAION_DEVICE_EMAIL=old\n",
        )
        .unwrap();
    }
    // --sort=name: "a-..." comes before "etc", "z..." after it.
    let before = if place == Place::Start {
        "zz-data"
    } else {
        "a-data"
    };
    let mut dirs = vec![before];
    if place == Place::Middle {
        dirs.push("z-data");
    }
    for (n, d) in dirs.iter().enumerate() {
        fs::create_dir_all(root.join(d)).unwrap();
        for i in 0..4 {
            let data = filler(seed * 100 + n as u64 * 10 + i, file_len);
            fs::write(root.join(d).join(format!("f{i}")), data).unwrap();
        }
    }
    root
}

/// A [`tree`] with 3 MB of data around /etc as a tarball compressed with
/// `ext`'s tool.
fn archive(dir: &Path, place: Place, seed: u64, ext: &str) -> PathBuf {
    archive_of(dir, place, seed, ext, 3 << 18)
}

/// [`archive`] with files of `file_len` bytes.
fn archive_of(dir: &Path, place: Place, seed: u64, ext: &str, file_len: usize) -> PathBuf {
    let root = tree(dir, place, seed, file_len);
    let out = dir.join(format!("in-{place:?}-{seed}.{ext}"));
    sh(&format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C {} -cf - . | {} > {}",
        root.display(),
        compressor(ext),
        out.display()
    ));
    out
}

/// A file changed within the last seconds is never cached (its change
/// time may not tell a later change apart): let the inputs age.
fn let_inputs_age() {
    std::thread::sleep(Duration::from_millis(2100));
}

/// `imprint -v provision` of `input` into `output` (removed first), with
/// the cache in `home/imprint`.
fn command(input: &Path, output: &Path, home: &Path, serial: &str) -> Command {
    let _ = fs::remove_file(output);
    let pw = write_password(output.parent().unwrap(), PASSWORD);
    let mut cmd = bin();
    cmd.env("XDG_CACHE_HOME", home)
        .env_remove("IMPRINT_CACHE_DIR")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["-v", "provision", "--serial", serial, "--offline"])
        .args(["--owner", "azaion", "--password-file"])
        .arg(pw)
        .arg("--image")
        .arg(input)
        .arg("--output")
        .arg(output);
    cmd
}

/// One run, which must succeed.
fn provision(input: &Path, output: &Path, home: &Path, serial: &str, extra: &[&str]) -> Output {
    let o = run(command(input, output, home, serial).args(extra));
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// Runs and returns the output's bytes and whether the cache was hit.
fn stamp(input: &Path, output: &Path, home: &Path, serial: &str) -> (Vec<u8>, bool) {
    let o = provision(input, output, home, serial, &[]);
    let err = stderr(&o);
    let hit = err.contains("scan cache hit");
    assert!(hit || err.contains("scan cache miss"), "{err}");
    (fs::read(output).unwrap(), hit)
}

/// The output without the cache, to compare with.
fn reference(input: &Path, output: &Path, home: &Path, serial: &str) -> Vec<u8> {
    let o = provision(input, output, home, serial, &["--no-cache"]);
    assert!(!stderr(&o).contains("scan cache"), "{}", stderr(&o));
    fs::read(output).unwrap()
}

fn entries(home: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(home.join("imprint"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "idx"));
    v.sort();
    v
}

/// device.conf between megabytes of data, in every cached codec: the
/// warm run equals the cold run (the other places are the slow tier's).
#[test]
fn warm_runs_equal_cold_runs_for_every_codec() {
    warm_runs_equal_cold_runs(&[Place::Middle]);
}

/// [`warm_runs_equal_cold_runs_for_every_codec`] with device.conf first
/// and with no device.conf at all.
#[test]
#[ignore = "slow tier: 8 more archives of 3 MB, each stamped 5 times"]
fn warm_runs_equal_cold_runs_for_every_codec_at_the_start_and_end() {
    warm_runs_equal_cold_runs(&[Place::Start, Place::End]);
}

fn warm_runs_equal_cold_runs(places: &[Place]) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let home = d.join("cache-home");
    let mut inputs = Vec::new();
    for ext in ["tar", "tar.zst", "tar.gz", "tbz2"] {
        for &place in places {
            inputs.push((ext, place, archive(d, place, 1, ext)));
        }
    }
    let_inputs_age();
    for (ext, place, input) in &inputs {
        let label = format!("{ext} {place:?}");
        let out = d.join(format!("out.{ext}"));
        let want = reference(input, &out, &home, SERIAL);
        let (cold, hit) = stamp(input, &out, &home, SERIAL);
        assert!(!hit, "{label}: the first run cannot hit");
        assert!(cold == want, "{label}: the cold run differs");
        let (warm, hit) = stamp(input, &out, &home, SERIAL);
        assert!(hit, "{label}: the second run must hit");
        assert!(
            warm == want,
            "{label}: the warm run differs from the cold run"
        );
        // The next device: another serial, same base.
        let want = reference(input, &out, &home, "AZJN-7");
        let (warm, hit) = stamp(input, &out, &home, "AZJN-7");
        assert!(hit, "{label}");
        assert!(warm == want, "{label}: another serial's warm run differs");
        check_archive(&out, ext);
    }
    // One entry per input, private.
    assert_eq!(entries(&home).len(), inputs.len());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home.join("imprint")), 0o700);
    for e in entries(&home) {
        assert_eq!(mode(&e), 0o600, "{}", e.display());
    }
}

/// GNU tar and bsdtar read the output and find the device's file in it.
fn check_archive(path: &Path, ext: &str) {
    for tool in ["gnutar", "bsdtar"] {
        let x = path.with_extension(format!("x-{tool}-{}", ext.replace('.', "")));
        let _ = fs::remove_dir_all(&x);
        extract(tool, path, &x);
        assert_eq!(
            fs::read_to_string(x.join("etc/azaion/device.conf")).unwrap(),
            conf_text("azaion-jetson-7@azaion.com", PASSWORD)
        );
    }
}

/// A single-block xz tarball keeps its LZMA2 chunk starts in the cache:
/// the warm run reads the cache and writes the same bytes. (Small files:
/// no size changes that, and imprint spends about a CPU second per
/// megabyte of this text in xz.)
#[test]
fn single_block_xz_is_cached_and_still_right() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let home = d.join("h");
    let input = archive_of(d, Place::End, 1, "tar.xz", 64 << 10);
    let_inputs_age();
    let out = d.join("out.tar.xz");
    let want = reference(&input, &out, &home, SERIAL);
    for (run, seen) in [(0, "scan cache miss"), (1, "scan cache hit")] {
        let o = provision(&input, &out, &home, SERIAL, &[]);
        assert!(stderr(&o).contains(seen), "run {run}: {}", stderr(&o));
        assert!(fs::read(&out).unwrap() == want, "run {run}");
    }
    assert!(!entries(&home).is_empty());

    // Behind a BCJ filter the block is not cut inside (the filter has its
    // own state there): nothing to cache, and the output is still right.
    let bcj = d.join("in-bcj.tar.xz");
    sh(&format!(
        "xz -dc {} | xz --x86 --lzma2=preset=6 > {}",
        input.display(),
        bcj.display()
    ));
    let_inputs_age();
    let want = reference(&bcj, &out, &home, SERIAL);
    for run in 0..2 {
        let o = provision(&bcj, &out, &home, SERIAL, &[]);
        assert!(
            stderr(&o).contains("scan cache not used"),
            "bcj run {run}: {}",
            stderr(&o)
        );
        assert!(fs::read(&out).unwrap() == want, "bcj run {run}");
    }
}

/// Rewritten in place with other content of the same size, and its mtime
/// set back: the change time gives it away, and the run reads it whole.
#[test]
fn an_input_changed_in_place_is_a_miss() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let home = d.join("h");
    // Another archive of the same layout and sizes, other bytes.
    let input = archive(d, Place::Middle, 1, "tar");
    let other = fs::read(archive(d, Place::Middle, 2, "tar")).unwrap();
    assert_eq!(fs::metadata(&input).unwrap().len(), other.len() as u64);
    let_inputs_age();
    let out = d.join("out.tar");
    stamp(&input, &out, &home, SERIAL);
    assert!(stamp(&input, &out, &home, SERIAL).1, "warm");
    let mtime = fs::metadata(&input).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new().write(true).open(&input).unwrap();
    f.write_all_at(&other, 0).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&input).unwrap().modified().unwrap(), mtime);
    let want = reference(&input, &d.join("ref"), &home, SERIAL);
    let (got, hit) = stamp(&input, &out, &home, SERIAL);
    assert!(!hit, "a changed input must miss");
    assert!(got == want, "the output must be the new input's");
    // A plain archive is easy to change in place: new bytes inside a file
    // of the bulk data, same size, same mtime.
    let input = archive(d, Place::Middle, 3, "tar");
    let_inputs_age();
    let out = d.join("out.tar");
    stamp(&input, &out, &home, SERIAL);
    assert!(stamp(&input, &out, &home, SERIAL).1);
    let mtime = fs::metadata(&input).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new().write(true).open(&input).unwrap();
    // a-data/f0's content starts after its header, early in the archive.
    let data = fs::read(&input).unwrap();
    let at = data
        .windows(6)
        .position(|w| w == b"jetson" || w == b"rootfs")
        .unwrap();
    f.write_all_at(b"XXXXXX", at as u64).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let want = reference(&input, &d.join("ref"), &home, SERIAL);
    let (got, hit) = stamp(&input, &out, &home, SERIAL);
    assert!(!hit, "a changed input must miss");
    assert!(got == want);
    assert!(got.windows(6).any(|w| w == b"XXXXXX"));
}

/// An entry cut short, zeroed, flipped, or written by another version:
/// a miss, the right output, and the entry rewritten for the next run.
#[test]
fn a_damaged_or_foreign_entry_is_a_miss() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let home = d.join("h");
    let input = archive(d, Place::Middle, 1, "tar.gz");
    let_inputs_age();
    let out = d.join("out.tar.gz");
    let want = reference(&input, &out, &home, SERIAL);
    stamp(&input, &out, &home, SERIAL);
    let entry = entries(&home).pop().expect("an entry");
    let good = fs::read(&entry).unwrap();
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let at = good
        .windows(version.len())
        .position(|w| w == version)
        .unwrap();
    let mut foreign = good.clone();
    foreign[at] = b'9';
    // With the checksum made right again: only the version is wrong.
    let body = foreign.len() - 32;
    let sum = <sha2::Sha256 as sha2::Digest>::digest(&foreign[..body]);
    foreign[body..].copy_from_slice(&sum);
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let damages: [(&str, Vec<u8>); 6] = [
        ("cut in half", good[..good.len() / 2].to_vec()),
        ("cut by a byte", good[..good.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("zeroed", vec![0u8; good.len()]),
        ("one bit flipped", flipped),
        ("another version", foreign),
    ];
    for (what, bytes) in damages {
        fs::write(&entry, &bytes).unwrap();
        let o = provision(&input, &out, &home, SERIAL, &[]);
        let err = stderr(&o);
        assert!(err.contains("scan cache miss"), "{what}: {err}");
        if what == "another version" {
            assert!(err.contains("another imprint version"), "{err}");
        }
        assert!(fs::read(&out).unwrap() == want, "{what}: wrong output");
        assert!(
            stamp(&input, &out, &home, SERIAL).1,
            "{what}: not rewritten"
        );
    }
}

/// Processes stamping from one base at once, each saving its entry: every
/// output is right, and the entry left behind is whole.
#[test]
fn processes_racing_on_the_cache_do_not_corrupt_it() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let home = d.join("h");
    let inputs = [
        archive(d, Place::End, 1, "tar.zst"),
        archive(d, Place::Middle, 1, "tar"),
    ];
    let_inputs_age();
    let wants: Vec<Vec<u8>> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| reference(input, &d.join(format!("ref{i}")), &home, SERIAL))
        .collect();
    for round in 0..3 {
        let _ = fs::remove_dir_all(&home);
        let children: Vec<_> = (0..6)
            .map(|n| {
                // Each in a directory of its own: `command` writes the
                // password file beside the output.
                let out = d.join(format!("race-{n}/out"));
                fs::create_dir_all(out.parent().unwrap()).unwrap();
                let mut cmd = command(&inputs[n % 2], &out, &home, SERIAL);
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                (n, out, cmd.spawn().unwrap())
            })
            .collect();
        for (n, out, mut child) in children {
            assert!(child.wait().unwrap().success(), "round {round}");
            assert!(fs::read(&out).unwrap() == wants[n % 2], "round {round}");
        }
        assert_eq!(entries(&home).len(), 2, "round {round}");
        let leftovers: Vec<_> = fs::read_dir(home.join("imprint"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
        for (i, input) in inputs.iter().enumerate() {
            let (got, hit) = stamp(input, &d.join("after"), &home, SERIAL);
            assert!(hit && got == wants[i], "round {round}: entry {i} damaged");
        }
    }
}

/// --no-cache neither reads nor writes the cache; without XDG_CACHE_HOME
/// the cache goes to ~/.cache/imprint.
#[test]
fn no_cache_reads_and_writes_nothing_and_home_is_the_fallback() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = archive(d, Place::End, 1, "tar");
    let_inputs_age();
    let home = d.join("h");
    reference(&input, &d.join("o"), &home, SERIAL);
    assert!(!home.exists(), "--no-cache created the cache");
    let user_home = d.join("user");
    fs::create_dir(&user_home).unwrap();
    for expect in ["miss", "hit"] {
        let output = d.join(format!("o-{expect}"));
        let o = run(command(&input, &output, &home, SERIAL)
            .env_remove("XDG_CACHE_HOME")
            .env("HOME", &user_home));
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("scan cache {expect}")),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(entries(&user_home.join(".cache")).len(), 1);
}

/// A file changed in the last two seconds is read but not cached: a change
/// within the same clock tick could keep its change time.
#[test]
fn a_just_written_input_is_not_cached() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let home = d.join("h");
    let input = archive(d, Place::End, 1, "tar");
    // Made "now": its change time is now, whatever its mtime says.
    let f = fs::OpenOptions::new().write(true).open(&input).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let o = provision(&input, &d.join("o"), &home, SERIAL, &[]);
    assert!(stderr(&o).contains("not cached"), "{}", stderr(&o));
    assert!(entries(&home).is_empty());
}

/// What the tar scan learns beyond entry offsets — pax global records,
/// hard links naming device.conf, passwd behind a symlink, owner names —
/// comes back from the cache whole: a warm run of such an archive (made by
/// Python's tarfile) equals the cold run, for plain tar and zstd.
#[test]
fn a_warm_run_keeps_globals_hard_links_and_symlinked_passwd() {
    require_tool("python3");
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let home = d.join("cache-home");
    let script = r#"
import io, sys, tarfile
def add(t, name, data=None, **kw):
    i = tarfile.TarInfo(name)
    for k, v in kw.items(): setattr(i, k, v)
    if data is not None: i.size = len(data)
    t.addfile(i, io.BytesIO(data) if data is not None else None)
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT,
                  pax_headers={"uid": "0", "gid": "0", "uname": "root", "gname": "root"}) as t:
    D, S, L = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    add(t, "./etc", type=D, mode=0o755, mtime=1600000000)
    add(t, "./usr", type=D, mode=0o755, mtime=1600000000)
    add(t, "./usr/lib", type=D, mode=0o755, mtime=1600000000)
    add(t, "./usr/lib/passwd", b"root:x:0:0::/root:/bin/sh\nazaion:x:1001:996::/home/azaion:/bin/sh\n", mode=0o644, mtime=1600000000)
    add(t, "./etc/passwd", type=S, linkname="../usr/lib/passwd", mtime=1600000000)
    add(t, "./etc/group", b"root:x:0:\nazaion:x:996:\n", mode=0o644, mtime=1600000000)
    for i in range(200):
        add(t, "./usr/lib/f%03d" % i, bytes([i % 251]) * 5000, mode=0o644, mtime=1600000000)
    add(t, "./etc/azaion", type=D, mode=0o755, mtime=1600000000)
    add(t, "./etc/azaion/device.conf", b"AZAION_DEVICE_EMAIL=old@azaion.com\nAZAION_DEVICE_PASSWORD=old\n", mode=0o600, mtime=1600000000)
    add(t, "./etc/azaion/device.conf.bak", type=L, linkname="./etc/azaion/device.conf", mtime=1600000000)
"#;
    let tar = d.join("globals.tar");
    let o = run(Command::new("python3").arg("-c").arg(script).arg(&tar));
    assert!(o.status.success(), "{}", stderr(&o));
    let zst = d.join("globals.tar.zst");
    assert!(sh(&format!(
        "zstd -q -19 {} -o {}",
        tar.display(),
        zst.display()
    ))
    .status
    .success());
    let_inputs_age();
    for (ext, input) in [("tar", &tar), ("tar.zst", &zst)] {
        let out = d.join(format!("out.{ext}"));
        let want = reference(input, &out, &home, SERIAL);
        let (cold, hit) = stamp(input, &out, &home, SERIAL);
        assert!(!hit && cold == want, "{ext}: cold run");
        let (warm, hit) = stamp(input, &out, &home, SERIAL);
        assert!(hit, "{ext}: the second run must hit");
        assert!(
            warm == want,
            "{ext}: the warm run differs from the cold run"
        );
        // The old password stays with the other name; the new file is 1001:996.
        let bak = sh(&format!(
            "tar -xOf {} ./etc/azaion/device.conf.bak",
            out.display()
        ));
        assert_eq!(
            stdout(&bak),
            "AZAION_DEVICE_EMAIL=old@azaion.com\nAZAION_DEVICE_PASSWORD=old\n"
        );
        let v = run(bin().arg("verify").arg(&out).args(["--owner", "azaion"]));
        assert!(v.status.success(), "{}", stdout(&v));
    }
}

/// An sshfs mount of `dir` (SFTP to a local sftp-server, no ssh): a FUSE
/// filesystem whose ctime is the mtime, as at stations that stamp from an
/// image share. Unmounted when dropped.
struct Sshfs(PathBuf);

impl Sshfs {
    fn mount(dir: &Path, at: &Path) -> Option<Sshfs> {
        crate::require::require_tools(&["sshfs", "fusermount"]);
        let server = ["/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        crate::require::require_installed(
            server.is_some(),
            "sftp-server",
            "apt-get install openssh-sftp-server",
        );
        let script = dir.parent().unwrap().join("sftp-over-stdio.sh");
        fs::write(&script, format!("#!/bin/sh\nexec {}\n", server.unwrap())).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(at).unwrap();
        let o = run(Command::new("sshfs")
            .arg(format!("localhost:{}", dir.display()))
            .arg(at)
            .arg("-o")
            .arg(format!(
                "ssh_command={},dir_cache=no,attr_timeout=0,entry_timeout=0",
                script.display()
            )));
        crate::require::require(
            o.status.success(),
            &format!("cannot mount sshfs (needs /dev/fuse): {}", stderr(&o)),
        )
        .then(|| Sshfs(at.to_path_buf()))
    }
}

impl Drop for Sshfs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.0).status();
    }
}

/// On sshfs the ctime is the mtime: /etc/passwd changed in place, away
/// from the sampled blocks, with the mtime put back keeps every field of
/// the identity. The key is then the whole file's digest (said in -v):
/// the changed input is a miss, and the output is the new input's.
#[test]
fn an_input_changed_in_place_on_sshfs_is_a_miss() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let share = d.join("share");
    fs::create_dir(&share).unwrap();
    let served = archive(&share, Place::Middle, 5, "tar");
    let Some(mount) = Sshfs::mount(&share, &d.join("mnt")) else {
        return;
    };
    // SFTP keeps whole seconds: so that the mtime can be put back as seen.
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    fs::File::options()
        .write(true)
        .open(&served)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let input = mount.0.join(served.file_name().unwrap());
    let home = d.join("h");
    let out = d.join("out.tar");
    let_inputs_age();
    stamp(&input, &out, &home, SERIAL);
    let o = provision(&input, &out, &home, SERIAL, &[]);
    let err = stderr(&o);
    assert!(err.contains("scan cache hit"), "warm: {err}");
    assert!(
        err.contains("FUSE") && err.contains("keyed by the whole file's SHA-256"),
        "{err}"
    );
    // azaion's uid 1001 becomes 1002, outside every sampled block.
    let data = fs::read(&served).unwrap();
    let at = data
        .windows(13)
        .position(|w| w == b"azaion:x:1001")
        .unwrap() as u64
        + 9;
    let size = data.len() as u64;
    let last = size - 4096;
    for i in 0..16u64 {
        let s = if i == 15 { last } else { last / 15 * i };
        assert!(!(s..s + 4096).contains(&at), "the change is in sample {i}");
    }
    let f = fs::OpenOptions::new().write(true).open(&served).unwrap();
    f.write_all_at(b"1002", at).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let seen = fs::metadata(&input).unwrap();
    assert_eq!(seen.modified().unwrap(), mtime);
    assert_eq!(
        seen.ctime(),
        seen.mtime(),
        "sshfs reports the mtime as ctime"
    );
    let want = reference(&input, &d.join("ref"), &home, SERIAL);
    let (got, hit) = stamp(&input, &out, &home, SERIAL);
    assert!(!hit, "a changed input must miss");
    assert!(got == want, "the output must be the new input's");
}

/// `IMPRINT_CACHE_DIR` at a directory the user shares with other tools:
/// its mode stays as it is, and only imprint's own files (named so, and
/// entries beginning as entries do) are counted, evicted or cleaned.
#[test]
fn a_shared_cache_directory_is_neither_chmodded_nor_cleaned_of_others_files() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = archive(d, Place::End, 1, "tar");
    let shared = d.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let old = SystemTime::now() - Duration::from_secs(7200);
    let plant = |name: &str, len: u64| {
        let f = fs::File::create(shared.join(name)).unwrap();
        f.set_len(len).unwrap();
        f.set_modified(old).unwrap();
    };
    // Another tool's temp file and index (bigger than the whole bound),
    // and a file that only has imprint's name.
    plant(".important.tmp", 10);
    plant("other.idx", 80 << 20);
    plant("imprint-scan-0123.idx", 10);
    // A temp file a killed imprint left: ours, cleaned.
    plant(".imprint-scan-0123.99999-0011223344556677.tmp", 10);
    let_inputs_age();
    for expect in ["miss", "hit"] {
        let o = run(
            command(&input, &d.join(format!("o-{expect}")), &d.join("h"), SERIAL)
                .env("IMPRINT_CACHE_DIR", &shared),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("scan cache {expect}")),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(fs::metadata(&shared).unwrap().mode() & 0o777, 0o755);
    let names = listing(&shared);
    for kept in [".important.tmp", "other.idx", "imprint-scan-0123.idx"] {
        assert!(names.iter().any(|n| n == kept), "{kept} removed: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with(".imprint-scan-0123.")),
        "{names:?}"
    );
    let ours: Vec<_> = names
        .iter()
        .filter(|n| n.starts_with("imprint-scan-") && *n != "imprint-scan-0123.idx")
        .collect();
    assert_eq!(ours.len(), 1, "{names:?}");
    let mode = fs::metadata(shared.join(ours[0])).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Root with a user's `$HOME` (`sudo -E`): the run says so and caches
/// nothing; no root-owned `~/.cache` appears in the user's home. The same
/// for a user's `$XDG_CACHE_HOME`.
#[test]
fn root_with_another_users_home_says_so_and_leaves_it_alone() {
    let root = rustix::process::geteuid().is_root();
    if !crate::require::require(root, "only root can own files as another uid") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = archive(d, Place::End, 1, "tar");
    let user = d.join("user");
    fs::create_dir(&user).unwrap();
    std::os::unix::fs::chown(&user, Some(4321), Some(4321)).unwrap();
    let_inputs_age();
    for (var, home) in [("HOME", &user), ("XDG_CACHE_HOME", &user)] {
        let mut cmd = command(&input, &d.join("o"), &d.join("h"), SERIAL);
        cmd.env_remove("XDG_CACHE_HOME")
            .env("HOME", d)
            .env(var, home);
        let o = run(&mut cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("${var} ({}) belongs to uid 4321", home.display())),
            "{err}"
        );
        assert!(
            !err.contains("scan cache hit") && !err.contains("scan cache miss"),
            "{err}"
        );
        assert!(listing(&user).is_empty(), "{:?}", listing(&user));
    }
}
