//! `cairn dev`: three nodes in one process on the fixed dev ports.

use std::path::PathBuf;

use clap::Args;

use crate::serve::{self, ServeArgs};

/// Options of the dev cluster.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the three nodes keep their data.
    #[arg(long, default_value = "./cairn-data")]
    pub data_dir: PathBuf,
    /// Client port of the first node; the others use 2xxxx and 3xxxx like etcd's Procfile.
    #[arg(long, default_value_t = 2379)]
    pub client_port: u16,
}

/// The three dev members: (name, client port, peer port).
fn members(client_port: u16) -> Vec<(String, u16, u16)> {
    let peer = client_port + 1;
    vec![
        ("node1".to_string(), client_port, peer),
        ("node2".to_string(), 20000 + client_port, 20000 + peer),
        ("node3".to_string(), 30000 + client_port, 30000 + peer),
    ]
}

/// Starts the three nodes and runs until interrupted.
pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    let ms = members(a.client_port);
    let initial: Vec<String> = ms
        .iter()
        .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let mut nodes = Vec::new();
    for (name, cport, pport) in &ms {
        let exists = a.data_dir.join(name).exists();
        let args = ServeArgs {
            name: name.clone(),
            data_dir: Some(a.data_dir.join(name)),
            listen_client_urls: format!("http://127.0.0.1:{cport}"),
            advertise_client_urls: None,
            listen_peer_urls: format!("http://127.0.0.1:{pport}"),
            initial_advertise_peer_urls: format!("http://127.0.0.1:{pport}"),
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
        };
        nodes.push(serve::start(args).await?);
    }
    let endpoints: Vec<String> = ms
        .iter()
        .map(|(_, c, _)| format!("127.0.0.1:{c}"))
        .collect();
    eprintln!(
        "cairn dev cluster: 3 nodes, data in {}",
        a.data_dir.display()
    );
    eprintln!(
        "  try: etcdctl --endpoints={} put foo bar",
        endpoints.join(",")
    );
    tokio::signal::ctrl_c().await?;
    for n in &nodes {
        n.node.shutdown().await;
    }
    Ok(())
}
