//! Progress on a terminal: bytes done of total, rate and ETA, for steps
//! that take longer than about a second.
//!
//! Backends report bytes with [`advance`] from their I/O loops; the CLI
//! decides once whether anything is drawn ([`enable`]: stderr is a terminal
//! and neither --quiet nor --json) and after how long. Nothing is drawn for
//! a step until it has run for that delay ([`DELAY`] unless told), so quick
//! runs stay silent. The bar shows sizes and a label, never file contents.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a step runs before its bar appears, unless [`enable`] is told
/// otherwise.
pub const DELAY: Duration = Duration::from_secs(1);

static ENABLED: AtomicBool = AtomicBool::new(false);
static SHOW_AFTER: Mutex<Duration> = Mutex::new(DELAY);
static CURRENT: Mutex<Option<Step>> = Mutex::new(None);

struct Step {
    bar: ProgressBar,
    started: Instant,
    shown: bool,
    delay: Duration,
}

/// Turns drawing on or off for the whole process; a step's bar appears
/// once the step has run for `delay` (tests shorten it to see a bar on
/// small inputs).
pub fn enable(on: bool, delay: Duration) {
    *crate::sync::lock(&SHOW_AFTER) = delay;
    ENABLED.store(on, Ordering::Relaxed);
}

/// Starts a step of `total` bytes (0 if unknown); it ends when the next
/// step starts or [`finish`] is called.
pub fn start(label: &str, total: u64) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("constant template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    let mut current = crate::sync::lock(&CURRENT);
    if let Some(old) = current.take() {
        old.bar.finish_and_clear();
    }
    *current = Some(Step {
        bar,
        started: Instant::now(),
        shown: false,
        delay: *crate::sync::lock(&SHOW_AFTER),
    });
}

/// Records `bytes` more of the current step.
pub fn advance(bytes: u64) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut current = crate::sync::lock(&CURRENT);
    if let Some(step) = current.as_mut() {
        step.bar.inc(bytes);
        if !step.shown && step.started.elapsed() >= step.delay {
            step.shown = true;
            step.bar.set_draw_target(ProgressDrawTarget::stderr());
            step.bar.tick();
        }
    }
}

/// Ends the current step and clears its bar.
pub fn finish() {
    if let Some(step) = crate::sync::lock(&CURRENT).take() {
        step.bar.finish_and_clear();
    }
}

/// A reader that reports what passes through it.
pub struct Reader<R>(pub R);

impl<R: std::io::Read> std::io::Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        advance(n as u64);
        Ok(n)
    }
}
