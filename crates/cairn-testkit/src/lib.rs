//! # cairn-testkit: clusters for tests
//!
//! - [`InProcessCluster`]: N real nodes in this process, each with its own
//!   data dir, real gRPC peer and client servers on ports bound at 0, and the
//!   real transport's fault switchboard for partitions and message drops.
//!   Nodes can be stopped (Raft shut down, servers closed, engine released)
//!   and restarted on the same data dir.
//! - [`ProcessCluster`]: N `cairn serve` processes on free ports, for
//!   SIGKILL/SIGSTOP tests; the caller passes the binary path.
//! - [`kv`], [`watch`]: small helpers for etcd KV and Watch calls.
//! - [`secured`]: with `CAIRN_TEST_SECURED=1`, every cluster above runs
//!   with TLS on both ports, client certificates and auth on, and every
//!   client this crate makes dials it as `root`.
//! - [`many_regions`]: with `CAIRN_TEST_REGIONS=1`, every in-process
//!   cluster above starts cut into 63 regions that go on splitting past
//!   4 KiB as tests write.
//! - [`torture`]: robustness runs — recorded workload, nemesis, checkers.

pub mod kv;
pub mod many_regions;
mod process;
pub mod secured;
pub mod torture;
pub mod watch;

pub use process::ProcessCluster;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_server::{Context, Limits, Listener};
use cairn_store::{member_id, InitialMember, Node, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

struct Running {
    node: Arc<Node>,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// One member of an in-process cluster.
pub struct TestNode {
    /// Member name.
    pub name: String,
    /// Member ID.
    pub id: u64,
    /// Client address (`127.0.0.1:port`).
    pub client_addr: String,
    /// Peer address (`127.0.0.1:port`).
    pub peer_addr: String,
    dir: PathBuf,
    running: Option<Running>,
    /// The faults its peer traffic passes, kept across restarts.
    pub faults: Arc<cairn_raft::network::Faults>,
}

/// N nodes in this process.
pub struct InProcessCluster {
    /// The members, in start order.
    pub nodes: Vec<TestNode>,
    initial: Vec<InitialMember>,
    snapshot_logs: u64,
    snapshot_log_bytes: u64,
    limits: Limits,
    region_split: cairn_store::SplitPolicy,
    /// How often members run the corruption check themselves (zero:
    /// never; tests call `Node::check_corruption`).
    corrupt_check_interval: Duration,
    /// Whether members balance region leaders (on, as `cairn serve`'s
    /// default; tests of what elections alone do switch it off).
    balance_leaders: bool,
    /// The auth tokens members issue (simple, unless a test asks for JWTs).
    auth_tokens: cairn_store::TokenConfig,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "testkit";

async fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")
}

/// Binds a stopped node's port again. Retried for a while: the port came
/// from the ephemeral range, and once the node let go of it an outgoing
/// connection anywhere in this process may have taken it as its local
/// port until it closes.
async fn rebind(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
}

/// `node`'s data regions as `(start, end)`, sorted by start.
pub fn region_ranges(node: &Node) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> = node
        .regions_overlapping(b"", None)
        .into_iter()
        .map(|(_, s, e)| (s, e))
        .collect();
    out.sort();
    out
}

/// Starts a node, retrying for a while: a stopped node's engine (same data
/// dir) is released asynchronously. Panics if it never starts.
pub async fn start_node(config: NodeConfig) -> Arc<Node> {
    let since = Instant::now();
    let deadline = since + Duration::from_secs(15);
    let mut refused = None;
    loop {
        match Node::start(config.clone()).await {
            Ok(n) => {
                if let Some(e) = refused {
                    eprintln!(
                        "node {} started {:?} after its first attempt, refused: {e}",
                        config.name,
                        since.elapsed()
                    );
                }
                return n;
            }
            Err(e) if Instant::now() < deadline => {
                refused.get_or_insert(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("node {} did not start: {e}", config.name),
        }
    }
}

impl InProcessCluster {
    /// Starts `n` nodes with default settings.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, 10_000, Limits::default()).await
    }

    /// Starts `n` nodes snapshotting every `snapshot_logs` entries (or
    /// 64 MiB of log, the server's default).
    pub async fn start_with(n: usize, snapshot_logs: u64, limits: Limits) -> Self {
        Self::start_snapshotting(n, snapshot_logs, 64 << 20, limits).await
    }

    /// Starts `n` nodes snapshotting every `snapshot_logs` entries or
    /// `snapshot_log_bytes` bytes of log, whichever comes first.
    pub async fn start_snapshotting(
        n: usize,
        snapshot_logs: u64,
        snapshot_log_bytes: u64,
        limits: Limits,
    ) -> Self {
        Self::start_configured(
            n,
            snapshot_logs,
            snapshot_log_bytes,
            limits,
            Default::default(),
            Duration::ZERO,
            Default::default(),
        )
        .await
    }

    /// [`InProcessCluster::start_snapshotting`], and every member runs the
    /// corruption check every `check_every` by itself, as `cairn serve
    /// --experimental-corrupt-check-time` does.
    pub async fn start_checking(
        n: usize,
        snapshot_logs: u64,
        snapshot_log_bytes: u64,
        check_every: Duration,
    ) -> Self {
        let limits = Limits::default();
        let (logs, bytes) = (snapshot_logs, snapshot_log_bytes);
        let tokens = Default::default();
        Self::start_configured(
            n,
            logs,
            bytes,
            limits,
            Default::default(),
            check_every,
            tokens,
        )
        .await
    }

    /// Starts `n` nodes with default settings whose data regions split
    /// by themselves as `policy` says.
    pub async fn start_splitting(n: usize, policy: cairn_store::SplitPolicy) -> Self {
        let limits = Limits::default();
        let tokens = Default::default();
        Self::start_configured(n, 10_000, 64 << 20, limits, policy, Duration::ZERO, tokens).await
    }

    /// Starts `n` nodes with default settings issuing `tokens` (JWTs, say).
    pub async fn start_with_tokens(n: usize, tokens: cairn_store::TokenConfig) -> Self {
        let limits = Limits::default();
        let split = Default::default();
        Self::start_configured(n, 10_000, 64 << 20, limits, split, Duration::ZERO, tokens).await
    }

    async fn start_configured(
        n: usize,
        snapshot_logs: u64,
        snapshot_log_bytes: u64,
        limits: Limits,
        region_split: cairn_store::SplitPolicy,
        corrupt_check_interval: Duration,
        auth_tokens: cairn_store::TokenConfig,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..n {
            peers.push(free_listener().await);
            clients.push(free_listener().await);
        }
        let initial: Vec<InitialMember> = peers
            .iter()
            .enumerate()
            .map(|(i, l)| InitialMember {
                name: format!("n{}", i + 1),
                peer_url: secured::url(&l.local_addr().unwrap().to_string()),
            })
            .collect();
        let mut cluster = InProcessCluster {
            nodes: Vec::new(),
            initial: initial.clone(),
            snapshot_logs,
            snapshot_log_bytes,
            limits,
            region_split: many_regions::policy(region_split),
            corrupt_check_interval,
            balance_leaders: true,
            auth_tokens,
            _dir: dir,
        };
        for (i, (p, c)) in peers.into_iter().zip(clients).enumerate() {
            let m = &initial[i];
            let node = TestNode {
                name: m.name.clone(),
                id: member_id(&m.name, &m.peer_url, TOKEN),
                client_addr: c.local_addr().unwrap().to_string(),
                peer_addr: p.local_addr().unwrap().to_string(),
                dir: cluster._dir.path().join(&m.name),
                running: None,
                faults: Arc::default(),
            };
            cluster.nodes.push(node);
            cluster.launch(i, p, c, true).await;
        }
        secured::enable_auth(&cluster.nodes[0].client_addr).await;
        if many_regions::is_on() && region_split == Default::default() {
            let nodes: Vec<_> = (0..n).map(|i| cluster.node(i)).collect();
            many_regions::cut(&nodes).await;
        }
        cluster
    }

    async fn launch(
        &mut self,
        i: usize,
        peer: TcpListener,
        client: TcpListener,
        new_cluster: bool,
    ) {
        let t = &self.nodes[i];
        let config = NodeConfig {
            name: t.name.clone(),
            data_dir: t.dir.clone(),
            client_urls: vec![secured::url(&t.client_addr)],
            peer_urls: vec![secured::url(&t.peer_addr)],
            initial_cluster: self.initial.clone(),
            new_cluster,
            cluster_token: TOKEN.to_string(),
            snapshot_logs: self.snapshot_logs,
            snapshot_log_bytes: self.snapshot_log_bytes,
            lease_checkpoint_interval: std::time::Duration::from_secs(2),
            read_lease: true,
            corrupt_check_interval: self.corrupt_check_interval,
            peer_tls: secured::pki().map(|p| p.peer_client.clone()),
            // The cheapest bcrypt: tests measure access, not hashing.
            bcrypt_cost: 4,
            auth_tokens: self.auth_tokens.clone(),
            region_split: self.region_split,
            hibernate_regions: true,
            balance_leaders: self.balance_leaders,
            peer_faults: Some(t.faults.clone()),
        };
        let node = start_node(config).await;
        let (peer, client) = match secured::pki() {
            Some(p) => (
                Listener::Tls(peer, p.peer_server.clone()),
                Listener::Tls(client, p.client_server.clone()),
            ),
            None => (peer.into(), client.into()),
        };
        let (ptx, prx) = oneshot::channel::<()>();
        let (ctx_tx, ctx_rx) = oneshot::channel::<()>();
        let n2 = node.clone();
        let peer_task = tokio::spawn(async move {
            let _ = cairn_server::serve_peer(n2, peer, async {
                let _ = prx.await;
            })
            .await;
        });
        let ctx = Arc::new(Context {
            node: node.clone(),
            limits: self.limits,
            // Secured clusters run under `--client-cert-auth`.
            cert_names_users: true,
        });
        let client_task = tokio::spawn(async move {
            let _ = cairn_server::serve_client(ctx, client, async {
                let _ = ctx_rx.await;
            })
            .await;
        });
        self.nodes[i].running = Some(Running {
            node,
            stop: vec![ptx, ctx_tx],
            tasks: vec![peer_task, client_task],
        });
    }

    /// The running node `i` (panics if stopped).
    pub fn node(&self, i: usize) -> &Arc<Node> {
        &self.nodes[i]
            .running
            .as_ref()
            .expect("node is stopped")
            .node
    }

    /// Switches the leader balancer on or off on every member, running and
    /// restarted (`Node::set_leader_balance`): for tests of what elections
    /// alone do with leaders and terms. Call it at once after start: the
    /// balancer moves nothing in its first two checks (4 s).
    pub fn set_leader_balance(&mut self, on: bool) {
        self.balance_leaders = on;
        for t in &self.nodes {
            if let Some(r) = &t.running {
                r.node.set_leader_balance(on);
            }
        }
    }

    /// Node `i`'s member ID (also while it is stopped).
    pub fn node_id(&self, i: usize) -> u64 {
        self.nodes[i].id
    }

    /// Node `i`'s Raft metrics of its replica of `region` now.
    pub fn raft_metrics(&self, i: usize, region: u64) -> cairn_raft::RaftMetrics {
        self.node(i)
            .region(region)
            .expect("region hosted")
            .raft
            .metrics()
            .borrow()
            .clone()
    }

    /// True when node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].running.is_some()
    }

    /// A KV client connected to node `i`.
    pub async fn kv(&self, i: usize) -> KvClient<Channel> {
        kv::connect(&self.nodes[i].client_addr).await
    }

    /// Splits the region holding `at` at `at` (through node 0), and waits
    /// until every running node routes `at` to the new region. Nothing to
    /// split if a region starts there already (many-regions mode cuts at
    /// many keys).
    pub async fn split_at(&self, at: &str) {
        let region = self.node(0).route(at.as_bytes()).unwrap();
        if region.shared.range().start != at.as_bytes() {
            self.node(0)
                .split_region(region.id, at.as_bytes().to_vec())
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .all(|i| {
                self.node(i)
                    .route(at.as_bytes())
                    .is_ok_and(|r| r.shared.range().start == at.as_bytes())
            })
        {
            assert!(Instant::now() < deadline, "split at {at} not everywhere");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until running nodes agree on a leader of `region`; returns its index.
    pub async fn wait_leader(&self, region: u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = None;
            let mut agree = true;
            for (i, t) in self.nodes.iter().enumerate() {
                let Some(r) = &t.running else { continue };
                let l = r
                    .node
                    .region(region)
                    .ok()
                    .and_then(|x| x.raft.metrics().borrow().current_leader);
                match (seen, l) {
                    (_, None) => agree = false,
                    (None, Some(l)) => seen = Some((i, l)),
                    (Some((_, s)), Some(l)) if s != l => agree = false,
                    _ => {}
                }
            }
            if let (true, Some((_, leader))) = (agree, seen) {
                if let Some(idx) = self
                    .nodes
                    .iter()
                    .position(|t| t.id == leader && t.running.is_some())
                {
                    return idx;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader for region {region}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops node `i`: closes its servers, shuts Raft down, releases its engine.
    pub async fn stop(&mut self, i: usize) {
        let Some(r) = self.nodes[i].running.take() else {
            return;
        };
        for s in r.stop {
            let _ = s.send(());
        }
        r.node.shutdown().await;
        for t in r.tasks {
            if tokio::time::timeout(Duration::from_secs(3), async {
                let _ = (&mut { t }).await;
            })
            .await
            .is_err()
            {
                // Graceful close stuck on a peer connection: the timeout dropped the handle.
            }
        }
        drop(r.node);
    }

    /// Restarts a stopped node `i` on its data dir and ports.
    pub async fn restart(&mut self, i: usize) {
        // A restarted process starts with no faults of its own.
        self.nodes[i].faults.heal();
        self.restart_keeping_faults(i).await;
    }

    /// Restarts stopped node `i` with the faults its traffic had before
    /// (say, appends with entries still dropped), in place as its Raft
    /// starts.
    pub async fn restart_keeping_faults(&mut self, i: usize) {
        assert!(self.nodes[i].running.is_none(), "restart of a running node");
        let peer = rebind(&self.nodes[i].peer_addr).await;
        let client = rebind(&self.nodes[i].client_addr).await;
        self.launch(i, peer, client, false).await;
    }

    /// Cuts node `i` off from every other node (both directions).
    pub fn isolate(&self, i: usize) {
        self.links_of(i, cairn_raft::network::Faults::isolate);
    }

    /// Restores node `i`'s links cut by [`InProcessCluster::isolate`]
    /// (other faults stay).
    pub fn rejoin(&self, i: usize) {
        self.links_of(i, cairn_raft::network::Faults::rejoin);
    }

    /// Applies `change` to node `i`'s links with every other node, in
    /// every running node's faults.
    fn links_of(&self, i: usize, change: fn(&cairn_raft::network::Faults, u64, &[u64])) {
        let me = self.nodes[i].id;
        let others: Vec<u64> = self
            .nodes
            .iter()
            .filter(|t| t.id != me)
            .map(|t| t.id)
            .collect();
        for t in self.nodes.iter().filter_map(|t| t.running.as_ref()) {
            change(&t.node.pool.faults, me, &others);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for t in self.nodes.iter().filter_map(|t| t.running.as_ref()) {
            t.node.pool.faults.heal();
        }
    }

    /// Drops `percent`% of every node's outgoing peer messages.
    pub fn drop_messages(&self, percent: u32) {
        for t in self.nodes.iter().filter_map(|t| t.running.as_ref()) {
            t.node.pool.faults.drop_percent(percent);
        }
    }

    /// Delays every node's outgoing peer messages by 0..=`max_ms` ms.
    pub fn delay_messages(&self, max_ms: u32) {
        for t in self.nodes.iter().filter_map(|t| t.running.as_ref()) {
            t.node.pool.faults.delay(max_ms);
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
