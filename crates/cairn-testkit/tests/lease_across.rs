//! Leases whose keys lie in several regions (issue 17): a put with a lease
//! in any region, checked against the lease table in the first region; a
//! revoke or an expiry deletes the lease's keys in every region at one
//! revision, its events together; a key detached from its lease in another
//! region is neither reported by TimeToLive nor deleted with the lease;
//! a split moves leased keys, and a merge does not bring a detached key
//! back to its lease; and no key outlives its lease while puts race the
//! revoke.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::*;
use cairn_store::DATA_REGION;
use cairn_testkit::watch::WatchStream;
use cairn_testkit::{secured, InProcessCluster};
use tonic::transport::Channel;
use tonic::Code;

async fn lease_client(c: &InProcessCluster, i: usize) -> LeaseClient<Channel> {
    LeaseClient::new(secured::lazy(
        secured::endpoint(&c.nodes[i].client_addr).timeout(Duration::from_secs(15)),
    ))
}

async fn put_leased(
    k: &mut KvClient<Channel>,
    key: &str,
    lease: i64,
) -> Result<i64, tonic::Status> {
    k.put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().header.unwrap().revision)
}

/// Every key, with its lease and mod revision.
async fn keys(k: &mut KvClient<Channel>) -> Vec<(String, i64, i64)> {
    k.range(RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .kvs
    .into_iter()
    .map(|kv| {
        (
            String::from_utf8(kv.key).unwrap(),
            kv.lease,
            kv.mod_revision,
        )
    })
    .collect()
}

async fn ttl_keys(l: &mut LeaseClient<Channel>, id: i64) -> Vec<String> {
    l.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .collect()
}

/// A watch of every key from revision `from` (0: now), created.
async fn watch_all(c: &InProcessCluster, i: usize, from: i64) -> WatchStream {
    WatchStream::everything(&c.nodes[i].client_addr, from).await
}

/// The next `n` events of `w`, as (type, key, mod revision); asserts the
/// events of one revision never straddle two responses.
async fn next_events(w: &mut WatchStream, n: usize) -> Vec<(i32, String, i64)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(Instant::now() < deadline, "only {got:?}");
        let Some(r) = w.next(Duration::from_secs(5)).await else {
            continue;
        };
        for e in r.events {
            let kv = e.kv.unwrap();
            got.push((
                e.r#type,
                String::from_utf8(kv.key).unwrap(),
                kv.mod_revision,
            ));
        }
    }
    got
}

