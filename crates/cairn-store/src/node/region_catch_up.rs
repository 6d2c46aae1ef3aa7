//! Bringing a region that missed a store-wide command up to the store.
//!
//! Three kinds of state are proposed in every data region, each region
//! keeping its own copy (`Node::propose_everywhere`, `kv.rs` for the
//! compaction): the **compaction** (the first region's answer is the
//! store's), the **alarms** (each region refuses writes by its own set; the
//! first region's set is the store's) and the **auth fence** (each region
//! refuses writes checked against an auth revision below it; the meta
//! region's auth revision is the store's). A proposal can fail in one
//! region and land in the others: its leader changing for longer than the
//! request's deadline, a region frozen for a merge that was then abandoned
//! (compactions only), or the caller giving up midway. A region left behind
//! then disagrees with the store:
//! - below the compaction, a read at a revision below it would be served
//!   from that region's keys and refused for every other's, and no later
//!   `Compact` at or below the store's is accepted to mend it (the store
//!   answers "compacted");
//! - without an alarm cleared everywhere else, it refuses its keys' writes
//!   (NOSPACE, CORRUPT) while the alarm list, `/health` and Status say the
//!   alarm is gone (and a disarm lists nothing to clear) — or, without one
//!   raised, takes writes the store refuses;
//! - without a fence, it takes a write that a member whose meta replica
//!   lags checked against the auth store as it was before a change that
//!   other clients already see.
//!
//! So every [`CHECK_EVERY`], each member looks at the data regions it
//! leads and proposes there what a region lacks: the first region's
//! compaction revision (as this member's replica of it has it) where the
//! region's own is below it; the meta region's auth revision (this
//! member's replica) as a fence where the region's fence is below it (the
//! first region included: its reference is the meta region); and the
//! alarms that make its set the first region's. They are the commands a
//! client's request proposes, so a region idle below a compaction moves up
//! to it as there (in its leader's term, settled).
//!
//! Fences and compactions only move up, so proposing one late never undoes
//! a newer one; a fence is proposed once a region was seen below at two
//! checks in a row (an auth change fences every region itself, and a check
//! falling between its meta commit and its fences should not double them).
//! Alarms go both ways, so a difference is mended only once it has stood
//! unchanged (the region's set and the first region's, as seen here) for
//! [`SETTLED`], longer than a raise or disarm runs (its proposals stop at
//! the request deadline), and against the first region's set as its
//! leader has it (a read index), never a lagging replica's view. A new
//! raise or disarm starting just then can still be undone in one region;
//! the next difference is mended the same way.
//!
//! A region frozen for a merge takes fences and alarms but refuses
//! compactions, which it is offered again at the next check; one a merge
//! absorbs goes with its target's compaction and fence, the higher of the
//! two. Proposals do not wake a hibernating region.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cairn_raft::Command;

use crate::node::{Node, Region, DATA_REGION, META_REGION, REQUEST_TIMEOUT};
use crate::remote::ForwardOp;

/// How often each member looks for regions behind the store.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How long a region's alarms must have differed from the store's, the
/// same way, before they are mended: longer than a raise or disarm still
/// under way can take.
const SETTLED: Duration = Duration::from_secs(REQUEST_TIMEOUT.as_secs() + 3);

/// An alarm raised by `member`, of type `alarm`.
type Alarm = (u64, i32);

/// A region's alarms and the store's as seen here, and since when.
type AlarmGap = (BTreeSet<Alarm>, BTreeSet<Alarm>, Instant);

/// What the checks saw lagging, for later checks to confirm.
#[derive(Default)]
struct Lagging {
    /// Regions whose fence was below the store's at the last check.
    fences: BTreeSet<u64>,
    /// Regions whose alarms differ from the store's.
    alarms: BTreeMap<u64, AlarmGap>,
}

/// Runs the checks until the node is gone.
pub(super) async fn catch_up_regions(node: Weak<Node>) {
    let mut seen = Lagging::default();
    while let Some(n) = super::background::tick(&node, CHECK_EVERY).await {
        n.compact_lagging_regions().await;
        seen.fences = n.fence_lagging_regions(&seen.fences).await;
        n.align_alarms(&mut seen.alarms).await;
    }
}

fn alarms_of(r: &Region) -> BTreeSet<Alarm> {
    r.shared.with_applied(|a| a.alarms.clone())
}

