//! Multi-process: three `cairn serve` processes; SIGKILL the leader during a
//! stream of writes, then SIGKILL all three and restart them. Every
//! acknowledged write must be readable after each step.

use std::time::{Duration, Instant};

use cairn_testkit::{kv, ProcessCluster};

/// The index of the member that leads the data region, once one does.
async fn leader(c: &ProcessCluster, skip: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = c.leader(skip).await {
            return i;
        }
        if Instant::now() >= deadline {
            panic!("no leader elected\n{}{}", c.describe().await, c.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index of the member that leads the data region holding `key`, as
/// a member other than `skip` lists it, once one does. With one data
/// region that is [`leader`]; in many-regions mode (`CAIRN_TEST_REGIONS`)
/// it is the leader of the small region the test's keys are in.
async fn leader_of_key(c: &ProcessCluster, key: &[u8], skip: &[usize]) -> usize {
    use cairn_api::cairnpb::regions_client::RegionsClient;
    use cairn_api::cairnpb::RegionListRequest;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for i in (0..c.len()).filter(|i| !skip.contains(i)) {
            let channel = cairn_testkit::secured::channel(&c.client_addr(i));
            let Ok(listed) = RegionsClient::new(channel).list(RegionListRequest {}).await else {
                continue;
            };
            let holder = listed.into_inner().regions.into_iter().find(|r| {
                r.start.as_slice() <= key && (r.end.is_empty() || key < r.end.as_slice())
            });
            if let Some(id) = holder.map(|r| r.leader).filter(|l| *l != 0) {
                if let Some(m) = c.member_index(id).await.filter(|m| !skip.contains(m)) {
                    return m;
                }
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "no leader of {key:?}'s region\n{}{}",
                c.describe().await,
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every key `w*` through member `i`, retrying until it answers.
async fn read_all(c: &ProcessCluster, i: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = kv::connect(&c.client_addr(i)).await;
        match kv::prefix(&mut client, "w", false).await {
            Ok(r) => {
                return r
                    .kvs
                    .iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                    .collect()
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "member {i} never answered: {e}\n{}",
                    c.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_leader_and_of_all_nodes_loses_no_acknowledged_write() {
    let mut c = ProcessCluster::start(std::path::Path::new(env!("CARGO_BIN_EXE_cairn")), 3);
    let first_leader = leader_of_key(&c, b"w000000", &[]).await;
    // Write through a member that will survive.
    let writer = (first_leader + 1) % 3;
    let addr = c.client_addr(writer);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stream = tokio::spawn(async move {
        let mut client = kv::connect(&addr).await;
        let mut acked = Vec::new();
        let mut i = 0u32;
        loop {
            if stop_rx.try_recv().is_ok() {
                return acked;
            }
            let key = format!("w{i:06}");
            if kv::put(&mut client, &key, "v").await.is_ok() {
                acked.push(key);
            }
            i += 1;
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill(first_leader);
    let killed_at = Instant::now();
    let new_leader = leader_of_key(&c, b"w000000", &[first_leader]).await;
    assert_ne!(new_leader, first_leader);
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "new leader took {failover:?}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_tx.send(()).unwrap();
    let acked = stream.await.unwrap();
    assert!(
        acked.len() > 10,
        "the stream made progress: {} writes",
        acked.len()
    );

    let seen = read_all(&c, writer).await;
    for k in &acked {
        assert!(
            seen.contains(k),
            "acknowledged {k} lost after leader SIGKILL"
        );
    }

    // Power cut: SIGKILL everyone, restart everyone.
    c.restart(first_leader);
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    leader(&c, &[]).await;
    for i in 0..3 {
        let seen = read_all(&c, i).await;
        for k in &acked {
            assert!(
                seen.contains(k),
                "acknowledged {k} lost after full restart (member {i})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_leader_is_replaced_and_catches_up_after_resume() {
    let c = ProcessCluster::start(std::path::Path::new(env!("CARGO_BIN_EXE_cairn")), 3);
    let paused = leader_of_key(&c, b"w-during", &[]).await;
    let other = (paused + 1) % 3;
    let mut client = kv::connect(&c.client_addr(other)).await;
    kv::put(&mut client, "w-before", "1").await.ok();
    c.signal(paused, "STOP");
    let new_leader = leader_of_key(&c, b"w-during", &[paused]).await;
    assert_ne!(new_leader, paused);
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = kv::put(&mut client, "w-during", "2").await {
        assert!(
            Instant::now() < deadline,
            "no write accepted while the old leader (member {paused}) is paused: {e}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.signal(paused, "CONT");
    // The resumed node must not serve the stale value linearizably.
    let seen = read_all(&c, paused).await;
    assert!(
        seen.contains(&"w-during".to_string()),
        "resumed old leader sees the newer write: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_data_differs_refuses_to_start_with_the_initial_check() {
    let (mut c, l) = checked_cluster().await;
    let victim = put_twenty(&c, l).await;
    c.kill(victim);
    // Its copy gains a version no other member has. Revision 1: below
    // every write (a fresh store is at 1).
    plant_version(&c, victim, b"w00", 1);
    refuses_to_start(&mut c, victim).await;
    // The others serve on.
    assert_eq!(read_all(&c, l).await.len(), 20);
}

/// With several regions the start-up check hashes each region to its own
/// last write, not the whole store to the coldest region's: a version
/// that differs in a region written after another went cold is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_initial_check_covers_regions_written_after_another_went_cold() {
    use cairn_api::cairnpb::regions_client::RegionsClient;
    use cairn_api::cairnpb::RegionSplitRequest;
    let (mut c, l) = checked_cluster().await;
    let mut client = kv::connect(&c.client_addr(l)).await;
    kv::put(&mut client, "a", "cold").await.unwrap();
    let channel = cairn_testkit::secured::channel(&c.client_addr(l));
    RegionsClient::new(channel)
        .split(RegionSplitRequest { key: b"m".to_vec() })
        .await
        .unwrap();
    let victim = put_twenty(&c, l).await;
    let mut k = kv::connect(&c.client_addr(victim)).await;
    let last = kv::prefix(&mut k, "w19", false).await.unwrap().kvs[0].mod_revision;
    c.kill(victim);
    // A version of w19 just below its last: above everything the region
    // holding "a" has (it went cold before the split), within what the
    // region holding w19 resolved.
    plant_version(&c, victim, b"w19", last - 1);
    refuses_to_start(&mut c, victim).await;
    assert_eq!(read_all(&c, l).await.len(), 20);
}

/// Three members running the start-up check, and the one leading.
async fn checked_cluster() -> (ProcessCluster, usize) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_cairn"));
    let check = ["--experimental-initial-corrupt-check".to_string()];
    let c = ProcessCluster::start_with(bin, 3, &check);
    let l = leader(&c, &[]).await;
    (c, l)
}

/// Puts `w00`..`w19` through member `l`; returns another member, once it
/// has applied them all.
async fn put_twenty(c: &ProcessCluster, l: usize) -> usize {
    let mut client = kv::connect(&c.client_addr(l)).await;
    for i in 0..20 {
        kv::put(&mut client, &format!("w{i:02}"), "v")
            .await
            .unwrap();
    }
    let other = (l + 1) % 3;
    assert_eq!(read_all(c, other).await.len(), 20);
    other
}

/// Writes into stopped member `i`'s store a version of `key` at
/// `revision` that no other member has.
fn plant_version(c: &ProcessCluster, i: usize, key: &[u8], revision: i64) {
    use cairn_storage::keys::Key;
    use cairn_storage::{Durability, Engine, FjallEngine, WriteBatch};
    let engine = FjallEngine::open(c.data_dir(i).join("db")).unwrap();
    let stored = Key::MvccVersion { key, revision }.encode();
    let record = cairn_mvcc::Record::Put(cairn_api::mvccpb::KeyValue {
        key: key.to_vec(),
        value: b"flipped".to_vec(),
        create_revision: revision,
        mod_revision: revision,
        version: 1,
        ..Default::default()
    });
    let mut b = WriteBatch::new();
    b.put(stored, record.encode());
    engine.write(b, Durability::Sync).unwrap();
}

/// Restarts member `i` with the start-up check, which must find its data
/// differs and refuse to start.
async fn refuses_to_start(c: &mut ProcessCluster, i: usize) {
    c.restart(i);
    c.wait_exited(i, Duration::from_secs(30), "the damaged member started")
        .await;
    let log = c.run_log(i, 2);
    assert!(log.contains("found data inconsistency with peers"), "{log}");
}

/// With several regions a read asks its region's leader for a timestamp
/// and a read index. One begun through a follower just after that leader
/// is paused (SIGSTOP: no answer, no refusal) is answered by the leader
/// elected next, not held until the call to the paused member times out
/// and then failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_begun_as_its_leader_pauses_is_answered_by_the_next() {
    use cairn_api::cairnpb::regions_client::RegionsClient;
    use cairn_api::cairnpb::RegionSplitRequest;
    let c = ProcessCluster::start(std::path::Path::new(env!("CARGO_BIN_EXE_cairn")), 3);
    let paused = leader_of_key(&c, b"a", &[]).await;
    let other = (paused + 1) % 3;
    let mut client = kv::connect(&c.client_addr(other)).await;
    kv::put(&mut client, "a", "1").await.unwrap();
    let channel = cairn_testkit::secured::channel(&c.client_addr(other));
    RegionsClient::new(channel)
        .split(RegionSplitRequest { key: b"m".to_vec() })
        .await
        .unwrap();
    // Every member knows the first region's leader, and reads through it.
    for i in 0..3 {
        read_all(&c, i).await;
        let mut k = kv::connect(&c.client_addr(i)).await;
        kv::get(&mut k, "a", false).await.unwrap();
    }
    // The leader of "a"'s region (which the split left in place) stops.
    assert_eq!(leader_of_key(&c, b"a", &[]).await, paused);
    c.signal(paused, "STOP");
    let read = kv::get(&mut client, "a", false).await;
    c.signal(paused, "CONT");
    assert_eq!(
        read.map_err(|e| e.to_string()),
        Ok(Some("1".to_string())),
        "{}",
        c.logs()
    );
}
