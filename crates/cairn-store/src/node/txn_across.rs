//! A `Txn` whose keys lie in several regions: Percolator-style two-phase
//! commit with the transaction's state in Raft (issue 17, phase 3; the
//! lock logic is `cairn_mvcc::locks`, its commands
//! `cairn_raft::Command::{Prewrite, CommitLocked, ...}`).
//!
//! The node that got the request coordinates:
//! 1. **Footprint.** Every span the transaction reads or writes, whichever
//!    branch it takes, cut at region boundaries; the region holding the
//!    lowest key is the *primary*.
//! 2. **Prewrite.** A start timestamp from the TSO names the transaction.
//!    The primary's lock first (a secondary lock must never exist without
//!    it: resolvers trust the primary), then every other region's at once.
//!    A lock of another transaction in the way: ours above it are let go,
//!    that lock is waited for (or resolved once it outlives its TTL) while
//!    ours below it stay, and locking goes on region by region in key
//!    order — a transaction waits only while holding locks below the one
//!    it waits for, so none waits on one that waits on it.
//! 3. **Evaluate.** Once every region's replica here has applied its
//!    lock, nothing else can write the footprint. A commit timestamp from
//!    the TSO (above every lock's floor, the region's revision when it was
//!    placed); then the whole transaction runs here, on one engine view
//!    (regions share the node's engine) at `commit_ts - 1`: compares,
//!    branches, ranges with read-your-writes, `prev_kv`s — the response,
//!    and the branch path.
//! 4. **Commit.** The primary commits first: that entry decides the
//!    transaction (its outcome is recorded there), so it is checked as
//!    the client's write — against an auth change fenced since the
//!    prewrites (with a lease claimed, the keys on the lease too), and a
//!    CORRUPT or NOSPACE alarm raised since — and a refusal rolls the
//!    transaction back and is the answer (a key on a claimed lease the
//!    caller may not write starts it again: its prewrite trims a stale
//!    lease index, or answers the refusal). Then every other region
//!    commits its part at the same revision; each leader first waits until
//!    every single-region write it stamped at or below `commit_ts` is
//!    answered, so no write below the commit lands after it. The client is
//!    answered once every part is committed (a part that fails is finished
//!    by whoever meets its lock, from the primary's outcome), and the
//!    primary forgets the outcome a little later (`forget_later`: many at
//!    once, in the background).
//!
//! A coordinator that dies anywhere never blocks anyone: a request that
//! meets its lock waits [`super::txn_locks::LOCK_TTL`], then asks the
//! primary, which rolls the transaction back unless it committed. One
//! rolled back under a live coordinator (too slow) is started again by it.
//!
//! A transaction that writes nothing (read-only, or whose branch writes
//! nothing) takes the same path and releases its locks instead of
//! committing: its reads are one snapshot across regions, and it consumes
//! no revision (header revision `commit_ts - 1`).
//!
//! **Leases.** The lease table lives in the first region
//! (`cairn_mvcc::lease`). A transaction that puts a key with a lease
//! outside it comes here even if its keys are all in one other region: it
//! claims the lease in the first region too (the first region is then the
//! primary), the evaluation checks the lease exists under that claim, and
//! the first region's part records the attachment. A revoke whose keys
//! lie in several regions is a transaction of this kind as well
//! (`node::lease_across`).

use std::collections::BTreeMap;

use cairn_api::etcdserverpb::{TxnRequest, TxnResponse};
use cairn_mvcc::locks::{clip, footprint, KeySpan, LeaseClaims, Outcome};
use cairn_raft::{Command, Reply};
use futures::future::join_all;
use prost::Message;

use crate::node::{Node, DATA_REGION, META_REGION};
use crate::remote::{ForwardOk, ForwardOp};
use crate::tso;
use crate::{Access, Error, Result};

/// One attempt's end: an answer, or start again (a lock was in the way,
/// a route was stale, or a resolver rolled the attempt back).
pub(super) enum Attempt {
    Done(TxnResponse),
    Again,
    /// A revoke named fewer keys than its lease indexes: these.
    LeaseKeys(Vec<Vec<u8>>),
    /// An expiry decided in a leader term that is over: dropped.
    Abandoned,
}

/// A transaction across regions, and the leases it claims in the first
/// region (which holds the lease table).
pub(super) struct Plan {
    pub(super) req: TxnRequest,
    pub(super) leases: LeaseClaims,
}

