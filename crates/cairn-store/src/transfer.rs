//! MoveLeader: the data region's leader hands leadership to a member the
//! operator names (etcd's `etcdctl move-leader`); the meta region's leader
//! hands it to the data leader the same way, so the TSO sits next to the
//! writes (`tso::colocate`), and any data region's leader hands it to the
//! member the leader balancer names (`node::leader_balance`).
//!
//! openraft 0.9 has no leader transfer, and an election forced on another
//! member (`trigger().elect()`) skips that member's own vote lease, which is
//! what makes leader read leases safe (see [`crate::read_lease`]). So the
//! leader prepares the hand-over so that no lease is left to break:
//!
//! 0. it waits, holding nothing but the one-transfer-at-a-time lock,
//!    until the target's log is within a couple of entries of its own (a
//!    target that is down or far behind fails the transfer after
//!    [`NEAR_WITHIN`] without having paused a write);
//! 1. it stops serving and taking read leases (every read meanwhile runs a
//!    quorum round, which proves leadership at that moment), and holds new
//!    proposals (they wait, in order, and go to whoever leads next), so its
//!    log stops growing;
//! 2. it waits until the target has every entry it has (so the target's
//!    log is at least as long as anyone's and it can win) and until any
//!    lease it held has run out ([`READ_LEASE`] after it was dropped);
//! 3. once its own vote is older than openraft's `leader_lease` (a member
//!    refuses votes within it of its last vote change, the leader too, so
//!    a leader elected a moment ago waits up to 0.6 s), it asks the
//!    target to campaign. The old leader grants the vote and steps down;
//!    with three members that is a majority. Its lessor
//!    stops with its leadership; the new leader counts every lease's TTL
//!    again from its election, as after any election;
//! 4. it waits for the target to lead, then releases what it held: held
//!    proposals are refused with `NotLeader` and retried at the new leader.
//!
//! The request to campaign names the leader and its term, and the target
//! campaigns only while it still follows that leader in that term. If the
//! target does not lead within [`TRANSFER_TIMEOUT`] (it could not catch
//! up, or another member won the election), the call fails with etcd's
//! "leader transfer took too long" and whoever leads serves on — but a
//! leader that is still the one and asked for a campaign takes no read
//! lease from a round begun within [`LATE_CAMPAIGN`] of its last ask, so a
//! request that arrives late cannot force an election past a valid lease.
//! Transfers run one at a time.
//! With five or more members the target also needs a vote from a follower
//! whose lease has run out, so a transfer may take an election timeout or
//! end elsewhere.

use std::time::Duration;

use tokio::time::Instant;

use crate::node::{Node, DATA_REGION};
use crate::read_lease::READ_LEASE;
use crate::remote::{self, ForwardOp};
use crate::{Error, Result};

/// How long a transfer may take before it is reported as failed.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);
/// How far (in log entries) the target may trail the leader before the
/// leader holds its proposals for the hand-over: a commit group or two in
/// flight.
const NEAR: u64 = 2;
/// How much of [`TRANSFER_TIMEOUT`] the target may take to come near,
/// holding nothing: the rest is left for the hand-over itself (a read
/// lease to run out, the vote lease, an election).
const NEAR_WITHIN: Duration = Duration::from_secs(2);
/// How long a request to campaign may take to reach the target.
const CAMPAIGN_CALL: Duration = Duration::from_secs(1);
/// After a failed hand-over that asked the target to campaign: how long
/// from the last ask until leases are taken again (the ask may still
/// arrive; every lease must have run out by then, see the module essay).
const LATE_CAMPAIGN: Duration = Duration::from_millis(CAMPAIGN_CALL.as_millis() as u64 + 500);

/// Releases what a hand-over held, however it ends (error, timeout, the
/// caller gone).
struct Handing<'a> {
    region: &'a crate::node::Region,
    /// When the target was last asked to campaign, and whether it won.
    asked: Option<Instant>,
    won: bool,
}

impl Drop for Handing<'_> {
    fn drop(&mut self) {
        self.region.proposer.hold(false);
        if let Some(l) = &self.region.lease {
            let not_before = match (self.asked, self.won) {
                (Some(at), false) => at + LATE_CAMPAIGN,
                _ => Instant::now(),
            };
            l.resume(not_before);
        }
    }
}

