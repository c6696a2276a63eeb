//! Overlay specs: the declarative TOML that says what to put into an image
//! (`overlays/device-conf.toml` is the default), parsed and checked before
//! any image is opened.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::model::ImagePath;
use super::pattern::PathTemplate;
use super::OverlayError;
use crate::identity::{Password, Serial};
use crate::owner::OwnerSpec;

/// The overlay that writes `/etc/azaion/device.conf`.
pub const DEFAULT_OVERLAY: &str = include_str!("../../overlays/device-conf.toml");

/// What a spec file says, before templating.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    #[serde(default, rename = "entry")]
    entries: Vec<SpecEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpecEntry {
    pub(super) path: String,
    #[serde(rename = "type")]
    pub(super) kind: SpecKind,
    /// Required for files and directories; a symlink's is always 0777.
    pub(super) mode: Option<String>,
    /// `{owner}` (the `--owner` flag), `USER`, `USER:GROUP` or `UID:GID`.
    /// Required for files and directories; a symlink's defaults to 0:0.
    pub(super) owner: Option<String>,
    /// File content, with `{email}`, `{password}` and `{serial}` replaced.
    pub(super) content: Option<String>,
    /// Instead of content: a host file (templated path, relative to the
    /// spec's directory), copied byte for byte.
    pub(super) source: Option<String>,
    /// A symlink's target, templated like content.
    pub(super) target: Option<String>,
    /// An absent directory's contents go too.
    pub(super) recursive: Option<bool>,
    /// Extended attributes (`security.*`, `user.*`, `trusted.*`) as text.
    pub(super) xattrs: Option<BTreeMap<String, String>>,
    /// The `--devices` variables whose values may span lines in this
    /// file's content (a PEM certificate); any other value with a line
    /// break is refused, as it would add lines to the file.
    pub(super) multiline: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum SpecKind {
    Dir,
    File,
    Symlink,
    Absent,
}

/// Namespaces an overlay may set attributes in. `system.*` holds ACLs and
/// other binary kernel formats that a text value cannot express.
const XATTR_NAMESPACES: [&str; 3] = ["security.", "user.", "trusted."];

/// Where an entry was read from: the directory its `source` paths are
/// relative to (`None`: the current directory, for the
/// built-in spec and one read from stdin).
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub(super) dir: Option<PathBuf>,
}

/// A parsed, checked overlay spec, ready to be resolved per device.
#[derive(Debug, Clone)]
pub struct OverlaySpec {
    pub(super) entries: Vec<(Origin, SpecEntry)>,
}

impl OverlaySpec {
    pub fn default_spec() -> OverlaySpec {
        OverlaySpec::parse(DEFAULT_OVERLAY, "device-conf (built in)")
            .expect("the built-in overlay is valid")
    }

