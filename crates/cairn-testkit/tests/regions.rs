//! Regions that split (issue 17, phase 2): a split in the parent's log
//! gives every replica the new region, requests route by key to the region
//! holding it, a request routed by a replica behind the split is told and
//! routed again, the directory in the meta region follows, and a restart
//! brings every region back; `cairn regions` lists them, `cairn regions
//! split` splits one. Ranges across regions are read at one timestamp
//! (`range_across.rs` tests them), txns across regions commit by 2PC
//! (`txn_across.rs`), leases hold keys in any region (`lease_across.rs`).

use std::time::{Duration, Instant};

use cairn_api::cairnpb::regions_client::RegionsClient;
use cairn_api::cairnpb::{RegionListRequest, RegionSplitRequest};
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::{
    LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use cairn_store::{DATA_REGION, META_REGION};
use cairn_testkit::{kv, secured, InProcessCluster};

use cairn_testkit::region_ranges as ranges;

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_region_serves_its_keys_on_every_node_and_after_restart() {
    let mut c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let mut client = c.kv(0).await;
    for k in ["a", "f", "m", "q", "z"] {
        kv::put(&mut client, k, "before").await.unwrap();
    }
    let child = c
        .node(1)
        .split_region(DATA_REGION, b"m".to_vec())
        .await
        .unwrap();
    assert_ne!(child, DATA_REGION);
    let want = vec![(Vec::new(), b"m".to_vec()), (b"m".to_vec(), Vec::new())];
    for i in 0..3 {
        wait_for("every node hosts both halves", || ranges(c.node(i)) == want).await;
    }
    // The new region elects its own leader and takes writes; revisions
    // stay one increasing sequence across the two regions.
    let mut last = 0;
    for (i, k) in ["q", "a", "z", "f", "m"].iter().enumerate() {
        let mut client = c.kv(i % 3).await;
        let rev = kv::put(&mut client, k, "after").await.unwrap();
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
    }
    for i in 0..3 {
        let mut client = c.kv(i).await;
        for k in ["a", "f", "m", "q", "z"] {
            assert_eq!(
                kv::get(&mut client, k, false).await.unwrap().as_deref(),
                Some("after"),
                "{k} through node {i}"
            );
        }
        // A span inside one region is read as before.
        let r = kv::prefix(&mut client, "q", false).await.unwrap();
        assert_eq!(r.kvs.len(), 1);
    }
    // A span across the boundary is read from both halves.
    let across = client
        .range(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&[u8]> = across.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"a"[..], b"f", b"m", b"q"]);
    // So is a lease on a key outside the first region (the lease table
    // stays in the first region; `lease_across.rs` tests the rest).
    let mut leases = LeaseClient::new(secured::channel(&c.nodes[0].client_addr));
    let lease = leases
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    client
        .put(PutRequest {
            key: b"q".to_vec(),
            value: b"after".to_vec(),
            lease,
            ..Default::default()
        })
        .await
        .unwrap();
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.keys, [b"q".to_vec()]);

    // Split the new region again — through the client port's Regions
    // service this time (`cairn regions split`); the directory in the meta
    // region ends up with all three ranges at their new epochs.
    let mut admin = RegionsClient::new(secured::channel(&c.nodes[2].client_addr));
    let split = admin
        .split(RegionSplitRequest { key: b"t".to_vec() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(split.region, child);
    let grandchild = split.child;
    wait_for("node 2 routes t to the grandchild", || {
        c.node(2).route(b"t").is_ok_and(|r| r.id == grandchild)
    })
    .await;
    // A key that already starts a region splits nothing; an empty one is
    // refused.
    let again = admin
        .split(RegionSplitRequest { key: b"t".to_vec() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.region, again.child), (grandchild, 0));
    let empty = admin
        .split(RegionSplitRequest { key: Vec::new() })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    for i in 0..3 {
        wait_for("every node hosts three regions", || {
            ranges(c.node(i)).len() == 3
        })
        .await;
    }
    wait_for("the directory shows three regions", || {
        let dir = c
            .node(0)
            .region(META_REGION)
            .unwrap()
            .shared
            .with_applied(|a| a.regions.clone());
        let get = |id| {
            dir.get(&id)
                .map(|d| (d.start.clone(), d.end.clone(), d.epoch))
        };
        get(DATA_REGION) == Some((Vec::new(), b"m".to_vec(), 2))
            && get(child) == Some((b"m".to_vec(), b"t".to_vec(), 3))
            && get(grandchild) == Some((b"t".to_vec(), Vec::new(), 3))
    })
    .await;

    // The listing `cairn regions` prints: every region in key order, with
    // its epoch, leader, voters, live bytes and recent write rate.
    // (Rates are sampled once a second from a node's start, and what a
    // region applied before its first sample is no rate: a burst of
    // writes that fast after the start is written again.)
    let mut client = c.kv(1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        for i in 0..50 {
            kv::put(&mut client, "r", &format!("v{i}")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let listed = RegionsClient::new(secured::channel(&c.nodes[1].client_addr))
            .list(RegionListRequest {})
            .await
            .unwrap()
            .into_inner()
            .regions;
        if listed.get(1).is_some_and(|r| r.writes_per_second > 1.0) || Instant::now() > deadline {
            break listed;
        }
    };
    let rows: Vec<_> = listed
        .iter()
        .map(|r| (r.id, r.start.clone(), r.end.clone(), r.epoch))
        .collect();
    assert_eq!(
        rows,
        vec![
            (DATA_REGION, Vec::new(), b"m".to_vec(), 2),
            (child, b"m".to_vec(), b"t".to_vec(), 3),
            (grandchild, b"t".to_vec(), Vec::new(), 3),
        ]
    );
    for r in &listed {
        assert_ne!(r.leader, 0, "{r:?}");
        assert_eq!(r.voters.len(), 3, "{r:?}");
        // Each holds keys: a and f, m, q and r, z.
        assert!(r.approximate_bytes > 0, "{r:?}");
    }
    assert!(listed[1].writes_per_second > 1.0, "{:?}", listed[1]);
    assert!(
        listed[1].approximate_bytes < 1000,
        "live bytes, not history: {:?}",
        listed[1]
    );

    // A restarted node starts every region again from its engine.
    c.stop(0).await;
    let mut client = c.kv(1).await;
    kv::put(&mut client, "z", "while-down").await.unwrap();
    c.restart(0).await;
    wait_for("the restarted node hosts three regions", || {
        ranges(c.node(0)).len() == 3
    })
    .await;
    let mut client = c.kv(0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(v)) = kv::get(&mut client, "z", true).await {
            if v == "while-down" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "restarted node never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in ["a", "f", "m", "q"] {
        assert_eq!(
            kv::get(&mut client, k, false).await.unwrap().as_deref(),
            Some("after")
        );
    }
    c.shutdown().await;
}

/// A region born by a split is led at once by the leader that appended the
/// split, in that term, with no election: the new region does not sit
/// leaderless for an election timeout (300–600 ms), every write to its
/// keys and every watch over them waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_parents_leader_leads_a_new_region_at_once() {
    let mut c = InProcessCluster::start(3).await;
    c.set_leader_balance(false);
    let mut region = DATA_REGION;
    for (i, at) in ["b", "c", "d", "e", "f", "g"].into_iter().enumerate() {
        let first = c.wait_leader(region).await;
        let leader = c.node_id(first);
        let term = c.raft_metrics(first, region).current_term;
        let split = Instant::now();
        region = c
            .node(i % 3)
            .split_region(region, at.as_bytes().to_vec())
            .await
            .unwrap();
        let mut client = c.kv((i + 1) % 3).await;
        kv::put(&mut client, at, "v").await.unwrap();
        let took = split.elapsed();
        let m = c.raft_metrics(first, region);
        assert_eq!(
            (m.current_leader, m.current_term),
            (Some(leader), term),
            "region {region} (split at {at}) led by its parent's leader, in its term"
        );
        println!("split at {at}: written {took:?} after the split began");
    }
    c.shutdown().await;
}

/// The new region's leader may start its replica after the others have
/// theirs (its host is slow): they forward to it from their first moment,
/// and a write they forward is tried again until it is there, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_waits_for_the_new_regions_leader_to_start_it() {
    let mut c = InProcessCluster::start(3).await;
    c.set_leader_balance(false);
    let leader = c.wait_leader(DATA_REGION).await;
    // Late, but before the other replicas' vote lease and election
    // timeout (0.9 s at the least) run out and they elect another.
    c.node(leader).delay_births(Duration::from_millis(600));
    let via = (leader + 1) % 3;
    let child = c
        .node(via)
        .split_region(DATA_REGION, b"m".to_vec())
        .await
        .unwrap();
    if c.node(leader).region(child).is_ok() {
        // This replica took longer than the delay to start its own (a
        // loaded machine): nothing left to test.
        eprintln!("the leader's replica started first; not tested");
        c.shutdown().await;
        return;
    }
    let mut client = c.kv(via).await;
    kv::put(&mut client, "q", "v").await.unwrap();
    assert_eq!(
        c.raft_metrics(leader, child).current_leader,
        Some(c.node_id(leader))
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_at_a_stale_epoch_or_outside_the_region_is_refused() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let n = c.node(0);
    let child = n.split_region(DATA_REGION, b"k".to_vec()).await.unwrap();
    // "c" is no longer inside the new region ([k, end)).
    let err = n.split_region(child, b"c".to_vec()).await.unwrap_err();
    assert!(matches!(err, cairn_store::Error::EpochMismatch), "{err:?}");
    // The region holding the first key cannot split at it.
    let err = n.split_region(DATA_REGION, Vec::new()).await.unwrap_err();
    assert!(matches!(err, cairn_store::Error::EpochMismatch), "{err:?}");

    // An alarm raised after the split is in force in both regions, and so
    // is its disarm.
    let mut client = c.kv(1).await;
    n.alarm(true, n.id, cairn_store::ALARM_NOSPACE)
        .await
        .unwrap();
    for k in ["a", "z"] {
        let e = kv::put(&mut client, k, "v").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{k}: {e:?}");
    }
    n.alarm(false, n.id, cairn_store::ALARM_NOSPACE)
        .await
        .unwrap();
    for k in ["a", "z"] {
        kv::put(&mut client, k, "v").await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_the_split_adopts_the_new_region_from_its_leader() {
    // Snapshot every 20 entries and keep 2: the parent's log is purged past
    // the split while one node is down, so that node catches up on the
    // parent by a snapshot taken after the split and never applies it. It
    // is down from before the first write: every version it holds comes
    // from installs of regions smaller than the keyspace.
    let mut c = InProcessCluster::start_with(3, 20, cairn_server::Limits::default()).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let away = (leader + 1) % 3;
    c.stop(away).await;
    let mut client = c.kv(leader).await;
    for k in ["b", "x"] {
        kv::put(&mut client, k, "before").await.unwrap();
    }
    wait_for("the other nodes have applied the writes", || {
        (0..3).filter(|&i| i != away).all(|i| {
            c.node(i)
                .region(DATA_REGION)
                .unwrap()
                .shared
                .revisions()
                .current
                > 2
        })
    })
    .await;
    let child = c
        .node(leader)
        .split_region(DATA_REGION, b"m".to_vec())
        .await
        .unwrap();
    for i in 0..60 {
        kv::put(&mut client, &format!("a{i:02}"), "v")
            .await
            .unwrap();
        kv::put(&mut client, &format!("q{i:02}"), "v")
            .await
            .unwrap();
    }
    // The snapshot that purges the log is built in the background.
    let purged = || {
        c.node(leader)
            .region(DATA_REGION)
            .unwrap()
            .raft
            .metrics()
            .borrow()
            .purged
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while purged().is_none_or(|p| p.index <= 20) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        purged().is_some_and(|p| p.index > 20),
        "parent log purged: {:?}",
        purged()
    );
    c.restart(away).await;
    wait_for("the node that was away hosts the new region", || {
        c.node(away).region(child).is_ok()
    })
    .await;
    let mut away_client = c.kv(away).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = kv::prefix(&mut away_client, "q", true)
            .await
            .map(|r| r.kvs.len());
        let a = kv::prefix(&mut away_client, "a", true)
            .await
            .map(|r| r.kvs.len());
        let x = kv::get(&mut away_client, "x", true).await;
        if matches!((q, a, &x), (Ok(60), Ok(60), Ok(Some(_)))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {away} never caught up: {x:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ranges(c.node(away)),
        vec![(Vec::new(), b"m".to_vec()), (b"m".to_vec(), Vec::new())]
    );
    // Its by-revision index is complete (marked when the node opened its
    // store): a backup streams from it, every version in revision order.
    let backup = c.node(away).backup().await.unwrap();
    assert!(backup.size > 0);
    c.shutdown().await;
}

/// How many data regions each node leads, as node `seen_by` sees them;
/// `None` while one has no known leader.
async fn leader_counts(c: &InProcessCluster, seen_by: usize) -> Option<Vec<usize>> {
    let ids: Vec<u64> = (0..3).map(|i| c.node_id(i)).collect();
    let mut counts = vec![0; 3];
    for r in c.node(seen_by).region_reports().await.ok()? {
        let i = ids.iter().position(|&id| id == r.leader)?;
        counts[i] += 1;
    }
    Some(counts)
}

/// The leader balancer (`node::leader_balance`): a member that was down
/// leads no region when it comes back; the meta region's leader hands it
/// leaderships until no member leads more than one region more than
/// another, while writes to every region go on and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_member_is_handed_its_share_of_region_leaders() {
    let mut c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for at in &keys[1..] {
        c.split_at(at).await;
    }
    let away = (c.wait_leader(META_REGION).await + 1) % 3;
    let stay = (away + 1) % 3;
    c.stop(away).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = leader_counts(&c, stay).await;
        if counts.as_ref().is_some_and(|n| n[away] == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions never left the stopped member: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.restart(away).await;
    let mut client = c.kv(stay).await;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut failed = Vec::new();
        let mut round = 0;
        while !*stopped.borrow_and_update() {
            for k in keys {
                if let Err(e) = kv::put(&mut client, k, &round.to_string()).await {
                    failed.push(format!("{k} in round {round}: {e}"));
                }
            }
            round += 1;
            let _ = tokio::time::timeout(Duration::from_millis(20), stopped.changed()).await;
        }
        (round, failed)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = leader_counts(&c, stay).await;
        if let Some(n) = &counts {
            let (max, min) = (n.iter().max().unwrap(), n.iter().min().unwrap());
            if max - min <= 1 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "leaders never spread: {counts:?} (node {away} restarted)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    let (rounds, failed) = writer.await.unwrap();
    assert!(
        rounds > 0 && failed.is_empty(),
        "{rounds} rounds, failed: {failed:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_that_missed_an_alarm_or_an_auth_fence_is_brought_in_line() {
    use cairn_raft::Command;
    use cairn_store::ALARM_NOSPACE;
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let n = c.node(0);
    let second = n.split_region(DATA_REGION, b"k".to_vec()).await.unwrap();
    let mut client = c.kv(1).await;
    let nospace = |activate| Command::Alarm {
        activate,
        member: n.id,
        alarm: ALARM_NOSPACE,
    };

    // Raised in the second region alone (the store-wide raise failed in
    // the first): it refuses its keys' writes and is listed; the first
    // region's set is the store's, so the second region's leader clears
    // it once the difference has stood for longer than a raise takes.
    n.propose_in_one_region(second, nospace(true))
        .await
        .unwrap();
    let e = kv::put(&mut client, "z", "v").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    wait_for("the raise applied here", || {
        n.alarms().contains(&(n.id, ALARM_NOSPACE))
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while kv::put(&mut client, "z", "v").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the second region never cleared it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("no alarm listed", || n.alarms().is_empty()).await;

    // Raised everywhere, then cleared in the first region alone: still
    // listed while the second refuses writes, so a disarm (etcdctl lists,
    // then clears what it found) puts it right at once.
    n.alarm(true, n.id, ALARM_NOSPACE).await.unwrap();
    n.propose_in_one_region(DATA_REGION, nospace(false))
        .await
        .unwrap();
    kv::put(&mut client, "a", "v").await.unwrap();
    let e = kv::put(&mut client, "z", "v").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(n.alarms(), vec![(n.id, ALARM_NOSPACE)]);
    n.alarm(false, n.id, ALARM_NOSPACE).await.unwrap();
    kv::put(&mut client, "z", "v").await.unwrap();

    // An auth change the meta region committed, fenced nowhere (its
    // proposer died): every region's leader fences it.
    let store = n.auth_revision() + 1;
    let add = cairn_auth::AuthCmd::UserAdd {
        name: "late".into(),
        password: None,
    };
    n.propose_in_one_region(META_REGION, Command::Auth(add))
        .await
        .unwrap();
    wait_for("every region fenced at the auth store's revision", || {
        (0..3).all(|i| {
            let node = c.node(i);
            node.auth_revision() >= store
                && node
                    .regions_overlapping(b"", None)
                    .into_iter()
                    .all(|(r, _, _)| r.shared.with_applied(|a| a.auth_fence) >= store)
        })
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_that_catches_up_on_the_first_split_holds_the_new_regions_writes() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let away = (leader + 1) % 3;
    let mut client = c.kv(leader).await;
    kv::put(&mut client, "a", "before").await.unwrap();
    // The first split happens while one member is cut off, and the new
    // region takes a write.
    c.isolate(away);
    c.node(leader)
        .split_region(DATA_REGION, b"m".to_vec())
        .await
        .unwrap();
    let written = kv::put(&mut client, "z", "after").await.unwrap();
    // Back, but no data region's entries reach it yet: asked of that
    // member, the backup finds one region, and applies the split while it
    // catches up on it.
    let entries = |on: bool| {
        for i in 0..3 {
            c.node(i).pool.faults.drop_entry_appends(on);
        }
    };
    entries(true);
    c.rejoin(away);
    let backup = {
        let node = c.node(away).clone();
        tokio::spawn(async move { node.backup().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!backup.is_finished(), "the backup waits for the split");
    assert_eq!(
        ranges(c.node(away)).len(),
        1,
        "the split is not applied yet"
    );
    entries(false);
    let backup = backup.await.unwrap().unwrap();
    assert!(
        backup.revision >= written,
        "the backup at {} misses the write at {written}",
        backup.revision
    );
    c.shutdown().await;
}
