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
