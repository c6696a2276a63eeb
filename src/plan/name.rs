//! Names inside images are bytes: ext4 directory entries, tar headers
//! (ustar fields, GNU long names, pax `path=` under `hdrcharset=BINARY`) and
//! a staging tree's file names hold whatever bytes the tool that made them
//! was given, often a legacy charset (cp866, koi8-r, EUC-JP). imprint
//! carries them in `String`s, as the rest of the code and the plan do,
//! without losing a byte: each byte that is not part of valid UTF-8 is
//! carried as one character of a reserved range, `U+10FF80 + (b - 0x80)`
//! (Private Use plane 16; invalid bytes are always 0x80 or above), and a
//! name that really holds one of those characters has its UTF-8 bytes
//! carried the same way. So bytes -> text -> bytes is the identity, and
//! two names are equal as text exactly when their bytes are equal.
//!
//! Where a name leaves imprint it goes back to its bytes (a path handed to
//! the kernel, a name written into an archive) or is spelled as GNU tar
//! spells it (`cli::quote`), never with the reserved characters.

use std::borrow::Cow;

/// The first reserved character: it carries byte 0x80.
const BASE: u32 = 0x10_FF80;

/// The byte a reserved character carries, if `c` is one.
pub(crate) fn carried_byte(c: char) -> Option<u8> {
    let c = c as u32;
    // The range holds exactly 128 characters, for bytes 0x80..=0xFF.
    (BASE..=BASE + 0x7F)
        .contains(&c)
        .then(|| (c - BASE + 0x80) as u8)
}

fn carry(b: u8, out: &mut String) {
    debug_assert!(b >= 0x80, "ASCII is always valid UTF-8");
    out.push(char::from_u32(BASE + u32::from(b) - 0x80).expect("a valid scalar value"));
}

/// A name's bytes as imprint's text (see the module documentation). Valid
/// UTF-8 without reserved characters, nearly every name, is borrowed.
pub(crate) fn from_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.chars().any(|c| carried_byte(c).is_some()) {
            return Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if carried_byte(c).is_some() {
                let mut buf = [0u8; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    carry(b, &mut out);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            carry(b, &mut out);
        }
    }
    Cow::Owned(out)
}

/// The bytes a name from [`from_bytes`] was made of.
pub(crate) fn to_bytes(text: &str) -> Cow<'_, [u8]> {
    if !text.chars().any(|c| carried_byte(c).is_some()) {
        return Cow::Borrowed(text.as_bytes());
    }
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match carried_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
        }
    }
    Cow::Owned(out)
}

/// Whether the name's bytes are UTF-8 (the text is then the name itself).
pub(crate) fn is_utf8(text: &str) -> bool {
    std::str::from_utf8(&to_bytes(text)).is_ok()
}

/// The name as UTF-8 text, each byte that is not UTF-8 shown as U+FFFD
/// (what `String::from_utf8_lossy` would make of the bytes, per byte).
pub(crate) fn lossy(text: &str) -> Cow<'_, str> {
    let bytes = to_bytes(text);
    match bytes {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(bytes) => Cow::Owned(
            bytes
                .utf8_chunks()
                .flat_map(|c| {
                    c.valid()
                        .chars()
                        .chain(std::iter::repeat_n('\u{FFFD}', c.invalid().len()))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bytes_come_back_unchanged_and_stay_distinct() {
        let samples: [&[u8]; 8] = [
            b"etc/passwd",
            "a b/ü".as_bytes(),
            b"a\xff",
            b"a\xfe",
            // cp866 "тест", koi8-r "тест", EUC-JP "日本".
            b"\xe2\xa5\xe1\xe2",
            b"\xd4\xc5\xd3\xd4",
            b"\xc6\xfc\xcb\xdc",
            // A name really holding a reserved character (U+10FF80).
            "x\u{10FF80}".as_bytes(),
        ];
        let mut seen = std::collections::HashSet::new();
        for bytes in samples {
            let text = from_bytes(bytes);
            assert_eq!(&*to_bytes(&text), bytes, "{bytes:?}");
            assert!(seen.insert(text.into_owned()), "{bytes:?} collides");
        }
        // Every short byte string over a small alphabet that mixes ASCII,
        // valid and broken sequences, and the reserved range.
        let alphabet = [b'a', 0x80, 0xbe, 0xc3, 0xa9, 0xf4, 0x8f, 0xff];
        let mut all = std::collections::HashSet::new();
        for n in 0..8u32.pow(4) {
            let bytes: Vec<u8> = (0..4)
                .map(|i| alphabet[(n / 8u32.pow(i) % 8) as usize])
                .collect();
            let text = from_bytes(&bytes).into_owned();
            assert_eq!(&*to_bytes(&text), &bytes[..]);
            assert!(all.insert(text));
        }
    }

    #[test]
    fn utf8_names_are_themselves() {
        assert!(matches!(from_bytes("ü/x".as_bytes()), Cow::Borrowed("ü/x")));
        assert!(is_utf8("ü"));
        assert!(!is_utf8(&from_bytes(b"a\xff")));
        assert!(is_utf8(&from_bytes("x\u{10FF80}".as_bytes())));
        assert_eq!(lossy(&from_bytes(b"a\xff\xfe")), "a\u{FFFD}\u{FFFD}");
        assert_eq!(lossy("ü"), "ü");
    }
}