    pub fn load(path: &Path) -> Result<OverlaySpec, OverlayError> {
        let text = std::fs::read_to_string(path).map_err(|source| OverlayError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut spec = OverlaySpec::parse(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        for (origin, _) in &mut spec.entries {
            origin.dir = Some(dir.clone());
        }
        Ok(spec)
    }

    pub fn parse(text: &str, origin: &str) -> Result<OverlaySpec, OverlayError> {
        let file: SpecFile = toml::from_str(text).map_err(|e| OverlayError::Syntax {
            origin: origin.to_string(),
            message: e.message().to_string(),
        })?;
        for e in &file.entries {
            let bad = |why: &str| OverlayError::Entry {
                origin: origin.to_string(),
                path: e.path.clone(),
                why: why.to_string(),
            };
            if ImagePath::parse(&e.path).is_none() {
                return Err(bad("the path must be absolute and must not contain '..'"));
            }
            check_entry(e).map_err(|why| bad(&why))?;
        }
        Ok(OverlaySpec {
            entries: file
                .entries
                .into_iter()
                .map(|e| (Origin { dir: None }, e))
                .collect(),
        })
    }

    /// The paths the spec writes, for backends that must look for them
    /// (templated paths as written: a backend looks again for the
    /// rendered ones).
    pub fn targets(&self) -> Vec<ImagePath> {
        self.entries
            .iter()
            .filter_map(|(_, e)| ImagePath::parse(&e.path))
            .collect()
    }

    /// The `{name}` variables the templates use, built-in ones included.
    pub fn variables(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (_, e) in &self.entries {
            for text in e.templates() {
                names.extend(template_names(text).map(str::to_string));
            }
        }
        names
    }

    /// Checks what can be known of one device before any work: every
    /// variable the templates use has a value, rendered paths are valid,
    /// and every `source` file exists, is a regular file and is within
    /// `MAX_SOURCE` (16 MiB). `serial` names the device in errors.
    pub fn check_device(
        &self,
        serial: &Serial,
        extra: &ExtraVars,
    ) -> Result<(), super::OverlayError> {
        let email = serial.email();
        let serial = serial.as_str();
        // A blank cell is a missing value.
        let defined =
            |name: &str| BUILT_IN.contains(&name) || extra.get(name).is_some_and(|v| !v.is_empty());
        if let Some(missing) = self
            .variables()
            .into_iter()
            .find(|n| extra.strict && !defined(n))
        {
            return Err(super::OverlayError::MissingVariable {
                serial: serial.to_string(),
                name: missing,
            });
        }
        self.check_values(serial, extra)?;
        for (origin, e) in &self.entries {
            let path = render_name(&e.path, serial, &email, extra).map_err(|name| {
                super::OverlayError::MissingVariable {
                    serial: serial.to_string(),
                    name,
                }
            })?;
            if ImagePath::parse(&path).is_none() {
                return Err(super::OverlayError::BadRenderedPath {
                    serial: serial.to_string(),
                    template: e.path.clone(),
                    path,
                });
            }
            if let Some(source) = &e.source {
                let host = source_path(origin, source, (serial, &email), extra)?;
                super::source::check(&host, serial)?;
            }
        }
        Ok(())
    }

    /// The paths of the files whose content holds the password: what a
    /// base image (one every device is stamped from, or an OTA payload is
    /// built from) must not contain. Templated paths as written.
    pub fn secret_paths(&self) -> Vec<PathTemplate> {
        let mut paths: Vec<PathTemplate> = Vec::new();
        let secrets = self
            .entries
            .iter()
            .filter(|(_, e)| e.kind == SpecKind::File)
            .filter(|(_, e)| {
                e.content
                    .as_deref()
                    .is_some_and(|c| template_names(c).any(|n| n == "password"))
            })
            .filter_map(|(_, e)| PathTemplate::parse(&e.path));
        for path in secrets {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        paths
    }

    /// Checks the device's own values where the templates use them: in a
    /// `source`, a path relative to the overlay's directory that stays
    /// there (not absolute, no `..` part); in an image path or a symlink
    /// target, one line; in content, one line unless the entry lists the
    /// variable in `multiline`. NUL is refused everywhere.
    pub(super) fn check_values(
        &self,
        serial: &str,
        extra: &ExtraVars,
    ) -> Result<(), super::OverlayError> {
        for (_, e) in &self.entries {
            let multiline = e.multiline.as_deref().unwrap_or_default();
            let places = [
                (Some(&e.path), Place::Name("path")),
                (e.target.as_ref(), Place::Name("target")),
                (e.source.as_ref(), Place::Source),
                (e.content.as_ref(), Place::Content),
            ];
            let xattrs = e
                .xattrs
                .iter()
                .flatten()
                .map(|(_, v)| (Some(v), Place::Xattr));
            for (template, place) in places.into_iter().chain(xattrs) {
                let Some(template) = template else { continue };
                for name in template_names(template) {
                    let Some(value) = extra.get(name) else {
                        continue;
                    };
                    let allowed = multiline.iter().any(|m| m == name);
                    check_value(value, place, allowed, &e.path).map_err(|why| {
                        super::OverlayError::BadValue {
                            serial: serial.to_string(),
                            at: extra.origin.clone().unwrap_or_else(|| "--devices".into()),
                            name: name.to_string(),
                            why,
                        }
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Warnings for files whose content holds the password while their
    /// mode lets the group or others read them (anyone with a shell on the
    /// device could read the credentials).
    pub fn exposed_secrets(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.kind == SpecKind::File)
            .filter(|(_, e)| {
                e.content
                    .as_deref()
                    .is_some_and(|c| template_names(c).any(|n| n == "password"))
            })
            .filter_map(|(_, e)| {
                let mode = e.mode.as_deref().and_then(parse_mode)?;
                (mode & 0o044 != 0).then(|| {
                    format!(
                        "the overlay writes {{password}} into {} with mode {mode:04o}, which lets {} read it; give the entry mode \"{:04o}\"",
                        e.path,
                        if mode & 0o004 != 0 { "every user of the device" } else { "its group" },
                        mode & 0o7700
                    )
                })
            })
            .collect()
    }

    /// Adds another spec's entries after this one's.
    pub fn extend(&mut self, other: OverlaySpec) {
        self.entries.extend(other.entries);
    }
}

/// The rules of one entry, as a reason when broken.
fn check_entry(e: &SpecEntry) -> Result<(), String> {
    let kind = e.kind;
    let is = |k: SpecKind| kind == k;
    if let Some(mode) = &e.mode {
        if parse_mode(mode).is_none() {
            return Err("mode must be octal permission bits such as \"0600\"".into());
        }
        if is(SpecKind::Symlink) && parse_mode(mode) != Some(0o777) {
            return Err("a symlink's mode is always 0777; leave mode out".into());
        }
    } else if is(SpecKind::Dir) || is(SpecKind::File) {
        return Err("mode is required, e.g. \"0644\"".into());
    }
    match &e.owner {
        Some(owner) if owner != "{owner}" => {
            owner.parse::<OwnerSpec>().map_err(|err| err.to_string())?;
        }
        Some(_) => {}
        None if is(SpecKind::Dir) || is(SpecKind::File) => {
            return Err("owner is required, e.g. \"{owner}\" or \"0:0\"".into())
        }
        None => {}
    }
    if e.content.is_some() && e.source.is_some() {
        return Err("a file takes content or source, not both".into());
    }
    if is(SpecKind::File) != (e.content.is_some() || e.source.is_some()) {
        return Err(if is(SpecKind::File) {
            "a file needs content or source".into()
        } else {
            format!("a {} entry has no content or source", kind.name())
        });
    }
    // Paths and names show up in listings, dry runs and errors.
    let secret_in = [
        ("path", Some(&e.path)),
        ("source", e.source.as_ref()),
        ("target", e.target.as_ref()),
    ];
    let in_xattrs = e.xattrs.iter().flatten().map(|(_, v)| ("xattrs", Some(v)));
    for (what, text) in secret_in.into_iter().chain(in_xattrs) {
        if text.is_some_and(|t| t.contains("{password}")) {
            return Err(format!(
                "{{password}} may appear only in content, not in {what}"
            ));
        }
    }
    if e.source.as_ref().is_some_and(|s| s.is_empty()) {
        return Err("source must name a file".into());
    }
    if is(SpecKind::Symlink) != e.target.is_some() {
        return Err(if is(SpecKind::Symlink) {
            "a symlink needs a target".into()
        } else {
            format!("only a symlink has a target, not a {} entry", kind.name())
        });
    }
    for name in e.multiline.iter().flatten() {
        if e.content.is_none() {
            return Err("multiline applies only to a file with content".into());
        }
        if !is_identifier(name) || BUILT_IN.contains(&name.as_str()) {
            return Err(format!(
                "multiline lists {name:?}: it names --devices variables, not imprint's own"
            ));
        }
    }
    if e.recursive.is_some() && !is(SpecKind::Absent) {
        return Err("recursive applies only to absent entries".into());
    }
    if is(SpecKind::Absent) && (e.mode.is_some() || e.owner.is_some() || e.xattrs.is_some()) {
        return Err("an absent entry takes only path, type and recursive".into());
    }
    if let Some(target) = &e.target {
        if target.is_empty() || target.contains('\0') || target.len() > 4095 {
            return Err("a symlink target must be 1 to 4095 bytes without NUL".into());
        }
    }
    for (name, value) in e.xattrs.iter().flatten() {
        let known = XATTR_NAMESPACES
            .iter()
            .any(|ns| name.len() > ns.len() && name.starts_with(ns));
        if !known || name.len() > 255 || name.contains('\0') {
            return Err(format!(
                "xattr {name:?}: names must be security.*, user.* or trusted.*, up to 255 bytes"
            ));
        }
        if value.len() > 4000 {
            return Err(format!("xattr {name:?}: values are limited to 4000 bytes"));
        }
    }
    Ok(())
}

/// Where a template puts a value.
#[derive(Clone, Copy)]
enum Place {
    /// An image path or a symlink target (the word is the field).
    Name(&'static str),
    /// A host path under the overlay's directory.
    Source,
    Content,
    Xattr,
}

/// Why `value` cannot go where `place` puts it in the entry at `path`.
fn check_value(value: &str, place: Place, multiline: bool, path: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err("holds a NUL byte".into());
    }
    let line_break = value.contains(['\n', '\r']);
    match place {
        Place::Source if value.starts_with('/') => Err(format!(
            "is an absolute path; the source of {path} must stay in the overlay's directory: give a path relative to it"
        )),
        Place::Source if value.split('/').any(|part| part == "..") => Err(format!(
            "climbs out with '..'; the source of {path} must stay in the overlay's directory"
        )),
        Place::Source | Place::Name(_) if line_break => {
            let what = match place {
                Place::Name(what) => what,
                _ => "source",
            };
            Err(format!("holds a line break, which the {what} of {path} cannot take"))
        }
        Place::Content if line_break && !multiline => Err(format!(
            "holds a line break, which would add lines to {path}; if the file takes multi-line values, list the variable in the entry's multiline = [...]"
        )),
        _ => Ok(()),
    }
}

impl SpecKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            SpecKind::Dir => "dir",
            SpecKind::File => "file",
            SpecKind::Symlink => "symlink",
            SpecKind::Absent => "absent",
        }
    }
}

pub(super) fn parse_mode(text: &str) -> Option<u32> {
    let mode = u32::from_str_radix(text, 8).ok()?;
    (mode <= 0o7777 && !text.is_empty() && text.len() <= 5).then_some(mode)
}

/// Values substituted into templates.
pub struct DeviceVars<'a> {
    pub serial: &'a str,
    pub email: &'a str,
    pub password: &'a Password,
}

/// The variables every device has.
const BUILT_IN: [&str; 4] = ["serial", "email", "password", "owner"];

/// A device's own `{name}` values beyond the built-in ones: the columns of
/// `--devices`. With `strict` (a devices file was given), a `{name}` that
/// is neither built in nor a column is an error; without, it is left as
/// written (as are shell's `${VAR}` and JSON's braces always).
#[derive(Debug, Clone, Default)]
pub struct ExtraVars {
    values: BTreeMap<String, String>,
    pub strict: bool,
    /// Where the values come from, for errors: `devices.csv, line 3`.
    origin: Option<String>,
}

impl ExtraVars {
    /// Values by name; names must not be built-in ones.
    pub fn new(values: BTreeMap<String, String>) -> ExtraVars {
        ExtraVars {
            values,
            strict: true,
            origin: None,
        }
    }

    /// Says where the values come from (a devices file and its line).
    pub fn with_origin(mut self, origin: impl Into<String>) -> ExtraVars {
        self.origin = Some(origin.into());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Whether `name` may be a column: not a built-in variable.
    pub fn is_reserved(name: &str) -> bool {
        BUILT_IN.contains(&name)
    }
}

/// Whether `name` may be a template variable: `[A-Za-z_][A-Za-z0-9_-]*`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The `{name}` variables in `template` (not `${name}`, which is shell's).
fn template_names(template: &str) -> impl Iterator<Item = &str> {
    let bytes = template.as_bytes();
    template.match_indices('{').filter_map(move |(at, _)| {
        if at > 0 && bytes[at - 1] == b'$' {
            return None;
        }
        let rest = &template[at + 1..];
        let end = rest.find('}')?;
        let name = &rest[..end];
        is_identifier(name).then_some(name)
    })
}

/// Renders `template` with `lookup` giving each variable's value: `None`
/// leaves `{name}` as written, `Err` stops with the variable's name.
fn render_with(
    template: &str,
    mut lookup: impl FnMut(&str) -> Result<Option<String>, String>,
) -> Result<Zeroizing<String>, String> {
    let mut out = Zeroizing::new(String::with_capacity(template.len() + 64));
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let shell = out.ends_with('$');
        let name = after[1..]
            .find('}')
            .map(|end| &after[1..1 + end])
            .filter(|n| !shell && is_identifier(n));
        match name.map(|n| (n, lookup(n))) {
            Some((n, Ok(Some(value)))) => {
                out.push_str(&value);
                rest = &after[n.len() + 2..];
            }
            Some((_, Err(missing))) => return Err(missing),
            _ => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `template` with each variable (as rendering finds them) replaced by
/// `hole`, for matching paths a template can take.
pub(super) fn mark_variables(template: &str, hole: char) -> String {
    let hole = hole.to_string();
    render_with(template, |_| Ok(Some(hole.clone())))
        .expect("the lookup never fails")
        .to_string()
}

/// The value of `name` among the extra variables; an error in strict mode
/// when it has none (or an empty one: a blank cell is a missing value).
fn extra_value(name: &str, extra: &ExtraVars) -> Result<Option<String>, String> {
    match extra.get(name) {
        Some(v) if !v.is_empty() || !extra.strict => Ok(Some(v.to_string())),
        _ if extra.strict => Err(name.to_string()),
        _ => Ok(None),
    }
}

/// A template holding no secret (path, source, target, xattr value):
/// `{serial}` and the extra variables.
pub(super) fn render_name(
    template: &str,
    serial: &str,
    email: &str,
    extra: &ExtraVars,
) -> Result<String, String> {
    render_with(template, |name| match name {
        "serial" => Ok(Some(serial.to_string())),
        "email" => Ok(Some(email.to_string())),
        "password" | "owner" => Ok(None),
        other => extra_value(other, extra),
    })
    .map(|s| s.to_string())
}

/// File content: every variable, the password included.
pub(super) fn render_content(
    template: &str,
    vars: &DeviceVars,
    extra: &ExtraVars,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut text = render_with(template, |name| match name {
        "serial" => Ok(Some(vars.serial.to_string())),
        "email" => Ok(Some(vars.email.to_string())),
        "password" => Ok(Some(vars.password.expose().to_string())),
        "owner" => Ok(None),
        other => extra_value(other, extra),
    })?;
    Ok(Zeroizing::new(std::mem::take(&mut *text).into_bytes()))
}

/// Where an entry's `source` is on the host, for one device.
pub(super) fn source_path(
    origin: &Origin,
    source: &str,
    (serial, email): (&str, &str),
    extra: &ExtraVars,
) -> Result<PathBuf, super::OverlayError> {
    let rendered = render_name(source, serial, email, extra).map_err(|name| {
        super::OverlayError::MissingVariable {
            serial: serial.to_string(),
            name,
        }
    })?;
    let path = Path::new(&rendered);
    Ok(match &origin.dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    })
}

#[cfg(test)]
pub(super) fn render(template: &str, vars: &DeviceVars) -> Zeroizing<Vec<u8>> {
    render_content(template, vars, &ExtraVars::default()).expect("not strict")
}

impl SpecEntry {
    /// Every templated text of the entry.
    fn templates(&self) -> impl Iterator<Item = &String> {
        [&self.content, &self.source, &self.target]
            .into_iter()
            .flatten()
            .chain(std::iter::once(&self.path))
            .chain(self.xattrs.iter().flat_map(|x| x.values()))
    }
}
