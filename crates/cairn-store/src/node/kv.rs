//! The KV entry points: Txn (Put and DeleteRange arrive as one-op
//! txns), Range, Compact, and the data region's alarms and history hash.
//! Reads run single keys in place and spans on the bounded span pool.

use cairn_api::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use cairn_raft::Command;
use prost::Message;

use crate::node::{CatchUp, Node, DATA_REGION, META_REGION, REQUEST_TIMEOUT};
use crate::remote::ForwardOp;
use crate::{Access, Error, Result};

impl Node {
    /// Runs a transaction (`Put`/`DeleteRange` arrive as one-op txns) for
    /// `access` (checked: see `auth`).
    pub async fn txn(&self, req: &TxnRequest, access: &Access) -> Result<TxnResponse> {
        let r = self.serve_txn(req, access).await?;
        if super::sequential::wrote(&r) {
            self.answering(r.header.as_ref().map_or(0, |h| h.revision));
        }
        Ok(r)
    }

    async fn serve_txn(&self, req: &TxnRequest, access: &Access) -> Result<TxnResponse> {
        let stale = StaleRoutes::new();
        loop {
            let region = match self.route_txn(req) {
                Err(Error::EpochMismatch) => {
                    stale.wait().await?;
                    continue;
                }
                Err(Error::SpansRegions) => {
                    // Boxed: the paths across regions are large futures,
                    // and rare; the single-region path stays small.
                    let across = if cairn_mvcc::is_read_only(req) {
                        Box::pin(self.read_txn_across(req, access)).await
                    } else {
                        Box::pin(self.txn_across(req, access)).await
                    };
                    match across {
                        Err(Error::EpochMismatch) => {
                            stale.wait().await?;
                            continue;
                        }
                        other => return other,
                    }
                }
                other => other?,
            };
            let res = if cairn_mvcc::is_read_only(req) {
                self.read_txn(region, req, access).await
            } else {
                self.checked_submit(
                    region,
                    access,
                    ForwardOp::Txn(req.encode_to_vec()),
                    !cairn_raft::leases_put(req).is_empty(),
                )
                .await
                .and_then(|ok| ok.txn())
                .and_then(|b| {
                    TxnResponse::decode(b.as_slice()).map_err(|e| Error::Internal(e.to_string()))
                })
            };
            match res {
                Err(Error::EpochMismatch) => stale.wait().await?,
                other => return other,
            }
        }
    }

    /// Compacts history at `revision`; returns the current revision once
    /// this replica has applied the compaction too (so a watch opened on
    /// it afterwards from below is told it is compacted), and when
    /// `physical` (etcd's flag) once this member's replicas have also
    /// swept the versions it dropped (`compaction_sweeps`).
    pub async fn compact(&self, revision: i64, physical: bool, access: &Access) -> Result<i64> {
        let current = self.compact_logical(revision, access).await?;
        if physical {
            // The compaction is done; a failure here must not turn it into
            // an error a retry would then meet as "compacted".
            if let Err(e) = self.sweep_here().await {
                tracing::warn!("compacted, but not yet swept here: {e}");
            }
        }
        Ok(current)
    }

    async fn compact_logical(&self, revision: i64, access: &Access) -> Result<i64> {
        if revision == 0 {
            return self.compact_at_zero(access).await;
        }
        if self.several_regions() {
            return self.compact_across(revision, access).await;
        }
        let current = self
            .checked_submit(DATA_REGION, access, ForwardOp::Compact(revision), false)
            .await?
            .compacted()?;
        // The first region answers (as etcd's one store would); regions
        // split from it compact the same history, up to their own newest
        // revision (a region idle since then holds nothing newer).
        for (r, _, _) in self.regions_overlapping(b"", None) {
            if r.id == DATA_REGION {
                continue;
            }
            // (The region's own newest revision: not a side close's.)
            let at = revision.min(r.shared.with_applied(|a| a.current_revision));
            match self
                .checked_submit(r.id, access, ForwardOp::Compact(at), false)
                .await
                .and_then(|ok| ok.compacted())
            {
                Ok(_) | Err(Error::Rejected(cairn_mvcc::Rejection::Compacted)) => {}
                Err(e) => tracing::warn!(region = r.id, "compacting a split region: {e}"),
            }
        }
        // The compaction is done; failing to see it here must not turn it
        // into an error (a retry would then be refused as already
        // compacted).
        if let Err(e) = self.linearizable_view(DATA_REGION).await {
            tracing::warn!("compacted, but not yet applied here: {e}");
        }
        Ok(current)
    }

