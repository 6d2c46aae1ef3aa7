//! The split checker: TiKV's split-check worker and its load-based split
//! in one loop. Once a second, the leader of each data region asks two
//! questions of it (each off when its flag is zero, see
//! [`crate::SplitPolicy`]):
//!
//! - **Too big?** The region's live keys and values are measured (one
//!   scan of its newest versions on the span pool, which also finds the
//!   key that halves them) when it has never been measured by this leader,
//!   or after an eighth of `--region-split-bytes` more was put into it (as
//!   the replica counts bytes: every version, record and index entry, so
//!   about a sixteenth of live data), or — so that a region left just
//!   past the limit by its last writes splits too — when its size then
//!   plus every byte written since passes the limit (a bound on its size
//!   now: the bytes are counted once their entry is published, and read
//!   before the view measured). That second rule waits [`REMEASURE_AFTER`]
//!   and doubles the wait, up to [`REMEASURE_MAX`], each time it finds the
//!   region still under the limit: a region holding steady just under it
//!   while its keys are overwritten is not rescanned every few seconds.
//!   At most [`SCANS_PER_CHECK`] regions
//!   are measured a check: after a restart or a leader change every region
//!   is due, and the scans are spread out. Past the limit it splits at the
//!   middle key. A region far past it (the flag lowered on a full cluster)
//!   halves once a check, so reaching the size takes a logarithmic number
//!   of seconds.
//! - **Too hot?** The replica samples the keys it applies writes to
//!   (`cairn_raft::WriteLoad`). When the region's write rate (the same
//!   rate `cairn regions` shows) stays above `--region-split-qps` for
//!   [`HOT_CHECKS`] checks in a row, it splits at the key, among those
//!   sampled over that spell, that best divides them between the two
//!   sides. A load on one key has no such key, and does not split.
//!
//! The split itself is `Node::split_region_at_epoch`: one command in the
//! region's log carrying the epoch the key was chosen at, refused with
//! `EpochMismatch` if the region split since, or while a transaction
//! across regions holds a lock on keys at or above the split key. After
//! any refusal or failure the
//! checker leaves the region alone for [`QUIET_AFTER_FAILURE`], then
//! measures it again.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cairn_raft::RegionRange;

use crate::node::{Node, Region, META_REGION};
use crate::SplitPolicy;

/// How often each region is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Checks in a row above `--region-split-qps` before a load split (TiKV
/// waits ten one-second windows too).
pub(crate) const HOT_CHECKS: u32 = 10;
/// Fewer sampled writes than this do not say where the load is.
const LOAD_SAMPLES_MIN: usize = 16;
/// Regions measured at most per check (each a scan of the region): after
/// a restart or a leader change every region is due, and they are spread
/// over the next checks rather than scanned all at once.
const SCANS_PER_CHECK: usize = 4;
/// After a split failed, how long the region is left alone.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A region measured under the limit that may have passed it since (its
/// size then plus the bytes written since pass it) is measured again
/// after this long at first, though less than an eighth of the limit was
/// written; each such measurement that finds it under doubles the wait.
const REMEASURE_AFTER: Duration = Duration::from_secs(5);
/// The longest that wait grows to.
const REMEASURE_MAX: Duration = Duration::from_secs(320);

/// Why a region is measured now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Never measured (since this leader, a split, a failure), or an
    /// eighth of the limit written since.
    Growth,
    /// Its size then plus the bytes written since pass the limit.
    MayBeOver,
}

/// What the checker remembers of one region it leads.
#[derive(Default)]
struct Checked {
    /// The region's write-load byte counter when it was last measured
    /// (`None`: not measured since this node started or led it, or since
    /// it split).
    measured_at: Option<u64>,
    /// What that measurement found, and when.
    measured: Option<(u64, Instant)>,
    /// The wait before a [`Due::MayBeOver`] measurement (zero: the first,
    /// [`REMEASURE_AFTER`]).
    remeasure_after: Duration,
    /// The range it was measured with (a split changes it).
    epoch: u64,
    /// Checks in a row it was above the write-rate limit.
    hot: u32,
    /// After a split that failed, no other until then.
    quiet_until: Option<Instant>,
}

impl Checked {
    /// Whether, and why, a region whose replica has counted `written`
    /// bytes of writes must be measured again at `now` (see the module
    /// essay), for the size limit `limit`.
    fn due(&self, written: u64, limit: u64, now: Instant) -> Option<Due> {
        let Some(at) = self.measured_at else {
            return Some(Due::Growth);
        };
        let since = written.saturating_sub(at);
        if since >= (limit / 8).max(1) {
            return Some(Due::Growth);
        }
        // Every byte of live data added was counted, so the size then
        // plus `since` is at least the size now.
        let wait = self.remeasure_after.max(REMEASURE_AFTER);
        self.measured
            .filter(|&(size, when)| {
                since > 0
                    && size.saturating_add(since) > limit
                    && now.saturating_duration_since(when) >= wait
            })
            .map(|_| Due::MayBeOver)
    }

