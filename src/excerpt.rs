//! Input quoted in an error message, cut to a readable length.
//!
//! Errors quote what they refuse (a serial, an owner, an overlay path, a
//! block range) so that the user can find it. Input can be anything: 30 MB
//! of zeros on `--serials -` is one "serial", and quoting it whole made a
//! 63 MB error line. Quotes are cut to [`MAX`] bytes of input.

use std::fmt;

/// Bytes of input quoted at most.
pub const MAX: usize = 200;

/// `text` quoted as `{:?}` does, cut to its first [`MAX`] bytes (at a
/// character boundary) and saying how long it was when cut.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= MAX {
            return write!(f, "{text:?}");
        }
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}... ({} bytes in all)", &text[..end], text.len())
    }
}

/// [`Quoted`] as a function, for `#[error(...)]` arguments.
pub fn quoted(text: &str) -> Quoted<'_> {
    Quoted(text)
}

/// A message that may quote input (a parser's own words, with the line it
/// refused), shown cut to a few times [`MAX`] bytes: unquoted, since it is
/// a sentence, not a value.
pub struct Cut<'a>(pub &'a str);

impl fmt::Display for Cut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let max = 4 * MAX;
        if text.len() <= max {
            return f.write_str(text);
        }
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}... ({} bytes in all)", &text[..end], text.len())
    }
}

/// `text` cut to [`MAX`] bytes for keeping in an error (not quoted): what
/// an error stores need not be larger than what it shows.
pub fn cut(text: &str) -> String {
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole() {
        assert_eq!(quoted("AZ JN").to_string(), "\"AZ JN\"");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(1000);
        let q = quoted(&long).to_string();
        assert!(q.ends_with("... (2000 bytes in all)"), "{q}");
        assert!(q.len() < 300, "{}", q.len());
        let zeros = "\0".repeat(30 << 20);
        assert!(quoted(&zeros).to_string().len() < 1000);
        assert!(cut(&zeros).len() < 300);
    }
}
