//! Leases in the MVCC keyspace: records, the index of attached keys, and the
//! replicated operations on them (grant, revoke, checkpoint).
//!
//! A lease record holds its granted TTL and, once checkpointed, the remaining
//! TTL the leader last saw, so a new leader resumes the countdown instead of
//! restarting it for long leases (and never starts below it: no early
//! expiry). Expiry itself is not replicated state: only the region leader
//! counts down, and it proposes a revoke when a lease runs out.
//!
//! Attached keys are indexed under `Lease(id) → key`. The lease table —
//! records and index — lives in the region holding the first key (with
//! one region, the whole store). There every put and delete maintains the
//! index ([`crate::txn`]). A key outside it is indexed when a transaction
//! across regions puts it with a lease (its part in the table's region
//! records the attachment), but a later write there that detaches it (a
//! put with another lease or none, a delete) does not reach the table:
//! for such keys — and for those a merge brought into the table's region
//! since — the index is a superset, and the key's own record (its `lease`
//! field) is the truth ([`still_holding`]).
//! So a revoke deletes each indexed key only if it still holds the lease
//! ([`revoke_txn`]: a compare on its lease guards each delete), all in one
//! transaction at one revision, and then drops the lease's whole index.
//!
//! Where the superset would show, it is trimmed. A check of the keys on a
//! lease at apply (auth: the caller may write every key the lease has)
//! takes the table region's own keys by their records ([`attached_in`])
//! and every key outside as attached; when that refuses, the host looks
//! the outside keys up in their regions and drops the entries of those
//! detached ([`unindex`]). Each entry's value is the revision that
//! attached the key (empty for entries older than this rule), and an
//! entry goes only if it still has the value the host saw before its
//! look: a key attached again since has a newer entry, which stays.

use std::ops::Bound;

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{DeleteRangeRequest, RequestOp, TxnRequest};
use cairn_storage::keys::{self, Key, Space};
use cairn_storage::{Snapshot, WriteBatch};

use crate::txn::{apply_txn, LeaseView, TxnOutcome};
use crate::{Error, Rejection, Result, Revisions};

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The lease ID.
    pub id: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint, seconds (0: never checkpointed).
    pub remaining: i64,
}

impl LeaseRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.ttl.to_be_bytes());
        out.extend_from_slice(&self.remaining.to_be_bytes());
        out
    }

    fn decode(id: i64, b: &[u8]) -> Result<Self> {
        if b.len() != 16 {
            return Err(Error::Corrupt(format!("lease record of {} bytes", b.len())));
        }
        let ttl = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let remaining = i64::from_be_bytes(b[8..].try_into().expect("8 bytes"));
        Ok(Self { id, ttl, remaining })
    }
}

/// Leases as stored in a snapshot (or an overlay of one).
pub struct StoredLeases<'a>(pub &'a dyn Snapshot);

impl LeaseView for StoredLeases<'_> {
    fn exists(&self, id: i64) -> bool {
        matches!(get(self.0, id), Ok(Some(_)))
    }

    fn keeps_index(&self) -> bool {
        true
    }
}

/// One lease.
pub fn get(read: &dyn Snapshot, id: i64) -> Result<Option<LeaseRecord>> {
    match read.get(&Key::Lease { id }.encode())? {
        Some(b) => Ok(Some(LeaseRecord::decode(id, &b)?)),
        None => Ok(None),
    }
}

/// Every lease, by ID.
pub fn list(read: &dyn Snapshot) -> Result<Vec<LeaseRecord>> {
    let mut out = Vec::new();
    let space = Space::Lease as u8;
    for item in read.scan(
        Bound::Included(vec![space]),
        Bound::Excluded(vec![space + 1]),
        false,
    ) {
        let (k, v) = item?;
        if let (id, None) = keys::decode_lease(&k)? {
            out.push(LeaseRecord::decode(id, &v)?);
        }
    }
    Ok(out)
}

/// The keys indexed under a lease: every key attached to it, and (outside
/// the table's region) perhaps keys detached since (see the module essay).
pub fn attached_keys(read: &dyn Snapshot, id: i64) -> Result<Vec<Vec<u8>>> {
    Ok(indexed(read, id)?.into_iter().map(|(k, _)| k).collect())
}

/// The entries indexed under a lease: each key with the revision that
/// attached it (its entry's value; empty if written before revisions were
/// kept).
pub fn indexed(read: &dyn Snapshot, id: i64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let (lo, hi) = keys::lease_keys_range(id);
    let mut out = Vec::new();
    for item in read.scan(lo, hi, false) {
        let (k, v) = item?;
        if let (_, Some(key)) = keys::decode_lease(&k)? {
            out.push((key.to_vec(), v));
        }
    }
    Ok(out)
}

