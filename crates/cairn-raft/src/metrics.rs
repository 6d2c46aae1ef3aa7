//! The node's event instruments, under etcd's metric names where etcd has
//! one, so etcd's dashboards and alerts read Cairn unchanged: the Raft log
//! fsync (`etcd_disk_wal_fsync_duration_seconds`), the state machine's
//! durable batch commit (`etcd_disk_backend_commit_duration_seconds`), peer
//! traffic and round trips (`etcd_network_peer_*`), leader changes and
//! failed proposals (`etcd_server_*`).
//!
//! They live in the process's default Prometheus registry, as etcd's do:
//! one node per process in production. In-process test clusters share them
//! (etcd's integration tests do too). Values a node can state at any moment
//! (has a leader, sizes, indexes) are not kept here but read when scraped
//! (`cairn-server`'s metrics endpoint).

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, Histogram, HistogramVec, IntCounter, IntCounterVec,
};

/// etcd's disk-latency buckets: 1 ms to ~8 s, doubling.
fn disk_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
}

/// Raft log fsyncs, one per group of appends.
pub static WAL_FSYNC: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        disk_buckets()
    )
    .expect("registered once")
});

/// Making applied state durable (the backend commit): the engine fsync
/// when a snapshot is built (applies are written unsynced; the log is
/// durable), and any apply written synced.
pub static BACKEND_COMMIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        disk_buckets()
    )
    .expect("registered once")
});

/// Bytes sent in peer RPCs, by destination member id (hex).
pub static PEER_SENT_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_network_peer_sent_bytes_total",
        "The total number of bytes sent to peers.",
        &["To"]
    )
    .expect("registered once")
});

/// Bytes of the answers to this node's peer RPCs, by peer member id (hex).
pub static PEER_RECEIVED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_network_peer_received_bytes_total",
        "The total number of bytes received from peers.",
        &["From"]
    )
    .expect("registered once")
});

/// Round trips of peer RPCs, by destination member id (hex).
pub static PEER_RTT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "etcd_network_peer_round_trip_time_seconds",
        "Round-Trip-Time histogram between peers",
        &["To"],
        exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
    )
    .expect("registered once")
});

/// Leaders this node has seen take over the first data region (the one
/// Status reports the leader of): etcd's count of its one Raft group's.
pub static LEADER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen."
    )
    .expect("registered once")
});

/// Leaders this node has seen take over any region (a split's new region
/// counts its first, a leader the balancer moves one).
pub static REGION_LEADER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "cairn_region_leader_changes_seen_total",
        "The number of leader changes seen, in any region."
    )
    .expect("registered once")
});

/// Proposals that failed (not committed: leadership lost, timeout, stop).
pub static PROPOSALS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen."
    )
    .expect("registered once")
});

/// Peer hashes the corruption check compared with its own (members
/// hashed over other compactions, or that did not answer, not counted).
pub static CORRUPTION_HASHES_COMPARED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "cairn_corruption_check_hashes_compared_total",
        "Peer hashes the corruption check compared with this member's."
    )
    .expect("registered once")
});

/// Regions this member, as their leader, closed beside the log
/// (`cairn-store`'s `node::side_closes`): one per region per round.
pub static SIDE_CLOSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "cairn_region_side_closes_total",
        "Closed timestamps this member's regions took beside the Raft log, as leader."
    )
    .expect("registered once")
});

/// Versions this member's background sweeps deleted after compactions
/// (`state_machine::sweep`; etcd's `etcd_debugging_mvcc_db_compaction_keys_total`).
pub static SWEPT_VERSIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "cairn_mvcc_compaction_swept_versions_total",
        "Versions compactions dropped that this member's background sweeps deleted."
    )
    .expect("registered once")
});

/// Data regions' leaderships the leader balancer on this member moved
/// (`cairn-store`'s `node::leader_balance`), as the meta region's leader.
pub static LEADER_BALANCE_MOVES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "cairn_leader_balance_moves_total",
        "Data regions' leaderships this member's leader balancer handed to another member."
    )
    .expect("registered once")
});

/// Registers every instrument, so a scrape lists them (at zero) before
/// their first event.
pub fn register_all() {
    LazyLock::force(&WAL_FSYNC);
    LazyLock::force(&BACKEND_COMMIT);
    LazyLock::force(&PEER_SENT_BYTES);
    LazyLock::force(&PEER_RECEIVED_BYTES);
    LazyLock::force(&PEER_RTT);
    LazyLock::force(&LEADER_CHANGES);
    LazyLock::force(&PROPOSALS_FAILED);
    LazyLock::force(&CORRUPTION_HASHES_COMPARED);
    LazyLock::force(&PEER_BATCH_MESSAGES);
    LazyLock::force(&SIDE_CLOSES);
    LazyLock::force(&SWEPT_VERSIONS);
    LazyLock::force(&LEADER_BALANCE_MOVES);
}

/// Raft messages per batched call to a peer (`crate::peer_batch`): near 1
/// while traffic is light, more as regions' messages queue behind calls in
/// flight.
pub static PEER_BATCH_MESSAGES: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "cairn_peer_raft_batch_messages",
        "Raft messages per batched call to a peer.",
        exponential_buckets(1.0, 2.0, 9).expect("valid buckets")
    )
    .expect("registered once")
});
