//! Which filesystems give a file an identity the scan cache can key on.
//!
//! The cache's key (`key.rs`) trusts that a change in place changes the
//! inode's ctime, which no user can set back, and that the inode number
//! stays the file's. Local Linux filesystems keep both. Network and FUSE
//! filesystems need not: sshfs reports the mtime as the ctime (SFTP has no
//! ctime), so `touch -d` after a write hides it; NFS, SMB/CIFS and 9p
//! take times from a server, which may set them as it likes; overlayfs
//! gives a file a new inode on copy-up. On those the key is the SHA-256 of
//! the whole file instead (a full read, still cheaper than a scan that
//! decompresses), so an entry can only match the very same bytes.

/// `statfs.f_type` magics (linux/magic.h) of filesystems whose ctime and
/// inode numbers are the kernel's own.
const TRUSTED: [(u32, &str); 8] = [
    (0xEF53, "ext2/3/4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0xF2F5_2010, "f2fs"),
    (0x2FC1_2FC1, "zfs"),
    (0xCA45_1A4E, "bcachefs"),
    (0x8584_58F6, "ramfs"),
];

/// Magics named when a file is on an untrusted filesystem, for `-v`.
const KNOWN_UNTRUSTED: [(u32, &str); 9] = [
    (0x6573_5546, "FUSE (sshfs, virtiofs, ...)"),
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x0102_1997, "9p"),
    (0x794C_7630, "overlayfs"),
    (0x00C3_6400, "ceph"),
    (0x5346_414F, "AFS"),
];

/// How far a file's identity on a filesystem of type `magic` can be
/// trusted: `Ok(name)` when ctime and inode are the kernel's own, else
/// `Err(name)` (the name said in `-v`).
pub fn classify(magic: u32) -> Result<&'static str, String> {
    if let Some((_, name)) = TRUSTED.iter().find(|(m, _)| *m == magic) {
        return Ok(name);
    }
    Err(KNOWN_UNTRUSTED
        .iter()
        .find(|(m, _)| *m == magic)
        .map_or_else(
            || format!("filesystem type {magic:#x}"),
            |(_, n)| n.to_string(),
        ))
}

/// The filesystem type of the one `file` is on.
pub fn magic_of(file: &std::fs::File) -> std::io::Result<u32> {
    let st = rustix::fs::fstatfs(file)?;
    // f_type is a signed word on some targets; the magics are 32 bits.
    Ok(st.f_type as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_filesystems_are_trusted() {
        for magic in [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0xF2F5_2010] {
            assert!(classify(magic).is_ok(), "{magic:#x}");
        }
    }

    #[test]
    fn network_fuse_and_overlay_filesystems_are_not() {
        for (magic, name) in [
            (0x6573_5546, "FUSE"),
            (0x6969, "NFS"),
            (0xFF53_4D42, "CIFS"),
            (0xFE53_4D42, "SMB2"),
            (0x517B, "SMB"),
            (0x0102_1997, "9p"),
            (0x794C_7630, "overlayfs"),
        ] {
            assert!(classify(magic).unwrap_err().contains(name), "{name}");
        }
        // One nobody listed is not trusted either.
        assert_eq!(
            classify(0x1234_5678).unwrap_err(),
            "filesystem type 0x12345678"
        );
    }

    #[test]
    fn the_magic_of_a_temp_file_is_read() {
        let f = tempfile::tempfile().unwrap();
        magic_of(&f).unwrap();
    }
}
