//! A check over imprint's own sources: no error says its cause twice.
//!
//! The CLI and [`crate::error_chain`] print an error, then its source, then
//! the source's source: an error whose message also interpolates its
//! source (`#[error("... {source}")]` with a `source` field, `#[source]` or
//! `#[from]`) prints that cause twice. `#[error(transparent)]` is the way
//! to pass one through.

use std::path::Path;

/// Variants whose message interpolates their own source, in `text`.
fn said_twice(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[error(") {
        rest = &rest[at + "#[error(".len()..];
        let Some(end) = rest.find(")]") else { break };
        let message = &rest[..end];
        rest = &rest[end + 2..];
        // Past doc comments and other attributes to the variant itself.
        let mut body = rest.trim_start();
        while body.starts_with("///") || body.starts_with("#[") {
            body = body[body.find('\n').unwrap_or(body.len())..].trim_start();
        }
        let name_end = body
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(body.len());
        let (name, fields) = body.split_at(name_end);
        let fields = fields.trim_start();
        let (open, close) = match fields.chars().next() {
            Some('{') => ('{', '}'),
            Some('(') => ('(', ')'),
            _ => continue,
        };
        let mut depth = 0;
        let len = fields
            .char_indices()
            .find(|&(_, c)| {
                depth += i32::from(c == open) - i32::from(c == close);
                depth == 0
            })
            .map_or(fields.len(), |(i, _)| i);
        let fields = &fields[1..len];
        let mut sources = Vec::new();
        if open == '(' {
            if fields.contains("#[from]") || fields.contains("#[source]") {
                sources.push("0".to_string());
            }
        } else {
            let mut marked = false;
            for part in fields.split(',') {
                let part = part.trim();
                marked |= part.contains("#[source]") || part.contains("#[from]");
                let Some(colon) = part.find(':') else {
                    continue;
                };
                let field = part[..colon].rsplit(|c: char| c.is_whitespace() || c == ']');
                let field = field.into_iter().next().unwrap_or_default();
                if marked || field == "source" {
                    sources.push(field.to_string());
                }
                marked = false;
            }
        }
        for s in sources {
            if message.contains(&format!("{{{s}}}")) || message.contains(&format!("{{{s}:")) {
                found.push(format!("{name} ({{{s}}})"));
            }
        }
    }
    found
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with(file!()) {
            let text = std::fs::read_to_string(&path).unwrap();
            for v in said_twice(&text) {
                out.push(format!("{}: {v}", path.display()));
            }
        }
    }
}

#[test]
fn no_error_says_its_source_in_its_own_message() {
    let mut found = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    assert!(found.is_empty(), "said twice: {found:#?}");
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let twice = r#"
        #[error("{path} is not a manifest: {source}")]
        Parse { path: PathBuf, source: serde_json::Error },
        #[error("cannot read: {0}")]
        Read(#[from] io::Error),
        #[error("bad {cause}")]
        Bad {
            /// Why.
            #[source]
            cause: io::Error,
        },
        #[error("fine {path}")]
        Fine { path: PathBuf, source: io::Error },
        #[error("{0}")]
        Text(String),
        #[error(transparent)]
        Inner(#[from] io::Error),
    "#;
    assert_eq!(
        said_twice(twice),
        ["Parse ({source})", "Read ({0})", "Bad ({cause})"]
    );
}
