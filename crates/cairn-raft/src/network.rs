//! openraft RPCs over Cairn's node-to-node gRPC `Peer` service.
//!
//! [`PeerPool`] keeps one lazily connected tonic channel (one HTTP/2
//! connection) per remote node; every region's [`RegionNetwork`] shares it.
//! A message is `RaftRequest { region_id, kind, payload }` with the openraft
//! request postcard-encoded; the reply carries the encoded
//! `Result<response, RaftError>`. Once a few messages to a peer are out,
//! its appends with entries and votes travel in batches of every region's
//! messages (`crate::peer_batch`).
//!
//! [`Faults`] is a switchboard on the real transport: tests cut links
//! (partitions) or drop a fraction of messages; production never sets it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::peerpb::peer_client::PeerClient;
use cairn_api::peerpb::{RaftReply, RaftRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::codec::{decode, encode};
use crate::peer_batch::{Outbox, Sent};
use crate::{NodeId, TypeConfig};

/// RPC kinds inside `RaftRequest.kind`.
pub mod kind {
    /// AppendEntries.
    pub const APPEND: u32 = 1;
    /// Vote.
    pub const VOTE: u32 = 2;
    /// InstallSnapshot (one chunk).
    pub const SNAPSHOT: u32 = 3;
}

/// Test-controlled faults on outgoing peer traffic.
#[derive(Debug, Default)]
pub struct Faults {
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Percentage (0–100) of messages to drop.
    drop_percent: AtomicU32,
    counter: AtomicU32,
    /// Each message waits a pseudo-random 0..=this many ms before it goes.
    delay_max_ms: AtomicU32,
    /// Drop every data region's append with no entries (heartbeats,
    /// commit notices, read-index rounds).
    drop_empty_appends: AtomicBool,
    /// Drop every data region's append that carries entries.
    drop_entry_appends: AtomicBool,
}

impl Faults {
    /// Cuts traffic between `a` and `b`, both directions.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        let mut c = self.cut.lock();
        c.insert((a, b));
        c.insert((b, a));
    }
    /// Isolates `node` from every node in `others`.
    pub fn isolate(&self, node: NodeId, others: &[NodeId]) {
        for o in others {
            self.partition(node, *o);
        }
    }
    /// Restores the links between `node` and every node in `others` (the
    /// other faults stay).
    pub fn rejoin(&self, node: NodeId, others: &[NodeId]) {
        let mut c = self.cut.lock();
        for o in others {
            c.remove(&(node, *o));
            c.remove(&(*o, node));
        }
    }
    /// Restores every link, stops dropping and delaying.
    pub fn heal(&self) {
        self.cut.lock().clear();
        self.drop_percent.store(0, Ordering::Relaxed);
        self.delay_max_ms.store(0, Ordering::Relaxed);
        self.drop_empty_appends.store(false, Ordering::Relaxed);
        self.drop_entry_appends.store(false, Ordering::Relaxed);
    }
    /// Drops (or stops dropping) every append with no entries in a data
    /// region. The meta region's go on: its leader keeps serving
    /// timestamps, so a test sees what the fault does to data regions.
    pub fn drop_empty_appends(&self, on: bool) {
        self.drop_empty_appends.store(on, Ordering::Relaxed);
    }
    /// Drops (or stops dropping) every append that carries entries in a
    /// data region (the meta region's go on, as above).
    pub fn drop_entry_appends(&self, on: bool) {
        self.drop_entry_appends.store(on, Ordering::Relaxed);
    }
    /// True when an append of `region` with (`entries`) or without entries
    /// must not go.
    fn drops_append(&self, region: u64, entries: bool) -> bool {
        if region == crate::META_REGION {
            false
        } else if entries {
            self.drop_entry_appends.load(Ordering::Relaxed)
        } else {
            self.drop_empty_appends.load(Ordering::Relaxed)
        }
    }
    /// Delays every message by a pseudo-random 0..=`max_ms` ms (0: none).
    pub fn delay(&self, max_ms: u32) {
        self.delay_max_ms.store(max_ms, Ordering::Relaxed);
    }
    /// The gate every outgoing message passes: false if it must not be
    /// delivered; otherwise true, after any injected delay.
    pub async fn pass(&self, from: NodeId, to: NodeId) -> bool {
        if self.blocks(from, to) {
            return false;
        }
        let max = self.delay_max_ms.load(Ordering::Relaxed);
        if max > 0 {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            // A multiplicative hash spreads consecutive messages over 0..=max.
            let ms =
                (u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % (u64::from(max) + 1);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        true
    }
    /// Drops `percent`% of messages (deterministically spread).
    pub fn drop_percent(&self, percent: u32) {
        self.drop_percent.store(percent.min(100), Ordering::Relaxed);
    }
    /// True when a message from `from` to `to` must not be delivered.
    pub fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        if self.cut.lock().contains(&(from, to)) {
            return true;
        }
        let p = self.drop_percent.load(Ordering::Relaxed);
        p > 0 && (self.counter.fetch_add(1, Ordering::Relaxed) % 100) < p
    }
}

/// Peer metadata: the sender's cluster ID (hex).
pub const CLUSTER_HEADER: &str = "cairn-cluster";
/// Peer metadata: the sender's member ID (hex).
pub const FROM_HEADER: &str = "cairn-from";

/// The (cluster, member) a peer request says it comes from.
pub fn sender<T>(req: &tonic::Request<T>) -> Option<(u64, NodeId)> {
    let get = |h: &str| {
        req.metadata()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u64::from_str_radix(v, 16).ok())
    };
    Some((get(CLUSTER_HEADER)?, get(FROM_HEADER)?))
}

