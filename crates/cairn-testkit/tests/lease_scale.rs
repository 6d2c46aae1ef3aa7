//! Lease bookkeeping at scale: 100k leases with 10 keys each cost no
//! measurable CPU while the cluster idles.
//!
//! The lessor keeps expiry and checkpoint times in ordered sets, so a tick
//! (five a second on the data region leader) looks at the first entry of
//! each and stops; with nothing due it proposes nothing. What remains is the
//! checkpoint pass: every lease whose TTL is longer than the checkpoint
//! interval has its remaining TTL written through Raft once per interval, in
//! entries of 1000. Its cost is proportional to leases / interval, so it is
//! measured at the in-process test cluster's interval (2 s), reported per
//! pass, and amortised over the production interval (5 min, etcd's and
//! `cairn serve`'s default).
//!
//! One test, three phases on a 1-node cluster configured as
//! `InProcessCluster` configures its nodes, except for the checkpoint
//! interval (which the testkit fixes at 2 s, hence nodes started here):
//!
//! 1. no leases, production interval: the baseline;
//! 2. 100k leases with TTL 3600 s, production interval: no checkpoint falls
//!    due within the run, so this is the bookkeeping alone;
//! 3. the same data dir restarted with the 2 s interval: the new term
//!    primes every lease at once, so each pass is one tick proposing 100
//!    entries, and the entries applied count the passes.
//!
//! CPU is this process's user + system time (`/proc/self/stat`), which
//! counts only work done here, however busy the machine is; wall time would
//! measure the neighbours. Figures are in docs/benchmarks.md ("Lease
//! bookkeeping at scale").
//!
//! Run: `cargo test --release -p cairn-testkit --test lease_scale -- --ignored --nocapture`

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use cairn_store::{InitialMember, Node, NodeConfig, DATA_REGION};
use tokio::net::TcpListener;

const LEASES: i64 = 100_000;
const KEYS_PER_LEASE: usize = 10;
/// Long enough that no lease expires during the test.
const TTL: i64 = 3600;
const LOADERS: usize = 128;
const SETTLE: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(20);
/// `cairn serve`'s (and etcd's) lease checkpoint interval.
const PRODUCTION_INTERVAL: Duration = Duration::from_secs(300);
/// The in-process test cluster's interval (`cairn_testkit`'s `launch`).
const TEST_INTERVAL: Duration = Duration::from_secs(2);
/// Checkpoint entries per pass over every lease (1000 leases an entry).
const ENTRIES_PER_PASS: u64 = (LEASES as u64).div_ceil(1000);

/// This process's CPU time (user + system, all threads). `/proc` counts in
/// USER_HZ, which Linux fixes at 100 for user space.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the parenthesised command name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().expect("tick count"))
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// Resident set size of this process, MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

fn data_applied(node: &Node) -> u64 {
    let r = node.region(DATA_REGION).expect("data region");
    let m = r.raft.metrics();
    let applied = m.borrow().last_applied.map_or(0, |l| l.index);
    applied
}

/// What an idle window cost.
#[derive(Debug)]
struct Idle {
    /// CPU milliseconds per second of wall time.
    cpu_ms_per_s: f64,
    /// Data-region log entries applied during the window.
    entries: u64,
}

/// Waits [`SETTLE`], then measures the process over [`IDLE`].
async fn measure_idle(node: &Node, label: &str) -> Idle {
    tokio::time::sleep(SETTLE).await;
    let (cpu0, applied0, t0) = (cpu_time(), data_applied(node), Instant::now());
    tokio::time::sleep(IDLE).await;
    let (cpu1, applied1, t1) = (cpu_time(), data_applied(node), Instant::now());
    let idle = Idle {
        cpu_ms_per_s: (cpu1 - cpu0).as_secs_f64() * 1000.0 / (t1 - t0).as_secs_f64(),
        entries: applied1 - applied0,
    };
    println!(
        "[{label}] idle {:.1} s: {:.2} CPU ms/s, {} data entries applied, RSS {} MiB",
        (t1 - t0).as_secs_f64(),
        idle.cpu_ms_per_s,
        idle.entries,
        rss_mib()
    );
    idle
}

