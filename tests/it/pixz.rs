//! pixz tarballs (`pixz`, `tar -Ipixz`): the tar as xz blocks, then pixz's
//! file index as the stream's last block. The output carries an index of
//! its own entries, which pixz itself judges: `pixz -l` lists what GNU tar
//! lists, `pixz -d` (which checks every name and size against the index,
//! seeking and through a pipe) gives the tar, and `pixz -x` extracts the
//! new device file and untouched files; `xz -t`, GNU tar, bsdtar and
//! `imprint verify` read it too. An index imprint cannot carry over is
//! refused naming what is wrong with it.

use crate::common::*;
use crate::fast_paths::{check_archive, decompressed, filler, provision, tree, Place};

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

const CONF: &str = "./etc/azaion/device.conf";
/// The first bytes of pixz's index, after the tar (`xz -dc | tail -c`).
const MAGIC: [u8; 8] = [0xa6, 0x4c, 0x32, 0x2e, 0xd6, 0x14, 0xae, 0xdb];

/// GNU tar's options for a reproducible archive of a tree.
const TAR: &str = "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000";

/// A tree with an old device file of 3000 bytes between 600 KB files
/// (`a-before/big`, `z-after/big`) and an AppleDouble file
/// (`z-after/._f9`, which pixz folds into the next entry's record):
/// replacing the device file moves every entry after it.
fn moving_tree(d: &Path) -> PathBuf {
    let root = tree(d, Place::Middle, false);
    fs::write(root.join("etc/azaion/device.conf"), filler(7, 3000)).unwrap();
    fs::write(root.join("a-before/big"), filler(8, 600_000)).unwrap();
    fs::write(root.join("z-after/big"), filler(9, 600_000)).unwrap();
    fs::write(root.join("z-after/._f9"), "AppleDouble").unwrap();
    fs::write(root.join("z-after/f9"), "last").unwrap();
    root
}

/// What pixz, xz, GNU tar, bsdtar and `imprint verify` make of `out`;
/// `untouched` names files of `root` the plan left alone.
fn judge(d: &Path, out: &Path, root: &Path, untouched: &[&str]) {
    sh(&format!("xz -t {}", out.display()));
    // pixz -d checks every entry's name and size against the index.
    let tar = d.join("judged.tar");
    sh(&format!("pixz -d < {} > {}", out.display(), tar.display()));
    let listed = stdout(&sh(&format!("pixz -l {}", out.display())));
    // pixz lists no AppleDouble (`._`) entries: it folds them into the next.
    let by_tar: String = stdout(&sh(&format!("tar -tf {}", tar.display())))
        .lines()
        .filter(|l| !l.rsplit('/').next().unwrap().starts_with("._"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(listed, by_tar, "pixz -l and tar -t differ");
    assert!(listed.contains(&format!("{CONF}\n")), "{listed}");
    // Through a pipe pixz finds its index by the block headers (sized tar
    // blocks, then an unsized index block).
    sh(&format!(
        "cat {} | pixz -d | cmp - {}",
        out.display(),
        tar.display()
    ));
    let all = decompressed(out, "xz");
    let tar_bytes = fs::read(&tar).unwrap();
    assert!(all.starts_with(&tar_bytes) && all[tar_bytes.len()..].starts_with(&MAGIC));
    let conf = sh(&format!(
        "pixz -x {CONF} < {} | tar -xOf - {CONF}",
        out.display()
    ))
    .stdout;
    assert_eq!(String::from_utf8(conf).unwrap(), conf_text(EMAIL, PASSWORD));
    for name in untouched {
        let got = sh(&format!(
            "pixz -x ./{name} < {} | tar -xOf - ./{name}",
            out.display()
        ))
        .stdout;
        assert!(got == fs::read(root.join(name)).unwrap(), "{name} differs");
    }
    check_archive(out, Some("xz"));
    let v = run(bin().arg("verify").arg(out).args(["--owner", "azaion"]));
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
}

/// Issue 26.8 / 25: a replaced device file whose entry shrinks moves every
/// later entry; the output keeps the input's blocks before the device file
/// (256 KiB blocks: `pixz -1 -f 0.25`), its index names every entry where it now is, a warm run
/// (the scan cache) writes the same bytes, and a full rewrite decompresses
/// to the same tar and index.
#[test]
fn a_pixz_tarball_gets_an_index_of_its_moved_and_new_entries() {
    require_tools(&["pixz", "xz", "tar", "bsdtar"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = moving_tree(d);
    let input = d.join("in.tpxz");
    sh(&format!(
        "{TAR} -I 'pixz -1 -f 0.25' -C {} -cf {} .",
        root.display(),
        input.display()
    ));
    let before = fs::read(&input).unwrap();
    let pw = write_password(d, PASSWORD);
    // The scan cache keeps no input changed within the last 2 s.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = d.join("out.tpxz");
    let cold = stamp(&input, &out, &pw);
    assert!(cold.contains("scan cache miss"), "{cold}");
    assert!(fs::read(&input).unwrap() == before, "input modified");
    judge(
        d,
        &out,
        &root,
        &["a-before/big", "z-after/big", "z-after/f9"],
    );

    // The old device file's 6 blocks became 1: the entries after it moved.
    let old_at = |name: &str, file: &Path| -> u64 {
        let tar = stdout(&sh(&format!(
            "pixz -d < {} | tar -tvf - -R | grep ' {name}$'",
            file.display()
        )));
        tar.trim_start_matches("block ")
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        old_at("./z-after/big", &input) - old_at("./z-after/big", &out),
        5
    );
    // The first two blocks (512 KiB, before the device file) are kept
    // byte for byte: the output is the same up to the third block.
    let listing = stdout(&sh(&format!("xz -lvv {}", input.display())));
    let third: usize = listing
        .split("  Blocks:\n")
        .nth(1)
        .and_then(|blocks| {
            blocks.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[..2] == ["1", "3"]).then(|| f[2].parse().unwrap())
            })
        })
        .expect("a third block");
    let kept = before
        .iter()
        .zip(&fs::read(&out).unwrap())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        kept >= third,
        "{kept} bytes kept, the third block is at {third}"
    );

    let warm = d.join("warm.tpxz");
    let hit = stamp(&input, &warm, &pw);
    assert!(hit.contains("scan cache hit"), "{hit}");
    assert!(fs::read(&warm).unwrap() == fs::read(&out).unwrap());
    let full = d.join("full.tpxz");
    provision(&input, &full, &pw, true);
    judge(d, &full, &root, &["z-after/big"]);
    assert!(decompressed(&full, "xz") == decompressed(&out, "xz"));
}

