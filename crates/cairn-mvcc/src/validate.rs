//! Request validation, in etcd's order and with etcd's errors. The server
//! runs it before proposing; the state machine runs it again before applying.
//!
//! One check is the server's alone: a `RequestOp` with no request in it,
//! which etcd refuses as "key not found" ([`validate_txn_request`]). Entries
//! already in a log may hold one (accepted before the check existed), and
//! a replica must apply them as it did then, so the state machine keeps
//! the lenient [`validate_txn`]. So is [`normalize_compares`], which
//! rewrites what etcd reads differently from a literal reading.

use std::collections::HashSet;

use cairn_api::etcdserverpb::compare::{CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::range::Span;
use crate::{Error, Rejection, Result};

/// Request limits (flags on the server).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most compares, or ops per branch, in one txn (etcd `--max-txn-ops`).
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_txn_ops: 128 }
    }
}

/// Checks a `Range`.
pub fn validate_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::from(Rejection::EmptyKey));
    }
    SortOrder::try_from(r.sort_order).map_err(|_| Error::from(Rejection::InvalidSortOption))?;
    SortTarget::try_from(r.sort_target).map_err(|_| Error::from(Rejection::InvalidSortOption))?;
    Ok(())
}

/// Checks a `Put`.
pub fn validate_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::from(Rejection::EmptyKey));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::from(Rejection::ValueProvided));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::from(Rejection::LeaseProvided));
    }
    Ok(())
}

/// Checks a `DeleteRange`.
pub fn validate_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::from(Rejection::EmptyKey));
    }
    Ok(())
}

/// Checks a `Txn` as the state machine does: op counts, every nested
/// request, then duplicate writes; an op with no request passes.
pub fn validate_txn(r: &TxnRequest, limits: Limits) -> Result<()> {
    validate(r, limits, false)
}

/// Checks a `Txn` as it arrives, as etcd's API does: as [`validate_txn`],
/// and an op with no request in it (nested too) is "key not found"
/// (`InvalidArgument`), in its turn among the ops.
pub fn validate_txn_request(r: &TxnRequest, limits: Limits) -> Result<()> {
    validate(r, limits, true)
}

fn validate(r: &TxnRequest, limits: Limits, refuse_empty: bool) -> Result<()> {
    check_txn(r, limits.max_txn_ops, refuse_empty)?;
    check_writes(&r.success)?;
    check_writes(&r.failure)?;
    Ok(())
}

fn check_txn(r: &TxnRequest, max_ops: usize, refuse_empty: bool) -> Result<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(Error::from(Rejection::TooManyOps));
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::from(Rejection::EmptyKey));
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - opc, refuse_empty)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize, refuse_empty: bool) -> Result<()> {
    match &op.request {
        Some(Request::RequestRange(r)) => validate_range(r),
        Some(Request::RequestPut(p)) => validate_put(p),
        Some(Request::RequestDeleteRange(d)) => validate_delete(d),
        Some(Request::RequestTxn(t)) => check_txn(t, max_ops, refuse_empty),
        None if refuse_empty => Err(Error::from(Rejection::KeyNotFound)),
        None => Ok(()),
    }
}

/// Makes every compare of `r` (nested txns' too) read its value from the
/// field its target names, as etcd's `compareKV` does: a value in another
/// field of the union counts as zero (an empty value for `VALUE`). Done to
/// a request before it is proposed, so every replica, of any version,
/// evaluates what etcd would.
pub fn normalize_compares(r: &mut TxnRequest) {
    for c in &mut r.compare {
        let matches = matches!(
            (CompareTarget::try_from(c.target), &c.target_union),
            (Ok(CompareTarget::Version), Some(TargetUnion::Version(_)))
                | (
                    Ok(CompareTarget::Create),
                    Some(TargetUnion::CreateRevision(_))
                )
                | (Ok(CompareTarget::Mod), Some(TargetUnion::ModRevision(_)))
                | (Ok(CompareTarget::Value), Some(TargetUnion::Value(_)))
                | (Ok(CompareTarget::Lease), Some(TargetUnion::Lease(_)))
                | (_, None)
        );
        if !matches {
            c.target_union = None;
        }
    }
    for op in r.success.iter_mut().chain(&mut r.failure) {
        if let Some(Request::RequestTxn(t)) = &mut op.request {
            normalize_compares(t);
        }
    }
}

/// Puts and deletes of one branch, including nested txns' branches.
struct Writes {
    puts: HashSet<Vec<u8>>,
    dels: Vec<Span>,
}

impl Writes {
    fn deleted(&self, key: &[u8]) -> bool {
        self.dels.iter().any(|s| s.contains(key))
    }
}

/// etcd's rule: within one branch, no key may be put twice or put and
/// deleted; the then/else branches of a nested txn may put the same key
/// (only one of them runs).
fn check_writes(ops: &[RequestOp]) -> Result<Writes> {
    let mut w = Writes {
        puts: HashSet::new(),
        dels: Vec::new(),
    };
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            w.dels.push(Span::new(&d.key, &d.range_end));
        }
    }
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let then = check_writes(&t.success)?;
        let els = check_writes(&t.failure)?;
        for k in &then.puts {
            if w.puts.contains(k) || w.deleted(k) {
                return Err(Error::from(Rejection::DuplicateKey));
            }
            w.puts.insert(k.clone());
        }
        for k in &els.puts {
            if (w.puts.contains(k) && !then.puts.contains(k)) || w.deleted(k) {
                return Err(Error::from(Rejection::DuplicateKey));
            }
            w.puts.insert(k.clone());
        }
        w.dels.extend(then.dels);
        w.dels.extend(els.dels);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if w.puts.contains(&p.key) || w.deleted(&p.key) {
            return Err(Error::from(Rejection::DuplicateKey));
        }
        w.puts.insert(p.key.clone());
    }
    Ok(w)
}
