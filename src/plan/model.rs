//! The words every layer shares about what is inside an image: a path, what
//! kind of thing it is, its metadata. A leaf module: it depends on nothing
//! else in the crate but `name` (names are bytes), so the plan and the
//! image backends can both use it without depending on each other.

use std::fmt;

/// What kind of thing a path in the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntryType {
    #[default]
    Regular,
    Dir,
    Symlink,
    /// Hard link (tar only), device node, fifo, socket.
    Other,
}

/// Metadata of one path inside an image, as `verify` and `ls` report it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileMeta {
    pub kind: EntryType,
    /// Permission bits only, e.g. 0o600.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    /// How many names the file has: an inode's link count, or for a tar
    /// entry 1 + the hard-link entries that name it. 0 when unknown.
    pub links: u32,
    /// A symlink's target, as stored.
    pub target: Option<String>,
    /// Names of the extended attributes the file carries (an ACL shows as
    /// `system.posix_acl_access` / `system.posix_acl_default`), sorted.
    pub xattrs: Vec<String>,
    /// The owner names an archive entry carries (`uname`, `gname`, after
    /// any pax records), which GNU tar running as root maps through the
    /// extracting host's user database. `None` where the format has none.
    pub names: Option<(String, String)>,
    /// What an [`EntryType::Other`] is, where the format says.
    pub special: Option<Special>,
}

/// The kinds of [`EntryType::Other`] a filesystem or archive names, as
/// `ls -l` shows them (`p`, `s`, `c`, `b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Special {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Special {
    /// The type letter of `ls -l`.
    pub fn letter(self) -> char {
        match self {
            Special::Fifo => 'p',
            Special::Socket => 's',
            Special::CharDevice => 'c',
            Special::BlockDevice => 'b',
        }
    }

    /// The word `imprint ls --json` uses.
    pub fn word(self) -> &'static str {
        match self {
            Special::Fifo => "fifo",
            Special::Socket => "socket",
            Special::CharDevice => "chardev",
            Special::BlockDevice => "blockdev",
        }
    }
}

/// What a path in the image is, as far as [`crate::plan::Plan::check_existing`] cares,
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
    /// An absolute path; `//` and `.` parts are dropped (as the kernel
    /// does), `..` is refused (it could climb out of the image).
    pub fn parse(text: &str) -> Option<ImagePath> {
        let rel = text.strip_prefix('/')?;
        let parts: Vec<String> = rel
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_string)
            .collect();
        let ok = !parts.is_empty()
            && parts
                .iter()
                .all(|p| p != ".." && !p.contains('\0') && byte_len(p) <= 255);
        ok.then_some(ImagePath(parts))
    }

    /// An absolute path given as bytes (a command-line argument, a name
    /// in a legacy charset), as [`ImagePath::parse`] takes text.
    pub fn from_bytes(bytes: &[u8]) -> Option<ImagePath> {
        ImagePath::parse(&super::name::from_bytes(bytes))
    }

    /// The path's components; a byte that is not UTF-8 is carried as
    /// described at [`crate::image::Listed::path`].
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

    /// Where the symlink at this path points, resolved as a chroot at the
    /// image's root would: an absolute target starts at the root, a
    /// relative one at the link's directory, and `..` never climbs above
    /// the root. `None` when the target is the root itself.
    pub fn follow(&self, target: &str) -> Option<ImagePath> {
        let mut parts: Vec<String> = if target.starts_with('/') {
            Vec::new()
        } else {
            self.0[..self.0.len() - 1].to_vec()
        };
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p.to_string()),
            }
        }
        let ok = !parts.is_empty()
            && parts
                .iter()
                .all(|p| !p.contains('\0') && byte_len(p) <= 255);
        ok.then_some(ImagePath(parts))
    }
}

/// A component's length in the image: its bytes, not its text
/// ([`super::name`] carries a byte that is not UTF-8 as one 4-byte character).
fn byte_len(part: &str) -> usize {
    super::name::to_bytes(part).len()
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.relative())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_never_climb() {
        let p = ImagePath::parse("/etc//azaion/./device.conf").unwrap();
        assert_eq!(p.to_string(), "/etc/azaion/device.conf");
        for bad in ["etc/x", "/", "//", "/etc/../x", "/a\0b"] {
            assert!(ImagePath::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn links_resolve_inside_the_image() {
        let link = ImagePath::parse("/etc/passwd").unwrap();
        for (target, want) in [
            ("../usr/lib/passwd", Some("/usr/lib/passwd")),
            ("/usr/lib/passwd", Some("/usr/lib/passwd")),
            ("../../../../x", Some("/x")),
            ("./passwd.real", Some("/etc/passwd.real")),
            ("/", None),
            ("..", None),
        ] {
            assert_eq!(
                link.follow(target).map(|p| p.to_string()).as_deref(),
                want,
                "{target}"
            );
        }
    }
}
