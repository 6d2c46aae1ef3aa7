//! A replica's background sweep of the versions its region's compaction
//! dropped.
//!
//! A compaction applies as a record of its revision alone (reads below it
//! are refused from that entry on, on every replica); the versions it drops
//! go here, off the apply path, in steps of a bounded number of versions
//! (`cairn_mvcc::sweep`), each one engine batch of deletions together with
//! where the sweep stands. So applying a compaction costs a region with a
//! million versions what it costs an empty one, and the writes after it
//! wait for no scan. (etcd likewise schedules the deletions after the
//! compaction's apply and runs them in batches.)
//!
//! Where the sweep stands ([`Swept`]) is this replica's own, kept beside
//! its applied record and never replicated: replicas sweep on their own
//! schedules, and `cairn_mvcc::hash_kv` hashes what compaction keeps, so a
//! replica behind in its sweep still hashes like one ahead, and a backup
//! (`cairn_mvcc::snapshot::export`) leaves out what compaction dropped. A
//! sweep is done for the keys the region held when it ran: once the range
//! changes (a split, a merge) it runs again over the region's keys now — a
//! child, with no record of its own, sweeps its keys once. A snapshot
//! installed here replaces the keys wholesale and forgets the record (the
//! sender's keys may hold versions its sweep had not reached); the
//! sweep's lock, held across a step and across the install's write, keeps
//! the two apart. A region frozen for a merge is not swept (a step planned
//! just before the freeze may still write after it: it drops only what
//! the target, compacted at least as far, drops too).
//!
//! Only the sweep deletes beside the apply task, and only versions at or
//! below the compaction revision that no read may ask for. Once a
//! compaction is applied nothing commits at or below it (a compaction
//! above the resolved revision waits for every lock), so the apply task
//! writes only versions above it, and a key's newest version, the only
//! one it reads, is never one a sweep drops. A deletion computed from a
//! view older than another region's snapshot installed meanwhile still
//! names a version the installed history drops too (dropped at `c` means
//! dropped at every compaction above `c`).
//!
//! A snapshot sent from here carries the versions not yet swept. A member
//! of a version before sweeps that installs it hashes them (its HashKV
//! hashes every stored version) until its next compaction: during a
//! rolling upgrade from such a version, keep both corruption checks off
//! (docs/operations.md).

use serde::{Deserialize, Serialize};

use cairn_storage::keys::Key;
use cairn_storage::{Durability, WriteBatch};

use super::{RegionKind, RegionShared};
use crate::codec::{decode, encode};
use crate::types::RegionRange;

/// How many versions a step reads: a few milliseconds of work, so an
/// install waiting for a step waits no longer than that.
pub const STEP_VERSIONS: usize = 4096;

/// Where a replica's sweep stands (see the module essay).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swept {
    /// The compaction revision swept at (0: none yet).
    revision: i64,
    /// The keys of the sweep: first, and past the last (empty: to the
    /// end).
    start: Vec<u8>,
    end: Vec<u8>,
    /// Where the next step starts (an encoded version key; `None`: at
    /// `start`), unless `done`.
    from: Option<Vec<u8>>,
    /// Where the pass at `revision` began, if not at `start`: a newer
    /// compaction met mid-pass goes on from where the pass stood (what an
    /// older one dropped, a newer one drops too), to the end, then from
    /// `start` up to here.
    lap: Option<Vec<u8>>,
    /// The pass reached the end and goes on from `start` up to `lap`.
    wrapped: bool,
    /// Every version in the range that compaction at `revision` drops is
    /// gone.
    done: bool,
}

impl Swept {
    /// True when a sweep at `revision` over exactly `range` has nothing
    /// left. (Exactly: keys that came into a wider range swept earlier —
    /// a child's snapshot installed here, merged back — may hold versions
    /// no sweep reached.)
    fn covers(&self, revision: i64, range: &RegionRange) -> bool {
        self.done && self.revision == revision && self.start == range.start && self.end == range.end
    }

