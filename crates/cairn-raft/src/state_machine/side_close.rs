//! Closes that arrive beside the log: a replica's resolved revision moved
//! with no Raft entry.
//!
//! A close in the log (`Command::Close { ts }`) says: every entry after
//! this one writes above `ts`. A *side close* `(ts, index, epoch)` says the
//! same of the entries after log index `index`, and reaches the replica
//! over the members' side transport instead (`cairn-store`'s
//! `node::side_closes` proves it with a quorum of unchanged votes before
//! sending it). It is a fact about the region's log, true whenever and
//! wherever it is learned, so a replica may use it once it has applied
//! `index`: everything at or below `ts` it will ever hold, it holds.
//!
//! It stays out of the replicated record ([`super::Applied`]): replicas
//! learn it at different moments, and every decision the state machine
//! makes (a compaction beside a lock, a write's revision) must be the same
//! on every replica. It raises only what this replica *reports* — its
//! resolved revision (to its feed, watches and serializable reads across
//! regions) and the current revision its reads answer at (`RegionShared`'s
//! `revisions` and `read_view_locked`) — as [`SideClosed::floor`], and is
//! lost on restart (the next one comes within a second while someone
//! waits). It stops counting if the region becomes the only one again (a
//! merge back to one region), where every replica must answer alike.
//!
//! When a replica takes a close up ([`SideClosed::fold`]):
//! - It has applied `index`, and the region's epoch is still the one the
//!   leader sent: a split or a merge since then, and it waits for the next.
//! - No transaction across regions holds a lock here. A lock placed at or
//!   below `index` may still commit at or below `ts` (its commit timestamp
//!   was fetched before the close's), so the close must wait for it. A
//!   lock placed after `index` commits above `ts` (its prewrite was
//!   answered after the close's timestamp was read, and the commit
//!   timestamp was fetched after that), so once taken, the floor stays
//!   under later locks; with none at the fold there is nothing to tell
//!   the two apart, so a close meeting a lock is dropped.
//! - The region is not frozen for a merge (its revision stays as frozen).

use super::Applied;

/// A close the region's leader proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SideClose {
    /// Nothing after `index` writes at or below it.
    pub ts: i64,
    /// The leader's last log index once it settled at `ts`.
    pub index: u64,
    /// The region's epoch as the leader had applied it.
    pub epoch: u64,
}

/// A replica's side closes: what it took up, and the newest waiting.
#[derive(Debug, Default)]
pub(super) struct SideClosed {
    /// The highest close taken up: this replica's history is final up to
    /// it (with `Applied::resolved`, whichever is higher).
    pub(super) floor: i64,
    /// The newest close not yet applied far enough.
    pending: Option<SideClose>,
}

impl SideClosed {
    /// Keeps `close` (if newer than the one waiting) and takes up what it
    /// can against `applied`. True when the floor rose.
    pub(super) fn offer(&mut self, close: SideClose, applied: &Applied) -> bool {
        self.keep(close);
        self.fold(applied)
    }

    /// Takes up the waiting close if `applied` allows it (see the module
    /// essay); drops it if it never will. True when the floor rose.
    pub(super) fn fold(&mut self, applied: &Applied) -> bool {
        let Some(p) = self.pending else {
            return false;
        };
        let index = applied.last_applied.map_or(0, |l| l.index);
        if index < p.index {
            return false;
        }
        self.pending = None;
        let usable = applied.range.epoch == p.epoch
            && applied.locks.is_empty()
            && applied.merge.frozen.is_none();
        if usable && p.ts > self.floor {
            self.floor = p.ts;
            return true;
        }
        false
    }

    /// Keeps `close` to take up at the next entry applied (the caller
    /// cannot publish now).
    pub(super) fn keep(&mut self, close: SideClose) {
        if close.ts > self.floor && self.pending.is_none_or(|p| close.ts > p.ts) {
            self.pending = Some(close);
        }
    }

