//! Case folding for imprint's own reader, in case-folded (`+F`)
//! directories of filesystems with the `casefold` feature.
//!
//! The kernel compares names after UTF-8 NFD normalization and full
//! Unicode case folding (its utf8 "nfdicf" tables). The writer uses
//! libext2fs's copy of those tables (`entries.rs`); the reader, which must
//! work without libext2fs, folds with Rust's Unicode lowercase mapping plus
//! the full-folding cases where it differs (ß, final sigma, long s, ...).
//! That equals the kernel for every name that is in NFC or NFD
//! consistently; names that differ only in normalization (a precomposed é
//! against e + U+0301) are not matched here. A name that is not valid
//! UTF-8 matches only itself, as in the kernel's non-strict mode.

/// The folded form of `name`, or None when it is not UTF-8.
pub(crate) fn fold(name: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(name).ok()?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            'ß' | 'ẞ' => out.push_str("ss"),
            'ς' => out.push('σ'),
            'ſ' => out.push('s'),
            'ﬀ' => out.push_str("ff"),
            'ﬁ' => out.push_str("fi"),
            'ﬂ' => out.push_str("fl"),
            '\u{345}' => out.push('ι'),
            c => out.extend(c.to_lowercase()),
        }
    }
    Some(out)
}

/// Whether the stored name `stored` is what a lookup of `wanted` finds in
/// a case-folded directory.
pub(crate) fn matches(stored: &[u8], wanted: &[u8]) -> bool {
    if stored == wanted {
        return true;
    }
    match (fold(stored), fold(wanted)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_like_the_kernel_for_common_names() {
        assert!(matches(b"Azaion", b"azaion"));
        assert!(matches(b"DEVICE.CONF", b"device.conf"));
        assert!(matches("Straße".as_bytes(), b"STRASSE"));
        assert!(matches("ΣΊΣΥΦΟΣ".as_bytes(), "σίσυφος".as_bytes()));
        assert!(!matches(b"azaion", b"azaion2"));
        // Not UTF-8: only the same bytes match.
        assert!(matches(b"\xff", b"\xff"));
        assert!(!matches(b"A\xff", b"a\xff"));
    }
}
