//! What one node's data region replicas have applied, at most: the newest
//! revision (response headers) and the newest auth fence (the auth check
//! of every request). Each data replica raises both as it publishes a new
//! state, so a request reads two atomics instead of every replica's
//! record: with hundreds of regions, looking at each one on every request
//! cost more than the request itself.
//!
//! A replica that leaves (a merge absorbed its region) leaves its values
//! behind. That changes nothing: the target takes the larger of both when
//! it applies the merge, which is before the host stops the source here.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::Applied;

/// The largest revision and auth fence applied by the data replicas that
/// report here (see the module essay).
#[derive(Debug, Default)]
pub struct DataMarks {
    revision: AtomicI64,
    auth_fence: AtomicU64,
}

impl DataMarks {
    /// The newest revision any data replica here has applied (0 if none).
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// The newest auth fence any data replica here has applied.
    pub fn auth_fence(&self) -> u64 {
        self.auth_fence.load(Ordering::Acquire)
    }

    /// Raises the marks to what `applied` holds.
    pub(super) fn raise(&self, applied: &Applied) {
        self.revision
            .fetch_max(applied.current_revision, Ordering::AcqRel);
        self.auth_fence
            .fetch_max(applied.auth_fence, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_rise() {
        let marks = DataMarks::default();
        let at = |revision, auth_fence| Applied {
            current_revision: revision,
            auth_fence,
            ..Applied::default()
        };
        marks.raise(&at(7, 2));
        marks.raise(&at(5, 3));
        assert_eq!((marks.revision(), marks.auth_fence()), (7, 3));
        marks.raise(&at(9, 1));
        assert_eq!((marks.revision(), marks.auth_fence()), (9, 3));
    }
}