impl Node {
    /// Tests: proposes `cmd` in `region` alone, as a store-wide command
    /// that failed in every other region leaves it.
    #[doc(hidden)]
    pub async fn propose_in_one_region(&self, region: u64, cmd: Command) -> crate::Result<()> {
        self.submit(region, ForwardOp::Plain(cmd)).await.map(|_| ())
    }

    /// The data regions this member leads (but the first, unless
    /// `first`).
    fn led_data_regions(&self, first: bool) -> Vec<Arc<Region>> {
        self.regions
            .all()
            .into_iter()
            .filter(|r| {
                r.id != META_REGION
                    && (first || r.id != DATA_REGION)
                    && r.raft.metrics().borrow().current_leader == Some(self.id)
            })
            .collect()
    }

    /// Compactions (see the module essay).
    async fn compact_lagging_regions(&self) {
        let Ok(first) = self.region(DATA_REGION) else {
            return;
        };
        let store = first.shared.revisions().compacted;
        if store == 0 {
            return;
        }
        for r in self.led_data_regions(false) {
            let lags = r.shared.merge_frozen().is_none() && r.shared.revisions().compacted < store;
            if !lags {
                continue;
            }
            match self
                .submit(r.id, ForwardOp::Compact(store))
                .await
                .and_then(|ok| ok.compacted())
            {
                Ok(_) => tracing::info!(region = r.id, store, "compacted up to the store"),
                Err(crate::Error::Rejected(cairn_mvcc::Rejection::Compacted)) => {}
                Err(e) => tracing::debug!(region = r.id, "compacting up to the store: {e}"),
            }
        }
    }

    /// Auth fences (see the module essay): the regions found below the
    /// meta region's auth revision, fenced if they were at the last check
    /// too.
    async fn fence_lagging_regions(&self, before: &BTreeSet<u64>) -> BTreeSet<u64> {
        let store = self.auth_revision();
        let mut lagging = BTreeSet::new();
        for r in self.led_data_regions(true) {
            if r.shared.with_applied(|a| a.auth_fence) >= store {
                continue;
            }
            lagging.insert(r.id);
            if !before.contains(&r.id) {
                continue;
            }
            let fence = Command::AuthFence { revision: store };
            match self.submit(r.id, ForwardOp::Plain(fence)).await {
                Ok(_) => tracing::info!(region = r.id, store, "fenced up to the auth store"),
                Err(e) => tracing::debug!(region = r.id, "fencing up to the auth store: {e}"),
            }
        }
        lagging
    }

    /// Alarms (see the module essay): `gaps` holds what the checks saw
    /// differ; a difference that stood unchanged for [`SETTLED`] is
    /// mended.
    async fn align_alarms(&self, gaps: &mut BTreeMap<u64, AlarmGap>) {
        let Ok(first) = self.region(DATA_REGION) else {
            gaps.clear();
            return;
        };
        let store = alarms_of(&first);
        let now = Instant::now();
        let mut seen = BTreeMap::new();
        for r in self.led_data_regions(false) {
            let have = alarms_of(&r);
            if have == store {
                continue;
            }
            let since = match gaps.remove(&r.id) {
                Some((h, s, since)) if h == have && s == store => since,
                _ => now,
            };
            seen.insert(r.id, (have, store.clone(), since));
        }
        *gaps = seen;
        let due: Vec<u64> = gaps
            .iter()
            .filter(|(_, (_, _, since))| now.duration_since(*since) >= SETTLED)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        // The store's alarms as the first region's leader has them.
        let want = match self.caught_up(DATA_REGION).await {
            Ok(first) => alarms_of(&first),
            Err(e) => {
                tracing::debug!("reading the store's alarms: {e}");
                return;
            }
        };
        for id in due {
            // Mended (or found in line): looked at afresh next time.
            gaps.remove(&id);
            let Ok(r) = self.region(id) else {
                continue;
            };
            let have = alarms_of(&r);
            let raise = want.difference(&have).map(|a| (true, *a));
            let clear = have.difference(&want).map(|a| (false, *a));
            for (activate, (member, alarm)) in raise.chain(clear) {
                let cmd = Command::Alarm {
                    activate,
                    member,
                    alarm,
                };
                match self.submit(id, ForwardOp::Plain(cmd)).await {
                    Ok(_) => tracing::info!(region = id, activate, alarm, "alarms as the store's"),
                    Err(e) => tracing::debug!(region = id, "aligning alarms: {e}"),
                }
            }
        }
    }
}
