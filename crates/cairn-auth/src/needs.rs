//! What each etcd request needs, as etcd's auth applier checks it:
//! a range read needs READ on its range; a put WRITE on its key (and READ
//! with `prev_kv`); a delete WRITE on its range (and READ with `prev_kv`);
//! a Txn READ on every compare's key or range, and the needs of every op
//! in both branches, recursively (etcd checks both branches, whichever
//! runs).

use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

use crate::{Need, Needs, PermKind};

fn need(kind: PermKind, key: &[u8], end: &[u8]) -> Need {
    Need {
        kind,
        key: key.to_vec(),
        end: end.to_vec(),
    }
}

/// A Range.
pub fn range(r: &RangeRequest) -> Needs {
    Needs::Keys(vec![need(PermKind::Read, &r.key, &r.range_end)])
}

/// A Put.
pub fn put(p: &PutRequest) -> Needs {
    let mut list = Vec::new();
    put_into(p, &mut list);
    Needs::Keys(list)
}

/// A DeleteRange.
pub fn delete(d: &DeleteRangeRequest) -> Needs {
    let mut list = Vec::new();
    delete_into(d, &mut list);
    Needs::Keys(list)
}

/// A Txn: every compare and every op of both branches, nested Txns too.
pub fn txn(t: &TxnRequest) -> Needs {
    let mut list = Vec::new();
    txn_into(t, &mut list);
    Needs::Keys(list)
}

/// A watch on `[key, end)`.
pub fn watch(key: &[u8], end: &[u8]) -> Needs {
    Needs::Keys(vec![need(PermKind::Read, key, end)])
}

/// Read and write on every key under `prefix` (a lock's or an
/// election's contenders: a contender writes its key and reads the
/// others').
pub fn prefix(prefix: &[u8], end: &[u8]) -> Needs {
    Needs::Keys(vec![
        need(PermKind::Read, prefix, end),
        need(PermKind::Write, prefix, end),
    ])
}

fn put_into(p: &PutRequest, list: &mut Vec<Need>) {
    list.push(need(PermKind::Write, &p.key, &[]));
    if p.prev_kv {
        list.push(need(PermKind::Read, &p.key, &[]));
    }
}

fn delete_into(d: &DeleteRangeRequest, list: &mut Vec<Need>) {
    list.push(need(PermKind::Write, &d.key, &d.range_end));
    if d.prev_kv {
        list.push(need(PermKind::Read, &d.key, &d.range_end));
    }
}

fn txn_into(t: &TxnRequest, list: &mut Vec<Need>) {
    for c in &t.compare {
        list.push(need(PermKind::Read, &c.key, &c.range_end));
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => list.push(need(PermKind::Read, &r.key, &r.range_end)),
            Some(Op::RequestPut(p)) => put_into(p, list),
            Some(Op::RequestDeleteRange(d)) => delete_into(d, list),
            Some(Op::RequestTxn(t)) => txn_into(t, list),
            None => {}
        }
    }
}
