//! A device's identity: its serial, the email derived from it, its password and
//! the `device.conf` text that carries them.

use std::fmt;
use std::path::Path;

use thiserror::Error;
use zeroize::Zeroizing;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("invalid serial {serial:?}: {why} (expected uppercase letters, digits and hyphens, like AZJN-0042)")]
    BadSerial { serial: String, why: SerialProblem },
    #[error("cannot read the password file {path}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the password in {path} is unusable: {why}")]
    BadPassword { path: String, why: PasswordProblem },
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// Why a serial is refused, as a kind a caller can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SerialProblem {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than 64 characters")]
    TooLong,
    #[error("it has lowercase letters")]
    Lowercase,
    #[error("it has white space")]
    WhiteSpace,
    #[error("it has a character other than A-Z, 0-9 and -")]
    OtherCharacter,
    #[error("it has no hyphen")]
    NoHyphen,
    #[error("nothing follows the last hyphen")]
    NoSuffix,
    #[error("it has an empty segment")]
    EmptySegment,
}

/// Why a password file's password is refused, as a kind a caller can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PasswordProblem {
    #[error("its first line is empty")]
    Empty,
    #[error("it is longer than 256 characters")]
    TooLong,
    #[error("it must be printable ASCII without spaces")]
    NotPrintable,
    /// Refused by [`PasswordPolicy::Runbook`].
    #[error("it is not 32 lowercase hex characters as the runbook's `openssl rand -hex 16` makes; pass --password-policy any to stamp it anyway")]
    Policy,
}

/// A validated device serial such as `AZJN-0042`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial(String);

impl Serial {
    /// Serials end up in file names and email addresses, so only a narrow
    /// alphabet is accepted: `A-Z`, `0-9` and `-`, at least one hyphen, and a
    /// non-empty segment after the last hyphen.
    ///
    /// ```
    /// use imprint::identity::Serial;
    ///
    /// let serial = Serial::parse("AZJN-0042").unwrap();
    /// assert_eq!(serial.email(), "azaion-jetson-0042@azaion.com");
    /// assert!(Serial::parse("azjn-0042").is_err());
    /// assert!(Serial::parse("AZJN-").is_err());
    /// assert!(Serial::parse("AZJN/../0042").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Serial, IdentityError> {
        let bad = |why| IdentityError::BadSerial {
            serial: crate::excerpt::cut(text),
            why,
        };
        if text.is_empty() {
            return Err(bad(SerialProblem::Empty));
        }
        if text.len() > 64 {
            return Err(bad(SerialProblem::TooLong));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(bad(if c.is_ascii_lowercase() {
                SerialProblem::Lowercase
            } else if c.is_whitespace() {
                SerialProblem::WhiteSpace
            } else {
                SerialProblem::OtherCharacter
            }));
        }
        let Some((head, suffix)) = text.rsplit_once('-') else {
            return Err(bad(SerialProblem::NoHyphen));
        };
        if suffix.is_empty() {
            return Err(bad(SerialProblem::NoSuffix));
        }
        if head.is_empty() || head.split('-').any(str::is_empty) {
            return Err(bad(SerialProblem::EmptySegment));
        }
        Ok(Serial(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The runbook's rule: the segment after the last hyphen, lowercased.
    pub fn email(&self) -> String {
        let suffix = self.0.rsplit_once('-').map(|(_, s)| s).unwrap_or(&self.0);
        format!("azaion-jetson-{}@azaion.com", suffix.to_ascii_lowercase())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device password. Its `Debug` never shows the value and its memory is
/// wiped on drop, so it cannot leak through logs, errors or panics.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// 16 bytes from the OS CSPRNG as 32 lowercase hex characters, as
    /// `openssl rand -hex 16` in the runbook.
    pub fn generate() -> Result<Password, IdentityError> {
        let mut bytes = Zeroizing::new([0u8; 16]);
        getrandom::getrandom(bytes.as_mut()).map_err(IdentityError::Random)?;
        Ok(Password::new(Zeroizing::new(hex::encode(bytes.as_ref()))))
    }

    /// Reads a caller-supplied password: the first line of the file, without
    /// its line ending. It must be printable ASCII without spaces so that it
    /// survives the `KEY=value` format of device.conf.
    pub fn from_file(path: &Path, policy: PasswordPolicy) -> Result<Password, IdentityError> {
        let mut text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            IdentityError::PasswordFile {
                path: path.display().to_string(),
                source,
            }
        })?);
        let line_len = text.find(['\n', '\r']).unwrap_or(text.len());
        text.truncate(line_len);
        let bad = |why| IdentityError::BadPassword {
            path: path.display().to_string(),
            why,
        };
        if text.is_empty() {
            return Err(bad(PasswordProblem::Empty));
        }
        if text.len() > 256 {
            return Err(bad(PasswordProblem::TooLong));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(PasswordProblem::NotPrintable));
        }
        if !policy.accepts(&text) {
            return Err(bad(PasswordProblem::Policy));
        }
        Ok(Password::new(text))
    }

    pub fn from_plain(text: &str) -> Password {
        Password::new(Zeroizing::new(text.to_string()))
    }

    /// Every password is registered for scrubbing panic messages.
    fn new(text: Zeroizing<String>) -> Password {
        crate::redact::register(&text);
        Password(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl PartialEq for Password {
    fn eq(&self, other: &Self) -> bool {
        // Not a timing-sensitive comparison: both sides are local.
        self.expose() == other.expose()
    }
}

pub(crate) const EMAIL_KEY: &str = "AZAION_DEVICE_EMAIL";
pub(crate) const PASSWORD_KEY: &str = "AZAION_DEVICE_PASSWORD";

/// The two values found in a device.conf.
#[derive(Debug)]
pub(crate) struct DeviceConf {
    pub email: Option<String>,
    pub password: Option<Password>,
}

/// Parses `KEY=value` lines; unknown keys and blank or `#` lines are ignored.
pub(crate) fn parse_device_conf(bytes: &[u8]) -> DeviceConf {
    let mut conf = DeviceConf {
        email: None,
        password: None,
    };
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            EMAIL_KEY => conf.email = Some(value.to_string()),
            PASSWORD_KEY => conf.password = Some(Password::from_plain(value)),
            _ => {}
        }
    }
    conf
}

