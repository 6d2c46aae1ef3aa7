//! A region's held locks, stored beside its record (`stored_record`),
//! through what a replica lives through: a restart with locks held, an
//! upgrade from a record that held them inline, a snapshot installed over
//! them.

use std::sync::Arc;

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use cairn_mvcc::locks::{LeaseClaims, Outcome};
use cairn_mvcc::Revisions;
use cairn_storage::{Durability, Engine, MemoryEngine, WriteBatch};
use openraft::storage::RaftStateMachine;
use prost::Message;

use super::stored_record::{self, MARK};
use super::tests::{block_on, entry, region, value_at};
use super::{apply_key, Applied, RegionShared, StateMachine};
use crate::types::{Command, Reply};

/// A prewrite of transaction `start_ts` putting `key` = `value` here, its
/// primary this region (1) and a second region (2) beside it.
fn prewrite(start_ts: i64, key: &str, value: &str) -> Command {
    let txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    Command::Prewrite {
        start_ts,
        primary: 1,
        regions: vec![1, 2],
        spans: vec![cairn_mvcc::locks::etcd_span(key.as_bytes(), &[])],
        txn: txn.encode_to_vec(),
        leases: LeaseClaims::default(),
    }
}

fn apply(shared: &Arc<RegionShared>, index: u64, cmd: Command) -> Reply {
    let mut sm = StateMachine::new(shared.clone());
    let mut replies = block_on(sm.apply(vec![entry(index, cmd)])).unwrap();
    replies.pop().unwrap()
}

fn held_ts(shared: &RegionShared) -> Vec<i64> {
    shared.with_applied(|a| a.locks.held.keys().copied().collect())
}

#[test]
fn a_replica_restarted_with_locks_held_has_them_and_commits_one() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (shared, _dir) = region(engine.clone());
    assert!(matches!(
        apply(&shared, 1, prewrite(100, "a", "1")),
        Reply::Revision(_)
    ));
    assert!(matches!(
        apply(&shared, 2, prewrite(200, "b", "2")),
        Reply::Revision(_)
    ));
    let stored = engine.get(&apply_key(1)).unwrap().unwrap();
    assert_eq!(stored[0], MARK);
    assert!(
        stored.len() < 200,
        "the record leaves the locks out: {} bytes",
        stored.len()
    );
    // Restarted: the same record, locks and all.
    let (again, _dir2) = region(engine.clone());
    assert_eq!(again.applied(), shared.applied());
    assert_eq!(held_ts(&again), [100, 200]);
    let commit = Command::CommitLocked {
        start_ts: 100,
        commit_ts: 50,
        path: vec![true],
    };
    assert!(matches!(
        apply(&again, 3, commit),
        Reply::Outcome(Some(Outcome::Committed { commit_ts: 50, .. }))
    ));
    // And again: the committed lock is gone from the engine too.
    let (third, _dir3) = region(engine.clone());
    assert_eq!(held_ts(&third), [200]);
    let (view, revs) = third.read_view();
    assert_eq!(value_at(&*view, revs, b"a", 50), Some(b"1".to_vec()));
    assert_eq!(
        revs,
        Revisions {
            current: 50,
            compacted: 0
        }
    );
}

#[test]
fn a_record_with_its_locks_inline_loads_and_its_next_entry_moves_them_beside_it() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    // What an older Cairn stored: one lock, inside the record.
    let (older, _dir) = region(Arc::new(MemoryEngine::new()));
    assert!(matches!(
        apply(&older, 1, prewrite(100, "a", "1")),
        Reply::Revision(_)
    ));
    let mut batch = WriteBatch::new();
    batch.put(
        apply_key(1),
        crate::codec::encode(&older.applied()).unwrap(),
    );
    engine.write(batch, Durability::Sync).unwrap();
    let (shared, _dir2) = region(engine.clone());
    assert_eq!(shared.applied(), older.applied());
    // The next entry writes the new layout, and every lock beside it.
    assert!(matches!(
        apply(&shared, 2, prewrite(200, "b", "2")),
        Reply::Revision(_)
    ));
    assert_eq!(engine.get(&apply_key(1)).unwrap().unwrap()[0], MARK);
    assert_eq!(
        stored_record::read_locks(&*engine, 1)
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [100, 200]
    );
    let (again, _dir3) = region(engine.clone());
    assert_eq!(again.applied(), shared.applied());
}

#[test]
fn a_snapshot_installed_replaces_the_locks_stored_beside_the_record() {
    let here: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (shared, _dir) = region(here.clone());
    apply(&shared, 1, prewrite(100, "a", "1"));
    apply(&shared, 2, prewrite(200, "b", "2"));
    // The leader's state: 200 holds another key, 300 is new, 100 went.
    let (there, _dir2) = region(Arc::new(MemoryEngine::new()));
    apply(&there, 1, prewrite(200, "c", "3"));
    apply(&there, 2, prewrite(300, "d", "4"));
    apply(&there, 3, Command::RollbackLocked { start_ts: 100 });
    let snapshot = block_on(StateMachine::new(there.clone()).get_current_snapshot())
        .unwrap()
        .unwrap();
    let mut sm = StateMachine::new(shared.clone());
    block_on(sm.install_snapshot(&snapshot.meta, snapshot.snapshot)).unwrap();
    assert_eq!(shared.applied(), there.applied());
    let stored = stored_record::read_locks(&*here, 1).unwrap();
    assert_eq!(stored, there.applied().locks.held);
    let (again, _dir3) = region(here.clone());
    let held: Applied = again.applied();
    assert_eq!(held, there.applied());
}
