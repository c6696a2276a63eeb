//! Overlay specs (what to put into an image) and the plan they resolve to.
//!
//! A spec is declarative TOML (see `overlays/device-conf.toml`, the default).
//! Resolving it against an image's user database and a device's identity
//! gives a plan: concrete paths, modes, numeric owners, mtime and bytes.
//! Every image backend applies the same plan, so the rules about modes,
//! owners, parents and replacement live here and in `PlanEntry` only.

pub mod devices;
mod links;
pub(crate) mod model;
pub(crate) mod name;
mod pattern;
mod source;
pub(crate) mod spec;

use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::owner::{Owner, OwnerError, OwnerSpec, UserDb};
pub use devices::DevicesError;
pub(crate) use model::Existing;
pub use model::{EntryType, FileMeta, ImagePath};
pub(crate) use pattern::PathTemplate;
pub(crate) use spec::DeviceVars;
use spec::{parse_mode, render_content, render_name, source_path, SpecKind};
pub use spec::{ExtraVars, OverlaySpec};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OverlayError {
    #[error("cannot read overlay {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("overlay {origin}: {}", crate::excerpt::Cut(message))]
    Syntax { origin: String, message: String },
    #[error("overlay {origin}, entry {}: {why}", crate::excerpt::quoted(path))]
    Entry {
        origin: String,
        path: String,
        why: String,
    },
    #[error("entry {path}")]
    Owner { path: String, source: OwnerError },
    #[error("device {serial}: the overlay uses {{{name}}}, which has no value for it; add a {name} column to --devices (and a value in every row), or remove it from the overlay")]
    MissingVariable { serial: String, name: String },
    #[error("device {serial}: the overlay path {} becomes {}, which is not an absolute path without '..'", crate::excerpt::quoted(template), crate::excerpt::quoted(path))]
    BadRenderedPath {
        serial: String,
        template: String,
        path: String,
    },
    #[error("device {serial} ({at}): the value of {{{name}}} {why}")]
    BadValue {
        serial: String,
        /// Where the value was given: `devices.csv, line 3`.
        at: String,
        name: String,
        why: String,
    },
    #[error("device {serial}: cannot use the overlay source {path}: {why}")]
    Source {
        serial: String,
        path: String,
        why: String,
    },
    #[error("two overlay entries write {0}")]
    Duplicate(String),
    #[error(
        "{path} is to be created inside {parent}, which neither the image nor the overlay provides"
    )]
    MissingParent { path: String, parent: String },
    #[error("{path} is {what}, not a directory; imprint will not write through it. Make it a real directory and try again")]
    NotDirectory { path: String, what: String },
    #[error(
        "{path} is {what}; imprint only replaces a regular file there. Remove it and try again"
    )]
    NotRegular { path: String, what: String },
    #[error("{path} is {what}; a symlink replaces only a file or another symlink. Remove it and try again")]
    NotReplaceableBySymlink { path: String, what: String },
    #[error("{path} is a directory that is not empty; imprint removes it only with `recursive = true` in its entry")]
    NotEmpty { path: String },
    /// A symlink on the way to an entry leads nowhere usable inside the
    /// image (dangling, a loop, not a directory).
    #[error("{path} lies behind a symlink in the image: {why}")]
    Link { path: String, why: String },
    #[error("{path} lies inside {absent}, which the overlay removes; drop one of the two entries")]
    InsideAbsent { path: String, absent: String },
}

#[derive(Clone)]
pub(crate) enum PlanKind {
    /// Create the directory if it is absent; an existing directory is kept
    /// as it is. Anything else at that path is an error.
    Dir,
    /// Create the file, or replace whatever regular file is there.
    File(Zeroizing<Vec<u8>>),
    /// Create a symbolic link to the target (stored as given), replacing a
    /// file or symlink already there.
    Symlink(String),
    /// Remove whatever is at the path, if anything: a file, symlink or
    /// device node; a directory only when it is empty or `recursive`.
    Absent { recursive: bool },
}

impl PlanKind {
    /// The word specs and dry runs use for the kind.
    pub fn name(&self) -> &'static str {
        match self {
            PlanKind::Dir => "dir",
            PlanKind::File(_) => "file",
            PlanKind::Symlink(_) => "symlink",
            PlanKind::Absent { .. } => "absent",
        }
    }
}

