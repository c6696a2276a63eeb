//! A plan's paths through the image's own symlinks: some root filesystems
//! have `/etc -> usr/etc` (or `/etc/azaion` reached through a link), and
//! the files must land where a process chrooted into the image would
//! find them. Every backend resolves with the one resolver
//! ([`crate::image::resolve`]) and then writes to the resolved paths, so
//! no output relies on an extractor following a link: bsdtar refuses to
//! extract through a symlink, and GNU tar would follow an absolute one
//! (`/etc -> /usr/etc`) out of the extraction directory into the host.

use super::{EntryType, Existing, ImagePath, OverlayError, Plan, PlanKind};
use crate::image::resolve::{self, Resolved, Unresolved};

/// A plan with its paths resolved through the image's symlinks, and the
/// directories the links led to, which must exist: check them with
/// [`Linked::check`] before using the plan.
pub(crate) struct Linked {
    plan: Plan,
    reached: Vec<Reached>,
}

/// A directory an entry reaches through symlinks.
struct Reached {
    /// The entry's path as the overlay names it.
    entry: String,
    /// The links followed, `PATH -> TARGET`.
    via: Vec<String>,
    /// Where the last link led.
    dir: ImagePath,
}

impl Plan {
    /// Resolves every entry's path through the image's symlinks, as a
    /// chroot would: a directory entry wholly (`mkdir -p` follows a link
    /// to a directory), any other entry up to its own name (a symlink at
    /// the name itself is what the entry replaces or removes). `symlink`
    /// says whether a path (whose parents are resolved) is a symlink in
    /// the image, and to what.
    pub(crate) fn follow_links<E: From<OverlayError>>(
        &self,
        mut symlink: impl FnMut(&ImagePath) -> Result<Option<String>, E>,
    ) -> Result<Linked, E> {
        let mut plan = self.clone();
        let mut reached = Vec::new();
        for entry in &mut plan.entries {
            let resolved = match entry.kind {
                PlanKind::Dir => resolve::resolve(&entry.path, &mut symlink)?,
                _ => resolve::resolve_parent(&entry.path, &mut symlink)?,
            };
            let Resolved { path, via } = match resolved {
                Ok(r) => r,
                // A directory entry that leads to the root is the root.
                Err(Unresolved::Root { .. }) if matches!(entry.kind, PlanKind::Dir) => {
                    continue;
                }
                Err(why) => {
                    return Err(OverlayError::Link {
                        path: entry.path.to_string(),
                        why: why.to_string(),
                    }
                    .into())
                }
            };
            if via.is_empty() {
                continue;
            }
            // Nothing to remove behind a link that leads nowhere.
            if !matches!(entry.kind, PlanKind::Absent { .. }) {
                if let Some(dir) = last_target(&entry.path, via.len(), &mut symlink)? {
                    reached.push(Reached {
                        entry: entry.path.to_string(),
                        via,
                        dir,
                    });
                }
            }
            entry.path = path;
        }
        for (i, e) in plan.entries.iter().enumerate() {
            if plan.entries[..i].iter().any(|d| d.path == e.path) {
                return Err(OverlayError::Duplicate(e.path.to_string()).into());
            }
        }
        // Parents before children again: `/etc/azaion` may now be deeper.
        plan.entries.sort_by_key(|e| e.path.components().len());
        Ok(Linked { plan, reached })
    }
}

/// The directory the last link on the way led to: the shortest prefix of
/// `original` that resolves through all `links` of the whole (`/usr/etc`
/// for `/etc/azaion/device.conf` with `/etc -> usr/etc`); `None` for the
/// image's root, which is always a directory.
fn last_target<E>(
    original: &ImagePath,
    links: usize,
    symlink: &mut impl FnMut(&ImagePath) -> Result<Option<String>, E>,
) -> Result<Option<ImagePath>, E> {
    let parts = original.components();
    for depth in 1..=parts.len() {
        let prefix = ImagePath::parse(&format!("/{}", parts[..depth].join("/")))
            .expect("a prefix of a valid path");
        match resolve::resolve(&prefix, &mut *symlink)? {
            Ok(r) if r.via.len() >= links => return Ok(Some(r.path)),
            Err(Unresolved::Root { via, .. }) if via.len() >= links => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

impl Linked {
    /// The resolved plan, not yet checked: which paths it touches.
    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Checks that every link on the way led to a directory the image
    /// holds (a dangling `/etc` is refused, naming the link and where it
    /// leads), and gives the resolved plan.
    pub(crate) fn check<E: From<OverlayError>>(
        self,
        mut existing: impl FnMut(&ImagePath) -> Result<Option<Existing>, E>,
    ) -> Result<Plan, E> {
        for r in &self.reached {
            let found = existing(&r.dir)?;
            let what = match found {
                Some(e) if e.kind == EntryType::Dir => continue,
                Some(e) => format!("which is {}, not a directory", e.what),
                None => "which the image does not hold (a dangling link)".to_string(),
            };
            return Err(OverlayError::Link {
                path: r.entry.clone(),
                why: format!(
                    "{} leads to {}, {what}; create {} in the image, or make the link a directory",
                    r.via.join(", "),
                    r.dir,
                    r.dir
                ),
            }
            .into());
        }
        Ok(self.plan)
    }
}