    /// The sweep to go on with for a compaction at `revision` of `range`:
    /// this one; over the same keys mid-pass at an older compaction, a
    /// pass at `revision` from where it stood (so compactions more
    /// frequent than a pass still sweep every key in turn); else a new
    /// one from the range's start.
    fn towards(&self, revision: i64, range: &RegionRange) -> Swept {
        let keys = self.start == range.start && self.end == range.end;
        match (keys && !self.done, self.revision == revision) {
            (true, true) => self.clone(),
            (true, false) => Swept {
                revision,
                lap: self.from.clone(),
                wrapped: false,
                ..self.clone()
            },
            (false, _) => Swept {
                revision,
                start: range.start.clone(),
                end: range.end.clone(),
                ..Swept::default()
            },
        }
    }

    /// Where this sweep stands after a step from `from` that stopped at
    /// `next` (`None`: at the end of what it was asked to read).
    fn after(self, next: Option<Vec<u8>>) -> Swept {
        match (next, self.wrapped, self.lap.is_some()) {
            (Some(next), _, _) => Swept {
                from: Some(next),
                ..self
            },
            // At the range's end; the pass began past its start.
            (None, false, true) => Swept {
                from: None,
                wrapped: true,
                ..self
            },
            (None, _, _) => Swept {
                from: None,
                lap: None,
                wrapped: false,
                done: true,
                ..self
            },
        }
    }
}

/// The key of region `region`'s sweep record (beside its applied record).
pub(super) fn swept_key(region: u64) -> Vec<u8> {
    Key::ApplyState {
        region,
        tag: b"swept",
    }
    .encode()
}

impl RegionShared {
    /// True while this replica holds versions its region's compaction
    /// dropped and has not swept yet. (Reads the record from the engine
    /// once; after that, memory only.)
    pub fn sweep_due(&self) -> crate::Result<bool> {
        let Some(mut sweep) = self.sweep.try_lock() else {
            // A step is running.
            return Ok(true);
        };
        Ok(self.sweep_plan(&mut sweep)?.is_some())
    }

    /// One step of the sweep (at most [`STEP_VERSIONS`] versions read, one
    /// engine batch written); true while more is due. Blocking: engine
    /// reads and a write.
    pub fn sweep_step(&self) -> crate::Result<bool> {
        let mut sweep = self.sweep.lock();
        let Some((plan, range)) = self.sweep_plan(&mut sweep)? else {
            return Ok(false);
        };
        // Taken after the compaction revision was read, so it holds that
        // compaction (a later one only drops more); no install replaces
        // the keys before the step is written (it waits for `sweep`).
        let view = self.engine.snapshot();
        let until = plan.lap.as_deref().filter(|_| plan.wrapped);
        let (mut batch, next): (WriteBatch, _) = cairn_mvcc::sweep(
            &*view,
            plan.revision,
            &range.keys(),
            plan.from.as_deref(),
            until,
            STEP_VERSIONS,
        )?;
        let swept = plan.after(next);
        // Two deletions per version: it, and its index entry.
        let dropped = batch.len() / 2;
        batch.put(swept_key(self.region), encode(&swept)?);
        fail::fail_point!(crate::failpoints::SWEEP_BEFORE_WRITE);
        self.engine.write(batch, Durability::Buffered)?;
        crate::metrics::SWEPT_VERSIONS.inc_by(dropped as u64);
        let more = !swept.done;
        *sweep = Some(swept);
        Ok(more)
    }

    /// The sweep due now, and the range to step it over; `None` when
    /// there is none (swept, never compacted, frozen for a merge, retired,
    /// or the meta region). Loads the record on first use.
    fn sweep_plan(&self, sweep: &mut Option<Swept>) -> crate::Result<Option<(Swept, RegionRange)>> {
        if self.kind != RegionKind::Data || self.is_retired() {
            return Ok(None);
        }
        let (compacted, range) = {
            let g = self.state.read();
            let a = &g.applied;
            if a.compacted_revision == 0 || a.merge.frozen.is_some() {
                return Ok(None);
            }
            (a.compacted_revision, a.range.clone())
        };
        let stood = match sweep {
            Some(s) => s,
            None => sweep.insert(match self.engine.get(&swept_key(self.region))? {
                Some(b) => decode(&b)?,
                None => Swept::default(),
            }),
        };
        if stood.covers(compacted, &range) {
            return Ok(None);
        }
        Ok(Some((stood.towards(compacted, &range), range)))
    }