    /// A measurement for reason `due` found the region under the limit:
    /// the next [`Due::MayBeOver`] one waits twice as long after one of
    /// its own, the first wait after growth.
    fn found_under(&mut self, due: Due) {
        self.remeasure_after = match due {
            Due::Growth => REMEASURE_AFTER,
            Due::MayBeOver => (self.remeasure_after.max(REMEASURE_AFTER) * 2).min(REMEASURE_MAX),
        };
    }
}

/// Runs the checker until the node is gone (returns at once when both
/// triggers are off).
pub(super) async fn check_splits(node: Weak<Node>) {
    let mut checked: BTreeMap<u64, Checked> = BTreeMap::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let policy = n.config.region_split;
        if policy.bytes == 0 && policy.qps == 0 {
            return;
        }
        let led: BTreeMap<u64, Arc<Region>> = n
            .regions
            .all()
            .into_iter()
            .filter(|r| {
                r.id != META_REGION && r.raft.metrics().borrow().current_leader == Some(n.id)
            })
            .map(|r| (r.id, r))
            .collect();
        checked.retain(|id, _| led.contains_key(id));
        let mut scans = 0;
        for r in led.values() {
            if n.is_stopped() {
                return;
            }
            let c = checked.entry(r.id).or_default();
            if c.quiet_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let Some((at, epoch, why)) = n.split_key(r, policy, c, &mut scans).await else {
                continue;
            };
            tracing::info!(region = r.id, at = ?String::from_utf8_lossy(&at), "splitting: {why}");
            match n.split_region_at_epoch(r.id, at, epoch).await {
                Ok(child) => {
                    tracing::info!(region = r.id, child, "split");
                    c.measured_at = None;
                    c.quiet_until = None;
                }
                Err(e) => {
                    // Measure again after a while: whatever refused it
                    // (a lock held, a leader change, a timeout)
                    // may have passed by then, writes or not.
                    tracing::info!(region = r.id, "split refused or failed: {e}");
                    c.measured_at = None;
                    c.quiet_until = Some(Instant::now() + QUIET_AFTER_FAILURE);
                }
            }
        }
    }
}

impl Node {
    /// Where `r` should split now, at the epoch the key was chosen in, and
    /// why (see the module essay). `scans` counts the measurements of this
    /// pass: past [`SCANS_PER_CHECK`] the rest wait for the next.
    async fn split_key(
        &self,
        r: &Region,
        policy: SplitPolicy,
        c: &mut Checked,
        scans: &mut usize,
    ) -> Option<(Vec<u8>, u64, String)> {
        let load = r.shared.write_load();
        // Read before the view: every byte it counts is in the view (see
        // `cairn_raft::WriteLoad`).
        let written = load.bytes();
        let (view, _, range) = r.shared.read_view_in();
        if range.epoch != c.epoch {
            c.epoch = range.epoch;
            c.measured_at = None;
        }
        if policy.qps > 0 {
            let rate = self
                .write_rates
                .lock()
                .get(&r.id)
                .map_or(0.0, |w| w.per_second());
            if rate > policy.qps as f64 {
                c.hot += 1;
            } else {
                // The samples of a cool spell say nothing of the next
                // hot one.
                c.hot = 0;
                load.take_sampled_keys();
            }
            if c.hot >= HOT_CHECKS {
                c.hot = 0;
                if let Some(at) = load_split_key(&range, load.take_sampled_keys()) {
                    let why = format!("{rate:.0} writes/s, over {} for {HOT_CHECKS} s", policy.qps);
                    return Some((at, range.epoch, why));
                }
            }
        }
        if policy.bytes > 0 && *scans < SCANS_PER_CHECK {
            if let Some(due) = c.due(written, policy.bytes, Instant::now()) {
                *scans += 1;
                c.measured_at = Some(written);
                c.measured = None;
                let share = cairn_raft::share_of_range(&range);
                let step = (policy.bytes / 16).max(1);
                let measured = self
                    .spans
                    .run(move || share.size_and_middle(&*view, step))
                    .await;
                match measured {
                    Ok(Ok((size, Some(at)))) if size > policy.bytes => {
                        let why = format!("{size} bytes, over {}", policy.bytes);
                        return Some((at, range.epoch, why));
                    }
                    Ok(Ok((size, _))) => {
                        c.measured = Some((size, Instant::now()));
                        c.found_under(due);
                    }
                    Ok(Err(e)) => {
                        c.measured_at = None;
                        tracing::warn!(region = r.id, "measuring: {e}");
                    }
                    Err(e) => {
                        c.measured_at = None;
                        tracing::warn!(region = r.id, "measuring: {e}");
                    }
                }
            }
        }
        None
    }
}