/// `imprint -v provision` of `input` into `out`, which must succeed: its
/// stderr.
fn stamp(input: &Path, out: &Path, pw: &Path) -> String {
    let mut cmd = provision_offline(input, out, "azaion", pw);
    cmd.arg("-v").env("SOURCE_DATE_EPOCH", "1700000000");
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

/// Without a device file the new entries are appended (and `./etc/`
/// again): the index names them. `pixz`'s default 16 MiB blocks make the
/// tar one block, so nothing is kept but the stream.
#[test]
fn a_pixz_tarball_without_the_device_file_gets_it_appended_and_indexed() {
    require_tools(&["pixz", "xz", "tar", "bsdtar"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = tree(d, Place::End, false);
    let plain = d.join("in.tar");
    sh(&format!(
        "{TAR} -C {} -cf {} .",
        root.display(),
        plain.display()
    ));
    let input = d.join("in.tpxz");
    sh(&format!("pixz < {} > {}", plain.display(), input.display()));
    let pw = write_password(d, PASSWORD);
    let out = d.join("out.tpxz");
    provision(&input, &out, &pw, false);
    judge(d, &out, &root, &["a-before/f3", "etc/passwd"]);
    let listed = stdout(&sh(&format!("pixz -l {}", out.display())));
    assert!(
        listed.ends_with("./etc/azaion/\n./etc/azaion/device.conf\n./etc/\n"),
        "{listed}"
    );
}

/// The input's raw stream (tar, then index) with the index changed by the
/// Python statement `fix` (on `recs`, a list of [name, offset]), as xz
/// blocks of the tar and of the index: what pixz would write.
fn with_index(d: &Path, input: &Path, label: &str, fix: &str) -> PathBuf {
    let raw = d.join(format!("{label}.raw"));
    fs::write(&raw, decompressed(input, "xz")).unwrap();
    let script = format!(
        r#"
import struct, sys
raw = open(sys.argv[1], 'rb').read()
magic = bytes({MAGIC:?})
at = raw.rindex(magic)
body = raw[at + 8:]
recs, i = [], 0
while i < len(body):
    nul = body.index(b'\0', i)
    recs.append([body[i:nul], struct.unpack('<Q', body[nul + 1:nul + 9])[0]])
    i = nul + 9
{fix}
out = raw[:at] + magic + b''.join(n + b'\0' + struct.pack('<Q', o) for n, o in recs)
open(sys.argv[1], 'wb').write(out)
print(at, len(out) - at)
"#
    );
    let py = d.join(format!("{label}.py"));
    fs::write(&py, script).unwrap();
    let sizes = stdout(&sh(&format!("python3 {} {}", py.display(), raw.display())));
    let mut sizes = sizes.split_whitespace();
    let (tar_len, index_len) = (sizes.next().unwrap(), sizes.next().unwrap());
    let out = d.join(format!("{label}.tpxz"));
    sh(&format!(
        "xz --check=crc32 --block-list={tar_len},{index_len} < {} > {}",
        raw.display(),
        out.display()
    ));
    out
}

/// Refused, naming the input, the problem and the way through; no output,
/// the input untouched.
fn refused(d: &Path, input: &Path, problem: &str) {
    let before = fs::read(input).unwrap();
    let pw = write_password(d, PASSWORD);
    let out = d.join("refused.tpxz");
    let o = run(&mut provision_offline(input, &out, "azaion", &pw));
    assert!(!o.status.success(), "{} was accepted", input.display());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}: pixz's file index", input.display()))
            && err.contains(problem)
            && err.contains(&format!("bsdtar -cf IN.tar @{}", input.display())),
        "{err}"
    );
    assert!(!out.exists());
    assert!(fs::read(input).unwrap() == before, "input modified");
}

/// An index imprint cannot carry over: damaged, not where pixz looks, or
/// not this archive's. The way through the message gives works.
#[test]
fn a_pixz_index_that_cannot_be_carried_over_is_refused_naming_why() {
    require_tools(&["pixz", "xz", "tar", "bsdtar", "python3", "gzip"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let root = moving_tree(d);
    let input = d.join("in.tpxz");
    sh(&format!(
        "{TAR} -I pixz -C {} -cf {} .",
        root.display(),
        input.display()
    ));
    // The rebuilt layout itself is what pixz wrote: accepted.
    let same = with_index(d, &input, "same", "pass");
    let pw = write_password(d, PASSWORD);
    let out = d.join("same-out.tpxz");
    provision(&same, &out, &pw, false);
    judge(d, &out, &root, &["z-after/f2"]);

    let backwards = with_index(
        d,
        &input,
        "backwards",
        "recs[2][1], recs[3][1] = recs[3][1], recs[2][1]",
    );
    refused(d, &backwards, "not after the entry before it");
    let short = with_index(d, &input, "short", "recs[-1][1] -= 512");
    refused(d, &short, "says the archive ends at byte");
    let cut = with_index(d, &input, "cut", "recs.pop()");
    refused(d, &cut, "ends before its end record");
    // The entry after the device file, said to start a block later: the
    // scan cannot tell, the writer (which copies from there) can.
    let stale = with_index(
        d,
        &input,
        "stale",
        "k = [n for n, _ in recs].index(b'./etc/group'); recs[k][1] += 512",
    );
    refused(d, &stale, "names no entry at byte");

    let gz = d.join("in.tar.gz");
    sh(&format!(
        "xz -dc {} | gzip > {}",
        input.display(),
        gz.display()
    ));
    refused(d, &gz, "is not in an xz file");
    let one_block = d.join("one-block.tar.xz");
    sh(&format!(
        "xz -dc {} | xz > {}",
        input.display(),
        one_block.display()
    ));
    refused(
        d,
        &one_block,
        "is not the last block of a one-stream xz file",
    );

    // The way through.
    let copied = d.join("IN.tar");
    sh(&format!(
        "cd {} && bsdtar -cf IN.tar @{}",
        d.display(),
        backwards.display()
    ));
    let stamped = d.join("OUT.tar");
    provision(&copied, &stamped, &pw, false);
    let indexed = d.join("OUT.tpxz");
    sh(&format!(
        "pixz < {} > {}",
        stamped.display(),
        indexed.display()
    ));
    judge(d, &indexed, &root, &["z-after/f2"]);
}