/// A transaction's footprint cut by region, in key order (the primary
/// first), and its encoding.
struct Layout {
    req: TxnRequest,
    parts: Vec<(u64, Vec<KeySpan>)>,
    regions: Vec<u64>,
    txn: Vec<u8>,
}

/// Where a test makes a coordinator stop as if its node died: its locks
/// (and, after the primary's commit, its outcome) stay for others to
/// resolve.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorCrash {
    /// Every lock placed; nothing committed.
    AfterPrewrite,
    /// The primary committed; no secondary part yet.
    AfterPrimaryCommit,
}

/// What a test does to one attempt of a coordinator.
pub(super) enum Hook {
    /// Stops it as if its node died.
    Crash(CoordinatorCrash),
    /// Holds it after its prewrites until the receiver fires (or its
    /// sender is dropped).
    HoldAfterPrewrite(tokio::sync::oneshot::Receiver<()>),
    /// A revoke: holds it when its primary answers that the lease gained
    /// keys (its narrow lock placed), until the receiver fires; then it
    /// widens, and stops after the primary's commit as if its node died.
    /// (Taken by the first widening: a revoke widens at most twice.)
    HoldWideningThenCrash(Option<tokio::sync::oneshot::Receiver<()>>),
}

impl Node {
    /// The fate of transaction `start_ts` at its primary region, once the
    /// answer to its commit there was lost — at the region that absorbed
    /// the primary, if a merge did since (the commit left no lock, so it
    /// may have). Never `EpochMismatch` or `RolledBack`: the caller would
    /// run the transaction again, and it may have committed. Unknown is
    /// `Timeout`.
    async fn outcome_at_primary(&self, primary: u64, start_ts: i64) -> Result<Option<Outcome>> {
        let deadline = std::time::Instant::now() + super::REQUEST_TIMEOUT;
        loop {
            let at = self.live_region(primary);
            let resolve = ForwardOp::Plain(Command::ResolvePrimary { start_ts });
            match self.submit(at, resolve).await.and_then(ForwardOk::outcome) {
                Ok(o) => return Ok(o),
                Err(Error::EpochMismatch) if std::time::Instant::now() < deadline => {
                    // Absorbed on the member asked, not yet here.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(Error::EpochMismatch | Error::RolledBack) => return Err(Error::Timeout),
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves `req`, whose keys lie in more than one region (see the
    /// module essay).
    pub(crate) async fn txn_across(
        &self,
        req: &TxnRequest,
        access: &Access,
    ) -> Result<TxnResponse> {
        self.txn_across_hooked(req, access, None).await
    }

    /// [`Node::txn_across`], its first attempt under a test's `hook`.
    async fn txn_across_hooked(
        &self,
        req: &TxnRequest,
        access: &Access,
        mut hook: Option<Hook>,
    ) -> Result<TxnResponse> {
        let stale = super::kv::StaleRoutes::new();
        let plan = Plan::of(req);
        loop {
            match self.txn_across_once(&plan, access, hook.take()).await {
                Ok(Attempt::Done(resp)) => return Ok(resp),
                // A merge left its keys in one region (or a route here is
                // stale): the caller routes it again, to the single-region
                // path if it fits one now. Tried again here, the layout
                // would refuse it until the deadline.
                Err(Error::EpochMismatch)
                    if !matches!(self.route_txn(req), Err(Error::SpansRegions)) =>
                {
                    return Err(Error::EpochMismatch)
                }
                Ok(_) | Err(Error::EpochMismatch) | Err(Error::RolledBack) => stale.wait().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Tests: runs `req` across regions as [`Node::txn`] would, but stops
    /// at `crash` as if this node died there (`Ok(None)`); `Ok(Some(_))`
    /// if the attempt ended before it.
    #[doc(hidden)]
    pub async fn txn_across_then_crash(
        &self,
        req: &TxnRequest,
        crash: CoordinatorCrash,
    ) -> Result<Option<TxnResponse>> {
        let hook = Some(Hook::Crash(crash));
        match self
            .txn_across_once(&Plan::of(req), &Access::Internal, hook)
            .await?
        {
            Attempt::Done(resp) => Ok(Some(resp)),
            _ => Ok(None),
        }
    }

    /// Tests: runs `req` across regions for `access` as [`Node::txn`]
    /// would, its first attempt held after its prewrites until `go` fires.
    #[doc(hidden)]
    pub async fn txn_across_held(
        &self,
        req: &TxnRequest,
        access: &Access,
        go: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<TxnResponse> {
        let hook = Some(Hook::HoldAfterPrewrite(go));
        self.txn_across_hooked(req, access, hook).await
    }

    pub(super) async fn txn_across_once(
        &self,
        plan: &Plan,
        access: &Access,
        mut hook: Option<Hook>,
    ) -> Result<Attempt> {
        let Some(mut layout) = self.layout(plan.req.clone(), &plan.leases)? else {
            return Ok(Attempt::Again);
        };
        // Only a name: unique is enough, so no leadership confirmation (a
        // deposed TSO leader hands out only timestamps below its window's
        // end, and its successor starts above it).
        let meta = self.region(META_REGION)?;
        let start_ts = tso::fetch_timestamps(&self.tso, &self.pool, &meta.raft, 1, None).await?;
        let primary = layout.parts[0].0;
        // 2. The primary first; then the others at once. If some met a
        // lock, those above the lowest that did are rolled back, and from
        // there on it goes region by region in key order, a lock in the
        // way waited for (or resolved) while ours below it stay: every
        // transaction waits only holding locks below the one it waits
        // for, so none waits on one that waits on it.
        // The regions holding (or that may hold) our lock, the primary
        // first: what a refusal releases, and the parts a commit finishes.
        let mut locked: Vec<u64> = Vec::with_capacity(layout.parts.len());
        let hold = |locked: &mut Vec<u64>, region: u64| {
            if !locked.contains(&region) {
                locked.push(region);
            }
        };
        let mut floor = 0;
        let mut next = 0;
        let mut widened = 0;
        // Met a lock (resolved since): that region again, alone.
        let mut alone = false;
        while next < layout.parts.len() {
            let batch = if std::mem::take(&mut alone) || next == 0 {
                next..next + 1
            } else {
                next..layout.parts.len()
            };
            let answers = join_all(layout.parts[batch.clone()].iter().map(|(region, spans)| {
                self.prewrite(start_ts, &layout, *region, spans, &plan.leases, access)
            }))
            .await;
            let mut blocked = None;
            // The first refusal: the attempt ends once every answer of the
            // batch is in, releasing every lock it placed (one whose
            // answer came after the refusal, or was lost, too — left, it
            // would block its keys until the sweeper came).
            let mut refusal = None;
            for (i, res) in batch.zip(answers) {
                let region = layout.parts[i].0;
                if refusal.is_some() {
                    let placed = match &res {
                        Ok(ForwardOk::Reply(Reply::Revision(_))) => true,
                        Err(e) => may_have_landed(e),
                        Ok(_) => false,
                    };
                    if placed {
                        hold(&mut locked, region);
                    }
                    continue;
                }
                match res {
                    Ok(ForwardOk::Reply(Reply::Revision(f))) if blocked.is_none() => {
                        floor = floor.max(f);
                        hold(&mut locked, region);
                        next = i + 1;
                    }
                    Ok(ForwardOk::Reply(Reply::Revision(_))) => {
                        // Locked above a region that was not: let it go
                        // (taken again in order).
                        let undo = Command::RollbackLocked { start_ts };
                        let _ = self.submit(layout.parts[i].0, ForwardOp::Plain(undo)).await;
                    }
                    Ok(ForwardOk::Reply(Reply::Locked(other))) if blocked.is_none() => {
                        if i == 0 && widened > 0 {
                            // The primary still holds the narrower lock of
                            // the revoke before it widened.
                            hold(&mut locked, region);
                        }
                        blocked = Some((region, other));
                    }
                    Ok(ForwardOk::Reply(Reply::Locked(_))) => {}
                    Ok(ForwardOk::Reply(Reply::LeaseKeys(keys))) if i == 0 => {
                        // A revoke whose lease gained keys since they were
                        // read: claimed now (no more can join), so name
                        // them all and prewrite the primary again.
                        // (`locked` stays empty: the primary is pushed
                        // when its widened prewrite answers.)
                        if widened == 2 || plan.leases.revoke.len() != 1 {
                            self.release(start_ts, primary, &[primary]).await;
                            return Ok(Attempt::LeaseKeys(keys));
                        }
                        if let Some(Hook::HoldWideningThenCrash(go)) = &mut hook {
                            if let Some(go) = go.take() {
                                let _ = go.await;
                            }
                        }
                        widened += 1;
                        let body = cairn_mvcc::lease::revoke_txn(plan.leases.revoke[0], keys);
                        match self.layout(body, &plan.leases) {
                            Ok(Some(l)) if l.parts[0].0 == primary => layout = l,
                            _ => {
                                self.release(start_ts, primary, &[primary]).await;
                                return Ok(Attempt::Again);
                            }
                        }
                    }
                    refused => {
                        // It may have landed (its answer lost); or the
                        // primary holds the narrower lock of a revoke
                        // widened since.
                        let lost = refused.as_ref().err().is_some_and(may_have_landed);
                        if lost || (i == 0 && widened > 0) {
                            hold(&mut locked, region);
                        }
                        refusal = Some(refused);
                    }
                }
            }
            if let Some(refused) = refusal {
                return self.refused(refused, start_ts, primary, &locked).await;
            }
            if let Some((region, other)) = blocked {
                if let Err(e) = self.resolve_lock(region, other).await {
                    self.release(start_ts, primary, &locked).await;
                    return Err(e);
                }
                // Then this region alone, its answer taken as any (a
                // revoke's primary may answer that its lease gained keys:
                // it widens, its lock placed), and on in order.
                alone = true;
            }
        }
        let Layout { req, parts, .. } = layout;
        let req = &req;
        match &mut hook {
            Some(Hook::Crash(CoordinatorCrash::AfterPrewrite)) => return Ok(Attempt::Again),
            Some(Hook::HoldAfterPrewrite(go)) => {
                let _ = go.await;
            }
            _ => {}
        }
        fail::fail_point!(cairn_raft::failpoints::TXN_AFTER_PREWRITE);
        // 3. Evaluate under the locks.
        let caught_up = join_all(parts.iter().map(|(region, _)| self.caught_up(*region))).await;
        if let Some(Err(e)) = caught_up.into_iter().find(|r| r.is_err()) {
            self.release(start_ts, primary, &locked).await;
            return Err(e);
        }
        // Above every lock's floor: the TSO hands out timestamps above
        // every revision written before the prewrites, so the first one
        // is; a region whose revision ran past the TSO would get another.
        let commit_ts = loop {
            match self.commit_timestamp().await {
                Ok(t) if t > floor.max(start_ts) => break t,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                Err(e) => {
                    self.release(start_ts, primary, &locked).await;
                    return Err(e);
                }
            }
        };
        let view = self.region(primary)?.shared.engine().snapshot();
        // Read after the view: a compaction in between would otherwise go
        // unnoticed by a range at an explicit revision.
        let compacted = parts
            .iter()
            .filter_map(|(region, _)| self.region(*region).ok())
            .map(|r| r.shared.revisions().compacted)
            .max()
            .unwrap_or(0);
        let whole = req.clone();
        let evaluated = self
            .spans
            .run(move || {
                let revs = cairn_mvcc::Revisions {
                    current: commit_ts - 1,
                    compacted,
                };
                // The lease table is in this view too (the first region
                // is caught up, and its claims keep the leases put here).
                let leases = cairn_mvcc::lease::StoredLeases(&*view);
                cairn_mvcc::apply_txn(&*view, &whole, commit_ts, revs, &leases)
            })
            .await
            .and_then(|r| r.map_err(Error::from));
        let out = match evaluated {
            Ok(out) => out,
            Err(e) => {
                self.release(start_ts, primary, &locked).await;
                return Err(e);
            }
        };
        if out.batch.is_empty() && plan.leases.revoke.is_empty() {
            // Nothing to write: the locks go, no revision is used.
            self.release(start_ts, primary, &locked).await;
            return Ok(Attempt::Done(out.response));
        }
        // 4. Commit: the primary decides.
        let path = out.path.clone();
        let commit = |region: u64| {
            let op = ForwardOp::CommitLocked {
                start_ts,
                commit_ts,
                path: path.clone(),
            };
            async move { self.submit(region, op).await.and_then(ForwardOk::outcome) }
        };
        // The primary's commit is checked as the client's write: an auth
        // change fenced in its region since the prewrites (acknowledged,
        // so ordered before this commit) is met there, and the caller is
        // checked again against it, as etcd checks a Txn at apply.
        let at_primary = ForwardOp::CommitLocked {
            start_ts,
            commit_ts,
            path: path.clone(),
        };
        let decided = match self
            .checked_submit(primary, access, at_primary, !plan.leases.is_empty())
            .await
            .and_then(ForwardOk::outcome)
        {
            Ok(o) => o,
            // A key on a claimed lease the caller may not write — or one
            // whose index entry went stale since the prewrite: started
            // again, the prewrite trims the index or answers the refusal.
            Err(Error::Rejected(cairn_mvcc::Rejection::PermissionDenied))
                if !plan.leases.is_empty() =>
            {
                self.release(start_ts, primary, &locked).await;
                return Ok(Attempt::Again);
            }
            // Refused, nothing committed, the locks stay: the caller may no
            // longer write them, or the primary's region has a NOSPACE
            // alarm raised since (`txn_locks::commit`), or its lease went.
            Err(e @ (Error::Auth(_) | Error::Rejected(_))) => {
                self.release(start_ts, primary, &locked).await;
                return Err(e);
            }
            // Unknown (leader lost mid-way): settle it. Nothing known
            // there either: a resolver finished it and forgot the outcome
            // (committed or rolled back): still unknown, not a bug.
            Err(_) => match self.outcome_at_primary(primary, start_ts).await? {
                None => return Err(Error::Timeout),
                known => known,
            },
        };
        match decided {
            Some(Outcome::Committed { commit_ts: at, .. }) if at == commit_ts => {}
            // A resolver found this attempt stalled and rolled it back
            // (and, for `None`, finished and forgot it before our commit
            // applied: the primary's lock was gone, so it did not commit).
            Some(Outcome::RolledBack) | None => {
                self.release(start_ts, primary, &locked).await;
                return Ok(Attempt::Again);
            }
            other => {
                return Err(Error::Internal(format!(
                    "primary region {primary} answered {other:?} to a commit"
                )))
            }
        }
        if matches!(
            hook,
            Some(
                Hook::Crash(CoordinatorCrash::AfterPrimaryCommit) | Hook::HoldWideningThenCrash(_)
            )
        ) {
            return Ok(Attempt::Again);
        }
        fail::fail_point!(cairn_raft::failpoints::TXN_AFTER_PRIMARY_COMMIT);
        let secondaries = join_all(locked[1..].iter().map(|region| commit(*region))).await;
        let finished = secondaries.iter().all(|r| r.is_ok());
        for (region, r) in locked[1..].iter().zip(&secondaries) {
            if let Err(e) = r {
                // Whoever meets the lock finishes it from the outcome.
                tracing::debug!(region, start_ts, "committing a secondary part: {e}");
            }
        }
        if finished {
            // Every part is in: the outcome is needed no more. Forgotten in
            // the background, many at once (not a Raft round more before
            // the client's answer).
            self.forget_later(primary, start_ts);
        }
        Ok(Attempt::Done(out.response))
    }

    /// Ends an attempt whose prewrite was refused (`res`): our locks in
    /// `locked` released, then start again — settled meanwhile (rolled
    /// back while we waited), or a retryable refusal — or the error.
    async fn refused(
        &self,
        res: Result<ForwardOk>,
        start_ts: i64,
        primary: u64,
        locked: &[u64],
    ) -> Result<Attempt> {
        self.release(start_ts, primary, locked).await;
        match res {
            Ok(ForwardOk::Reply(Reply::Outcome(_))) => Ok(Attempt::Again),
            Ok(ForwardOk::Reply(Reply::Done)) => Ok(Attempt::Abandoned),
            Ok(ok) => ok.reply().map(|_| Attempt::Again),
            Err(e) => Err(e),
        }
    }

    /// Rolls back an attempt's locks: settles it at the primary (as
    /// rolled back, unless it committed) and drops the other `locked`
    /// regions' locks. Best effort: a lock left is resolved by whoever
    /// meets it, or the sweeper.
    async fn release(&self, start_ts: i64, primary: u64, locked: &[u64]) {
        if locked.is_empty() {
            return;
        }
        let settled = self
            .submit(
                primary,
                ForwardOp::Plain(Command::ResolvePrimary { start_ts }),
            )
            .await
            .and_then(ForwardOk::outcome);
        if !matches!(settled, Ok(Some(Outcome::RolledBack))) {
            tracing::debug!(start_ts, "releasing at the primary: {settled:?}");
            return;
        }
        let rollbacks = locked.iter().filter(|r| **r != primary).map(|region| {
            self.submit(
                *region,
                ForwardOp::Plain(Command::RollbackLocked { start_ts }),
            )
        });
        // The outcome goes only once no part is left to finish from it. (A
        // region a merge absorbed held no lock: a region is frozen for a
        // merge only without locks.)
        let finished = join_all(rollbacks)
            .await
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(Error::EpochMismatch)));
        if finished {
            let _ = self
                .submit(
                    primary,
                    ForwardOp::Plain(Command::ForgetOutcome { start_ts }),
                )
                .await;
        }
    }

    /// `req`'s layout: its footprint by region, with the first region
    /// (the lease table's) in front when `leases` claims any; `None` when
    /// the regions here do not cover it (route again).
    fn layout(&self, req: TxnRequest, leases: &LeaseClaims) -> Result<Option<Layout>> {
        let Some(mut parts) = self.footprint_parts(&footprint(&req)) else {
            return Ok(None);
        };
        if !leases.is_empty() && parts.first().is_none_or(|(r, _)| *r != DATA_REGION) {
            // The lease table's region takes part (first: it holds the
            // first key), whether or not it holds any of the keys.
            parts.insert(0, (DATA_REGION, Vec::new()));
        }
        if parts.len() < 2 && leases.is_empty() {
            // A merge or stale route: the single-region path serves it.
            return Err(Error::EpochMismatch);
        }
        Ok(Some(Layout {
            regions: parts.iter().map(|(r, _)| *r).collect(),
            txn: req.encode_to_vec(),
            req,
            parts,
        }))
    }

    /// Prewrites `layout`'s part in `region` (`spans`), with the lease
    /// claims if it is the first region.
    async fn prewrite(
        &self,
        start_ts: i64,
        layout: &Layout,
        region: u64,
        spans: &[KeySpan],
        claims: &LeaseClaims,
        access: &Access,
    ) -> Result<ForwardOk> {
        let leases = if region == DATA_REGION {
            claims.clone()
        } else {
            LeaseClaims::default()
        };
        // A lease claim is checked as etcd checks a put with a lease or a
        // revoke: the caller may write every key the lease has.
        let lease_keys = !leases.is_empty();
        let cmd = Command::Prewrite {
            start_ts,
            primary: layout.parts[0].0,
            regions: layout.regions.clone(),
            spans: spans.to_vec(),
            txn: layout.txn.clone(),
            leases,
        };
        self.checked_submit(region, access, ForwardOp::Plain(cmd), lease_keys)
            .await
    }

    /// `spans` cut at the boundaries of the regions hosted here, by region
    /// in key order (the first holds the lowest key); `None` when the
    /// regions here do not cover a span (a region being started: route
    /// again).
    pub(super) fn footprint_parts(&self, spans: &[KeySpan]) -> Option<Vec<(u64, Vec<KeySpan>)>> {
        let mut by_start: BTreeMap<Vec<u8>, (u64, Vec<KeySpan>)> = BTreeMap::new();
        for span in spans {
            let end = (!span.1.is_empty()).then_some(span.1.as_slice());
            let mut routed = self.regions_overlapping(&span.0, end);
            routed.sort_by(|a, b| a.1.cmp(&b.1));
            if !super::range_across::tiles(&routed, &span.0, end) {
                return None;
            }
            for (r, start, stop) in routed {
                if r.id == META_REGION {
                    continue;
                }
                if let Some(piece) = clip(span, &start, &stop) {
                    by_start
                        .entry(start)
                        .or_insert_with(|| (r.id, Vec::new()))
                        .1
                        .push(piece);
                }
            }
        }
        Some(by_start.into_values().collect())
    }
}

/// True when a request that failed with `e` may still have been applied
/// (its answer lost), not refused before it was proposed: the caller's own
/// check (`Auth`), a region absorbed by a merge (`EpochMismatch`), a
/// refusal (`Rejected`), a node stopping.
fn may_have_landed(e: &Error) -> bool {
    !matches!(
        e,
        Error::Auth(_) | Error::EpochMismatch | Error::Rejected(_) | Error::Stopped
    )
}

impl Plan {
    /// A client's transaction: it claims for an attach every lease it may
    /// put a key with.
    pub(super) fn of(req: &TxnRequest) -> Self {
        let mut attach = cairn_raft::leases_put(req);
        attach.sort_unstable();
        attach.dedup();
        Plan {
            req: req.clone(),
            leases: LeaseClaims {
                attach,
                ..LeaseClaims::default()
            },
        }
    }
}
