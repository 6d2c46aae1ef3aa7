//! A randomized workload whose watch streams are checked against the KV
//! history for etcd's six watch guarantees — ordered, unique, reliable,
//! atomic, resumable (historical starts), bookmarkable (progress) — across a
//! leader change and a compaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::*;
use cairn_store::DATA_REGION;
use cairn_testkit::watch::WatchStream;
use cairn_testkit::{kv, InProcessCluster};

/// One write the clients attempted: its writes and, if acknowledged, its revision.
#[derive(Clone, Debug)]
struct Op {
    writes: Vec<(String, Option<String>)>,
    revision: Option<i64>,
}

/// (revision, key, value or None for delete, prev value)
type Ev = (i64, String, Option<String>, Option<String>);

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

async fn writer(addr: String, id: usize, stop: Instant) -> Vec<Op> {
    let mut client = kv::connect(&addr).await;
    let mut seed = 0x9E3779B97F4A7C15u64 ^ (id as u64 * 7919);
    let mut ops = Vec::new();
    let mut i = 0;
    while Instant::now() < stop {
        i += 1;
        let a = format!("k{}", rng(&mut seed) % 8);
        let b = format!(
            "k{}",
            (rng(&mut seed) % 7 + 1 + a[1..].parse::<u64>().unwrap()) % 8
        );
        let v = format!("w{id}-{i}");
        let (writes, req) = match rng(&mut seed) % 4 {
            0 => (
                vec![(a.clone(), None)],
                Request::RequestDeleteRange(DeleteRangeRequest {
                    key: a.into(),
                    ..Default::default()
                }),
            ),
            1 => {
                // A txn writing two keys at one revision.
                let ops = vec![
                    RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: a.clone().into(),
                            value: format!("{v}a").into(),
                            ..Default::default()
                        })),
                    },
                    RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: b.clone().into(),
                            value: format!("{v}b").into(),
                            ..Default::default()
                        })),
                    },
                ];
                (
                    vec![(a, Some(format!("{v}a"))), (b, Some(format!("{v}b")))],
                    Request::RequestTxn(TxnRequest {
                        success: ops,
                        ..Default::default()
                    }),
                )
            }
            _ => (
                vec![(a.clone(), Some(v.clone()))],
                Request::RequestPut(PutRequest {
                    key: a.into(),
                    value: v.into(),
                    ..Default::default()
                }),
            ),
        };
        let txn = TxnRequest {
            success: vec![RequestOp { request: Some(req) }],
            ..Default::default()
        };
        let revision = match client.txn(txn).await {
            Ok(r) => r.into_inner().header.map(|h| h.revision),
            Err(_) => None,
        };
        ops.push(Op { writes, revision });
    }
    ops
}

