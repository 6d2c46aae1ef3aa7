//! [`Node`]: one Cairn process's share of the cluster — its engine, its
//! region replicas (the meta region and the data regions), its TSO, and the
//! request paths the etcd services call.
//!
//! Any node accepts any request: writes and linearizable reads are sent to
//! the region's leader (locally, or forwarded over the peer service);
//! retries happen only when nothing was proposed (`NotLeader`, no leader,
//! connection refused), so a write is never applied twice by a retry.
//!
//! The node's jobs, one file each:
//! - [`start`]: open the engine, start every region replica, bootstrap
//!   Raft membership, spawn the background loops;
//! - [`routing`]: key or span → data region(s), from the hosted replicas'
//!   ranges;
//! - [`split`]: splitting a data region in two (each replica starts the
//!   new region's replica when it applies the split);
//! - [`split_check`]: splitting the regions this node leads when they grow
//!   too big or too hot (`--region-split-bytes`, `--region-split-qps`);
//! - [`merge`]: merging a data region into its left neighbour (each
//!   replica stops the absorbed region's replica when it applies the
//!   merge); [`merge_check`]: merging small cold neighbours of the regions
//!   this node leads (`--region-merge-bytes`), and ending merges whose
//!   driver died;
//! - [`forward`]: send an op to its region's leader and serve one there;
//! - [`kv`] and [`leases`]: the KV and Lease entry points;
//! - [`reads`]: the linearizable read path (read index, then a local read);
//! - [`range_across`]: a Range over several regions, at one timestamp;
//! - [`status`]: what the node reports about itself;
//! - [`store_hash`]: `HashKV` of the whole store (or a key span of it),
//!   over every region;
//! - [`report`]: what `cairn regions` shows of each data region;
//! - [`background`]: publishing this member and the ranges of the regions
//!   it leads, counting leader changes, bounding Raft logs by bytes;
//! - [`closes`]: closed timestamps in idle regions, where someone waits;
//!   [`side_closes`]: those closes made beside the log;
//! - [`hibernate`]: idle regions stop their Raft ticks; members beat to
//!   each other instead;
//! - [`leader_balance`]: the meta leader spreads data regions' leaders
//!   evenly over the members.
//!
//! Auth checks (`crate::auth`), backups (`crate::backup`), the corruption
//! check (`crate::corruption`) and MoveLeader (`crate::transfer`) add
//! methods to [`Node`] from their own modules.

mod background;
mod backup_view;
pub(crate) mod close_hurry;
mod closes;
mod compaction_sweeps;
mod forward;
mod hibernate;
mod kv;
mod leader_balance;
mod lease_across;
mod leases;
mod log_purge;
mod merge;
mod merge_check;
mod range_across;
mod range_serializable;
mod reads;
mod region_catch_up;
mod registry;
mod report;
pub(crate) mod routing;
mod sequential;
mod side_closes;
mod split;
mod split_check;
mod start;
mod status;
mod store_hash;
mod txn_across;
mod txn_locks;
mod txn_read_across;

pub(crate) use range_across::bounds_tile;
pub(crate) use reads::sole_voter_index;
pub use report::RegionReport;
pub(crate) use store_hash::{CatchUp, StoreHash};
pub use txn_across::CoordinatorCrash;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use cairn_raft::network::PeerPool;
use cairn_raft::{LogWriter, LogWriterStats, Raft, RegionShared};
use cairn_storage::Engine;

use crate::config::NodeConfig;
use crate::lessor::Lessor;
use crate::proposer::Proposer;
use crate::read_batch::{Batcher, ReadIndexBatcher};
use crate::read_lease::ReadLease;
use crate::span_pool::SpanPool;
use crate::tso::Tso;
use crate::{Error, Result};

/// The meta region's ID.
pub const META_REGION: u64 = cairn_raft::META_REGION;
/// The first data region's ID (covers the whole keyspace until splits).
pub const DATA_REGION: u64 = 1;