/// A new 60 s lease's ID.
async fn grant(l: &mut LeaseClient<Channel>) -> i64 {
    l.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Asserts no key is left (every one went with its lease).
async fn assert_no_key_left(k: &mut KvClient<Channel>) {
    let left: Vec<String> = keys(k).await.into_iter().map(|(key, _, _)| key).collect();
    assert!(left.is_empty(), "keys outlived their lease: {left:?}");
}

/// A Lease client of node `nodes.0` and a KV client of node `nodes.1`, and
/// a new 60 s lease holding `keys`.
async fn leased_keys(
    c: &InProcessCluster,
    nodes: (usize, usize),
    keys: &[&str],
) -> (LeaseClient<Channel>, KvClient<Channel>, i64) {
    let mut l = lease_client(c, nodes.0).await;
    let mut k = c.kv(nodes.1).await;
    let id = grant(&mut l).await;
    for key in keys {
        put_leased(&mut k, key, id).await.unwrap();
    }
    (l, k, id)
}

/// Regions `[, f)`, `[f, q)`, `[q, )`.
async fn three_regions() -> InProcessCluster {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("f").await;
    c.split_at("q").await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_holds_keys_in_every_region_and_its_revoke_deletes_them_at_one_revision() {
    let c = three_regions().await;
    let (mut l, mut k, id) = leased_keys(&c, (1, 2), &["b", "k", "w", "x"]).await;
    // A lease that does not exist: etcd's answer, in any region.
    for key in ["c", "m"] {
        let s = put_leased(&mut k, key, id + 1).await.unwrap_err();
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found"),
            "{key}"
        );
    }
    assert_eq!(ttl_keys(&mut l, id).await, ["b", "k", "w", "x"]);
    // "x" leaves the lease in its own region: TimeToLive no longer names
    // it, and the revoke leaves it be.
    let detached = put_leased(&mut k, "x", 0).await.unwrap();
    assert_eq!(ttl_keys(&mut l, id).await, ["b", "k", "w"]);

    // (A watch from now starts at the lowest revision its regions have
    // resolved, which may be below a write just acknowledged.)
    let mut w = watch_all(&c, 0, detached + 1).await;
    let revision = l
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let after = keys(&mut k).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!((after[0].0.as_str(), after[0].1), ("x", 0));
    let events = next_events(&mut w, 3).await;
    assert_eq!(
        events,
        [
            (1, "b".to_string(), revision),
            (1, "k".to_string(), revision),
            (1, "w".to_string(), revision),
        ]
    );
    let t = l
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1);
    let s = l.lease_revoke(LeaseRevokeRequest { id }).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let s = put_leased(&mut k, "m", id).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_with_keys_in_several_regions_goes_at_one_revision() {
    let c = three_regions().await;
    let mut l = lease_client(&c, 0).await;
    let mut k = c.kv(1).await;
    let id = l
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut w = watch_all(&c, 2, 0).await;
    for key in ["g", "r", "s"] {
        put_leased(&mut k, key, id).await.unwrap();
    }
    let puts = next_events(&mut w, 3).await;
    let deletes = next_events(&mut w, 3).await;
    assert!(puts.iter().all(|e| e.0 == 0), "{puts:?}");
    let at = deletes[0].2;
    assert_eq!(
        deletes,
        [
            (1, "g".to_string(), at),
            (1, "r".to_string(), at),
            (1, "s".to_string(), at),
        ]
    );
    assert!(keys(&mut k).await.is_empty());
    let t = l
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_move_leased_keys_and_the_revoke_follows_them() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let (mut l, mut k, id) = leased_keys(&c, (0, 0), &["a", "m", "z"]).await;
    put_leased(&mut k, "n", 0).await.unwrap();
    c.split_at("h").await;
    c.split_at("t").await;
    let last = put_leased(&mut k, "n", 0).await.unwrap();
    assert_eq!(ttl_keys(&mut l, id).await, ["a", "m", "z"]);
    let mut w = watch_all(&c, 1, last + 1).await;
    let revision = l
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let events = next_events(&mut w, 3).await;
    assert!(
        events.iter().all(|e| e.0 == 1 && e.2 == revision),
        "{events:?}"
    );
    let left: Vec<String> = keys(&mut k).await.into_iter().map(|e| e.0).collect();
    assert_eq!(left, ["n"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_key_outlives_its_lease_while_puts_race_the_revoke() {
    let c = three_regions().await;
    let mut l = lease_client(&c, 0).await;
    for round in 0..3 {
        let id = grant(&mut l).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for (i, prefix) in ["c", "h", "t"].into_iter().enumerate() {
            let mut k = c.kv(i).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut acked = 0;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // "h" puts the same few keys again and again (a
                    // session refreshing its keys), the others new ones.
                    let key = match prefix {
                        "h" => format!("{prefix}{round}/{}", n % 4),
                        _ => format!("{prefix}{round}/{n}"),
                    };
                    n += 1;
                    match put_leased(&mut k, &key, id).await {
                        Ok(_) => acked += 1,
                        Err(s) if s.code() == Code::NotFound => break,
                        Err(s) => panic!("put {key}: {s}"),
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let took = Instant::now();
        l.lease_revoke(LeaseRevokeRequest { id }).await.unwrap();
        println!("round {round}: revoke took {:?}", took.elapsed());
        // Once revoked, every put with the lease is refused.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acked = 0;
        for w in writers {
            acked += w.await.unwrap();
        }
        assert!(acked > 0, "round {round}: no put took");
        let mut k = c.kv(round % 3).await;
        let orphans: Vec<_> = keys(&mut k)
            .await
            .into_iter()
            .filter(|e| e.1 == id)
            .collect();
        assert!(orphans.is_empty(), "round {round}: {orphans:?}");
    }
}

/// A backup across regions holds the lease table as of its revision:
/// taken while leases are granted, given keys in every region and revoked
/// one after another, every key it holds with a lease has that lease in
/// the backup, and every lease's keys are in it whole (a revoke deletes
/// them at one revision). The lease records come from the first region's
/// view at the backup's revision, the keys from a later view of every
/// region (`node::backup_view`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_across_regions_holds_each_leased_key_with_its_lease() {
    use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
    let c = three_regions().await;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut churn = Vec::new();
    for task in 0..4usize {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        let (mut l, mut k) = (lease_client(&c, task % 3).await, c.kv((task + 1) % 3).await);
        churn.push(tokio::spawn(async move {
            let mut previous = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = grant(&mut l).await;
                // One key per region, then the last lease goes.
                for prefix in ["c", "h", "t"] {
                    put_leased(&mut k, &format!("{prefix}/{task}/{n}"), id)
                        .await
                        .unwrap();
                }
                if let Some(old) = previous.replace(id) {
                    l.lease_revoke(LeaseRevokeRequest { id: old })
                        .await
                        .unwrap();
                }
                n += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while rounds.load(Ordering::Relaxed) < 12 {
        assert!(Instant::now() < deadline, "the churn is not churning");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for b in 0..12 {
        let channel = secured::channel(&c.nodes[b % 3].client_addr);
        let mut stream = MaintenanceClient::new(channel)
            .snapshot(SnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            bytes.extend_from_slice(&m.blob);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");
        std::fs::write(&file, &bytes[..bytes.len() - 32]).unwrap();
        let restored =
            cairn_store::restore(std::fs::File::open(&file).unwrap(), &dir.path().join("m"))
                .unwrap();
        let engine = cairn_storage::FjallEngine::open(dir.path().join("m/db")).unwrap();
        let view = cairn_storage::Engine::snapshot(&engine);
        let leases: std::collections::BTreeSet<i64> = cairn_mvcc::lease::list(&*view)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        let kvs = cairn_mvcc::range(&*view, &all, restored.revisions)
            .unwrap()
            .kvs;
        let mut by_lease: std::collections::BTreeMap<i64, usize> = Default::default();
        for kv in &kvs {
            *by_lease.entry(kv.lease).or_default() += 1;
        }
        for id in by_lease.keys() {
            let key = kvs.iter().find(|kv| kv.lease == *id).unwrap();
            assert!(
                leases.contains(id),
                "backup {b} at {}: {:?} is kept on lease {id:x}, which the backup does not hold",
                restored.revisions.current,
                String::from_utf8_lossy(&key.key)
            );
        }
        // Only each task's newest lease may still be getting its keys.
        let partial: Vec<_> = by_lease.iter().filter(|(_, n)| **n != 3).collect();
        assert!(
            partial.len() <= 4,
            "backup {b}: leases with some of their keys: {partial:x?}"
        );
        assert!(!kvs.is_empty(), "backup {b} holds no key");
    }
    stop.store(true, Ordering::Relaxed);
    for task in churn {
        task.await.unwrap();
    }
    c.shutdown().await;
}

/// A key that left its lease while it lived in another region is not
/// named by TimeToLive after the first region (which keeps the lease
/// table) absorbs that region by a merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_detached_in_a_region_the_first_absorbed_is_not_named_by_its_lease() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    // (The last two regions never merge: a third keeps them apart.)
    c.split_at("t").await;
    let (mut l, mut k, id) = leased_keys(&c, (0, 0), &["a", "p", "y"]).await;
    put_leased(&mut k, "p", 0).await.unwrap();
    assert_eq!(ttl_keys(&mut l, id).await, ["a", "y"]);
    c.node(0).merge_regions(DATA_REGION).await.unwrap();
    assert_eq!(ttl_keys(&mut l, id).await, ["a", "y"]);
    c.shutdown().await;
}

/// A revoke whose primary prewrite met the lock of a transaction putting
/// the lease's keys waits for it, and when it commits, finds on its next
/// prewrite that the lease gained a key: it names it and goes on. That
/// answer once counted as a refusal, the attempt started again and left
/// its lock at the primary, which its next attempt then waited out (1.5 s)
/// as another's — as did every put with the lease meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_that_waited_on_a_txn_putting_its_keys_names_the_new_ones_at_once() {
    let c = three_regions().await;
    let (_, mut k, id) = leased_keys(&c, (0, 0), &["a0", "g1"]).await;
    let leased = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"w".to_vec(),
            lease: id,
            ..Default::default()
        })),
    };
    // "a0" again and a new key, "r1", on the lease: held after its
    // prewrites, its lock on "a0" in the first region (the revoke's
    // primary, which names "a0").
    let req = TxnRequest {
        success: vec![leased("a0"), leased("r1")],
        ..Default::default()
    };
    let (go, held) = tokio::sync::oneshot::channel();
    let coordinator = c.node(1).clone();
    let txn = tokio::spawn(async move {
        coordinator
            .txn_across_held(&req, &cairn_store::Access::Internal, held)
            .await
    });
    let first = c.node(0).route(b"a0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.shared.with_applied(|a| a.locks.held.is_empty()) {
        assert!(Instant::now() < deadline, "the transaction never locked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A revoke that read the index before the transaction's prewrites:
    // it names "a0" and "g1" only.
    let revoker = c.node(0).clone();
    let revoke = tokio::spawn(async move {
        revoker
            .revoke_naming_first(id, vec![b"a0".to_vec(), b"g1".to_vec()])
            .await
    });
    // The revoke meets the lock and waits on it; then the transaction
    // commits, "r1" joining the lease.
    tokio::time::sleep(Duration::from_millis(300)).await;
    go.send(()).unwrap();
    assert!(txn.await.unwrap().unwrap().succeeded);
    let committed = Instant::now();
    revoke.await.unwrap().unwrap();
    let took = committed.elapsed();
    assert_no_key_left(&mut k).await;
    assert!(
        took < Duration::from_millis(1200),
        "the revoke ended {took:?} after the transaction committed"
    );
    c.shutdown().await;
}

/// The TimeToLive of lease `id` (-1: gone).
async fn ttl_of(l: &mut LeaseClient<Channel>, id: i64) -> i64 {
    l.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner()
        .ttl
}

/// Waits until the first region holds a lock (on node 0's replica).
async fn first_region_locked(c: &InProcessCluster, what: &str) {
    let first = c.node(0).route(b"a").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.shared.with_applied(|a| a.locks.held.is_empty()) {
        assert!(Instant::now() < deadline, "{what} never locked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An expiry across regions starts over when its attempt is rolled back,
/// reading the lease by its ID again. Held up after its prewrites until
/// the client's own revoke rolled it back and the client granted the same
/// ID again, it once revoked the new lease — a lock key on it deleted
/// while its keep-alives were answered. A grant of the ID now waits for
/// the expiry under way, which then finds the lease gone and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expiry_held_up_past_the_clients_revoke_leaves_a_new_grant_of_its_id_alone() {
    const ID: i64 = 0x2a;
    let c = three_regions().await;
    let mut l = lease_client(&c, 0).await;
    let mut k = c.kv(0).await;
    l.lease_grant(LeaseGrantRequest { ttl: 2, id: ID })
        .await
        .unwrap();
    put_leased(&mut k, "b", ID).await.unwrap();
    put_leased(&mut k, "k", ID).await.unwrap();
    // Whichever member leads the first region decides the expiry.
    let holds: Vec<_> = (0..3).map(|i| c.node(i).hold_next_expiry()).collect();
    first_region_locked(&c, "the expiry").await;
    // The client's revoke waits out the held expiry's lock, rolls it back
    // and revokes the lease itself.
    l.lease_revoke(LeaseRevokeRequest { id: ID }).await.unwrap();
    let mut again = l.clone();
    let grant = tokio::spawn(async move {
        again
            .lease_grant(LeaseGrantRequest { ttl: 60, id: ID })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for go in holds {
        let _ = go.send(());
    }
    grant.await.unwrap().unwrap();
    put_leased(&mut k, "k", ID)
        .await
        .expect("the new lease went with the old one's expiry");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ttl = ttl_of(&mut l, ID).await;
    assert!(
        ttl > 0,
        "the new lease went with the old one's expiry: TTL {ttl}"
    );
    let left = keys(&mut k).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].0.as_str(), left[0].1), ("k", ID));
    c.shutdown().await;
}

/// An expired lease whose key a transaction across regions has locked is
/// revoked once the lock is resolved (the transaction held past the
/// lock's life is rolled back), as any write meeting it would be. Its
/// one-command revoke once answered "locked" and was left to the next
/// retry, 3 s on — again and again while the lock stood — with its
/// keep-alives answering 0 and its key still in everyone's way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_whose_key_a_transaction_locked_goes_once_the_lock_is_resolved() {
    let c = three_regions().await;
    let mut l = lease_client(&c, 0).await;
    let mut k = c.kv(0).await;
    let granted = l
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner();
    let since = Instant::now();
    put_leased(&mut k, "b", granted.id).await.unwrap();
    let put = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"t".to_vec(),
            ..Default::default()
        })),
    };
    let req = TxnRequest {
        success: vec![put("b"), put("k")],
        ..Default::default()
    };
    // The lock is placed shortly before the lease expires, so the sweeper
    // has not rolled it back yet when the expiry meets it. The expiry then
    // waits out the lock (1.5 s) and resolves it, rather than waiting for
    // its next retry (3 s on).
    let ttl = Duration::from_secs(granted.ttl as u64);
    tokio::time::sleep((ttl - Duration::from_millis(700)).saturating_sub(since.elapsed())).await;
    let (go, held) = tokio::sync::oneshot::channel();
    let coordinator = c.node(1).clone();
    let txn = tokio::spawn(async move {
        coordinator
            .txn_across_held(&req, &cairn_store::Access::Internal, held)
            .await
    });
    first_region_locked(&c, "the transaction").await;
    let limit = ttl + Duration::from_millis(2700);
    while ttl_of(&mut l, granted.id).await != -1 {
        assert!(
            since.elapsed() < limit,
            "the lease outlived its TTL by {:?} behind a lock",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = go.send(());
    let _ = txn.await.unwrap();
    assert!(
        keys(&mut k).await.iter().all(|(_, lease, _)| *lease == 0),
        "a key kept the revoked lease"
    );
    c.shutdown().await;
}

/// A revoke told that its lease has more keys than it named widens its
/// lock in the first region (its primary). A resolver that read the
/// narrow lock, and asks the primary for the outcome only after the
/// widened revoke committed there (and its coordinator died), must finish
/// every region the widened lock named, not only the narrow lock's: the
/// outcome is forgotten after, and a part left would be rolled back, its
/// key outliving the revoked lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resolver_that_read_a_revokes_narrow_lock_finishes_every_region_it_widened_to() {
    let c = three_regions().await;
    let (_, mut k, id) = leased_keys(&c, (0, 0), &["a0", "g1", "r1"]).await;
    let (go_revoke, held) = tokio::sync::oneshot::channel();
    let revoker = c.node(1).clone();
    let revoke = tokio::spawn(async move {
        revoker
            .revoke_widened_then_crash(id, vec![b"a0".to_vec()], held)
            .await
    });
    // Its narrow lock, on "a0" alone, in the first region.
    let first = c.node(2).route(b"a0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let start_ts = loop {
        if let Some(ts) = first
            .shared
            .with_applied(|a| a.locks.held.keys().next().copied())
        {
            break ts;
        }
        assert!(Instant::now() < deadline, "the revoke never locked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A resolver reads it, and waits before asking the primary.
    let resolver = c.node(2).clone();
    let go_resolve = resolver.hold_next_settle();
    let lock = cairn_mvcc::locks::LockRef {
        start_ts,
        primary: first.id,
    };
    let resolve = tokio::spawn(async move { resolver.settle_now(first.id, lock).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The revoke widens, locks every region, commits its primary and dies.
    go_revoke.send(()).unwrap();
    revoke.await.unwrap().unwrap();
    go_resolve.send(()).unwrap();
    resolve.await.unwrap().unwrap();
    // Every key went with the lease (a part left locked would be rolled
    // back by whoever met it, its outcome forgotten).
    assert_no_key_left(&mut k).await;
    c.shutdown().await;
}