    /// A compaction at 0: etcd's store starts compacted at -1, so on a
    /// store never compacted this is answered (at the current revision)
    /// and changes nothing; on any other, it is refused as compacted.
    /// (With the access a compaction needs, on a caught-up replica of the
    /// first data region.)
    async fn compact_at_zero(&self, access: &Access) -> Result<i64> {
        self.authorize_fresh(access).await?;
        let (_, revs) = self.linearizable_view(DATA_REGION).await?;
        let compacted = self
            .regions_overlapping(b"", None)
            .iter()
            .map(|(r, _, _)| r.shared.revisions().compacted)
            .max()
            .unwrap_or(0)
            .max(revs.compacted);
        if compacted > 0 {
            return Err(Error::Rejected(cairn_mvcc::Rejection::Compacted));
        }
        if self.several_regions() {
            return self.read_timestamp().await;
        }
        Ok(revs.current)
    }

    /// Compacts every region at `revision` while there are several: a
    /// revision any region wrote, up to a read timestamp T (above
    /// it, a future revision; at or below the store's compaction, the
    /// highest any region has, compacted already). Each region compacts
    /// at it; one whose newest revision is below moves up to it, as by a
    /// closed timestamp, once its leader settled it there — answered every
    /// write it stamped at or below it, and stamps none there again — so
    /// nothing can land in between any more (`ForwardOp::Compact`). The
    /// answer carries T.
    ///
    /// A split that applies in a region before its compaction does gives
    /// birth to a region at the parent's old compaction, which the list
    /// taken first does not hold: the regions are listed again until every
    /// one covering the keyspace was asked (within [`REQUEST_TIMEOUT`];
    /// past it, or where one failed, the leaders' background check brings
    /// it up to the store's compaction, `region_catch_up`).
    async fn compact_across(&self, revision: i64, access: &Access) -> Result<i64> {
        let t = self.read_timestamp().await?;
        if revision > t {
            return Err(Error::Rejected(cairn_mvcc::Rejection::FutureRevision));
        }
        let mut regions = self.regions_overlapping(b"", None);
        let compacted = regions
            .iter()
            .map(|(r, _, _)| r.shared.revisions().compacted)
            .max()
            .unwrap_or(0);
        if revision <= compacted {
            return Err(Error::Rejected(cairn_mvcc::Rejection::Compacted));
        }
        regions.sort_by_key(|(r, _, _)| r.id != DATA_REGION);
        let mut todo: Vec<u64> = regions.iter().map(|(r, _, _)| r.id).collect();
        let mut asked = std::collections::HashSet::new();
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            for id in todo {
                asked.insert(id);
                let compacted = self
                    .checked_submit(id, access, ForwardOp::Compact(revision), false)
                    .await
                    .and_then(|ok| ok.compacted());
                // The first region answers (every region compacts at the
                // same revisions, so its compaction is the store's).
                match (id == DATA_REGION, compacted) {
                    (true, Err(e)) => return Err(e),
                    (_, Ok(_))
                    | (false, Err(Error::Rejected(cairn_mvcc::Rejection::Compacted))) => {}
                    (false, Err(e)) => tracing::warn!(region = id, "compacting a region: {e}"),
                }
            }
            let all = self.span_regions(b"", None);
            todo = all
                .ids()
                .into_iter()
                .filter(|id| !asked.contains(id))
                .collect();
            if todo.is_empty() && all.covered() {
                break;
            }
            if todo.is_empty() {
                if std::time::Instant::now() >= deadline || self.is_stopped() {
                    tracing::warn!("compacted; a region born meanwhile is not hosted here yet");
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        if let Err(e) = self.linearizable_view(DATA_REGION).await {
            tracing::warn!("compacted, but not yet applied here: {e}");
        }
        Ok(t)
    }

    /// True once the first data region has split: then a region's own
    /// revision is not the store's, and linearizable reads and
    /// compactions take a timestamp from the TSO.
    pub(crate) fn several_regions(&self) -> bool {
        self.region(DATA_REGION)
            .is_ok_and(|r| r.shared.with_applied(|a| !a.range.end.is_empty()))
    }

    /// Serves a `Range`: linearizable via read-index at the leader, then a
    /// local read once this replica has applied that far; `serializable`
    /// reads come straight from this replica. A span over several regions
    /// is read at one timestamp (`range_across`), and so is any
    /// linearizable read while there are several regions: its header then
    /// carries the store's revision, not its region's.
    ///
    /// A serializable read is served at or above every revision this
    /// member has answered with (`sequential.rs`).
    pub async fn range(&self, req: RangeRequest, access: &Access) -> Result<RangeResponse> {
        let (r, here) = self.serve_range(req, access).await?;
        if here {
            self.answering(r.header.as_ref().map_or(0, |h| h.revision));
        }
        Ok(r)
    }

    /// `req`'s answer, and whether it was read from this member's replicas
    /// as they are (a serializable read, or any with one region): only
    /// those count as answers (`sequential.rs`), not one read at a fresh
    /// timestamp — a serializable read served linearizably included.
    async fn serve_range(
        &self,
        req: RangeRequest,
        access: &Access,
    ) -> Result<(RangeResponse, bool)> {
        let (floor, since) = (self.answered_revision(), std::time::Instant::now());
        let at_timestamp = |r: Result<RangeResponse>| r.map(|r| (r, false));
        if !req.serializable && self.several_regions() {
            return at_timestamp(Box::pin(self.range_across(req, access)).await);
        }
        let stale = StaleRoutes::new();
        let (snap, revs) = loop {
            let region = match self.route_span(&req.key, &req.range_end) {
                Err(Error::EpochMismatch) => {
                    stale.wait().await?;
                    continue;
                }
                Err(Error::SpansRegions) if req.serializable => {
                    return Box::pin(self.range_serializable_across(req, access, floor, since))
                        .await
                }
                Err(Error::SpansRegions) => {
                    return at_timestamp(Box::pin(self.range_across(req, access)).await)
                }
                other => other?,
            };
            // The region routed to may be absorbed by a merge, here or at
            // its leader, before it is read: routed again, as a stale
            // route is (etcd has no such error to tell).
            let r = match self.region(region) {
                Err(Error::EpochMismatch) => {
                    stale.wait().await?;
                    continue;
                }
                other => other?,
            };
            let local = req.serializable
                && r.shared.applied_index() > 0
                && self.region_reaches(&r, since, floor).await;
            let r = if local {
                r
            } else {
                // Linearizable, a replica that holds nothing yet (an
                // adopted one before its snapshot), or one still below a
                // revision this member answered with: from the leader's
                // index.
                let r = match self.caught_up(region).await {
                    Err(Error::EpochMismatch) => {
                        stale.wait().await?;
                        continue;
                    }
                    other => other?,
                };
                if self.several_regions() {
                    // A split applied here while catching up; or an idle
                    // region's newest revision, below `floor`: read at a
                    // timestamp.
                    return at_timestamp(Box::pin(self.range_across(req, access)).await);
                }
                r
            };
            let span = cairn_mvcc::locks::etcd_span(&req.key, &req.range_end);
            let (snap, revs, range, lock) = r.shared.read_view_locked(&[span], req.revision);
            if req.revision > revs.current && self.several_regions() {
                // Serializable, at a revision above this region's newest
                // that another region may have written: read at a
                // timestamp (the same answer, or a future revision), as
                // across regions.
                return at_timestamp(Box::pin(self.range_across(req, access)).await);
            }
            if let Some(lock) = lock {
                // A transaction across regions may still commit below
                // this read's revision: wait for it, and read again.
                match self.resolve_lock(region, lock).await {
                    Err(Error::EpochMismatch) => stale.wait().await?,
                    other => other?,
                }
                continue;
            }
            if range.covers(&req.key, &req.range_end) {
                break (snap, revs);
            }
            stale.wait().await?;
        };
        self.authorize(access).await?;
        // A single key is a bounded read (an index lookup and one version):
        // it runs right here. Handing it to the blocking pool cost more than
        // the read (a profile of 50 clients getting one key: ~10% of the
        // server's CPU in spawn_blocking's hand-off, docs/benchmarks.md).
        // Spans can be any size, so they go to the bounded span pool.
        if req.range_end.is_empty() {
            return cairn_mvcc::range(&*snap, &req, revs)
                .map(|r| (r, true))
                .map_err(Error::from);
        }
        self.spans
            .run(move || cairn_mvcc::range(&*snap, &req, revs))
            .await?
            .map(|r| (r, true))
            .map_err(Error::from)
    }

    /// Serves a Txn that writes nothing the way etcd does: like a Range
    /// (linearizable through the read index, or from this replica when every
    /// op is a serializable Range), with no Raft proposal and no revision.
    /// Compares and ranges over single keys run here; any span goes to the
    /// span pool, as for [`Node::range`].
    async fn read_txn(
        &self,
        region: u64,
        req: &TxnRequest,
        access: &Access,
    ) -> Result<TxnResponse> {
        let footprint = cairn_mvcc::locks::footprint(req);
        let serializable = cairn_mvcc::is_serializable(req);
        let (floor, since) = (self.answered_revision(), std::time::Instant::now());
        // A read timestamp, kept while the read waits for locks: only
        // transactions started below it hold the read up, not a stream of
        // later ones on its keys (as across regions, `range_across`).
        let mut kept = None;
        let (snap, revs, at) = loop {
            let r = self.region(region)?;
            // Serializable: from this replica, once it holds every revision
            // this member answered with (`sequential.rs`).
            // (Not one reading at a revision above this region's newest
            // that another region may have written: at a timestamp.)
            let local = serializable
                && r.shared.applied_index() > 0
                && !(newest_revision_read(req) > r.shared.revisions().current
                    && self.several_regions())
                && self.region_reaches(&r, since, floor).await;
            // While there are several regions, any other is read at a
            // timestamp (as `range` is): its header is the store's
            // revision.
            let (r, at) = if !local && self.several_regions() {
                let (t, r) = match kept {
                    Some(t) => (t, self.caught_up_at(region, t).await?),
                    None => self.caught_up_at_newest(region).await?,
                };
                kept = Some(t);
                (r, Some(t))
            } else if local {
                (r, None)
            } else {
                let r = self.caught_up(region).await?;
                if self.several_regions() {
                    continue; // a split applied here while catching up
                }
                (r, None)
            };
            // The newest state: every lock in the footprint is waited for
            // (its commit may land below the region's newest revision);
            // at T, those that may commit at or below T.
            let (snap, revs, range, lock) = r.shared.read_view_locked(&footprint, at.unwrap_or(0));
            if !cairn_raft::txn_within(req, &range) {
                return Err(Error::EpochMismatch);
            }
            if at.is_some_and(|t| revs.compacted > t) {
                // Compacted past T while it waited: read again at a new
                // timestamp (as across regions, `txn_read_across`).
                kept = None;
                continue;
            }
            match lock {
                Some(lock) => self.resolve_lock(region, lock).await?,
                None => break (snap, revs, at),
            }
        };
        self.authorize(access).await?;
        if at.is_none() {
            // Read from this replica as it is (serializable, or with one
            // region): an answer that counts (`sequential.rs`).
            self.answering(revs.current);
        }
        // Read at T: the view holds every write at or below T, and no lock
        // that may commit there. Above the region's newest revision,
        // that is its newest state (nothing lands in this region between
        // the two any more); below, the view as of T (later writes landed
        // since T was taken).
        let (revs, at) = match at {
            Some(t) if t > revs.current => (cairn_mvcc::Revisions { current: t, ..revs }, None),
            Some(t) if t < revs.current => (revs, Some(t)),
            _ => (revs, None),
        };
        let read = move |snap: &dyn cairn_storage::Snapshot, req: &TxnRequest| match at {
            Some(t) => cairn_mvcc::read_txn_at(snap, req, revs, t),
            None => cairn_mvcc::read_txn(snap, req, revs),
        };
        if single_keys(req) {
            return read(&*snap, req).map_err(Error::from);
        }
        let req = req.clone();
        self.spans
            .run(move || read(&*snap, &req))
            .await?
            .map_err(Error::from)
    }

    /// Raises (`activate`) or clears an alarm in every data region (each
    /// refuses writes by it); the alarms it changed in the first (none if
    /// it already was so).
    pub async fn alarm(&self, activate: bool, member: u64, alarm: i32) -> Result<Vec<(u64, i32)>> {
        let cmd = Command::Alarm {
            activate,
            member,
            alarm,
        };
        self.propose_everywhere(cmd).await?.alarms()
    }

    /// The alarms raised, as this member's replicas have applied them: in
    /// any data region. Each region keeps its own set and refuses writes
    /// by it; a raise or disarm that reached some regions only is in
    /// force in the rest until their leaders mend them
    /// (`region_catch_up`), and is listed meanwhile, so a disarm clears
    /// what still refuses writes somewhere.
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        let mut all = std::collections::BTreeSet::new();
        for r in self.regions.all() {
            if r.id != META_REGION {
                r.shared
                    .with_applied(|a| all.extend(a.alarms.iter().copied()));
            }
        }
        all.into_iter().collect()
    }

    /// The alarms raised in the store, as this member's replica of the
    /// first data region has applied them: what a raise looks at before
    /// raising again (an alarm only some other region holds is cleared
    /// there by its leader, `region_catch_up`).
    pub fn store_alarms(&self) -> Vec<(u64, i32)> {
        self.region(DATA_REGION)
            .map(|r| {
                r.shared
                    .with_applied(|a| a.alarms.iter().copied().collect())
            })
            .unwrap_or_default()
    }

    /// This member's hash of its key history up to `revision` (0: the
    /// store's current revision), as etcd's `HashKV` hashes its local
    /// store: every region's keys, as one (`store_hash`).
    pub async fn hash_kv(&self, revision: i64) -> Result<cairn_mvcc::KvHash> {
        let mut tries = 0;
        loop {
            let (at, catch_up) = self.hash_point().await?;
            // Above the point, a revision is in the future as of the
            // request (its writes may not all be in yet).
            if revision > at {
                return Err(Error::Rejected(cairn_mvcc::Rejection::FutureRevision));
            }
            let asked = if revision > 0 { revision } else { at };
            match self.store_hash(at, asked, catch_up).await {
                // The current state, compacted past the point meanwhile:
                // take a newer point, as a Range does.
                Err(Error::Rejected(cairn_mvcc::Rejection::Compacted))
                    if revision == 0 && tries < 3 =>
                {
                    tries += 1;
                }
                // etcd refuses a hash at the compaction revision itself
                // (its hash covers the versions above it), where a Range
                // there is served.
                Ok(h) if revision > 0 && revision <= h.hash.compacted => {
                    return Err(Error::Rejected(cairn_mvcc::Rejection::Compacted))
                }
                other => return Ok(other?.hash),
            }
        }
    }

    /// The revision a hash of the current state is taken at, and how the
    /// regions here catch up to it: with one region, the one its replica
    /// here has resolved (no round trip, as etcd reads its own store);
    /// with several, a read timestamp (an idle region's replica may have
    /// resolved only its last write).
    pub(crate) async fn hash_point(&self) -> Result<(i64, CatchUp)> {
        Ok(if self.several_regions() {
            (self.read_timestamp().await?, CatchUp::Leaders)
        } else {
            (self.resolved_everywhere(), CatchUp::Local)
        })
    }
}

/// Retries of a request routed by a replica that had not applied a split
/// yet: a short pause each (the replica catches up in a round trip or
/// two), then etcd's `Timeout` ("request timed out") once
/// [`REQUEST_TIMEOUT`] has passed: the client is told what etcd tells of
/// a request that did not go in time, not the internal reason.
pub(super) struct StaleRoutes(std::time::Instant);

impl StaleRoutes {
    pub(super) fn new() -> Self {
        Self(std::time::Instant::now() + REQUEST_TIMEOUT)
    }

    pub(super) async fn wait(&self) -> Result<()> {
        if std::time::Instant::now() >= self.0 {
            return Err(Error::Timeout);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        Ok(())
    }
}

/// The highest explicit revision a range in `req` reads at (nested txns
/// included; 0: none).
fn newest_revision_read(req: &TxnRequest) -> i64 {
    use cairn_api::etcdserverpb::request_op::Request;
    req.success
        .iter()
        .chain(&req.failure)
        .map(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.revision,
            Some(Request::RequestTxn(t)) => newest_revision_read(t),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// True when every compare and range in `req` (nested txns included) names
/// one key, so reading it is bounded.
fn single_keys(req: &TxnRequest) -> bool {
    use cairn_api::etcdserverpb::request_op::Request;
    req.compare.iter().all(|c| c.range_end.is_empty())
        && req
            .success
            .iter()
            .chain(&req.failure)
            .all(|op| match &op.request {
                Some(Request::RequestRange(r)) => r.range_end.is_empty(),
                Some(Request::RequestTxn(t)) => single_keys(t),
                _ => true,
            })
}
