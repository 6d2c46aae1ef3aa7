//! The node's background loops (each holds the node weakly and ends with
//! it): publishing this member, and the ranges of the data regions it
//! leads, to the meta region; counting leader changes; bounding each
//! region's Raft log by bytes. (Lease expiry lives in `crate::lessor`, TSO
//! colocation in `crate::tso`, closed timestamps in `closes`.)

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_raft::{Command, MemberInfo, RegionDesc};

use crate::node::{Node, META_REGION};
use crate::remote::ForwardOp;

/// Publishes this member's attributes to the meta region (idempotent;
/// retried until done).
pub(super) async fn publish_self(node: std::sync::Weak<Node>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let me = MemberInfo {
            id: n.id,
            name: n.config.name.clone(),
            peer_urls: n.config.peer_urls.clone(),
            client_urls: n.config.client_urls.clone(),
        };
        let applied = match n.region(META_REGION) {
            Ok(m) => m.shared.applied(),
            Err(_) => return,
        };
        let mut todo = Vec::new();
        if applied.members.get(&n.id) != Some(&me) {
            todo.push(Command::SetMember(me));
        }
        if todo.is_empty() {
            return;
        }
        for cmd in todo {
            if let Err(e) = n.submit(META_REGION, ForwardOp::Plain(cmd)).await {
                tracing::debug!("publishing to meta region: {e}");
            }
        }
        drop(n);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps the meta region's directory up to date with the data regions
/// this node leads: after a split, each side's leader publishes its range
/// and epoch (the directory keeps the newest epoch of each region).
pub(super) async fn publish_regions(node: std::sync::Weak<Node>) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(n) = node.upgrade() else { return };
        let Ok(meta) = n.region(META_REGION) else {
            return;
        };
        let dir = meta.shared.with_applied(|a| a.regions.clone());
        for r in n.regions.all() {
            if r.id == META_REGION {
                continue;
            }
            // Regions it absorbed leave the directory (a tombstone: never
            // published again).
            let absorbed = r.shared.with_applied(|a| a.merge.absorbed.clone());
            for id in absorbed.into_iter().filter(|id| dir.contains_key(id)) {
                let drop = Command::DropRegion { id };
                if let Err(e) = n.submit(META_REGION, ForwardOp::Plain(drop)).await {
                    tracing::debug!(region = id, "dropping an absorbed region: {e}");
                }
            }
            let peers: Vec<u64> = {
                let m = r.raft.metrics();
                let m = m.borrow();
                if m.current_leader != Some(n.id) {
                    continue;
                }
                m.membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect()
            };
            let range = r.shared.range();
            if range.is_empty() {
                // Frozen for a merge: its keys are no one's until the
                // merge ends (published again if it thaws).
                continue;
            }
            let desc = RegionDesc {
                id: r.id,
                start: range.start,
                end: range.end,
                epoch: range.epoch,
                peers,
            };
            if dir.get(&r.id) == Some(&desc) || desc.peers.is_empty() {
                continue;
            }
            if let Err(e) = n
                .submit(META_REGION, ForwardOp::Plain(Command::SetRegion(desc)))
                .await
            {
                tracing::debug!(region = r.id, "publishing the region's range: {e}");
            }
        }
    }
}

/// Counts each new leader this replica sees (`etcd_server_leader_changes_seen_total`)
/// and logs it (as etcd logs "elected leader … at term …") until its Raft
/// stops.
pub(super) async fn count_leader_changes(
    region: u64,
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
) {
    let mut last = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if let Some(l) = leader.filter(|_| leader != last) {
            cairn_raft::metrics::LEADER_CHANGES.inc();
            tracing::info!(region, term, "leader is {l:x}");
        }
        last = leader;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Bounds each region's Raft log by bytes, on top of openraft's own policy
/// (snapshot every `snapshot_logs` entries, then purge all but a tenth of
/// that). An entry is a whole commit group, so a count alone lets the log
/// hold anything from kilobytes to gigabytes: measured (1 node, 1M puts of
/// 256 B from 200 clients) the log keyspace held 256 MB of an 880 MB data
/// dir. Each time a region's log has grown by
/// [`NodeConfig::snapshot_log_bytes`], this task asks for a snapshot and
/// purges the log up to where it asked the time before (and no further than
/// the latest snapshot) — so a region keeps at least one limit's worth of
/// log, slack for a briefly lagging follower, however recently openraft's
/// own policy snapshotted. A snapshot build only syncs the engine (the state
/// machine lives in it), so asking often is cheap; openraft delays a purge
/// that a replication stream still needs.
pub(super) async fn snapshot_by_log_bytes(node: std::sync::Weak<Node>) {
    const EVERY: Duration = Duration::from_millis(500);
    // Per region: log bytes and applied index when a snapshot was last asked for.
    let mut asked: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new();
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let limit = n.config.snapshot_log_bytes;
        for r in n.regions.all() {
            let now = r.log_bytes.load(Ordering::Relaxed);
            let (bytes_then, applied_then) = asked.entry(r.id).or_insert((0, None));
            if limit == 0 || now.saturating_sub(*bytes_then) < limit {
                continue;
            }
            tracing::debug!(
                region = r.id,
                bytes = now - *bytes_then,
                "log bytes reached: snapshot"
            );
            let (snapshot, applied) = {
                let m = r.raft.metrics();
                let m = m.borrow();
                (m.snapshot.map(|s| s.index), m.last_applied.map(|l| l.index))
            };
            if let Some(upto) = applied_then.zip(snapshot).map(|(a, s)| a.min(s)) {
                let _ = r.raft.trigger().purge_log(upto).await;
            }
            *bytes_then = now;
            *applied_then = applied;
            let _ = r.raft.trigger().snapshot().await;
        }
    }
}
