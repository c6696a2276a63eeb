//! Overlay specs: the declarative TOML that says what to put into an image
//! (`overlays/device-conf.toml` is the default), parsed and checked before
//! any image is opened.

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
    pub(super) mode: String,
    /// `{owner}` (the `--owner` flag), `USER`, `USER:GROUP` or `UID:GID`.
    pub(super) owner: String,
    /// File content, with `{email}`, `{password}` and `{serial}` replaced.
    pub(super) content: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum SpecKind {
    Dir,
    File,
}

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
            if parse_mode(&e.mode).is_none() {
                return Err(bad("mode must be octal permission bits such as \"0600\""));
            }
            if e.owner != "{owner}" {
                e.owner
                    .parse::<OwnerSpec>()
                    .map_err(|err| bad(&err.to_string()))?;
            }
            match (e.kind, &e.content) {
                (SpecKind::File, None) => return Err(bad("a file needs content")),
                (SpecKind::Dir, Some(_)) => return Err(bad("a directory has no content")),
                _ => {}
            }
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