    /// Forgets where the sweep stood, as a snapshot install replaces the
    /// keys: the record's deletion goes in the install's `batch`, written
    /// with the sweep's lock (`sweep`) held.
    pub(super) fn sweep_forget(sweep: &mut Option<Swept>, region: u64, batch: &mut WriteBatch) {
        batch.delete(swept_key(region));
        *sweep = Some(Swept::default());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_storage::{Engine, MemoryEngine};

    use super::super::tests::{block_on, entry, puts, region};
    use super::super::StateMachine;
    use super::*;
    use crate::types::{Command, Reply};
    use openraft::storage::RaftStateMachine;

    /// Whether the version of `key` at `revision` is stored.
    fn stored(engine: &dyn Engine, key: &[u8], revision: i64) -> bool {
        engine
            .get(&Key::MvccVersion { key, revision }.encode())
            .unwrap()
            .is_some()
    }

    /// A region over `engine` with `keys` keys written twice (revisions
    /// 2 and 3), then compacted at 3 (entry 3).
    fn compacted_twice_written(engine: Arc<dyn Engine>, keys: usize) -> Arc<RegionShared> {
        let (shared, dir) = region(engine);
        std::mem::forget(dir);
        let mut sm = StateMachine::new(shared.clone());
        let kvs = |v: &str| {
            (0..keys)
                .map(|i| (format!("k{i:05}").into_bytes(), v.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        };
        let replies = block_on(sm.apply(vec![
            entry(1, puts(2, kvs("one"))),
            entry(2, puts(3, kvs("two"))),
            entry(3, Command::Compact { revision: 3 }),
        ]))
        .unwrap();
        assert_eq!(replies[2], Reply::Compacted { current: 3 });
        shared
    }

    #[test]
    fn a_compaction_drops_nothing_where_it_applies_and_its_sweep_drops_what_it_compacted() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let shared = compacted_twice_written(engine.clone(), 10);
        assert_eq!(shared.revisions().compacted, 3);
        assert!(stored(&*engine, b"k00000", 2), "the apply dropped nothing");
        assert!(shared.sweep_due().unwrap());
        assert!(!shared.sweep_step().unwrap(), "ten keys: one step");
        assert!(!stored(&*engine, b"k00000", 2), "swept");
        assert!(stored(&*engine, b"k00000", 3), "the newest stays");
        assert!(!shared.sweep_due().unwrap());
        // A replica started again over the same engine knows it swept.
        let again = region(engine).0;
        assert!(!again.sweep_due().unwrap());
    }

    #[test]
    fn a_sweep_goes_on_after_a_restart_where_it_stood() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        // Twice a step's versions and more.
        let shared = compacted_twice_written(engine.clone(), STEP_VERSIONS + 100);
        assert!(shared.sweep_step().unwrap(), "more than one step");
        let first = (0..STEP_VERSIONS + 100)
            .filter(|i| !stored(&*engine, format!("k{i:05}").as_bytes(), 2))
            .count();
        assert!(first > 0 && first < STEP_VERSIONS + 100, "{first} swept");
        let again = region(engine.clone()).0;
        assert!(again.sweep_due().unwrap());
        while again.sweep_step().unwrap() {}
        for i in 0..STEP_VERSIONS + 100 {
            let key = format!("k{i:05}");
            assert!(!stored(&*engine, key.as_bytes(), 2), "{key} at 2");
            assert!(stored(&*engine, key.as_bytes(), 3), "{key} at 3");
        }
    }

    #[test]
    fn a_compaction_met_mid_sweep_leaves_nothing_either_dropped() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let keys = STEP_VERSIONS + 100;
        let shared = compacted_twice_written(engine.clone(), keys);
        assert!(shared.sweep_step().unwrap(), "mid-pass");
        // A third version of every key, and a compaction at it.
        let kvs = (0..keys).map(|i| (format!("k{i:05}").into_bytes(), b"three".to_vec()));
        let mut sm = StateMachine::new(shared.clone());
        let replies = block_on(sm.apply(vec![
            entry(4, puts(4, kvs)),
            entry(5, Command::Compact { revision: 4 }),
        ]))
        .unwrap();
        assert_eq!(replies[1], Reply::Compacted { current: 4 });
        let mut steps = 0;
        while shared.sweep_step().unwrap() {
            steps += 1;
        }
        assert!(steps >= 2, "on from mid-pass, then the lap: {steps}");
        for i in 0..keys {
            let key = format!("k{i:05}");
            assert!(!stored(&*engine, key.as_bytes(), 2), "{key} at 2");
            assert!(!stored(&*engine, key.as_bytes(), 3), "{key} at 3");
            assert!(stored(&*engine, key.as_bytes(), 4), "{key} at 4");
        }
        assert!(!shared.sweep_due().unwrap());
    }

