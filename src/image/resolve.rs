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

use std::fmt;

use crate::plan::ImagePath;

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
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
}
