//! `cairn serve`: one node, configured like an etcd member.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use cairn_server::{Context, Limits};
use cairn_store::{parse_initial_cluster, Node, NodeConfig};
use clap::Args;
use tokio::net::TcpListener;

use crate::tls_args::{self, TlsArgs};
use crate::urls;

/// etcd-compatible flags.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: `<name>.cairn`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Client URLs advertised to the cluster (default: listen URLs).
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs advertised to the rest of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration: `name=peer-url,...` (default: just this member).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap, `existing` to join/restart.
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Token distinguishing clusters with the same members.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Maximum client request size in bytes.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Maximum operations (compares, or ops per branch) in one txn.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Interval of progress notifications to idle watchers that ask for them (0 disables).
    #[arg(long, default_value = "10m")]
    pub experimental_watch_progress_notify_interval: String,
    /// Before serving clients, compare this member's history hash with the
    /// peers' and refuse to start if one differs.
    #[arg(long)]
    pub experimental_initial_corrupt_check: bool,
    /// How often the leader compares every member's history hash and
    /// raises the CORRUPT alarm on a member that differs (0s: never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub experimental_corrupt_check_time: std::time::Duration,
    /// Log entries between snapshots.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Also snapshot (and purge the Raft log) after the log grew by this
    /// many bytes since the last snapshot; 0 disables.
    #[arg(long, default_value_t = 64 << 20)]
    pub snapshot_log_bytes: u64,
    /// Serve linearizable reads on the leader under a read lease (no quorum
    /// round per read while it holds; assumes the nodes' clocks tick at
    /// roughly the same rate). `false`: a quorum round per batch of reads,
    /// as etcd does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub read_lease: bool,
    /// How often the lease leader records remaining TTLs, so a new leader
    /// resumes long leases instead of restarting them (etcd: 5 min).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub lease_checkpoint_interval: std::time::Duration,
    /// Storage quota: past this many bytes on disk, writes that add data
    /// are refused and the NOSPACE alarm raised (etcd's flag; its default
    /// is 2 GiB). 0: no quota.
    #[arg(long, default_value_t = cairn_server::DEFAULT_QUOTA_BYTES)]
    pub quota_backend_bytes: u64,
    /// Token type for Authenticate: `simple` (etcd's default) or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256|ES256|EdDSA|...,ttl=5m`.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token lives past its last use.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of password hashes (4–31).
    #[arg(long, default_value_t = cairn_auth::password::DEFAULT_COST)]
    pub bcrypt_cost: u32,
    /// Split a data region whose live keys and values pass this size, at
    /// the key that halves them (`64KiB`, `256MiB`, or bytes; 0: never).
    /// 256 MiB: a node holds tens of regions at etcd's 8 GiB ceiling, not
    /// thousands, and a lagging replica's snapshot stays small
    /// (docs/operations.md, "Splitting").
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    pub region_split_bytes: u64,
    /// Split a data region applying more than this many writes a second
    /// for ten seconds, at the key that divides its writes (0: never).
    #[arg(long, default_value_t = 0)]
    pub region_split_qps: u64,
    /// Merge a cold data region into its left neighbour when their live
    /// keys and values together stay within this size (0: never; default:
    /// a fifth of `--region-split-bytes`, as TiKV's 20 MiB to its 96 MiB).
    /// Must be below `--region-split-bytes`.
    #[arg(long, value_parser = parse_bytes)]
    pub region_merge_bytes: Option<u64>,
    /// Idle data regions stop their Raft heartbeats and election timers;
    /// members beat to each other instead, once per pair whatever the
    /// number of regions, and wake a dead member's regions. `false`: every
    /// region ticks always.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub region_hibernate: bool,
    /// The meta region's leader hands data regions' leadership from the
    /// member leading the most to the one leading the fewest, a few at a
    /// time, so writes spread over the members (`false`: leaders stay
    /// where elections put them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub region_balance_leaders: bool,
    /// TLS on the client and peer ports.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The split and merge flags as one policy: merges default to a fifth of
/// the split size, and must stay below it (a merged region would split
/// again at once).
pub fn split_policy(
    bytes: u64,
    qps: u64,
    merge_bytes: Option<u64>,
) -> anyhow::Result<cairn_store::SplitPolicy> {
    let merge_bytes = merge_bytes.unwrap_or(bytes / 5);
    if bytes > 0 && merge_bytes >= bytes {
        anyhow::bail!(
            "--region-merge-bytes ({merge_bytes}) must be below --region-split-bytes ({bytes})"
        );
    }
    Ok(cairn_store::SplitPolicy {
        bytes,
        qps,
        merge_bytes,
    })
}

/// A size in bytes: a number with an optional unit (`64KiB`, `1.5MB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    byte_unit::Byte::parse_str(s, true)
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size: {e}"))
}

/// A running node with its listeners.
pub struct Running {
    /// The node.
    pub node: Arc<Node>,
}

