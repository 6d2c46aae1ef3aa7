//! A first, minimal load generator (the full `cairn bench` is its own issue):
//! `clients` concurrent workers over `conns` HTTP/2 connections run one
//! workload for `seconds` against any etcd-API endpoint, then print
//! throughput and latency percentiles as one JSON line. Workloads:
//! `put`, `range` (add `serializable`), `watch-latency` (put → event delay
//! seen by a watcher), `keepalive` (lease keep-alive round trips), and
//! `watchers` (CLIENTS idle watchers over CONNS streams; with
//! BENCH_SERVER_PID set, reports the server's RSS growth per watcher).
//!
//! cargo run --release -p cairn-testkit --example quickbench -- \
//!     ENDPOINT WORKLOAD CLIENTS CONNS SECONDS [serializable]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use tonic::transport::Endpoint;

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        eprintln!("usage: quickbench ENDPOINT put|range|watch-latency|keepalive|watchers CLIENTS CONNS SECONDS [serializable]");
        std::process::exit(2);
    }
    let (ep, op) = (a[1].clone(), a[2].clone());
    let clients: usize = a[3].parse().unwrap();
    let conns: usize = a[4].parse().unwrap();
    let secs: u64 = a[5].parse().unwrap();
    let serializable = a.get(6).is_some_and(|s| s == "serializable");
    let mut channels = Vec::new();
    for _ in 0..conns {
        let ch = Endpoint::from_shared(format!("http://{ep}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        channels.push(KvClient::new(ch));
    }
    // Seed keys for range.
    let mut seed = channels[0].clone();
    for i in 0..100 {
        seed.put(PutRequest {
            key: format!("bench/{i:08}").into(),
            value: vec![b'x'; 256],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    match op.as_str() {
        "watch-latency" => return watch_latency(&ep, channels, clients, secs).await,
        "keepalive" => return keepalive(&ep, clients, conns, secs).await,
        "watchers" => return idle_watchers(&ep, clients, conns).await,
        _ => {}
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let mut c = channels[w % conns].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("bench/{:08}", (w as u64 * 7919 + i) % 100_000);
                let t = Instant::now();
                let ok = if op == "put" {
                    c.put(PutRequest {
                        key: key.into(),
                        value: vec![b'x'; 256],
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                } else {
                    let k = format!("bench/{:08}", i % 100);
                    c.range(RangeRequest {
                        key: k.into(),
                        serializable,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    report(&op, clients, secs, all, errors);
}

fn report(op: &str, clients: usize, secs: u64, mut all: Vec<u64>, errors: u64) {
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"op\":\"{op}\",\"clients\":{clients},\"ops\":{},\"ops_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
        all.len(),
        all.len() as f64 / secs as f64,
        pct(0.50),
        pct(0.99)
    );
}

/// Opens a watch stream whose first request is `first` (grpc-go servers,
/// etcd's, send response headers only with the first response, so the
/// request must be queued before the call is awaited).
async fn open_watch(
    ep: &str,
    first: WatchRequest,
) -> (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<WatchResponse>,
) {
    let ch = Endpoint::from_shared(format!("http://{ep}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tx.send(first).await.unwrap();
    let s = WatchClient::new(ch)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, s)
}

fn create(key: &str, end: &str) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

/// Writers put `wl/<n>` and record the send time; one watcher on `wl/`
/// records when each event arrives.
async fn watch_latency(
    ep: &str,
    channels: Vec<KvClient<tonic::transport::Channel>>,
    clients: usize,
    secs: u64,
) {
    let (_tx, mut stream) = open_watch(ep, create("wl/", "wl0")).await;
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut writers = Vec::new();
    for w in 0..clients {
        let mut c = channels[w % channels.len()].clone();
        let sent = sent.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("wl/{w}/{i}");
                sent.lock().unwrap().insert(key.clone(), Instant::now());
                let _ = c
                    .put(PutRequest {
                        key: key.into(),
                        value: vec![b'x'; 256],
                        ..Default::default()
                    })
                    .await;
                i += 1;
            }
        }));
    }
    let mut lat = Vec::new();
    let end = deadline + Duration::from_secs(2);
    while let Ok(Ok(Some(r))) = tokio::time::timeout_at(end.into(), stream.message()).await {
        let now = Instant::now();
        for e in r.events {
            let key = String::from_utf8_lossy(&e.kv.unwrap_or_default().key).into_owned();
            if let Some(t) = sent.lock().unwrap().remove(&key) {
                lat.push(now.duration_since(t).as_micros() as u64);
            }
        }
        if Instant::now() > deadline
            && writers.iter().all(|w| w.is_finished())
            && sent.lock().unwrap().is_empty()
        {
            break;
        }
    }
    let missing = sent.lock().unwrap().len() as u64;
    report("watch-latency", clients, secs, lat, missing);
}

/// Each client keeps one lease alive over its own stream, back to back.
async fn keepalive(ep: &str, clients: usize, conns: usize, secs: u64) {
    let mut chans = Vec::new();
    for _ in 0..conns {
        chans.push(
            Endpoint::from_shared(format!("http://{ep}"))
                .unwrap()
                .connect()
                .await
                .expect("connect"),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let ch = chans[w % conns].clone();
        tasks.push(tokio::spawn(async move {
            let mut lc = LeaseClient::new(ch);
            let id = lc
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await
                .unwrap()
                .into_inner()
                .id;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut t = Instant::now();
            tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
            let mut s = lc
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut lat = Vec::new();
            loop {
                if s.message().await.ok().flatten().is_some() {
                    lat.push(t.elapsed().as_micros() as u64);
                }
                if Instant::now() >= deadline {
                    break;
                }
                t = Instant::now();
                tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
            }
            let _ = lc.lease_revoke(LeaseRevokeRequest { id }).await;
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    report("keepalive", clients, secs, all, 0);
}

fn rss(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// `n` idle watchers over `streams` streams; reports RSS growth per watcher.
async fn idle_watchers(ep: &str, n: usize, streams: usize) {
    let pid = std::env::var("BENCH_SERVER_PID").unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(&pid);
    let mut held = Vec::new();
    for s in 0..streams {
        let (tx, mut stream) = open_watch(ep, create(&format!("idle/{s}/0"), "")).await;
        stream.message().await.unwrap().unwrap();
        for w in 1..n / streams {
            tx.send(create(&format!("idle/{s}/{w}"), "")).await.unwrap();
            stream.message().await.unwrap().unwrap();
        }
        held.push((tx, stream));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(&pid);
    let per = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "{{\"op\":\"watchers\",\"watchers\":{n},\"streams\":{streams},\"rss_before\":{before},\"rss_after\":{after},\"bytes_per_watcher\":{per:.0}}}"
    );
}
