//! # cairn-store: the multi-region host
//!
//! A [`Node`] (`node/`: one file per job) hosts replicas of many regions
//! on one engine, in a registry they can join and leave at runtime: region 0, the
//! meta region (TSO high-water mark, member table, region directory), and
//! data regions (MVCC key ranges; one covering the whole keyspace until
//! splits arrive). It is where requests meet Raft:
//!
//! - routing: key → region (meta directory) → leader (Raft metrics), with
//!   forwarding over the peer service when the leader is elsewhere;
//! - the write path: [`proposer`] groups concurrent writes, takes one run of
//!   TSO timestamps per group and proposes them in order — the timestamp is
//!   the etcd revision (strictly increasing, not dense);
//! - the read path: read-index at the leader, then a local read once applied
//!   (linearizable; concurrent reads share read-index rounds, see
//!   [`read_batch`]; on the leader under a read lease no round at all,
//!   see [`read_lease`]; a leader restored in its term reads no lower
//!   than the log it restored, see [`restored_lead`]); or straight from
//!   the local replica (serializable);
//! - the [`tso`]: served by the meta region's leader from a Raft-persisted
//!   window.
//! - log bounds: besides openraft's snapshot every N entries, each replica
//!   snapshots and purges its log every `snapshot_log_bytes` of log (an
//!   entry is a whole commit group, so a count alone does not bound it),
//!   and a region quiet for a while of what every replica holds
//!   (`node::log_purge`).
//! - access: the auth store is replicated in the meta region and checked
//!   on the serving member; every change is fenced in the data region so
//!   it is in force as soon as it is acknowledged (`auth`);
//! - change readers: the watch service and the lock and election waits
//!   read region feeds only through [`SpanRegions`] and the [`watch_hub`]
//!   (the server crate sees this crate's API, never `cairn-raft`);
//! - operations: backups in etcd's bbolt format and restoring them
//!   (`backup`), the corruption checks (`corruption`) and MoveLeader
//!   (`transfer`, which hands over without breaking read leases).
//!
//! Caveats (today): one data region (splits/merges, cross-region 2PC and
//! change feeds are future issues). A snapshot is the engine made
//! durable; its bytes are written only to send them (see
//! `cairn_raft::snapshot_data`), installed as one atomic engine batch.

mod auth;
mod backup;
mod config;
mod corruption;
mod error;
mod lessor;
mod node;
mod peer_service;
pub mod proposer;
mod read_batch;
mod read_lease;
mod remote;
mod restored_lead;
mod span_pool;
mod span_regions;
mod transfer;
pub mod tso;
pub mod watch_hub;

pub use auth::{Access, Credentials};
pub use backup::{restore, Backup, Restored};
/// The store's Prometheus metrics (Raft, disk, peers).
pub use cairn_raft::metrics;
pub use cairn_raft::planted;
/// Alarm types (etcd's `AlarmType`): out of space, and corruption.
pub use cairn_raft::{ALARM_CORRUPT, ALARM_NOSPACE};
/// A storage snapshot, as region read views hand them out.
pub use cairn_storage::Snapshot;
pub use config::{
    cluster_id, member_id, parse_initial_cluster, InitialMember, NodeConfig, SplitPolicy,
    TokenConfig,
};
pub use error::{Error, Result};
pub use lessor::LeaseTtl;
pub use node::{
    CoordinatorCrash, Node, NodeStatus, Region, RegionReport, DATA_REGION, META_REGION,
};
pub use peer_service::PeerService;
pub use read_lease::READ_LEASE;
pub use remote::{ForwardOk, ForwardOp};
pub use span_regions::{RegionView, SpanRegions, COVER_WAIT};
