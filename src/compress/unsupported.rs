//! Codecs imprint does not read, known by their magic so that a refusal
//! names them and the command that converts the file into one it does
//! (zstd): one row each. (lz4's frame format is read, `lz4.rs`; its
//! legacy format is here.)

use std::path::Path;

/// One codec imprint recognises but does not read.
pub(crate) struct Unread {
    /// As messages name it, with the tools that write it.
    pub(crate) name: &'static str,
    /// Whether a file's first bytes are this codec's.
    detect: fn(&[u8]) -> bool,
    /// The command that writes the decompressed bytes to stdout, with IN
    /// where the input goes.
    decompress: &'static str,
    /// File suffixes it is known by, longest first; a `.t*` one stands for
    /// `.tar.*`.
    suffixes: &'static [&'static str],
}

const TABLE: &[Unread] = &[
    Unread {
        name: "compress (.Z, ncompress)",
        detect: |h| h.starts_with(&[0x1f, 0x9d]),
        decompress: "uncompress -c IN",
        suffixes: &[".taz", ".tz", ".Z"],
    },
    Unread {
        name: "lzip (lzip, plzip, tar --lzip)",
        detect: |h| h.starts_with(b"LZIP"),
        decompress: "lzip -dc IN",
        suffixes: &[".tlz", ".lz"],
    },
    Unread {
        name: "lzop (lzop, tar --lzop)",
        detect: |h| h.starts_with(&[0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a]),
        decompress: "lzop -dc IN",
        suffixes: &[".tzo", ".lzo"],
    },
    Unread {
        name: "legacy lz4 (lz4 -l, as the kernel uses)",
        detect: |h| h.starts_with(&[0x02, 0x21, 0x4c, 0x18]),
        decompress: "lz4 -dc IN",
        suffixes: &[".lz4"],
    },
    Unread {
        name: "legacy lzma (.lzma: lzma, xz --format=lzma, tar --lzma)",
        detect: legacy_lzma,
        decompress: "xz -dc IN",
        suffixes: &[".tlzma", ".lzma"],
    },
    Unread {
        name: "lrzip (lrzip, tar --lrzip)",
        detect: |h| h.starts_with(b"LRZI"),
        decompress: "lrzcat IN",
        suffixes: &[".tlrz", ".lrz"],
    },
    Unread {
        name: "grzip (grzip, tar --grzip)",
        detect: |h| h.starts_with(b"GRZipII\0\x02\x04:)"),
        decompress: "grzip -d < IN",
        suffixes: &[".grz"],
    },
];

/// The .lzma header (no magic of its own): a properties byte (lc, lp, pb
/// below 9*5*5), a dictionary size of 2^n or 2^n + 2^(n-1), then the
/// uncompressed size or all ones (unknown), as xz and libarchive check it.
fn legacy_lzma(h: &[u8]) -> bool {
    if h.len() < 13 || h[0] >= 9 * 5 * 5 {
        return false;
    }
    let dict = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    let size = u64::from_le_bytes(h[5..13].try_into().expect("8 bytes"));
    let dict_ok = dict >= 4096 && {
        let low = dict & (dict - 1);
        dict.is_power_of_two() || (low.is_power_of_two() && (dict - low) == low * 2)
    };
    dict_ok && (size == u64::MAX || size < 1 << 48)
}

/// The unread codec `head` starts with, if any.
pub(crate) fn detect(head: &[u8]) -> Option<&'static Unread> {
    TABLE.iter().find(|u| (u.detect)(head))
}

impl Unread {
    /// The command that converts `path` into a zstd file imprint reads:
    /// `lzip -dc rootfs.tar.lz | zstd -o rootfs.tar.zst`.
    pub(crate) fn convert(&self, path: &Path) -> String {
        let name = path.to_string_lossy();
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = self
            .suffixes
            .iter()
            .find_map(|s| {
                file.strip_suffix(s)
                    .map(|stem| match s.starts_with(".t") && s.len() > 3 {
                        true if !stem.ends_with(".tar") => format!("{stem}.tar"),
                        _ => stem.to_string(),
                    })
            })
            .unwrap_or(file.clone());
        let out = path.with_file_name(format!("{stem}.zst"));
        format!(
            "{} | zstd -o {}",
            self.decompress.replace("IN", &name),
            out.to_string_lossy()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_output_after_the_input() {
        let lzip = detect(b"LZIP\x01\x0c").unwrap();
        assert_eq!(
            lzip.convert(Path::new("out/rootfs.tar.lz")),
            "lzip -dc out/rootfs.tar.lz | zstd -o out/rootfs.tar.zst"
        );
        assert_eq!(
            lzip.convert(Path::new("rootfs.tlz")),
            "lzip -dc rootfs.tlz | zstd -o rootfs.tar.zst"
        );
        let lzma = detect(&[
            0x5d, 0, 0, 0x80, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ])
        .unwrap();
        assert!(lzma.name.contains("lzma"));
        // A tar header or an ext4 image does not pass for .lzma.
        assert!(detect(b"etc/\0\0\0\0\0\0\0\0\0\0\0\0\0\0").is_none());
        assert!(detect(&[0u8; 64]).is_none());
    }
}
