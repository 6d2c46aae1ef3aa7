//! A leader restored in its own term reads no lower than the log it
//! restored.
//!
//! openraft 0.9 brings a node back as leader, in the same term, when its
//! saved vote is its own committed one: a member crashed and restarted
//! before its followers elected anyone else (a hibernating region's
//! followers wait for the members' beats to say the leader is down, so
//! this is common). Its log may end in entries of that term it appended
//! before the crash and never saw commit: a write stamped with a revision
//! from before the crash, answered to nobody. They still commit once the
//! followers take them. But the restored leader's read index is the
//! larger of its commit index as restored and the first entry of the
//! term, which may lie below them; and `Proposer::settled` knows nothing
//! stamped before this process started. A read answered at that index —
//! with a header revision from the TSO now — misses a write that then
//! commits at a lower revision: a read at 60022 not showing a key's write
//! at 50074 (the bank checker, and the corruption check, caught exactly
//! that in a torture run).
//!
//! So a replica records, as its Raft starts, whether it was restored as
//! leader, under which vote, and its last log index then. While it still
//! leads under that vote, its read index is at least that index, and is
//! given out only once those entries have applied here — committed, so a
//! follower handed the index applies it too. If another leader is
//! elected first, they may never apply: the new leader may truncate them
//! and then sleep with its log short of that index. So the read index
//! fails `NotLeader` as soon as this replica hears of the new vote, and
//! the read asks the new leader, instead of waiting for the index until
//! its request times out. (A deposed leader cut off from everyone still
//! waits so, for want of news.) Every leader read of
//! this replica goes through it — the read index rounds, the read lease,
//! and so the settled reads at a timestamp, the TSO's confirmations and
//! the lessor's leadership checks; a sole voter's read without a round
//! (`sole_voter_index`) waits for a round until that log is applied —
//! and the TSO's catch-up in a new process waits for it too (a window
//! written before the crash may sit there). A new term needs none of this: its first
//! entry comes after everything in the log, and every read index is at
//! or above it.
//!
//! A region born by a split starts the same way on the member that
//! appended the split: the split seeds that member's committed vote
//! (`cairn_raft`'s `state_machine::split`). Its log ends where the child
//! starts, which it has applied, so the floor costs it nothing.

use cairn_raft::Raft;
use openraft::{ServerState, Vote};

use crate::node::REQUEST_TIMEOUT;
use crate::{Error, Result};

/// What a replica restored as leader held when its Raft started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoredLead {
    /// The vote it leads under (its own, committed).
    vote: Vote<u64>,
    /// Its last log index at start.
    last: u64,
}

impl RestoredLead {
    /// What `raft`, just started over a log whose last index was `last`,
    /// was restored with: `None` unless it came back as leader.
    pub async fn of(raft: &Raft, last: u64) -> Result<Option<Self>> {
        raft.with_raft_state(move |st| {
            (st.server_state == ServerState::Leader).then(|| RestoredLead {
                vote: *st.vote_ref(),
                last,
            })
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))
    }

    /// The term it leads in, and its last log index at start: entries up to
    /// there may yet commit and apply in that term.
    pub fn term_and_last(&self) -> (u64, u64) {
        (self.vote.leader_id().get_term(), self.last)
    }

    /// `index`, a read index taken while leading under `vote`, raised to
    /// the restored log's end if `vote` is the restored one.
    pub fn floor(restored: Option<&Self>, vote: &Vote<u64>, index: u64) -> u64 {
        match restored {
            Some(r) if r.vote == *vote => index.max(r.last),
            _ => index,
        }
    }

    /// [`RestoredLead::floor`] of `index`, given out once `raft` has
    /// applied that far: a raised index may lie past anything committed
    /// yet. `NotLeader` if `raft` saves another vote first (a new leader
    /// may truncate the restored entries and never write as far again);
    /// `Timeout` after a request's time.
    pub async fn settled(
        restored: Option<&Self>,
        raft: &Raft,
        vote: &Vote<u64>,
        index: u64,
    ) -> Result<u64> {
        let floor = Self::floor(restored, vote, index);
        if floor == index {
            return Ok(index);
        }
        let applied = |m: &cairn_raft::RaftMetrics| m.last_applied.map_or(0, |l| l.index);
        let vote = *vote;
        let m = raft
            .wait(Some(REQUEST_TIMEOUT))
            .metrics(
                |m| applied(m) >= floor || m.vote != vote,
                "restored log applied",
            )
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => Error::Timeout,
                openraft::metrics::WaitError::ShuttingDown => Error::Stopped,
            })?;
        if applied(&m) >= floor {
            Ok(floor)
        } else {
            Err(Error::NotLeader { leader: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_restored_vote_is_floored() {
        let vote = Vote::new_committed(3, 1);
        let r = RestoredLead { vote, last: 40 };
        assert_eq!(RestoredLead::floor(Some(&r), &vote, 12), 40);
        assert_eq!(RestoredLead::floor(Some(&r), &vote, 55), 55);
        let later = Vote::new_committed(4, 1);
        assert_eq!(RestoredLead::floor(Some(&r), &later, 12), 12);
        assert_eq!(RestoredLead::floor(None, &vote, 12), 12);
    }
}
