//! The seeded generator the randomized tests share (`fastrand`): the same
//! seed gives the same run, so a failing seed reproduces.

use crate::Revisions;

/// A seeded generator with the few draws the tests need.
pub(crate) struct Rng(fastrand::Rng);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(seed))
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0.u64(0..n)
    }

    /// True `percent` times in a hundred.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `xs`.
    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.0.usize(0..xs.len())]
    }

    /// A revision in `1..=revs.current`.
    pub(crate) fn rev(&mut self, revs: Revisions) -> i64 {
        1 + self.below(revs.current as u64 + 1) as i64
    }
}