impl fmt::Debug for PlanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanKind::Dir => f.write_str("Dir"),
            PlanKind::File(bytes) => write!(f, "File(<{} bytes>)", bytes.len()),
            PlanKind::Symlink(target) => write!(f, "Symlink({target:?})"),
            PlanKind::Absent { recursive } => write!(f, "Absent {{ recursive: {recursive} }}"),
        }
    }
}

/// One extended attribute an entry sets, e.g. `security.selinux`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

impl fmt::Debug for Xattr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xattr({}, <{} bytes>)", self.name, self.value.len())
    }
}

/// Whether an extended attribute survives when its file is replaced: a
/// security label (SELinux, AppArmor, IMA, capabilities) stays with the
/// path; ACLs and user/trusted attributes go, so that a replaced file gets
/// exactly the access the plan gives it, in every format alike.
pub(crate) fn kept_on_replace(name: &str) -> bool {
    name.starts_with("security.")
}

#[derive(Debug, Clone)]
pub(crate) struct PlanEntry {
    pub path: ImagePath,
    pub kind: PlanKind,
    /// Permission bits only (no file type), e.g. 0o600. Symlinks: 0o777.
    pub mode: u32,
    pub owner: Owner,
    /// Extended attributes to set, sorted by name. A new entry gets
    /// exactly these; a replaced file also keeps its own attributes for
    /// which [`kept_on_replace`] says yes and that are not set here.
    pub xattrs: Vec<Xattr>,
}

