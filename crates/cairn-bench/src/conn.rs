//! Connections to the cluster under test: `--conns` HTTP/2 channels spread
//! over the endpoints (or all to the leader with `--target-leader`, found
//! the way etcd's benchmark finds it: the endpoint whose Status names
//! itself as leader).

use anyhow::{bail, Context as _};
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::StatusRequest;
use tonic::transport::{Channel, Endpoint};

use crate::args::Global;

/// `host:port` or a URL, as a URL.
pub fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// One new HTTP/2 connection to `endpoint`, retried for up to 10 s (a
/// server that was just started may not listen yet).
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let ep = Endpoint::from_shared(url(endpoint))?.tcp_nodelay(true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ep.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {endpoint}"))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// The endpoints requests go to: the leader alone, or all of them.
pub async fn targets(g: &Global) -> anyhow::Result<Vec<String>> {
    if g.endpoints.is_empty() {
        bail!("no --endpoints");
    }
    if !g.target_leader {
        return Ok(g.endpoints.clone());
    }
    for ep in &g.endpoints {
        let Ok(ch) = connect(ep).await else { continue };
        let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await else {
            continue;
        };
        let s = s.into_inner();
        if s.header.is_some_and(|h| h.member_id == s.leader) {
            return Ok(vec![ep.clone()]);
        }
    }
    bail!("no endpoint reports itself as leader")
}

/// `g.conns` channels over the target endpoints, round-robin.
pub async fn channels(g: &Global) -> anyhow::Result<Vec<Channel>> {
    let eps = targets(g).await?;
    let mut out = Vec::new();
    for i in 0..g.conns.max(1) {
        out.push(connect(&eps[i % eps.len()]).await?);
    }
    Ok(out)
}
