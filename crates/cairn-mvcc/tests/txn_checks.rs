//! A Txn's errors come in etcd's order (etcd 3.4, `applierV3backend.Txn`):
//! every put along the branches taken is checked before any range, so a
//! put's error wins over an earlier range's; nested transactions' ops are
//! checked in their place; a branch not taken is not checked.

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use cairn_mvcc::{apply_txn, Error, NoLeases, Rejection, Revisions};
use cairn_storage::{Durability, Engine, MemoryEngine};

fn op(r: Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn put(k: &str, lease: i64, ignore_value: bool) -> RequestOp {
    op(Request::RequestPut(PutRequest {
        key: k.into(),
        lease,
        ignore_value,
        ..Default::default()
    }))
}

fn get_at(k: &str, revision: i64) -> RequestOp {
    op(Request::RequestRange(RangeRequest {
        key: k.into(),
        revision,
        ..Default::default()
    }))
}

fn nested(success: Vec<RequestOp>) -> RequestOp {
    op(Request::RequestTxn(TxnRequest {
        success,
        ..Default::default()
    }))
}

/// A store holding "a" at revision 2.
fn store() -> (MemoryEngine, Revisions) {
    let e = MemoryEngine::new();
    let req = TxnRequest {
        success: vec![put("a", 0, false)],
        ..Default::default()
    };
    let out = apply_txn(&e, &req, 2, Revisions::default(), &NoLeases).unwrap();
    e.write(out.batch, Durability::Buffered).unwrap();
    (e, out.revisions)
}

fn refusal(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Option<Rejection> {
    let (e, revs) = store();
    let req = TxnRequest {
        success,
        failure,
        ..Default::default()
    };
    match apply_txn(&e, &req, revs.current + 1, revs, &NoLeases) {
        Ok(_) => None,
        Err(Error::Rejected(r)) => Some(r),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn a_puts_error_wins_over_an_earlier_ranges() {
    // A range at a future revision, then a put with a lease that is not
    // there: etcd answers "requested lease not found".
    assert_eq!(
        refusal(vec![get_at("a", 99), put("b", 7, false)], vec![]),
        Some(Rejection::LeaseNotFound)
    );
    // And a put keeping the value of a key that is not there: "key not
    // found", before the range's "future revision".
    assert_eq!(
        refusal(vec![get_at("a", 99), put("b", 0, true)], vec![]),
        Some(Rejection::KeyNotFound)
    );
    // Within one put, the missing key is told before the missing lease.
    assert_eq!(
        refusal(vec![put("b", 7, true)], vec![]),
        Some(Rejection::KeyNotFound)
    );
    // Alone, the range fails as a future revision.
    assert_eq!(
        refusal(vec![get_at("a", 99), put("b", 0, false)], vec![]),
        Some(Rejection::FutureRevision)
    );
}

#[test]
fn nested_ops_are_checked_in_their_place_and_untaken_branches_not_at_all() {
    assert_eq!(
        refusal(
            vec![get_at("a", 99), nested(vec![put("b", 7, false)])],
            vec![]
        ),
        Some(Rejection::LeaseNotFound)
    );
    // No compare: the success branch runs; the failure branch's bad put
    // is never looked at.
    assert_eq!(
        refusal(vec![put("b", 0, false)], vec![put("c", 7, false)]),
        None
    );
}

/// Response headers as etcd 3.4 fills them (`newTxnResp`, `applyTxn`): the
/// outer txn's and each put's carry the revision; a nested txn's own
/// header is empty, its puts' carry the revision too.
#[test]
fn a_nested_txns_header_is_empty_and_its_puts_carry_the_revision() {
    use cairn_api::etcdserverpb::response_op::Response;
    use cairn_api::etcdserverpb::ResponseHeader;
    let (e, revs) = store();
    let req = TxnRequest {
        success: vec![put("b", 0, false), nested(vec![put("c", 0, false)])],
        ..Default::default()
    };
    let rev = revs.current + 1;
    let out = apply_txn(&e, &req, rev, revs, &NoLeases).unwrap();
    let resp = out.response;
    assert_eq!(resp.header.unwrap().revision, rev);
    let Some(Response::ResponsePut(p)) = &resp.responses[0].response else {
        panic!("{:?}", resp.responses[0]);
    };
    assert_eq!(p.header.as_ref().unwrap().revision, rev);
    let Some(Response::ResponseTxn(t)) = &resp.responses[1].response else {
        panic!("{:?}", resp.responses[1]);
    };
    assert_eq!(t.header, Some(ResponseHeader::default()));
    let Some(Response::ResponsePut(p)) = &t.responses[0].response else {
        panic!("{:?}", t.responses[0]);
    };
    assert_eq!(p.header.as_ref().unwrap().revision, rev);
}
