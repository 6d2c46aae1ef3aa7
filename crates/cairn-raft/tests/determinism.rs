//! The state machine contract: applying the same log to two replicas on two
//! different engines yields byte-identical state and identical replies.

use std::ops::Bound;
use std::sync::Arc;

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use cairn_raft::{Command, RegionKind, RegionShared, Reply, SnapshotDir, StateMachine};
use cairn_storage::{Engine, FjallEngine, MemoryEngine};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use prost::Message;

fn txn(ops: Vec<Request>) -> Vec<u8> {
    TxnRequest {
        success: ops
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn put(k: &str, v: &str) -> Request {
    Request::RequestPut(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

fn log() -> Vec<Entry<cairn_raft::TypeConfig>> {
    let mut cmds = vec![
        Command::Txn {
            ts: 100,
            txn: txn(vec![put("a", "1"), put("b", "2")]),
        },
        // A timestamp below the current revision still gets a larger revision.
        Command::Txn {
            ts: 50,
            txn: txn(vec![put("a", "3")]),
        },
        Command::Batch(vec![
            Command::Txn {
                ts: 200,
                txn: txn(vec![put("c", "4")]),
            },
            Command::Txn {
                ts: 201,
                txn: txn(vec![Request::RequestDeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    range_end: "c".into(),
                    prev_kv: true,
                })]),
            },
            Command::Txn {
                ts: 202,
                txn: txn(vec![put("a", "5")]),
            },
            // Rejected inside a batch: nothing of it applies, the rest does.
            Command::Txn {
                ts: 203,
                txn: txn(vec![put("x", "1"), put("x", "2")]),
            },
        ]),
        Command::Compact { revision: 201 },
        Command::Txn {
            ts: 300,
            txn: b"not a protobuf \xff".to_vec(),
        },
    ];
    for i in 0..50 {
        cmds.push(Command::Txn {
            ts: 400 + i,
            txn: txn(vec![put(&format!("k{}", i % 7), &format!("v{i}"))]),
        });
    }
    cmds.into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(c),
        })
        .collect()
}

fn dump(e: &dyn Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for space in [0x03u8, 0x10, 0x11] {
        for item in e.scan(
            Bound::Included(vec![space]),
            Bound::Excluded(vec![space + 1]),
            false,
        ) {
            out.push(item.unwrap());
        }
    }
    out
}

/// A throwaway snapshot directory (these tests never build snapshots).
fn snaps() -> Arc<SnapshotDir> {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(SnapshotDir::open(dir).unwrap())
}

#[tokio::test]
async fn two_replicas_on_different_engines_apply_identically() {
    let dir = tempfile::tempdir().unwrap();
    let engines: Vec<Arc<dyn Engine>> = vec![
        Arc::new(MemoryEngine::new()),
        Arc::new(FjallEngine::open(dir.path()).unwrap()),
    ];
    let mut results = Vec::new();
    for e in engines {
        let shared = RegionShared::load(1, RegionKind::Data, e.clone(), snaps()).unwrap();
        let mut sm = StateMachine::new(shared.clone());
        let replies = sm.apply(log()).await.unwrap();
        results.push((replies, dump(&*e), shared.applied()));
    }
    assert_eq!(results[0].0, results[1].0, "replies differ");
    assert_eq!(results[0].1, results[1].1, "stored bytes differ");
    let (replies, _, applied) = &results[0];
    assert!(matches!(replies[1], Reply::Txn(_)));
    match &replies[2] {
        Reply::Batch(rs) => {
            assert!(matches!(
                rs[3],
                Reply::Rejected(cairn_mvcc::Rejection::DuplicateKey)
            ));
            assert_eq!(rs.len(), 4);
        }
        other => panic!("batch reply expected, got {other:?}"),
    }
    assert!(matches!(replies[4], Reply::Invalid(_)));
    assert_eq!(applied.compacted_revision, 201);
    assert_eq!(applied.current_revision, 449);
    assert_eq!(applied.last_applied.unwrap().index, 55);
}

#[tokio::test]
async fn applied_state_survives_reopen_and_is_not_reapplied() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir.path()).unwrap());
        let mut sm =
            StateMachine::new(RegionShared::load(1, RegionKind::Data, e.clone(), snaps()).unwrap());
        sm.apply(log()).await.unwrap();
        e.sync().unwrap();
    }
    let e: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir.path()).unwrap());
    let shared = RegionShared::load(1, RegionKind::Data, e, snaps()).unwrap();
    let mut sm = StateMachine::new(shared.clone());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(
        applied.unwrap().index,
        55,
        "openraft resumes after the last applied entry"
    );
    assert_eq!(shared.applied().current_revision, 449);
}
