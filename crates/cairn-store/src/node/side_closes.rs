//! Closed timestamps beside the log: idle regions that are watched can
//! sleep.
//!
//! A close in the log (`closes`) is a Raft entry every replica writes and
//! syncs, four times a second per wanted region, so a watched region never
//! goes quiet and never hibernates. Kubernetes watches every prefix. So a
//! leader closes its wanted idle regions beside the log instead, all of
//! them in one round per [`super::closes`] pass, with two calls to each
//! other member (CockroachDB's closed-timestamp side transport and TiKV's
//! `CheckLeader` do the same job):
//!
//! 1. Read T, the newest timestamp the TSO handed out (one read for the
//!    round), and wait until every write this leader stamped at or below
//!    T is answered (`Proposer::settled`, which also stops any later
//!    write being stamped that low in this term).
//! 2. Once an entry of its own term is applied (every entry of an earlier
//!    term in its log is committed then), note each region's last log
//!    index I (every settled write is at or below it), its epoch, and its
//!    voters.
//! 3. Ask every other member whether its replica still votes for this
//!    leader in this term ([`ForwardOp::SideCloses`] `check`), and ask
//!    this replica too.
//! 4. A region whose voters answered yes in a majority is closed at
//!    (T, I): this replica takes it up, and the other members get it
//!    (`proved`) in a second call.
//!
//! Why (T, I) holds — nothing after log index I writes at or below T
//! (`cairn_raft`'s `side_close` says what a replica does with it):
//! - This leader stamped every write at or below T before step 2, and
//!   applied all of them by then, so they are at or below I; it stamps
//!   above T from now on.
//! - Everything after I is appended after step 2. A write with no
//!   timestamp of its own (a compaction, a lease grant) makes no
//!   revision.
//! - Any later leader of the region is elected by a majority that votes
//!   for it in a higher term, and that majority shares a member with the
//!   one that answered yes after T was read. That member voted for the
//!   new leader only after answering, so the new leader was elected after
//!   T was read and stamps above it. (The answer reads the replica's vote
//!   in its Raft core, which changes before a vote is granted.)
//! - An entry of an earlier term not in this leader's log never commits
//!   (the leader's own first entry is applied before step 2), and a
//!   write proposed in an earlier term of this node applies only in that
//!   term (`Command::InTerm`).
//! - A transaction across regions commits with a timestamp fetched after
//!   every prewrite was answered: after T, if its lock here came after I
//!   (its prewrite was appended, so answered, after step 2).
//!   One placed at or below I is in the replica's state when it takes the
//!   close up, and the close then waits for the next (`side_close`).
//!
//! A region is closed only where this member is a voter of its one
//! configuration, and a majority of that configuration said yes.
//!
//! A region takes this path only if no member holding a replica of it
//! refused a side-close call in the last [`REFUSED_FOR`] (a member of the
//! previous version cannot read the op); otherwise it is closed in the
//! log, as before. A joint membership is closed in the log too. A round
//! that finds no majority for a region closes nothing there: the next
//! pass tries again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_raft::SideClose;
use futures::future::join_all;

use crate::node::{Node, Region, META_REGION};
use crate::remote::{self, ForwardOk, ForwardOp, VoteCheck};
use crate::{Error, Result};

/// How long a member that refused a side-close call gets closes in the
/// log instead (then it is asked again: it may have been upgraded).
const REFUSED_FOR: Duration = Duration::from_secs(60);
/// How long a round waits for the settling of a region's writes and for
/// each member's answer.
const ROUND_WAIT: Duration = Duration::from_secs(1);

/// The members that refused side closes lately.
#[derive(Default)]
pub(crate) struct SidePeers {
    refused: parking_lot::Mutex<BTreeMap<u64, Instant>>,
}

impl SidePeers {
    fn refused(&self, member: u64) -> bool {
        let mut refused = self.refused.lock();
        refused.retain(|_, at| at.elapsed() < REFUSED_FOR);
        refused.contains_key(&member)
    }
}

/// One region of a round, as its leader noted it once settled at T.
struct Noted {
    region: Arc<Region>,
    term: u64,
    index: u64,
    epoch: u64,
    voters: Vec<u64>,
    /// Every member with a replica (voters and learners).
    replicas: Vec<u64>,
}

impl Node {
    /// True when region `r` can be closed beside the log: one
    /// membership, and no member with a replica of it refused lately.
    pub(super) fn side_closable(&self, r: &Region) -> bool {
        let m = r.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership.get_joint_config().len() == 1
            && membership
                .nodes()
                .all(|(id, _)| *id == self.id || !self.side_peers.refused(*id))
    }

