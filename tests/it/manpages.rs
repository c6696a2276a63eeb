//! The manual pages `imprint man --dir` writes (and the .deb installs),
//! rendered by groff as man(1) renders them, on a narrow terminal so that
//! text is reflowed: every page a page names exists, every page has EXIT
//! STATUS and ENVIRONMENT, and the examples and flags come out whole.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use tempfile::TempDir;

/// `groff -man` to plain text 60 columns wide, groff's warnings on.
fn render(page: &Path) -> (String, String) {
    let o = run(Command::new("groff")
        .args(["-man", "-Tascii", "-rLL=60n", "-P-cbou", "-ww"])
        .arg(page));
    assert!(
        o.status.success(),
        "groff {}: {}",
        page.display(),
        stderr(&o)
    );
    (stdout(&o), stderr(&o))
}

/// The names `name(1)` references in `text` name.
fn references(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (i, _) in text.match_indices("(1)") {
        let name: String = text[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !name.is_empty() {
            refs.insert(name);
        }
    }
    refs
}

#[test]
fn man_pages_name_only_pages_that_exist_and_keep_examples_whole() {
    if !require(
        Command::new("groff")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "groff (groff-base, as .ci/run installs)",
    ) {
        return;
    }
    let dir = TempDir::new().unwrap();
    let o = run(bin().arg("man").arg("--dir").arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let pages: BTreeSet<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|n| n.strip_suffix(".1").expect("only .1 pages").to_string())
        .collect();
    for p in [
        "imprint",
        "imprint-provision",
        "imprint-verify",
        "imprint-manifest",
        "imprint-manifest-merge",
    ] {
        assert!(pages.contains(p), "no {p}.1 in {pages:?}");
    }

    // The examples as `imprint --help` prints them.
    let help = stdout(&run(bin().arg("--help")));
    let examples: Vec<&str> = help
        .split_once("Examples:\n")
        .expect("--help has examples")
        .1
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(examples.iter().any(|l| l.ends_with('\\')));
    assert!(examples.iter().any(|l| l.contains("--login-url")));

    for name in &pages {
        let path = dir.path().join(format!("{name}.1"));
        let source = fs::read_to_string(&path).unwrap();
        let (text, warnings) = render(&path);
        assert!(warnings.is_empty(), "{name}: groff warns:\n{warnings}");
        for section in ["NAME", "SYNOPSIS", "OPTIONS", "EXIT STATUS", "ENVIRONMENT"] {
            assert!(
                text.lines().any(|l| l == section),
                "{name}: no {section} section in\n{text}"
            );
        }
        for var in [
            "IMPRINT_API_TOKEN",
            "IMPRINT_LIBEXT2FS",
            "IMPRINT_CACHE_DIR",
            "SOURCE_DATE_EPOCH",
        ] {
            assert!(text.contains(var), "{name}: {var} is not in ENVIRONMENT");
        }
        // The header and footer repeat the page's own name, squeezed
        // into 60 columns; the references are in between.
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let body = lines[1..lines.len() - 1].join("\n");
        for r in references(&body) {
            assert!(
                pages.contains(&r),
                "{name} names {r}(1), which is not generated"
            );
        }
        // Every flag the page spells comes out whole (no line break or
        // hyphenation inside --login-url).
        let flags: BTreeSet<&str> = source
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '\\' || c == '-'))
            .filter(|w| w.starts_with("\\-\\-") && w.len() > 4)
            .collect();
        for flag in flags {
            let plain = flag.replace("\\-", "-");
            let plain = plain.trim_end_matches('\\');
            assert_eq!(
                text.matches(plain).count(),
                source.matches(flag.trim_end_matches('\\')).count(),
                "{name}: {plain} broken in\n{text}"
            );
        }
        // Every line of the examples is a line of the page.
        if source.contains(".SH EXAMPLES") {
            let lines: BTreeSet<&str> = text.lines().map(str::trim).collect();
            for l in &examples {
                assert!(
                    lines.contains(l),
                    "{name}: example line {l:?} not whole in\n{text}"
                );
            }
        }
    }

    // `imprint man` alone prints imprint.1.
    let o = run(bin().arg("man"));
    assert!(o.status.success());
    assert_eq!(
        o.stdout,
        fs::read(dir.path().join("imprint.1")).unwrap(),
        "imprint man and imprint.1 differ"
    );
}
