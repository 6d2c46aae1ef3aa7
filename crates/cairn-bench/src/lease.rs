//! `lease-keepalive`: each client grants one lease, opens one keep-alive
//! stream and sends keep-alives back to back; latency is one round trip on
//! the stream. Leases are revoked at the end.

use std::sync::Arc;

use crate::conn::Chan;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use serde_json::json;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::args::Global;
use crate::driver;
use crate::stats::RunResult;

/// One client's lease and its open keep-alive stream.
struct KeepAlive {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    async fn open(ch: Chan) -> anyhow::Result<Self> {
        let mut lc = LeaseClient::new(ch);
        let id = lc
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await?
            .into_inner()
            .id;
        let (tx, rx) = mpsc::channel(1);
        // Queue the first request before the call (grpc-go sends headers
        // only with the first response).
        tx.send(LeaseKeepAliveRequest { id }).await?;
        let mut rx = lc
            .lease_keep_alive(ReceiverStream::new(rx))
            .await?
            .into_inner();
        rx.message().await?;
        Ok(Self { id, tx, rx })
    }

    async fn round_trip(&mut self) -> Result<(), Status> {
        self.tx
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
        match self.rx.message().await? {
            Some(r) if r.ttl > 0 => Ok(()),
            Some(_) => Err(Status::not_found("lease expired")),
            None => Err(Status::unavailable("keep-alive stream ended")),
        }
    }
}

/// Runs `total` keep-alives over `g.clients` leases.
pub async fn keepalive(g: &Global, chans: &[Chan], total: u64) -> anyhow::Result<RunResult> {
    let mut states = Vec::new();
    for c in 0..g.clients.max(1) {
        states.push(Arc::new(Mutex::new(
            KeepAlive::open(chans[c % chans.len()].clone()).await?,
        )));
    }
    let (rec, took) = driver::run(g.clients, total, 0, |c| {
        let state = states[c].clone();
        move |_i| {
            let state = state.clone();
            async move { state.lock().await.round_trip().await }
        }
    })
    .await;
    for (c, s) in states.iter().enumerate() {
        let id = s.lock().await.id;
        let mut lc = LeaseClient::new(chans[c % chans.len()].clone());
        let _ = lc.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    let mut r = rec.result("lease-keepalive", took);
    r.params.insert("leases".into(), json!(states.len()));
    Ok(r)
}
