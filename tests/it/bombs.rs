//! Decompression bombs: a small input whose container or codec claims far
//! more bytes than its filesystem has. Decoding stops at the filesystem's
//! own size (its superblock's block count), so the scratch file never
//! grows past it. Judged without timing: the runs go under a file-size
//! limit (`ulimit -f`) a little above the filesystem's size, which the old
//! code's scratch files broke (SIGXFSZ).

use crate::common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use tempfile::TempDir;

/// Runs `cmd` under a 48 MiB file-size limit, with `$TMPDIR` at `tmp`.
fn limited(cmd: &Command, tmp: &Path) -> Output {
    let mut line = vec!["ulimit -f 49152; exec \"$@\"".to_string(), "sh".to_string()];
    line.push(cmd.get_program().to_string_lossy().into_owned());
    line.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let mut sh = Command::new("sh");
    sh.arg("-c").args(&line).env("TMPDIR", tmp);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    run(&mut sh)
}

/// A 16 MiB ext4 image followed by 256 MiB of 0xFF, zstd-compressed (a few
/// hundred KiB): `ls` and `cat` read it, and decode 16 MiB.
#[test]
fn a_compressed_ext4_with_a_huge_tail_is_decoded_to_its_filesystems_end() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tmp = d.join("tmp");
    fs::create_dir(&tmp).unwrap();
    let raw = small_ext4(d, "bomb.ext4");
    sh(&format!(
        "head -c 268435456 /dev/zero | tr '\\0' '\\377' >> {r} && zstd -q -19 --rm {r}",
        r = raw.display()
    ));
    let image = d.join("bomb.ext4.zst");
    assert!(fs::metadata(&image).unwrap().len() < 4 << 20);
    let mut ls = bin();
    ls.arg("ls").arg(&image).arg("/etc");
    let o = limited(&ls, &tmp);
    assert_eq!(o.status.signal(), None, "killed: {}", stderr(&o));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("hostname"), "{}", stdout(&o));
    assert!(
        stderr(&o)
            .contains("its ext2/3/4 filesystem ends at byte 16777216; what the stream holds past it is checked but not kept"),
        "{}",
        stderr(&o)
    );
    let mut cat = bin();
    cat.arg("cat").arg(&image).arg("/etc/hostname");
    let o = limited(&cat, &tmp);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "jetson\n");
    assert!(listing(&tmp).is_empty(), "{:?}", listing(&tmp));
}

/// A sparse image whose last chunk is a FILL of 0xFF over 1 GiB past its
/// 16 MiB filesystem: `verify` expands it for e2fsck to the filesystem's
/// end only.
#[test]
fn a_sparse_fill_past_the_filesystem_is_not_expanded() {
    require_tools(&["img2simg", "python3"]);
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let tmp = d.join("tmp");
    fs::create_dir(&tmp).unwrap();
    let raw = small_ext4(d, "base.ext4");
    let sparse = d.join("base.simg");
    sh(&format!("img2simg {} {}", raw.display(), sparse.display()));
    // One more chunk: FILL 0xFFFFFFFF over 262144 blocks of 4 KiB.
    sh(&format!(
        r#"python3 - {p} <<'PY'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
magic, major, minor, fhs, chs, bs, blks, chunks, crc = struct.unpack_from("<IHHHHIIII", b, 0)
add = 262144
struct.pack_into("<IHHHHIIII", b, 0, magic, major, minor, fhs, chs, bs, blks + add, chunks + 1, 0)
b += struct.pack("<HHII", 0xCAC2, 0, add, chs + 4) + b"\xff\xff\xff\xff"
open(p, "wb").write(b)
PY"#,
        p = sparse.display()
    ));
    let pw = write_password(d, PASSWORD);
    let out = d.join("out.simg");
    let o = run(&mut provision_offline(&sparse, &out, "azaion", &pw));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut verify = bin();
    verify
        .arg("verify")
        .arg(&out)
        .args(["--owner", "azaion", "--serial", SERIAL]);
    let o = limited(&verify, &tmp);
    assert_eq!(o.status.signal(), None, "killed: {}", stderr(&o));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("e2fsck"), "{}", stdout(&o));
}
