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
            imprint::redact::scrub(&payload)
        );
    }));
}
