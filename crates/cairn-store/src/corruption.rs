//! The corruption check, as etcd's `--experimental-corrupt-check-time`
//! runs it: every interval the first data region's leader hashes the
//! whole store's key history at one revision (`HashKV` over every region,
//! `node::store_hash`) and asks every other member for its hash at that
//! same revision over the peer service (a member answers once its regions
//! hold everything at or below it). With one region the revision is the
//! one the leader's replica resolved; with several, a read timestamp, each
//! member's regions caught up to it through their leaders (an idle
//! region's replica may have resolved only its last write). Hashes are
//! compared only between members with the same compaction map (a
//! compaction applied in a region on one member and not yet on another
//! leaves them different histories); where the regions' boundaries are
//! does not matter (a split or merge applied on one member and not yet on
//! another hashes the same keys). Members hashed alike must agree: they
//! applied the same entries. One that disagrees with the majority — or,
//! when no hash has a majority, with the leader, as etcd 3.4 decides —
//! gets the `CORRUPT` alarm, raised through Raft like `NOSPACE`.
//!
//! While `CORRUPT` is raised every member's state machine refuses writes,
//! compactions, lease grants and revokes with `etcdserver: corrupt
//! cluster` (`DataLoss`), as etcd's corrupt applier does; reads still
//! work, so the data can be inspected and backed up. An operator repairs
//! or replaces the member (restore it from a backup) and disarms the alarm.
//!
//! A member that does not answer in time is skipped for that round: the
//! check looks for members that disagree, not for members that are down.
//! So is one of the previous version (it does not know the ask).
//!
//! At start-up (etcd's `--experimental-initial-corrupt-check`) a member
//! compares its own hash with every reachable peer's at the revision all
//! its regions have resolved before it serves clients, and refuses to
//! start if one differs.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use cairn_raft::ALARM_CORRUPT as CORRUPT;

use crate::node::{CatchUp, Node, StoreHash, DATA_REGION};
use crate::remote::{self, ForwardOk, ForwardOp};
use crate::{Error, Result};

/// How long the start-up check waits for a peer's hash.
const PEER_WAIT: Duration = Duration::from_secs(6);

impl Node {
    /// One round of the check (see the module essay), on the first data
    /// region's leader only; returns the members found corrupt.
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
        let (at, catch_up) = self.hash_point().await?;
        let mine = self.store_hash(at, at, catch_up).await?;
        let mut hashes = vec![(self.id, mine.hash.hash)];
        for peer in voters.iter().copied().filter(|&p| p != self.id) {
            match self.peer_store_hash(peer, at, catch_up).await {
                // Only a hash over the same compactions is comparable.
                Ok(theirs) if theirs.compactions == mine.compactions => {
                    hashes.push((peer, theirs.hash.hash))
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(peer, "corruption check: no hash: {e}"),
            }
        }
        cairn_raft::metrics::CORRUPTION_HASHES_COMPARED.inc_by(hashes.len() as u64 - 1);
        let mut votes: HashMap<u32, usize> = HashMap::new();
        for &(_, h) in &hashes {
            *votes.entry(h).or_default() += 1;
        }
        let good = votes
            .iter()
            .find(|&(_, &n)| n * 2 > voters.len())
            .map_or(mine.hash.hash, |(&h, _)| h);
        let corrupt: Vec<u64> = hashes
            .iter()
            .filter(|&&(_, h)| h != good)
            .map(|&(m, _)| m)
            .collect();
        let raised = self.alarms();
        for &member in &corrupt {
            tracing::error!(
                member = format_args!("{member:x}"),
                revision = at,
                "corruption check: this member's history differs from the cluster's"
            );
            if !raised.contains(&(member, CORRUPT)) {
                self.alarm(true, member, CORRUPT).await?;
            }
        }
        Ok(corrupt)
    }

    /// `peer`'s hash of the whole store at `revision`, its regions caught
    /// up by `catch_up`.
    async fn peer_store_hash(
        &self,
        peer: u64,
        revision: i64,
        catch_up: CatchUp,
    ) -> Result<StoreHash> {
        let r = self.region(DATA_REGION)?;
        let op = ForwardOp::HashStoreAt {
            revision,
            leaders: catch_up == CatchUp::Leaders,
        };
        remote::forward(&self.pool, &r.raft, peer, DATA_REGION, &op)
            .await
            .and_then(ForwardOk::store_hash)
    }
}

impl Node {
    /// The start-up check (see the module essay): an error naming the first
    /// peer whose history differs from this member's at the revision every
    /// region here has resolved. Peers that do not answer, or hashed over
    /// other compactions, are skipped.
    pub async fn initial_corruption_check(&self) -> Result<()> {
        let r = self.region(DATA_REGION)?;
        // Raft learns the membership (and so the peers' addresses) from its
        // log as it starts; a member of a new cluster has none until it is
        // initialized, and has nothing to compare then.
        let deadline = std::time::Instant::now() + PEER_WAIT;
        let voters: Vec<u64> = loop {
            let voters: Vec<u64> = {
                let m = r.raft.metrics();
                let m = m.borrow();
                m.membership_config.membership().voter_ids().collect()
            };
            if !voters.is_empty() || std::time::Instant::now() >= deadline {
                break voters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // This member serves no peer until the check is done, so a region
        // frozen for a merge here stays frozen: it hashes what it can at
        // once, or skips the check (it looks for members that disagree).
        let at = self.resolved_everywhere();
        let mine = match self.store_hash_now(at).await {
            Ok(mine) => mine,
            Err(e) => {
                tracing::warn!("initial corruption check skipped: this member cannot hash its store at revision {at}: {e}");
                return Ok(());
            }
        };
        for peer in voters.into_iter().filter(|&p| p != self.id) {
            let ask = self.peer_store_hash(peer, at, CatchUp::Local);
            match tokio::time::timeout(PEER_WAIT, ask).await {
                Ok(Ok(theirs)) if theirs.compactions == mine.compactions => {
                    if theirs.hash.hash != mine.hash.hash {
                        return Err(Error::Internal(format!(
                            "found data inconsistency with peers: member {peer:x} hashes revision {at} as {}, this member as {}",
                            theirs.hash.hash, mine.hash.hash
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
