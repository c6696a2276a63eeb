//! The one way imprint takes a lock.

use std::sync::{Mutex, MutexGuard};

/// A mutex's guard, also after another thread panicked while holding it:
/// every value imprint keeps behind a lock stays consistent between
/// updates (a push, a swap), and a panic is already reported on its own.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