    /// The floor, while it counts: not once the region is the only one
    /// (merged back whole). A lone region is never closed, and its
    /// replicas' revisions — a linearizable read's, a compaction's — must
    /// agree as they do with one region.
    pub(super) fn floor(&self, applied: &Applied) -> i64 {
        if applied.range.is_whole() {
            0
        } else {
            self.floor
        }
    }

    /// What this replica reports as resolved, with the record `applied`.
    pub(super) fn resolved(&self, applied: &Applied) -> i64 {
        applied.resolved().max(self.floor(applied))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};

    /// A record of a region from "m" on (one of several) at `index`.
    fn applied_at(index: u64, revision: i64) -> Applied {
        Applied {
            last_applied: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            current_revision: revision,
            range: crate::RegionRange {
                start: b"m".to_vec(),
                end: Vec::new(),
                epoch: 1,
            },
            ..Applied::default()
        }
    }

    fn close(ts: i64, index: u64) -> SideClose {
        SideClose {
            ts,
            index,
            epoch: 1,
        }
    }

    #[test]
    fn a_close_waits_until_its_index_is_applied() {
        let mut s = SideClosed::default();
        assert!(!s.offer(close(50, 10), &applied_at(9, 7)));
        assert_eq!(s.resolved(&applied_at(9, 7)), 7);
        assert!(s.fold(&applied_at(10, 7)));
        assert_eq!(s.resolved(&applied_at(10, 7)), 50);
        // Writes above it move the revision on past it.
        assert_eq!(s.resolved(&applied_at(11, 60)), 60);
    }

    #[test]
    fn an_older_close_never_lowers_the_floor_and_a_newer_replaces_a_waiting_one() {
        let mut s = SideClosed::default();
        assert!(s.offer(close(50, 10), &applied_at(10, 7)));
        assert!(!s.offer(close(40, 10), &applied_at(10, 7)));
        assert_eq!(s.resolved(&applied_at(10, 7)), 50);
        assert!(!s.offer(close(60, 12), &applied_at(10, 7)));
        assert!(!s.offer(close(55, 11), &applied_at(10, 7)));
        assert!(s.fold(&applied_at(12, 7)));
        assert_eq!(s.floor, 60);
    }

    #[test]
    fn a_close_of_another_epoch_or_frozen_region_is_dropped() {
        let mut s = SideClosed::default();
        let mut split = applied_at(10, 7);
        split.range.epoch = 2;
        assert!(!s.offer(close(50, 10), &split));
        assert!(!s.fold(&applied_at(10, 7)), "dropped, not kept");
        let mut frozen = applied_at(10, 7);
        frozen.merge.frozen = Some(super::super::merge::Freeze {
            target: 1,
            target_epoch: 0,
            range: Default::default(),
            current_revision: 7,
            compacted_revision: 0,
            auth_fence: 0,
            absorbed: Default::default(),
            outcomes: Default::default(),
        });
        assert!(!s.offer(close(50, 10), &frozen));
        assert_eq!(s.floor, 0);
    }

    #[test]
    fn a_floor_stops_counting_once_the_region_is_whole_again() {
        let mut s = SideClosed::default();
        assert!(s.offer(close(50, 10), &applied_at(10, 7)));
        let mut whole = applied_at(11, 7);
        whole.range = crate::RegionRange::default();
        assert_eq!(s.resolved(&whole), 7);
    }

    #[test]
    fn a_lock_stops_a_close_but_not_a_floor_taken_before_it() {
        let mut locked = applied_at(10, 7);
        locked.locks.held.insert(
            5,
            cairn_mvcc::locks::Lock {
                primary: 1,
                regions: vec![1],
                spans: Vec::new(),
                floor: 7,
                txn: Default::default(),
                leases: Default::default(),
            },
        );
        let mut s = SideClosed::default();
        assert!(!s.offer(close(50, 10), &locked));
        assert_eq!(s.resolved(&locked), 7);
        // Taken before the lock: the lock (placed after the close's index)
        // commits above 50, and the floor holds beside it.
        let mut s = SideClosed::default();
        assert!(s.offer(close(50, 10), &applied_at(10, 7)));
        let mut later = locked.clone();
        later.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), 11));
        assert_eq!(s.resolved(&later), 50);
    }
}
