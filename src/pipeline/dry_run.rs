//! `--dry-run`: everything a run resolves (the image's kind and users,
//! owners, templates, host sources), and what each entry would do to each
//! image, without writing anything or calling the API.
//!
//! Images are read through the same readers as `verify` (read-only): the
//! user database and `/etc` first, then, once every device's plan is
//! resolved, every path the plans touch in one more pass.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::identity::{Password, Serial};
use crate::image::disk::PartitionId;
use crate::image::{self, resolve, ImageOptions, ImageReader};
use crate::owner::{Owner, UserDb};
use crate::plan::{Action, DeviceVars, Existing, ImagePath, OverlayError, Plan, PlanKind};

use super::{ProvisionError, Settings, Source};

/// What one entry would do.
#[derive(Debug, Clone)]
pub struct PlannedEntry {
    pub path: String,
    /// `dir`, `file`, `symlink` or `absent`.
    pub kind: &'static str,
    pub action: Action,
    /// Permission bits; `None` for a removal.
    pub mode: Option<u32>,
    pub owner: Option<Owner>,
    /// A file's size in bytes (its content is never shown).
    pub size: Option<u64>,
    pub target: Option<String>,
    /// The extended attributes the entry sets (name, value), sorted by
    /// name. Values never hold the password (a plan refuses that).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// One input of one device.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub input: PathBuf,
    /// What the input is, e.g. "tar archive (gzip)".
    pub kind: String,
    /// The output it would be written to; `None` for a staging tree.
    pub output: Option<PathBuf>,
    /// The partition of a disk image these entries go into (a disk image
    /// stamped in several partitions is listed once per partition).
    pub partition: Option<PartitionId>,
    pub entries: Vec<PlannedEntry>,
}

#[derive(Debug, Clone)]
pub struct PlannedDevice {
    pub serial: String,
    pub email: String,
    pub images: Vec<PlannedImage>,
}

/// The most a user database file may have (as when writing).
const MAX_DB: u64 = 16 << 20;

/// Plans every device's files for every input. `outputs[i]` is where
/// input `i` would be written for each device (`None` for a staging tree).
/// `password` stands in for the device's (generated passwords have the
/// runbook's length), so sizes come out as a real run's.
pub fn plan(
    inputs: &[Source],
    outputs: &dyn Fn(usize, &Serial) -> Option<PathBuf>,
    serials: &[Serial],
    password: Option<&Password>,
    settings: &Settings,
) -> Result<Vec<PlannedDevice>, ProvisionError> {
    for serial in serials {
        settings
            .overlay
            .check_device(serial, &settings.vars_of(serial))?;
    }
    let stand_in = Password::from_plain(&"0".repeat(32));
    let password = password.unwrap_or(&stand_in);
    let mut devices: Vec<PlannedDevice> = serials
        .iter()
        .map(|s| PlannedDevice {
            serial: s.to_string(),
            email: s.email(),
            images: Vec::new(),
        })
        .collect();
    for (i, source) in inputs.iter().enumerate() {
        let (path, kind) = match source {
            Source::Image(p) => (p, image::detect(p)?.describe()),
            Source::StagingDir(p) => (p, "staging directory".to_string()),
        };
        let options = ImageOptions {
            partitions: settings.options.partitions.clone(),
            luks: settings.options.luks.clone(),
            ..Default::default()
        };
        for (partition, mut reader) in image::open_readers(path, &options)? {
            let plans = plans_for(reader.as_mut(), serials, password, settings)?;
            // Through the image's symlinks, as the writing backends go.
            let mut linked = Vec::new();
            for plan in &plans {
                linked.push(resolve::with_reader_links(reader.as_mut(), |links| {
                    plan.follow_links(|p| Ok::<_, ProvisionError>(links(p)))
                })?);
            }
            let resolved: Vec<Plan> = linked.iter().map(|l| l.plan().clone()).collect();
            let existing = existing_paths(reader.as_mut(), &resolved)?;
            let lookup =
                |p: &ImagePath| Ok::<_, ProvisionError>(existing.get(p).cloned().flatten());
            let mut plans = Vec::new();
            for l in linked {
                plans.push(l.check(lookup)?);
            }
            for ((device, serial), plan) in devices.iter_mut().zip(serials).zip(&plans) {
                plan.check_existing(lookup)?;
                check_removals(reader.as_mut(), plan, &existing)?;
                let actions = plan.classify(lookup)?;
                device.images.push(PlannedImage {
                    input: path.clone(),
                    kind: kind.clone(),
                    output: outputs(i, serial),
                    partition: partition.as_ref().map(|p| p.id()),
                    entries: plan.entries.iter().zip(actions).map(describe).collect(),
                });
            }
        }
    }
    Ok(devices)
}

