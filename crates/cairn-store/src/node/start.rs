//! Starting a node: open the data dir's engine, start a Raft replica of
//! every region hosted here (for a new cluster, each initial member
//! initializes the same membership), wire each replica's proposer, read
//! paths and read lease, and spawn the background loops.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use cairn_raft::network::{PeerPool, RegionNetwork};
use cairn_raft::{HostChange, LogStore, LogWriter, Raft, RegionKind, RegionShared, StateMachine};
use cairn_storage::{Engine, FjallEngine};
use openraft::BasicNode;

use crate::config::{cluster_id, member_id, NodeConfig};
use crate::error::read_index_error;
use crate::lessor::Lessor;
use crate::node::registry::Registry;
use crate::node::{background, Node, Region, DATA_REGION, META_REGION};
use crate::proposer::{FloorSeed, Proposer, TimestampSource};
use crate::read_batch::{Batcher, ReadIndexBatcher};
use crate::read_lease::ReadLease;
use crate::remote::{ForwardOk, ForwardOp};
use crate::restored_lead::RestoredLead;
use crate::span_pool::SpanPool;
use crate::tso::{self, Tso};
use crate::{Error, Result};

impl Node {
    /// Opens the data dir, starts every region replica and (for a new
    /// cluster) bootstraps Raft membership. The caller must serve the peer
    /// service (see [`crate::PeerService`]) on `config.peer_urls[0]`.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>> {
        let me = config
            .initial_cluster
            .iter()
            .find(|m| m.name == config.name)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "--name {:?} is not in --initial-cluster",
                    config.name
                ))
            })?;
        let id = member_id(&me.name, &me.peer_url, &config.cluster_token);
        let cluster_id = cluster_id(&config.initial_cluster, &config.cluster_token);
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::Internal(e.to_string()))?;
        let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(config.data_dir.join("db"))?);
        // Before any replica reads it: every version indexed by revision,
        // the marker set (a store an older Cairn wrote is completed here).
        let done = engine.clone();
        tokio::task::spawn_blocking(move || cairn_mvcc::complete_index(&*done))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let log_writer =
            LogWriter::start(engine.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        let faults = config.peer_faults.clone().unwrap_or_default();
        let pool = PeerPool::with_faults(id, cluster_id, config.peer_tls.clone(), faults);
        let mut raft_config = cairn_raft::raft_config(&format!("cairn-{cluster_id:x}"));
        raft_config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs);
        raft_config.max_in_snapshot_log_to_keep = config.snapshot_logs / 10;
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| Error::Internal(e.to_string()))?,
        );

        let members: BTreeMap<u64, BasicNode> = config
            .initial_cluster
            .iter()
            .map(|m| {
                (
                    member_id(&m.name, &m.peer_url, &config.cluster_token),
                    BasicNode {
                        addr: m.peer_url.clone(),
                    },
                )
            })
            .collect();

        let snapshots = Arc::new(cairn_raft::SnapshotDir::open(config.data_dir.join("snap"))?);
        let mut hosted = vec![META_REGION, DATA_REGION];
        hosted.extend(cairn_raft::stored_regions(&*engine)?);
        hosted.sort_unstable();
        hosted.dedup();
        // A region a merge absorbed here whose records outlived it (the
        // node stopped first): forgotten, not hosted. Its keys stay.
        let absorbed = cairn_raft::absorbed_regions(&*engine, META_REGION)?;
        for id in hosted.iter().filter(|id| absorbed.contains(id)) {
            tracing::info!(region = id, "forgetting a region absorbed by a merge");
            cairn_raft::forget_region(&*engine, *id)?;
        }
        hosted.retain(|id| !absorbed.contains(id));
        let (births, born) = tokio::sync::mpsc::unbounded_channel();
        let opener = Opener {
            births: births.clone(),
            me: id,
            engine: engine.clone(),
            log_writer: log_writer.clone(),
            pool: pool.clone(),
            raft_config,
            snapshots,
            marks: Arc::default(),
        };
        let mut rafts = Vec::new();
        // Replicas that hold their own elections until this member's
        // leaders have had time to hear of the restart (`hibernate`).
        let mut held = Vec::new();
        for region in hosted {
            let kind = if region == META_REGION {
                RegionKind::Meta
            } else {
                RegionKind::Data
            };
            let (raft, shared, log_bytes, restored) = opener.open(region, kind).await?;
            // Fails only if Raft stopped as it opened (a log it cannot
            // read): say why, not just that it stopped.
            let resumed = raft.is_initialized().await.map_err(|e| {
                Error::Internal(format!("region {region}'s Raft stopped as it opened: {e}"))
            })?;
            // Only the first two regions are bootstrapped; a region born by
            // a split starts from the record the split wrote.
            let first = region == META_REGION || region == DATA_REGION;
            if first && config.new_cluster && !resumed {
                // Every initial member initializes with the same membership: safe in openraft.
                if let Err(e) = raft.initialize(members.clone()).await {
                    tracing::debug!(region, "initialize: {e}");
                }
            }
            if resumed && super::hibernate::hold_elections(&raft).await {
                held.push(region);
            }
            rafts.push((region, raft, shared, log_bytes, restored));
        }
        let meta_index = rafts
            .iter()
            .position(|r| r.0 == META_REGION)
            .expect("the meta region is hosted");
        let (meta_raft, meta_shared) = (rafts[meta_index].1.clone(), rafts[meta_index].2.clone());
        if let crate::TokenConfig::Simple { ttl } = &config.auth_tokens {
            meta_shared.tokens.lock().set_ttl(*ttl);
        }
        let tso = Arc::new(Tso::new(
            id,
            meta_raft.clone(),
            meta_shared,
            rafts[meta_index].4,
        ));
        let close_now = Arc::new(tokio::sync::Notify::new());
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            // Proposers stamp their commit groups with confirmed timestamps.
            let timestamps: TimestampSource = {
                let weak = weak.clone();
                Arc::new(move |count| {
                    let weak = weak.clone();
                    Box::pin(async move {
                        let node = weak.upgrade().ok_or(Error::Stopped)?;
                        node.write_timestamps(count).await
                    })
                })
            };
            let regions = Registry::default();
            for (region, raft, shared, log_bytes, restored) in rafts {
                regions.insert(Arc::new(Region::start(
                    id,
                    region,
                    raft,
                    shared,
                    log_bytes,
                    restored,
                    timestamps.clone(),
                    config.read_lease,
                    weak.clone(),
                )));
            }
            let data = regions
                .get(DATA_REGION)
                .expect("the data region was just started");
            let lessor = Arc::new(Lessor::new(
                id,
                data.raft.clone(),
                data.shared.clone(),
                data.proposer.clone(),
                config.lease_checkpoint_interval,
                data.restored.as_ref(),
            ));
            let balancing = std::sync::atomic::AtomicBool::new(config.balance_leaders);
            Node {
                id,
                cluster_id,
                config,
                pool,
                engine,
                log_writer,
                regions,
                tso,
                lessor,
                spans: SpanPool::default(),
                answered: std::sync::atomic::AtomicI64::new(0),
                read_timestamps: submitting(
                    weak.clone(),
                    META_REGION,
                    ForwardOp::ReadTimestamp,
                    ForwardOk::timestamp,
                ),
                stopped: tokio::sync::watch::channel(false).0,
                transferring: tokio::sync::Mutex::new(()),
                defragmenting: Default::default(),
                backups: Arc::new(tokio::sync::Semaphore::new(crate::backup::AT_ONCE)),
                balancing,
                birth_delay: AtomicU64::new(0),
                adoptions_held: Default::default(),
                opener,
                timestamps,
                hosting: tokio::sync::Mutex::new(()),
                write_rates: Default::default(),
                forgets: Default::default(),
                hurries: Arc::new(super::close_hurry::CloseHurries::new(close_now.clone())),
                close_now,
                close_every_ms: AtomicU64::new(0),
                expiry_hold: parking_lot::Mutex::new(None),
                settle_hold: parking_lot::Mutex::new(None),
                boot: super::hibernate::boot_id(id),
                beats: Default::default(),
                serving: tokio::sync::watch::channel(None).0,
                side_peers: Default::default(),
            }
        });
        tokio::spawn(host_births(Arc::downgrade(&node), born));
        tokio::spawn(background::publish_self(Arc::downgrade(&node)));
        tokio::spawn(background::flush_quiet_memtables(Arc::downgrade(&node)));
        let weak = Arc::downgrade(&node);
        node.lessor.revoke_across_with(Box::new(move |id, term| {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(node) = weak.upgrade() else {
                    return Ok(());
                };
                node.revoke_across(id, term, &crate::Access::Internal)
                    .await
                    .map(|_| ())
            })
        }));
        tokio::spawn(Lessor::expire(
            Arc::downgrade(&node.lessor),
            node.stopped.subscribe(),
        ));
        tokio::spawn(tso::colocate(Arc::downgrade(&node)));
        tokio::spawn(super::log_purge::bound_logs(Arc::downgrade(&node)));
        tokio::spawn(super::region_catch_up::catch_up_regions(Arc::downgrade(
            &node,
        )));
        tokio::spawn(super::compaction_sweeps::sweep_compactions(Arc::downgrade(
            &node,
        )));
        if !node.config.corrupt_check_interval.is_zero() {
            tokio::spawn(crate::corruption::check_every(
                Arc::downgrade(&node),
                node.config.corrupt_check_interval,
            ));
        }
        tokio::spawn(background::publish_regions(Arc::downgrade(&node)));
        tokio::spawn(super::report::sample_write_rates(Arc::downgrade(&node)));
        tokio::spawn(super::split_check::check_splits(Arc::downgrade(&node)));
        tokio::spawn(super::merge_check::check_merges(Arc::downgrade(&node)));
        tokio::spawn(super::closes::close_idle_regions(Arc::downgrade(&node)));
        tokio::spawn(super::hibernate::resume_elections(
            Arc::downgrade(&node),
            held,
        ));
        if node.config.hibernate_regions {
            tokio::spawn(super::hibernate::beat_peers(Arc::downgrade(&node)));
            tokio::spawn(super::hibernate::hibernate(Arc::downgrade(&node)));
        }
        tokio::spawn(super::leader_balance::balance_leaders(Arc::downgrade(
            &node,
        )));
        tokio::spawn(super::txn_locks::sweep_locks(Arc::downgrade(&node)));
        tokio::spawn(super::txn_locks::forget_outcomes(Arc::downgrade(&node)));
        for r in node.regions.all() {
            tokio::spawn(background::count_leader_changes(
                r.id,
                r.raft.server_metrics(),
            ));
        }
        Ok(node)
    }

    /// Starts this node's replica of data region `region`, from its record
    /// in the engine (written by a split applied here, or an empty one by
    /// [`Node::adopt`]). Does nothing if it is already hosted.
    pub(crate) async fn host(self: &Arc<Self>, region: u64) -> Result<()> {
        // One at a time: two Rafts over one region's log would diverge.
        // None once the node is shutting down (it would outlive it, and
        // hold the engine).
        let _one = self.hosting.lock().await;
        if self.regions.get(region).is_some() || self.is_stopped() {
            return Ok(());
        }
        let (raft, shared, log_bytes, restored) =
            self.opener.open(region, RegionKind::Data).await?;
        let r = Arc::new(Region::start(
            self.id,
            region,
            raft,
            shared,
            log_bytes,
            restored,
            self.timestamps.clone(),
            self.config.read_lease,
            Arc::downgrade(self),
        ));
        tokio::spawn(background::count_leader_changes(
            region,
            r.raft.server_metrics(),
        ));
        self.regions.insert(r);
        tracing::info!(region, "hosting a region born by a split");
        Ok(())
    }
}