/// One channel per remote node, shared by all regions.
pub struct PeerPool {
    me: NodeId,
    /// The cluster every message is stamped with (see [`PeerPool::request`]).
    cluster_id: u64,
    /// This member's TLS client configuration (`--peer-cert-file` etc.),
    /// used for `https://` peer URLs.
    tls: Option<Arc<cairn_tls::ClientConfig>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Raft messages to each peer, batched (`crate::peer_batch`).
    outboxes: Mutex<HashMap<String, Arc<Outbox>>>,
    /// Fault switchboard (tests).
    pub faults: Arc<Faults>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerPool {
    /// A pool for node `me` of cluster `cluster_id`, dialing `https://`
    /// peers under `tls`.
    pub fn new(
        me: NodeId,
        cluster_id: u64,
        tls: Option<Arc<cairn_tls::ClientConfig>>,
    ) -> Arc<Self> {
        Self::with_faults(me, cluster_id, tls, Arc::default())
    }

    /// [`PeerPool::new`] whose traffic passes `faults` (a test's, kept
    /// across the member's restarts).
    pub fn with_faults(
        me: NodeId,
        cluster_id: u64,
        tls: Option<Arc<cairn_tls::ClientConfig>>,
        faults: Arc<Faults>,
    ) -> Arc<Self> {
        Arc::new(Self {
            me,
            cluster_id,
            tls,
            channels: Mutex::new(HashMap::new()),
            outboxes: Mutex::new(HashMap::new()),
            faults,
        })
    }

    /// This node's ID.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// `msg` as a peer request: stamped with this member's cluster and ID
    /// ([`CLUSTER_HEADER`], [`FROM_HEADER`]), which the receiving member
    /// checks before it acts on anything.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        stamped(msg, self.cluster_id, self.me)
    }

    /// The outbox of Raft messages to the node at `addr`.
    fn outbox(&self, addr: &str) -> Result<Arc<Outbox>, String> {
        if let Some(o) = self.outboxes.lock().get(addr) {
            return Ok(o.clone());
        }
        let client = self.client(addr)?;
        let (cluster, me) = (self.cluster_id, self.me);
        let mut outboxes = self.outboxes.lock();
        let o = outboxes.entry(addr.to_string()).or_insert_with(|| {
            Arc::new(Outbox::new(
                client,
                Arc::new(move |b| stamped(b, cluster, me)),
            ))
        });
        Ok(o.clone())
    }