/// Starts a node and its servers; returns once listening.
pub async fn start(a: ServeArgs) -> anyhow::Result<Running> {
    let peer_urls = urls::list(&a.initial_advertise_peer_urls);
    let initial = a
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}={}", a.name, peer_urls.join(",")));
    let initial_cluster = parse_initial_cluster(&initial).map_err(anyhow::Error::msg)?;
    let client_urls = urls::list(
        a.advertise_client_urls
            .as_deref()
            .unwrap_or(&a.listen_client_urls),
    );
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", a.name)));

    if !cairn_auth::password::valid_cost(a.bcrypt_cost) {
        anyhow::bail!("--bcrypt-cost {} is out of range (4-31)", a.bcrypt_cost);
    }
    let auth_tokens = token_config(&a.auth_token, a.auth_token_ttl)?;
    let listen_peer = urls::list(&a.listen_peer_urls);
    let listen_client = urls::list(&a.listen_client_urls);
    let peer_tls = tls_args::server(
        &listen_peer,
        a.tls.peer(),
        "--peer-cert-file, --peer-key-file",
    )?;
    let client_tls = tls_args::server(&listen_client, a.tls.client(), "--cert-file, --key-file")?;
    let members: Vec<String> = initial_cluster.iter().map(|m| m.peer_url.clone()).collect();
    let dial_tls = tls_args::peer_client(&members, a.tls.peer())?;

    tracing::info!(name = %a.name, "starting");
    // Bind first, so a port conflict fails fast and peers can reach us
    // while Raft starts.
    let peer_listeners = bind(&listen_peer, &peer_tls, "peer").await?;
    let client_listeners = bind(&listen_client, &client_tls, "client").await?;

    let node = Node::start(NodeConfig {
        name: a.name.clone(),
        data_dir,
        client_urls,
        peer_urls,
        initial_cluster,
        new_cluster: a.initial_cluster_state == "new",
        cluster_token: a.initial_cluster_token.clone(),
        snapshot_logs: a.snapshot_count.max(10),
        snapshot_log_bytes: a.snapshot_log_bytes,
        lease_checkpoint_interval: a.lease_checkpoint_interval,
        read_lease: a.read_lease,
        hibernate_regions: a.region_hibernate,
        balance_leaders: a.region_balance_leaders,
        peer_faults: None,
        corrupt_check_interval: a.experimental_corrupt_check_time,
        peer_tls: dial_tls,
        bcrypt_cost: a.bcrypt_cost,
        auth_tokens,
        region_split: split_policy(
            a.region_split_bytes,
            a.region_split_qps,
            a.region_merge_bytes,
        )?,
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting node: {e}"))?;
    if a.experimental_initial_corrupt_check {
        tracing::info!("node started; comparing history hashes with the peers");
        node.initial_corruption_check()
            .await
            .map_err(|e| anyhow::anyhow!("initial corruption check: {e}"))?;
    }

    for l in peer_listeners {
        let n = node.clone();
        tokio::spawn(async move {
            if let Err(e) = cairn_server::serve_peer(n, l, std::future::pending()).await {
                tracing::error!("peer server: {e}");
            }
        });
    }
    let ctx = Arc::new(Context {
        node: node.clone(),
        limits: Limits {
            max_request_bytes: a.max_request_bytes,
            max_txn_ops: a.max_txn_ops,
            watch_progress_interval: Some(urls::duration(
                &a.experimental_watch_progress_notify_interval,
            )?)
            .filter(|d| !d.is_zero()),
            quota_backend_bytes: a.quota_backend_bytes,
        },
        cert_names_users: a.tls.client_cert_auth,
    });
    let mut client_addrs = Vec::new();
    for l in client_listeners {
        client_addrs.push(l.local_addr()?);
        let c = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = cairn_server::serve_client(c, l, std::future::pending()).await {
                tracing::error!("client server: {e}");
            }
        });
    }
    tracing::info!(name = %a.name, id = format_args!("{:x}", node.id), "cairn node serving clients on {client_addrs:?}");
    Ok(Running { node })
}

/// `--auth-token` (and `--auth-token-ttl` for simple tokens), with the
/// JWT key files read now so a bad one fails at start.
fn token_config(option: &str, simple_ttl: u64) -> anyhow::Result<cairn_store::TokenConfig> {
    use cairn_auth::jwt::{self, TokenOption};
    Ok(
        match jwt::parse_option(option).map_err(anyhow::Error::msg)? {
            TokenOption::Simple => cairn_store::TokenConfig::Simple {
                ttl: std::time::Duration::from_secs(simple_ttl.max(1)),
            },
            TokenOption::Jwt {
                public_key,
                private_key,
                method,
                ttl,
            } => {
                let read =
                    |p: &str| std::fs::read(p).with_context(|| format!("reading JWT key {p}"));
                let public = read(&public_key)?;
                let private = private_key.as_deref().map(read).transpose()?;
                let keys = jwt::JwtKeys::new(&method, &public, private.as_deref(), ttl)
                    .map_err(anyhow::Error::msg)?;
                cairn_store::TokenConfig::Jwt(Arc::new(keys))
            }
        },
    )
}

/// Binds every URL of one port, warning when a listener reachable from
/// other hosts has no TLS (anyone who reaches it could read and write).
async fn bind(
    list: &[String],
    tls: &Option<Arc<cairn_tls::ServerConfig>>,
    port: &str,
) -> anyhow::Result<Vec<cairn_server::Listener>> {
    let mut out = Vec::new();
    for u in list {
        let addr = urls::socket_addr(u)?;
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {port} URL {u}"))?;
        out.push(match tls {
            Some(cfg) => cairn_server::Listener::Tls(l, cfg.clone()),
            None => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(
                        "the {port} listener {u} is reachable from other hosts without TLS: \
                         anyone who can connect can read and write (use https:// and --{}cert-file)",
                        if port == "peer" { "peer-" } else { "" }
                    );
                }
                cairn_server::Listener::Plain(l)
            }
        });
    }
    Ok(out)
}

/// `cairn serve`: start and run until interrupted.
pub async fn run(a: ServeArgs) -> anyhow::Result<()> {
    let running = start(a).await?;
    tokio::signal::ctrl_c().await?;
    running.node.shutdown().await;
    Ok(())
}
