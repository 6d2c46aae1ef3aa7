//! Leader read leases: linearizable reads on the leader without a quorum
//! round for every batch.
//!
//! A read index costs a heartbeat round to a quorum. On 3 nodes with one
//! client that round is most of a linearizable read (0.36 of 0.52 ms,
//! docs/benchmarks.md), so no batching can help there. A lease lets the
//! leader skip it: after a round that *started* at `t0` succeeded, no other
//! leader can exist before `t0 + leader_lease`, and the leader serves reads
//! at its own commit index until `t0 + READ_LEASE` (a quarter of that).
//!
//! Why no other leader can exist meanwhile (openraft 0.9, checked in its
//! engine): a follower that accepts an AppendEntries from the leader —
//! the round's heartbeats, sent after `t0` — refuses every vote request for
//! `leader_lease` (= `election_timeout_max`) after it, and does not start
//! an election of its own before `leader_lease + election_timeout`; a node
//! that restarts treats its persisted (committed) vote as just renewed.
//! Every majority contains a member of the quorum that answered the round:
//! either such a follower, or the leader itself. The leader's own vote is
//! not leased, so each lease read asks the Raft core (one message, no
//! network) whether this node still holds the *same* vote and membership
//! as when the lease was taken: votes only grow, so an unchanged vote means
//! it granted no other candidate since. The core also gives the commit
//! index, used only when it is of the leader's own term (so it covers every
//! entry any earlier leader committed).
//!
//! A leader paused between reading its clock and the core's answer (say,
//! SIGSTOP past the lease) still answers correctly: the index it gets is
//! one it committed itself, and every entry it counts as committed reached
//! a majority before any later leader was elected (that majority's members
//! refuse its appends after voting), so that index is the state at some
//! instant after the read arrived and before any later leader's write.
//!
//! What the lease assumes: the nodes' monotonic clocks run at the same rate
//! within a factor of four over a second — not that they agree on the time.
//! It breaks if something triggers an election by hand (`trigger().elect()`
//! skips the candidate's own lease) while the leader holds a lease. Only a
//! hand-over does (`transfer`: MoveLeader on the data region, and the meta
//! region following the data leader, `tso::colocate`), and it first stops
//! this leader from using or taking leases and waits until the last one
//! has run out ([`ReadLease::pause`]). On the meta region the lease
//! confirms read and commit timestamps (`ForwardOp::ReadTimestamp`)
//! without a quorum round. `--read-lease false` turns leases
//! off (every batch runs a round, as etcd does).
//!
//! A read that finds the lease lapsed runs the round and renews it, so a
//! steady stream of reads pays one round per `READ_LEASE`.

use std::sync::Mutex;
use std::time::Duration;

use cairn_raft::Raft;
use openraft::{LogId, ServerState, Vote};
use tokio::time::Instant;

use crate::error::read_index_error;
use crate::restored_lead::RestoredLead;
use crate::{Error, Result};

/// How long after a round starts its lease lasts. openraft's followers
/// hold theirs for `election_timeout_max` (600 ms, `cairn_raft::raft_config`);
/// a quarter of that leaves room for clock-rate skew and scheduling.
pub const READ_LEASE: Duration = Duration::from_millis(150);

/// One region replica's lease.
pub struct ReadLease {
    id: u64,
    /// Whether the replica came back as leader in its term, and with what
    /// log (`restored_lead`): its read indexes start there.
    restored: Option<RestoredLead>,
    state: Mutex<State>,
}

/// The lease and what stops it, under one lock.
#[derive(Default)]
struct State {
    held: Option<Held>,
    /// Leadership hand-overs under way (`transfer`): no lease is used or
    /// taken while any is.
    paused: u32,
    /// After a hand-over that asked another member to campaign and did not
    /// see it win, no lease is taken from a round that started before this
    /// (a late campaign must not meet a valid lease).
    not_before: Option<Instant>,
}

/// What a successful round proved.
#[derive(Clone, Copy, Debug)]
struct Held {
    vote: Vote<u64>,
    membership: Option<LogId<u64>>,
    until: Instant,
}

impl ReadLease {
    /// A lease for node `id`'s replica, not yet held; `restored` is what
    /// its Raft came back with ([`RestoredLead::of`]).
    pub fn new(id: u64, restored: Option<RestoredLead>) -> Self {
        Self {
            id,
            restored,
            state: Mutex::new(State::default()),
        }
    }

    /// Stops serving and taking leases (a hand-over begins) and drops the
    /// one held; every read meanwhile runs a quorum round. Undone by
    /// [`ReadLease::resume`].
    pub fn pause(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.paused += 1;
            s.held = None;
        }
    }

    /// Ends one [`ReadLease::pause`]; no lease is then taken from a round
    /// that started before `not_before`.
    pub fn resume(&self, not_before: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.paused = s.paused.saturating_sub(1);
            s.not_before = s.not_before.max(Some(not_before));
        }
    }

    /// A read index from a quorum round, or from the lease when it holds.
    pub async fn read_index(&self, raft: &Raft) -> Result<u64> {
        if let Some(index) = self.leased_index(raft).await? {
            return Ok(index);
        }
        self.renew(raft).await
    }

    /// The leader's commit index if the lease holds and this node still
    /// leads with the vote and membership the lease was taken under.
    pub async fn leased_index(&self, raft: &Raft) -> Result<Option<u64>> {
        let held = match self.state.lock().map(|s| (s.paused, s.held)) {
            Ok((0, Some(h))) if Instant::now() < h.until => h,
            _ => return Ok(None),
        };
        let committed = raft
            .with_raft_state(move |st| {
                let same = st.server_state == ServerState::Leader
                    && *st.vote_ref() == held.vote
                    && *st.membership_state.effective().log_id() == held.membership;
                match st.committed {
                    Some(c) if same && c.leader_id.term == held.vote.leader_id().get_term() => {
                        Some(c.index)
                    }
                    _ => None,
                }
            })
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        match committed {
            Some(c) => RestoredLead::settled(self.restored.as_ref(), raft, &held.vote, c)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Runs a read-index round; on success this node holds the lease until
    /// `READ_LEASE` after the round started.
    async fn renew(&self, raft: &Raft) -> Result<u64> {
        let t0 = Instant::now();
        let (vote, membership) = raft
            .with_raft_state(|st| (*st.vote_ref(), *st.membership_state.effective().log_id()))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (read, _) = raft.get_read_log_id().await.map_err(read_index_error)?;
        if vote.is_committed() && vote.leader_id().voted_for() == Some(self.id) {
            if let Ok(mut s) = self.state.lock() {
                if s.paused == 0 && s.not_before.is_none_or(|nb| t0 >= nb) {
                    s.held = Some(Held {
                        vote,
                        membership,
                        until: t0 + READ_LEASE,
                    });
                }
            }
        }
        let index = read.map_or(0, |l| l.index);
        RestoredLead::settled(self.restored.as_ref(), raft, &vote, index).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_a_quarter_of_what_followers_promise_at_most() {
        // openraft's followers refuse votes for `election_timeout_max` after
        // a heartbeat (its `leader_lease`); the read lease must stay well
        // inside that whatever the Raft timings become.
        let followers = Duration::from_millis(cairn_raft::raft_config("t").election_timeout_max);
        assert!(
            READ_LEASE * 4 <= followers,
            "{READ_LEASE:?} vs {followers:?}"
        );
    }
}
