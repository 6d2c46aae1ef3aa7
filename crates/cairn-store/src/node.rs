//! [`Node`]: one Cairn process's share of the cluster — its engine, its
//! region replicas (the meta region and the data regions), its TSO, and the
//! request paths the etcd services call.
//!
//! Any node accepts any request: writes and linearizable reads are sent to
//! the region's leader (locally, or forwarded over the peer service);
//! retries happen only when nothing was proposed (`NotLeader`, no leader,
//! connection refused), so a write is never applied twice by a retry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use cairn_raft::network::{PeerPool, RegionNetwork};
use cairn_raft::{
    AuthStamp, Command, LogStore, LogWriter, LogWriterStats, MemberInfo, Raft, RegionDesc,
    RegionKind, RegionShared, Reply, StateMachine,
};
use cairn_storage::{Engine, FjallEngine};
use openraft::BasicNode;
use prost::Message;

use crate::config::{cluster_id, member_id, NodeConfig};
use crate::lessor::{LeaseTtl, Lessor};
use crate::proposer::{checked, Proposal, Proposer, TimestampSource};
use crate::read_batch::ReadIndexBatcher;
use crate::read_lease::ReadLease;
use crate::remote::{self, ForwardOk, ForwardOp};
use crate::span_pool::SpanPool;
use crate::tso::{read_index_error, Tso};
use crate::{Access, Error, Result};

/// The meta region's ID.
pub const META_REGION: u64 = 0;
/// The first data region's ID (covers the whole keyspace until splits).
pub const DATA_REGION: u64 = 1;

/// How long a request may wait for a leader before failing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// One region replica on this node.
pub struct Region {
    /// The Raft instance.
    pub raft: Raft,
    /// Applied state shared with the state machine.
    pub shared: Arc<RegionShared>,
    pub(crate) proposer: Proposer,
    /// Read-index rounds this replica runs as leader (local and forwarded reads).
    leader_reads: ReadIndexBatcher,
    /// The leader's read lease, if this region takes one.
    pub(crate) lease: Option<Arc<ReadLease>>,
    /// Read indexes this node's linearizable reads obtain (via the leader).
    reads: ReadIndexBatcher,
    /// Bytes appended to this replica's log (see [`snapshot_by_log_bytes`]).
    log_bytes: Arc<AtomicU64>,
}

