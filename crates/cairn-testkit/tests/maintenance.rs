//! Maintenance through the gRPC API on a 3-node cluster: every member
//! hashes its history alike at one revision (what `etcdctl endpoint
//! hashkv` compares), a defragment keeps every key and version, and
//! `Status` reports sizes the filesystem agrees with; a backup taken while
//! writes go on is the store at one revision, and restores as exactly that.
//! Split into regions, the store hashes as it did whole, and the
//! corruption check finds a bad copy in any region.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::*;
use cairn_api::mvccpb::KeyValue;
use cairn_store::DATA_REGION;
use cairn_testkit::{secured, InProcessCluster};
use tonic::transport::Channel;

fn maintenance(addr: &str) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(secured::lazy(
        secured::endpoint(addr).timeout(Duration::from_secs(30)),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_hash_alike_and_defragment_keeps_every_version() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    for i in 0..200 {
        kv.put(PutRequest {
            key: format!("k{:03}", i % 50).into_bytes(),
            value: vec![b'v'; 2000 + i],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let at = kv
        .delete_range(DeleteRangeRequest {
            key: b"k000".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let first = hash_once_applied(&c, 0, at).await;
    assert_eq!(first.hash_revision, at);
    for i in 1..3 {
        let h = hash_once_applied(&c, i, at).await;
        assert_eq!(
            (h.hash, h.compact_revision),
            (first.hash, first.compact_revision),
            "member {i}"
        );
    }
    // A later write changes the hash of the current state, not of `at`.
    kv.put(PutRequest {
        key: b"later".to_vec(),
        value: b"x".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(hash_once_applied(&c, leader, at).await.hash, first.hash);
    assert_ne!(hash_once_applied(&c, leader, 0).await.hash, first.hash);

    let status = maintenance(&c.nodes[leader].client_addr)
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.db_size_in_use > 0 && status.db_size > 0,
        "{status:?}"
    );
    assert!(
        status.db_size < 64 << 20,
        "an almost empty store reports {} bytes (the journal's preallocated length?)",
        status.db_size
    );

    for i in 0..3 {
        maintenance(&c.nodes[i].client_addr)
            .defragment(DefragmentRequest {})
            .await
            .unwrap();
    }
    assert_eq!(
        hash_once_applied(&c, leader, at).await.hash,
        first.hash,
        "defragment changed the history"
    );
    let all = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.count, 49);
    c.shutdown().await;
}

/// 50 KB that do not compress, different for each `i`: the store's bytes
/// really grow by them.
fn incompressible(i: u32) -> Vec<u8> {
    (0..50_000u32)
        .map(|j| (j.wrapping_mul(2654435761) ^ i) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_store_raises_nospace_refuses_puts_and_recovers_after_disarm() {
    let limits = cairn_server::Limits {
        quota_backend_bytes: 1_000_000,
        ..Default::default()
    };
    let c = InProcessCluster::start_with(3, 10_000, limits).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    let mut m = maintenance(&c.nodes[leader].client_addr);
    let mut refused = None;
    for i in 0..200u32 {
        let value = incompressible(i);
        let put = kv.put(PutRequest {
            key: format!("r{i:03}").into_bytes(),
            value,
            ..Default::default()
        });
        if let Err(e) = put.await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a 1 MB quota never refused a put");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(e.message(), "etcdserver: mvcc: database space exceeded");
    // Over quota, the quota is checked before the request is, as etcd's
    // quotaKVServer wraps its KV server. (etcd adds the request's cost to
    // its size, so beside etcd the outcome depends on byte accounting:
    // not a transcript line.)
    let bad = kv
        .put(PutRequest {
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::ResourceExhausted, "{bad:?}");
    // The alarm reaches every member; every member then refuses puts at
    // apply, so a put through a follower fails too.
    let mut raised = Vec::new();
    for _ in 0..100 {
        raised = m
            .alarm(AlarmRequest::default())
            .await
            .unwrap()
            .into_inner()
            .alarms;
        if !raised.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].alarm, AlarmType::Nospace as i32);
    let follower = (leader + 1) % 3;
    let mut kv2 = c.kv(follower).await;
    let small = PutRequest {
        key: b"small".to_vec(),
        value: b"x".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        kv2.put(small.clone()).await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );
    // Reads, deletes and compaction still work; then space is freed.
    let del = kv
        .delete_range(DeleteRangeRequest {
            key: b"r".to_vec(),
            range_end: b"s".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.deleted > 0);
    let rev = del.header.unwrap().revision;
    kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .unwrap();
    for i in 0..3 {
        maintenance(&c.nodes[i].client_addr)
            .defragment(DefragmentRequest {})
            .await
            .unwrap();
    }
    // Disarm every alarm raised (as `etcdctl alarm disarm` does): the
    // follower that refused a put raised its own.
    let all = m
        .alarm(AlarmRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alarms;
    for a in all {
        m.alarm(AlarmRequest {
            action: alarm_request::AlarmAction::Deactivate as i32,
            member_id: a.member_id,
            alarm: a.alarm,
        })
        .await
        .unwrap();
    }
    kv.put(small)
        .await
        .expect("a put after disarming with space freed");
    assert!(m
        .alarm(AlarmRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alarms
        .is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_writes_is_the_store_at_one_revision() {
    use sha2::{Digest, Sha256};
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    for i in 0..100 {
        kv.put(PutRequest {
            key: format!("k{:02}", i % 30).into_bytes(),
            value: format!("v{i}").into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mid = kv
        .range(RangeRequest {
            key: b"k00".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    kv.compact(CompactionRequest {
        revision: mid,
        physical: true,
    })
    .await
    .unwrap();
    // Writes go on while the backup is taken (from a follower).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, done, mut kv) = (stop.clone(), done.clone(), c.kv(leader).await);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{:02}", i % 30).into_bytes();
                if i.is_multiple_of(7) {
                    let _ = kv
                        .delete_range(DeleteRangeRequest {
                            key,
                            ..Default::default()
                        })
                        .await;
                } else {
                    let _ = kv
                        .put(PutRequest {
                            key,
                            value: vec![b'w'; 100],
                            ..Default::default()
                        })
                        .await;
                }
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            i
        })
    };
    // (Not a fixed wait: with the suite's other clusters on 2 cores, a
    // many-regions store's writes can be slow to start.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::Relaxed) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer was not writing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let follower = (leader + 1) % 3;
    let mut stream = maintenance(&c.nodes[follower].client_addr)
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let (mut bytes, mut remaining, mut at) = (Vec::new(), Vec::new(), 0);
    while let Some(m) = stream.message().await.unwrap() {
        at = m.header.map_or(0, |h| h.revision);
        remaining.push(m.remaining_bytes);
        bytes.extend_from_slice(&m.blob);
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    // etcd's framing: remaining bytes count down to 0, then the digest.
    assert!(remaining.windows(2).all(|w| w[0] >= w[1]) && remaining.ends_with(&[0, 0]));
    let (db, sha) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), sha);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    std::fs::write(&file, &bytes).unwrap();
    let restored =
        cairn_store::restore(std::fs::File::open(&file).unwrap(), &dir.path().join("m")).unwrap();
    assert_eq!(restored.revisions.current, at);
    assert_eq!(restored.revisions.compacted, mid);
    let engine = cairn_storage::FjallEngine::open(dir.path().join("m/db")).unwrap();
    let view = cairn_storage::Engine::snapshot(&engine);
    // The restored history hashes as the cluster's does at that revision,
    // and reads the same keys.
    let want = maintenance(&c.nodes[leader].client_addr)
        .hash_kv(HashKvRequest { revision: at })
        .await
        .unwrap()
        .into_inner();
    let got = cairn_mvcc::hash_kv(&*view, at, restored.revisions).unwrap();
    assert_eq!(
        (got.hash, got.compacted),
        (want.hash, want.compact_revision)
    );
    let all = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..Default::default()
    };
    let original = kv
        .range(RangeRequest {
            revision: at,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    let back = cairn_mvcc::range(&*view, &all, restored.revisions).unwrap();
    assert_eq!(back.kvs, original.kvs);
    assert!(!back.kvs.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_history_differs_gets_the_corrupt_alarm_and_writes_stop() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    let mut at = 0;
    for i in 0..20 {
        at = kv
            .put(PutRequest {
                key: format!("k{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
    }
    let checker = c.node(leader);
    assert_eq!(checker.check_corruption().await.unwrap(), Vec::<u64>::new());

    // One follower's copy gains a version no other member has.
    let victim = (leader + 1) % 3;
    let engine = c
        .node(victim)
        .region(DATA_REGION)
        .unwrap()
        .shared
        .engine()
        .clone();
    let bogus = add_version(&engine, b"k0", at - 1);
    assert_eq!(
        checker.check_corruption().await.unwrap(),
        vec![c.nodes[victim].id]
    );
    let alarms = maintenance(&c.nodes[leader].client_addr)
        .alarm(AlarmRequest {
            action: 0,
            member_id: 0,
            alarm: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(
        alarms,
        vec![AlarmMember {
            member_id: c.nodes[victim].id,
            alarm: 2
        }]
    );
    // Writes stop on every member, as etcd's corrupt applier does; reads go on.
    let refused = kv
        .put(PutRequest {
            key: b"x".to_vec(),
            value: b"y".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss);
    assert_eq!(refused.message(), "etcdserver: corrupt cluster");
    let read = kv
        .range(RangeRequest {
            key: b"k1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.count, 1);

    // Repaired, disarmed: writes again, and the check finds nothing.
    let mut b = cairn_storage::WriteBatch::new();
    b.delete(bogus);
    engine.write(b, cairn_storage::Durability::Sync).unwrap();
    maintenance(&c.nodes[leader].client_addr)
        .alarm(AlarmRequest {
            action: 2,
            member_id: c.nodes[victim].id,
            alarm: 2,
        })
        .await
        .unwrap();
    kv.put(PutRequest {
        key: b"x".to_vec(),
        value: b"y".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(checker.check_corruption().await.unwrap(), Vec::<u64>::new());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_hands_leadership_to_the_named_member_losing_no_write() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let target = (leader + 1) % 3;
    let id = |i: usize| c.nodes[i].id;
    let m = |i: usize| maintenance(&c.nodes[i].client_addr);

    // Refused as etcd refuses: on a follower, and for an unknown member.
    let e = m(target)
        .move_leader(MoveLeaderRequest {
            target_id: id(target),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::FailedPrecondition, "etcdserver: not leader")
    );
    let e = m(leader)
        .move_leader(MoveLeaderRequest { target_id: 12345 })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: bad leader transferee");

    // Writes go on through the third member while leadership moves twice.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, count, mut kv) = (stop.clone(), count.clone(), c.kv((leader + 2) % 3).await);
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{i:05}").into_bytes();
                if kv
                    .put(PutRequest {
                        key: key.clone(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                {
                    acked.push(key);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    m(leader)
        .move_leader(MoveLeaderRequest {
            target_id: id(target),
        })
        .await
        .unwrap();
    for i in 0..3 {
        let mut seen = 0;
        for _ in 0..100 {
            seen = m(i)
                .status(StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .leader;
            if seen == id(target) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, id(target), "member {i} sees another leader");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    m(target)
        .move_leader(MoveLeaderRequest {
            target_id: id(leader),
        })
        .await
        .unwrap();
    // Writes go on after both hand-overs: more are acknowledged (a
    // deadline, not a rate: a slow machine, say in secured mode, must not
    // fail this).
    let after = count.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while count.load(Ordering::Relaxed) < after.max(20) + 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes stopped after the hand-overs: {} acknowledged",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 20, "only {} writes", acked.len());
    let mut kv = c.kv(leader).await;
    let all = kv
        .range(RangeRequest {
            key: b"w".to_vec(),
            range_end: b"x".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let stored: std::collections::HashSet<Vec<u8>> = all.kvs.into_iter().map(|kv| kv.key).collect();
    assert!(
        acked.iter().all(|k| stored.contains(k)),
        "an acknowledged write is missing"
    );
    c.shutdown().await;
}

/// Writes into `engine` (a member's copy) a version of `key` at `revision`
/// that no other member has; returns its storage key.
fn add_version(engine: &Arc<dyn cairn_storage::Engine>, key: &[u8], revision: i64) -> Vec<u8> {
    let bogus = cairn_storage::keys::Key::MvccVersion { key, revision }.encode();
    let record = cairn_mvcc::Record::Put(KeyValue {
        value: b"flipped".to_vec(),
        create_revision: revision,
        mod_revision: revision,
        version: 1,
        ..Default::default()
    });
    let mut b = cairn_storage::WriteBatch::new();
    b.put(bogus.clone(), record.encode());
    engine.write(b, cairn_storage::Durability::Sync).unwrap();
    bogus
}

/// `HashKV` at `revision` on member `i`, once it has applied that far.
async fn hash_once_applied(c: &InProcessCluster, i: usize, revision: i64) -> HashKvResponse {
    let mut m = maintenance(&c.nodes[i].client_addr);
    for _ in 0..100 {
        match m.hash_kv(HashKvRequest { revision }).await {
            Ok(r) => return r.into_inner(),
            Err(e) if e.code() == tonic::Code::OutOfRange => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("hash_kv: {e}"),
        }
    }
    panic!("member {i} never reached revision {revision}");
}

/// Split into regions, the store hashes every region as one: at a revision
/// from before the split each member gives the hash the whole store had,
/// and at a later one every member agrees, the idle region included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_store_hashes_as_it_did_whole_on_every_member() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    let mut before = 0;
    for i in 0..30 {
        let key = format!("{}{i:02}", ["a", "x"][i % 2]);
        before = cairn_testkit::kv::put(&mut kv, &key, "v").await.unwrap();
    }
    let whole = hash_once_applied(&c, leader, before).await;
    c.split_at("m").await;
    let mut last = 0;
    for i in 0..10 {
        last = cairn_testkit::kv::put(&mut kv, &format!("b{i}"), "w")
            .await
            .unwrap();
    }
    let mut at_last = Vec::new();
    for i in 0..3 {
        let h = hash_once_applied(&c, i, before).await;
        assert_eq!(
            (h.hash, h.hash_revision),
            (whole.hash, before),
            "member {i}"
        );
        let h = hash_once_applied(&c, i, last).await;
        assert_eq!(h.hash_revision, last);
        at_last.push(h.hash);
    }
    assert!(at_last.iter().all(|&h| h == at_last[0]), "{at_last:?}");
    assert_ne!(at_last[0], whole.hash, "the writes since count");
    c.shutdown().await;
}

/// A member whose copy of a region other than the first differs is found
/// by the check (run by the first region's leader), while that region is
/// idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_corruption_check_finds_a_bad_copy_in_any_region() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    let mut at = 0;
    for i in 0..20 {
        at = cairn_testkit::kv::put(&mut kv, &format!("x{i}"), "v")
            .await
            .unwrap();
    }
    c.split_at("m").await;
    cairn_testkit::kv::put(&mut kv, "a", "v").await.unwrap();
    let checker = c.node(c.wait_leader(DATA_REGION).await);
    assert_eq!(checker.check_corruption().await.unwrap(), Vec::<u64>::new());
    let victim = (0..3).find(|&i| c.nodes[i].id != checker.id).unwrap();
    let engine = c.node(victim).route(b"x0").unwrap().shared.engine().clone();
    add_version(&engine, b"x0", at - 1);
    assert_eq!(
        checker.check_corruption().await.unwrap(),
        vec![c.nodes[victim].id]
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reports_the_committed_raft_index_not_an_entry_only_appended() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    // "!…": the first data region's, in many-regions mode too.
    cairn_testkit::kv::put(&mut kv, "!committed", "1")
        .await
        .unwrap();
    let mut m = maintenance(&c.nodes[leader].client_addr);
    let status = m.status(StatusRequest {}).await.unwrap().into_inner();
    let committed = status.raft_index;
    assert!(committed >= status.raft_applied_index && committed > 0);

    // An entry the followers never get: appended on the leader, never
    // committed. etcd's raftIndex is the committed index.
    let before = c.raft_metrics(leader, DATA_REGION).last_log_index;
    c.nodes[leader].faults.drop_entry_appends(true);
    let put = tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            cairn_testkit::kv::put(&mut kv, "!appended", "1"),
        )
        .await;
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.raft_metrics(leader, DATA_REGION).last_log_index <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the put was never appended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = m.status(StatusRequest {}).await.unwrap().into_inner();
    let last = c.raft_metrics(leader, DATA_REGION).last_log_index.unwrap();
    assert!(
        status.raft_index < last,
        "raftIndex {} is the last log index {last}, not the committed one",
        status.raft_index
    );
    assert!(status.raft_index >= committed);
    c.nodes[leader].faults.drop_entry_appends(false);
    put.await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raising_or_clearing_an_alarm_of_type_none_does_nothing() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut m = maintenance(&c.nodes[leader].client_addr);
    // As etcd since 3.5: an empty answer, and nothing recorded (the list,
    // action 0, last).
    for action in [1, 2, 0] {
        let r = m
            .alarm(AlarmRequest {
                action,
                member_id: 0,
                alarm: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.alarms.is_empty(), "action {action}: {:?}", r.alarms);
    }
    c.shutdown().await;
}

/// Over quota, an election's writes are refused and raise the NOSPACE
/// alarm, as etcd's election service's KV calls are: a leader proclaiming
/// large values in a loop filled the store past its quota unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proclaims_over_quota_are_refused_and_raise_nospace() {
    let limits = cairn_server::Limits {
        quota_backend_bytes: 1_000_000,
        ..Default::default()
    };
    let c = InProcessCluster::start_with(3, 10_000, limits).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let ch = secured::lazy(secured::endpoint(&c.nodes[leader].client_addr));
    let mut e = cairn_api::v3electionpb::election_client::ElectionClient::new(ch.clone());
    let lead = e
        .campaign(cairn_api::v3electionpb::CampaignRequest {
            name: b"full".to_vec(),
            lease: 0,
            value: b"v".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    let mut refused = None;
    for i in 0..200u32 {
        let value = incompressible(i);
        let proclaim = e.proclaim(cairn_api::v3electionpb::ProclaimRequest {
            leader: Some(lead.clone()),
            value,
        });
        if let Err(s) = proclaim.await {
            refused = Some(s);
            break;
        }
    }
    let s = refused.expect("a 1 MB quota never refused a proclaim");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert_eq!(s.message(), "etcdserver: mvcc: database space exceeded");
    let mut m = MaintenanceClient::new(ch);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alarms = m
            .alarm(AlarmRequest::default())
            .await
            .unwrap()
            .into_inner()
            .alarms;
        if alarms.iter().any(|a| a.alarm == AlarmType::Nospace as i32) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no NOSPACE alarm raised"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}

/// Each backup is a copy of the store on disk until it is streamed: a
/// member writes two at once, and a third waits for one to end (here: its
/// client goes away) instead of adding a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_streams_two_backups_at_once_and_the_next_waits_its_turn() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut kv = c.kv(leader).await;
    // Far more than the stream's buffers hold: an unread backup is not
    // sent out whole.
    for i in 0..24u32 {
        kv.put(PutRequest {
            key: format!("big{i:02}").into_bytes(),
            value: incompressible(i).repeat(4),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let addr = &c.nodes[leader].client_addr;
    let first = maintenance(addr)
        .snapshot(SnapshotRequest {})
        .await
        .unwrap();
    let second = maintenance(addr)
        .snapshot(SnapshotRequest {})
        .await
        .unwrap();
    let mut third = tokio::spawn({
        let mut m = maintenance(addr);
        async move { m.snapshot(SnapshotRequest {}).await }
    });
    let waited = tokio::time::timeout(Duration::from_secs(2), &mut third).await;
    assert!(waited.is_err(), "a third backup began while two were open");
    drop(first);
    let mut third = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("the third backup begins once one ends")
        .unwrap()
        .unwrap()
        .into_inner();
    let mut bytes = 0;
    while let Some(m) = third.message().await.unwrap() {
        bytes += m.blob.len();
    }
    assert!(bytes > 2 << 20, "{bytes} bytes");
    drop(second);
    c.shutdown().await;
}
