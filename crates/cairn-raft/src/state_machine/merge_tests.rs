//! Merges in one engine: a region frozen, absorbed by its left
//! neighbour, and a merge abandoned and rolled back (see `merge`).

use std::sync::Arc;

use cairn_storage::{Engine, MemoryEngine};
use openraft::storage::RaftStateMachine;

use super::tests::{block_on, entry, puts, region, value_at};
use super::{Freeze, HostChange, RegionKind, RegionShared, StateMachine};
use crate::types::{Command, Reply};
use crate::SnapshotDir;

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

fn apply(sm: &mut StateMachine, index: u64, cmd: Command) -> Reply {
    let mut r = block_on(sm.apply(vec![entry(index, cmd)])).unwrap();
    r.pop().unwrap()
}

/// Region 1 holding `a` and `q`, split at `m` into region `child`, which
/// is split at `t` into region `child + 1` (the last two regions never
/// merge): the first two state machines, and the guard of their snapshot
/// directory.
fn split_pair(
    engine: &Arc<dyn Engine>,
    child: u64,
) -> (
    StateMachine,
    Arc<RegionShared>,
    StateMachine,
    Arc<RegionShared>,
    Vec<tempfile::TempDir>,
) {
    let (left, dir) = region(engine.clone());
    let mut sm = StateMachine::new(left.clone());
    let r = apply(&mut sm, 1, puts(10, [kv("a", "1"), kv("q", "1")]));
    assert!(matches!(r, Reply::Txn(_)), "{r:?}");
    let split = Command::Split {
        at: b"m".to_vec(),
        child,
        epoch: 1,
    };
    assert_eq!(apply(&mut sm, 2, split), Reply::Done);
    let dir2 = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir2.path()).unwrap());
    let right = RegionShared::load(child, RegionKind::Data, engine.clone(), snapshots).unwrap();
    let mut right_sm = StateMachine::new(right.clone());
    let split = Command::Split {
        at: b"t".to_vec(),
        child: child + 1,
        epoch: 2,
    };
    assert_eq!(apply(&mut right_sm, 5, split), Reply::Done);
    (sm, left, right_sm, right, vec![dir, dir2])
}

/// A prewrite of transaction `start_ts` locking `key` (a put), whose
/// primary is the first of `regions`.
fn lock_one(start_ts: i64, regions: Vec<u64>, key: &str) -> Command {
    let txn = match puts(0, [kv(key, "x")]) {
        Command::Txn { txn, .. } => txn,
        _ => unreachable!(),
    };
    Command::Prewrite {
        start_ts,
        primary: regions[0],
        regions,
        spans: vec![(key.as_bytes().to_vec(), [key.as_bytes(), b"\0"].concat())],
        txn,
        leases: cairn_mvcc::locks::LeaseClaims::default(),
    }
}

fn freeze_of(r: Reply) -> Freeze {
    match r {
        Reply::Frozen(f) => *f,
        other => panic!("not frozen: {other:?}"),
    }
}

