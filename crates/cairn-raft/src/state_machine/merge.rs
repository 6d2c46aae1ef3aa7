//! Merging a data region S into its left neighbour T: the state each
//! region records, and the four commands that move it (the design and its
//! hazards: `docs/architecture/merges.md`).
//!
//! Every node hosts a replica of every region over one shared engine, so a
//! merge moves no data: S's keys are already where T reads. Two logs take
//! part and **T's log decides**:
//!
//! 1. [`Command::PrepareMerge`] in S *freezes* it: S records a [`Freeze`]
//!    — the target T and the epoch T had when the merge was planned, S's
//!    keys, revisions, auth fence and the outcomes of transactions whose
//!    primary lock was in S (resolvers of their other parts still ask for
//!    them) as they are now — its range becomes
//!    empty (every request routed to it is answered `WrongRegion`; nothing
//!    routes there), its epoch moves, and from then on it refuses every
//!    command that would change its keys, revisions or outcomes. Refused
//!    while S holds locks of transactions across regions, and for the
//!    first region (the lease table never moves).
//! 2. [`Command::CommitMerge`] in T, carrying the freeze, *absorbs* S:
//!    only while T is still at the planned epoch, still ends where S
//!    starts, and holds no lock (a lock's commit writes within the region's
//!    range as it is then). T widens to S's end, takes the higher of the
//!    two current and compacted revisions and auth fences (so T's resolved
//!    revision never goes below S's last one in the log; a close S's
//!    replicas took beside it is not carried over, and T's leader seeds
//!    its proposer's floor again once the epoch moves, so no later write
//!    lands below it), S's outcomes (the host sends
//!    what it would have asked S to the region that absorbed it), its epoch
//!    moves above both, and S joins T's `absorbed` set (with every region S
//!    had absorbed).
//!    Each replica first waits until its own replica of S has applied the
//!    freeze (the host checks every member applied it before proposing, so
//!    the wait is normally nil): the keys in the engine are then S's final
//!    ones. The freeze and the absorb are written synced.
//! 3. [`Command::AbandonMerge`] in T ends a merge that did not happen: it
//!    answers [`Reply::Absorbed`] if T absorbed S, and otherwise moves T's
//!    epoch past the planned one, so no `CommitMerge` of that plan can ever
//!    apply (epochs only grow). Only after that answer does
//!    [`Command::RollbackMerge`] thaw S (its range back, its epoch moved).
//!    Never on a timeout alone: a `CommitMerge` may be on its way.
//!
//! A frozen region refuses every command that changes its keys, revisions
//! or outcomes; it still takes auth fences and alarms (a rollback must not
//! lose them) and answers lock resolution (it holds no lock, so a rollback
//! of one or a primary's outcome asked for change nothing). Its snapshots carry its keys as frozen (the share is
//! the freeze's range), and a replica already frozen at the same freeze
//! installs only the snapshot's record: T may have written those keys
//! since it absorbed S here.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Applied;
use crate::types::{Command, RegionRange, Reply};

/// A region's part in merges (last in its record).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeState {
    /// Set while the region is frozen to merge into its left neighbour.
    pub frozen: Option<Freeze>,
    /// Data regions: every region this one absorbed (and those absorbed
    /// before them). Meta region: every region dropped from the directory.
    pub absorbed: BTreeSet<u64>,
}

/// A frozen region as its target absorbs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// The region absorbing this one (its left neighbour).
    pub target: u64,
    /// The target's epoch when the merge was planned.
    pub target_epoch: u64,
    /// The frozen region's keys, with its epoch after the freeze (which
    /// names this freeze: every freeze moves the epoch).
    pub range: RegionRange,
    /// The frozen region's newest revision.
    pub current_revision: i64,
    /// Its compaction revision.
    pub compacted_revision: i64,
    /// Its auth fence.
    pub auth_fence: u64,
    /// The regions it absorbed itself.
    pub absorbed: BTreeSet<u64>,
    /// Outcomes of transactions whose primary lock was in it, not yet
    /// forgotten.
    pub outcomes: std::collections::BTreeMap<i64, cairn_mvcc::locks::Outcome>,
}

/// True for a command a frozen region still applies (see the module
/// essay); wrappers pass, and what they wrap is looked at in turn.
pub(super) fn allowed_while_frozen(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Batch(_)
            | Command::Checked { .. }
            | Command::CheckedLease { .. }
            | Command::InTerm { .. }
            | Command::AuthFence { .. }
            | Command::Alarm { .. }
            | Command::PrepareMerge { .. }
            | Command::AbandonMerge { .. }
            | Command::RollbackMerge { .. }
            | Command::RollbackLocked { .. }
            | Command::ResolvePrimary { .. }
    )
}

