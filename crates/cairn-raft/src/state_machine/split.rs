//! Splitting a data region, and keeping every command inside its region.
//!
//! A split is one command in the parent's log ([`Command::Split`]). Every
//! replica that applies it, in the same engine batch as the parent's new
//! record:
//! - narrows the parent to `[start, at)` and bumps its epoch;
//! - writes the child's record — `[at, end)`, the same epoch, the parent's
//!   revisions, alarms and auth fence, the parent's voters, applied up to
//!   [`CHILD_INIT_INDEX`] — and marks the child's log purged up to there;
//! - gives the child's Raft the vote the split's entry was appended under
//!   (its term and leader, committed), if that leader is a voter.
//!
//! The child's keys are already in the engine (regions share one), so
//! nothing is copied: the child's Raft starts as if it had applied a log
//! up to [`CHILD_INIT_INDEX`] and taken a snapshot. A replica that never
//! applied the split (it caught up by a later snapshot of the parent) has
//! no child record; the child's leader sees its log empty, finds every
//! entry it lacks purged, and sends a snapshot — never entries that assume
//! data it does not have (TiKV's `RAFT_INIT_LOG_INDEX` rule). The host
//! creates such an empty replica only when no region it hosts overlaps the
//! child's range, so a parent that has not split yet here cannot keep
//! writing keys the child's snapshot owns.
//!
//! So the parent's leader starts the child as its leader (openraft brings
//! a node whose saved vote is its own committed one back as leader), and
//! the other replicas start as its followers, with nothing to elect.
//! Before, the child sat leaderless until an election timeout ran out
//! (300–600 ms), and every write to its keys, and the watch feed from it,
//! waited. It is safe because every replica that seeds the vote seeds the
//! same one (from the same committed entry) before its Raft starts: no
//! other replica can be elected in that term, and one that missed the
//! split starts with no vote and takes the leader's messages. The seed is
//! written in the batch that writes the child's record, so it is only ever
//! written again where the split is applied again, after a crash lost that
//! batch — and with it everything the child's Raft wrote since, which
//! came later in the same engine. The new leader has no entry of its own
//! term; openraft appends a blank one as it starts, which commits once a
//! follower has the child too.
//!
//! The lease table stays with the first region (the parent that keeps the
//! first key): a split moves keys, never leases or their index.
//!
//! Every command applied in a data region must stay inside its range: a
//! request routed by a directory older than a split is answered
//! [`Reply::WrongRegion`] with the region's range now, and nothing changes.

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::TxnRequest;

use cairn_storage::WriteBatch;
use openraft::{CommittedLeaderId, LogId, StoredMembership, Vote};

use super::{apply_key, Applied};
use crate::codec::encode;
use crate::log_store::LogStore;
use crate::types::{RegionRange, Reply};
use crate::NodeId;

/// Where a region born by a split starts its log: it has "applied" up to
/// here (the parent's data), and every earlier entry counts as purged.
pub const CHILD_INIT_INDEX: u64 = 5;

/// Applies `Split { at, child, epoch }` to the parent's record `state`,
/// adding the child's record and log start to `batch` — unless the child
/// is `recorded` here already: a replica that applies the split late (it
/// installed a snapshot of the parent from before it) may host the child
/// already, adopted from the directory and ahead of the split (the
/// snapshot install kept its keys: `newer_here`). Its record, log and vote
/// are its own; seeding them again would take it back to its first index.
pub(super) fn split(
    state: &mut Applied,
    at: Vec<u8>,
    child: u64,
    epoch: u64,
    recorded: bool,
    batch: &mut WriteBatch,
) -> crate::Result<Reply> {
    let range = &state.range;
    let inside = at.as_slice() > range.start.as_slice()
        && (range.end.is_empty() || at.as_slice() < range.end.as_slice());
    if epoch != range.epoch || !inside {
        return Ok(Reply::WrongRegion(range.clone()));
    }
    let epoch = range.epoch + 1;
    let init = LogId::new(CommittedLeaderId::new(0, 0), CHILD_INIT_INDEX);
    let born = Applied {
        last_applied: Some(init),
        membership: StoredMembership::new(Some(init), state.membership.membership().clone()),
        current_revision: state.current_revision,
        compacted_revision: state.compacted_revision,
        alarms: state.alarms.clone(),
        auth_fence: state.auth_fence,
        range: RegionRange {
            start: at.clone(),
            end: range.end.clone(),
            epoch,
        },
        ..Applied::default()
    };
    if !recorded {
        batch.put(apply_key(child), encode(&born)?);
        LogStore::seed_purged(batch, child, init)?;
    }
    state.range.end = at;
    state.range.epoch = epoch;
    Ok(Reply::Done)
}

/// Adds to `batch` region `child`'s first vote: that of `leader`, who
/// appended the split that bore it, committed — if `leader` is one of the
/// voters in `state` (the parent's, which the child starts with).
pub(super) fn seed_leader(
    batch: &mut WriteBatch,
    child: u64,
    leader: CommittedLeaderId<NodeId>,
    state: &Applied,
) -> crate::Result<()> {
    let voter = state
        .membership
        .membership()
        .voter_ids()
        .any(|id| id == leader.node_id);
    if voter {
        let vote = Vote::new_committed(leader.term, leader.node_id);
        LogStore::seed_vote(batch, child, vote)?;
    }
    Ok(())
}

/// True when every key and span `req` names (compares, ops, nested
/// transactions) lies in `range`.
pub fn txn_within(req: &TxnRequest, range: &RegionRange) -> bool {
    req.compare
        .iter()
        .all(|c| range.covers(&c.key, &c.range_end))
        && req
            .success
            .iter()
            .chain(&req.failure)
            .all(|op| match &op.request {
                Some(Request::RequestPut(p)) => range.contains(&p.key),
                Some(Request::RequestRange(r)) => range.covers(&r.key, &r.range_end),
                Some(Request::RequestDeleteRange(d)) => range.covers(&d.key, &d.range_end),
                Some(Request::RequestTxn(t)) => txn_within(t, range),
                None => true,
            })
}
