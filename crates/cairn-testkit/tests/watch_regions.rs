//! A watch over several regions opened while one of them runs ahead of
//! the others (its resolved revision past theirs) misses none of its
//! events: those between the lowest resolved revision and its own were
//! published before the watch subscribed, so they come from history. Also:
//! compaction across regions, closes of idle regions, and a transaction's
//! events in the order its ops ran, live and replayed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::{RangeRequest, WatchCreateRequest};
use cairn_store::DATA_REGION;
use cairn_testkit::watch::WatchStream;
use cairn_testkit::{kv, InProcessCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_opened_while_one_region_runs_ahead_misses_nothing() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    // Writes in the first region only; the other moves on by closed
    // timestamps alone, a few times a second.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut client = c.kv(0).await;
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                kv::put(&mut client, &format!("a{n:05}"), "v")
                    .await
                    .unwrap();
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut watches = Vec::new();
    for i in 0..5 {
        let mut w = WatchStream::open(&c.nodes[i % 3].client_addr)
            .await
            .unwrap();
        w.create(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await;
        let created = w.next(Duration::from_secs(5)).await.unwrap();
        assert!(created.created);
        watches.push((w, created.header.unwrap().revision));
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let mut client = c.kv(0).await;
    let written: Vec<i64> = client
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .iter()
        .map(|kv| kv.mod_revision)
        .collect();
    for (i, (mut w, from)) in watches.into_iter().enumerate() {
        let want: Vec<i64> = written.iter().copied().filter(|r| *r > from).collect();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while got.len() < want.len() && Instant::now() < deadline {
            if let Some(r) = w.next(Duration::from_secs(2)).await {
                got.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
            }
        }
        assert_eq!(got, want, "watch {i} from revision {from}");
    }
}

/// With several regions a compaction is the store's: at any revision a
/// client saw (not only the first region's), again and again while the
/// first region sits idle, refused at or below the last one and above the
/// store's revision — and a watch from below it is told it is compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compaction_across_regions_is_the_stores() {
    use cairn_api::etcdserverpb::CompactionRequest;
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    kv::put(&mut c.kv(0).await, "a", "first").await.unwrap();
    c.split_at("m").await;
    let mut client = c.kv(1).await;
    let mut last = 0;
    for round in 0..3 {
        for i in 0..5 {
            last = kv::put(&mut client, &format!("z{i}"), &round.to_string())
                .await
                .unwrap();
        }
        client
            .compact(CompactionRequest {
                revision: last,
                physical: true,
            })
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    let again = client
        .compact(CompactionRequest {
            revision: last,
            physical: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        again.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let future = client
        .compact(CompactionRequest {
            revision: last + 1_000_000,
            physical: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        future.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    // The idle first region is compacted too: its key reads on.
    assert_eq!(
        kv::get(&mut client, "a", false).await.unwrap().as_deref(),
        Some("first")
    );
    let mut w = WatchStream::open(&c.nodes[2].client_addr).await.unwrap();
    w.create(WatchCreateRequest {
        key: vec![0],
        range_end: vec![0],
        start_revision: last - 1,
        ..Default::default()
    })
    .await;
    // Created first, as etcd answers; then told.
    let created = w.next(Duration::from_secs(5)).await.unwrap();
    assert!(created.created, "{created:?}");
    let r = w.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((r.compact_revision, r.canceled), (last, true), "{r:?}");
}

/// An idle region's leader closes timestamps in it only while someone
/// waits for its revision to move (`node::closes`): not while nobody
/// watches it, but while a watch stands — whose progress notifications
/// then reach writes in another region — and not again once the watch
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_region_is_closed_only_while_watched() {
    let mut c = InProcessCluster::start(3).await;
    // A hand-over by the leader balancer would move the idle region.
    c.set_leader_balance(false);
    c.wait_leader(DATA_REGION).await;
    let mut client = c.kv(0).await;
    kv::put(&mut client, "z", "0").await.unwrap();
    c.split_at("m").await;
    // The revision each member's replica of the idle region has resolved
    // (closes move it, in the log or beside it).
    let resolved = || -> Vec<i64> {
        (0..3)
            .map(|i| {
                c.node(i).regions_overlapping(b"z", None)[0]
                    .0
                    .shared
                    .resolved()
            })
            .collect()
    };
    // Nothing is asked for after the split's own reads have gone quiet.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = resolved();
    for n in 0..10 {
        kv::put(&mut client, &format!("a{n}"), "v").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(resolved(), before, "an unwatched idle region was closed");
    // A watch on it: its progress reaches a write in the other region.
    let mut w = WatchStream::open(&c.nodes[1].client_addr).await.unwrap();
    w.create(WatchCreateRequest {
        key: b"z".to_vec(),
        progress_notify: false,
        ..Default::default()
    })
    .await;
    assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
    let written = kv::put(&mut client, "a", "1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(w.request_progress().await);
        let at = w
            .next(Duration::from_secs(2))
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
        if at >= written {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "progress stayed at {at}, below {written}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(resolved(), before, "a watched idle region was not closed");
    // The watch gone, closes stop once the last ask is old.
    drop(w);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = resolved();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(resolved(), after, "closes went on without a watch");
    c.shutdown().await;
}

/// A watch over several regions created from now starts at the store's
/// newest revision, not at an unwatched idle region's last write
/// (`Node::catch_up_closes`): no event written before it was created is
/// replayed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_now_over_an_idle_region_replays_nothing() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let mut client = c.kv(0).await;
    kv::put(&mut client, "z", "0").await.unwrap();
    c.split_at("m").await;
    // Long enough that nobody's asks for closes of "z"'s region remain.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut last = 0;
    for n in 0..5 {
        last = kv::put(&mut client, &format!("a{n}"), "v").await.unwrap();
    }
    let mut w = WatchStream::open(&c.nodes[1].client_addr).await.unwrap();
    w.create(WatchCreateRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    })
    .await;
    let created = w.next(Duration::from_secs(5)).await.unwrap();
    assert!(created.created);
    let at = created.header.unwrap().revision;
    assert!(at >= last, "created at {at}, below the last write {last}");
    if let Some(r) = w.next(Duration::from_secs(2)).await {
        assert!(r.events.is_empty(), "replayed {:?}", r.events);
    }
    c.shutdown().await;
}

/// The keys of the events a watch gets until it has `n` of them.
async fn event_keys(w: &mut WatchStream, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < n && Instant::now() < deadline {
        if let Some(r) = w.next(Duration::from_secs(2)).await {
            got.extend(
                r.events
                    .iter()
                    .map(|e| String::from_utf8(e.kv.as_ref().unwrap().key.clone()).unwrap()),
            );
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transactions_events_arrive_in_the_order_its_ops_ran() {
    use cairn_api::etcdserverpb::request_op::Request;
    use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let mut client = c.kv(0).await;
    for k in ["b", "c", "p"] {
        kv::put(&mut client, k, "0").await.unwrap();
    }
    c.split_at("m").await;
    let mut live = WatchStream::everything(&c.nodes[1].client_addr, 0).await;
    // Across both regions, its ops out of key order, and a DeleteRange
    // whose keys lie in both: etcd numbers the changes in the order the
    // ops ran (a DeleteRange's keys in key order), and sends them so.
    let put = |k: &str| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.into(),
            value: b"1".to_vec(),
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        success: vec![
            put("z"),
            put("a"),
            RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"b".to_vec(),
                    range_end: b"q".to_vec(),
                    ..Default::default()
                })),
            },
            put("0"),
        ],
        ..Default::default()
    };
    let answer = client.txn(txn).await.unwrap().into_inner();
    let rev = answer.header.unwrap().revision;
    let want = ["z", "a", "b", "c", "p", "0"];
    assert_eq!(event_keys(&mut live, want.len()).await, want, "live");
    // Replayed from history, on another member, in the same order.
    let mut replay = WatchStream::everything(&c.nodes[2].client_addr, rev).await;
    assert_eq!(event_keys(&mut replay, want.len()).await, want, "replayed");
    c.shutdown().await;
}

/// A watch from now on a member that answered a write starts above that
/// write, even while the member's own replica of the write's region has not
/// applied it yet: etcd's member applies every write it answers before it
/// takes a watch, so a client that wrote through it and then watches from
/// now is never sent its own, older write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_now_starts_above_the_writes_its_member_answered() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    // Followers apply late.
    c.delay_messages(150);
    for i in 0..9 {
        let node = i % 3;
        let mut client = c.kv(node).await;
        let rev = kv::put(&mut client, &format!("z{i}"), "v").await.unwrap();
        let mut w = WatchStream::open(&c.nodes[node].client_addr).await.unwrap();
        w.create(WatchCreateRequest {
            key: b"z".to_vec(),
            range_end: b"{".to_vec(),
            ..Default::default()
        })
        .await;
        let created = w.next(Duration::from_secs(10)).await.unwrap();
        assert!(created.created);
        let from = created.header.unwrap().revision;
        assert!(
            from >= rev,
            "node {node} answered a put at {rev}, then a watch from now started at {from}"
        );
    }
    c.heal();
    c.shutdown().await;
}

/// A watch over several regions gets each event without waiting for the
/// idle regions' next closes (`close_hurry`): the watch names the regions
/// holding its events back, and their leaders close them at once. The
/// cadence of closes is set to 30 s here, so an event that waited for it
/// would come 30 s late, not a few milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_over_several_regions_gets_each_event_without_waiting_for_idle_ones() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    for i in 0..3 {
        c.node(i).set_close_every(Duration::from_secs(30));
    }
    c.split_at("h").await;
    c.split_at("p").await;
    let mut client = c.kv(0).await;
    let mut watches = Vec::new();
    for i in 0..3 {
        watches.push(WatchStream::everything(&c.nodes[i].client_addr, 0).await);
    }
    let mut worst = Duration::ZERO;
    let mut waits = Vec::new();
    // Each put in one region, the others idle; the busy one moves round
    // them, so each member waits on regions led here and elsewhere.
    for n in 0..12 {
        let key = format!("{}{n:02}", ["a", "k", "t"][n % 3]);
        let sent = Instant::now();
        let rev = kv::put(&mut client, &key, "v").await.unwrap();
        for (i, w) in watches.iter_mut().enumerate() {
            let r = w
                .next(Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("member {i}: no event for {key} within 3 s"));
            let got: Vec<i64> = r
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision)
                .collect();
            assert_eq!(got, [rev], "member {i}");
            worst = worst.max(sent.elapsed());
        }
        waits.push(sent.elapsed());
    }
    waits.sort();
    eprintln!(
        "put to the last watch's event: median {:?}, worst {worst:?}",
        waits[waits.len() / 2]
    );
    c.shutdown().await;
}