    #[test]
    fn a_snapshot_installed_over_a_swept_replica_is_swept_again() {
        let here: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let shared = compacted_twice_written(here.clone(), 10);
        while shared.sweep_step().unwrap() {}
        assert!(!stored(&*here, b"k00000", 2));
        // A sender that has not swept: its snapshot carries the versions.
        let there = compacted_twice_written(Arc::new(MemoryEngine::new()), 10);
        let snapshot = block_on(StateMachine::new(there).get_current_snapshot())
            .unwrap()
            .unwrap();
        let mut sm = StateMachine::new(shared.clone());
        block_on(sm.install_snapshot(&snapshot.meta, snapshot.snapshot)).unwrap();
        assert!(stored(&*here, b"k00000", 2), "installed unswept");
        assert!(shared.sweep_due().unwrap());
        while shared.sweep_step().unwrap() {}
        assert!(!stored(&*here, b"k00000", 2));
        assert!(stored(&*here, b"k00000", 3));
    }

    fn range(start: &str, end: &str) -> RegionRange {
        RegionRange {
            start: start.into(),
            end: end.into(),
            epoch: 1,
        }
    }

    #[test]
    fn a_finished_sweep_covers_only_the_range_it_swept() {
        let done = Swept {
            revision: 7,
            start: b"b".to_vec(),
            done: true,
            ..Swept::default()
        };
        assert!(done.covers(7, &range("b", "")));
        assert!(!done.covers(8, &range("b", "")), "a newer compaction");
        assert!(!done.covers(7, &range("a", "")), "a merge brought keys");
        // Keys a child's snapshot brought while it was split off may be
        // unswept: a range that changed is swept again.
        assert!(
            !done.covers(7, &range("b", "m")),
            "the parent after a split"
        );
        let going = Swept {
            done: false,
            from: Some(b"x".to_vec()),
            ..done
        };
        assert!(!going.covers(7, &range("b", "")));
    }

    #[test]
    fn a_newer_compaction_mid_pass_goes_on_from_where_it_stood_and_laps() {
        let going = Swept {
            revision: 7,
            start: b"b".to_vec(),
            from: Some(b"x".to_vec()),
            ..Swept::default()
        };
        assert_eq!(going.towards(7, &range("b", "")), going);
        // Compacted again mid-pass: on from "x" at 9, to the end, then
        // from the start up to "x".
        let on = going.towards(9, &range("b", ""));
        assert_eq!(on.revision, 9);
        assert_eq!(
            (on.from.as_deref(), on.lap.as_deref()),
            (Some(&b"x"[..]), Some(&b"x"[..]))
        );
        let at_end = on.after(None);
        assert!(at_end.wrapped && !at_end.done && at_end.from.is_none());
        let mid = at_end.clone().after(Some(b"m".to_vec()));
        assert!(mid.wrapped && !mid.done);
        assert!(mid.after(None).done, "back at the lap's start");
        // The keys changed: from the start, at once.
        let moved = going.towards(7, &range("b", "m"));
        assert_eq!(
            (moved.end, moved.from, moved.lap),
            (b"m".to_vec(), None, None)
        );
        // A finished sweep meets a newer compaction: a new pass.
        let done = Swept {
            done: true,
            from: None,
            ..going
        };
        let fresh = done.towards(9, &range("b", ""));
        assert_eq!((&fresh.from, &fresh.lap, fresh.done), (&None, &None, false));
        assert!(fresh.after(None).done, "from the start to the end");
    }
}