impl Node {
    /// Whether this member's vote is older than openraft's `leader_lease`,
    /// so it grants a vote to a candidate with a log as long as its own.
    async fn grants_votes(&self, r: &crate::node::Region) -> bool {
        let lease = Duration::from_millis(cairn_raft::raft_config("").election_timeout_max);
        r.raft
            .with_raft_state(move |st| {
                st.vote_last_modified()
                    .is_none_or(|at| at.elapsed() > lease + Duration::from_millis(50))
            })
            .await
            .unwrap_or(false)
    }

    /// Waits, holding nothing, until `target`'s copy of the region's log
    /// is within [`NEAR`] entries of the leader's, so that writes pause
    /// only for the last round of the hand-over, and a target that is down
    /// or far behind pauses nothing. True if the target leads already;
    /// `NotLeader` once this member no longer leads;
    /// `LeaderTransferTimeout` at `deadline`.
    async fn target_near(
        &self,
        r: &crate::node::Region,
        target: u64,
        deadline: Instant,
    ) -> Result<bool> {
        loop {
            let (leader, near) = {
                let m = r.raft.metrics();
                let m = m.borrow();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|p| p.get(&target).copied().flatten())
                    .map(|l| l.index);
                let near = match (m.last_log_index, matched) {
                    (Some(last), Some(matched)) => last.saturating_sub(matched) <= NEAR,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                (m.current_leader, near)
            };
            if leader == Some(target) {
                return Ok(true);
            }
            if leader != Some(self.id) {
                return Err(Error::NotLeader { leader });
            }
            if near {
                return Ok(false);
            }
            if Instant::now() >= deadline || self.is_stopped() {
                return Err(Error::LeaderTransferTimeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves the data region's leadership to member `target` (see the
    /// module essay). Must be called on the leader.
    pub async fn move_leader(&self, target: u64) -> Result<()> {
        self.hand_over(DATA_REGION, target).await
    }

    /// Moves `region`'s leadership to member `target` (see the module
    /// essay): MoveLeader's data region, or the meta region following
    /// the data leader (`tso::colocate`). Must be called on the leader.
    pub(crate) async fn hand_over(&self, region: u64, target: u64) -> Result<()> {
        let _one_at_a_time = self.transferring.lock().await;
        let r = self.region(region)?;
        let (leader, voters) = {
            let m = r.raft.metrics();
            let m = m.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (m.current_leader, voters)
        };
        if leader != Some(self.id) {
            return Err(Error::NotLeader { leader });
        }
        if target == self.id {
            return Ok(());
        }
        if !voters.contains(&target) {
            return Err(Error::BadLeaderTransferee);
        }
        let started = Instant::now();
        if self.target_near(&r, target, started + NEAR_WITHIN).await? {
            return Ok(());
        }
        // The term the hand-over runs in, read after the wait (a step-down
        // and re-election meanwhile would otherwise never ask the target).
        let term = r.raft.metrics().borrow().current_term;
        let deadline = started + TRANSFER_TIMEOUT;
        if let Some(l) = &r.lease {
            l.pause();
        }
        r.proposer.hold(true);
        let mut handing = Handing {
            region: &r,
            asked: None,
            won: false,
        };
        let dropped = Instant::now();
        loop {
            let (leader, now_term, caught_up) = {
                let m = r.raft.metrics();
                let m = m.borrow();
                let last = m.last_log_index;
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|p| p.get(&target).copied().flatten())
                    .map(|l| l.index);
                (
                    m.current_leader,
                    m.current_term,
                    last.is_some() && matched == last,
                )
            };
            if leader == Some(target) {
                handing.won = true;
                return Ok(());
            }
            if leader.is_some() && leader != Some(self.id) {
                // A third member won an election meanwhile: nothing to hold.
                return Err(Error::NotLeader { leader });
            }
            if Instant::now() >= deadline || self.is_stopped() {
                return Err(Error::LeaderTransferTimeout);
            }
            let due = handing
                .asked
                .is_none_or(|at| at.elapsed() > Duration::from_secs(1));
            if due
                && caught_up
                && dropped.elapsed() > READ_LEASE
                && leader == Some(self.id)
                && now_term == term
                && self.grants_votes(&r).await
            {
                handing.asked = Some(Instant::now());
                let op = ForwardOp::Campaign {
                    term,
                    leader: self.id,
                };
                let ask = remote::forward(&self.pool, &r.raft, target, region, &op);
                match tokio::time::timeout(CAMPAIGN_CALL, ask).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(target, "move-leader: no campaign: {e}"),
                    Err(_) => tracing::warn!(target, "move-leader: no answer to campaign"),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
