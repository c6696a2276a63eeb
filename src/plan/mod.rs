//! Overlay specs (what to put into an image) and the plan they resolve to.
//!
//! A spec is declarative TOML (see `overlays/device-conf.toml`, the default).
//! Resolving it against an image's user database and a device's identity
//! gives a [`Plan`]: concrete paths, modes, numeric owners, mtime and bytes.
//! Every image backend applies the same plan, so the rules about modes,
//! owners, parents and replacement live here and in [`PlanEntry`] only.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::identity::Password;
use crate::image::EntryType;
use crate::owner::{Owner, OwnerError, OwnerSpec, UserDb};

/// The overlay that writes `/etc/azaion/device.conf`.
pub const DEFAULT_OVERLAY: &str = include_str!("../../overlays/device-conf.toml");

#[derive(Debug, Error)]
pub enum OverlayError {
    #[error("cannot read overlay {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("overlay {origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("overlay {origin}, entry {path:?}: {why}")]
    Entry {
        origin: String,
        path: String,
        why: String,
    },
    #[error("entry {path}: {source}")]
    Owner { path: String, source: OwnerError },
    #[error("two overlay entries write {0}")]
    Duplicate(String),
    #[error(
        "{path} is to be created inside {parent}, which neither the image nor the overlay provides"
    )]
    MissingParent { path: String, parent: String },
    #[error("{path} is {what}, not a directory; imprint will not write through it. Make it a real directory and try again")]
    NotDirectory { path: String, what: String },
    #[error("{path} is {what}; imprint only replaces a regular file with one link there. Remove it and try again")]
    NotRegular { path: String, what: String },
}

/// What a path in the image is, as far as [`Plan::check_existing`] cares,
/// and how to name it in an error (each format knows best: "a symbolic
/// link in the archive", "a symlink in the image").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub kind: EntryType,
    pub links: u32,
    pub what: String,
}

impl Existing {
    /// `where_` completes the description, e.g. "in the image".
    pub fn new(kind: EntryType, links: u32, where_: &str) -> Existing {
        let what = match kind {
            EntryType::Symlink => "a symlink".to_string(),
            EntryType::Dir => "a directory".to_string(),
            EntryType::Regular if links > 1 => format!("a file with {links} hard links"),
            EntryType::Regular => "a regular file".to_string(),
            EntryType::Other => "a device, fifo or socket".to_string(),
        };
        Existing {
            kind,
            links,
            what: format!("{what} {where_}"),
        }
    }
}

/// An absolute path inside the image, kept as validated components so no
/// backend ever sees `..`, `.`, empty segments or NUL bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImagePath(Vec<String>);

impl ImagePath {
    pub fn parse(text: &str) -> Option<ImagePath> {
        let rel = text.strip_prefix('/')?;
        let parts: Vec<String> = rel.split('/').map(str::to_string).collect();
        let ok = !parts.is_empty()
            && parts.iter().all(|p| {
                !p.is_empty() && p != "." && p != ".." && !p.contains('\0') && p.len() <= 255
            });
        ok.then_some(ImagePath(parts))
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// `etc/azaion/device.conf`: the form tar archives and relative joins use.
    pub fn relative(&self) -> String {
        self.0.join("/")
    }

    pub fn parent(&self) -> Option<ImagePath> {
        (self.0.len() > 1).then(|| ImagePath(self.0[..self.0.len() - 1].to_vec()))
    }

    pub fn file_name(&self) -> &str {
        self.0.last().map(String::as_str).unwrap_or("")
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.relative())
    }
}

