//! Resolving a path inside an image as a process chrooted into it would:
//! symbolic links are followed, relative ones from their directory and
//! absolute ones from the image's root; `..` stops at the root, so no
//! path ever leaves the image; at most [`MAX_SYMLINKS`] links are followed
//! (the kernel's limit), so a loop ends.
//!
//! Format-independent: a backend answers one question, "is this path a
//! symlink, and to what?" (for a tar archive, from the entries the scan
//! saw; for ext4, from the inode), and gets back the path with no symlink
//! left in it, or why there is none.

use std::collections::HashMap;
use std::fmt;

use super::{ImageError, ImageReader};
use crate::plan::{EntryType, ImagePath};

/// The kernel's limit on symlinks followed in one lookup.
pub const MAX_SYMLINKS: usize = 40;

/// A path resolved to one without symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: ImagePath,
    /// The links followed, in order, as `PATH -> TARGET`.
    pub via: Vec<String>,
}

/// Why a path does not resolve to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// More than [`MAX_SYMLINKS`] links: a loop, most likely.
    TooManyLinks { path: String, via: Vec<String> },
    /// The links lead to the image's root directory.
    Root { path: String, via: Vec<String> },
    /// A target no path can be made of (a component over 255 bytes).
    BadTarget { path: String, target: String },
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unresolved::TooManyLinks { path, via } => write!(
                f,
                "{path} goes through more than {MAX_SYMLINKS} symlinks ({} ...), a loop",
                via.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
            ),
            Unresolved::Root { path, via } => {
                write!(f, "{path} leads to the image's root ({})", via.join(", "))
            }
            Unresolved::BadTarget { path, target } => {
                write!(
                    f,
                    "{path} is a symlink to {target:?}, which is not a valid path"
                )
            }
        }
    }
}

/// Resolves `path`. `symlink` says whether a path (whose parents are
/// already resolved) is a symlink and gives its target as stored; errors
/// it returns end the resolution.
pub fn resolve<E>(
    path: &ImagePath,
    mut symlink: impl FnMut(&ImagePath) -> Result<Option<String>, E>,
) -> Result<Result<Resolved, Unresolved>, E> {
    let mut done: Vec<String> = Vec::new();
    let mut todo: Vec<String> = path.components().iter().rev().cloned().collect();
    let mut via = Vec::new();
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "" | "." => continue,
            // At the root, `..` is the root: the image is never left.
            ".." => {
                done.pop();
                continue;
            }
            _ => done.push(part),
        }
        let here = format!("/{}", done.join("/"));
        let Some(current) = ImagePath::parse(&here) else {
            return Ok(Err(Unresolved::BadTarget {
                path: path.to_string(),
                target: here,
            }));
        };
        let Some(target) = symlink(&current)? else {
            continue;
        };
        via.push(format!("{current} -> {target}"));
        if via.len() > MAX_SYMLINKS {
            return Ok(Err(Unresolved::TooManyLinks {
                path: path.to_string(),
                via,
            }));
        }
        done.pop();
        if target.starts_with('/') {
            done.clear();
        }
        todo.extend(target.split('/').rev().map(str::to_string));
    }
    match ImagePath::parse(&format!("/{}", done.join("/"))) {
        Some(resolved) => Ok(Ok(Resolved {
            path: resolved,
            via,
        })),
        None => Ok(Err(Unresolved::Root {
            path: path.to_string(),
            via,
        })),
    }
}

/// Resolves the directory `path` lies in, and joins its name: the place
/// a new entry at `path` goes, as `open(O_CREAT)` or `rename` in a chroot
/// find it. The last component is not followed (a symlink there is the
/// entry itself, replaced or removed as such).
pub fn resolve_parent<E>(
    path: &ImagePath,
    symlink: impl FnMut(&ImagePath) -> Result<Option<String>, E>,
) -> Result<Result<Resolved, Unresolved>, E> {
    let Some(parent) = path.parent() else {
        return Ok(Ok(Resolved {
            path: path.clone(),
            via: Vec::new(),
        }));
    };
    let (dir, via) = match resolve(&parent, symlink)? {
        Ok(r) => (r.path.to_string(), r.via),
        // Links to the root: the entry goes into the root.
        Err(Unresolved::Root { via, .. }) => (String::new(), via),
        Err(other) => return Ok(Err(other)),
    };
    let joined = format!("{dir}/{}", path.file_name());
    Ok(match ImagePath::parse(&joined) {
        Some(path) => Ok(Resolved { path, via }),
        None => Err(Unresolved::BadTarget {
            path: path.to_string(),
            target: joined,
        }),
    })
}

