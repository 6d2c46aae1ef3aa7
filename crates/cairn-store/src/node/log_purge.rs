//! Bounding each region's Raft log, on top of openraft's own policy
//! (snapshot every `snapshot_logs` entries, then purge all but a tenth of
//! that). A snapshot build only syncs the engine (the state machine lives
//! in it), so asking for one is cheap; openraft delays a purge that a
//! replication stream still needs, so a lagging follower is never cut off
//! from entries it is being sent (one that falls behind a purge gets a
//! snapshot). Two rules, looked at every [`EVERY`] for every region:
//!
//! - **By bytes, while a region grows.** An entry is a whole commit
//!   group, so a count alone lets the log hold anything from kilobytes to
//!   gigabytes: measured (1 node, 1M puts of 256 B from 200 clients) the
//!   log keyspace held 256 MB of an 880 MB data dir. Each time a region's
//!   log has grown by [`NodeConfig::snapshot_log_bytes`], this asks for a
//!   snapshot and purges the log up to where it asked the time before (no
//!   further than the latest snapshot): one limit's worth of log stays, as
//!   slack for a follower briefly behind.
//! - **Everything every replica holds, once a region is quiet.** The
//!   slack of a region whose log stopped growing would stay forever: a
//!   load of sequential keys fills each region in turn, splits it, and
//!   leaves it idle with up to twice the limit of log. At 64 MiB that was
//!   ~6 GiB of dead log per member after 8 GiB of values in 62 regions
//!   (docs/benchmarks.md, session 17). So once a region's log has not
//!   grown for [`QUIET`], its replica here is snapshotted at what it has
//!   applied (unless its snapshot is there already), and its log purged
//!   up to that snapshot — on the leader, no further than every replica
//!   has matched: a member that is down keeps the entries it will need
//!   when it returns, up to the bytes rule (and openraft's own purge after
//!   a snapshot, which the leader then does not ask for). A follower
//!   serves no replication, so it purges what it applied; should it lead
//!   later, a member that was down meanwhile catches up by a snapshot
//!   instead of the log. Neither a snapshot nor a purge writes a log
//!   entry, so neither wakes a sleeping region.
//!
//! [`NodeConfig::snapshot_log_bytes`]: crate::NodeConfig::snapshot_log_bytes

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::node::{Node, Region};

/// How often each region is looked at.
const EVERY: Duration = Duration::from_millis(500);
/// A region whose log has not grown this long is purged of what every
/// replica holds.
const QUIET: Duration = Duration::from_secs(10);

/// What this loop remembers of one region.
struct Seen {
    /// Log bytes and applied index when the bytes rule last asked for a
    /// snapshot.
    asked: (u64, Option<u64>),
    /// Log bytes at the last look, and since when they have not changed.
    bytes: u64,
    still_since: Instant,
    /// The index the quiet rule last purged up to.
    purged: u64,
}

/// The log-bounding loop (see the module essay).
pub(super) async fn bound_logs(node: std::sync::Weak<Node>) {
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    while let Some(n) = super::background::tick(&node, EVERY).await {
        let limit = n.config.snapshot_log_bytes;
        let regions = n.regions.all();
        seen.retain(|id, _| regions.iter().any(|r| r.id == *id));
        for r in regions {
            let now = r.log_bytes.load(Ordering::Relaxed);
            let s = seen.entry(r.id).or_insert_with(|| Seen {
                asked: (0, None),
                bytes: now,
                still_since: Instant::now(),
                purged: 0,
            });
            if now != s.bytes {
                s.bytes = now;
                s.still_since = Instant::now();
            }
            if limit > 0 && now.saturating_sub(s.asked.0) >= limit {
                by_bytes(&r, now, &mut s.asked).await;
            } else if s.still_since.elapsed() >= QUIET {
                when_quiet(&r, &mut s.purged).await;
            }
        }
    }
}

/// The bytes rule: the log of `r` grew by a limit since `asked`.
async fn by_bytes(r: &Region, now: u64, asked: &mut (u64, Option<u64>)) {
    tracing::debug!(
        region = r.id,
        bytes = now - asked.0,
        "log bytes reached: snapshot"
    );
    let (applied, snapshot) = {
        let m = r.raft.metrics();
        let m = m.borrow();
        (m.last_applied.map(|l| l.index), m.snapshot.map(|s| s.index))
    };
    if let Some(upto) = asked.1.zip(snapshot).map(|(a, s)| a.min(s)) {
        let _ = r.raft.trigger().purge_log(upto).await;
    }
    *asked = (now, applied);
    let _ = r.raft.trigger().snapshot().await;
}

/// The quiet rule for `r`, quiet long enough: purges up to what it applied
/// and (on a leader) every replica matched, once a snapshot covers that;
/// asks for the snapshot until one does.
///
/// openraft purges by its own policy after every snapshot it builds: up
/// to the snapshot's index less `max_in_snapshot_log_to_keep`, whatever
/// the replicas matched (only a replication in flight holds it). So a
/// leader whose slowest replica is further behind than that asks for no
/// snapshot; it purges no further than the snapshot it has.
async fn when_quiet(r: &Region, purged: &mut u64) {
    let (applied, matched, snapshot) = {
        let m = r.raft.metrics();
        let m = m.borrow();
        // On the leader: the least any replica has matched.
        let matched = m.replication.as_ref().map_or(u64::MAX, |reps| {
            reps.values()
                .map(|l| l.map_or(0, |l| l.index))
                .min()
                .unwrap_or(u64::MAX)
        });
        (
            m.last_applied.map_or(0, |l| l.index),
            matched,
            m.snapshot.map_or(0, |s| s.index),
        )
    };
    let target = applied.min(matched);
    if snapshot >= target {
        purge_quiet(r, target, purged).await;
        return;
    }
    let kept = r.raft.config().max_in_snapshot_log_to_keep;
    if applied.saturating_sub(kept) <= matched {
        // Built at what is applied by then; an ask while a build is under
        // way is ignored, so ask until one covers the target.
        let _ = r.raft.trigger().snapshot().await;
    } else {
        purge_quiet(r, snapshot, purged).await;
    }
}

/// Purges `r`'s log up to `upto` (at or below its snapshot), if past what
/// was purged here before.
async fn purge_quiet(r: &Region, upto: u64, purged: &mut u64) {
    if upto <= *purged {
        return;
    }
    tracing::debug!(region = r.id, upto, "quiet region: purge its log");
    let _ = r.raft.trigger().purge_log(upto).await;
    *purged = upto;
}