/// Reads a stream until the progress response that follows `progress_after`.
/// Collects responses until a progress notification at or above `target`
/// (a watcher that lags — a loaded machine — reports a lower synced
/// revision first; it must get there).
async fn drain(w: &mut WatchStream, target: i64) -> (Vec<WatchResponse>, i64) {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(w.request_progress().await);
        loop {
            let r = w
                .next(Duration::from_secs(20))
                .await
                .expect("stream stalled");
            if r.watch_id == -1 && r.events.is_empty() {
                let bookmark = r.header.unwrap().revision;
                if bookmark >= target || std::time::Instant::now() > deadline {
                    return (out, bookmark);
                }
                break;
            }
            out.push(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn flatten(rs: &[WatchResponse]) -> Vec<Ev> {
    rs.iter()
        .flat_map(|r| r.events.iter())
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            let value = (e.r#type == 0).then(|| String::from_utf8_lossy(&kv.value).into_owned());
            let prev = e
                .prev_kv
                .as_ref()
                .map(|p| String::from_utf8_lossy(&p.value).into_owned());
            (
                kv.mod_revision,
                String::from_utf8_lossy(&kv.key).into_owned(),
                value,
                prev,
            )
        })
        .collect()
}

/// The checks every watcher's stream must pass.
fn check(
    name: &str,
    rs: &[WatchResponse],
    start: i64,
    bookmark: i64,
    ops: &[Op],
    reference: Option<&[Ev]>,
) {
    let events = flatten(rs);
    // Ordered and unique: by revision, and within one in the order the
    // transaction's ops ran (etcd's sub-revisions), as the place of each
    // write in its op tells (every put's value is unique).
    let place: HashMap<(&str, Option<&str>), usize> = ops
        .iter()
        .flat_map(|o| {
            o.writes
                .iter()
                .enumerate()
                .map(|(i, (k, v))| ((k.as_str(), v.as_deref()), i))
        })
        .collect();
    let place_of = |e: &Ev| place.get(&(e.1.as_str(), e.2.as_deref())).copied();
    for w in events.windows(2) {
        let ordered = match w[0].0.cmp(&w[1].0) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => w[0].1 != w[1].1 && place_of(&w[0]) < place_of(&w[1]),
        };
        assert!(
            ordered,
            "{name}: out of order or duplicate: {:?} then {:?}",
            w[0], w[1]
        );
    }
    // Atomic: a revision never spans two responses.
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    for r in rs {
        let revs: BTreeSet<i64> = r
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        for rev in &revs {
            assert!(
                !seen.contains(rev),
                "{name}: revision {rev} split across responses"
            );
        }
        seen.extend(revs);
    }
    // Bookmarkable: nothing after the bookmark was needed to be complete.
    let got: BTreeSet<(i64, String, Option<String>)> = events
        .iter()
        .map(|(r, k, v, _)| (*r, k.clone(), v.clone()))
        .collect();
    // Reliable: every acknowledged write in [start, bookmark] is there.
    for op in ops
        .iter()
        .filter(|o| o.revision.is_some_and(|r| r >= start && r <= bookmark))
    {
        let rev = op.revision.unwrap();
        for (k, v) in &op.writes {
            if v.is_none() {
                // A delete of an absent key is no event.
                continue;
            }
            assert!(
                got.contains(&(rev, k.clone(), v.clone())),
                "{name}: missing acknowledged {k}={v:?} at {rev}"
            );
        }
    }
    // Every event is a write some client made (acknowledged or not).
    let known: HashMap<(String, Option<String>), Option<i64>> = ops
        .iter()
        .flat_map(|o| {
            o.writes
                .iter()
                .map(move |(k, v)| ((k.clone(), v.clone()), o.revision))
        })
        .collect();
    for (rev, k, v, _) in &events {
        match known.get(&(k.clone(), v.clone())) {
            Some(Some(r)) if v.is_some() => {
                assert_eq!(r, rev, "{name}: {k}={v:?} at wrong revision")
            }
            Some(_) => {}
            None => panic!("{name}: event {k}={v:?} at {rev} was never written"),
        }
    }
    // Same events as the reference watcher for the revisions both cover.
    if let Some(reference) = reference {
        let mine: Vec<&Ev> = events.iter().collect();
        let theirs: Vec<&Ev> = reference
            .iter()
            .filter(|e| e.0 >= start && e.0 <= bookmark)
            .collect();
        let strip = |v: &Vec<&Ev>| {
            v.iter()
                .map(|e| (e.0, e.1.clone(), e.2.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip(&mine),
            strip(&theirs),
            "{name}: differs from the reference watcher"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_workload_keeps_all_six_watch_guarantees() {
    let mut c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut k = c.kv(a).await;
    let start = kv::put(&mut k, "k0", "seed").await.unwrap();
    let ops_seed = Op {
        writes: vec![("k0".into(), Some("seed".into()))],
        revision: Some(start),
    };

    // Reference watcher from the first revision, with prev_kv.
    let mut w1 = WatchStream::open(&c.nodes[a].client_addr).await.unwrap();
    w1.create(WatchCreateRequest {
        key: "k".into(),
        range_end: "l".into(),
        start_revision: start,
        prev_kv: true,
        ..Default::default()
    })
    .await;
    assert!(w1.next(Duration::from_secs(5)).await.unwrap().created);

    let stop = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for id in 0..4 {
        let addr = c.nodes[if id % 2 == 0 { a } else { b }].client_addr.clone();
        writers.push(tokio::spawn(writer(addr, id, stop)));
    }
    // Mid-way: the leader dies (watchers and writers are on the survivors).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.stop(leader).await;
    let mut ops = vec![ops_seed];
    for w in writers {
        ops.extend(w.await.unwrap());
    }
    let acked: Vec<i64> = ops.iter().filter_map(|o| o.revision).collect();
    assert!(
        acked.len() > 20,
        "workload made progress: {} acknowledged",
        acked.len()
    );

    // A historical watcher (resumable) on the other node, from the middle.
    let mut sorted = acked.clone();
    sorted.sort();
    let mid = sorted[sorted.len() / 2];
    let mut w2 = WatchStream::open(&c.nodes[b].client_addr).await.unwrap();
    w2.create(WatchCreateRequest {
        key: "k3".into(),
        range_end: "k6".into(),
        start_revision: mid,
        ..Default::default()
    })
    .await;
    assert!(w2.next(Duration::from_secs(5)).await.unwrap().created);

    let max_acked = *sorted.last().unwrap();
    let (r1, bookmark1) = drain(&mut w1, max_acked).await;
    let (r2, bookmark2) = drain(&mut w2, max_acked).await;
    assert!(
        bookmark1 >= max_acked && bookmark2 >= max_acked,
        "bookmarks {bookmark1}, {bookmark2} below {max_acked}"
    );

    check("w1", &r1, start, bookmark1, &ops, None);
    let reference = flatten(&r1);
    // prev_kv is the key's previous value in the reference history.
    let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (rev, key, value, prev) in &reference {
        if let Some(p) = last.get(key) {
            assert_eq!(prev, p, "w1: prev_kv of {key} at {rev}");
        }
        last.insert(key.clone(), value.clone());
    }
    let in_range: Vec<Ev> = reference
        .iter()
        .filter(|e| e.1.as_str() >= "k3" && e.1.as_str() < "k6")
        .cloned()
        .collect();
    let ops_in_range: Vec<Op> = ops
        .iter()
        .map(|o| Op {
            writes: o
                .writes
                .iter()
                .filter(|(k, _)| k.as_str() >= "k3" && k.as_str() < "k6")
                .cloned()
                .collect(),
            revision: o.revision,
        })
        .collect();
    check(
        "w2",
        &r2,
        mid,
        bookmark2.min(bookmark1),
        &ops_in_range,
        Some(&in_range),
    );

    // After a compaction, a watcher starting below it is cancelled with the
    // compaction revision; one starting at it replays the same events.
    let mut k = c.kv(a).await;
    k.compact(CompactionRequest {
        revision: mid,
        physical: true,
    })
    .await
    .unwrap();
    let mut w3 = WatchStream::open(&c.nodes[a].client_addr).await.unwrap();
    w3.create(WatchCreateRequest {
        key: "k".into(),
        range_end: "l".into(),
        start_revision: start,
        ..Default::default()
    })
    .await;
    assert!(w3.next(Duration::from_secs(5)).await.unwrap().created);
    let r = w3.next(Duration::from_secs(5)).await.unwrap();
    assert!(r.canceled && r.compact_revision == mid, "{r:?}");
    w3.create(WatchCreateRequest {
        key: "k".into(),
        range_end: "l".into(),
        start_revision: mid,
        ..Default::default()
    })
    .await;
    assert!(w3.next(Duration::from_secs(5)).await.unwrap().created);
    let (r3, bookmark3) = drain(&mut w3, max_acked).await;
    check(
        "w3",
        &r3,
        mid,
        bookmark3.min(bookmark1),
        &ops,
        Some(&reference),
    );
    c.shutdown().await;
}