fn ten_puts(lease: i64) -> TxnRequest {
    TxnRequest {
        success: (0..KEYS_PER_LEASE)
            .map(|k| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: format!("scale/{lease:08}/{k}").into_bytes(),
                    value: b"0123456789abcdef".to_vec(),
                    lease,
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    }
}

/// Grants leases 1..=[`LEASES`] (TTL [`TTL`]) and puts [`KEYS_PER_LEASE`]
/// keys on each, in one Txn per lease, from [`LOADERS`] tasks. Retries
/// tolerate timeouts under contention (a retried grant that already
/// applied answers "exists"; a retried Txn rewrites the same values).
async fn load(node: &Arc<Node>) {
    let (t0, cpu0) = (Instant::now(), cpu_time());
    let next = Arc::new(AtomicI64::new(1));
    let tasks: Vec<_> = (0..LOADERS)
        .map(|_| {
            let (node, next) = (node.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id > LEASES {
                        return;
                    }
                    if id % 20_000 == 0 {
                        println!("  {id} leases granted");
                    }
                    for attempt in 0.. {
                        match node
                            .lease_grant(id, TTL, &cairn_store::Access::Internal)
                            .await
                        {
                            Ok(_) => break,
                            // (cairn_mvcc, which names the rejection, is
                            // not a dependency of this crate.)
                            Err(cairn_store::Error::Rejected(r))
                                if attempt > 0 && format!("{r:?}") == "LeaseExists" =>
                            {
                                break
                            }
                            Err(e) if attempt < 5 => eprintln!("grant {id}: {e}; retrying"),
                            Err(e) => panic!("grant {id}: {e}"),
                        }
                    }
                    let req = ten_puts(id);
                    for attempt in 0.. {
                        match node.txn(&req, &cairn_store::Access::Internal).await {
                            Ok(_) => break,
                            Err(e) if attempt < 5 => eprintln!("txn {id}: {e}; retrying"),
                            Err(e) => panic!("txn {id}: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("loader");
    }
    println!(
        "loaded {LEASES} leases x {KEYS_PER_LEASE} keys in {:.1} s ({:.1} CPU s)",
        t0.elapsed().as_secs_f64(),
        (cpu_time() - cpu0).as_secs_f64()
    );
    let t = node
        .lease_time_to_live(LEASES, true)
        .await
        .unwrap()
        .expect("lease");
    assert_eq!(
        t.keys.len(),
        KEYS_PER_LEASE,
        "keys attached to the last lease"
    );
}

/// A 1-node cluster on `dir`, configured as `InProcessCluster` configures
/// its nodes but with checkpoints every `interval`.
struct SingleNode {
    node: Arc<Node>,
    config: NodeConfig,
    stop_peer: tokio::sync::oneshot::Sender<()>,
}

impl SingleNode {
    async fn start(dir: &std::path::Path, interval: Duration) -> Self {
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_url = format!("http://{}", peer.local_addr().unwrap());
        let config = NodeConfig {
            name: "n1".into(),
            data_dir: dir.join("n1"),
            client_urls: vec![],
            peer_urls: vec![peer_url.clone()],
            initial_cluster: vec![InitialMember {
                name: "n1".into(),
                peer_url,
            }],
            new_cluster: true,
            cluster_token: "lease-scale".into(),
            snapshot_logs: 10_000,
            snapshot_log_bytes: 64 << 20,
            lease_checkpoint_interval: interval,
            read_lease: true,
            corrupt_check_interval: Duration::ZERO,
            peer_tls: None,
            // The cheapest bcrypt: tests measure access, not hashing.
            bcrypt_cost: 4,
            auth_tokens: cairn_store::TokenConfig::default(),
            region_split: Default::default(),
            hibernate_regions: true,
            balance_leaders: true,
            peer_faults: None,
        };
        Self::launch(config, peer).await
    }

    async fn launch(config: NodeConfig, peer: TcpListener) -> Self {
        let node = cairn_testkit::start_node(config.clone()).await;
        let (stop_peer, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cairn_server::serve_peer(node.clone(), peer.into(), async {
            let _ = stopped.await;
        }));
        // Leading, and answering linearizable reads (so applied in its term).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = node
                .region(DATA_REGION)
                .unwrap()
                .raft
                .metrics()
                .borrow()
                .current_leader;
            if leader == Some(node.id) && node.lease_list().await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            node,
            config,
            stop_peer,
        }
    }

    async fn stop(self) -> NodeConfig {
        let _ = self.stop_peer.send(());
        self.node.shutdown().await;
        self.config
    }

    /// Stops this node and starts it again on its data dir and peer
    /// address, checkpointing every `interval`.
    async fn restart(self, interval: Duration) -> Self {
        let mut config = self.stop().await;
        config.new_cluster = false;
        config.lease_checkpoint_interval = interval;
        let addr = config.peer_urls[0]
            .trim_start_matches("http://")
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        let peer = loop {
            match TcpListener::bind(&addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        };
        Self::launch(config, peer).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "load test: 100k leases, 1M keys, minutes in release"]
async fn a_hundred_thousand_idle_leases_cost_no_measurable_cpu() {
    // 1. No leases.
    let dir = tempfile::tempdir().unwrap();
    let n = SingleNode::start(dir.path(), PRODUCTION_INTERVAL).await;
    let empty = measure_idle(&n.node, "no leases").await;
    n.stop().await;
    drop(dir);

    // 2. 100k leases at the production interval: only ticks are left.
    let dir = tempfile::tempdir().unwrap();
    let n = SingleNode::start(dir.path(), PRODUCTION_INTERVAL).await;
    let rss_before = rss_mib();
    load(&n.node).await;
    println!(
        "RSS before leases {rss_before} MiB, after {} MiB",
        rss_mib()
    );
    let production = measure_idle(&n.node, "100k leases, 5 min checkpoints").await;

    // 3. The same leases checkpointed every 2 s.
    let t = Instant::now();
    let n = n.restart(TEST_INTERVAL).await;
    println!("restarted and primed in {:.1} s", t.elapsed().as_secs_f64());
    let checkpointing = measure_idle(&n.node, "100k leases, 2 s checkpoints").await;
    n.stop().await;

    let passes = checkpointing.entries as f64 / ENTRIES_PER_PASS as f64;
    let window_cpu_ms = (checkpointing.cpu_ms_per_s - production.cpu_ms_per_s) * IDLE.as_secs_f64();
    let per_pass_ms = window_cpu_ms / passes.max(1.0);
    let amortised = per_pass_ms / PRODUCTION_INTERVAL.as_secs_f64();
    println!(
        "checkpoint pass over {LEASES} leases ({ENTRIES_PER_PASS} entries): {per_pass_ms:.0} CPU ms \
         ({passes:.1} passes in {} s); every 5 min: {amortised:.2} CPU ms/s",
        IDLE.as_secs()
    );
    println!(
        "idle CPU ms/s: no leases {:.2}; 100k leases {:.2} (+{amortised:.2} amortised checkpoints \
         at 5 min); 100k leases at 2 s checkpoints {:.2}",
        empty.cpu_ms_per_s, production.cpu_ms_per_s, checkpointing.cpu_ms_per_s
    );

    // With nothing due, a tick proposes nothing.
    assert_eq!(production.entries, 0, "idle ticks proposed entries");
    // A pass over all 100k leases every ~2 s (fewer if one outlasts the
    // interval): the checkpoints did run, so the figure above means something.
    assert!(
        passes >= 3.0,
        "checkpoint passes did not run: {checkpointing:?}"
    );
    // The bookkeeping alone: within 2x the empty node plus 2 CPU ms/s
    // (0.2% of a core; /proc counts in steps of 0.5 ms/s over 20 s). A tick
    // that read each lease from the store would cost hundreds.
    let bound = 2.0 * empty.cpu_ms_per_s + 2.0;
    assert!(
        production.cpu_ms_per_s <= bound,
        "100k idle leases cost {:.2} CPU ms/s, bound {bound:.2}",
        production.cpu_ms_per_s
    );
    // With checkpoints amortised over 5 min: within 2x the empty node plus
    // 5 CPU ms/s (0.5% of a core), about twice the measured pass cost; see
    // docs/benchmarks.md for the figures.
    let bound = 2.0 * empty.cpu_ms_per_s + 5.0;
    assert!(
        production.cpu_ms_per_s + amortised <= bound,
        "100k idle leases cost {:.2} + {amortised:.2} CPU ms/s, bound {bound:.2}",
        production.cpu_ms_per_s
    );
}
