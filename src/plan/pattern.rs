//! A path an overlay writes, as its spec writes it: for the clean-base
//! check (`imprint verify --no-credentials`), which has no device and so
//! no values for `{serial}` and the other variables. A variable then stands
//! for any non-empty text, so `/etc/azaion/{serial}.key` matches every
//! device's file.

use super::model::ImagePath;
use super::spec;

/// Marks where a variable was: NUL is never part of a path inside an image.
const HOLE: char = '\0';

/// An absolute path template (`//` and `.` parts dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// As written (normalised), e.g. `/etc/azaion/{serial}.key`.
    text: String,
    /// Its parts, each variable replaced by [`HOLE`].
    parts: Vec<String>,
}

impl PathTemplate {
    /// `None` when the path is not absolute or climbs with `..`.
    pub fn parse(template: &str) -> Option<PathTemplate> {
        let path = ImagePath::parse(template)?;
        let text = path.to_string();
        let holed = spec::mark_variables(&text, HOLE);
        let parts = holed[1..].split('/').map(str::to_string).collect();
        Some(PathTemplate { text, parts })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The path itself when it uses no variable.
    pub fn literal(&self) -> Option<ImagePath> {
        if self.parts.iter().any(|p| p.contains(HOLE)) {
            return None;
        }
        ImagePath::parse(&self.text)
    }

    /// The deepest directory above the first part that uses a variable
    /// (for a literal path, its parent): every path the template can take
    /// is below it. `None`: the root.
    pub fn search_root(&self) -> Option<ImagePath> {
        let fixed: Vec<&str> = self.parts[..self.parts.len() - 1]
            .iter()
            .take_while(|p| !p.contains(HOLE))
            .map(String::as_str)
            .collect();
        ImagePath::parse(&format!("/{}", fixed.join("/")))
    }

    /// Whether `relative` (`etc/azaion/AZJN-0042.key`, as listings give
    /// paths) is a path the template can take. A variable matches one or
    /// more characters, `/` included: a value with a slash makes more
    /// parts, and the check would rather name too much than too little.
    pub fn matches(&self, relative: &str) -> bool {
        let holed = self.parts.join("/");
        let pieces: Vec<&str> = holed.split(HOLE).collect();
        let (first, rest) = pieces.split_first().expect("split yields one piece");
        let Some(mut at) = relative.strip_prefix(first).map(|_| first.len()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return relative.len() == at;
        };
        // Leftmost matches leave the most room for what follows; each hole
        // takes at least one character.
        for piece in middle {
            match relative.get(at + 1..).and_then(|r| r.find(piece)) {
                Some(found) => at += 1 + found + piece.len(),
                None => return false,
            }
        }
        relative.len() >= at + 1 + last.len() && relative.ends_with(last)
    }
}

impl std::fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_paths_match_only_themselves() {
        let t = PathTemplate::parse("//etc/./azaion/device.conf").unwrap();
        assert_eq!(t.as_str(), "/etc/azaion/device.conf");
        assert_eq!(t.literal().unwrap().relative(), "etc/azaion/device.conf");
        assert!(t.matches("etc/azaion/device.conf"));
        assert!(!t.matches("etc/azaion/device.conf.bak"));
        assert!(!t.matches("etc/azaion/device.con"));
        assert_eq!(t.search_root().unwrap().relative(), "etc/azaion");
    }

    #[test]
    fn variables_match_any_non_empty_text() {
        let t = PathTemplate::parse("/etc/azaion/{serial}.{site}.conf").unwrap();
        assert!(t.literal().is_none());
        assert_eq!(t.search_root().unwrap().relative(), "etc/azaion");
        assert!(t.matches("etc/azaion/AZJN-0042.hh.conf"));
        assert!(t.matches("etc/azaion/a.b.c.conf"));
        assert!(
            !t.matches("etc/azaion/.hh.conf"),
            "a variable is never empty"
        );
        assert!(!t.matches("etc/azaion/AZJN-0042..conf"));
        assert!(!t.matches("etc/azaion/AZJN-0042.hh.conf.old"));
        assert!(!t.matches("etc/other/AZJN-0042.hh.conf"));
        // The suffix is not taken from inside the last hole's text.
        let t = PathTemplate::parse("/k/{a}x{b}x").unwrap();
        assert!(t.matches("k/1x2x"));
        assert!(!t.matches("k/1xx"));
    }

    #[test]
    fn a_variable_in_a_directory_searches_from_above_it() {
        let t = PathTemplate::parse("/srv/{serial}/key").unwrap();
        assert_eq!(t.search_root().unwrap().relative(), "srv");
        assert!(t.matches("srv/AZJN-0042/key"));
        let t = PathTemplate::parse("/{serial}.key").unwrap();
        assert!(t.search_root().is_none());
        assert!(t.matches("AZJN-0042.key"));
        // Shell's ${VAR} and JSON braces are text, as when rendering.
        let t = PathTemplate::parse("/etc/${HOME}").unwrap();
        assert!(t.literal().is_some());
    }
}
