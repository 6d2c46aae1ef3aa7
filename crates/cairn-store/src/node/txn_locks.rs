//! Meeting a lock of a transaction across regions (see
//! `cairn_mvcc::locks` and `node::txn_across`): wait for it, and if it
//! outlives [`LOCK_TTL`] — its coordinator crashed or stalled — settle the
//! transaction's fate at its primary region (which rolls it back if still
//! undecided), finish every region it locked the same way, and have the
//! primary forget the outcome. Nobody ever waits on a dead coordinator
//! for longer than that, and no outcome outlives its transaction's locks
//! for long.
//!
//! A sweeper does the same for locks nobody meets: every region this node
//! leads is looked at each second, and a lock seen twice [`LOCK_TTL`]
//! apart is resolved. A held lock keeps the region's resolved revision
//! (what watches may release) from moving past it, so locks must not be
//! left for a reader to find.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_mvcc::locks::{LockRef, Outcome};
use cairn_raft::Command;

use crate::node::{Node, META_REGION};
use crate::remote::ForwardOp;
use crate::Result;

/// How long a lock may stand before whoever meets it rolls its
/// transaction back (if its primary has not committed). A coordinator
/// needs two Raft rounds and two timestamps between prewrite and commit;
/// TiKV's default lock TTL is 3 s, and a shorter one only makes a slow
/// coordinator start over more often.
pub(crate) const LOCK_TTL: Duration = Duration::from_millis(1500);

