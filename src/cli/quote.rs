//! Names from inside an image, made safe for a terminal: an entry named
//! with escape sequences or a newline must not rewrite the screen or spoof
//! a line of the listing (OSC 52 can even set the clipboard). Control
//! characters and backslashes are escaped as GNU `ls -b` and `tar -tv`
//! escape them (`\n`, `\033`, `\\`); printable text, spaces included,
//! stays as it is. A byte that is not part of valid UTF-8 (a name in a
//! legacy charset; see `plan::name`) is spelled in octal, `\377`, as GNU
//! tar 1.34 spells it in a UTF-8 locale: two names that differ only there
//! still list differently, and the spelling reads back to the bytes.

use std::borrow::Cow;
use std::fmt::Write;

use crate::plan::name::carried_byte;

/// `name` with control characters (C0, DEL and the C1 range, which some
/// terminals obey too), backslashes and bytes that are not UTF-8 escaped.
pub(crate) fn escape(name: &str) -> Cow<'_, str> {
    let needs = |c: char| c == '\\' || c.is_control() || carried_byte(c).is_some();
    if !name.chars().any(needs) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if let Some(b) = carried_byte(c) {
            let _ = write!(out, "\\{b:03o}");
            continue;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\x0b' => out.push_str("\\v"),
            '\x0c' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut bytes = [0u8; 4];
                for b in c.encode_utf8(&mut bytes).bytes() {
                    let _ = write!(out, "\\{b:03o}");
                }
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn controls_are_escaped_as_gnu_ls_b_does() {
        assert_eq!(escape("etc/passwd"), "etc/passwd");
        assert_eq!(escape("a b/ü"), "a b/ü");
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\x1b]52;c;SGVsbG8=\x07"), "\\033]52;c;SGVsbG8=\\a");
        assert_eq!(escape("x\u{9b}31m"), "x\\302\\23331m");
        assert_eq!(escape("a\\b\x7f"), "a\\\\b\\177");
        // As `tar -tvf` prints `a\xff` and a lone `\xd1` after `а`.
        let raw = crate::plan::name::from_bytes(b"a\xff/\xd0\xb0\xd1");
        assert_eq!(escape(&raw), "a\\377/а\\321");
    }
}
