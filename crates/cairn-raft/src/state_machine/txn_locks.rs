//! Applying the commands of a transaction across regions (Percolator-style
//! two-phase commit; the lock logic is `cairn_mvcc::locks`): prewrite,
//! commit, rollback, settling the fate at the primary, forgetting it — and
//! refusing every other write that would touch a locked span.
//!
//! Each is a pure function of the region's record and engine view, so
//! every replica applies it identically.

use cairn_api::etcdserverpb::TxnRequest;
use cairn_mvcc::locks::{clip, footprint, Claim, KeySpan, LeaseClaims, Lock, LockRef, Outcome};
use cairn_mvcc::{lease, Rejection};
use cairn_storage::{Snapshot, WriteBatch};
use prost::Message;

use super::Applied;
use crate::types::{Command, Reply};

/// Locks `spans` and claims `leases` for transaction `start_ts` (see
/// `Command::Prewrite`). A prewrite of a transaction that holds its lock
/// here already is a retry (same `txn`: answered the same), or a revoke
/// naming the keys it was told of (`Reply::LeaseKeys`): the lock is
/// widened to them, keeping its floor.
#[allow(clippy::too_many_arguments)]
pub(super) fn prewrite(
    state: &mut Applied,
    start_ts: i64,
    primary: u64,
    regions: Vec<u64>,
    spans: Vec<KeySpan>,
    txn: Vec<u8>,
    leases: LeaseClaims,
    engine: &dyn Snapshot,
    term: u64,
) -> crate::Result<Reply> {
    if leases.decided_in != 0 && leases.decided_in != term {
        return Ok(Reply::Done); // a stale expiry: nothing changes
    }
    if spans.is_empty() && leases.is_empty() {
        return Ok(Reply::Invalid("a prewrite locking nothing".into()));
    }
    if !leases.is_empty() && !state.range.start.is_empty() {
        return Ok(Reply::Invalid(
            "a lease claimed outside the lease table's region".into(),
        ));
    }
    let range = &state.range;
    if spans
        .iter()
        .any(|s| clip(s, &range.start, &range.end).as_ref() != Some(s))
    {
        return Ok(Reply::WrongRegion(range.clone()));
    }
    if let Some(o) = state.locks.outcomes.get(&start_ts) {
        // Settled already (a resolver rolled it back before this arrived).
        return Ok(Reply::Outcome(Some(o.clone())));
    }
    let widened_from = match state.locks.held.get(&start_ts) {
        Some(l) if l.txn == txn => return Ok(Reply::Revision(l.floor)), // a retry
        Some(l) => Some(l.floor),
        None => None,
    };
    let Ok(req) = TxnRequest::decode(txn.as_slice()) else {
        return Ok(Reply::Invalid("undecodable transaction".into()));
    };
    if state.no_space() && cairn_mvcc::has_put(&req) {
        return Ok(Reply::Rejected(Rejection::NoSpace));
    }
    let claim = Claim { spans, leases };
    if let Some(other) = state.locks.conflict(&claim, Some(start_ts)) {
        return Ok(Reply::Locked(other));
    }
    // A revoke must name every key its leases index. It is claimed even if
    // it does not: from now on no key can join them, so the keys answered
    // are all they will have, and the coordinator widens to them.
    let mut indexed = Vec::new();
    for &id in &claim.leases.revoke {
        if lease::get(engine, id)?.is_none() {
            return Ok(Reply::Rejected(Rejection::LeaseNotFound));
        }
        indexed.extend(lease::attached_keys(engine, id)?);
    }
    let named = footprint(&req);
    let covered = |k: &Vec<u8>| {
        let key = cairn_mvcc::locks::etcd_span(k, &[]);
        named
            .iter()
            .any(|s| clip(&key, &s.0, &s.1).as_ref() == Some(&key))
    };
    let complete = indexed.iter().all(covered);
    // Widened, the lock keeps the higher of its floor and the revision
    // now (a key it adds may hold a version written since).
    let floor = widened_from.map_or(state.current_revision, |f| f.max(state.current_revision));
    state.locks.held.insert(
        start_ts,
        Lock {
            primary,
            regions,
            spans: claim.spans,
            floor,
            txn: txn.into(),
            leases: claim.leases,
        },
    );
    Ok(if complete {
        Reply::Revision(floor)
    } else {
        Reply::LeaseKeys(indexed)
    })
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
    events: &mut Vec<cairn_mvcc::Change>,
    term: u64,
) -> crate::Result<(WriteBatch, Reply)> {
    let Some(lock) = state.locks.held.get(&start_ts) else {
        let known = state.locks.outcomes.get(&start_ts).cloned();
        return Ok((WriteBatch::new(), Reply::Outcome(known)));
    };
    if lock.leases.decided_in != 0 && lock.leases.decided_in != term {
        // An expiry claimed in a leader term that is over: a later leader
        // may have renewed the lease since. Rolled back (the lease
        // table's region is always the primary of such a revoke).
        state.locks.held.remove(&start_ts);
        state.locks.outcomes.insert(start_ts, Outcome::RolledBack);
        return Ok((WriteBatch::new(), Reply::Outcome(Some(Outcome::RolledBack))));
    }
    if commit_ts <= lock.floor || commit_ts <= start_ts {
        // A commit timestamp is fetched, confirmed, after the start and
        // every prewrite: one at or below the floor or the start is a
        // coordinator's bug (and reads skip locks started at or above
        // their revision, `Locks::blocking_read`, trusting it is above the
        // start). Refuse, change nothing.
        return Ok((
            WriteBatch::new(),
            Reply::Invalid(format!(
                "commit timestamp {commit_ts} is not above the lock's floor {} and start {start_ts}",
                lock.floor
            )),
        ));
    }
    let req = match TxnRequest::decode(&lock.txn[..]) {
        Ok(r) => r,
        Err(e) => return Ok((WriteBatch::new(), Reply::Invalid(e.to_string()))),
    };
    let primary = lock.primary == region;
    // The commit that decides, after an alarm was raised here: refused as
    // etcd refuses a Txn at apply under CORRUPT, or one that puts under
    // NOSPACE; the lock stays (its coordinator rolls it back). A secondary
    // part of a decided transaction is never refused.
    if primary && state.corrupt() {
        return Ok((WriteBatch::new(), Reply::Rejected(Rejection::Corrupt)));
    }
    if primary && state.no_space() && cairn_mvcc::has_put(&req) {
        return Ok((WriteBatch::new(), Reply::Rejected(Rejection::NoSpace)));
    }
    if state.range.start.is_empty() {
        // The lease table is here: a key put with a lease anywhere is
        // attached only while the lease exists and no revoke claims it
        // (refused, the transaction rolls back and starts again).
        for id in cairn_mvcc::leases_put_along(&req, &path) {
            if let Some(revoke) = state.locks.revoking(id, start_ts) {
                return Ok((WriteBatch::new(), Reply::Locked(revoke)));
            }
            if lease::get(engine, id)?.is_none() {
                return Ok((WriteBatch::new(), Reply::Rejected(Rejection::LeaseNotFound)));
            }
        }
    }
    let within = (state.range.start.clone(), state.range.end.clone());
    let lease_table = state.range.start.is_empty();
    let revokes = lock.leases.revoke.clone();
    let regions = lock.regions.clone();
    let mut out = match cairn_mvcc::apply_txn_part(
        engine,
        &req,
        &path,
        commit_ts,
        state.revisions(),
        within,
        lease_table,
    ) {
        Ok(out) => out,
        Err(cairn_mvcc::Error::Rejected(r)) => {
            return Ok((WriteBatch::new(), Reply::Rejected(r)));
        }
        Err(e) => return Err(e.into()),
    };
    for id in revokes {
        // Its attached keys are deleted (in whichever region holds them,
        // at this revision); the lease and its index go here.
        lease::forget(engine, id, &mut out.batch)?;
    }
    state.locks.held.remove(&start_ts);
    state.current_revision = out.revisions.current;
    events.extend(out.events);
    let outcome = Outcome::Committed { commit_ts, path };
    if primary {
        state.locks.outcomes.insert(start_ts, outcome.clone());
        state.outcome_regions.insert(start_ts, regions);
    }
    Ok((out.batch, Reply::Outcome(Some(outcome))))
}