/// How long a request may wait for a leader before failing.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// One region replica on this node.
pub struct Region {
    /// The region's ID.
    pub id: u64,
    /// The Raft instance.
    pub raft: Raft,
    /// Applied state shared with the state machine.
    pub shared: Arc<RegionShared>,
    pub(crate) proposer: Proposer,
    /// Read-index rounds this replica runs as leader (local and forwarded reads).
    leader_reads: ReadIndexBatcher,
    /// The leader's read lease, if this region takes one.
    pub(crate) lease: Option<Arc<ReadLease>>,
    /// Whether this replica came back as leader in its term, and with what
    /// log (`restored_lead`).
    pub(crate) restored: Option<crate::restored_lead::RestoredLead>,
    /// Read indexes this node's linearizable reads obtain (via the leader).
    reads: ReadIndexBatcher,
    /// Read timestamps with the read index after each
    /// (`ForwardOp::ReadIndexAtNewest`), for reads within this region
    /// while there are several.
    newest_reads: Batcher<(i64, u64)>,
    /// Read indexes after a timestamp (`ForwardOp::ReadIndexAfter`, a
    /// round asking after the highest waiting): this node's reads across
    /// regions catching the region up.
    reads_after: Batcher<u64, i64>,
    /// Bytes appended to this replica's log (see `background`).
    log_bytes: Arc<AtomicU64>,
    /// Asks for closed timestamps (see `closes`).
    closes: closes::CloseWants,
    /// Whether its Raft ticks stopped (see `hibernate`).
    pub(crate) sleep: hibernate::Sleep,
}

/// What `Maintenance.Status` reports.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// Leader of the data region (0 if none).
    pub leader: u64,
    /// Current Raft term of the data region.
    pub raft_term: u64,
    /// Committed index of the data region (etcd's `raftIndex`).
    pub raft_index: u64,
    /// Applied index of the data region.
    pub raft_applied_index: u64,
    /// Bytes allocated on disk.
    pub db_size: i64,
    /// Bytes of live data on disk (see `Engine::size_in_use`).
    pub db_size_in_use: i64,
}