/// What `Maintenance.Status` reports.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// Leader of the data region (0 if none).
    pub leader: u64,
    /// Current Raft term of the data region.
    pub raft_term: u64,
    /// Last log index of the data region.
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
    engine: Arc<dyn Engine>,
    log_writer: LogWriter,
    regions: BTreeMap<u64, Region>,
    tso: Arc<Tso>,
    lessor: Arc<Lessor>,
    /// Runs span reads off the async workers, a bounded number at once.
    spans: SpanPool,
    /// Set once by [`Node::shutdown`]; waits that hold the node (lock
    /// waiters, observers) end on it, so a stopped node's engine is freed.
    stopped: tokio::sync::watch::Sender<bool>,
    /// One MoveLeader at a time (see `transfer`).
    pub(crate) transferring: tokio::sync::Mutex<()>,
}

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
        let log_writer =
            LogWriter::start(engine.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        let pool = PeerPool::new(id, cluster_id, config.peer_tls.clone());
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
        let mut rafts = Vec::new();
        for (region, kind) in [
            (META_REGION, RegionKind::Meta),
            (DATA_REGION, RegionKind::Data),
        ] {
            let shared = RegionShared::load(region, kind, engine.clone(), snapshots.clone())?;
            let log = LogStore::new(region, engine.clone(), log_writer.clone());
            let log_bytes = log.appended_bytes();
            let sm = StateMachine::new(shared.clone());
            let net = RegionNetwork::new(region, pool.clone());
            let raft = Raft::new(id, raft_config.clone(), net, log, sm)
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            if config.new_cluster && !raft.is_initialized().await.map_err(|_| Error::Stopped)? {
                // Every initial member initializes with the same membership: safe in openraft.
                if let Err(e) = raft.initialize(members.clone()).await {
                    tracing::debug!(region, "initialize: {e}");
                }
            }
            rafts.push((region, raft, shared, log_bytes));
        }
        let (meta_raft, meta_shared) = (rafts[0].1.clone(), rafts[0].2.clone());
        if let crate::TokenConfig::Simple { ttl } = &config.auth_tokens {
            meta_shared.tokens.lock().set_ttl(*ttl);
        }
        let tso = Arc::new(Tso::new(id, meta_raft.clone(), meta_shared));
        let timestamps: TimestampSource = {
            let (tso, pool, meta) = (tso.clone(), pool.clone(), meta_raft.clone());
            Arc::new(move |count| {
                let (tso, pool, meta) = (tso.clone(), pool.clone(), meta.clone());
                Box::pin(async move { fetch_timestamps(&tso, &pool, &meta, count).await })
            })
        };
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            let regions: BTreeMap<u64, Region> = rafts
                .into_iter()
                .map(|(region, raft, shared, log_bytes)| {
                    let proposer = Proposer::start(raft.clone(), timestamps.clone());
                    // The meta region's elections are triggered by hand
                    // (`colocate_tso`), which a lease cannot survive.
                    let lease = (config.read_lease && region != META_REGION)
                        .then(|| Arc::new(ReadLease::new(id)));
                    let leader_reads = {
                        let (raft, lease) = (raft.clone(), lease.clone());
                        ReadIndexBatcher::start(move || {
                            let (raft, lease) = (raft.clone(), lease.clone());
                            async move {
                                if let Some(lease) = lease {
                                    return lease.read_index(&raft).await;
                                }
                                let (read, _) =
                                    raft.get_read_log_id().await.map_err(read_index_error)?;
                                Ok(read.map_or(0, |l| l.index))
                            }
                        })
                    };
                    let reads = {
                        let weak = weak.clone();
                        ReadIndexBatcher::start(move || {
                            let node = weak.upgrade();
                            async move {
                                let node = node.ok_or(Error::Stopped)?;
                                match node.submit(region, ForwardOp::ReadIndex).await? {
                                    ForwardOk::ReadIndex(i) => Ok(i),
                                    other => {
                                        Err(Error::Internal(format!("unexpected reply {other:?}")))
                                    }
                                }
                            }
                        })
                    };
                    (
                        region,
                        Region {
                            raft,
                            shared,
                            proposer,
                            leader_reads,
                            lease,
                            reads,
                            log_bytes,
                        },
                    )
                })
                .collect();
            let data: &Region = &regions[&DATA_REGION];
            let lessor = Arc::new(Lessor::new(
                id,
                data.raft.clone(),
                data.shared.clone(),
                data.proposer.clone(),
                config.lease_checkpoint_interval,
            ));
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
                stopped: tokio::sync::watch::channel(false).0,
                transferring: tokio::sync::Mutex::new(()),
            }
        });
        tokio::spawn(publish_self(Arc::downgrade(&node)));
        tokio::spawn(expire_leases(Arc::downgrade(&node)));
        tokio::spawn(colocate_tso(Arc::downgrade(&node)));
        tokio::spawn(snapshot_by_log_bytes(Arc::downgrade(&node)));
        if !node.config.corrupt_check_interval.is_zero() {
            tokio::spawn(crate::corruption::check_every(
                Arc::downgrade(&node),
                node.config.corrupt_check_interval,
            ));
        }
        for r in node.regions.values() {
            tokio::spawn(count_leader_changes(r.raft.metrics()));
        }
        Ok(node)
    }

    /// A region replica hosted here.
    pub fn region(&self, id: u64) -> Result<&Region> {
        self.regions
            .get(&id)
            .ok_or_else(|| Error::Internal(format!("region {id} not hosted here")))
    }

    /// The data regions whose ranges overlap `[start, end)` (`end` None: to
    /// the end), with each region's own range (`end` empty: to the end), from
    /// the meta region's directory; the hosted data regions until the
    /// directory is published.
    pub fn regions_overlapping(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<(&Region, Vec<u8>, Vec<u8>)> {
        let dir = self
            .region(META_REGION)
            .map(|m| m.shared.with_applied(|a| a.regions.clone()))
            .unwrap_or_default();
        let mut out: Vec<(&Region, Vec<u8>, Vec<u8>)> = dir
            .values()
            .filter(|r| r.id != META_REGION)
            .filter(|r| {
                (r.end.is_empty() || start < r.end.as_slice())
                    && end.is_none_or(|e| r.start.as_slice() < e)
            })
            .filter_map(|r| {
                self.regions
                    .get(&r.id)
                    .map(|region| (region, r.start.clone(), r.end.clone()))
            })
            .collect();
        if out.is_empty() {
            out = self
                .regions
                .iter()
                .filter(|(id, _)| **id != META_REGION)
                .map(|(_, r)| (r, Vec::new(), Vec::new()))
                .collect();
        }
        out
    }

    /// The data region holding `key`, from the meta region's directory.
    pub fn route(&self, key: &[u8]) -> u64 {
        let Ok(meta) = self.region(META_REGION) else {
            return DATA_REGION;
        };
        meta.shared.with_applied(|a| {
            a.regions
                .values()
                .find(|r| {
                    r.id != META_REGION
                        && key >= r.start.as_slice()
                        && (r.end.is_empty() || key < r.end.as_slice())
                })
                .map_or(DATA_REGION, |r| r.id)
        })
    }

    /// Sends `op` to `region`'s leader, retrying only while nothing was proposed.
    pub(crate) async fn submit(&self, region: u64, op: ForwardOp) -> Result<ForwardOk> {
        // A node shutting down must not go on forwarding for clients still
        // connected to it (and so stay alive, engine and all).
        if self.is_stopped() {
            return Err(Error::Stopped);
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let r = self.region(region)?;
        loop {
            let leader = r.raft.metrics().borrow().current_leader;
            let attempt = async {
                match leader {
                    Some(l) if l == self.id => self.serve_local(region, op.clone()).await,
                    Some(l) => remote::forward(&self.pool, &r.raft, l, region, &op).await,
                    None => Err(Error::NoLeader),
                }
            };
            // A leader that lost its quorum never answers: bound the wait.
            let left = deadline.saturating_duration_since(Instant::now());
            let res = tokio::time::timeout(left, attempt)
                .await
                .unwrap_or(Err(Error::Timeout));
            match res {
                Err(e) if e.is_retryable() => {
                    if Instant::now() >= deadline {
                        return Err(Error::NoLeader);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Serves a (possibly forwarded) op on this node's replica without
    /// forwarding further: `NotLeader` if this replica does not lead.
    pub async fn serve_local(&self, region: u64, op: ForwardOp) -> Result<ForwardOk> {
        match op {
            ForwardOp::Checked { auth, op } => {
                let stamp = AuthStamp {
                    revision: auth,
                    writable: None,
                };
                self.serve_op(region, *op, Some(stamp)).await
            }
            ForwardOp::CheckedLease { auth, writable, op } => {
                let stamp = AuthStamp {
                    revision: auth,
                    writable: Some(writable),
                };
                self.serve_op(region, *op, Some(stamp)).await
            }
            op => self.serve_op(region, op, None).await,
        }
    }

    /// [`Node::serve_local`] of one op; a write with `auth` is proposed as
    /// `Command::Checked` (a client's, checked against that revision).
    async fn serve_op(
        &self,
        region: u64,
        op: ForwardOp,
        auth: Option<AuthStamp>,
    ) -> Result<ForwardOk> {
        let r = self.region(region)?;
        match op {
            ForwardOp::Checked { .. } | ForwardOp::CheckedLease { .. } => {
                Err(Error::Internal("nested checked op".into()))
            }
            ForwardOp::Txn(txn) => Ok(ForwardOk::Reply(
                r.proposer.propose(Proposal::Txn(txn, auth)).await?,
            )),
            ForwardOp::Compact(revision) => Ok(ForwardOk::Reply(
                r.proposer
                    .propose(Proposal::Plain(checked(
                        auth,
                        Command::Compact { revision },
                    )))
                    .await?,
            )),
            ForwardOp::Plain(cmd) => {
                let grant = match cmd {
                    Command::LeaseGrant { id, ttl } if region == DATA_REGION => Some((id, ttl)),
                    _ => None,
                };
                let cmd = checked(auth, cmd);
                let Some((id, ttl)) = grant else {
                    return Ok(ForwardOk::Reply(
                        r.proposer.propose(Proposal::Plain(cmd)).await?,
                    ));
                };
                // Detached: if this request is dropped (client gone, forward
                // timed out), the grant still gets tracked once it applies.
                let (proposer, lessor) = (r.proposer.clone(), self.lessor.clone());
                let reply = tokio::spawn(async move {
                    let reply = proposer.propose(Proposal::Plain(cmd)).await?;
                    if matches!(reply, Reply::Revision(_)) {
                        lessor.granted(id, ttl);
                    }
                    Ok::<_, Error>(reply)
                })
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
                Ok(ForwardOk::Reply(reply))
            }
            ForwardOp::Revoke(id) => Ok(ForwardOk::Reply(
                r.proposer.propose(Proposal::Revoke(id, auth)).await?,
            )),
            ForwardOp::LeaseKeepAlive(id) => {
                let since = Instant::now();
                self.confirm_leading(r).await?;
                Ok(ForwardOk::Ttl(self.lessor.keep_alive(id, since).await?))
            }
            ForwardOp::LeaseTimeToLive(id) => {
                self.confirm_leading(r).await?;
                Ok(ForwardOk::TimeToLive(
                    self.lessor
                        .time_to_live(id)?
                        .map(|t| (t.remaining, t.granted, t.keys)),
                ))
            }
            ForwardOp::ReadIndex => Ok(ForwardOk::ReadIndex(r.leader_reads.read_index().await?)),
            ForwardOp::Campaign { term, leader } => {
                // Only while the leader that asked still leads in that term
                // as far as this member knows: a late request must not
                // force an election on a leader that gave up the hand-over.
                let vote = r
                    .raft
                    .with_raft_state(|st| *st.vote_ref())
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let same = vote.is_committed()
                    && vote.leader_id().get_term() == term
                    && vote.leader_id().voted_for() == Some(leader);
                if same {
                    r.raft
                        .trigger()
                        .elect()
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))?;
                }
                Ok(ForwardOk::Done)
            }
            ForwardOp::HashKv(revision) => {
                let h = self.hash_kv_once_applied(revision).await?;
                Ok(ForwardOk::Hash(h.hash, h.revision, h.compacted))
            }
        }
    }

    /// Confirms that this replica leads `r` now (a read index from a round
    /// that started after the call, or a valid read lease) and has applied
    /// everything committed before the call. `NotLeader` otherwise. The
    /// lessor needs this before a renewal or a TimeToLive answer: a leader
    /// cut off from its quorum must not extend a lease the majority side
    /// may already have expired.
    async fn confirm_leading(&self, r: &Region) -> Result<()> {
        if r.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(Error::NotLeader { leader: None });
        }
        if cfg!(feature = "planted-unconfirmed-renewal") {
            return Ok(());
        }
        let index = match sole_voter_index(&r.raft, self.id) {
            Some(index) => index,
            None => r.leader_reads.read_index().await?,
        };
        r.raft
            .wait(Some(REQUEST_TIMEOUT))
            .applied_index_at_least(Some(index), "lease")
            .await
            .map_err(|_| Error::Timeout)?;
        Ok(())
    }

    /// Runs a transaction (`Put`/`DeleteRange` arrive as one-op txns) for
    /// `access` (checked: see `auth`).
    pub async fn txn(&self, req: &TxnRequest, access: &Access) -> Result<TxnResponse> {
        let region = self.route(&first_key(req));
        if cairn_mvcc::is_read_only(req) {
            return self.read_txn(region, req, access).await;
        }
        match self
            .checked_submit(
                region,
                access,
                ForwardOp::Txn(req.encode_to_vec()),
                !cairn_raft::leases_put(req).is_empty(),
            )
            .await?
        {
            ForwardOk::Reply(Reply::Txn(b)) => {
                TxnResponse::decode(b.as_slice()).map_err(|e| Error::Internal(e.to_string()))
            }
            ForwardOk::Reply(Reply::Rejected(r)) => Err(Error::Rejected(r)),
            other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Compacts history at `revision`; returns the current revision once
    /// this replica has applied the compaction too (etcd's `physical`
    /// compaction returns when the serving member's own store has it, so a
    /// watch opened on it afterwards from below is told it is compacted).
    pub async fn compact(&self, revision: i64, access: &Access) -> Result<i64> {
        match self
            .checked_submit(DATA_REGION, access, ForwardOp::Compact(revision), false)
            .await?
        {
            ForwardOk::Reply(Reply::Compacted { current }) => {
                // The compaction is done; failing to see it here must not
                // turn it into an error (a retry would then be refused as
                // already compacted).
                if let Err(e) = self.linearizable_view(DATA_REGION).await {
                    tracing::warn!("compacted, but not yet applied here: {e}");
                }
                Ok(current)
            }
            ForwardOk::Reply(Reply::Rejected(r)) => Err(Error::Rejected(r)),
            other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Serves a `Range`: linearizable via read-index at the leader, then a
    /// local read once this replica has applied that far; `serializable`
    /// reads come straight from this replica.
    pub async fn range(&self, req: RangeRequest, access: &Access) -> Result<RangeResponse> {
        let region = self.route(&req.key);
        let (snap, revs) = if req.serializable {
            self.region(region)?.shared.read_view()
        } else {
            self.linearizable_view(region).await?
        };
        self.authorize(access).await?;
        // A single key is a bounded read (an index lookup and one version):
        // it runs right here. Handing it to the blocking pool cost more than
        // the read (a profile of 50 clients getting one key: ~10% of the
        // server's CPU in spawn_blocking's hand-off, docs/benchmarks.md).
        // Spans can be any size, so they go to the bounded span pool.
        if req.range_end.is_empty() {
            return cairn_mvcc::range(&*snap, &req, revs).map_err(Error::from);
        }
        self.spans
            .run(move || cairn_mvcc::range(&*snap, &req, revs))
            .await?
            .map_err(Error::from)
    }

    /// Serves a Txn that writes nothing the way etcd does: like a Range
    /// (linearizable through the read index, or from this replica when every
    /// op is a serializable Range), with no Raft proposal and no revision.
    /// Compares and ranges over single keys run here; any span goes to the
    /// span pool, as for [`Node::range`].
    async fn read_txn(
        &self,
        region: u64,
        req: &TxnRequest,
        access: &Access,
    ) -> Result<TxnResponse> {
        let (snap, revs) = if cairn_mvcc::is_serializable(req) {
            self.region(region)?.shared.read_view()
        } else {
            self.linearizable_view(region).await?
        };
        self.authorize(access).await?;
        if single_keys(req) {
            return cairn_mvcc::read_txn(&*snap, req, revs).map_err(Error::from);
        }
        let req = req.clone();
        self.spans
            .run(move || cairn_mvcc::read_txn(&*snap, &req, revs))
            .await?
            .map_err(Error::from)
    }

    /// Raises (`activate`) or clears an alarm through the data region; the
    /// alarms it changed (none if it already was so).
    pub async fn alarm(&self, activate: bool, member: u64, alarm: i32) -> Result<Vec<(u64, i32)>> {
        let cmd = Command::Alarm {
            activate,
            member,
            alarm,
        };
        match self.submit(DATA_REGION, ForwardOp::Plain(cmd)).await? {
            ForwardOk::Reply(Reply::Alarms(changed)) => Ok(changed),
            other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// The alarms raised, as this replica has applied them.
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.region(DATA_REGION)
            .map(|r| {
                r.shared
                    .with_applied(|a| a.alarms.iter().copied().collect())
            })
            .unwrap_or_default()
    }

    /// Bytes of this node's state-machine data on disk (what the storage
    /// quota measures; see `Engine::size_in_use`).
    pub fn data_size(&self) -> u64 {
        self.engine.size_in_use()
    }

    /// This replica's hash of its key history up to `revision` (0: its
    /// current revision), as etcd's `HashKV` reads its local store.
    pub async fn hash_kv(&self, revision: i64) -> Result<cairn_mvcc::KvHash> {
        let (snap, revs) = self.region(DATA_REGION)?.shared.read_view();
        self.spans
            .run(move || cairn_mvcc::hash_kv(&*snap, revision, revs))
            .await?
            .map_err(Error::from)
    }

    /// Rewrites this node's store compactly (etcd's defragment); reads and
    /// writes go on meanwhile. Returns when done.
    pub async fn defragment(&self) -> Result<()> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.defragment())
            .await
            .map_err(|e| Error::Internal(format!("defragment: {e}")))?
            .map_err(|e| Error::Internal(format!("defragment: {e}")))
    }

    /// Grants a lease (`id` 0: the node picks one); returns (id, ttl).
    pub async fn lease_grant(&self, id: i64, ttl: i64, access: &Access) -> Result<(i64, i64)> {
        let chosen = id != 0;
        for attempt in 0..5u64 {
            let id = if chosen {
                id
            } else {
                fresh_lease_id(self.id, attempt)
            };
            let cmd = Command::LeaseGrant { id, ttl };
            match self
                .checked_submit(DATA_REGION, access, ForwardOp::Plain(cmd), false)
                .await?
            {
                ForwardOk::Reply(Reply::Revision(_)) => return Ok((id, ttl)),
                ForwardOk::Reply(Reply::Rejected(cairn_mvcc::Rejection::LeaseExists))
                    if !chosen =>
                {
                    continue
                }
                ForwardOk::Reply(Reply::Rejected(r)) => return Err(Error::Rejected(r)),
                other => return Err(Error::Internal(format!("unexpected reply {other:?}"))),
            }
        }
        Err(Error::Rejected(cairn_mvcc::Rejection::LeaseExists))
    }

    /// Revokes a lease and deletes its keys; returns the revision after.
    pub async fn lease_revoke(&self, id: i64, access: &Access) -> Result<i64> {
        match self
            .checked_submit(DATA_REGION, access, ForwardOp::Revoke(id), true)
            .await?
        {
            ForwardOk::Reply(Reply::Revision(r)) => Ok(r),
            ForwardOk::Reply(Reply::Rejected(r)) => Err(Error::Rejected(r)),
            other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Refreshes a lease at the region leader; its TTL, 0 if unknown.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        match self
            .submit(DATA_REGION, ForwardOp::LeaseKeepAlive(id))
            .await?
        {
            ForwardOk::Ttl(t) => Ok(t),
            other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// A lease's remaining TTL, granted TTL and keys (None: no such lease).
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<LeaseTtl>> {
        match self
            .submit(DATA_REGION, ForwardOp::LeaseTimeToLive(id))
            .await?
        {
            ForwardOk::TimeToLive(t) => Ok(t.map(|(remaining, granted, keys)| LeaseTtl {
                remaining,
                granted,
                keys,
            })),
            other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Every granted lease ID (linearizable).
    pub async fn lease_list(&self) -> Result<Vec<i64>> {
        let (snap, _) = self.linearizable_view(DATA_REGION).await?;
        Ok(cairn_mvcc::lease::list(&*snap)?
            .into_iter()
            .map(|l| l.id)
            .collect())
    }

    /// A read view of `region` that reflects every write acknowledged before
    /// the call: read index from the leader, then wait until this replica
    /// has applied that far.
    pub(crate) async fn linearizable_view(
        &self,
        region: u64,
    ) -> Result<(Arc<dyn cairn_storage::Snapshot>, cairn_mvcc::Revisions)> {
        let r = self.region(region)?;
        #[cfg(feature = "planted-stale-read")]
        if region != META_REGION {
            return Ok(r.shared.read_view());
        }
        let index = self.read_index(r).await?;
        r.raft
            .wait(Some(REQUEST_TIMEOUT))
            .applied_index_at_least(Some(index), "read-index")
            .await
            .map_err(|_| Error::Timeout)?;
        Ok(r.shared.read_view())
    }

    /// A read index for `r`, as good as one from a round that started after
    /// this call. The leader of a one-voter region needs none (see
    /// [`sole_voter_index`]); a leader holding its read lease asks only its
    /// Raft core ([`ReadLease`]); otherwise the leader joins its own batch
    /// directly — `reads` (which forwards through [`Node::submit`]) would
    /// add a second batching task hop and `submit`'s timer and retry loop
    /// per round (measured: 3-node, one client reading from the leader,
    /// docs/benchmarks.md). A leader that lost leadership meanwhile answers
    /// `NotLeader` and the read takes the forwarding path.
    async fn read_index(&self, r: &Region) -> Result<u64> {
        if let Some(index) = sole_voter_index(&r.raft, self.id) {
            return Ok(index);
        }
        if r.raft.metrics().borrow().current_leader == Some(self.id) {
            // Straight to the core while the lease holds (batching these
            // measured 5-9% fewer reads/s at 200 clients: the batch waits).
            if let Some(lease) = &r.lease {
                if let Some(index) = lease.leased_index(&r.raft).await? {
                    return Ok(index);
                }
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, r.leader_reads.read_index()).await {
                Ok(Err(e)) if e.is_retryable() => {}
                Ok(res) => return res,
                Err(_) => return Err(Error::Timeout),
            }
        }
        r.reads.read_index().await
    }

    /// Allocates timestamps if this node leads the meta region.
    pub async fn tso_local(&self, count: u32) -> Result<i64> {
        self.tso.allocate(count).await
    }

    /// The data region's current Raft term (for response headers).
    pub fn raft_term(&self) -> u64 {
        self.region(DATA_REGION)
            .map_or(0, |r| r.raft.metrics().borrow().current_term)
    }

    /// The data region's current revision on this replica.
    pub fn revision(&self) -> i64 {
        self.region(DATA_REGION)
            .map_or(0, |r| r.shared.revisions().current)
    }

    /// What `Maintenance.Status` reports.
    pub fn status(&self) -> NodeStatus {
        let Ok(r) = self.region(DATA_REGION) else {
            return NodeStatus::default();
        };
        let m = r.raft.metrics().borrow().clone();
        NodeStatus {
            leader: m.current_leader.unwrap_or(0),
            raft_term: m.current_term,
            raft_index: m.last_log_index.unwrap_or(0),
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            db_size: self.engine.size_on_disk() as i64,
            db_size_in_use: self.engine.size_in_use() as i64,
        }
    }

    /// Every region replica this node hosts, by region id: its leader (0 if
    /// none), term, last log index and applied index.
    pub fn region_statuses(&self) -> Vec<(u64, NodeStatus)> {
        let db_size = self.engine.size_on_disk() as i64;
        let db_size_in_use = self.engine.size_in_use() as i64;
        self.regions
            .iter()
            .map(|(id, r)| {
                let m = r.raft.metrics().borrow().clone();
                let status = NodeStatus {
                    leader: m.current_leader.unwrap_or(0),
                    raft_term: m.current_term,
                    raft_index: m.last_log_index.unwrap_or(0),
                    raft_applied_index: m.last_applied.map_or(0, |l| l.index),
                    db_size,
                    db_size_in_use,
                };
                (*id, status)
            })
            .collect()
    }

    /// Known members: published attributes, or the Raft membership for
    /// members that have not published yet.
    pub fn members(&self) -> Vec<MemberInfo> {
        let Ok(meta) = self.region(META_REGION) else {
            return Vec::new();
        };
        let published = meta.shared.applied().members;
        let m = meta.raft.metrics().borrow().clone();
        let mut out: Vec<MemberInfo> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                published.get(id).cloned().unwrap_or_else(|| MemberInfo {
                    id: *id,
                    name: String::new(),
                    peer_urls: vec![node.addr.clone()],
                    client_urls: Vec::new(),
                })
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }

    /// The node's group-commit counters.
    pub fn log_stats(&self) -> Arc<LogWriterStats> {
        self.log_writer.stats()
    }

    /// True once the node is shutting down.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Resolves once the node is shutting down.
    pub async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops every region's Raft.
    pub async fn shutdown(&self) {
        self.stopped.send_replace(true);
        for r in self.regions.values() {
            let _ = r.raft.shutdown().await;
        }
    }
}

/// The key a transaction is routed by (its first named key).
fn first_key(req: &TxnRequest) -> Vec<u8> {
    use cairn_api::etcdserverpb::request_op::Request;
    if let Some(c) = req.compare.first() {
        return c.key.clone();
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestPut(p)) => return p.key.clone(),
            Some(Request::RequestRange(r)) => return r.key.clone(),
            Some(Request::RequestDeleteRange(d)) => return d.key.clone(),
            Some(Request::RequestTxn(t)) => return first_key(t),
            None => {}
        }
    }
    Vec::new()
}

/// Counts each new leader this replica sees (`etcd_server_leader_changes_seen_total`)
/// until its Raft stops.
async fn count_leader_changes(
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

/// When this node is the only voter of `raft`'s region and leads it, and
/// has applied an entry of its own term: the applied index. Nothing more
/// is needed for a linearizable read then. No other node can lead (there
/// is no one to vote), every write this leader acknowledged was applied
/// here before its answer was sent, and the entry of its own term was
/// applied after everything committed before it (say, before a restart).
/// The read view, taken after this, includes all of that.
fn sole_voter_index(raft: &Raft, me: u64) -> Option<u64> {
    let m = raft.metrics();
    let m = m.borrow();
    let mut voters = m.membership_config.membership().voter_ids();
    let sole = voters.next() == Some(me) && voters.next().is_none();
    let applied = m.last_applied?;
    (sole && m.current_leader == Some(me) && applied.leader_id.term == m.current_term)
        .then_some(applied.index)
}

/// True when every compare and range in `req` (nested txns included) names
/// one key, so reading it is bounded.
fn single_keys(req: &TxnRequest) -> bool {
    use cairn_api::etcdserverpb::request_op::Request;
    req.compare.iter().all(|c| c.range_end.is_empty())
        && req
            .success
            .iter()
            .chain(&req.failure)
            .all(|op| match &op.request {
                Some(Request::RequestRange(r)) => r.range_end.is_empty(),
                Some(Request::RequestTxn(t)) => single_keys(t),
                _ => true,
            })
}

/// Gets timestamps from the meta leader: locally if that is us.
async fn fetch_timestamps(tso: &Tso, pool: &Arc<PeerPool>, meta: &Raft, count: u32) -> Result<i64> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let leader = meta.metrics().borrow().current_leader;
        let res = match leader {
            Some(l) if l == pool.me() => tso.allocate(count).await,
            Some(l) => remote::tso(pool, meta, l, count).await,
            None => Err(Error::NoLeader),
        };
        match res {
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) if e.is_retryable() => return Err(Error::NoLeader),
            other => return other,
        }
    }
}

/// Publishes this member's attributes and the initial region directory to
/// the meta region (idempotent; retried until done).
async fn publish_self(node: std::sync::Weak<Node>) {
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

/// A lease ID no other node picks at the same moment: time and node mixed,
/// positive, never 0.
fn fresh_lease_id(node: u64, attempt: u64) -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (node.rotate_left(17) ^ nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ attempt)
        & (i64::MAX as u64);
    mixed.max(1) as i64
}

/// The lease leader's expiry loop: five [`Lessor::tick`]s a second.
async fn expire_leases(node: std::sync::Weak<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let Some(lessor) = node.upgrade().map(|n| n.lessor.clone()) else {
            return;
        };
        lessor.tick().await;
    }
}

/// Keeps the TSO next to the writes: a node that has led the data region
/// for a while but not the meta region asks for a meta-region election (it
/// usually wins: its meta log is as current as anyone's). Otherwise every
/// commit group pays a network round trip to a TSO on another node before
/// it can be proposed. Rate-limited; a lost election costs the meta region
/// one brief election, and TSO calls retry through it.
async fn colocate_tso(node: std::sync::Weak<Node>) {
    const EVERY: Duration = Duration::from_secs(2);
    let mut led_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let (Ok(data), Ok(meta)) = (n.region(DATA_REGION), n.region(META_REGION)) else {
            return;
        };
        let data_leader = data.raft.metrics().borrow().current_leader;
        let meta_leader = meta.raft.metrics().borrow().current_leader;
        if data_leader != Some(n.id) {
            led_since = None;
            continue;
        }
        let since = *led_since.get_or_insert_with(Instant::now);
        if meta_leader.is_some_and(|m| m != n.id) && since.elapsed() >= EVERY {
            tracing::debug!(id = n.id, "data leader asks to lead the meta region (TSO)");
            let _ = meta.raft.trigger().elect().await;
            led_since = Some(Instant::now());
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
async fn snapshot_by_log_bytes(node: std::sync::Weak<Node>) {
    const EVERY: Duration = Duration::from_millis(500);
    // Per region: log bytes and applied index when a snapshot was last asked for.
    let mut asked: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new();
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let limit = n.config.snapshot_log_bytes;
        for (id, r) in &n.regions {
            let now = r.log_bytes.load(Ordering::Relaxed);
            let (bytes_then, applied_then) = asked.entry(*id).or_insert((0, None));
            if limit == 0 || now.saturating_sub(*bytes_then) < limit {
                continue;
            }
            tracing::debug!(
                region = id,
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
