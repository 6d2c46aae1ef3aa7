//! Regions that split by themselves (issue 17, phase 2): past
//! `--region-split-bytes` at the key that halves them, and past
//! `--region-split-qps` at the key that divides their writes. Every key
//! stays readable through every node, and the regions tile the keyspace.

use std::time::{Duration, Instant};

use cairn_store::{Node, SplitPolicy};
use cairn_testkit::{kv, InProcessCluster};

use cairn_testkit::region_ranges as ranges;

/// True when `ranges` cover every key once: from the empty key, each one
/// starting where the one before ended, the last to the end.
fn tiles(ranges: &[(Vec<u8>, Vec<u8>)]) -> bool {
    let mut at: &[u8] = b"";
    for (i, (s, e)) in ranges.iter().enumerate() {
        if s.as_slice() != at || (e.is_empty() && i + 1 != ranges.len()) {
            return false;
        }
        at = e;
    }
    !ranges.is_empty() && at.is_empty()
}

#[test]
fn tiling_is_checked() {
    let r = |s: &str, e: &str| (s.as_bytes().to_vec(), e.as_bytes().to_vec());
    assert!(tiles(&[r("", "")]));
    assert!(tiles(&[r("", "m"), r("m", "")]));
    assert!(!tiles(&[r("", "m"), r("n", "")]), "a gap");
    assert!(!tiles(&[r("", "m")]), "not to the end");
    assert!(!tiles(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_split_by_size_until_each_is_under_the_limit() {
    const LIMIT: u64 = 8 << 10;
    let c = InProcessCluster::start_splitting(
        3,
        SplitPolicy {
            bytes: LIMIT,
            ..SplitPolicy::default()
        },
    )
    .await;
    c.wait_leader(cairn_store::DATA_REGION).await;
    let value = "v".repeat(100);
    let keys: Vec<String> = (0..600).map(|i| format!("key/{i:04}")).collect();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(c.kv(i).await);
    }
    for (i, k) in keys.iter().enumerate() {
        kv::put(&mut clients[i % 3], k, &value)
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    // About 600 × 130 bytes: at most 8 KiB a region is ten or more.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reports = c.node(0).region_reports().await.unwrap();
        let small = reports.iter().all(|r| r.approximate_bytes <= LIMIT);
        let settled = (0..3).all(|i| ranges(c.node(i)) == ranges(c.node(0)));
        if small && settled && tiles(&ranges(c.node(0))) {
            assert!(reports.len() >= 8, "{} regions", reports.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions never all under {LIMIT} bytes: {:?}",
            reports
                .iter()
                .map(|r| (
                    String::from_utf8_lossy(&r.start).into_owned(),
                    r.approximate_bytes
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every key, through every node, linearizably and from its replica.
    for (i, client) in clients.iter_mut().enumerate() {
        for k in &keys {
            for serializable in [false, true] {
                let got = kv::get(client, k, serializable).await.unwrap();
                assert_eq!(got.as_deref(), Some(value.as_str()), "{k} via node {i}");
            }
        }
    }
    // And writes go on in every region.
    for (i, k) in keys.iter().enumerate().step_by(37) {
        kv::put(&mut clients[i % 3], k, "after").await.unwrap();
        assert_eq!(
            kv::get(&mut clients[(i + 1) % 3], k, false)
                .await
                .unwrap()
                .as_deref(),
            Some("after")
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_region_splits_between_its_hot_keys() {
    let c = InProcessCluster::start_splitting(
        3,
        SplitPolicy {
            qps: 20,
            ..SplitPolicy::default()
        },
    )
    .await;
    c.wait_leader(cairn_store::DATA_REGION).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, key) in ["hot/a", "hot/b", "hot/a", "hot/b"].into_iter().enumerate() {
        let mut client = c.kv(i % 3).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = kv::put(&mut client, key, "v").await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    let split_between = |n: &Node| {
        let r = ranges(n);
        let holder = |k: &[u8]| {
            r.iter()
                .position(|(s, e)| s.as_slice() <= k && (e.is_empty() || k < e.as_slice()))
        };
        r.len() >= 2 && holder(b"hot/a") != holder(b"hot/b")
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(0..3).all(|i| split_between(c.node(i))) {
        assert!(
            Instant::now() < deadline,
            "no load split: {:?}",
            ranges(c.node(0))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(tiles(&ranges(c.node(0))));
    let mut client = c.kv(2).await;
    for k in ["hot/a", "hot/b"] {
        assert_eq!(
            kv::get(&mut client, k, false).await.unwrap().as_deref(),
            Some("v")
        );
    }
    c.shutdown().await;
}

/// Reads across regions keep being answered while the regions they cross
/// split every few puts: a read that meets a split retries, and must not
/// starve behind the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_across_regions_are_answered_while_they_split_every_few_puts() {
    answered_while_splitting(Read::Range).await;
}

/// The same for read-only Txns whose ranges cross the splitting regions
/// (answered at one timestamp, `txn_read_across`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_txns_across_regions_are_answered_while_they_split_every_few_puts() {
    answered_while_splitting(Read::Txn).await;
}

/// And backups (`Maintenance/Snapshot`) of the whole store, taken while
/// every region, the first one too, takes writes and splits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_are_taken_while_the_regions_split_every_few_puts() {
    answered_while_splitting(Read::Backup).await;
}

/// And `HashKV` of the whole store (the corruption check's hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashes_are_taken_while_the_regions_split_every_few_puts() {
    answered_while_splitting(Read::Hash).await;
}

/// What [`answered_while_splitting`] reads the span with.
#[derive(Clone, Copy)]
enum Read {
    /// Prefix Ranges, linearizable and serializable in turn.
    Range,
    /// Read-only Txns: a compare on one key, the prefix ranged in either
    /// branch.
    Txn,
    /// A backup of the whole store, streamed to its end.
    Backup,
    /// `HashKV` of the whole store at its newest revision.
    Hash,
}

/// A read-only Txn over every key under `load/`.
async fn txn_read(
    client: &mut cairn_api::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
) -> Result<(), tonic::Status> {
    use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use cairn_api::etcdserverpb::request_op::Request;
    use cairn_api::etcdserverpb::{Compare, RangeRequest, RequestOp, TxnRequest};
    let range = || RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: b"load/".to_vec(),
            range_end: kv::prefix_end(b"load/"),
            ..Default::default()
        })),
    };
    client
        .txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Version as i32,
                key: b"load/5000/0".to_vec(),
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![range()],
            failure: vec![range()],
        })
        .await
        .map(|_| ())
}

/// A backup through `channel`, streamed to its end: its size.
async fn backup(channel: tonic::transport::Channel) -> Result<usize, tonic::Status> {
    use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
    use cairn_api::etcdserverpb::SnapshotRequest;
    let mut stream = MaintenanceClient::new(channel)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let mut bytes = 0;
    while let Some(m) = stream.message().await? {
        bytes += m.blob.len();
    }
    Ok(bytes)
}

/// One of [`answered_while_splitting`]'s runs at a time: two at once on
/// two cores would halve each one's margin.
static SPLITTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two writers grow the regions of `load/` past 4 KiB every few puts
/// while reads of the whole span, through every node in turn, must each
/// be answered.
async fn answered_while_splitting(read: Read) {
    let _alone = SPLITTING.lock().await;
    let c = InProcessCluster::start_splitting(
        3,
        SplitPolicy {
            bytes: 4 << 10,
            ..SplitPolicy::default()
        },
    )
    .await;
    c.wait_leader(cairn_store::DATA_REGION).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2usize {
        let mut client = c.kv(w).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let value = "v".repeat(1024);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Keys spread over the span, so every region grows; one in
                // eight below it, in the first region (which holds the
                // leases, and whose revision a backup chases).
                let k = if n.is_multiple_of(8) {
                    format!("first/{w}")
                } else {
                    format!("load/{:04}/{w}", n.wrapping_mul(7919) % 10_000)
                };
                let _ = kv::put(&mut client, &k, &value).await;
                n += 1;
            }
        }));
    }
    let mut failures = Vec::new();
    let (mut served, mut slowest) = (0, Duration::ZERO);
    let until = Instant::now() + Duration::from_secs(20);
    let mut i = 0usize;
    while Instant::now() < until {
        let mut client = c.kv(i % 3).await;
        let serializable = i.is_multiple_of(2);
        i += 1;
        let t = Instant::now();
        let answer = match read {
            Read::Range => kv::prefix(&mut client, "load/", serializable)
                .await
                .map(|_| ())
                .map_err(|e| format!("serializable {serializable}: {e}")),
            Read::Txn => txn_read(&mut client).await.map_err(|e| e.to_string()),
            Read::Backup => {
                let channel = cairn_testkit::secured::channel(&c.nodes[i % 3].client_addr);
                match tokio::time::timeout(Duration::from_secs(30), backup(channel)).await {
                    Ok(Ok(bytes)) if bytes > 0 => Ok(()),
                    Ok(Ok(_)) => Err("an empty backup".to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no backup within 30 s".to_string()),
                }
            }
            Read::Hash => {
                use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
                use cairn_api::etcdserverpb::HashKvRequest;
                let channel = cairn_testkit::secured::channel(&c.nodes[i % 3].client_addr);
                MaintenanceClient::new(channel)
                    .hash_kv(HashKvRequest { revision: 0 })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        match answer {
            Ok(()) => served += 1,
            Err(e) => failures.push(e),
        }
        slowest = slowest.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let regions = ranges(c.node(0)).len();
    assert!(
        regions >= 20,
        "only {regions} regions: the test split too little"
    );
    assert!(
        failures.is_empty(),
        "{} of {} reads failed ({regions} regions), the first: {}; slowest {slowest:?}",
        failures.len(),
        failures.len() + served,
        failures[0]
    );
    eprintln!("{served} reads over {regions} regions, slowest {slowest:?}");
    c.shutdown().await;
}
