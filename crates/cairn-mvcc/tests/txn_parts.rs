//! A transaction across regions, applied as one part per region at one
//! revision (`apply_txn_part`), leaves exactly the store — every version,
//! index entry and event — that applying it whole does, whatever the
//! branch taken and wherever the region boundaries fall.

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use cairn_mvcc::{apply_txn, apply_txn_part, range, NoLeases, Revisions};
use cairn_storage::{Durability, Engine, MemoryEngine, Snapshot};

fn op(r: Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn put(k: &str, v: &str) -> RequestOp {
    op(Request::RequestPut(PutRequest {
        key: k.into(),
        value: v.into(),
        prev_kv: true,
        ..Default::default()
    }))
}

fn del(k: &str, end: &str) -> RequestOp {
    op(Request::RequestDeleteRange(DeleteRangeRequest {
        key: k.into(),
        range_end: end.into(),
        prev_kv: true,
    }))
}

fn seeded() -> (MemoryEngine, Revisions) {
    let e = MemoryEngine::new();
    let mut revs = Revisions::default();
    for (i, k) in ["a", "b", "f", "g", "m", "q", "z"].iter().enumerate() {
        let req = TxnRequest {
            success: vec![put(k, &format!("v{i}"))],
            ..Default::default()
        };
        let out = apply_txn(&e, &req, revs.current + 3, revs, &NoLeases).unwrap();
        e.write(out.batch, Durability::Buffered).unwrap();
        revs = out.revisions;
    }
    (e, revs)
}

/// Every stored pair of the engine.
fn dump(e: &MemoryEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::ops::Bound;
    e.scan(Bound::Unbounded, Bound::Unbounded, false)
        .map(|r| r.unwrap())
        .collect()
}

fn txn(value_of_a: &str) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            target: CompareTarget::Value as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Value(value_of_a.into())),
            range_end: Vec::new(),
        }],
        // Not in key order: events follow the ops (etcd's sub-revisions).
        success: vec![
            put("n", "born"),
            del("f", "n"),
            op(Request::RequestTxn(TxnRequest {
                success: vec![put("y", "nested")],
                ..Default::default()
            })),
            put("b", "new"),
        ],
        failure: vec![
            del("", "\0"),
            op(Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
        ],
    }
}

#[test]
fn parts_applied_per_region_equal_the_whole() {
    for compare in ["v0", "other"] {
        for cuts in [vec!["c"], vec!["g", "p"], vec!["b", "f", "m", "n", "y"]] {
            let (whole, revs) = seeded();
            let req = txn(compare);
            let rev = revs.current + 7;
            let out = apply_txn(&whole, &req, rev, revs, &NoLeases).unwrap();
            let events = out.events.clone();
            whole.write(out.batch, Durability::Buffered).unwrap();

            // The same store, split at `cuts`; each part applied, in turn,
            // with the region's current revision already above `rev` (a
            // later write elsewhere in it landed first).
            let (split, revs) = seeded();
            let mut bounds = vec![String::new()];
            bounds.extend(cuts.iter().map(|c| c.to_string()));
            bounds.push(String::new());
            let mut part_events = Vec::new();
            for w in bounds.windows(2) {
                let ahead = Revisions {
                    current: rev + 5,
                    ..revs
                };
                let within = (w[0].clone().into_bytes(), w[1].clone().into_bytes());
                let part =
                    apply_txn_part(&split, &req, &out.path, rev, ahead, within, false).unwrap();
                assert_eq!(part.revisions.current, rev + 5);
                part_events.extend(part.events);
                split.write(part.batch, Durability::Buffered).unwrap();
            }
            assert_eq!(
                dump(&split),
                dump(&whole),
                "compare {compare}, cuts {cuts:?}"
            );
            // Whole, the events come in the order the ops ran; merged
            // from the parts in etcd's order (revision, sub, key), alike.
            let keys: Vec<&[u8]> = events.iter().map(|c| c.key()).collect();
            let want: &[&[u8]] = if compare == "v0" {
                &[b"n", b"f", b"g", b"m", b"y", b"b"]
            } else {
                &[b"a", b"b", b"f", b"g", b"m", b"q", b"z"]
            };
            assert_eq!(keys, want, "compare {compare}");
            part_events.sort_by(|a, b| a.order().cmp(&b.order()));
            assert_eq!(part_events, events, "compare {compare}, cuts {cuts:?}");
            // And a read of everything agrees.
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            let at = Revisions {
                current: rev,
                ..revs
            };
            let snap: &dyn Snapshot = &split;
            assert_eq!(
                range(snap, &all, at).unwrap(),
                range(&whole, &all, at).unwrap()
            );
        }
    }
}
