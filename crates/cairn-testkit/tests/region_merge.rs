//! Regions that merge (issue 17, section 2): a region frozen and absorbed
//! by its left neighbour on every member — keys, revisions and the
//! directory carried over, writes and watches going on across it, a
//! restart after it — a merge that cannot finish (a member cut off)
//! abandoned and rolled back, then done once the member is back, and a
//! freeze whose driver died ended by the merge checker while watches of
//! its keys wait and miss nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::{RangeRequest, WatchCreateRequest};
use cairn_store::{DATA_REGION, META_REGION};
use cairn_testkit::watch::WatchStream;
use cairn_testkit::{kv, region_ranges as ranges, InProcessCluster};

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The regions after the middle one of `["", m, t, ""]` merged away.
fn merged() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![(Vec::new(), b"t".to_vec()), (b"t".to_vec(), Vec::new())]
}

async fn all_keys(c: &InProcessCluster, i: usize) -> Vec<(String, i64)> {
    let mut client = c.kv(i).await;
    client
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
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merged_region_keeps_its_keys_and_watches_see_every_write_once() {
    let mut c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    c.split_at("t").await;
    let child = c.node(0).route(b"m").unwrap().id;
    assert_ne!(child, DATA_REGION);
    // A watcher of everything, through each member.
    let mut watches = Vec::new();
    for i in 0..3 {
        let w = WatchStream::open(&c.nodes[i].client_addr).await.unwrap();
        w.create(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await;
        watches.push(w);
    }
    for w in &mut watches {
        assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
    }
    // Writes on both sides all along, through every member.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..3 {
        let stop = stop.clone();
        let mut client = c.kv(i).await;
        writers.push(tokio::spawn(async move {
            let mut n = 0u32;
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let side = ["a", "q", "x"][n as usize % 3];
                let rev = kv::put(&mut client, &format!("{side}{i}-{n:04}"), "v")
                    .await
                    .unwrap();
                assert!(rev > last, "revision {rev} after {last}");
                last = rev;
                n += 1;
            }
            n
        }));
    }
    // Serializable reads of the absorbed region's keys, through every
    // member: a read routed to it as it goes is routed again, never
    // answered with an error (etcd has no "epoch mismatch" to tell).
    let mut readers = Vec::new();
    for i in 0..3 {
        let stop = stop.clone();
        let mut client = c.kv(i).await;
        readers.push(tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                kv::prefix(&mut client, "q", true).await.unwrap();
                kv::get(&mut client, "q0-0001", true).await.unwrap();
                reads += 1;
            }
            reads
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let absorbed = c.node(1).merge_regions(DATA_REGION).await.unwrap();
    assert_eq!(absorbed, child);
    for i in 0..3 {
        wait_for("every member hosts two regions, and not the child", || {
            ranges(c.node(i)) == merged() && c.node(i).region(child).is_err()
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    let keys = all_keys(&c, 2).await;
    assert_eq!(
        keys.len() as u32,
        written,
        "every acknowledged write is there"
    );
    for i in 0..2 {
        assert_eq!(all_keys(&c, i).await, keys, "member {i} agrees");
    }

    // Every watcher saw every write exactly once, in revision order.
    let mut want: Vec<i64> = keys.iter().map(|(_, rev)| *rev).collect();
    want.sort_unstable();
    for (i, w) in watches.iter_mut().enumerate() {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while got.len() < want.len() && Instant::now() < deadline {
            if let Some(r) = w.next(Duration::from_secs(2)).await {
                got.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
            }
        }
        assert_eq!(got, want, "watch through member {i}");
    }

    // The directory forgets the child; a restart hosts only the merged
    // region, and serves the child's keys from it.
    wait_for("the directory drops the child", || {
        c.node(0)
            .region(META_REGION)
            .unwrap()
            .shared
            .with_applied(|a| !a.regions.contains_key(&child))
    })
    .await;
    c.stop(2).await;
    c.restart(2).await;
    assert_eq!(ranges(c.node(2)), merged());
    assert!(c.node(2).region(child).is_err());
    let mut client = c.kv(2).await;
    let rev = kv::put(&mut client, "q-after", "v").await.unwrap();
    assert!(rev > keys.iter().map(|(_, r)| *r).max().unwrap());
    assert_eq!(
        kv::get(&mut client, "q1-0001", false)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_a_member_cannot_join_is_rolled_back_and_done_later() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    c.split_at("t").await;
    let child = c.node(0).route(b"m").unwrap().id;
    let mut client = c.kv(0).await;
    kv::put(&mut client, "q", "1").await.unwrap();
    // Member 2 cut off: it never applies the freeze, so the merge is
    // abandoned — the target's epoch moves, the child thaws and serves.
    let leader = c.wait_leader(DATA_REGION).await;
    let driver = (0..3).find(|&i| i != 2 && i != leader).unwrap_or(leader);
    c.isolate(2);
    let epoch = c
        .node(driver)
        .region(DATA_REGION)
        .unwrap()
        .shared
        .range()
        .epoch;
    let err = c.node(driver).merge_regions(DATA_REGION).await.unwrap_err();
    assert!(
        c.node(driver).region(child).is_ok(),
        "not absorbed after {err}"
    );
    let mut client = c.kv(driver).await;
    kv::put(&mut client, "q", "2").await.unwrap();
    wait_for("the target's epoch moved past the plan", || {
        c.node(driver)
            .region(DATA_REGION)
            .unwrap()
            .shared
            .range()
            .epoch
            > epoch
    })
    .await;
    assert_eq!(c.node(driver).route(b"q").unwrap().id, child);

    // Member 2 back: it catches up, and the merge goes through.
    c.heal();
    wait_for("member 2 has the child's write", || {
        c.node(2)
            .region(child)
            .is_ok_and(|r| r.shared.merge_frozen().is_none() && r.shared.revisions().current >= 2)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.node(driver).merge_regions(DATA_REGION).await {
            Ok(absorbed) => {
                assert_eq!(absorbed, child);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never merged: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for i in 0..3 {
        wait_for("every member hosts two regions", || {
            ranges(c.node(i)) == merged()
        })
        .await;
        let mut client = c.kv(i).await;
        assert_eq!(
            kv::get(&mut client, "q", false).await.unwrap().as_deref(),
            Some("2"),
            "through member {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freeze_whose_driver_died_is_ended_and_watches_lose_nothing_meanwhile() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    c.split_at("t").await;
    let middle = c.node(0).route(b"m").unwrap().id;
    let mut watches = Vec::new();
    for (i, (key, end)) in [(&b"a"[..], &b"z"[..]), (b"n", b"o"), (b"m", b"")]
        .into_iter()
        .enumerate()
    {
        let w = WatchStream::open(&c.nodes[i].client_addr).await.unwrap();
        w.create(WatchCreateRequest {
            key: key.to_vec(),
            range_end: if end.is_empty() {
                vec![0]
            } else {
                end.to_vec()
            },
            ..Default::default()
        })
        .await;
        watches.push(w);
    }
    for w in &mut watches {
        assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
    }
    let mut client = c.kv(1).await;
    let mut revs = vec![("n1", kv::put(&mut client, "n1", "before").await.unwrap())];
    // The middle region frozen to merge into the first, by a driver that
    // then "dies": its keys route nowhere, the others take writes.
    let (source, _) = c.node(2).freeze_for_merge(DATA_REGION).await.unwrap();
    assert_eq!(source, middle);
    for k in ["b1", "u1"] {
        revs.push((k, kv::put(&mut client, k, "during").await.unwrap()));
    }
    // Its leader's merge checker ends it (10 s frozen, checked every 2 s):
    // the first region's epoch moves, the middle one thaws.
    wait_for("the middle region thaws", || {
        (0..3).all(|i| {
            c.node(i)
                .region(middle)
                .is_ok_and(|r| r.shared.merge_frozen().is_none() && !r.shared.range().is_empty())
        })
    })
    .await;
    for k in ["n2", "b2", "u2"] {
        revs.push((k, kv::put(&mut client, k, "after").await.unwrap()));
    }
    let wanted = |from: &str, to: &str| -> Vec<i64> {
        let mut v: Vec<i64> = revs
            .iter()
            .filter(|(k, _)| *k >= from && (to.is_empty() || *k < to))
            .map(|(_, r)| *r)
            .collect();
        v.sort_unstable();
        v
    };
    for (i, (from, to)) in [("a", "z"), ("n", "o"), ("m", "")].into_iter().enumerate() {
        let want = wanted(from, to);
        let w = &mut watches[i];
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while got.len() < want.len() && Instant::now() < deadline {
            if let Some(r) = w.next(Duration::from_secs(2)).await {
                got.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
            }
        }
        assert_eq!(got, want, "watch {i} of [{from}, {to})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_of_both_regions_on_one_stream_see_their_keys_after_a_merge() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    c.split_at("t").await;
    let mut w = WatchStream::open(&c.nodes[1].client_addr).await.unwrap();
    let mut ids = Vec::new();
    for (key, end) in [("a", "b"), ("n", "o")] {
        w.create(WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        })
        .await;
        let r = w.next(Duration::from_secs(5)).await.unwrap();
        assert!(r.created);
        ids.push(r.watch_id);
    }
    let mut client = c.kv(0).await;
    c.node(0).merge_regions(DATA_REGION).await.unwrap();
    wait_for("member 1 has merged", || ranges(c.node(1)) == merged()).await;
    // One watcher per side, then one more of the absorbed keys on the same
    // stream: each sees its keys' writes after the merge.
    for k in ["a1", "n1"] {
        kv::put(&mut client, k, "v").await.unwrap();
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(r) = w.next(Duration::from_secs(1)).await {
            for e in &r.events {
                seen.push((r.watch_id, e.kv.as_ref().unwrap().key.clone()));
            }
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![(ids[0], b"a1".to_vec()), (ids[1], b"n1".to_vec())]
    );
    w.create(WatchCreateRequest {
        key: b"n".to_vec(),
        range_end: b"o".to_vec(),
        ..Default::default()
    })
    .await;
    let r = w.next(Duration::from_secs(5)).await.unwrap();
    assert!(r.created);
    let third = r.watch_id;
    kv::put(&mut client, "n2", "v").await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < deadline {
        if let Some(r) = w.next(Duration::from_secs(1)).await {
            for e in &r.events {
                got.push((r.watch_id, e.kv.as_ref().unwrap().key.clone()));
            }
        }
    }
    got.sort();
    assert_eq!(got, vec![(ids[1], b"n2".to_vec()), (third, b"n2".to_vec())]);
}

/// A compaction at the newest revision while a region of a watch's group is
/// frozen: the other regions compact, the frozen one refuses, and the
/// watch's events above its position wait for the frozen region. When the
/// merge is ended the watch regroups; it must go on from where it was (its
/// held events carried across), not be cancelled as compacted — etcd never
/// cancels a watcher that has kept up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compaction_at_the_head_while_a_watched_region_is_frozen_cancels_no_watch() {
    compaction_while_frozen(Then::Thaw).await;
}

/// The same, with the watch regrouped by a split of a compacted region
/// while the other is still frozen: its members move to a new group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_after_a_compaction_at_the_head_while_a_watched_region_is_frozen_cancels_no_watch()
{
    compaction_while_frozen(Then::SplitAndThaw).await;
}

/// The same, with the merge completed: the target absorbs the frozen
/// region, whose keys then have no history below the compaction. The
/// frozen region wrote nothing since it froze, and the target writes its
/// keys only above what it had resolved when it absorbed them, so the
/// watch has every event of them up to there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_completed_after_a_compaction_at_the_head_cancels_no_watch() {
    compaction_while_frozen(Then::Absorb).await;
}

/// How the merge under a compaction at the head ends.
#[derive(PartialEq)]
enum Then {
    Thaw,
    SplitAndThaw,
    Absorb,
}

async fn compaction_while_frozen(then: Then) {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    c.split_at("t").await;
    let middle = c.node(0).route(b"m").unwrap().id;
    // Two watchers on one stream, of the same regions: both move together
    // (to one new group, after the split).
    let mut w = WatchStream::open(&c.nodes[1].client_addr).await.unwrap();
    for (id, (key, end)) in [(&b"a"[..], &b"z"[..]), (b"b", b"y")]
        .into_iter()
        .enumerate()
    {
        w.create(WatchCreateRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            prev_kv: true,
            watch_id: id as i64 + 1,
            ..Default::default()
        })
        .await;
        assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
    }
    let mut client = c.kv(1).await;
    let mut revs = vec![kv::put(&mut client, "n1", "before").await.unwrap()];
    let (source, freeze) = c.node(2).freeze_for_merge(DATA_REGION).await.unwrap();
    assert_eq!(source, middle);
    // Each key written twice: the compaction drops the first version.
    for (k, v) in [("b1", "x"), ("u1", "x"), ("b1", "y"), ("u1", "y")] {
        revs.push(kv::put(&mut client, k, v).await.unwrap());
    }
    let head = *revs.last().unwrap();
    client
        .compact(cairn_api::etcdserverpb::CompactionRequest {
            revision: head,
            physical: true,
        })
        .await
        .unwrap();
    if then == Then::SplitAndThaw {
        c.split_at("v").await;
        revs.push(kv::put(&mut client, "w1", "split").await.unwrap());
    }
    if then == Then::Absorb {
        c.node(2).absorb_frozen(source, &freeze).await.unwrap();
        wait_for("the middle region is absorbed everywhere", || {
            (0..3).all(|i| c.node(i).region(middle).is_err())
        })
        .await;
    } else {
        wait_for("the middle region thaws", || {
            (0..3).all(|i| {
                c.node(i).region(middle).is_ok_and(|r| {
                    r.shared.merge_frozen().is_none() && !r.shared.range().is_empty()
                })
            })
        })
        .await;
    }
    for k in ["n2", "b2", "u2"] {
        revs.push(kv::put(&mut client, k, "after").await.unwrap());
    }
    // Every key written lies in both watchers' spans.
    let mut got = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.iter().any(|g| g.len() < revs.len()) && Instant::now() < deadline {
        if let Some(r) = w.next(Duration::from_secs(2)).await {
            let of = &mut got[r.watch_id as usize - 1];
            assert!(
                !r.canceled,
                "watch {} cancelled (compact_revision {}, reason {:?}) after {of:?}",
                r.watch_id, r.compact_revision, r.cancel_reason
            );
            of.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
    }
    assert_eq!(got, [revs.clone(), revs]);
}

/// A member that missed the split bearing the target (it caught up on the
/// parent by a snapshot taken after it) hosts the source but not the
/// target until it adopts it. A merge then waits for it — the freeze is
/// not counted as applied there — and is abandoned, rather than absorbing
/// the source elsewhere: there, the frozen source would block adopting the
/// target (their keys overlap), and both regions' keys would be held by
/// no region on that member for good. Once it has adopted the target, the
/// merge goes through and the member serves the merged keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_waits_for_a_member_that_has_not_adopted_its_target() {
    // Snapshot every 20 entries and keep 2 (see `regions.rs`).
    let c = InProcessCluster::start_with(3, 20, cairn_server::Limits::default()).await;
    let leader = c.wait_leader(DATA_REGION).await;
    c.split_at("g").await;
    let away = (leader + 1) % 3;
    c.node(away).hold_adoptions(true);
    c.isolate(away);
    let target = c
        .node(leader)
        .split_region(DATA_REGION, b"c".to_vec())
        .await
        .unwrap();
    let mut client = c.kv(leader).await;
    kv::put(&mut client, "h", "source").await.unwrap();
    for i in 0..60 {
        kv::put(&mut client, &format!("a{i:02}"), "v")
            .await
            .unwrap();
    }
    let purged = || {
        c.node(leader)
            .region(DATA_REGION)
            .unwrap()
            .raft
            .metrics()
            .borrow()
            .purged
    };
    wait_for("the parent's log is purged past the split", || {
        purged().is_some_and(|p| p.index > 20)
    })
    .await;
    c.rejoin(away);
    wait_for("the member away caught up on the parent", || {
        c.node(away)
            .region(DATA_REGION)
            .is_ok_and(|r| r.shared.range().end == b"c")
    })
    .await;
    assert!(c.node(away).region(target).is_err());
    let merged = c.node(leader).merge_regions(target).await;
    assert!(
        merged.is_err(),
        "merged while a member did not host the target: {merged:?}"
    );
    c.node(away).hold_adoptions(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.node(leader).merge_regions(target).await {
        assert!(Instant::now() < deadline, "never merged: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let want = vec![(Vec::new(), b"c".to_vec()), (b"c".to_vec(), Vec::new())];
    wait_for("every member has the merged regions", || {
        (0..3).all(|i| ranges(c.node(i)) == want)
    })
    .await;
    let mut away_client = c.kv(away).await;
    assert_eq!(
        kv::get(&mut away_client, "h", false)
            .await
            .unwrap()
            .as_deref(),
        Some("source")
    );
}