/// Each device's plan against the reader's user database.
fn plans_for(
    reader: &mut dyn ImageReader,
    serials: &[Serial],
    password: &Password,
    settings: &Settings,
) -> Result<Vec<Plan>, ProvisionError> {
    let facts: Vec<ImagePath> = ["/etc/passwd", "/etc/group", "/etc"]
        .iter()
        .map(|p| ImagePath::parse(p).expect("constant"))
        .collect();
    // passwd and group through symlinks on the way (`/etc -> usr/etc`).
    let facts = resolve::with_reader_links(reader, |links| {
        let mut link = |p: &ImagePath| Ok::<_, ProvisionError>(links(p));
        let mut paths = Vec::new();
        for p in &facts {
            paths.push(resolve::resolve(p, &mut link)?.map_or_else(|_| p.clone(), |r| r.path));
        }
        Ok::<_, ProvisionError>(paths)
    })?;
    let found = reader.lookup_many(&facts, MAX_DB)?;
    let mut content = |i: usize| -> Result<Option<Vec<u8>>, ProvisionError> {
        match &found[i] {
            Some((meta, _)) if meta.kind == crate::plan::EntryType::Symlink => {
                read_through_links(reader, &facts[i])
            }
            Some((_, c)) => Ok(c.clone()),
            None => Ok(None),
        }
    };
    let (passwd, group) = (content(0)?, content(1)?);
    let db = UserDb::parse(passwd.as_deref(), group.as_deref());
    let mtime = settings
        .mtime
        .unwrap_or_else(|| found[2].as_ref().map_or(0, |(m, _)| m.mtime));
    serials
        .iter()
        .map(|serial| {
            let email = serial.email();
            let vars = DeviceVars {
                serial: serial.as_str(),
                email: &email,
                password,
            };
            let extra = settings.vars_of(serial);
            Plan::resolve_for(
                &settings.overlay,
                &vars,
                &extra,
                &db,
                &settings.owner,
                mtime,
            )
            .map_err(ProvisionError::from)
        })
        .collect()
}

/// A small file behind symlinks, resolved inside the image as a chroot
/// would (`/etc/passwd -> ../usr/lib/passwd`); `None` if it leads nowhere
/// or to something too big for a user database.
fn read_through_links(
    reader: &mut dyn ImageReader,
    path: &ImagePath,
) -> Result<Option<Vec<u8>>, ProvisionError> {
    /// Keeps at most `MAX_DB` bytes; past that, fails the copy.
    struct Capped(Vec<u8>);
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() as u64 + buf.len() as u64 > MAX_DB {
                return Err(std::io::Error::other("too big"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut path = path.clone();
    // As the kernel's limit on links followed in one lookup.
    for _ in 0..40 {
        let mut out = Capped(Vec::new());
        let meta = match reader.cat(&path, &mut out) {
            Ok(Some(meta)) => meta,
            Ok(None) | Err(crate::image::ImageError::Output(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match (meta.kind, meta.target) {
            (crate::plan::EntryType::Regular, _) => return Ok(Some(out.0)),
            (crate::plan::EntryType::Symlink, Some(target)) => match path.follow(&target) {
                Some(next) => path = next,
                None => return Ok(None),
            },
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// What the image holds at every path the plans touch and their parents,
/// found in one lookup (one pass over a tar archive).
fn existing_paths(
    reader: &mut dyn ImageReader,
    plans: &[Plan],
) -> Result<BTreeMap<ImagePath, Option<Existing>>, ProvisionError> {
    let mut paths: Vec<ImagePath> = Vec::new();
    for plan in plans {
        for entry in &plan.entries {
            let mut p = Some(entry.path.clone());
            while let Some(path) = p {
                p = path.parent();
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
    }
    let found = reader.lookup_many(&paths, 0)?;
    Ok(paths
        .into_iter()
        .zip(found)
        .map(|(path, f)| {
            let existing = f.map(|(meta, _)| {
                // Formats that do not count links say 0: one name.
                Existing::new(meta.kind, meta.links.max(1), "in the image")
            });
            (path, existing)
        })
        .collect())
}

/// A directory to remove without `recursive` must be empty, as the
/// writers require.
fn check_removals(
    reader: &mut dyn ImageReader,
    plan: &Plan,
    existing: &BTreeMap<ImagePath, Option<Existing>>,
) -> Result<(), ProvisionError> {
    for entry in &plan.entries {
        let PlanKind::Absent { recursive: false } = entry.kind else {
            continue;
        };
        let is_dir = existing
            .get(&entry.path)
            .cloned()
            .flatten()
            .is_some_and(|e| e.kind == crate::plan::EntryType::Dir);
        if is_dir
            && !reader
                .list(Some(&entry.path), false)?
                .unwrap_or_default()
                .is_empty()
        {
            return Err(OverlayError::NotEmpty {
                path: entry.path.to_string(),
            }
            .into());
        }
    }
    Ok(())
}

fn describe((entry, action): (&crate::plan::PlanEntry, Action)) -> PlannedEntry {
    let removal = matches!(entry.kind, PlanKind::Absent { .. });
    PlannedEntry {
        path: entry.path.to_string(),
        kind: entry.kind.name(),
        action,
        mode: (!removal).then_some(entry.mode),
        owner: (!removal).then(|| entry.owner.clone()),
        size: entry.content().map(|c| c.len() as u64),
        target: match &entry.kind {
            PlanKind::Symlink(t) => Some(t.clone()),
            _ => None,
        },
        xattrs: entry
            .xattrs
            .iter()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect(),
    }
}
