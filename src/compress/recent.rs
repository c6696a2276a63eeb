//! The last few boundaries a decoder passed: places where decoding can
//! resume and a rewrite can continue after the input's own bytes.

use std::collections::VecDeque;

/// How many boundaries are kept. The reader that picks where a rewrite
/// starts (the tar scan) reads close behind the decoder, so a few suffice
/// whatever the file size, and memory stays fixed.
const KEPT: usize = 16;

/// The latest [`KEPT`] boundaries, oldest first.
pub(super) struct RecentBoundaries<B> {
    kept: VecDeque<B>,
}

// Not derived: the derive would ask for `B: Default`.
impl<B> Default for RecentBoundaries<B> {
    fn default() -> Self {
        RecentBoundaries {
            kept: VecDeque::with_capacity(KEPT),
        }
    }
}

impl<B: Clone> RecentBoundaries<B> {
    /// Remembers `boundary`, forgetting the oldest if [`KEPT`] are held.
    pub(super) fn push(&mut self, boundary: B) {
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(boundary);
    }

    pub(super) fn last(&self) -> Option<&B> {
        self.kept.back()
    }

    /// The latest boundary that `fits`.
    pub(super) fn latest(&self, fits: impl Fn(&B) -> bool) -> Option<B> {
        self.kept.iter().rev().find(|b| fits(b)).cloned()
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &B> {
        self.kept.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_finds_the_last_that_fits() {
        let mut recent = RecentBoundaries::default();
        assert_eq!(recent.latest(|_: &u64| true), None);
        for out in 0..(KEPT as u64 + 4) {
            recent.push(out * 10);
        }
        assert_eq!(recent.iter().count(), KEPT);
        assert_eq!(recent.iter().next(), Some(&40));
        assert_eq!(recent.last(), Some(&190));
        assert_eq!(recent.latest(|&b| b <= 125), Some(120));
        assert_eq!(recent.latest(|&b| b <= 39), None);
    }
}
