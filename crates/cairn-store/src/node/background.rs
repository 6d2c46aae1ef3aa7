//! The node's background loops (each holds the node weakly and ends with
//! it): publishing this member and the initial region directory to the
//! meta region, counting leader changes, and bounding each region's Raft
//! log by bytes. (Lease expiry lives in `crate::lessor`, TSO colocation in
//! `crate::tso`.)

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_raft::{Command, MemberInfo, RegionDesc};

use crate::node::{Node, DATA_REGION, META_REGION};
use crate::remote::ForwardOp;

/// Publishes this member's attributes and the initial region directory to
/// the meta region (idempotent; retried until done).
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
        if !applied.regions.contains_key(&DATA_REGION) {
            let peers = n.region(DATA_REGION).map_or(Vec::new(), |r| {
                r.raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect()
            });
            todo.push(Command::SetRegion(RegionDesc {
                id: DATA_REGION,
                start: Vec::new(),
                end: Vec::new(),
                epoch: 1,
                peers,
            }));
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

/// Counts each new leader this replica sees (`etcd_server_leader_changes_seen_total`)
/// until its Raft stops.
pub(super) async fn count_leader_changes(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
) {
    let mut last = None;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            cairn_raft::metrics::LEADER_CHANGES.inc();
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
