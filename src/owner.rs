//! File ownership as the *image* sees it: names are looked up in the image's
//! own `/etc/passwd` and `/etc/group`, never in the host's user database,
//! because the build host's uids mean nothing on the device.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnerError {
    #[error("invalid owner {}: expected USER, USER:GROUP or UID:GID", crate::excerpt::quoted(.0))]
    Syntax(String),
    #[error(
        "user {} is not in the image's /etc/passwd{hint}",
        crate::excerpt::quoted(name)
    )]
    UnknownUser { name: String, hint: String },
    #[error(
        "group {} is not in the image's /etc/group{hint}",
        crate::excerpt::quoted(name)
    )]
    UnknownGroup { name: String, hint: String },
}

/// What the caller asked for with `--owner`: `USER`, `USER:GROUP` or
/// `UID:GID`, resolved later in the image's own `/etc/passwd` and
/// `/etc/group`.
///
/// ```
/// use imprint::owner::{IdOrName, OwnerSpec};
///
/// assert_eq!("azaion".parse(), Ok(OwnerSpec::User("azaion".into())));
/// assert_eq!(
///     "1000:video".parse(),
///     Ok(OwnerSpec::UserGroup(IdOrName::Id(1000), IdOrName::Name("video".into())))
/// );
/// assert!("a:b:c".parse::<OwnerSpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerSpec {
    /// A user name; the group is the user's primary group.
    User(String),
    /// A user and a group, each a name or a number.
    UserGroup(IdOrName, IdOrName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

impl IdOrName {
    fn parse(text: &str) -> Option<IdOrName> {
        if text.is_empty() {
            return None;
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse().ok().map(IdOrName::Id);
        }
        // Names as useradd accepts them; this also keeps ':' and '\n' out.
        let ok = text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
        ok.then(|| IdOrName::Name(text.to_string()))
    }
}

impl FromStr for OwnerSpec {
    type Err = OwnerError;

    fn from_str(text: &str) -> Result<OwnerSpec, OwnerError> {
        let syntax = || OwnerError::Syntax(text.to_string());
        match text.split_once(':') {
            None => match IdOrName::parse(text).ok_or_else(syntax)? {
                IdOrName::Name(name) => Ok(OwnerSpec::User(name)),
                IdOrName::Id(_) => Err(syntax()),
            },
            Some((user, group)) => Ok(OwnerSpec::UserGroup(
                IdOrName::parse(user).ok_or_else(syntax)?,
                IdOrName::parse(group).ok_or_else(syntax)?,
            )),
        }
    }
}

impl fmt::Display for OwnerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |p: &IdOrName| match p {
            IdOrName::Id(id) => id.to_string(),
            IdOrName::Name(n) => n.clone(),
        };
        match self {
            OwnerSpec::User(name) => f.write_str(name),
            OwnerSpec::UserGroup(u, g) => write!(f, "{}:{}", part(u), part(g)),
        }
    }
}

/// A resolved owner: numeric ids plus the names tar headers carry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user_name: Option<String>,
    pub group_name: Option<String>,
}

impl Owner {
    pub fn root() -> Owner {
        Owner {
            uid: 0,
            gid: 0,
            user_name: Some("root".into()),
            group_name: Some("root".into()),
        }
    }
}

/// One line of /etc/passwd or /etc/group: name and the numeric fields.
#[derive(Debug, Clone)]
struct DbEntry {
    name: String,
    id: u32,
    /// passwd: primary gid. group: unused.
    gid: u32,
}

/// The image's user and group databases.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserDb {
    users: Vec<DbEntry>,
    groups: Vec<DbEntry>,
    has_passwd: bool,
    has_group: bool,
    /// What the image has at /etc/passwd (or /etc/group) when it is not a
    /// readable file, e.g. "a symlink to /usr/lib/passwd, which the image
    /// does not hold": said in the error instead of a bare "no file".
    passwd_found: Option<String>,
    group_found: Option<String>,
}

fn parse_db(text: &[u8], is_passwd: bool) -> Vec<DbEntry> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let name = *fields.first()?;
            let id = fields.get(2)?.trim().parse().ok()?;
            let gid = if is_passwd {
                fields.get(3)?.trim().parse().ok()?
            } else {
                0
            };
            (!name.is_empty()).then(|| DbEntry {
                name: name.to_string(),
                id,
                gid,
            })
        })
        .collect()
}

impl UserDb {
    /// Builds the database from the image's files; `None` means the file is
    /// absent from the image.
    pub fn parse(passwd: Option<&[u8]>, group: Option<&[u8]>) -> UserDb {
        UserDb {
            users: passwd.map(|t| parse_db(t, true)).unwrap_or_default(),
            groups: group.map(|t| parse_db(t, false)).unwrap_or_default(),
            has_passwd: passwd.is_some(),
            has_group: group.is_some(),
            passwd_found: None,
            group_found: None,
        }
    }