    /// Sends `msg`, whose caller waits until `deadline`, to the node at
    /// `addr`: alone while few messages to it are out alone, else in a
    /// batch (`crate::peer_batch`) if `batch` allows (not a snapshot chunk
    /// nor a heartbeat), it is small and the peer takes batches. None when the peer
    /// turned out not to take batches and did not see it: send it again.
    async fn send(
        &self,
        addr: &str,
        msg: RaftRequest,
        deadline: std::time::Instant,
        batch: bool,
    ) -> Option<Result<RaftReply, Status>> {
        // Held until the answer, when the message goes alone.
        let mut alone = None;
        if batch {
            let outbox = match self.outbox(addr) {
                Ok(o) => o,
                Err(e) => return Some(Err(Status::unavailable(e))),
            };
            alone = outbox.alone();
            if alone.is_none() && outbox.takes(&msg) {
                return match outbox.send(msg, deadline).await {
                    Some(Sent::Answer(a)) => Some(a),
                    Some(Sent::NotBatched) => None,
                    None => {
                        // Its task is gone: a new outbox next time.
                        self.outboxes.lock().retain(|_, o| o.is_open());
                        None
                    }
                };
            }
        }
        let mut client = match self.client(addr) {
            Ok(c) => c,
            Err(e) => return Some(Err(Status::unavailable(e))),
        };
        let answer = client.raft(self.request(msg)).await;
        drop(alone);
        Some(answer.map(|r| r.into_inner()))
    }

    /// A client for the node at `addr` (`host:port` or URL).
    pub fn client(&self, addr: &str) -> Result<PeerClient<Channel>, String> {
        let mut ch = self.channels.lock();
        if let Some(c) = ch.get(addr) {
            return Ok(PeerClient::new(c.clone()).max_decoding_message_size(usize::MAX));
        }
        // An https:// peer is dialed by our TLS connector over an http://
        // endpoint (the connector, not tonic, does the TLS).
        let (url, tls) = match addr.strip_prefix("https://") {
            Some(rest) => (format!("http://{rest}"), true),
            None if addr.starts_with("http://") => (addr.to_string(), false),
            None => (format!("http://{addr}"), false),
        };
        const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true);
        // With TLS the connector times the connection out itself: tonic
        // would report the endpoint's timeout as `Unknown`, not as a
        // connection never made (see cairn_tls::Connector).
        let channel = if tls {
            let config = self.tls.clone().ok_or_else(|| {
                format!("peer URL {addr} is https:// but this member has no --peer-cert-file")
            })?;
            endpoint.connect_with_connector_lazy(
                cairn_tls::Connector::new(config).connect_timeout(CONNECT_TIMEOUT),
            )
        } else {
            endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy()
        };
        ch.insert(addr.to_string(), channel.clone());
        Ok(PeerClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    async fn call<Req, Resp, E>(
        &self,
        target: NodeId,
        addr: &str,
        route: Route,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if !self.faults.pass(self.me, target).await {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(
                "link cut by fault injection".into(),
            ))));
        }
        let peer = format!("{target:x}");
        let started = std::time::Instant::now();
        let deadline = started + timeout;
        let (reply, sent) = loop {
            let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            let sent = payload.len() as u64;
            let msg = RaftRequest {
                region_id: route.region,
                kind: route.kind,
                payload,
            };
            let sending = self.send(addr, msg, deadline, route.batch);
            match tokio::time::timeout_at(deadline.into(), sending).await {
                Err(_) => {
                    return Err(RPCError::Unreachable(Unreachable::new(&Msg(
                        "peer rpc timed out".into(),
                    ))))
                }
                // Not sent (the peer takes no batches): again, alone.
                Ok(None) => continue,
                Ok(Some(Err(status))) => {
                    return Err(RPCError::Unreachable(Unreachable::new(&status)))
                }
                Ok(Some(Ok(r))) => break (r, sent),
            }
        };
        crate::metrics::PEER_RTT
            .with_label_values(&[peer.as_str()])
            .observe(started.elapsed().as_secs_f64());
        crate::metrics::PEER_SENT_BYTES
            .with_label_values(&[peer.as_str()])
            .inc_by(sent);
        crate::metrics::PEER_RECEIVED_BYTES
            .with_label_values(&[peer.as_str()])
            .inc_by(reply.payload.len() as u64);
        let res: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }
}

/// `msg` stamped with the sender's cluster and member ID (see
/// [`PeerPool::request`]).
fn stamped<T>(msg: T, cluster_id: u64, me: NodeId) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let md = r.metadata_mut();
    md.insert(
        CLUSTER_HEADER,
        format!("{cluster_id:x}").parse().expect("hex is ASCII"),
    );
    md.insert(
        FROM_HEADER,
        format!("{me:x}").parse().expect("hex is ASCII"),
    );
    r
}