/// A running node.
pub struct Node {
    /// Member ID (= Raft node ID).
    pub id: u64,
    /// Cluster ID.
    pub cluster_id: u64,
    /// Configuration it started with.
    pub config: NodeConfig,
    /// Peer connections and fault switchboard.
    pub pool: Arc<PeerPool>,
    pub(crate) engine: Arc<dyn Engine>,
    log_writer: LogWriter,
    regions: registry::Registry,
    tso: Arc<Tso>,
    lessor: Arc<Lessor>,
    /// Runs span reads off the async workers, a bounded number at once.
    spans: SpanPool,
    /// Read timestamps this node's reads take (`ForwardOp::ReadTimestamp`
    /// to the meta leader), one round for every read waiting.
    read_timestamps: Batcher<i64>,
    /// The highest revision this member has answered a write or a
    /// serializable read with (what counts: `sequential.rs`); a
    /// serializable read here is served at or above it.
    answered: std::sync::atomic::AtomicI64,
    /// Set once by [`Node::shutdown`]; waits that hold the node (lock
    /// waiters, observers) end on it, so a stopped node's engine is freed.
    stopped: tokio::sync::watch::Sender<bool>,
    /// One MoveLeader at a time (see `transfer`).
    pub(crate) transferring: tokio::sync::Mutex<()>,
    /// One defragmentation at a time, as etcd's (its backend lock):
    /// others wait for it, then run.
    defragmenting: Arc<tokio::sync::Mutex<()>>,
    /// Backups being written or streamed ([`crate::backup::AT_ONCE`] at
    /// most: each is a copy of the store on disk until streamed).
    pub(crate) backups: Arc<tokio::sync::Semaphore>,
    /// Whether the leader balancer may move leaders from here (see
    /// `leader_balance`): the config's flag, switched by
    /// [`Node::set_leader_balance`].
    balancing: std::sync::atomic::AtomicBool,
    /// Opens replicas of regions born after the node started.
    opener: start::Opener,
    /// Where every region's proposer gets its timestamps.
    timestamps: crate::proposer::TimestampSource,
    /// Held while a replica is being started (or adopted).
    hosting: tokio::sync::Mutex<()>,
    /// Milliseconds each region born here waits before it is started (a
    /// test's slow member: [`Node::delay_births`]).
    birth_delay: AtomicU64,
    /// Adopting a region is refused (a test's member that has not adopted
    /// one yet: [`Node::hold_adoptions`]).
    adoptions_held: std::sync::atomic::AtomicBool,
    /// Each data region's recent write rate (see `report`).
    write_rates: parking_lot::Mutex<std::collections::BTreeMap<u64, report::WriteRate>>,
    /// Outcomes of finished transactions across regions, `(primary
    /// region, start_ts)`, for the background to have forgotten.
    forgets: parking_lot::Mutex<Vec<(u64, i64)>>,
    /// Pokes the closes loop (see `closes`).
    pub(crate) close_now: Arc<tokio::sync::Notify>,
    /// Regions readers here wait on (see `close_hurry`).
    pub(crate) hurries: Arc<close_hurry::CloseHurries>,
    /// A test's close cadence in milliseconds (0: the usual; see
    /// [`Node::set_close_every`]).
    close_every_ms: AtomicU64,
    /// This process's boot id, and the other members' beats (see
    /// `hibernate`).
    boot: u64,
    beats: hibernate::Beats,
    /// When the peer service began to serve (see
    /// `hibernate::resume_elections`).
    serving: tokio::sync::watch::Sender<Option<std::time::Instant>>,
    /// Members that refused closes beside the log (see `side_closes`).
    side_peers: side_closes::SidePeers,
    /// A test's hold on the next expiry across regions, after its
    /// prewrites ([`Node::hold_next_expiry`]).
    expiry_hold: parking_lot::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// A test's hold on the next settling of a lock here, once it read the
    /// lock's regions ([`Node::hold_next_settle`]).
    settle_hold: parking_lot::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl Node {
    /// A region replica hosted here. `EpochMismatch` (route again) for a
    /// region a merge absorbed here.
    pub fn region(&self, id: u64) -> Result<Arc<Region>> {
        self.regions.get(id).ok_or_else(|| {
            if self.absorbed_here(id) {
                Error::EpochMismatch
            } else {
                Error::Internal(format!("region {id} not hosted here"))
            }
        })
    }

    /// Allocates timestamps for writes if this node leads the meta region,
    /// confirmed after they are taken, in the same term (a read lease, or
    /// a round): a TSO leader deposed without knowing it — paused past an
    /// election — hands out none. Its window lies below its successor's,
    /// and a write stamped from it after the successor served a read at a
    /// later timestamp would commit below a revision a client was already
    /// given (a region the read did not touch has no floor that high).
    pub async fn tso_local(&self, count: u32) -> Result<i64> {
        let meta = self.region(META_REGION)?;
        let term = self.leading_term(&meta)?;
        let first = self.tso.allocate(count).await?;
        // Not confirmed in time (no quorum): nothing was proposed with
        // them, so say no leader (retried), not timed out.
        self.leader_read_index(&meta).await.map_err(|e| match e {
            Error::Timeout => Error::NoLeader,
            e => e,
        })?;
        if self.leading_term(&meta)? != term {
            return Err(Error::NotLeader { leader: None });
        }
        Ok(first)
    }

    /// Timestamps for this node's writes (a proposer's commit group): from
    /// the meta leader, confirmed ([`Node::tso_local`], here or there).
    pub(crate) async fn write_timestamps(&self, count: u32) -> Result<i64> {
        let meta = self.region(META_REGION)?;
        crate::tso::fetch_timestamps(&self.tso, &self.pool, &meta.raft, count, Some(self)).await
    }

    /// Bytes of this node's state-machine data on disk (what the storage
    /// quota measures; see `Engine::size_in_use`).
    pub fn data_size(&self) -> u64 {
        self.engine.size_in_use()
    }

    /// Rewrites this node's store compactly (etcd's defragment); reads and
    /// writes go on meanwhile. Returns when done.
    pub async fn defragment(self: &Arc<Self>) -> Result<()> {
        // What compactions applied here dropped goes first, so the space
        // is there to reclaim (`compaction_sweeps`). In a task of its own,
        // with the defragmentation: a caller that gives up does not stop
        // it half way.
        let node = self.clone();
        tokio::spawn(async move {
            let _one = node.defragmenting.clone().lock_owned().await;
            node.sweep_applied().await?;
            let engine = node.engine.clone();
            tokio::task::spawn_blocking(move || engine.defragment())
                .await
                .map_err(|e| Error::Internal(format!("defragment: {e}")))?
                .map_err(|e| Error::Internal(format!("defragment: {e}")))
        })
        .await
        .map_err(|e| Error::Internal(format!("defragment: {e}")))?
    }

    /// The node's group-commit counters.
    pub fn log_stats(&self) -> Arc<LogWriterStats> {
        self.log_writer.stats()
    }

    /// True once the node is shutting down.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// The peer service begins to serve this node (see
    /// `hibernate::resume_elections`).
    pub(crate) fn begin_serving_peers(&self) {
        // One call per peer listener: the first one counts.
        self.serving.send_if_modified(|s| {
            let first = s.is_none();
            s.get_or_insert_with(std::time::Instant::now);
            first
        });
    }

    /// Resolves once the node is shutting down.
    pub async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops every region's Raft.
    pub async fn shutdown(&self) {
        self.stopped.send_replace(true);
        // No replica starts after this (`host` checks `stopped` under it).
        drop(self.hosting.lock().await);
        for r in self.regions.all() {
            let _ = r.raft.shutdown().await;
        }
    }
}
