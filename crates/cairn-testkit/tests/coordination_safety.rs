//! Coordination safety: each test reproduces a way a lease, lock or watch
//! used to fail its user (two lock holders, a lease expiring early, a watch
//! ending early) and fails on the code before the fix.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::*;
use cairn_api::v3electionpb::election_client::ElectionClient;
use cairn_api::v3electionpb::CampaignRequest;
use cairn_api::v3lockpb::lock_client::LockClient;
use cairn_api::v3lockpb::{LockRequest, UnlockRequest};
use cairn_store::DATA_REGION;
use cairn_testkit::{secured, InProcessCluster};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(addr: &str) -> Channel {
    secured::lazy(secured::endpoint(addr).timeout(Duration::from_secs(20)))
}

async fn grant(ch: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(ch.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_cannot_renew_a_lease() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let node = c.node(leader).clone();
    let (id, _) = node
        .lease_grant(0, 10, &cairn_store::Access::Internal)
        .await
        .unwrap();
    assert_eq!(node.lease_keep_alive(id).await.unwrap(), 10);

    // Cut the leader off from its followers; clients still reach it. Past
    // its read lease it can no longer prove it leads, so it must not renew:
    // the majority side will elect a leader that expires the lease on its
    // own clock.
    c.isolate(leader);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let renewed = tokio::time::timeout(Duration::from_secs(3), node.lease_keep_alive(id)).await;
    assert!(
        !matches!(renewed, Ok(Ok(ttl)) if ttl > 0),
        "an isolated leader renewed a lease: {renewed:?}"
    );
    c.heal();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_clears_the_checkpointed_ttl_before_a_leader_change() {
    // Checkpoints every 2 s (the test cluster's interval): after ~7 s the
    // stored remaining TTL is ~13 of 20.
    let mut c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let node = c.node(leader).clone();
    let (id, _) = node
        .lease_grant(0, 20, &cairn_store::Access::Internal)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    let renewed_at = Instant::now();
    assert_eq!(node.lease_keep_alive(id).await.unwrap(), 20);
    drop(node);

    // The new leader must count the full 20 s from the renewal, not resume
    // from the checkpoint taken before it.
    c.stop(leader).await;
    let other = (leader + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(10);
    let ttl = loop {
        match c.node(other).lease_time_to_live(id, false).await {
            Ok(Some(t)) => break t,
            other if Instant::now() < deadline => {
                let _ = other;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("no TimeToLive after the leader change: {other:?}"),
        }
    };
    let since = renewed_at.elapsed().as_secs() as i64;
    assert!(
        ttl.remaining >= 20 - since - 1,
        "lease resumed from a stale checkpoint: {} s left, {since} s after a renewal of 20 s",
        ttl.remaining
    );
    c.shutdown().await;
}

/// Grants a lease of `ttl` s at the lease leader of `c`, waits until it is
/// checkpointed (every 2 s here: a renewal must then clear it), and renews
/// it while that leader's proposals are held for `held`: returns its ID
/// and when the renewal was answered (with the full TTL).
async fn renewed_late(
    c: &InProcessCluster,
    leader: usize,
    ttl: i64,
    held: Duration,
) -> (i64, Instant) {
    let node = c.node(leader).clone();
    let (id, _) = node
        .lease_grant(0, ttl, &cairn_store::Access::Internal)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    node.hold_proposals(DATA_REGION, true).unwrap();
    let renewing = tokio::spawn({
        let node = node.clone();
        async move { node.lease_keep_alive(id).await }
    });
    tokio::time::sleep(held).await;
    assert!(!renewing.is_finished(), "the renewal did not wait to clear");
    node.hold_proposals(DATA_REGION, false).unwrap();
    assert_eq!(renewing.await.unwrap().unwrap(), ttl);
    (id, Instant::now())
}

/// How long after `answered` member `i` finds lease `id` gone (polled).
async fn lived_after(c: &InProcessCluster, i: usize, id: i64, answered: Instant) -> Duration {
    let deadline = answered + Duration::from_secs(30);
    loop {
        if let Ok(None) = c.node(i).lease_time_to_live(id, false).await {
            return answered.elapsed();
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A renewal answered late — its checkpoint's clear waited behind held
/// proposals — counts the lease's TTL from its answer, as the client does
/// (clientv3 sets its deadline when it hears the TTL): counted from the
/// request, the leader expired the lease as long before the client's
/// deadline as the answer was late, and a lock holder cut off right after
/// the renewal would have believed in its key while another took the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_answered_late_counts_the_ttl_from_its_answer() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let (id, answered) = renewed_late(&c, leader, 6, Duration::from_secs(3)).await;
    // Not renewed again: when does the leader let it go?
    let lived = lived_after(&c, leader, id, answered).await;
    assert!(
        lived >= Duration::from_millis(5_500),
        "expired {lived:?} after a renewal of 6 s was answered"
    );
    c.shutdown().await;
}

/// A renewal answered late, then a leader change: no checkpoint of the
/// lease is queued while its clear waits, so the new leader counts the
/// full TTL (the clear stored none) rather than a remaining TTL from the
/// old count, checkpointed behind the clear — which ended the lease
/// seconds before the deadline its client was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_answered_late_then_a_leader_change_keeps_the_ttl_told() {
    let mut c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    // Three checkpoint rounds come due while the clear waits.
    let (id, answered) = renewed_late(&c, leader, 12, Duration::from_secs(6)).await;
    // What a new leader would take up: the clear, not a checkpoint of
    // the old count that landed behind it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = {
        let region = c.node(leader).region(DATA_REGION).unwrap();
        let (view, _) = region.shared.read_view();
        cairn_mvcc::lease::get(&*view, id)
            .unwrap()
            .unwrap()
            .remaining
    };
    assert_eq!(
        stored, 0,
        "a checkpoint of the old count landed after the clear"
    );
    c.stop(leader).await;
    // Not before the deadline its client counts (less the polling step).
    let lived = lived_after(&c, (leader + 1) % 3, id, answered).await;
    assert!(
        lived >= Duration::from_millis(11_800),
        "expired {lived:?} after a renewal of 12 s was answered"
    );
    c.shutdown().await;
}

/// Grants of a live lease's ID one after another (each refused: it
/// exists) do not keep it alive: an expiry waits for a grant of its ID
/// being proposed, but not past the lease's deadline by more than a grant
/// waits. Before, any caller looping grants of the ID kept a lease nobody
/// renewed, and the lock key on it, alive for as long as it went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_of_a_live_leases_id_do_not_keep_it_alive() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let node = c.node(leader).clone();
    let (id, _) = node
        .lease_grant(0, 2, &cairn_store::Access::Internal)
        .await
        .unwrap();
    let granted = Instant::now();
    // Its key goes when it expires (a grant of the ID after that is a new
    // lease, without it).
    let mut kv = c.kv(leader).await;
    kv.put(PutRequest {
        key: b"held".to_vec(),
        value: b"v".to_vec(),
        lease: id,
        ..Default::default()
    })
    .await
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut grants = Vec::new();
    for i in 0..4 {
        let (node, stop) = (c.node(i % 3).clone(), stop.clone());
        grants.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = node
                    .lease_grant(id, 2, &cairn_store::Access::Internal)
                    .await;
            }
        }));
    }
    let deadline = granted + Duration::from_secs(12);
    let gone = loop {
        if let Ok(None) = cairn_testkit::kv::get(&mut kv, "held", false).await {
            break granted.elapsed();
        }
        assert!(Instant::now() < deadline, "a lease of 2 s lived 12 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for g in grants {
        g.await.unwrap();
    }
    assert!(
        gone < Duration::from_secs(8),
        "gone only {gone:?} after its grant"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_with_lease_zero_get_keys_of_their_own_and_wait() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let ch = channel(&c.nodes[0].client_addr).await;
    let mut a = LockClient::new(ch.clone());
    let mut b = LockClient::new(channel(&c.nodes[1].client_addr).await);
    let ka = a
        .lock(LockRequest {
            name: b"z".to_vec(),
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let waiting = tokio::spawn(async move {
        b.lock(LockRequest {
            name: b"z".to_vec(),
            lease: 0,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "a second lease-0 locker got the lock while the first held it"
    );
    // The holder's key is bound to a fresh lease of etcd's session TTL.
    let lease = i64::from_str_radix(std::str::from_utf8(&ka[2..]).unwrap(), 16).unwrap();
    let ttl = LeaseClient::new(ch.clone())
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert_eq!(ttl.keys, vec![ka.clone()]);
    a.unlock(UnlockRequest { key: ka.clone() }).await.unwrap();
    let kb = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner()
        .key;
    assert_ne!(ka, kb);

    // Campaign with lease 0 likewise: the second campaigner waits.
    let mut e0 = ElectionClient::new(ch.clone());
    let mut e1 = ElectionClient::new(channel(&c.nodes[2].client_addr).await);
    let first = e0
        .campaign(CampaignRequest {
            name: b"ez".to_vec(),
            lease: 0,
            value: b"a".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_ne!(first.lease, 0, "the campaigner is told its session lease");
    let second = tokio::spawn(async move {
        e1.campaign(CampaignRequest {
            name: b"ez".to_vec(),
            lease: 0,
            value: b"b".to_vec(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!second.is_finished(), "two lease-0 campaigners both lead");
    second.abort();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_whose_lease_ended_is_told_its_session_expired() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let ch = channel(&c.nodes[0].client_addr).await;
    let (la, lb) = (grant(&ch, 30).await, grant(&ch, 30).await);
    let mut a = LockClient::new(ch.clone());
    let mut b = LockClient::new(channel(&c.nodes[1].client_addr).await);
    let ka = a
        .lock(LockRequest {
            name: b"w".to_vec(),
            lease: la,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let waiting = tokio::spawn(async move {
        b.lock(LockRequest {
            name: b"w".to_vec(),
            lease: lb,
        })
        .await
    });
    // B waits once its key is in (two keys under the name).
    let mut kv = kv_client::KvClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = kv
            .range(RangeRequest {
                key: b"w/".to_vec(),
                range_end: b"w0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count;
        if keys == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "B never queued: {keys} keys");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B's lease ends while it waits: its key is deleted.
    LeaseClient::new(ch.clone())
        .lease_revoke(LeaseRevokeRequest { id: lb })
        .await
        .unwrap();
    a.unlock(UnlockRequest { key: ka }).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    let err = got.expect_err("a waiter without a key was told it holds the lock");
    assert_eq!(err.code(), Code::Unknown);
    assert_eq!(err.message(), "mutex: session is expired");
    // And nobody holds the lock: a third locker gets it at once.
    let lc = grant(&ch, 30).await;
    tokio::time::timeout(
        Duration::from_secs(3),
        LockClient::new(ch.clone()).lock(LockRequest {
            name: b"w".to_vec(),
            lease: lc,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_lock_call_leaves_the_key_a_retry_with_its_lease_took_over() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let ch = channel(&c.nodes[0].client_addr).await;
    let (la, lb, lc) = (
        grant(&ch, 60).await,
        grant(&ch, 60).await,
        grant(&ch, 60).await,
    );
    let lock = |lease: i64| {
        let mut l = LockClient::new(ch.clone());
        tokio::spawn(async move {
            l.lock(LockRequest {
                name: b"r".to_vec(),
                lease,
            })
            .await
        })
    };
    let kv = kv_client::KvClient::new(ch.clone());
    let b_key = format!("r/{lb:x}").into_bytes();
    let b_key_there = {
        let key = b_key.clone();
        move || {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move {
                let r = kv
                    .range(RangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                r.kvs.into_iter().next()
            }
        }
    };
    let a_key = lock(la).await.unwrap().unwrap().into_inner().key;
    // B waits behind A; its client gives up and calls again with the same
    // lease, which takes B's key over (same place in line).
    let first = lock(lb);
    let deadline = Instant::now() + Duration::from_secs(10);
    let entered = loop {
        if let Some(kv) = b_key_there().await {
            break kv;
        }
        assert!(Instant::now() < deadline, "B never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let second = lock(lb);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_key_there()
        .await
        .is_some_and(|kv| kv.mod_revision == entered.mod_revision)
    {
        assert!(
            Instant::now() < deadline,
            "the retry never took the key over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first call ends now: its clean-up must not delete the key the
    // retry holds its place with.
    first.abort();
    let _ = first.await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let kept = b_key_there()
        .await
        .expect("the abandoned call deleted the retry's key");
    assert_eq!(kept.create_revision, entered.create_revision);
    // A unlocks: the retry holds the lock, and a third locker waits.
    LockClient::new(ch.clone())
        .unlock(UnlockRequest { key: a_key })
        .await
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner()
        .key;
    assert_eq!(held, b_key);
    let third = lock(lc);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a second holder while B holds the lock"
    );
    assert!(b_key_there().await.is_some());
    LockClient::new(ch.clone())
        .unlock(UnlockRequest { key: held })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_survives_the_client_half_closing_its_send_side() {
    let c = InProcessCluster::start(1).await;
    c.wait_leader(DATA_REGION).await;
    let ch = channel(&c.nodes[0].client_addr).await;
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"hc".to_vec(),
            ..Default::default()
        })),
    };
    // One request, then the sending side ends (as grpc-gateway does).
    let mut inbound = WatchClient::new(ch.clone())
        .watch(tokio_stream::iter(vec![create]))
        .await
        .unwrap()
        .into_inner();
    let created = inbound.message().await.unwrap().unwrap();
    assert!(created.created);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut k = c.kv(0).await;
    k.put(PutRequest {
        key: b"hc".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("no event after a half-close")
        .expect("stream failed")
        .expect("stream ended after the client half-closed");
    assert_eq!(got.events.len(), 1);
    assert_eq!(got.events[0].kv.as_ref().unwrap().value, b"1");
    c.shutdown().await;
}

/// A Lock call with the lease of the lock's holder (the same session) holds
/// it too, at once, as etcd's `Mutex.Lock` returns when the session's key
/// is first. Given up at any point, it must not delete the key the holder
/// holds the lock with: the holder would go on while a waiter takes the
/// lock. (Its clean-up was armed while it checked its place in line, and
/// its takeover write made the key look like its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_call_with_the_holders_lease_given_up_leaves_the_held_key() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let ch = channel(&c.nodes[0].client_addr).await;
    let (holder, waiter) = (grant(&ch, 60).await, grant(&ch, 60).await);
    let lock = |lease: i64| {
        let mut l = LockClient::new(ch.clone());
        tokio::spawn(async move {
            l.lock(LockRequest {
                name: b"h".to_vec(),
                lease,
            })
            .await
        })
    };
    let held = lock(holder).await.unwrap().unwrap().into_inner().key;
    let waiting = lock(waiter);
    // Given up at points spread over a whole call's time.
    let took = Instant::now();
    lock(holder).await.unwrap().unwrap();
    let took = took.elapsed();
    let mut kv = kv_client::KvClient::new(ch.clone());
    let mut returned = 0;
    for i in 0..40u32 {
        let again = lock(holder);
        tokio::time::sleep(took * (i % 20) / 16).await;
        again.abort();
        if let Ok(Ok(r)) = again.await.map(|r| r.map(|r| r.into_inner())) {
            assert_eq!(r.key, held, "the session's key");
            returned += 1;
        }
        let r = kv
            .range(RangeRequest {
                key: held.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.kvs.len(), 1, "the held key was deleted (call {i})");
        assert!(!waiting.is_finished(), "a second holder (call {i})");
    }
    // Some calls ran to the end: each held the lock at once.
    let r = lock(holder).await.unwrap().unwrap().into_inner();
    assert_eq!(r.key, held);
    eprintln!("{returned} of 40 given-up calls had returned");
    LockClient::new(ch.clone())
        .unlock(UnlockRequest { key: held })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    c.shutdown().await;
}
