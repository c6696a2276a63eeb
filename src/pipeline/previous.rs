//! The password an earlier output of a device carries: what a rerun
//! reuses (a `--skip-existing` rebuild, or `--no-rotate`) so that devices
//! already flashed with it keep logging in.

use std::path::Path;

use crate::identity::{self, Password, PasswordPolicy, Serial};
use crate::image::{self, ImageOptions};
use crate::plan::ImagePath;

/// The password in the device.conf of `path` (an image or a staging
/// tree), if that file names `serial`'s account. Whatever its form (any
/// printable password): it is the one the account has, if any has. For a
/// disk image stamped in several partitions, the one they all carry
/// (`None` if any lacks it or they differ).
pub(crate) fn password_of(
    path: &Path,
    serial: &Serial,
    options: &ImageOptions,
) -> Option<Password> {
    let conf = ImagePath::parse(super::DEVICE_CONF)?;
    let mut found: Option<Password> = None;
    for (_, mut reader) in image::open_readers(path, options).ok()? {
        let (_, content) = reader.lookup(&conf, 64 << 10).ok()??;
        // The file holds the password: wiped once parsed.
        let content = zeroize::Zeroizing::new(content?);
        let parsed = identity::parse_device_conf(&content);
        if parsed.email.as_deref() != Some(serial.email().as_str()) {
            return None;
        }
        let password = parsed
            .password
            .filter(|p| PasswordPolicy::Any.accepts(p.expose()))?;
        match &found {
            Some(first) if first.expose() != password.expose() => return None,
            Some(_) => {}
            None => found = Some(password),
        }
    }
    found
}