/// Which passwords imprint stamps and `verify` accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PasswordPolicy {
    /// 32 lowercase hex characters, as the runbook's `openssl rand -hex 16`
    /// and [`Password::generate`] make.
    #[default]
    Runbook,
    /// Any printable ASCII without spaces, 1 to 256 characters (what
    /// device.conf's `KEY=value` lines can hold).
    Any,
}

impl PasswordPolicy {
    pub fn accepts(self, password: &str) -> bool {
        let printable = !password.is_empty()
            && password.len() <= 256
            && password.bytes().all(|b| b.is_ascii_graphic());
        match self {
            PasswordPolicy::Any => printable,
            PasswordPolicy::Runbook => {
                password.len() == 32
                    && password
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
        }
    }
}

impl std::str::FromStr for PasswordPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "runbook" => Ok(PasswordPolicy::Runbook),
            "any" => Ok(PasswordPolicy::Any),
            _ => Err(format!("unknown password policy {s:?}: use runbook or any")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_to_email() {
        assert_eq!(
            Serial::parse("AZJN-0042").unwrap().email(),
            "azaion-jetson-0042@azaion.com"
        );
        assert_eq!(
            Serial::parse("AZ-JN-00AB").unwrap().email(),
            "azaion-jetson-00ab@azaion.com"
        );
    }

    #[test]
    fn bad_serials() {
        use SerialProblem::*;
        for (s, want) in [
            ("", Empty),
            ("AZJN0042", NoHyphen),
            ("AZJN-", NoSuffix),
            ("azjn-0042", Lowercase),
            ("AZJN 0042", WhiteSpace),
            ("AZ/JN-1", OtherCharacter),
            ("..-1", OtherCharacter),
            ("AZJN-00é", OtherCharacter),
            ("-0042", EmptySegment),
            ("A--1", EmptySegment),
        ] {
            match Serial::parse(s) {
                Err(IdentityError::BadSerial { why, .. }) => assert_eq!(why, want, "{s:?}"),
                other => panic!("{s:?}: {other:?}"),
            }
        }
        let long = "A-".repeat(40);
        assert!(matches!(
            Serial::parse(&long),
            Err(IdentityError::BadSerial { why: TooLong, .. })
        ));
        // The message is the one it always was.
        assert_eq!(
            Serial::parse("azjn-0042").unwrap_err().to_string(),
            "invalid serial \"azjn-0042\": it has lowercase letters (expected uppercase letters, digits and hyphens, like AZJN-0042)"
        );
    }

    #[test]
    fn generated_password_shape() {
        let p = Password::generate().unwrap();
        assert_eq!(p.expose().len(), 32);
        assert!(p
            .expose()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(p, Password::generate().unwrap());
        assert!(!format!("{p:?}").contains(p.expose()));
    }

    #[test]
    fn conf_parses() {
        // As the default overlay writes it (plan::tests::default_plan).
        let text = b"# comment\nAZAION_DEVICE_EMAIL=a@b\nAZAION_DEVICE_PASSWORD=abc\nOTHER=x\n";
        let conf = parse_device_conf(text);
        assert_eq!(conf.email.as_deref(), Some("a@b"));
        assert_eq!(conf.password.unwrap().expose(), "abc");
    }
}