/// Runs `run` with the symlinks of the image `reader` reads, as a lookup
/// "is this path a symlink, and to what?" for [`resolve`]. A reader finds
/// paths in batches (one pass over a tar archive each), so this asks in
/// rounds: `run` goes once with what is known, the paths it asked about
/// and nobody knew are looked up together, and it runs again until it
/// asked nothing new; then its answer stands.
pub(crate) fn with_reader_links<T, E: From<ImageError>>(
    reader: &mut dyn ImageReader,
    mut run: impl FnMut(&mut dyn FnMut(&ImagePath) -> Option<String>) -> Result<T, E>,
) -> Result<T, E> {
    let mut known: HashMap<ImagePath, Option<String>> = HashMap::new();
    loop {
        let mut unknown: Vec<ImagePath> = Vec::new();
        let answer = run(&mut |p: &ImagePath| match known.get(p) {
            Some(target) => target.clone(),
            None => {
                if !unknown.contains(p) {
                    unknown.push(p.clone());
                }
                None
            }
        });
        if unknown.is_empty() {
            return answer;
        }
        // Every round learns at least one path, and a resolution asks
        // about finitely many: this ends.
        let found = reader.lookup_many(&unknown, 0)?;
        for (path, found) in unknown.into_iter().zip(found) {
            let target = found
                .filter(|(meta, _)| meta.kind == EntryType::Symlink)
                .and_then(|(meta, _)| meta.target);
            known.insert(path, target);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn run(links: &[(&str, &str)], path: &str) -> Result<Resolved, Unresolved> {
        let map: HashMap<String, String> = links
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        resolve(&ImagePath::parse(path).unwrap(), |p| {
            Ok::<_, Infallible>(map.get(&p.to_string()).cloned())
        })
        .unwrap()
    }

    fn resolved(links: &[(&str, &str)], path: &str) -> String {
        run(links, path).unwrap().path.to_string()
    }

    #[test]
    fn relative_absolute_and_parent_links_stay_inside() {
        assert_eq!(resolved(&[], "/etc/passwd"), "/etc/passwd");
        let rel = [("/etc/passwd", "../usr/share/base/passwd")];
        assert_eq!(resolved(&rel, "/etc/passwd"), "/usr/share/base/passwd");
        let abs = [("/etc/passwd", "/usr/lib/passwd")];
        assert_eq!(resolved(&abs, "/etc/passwd"), "/usr/lib/passwd");
        // `..` past the root stays at the root, as in a chroot.
        let climb = [("/etc/passwd", "../../../../host/etc/passwd")];
        assert_eq!(resolved(&climb, "/etc/passwd"), "/host/etc/passwd");
        // A link in a parent, then a relative link from its target.
        let parent = [("/etc", "private/etc"), ("/private/etc/passwd", "./p2")];
        assert_eq!(resolved(&parent, "/etc/passwd"), "/private/etc/p2");
        let r = run(&parent, "/etc/passwd").unwrap();
        assert_eq!(
            r.via,
            ["/etc -> private/etc", "/private/etc/passwd -> ./p2"]
        );
    }

    #[test]
    fn loops_and_the_root_do_not_resolve() {
        let looped = [("/etc/passwd", "passwd2"), ("/etc/passwd2", "/etc/passwd")];
        assert!(matches!(
            run(&looped, "/etc/passwd"),
            Err(Unresolved::TooManyLinks { .. })
        ));
        let root = [("/etc/passwd", "/")];
        let err = run(&root, "/etc/passwd").unwrap_err();
        assert!(matches!(err, Unresolved::Root { .. }));
        assert!(err.to_string().contains("/etc/passwd -> /"), "{err}");
    }
    #[test]
    fn a_parent_resolves_and_the_name_stays() {
        let parent = |links: &[(&str, &str)], path: &str| {
            let map: HashMap<String, String> = links
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            resolve_parent(&ImagePath::parse(path).unwrap(), |p| {
                Ok::<_, Infallible>(map.get(&p.to_string()).cloned())
            })
            .unwrap()
            .map(|r| r.path.to_string())
        };
        let etc = [("/etc", "usr/etc"), ("/etc/azaion/device.conf", "x")];
        assert_eq!(
            parent(&etc, "/etc/azaion/device.conf").unwrap(),
            "/usr/etc/azaion/device.conf"
        );
        assert_eq!(parent(&etc, "/etc").unwrap(), "/etc");
        assert_eq!(parent(&[("/etc", "../../..")], "/etc/a").unwrap(), "/a");
        let looped = [("/etc", "/etc")];
        assert!(matches!(
            parent(&looped, "/etc/a"),
            Err(Unresolved::TooManyLinks { .. })
        ));
    }
}