/// The sampled key that best divides `sampled` (the keys of recent writes)
/// between `[start, key)` and `[key, end)` of `range`, leaving writes on
/// both sides; `None` if too few samples, or all on one key.
fn load_split_key(range: &RegionRange, mut sampled: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    sampled.retain(|k| range.keys().contains(k));
    if sampled.len() < LOAD_SAMPLES_MIN {
        return None;
    }
    sampled.sort_unstable();
    let half = sampled.len() / 2;
    // Each distinct key's first position is how many writes fall left of
    // a split there; the best is the one nearest half, not the first.
    let mut best: Option<(usize, &Vec<u8>)> = None;
    for (i, k) in sampled.iter().enumerate() {
        if i == 0 || sampled[i - 1] == *k {
            continue;
        }
        if best.is_none_or(|(b, _)| i.abs_diff(half) < b.abs_diff(half)) {
            best = Some((i, k));
        }
    }
    best.map(|(_, k)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: &str, end: &str) -> RegionRange {
        RegionRange {
            start: start.into(),
            end: end.into(),
            epoch: 1,
        }
    }

    fn keys(ks: &[&str]) -> Vec<Vec<u8>> {
        ks.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_region_is_measured_again_after_an_eighth_or_when_it_may_have_passed_the_limit() {
        let t0 = Instant::now();
        let later = t0 + REMEASURE_AFTER;
        let never = Checked::default();
        assert_eq!(never.due(0, 8192, t0), Some(Due::Growth), "never measured");
        let c = Checked {
            measured_at: Some(1000),
            measured: Some((7000, t0)),
            ..Checked::default()
        };
        assert_eq!(c.due(1000 + 1024, 8192, t0), Some(Due::Growth), "an eighth");
        assert_eq!(c.due(1000 + 500, 8192, later), None, "7500 bytes at most");
        // Measured at 8000, then left at 8300 at most by its last writes:
        // measured again, once that measurement is old enough.
        let c = Checked {
            measured: Some((8000, t0)),
            ..c
        };
        assert_eq!(c.due(1000 + 300, 8192, t0 + REMEASURE_AFTER / 2), None);
        assert_eq!(c.due(1000 + 300, 8192, later), Some(Due::MayBeOver));
        assert_eq!(c.due(1000 + 100, 8192, later), None, "8100 at most");
        assert_eq!(c.due(1000, 8192, later), None, "nothing written since");
    }

    #[test]
    fn a_region_found_under_again_and_again_is_measured_less_and_less_often() {
        let mut c = Checked::default();
        let mut waits = Vec::new();
        for _ in 0..9 {
            c.found_under(Due::MayBeOver);
            waits.push(c.remeasure_after.as_secs());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 320, 320, 320]);
        // The wait is what `due` asks of the last measurement's age.
        let t0 = Instant::now();
        let c2 = Checked {
            measured_at: Some(0),
            measured: Some((8000, t0)),
            ..c
        };
        assert_eq!(c2.due(300, 8192, t0 + Duration::from_secs(319)), None);
        assert_eq!(
            c2.due(300, 8192, t0 + Duration::from_secs(320)),
            Some(Due::MayBeOver)
        );
        // Growth starts the wait over.
        c.found_under(Due::Growth);
        assert_eq!(c.remeasure_after, REMEASURE_AFTER);
    }

    #[test]
    fn a_load_split_divides_the_sampled_writes() {
        let mut s = Vec::new();
        for k in ["a", "b", "c", "d"] {
            s.extend(keys(&[k; 8]));
        }
        assert_eq!(load_split_key(&range("", ""), s), Some(b"c".to_vec()));
        // Most writes on one key: the split puts it alone on one side.
        let mut s = keys(&["h"; 30]);
        s.extend(keys(&["a", "b", "z"]));
        let at = load_split_key(&range("", ""), s).unwrap();
        assert!(at == b"h" || at == b"z", "{at:?}");
    }

    #[test]
    fn no_load_split_without_a_dividing_key() {
        assert_eq!(load_split_key(&range("", ""), keys(&["k"; 40])), None);
        assert_eq!(
            load_split_key(&range("", ""), keys(&["a", "b"])),
            None,
            "too few"
        );
        // Samples from before a split, outside the range now, do not count.
        let mut s = keys(&["a"; 20]);
        s.extend(keys(&["m"; 20]));
        assert_eq!(load_split_key(&range("l", ""), s), None);
    }
}
