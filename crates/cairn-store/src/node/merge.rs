//! Merging a data region into its left neighbour, as the host drives it
//! (the commands and what each replica records:
//! `cairn_raft::state_machine::merge`; the design and its hazards:
//! `docs/architecture/merges.md`).
//!
//! [`Node::merge_regions`] runs the three steps:
//! 1. **Freeze** the right neighbour S (`PrepareMerge`, in S's log), planned
//!    against the target T's epoch as this node sees it.
//! 2. **Wait until every member's replica of S applied the freeze**
//!    ([`ForwardOp::AwaitFreeze`] to each voter): each replica of T then
//!    finds its own S frozen when it absorbs, and no replica of S still
//!    needs S's log (or a quorum of S) to get there — after the absorb,
//!    members stop their replicas of S one by one.
//! 3. **Absorb** (`CommitMerge`, in T's log), after T's leader settled at
//!    a timestamp taken now (`ReadIndexAfter`: it then stamps no write
//!    below a read S served before it froze). If any step fails, the merge
//!    is **abandoned**: T answers that it absorbed S after all, or moves its
//!    epoch so it never will, and only then S thaws (`RollbackMerge`).
//!
//! A member whose T applies the absorb stops its replica of S and forgets
//! its records (never its keys: T's now) — [`Node::unhost`]; one that
//! restarts before doing so forgets them instead of hosting S. A write
//! still waiting on S's leader there when it stops was appended after the
//! freeze, or not at all, so it changed nothing: it is told to route
//! again (to T), not that it timed out (`Proposer::absorbed`).
//!
//! A driver that dies between the steps leaves S frozen: the merge checker
//! of whichever member leads S then abandons the merge (see
//! `merge_check`), so no key stays unavailable for long.

use std::time::{Duration, Instant};

use cairn_raft::{Command, Freeze, Reply};

use crate::node::{Node, META_REGION};
use crate::remote::{self, ForwardOp};
use crate::{Error, Result};

/// How long every member gets to apply a freeze before the merge is
/// abandoned.
const FREEZE_WAIT: Duration = Duration::from_secs(3);

/// How long an absorbed replica's Raft gets to answer what it applied
/// before it stops (its proposals then answer `Timeout`, not "route
/// again").
const UNHOST_ANSWER_WAIT: Duration = Duration::from_secs(2);

impl Node {
    /// Merges the right neighbour of data region `target` into it; returns
    /// the absorbed region's ID. `EpochMismatch` if either region changed
    /// since this node saw it; any failure leaves both as they were.
    pub async fn merge_regions(&self, target: u64) -> Result<u64> {
        let (source, freeze) = self.freeze_for_merge(target).await?;
        match self.absorb(source, &freeze).await {
            Ok(()) => Ok(source),
            Err(e) => {
                tracing::info!(target, source, "merge abandoned: {e}");
                if self.abandon_merge(source, &freeze).await? {
                    return Ok(source);
                }
                Err(e)
            }
        }
    }

    /// Step 1 alone: freezes the right neighbour of data region `target`
    /// to merge into it; returns its ID and freeze. Called by itself (tests,
    /// the torture's nemesis), it is a merge whose driver died: the region
    /// stays frozen until the merge checker of its leader ends the merge.
    pub async fn freeze_for_merge(&self, target: u64) -> Result<(u64, Freeze)> {
        let t = self.region(target)?;
        let range = t.shared.range();
        if target == META_REGION || range.end.is_empty() || range.is_empty() {
            return Err(Error::Internal(format!(
                "region {target} has no right neighbour to merge"
            )));
        }
        let s = self.route(&range.end)?;
        let s_range = s.shared.range();
        if s_range.start != range.end {
            return Err(Error::EpochMismatch);
        }
        if range.start.is_empty() && s_range.end.is_empty() {
            // (The target's log refuses it too: see the state machine.)
            return Err(Error::Internal("the last two regions do not merge".into()));
        }
        let source = s.id;
        let prepare = Command::PrepareMerge {
            target,
            target_epoch: range.epoch,
            epoch: s_range.epoch,
        };
        let freeze = self
            .submit(source, ForwardOp::Plain(prepare))
            .await?
            .freeze()?;
        Ok((source, freeze))
    }

    /// Steps 2 and 3 alone, for a region [`Node::freeze_for_merge`] froze
    /// (tests): the target absorbs it, unless the merge was ended
    /// meanwhile (then an error, and nothing changes).
    pub async fn absorb_frozen(&self, source: u64, freeze: &Freeze) -> Result<()> {
        self.absorb(source, freeze).await
    }