/// Starts a replica for each region a split applied here gives birth to,
/// and stops the replica of each a merge applied here absorbs, until the
/// node is gone.
async fn host_births(
    node: Weak<Node>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<HostChange>,
) {
    while let Some(change) = changes.recv().await {
        let Some(n) = node.upgrade() else { return };
        if n.is_stopped() {
            return;
        }
        match change {
            HostChange::Born(region) => {
                let delay = n.birth_delay.load(std::sync::atomic::Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                if let Err(e) = n.host(region).await {
                    // The record is in the engine: the next start hosts it.
                    tracing::error!(region, "cannot start a region born by a split: {e}");
                }
            }
            HostChange::Absorbed(region) => {
                if let Err(e) = n.unhost(region).await {
                    // The absorb is on disk: the next start forgets it.
                    tracing::error!(region, "cannot stop a region absorbed by a merge: {e}");
                }
            }
        }
    }
}

/// What opening a region replica on this node takes (kept by the node, so
/// regions born later open the same way).
pub(crate) struct Opener {
    /// Where each region reports the regions its splits give birth to;
    /// registered before Raft starts, which may replay a split.
    births: tokio::sync::mpsc::UnboundedSender<HostChange>,
    me: u64,
    engine: Arc<dyn Engine>,
    log_writer: LogWriter,
    pool: Arc<PeerPool>,
    raft_config: Arc<openraft::Config>,
    snapshots: Arc<cairn_raft::SnapshotDir>,
    /// What the data replicas opened here have applied, at most.
    pub(super) marks: Arc<cairn_raft::DataMarks>,
}

impl Opener {
    /// Region `region`'s Raft on this node's engine: its applied state
    /// (loaded, or fresh), its log, its state machine and its network.
    async fn open(
        &self,
        region: u64,
        kind: RegionKind,
    ) -> Result<(
        Raft,
        Arc<RegionShared>,
        Arc<AtomicU64>,
        Option<RestoredLead>,
    )> {
        let shared = RegionShared::load(region, kind, self.engine.clone(), self.snapshots.clone())?;
        shared.on_change(self.births.clone());
        shared.report_to(self.marks.clone());
        let applied = {
            let shared = shared.clone();
            Arc::new(move || shared.with_applied(|a| a.last_applied.map_or(0, |l| l.index)))
        };
        let mut log = LogStore::new(region, self.engine.clone(), self.log_writer.clone())
            .bound_purges(applied)
            .report_committed(shared.committed_handle());
        let last = openraft::storage::RaftLogStorage::get_log_state(&mut log)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .last_log_id
            .map_or(0, |l| l.index);
        let log_bytes = log.appended_bytes();
        let sm = StateMachine::new(shared.clone());
        let net = RegionNetwork::new(region, self.pool.clone());
        let raft = Raft::new(self.me, self.raft_config.clone(), net, log, sm)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let restored = RestoredLead::of(&raft, last).await?;
        if restored.is_some() {
            let born = region != META_REGION && region != DATA_REGION;
            if born && last <= cairn_raft::CHILD_INIT_INDEX {
                tracing::info!(region, "leading a region born by a split it appended");
            } else {
                tracing::info!(region, "restored as leader in its term");
            }
        }
        Ok((raft, shared, log_bytes, restored))
    }
}

impl Region {
    /// A started replica of `region` on node `me`: its proposer (taking
    /// timestamps from `timestamps`), its read lease if it takes one, the
    /// leader's read-index rounds and this node's (forwarded through
    /// `node`).
    #[allow(clippy::too_many_arguments)]
    fn start(
        me: u64,
        region: u64,
        raft: Raft,
        shared: Arc<RegionShared>,
        log_bytes: Arc<AtomicU64>,
        restored: Option<RestoredLead>,
        timestamps: TimestampSource,
        read_lease: bool,
        node: Weak<Node>,
    ) -> Self {
        let seed: FloorSeed = {
            let node = node.clone();
            Arc::new(move || {
                let node = node.clone();
                Box::pin(async move {
                    let node = node.upgrade().ok_or(Error::Stopped)?;
                    node.read_timestamp().await
                })
            })
        };
        let epoch = {
            let shared = shared.clone();
            Arc::new(move || shared.with_applied(|a| a.range.epoch))
        };
        let snapshots = {
            let shared = shared.clone();
            Arc::new(move || shared.snapshots_begun())
        };
        let proposer = Proposer::start(raft.clone(), timestamps, seed, epoch, snapshots);
        let lease = read_lease.then(|| Arc::new(ReadLease::new(me, restored)));
        let leader_reads = {
            let (raft, lease) = (raft.clone(), lease.clone());
            ReadIndexBatcher::start(move || {
                let (raft, lease) = (raft.clone(), lease.clone());
                async move {
                    if let Some(lease) = lease {
                        return lease.read_index(&raft).await;
                    }
                    let vote = match restored {
                        Some(_) => Some(
                            raft.with_raft_state(|st| *st.vote_ref())
                                .await
                                .map_err(|e| Error::Internal(e.to_string()))?,
                        ),
                        None => None,
                    };
                    let (read, _) = raft.get_read_log_id().await.map_err(read_index_error)?;
                    let index = read.map_or(0, |l| l.index);
                    match vote {
                        Some(vote) => {
                            RestoredLead::settled(restored.as_ref(), &raft, &vote, index).await
                        }
                        None => Ok(index),
                    }
                }
            })
        };
        let newest_reads = submitting(
            node.clone(),
            region,
            ForwardOp::ReadIndexAtNewest,
            ForwardOk::timestamped_index,
        );
        let reads_after = {
            let node = node.clone();
            Batcher::start_with(move |ts| {
                let node = node.upgrade();
                async move {
                    let node = node.ok_or(Error::Stopped)?;
                    let index = node.submit(region, ForwardOp::ReadIndexAfter(ts)).await?;
                    index.read_index()
                }
            })
        };
        let reads = submitting(node, region, ForwardOp::ReadIndex, ForwardOk::read_index);
        Region {
            id: region,
            raft,
            shared,
            proposer,
            leader_reads,
            lease,
            restored,
            reads,
            newest_reads,
            reads_after,
            log_bytes,
            closes: Default::default(),
            sleep: Default::default(),
        }
    }
}

/// A batcher whose rounds submit `op` to `region` through `node` (its
/// leader, wherever it is) and take `answer` from the reply.
fn submitting<T: Clone + Send + 'static>(
    node: Weak<Node>,
    region: u64,
    op: ForwardOp,
    answer: fn(ForwardOk) -> Result<T>,
) -> Batcher<T> {
    Batcher::start(move || {
        let (node, op) = (node.upgrade(), op.clone());
        async move {
            let node = node.ok_or(Error::Stopped)?;
            answer(node.submit(region, op).await?)
        }
    })
}
