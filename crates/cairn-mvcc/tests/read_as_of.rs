//! `read_txn_at`: a read-only Txn as of a revision below the newest the
//! view holds answers exactly as `read_txn` did when that revision was the
//! newest — compares, ranges of "now" and of explicit revisions, headers —
//! and a range above it is a future revision.

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use cairn_mvcc::{apply_txn, read_txn, read_txn_at, NoLeases, Rejection, Revisions};
use cairn_storage::{Durability, Engine, MemoryEngine};

fn op(r: Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn put(e: &MemoryEngine, revs: Revisions, k: &str, v: &str) -> Revisions {
    let req = TxnRequest {
        success: vec![op(Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }))],
        ..Default::default()
    };
    let out = apply_txn(e, &req, revs.current + 2, revs, &NoLeases).unwrap();
    e.write(out.batch, Durability::Buffered).unwrap();
    out.revisions
}

fn reads(revision: i64) -> Vec<TxnRequest> {
    let range = |k: &str, end: &str, revision: i64| {
        op(Request::RequestRange(RangeRequest {
            key: k.into(),
            range_end: end.into(),
            revision,
            ..Default::default()
        }))
    };
    let value_is = |k: &str, v: &str| Compare {
        key: k.into(),
        target: CompareTarget::Value as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::Value(v.into())),
        ..Default::default()
    };
    let mut out = Vec::new();
    for v in ["1", "2", "3"] {
        out.push(TxnRequest {
            compare: vec![value_is("a", v), value_is("z", v)],
            success: vec![range("a", "\0", 0), range("a", "", revision)],
            failure: vec![range("", "\0", 0)],
        });
    }
    out
}

#[test]
fn reads_as_of_a_revision_below_the_newest() {
    let e = MemoryEngine::new();
    let mut revs = Revisions::default();
    let mut at = Vec::new();
    let mut answers = Vec::new();
    for v in ["1", "2", "3"] {
        revs = put(&e, revs, "a", v);
        revs = put(&e, revs, "z", v);
        at.push(revs);
        // What a read at this moment answered, for each request shape.
        answers.push(
            reads(revs.current - 2)
                .iter()
                .map(|r| read_txn(&e, r, revs).unwrap())
                .collect::<Vec<_>>(),
        );
    }
    revs = put(&e, revs, "a", "4");
    for (then, answer) in at.iter().zip(&answers) {
        for (req, want) in reads(then.current - 2).iter().zip(answer) {
            let got = read_txn_at(&e, req, revs, then.current).unwrap();
            assert_eq!(&got, want, "as of {}", then.current);
        }
    }
    // Above the revision read at: a future revision.
    let err = read_txn_at(&e, &reads(revs.current)[0], revs, at[0].current).unwrap_err();
    assert!(
        matches!(err, cairn_mvcc::Error::Rejected(Rejection::FutureRevision)),
        "{err:?}"
    );
}
