//! A watched idle region is closed beside the log (`node::side_closes`):
//! it writes no Raft entry for its closes, so it sleeps, and a watch over
//! it and a busy region still gets the busy region's events at once, with
//! progress notifications that keep up.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::WatchCreateRequest;
use cairn_store::{Node, DATA_REGION};
use cairn_testkit::watch::WatchStream;
use cairn_testkit::{kv, InProcessCluster};

/// The data region holding `key` on `node`.
fn region_of(node: &Node, key: &[u8]) -> u64 {
    node.regions_overlapping(key, None)[0].0.id
}

/// `region`'s last log index on `member`.
fn last_index(c: &InProcessCluster, member: usize, region: u64) -> Option<u64> {
    c.raft_metrics(member, region).last_log_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watched_idle_region_sleeps_and_its_watch_keeps_up() {
    let mut c = InProcessCluster::start(3).await;
    // A hand-over by the leader balancer would wake the idle region.
    c.set_leader_balance(false);
    c.wait_leader(DATA_REGION).await;
    let mut client = c.kv(0).await;
    kv::put(&mut client, "a", "0").await.unwrap();
    kv::put(&mut client, "z", "0").await.unwrap();
    c.split_at("m").await;
    let idle = region_of(c.node(0), b"z");
    // A watch over both regions, on each member: each asks for closes of
    // the idle region while it stands.
    let mut watches = Vec::new();
    for i in 0..3 {
        let mut w = WatchStream::open(&c.nodes[i].client_addr).await.unwrap();
        w.create(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await;
        assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
        watches.push(w);
    }
    // Closed (it is wanted) and still asleep on every member: closes in the
    // log would wake it four times a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(0..3).all(|i| c.node(i).sleeping_regions().contains(&idle)) {
        assert!(
            Instant::now() < deadline,
            "the watched idle region {idle} never slept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And stays asleep: the members' asks for closes (every second while
    // their watches stand) wake nothing.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for i in 0..3 {
            assert!(
                c.node(i).sleeping_regions().contains(&idle),
                "the watched idle region {idle} woke on member {i}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let index_before = last_index(&c, 0, idle);
    // Writes to the busy region reach every watcher at once: the idle
    // region's resolved revision moves past them without a log entry.
    for n in 1..=5 {
        let put = kv::put(&mut client, "a", &n.to_string()).await.unwrap();
        for (i, w) in watches.iter_mut().enumerate() {
            let started = Instant::now();
            let got = loop {
                let r = w
                    .next(Duration::from_secs(3))
                    .await
                    .unwrap_or_else(|| panic!("watch on member {i}: no event for revision {put}"));
                if let Some(e) = r.events.first() {
                    break e.kv.as_ref().unwrap().mod_revision;
                }
            };
            assert_eq!(got, put, "watch on member {i}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "watch on member {i}: the event of revision {put} took {:?}",
                started.elapsed()
            );
        }
    }
    // A serializable read of the idle region through each member, after a
    // write through it to the busy one, is served by the member at once:
    // its replica is closed past that write (not after a wait for a close
    // in the log, then linearizably).
    for i in 0..3 {
        let mut member = c.kv(i).await;
        kv::put(&mut member, "a", &format!("from {i}"))
            .await
            .unwrap();
        let started = Instant::now();
        let z = kv::get(&mut member, "z", true).await.unwrap();
        assert_eq!(z.as_deref(), Some("0"));
        // It may wait for the idle region's next close (every 250 ms, a
        // TSO and a peer round); the linearizable way is taken only after
        // `SEQUENTIAL_WAIT` (1 s), so an answer within it did not take it.
        assert!(
            started.elapsed() < Duration::from_millis(950),
            "a serializable read of the idle region on member {i} took {:?}",
            started.elapsed()
        );
    }
    for w in watches.iter_mut() {
        loop {
            let r = w.next(Duration::from_secs(3)).await.expect("the events");
            let value = |e: &cairn_api::mvccpb::Event| e.kv.as_ref().unwrap().value.clone();
            if r.events.iter().any(|e| value(e) == b"from 2") {
                break;
            }
        }
    }
    // A progress notification reports at least the last write.
    let last = kv::put(&mut client, "a", "last").await.unwrap();
    for (i, w) in watches.iter_mut().enumerate() {
        assert!(w.next(Duration::from_secs(3)).await.is_some());
        assert!(w.request_progress().await);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = w
                .next(Duration::from_secs(3))
                .await
                .expect("a progress notification");
            if r.events.is_empty() && r.header.as_ref().unwrap().revision >= last {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "watch on member {i}: no progress to {last}"
            );
            assert!(w.request_progress().await);
        }
    }
    assert_eq!(
        last_index(&c, 0, idle),
        index_before,
        "the idle region wrote entries while it was watched"
    );
    c.shutdown().await;
}