    /// One round of closes beside the log over `ids`, regions this member
    /// leads (see the module essay). Returns how many it closed.
    pub(super) async fn side_close_round(self: &Arc<Self>, ids: Vec<u64>) -> Result<usize> {
        let ts = self.read_timestamp().await?;
        let noted: Vec<Noted> = join_all(ids.into_iter().map(|id| self.settle_and_note(id, ts)))
            .await
            .into_iter()
            .flatten()
            .collect();
        if noted.is_empty() {
            return Ok(0);
        }
        // Ask every other member with a voter among them.
        let mut asks: BTreeMap<u64, Vec<VoteCheck>> = BTreeMap::new();
        for n in &noted {
            for &v in n.voters.iter().filter(|&&v| v != self.id) {
                asks.entry(v).or_default().push(VoteCheck {
                    region: n.region.id,
                    term: n.term,
                    leader: self.id,
                });
            }
        }
        let answers = join_all(asks.into_iter().map(|(member, check)| async move {
            let op = ForwardOp::SideCloses {
                check,
                proved: Vec::new(),
            };
            (member, self.side_call(member, &op).await)
        }))
        .await;
        let mut yes: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (member, still) in answers {
            for region in still.unwrap_or_default() {
                yes.entry(region).or_default().push(member);
            }
        }
        // Closed where a majority of the voters (this one among them,
        // checked above) still vote for this leader.
        let mut proved: BTreeMap<u64, Vec<(u64, SideClose)>> = BTreeMap::new();
        let mut closed = 0;
        for n in noted {
            let ayes = 1 + yes
                .get(&n.region.id)
                .map_or(0, |m| m.iter().filter(|id| n.voters.contains(id)).count());
            if ayes * 2 <= n.voters.len() {
                continue;
            }
            let close = SideClose {
                ts,
                index: n.index,
                epoch: n.epoch,
            };
            n.region.shared.side_close(close);
            closed += 1;
            for &m in n.replicas.iter().filter(|&&m| m != self.id) {
                proved.entry(m).or_default().push((n.region.id, close));
            }
        }
        cairn_raft::metrics::SIDE_CLOSES.inc_by(closed as u64);
        // Told in the background: a slow member holds back no other.
        for (member, proved) in proved {
            let node = self.clone();
            let op = ForwardOp::SideCloses {
                check: Vec::new(),
                proved,
            };
            tokio::spawn(async move {
                let _ = node.side_call(member, &op).await;
            });
        }
        Ok(closed)
    }

    /// Waits until every write this leader stamped at or below `ts` in
    /// region `id` is answered, then notes what the round needs of it —
    /// `None` if this replica no longer leads it in the term it settled
    /// in, or no longer votes for itself there.
    async fn settle_and_note(&self, id: u64, ts: i64) -> Option<Noted> {
        let region = self.region(id).ok()?;
        let term = self.leading_term(&region).ok()?;
        region.proposer.settled(ts, term, ROUND_WAIT).await.ok()?;
        let (last, voters, replicas) = {
            let m = region.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(self.id) || m.current_term != term {
                return None;
            }
            // One configuration, with this member a voter in it (a joint
            // one needs a majority of each: closed in the log instead).
            let membership = m.membership_config.membership();
            let [config] = membership.get_joint_config().as_slice() else {
                return None;
            };
            if !config.contains(&self.id) {
                return None;
            }
            (
                m.last_log_index.unwrap_or(0),
                config.iter().copied().collect::<Vec<_>>(),
                membership.nodes().map(|(id, _)| *id).collect::<Vec<_>>(),
            )
        };
        // Applied here: every write settled above was answered, so applied
        // (a write's reply leaves only once its state is published), and
        // this term's first entry — before it, entries of earlier terms
        // in this log may not be committed yet, and would apply after a
        // close noted below them. I is the log's end, applied or not.
        let (applied, epoch) = region
            .shared
            .with_applied(|a| (a.last_applied, a.range.epoch));
        let applied = applied.filter(|l| l.leader_id.term == term)?;
        let index = last.max(applied.index);
        let check = VoteCheck {
            region: id,
            term,
            leader: self.id,
        };
        if !self.still_votes(&region, check).await {
            return None;
        }
        Some(Noted {
            region,
            term,
            index,
            epoch,
            voters,
            replicas,
        })
    }

    /// True when this member's replica of the region votes as `check`
    /// says, read in its Raft core (a vote changes there before it is
    /// granted).
    async fn still_votes(&self, r: &Region, check: VoteCheck) -> bool {
        let Ok(vote) = r.raft.with_raft_state(|st| *st.vote_ref()).await else {
            return false;
        };
        vote.leader_id().get_term() == check.term
            && vote.leader_id().voted_for() == Some(check.leader)
    }

    /// Serves [`ForwardOp::SideCloses`]: takes up the closes proved, and
    /// answers which checked regions still vote as asked here.
    pub(super) async fn serve_side_closes(
        &self,
        check: Vec<VoteCheck>,
        proved: Vec<(u64, SideClose)>,
    ) -> ForwardOk {
        for (id, close) in proved {
            if let Some(r) = self.regions.get(id) {
                r.shared.side_close(close);
            }
        }
        let still = join_all(check.into_iter().map(|c| async move {
            let r = self.regions.get(c.region)?;
            self.still_votes(&r, c).await.then_some(c.region)
        }))
        .await;
        ForwardOk::SideCloses {
            still: still.into_iter().flatten().collect(),
        }
    }

    /// Sends a side-close op to `member`: the regions it answered for
    /// (none on failure). A member that cannot read the op (an older
    /// version; not one that failed otherwise) is remembered as refusing
    /// (see [`REFUSED_FOR`]).
    async fn side_call(&self, member: u64, op: &ForwardOp) -> Option<Vec<u64>> {
        let meta = self.region(META_REGION).ok()?;
        let call = remote::forward(&self.pool, &meta.raft, member, META_REGION, op);
        match tokio::time::timeout(ROUND_WAIT, call).await {
            Ok(Ok(ForwardOk::SideCloses { still })) => Some(still),
            Ok(Err(Error::Refused(e))) => {
                tracing::info!(member, "side closes refused, closing in the log: {e}");
                self.side_peers
                    .refused
                    .lock()
                    .insert(member, Instant::now());
                None
            }
            _ => None,
        }
    }
}