impl PlanEntry {
    pub fn content(&self) -> Option<&[u8]> {
        match &self.kind {
            PlanKind::File(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// Everything a backend needs to write: entries with parents before
/// children, and the mtime (seconds since the epoch) to give new entries.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub entries: Vec<PlanEntry>,
    pub mtime: i64,
}

impl Plan {
    /// Resolves `spec` for one device against one image's user database
    /// (the shorthand of the unit tests and fuzz harnesses; the pipeline
    /// always has device variables).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn resolve(
        spec: &OverlaySpec,
        vars: &DeviceVars,
        db: &UserDb,
        default_owner: &OwnerSpec,
        mtime: i64,
    ) -> Result<Plan, OverlayError> {
        Plan::resolve_for(spec, vars, &ExtraVars::default(), db, default_owner, mtime)
    }

    /// Resolves `spec` for one device, with its own variables (`--devices`),
    /// against one image's user database.
    pub fn resolve_for(
        spec: &OverlaySpec,
        vars: &DeviceVars,
        extra: &ExtraVars,
        db: &UserDb,
        default_owner: &OwnerSpec,
        mtime: i64,
    ) -> Result<Plan, OverlayError> {
        let missing = |name: String| OverlayError::MissingVariable {
            serial: vars.serial.to_string(),
            name,
        };
        let name = |text: &str| render_name(text, vars.serial, vars.email, extra).map_err(missing);
        spec.check_values(vars.serial, extra)?;
        let mut entries: Vec<PlanEntry> = Vec::new();
        for (origin, e) in &spec.entries {
            let rendered = name(&e.path)?;
            let path =
                ImagePath::parse(&rendered).ok_or_else(|| OverlayError::BadRenderedPath {
                    serial: vars.serial.to_string(),
                    template: e.path.clone(),
                    path: rendered.clone(),
                })?;
            if entries.iter().any(|p| p.path == path) {
                return Err(OverlayError::Duplicate(path.to_string()));
            }
            let owner = match (e.kind, e.owner.as_deref()) {
                (SpecKind::Absent, _) | (_, None) => Owner {
                    uid: 0,
                    gid: 0,
                    user_name: None,
                    group_name: None,
                },
                (_, Some(text)) => {
                    let owner_spec = if text == "{owner}" {
                        default_owner.clone()
                    } else {
                        text.parse().expect("checked when parsed")
                    };
                    db.resolve(&owner_spec)
                        .map_err(|source| OverlayError::Owner {
                            path: path.to_string(),
                            source,
                        })?
                }
            };
            let kind = match e.kind {
                SpecKind::Dir => PlanKind::Dir,
                SpecKind::File => match (&e.content, &e.source) {
                    (_, Some(source)) => {
                        let host = source_path(origin, source, (vars.serial, vars.email), extra)?;
                        PlanKind::File(source::read(&host, vars.serial)?)
                    }
                    (content, None) => PlanKind::File(
                        render_content(content.as_deref().unwrap_or_default(), vars, extra)
                            .map_err(missing)?,
                    ),
                },
                SpecKind::Symlink => {
                    PlanKind::Symlink(name(e.target.as_deref().unwrap_or_default())?)
                }
                SpecKind::Absent => PlanKind::Absent {
                    recursive: e.recursive.unwrap_or(false),
                },
            };
            let mode = match e.kind {
                SpecKind::Symlink => 0o777,
                SpecKind::Absent => 0,
                _ => e
                    .mode
                    .as_deref()
                    .and_then(parse_mode)
                    .expect("checked when parsed"),
            };
            // A BTreeMap: already sorted by name.
            let xattrs = e
                .xattrs
                .iter()
                .flatten()
                .map(|(key, value)| {
                    Ok(Xattr {
                        name: key.clone(),
                        value: name(value)?.into_bytes(),
                    })
                })
                .collect::<Result<_, OverlayError>>()?;
            entries.push(PlanEntry {
                path,
                kind,
                mode,
                owner,
                xattrs,
            });
        }
        for absent in entries
            .iter()
            .filter(|e| matches!(e.kind, PlanKind::Absent { .. }))
        {
            let inside = entries.iter().find(|e| {
                e.path.components().starts_with(absent.path.components()) && e.path != absent.path
            });
            if let Some(inside) = inside {
                return Err(OverlayError::InsideAbsent {
                    path: inside.path.to_string(),
                    absent: absent.path.to_string(),
                });
            }
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
        // Removing needs no parent: where there is none, there is nothing
        // to remove.
        let creating = self
            .entries
            .iter()
            .filter(|e| !matches!(e.kind, PlanKind::Absent { .. }));
        for e in creating {
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
    /// directory, a planned file is absent or a regular file (one with
    /// other hard links is replaced by a new file under this name; its
    /// other names keep the old one).
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
                // A file with other names is replaced, never rewritten in place:
                // the backends unlink this name and create a new file.
                PlanKind::File(_) => found.kind == EntryType::Regular,
                PlanKind::Symlink(_) => {
                    matches!(found.kind, EntryType::Symlink | EntryType::Regular)
                }
                // Whether a directory is empty is the backend's to check.
                PlanKind::Absent { .. } => true,
            };
            if !fine {
                let (path, what) = (entry.path.to_string(), found.what);
                return Err(match entry.kind {
                    PlanKind::Dir => OverlayError::NotDirectory { path, what },
                    PlanKind::Symlink(_) => OverlayError::NotReplaceableBySymlink { path, what },
                    _ => OverlayError::NotRegular { path, what },
                }
                .into());
            }
        }
        Ok(())
    }
}

/// What applying an entry does to the image, as a dry run reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing is there: the entry is created.
    Create,
    /// A file or symlink is there and is replaced.
    Replace,
    /// Something is there and is removed.
    Remove,
    /// Nothing changes: a directory already there, or nothing to remove.
    Keep,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Remove => "remove",
            Action::Keep => "keep",
        }
    }
}

