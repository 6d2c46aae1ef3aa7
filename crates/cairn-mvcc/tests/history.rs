//! History replay (what watchers catch up from) agrees with the live events
//! of the transactions that made it — in the order their ops ran, as
//! etcd's sub-revisions order them — including at a compaction boundary.

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use cairn_api::mvccpb::Event;
use cairn_mvcc::{apply_txn, compact, history, Change, NoLeases, Revisions, Span};
use cairn_storage::{Durability, Engine, MemoryEngine};

fn put(k: &str, v: &str) -> Request {
    Request::RequestPut(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

fn del(k: &str) -> Request {
    Request::RequestDeleteRange(DeleteRangeRequest {
        key: k.into(),
        ..Default::default()
    })
}

fn run(e: &MemoryEngine, revs: &mut Revisions, ops: Vec<Request>) -> Vec<Change> {
    let req = TxnRequest {
        success: ops
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
        ..Default::default()
    };
    let rev = revs.current + 10;
    let out = apply_txn(e, &req, rev, *revs, &NoLeases).unwrap();
    e.write(out.batch, Durability::Buffered).unwrap();
    *revs = out.revisions;
    assert!(out.events.iter().all(|c| c.revision == rev));
    out.events
}

/// Events as a watcher gets them: (revision, event).
fn sent(changes: &[Change]) -> Vec<(i64, Event)> {
    changes
        .iter()
        .map(|c| (c.revision, c.event.clone()))
        .collect()
}

#[test]
fn history_equals_the_live_events() {
    let e = MemoryEngine::new();
    let mut revs = Revisions::default();
    let mut live = Vec::new();
    live.extend(run(&e, &mut revs, vec![put("b", "1"), put("a", "1")]));
    live.extend(run(&e, &mut revs, vec![put("a", "2")]));
    live.extend(run(&e, &mut revs, vec![put("c", "1"), del("a")]));
    live.extend(run(&e, &mut revs, vec![put("a", "3")]));
    let keys: Vec<&[u8]> = live.iter().map(|c| c.key()).collect();
    let ran: &[&[u8]] = &[b"b", b"a", b"a", b"c", b"a", b"a"];
    assert_eq!(keys, ran, "live events follow the ops");
    let all = Span::Range(Vec::new(), None);
    assert_eq!(history(&e, &all, 1, revs.current).unwrap(), live);
    // A window and a single key.
    let window: Vec<_> = live
        .iter()
        .filter(|c| c.revision >= 20 && c.revision <= 30)
        .cloned()
        .collect();
    assert_eq!(history(&e, &all, 20, 30).unwrap(), window);
    // One key has one event a revision: its replay leaves subs at 0.
    let only_a: Vec<_> = live.iter().filter(|c| c.key() == b"a").cloned().collect();
    assert_eq!(
        sent(&history(&e, &Span::Single(b"a".to_vec()), 1, revs.current).unwrap()),
        sent(&only_a)
    );
}

#[test]
fn a_delete_at_the_compaction_revision_stays_visible_to_history() {
    let e = MemoryEngine::new();
    let mut revs = Revisions::default();
    run(&e, &mut revs, vec![put("a", "1")]);
    let deleted = run(&e, &mut revs, vec![del("a")]);
    let at = revs.current;
    let (batch, r) = compact(&e, at, revs).unwrap();
    e.write(batch, Durability::Buffered).unwrap();
    revs = r;
    let h = history(&e, &Span::Single(b"a".to_vec()), at, revs.current).unwrap();
    assert_eq!(
        h.len(),
        1,
        "the delete at the compaction revision is replayed"
    );
    assert_eq!(h[0].event.kv, deleted[0].event.kv);
    // The next compaction above it removes the tombstone.
    run(&e, &mut revs, vec![put("b", "1")]);
    let (batch, _) = compact(&e, revs.current, revs).unwrap();
    e.write(batch, Durability::Buffered).unwrap();
    assert!(history(&e, &Span::Single(b"a".to_vec()), 1, revs.current)
        .unwrap()
        .is_empty());
}
