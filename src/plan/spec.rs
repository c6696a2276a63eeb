//! Overlay specs: the declarative TOML that says what to put into an image
//! (`overlays/device-conf.toml` is the default), parsed and checked before
//! any image is opened.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::model::ImagePath;
use super::OverlayError;
use crate::identity::Password;
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
    /// A symlink's target, templated like content.
    pub(super) target: Option<String>,
    /// An absent directory's contents go too.
    pub(super) recursive: Option<bool>,
    /// Extended attributes (`security.*`, `user.*`, `trusted.*`) as text.
    pub(super) xattrs: Option<BTreeMap<String, String>>,
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

/// A parsed, checked overlay spec, ready to be resolved per device.
#[derive(Debug, Clone)]
pub struct OverlaySpec {
    pub(super) entries: Vec<(String, SpecEntry)>,
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
        OverlaySpec::parse(&text, &path.display().to_string())
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
                .map(|e| (origin.to_string(), e))
                .collect(),
        })
    }

    /// The paths the spec writes, for backends that must look for them.
    pub fn targets(&self) -> Vec<ImagePath> {
        self.entries
            .iter()
            .filter_map(|(_, e)| ImagePath::parse(&e.path))
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
    if is(SpecKind::File) != e.content.is_some() {
        return Err(if is(SpecKind::File) {
            "a file needs content".into()
        } else {
            format!("a {} entry has no content", kind.name())
        });
    }
    if is(SpecKind::Symlink) != e.target.is_some() {
        return Err(if is(SpecKind::Symlink) {
            "a symlink needs a target".into()
        } else {
            format!("only a symlink has a target, not a {} entry", kind.name())
        });
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

pub(super) fn render(template: &str, vars: &DeviceVars) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(String::with_capacity(template.len() + 64));
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let (value, len) = [
            ("{email}", vars.email),
            ("{password}", vars.password.expose()),
            ("{serial}", vars.serial),
        ]
        .iter()
        .find(|(key, _)| after.starts_with(key))
        .map(|(key, value)| (*value, key.len()))
        .unwrap_or(("{", 1));
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Zeroizing::new(std::mem::take(&mut *out).into_bytes())
}