/// The keys on lease `id` as the region `[start, end)` holding the lease
/// table can tell at apply: of its own keys, those whose record holds the
/// lease; every key outside, as indexed (perhaps detached since: see the
/// module essay).
pub fn attached_in(read: &dyn Snapshot, id: i64, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>> {
    let inside = |k: &[u8]| k >= start && (end.is_empty() || k < end);
    let (own, outside): (Vec<_>, Vec<_>) = attached_keys(read, id)?
        .into_iter()
        .partition(|k| inside(k));
    let mut keys = still_holding(read, id, own)?;
    keys.extend(outside);
    Ok(keys)
}

/// Drops from lease `id`'s index each `(key, value)` of `detached` whose
/// entry still has that value: keys the host found holding another lease
/// or none, after reading the entries (an entry rewritten since attached
/// its key again, and stays).
pub fn unindex(
    read: &dyn Snapshot,
    id: i64,
    detached: &[(Vec<u8>, Vec<u8>)],
) -> Result<WriteBatch> {
    let mut b = WriteBatch::new();
    for (key, seen) in detached {
        let entry = Key::LeaseKey { id, key }.encode();
        if read.get(&entry)?.as_deref() == Some(seen.as_slice()) {
            b.delete(entry);
        }
    }
    Ok(b)
}

/// The value of an index entry: the revision that attached its key.
pub(crate) fn entry_value(rev: i64) -> Vec<u8> {
    rev.to_be_bytes().to_vec()
}

/// Of `keys`, those whose own newest record holds lease `id` (the index
/// is a superset wherever a key was detached where the table did not see
/// it, see the module essay).
pub fn still_holding(read: &dyn Snapshot, id: i64, keys: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if crate::record::latest(read, &key)?.is_some_and(|kv| kv.lease == id) {
            out.push(key);
        }
    }
    Ok(out)
}

/// Grants lease `id` with `ttl` seconds.
pub fn grant(read: &dyn Snapshot, id: i64, ttl: i64) -> Result<WriteBatch> {
    if get(read, id)?.is_some() {
        return Err(Rejection::LeaseExists.into());
    }
    let mut b = WriteBatch::new();
    b.put(
        Key::Lease { id }.encode(),
        LeaseRecord {
            id,
            ttl,
            remaining: 0,
        }
        .encode(),
    );
    Ok(b)
}

/// Records the remaining TTL of each `(id, remaining)` (leases that are
/// gone are skipped). A remaining of 0 (or below) clears the checkpoint: a
/// renewed lease counts down from its full TTL again, so a later leader
/// must not resume it from an older, smaller figure.
pub fn checkpoint(read: &dyn Snapshot, list: &[(i64, i64)]) -> Result<WriteBatch> {
    let mut b = WriteBatch::new();
    for &(id, remaining) in list {
        if let Some(mut rec) = get(read, id)? {
            rec.remaining = remaining.max(0);
            b.put(Key::Lease { id }.encode(), rec.encode());
        }
    }
    Ok(b)
}

/// Revokes lease `id` when every key indexed under it is in this store:
/// deletes those still attached in one transaction at revision `rev`
/// (events like any delete; no revision taken if none is), then the
/// lease and its index.
pub fn revoke(read: &dyn Snapshot, id: i64, rev: i64, revs: Revisions) -> Result<TxnOutcome> {
    if get(read, id)?.is_none() {
        return Err(Rejection::LeaseNotFound.into());
    }
    let req = revoke_txn(id, attached_keys(read, id)?);
    let mut out = apply_txn(read, &req, rev, revs, &StoredLeases(read))?;
    forget(read, id, &mut out.batch)?;
    Ok(out)
}

/// The transaction a revoke of lease `id` runs over `keys` (those indexed
/// under it): for each, a nested transaction deleting the key if it still
/// holds the lease. Across regions, the coordinator runs it like any
/// transaction, its lease claimed exclusively.
pub fn revoke_txn(id: i64, keys: Vec<Vec<u8>>) -> TxnRequest {
    use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use cairn_api::etcdserverpb::Compare;
    let guarded = |key: Vec<u8>| RequestOp {
        request: Some(Request::RequestTxn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Lease as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::Lease(id)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key,
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        })),
    };
    TxnRequest {
        success: keys.into_iter().map(guarded).collect(),
        ..Default::default()
    }
}

/// Adds to `batch` the deletion of lease `id` and of its whole index.
pub fn forget(read: &dyn Snapshot, id: i64, batch: &mut WriteBatch) -> Result<()> {
    for key in attached_keys(read, id)? {
        batch.delete(Key::LeaseKey { id, key: &key }.encode());
    }
    batch.delete(Key::Lease { id }.encode());
    Ok(())
}
