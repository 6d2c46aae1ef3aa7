//! Applying the commands of a transaction across regions (Percolator-style
//! two-phase commit; the lock logic is `cairn_mvcc::locks`): prewrite,
//! commit, rollback, settling the fate at the primary, forgetting it — and
//! refusing every other write that would touch a locked span.
//!
//! Each is a pure function of the region's record and engine view, so
//! every replica applies it identically.

use cairn_api::etcdserverpb::TxnRequest;
use cairn_api::mvccpb::Event;
use cairn_mvcc::locks::{clip, footprint, KeySpan, Lock, LockRef, Outcome};
use cairn_mvcc::{lease, Rejection};
use cairn_storage::{Snapshot, WriteBatch};
use prost::Message;

use super::Applied;
use crate::types::Reply;

/// Locks `spans` for transaction `start_ts` (see `Command::Prewrite`).
pub(super) fn prewrite(
    state: &mut Applied,
    start_ts: i64,
    primary: u64,
    regions: Vec<u64>,
    spans: Vec<KeySpan>,
    txn: Vec<u8>,
) -> Reply {
    if spans.is_empty() {
        return Reply::Invalid("a prewrite locking nothing".into());
    }
    let range = &state.range;
    if spans
        .iter()
        .any(|s| clip(s, &range.start, &range.end).as_ref() != Some(s))
    {
        return Reply::WrongRegion(range.clone());
    }
    if let Some(o) = state.locks.outcomes.get(&start_ts) {
        // Settled already (a resolver rolled it back before this arrived).
        return Reply::Outcome(Some(o.clone()));
    }
    if let Some(l) = state.locks.held.get(&start_ts) {
        return Reply::Revision(l.floor); // a retried prewrite
    }
    let Ok(req) = TxnRequest::decode(txn.as_slice()) else {
        return Reply::Invalid("undecodable transaction".into());
    };
    if state.no_space() && cairn_mvcc::has_put(&req) {
        return Reply::Rejected(Rejection::NoSpace);
    }
    if let Some(other) = state.locks.conflict(&spans, None) {
        return Reply::Locked(other);
    }
    let floor = state.current_revision;
    state.locks.held.insert(
        start_ts,
        Lock {
            primary,
            regions,
            spans,
            floor,
            txn,
        },
    );
    Reply::Revision(floor)
}

/// Commits this region's part of transaction `start_ts` (see
/// `Command::CommitLocked`); `region` is this region's ID.
#[allow(clippy::too_many_arguments)]
pub(super) fn commit(
    state: &mut Applied,
    region: u64,
    start_ts: i64,
    commit_ts: i64,
    path: Vec<bool>,
    engine: &dyn Snapshot,
    events: &mut Vec<(i64, Event)>,
) -> crate::Result<(WriteBatch, Reply)> {
    let Some(lock) = state.locks.held.get(&start_ts) else {
        let known = state.locks.outcomes.get(&start_ts).cloned();
        return Ok((WriteBatch::new(), Reply::Outcome(known)));
    };
    if commit_ts <= lock.floor {
        // A commit timestamp is fetched after every prewrite: one at or
        // below the floor is a coordinator's bug. Refuse, change nothing.
        return Ok((
            WriteBatch::new(),
            Reply::Invalid(format!(
                "commit timestamp {commit_ts} is not above the lock's floor {}",
                lock.floor
            )),
        ));
    }
    let req = match TxnRequest::decode(lock.txn.as_slice()) {
        Ok(r) => r,
        Err(e) => return Ok((WriteBatch::new(), Reply::Invalid(e.to_string()))),
    };
    let within = (state.range.start.clone(), state.range.end.clone());
    let out =
        match cairn_mvcc::apply_txn_part(engine, &req, &path, commit_ts, state.revisions(), within)
        {
            Ok(out) => out,
            Err(cairn_mvcc::Error::Rejected(r)) => {
                return Ok((WriteBatch::new(), Reply::Rejected(r)));
            }
            Err(e) => return Err(e.into()),
        };
    let primary = lock.primary == region;
    state.locks.held.remove(&start_ts);
    state.current_revision = out.revisions.current;
    let mut part = out.events;
    part.sort_by(|a, b| super::event_key(a).cmp(super::event_key(b)));
    events.extend(part.into_iter().map(|e| (commit_ts, e)));
    let outcome = Outcome::Committed { commit_ts, path };
    if primary {
        state.locks.outcomes.insert(start_ts, outcome.clone());
    }
    Ok((out.batch, Reply::Outcome(Some(outcome))))
}

/// Drops a secondary lock of transaction `start_ts`.
pub(super) fn rollback(state: &mut Applied, start_ts: i64) -> Reply {
    state.locks.held.remove(&start_ts);
    Reply::Done
}

/// Settles transaction `start_ts`'s fate at its primary: its outcome if
/// decided, else a rollback, recorded.
pub(super) fn resolve_primary(state: &mut Applied, start_ts: i64) -> Reply {
    if let Some(o) = state.locks.outcomes.get(&start_ts) {
        return Reply::Outcome(Some(o.clone()));
    }
    if state.locks.held.remove(&start_ts).is_none() {
        // Never locked here (a prewrite still on its way would lock with
        // no secondary behind it: the sweeper rolls that back), or
        // finished and forgotten. Nothing to record.
        return Reply::Outcome(None);
    }
    state.locks.outcomes.insert(start_ts, Outcome::RolledBack);
    Reply::Outcome(Some(Outcome::RolledBack))
}

/// Forgets transaction `start_ts`'s outcome.
pub(super) fn forget(state: &mut Applied, start_ts: i64) -> Reply {
    state.locks.outcomes.remove(&start_ts);
    Reply::Done
}

/// The lock a single-region transaction would write or read under, if any.
pub(super) fn txn_conflict(state: &Applied, req: &TxnRequest) -> Option<LockRef> {
    if state.locks.is_empty() {
        return None;
    }
    state.locks.conflict(&footprint(req), None)
}

/// The lock holding a key of lease `id` (a revoke would delete it), if any.
pub(super) fn lease_conflict(
    state: &Applied,
    engine: &dyn Snapshot,
    id: i64,
) -> crate::Result<Option<LockRef>> {
    if state.locks.is_empty() {
        return Ok(None);
    }
    let spans: Vec<KeySpan> = lease::attached_keys(engine, id)?
        .into_iter()
        .map(|k| cairn_mvcc::locks::etcd_span(&k, &[]))
        .collect();
    Ok(state.locks.conflict(&spans, None))
}
