//! What `cairn regions` shows of each data region, as this member sees it:
//! range and epoch (its replica's applied record), leader and voters (its
//! Raft), the live bytes its replica holds (one scan of the region's
//! newest versions, on the span pool, off the apply path), and the write
//! transactions its replica applied per second over the last few seconds
//! (sampled once a second by [`sample_write_rates`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::node::{Node, META_REGION};
use crate::Result;

/// One data region in the listing.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionReport {
    /// Region ID.
    pub id: u64,
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// The key past the last (empty: to the end).
    pub end: Vec<u8>,
    /// Bumped by each split.
    pub epoch: u64,
    /// The leader as this member knows it (0: none).
    pub leader: u64,
    /// The voters.
    pub voters: Vec<u64>,
    /// Bytes of live keys and values in this member's replica.
    pub approximate_bytes: u64,
    /// Writes applied per second on this member's replica, recently.
    pub writes_per_second: f64,
}

/// A region's write rate: an exponentially weighted average of one-second
/// samples (weight one half: it follows a change within a few seconds).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriteRate {
    count: u64,
    at: Instant,
    per_second: f64,
}

impl WriteRate {
    /// Writes per second, recently.
    pub(crate) fn per_second(&self) -> f64 {
        self.per_second
    }
}

impl Node {
    /// Every data region hosted here, in key order.
    pub async fn region_reports(&self) -> Result<Vec<RegionReport>> {
        let mut out = Vec::new();
        for r in self.regions.all() {
            if r.id == META_REGION {
                continue;
            }
            // The share of the range the view goes with (one lock).
            let (view, _, range) = r.shared.read_view_in();
            let share = cairn_raft::share_of_range(&range);
            let approximate_bytes = self.spans.run(move || share.live_bytes(&*view)).await??;
            let (leader, voters) = {
                let m = r.raft.metrics();
                let m = m.borrow();
                let voters = m.membership_config.membership().voter_ids().collect();
                (m.current_leader.unwrap_or(0), voters)
            };
            let writes_per_second = self
                .write_rates
                .lock()
                .get(&r.id)
                .map_or(0.0, |w| w.per_second);
            out.push(RegionReport {
                id: r.id,
                start: range.start,
                end: range.end,
                epoch: range.epoch,
                leader,
                voters,
                approximate_bytes,
                writes_per_second,
            });
        }
        out.sort_by(|a, b| a.start.cmp(&b.start));
        Ok(out)
    }
}

/// Samples each data region's applied writes once a second into its
/// [`WriteRate`], until the node is gone. A replica started since the
/// last sample (a region born by a split) applied all it counts since
/// then; at the first sample the count includes what the replicas
/// replayed as the node started, which is no rate.
pub(super) async fn sample_write_rates(node: std::sync::Weak<Node>) {
    let mut last: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(n) = node.upgrade() else { return };
        let now = Instant::now();
        let since = last.replace(now);
        let mut next = BTreeMap::new();
        let old = n.write_rates.lock().clone();
        for r in n.regions.all() {
            if r.id == META_REGION {
                continue;
            }
            let count = r.shared.write_load().writes();
            let rate = match old.get(&r.id) {
                Some(w) => {
                    let secs = now.duration_since(w.at).as_secs_f64().max(1e-3);
                    let sample = count.saturating_sub(w.count) as f64 / secs;
                    0.5 * w.per_second + 0.5 * sample
                }
                None => match since {
                    Some(t) => count as f64 / now.duration_since(t).as_secs_f64().max(1e-3),
                    None => 0.0,
                },
            };
            next.insert(
                r.id,
                WriteRate {
                    count,
                    at: now,
                    per_second: rate,
                },
            );
        }
        *n.write_rates.lock() = next;
    }
}
