//! `watch-latency`: how long from sending a put until every watcher holds
//! its event. Each put's value starts with its send time (nanoseconds since
//! the run's start, big-endian), so a receiver needs no shared table: the
//! event itself says when it was sent. Events that never arrive count as
//! `MissingEvent` errors.

use std::time::{Duration, Instant};

use crate::conn::Chan;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;

use crate::args::Global;
use crate::conn;
use crate::driver;
use crate::kv::prefix_end;
use crate::stats::{Recorder, RunResult};

const PREFIX: &[u8] = b"bench-watch/";

/// How long receivers wait for stragglers after the last put returned.
const GRACE: Duration = Duration::from_secs(10);

fn create() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: PREFIX.to_vec(),
            range_end: prefix_end(PREFIX),
            ..Default::default()
        })),
    }
}

/// Runs the workload: `streams` watch streams of `per_stream` watchers,
/// `g.clients` writers issuing `put_total` puts.
pub async fn latency(
    g: &Global,
    chans: &[Chan],
    put_total: u64,
    put_rate: u64,
    streams: usize,
    per_stream: usize,
    val_size: usize,
) -> anyhow::Result<RunResult> {
    let epoch = Instant::now();
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<Instant>);
    let eps = conn::targets(g).await?;
    let per_stream = per_stream.max(1);
    let mut receivers = Vec::new();
    for s in 0..streams.max(1) {
        let ch = conn::connect(&g.conn, &eps[s % eps.len()]).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(per_stream + 1);
        // grpc-go servers (etcd) send response headers only with the first
        // message, so the first request must be queued before the call.
        for _ in 0..per_stream {
            tx.send(create()).await?;
        }
        let mut stream = WatchClient::new(ch)
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut created = 0;
        while created < per_stream {
            let Some(m) = stream.message().await? else {
                anyhow::bail!("watch stream closed during creation");
            };
            created += usize::from(m.created);
        }
        let expected = put_total * per_stream as u64;
        let mut done = done_rx.clone();
        receivers.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut rec = Recorder::new();
            let mut seen = 0u64;
            while seen < expected {
                // Until the writers finish, wait as long as it takes; after,
                // give stragglers a grace period.
                let wait = match *done.borrow() {
                    Some(end) => (end + GRACE).saturating_duration_since(Instant::now()),
                    None => Duration::from_secs(3600),
                };
                tokio::select! {
                    m = tokio::time::timeout(wait, stream.message()) => {
                        let Ok(Ok(Some(m))) = m else { break };
                        let now = epoch.elapsed().as_nanos() as u64;
                        for e in m.events {
                            let v = e.kv.map(|kv| kv.value).unwrap_or_default();
                            if let Some(b) = v.get(..8) {
                                let sent = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                                rec.ok(Duration::from_nanos(now.saturating_sub(sent)));
                                seen += 1;
                            }
                        }
                        if m.canceled {
                            break;
                        }
                    }
                    changed = done.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
            (rec, expected.saturating_sub(seen))
        }));
    }
    let val_size = val_size.max(8);
    let (writes, took) = driver::run(g.clients, put_total, put_rate, |c| {
        let kv = KvClient::new(chans[c % chans.len()].clone());
        move |i| {
            let mut kv = kv.clone();
            let mut key = PREFIX.to_vec();
            key.extend_from_slice(format!("{i:010}").as_bytes());
            let mut value = (epoch.elapsed().as_nanos() as u64).to_be_bytes().to_vec();
            value.resize(val_size, b'v');
            let req = PutRequest {
                key,
                value,
                ..Default::default()
            };
            async move { kv.put(req).await.map(|_| ()) }
        }
    })
    .await;
    let _ = done_tx.send(Some(Instant::now()));
    let write_errors = writes.result("put", took).error_count();
    let mut events = Recorder::new();
    for r in receivers {
        if let Ok((rec, missing)) = r.await {
            events.merge(rec);
            for _ in 0..missing {
                events.error_named("MissingEvent");
            }
        }
    }
    let mut out = events.result("watch-latency", took);
    // Failed puts have no event to wait for; report them as write errors.
    if write_errors > 0 {
        out.errors.insert("PutFailed".into(), write_errors);
        let missing = out.errors.get("MissingEvent").copied().unwrap_or(0);
        let explained = missing.min(write_errors * per_stream as u64);
        if missing > explained {
            out.errors
                .insert("MissingEvent".into(), missing - explained);
        } else {
            out.errors.remove("MissingEvent");
        }
    }
    out.ops_per_sec = writes.count() as f64 / took.as_secs_f64().max(1e-9);
    out.params.insert("put_total".into(), json!(put_total));
    out.params.insert("put_rate".into(), json!(put_rate));
    out.params.insert("streams".into(), json!(streams));
    out.params
        .insert("watchers_per_stream".into(), json!(per_stream));
    out.extra.insert("events".into(), json!(out.ok));
    Ok(out)
}
