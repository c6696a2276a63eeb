//! `imprint verify --no-credentials`: the clean-base check. A base image
//! is what every device is stamped from, and what an OTA payload or the
//! next CI run is built from; a device's credentials in it go to every
//! device made from it. The check looks for every file an overlay fills
//! with the password and names each one present. It reads metadata only,
//! never a file's content.

use std::path::{Path, PathBuf};

use crate::image::disk::PartitionId;
use crate::image::{self, EntryType, FileMeta, ImageError, ImageOptions, ImageReader};
use crate::plan::{OverlaySpec, PathTemplate};

/// A file that should not be in a base, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FoundSecret {
    /// Where it is, e.g. `/etc/azaion/device.conf`.
    pub path: String,
    /// The overlay path it matched (templated ones as written).
    pub template: String,
    pub meta: FileMeta,
    /// The partition of a disk image it is in (`None` for other inputs).
    pub partition: Option<PartitionId>,
}

/// What the clean-base check looked for and found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CleanReport {
    pub image: PathBuf,
    /// Every path looked for, as the overlays write them.
    pub targets: Vec<String>,
    pub found: Vec<FoundSecret>,
}

impl CleanReport {
    /// Clean: something was looked for and nothing was found.
    pub fn passed(&self) -> bool {
        !self.targets.is_empty() && self.found.is_empty()
    }

    /// One report line per target: `pass absent PATH`, or a `FAIL` line
    /// for each file found.
    pub fn checks(&self) -> Vec<super::Check> {
        let mut checks = Vec::new();
        for target in &self.targets {
            let found: Vec<&FoundSecret> = self
                .found
                .iter()
                .filter(|f| &f.template == target)
                .collect();
            if found.is_empty() {
                checks.push(super::Check {
                    name: "absent".into(),
                    passed: true,
                    detail: format!("{target} is not in the image"),
                    partition: None,
                });
            }
            for f in found {
                checks.push(super::Check {
                    name: "absent".into(),
                    passed: false,
                    detail: format!("{} is present: {}", f.path, describe(&f.meta)),
                    partition: f.partition.clone(),
                });
            }
        }
        checks
    }
}

/// `file 0600 0:0, 106 bytes`, `symlink to ...`: what was found, never
/// what it holds.
fn describe(meta: &FileMeta) -> String {
    let ids = format!("{}:{}", meta.uid, meta.gid);
    match meta.kind {
        EntryType::Regular => format!("file {:04o} {ids}, {} bytes", meta.mode, meta.size),
        EntryType::Dir => format!("directory {:04o} {ids}", meta.mode),
        EntryType::Symlink => format!(
            "symlink to {}",
            meta.target.as_deref().unwrap_or("(unknown)")
        ),
        EntryType::Other => format!("special file or hard link {ids}"),
    }
}

/// Looks in `path` (any input `verify` reads) for every file `spec`
/// fills with the password. Anything at such a path counts (a symlink or
/// a directory there would be replaced by the credentials just the same).
///
/// ```
/// use imprint::verify::check_clean;
/// use imprint::{ImageOptions, OverlaySpec};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let root = dir.path();
/// # std::fs::create_dir_all(root.join("etc/azaion"))?;
/// // `root` is a staging tree (an image file is checked the same way).
/// let spec = OverlaySpec::default_spec();
/// assert!(check_clean(root, &spec, &ImageOptions::default())?.passed());
/// std::fs::write(root.join("etc/azaion/device.conf"), "left behind")?;
/// let report = check_clean(root, &spec, &ImageOptions::default())?;
/// assert_eq!(report.found[0].path, "/etc/azaion/device.conf");
/// # Ok(())
/// # }
/// ```
pub fn check_clean(
    path: &Path,
    spec: &OverlaySpec,
    options: &ImageOptions,
) -> Result<CleanReport, ImageError> {
    let targets = spec.secret_paths();
    // Every partition chosen of a disk image (all-rootfs: every slot).
    let mut found = Vec::new();
    for (partition, mut reader) in image::open_readers(path, options)? {
        let mut here = literal_targets(reader.as_mut(), &targets)?;
        for target in targets.iter().filter(|t| t.literal().is_none()) {
            here.extend(templated_target(reader.as_mut(), target)?);
        }
        for f in &mut here {
            f.partition = partition.as_ref().map(|p| p.id());
        }
        found.extend(here);
    }
    Ok(CleanReport {
        image: path.to_path_buf(),
        targets: targets.iter().map(|t| t.as_str().to_string()).collect(),
        found,
    })
}

/// The targets without variables, in one lookup (one pass over a tar).
fn literal_targets(
    reader: &mut dyn ImageReader,
    targets: &[PathTemplate],
) -> Result<Vec<FoundSecret>, ImageError> {
    let literal: Vec<(&PathTemplate, crate::plan::ImagePath)> = targets
        .iter()
        .filter_map(|t| Some((t, t.literal()?)))
        .collect();
    let paths: Vec<_> = literal.iter().map(|(_, p)| p.clone()).collect();
    // No content is read: a limit of 0 bytes leaves every file's unread.
    let hits = reader.lookup_many(&paths, 0)?;
    Ok(literal
        .iter()
        .zip(hits)
        .filter_map(|((template, path), hit)| {
            hit.map(|(meta, _)| FoundSecret {
                path: path.to_string(),
                template: template.as_str().to_string(),
                meta,
                partition: None,
            })
        })
        .collect())
}

/// A target with variables: every name below its fixed directory that
/// it can take.
fn templated_target(
    reader: &mut dyn ImageReader,
    target: &PathTemplate,
) -> Result<Vec<FoundSecret>, ImageError> {
    let listed = reader.list(target.search_root().as_ref(), true)?;
    Ok(listed
        .unwrap_or_default()
        .into_iter()
        .filter(|l| target.matches(&l.path))
        .map(|l| FoundSecret {
            path: format!("/{}", l.path),
            template: target.as_str().to_string(),
            meta: l.meta,
            partition: None,
        })
        .collect())
}
