//! The merge checker (TiKV's merge checker in PD, CockroachDB's merge
//! queue, in one loop). Every [`CHECK_EVERY`], on each member:
//!
//! - **Small and cold?** For each data region T this member leads, with a
//!   right neighbour S: when neither takes more than
//!   [`COLD_WRITES_PER_SEC`] writes a second (the rate `cairn regions`
//!   shows) and their live keys and values together stay within
//!   `--region-merge-bytes`, S merges into T (`Node::merge_regions`). Sizes
//!   are measured on the span pool like the split checker's, and measured
//!   again only after the replica applied more writes (a cold region is
//!   measured once). At most [`MERGES_PER_CHECK`] merges a check, then the
//!   next; after a refusal or failure the pair waits
//!   [`QUIET_AFTER_FAILURE`]. The limit must stay below
//!   `--region-split-bytes`, or a merged region would split again at once.
//! - **Frozen too long?** A region this member leads that has stood frozen
//!   for a merge longer than [`FROZEN_TOO_LONG`] lost its driver (a member
//!   that crashed or was cut off mid-merge): the merge is ended as its
//!   target's log decides — absorbed after all, or abandoned and thawed
//!   (`Node::abandon_merge`). If the target itself was merged away, the
//!   region that absorbed it knows every region the target had absorbed;
//!   any other frozen source thaws. This runs whether or not merges are
//!   on: a member started without the flag still ends them.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cairn_raft::Freeze;

use crate::node::{Node, Region, META_REGION};
use crate::Result;

/// How often regions are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A pair taking more writes a second than this (both regions together)
/// is not cold: a hot region split by load must not merge straight back.
const COLD_WRITES_PER_SEC: f64 = 5.0;
/// Merges at most per check.
const MERGES_PER_CHECK: usize = 8;
/// Sizes measured at most per check (each a scan of a region).
const SCANS_PER_CHECK: usize = 8;
/// After a merge failed, how long its target is left alone.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How long a region may stand frozen before its merge is ended by
/// whoever leads it (a driver takes a few Raft rounds).
const FROZEN_TOO_LONG: Duration = Duration::from_secs(10);

/// A region's size as last measured here.
struct Measured {
    /// Its epoch then (a split or merge changes the range).
    epoch: u64,
    /// The replica's write-load byte counter then.
    written: u64,
    /// Live keys and values, in bytes.
    size: u64,
}

/// What the checker remembers between checks.
#[derive(Default)]
struct Memory {
    sizes: BTreeMap<u64, Measured>,
    frozen_since: BTreeMap<(u64, u64), Instant>,
    quiet_until: BTreeMap<u64, Instant>,
}

/// Runs the checker until the node is gone.
pub(super) async fn check_merges(node: Weak<Node>) {
    let mut memory = Memory::default();
    while let Some(n) = super::background::tick(&node, CHECK_EVERY).await {
        let led: Vec<Arc<Region>> = n
            .regions
            .all()
            .into_iter()
            .filter(|r| {
                r.id != META_REGION && r.raft.metrics().borrow().current_leader == Some(n.id)
            })
            .collect();
        n.end_stale_freezes(&led, &mut memory.frozen_since).await;
        let limit = n.config.region_split.merge_bytes;
        if limit > 0 {
            n.merge_small_neighbours(&led, limit, &mut memory).await;
        }
    }
}