impl Node {
    /// Waits for `lock`, met in `region`, to go; past [`LOCK_TTL`], settles
    /// its transaction at the primary and finishes (commits or rolls back)
    /// its part in `region`.
    pub(crate) async fn resolve_lock(&self, region: u64, lock: LockRef) -> Result<()> {
        let held = || self.holds_lock(region, lock.start_ts);
        if !held() {
            // Met at the leader, not applied here yet (a replica behind):
            // caught up first, or the caller — a prewrite meeting it again
            // at once — would propose back to back until it is. (Not
            // caught up — the region moved, its leader is changing: a
            // pause, and the caller finds out on its own.)
            if self.caught_up(region).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let until = Instant::now() + LOCK_TTL;
        while held() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !held() {
            return Ok(());
        }
        self.settle(region, lock).await
    }

    /// True while this node's replica of `region` holds the lock of the
    /// transaction that began at `start_ts`.
    pub(crate) fn holds_lock(&self, region: u64, start_ts: i64) -> bool {
        self.region(region).is_ok_and(|r| {
            r.shared
                .with_applied(|a| a.locks.held.contains_key(&start_ts))
        })
    }

    /// Tests: holds the next settling of a lock here once it has read the
    /// lock's regions, until the returned sender fires (or is dropped).
    #[doc(hidden)]
    pub fn hold_next_settle(&self) -> tokio::sync::oneshot::Sender<()> {
        let (go, held) = tokio::sync::oneshot::channel();
        *self.settle_hold.lock() = Some(held);
        go
    }

    /// Tests: settles `lock`, met in `region`, at once (as a waiter past
    /// [`LOCK_TTL`] or the sweeper would).
    #[doc(hidden)]
    pub async fn settle_now(&self, region: u64, lock: LockRef) -> Result<()> {
        self.settle(region, lock).await
    }

    /// Settles `lock`'s transaction at its primary and finishes it: every
    /// region it locked (as the lock met in `region` lists them) committed
    /// or rolled back from the outcome, then the outcome forgotten.
    ///
    /// Only while this node's replica of `region` still holds the lock
    /// (both callers saw it held here): once it went, its part was
    /// finished, and the other regions it locked are not known here.
    /// Settling then with a guess at them (the primary and `region`) would
    /// forget the outcome while a part elsewhere may still be locked, and
    /// whoever met that one later would find no outcome and roll it back:
    /// a committed transaction torn.
    ///
    /// The lock is read as the region's leader has it (this replica caught
    /// up first): one behind may show a revoke's first, narrow lock, whose
    /// primary was since prewritten again naming more regions, and
    /// finishing only the regions it names would leave the others' parts
    /// to be rolled back once the outcome is forgotten.
    async fn settle(&self, region: u64, lock: LockRef) -> Result<()> {
        let start_ts = lock.start_ts;
        let Some(regions) = self
            .caught_up(region)
            .await?
            .shared
            .with_applied(|a| a.locks.held.get(&start_ts).map(|l| l.regions.clone()))
        else {
            return Ok(());
        };
        let held = self.settle_hold.lock().take();
        if let Some(go) = held {
            let _ = go.await;
        }
        // A region a merge absorbed held no lock when it froze (a freeze
        // waits for them to go) and took none after: a part there has
        // nothing to finish. Its outcomes went to the region that absorbed
        // it, which answers for it as primary.
        let gone = |id: u64| self.regions.get(id).is_none() && self.absorbed_here(id);
        let primary = self.live_region(lock.primary);
        let outcome = self
            .submit(
                primary,
                ForwardOp::Plain(Command::ResolvePrimary { start_ts }),
            )
            .await?
            .outcome()?;
        // With those the primary's lock named when it committed (more, if
        // a revoke's second prewrite widened it after the read above),
        // read from this node's replica of the primary once it has
        // applied the answer (a merge's target keeps no such list: then
        // the lock's alone).
        let mut regions = regions;
        if matches!(outcome, Some(Outcome::Committed { .. })) {
            let named = self.caught_up(primary).await?.shared.with_applied(|a| {
                a.outcome_regions
                    .get(&start_ts)
                    .cloned()
                    .unwrap_or_default()
            });
            regions.extend(named);
            regions.sort_unstable();
            regions.dedup();
        }
        let parts = regions
            .into_iter()
            .filter(|r| *r != lock.primary && !gone(*r));
        let finish = |part: u64| {
            let op = match &outcome {
                Some(Outcome::Committed { commit_ts, path }) => ForwardOp::CommitLocked {
                    start_ts,
                    commit_ts: *commit_ts,
                    path: path.clone(),
                },
                // Rolled back; or nothing known at the primary, so nothing
                // of it committed (a lock seen on a replica behind).
                _ => ForwardOp::Plain(Command::RollbackLocked { start_ts }),
            };
            let committing = matches!(op, ForwardOp::CommitLocked { .. });
            async move {
                let ok = self.submit(part, op).await?;
                // A commit is read as the coordinator reads one: any answer
                // but an outcome (a refusal) leaves the part unfinished, so
                // the outcome is not forgotten while its lock stands.
                if committing {
                    ok.outcome().map(drop)
                } else {
                    ok.reply().map(drop)
                }
            }
        };
        let finished = futures::future::join_all(parts.map(finish)).await;
        if let Some(Err(e)) = finished.iter().find(|r| r.is_err()) {
            return Err(e.clone());
        }
        if outcome.is_some() {
            self.submit(
                primary,
                ForwardOp::Plain(Command::ForgetOutcome { start_ts }),
            )
            .await?;
        }
        Ok(())
    }
}

impl Node {
    /// Has the primary region forget transaction `start_ts`'s outcome
    /// soon ([`forget_outcomes`]).
    pub(crate) fn forget_later(&self, primary: u64, start_ts: i64) {
        self.forgets.lock().push((primary, start_ts));
    }
}

/// How often finished transactions' outcomes are forgotten.
const FORGET_EVERY: Duration = Duration::from_millis(100);

/// Forgets the outcomes queued by [`Node::forget_later`]: one proposal per
/// primary region for all of its queued ones (a `Command::Batch`). One
/// that fails stays for the sweeper's resolvers to forget, or lingers (a
/// few bytes in the region's record).
pub(super) async fn forget_outcomes(node: std::sync::Weak<Node>) {
    loop {
        tokio::time::sleep(FORGET_EVERY).await;
        let Some(n) = node.upgrade() else { return };
        if n.is_stopped() {
            return;
        }
        let queued = std::mem::take(&mut *n.forgets.lock());
        let mut by_region: BTreeMap<u64, Vec<Command>> = BTreeMap::new();
        for (primary, start_ts) in queued {
            by_region
                .entry(n.live_region(primary))
                .or_default()
                .push(Command::ForgetOutcome { start_ts });
        }
        for (region, cmds) in by_region {
            if let Err(e) = n
                .submit(region, ForwardOp::Plain(Command::Batch(cmds.clone())))
                .await
            {
                tracing::debug!(region, "forgetting outcomes: {e}");
            }
            // A region frozen for a merge refuses to forget (its outcomes
            // go to the region absorbing it, or stay if it thaws): forget
            // them later, wherever they are then. (Forgetting twice is
            // harmless.)
            let frozen = n
                .regions
                .get(region)
                .is_some_and(|r| r.shared.merge_frozen().is_some());
            if frozen {
                let mut queue = n.forgets.lock();
                for c in cmds {
                    if let Command::ForgetOutcome { start_ts } = c {
                        queue.push((region, start_ts));
                    }
                }
            }
        }
    }
}

/// How often the sweeper looks at the locks of the regions this node leads.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Resolves locks that stand in regions this node leads for longer than
/// [`LOCK_TTL`] (see the module essay).
pub(super) async fn sweep_locks(node: std::sync::Weak<Node>) {
    let mut first_seen: BTreeMap<(u64, i64), Instant> = BTreeMap::new();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(n) = node.upgrade() else { return };
        if n.is_stopped() {
            return;
        }
        let now = Instant::now();
        let mut standing = Vec::new();
        for r in n.regions.all() {
            if r.id == META_REGION || r.raft.metrics().borrow().current_leader != Some(n.id) {
                continue;
            }
            let held: Vec<LockRef> = r.shared.with_applied(|a| {
                a.locks
                    .held
                    .iter()
                    .map(|(ts, l)| LockRef {
                        start_ts: *ts,
                        primary: l.primary,
                    })
                    .collect()
            });
            for lock in held {
                let since = *first_seen.entry((r.id, lock.start_ts)).or_insert(now);
                standing.push((r.id, lock.start_ts));
                if now.duration_since(since) >= LOCK_TTL {
                    let (node, region) = (n.clone(), r.id);
                    tokio::spawn(async move {
                        if let Err(e) = node.settle(region, lock).await {
                            tracing::debug!(region, "resolving a stale lock: {e}");
                        }
                    });
                }
            }
        }
        first_seen.retain(|k, _| standing.contains(k));
    }
}
