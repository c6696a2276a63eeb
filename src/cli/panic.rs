//! A panic is a bug: say so in one line, without the default hook's
//! payload as is. The message goes through the secret scrubber first, so
//! even a careless `expect(&format!(..))` cannot print a password or token.

/// Replaces the default panic hook for the whole process.
pub(crate) fn install_report() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "imprint: internal error{at}: {}. This is a bug in imprint; please report it (see SECURITY.md). The input image is never modified.",
            crate::redact::scrub(&payload)
        );
    }));
}

/// Tests prove a panic cannot print secrets: with `IMPRINT_TEST_PANIC` set,
/// this panics with the password and the token themselves in the message,
/// the worst case. Only in builds with the `test-hooks` feature, which the
/// integration tests turn on (Cargo.toml); never in an installed binary.
#[cfg(feature = "test-hooks")]
#[track_caller]
pub(crate) fn panic_if_asked(request: &crate::pipeline::Request) {
    if std::env::var_os("IMPRINT_TEST_PANIC").is_some() {
        let token = request.api.as_ref().and_then(|a| a.token.as_deref());
        panic!(
            "test panic holding {} and {}",
            request
                .password
                .as_ref()
                .map_or("no password", |p| p.expose()),
            token.map_or("no token", |t| t.as_str())
        );
    }
}
