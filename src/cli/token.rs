//! The API bearer token. It comes from a file or the environment, never
//! from a flag value, so it does not show in `ps` or shell history.

use std::path::Path;

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// The environment variable read when no token file is given.
const TOKEN_VAR: &str = "IMPRINT_API_TOKEN";

/// The token from `file`, else from `IMPRINT_API_TOKEN`; `None` when
/// neither is given. The token is registered for scrubbing panic messages.
pub(crate) fn read(file: Option<&Path>) -> Result<Option<Zeroizing<String>>> {
    let raw = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API token file {}", path.display()))?,
        ),
        None => match std::env::var(TOKEN_VAR) {
            Ok(t) => Zeroizing::new(t),
            Err(_) => return Ok(None),
        },
    };
    let token = raw.trim();
    if token.is_empty() {
        bail!("the API token is empty; put the token in the file or {TOKEN_VAR}");
    }
    crate::redact::register(token);
    Ok(Some(Zeroizing::new(token.to_string())))
}
