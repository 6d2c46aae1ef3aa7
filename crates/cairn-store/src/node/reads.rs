//! The linearizable read path: a read index (no round for a sole voter,
//! the read lease on a leader that holds one, the leader's batched round,
//! or one forwarded to the leader), then a local read once this replica
//! has applied that far.

use std::sync::Arc;

use crate::node::{Node, Region, META_REGION, REQUEST_TIMEOUT};
use crate::remote::ForwardOp;
use crate::restored_lead::RestoredLead;
use crate::{Error, Result};

/// The pause before a leader's read-index round that failed is run again.
const ROUND_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

impl Node {
    /// A read view of `region` that reflects every write acknowledged before
    /// the call: read index from the leader, then wait until this replica
    /// has applied that far.
    pub(crate) async fn linearizable_view(
        &self,
        region: u64,
    ) -> Result<(Arc<dyn cairn_storage::Snapshot>, cairn_mvcc::Revisions)> {
        Ok(self.caught_up(region).await?.shared.read_view())
    }

    /// `region`'s replica here, once it has applied every write
    /// acknowledged before the call (read index from the leader, then wait
    /// until this replica has applied that far): a view taken from it now
    /// is linearizable.
    pub(crate) async fn caught_up(&self, region: u64) -> Result<Arc<Region>> {
        let r = self.region(region)?;
        if cairn_raft::planted::on("stale-read") && region != META_REGION {
            return Ok(r);
        }
        let index = self.read_index(&r).await?;
        applied_through(&r, index).await?;
        Ok(r)
    }

    /// A read index for `r`, as good as one from a round that started after
    /// this call. The leader of a one-voter region needs none (see
    /// [`sole_voter_index`]); a leader holding its read lease asks only its
    /// Raft core ([`crate::read_lease::ReadLease`]); otherwise the leader joins its own batch
    /// directly — `reads` (which forwards through [`Node::submit`]) would
    /// add a second batching task hop and `submit`'s timer and retry loop
    /// per round (measured: 3-node, one client reading from the leader,
    /// docs/benchmarks.md). A leader that lost leadership meanwhile answers
    /// `NotLeader` and the read takes the forwarding path.
    async fn read_index(&self, r: &Region) -> Result<u64> {
        if r.raft.metrics().borrow().current_leader == Some(self.id) {
            match self.leader_read_index(r).await {
                Err(e) if e.is_retryable() => {}
                res => return res,
            }
        }
        r.reads.round().await
    }

    /// A read index for `r` from this replica as its leader (`NotLeader`
    /// if it is not): none needed for a sole voter, the read lease while
    /// it holds — straight to the core (batching these measured 5-9% fewer
    /// reads/s at 200 clients: the batch waits) — else the leader's
    /// batched round. A round that heard from no quorum in time (openraft
    /// gives it one heartbeat interval: a busy follower, or a cut) is run
    /// again until the request's deadline, as a forwarded one is, and as
    /// etcd retries its read index: one late heartbeat answer must not
    /// fail the read. (Every caller needs this: a read here, and the
    /// rounds other members and reads across regions ask this leader for
    /// — under a load that splits regions every few puts, a read across
    /// regions failed with "request timed out" after 1–3 s.)
    pub(crate) async fn leader_read_index(&self, r: &Region) -> Result<u64> {
        if let Some(index) = sole_voter_index(r, self.id) {
            return Ok(index);
        }
        if let Some(lease) = &r.lease {
            if let Some(index) = lease.leased_index(&r.raft).await? {
                return Ok(index);
            }
        }
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline.into(), r.leader_reads.round()).await {
                Ok(Err(Error::Timeout))
                    if std::time::Instant::now() + ROUND_AGAIN_AFTER < deadline =>
                {
                    tokio::time::sleep(ROUND_AGAIN_AFTER).await;
                }
                Ok(res) => return res,
                Err(_) => return Err(Error::Timeout),
            }
        }
    }

    /// `region`'s replica here, once it has applied every write stamped at
    /// or below `ts` (a TSO timestamp fetched before the call): its
    /// leader waits until it has answered every such write it proposed,
    /// then gives a read index, which this replica waits to apply. A write
    /// stamped later can still apply meanwhile; a read at revision `ts`
    /// does not see it.
    /// This node's concurrent calls for a region share rounds, each
    /// asking after the highest timestamp waiting (`Region::reads_after`).
    pub(crate) async fn caught_up_at(&self, region: u64, ts: i64) -> Result<Arc<Region>> {
        let r = self.region(region)?;
        let index = r.reads_after.round_with(ts).await?;
        applied_through(&r, index).await?;
        Ok(r)
    }
}

impl Node {
    /// [`Node::caught_up_at`] for a hash of the whole store: its own round
    /// (a hash asks each region once), which leaves a hibernating leader
    /// asleep (`ForwardOp::ReadIndexAfterQuietly`). A leader of the
    /// previous version refuses that op (it cannot decode it): then the
    /// shared round, which wakes it.
    pub(crate) async fn caught_up_quietly_at(&self, region: u64, ts: i64) -> Result<Arc<Region>> {
        let r = self.region(region)?;
        let index = match self
            .submit(region, ForwardOp::ReadIndexAfterQuietly(ts))
            .await
        {
            Err(Error::Refused(_)) => return self.caught_up_at(region, ts).await,
            answer => answer?.read_index()?,
        };
        applied_through(&r, index).await?;
        Ok(r)
    }

    /// A read timestamp T, and `region`'s replica here caught up to it as
    /// [`Node::caught_up_at`] would: both from its leader in one round
    /// (`ForwardOp::ReadIndexAtNewest`), which this node's concurrent reads
    /// of the region share. A read within one region while there are
    /// several.
    pub(crate) async fn caught_up_at_newest(&self, region: u64) -> Result<(i64, Arc<Region>)> {
        let r = self.region(region)?;
        let (t, index) = r.newest_reads.round().await?;
        applied_through(&r, index).await?;
        Ok((t, r))
    }
}

/// Waits (bounded) until `r`'s replica here has applied `index`.
pub(super) async fn applied_through(r: &Region, index: u64) -> Result<()> {
    r.raft
        .wait(Some(REQUEST_TIMEOUT))
        .applied_index_at_least(Some(index), "read-index")
        .await
        .map_err(|_| Error::Timeout)?;
    Ok(())
}

/// When this node is the only voter of `raft`'s region and leads it, and
/// has applied an entry of its own term: the applied index. Nothing more
/// is needed for a linearizable read then. No other node can lead (there
/// is no one to vote), every write this leader acknowledged was applied
/// here before its answer was sent, and the entry of its own term was
/// applied after everything committed before it (say, before a restart).
/// The read view, taken after this, includes all of that. Not for a
/// replica restored as leader in its term (`restored_lead`) until it has
/// applied the log it restored: its term's entries from before the crash
/// may still be applying (the read then takes a round, which waits).
pub(crate) fn sole_voter_index(r: &Region, me: u64) -> Option<u64> {
    let m = r.raft.metrics();
    let m = m.borrow();
    let mut voters = m.membership_config.membership().voter_ids();
    let sole = voters.next() == Some(me) && voters.next().is_none();
    let applied = m.last_applied?;
    let restored = RestoredLead::floor(r.restored.as_ref(), &m.vote, 0);
    (sole
        && m.current_leader == Some(me)
        && applied.leader_id.term == m.current_term
        && applied.index >= restored)
        .then_some(applied.index)
}
