//! The write and leader-only paths: [`Node::submit`] sends an op to its
//! region's leader (this node, or forwarded over the peer service) and
//! retries only while nothing was proposed — or, for an op safe to send
//! twice (`ForwardOp::resend_safe`: reads, lease refreshes), as soon as
//! the region knows another leader while the call still waits (a paused
//! leader neither answers nor refuses), and when its forwarded answer was
//! lost mid-call (a killed leader: `remote::never_sent` cannot say it was
//! never proposed, which only such an op may shrug off);
//! [`Node::serve_local`] serves an
//! op on this node's replica (a forwarded op lands there too).

use std::time::{Duration, Instant};

use cairn_raft::{AuthStamp, Command, Reply};

use crate::node::{
    sole_voter_index, CatchUp, Node, Region, DATA_REGION, META_REGION, REQUEST_TIMEOUT,
};
use crate::proposer::{checked, Proposal};
use crate::remote::{self, ForwardOk, ForwardOp};
use crate::{Error, Result};

impl Node {
    /// Sends `op` to `region`'s leader, retrying only while nothing was
    /// proposed (an op safe to send twice also when its answer was lost)
    /// — or nothing changed because the op met a lock of a
    /// transaction across regions, which is waited for (or resolved) first.
    /// A prewrite's or a commit's lock conflict is its coordinator's to
    /// handle.
    pub(crate) async fn submit(&self, region: u64, op: ForwardOp) -> Result<ForwardOk> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        loop {
            match self.submit_once(region, op.clone()).await? {
                ForwardOk::Reply(Reply::Locked(lock))
                    if !op.coordinator_handles_locks() && Instant::now() < deadline =>
                {
                    let here = self.holds_lock(region, lock.start_ts);
                    Box::pin(self.resolve_lock(region, lock)).await?;
                    if !here {
                        // The leader's lock is not (or no longer) on this
                        // replica: it is behind, and the wait above
                        // returned at once. Ask again after a pause, not
                        // in a tight loop of forwards; the leader's
                        // sweeper settles a lock nobody here can see.
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// [`Node::submit`] without waiting on locks.
    async fn submit_once(&self, region: u64, op: ForwardOp) -> Result<ForwardOk> {
        // A node shutting down must not go on forwarding for clients still
        // connected to it (and so stay alive, engine and all).
        if self.is_stopped() {
            return Err(Error::Stopped);
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let r = self.region(region)?;
        loop {
            let leader = r.raft.metrics().borrow().current_leader;
            let attempt = async {
                match leader {
                    Some(l) if l == self.id => self.serve_local(region, op.clone()).await,
                    Some(l) => remote::forward(&self.pool, &r.raft, l, region, &op).await,
                    None => Err(Error::NoLeader),
                }
            };
            // A leader that lost its quorum never answers: bound the wait.
            // A paused one never answers either: an op safe to send twice
            // goes to the next leader as soon as one is known.
            let left = deadline.saturating_duration_since(Instant::now());
            let bounded = tokio::time::timeout(left, attempt);
            let res = if op.resend_safe() && leader.is_some_and(|l| l != self.id) {
                tokio::select! {
                    res = bounded => res.unwrap_or(Err(Error::Timeout)),
                    () = remote::leader_changed(&r.raft, leader) => Err(Error::NoLeader),
                }
            } else {
                bounded.await.unwrap_or(Err(Error::Timeout))
            };
            // An op safe to send twice whose answer was lost mid-call (its
            // leader killed or cut off: `remote::never_sent` says unknown)
            // goes again, to whoever leads by then.
            let lost = matches!(res, Err(Error::Timeout))
                && op.resend_safe()
                && leader.is_some_and(|l| l != self.id);
            match res {
                Err(e) if e.is_retryable() || lost => {
                    if Instant::now() >= deadline {
                        return Err(if lost { e } else { Error::NoLeader });
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Serves a (possibly forwarded) op on this node's replica without
    /// forwarding further: `NotLeader` if this replica does not lead.
    pub async fn serve_local(&self, region: u64, op: ForwardOp) -> Result<ForwardOk> {
        match op {
            ForwardOp::Checked { auth, op } => {
                let stamp = AuthStamp {
                    revision: auth,
                    writable: None,
                };
                self.serve_op(region, *op, Some(stamp)).await
            }
            ForwardOp::CheckedLease { auth, writable, op } => {
                let stamp = AuthStamp {
                    revision: auth,
                    writable: Some(writable),
                };
                self.serve_op(region, *op, Some(stamp)).await
            }
            // Answered even once the region is absorbed here (and gone).
            ForwardOp::AwaitFreeze(epoch) => {
                self.frozen_here(region, epoch).await?;
                Ok(ForwardOk::Done)
            }
            // Any member, about its replicas of many regions.
            ForwardOp::SideCloses { check, proved } => {
                Ok(self.serve_side_closes(check, proved).await)
            }
            ForwardOp::HurryCloses(ids) => Ok(self.serve_hurry(ids)),
            op => self.serve_op(region, op, None).await,
        }
    }

    /// [`Node::serve_local`] of one op; a write with `auth` is proposed as
    /// `Command::Checked` (a client's, checked against that revision).
    async fn serve_op(
        &self,
        region: u64,
        op: ForwardOp,
        auth: Option<AuthStamp>,
    ) -> Result<ForwardOk> {
        let r = match self.region(region) {
            Ok(r) => r,
            // Not started here yet: a region born by a split is led from
            // its first moment by the member that appended the split (see
            // `cairn_raft::state_machine::split`), whose replica may start
            // after the others', which forward to it at once. The sender
            // tries again (or asks whoever leads by then).
            Err(Error::Internal(_)) => return Err(Error::NotLeader { leader: None }),
            Err(e) => return Err(e),
        };
        // A hibernating leader wakes for a read, not for a write, an ask
        // for closes or a hash (`ForwardOp::wakes`).
        if op.wakes() {
            r.wake_to_serve();
        }
        match op {
            ForwardOp::Checked { .. } | ForwardOp::CheckedLease { .. } => {
                Err(Error::Internal("nested checked op".into()))
            }
            ForwardOp::Txn(txn) => Ok(ForwardOk::Reply(
                r.proposer.propose(Proposal::Txn(txn, auth)).await?,
            )),
            ForwardOp::Compact(revision) => {
                let mut cmd = Command::Compact { revision };
                let raises = r
                    .shared
                    .with_applied(|a| !a.range.is_whole() && revision > a.current_revision);
                if raises {
                    // One region of several, below `revision`: its revision
                    // may move up to it (see the state machine's `compact`)
                    // only if the store has it, and once this leader
                    // answered every write it stamped at or below it and
                    // stamps none there again — in the term it is applied
                    // in. (The region's revision only grows: one at or
                    // above `revision` now stays so.)
                    let term = self.leading_term(&r)?;
                    if revision > self.read_timestamp().await? {
                        return Err(Error::Rejected(cairn_mvcc::Rejection::FutureRevision));
                    }
                    r.proposer.settled(revision, term, REQUEST_TIMEOUT).await?;
                    cmd = Command::InTerm {
                        term,
                        cmd: Box::new(cmd),
                    };
                }
                Ok(ForwardOk::Reply(
                    r.proposer
                        .propose(Proposal::Plain(checked(auth, cmd)))
                        .await?,
                ))
            }
            ForwardOp::Plain(cmd) => {
                let grant = match cmd {
                    Command::LeaseGrant { id, ttl } if region == DATA_REGION => Some((id, ttl)),
                    _ => None,
                };
                let cmd = checked(auth, cmd);
                let Some((id, ttl)) = grant else {
                    return Ok(ForwardOk::Reply(
                        r.proposer.propose(Proposal::Plain(cmd)).await?,
                    ));
                };
                // Detached: if this request is dropped (client gone, forward
                // timed out), the grant still gets tracked once it applies.
                // Never beside an expiry of the same ID (`crate::lessor`).
                let (proposer, lessor) = (r.proposer.clone(), self.lessor.clone());
                let reply = tokio::spawn(async move {
                    let _granting = lessor.granting(id).await?;
                    let reply = proposer.propose(Proposal::Plain(cmd)).await?;
                    if matches!(reply, Reply::Revision(_)) {
                        lessor.granted(id, ttl);
                    }
                    Ok::<_, Error>(reply)
                })
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
                Ok(ForwardOk::Reply(reply))
            }
            ForwardOp::Revoke(id) => Ok(ForwardOk::Reply(
                r.proposer.propose(Proposal::Revoke(id, auth)).await?,
            )),
            ForwardOp::LeaseKeepAlive(id) => {
                let since = Instant::now();
                self.confirm_leading(&r).await?;
                Ok(ForwardOk::Ttl(self.lessor.keep_alive(id, since).await?))
            }
            ForwardOp::LeaseTimeToLive(id) => {
                self.confirm_leading(&r).await?;
                Ok(ForwardOk::TimeToLive(
                    self.lessor
                        .time_to_live(id)?
                        .map(|t| (t.remaining, t.granted, t.keys)),
                ))
            }
            ForwardOp::ReadIndex => Ok(ForwardOk::ReadIndex(r.leader_reads.round().await?)),
            ForwardOp::CommitTimestamp | ForwardOp::ReadTimestamp => {
                if region != META_REGION {
                    return Err(Error::Internal(
                        "timestamps come from the meta region".into(),
                    ));
                }
                // Confirmed after it is taken, in the same term: a leader
                // deposed meanwhile (paused past an election, even if
                // elected again since) hands out none.
                let term = self.leading_term(&r)?;
                let t = match op {
                    // (Confirmed below, with the read timestamp's path.)
                    ForwardOp::CommitTimestamp => self.tso.allocate(1).await?,
                    _ => self.tso.newest().await?,
                };
                self.leader_read_index(&r).await?;
                if self.leading_term(&r)? != term {
                    return Err(Error::NotLeader { leader: None });
                }
                Ok(ForwardOk::Timestamp(t))
            }
            ForwardOp::ReadIndexAfter(ts) | ForwardOp::ReadIndexAfterQuietly(ts) => {
                Ok(ForwardOk::ReadIndex(self.read_index_after(&r, ts).await?))
            }
            ForwardOp::ReadIndexAtNewest => {
                // Not leading: say so before a round to the meta leader.
                self.leading_term(&r)?;
                let t = self.read_timestamp().await?;
                let index = self.read_index_after(&r, t).await?;
                Ok(ForwardOk::TimestampedIndex(t, index))
            }
            ForwardOp::CommitLocked {
                start_ts,
                commit_ts,
                path,
            } => {
                let term = self.leading_term(&r)?;
                r.proposer.settled(commit_ts, term, REQUEST_TIMEOUT).await?;
                let cmd = Command::InTerm {
                    term,
                    cmd: Box::new(Command::CommitLocked {
                        start_ts,
                        commit_ts,
                        path,
                    }),
                };
                // The primary's commit, which decides, is checked as a
                // client's write (see `txn_across`); the others are not.
                let cmd = checked(auth, cmd);
                Ok(ForwardOk::Reply(
                    r.proposer.propose(Proposal::Plain(cmd)).await?,
                ))
            }
            ForwardOp::HandOver(target) => {
                self.hand_over(region, target).await?;
                Ok(ForwardOk::Done)
            }
            ForwardOp::Campaign { term, leader } => {
                // Only while the leader that asked still leads in that term
                // as far as this member knows: a late request must not
                // force an election on a leader that gave up the hand-over.
                let vote = r
                    .raft
                    .with_raft_state(|st| *st.vote_ref())
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let same = vote.is_committed()
                    && vote.leader_id().get_term() == term
                    && vote.leader_id().voted_for() == Some(leader);
                if same {
                    r.raft
                        .trigger()
                        .elect()
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))?;
                }
                Ok(ForwardOk::Done)
            }
            ForwardOp::HashKv(revision) => self.legacy_hash(&r, revision, None).await,
            ForwardOp::AwaitFreeze(_)
            | ForwardOp::SideCloses { .. }
            | ForwardOp::HurryCloses(_) => Err(Error::Internal("served before".into())),
            ForwardOp::Beat => Ok(self.beat()),
            ForwardOp::WantCloses => {
                self.closes_wanted(&r);
                Ok(ForwardOk::Done)
            }
            ForwardOp::HashKvAt { revision, epoch } => {
                self.legacy_hash(&r, revision, Some(epoch)).await
            }
            ForwardOp::HashStoreAt { revision, leaders } => {
                let catch_up = if leaders {
                    CatchUp::Leaders
                } else {
                    CatchUp::Local
                };
                let h = Box::pin(self.store_hash(revision, revision, catch_up)).await?;
                let (hash, revision, compacted, compactions) = h.into_parts();
                Ok(ForwardOk::StoreHash {
                    hash,
                    revision,
                    compacted,
                    compactions,
                })
            }
            ForwardOp::HashSpansAt(spans) => Ok(ForwardOk::SpanHashes(
                Box::pin(self.span_hashes_here(spans)).await,
            )),
        }
    }

    /// The hash a member of an earlier version asks for (`HashKv`,
    /// `HashKvAt` at the first region's `epoch`): it hashes the first
    /// region alone, so the answers compare only while that is the only
    /// region; else `EpochMismatch` (skipped that round).
    async fn legacy_hash(
        &self,
        r: &Region,
        revision: i64,
        epoch: Option<u64>,
    ) -> Result<ForwardOk> {
        if self.several_regions() || epoch.is_some_and(|e| r.shared.range().epoch != e) {
            return Err(Error::EpochMismatch);
        }
        let h = Box::pin(self.store_hash(revision, revision, CatchUp::Local)).await?;
        Ok(ForwardOk::Hash(
            h.hash.hash,
            h.hash.revision,
            h.hash.compacted,
        ))
    }

    /// The term this replica leads `r` in, as it knows; `NotLeader` if it
    /// does not lead.
    /// Once every write this leader stamped at or below `ts` is answered
    /// (and none will be stamped so low again), its read index.
    async fn read_index_after(&self, r: &Region, ts: i64) -> Result<u64> {
        let term = self.leading_term(r)?;
        r.proposer.settled(ts, term, REQUEST_TIMEOUT).await?;
        let index = self.leader_read_index(r).await?;
        // Still the term whose writes were waited for: leading again in a
        // later one, this node may have stamped a write of that term at or
        // below `ts` (a stale TSO) not waited for.
        if self.leading_term(r)? != term {
            return Err(Error::NotLeader { leader: None });
        }
        Ok(index)
    }

    pub(super) fn leading_term(&self, r: &Region) -> Result<u64> {
        let m = r.raft.metrics();
        let m = m.borrow();
        if m.current_leader != Some(self.id) {
            return Err(Error::NotLeader { leader: None });
        }
        Ok(m.current_term)
    }

    /// Confirms that this replica leads `r` now (a read index from a round
    /// that started after the call, or a valid read lease) and has applied
    /// everything committed before the call. `NotLeader` otherwise. The
    /// lessor needs this before a renewal or a TimeToLive answer: a leader
    /// cut off from its quorum must not extend a lease the majority side
    /// may already have expired.
    async fn confirm_leading(&self, r: &Region) -> Result<()> {
        if r.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(Error::NotLeader { leader: None });
        }
        if cairn_raft::planted::on("unconfirmed-renewal") {
            return Ok(());
        }
        let index = match sole_voter_index(r, self.id) {
            Some(index) => index,
            None => r.leader_reads.round().await?,
        };
        super::reads::applied_through(r, index).await
    }
}