impl Node {
    /// The "small and cold" pass (see the module essay).
    async fn merge_small_neighbours(&self, led: &[Arc<Region>], limit: u64, memory: &mut Memory) {
        let now = Instant::now();
        memory.quiet_until.retain(|_, t| *t > now);
        let (mut scans, mut merges) = (0, 0);
        for t in led {
            if merges >= MERGES_PER_CHECK || self.is_stopped() {
                return;
            }
            if memory.quiet_until.contains_key(&t.id) {
                continue;
            }
            let range = t.shared.range();
            if range.is_empty() || range.end.is_empty() {
                continue;
            }
            let Ok(s) = self.route(&range.end) else {
                continue;
            };
            let s_range = s.shared.range();
            let last_two = range.start.is_empty() && s_range.end.is_empty();
            if s_range.start != range.end || last_two || self.regions.get(t.id).is_none() {
                continue;
            }
            let rate = {
                let rates = self.write_rates.lock();
                let of = |id| rates.get(&id).map_or(0.0, |w| w.per_second());
                of(t.id) + of(s.id)
            };
            if rate > COLD_WRITES_PER_SEC {
                continue;
            }
            let mut size = 0;
            for r in [t, &s] {
                match self.measured_size(r, &mut memory.sizes, &mut scans).await {
                    Some(bytes) => size += bytes,
                    None => size = u64::MAX,
                }
                if size > limit {
                    break;
                }
            }
            if size > limit {
                continue;
            }
            tracing::info!(
                target = t.id,
                source = s.id,
                "merging: {size} bytes together, within {limit}"
            );
            merges += 1;
            match self.merge_regions(t.id).await {
                Ok(source) => tracing::info!(target = t.id, source, "merged"),
                Err(e) => {
                    tracing::info!(target = t.id, "merge refused or failed: {e}");
                    memory
                        .quiet_until
                        .insert(t.id, Instant::now() + QUIET_AFTER_FAILURE);
                }
            }
        }
    }

    /// `r`'s live bytes, measured again only if it changed since (`None`:
    /// not measured now — past this check's scans, or the scan failed).
    async fn measured_size(
        &self,
        r: &Region,
        sizes: &mut BTreeMap<u64, Measured>,
        scans: &mut usize,
    ) -> Option<u64> {
        let (view, _, range) = r.shared.read_view_in();
        let written = r.shared.write_load().bytes();
        if let Some(m) = sizes.get(&r.id) {
            if m.epoch == range.epoch && m.written == written {
                return Some(m.size);
            }
        }
        if *scans >= SCANS_PER_CHECK {
            return None;
        }
        *scans += 1;
        let share = cairn_raft::share_of_range(&range);
        let step = self.config.region_split.merge_bytes.max(1);
        let size = match self
            .spans
            .run(move || share.size_and_middle(&*view, step))
            .await
        {
            Ok(Ok((size, _))) => size,
            Ok(Err(e)) => {
                tracing::warn!(region = r.id, "measuring: {e}");
                return None;
            }
            Err(e) => {
                tracing::warn!(region = r.id, "measuring: {e}");
                return None;
            }
        };
        sizes.insert(
            r.id,
            Measured {
                epoch: range.epoch,
                written,
                size,
            },
        );
        Some(size)
    }

    /// The "frozen too long" pass (see the module essay).
    async fn end_stale_freezes(
        &self,
        led: &[Arc<Region>],
        since: &mut BTreeMap<(u64, u64), Instant>,
    ) {
        let frozen: BTreeMap<u64, Freeze> = led
            .iter()
            .filter_map(|r| {
                r.shared
                    .with_applied(|a| a.merge.frozen.clone())
                    .map(|f| (r.id, f))
            })
            .collect();
        // By region and freeze (its epoch names it): a region thawed and
        // frozen again between two passes starts its count again.
        since.retain(|(id, epoch), _| frozen.get(id).is_some_and(|f| f.range.epoch == *epoch));
        for (id, freeze) in frozen {
            let key = (id, freeze.range.epoch);
            let first = *since.entry(key).or_insert_with(Instant::now);
            if first.elapsed() < FROZEN_TOO_LONG {
                continue;
            }
            match self.end_freeze(id, &freeze).await {
                Ok(()) => {
                    since.remove(&key);
                }
                Err(e) => tracing::info!(region = id, "ending a stale merge: {e}"),
            }
        }
    }

    /// Ends the merge of `source`, frozen as `freeze`, whose driver is gone.
    async fn end_freeze(&self, source: u64, freeze: &Freeze) -> Result<()> {
        if self.regions.get(freeze.target).is_some() {
            let absorbed = self.abandon_merge(source, freeze).await?;
            tracing::info!(
                source,
                target = freeze.target,
                absorbed,
                "ended a stale merge"
            );
            return Ok(());
        }
        if !self.absorbed_here(freeze.target) {
            return Err(crate::Error::Internal(format!(
                "its target {} is not known here",
                freeze.target
            )));
        }
        // The target was merged away; what it had absorbed by then is
        // final, and is in the absorbed set of the region that took it.
        if !self.absorbed_here(source) {
            self.thaw(source, freeze).await?;
            tracing::info!(source, "thawed: its target was merged away without it");
        }
        Ok(())
    }
}
