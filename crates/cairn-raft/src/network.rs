//! openraft RPCs over Cairn's node-to-node gRPC `Peer` service.
//!
//! [`PeerPool`] keeps one lazily connected tonic channel (one HTTP/2
//! connection) per remote node; every region's [`RegionNetwork`] shares it.
//! A message is `RaftRequest { region_id, kind, payload }` with the openraft
//! request postcard-encoded; the reply carries the encoded
//! `Result<response, RaftError>`.
//!
//! [`Faults`] is a switchboard on the real transport: tests cut links
//! (partitions) or drop a fraction of messages; production never sets it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::peerpb::peer_client::PeerClient;
use cairn_api::peerpb::RaftRequest;
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

use crate::codec::{decode, encode};
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
#[derive(Default)]
pub struct Faults {
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Percentage (0–100) of messages to drop.
    drop_percent: AtomicU32,
    counter: AtomicU32,
    /// Each message waits a pseudo-random 0..=this many ms before it goes.
    delay_max_ms: AtomicU32,
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
    /// Restores every link, stops dropping and delaying.
    pub fn heal(&self) {
        self.cut.lock().clear();
        self.drop_percent.store(0, Ordering::Relaxed);
        self.delay_max_ms.store(0, Ordering::Relaxed);
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
        Arc::new(Self {
            me,
            cluster_id,
            tls,
            channels: Mutex::new(HashMap::new()),
            faults: Arc::new(Faults::default()),
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
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        md.insert(
            CLUSTER_HEADER,
            format!("{:x}", self.cluster_id)
                .parse()
                .expect("hex is ASCII"),
        );
        md.insert(
            FROM_HEADER,
            format!("{:x}", self.me).parse().expect("hex is ASCII"),
        );
        r
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
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let channel = if tls {
            let config = self.tls.clone().ok_or_else(|| {
                format!("peer URL {addr} is https:// but this member has no --peer-cert-file")
            })?;
            endpoint.connect_with_connector_lazy(cairn_tls::Connector::new(config))
        } else {
            endpoint.connect_lazy()
        };
        ch.insert(addr.to_string(), channel.clone());
        Ok(PeerClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    async fn call<Req, Resp, E>(
        &self,
        target: NodeId,
        addr: &str,
        region: u64,
        kind: u32,
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
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let peer = format!("{target:x}");
        let sent = payload.len() as u64;
        let started = std::time::Instant::now();
        let mut client = self
            .client(addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))?;
        let fut = client.raft(self.request(RaftRequest {
            region_id: region,
            kind,
            payload,
        }));
        let reply = match tokio::time::timeout(timeout, fut).await {
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(
                    "peer rpc timed out".into(),
                ))))
            }
            Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
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
        self.pool
            .call(
                self.target,
                &self.addr,
                self.region,
                kind::APPEND,
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
                self.region,
                kind::SNAPSHOT,
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
                self.region,
                kind::VOTE,
                &rpc,
                option.hard_ttl(),
            )
            .await
    }
}

/// Serves one incoming `RaftRequest` on `raft`; returns the encoded reply.
pub async fn serve_raft_request(
    raft: &crate::Raft,
    kind: u32,
    payload: &[u8],
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
            encode(&raft.install_snapshot(req).await)
        }
        other => Err(crate::Error::Codec(format!(
            "unknown raft rpc kind {other}"
        ))),
    }
}