/// What a spec file says, before templating.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    #[serde(default, rename = "entry")]
    entries: Vec<SpecEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecEntry {
    path: String,
    #[serde(rename = "type")]
    kind: SpecKind,
    mode: String,
    /// `{owner}` (the `--owner` flag), `USER`, `USER:GROUP` or `UID:GID`.
    owner: String,
    /// File content, with `{email}`, `{password}` and `{serial}` replaced.
    content: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SpecKind {
    Dir,
    File,
}

/// A parsed, checked overlay spec, ready to be resolved per device.
#[derive(Debug, Clone)]
pub struct OverlaySpec {
    entries: Vec<(String, SpecEntry)>,
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
                return Err(bad(
                    "the path must be absolute, without '.', '..' or empty parts",
                ));
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

fn parse_mode(text: &str) -> Option<u32> {
    let mode = u32::from_str_radix(text, 8).ok()?;
    (mode <= 0o7777 && !text.is_empty() && text.len() <= 5).then_some(mode)
}

/// Values substituted into templates.
pub struct DeviceVars<'a> {
    pub serial: &'a str,
    pub email: &'a str,
    pub password: &'a Password,
}

fn render(template: &str, vars: &DeviceVars) -> Zeroizing<Vec<u8>> {
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

#[derive(Clone)]
pub enum PlanKind {
    /// Create the directory if it is absent; an existing directory is kept
    /// as it is. Anything else at that path is an error.
    Dir,
    /// Create the file, or replace whatever regular file is there.
    File(Zeroizing<Vec<u8>>),
}

impl fmt::Debug for PlanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanKind::Dir => f.write_str("Dir"),
            PlanKind::File(bytes) => write!(f, "File(<{} bytes>)", bytes.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub path: ImagePath,
    pub kind: PlanKind,
    /// Permission bits only (no file type), e.g. 0o600.
    pub mode: u32,
    pub owner: Owner,
}

impl PlanEntry {
    pub fn content(&self) -> Option<&[u8]> {
        match &self.kind {
            PlanKind::File(bytes) => Some(bytes),
            PlanKind::Dir => None,
        }
    }
}

/// Everything a backend needs to write: entries with parents before
/// children, and the mtime (seconds since the epoch) to give new entries.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entries: Vec<PlanEntry>,
    pub mtime: i64,
}

impl Plan {
    /// Resolves `spec` for one device against one image's user database.
    pub fn resolve(
        spec: &OverlaySpec,
        vars: &DeviceVars,
        db: &UserDb,
        default_owner: &OwnerSpec,
        mtime: i64,
    ) -> Result<Plan, OverlayError> {
        let mut entries: Vec<PlanEntry> = Vec::new();
        for (_, e) in &spec.entries {
            let path = ImagePath::parse(&e.path).expect("checked when parsed");
            if entries.iter().any(|p| p.path == path) {
                return Err(OverlayError::Duplicate(path.to_string()));
            }
            let owner_spec = if e.owner == "{owner}" {
                default_owner.clone()
            } else {
                e.owner.parse().expect("checked when parsed")
            };
            let owner = db
                .resolve(&owner_spec)
                .map_err(|source| OverlayError::Owner {
                    path: path.to_string(),
                    source,
                })?;
            let kind = match &e.content {
                Some(template) => PlanKind::File(render(template, vars)),
                None => PlanKind::Dir,
            };
            entries.push(PlanEntry {
                path,
                kind,
                mode: parse_mode(&e.mode).expect("checked when parsed"),
                owner,
            });
        }
        // Parents first; a stable sort keeps the spec's order otherwise.
        entries.sort_by_key(|e| e.path.components().len());
        Ok(Plan { entries, mtime })
    }

    /// Parents that the plan itself does not create and that must therefore
    /// exist in the image (e.g. `/etc`). Backends check them with
    /// [`Plan::check_parents`].
    pub fn required_parents(&self) -> Vec<ImagePath> {
        let mut needed: Vec<ImagePath> = Vec::new();
        for e in &self.entries {
            if let Some(parent) = e.path.parent() {
                let from_plan = self
                    .entries
                    .iter()
                    .any(|d| d.path == parent && matches!(d.kind, PlanKind::Dir));
                if !from_plan && !needed.contains(&parent) {
                    needed.push(parent);
                }
            }
        }
        needed
    }

    /// Fails with a clear error naming the first required parent for which
    /// `image_has_dir` says no.
    pub fn check_parents(
        &self,
        mut image_has_dir: impl FnMut(&ImagePath) -> bool,
    ) -> Result<(), OverlayError> {
        for parent in self.required_parents() {
            if !image_has_dir(&parent) {
                let child = self
                    .entries
                    .iter()
                    .find(|e| e.path.parent().as_ref() == Some(&parent))
                    .map(|e| e.path.to_string())
                    .unwrap_or_default();
                return Err(OverlayError::MissingParent {
                    path: child,
                    parent: parent.to_string(),
                });
            }
        }
        Ok(())
    }
}

impl Plan {
    /// Checks the plan against what the image already holds: required
    /// parents are directories, a planned directory is absent or a
    /// directory, a planned file is absent or a regular file with one link
    /// (replacing a hard-linked file would change its other names too).
    pub fn check_existing<E: From<OverlayError>>(
        &self,
        mut existing: impl FnMut(&ImagePath) -> Result<Option<Existing>, E>,
    ) -> Result<(), E> {
        let mut parent_error = None;
        self.check_parents(|p| match existing(p) {
            Ok(found) => found.is_some_and(|e| e.kind == EntryType::Dir),
            Err(e) => {
                parent_error.get_or_insert(e);
                true
            }
        })?;
        if let Some(e) = parent_error {
            return Err(e);
        }
        for entry in &self.entries {
            let Some(found) = existing(&entry.path)? else {
                continue;
            };
            let fine = match entry.kind {
                PlanKind::Dir => found.kind == EntryType::Dir,
                PlanKind::File(_) => found.kind == EntryType::Regular && found.links == 1,
            };
            if !fine {
                let (path, what) = (entry.path.to_string(), found.what);
                return Err(match entry.kind {
                    PlanKind::Dir => OverlayError::NotDirectory { path, what },
                    PlanKind::File(_) => OverlayError::NotRegular { path, what },
                }
                .into());
            }
        }
        Ok(())
    }
}

/// The mtime given to new entries: SOURCE_DATE_EPOCH when set (reproducible
/// builds), else the backend's own reference time from the input image.
pub fn choose_mtime(image_reference: i64) -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(image_reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(p: &Password) -> DeviceVars<'_> {
        DeviceVars {
            serial: "AZJN-0042",
            email: "azaion-jetson-0042@azaion.com",
            password: p,
        }
    }

    #[test]
    fn default_plan() {
        let p = Password::from_plain("0123");
        let db = UserDb::parse(Some(b"root:x:0:0::/:/bin/sh\n"), Some(b"root:x:0:\n"));
        let plan = Plan::resolve(
            &OverlaySpec::default_spec(),
            &vars(&p),
            &db,
            &OwnerSpec::User("root".into()),
            7,
        )
        .unwrap();
        assert_eq!(plan.entries.len(), 2);
        assert_eq!(plan.entries[0].path.to_string(), "/etc/azaion");
        assert_eq!(plan.entries[0].mode, 0o755);
        let conf = &plan.entries[1];
        assert_eq!(conf.path.to_string(), "/etc/azaion/device.conf");
        assert_eq!(conf.mode, 0o600);
        assert_eq!(
            conf.content().unwrap(),
            b"AZAION_DEVICE_EMAIL=azaion-jetson-0042@azaion.com\nAZAION_DEVICE_PASSWORD=0123\n"
        );
        assert_eq!(
            plan.required_parents(),
            vec![ImagePath::parse("/etc").unwrap()]
        );
    }

    #[test]
    fn bad_specs() {
        for spec in [
            "[[entry]]\npath='etc/x'\ntype='dir'\nmode='0755'\nowner='0:0'\n",
            "[[entry]]\npath='/etc/../x'\ntype='dir'\nmode='0755'\nowner='0:0'\n",
            "[[entry]]\npath='/etc/x'\ntype='file'\nmode='0600'\nowner='0:0'\n",
            "[[entry]]\npath='/etc/x'\ntype='dir'\nmode='99'\nowner='0:0'\n",
            "[[entry]]\npath='/etc/x'\ntype='link'\nmode='0755'\nowner='0:0'\n",
            "[[entry]]\npath='/etc/x'\ntype='dir'\nmode='0755'\nowner='a b'\n",
        ] {
            assert!(OverlaySpec::parse(spec, "t").is_err(), "{spec}");
        }
    }

    #[test]
    fn template_leaves_unknown_braces() {
        let p = Password::from_plain("pw");
        assert_eq!(&render("{x}{serial}{", &vars(&p))[..], b"{x}AZJN-0042{");
    }
}
