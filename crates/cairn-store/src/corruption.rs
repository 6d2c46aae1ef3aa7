//! The corruption check, as etcd's `--experimental-corrupt-check-time`
//! runs it: every interval the data region's leader hashes its own key
//! history at its current revision (`HashKV`, see `cairn_mvcc::hash_kv`)
//! and asks every other member for its hash at that same revision over the
//! peer service (a member answers once it has applied that far, and only
//! if its data region holds the same keys — the same epoch: a split or
//! merge applied on one member and not yet on another is no corruption). Members
//! hashed over the same compaction must agree: they applied the same
//! entries. One that disagrees with the majority — or, when no hash has a
//! majority, with the leader, as etcd 3.4 decides — gets the `CORRUPT`
//! alarm, raised through Raft like `NOSPACE`.
//!
//! While `CORRUPT` is raised every member's state machine refuses writes,
//! compactions, lease grants and revokes with `etcdserver: corrupt
//! cluster` (`DataLoss`), as etcd's corrupt applier does; reads still
//! work, so the data can be inspected and backed up. An operator repairs
//! or replaces the member (restore it from a backup) and disarms the alarm.
//!
//! A member that does not answer in time is skipped for that round: the
//! check looks for members that disagree, not for members that are down.
//!
//! At start-up (etcd's `--experimental-initial-corrupt-check`) a member
//! compares its own hash with every reachable peer's at its own revision
//! before it serves clients, and refuses to start if one differs.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use cairn_mvcc::KvHash;
use cairn_raft::ALARM_CORRUPT as CORRUPT;

use crate::node::{Node, DATA_REGION};
use crate::remote::{self, ForwardOk, ForwardOp};
use crate::{Error, Result};

/// How long a member waits to apply the revision it is asked to hash.
const APPLY_WAIT: Duration = Duration::from_secs(5);

impl Node {
    /// Waits (at most [`APPLY_WAIT`]) until this member's first data
    /// region is at `epoch` or past it.
    pub(crate) async fn data_region_reaches_epoch(&self, epoch: u64) {
        let deadline = Instant::now() + APPLY_WAIT;
        while Instant::now() < deadline
            && self
                .region(DATA_REGION)
                .is_ok_and(|r| r.shared.range().epoch < epoch)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This member's hash at `revision`, once it has applied that far, and
    /// the data region's epoch it hashed.
    pub(crate) async fn hash_kv_once_applied(&self, revision: i64) -> Result<(KvHash, u64)> {
        let r = self.region(DATA_REGION)?;
        let deadline = Instant::now() + APPLY_WAIT;
        // Final up to `revision`: the resolved revision (a transaction
        // across regions may still commit below the current one).
        while r.shared.resolved() < revision {
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.hash_kv_in(revision).await
    }

    /// One round of the check (see the module essay), on the data region's
    /// leader only; returns the members found corrupt.
    pub async fn check_corruption(&self) -> Result<Vec<u64>> {
        let r = self.region(DATA_REGION)?;
        let voters: Vec<u64> = {
            let m = r.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(self.id) {
                return Ok(Vec::new());
            }
            m.membership_config.membership().voter_ids().collect()
        };
        let (mine, epoch) = self.hash_kv_in(r.shared.resolved()).await?;
        let mut hashes = vec![(self.id, mine.hash)];
        for peer in voters.iter().copied().filter(|&p| p != self.id) {
            let op = ForwardOp::HashKvAt {
                revision: mine.revision,
                epoch,
            };
            let answer = remote::forward(&self.pool, &r.raft, peer, DATA_REGION, &op).await;
            match answer.and_then(ForwardOk::hash) {
                // Only a hash over the same compaction is comparable.
                Ok((hash, _, compacted)) if compacted == mine.compacted => {
                    hashes.push((peer, hash))
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(peer, "corruption check: no hash: {e}"),
            }
        }
        let mut votes: HashMap<u32, usize> = HashMap::new();
        for &(_, h) in &hashes {
            *votes.entry(h).or_default() += 1;
        }
        let good = votes
            .iter()
            .find(|&(_, &n)| n * 2 > voters.len())
            .map_or(mine.hash, |(&h, _)| h);
        let corrupt: Vec<u64> = hashes
            .iter()
            .filter(|&&(_, h)| h != good)
            .map(|&(m, _)| m)
            .collect();
        let raised = self.alarms();
        for &member in &corrupt {
            tracing::error!(
                member = format_args!("{member:x}"),
                revision = mine.revision,
                "corruption check: this member's history differs from the cluster's"
            );
            if !raised.contains(&(member, CORRUPT)) {
                self.alarm(true, member, CORRUPT).await?;
            }
        }
        Ok(corrupt)
    }
}

impl Node {
    /// The start-up check (see the module essay): an error naming the first
    /// peer whose history differs from this member's at this member's
    /// revision. Peers that do not answer, or hashed over another
    /// compaction, are skipped.
    pub async fn initial_corruption_check(&self) -> Result<()> {
        let r = self.region(DATA_REGION)?;
        // Raft learns the membership (and so the peers' addresses) from its
        // log as it starts; a member of a new cluster has none until it is
        // initialized, and has nothing to compare then.
        let deadline = Instant::now() + APPLY_WAIT;
        let voters: Vec<u64> = loop {
            let voters: Vec<u64> = {
                let m = r.raft.metrics();
                let m = m.borrow();
                m.membership_config.membership().voter_ids().collect()
            };
            if !voters.is_empty() || Instant::now() >= deadline {
                break voters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (mine, epoch) = self.hash_kv_in(r.shared.resolved()).await?;
        for peer in voters.into_iter().filter(|&p| p != self.id) {
            let op = ForwardOp::HashKvAt {
                revision: mine.revision,
                epoch,
            };
            let ask = remote::forward(&self.pool, &r.raft, peer, DATA_REGION, &op);
            let answer = tokio::time::timeout(APPLY_WAIT + Duration::from_secs(1), ask).await;
            match answer.map(|a| a.and_then(ForwardOk::hash)) {
                Ok(Ok((hash, _, compacted))) if compacted == mine.compacted => {
                    if hash != mine.hash {
                        return Err(Error::Internal(format!(
                            "found data inconsistency with peers: member {peer:x} hashes revision {} as {hash}, this member as {}",
                            mine.revision, mine.hash
                        )));
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(peer, "initial corruption check: no hash: {e}"),
                Err(_) => tracing::warn!(peer, "initial corruption check: no answer"),
            }
        }
        Ok(())
    }
}

/// Runs [`Node::check_corruption`] every `every` until the node stops.
pub(crate) async fn check_every(node: Weak<Node>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(n) = node.upgrade() else {
            return;
        };
        if n.is_stopped() {
            return;
        }
        if let Err(e) = n.check_corruption().await {
            tracing::debug!("corruption check: {e}");
        }
    }
}
