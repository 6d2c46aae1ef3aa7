//! The lease index outside the lease table's region: a superset that the
//! check at apply reads conservatively (`attached_in`) and the host trims
//! (`unindex`), never dropping a key attached again since it looked.

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use cairn_mvcc::lease::{attached_in, grant, indexed, unindex};
use cairn_mvcc::{apply_txn_part, Revisions};
use cairn_storage::{Durability, Engine, MemoryEngine};

const LEASE: i64 = 7;

/// The table region's part (keys `["", "m")`) of a transaction putting
/// `key` with the lease at `rev`.
fn attach_in_table(e: &MemoryEngine, key: &str, rev: i64) {
    attach_within(e, key, rev, b"m");
}

fn attach_within(e: &MemoryEngine, key: &str, rev: i64, table_end: &[u8]) {
    let req = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                lease: LEASE,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let revs = Revisions {
        current: rev - 1,
        compacted: 0,
    };
    let within = (Vec::new(), table_end.to_vec());
    let out = apply_txn_part(e, &req, &[true], rev, revs, within, true).unwrap();
    e.write(out.batch, Durability::Buffered).unwrap();
}

fn table() -> MemoryEngine {
    let e = MemoryEngine::new();
    e.write(grant(&e, LEASE, 60).unwrap(), Durability::Buffered)
        .unwrap();
    e
}

#[test]
fn a_key_outside_counts_as_attached_until_trimmed() {
    let e = table();
    attach_in_table(&e, "x", 10);
    // Its region is elsewhere: the table cannot tell it was detached.
    assert_eq!(attached_in(&e, LEASE, b"", b"m").unwrap(), [b"x".to_vec()]);
    let seen = indexed(&e, LEASE).unwrap();
    assert_eq!(seen, [(b"x".to_vec(), 10i64.to_be_bytes().to_vec())]);
    e.write(unindex(&e, LEASE, &seen).unwrap(), Durability::Buffered)
        .unwrap();
    assert!(attached_in(&e, LEASE, b"", b"m").unwrap().is_empty());
    assert!(indexed(&e, LEASE).unwrap().is_empty());
}

#[test]
fn a_key_attached_again_after_the_look_stays_indexed() {
    let e = table();
    attach_in_table(&e, "x", 10);
    let seen = indexed(&e, LEASE).unwrap();
    // Detached, looked up, then attached again before the trim applies.
    attach_in_table(&e, "x", 20);
    e.write(unindex(&e, LEASE, &seen).unwrap(), Durability::Buffered)
        .unwrap();
    assert_eq!(attached_in(&e, LEASE, b"", b"m").unwrap(), [b"x".to_vec()]);
    assert_eq!(
        indexed(&e, LEASE).unwrap(),
        [(b"x".to_vec(), 20i64.to_be_bytes().to_vec())]
    );
}

#[test]
fn the_tables_own_keys_count_by_their_records() {
    let e = table();
    // Attached while "b" was outside the table (`["", "a")`), detached
    // there, then absorbed by a merge: now inside, with no record here
    // holding the lease.
    attach_within(&e, "b", 10, b"a");
    assert_eq!(attached_in(&e, LEASE, b"", b"a").unwrap(), [b"b".to_vec()]);
    assert!(attached_in(&e, LEASE, b"", b"m").unwrap().is_empty());
    // A key of its own that holds the lease counts.
    attach_in_table(&e, "c", 11);
    assert_eq!(attached_in(&e, LEASE, b"", b"m").unwrap(), [b"c".to_vec()]);
}
