//! Overlay specs (what to put into an image) and the plan they resolve to.
//!
//! A spec is declarative TOML (see `overlays/device-conf.toml`, the default).
//! Resolving it against an image's user database and a device's identity
//! gives a [`Plan`]: concrete paths, modes, numeric owners, mtime and bytes.
//! Every image backend applies the same plan, so the rules about modes,
//! owners, parents and replacement live here and in [`PlanEntry`] only.

pub mod model;
pub mod spec;

use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::owner::{Owner, OwnerError, OwnerSpec, UserDb};
pub use model::{EntryType, Existing, FileMeta, ImagePath};
use spec::{parse_mode, render};
pub use spec::{DeviceVars, OverlaySpec, DEFAULT_OVERLAY};

#[derive(Debug, Error)]
pub enum OverlayError {
    #[error("cannot read overlay {path}")]
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
    #[error("entry {path}")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Password;

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