#[test]
fn a_frozen_region_is_absorbed_by_its_left_neighbour_once() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (mut t, left, mut s, right, _dirs) = split_pair(&engine, 9);
    let (tx, mut told) = tokio::sync::mpsc::unbounded_channel();
    left.on_change(tx);
    let r = apply(&mut s, 6, puts(20, [kv("q", "2")]));
    assert!(matches!(r, Reply::Txn(_)), "{r:?}");
    assert_eq!((left.range().epoch, right.range().epoch), (2, 3));

    // The first region never merges away; a stale epoch freezes nothing.
    let prepare = |target_epoch, epoch| Command::PrepareMerge {
        target: 1,
        target_epoch,
        epoch,
    };
    let r = apply(&mut t, 3, prepare(2, 2));
    assert!(matches!(r, Reply::Invalid(_)), "{r:?}");
    let r = apply(&mut s, 7, prepare(2, 2));
    assert!(matches!(r, Reply::WrongRegion(_)), "{r:?}");
    assert_eq!(right.merge_frozen(), None);

    // Frozen: the range is empty, the epoch moved, writes are refused,
    // and asking again gives the same freeze.
    let f = freeze_of(apply(&mut s, 8, prepare(2, 3)));
    assert_eq!(
        (
            f.range.start.as_slice(),
            f.range.end.as_slice(),
            f.range.epoch
        ),
        (&b"m"[..], &b"t"[..], 4)
    );
    assert_eq!(f.current_revision, 20);
    assert!(right.range().is_empty());
    assert!(!right.range().contains(b"q"));
    assert!(
        right.share().unwrap().range.contains(b"q"),
        "snapshots carry the keys"
    );
    let r = apply(&mut s, 9, puts(30, [kv("q", "3")]));
    assert!(
        matches!(r, Reply::WrongRegion(ref g) if g.is_empty()),
        "{r:?}"
    );
    let close = apply(&mut s, 10, Command::Close { ts: 40 });
    assert!(matches!(close, Reply::WrongRegion(_)), "{close:?}");
    assert_eq!(right.revisions().current, 20, "a frozen revision stays");
    // A compaction settled by its leader too (members stop a frozen
    // region at different moments: none may compact it).
    let settled = Command::InTerm {
        term: 1,
        cmd: Box::new(Command::Compact { revision: 25 }),
    };
    let r = apply(&mut s, 12, settled);
    assert!(matches!(r, Reply::WrongRegion(_)), "{r:?}");
    assert_eq!(
        right.revisions(),
        cairn_mvcc::Revisions {
            current: 20,
            compacted: 0
        }
    );
    assert_eq!(freeze_of(apply(&mut s, 13, prepare(2, 3))), f);

    // The target refuses a merge planned at another epoch, or one whose
    // freeze names another target (sent here by mistake); absorbs this one.
    let stale = Freeze {
        target_epoch: 1,
        ..f.clone()
    };
    let elsewhere = Freeze {
        target: 5,
        ..f.clone()
    };
    for freeze in [stale, elsewhere] {
        let r = apply(&mut t, 4, Command::CommitMerge { source: 9, freeze });
        assert!(matches!(r, Reply::WrongRegion(_)), "{r:?}");
        assert!(told.try_recv().is_err());
    }
    let commit = Command::CommitMerge {
        source: 9,
        freeze: f.clone(),
    };
    assert_eq!(apply(&mut t, 5, commit.clone()), Reply::Done);
    assert_eq!(told.try_recv().ok(), Some(HostChange::Absorbed(9)));
    let range = left.range();
    assert_eq!(
        (range.start.as_slice(), range.end.as_slice()),
        (&b""[..], &b"t"[..])
    );
    assert_eq!(range.epoch, 5, "above both epochs");
    assert_eq!(left.revisions().current, 20, "the higher current revision");
    assert_eq!(apply(&mut t, 6, commit), Reply::Absorbed);
    let abandon = Command::AbandonMerge {
        source: 9,
        target_epoch: 2,
    };
    assert_eq!(apply(&mut t, 7, abandon), Reply::Absorbed);

    // The target now writes and reads the source's keys.
    let r = apply(&mut t, 8, puts(50, [kv("q", "5")]));
    assert!(matches!(r, Reply::Txn(_)), "{r:?}");
    let (view, revs) = left.read_view();
    assert_eq!(value_at(&*view, revs, b"q", 50), Some(b"5".to_vec()));
    assert_eq!(value_at(&*view, revs, b"q", 20), Some(b"2".to_vec()));
    assert_eq!(
        super::absorbed_regions(&*engine, 0).unwrap(),
        [9].into_iter().collect()
    );
    super::forget_region(&*engine, 9).unwrap();
    assert_eq!(super::stored_regions(&*engine).unwrap(), vec![1, 10]);
    let (view, revs) = left.read_view();
    assert_eq!(
        value_at(&*view, revs, b"q", 50),
        Some(b"5".to_vec()),
        "forgetting the source keeps its keys"
    );

    // The last two regions stay two (the store keeps the rules of several).
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir.path()).unwrap());
    let last = RegionShared::load(10, RegionKind::Data, engine.clone(), snapshots).unwrap();
    let mut last_sm = StateMachine::new(last.clone());
    let f = freeze_of(apply(&mut last_sm, 6, prepare(5, last.range().epoch)));
    let r = apply(
        &mut t,
        9,
        Command::CommitMerge {
            source: 10,
            freeze: f,
        },
    );
    assert!(matches!(r, Reply::Invalid(_)), "{r:?}");
    assert_eq!(left.range().end, b"t");
}