    /// Steps 2 and 3 (see the module essay).
    async fn absorb(&self, source: u64, freeze: &Freeze) -> Result<()> {
        self.await_freeze_everywhere(source, freeze.range.epoch)
            .await?;
        // The source's leader may have served a read at a timestamp above
        // the freeze's revision (taken before the freeze applied). The
        // target's leader settles at a timestamp taken now — above every
        // such read — before it absorbs: it stamps no write at or below
        // it in its term (a new leader seeds its floor fresh), so no
        // write in the source's keys lands below a read already served.
        let now = self.read_timestamp().await?;
        self.submit(freeze.target, ForwardOp::ReadIndexAfter(now))
            .await?
            .read_index()?;
        let commit = Command::CommitMerge {
            source,
            freeze: freeze.clone(),
        };
        match self
            .submit(freeze.target, ForwardOp::Plain(commit))
            .await?
            .reply()?
        {
            Reply::Done | Reply::Absorbed => {}
            other => {
                return Err(Error::Internal(format!(
                    "merging region {source}: the target answered {other:?}"
                )))
            }
        }
        // Until this node stops hosting the source, routing here may still
        // see both.
        let deadline = Instant::now() + FREEZE_WAIT;
        while self.regions.get(source).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Ends a merge that did not happen, as T's log decides: `true` if T
    /// absorbed `source` after all; otherwise T's epoch has moved past the
    /// plan (no absorb of this freeze can apply any more) and `source`
    /// thaws.
    pub(crate) async fn abandon_merge(&self, source: u64, freeze: &Freeze) -> Result<bool> {
        let abandon = Command::AbandonMerge {
            source,
            target_epoch: freeze.target_epoch,
        };
        let absorbed = self
            .submit(freeze.target, ForwardOp::Plain(abandon))
            .await?
            .absorbed()?;
        if !absorbed {
            self.thaw(source, freeze).await?;
        }
        Ok(absorbed)
    }

    /// Thaws `source` frozen as `freeze`, once its target can never absorb
    /// it.
    pub(crate) async fn thaw(&self, source: u64, freeze: &Freeze) -> Result<()> {
        let rollback = Command::RollbackMerge {
            epoch: freeze.range.epoch,
        };
        self.submit(source, ForwardOp::Plain(rollback))
            .await?
            .applied()
    }

    /// Waits until every voter's replica of `source` has applied the freeze
    /// at `epoch` (`Timeout` past [`FREEZE_WAIT`]).
    async fn await_freeze_everywhere(&self, source: u64, epoch: u64) -> Result<()> {
        let s = self.region(source)?;
        let voters: Vec<u64> = s
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let asks = voters.into_iter().map(|peer| {
            let s = s.clone();
            async move {
                let ask = async {
                    if peer == self.id {
                        self.frozen_here(source, epoch).await
                    } else {
                        let op = ForwardOp::AwaitFreeze(epoch);
                        remote::forward(&self.pool, &s.raft, peer, source, &op)
                            .await?
                            .done()
                    }
                };
                tokio::time::timeout(FREEZE_WAIT, ask)
                    .await
                    .unwrap_or(Err(Error::Timeout))
            }
        });
        for answer in futures::future::join_all(asks).await {
            answer?;
        }
        Ok(())
    }

    /// Waits (bounded) until this node's replica of `source` has applied
    /// the freeze at `epoch` and the target is hosted here too, or this
    /// node already absorbed `source`. A member that missed the split
    /// bearing the target (caught up by a snapshot taken after it) hosts
    /// the source but not yet the target: absorbed elsewhere, its frozen
    /// source would keep the target's new keys from being adopted here —
    /// the keys of both then held by no region here, for good.
    pub(crate) async fn frozen_here(&self, source: u64, epoch: u64) -> Result<()> {
        let deadline = Instant::now() + FREEZE_WAIT;
        loop {
            let frozen = match self.regions.get(source) {
                Some(s) => s
                    .shared
                    .merge_frozen_into()
                    .is_some_and(|(e, target)| e == epoch && self.regions.get(target).is_some()),
                None => self.absorbed_here(source),
            };
            if frozen {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// True if a region hosted here has absorbed `region`.
    pub(crate) fn absorbed_here(&self, region: u64) -> bool {
        self.successor(region).is_some()
    }

    /// The region hosted here that absorbed `region` (directly, or by
    /// absorbing the region that had), if any.
    pub(crate) fn successor(&self, region: u64) -> Option<u64> {
        self.regions
            .all()
            .iter()
            .find(|r| {
                r.id != META_REGION
                    && r.shared
                        .with_applied(|a| a.merge.absorbed.contains(&region))
            })
            .map(|r| r.id)
    }

    /// Where what was for region `region` goes now: itself while hosted
    /// here, else the region that absorbed it (its outcomes of
    /// transactions live there now); `region` itself if neither is known
    /// here (the caller's submit then fails and it tries again later).
    pub(crate) fn live_region(&self, region: u64) -> u64 {
        if self.regions.get(region).is_some() {
            return region;
        }
        self.successor(region).unwrap_or(region)
    }

    /// Stops this node's replica of `region`, absorbed by a merge applied
    /// here, and forgets its records (not its keys).
    pub(crate) async fn unhost(&self, region: u64) -> Result<()> {
        let _one = self.hosting.lock().await;
        let Some(r) = self.regions.remove(region) else {
            return Ok(());
        };
        // Writes still waiting on this replica's leader get a clean "route
        // again" rather than a timeout once Raft stops: first every entry
        // the replica applied (the freeze among them) is answered —
        // openraft reports an index applied after sending its answers.
        let (frozen, applied) = r.shared.with_applied(|a| {
            (
                a.merge.frozen.is_some(),
                a.last_applied.map_or(0, |l| l.index),
            )
        });
        let answered = r
            .raft
            .wait(Some(UNHOST_ANSWER_WAIT))
            .applied_index_at_least(Some(applied), "absorbed region answers")
            .await;
        if frozen && answered.is_ok() {
            r.proposer.absorbed();
        }
        if let Err(e) = r.raft.shutdown().await {
            tracing::debug!(region, "stopping an absorbed region: {e}");
        }
        // Watchers of its keys regroup over the region that absorbed it.
        r.shared.retire();
        cairn_raft::forget_region(&*self.engine, region)?;
        tracing::info!(region, "absorbed by a merge: no longer hosted");
        Ok(())
    }
}