/// For a `CommitLocked` (maybe in its term), the leases its lock claims
/// here — puts onto them, or their revoke — so a checked commit checks the
/// keys on them as the prewrite did (keys attached since count); `None`
/// for any other command.
pub(super) fn leases_committed(state: &Applied, cmd: &Command) -> Option<Vec<i64>> {
    match cmd {
        Command::InTerm { cmd, .. } => leases_committed(state, cmd),
        Command::CommitLocked { start_ts, .. } => Some(
            state
                .locks
                .held
                .get(start_ts)
                .map(|l| {
                    l.leases
                        .attach
                        .iter()
                        .chain(&l.leases.revoke)
                        .copied()
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => None,
    }
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
    state.outcome_regions.remove(&start_ts);
    Reply::Done
}

/// The lock a single-region transaction would write or read under, or
/// whose revoke claims a lease it attaches keys to, if any.
pub(super) fn txn_conflict(state: &Applied, req: &TxnRequest) -> Option<LockRef> {
    if state.locks.is_empty() {
        return None;
    }
    let claim = Claim {
        spans: footprint(req),
        leases: LeaseClaims {
            attach: super::leases_put(req),
            ..LeaseClaims::default()
        },
    };
    state.locks.conflict(&claim, None)
}

/// The lock holding a key of lease `id` (a revoke would delete it), or a
/// claim of the lease, if any.
pub(super) fn lease_conflict(
    state: &Applied,
    engine: &dyn Snapshot,
    id: i64,
) -> crate::Result<Option<LockRef>> {
    if state.locks.is_empty() {
        return Ok(None);
    }
    let claim = Claim {
        spans: lease::attached_keys(engine, id)?
            .into_iter()
            .map(|k| cairn_mvcc::locks::etcd_span(&k, &[]))
            .collect(),
        leases: LeaseClaims {
            revoke: vec![id],
            ..LeaseClaims::default()
        },
    };
    Ok(state.locks.conflict(&claim, None))
}
