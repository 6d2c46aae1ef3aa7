//! The node's background loops (each holds the node weakly and ends with
//! it): publishing this member, and the ranges of the data regions it
//! leads, to the meta region; counting leader changes; flushing the
//! engine's memtables once writes stop (`cairn_storage`'s quiet flush).
//! (Lease expiry lives in `crate::lessor`, TSO colocation in `crate::tso`,
//! closed timestamps in `closes`, bounding Raft logs in `log_purge`,
//! regions behind the store's compaction, alarms or auth fence in
//! `region_catch_up`.)

use std::time::Duration;

use cairn_raft::{Command, MemberInfo, RegionDesc};

use crate::node::{Node, META_REGION};
use crate::remote::ForwardOp;

/// One period of a background loop: sleeps `every`, then the node, unless
/// it is gone or stopping (the loop ends).
pub(super) async fn tick(
    node: &std::sync::Weak<Node>,
    every: Duration,
) -> Option<std::sync::Arc<Node>> {
    tokio::time::sleep(every).await;
    node.upgrade().filter(|n| !n.is_stopped())
}

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

/// Counts each new leader this replica sees (`cairn_region_leader_changes_seen_total`;
/// the first data region's also as etcd's
/// `etcd_server_leader_changes_seen_total`, so a restart or a burst of
/// splits does not look like an unstable cluster) and logs it (as etcd
/// logs "elected leader … at term …") until its Raft stops.
pub(super) async fn count_leader_changes(
    region: u64,
    mut metrics: tokio::sync::watch::Receiver<
        openraft::metrics::RaftServerMetrics<u64, openraft::BasicNode>,
    >,
) {
    let mut last = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.vote.leader_id().get_term())
        };
        if let Some(l) = leader.filter(|_| leader != last) {
            cairn_raft::metrics::REGION_LEADER_CHANGES.inc();
            if region == super::DATA_REGION {
                cairn_raft::metrics::LEADER_CHANGES.inc();
            }
            tracing::info!(region, term, "leader is {l:x}");
        }
        last = leader;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Asks the engine each second whether writes have stopped long enough
/// to flush the memtables they filled (see `Engine::flush_if_quiet`).
pub(super) async fn flush_quiet_memtables(node: std::sync::Weak<Node>) {
    while let Some(n) = tick(&node, Duration::from_secs(1)).await {
        let engine = n.engine.clone();
        drop(n);
        match tokio::task::spawn_blocking(move || engine.flush_if_quiet()).await {
            Ok(Ok(true)) => tracing::debug!("writes stopped: memtables flushed"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!("flushing memtables after writes stopped: {e}"),
            Err(e) => tracing::warn!("flushing memtables after writes stopped: {e}"),
        }
    }
}
