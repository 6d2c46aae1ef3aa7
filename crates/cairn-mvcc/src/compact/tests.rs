//! Sweeps against the compaction in one batch they replace: in steps of
//! any size, with writes above the compaction between the steps, they
//! leave the same store; and hashes do not depend on how far a sweep got.

use std::ops::Bound;

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::DeleteRangeRequest;
use cairn_storage::{Durability, Engine, MemoryEngine};

use super::*;
use crate::hash::hash_kv;
use crate::history::tests::{put, random_history, txn, write, KEYS};
use crate::test_rng::Rng;

/// Every key and value in the engine.
fn everything(e: &MemoryEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
    e.scan(Bound::Unbounded, Bound::Unbounded, false)
        .map(|item| item.unwrap())
        .collect()
}

/// Sweeps `e` at `rev` in steps of `budget` versions from the start of
/// `range`, writing each; returns how many steps it took.
fn sweep_all(e: &MemoryEngine, rev: i64, range: &KeyRange, budget: usize) -> usize {
    let (mut from, mut steps) = (None, 0);
    loop {
        let (batch, next) = sweep(e, rev, range, from.as_deref(), None, budget).unwrap();
        e.write(batch, Durability::Buffered).unwrap();
        steps += 1;
        match next {
            Some(n) => from = Some(n),
            None => return steps,
        }
    }
}

/// Two engines holding the same random history of `rounds` rounds
/// (`seed`), and its revisions.
fn twins(seed: u64, rounds: usize) -> (MemoryEngine, MemoryEngine, Revisions) {
    let (a, b) = (MemoryEngine::new(), MemoryEngine::new());
    let revs = random_history(&mut Rng::new(seed), &a, Revisions::default(), rounds);
    random_history(&mut Rng::new(seed), &b, Revisions::default(), rounds);
    (a, b, revs)
}

#[test]
fn sweeps_in_steps_of_any_size_leave_what_one_compaction_leaves() {
    for seed in 0..40 {
        let (whole, swept, revs) = twins(seed, 60);
        if revs.current <= revs.compacted + 1 {
            continue;
        }
        let rng = &mut Rng::new(1000 + seed);
        let at = revs.compacted + 1 + rng.below((revs.current - revs.compacted) as u64) as i64;
        let (batch, after) = compact(&whole, at, revs).unwrap();
        whole.write(batch, Durability::Buffered).unwrap();
        assert_eq!(compacted(at, revs).unwrap(), after);
        // Nothing swept yet: every revision still hashes alike.
        for rev in [at, (at + revs.current) / 2, revs.current] {
            assert_eq!(
                hash_kv(&whole, rev, after).unwrap(),
                hash_kv(&swept, rev, after).unwrap(),
                "seed {seed}: hash at {rev} before the sweep"
            );
        }
        let budget = 1 + rng.below(6) as usize;
        let steps = sweep_all(&swept, at, &KeyRange::all(), budget);
        assert_eq!(
            everything(&whole),
            everything(&swept),
            "seed {seed}, budget {budget}"
        );
        if budget == 1 {
            assert!(steps > 1, "seed {seed}: a budget of one takes steps");
        }
        // Swept again: nothing more goes.
        let (batch, next) = sweep(&swept, at, &KeyRange::all(), None, None, usize::MAX).unwrap();
        assert!(
            batch.is_empty() && next.is_none(),
            "seed {seed}: a second sweep"
        );
    }
}

#[test]
fn writes_above_the_compaction_between_steps_change_nothing_it_drops() {
    for seed in 0..20 {
        let (whole, swept, revs) = twins(seed, 50);
        if revs.current <= revs.compacted {
            continue;
        }
        let at = revs.current;
        let (batch, mut after) = compact(&whole, at, revs).unwrap();
        whole.write(batch, Durability::Buffered).unwrap();
        // A sweep in steps of two with a round of writes (on both) after
        // each step, as the apply path writes beside a sweep.
        let (mut from, mut round) = (None, 0u64);
        assert!(after.current == at);
        loop {
            let (batch, next) =
                sweep(&swept, at, &KeyRange::all(), from.as_deref(), None, 2).unwrap();
            swept.write(batch, Durability::Buffered).unwrap();
            // Puts and deletes at revisions above `at` (on both).
            let rng = &mut Rng::new(7000 + seed * 100 + round);
            let key = rng.pick(KEYS);
            let op = if rng.chance(70) {
                put(key, b"z", 0)
            } else {
                Request::RequestDeleteRange(DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })
            };
            let before = after;
            after = write(&mut Rng::new(round), &whole, before, txn(vec![op.clone()]));
            write(&mut Rng::new(round), &swept, before, txn(vec![op]));
            round += 1;
            match next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        assert_eq!(everything(&whole), everything(&swept), "seed {seed}");
    }
}

#[test]
fn a_version_told_alone_is_told_as_a_scan_tells_it() {
    for seed in 0..30 {
        let e = MemoryEngine::new();
        let revs = random_history(&mut Rng::new(seed), &e, Revisions::default(), 60);
        let rng = &mut Rng::new(2000 + seed);
        for rev in [revs.compacted.max(1), rng.rev(revs), revs.current] {
            let (lo, hi) = keys::version_range(b"", None);
            let scan = e
                .scan(lo, hi, false)
                .map(|item| item.map(|(k, v)| (k, Some(v))));
            for v in Kept::new(scan, rev, &e) {
                let v = v.unwrap();
                assert_eq!(
                    dropped(&e, &v.user, v.revision, rev).unwrap(),
                    !v.keep,
                    "seed {seed}: {:?} at {} compacted at {rev}",
                    v.user,
                    v.revision
                );
            }
        }
    }
}

#[test]
fn a_backup_before_the_sweep_is_the_backup_after_it() {
    for seed in 0..10 {
        let (whole, unswept, revs) = twins(seed, 60);
        if revs.current <= revs.compacted {
            continue;
        }
        let (batch, after) = compact(&whole, revs.current, revs).unwrap();
        whole.write(batch, Durability::Buffered).unwrap();
        let backup = |e: &MemoryEngine| {
            crate::snapshot::export(e, after, std::io::Cursor::new(Vec::new()))
                .unwrap()
                .into_inner()
        };
        assert!(
            backup(&whole) == backup(&unswept),
            "seed {seed}: the backups differ"
        );
    }
}