/// `PrepareMerge` in the source region (`state`).
pub(super) fn prepare(state: &mut Applied, target: u64, target_epoch: u64, epoch: u64) -> Reply {
    if let Some(f) = &state.merge.frozen {
        // Asked again (a retried proposal): the same freeze.
        if f.target == target && f.target_epoch == target_epoch {
            return Reply::Frozen(Box::new(f.clone()));
        }
        return Reply::WrongRegion(state.range.clone());
    }
    if state.range.start.is_empty() {
        return Reply::Invalid("the first region is never merged away".into());
    }
    if epoch != state.range.epoch {
        return Reply::WrongRegion(state.range.clone());
    }
    if let Some(lock) = state.locks.any() {
        return Reply::Locked(lock);
    }
    let range = RegionRange {
        epoch: state.range.epoch + 1,
        ..state.range.clone()
    };
    let freeze = Freeze {
        target,
        target_epoch,
        range: range.clone(),
        current_revision: state.current_revision,
        compacted_revision: state.compacted_revision,
        auth_fence: state.auth_fence,
        absorbed: state.merge.absorbed.clone(),
        outcomes: state.locks.outcomes.clone(),
    };
    state.range = RegionRange {
        end: range.start.clone(),
        ..range
    };
    state.merge.frozen = Some(freeze.clone());
    Reply::Frozen(Box::new(freeze))
}

/// Whether target `state` absorbs `source` frozen as `freeze` now: `Ok`,
/// or the reply refusing it (nothing changes).
pub(super) fn commit_check(
    state: &Applied,
    region: u64,
    source: u64,
    freeze: &Freeze,
) -> Result<(), Reply> {
    if state.merge.absorbed.contains(&source) {
        return Err(Reply::Absorbed);
    }
    let range = &state.range;
    // The freeze names its target: only that region absorbs it, whatever
    // routed the command here.
    let planned = freeze.target == region
        && state.merge.frozen.is_none()
        && range.epoch == freeze.target_epoch
        && !range.end.is_empty()
        && range.end == freeze.range.start;
    if !planned {
        return Err(Reply::WrongRegion(range.clone()));
    }
    if range.start.is_empty() && freeze.range.end.is_empty() {
        // The last two regions stay two: a store that split keeps the
        // rules of several regions (revisions from the TSO, stale stamps
        // refused), or an answer could go below one given before.
        return Err(Reply::Invalid("the last two regions do not merge".into()));
    }
    if let Some(lock) = state.locks.any() {
        return Err(Reply::Locked(lock));
    }
    Ok(())
}

/// `CommitMerge` in the target region (`state`), once [`commit_check`]
/// passed and this replica of `source` applied the freeze.
pub(super) fn commit(state: &mut Applied, source: u64, freeze: Freeze) -> Reply {
    state.range.end = freeze.range.end;
    state.range.epoch = state.range.epoch.max(freeze.range.epoch) + 1;
    state.current_revision = state.current_revision.max(freeze.current_revision);
    state.compacted_revision = state.compacted_revision.max(freeze.compacted_revision);
    state.auth_fence = state.auth_fence.max(freeze.auth_fence);
    state.merge.absorbed.insert(source);
    state.merge.absorbed.extend(freeze.absorbed);
    state.locks.outcomes.extend(freeze.outcomes);
    Reply::Done
}

/// `AbandonMerge` in the target region (`state`).
pub(super) fn abandon(state: &mut Applied, source: u64, target_epoch: u64) -> Reply {
    if state.merge.absorbed.contains(&source) {
        return Reply::Absorbed;
    }
    // A frozen target applies no `CommitMerge` (nor after: it is absorbed
    // or thaws at a new epoch).
    if state.merge.frozen.is_none() && state.range.epoch == target_epoch {
        state.range.epoch += 1;
    }
    Reply::Done
}

/// `RollbackMerge` in the source region (`state`): thaws the freeze at
/// `epoch`, if that is the one standing. True if it thawed.
pub(super) fn rollback(state: &mut Applied, epoch: u64) -> bool {
    match &state.merge.frozen {
        Some(f) if f.range.epoch == epoch => {
            state.range = RegionRange {
                epoch: epoch + 1,
                ..f.range.clone()
            };
            state.merge.frozen = None;
            true
        }
        _ => false,
    }
}
