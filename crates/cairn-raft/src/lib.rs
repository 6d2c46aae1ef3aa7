//! # cairn-raft: one Raft group per region replica, on openraft
//!
//! Every region (a contiguous key range; region 0 is the meta region) is
//! replicated by its own openraft instance on each node that hosts it. This
//! crate supplies what openraft asks of an application:
//!
//! - [`TypeConfig`]: the commands ([`Command`]) and replies ([`Reply`]) that
//!   travel through the log.
//! - [`LogStore`]: each region's log and vote on the node's shared
//!   [`Engine`](cairn_storage::Engine). Appends are written at once and made
//!   durable by the node's one [`LogWriter`], which covers every region's
//!   pending appends with a single fsync before firing their callbacks — the
//!   "group commit" that makes many regions (and many concurrent requests)
//!   per node cheap.
//! - [`StateMachine`]: applies committed commands — MVCC transactions for data
//!   regions; TSO windows, members and the region directory for the meta
//!   region — writing each entry's effects *and* the applied log id in one
//!   atomic batch, so a crash can never apply an entry twice or lose one.
//!   A snapshot is the engine made durable; its bytes are written from an
//!   engine snapshot only when a follower must be sent them
//!   ([`snapshot_data`]), and installed atomically.
//! - [`network`]: openraft RPCs over the node-to-node gRPC `Peer` service,
//!   one HTTP/2 connection per node pair shared by every region, with a
//!   [`Faults`](network::Faults) switchboard that tests use to drop, delay and
//!   partition traffic on the real transport.
//! - [`failpoints`]: named crash points (log fsync, apply, snapshot,
//!   compaction, a transaction coordinator between its phases), compiled
//!   in only by the test feature `failpoints`.
//! - [`metrics`]: the node's event instruments under etcd's metric names
//!   (log fsync, backend commit, peer traffic, leader changes).
//!
//! Invariants: apply is deterministic (same log ⇒ same bytes on every
//! replica; revisions derive only from the command and the applied state);
//! a non-deterministic failure (storage I/O) stops the replica instead of
//! letting it diverge.

mod codec;
mod error;
pub mod failpoints;
mod log_store;
pub mod metrics;
pub mod network;
pub mod peer_batch;
pub mod planted;
pub mod snapshot_data;
pub mod snapshot_file;
mod state_machine;
mod types;

pub use codec::{decode, encode};
pub use error::{Error, Result};
pub use log_store::{LogStore, LogWriter, LogWriterStats, PurgeBound};
pub use snapshot_file::SnapshotDir;
pub use state_machine::load::WriteLoad;
pub use state_machine::marks::DataMarks;
pub use state_machine::{
    absorbed_regions, forget_region, leases_put, leases_written, newer_here, seed_empty,
    seed_restored, seed_restored_meta, share_of, share_of_range, stored_ranges, stored_regions,
    txn_within, Applied, FeedBatch, Freeze, HostChange, MergeState, RegionKind, RegionShared,
    SideClose, StateMachine, ALARM_CORRUPT, ALARM_NOSPACE, CHILD_INIT_INDEX,
};
pub use types::{AuthStamp, Command, MemberInfo, RegionDesc, RegionRange, Reply, TypeConfig};

/// The meta region's ID (TSO windows, members, the region directory).
pub const META_REGION: u64 = 0;

/// The openraft instance type for one region replica.
pub type Raft = openraft::Raft<TypeConfig>;
/// What a region's Raft reports of itself (`Raft::metrics`).
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;

/// Node identity in Raft (equal to the etcd member ID).
pub type NodeId = u64;

/// openraft settings tuned for loopback clusters and quick failover.
///
/// A follower that heard its leader refuses votes for
/// `election_timeout_max` (openraft's leader lease) and campaigns
/// `election_timeout_max` plus its own election timeout (drawn once in
/// `[min, max)`) after the last append it took: 0.9–1.2 s of silence here,
/// against etcd's 1–2 s (`--election-timeout 1000`, randomized up to twice
/// that). With 500/1000 ms it was 1.5–2 s, and a killed leader's regions
/// came back about 0.5 s after etcd's (docs/benchmarks.md, session 33).
/// The read lease (`cairn-store`'s `READ_LEASE`) stays a quarter of
/// `election_timeout_max`; a restarted member's replicas hold their own
/// elections until its sleeping leaders have heard of the restart
/// (`cairn-store`'s `node::hibernate`).
pub fn raft_config(cluster: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Default::default()
    }
}