impl Plan {
    /// What each entry does, in the plan's order, given what the image
    /// holds (run [`Plan::check_existing`] first: this does not judge
    /// whether the change is allowed).
    pub fn classify<E>(
        &self,
        mut existing: impl FnMut(&ImagePath) -> Result<Option<Existing>, E>,
    ) -> Result<Vec<Action>, E> {
        self.entries
            .iter()
            .map(|entry| {
                let there = existing(&entry.path)?;
                Ok(match (&entry.kind, there) {
                    (PlanKind::Absent { .. }, Some(_)) => Action::Remove,
                    (PlanKind::Absent { .. }, None) => Action::Keep,
                    (PlanKind::Dir, Some(_)) => Action::Keep,
                    (_, Some(_)) => Action::Replace,
                    (_, None) => Action::Create,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Password;
    use spec::render;

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
            "[[entry]]\npath='/etc/x'\ntype='symlink'\n",
            "[[entry]]\npath='/etc/x'\ntype='symlink'\ntarget='a'\nmode='0644'\n",
            "[[entry]]\npath='/etc/x'\ntype='absent'\nmode='0644'\n",
            "[[entry]]\npath='/etc/x'\ntype='file'\nmode='0600'\nowner='0:0'\ncontent=''\ntarget='a'\n",
            "[[entry]]\npath='/etc/x'\ntype='dir'\nmode='0755'\nowner='0:0'\nrecursive=true\n",
            "[[entry]]\npath='/etc/x'\ntype='file'\nmode='0600'\nowner='0:0'\ncontent=''\nxattrs={'system.posix_acl_access'='x'}\n",
            "[[entry]]\npath='/etc/x'\ntype='file'\nmode='0600'\nowner='0:0'\ncontent=''\nxattrs={'security.'='x'}\n",
            "[[entry]]\npath='/etc/x'\ntype='dir'\nowner='0:0'\n",
        ] {
            assert!(OverlaySpec::parse(spec, "t").is_err(), "{spec}");
        }
    }

    #[test]
    fn symlinks_removals_and_xattrs_resolve() {
        let spec = OverlaySpec::parse(
            r#"
[[entry]]
path = "/etc/systemd/system/multi-user.target.wants/azaion.service"
type = "symlink"
target = "/lib/systemd/system/azaion-{serial}.service"
[[entry]]
path = "/etc/machine-id"
type = "absent"
[[entry]]
path = "/etc/azaion-old"
type = "absent"
recursive = true
[[entry]]
path = "/etc/hostname"
type = "file"
mode = "0644"
owner = "0:0"
content = "{serial}\n"
xattrs = { "security.selinux" = "system_u:object_r:etc_t:s0", "user.b" = "2" }
"#,
            "t",
        )
        .unwrap();
        let p = Password::from_plain("0123");
        let db = UserDb::parse(
            Some(
                b"root:x:0:0::/:/bin/sh
",
            ),
            Some(
                b"root:x:0:
",
            ),
        );
        let plan =
            Plan::resolve(&spec, &vars(&p), &db, &OwnerSpec::User("root".into()), 7).unwrap();
        let by = |p: &str| {
            plan.entries
                .iter()
                .find(|e| e.path.to_string() == p)
                .unwrap()
        };
        let link = by("/etc/systemd/system/multi-user.target.wants/azaion.service");
        assert!(
            matches!(&link.kind, PlanKind::Symlink(t) if t == "/lib/systemd/system/azaion-AZJN-0042.service")
        );
        assert_eq!(link.mode, 0o777);
        assert!(matches!(
            by("/etc/azaion-old").kind,
            PlanKind::Absent { recursive: true }
        ));
        let names: Vec<&str> = by("/etc/hostname")
            .xattrs
            .iter()
            .map(|x| x.name.as_str())
            .collect();
        assert_eq!(names, ["security.selinux", "user.b"]);
        // Removals need no parent; the symlink's parent must exist.
        assert_eq!(
            plan.required_parents(),
            vec![
                ImagePath::parse("/etc").unwrap(),
                ImagePath::parse("/etc/systemd/system/multi-user.target.wants").unwrap()
            ]
        );
        assert!(kept_on_replace("security.ima") && !kept_on_replace("system.posix_acl_access"));
    }

    #[test]
    fn an_entry_inside_a_removed_directory_is_refused() {
        let spec = OverlaySpec::parse(
            "[[entry]]\npath='/etc/a'\ntype='absent'\nrecursive=true\n[[entry]]\npath='/etc/a/b'\ntype='file'\nmode='0600'\nowner='0:0'\ncontent=''\n",
            "t",
        )
        .unwrap();
        let p = Password::from_plain("0123");
        let db = UserDb::parse(Some(b"root:x:0:0::/:/bin/sh\n"), Some(b"root:x:0:\n"));
        let err =
            Plan::resolve(&spec, &vars(&p), &db, &OwnerSpec::User("root".into()), 7).unwrap_err();
        assert!(matches!(err, OverlayError::InsideAbsent { .. }), "{err}");
    }

    #[test]
    fn sources_and_device_variables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        let cert = b"\0\x01binary\xff\0";
        std::fs::write(dir.path().join("certs/AZJN-0042.pem"), cert).unwrap();
        let spec_path = dir.path().join("spec.toml");
        std::fs::write(
            &spec_path,
            "[[entry]]\npath='/etc/{site}/{serial}.pem'\ntype='file'\nmode='0600'\nowner='0:0'\nsource='certs/{serial}.pem'\n\
             [[entry]]\npath='/etc/hostname'\ntype='file'\nmode='0644'\nowner='0:0'\ncontent='{hostname}\\n${HOME} {\"json\": 1}'\n",
        )
        .unwrap();
        let spec = OverlaySpec::load(&spec_path).unwrap();
        let names: Vec<String> = spec.variables().into_iter().collect();
        assert_eq!(names, ["hostname", "serial", "site"]);
        let serial = crate::identity::Serial::parse("AZJN-0042").unwrap();
        let extra = ExtraVars::new(
            [("site", "berlin"), ("hostname", "jetson-42")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        );
        spec.check_device(&serial, &extra).unwrap();
        let p = Password::from_plain("0123");
        let db = UserDb::parse(Some(b"root:x:0:0::/:/bin/sh\n"), Some(b"root:x:0:\n"));
        let owner = OwnerSpec::User("root".into());
        let plan = Plan::resolve_for(&spec, &vars(&p), &extra, &db, &owner, 7).unwrap();
        let by = |p: &str| {
            plan.entries
                .iter()
                .find(|e| e.path.to_string() == p)
                .unwrap()
        };
        assert_eq!(by("/etc/berlin/AZJN-0042.pem").content().unwrap(), cert);
        assert_eq!(
            by("/etc/hostname").content().unwrap(),
            b"jetson-42\\n${HOME} {\"json\": 1}"
        );
        // A blank or absent value, and a missing source, fail up front.
        let blank = ExtraVars::new([("site".to_string(), String::new())].into());
        let err = spec.check_device(&serial, &blank).unwrap_err();
        assert!(
            matches!(&err, OverlayError::MissingVariable { name, .. } if name == "hostname" || name == "site"),
            "{err}"
        );
        let other = crate::identity::Serial::parse("AZJN-0043").unwrap();
        let err = spec.check_device(&other, &extra).unwrap_err().to_string();
        assert!(
            err.contains("AZJN-0043") && err.contains("certs/AZJN-0043.pem"),
            "{err}"
        );
        // A value that would climb out of the image is refused.
        let climb = ExtraVars::new(
            [("site", ".."), ("hostname", "x")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        );
        let err = spec.check_device(&serial, &climb).unwrap_err();
        assert!(matches!(err, OverlayError::BadRenderedPath { .. }), "{err}");
        // The password never goes into names.
        for bad in ["path='/etc/{password}'", "target='{password}'"] {
            let text = format!(
                "[[entry]]\n{bad}\ntype='symlink'\n{}",
                if bad.starts_with("path") {
                    "target='x'"
                } else {
                    "path='/etc/x'"
                }
            );
            assert!(OverlaySpec::parse(&text, "t").is_err(), "{bad}");
        }
    }

    /// Values are checked where they go, in `check_device` and again when
    /// resolving (the library's callers may skip the first).
    #[test]
    fn values_stay_in_their_place() {
        let spec = OverlaySpec::parse(
            "[[entry]]\npath='/etc/env'\ntype='file'\nmode='0644'\nowner='0:0'\ncontent='A={a}\\nB={b}\\n'\nmultiline=['b']\n\
             [[entry]]\npath='/etc/k'\ntype='file'\nmode='0600'\nowner='0:0'\nsource='/srv/{k}'\n",
            "t",
        )
        .unwrap();
        let serial = crate::identity::Serial::parse("AZJN-0042").unwrap();
        let vars_of = |a: &str, b: &str, k: &str| {
            ExtraVars::new(
                [("a", a), ("b", b), ("k", k)]
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .into(),
            )
            .with_origin("d.csv, line 2")
        };
        let p = Password::from_plain("0123");
        let db = UserDb::parse(Some(b"root:x:0:0::/:/bin/sh\n"), Some(b"root:x:0:\n"));
        let owner = OwnerSpec::User("root".into());
        for (a, b, k, want) in [
            ("x\ny", "ok", "k", "{a} holds a line break"),
            ("x\ry", "ok", "k", "{a} holds a line break"),
            ("x", "o\0k", "k", "{b} holds a NUL byte"),
            ("x", "ok", "../etc/shadow", "{k} climbs out with '..'"),
            ("x", "ok", "a/../../b", "{k} climbs out with '..'"),
            ("x", "ok", "/etc/shadow", "{k} is an absolute path"),
            ("x", "ok", "k\n", "{k} holds a line break"),
        ] {
            let extra = vars_of(a, b, k);
            let err = spec.check_device(&serial, &extra).unwrap_err().to_string();
            assert!(
                err.starts_with("device AZJN-0042 (d.csv, line 2): the value of "),
                "{err}"
            );
            assert!(err.contains(want), "{want}: {err}");
            let Err(err) = Plan::resolve_for(&spec, &vars(&p), &extra, &db, &owner, 7) else {
                panic!("{want}: not refused when resolving");
            };
            let err = err.to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        // The entry that lists {b} in multiline takes its line breaks;
        // a value with '..' inside a name is no climb.
        let extra = vars_of("x", "l1\nl2", "..k");
        let err = spec.check_device(&serial, &extra).unwrap_err().to_string();
        assert!(
            err.contains("/srv/..k"),
            "only the missing source is left: {err}"
        );
        // multiline names --devices variables of a file with content.
        for bad in [
            "type='file'\nmode='0600'\nowner='0:0'\nsource='x'\nmultiline=['a']",
            "type='file'\nmode='0600'\nowner='0:0'\ncontent='{password}'\nmultiline=['password']",
        ] {
            let text = format!("[[entry]]\npath='/etc/x'\n{bad}\n");
            assert!(OverlaySpec::parse(&text, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_are_classified_against_the_image() {
        let spec = OverlaySpec::parse(
            "[[entry]]\npath='/etc/a'\ntype='dir'\nmode='0755'\nowner='0:0'\n\
             [[entry]]\npath='/etc/a/f'\ntype='file'\nmode='0600'\nowner='0:0'\ncontent=''\n\
             [[entry]]\npath='/etc/l'\ntype='symlink'\ntarget='x'\n\
             [[entry]]\npath='/etc/gone'\ntype='absent'\n\
             [[entry]]\npath='/etc/never'\ntype='absent'\n",
            "t",
        )
        .unwrap();
        let p = Password::from_plain("0123");
        let db = UserDb::parse(Some(b"root:x:0:0::/:/bin/sh\n"), Some(b"root:x:0:\n"));
        let plan =
            Plan::resolve(&spec, &vars(&p), &db, &OwnerSpec::User("root".into()), 7).unwrap();
        let image = |p: &ImagePath| -> Result<Option<Existing>, OverlayError> {
            Ok(match p.to_string().as_str() {
                "/etc/a" => Some(Existing::new(EntryType::Dir, 2, "here")),
                "/etc/l" | "/etc/gone" => Some(Existing::new(EntryType::Regular, 1, "here")),
                _ => None,
            })
        };
        let actions: Vec<(String, &str)> = plan
            .entries
            .iter()
            .zip(plan.classify(image).unwrap())
            .map(|(e, a)| (e.path.to_string(), a.name()))
            .collect();
        let want = [
            ("/etc/a", "keep"),
            ("/etc/l", "replace"),
            ("/etc/gone", "remove"),
            ("/etc/never", "keep"),
            ("/etc/a/f", "create"),
        ];
        assert_eq!(actions, want.map(|(p, a)| (p.to_string(), a)));
    }

    #[test]
    fn template_leaves_unknown_braces() {
        let p = Password::from_plain("pw");
        assert_eq!(&render("{x}{serial}{", &vars(&p))[..], b"{x}AZJN-0042{");
    }
}