/// Where a Raft message goes and how: its region, its kind, and whether
/// it may travel in a batch (`crate::peer_batch`).
struct Route {
    region: u64,
    kind: u32,
    batch: bool,
}

/// The openraft network factory of one region.
#[derive(Clone)]
pub struct RegionNetwork {
    region: u64,
    pool: Arc<PeerPool>,
}

impl RegionNetwork {
    /// The network of `region` over `pool`.
    pub fn new(region: u64, pool: Arc<PeerPool>) -> Self {
        Self { region, pool }
    }
}

/// A connection from one region replica to its peer on `target`.
pub struct RegionPeer {
    region: u64,
    target: NodeId,
    addr: String,
    pool: Arc<PeerPool>,
}

impl RaftNetworkFactory<TypeConfig> for RegionNetwork {
    type Network = RegionPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        RegionPeer {
            region: self.region,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for RegionPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if self
            .pool
            .faults
            .drops_append(self.region, !rpc.entries.is_empty())
        {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(
                "append dropped by fault injection".into(),
            ))));
        }
        self.pool
            .call(
                self.target,
                &self.addr,
                Route {
                    region: self.region,
                    kind: kind::APPEND,
                    // An empty append (a heartbeat, a leader's read-index
                    // round) goes alone: it is latency, not bytes, and a
                    // batch's extra task hops cost reads (docs/benchmarks.md).
                    batch: !rpc.entries.is_empty(),
                },
                &rpc,
                option.hard_ttl(),
            )
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.pool
            .call(
                self.target,
                &self.addr,
                Route {
                    region: self.region,
                    kind: kind::SNAPSHOT,
                    batch: false,
                },
                &rpc,
                option.hard_ttl(),
            )
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.pool
            .call(
                self.target,
                &self.addr,
                Route {
                    region: self.region,
                    kind: kind::VOTE,
                    batch: true,
                },
                &rpc,
                option.hard_ttl(),
            )
            .await
    }

    /// How long openraft waits before it tries a peer again after an
    /// `Unreachable` (a cut link, a refused call, an error status, a call
    /// past this pool's deadline; openraft's own shorter append timeout is
    /// a `Timeout`, retried at once): 100 ms, then doubling to 500 ms
    /// (openraft's default is 500 ms every time). A follower that
    /// campaigns after 0.9 s of silence (`raft_config`) must not lose more
    /// than half of that to one dropped append; a member that stays away is
    /// still tried twice a second. A snapshot send gives up after five
    /// failures in a row and starts again: 1.2 s of retries here, 2 s at
    /// openraft's default.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(
            [100, 200, 400]
                .into_iter()
                .chain(std::iter::repeat(500))
                .map(Duration::from_millis),
        )
    }
}

/// Serves one incoming `RaftRequest` on `raft`; returns the encoded reply.
/// A snapshot's first chunk begins with the state it installs:
/// `refuse_snapshot` may name a reason not to take it (`Error::Refused`),
/// before any of it reaches Raft.
pub async fn serve_raft_request(
    raft: &crate::Raft,
    kind: u32,
    payload: &[u8],
    refuse_snapshot: impl FnOnce(&crate::state_machine::Applied) -> Option<String>,
) -> crate::Result<Vec<u8>> {
    match kind {
        kind::APPEND => {
            let req: AppendEntriesRequest<TypeConfig> = decode(payload)?;
            encode(&raft.append_entries(req).await)
        }
        kind::VOTE => {
            let req: VoteRequest<NodeId> = decode(payload)?;
            encode(&raft.vote(req).await)
        }
        kind::SNAPSHOT => {
            let req: InstallSnapshotRequest<TypeConfig> = decode(payload)?;
            if req.offset == 0 {
                let header = crate::snapshot_file::header_of(&req.data);
                if let Some(why) = header.and_then(|a| refuse_snapshot(&a)) {
                    return Err(crate::Error::Refused(why));
                }
            }
            encode(&raft.install_snapshot(req).await)
        }
        other => Err(crate::Error::Codec(format!(
            "unknown raft rpc kind {other}"
        ))),
    }
}