#[test]
fn a_merge_is_rolled_back_only_after_the_target_abandoned_it() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (mut t, left, mut s, right, _dirs) = split_pair(&engine, 9);
    let prepare = Command::PrepareMerge {
        target: 1,
        target_epoch: 2,
        epoch: 3,
    };
    let f = freeze_of(apply(&mut s, 6, prepare));

    // Abandoned: no absorb planned at the old epoch applies any more.
    let abandon = Command::AbandonMerge {
        source: 9,
        target_epoch: 2,
    };
    assert_eq!(apply(&mut t, 3, abandon.clone()), Reply::Done);
    assert_eq!(left.range().epoch, 3, "no absorb planned at 2 applies now");
    assert_eq!(apply(&mut t, 4, abandon), Reply::Done);
    assert_eq!(left.range().epoch, 3, "abandoning twice moves it once");
    let commit = Command::CommitMerge {
        source: 9,
        freeze: f.clone(),
    };
    let r = apply(&mut t, 5, commit);
    assert!(matches!(r, Reply::WrongRegion(_)), "{r:?}");
    assert_eq!(left.range().end, b"m");

    // A rollback of another freeze does nothing; of this one, thaws.
    assert_eq!(
        apply(&mut s, 7, Command::RollbackMerge { epoch: 99 }),
        Reply::Done
    );
    assert!(right.range().is_empty());
    assert_eq!(
        apply(
            &mut s,
            8,
            Command::RollbackMerge {
                epoch: f.range.epoch
            }
        ),
        Reply::Done
    );
    let range = right.range();
    assert_eq!(
        (range.start.as_slice(), range.end.as_slice(), range.epoch),
        (&b"m"[..], &b"t"[..], 5)
    );
    let r = apply(&mut s, 9, puts(30, [kv("q", "3")]));
    assert!(matches!(r, Reply::Txn(_)), "{r:?}");
    assert!(super::absorbed_regions(&*engine, 0).unwrap().is_empty());
}

#[test]
fn a_target_holding_a_lock_absorbs_nothing() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (mut t, left, mut s, _right, _dirs) = split_pair(&engine, 9);
    let prewrite = lock_one(15, vec![1, 77], "a");
    let r = apply(&mut t, 3, prewrite);
    assert!(matches!(r, Reply::Revision(_)), "{r:?}");
    let f = freeze_of(apply(
        &mut s,
        6,
        Command::PrepareMerge {
            target: 1,
            target_epoch: 2,
            epoch: 3,
        },
    ));
    let r = apply(
        &mut t,
        4,
        Command::CommitMerge {
            source: 9,
            freeze: f,
        },
    );
    assert!(matches!(r, Reply::Locked(_)), "{r:?}");
    assert_eq!(left.range().end, b"m");
}

#[test]
fn an_applied_record_written_before_merges_still_decodes() {
    use super::Applied;
    let mut applied = Applied {
        current_revision: 9,
        ..Default::default()
    };
    applied.range.start = b"m".to_vec();
    applied.range.epoch = 3;
    let old = crate::codec::encode(&(
        &applied.last_applied,
        &applied.membership,
        applied.current_revision,
        applied.compacted_revision,
        applied.tso_high_water,
        &applied.members,
        &applied.regions,
        &applied.alarms,
        &applied.auth,
        applied.auth_fence,
        &applied.range,
        &applied.locks,
    ))
    .unwrap();
    let new = crate::codec::encode(&applied).unwrap();
    assert_eq!(&new[..old.len()], &old[..], "merge is the last field");
    assert_eq!(Applied::decode(&old).unwrap(), applied);
}

#[test]
fn the_outcomes_of_a_frozen_primary_move_to_the_region_that_absorbs_it() {
    use cairn_mvcc::locks::Outcome;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (mut t, left, mut s, right, _dirs) = split_pair(&engine, 9);
    let prewrite = lock_one(15, vec![9, 1], "q");
    let r = apply(&mut s, 6, prewrite);
    assert!(matches!(r, Reply::Revision(_)), "{r:?}");
    let resolve = Command::ResolvePrimary { start_ts: 15 };
    let rolled_back = Reply::Outcome(Some(Outcome::RolledBack));
    assert_eq!(apply(&mut s, 7, resolve.clone()), rolled_back);
    let f = freeze_of(apply(
        &mut s,
        8,
        Command::PrepareMerge {
            target: 1,
            target_epoch: 2,
            epoch: 3,
        },
    ));
    assert_eq!(f.outcomes.get(&15), Some(&Outcome::RolledBack));
    // Frozen: the outcome is still answered, and not forgotten.
    assert_eq!(apply(&mut s, 9, resolve.clone()), rolled_back);
    let forget = apply(&mut s, 10, Command::ForgetOutcome { start_ts: 15 });
    assert!(matches!(forget, Reply::WrongRegion(_)), "{forget:?}");
    assert!(right.applied().locks.outcomes.contains_key(&15));
    // Absorbed: the target answers for it.
    let commit = Command::CommitMerge {
        source: 9,
        freeze: f,
    };
    assert_eq!(apply(&mut t, 3, commit), Reply::Done);
    assert_eq!(apply(&mut t, 4, resolve), rolled_back);
    let forget = apply(&mut t, 5, Command::ForgetOutcome { start_ts: 15 });
    assert_eq!(forget, Reply::Done);
    assert!(left.applied().locks.outcomes.is_empty());
}