    /// Adds what was found at /etc/passwd and /etc/group where they could
    /// not be read (see [`crate::image::ImageFacts`]).
    pub fn with_found(mut self, passwd: Option<String>, group: Option<String>) -> UserDb {
        self.passwd_found = passwd;
        self.group_found = group;
        self
    }

    fn user_by_name(&self, name: &str) -> Option<&DbEntry> {
        self.users.iter().find(|e| e.name == name)
    }

    fn group_by_name(&self, name: &str) -> Option<&DbEntry> {
        self.groups.iter().find(|e| e.name == name)
    }

    /// The image's name for `uid`, if it has one.
    pub fn user_name_of(&self, uid: u32) -> Option<&str> {
        self.users
            .iter()
            .find(|e| e.id == uid)
            .map(|e| e.name.as_str())
    }

    /// The image's name for `gid`, if it has one.
    pub fn group_name_of(&self, gid: u32) -> Option<&str> {
        self.groups
            .iter()
            .find(|e| e.id == gid)
            .map(|e| e.name.as_str())
    }

    fn unknown_user(&self, name: &str) -> OwnerError {
        OwnerError::UnknownUser {
            name: name.to_string(),
            hint: match (&self.passwd_found, self.has_passwd) {
                (_, true) => "; add the user to the image or pass --owner UID:GID".into(),
                (Some(found), false) => format!(" ({found}); pass --owner UID:GID"),
                (None, false) => " (the image has no /etc/passwd); pass --owner UID:GID".into(),
            },
        }
    }

    fn unknown_group(&self, name: &str) -> OwnerError {
        OwnerError::UnknownGroup {
            name: name.to_string(),
            hint: match (&self.group_found, self.has_group) {
                (_, true) => "; add the group to the image or pass --owner UID:GID".into(),
                (Some(found), false) => format!(" ({found}); pass --owner UID:GID"),
                (None, false) => " (the image has no /etc/group); pass --owner UID:GID".into(),
            },
        }
    }

    /// Resolves `spec` against this image. `root` (uid 0) resolves even in an
    /// image without /etc/passwd, since every Linux system has it.
    pub fn resolve(&self, spec: &OwnerSpec) -> Result<Owner, OwnerError> {
        let (uid, primary_gid) = match spec {
            OwnerSpec::User(name) | OwnerSpec::UserGroup(IdOrName::Name(name), _) => {
                match self.user_by_name(name) {
                    Some(e) => (e.id, Some(e.gid)),
                    None if name == "root" && !self.has_passwd => (0, Some(0)),
                    None => return Err(self.unknown_user(name)),
                }
            }
            OwnerSpec::UserGroup(IdOrName::Id(uid), _) => (*uid, None),
        };
        let gid = match spec {
            OwnerSpec::User(_) => primary_gid.unwrap_or(0),
            OwnerSpec::UserGroup(_, IdOrName::Id(gid)) => *gid,
            OwnerSpec::UserGroup(_, IdOrName::Name(name)) => match self.group_by_name(name) {
                Some(e) => e.id,
                None if name == "root" && !self.has_group => 0,
                None => return Err(self.unknown_group(name)),
            },
        };
        let fallback =
            |id: u32, name: Option<String>| name.or_else(|| (id == 0).then(|| "root".into()));
        Ok(Owner {
            uid,
            gid,
            user_name: fallback(uid, self.user_name_of(uid).map(str::to_string)),
            group_name: fallback(gid, self.group_name_of(gid).map(str::to_string)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &[u8] =
        b"root:x:0:0:root:/root:/bin/bash\nazaion:x:1001:1002::/home/azaion:/bin/sh\n";
    const GROUP: &[u8] = b"root:x:0:\nvideo:x:44:azaion\nazaion:x:1002:\n";

    fn db() -> UserDb {
        UserDb::parse(Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn by_name_uses_primary_group() {
        let o = db().resolve(&"azaion".parse().unwrap()).unwrap();
        assert_eq!((o.uid, o.gid), (1001, 1002));
        assert_eq!(o.user_name.as_deref(), Some("azaion"));
        assert_eq!(o.group_name.as_deref(), Some("azaion"));
    }

    #[test]
    fn by_name_and_group() {
        let o = db().resolve(&"azaion:video".parse().unwrap()).unwrap();
        assert_eq!((o.uid, o.gid), (1001, 44));
    }

    #[test]
    fn by_number() {
        let o = db().resolve(&"4000000000:7".parse().unwrap()).unwrap();
        assert_eq!((o.uid, o.gid), (4_000_000_000, 7));
        assert_eq!(o.user_name, None);
    }

    #[test]
    fn unknown_names() {
        assert!(matches!(
            db().resolve(&"nobody".parse().unwrap()),
            Err(OwnerError::UnknownUser { .. })
        ));
        assert!(matches!(
            db().resolve(&"root:wheel".parse().unwrap()),
            Err(OwnerError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn syntax() {
        for s in ["", "a:b:c", "1000", ":", "a:", "us er", "a\nb"] {
            assert!(s.parse::<OwnerSpec>().is_err(), "{s:?}");
        }
    }
}
