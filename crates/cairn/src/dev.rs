//! `cairn dev`: three nodes in one process on the fixed dev ports.

use std::path::PathBuf;

use clap::Args;

use crate::serve::{self, ServeArgs};
use crate::tls_args::TlsArgs;

/// Options of the dev cluster.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the three nodes keep their data.
    #[arg(long, default_value = "./cairn-data")]
    pub data_dir: PathBuf,
    /// Client port of the first node; the others use 2xxxx and 3xxxx like etcd's Procfile.
    #[arg(long, default_value_t = 2379)]
    pub client_port: u16,
    /// TLS on every port, mutual on both: makes a throwaway CA and
    /// certificates in `DATA_DIR/tls` (kept across restarts), including a
    /// client certificate for etcdctl.
    #[arg(long)]
    pub tls: bool,
    /// Split a data region past this size (`64KiB`; 0: never), as `serve`.
    #[arg(long, default_value = "256MiB", value_parser = serve::parse_bytes)]
    pub region_split_bytes: u64,
    /// Split a data region past this many writes a second (0: never), as `serve`.
    #[arg(long, default_value_t = 0)]
    pub region_split_qps: u64,
    /// Merge cold neighbours within this size (default: a fifth of the
    /// split size; 0: never), as `serve`.
    #[arg(long, value_parser = serve::parse_bytes)]
    pub region_merge_bytes: Option<u64>,
    /// Idle data regions stop their Raft ticks (`false`: never), as `serve`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub region_hibernate: bool,
    /// Spread data regions' leaders evenly over the members (`false`:
    /// never move them), as `serve`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub region_balance_leaders: bool,
}

/// The three dev members: (name, client port, peer port).
fn members(client_port: u16) -> anyhow::Result<Vec<(String, u16, u16)>> {
    let port = |offset: u32| {
        u16::try_from(u32::from(client_port) + offset).map_err(|_| {
            anyhow::anyhow!(
                "--client-port {client_port} is too high: the other nodes use it plus 20000 and 30000 (at most 35534)"
            )
        })
    };
    Ok(vec![
        ("node1".to_string(), port(0)?, port(1)?),
        ("node2".to_string(), port(20000)?, port(20001)?),
        ("node3".to_string(), port(30000)?, port(30001)?),
    ])
}

/// Node `name`'s TLS flags under `cairn dev --tls`: mutual TLS on both
/// ports, with **two** CAs — one for the client port (the node's serving
/// certificate and the client's), one for the peer port (the nodes' peer
/// certificates) — so no client certificate can pass for a member. The
/// CAs and certificates are made once.
fn dev_tls(pki: &std::path::Path, name: &str) -> anyhow::Result<TlsArgs> {
    let peers = pki.join("peer");
    for (dir, n) in [(pki, name), (pki, "client"), (peers.as_path(), name)] {
        if !dir.join(format!("{n}.pem")).exists() {
            cairn_tls::pki::issue(dir, n, &cairn_tls::pki::local_hosts())?;
        }
    }
    let file = |dir: &std::path::Path, f: String| Some(dir.join(f));
    Ok(TlsArgs {
        cert_file: file(pki, format!("{name}.pem")),
        key_file: file(pki, format!("{name}-key.pem")),
        trusted_ca_file: Some(cairn_tls::pki::ca_path(pki)),
        client_cert_auth: true,
        peer_cert_file: file(&peers, format!("{name}.pem")),
        peer_key_file: file(&peers, format!("{name}-key.pem")),
        peer_trusted_ca_file: Some(cairn_tls::pki::ca_path(&peers)),
        peer_client_cert_auth: true,
        ..TlsArgs::default()
    })
}

/// Starts the three nodes and runs until interrupted.
pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    let ms = members(a.client_port)?;
    let scheme = if a.tls { "https" } else { "http" };
    let pki = a.data_dir.join("tls");
    let initial: Vec<String> = ms
        .iter()
        .map(|(n, _, p)| format!("{n}={scheme}://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let mut nodes = Vec::new();
    for (name, cport, pport) in &ms {
        let exists = a.data_dir.join(name).exists();
        let tls = if a.tls {
            dev_tls(&pki, name)?
        } else {
            TlsArgs::default()
        };
        let args = ServeArgs {
            name: name.clone(),
            data_dir: Some(a.data_dir.join(name)),
            listen_client_urls: format!("{scheme}://127.0.0.1:{cport}"),
            advertise_client_urls: None,
            listen_peer_urls: format!("{scheme}://127.0.0.1:{pport}"),
            initial_advertise_peer_urls: format!("{scheme}://127.0.0.1:{pport}"),
            initial_cluster: Some(initial.clone()),
            initial_cluster_state: if exists {
                "existing".into()
            } else {
                "new".into()
            },
            initial_cluster_token: "cairn-dev".into(),
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            snapshot_count: 10_000,
            snapshot_log_bytes: 64 << 20,
            read_lease: true,
            lease_checkpoint_interval: std::time::Duration::from_secs(300),
            quota_backend_bytes: cairn_server::DEFAULT_QUOTA_BYTES,
            experimental_watch_progress_notify_interval: "10m".into(),
            experimental_corrupt_check_time: std::time::Duration::from_secs(60),
            experimental_initial_corrupt_check: false,
            tls,
            auth_token: "simple".into(),
            auth_token_ttl: 300,
            bcrypt_cost: cairn_auth::password::DEFAULT_COST,
            region_split_bytes: a.region_split_bytes,
            region_split_qps: a.region_split_qps,
            region_merge_bytes: a.region_merge_bytes,
            region_hibernate: a.region_hibernate,
            region_balance_leaders: a.region_balance_leaders,
        };
        nodes.push(serve::start(args).await?);
    }
    let endpoints: Vec<String> = ms
        .iter()
        .map(|(_, c, _)| {
            if a.tls {
                format!("https://127.0.0.1:{c}")
            } else {
                format!("127.0.0.1:{c}")
            }
        })
        .collect();
    eprintln!(
        "cairn dev cluster: 3 nodes, data in {}",
        a.data_dir.display()
    );
    let creds = if a.tls {
        format!(
            " --cacert={0}/ca.pem --cert={0}/client.pem --key={0}/client-key.pem",
            pki.display()
        )
    } else {
        String::new()
    };
    eprintln!(
        "  try: etcdctl --endpoints={}{creds} put foo bar",
        endpoints.join(",")
    );
    tokio::signal::ctrl_c().await?;
    for n in &nodes {
        n.node.shutdown().await;
    }
    Ok(())
}
