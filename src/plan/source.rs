//! Host files an overlay copies into images (`source = "certs/{serial}.pem"`):
//! checked for every device before any work, read per device when its plan
//! is resolved. Their bytes may be secret (a private key), so they are held
//! in memory that is wiped on drop, like the password.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use super::OverlayError;

/// The largest host file an overlay copies: configuration, certificates
/// and keys are kilobytes; a bigger file belongs in the base image.
pub const MAX_SOURCE: u64 = 16 << 20;

fn error(serial: &str, path: &Path, why: String) -> OverlayError {
    OverlayError::Source {
        serial: serial.to_string(),
        path: path.display().to_string(),
        why,
    }
}

/// Opens `path` as a regular file of at most [`MAX_SOURCE`] bytes
/// (non-blocking, so a fifo there cannot hang the run).
fn open(path: &Path, serial: &str) -> Result<(File, u64), OverlayError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| error(serial, path, e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| error(serial, path, e.to_string()))?;
    if !meta.is_file() {
        return Err(error(serial, path, "it is not a regular file".into()));
    }
    if meta.len() > MAX_SOURCE {
        return Err(error(
            serial,
            path,
            format!(
                "it has {} bytes; an overlay source may have at most {MAX_SOURCE} (16 MiB)",
                meta.len()
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// Whether the device's source file is there and usable.
pub(super) fn check(path: &Path, serial: &str) -> Result<(), OverlayError> {
    open(path, serial).map(|_| ())
}

/// The bytes of the device's source file.
pub(super) fn read(path: &Path, serial: &str) -> Result<Zeroizing<Vec<u8>>, OverlayError> {
    let (file, len) = open(path, serial)?;
    let mut data = Zeroizing::new(Vec::with_capacity(len as usize));
    // One byte past the limit tells a file that grew since it was checked.
    file.take(MAX_SOURCE + 1)
        .read_to_end(&mut data)
        .map_err(|e| error(serial, path, e.to_string()))?;
    if data.len() as u64 > MAX_SOURCE {
        return Err(error(
            serial,
            path,
            "it grew past 16 MiB while being read".into(),
        ));
    }
    Ok(data)
}
