//! Leases, locks and elections over the real API, including a killed leader.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::*;
use cairn_api::v3electionpb::election_client::ElectionClient;
use cairn_api::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use cairn_api::v3lockpb::lock_client::LockClient;
use cairn_api::v3lockpb::{LockRequest, UnlockRequest};
use cairn_store::DATA_REGION;
use cairn_testkit::watch::WatchStream;
use cairn_testkit::{kv, secured, InProcessCluster};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(addr: &str) -> Channel {
    secured::lazy(secured::endpoint(addr).timeout(Duration::from_secs(15)))
}

async fn put_with_lease(
    k: &mut cairn_api::etcdserverpb::kv_client::KvClient<Channel>,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_lifecycle_and_errors() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let follower = (leader + 1) % 3;
    let mut l = LeaseClient::new(channel(&c.nodes[follower].client_addr).await);
    let mut k = c.kv(follower).await;

    let g = l
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(g.id > 0 && g.ttl == 60);
    let chosen = l
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 42 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(chosen.id, 42);
    let s = l
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 42 })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let s = l
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );

    put_with_lease(&mut k, "l/a", g.id).await.unwrap();
    put_with_lease(&mut k, "l/b", g.id).await.unwrap();
    put_with_lease(&mut k, "l/c", 42).await.unwrap();
    // Moving a key to another lease detaches it from the first.
    put_with_lease(&mut k, "l/b", 42).await.unwrap();
    let t = l
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((t.granted_ttl, t.keys.clone()), (60, vec![b"l/a".to_vec()]));
    assert!(t.ttl > 55 && t.ttl <= 60, "{t:?}");
    let list = l
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<i64> = list.leases.iter().map(|s| s.id).collect();
    assert!(ids.contains(&g.id) && ids.contains(&42));

    // Revoke deletes exactly the attached keys, in one revision, with events.
    let mut w = WatchStream::open(&c.nodes[follower].client_addr)
        .await
        .unwrap();
    w.create(WatchCreateRequest {
        key: "l/".into(),
        range_end: "l0".into(),
        ..Default::default()
    })
    .await;
    assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
    l.lease_revoke(LeaseRevokeRequest { id: 42 }).await.unwrap();
    let ev = w.next(Duration::from_secs(5)).await.unwrap();
    let deleted: Vec<Vec<u8>> = ev
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().key.clone())
        .collect();
    assert_eq!(deleted, vec![b"l/b".to_vec(), b"l/c".to_vec()]);
    assert!(ev.events.iter().all(|e| e.r#type == 1));
    assert_eq!(kv::prefix(&mut k, "l/", false).await.unwrap().count, 1);

    // Unknown leases: etcd's answers.
    let s = l
        .lease_revoke(LeaseRevokeRequest { id: 42 })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let t = l
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 42,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1);
    let s = put_with_lease(&mut k, "l/x", 42).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id: 42 }).await.unwrap();
    let mut ka = l
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ka.message().await.unwrap().unwrap().ttl,
        0,
        "keep-alive of an unknown lease answers TTL 0"
    );
    c.shutdown().await;
}

/// A keep-alive that arrives after a lease's deadline, before its revoke
/// applied, answers TTL 0 only once the revoke did (etcd's `Renew` waits
/// for it): a client told 0 then finds its lease's key gone. Answered at
/// once, it could reach a client while the key was still there — and, had
/// the leader been deposed before the revoke committed, for another TTL.
/// (The lessor looks for expired leases every 200 ms; a keep-alive 30 ms
/// past the deadline mostly lands before the revoke: before the change
/// this failed on the first try.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keep_alive_past_the_deadline_answers_0_once_the_revoke_applied() {
    let c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let ch = channel(&c.nodes[leader].client_addr).await;
    let mut l = LeaseClient::new(ch.clone());
    let mut k = kv::connect(&c.nodes[leader].client_addr).await;
    for attempt in 0..3 {
        let granted = Instant::now();
        let grant = l
            .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
            .await
            .unwrap()
            .into_inner();
        // (etcd raises a TTL below its minimum; the answer says.)
        let id = grant.id;
        let key = format!("ka/{attempt}");
        put_with_lease(&mut k, &key, id).await.unwrap();
        let past = Duration::from_secs(grant.ttl as u64) + Duration::from_millis(30);
        tokio::time::sleep_until((granted + past).into()).await;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
        let mut ka = l
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let ttl = ka.message().await.unwrap().unwrap().ttl;
        if ttl > 0 {
            // Renewed: the deadline had not passed on the leader yet.
            continue;
        }
        assert_eq!(
            kv::get(&mut k, &key, false).await.unwrap(),
            None,
            "told TTL 0, but the lease's key is still there"
        );
        c.shutdown().await;
        return;
    }
    panic!("no keep-alive landed past the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_survives_a_killed_leader_without_early_expiry_or_leaked_keys() {
    let mut c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let other = (leader + 1) % 3;
    let mut l = LeaseClient::new(channel(&c.nodes[other].client_addr).await);
    let mut k = c.kv(other).await;
    let kept = l
        .lease_grant(LeaseGrantRequest { ttl: 8, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let dropped = l
        .lease_grant(LeaseGrantRequest { ttl: 8, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    put_with_lease(&mut k, "e/kept", kept).await.unwrap();
    put_with_lease(&mut k, "e/dropped", dropped).await.unwrap();
    let granted_at = Instant::now();

    // Keep one lease alive through a keep-alive stream on a surviving node.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut ka = l
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let keeper = tokio::spawn(async move {
        loop {
            if tx.send(LeaseKeepAliveRequest { id: kept }).await.is_err() {
                return;
            }
            match ka.message().await {
                Ok(Some(r)) if r.ttl > 0 => {}
                _ => {} // leader change in progress: keep trying
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.stop(leader).await;
    c.wait_leader(DATA_REGION).await;
    // No early expiry: before 8 s have passed since the grant, both keys exist.
    let mut k = c.kv(other).await;
    let r = kv::prefix(&mut k, "e/", false).await.unwrap();
    if granted_at.elapsed() < Duration::from_millis(7800) {
        assert_eq!(r.count, 2, "a lease expired early across the leader change");
    }
    // No leaked keys: the unrefreshed lease expires (soon after its TTL, plus
    // at most one TTL for the leader change), the refreshed one stays.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = kv::prefix(&mut k, "e/", false).await.unwrap();
        let keys: Vec<Vec<u8>> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
        if keys == vec![b"e/kept".to_vec()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired lease's key leaked: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = l
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: dropped,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1, "the expired lease is gone");
    keeper.abort();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_serialize_holders_and_elections_follow_create_order() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let ch0 = channel(&c.nodes[0].client_addr).await;
    let ch1 = channel(&c.nodes[1].client_addr).await;
    let mut l0 = LeaseClient::new(ch0.clone());
    let lease_a = l0
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let lease_b = l0
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;

    let mut a = LockClient::new(ch0.clone());
    let mut b = LockClient::new(ch1.clone());
    let ka = a
        .lock(LockRequest {
            name: b"m".to_vec(),
            lease: lease_a,
        })
        .await
        .unwrap()
        .into_inner();
    let waiting = tokio::spawn(async move {
        b.lock(LockRequest {
            name: b"m".to_vec(),
            lease: lease_b,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "second locker must wait while the first holds the lock"
    );
    a.unlock(UnlockRequest {
        key: ka.key.clone(),
    })
    .await
    .unwrap();
    let kb = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(kb.key.starts_with(b"m/"));
    // Fencing: the holder's key carries a later create revision.
    let mut k = c.kv(0).await;
    let r = kv::prefix(&mut k, "m/", false).await.unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].key, kb.key);
    assert!(r.kvs[0].create_revision > ka.header.unwrap().revision - 1);

    // Elections.
    let mut e0 = ElectionClient::new(ch0);
    let mut e1 = ElectionClient::new(ch1);
    let s = e0
        .leader(LeaderRequest {
            name: b"el".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.message(), "election: no leader");
    let lead = e0
        .campaign(CampaignRequest {
            name: b"el".to_vec(),
            lease: lease_a,
            value: b"alice".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    let mut observe = e1
        .observe(LeaderRequest {
            name: b"el".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        observe.message().await.unwrap().unwrap().kv.unwrap().value,
        b"alice"
    );
    let mut e1b = e1.clone();
    let second = tokio::spawn(async move {
        e1b.campaign(CampaignRequest {
            name: b"el".to_vec(),
            lease: lease_b,
            value: b"bob".to_vec(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished());
    e0.proclaim(ProclaimRequest {
        leader: Some(lead.clone()),
        value: b"alice2".to_vec(),
    })
    .await
    .unwrap();
    assert_eq!(
        observe.message().await.unwrap().unwrap().kv.unwrap().value,
        b"alice2"
    );
    let leader_now = e1
        .leader(LeaderRequest {
            name: b"el".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leader_now.kv.unwrap().value, b"alice2");
    e0.resign(ResignRequest {
        leader: Some(lead.clone()),
    })
    .await
    .unwrap();
    let bob = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(
        observe.message().await.unwrap().unwrap().kv.unwrap().value,
        b"bob"
    );
    // The old leader's key is a dead fencing token now.
    let s = e0
        .proclaim(ProclaimRequest {
            leader: Some(lead),
            value: b"stale".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.message(), "election: not leader");
    let stale = LeaderKey {
        rev: 1,
        ..bob.leader.clone().unwrap()
    };
    assert!(e0
        .proclaim(ProclaimRequest {
            leader: Some(stale),
            value: b"x".to_vec()
        })
        .await
        .is_err());
    c.shutdown().await;
}

/// Node 0 campaigns in election `name` with value "v0" on a new 60 s
/// lease: its Election client and leader key.
async fn lead_with_v0(c: &InProcessCluster, name: &[u8]) -> (ElectionClient<Channel>, LeaderKey) {
    let ch0 = channel(&c.nodes[0].client_addr).await;
    let lease = LeaseClient::new(ch0.clone())
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut e0 = ElectionClient::new(ch0);
    let lead = e0
        .campaign(CampaignRequest {
            name: name.to_vec(),
            lease,
            value: b"v0".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    (e0, lead)
}

/// An Observe of election `name` through node 1, its first answer "v0".
async fn observing_v0(
    c: &InProcessCluster,
    name: &[u8],
) -> tonic::Streaming<cairn_api::v3electionpb::LeaderResponse> {
    let mut observe = ElectionClient::new(channel(&c.nodes[1].client_addr).await)
        .observe(LeaderRequest {
            name: name.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = observe.message().await.unwrap().unwrap();
    assert_eq!(first.kv.unwrap().value, b"v0");
    observe
}

/// [`lead_with_v0`], then [`observing_v0`].
async fn lead_and_observe(
    c: &InProcessCluster,
    name: &[u8],
) -> (
    ElectionClient<Channel>,
    LeaderKey,
    tonic::Streaming<cairn_api::v3electionpb::LeaderResponse>,
) {
    let (e0, lead) = lead_with_v0(c, name).await;
    (e0, lead, observing_v0(c, name).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observe_goes_on_after_a_compaction_past_the_leaders_value() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let (mut e0, lead) = lead_with_v0(&c, b"obsc").await;
    // Other writes, then the store compacted past the leader's value.
    let mut kv = c.kv(0).await;
    let mut at = 0;
    for i in 0..5 {
        at = kv::put(&mut kv, &format!("other{i}"), "x").await.unwrap();
    }
    kv.compact(CompactionRequest {
        revision: at,
        physical: true,
    })
    .await
    .unwrap();
    let mut observe = observing_v0(&c, b"obsc").await;
    e0.proclaim(ProclaimRequest {
        leader: Some(lead),
        value: b"v1".to_vec(),
    })
    .await
    .unwrap();
    // Followed from the read's revision: nothing compacted in the way.
    let next = tokio::time::timeout(Duration::from_secs(10), observe.message())
        .await
        .expect("the proclaimed value was not reported")
        .unwrap()
        .expect("the observer's stream ended");
    assert_eq!(next.kv.unwrap().value, b"v1");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observe_reports_every_value_proclaimed_while_its_region_splits() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let (mut e0, lead, mut observe) = lead_and_observe(&c, b"obs").await;
    // One Proclaim after another while the leader's region splits again
    // and again (each split breaks the observer's feed): every value is
    // still reported, in order, at its revision. Reading the leader again
    // after a break reported only the newest.
    let proclaims = tokio::spawn(async move {
        let mut done = Vec::new();
        for i in 1..=40 {
            let value = format!("v{i}").into_bytes();
            let r = e0
                .proclaim(ProclaimRequest {
                    leader: Some(lead.clone()),
                    value: value.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            done.push((r.header.unwrap().revision, value));
            // Paced to last through the splits.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        done
    });
    // Split points after the leader's key ("obs/" and a hex lease ID), each
    // below the last: each splits the region holding the key.
    for at in (1..=9).rev() {
        c.split_at(&format!("obs/z{at}")).await;
    }
    let want = proclaims.await.unwrap();
    for (rev, value) in want {
        let got = tokio::time::timeout(Duration::from_secs(10), observe.message())
            .await
            .expect("a proclaimed value was not reported")
            .unwrap()
            .unwrap();
        let kv = got.kv.unwrap();
        assert_eq!(
            (String::from_utf8_lossy(&kv.value), kv.mod_revision),
            (String::from_utf8_lossy(&value), rev)
        );
        assert_eq!(got.header.unwrap().revision, rev);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observe_reports_every_value_the_leader_proclaims() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let (e0, lead, mut observe) = lead_and_observe(&c, b"obs").await;
    // Proclaimed all at once (several land in one Raft entry, faster than
    // an observer could read the leader again between them): each is
    // reported, in revision order, at its own revision (etcd's observer
    // watches the leader's key).
    let proclaims: Vec<_> = (1..=5)
        .map(|i| {
            let (mut e, lead) = (e0.clone(), lead.clone());
            tokio::spawn(async move {
                let value = format!("v{i}").into_bytes();
                let r = e
                    .proclaim(ProclaimRequest {
                        leader: Some(lead),
                        value: value.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (r.header.unwrap().revision, value)
            })
        })
        .collect();
    let mut want = Vec::new();
    for p in proclaims {
        want.push(p.await.unwrap());
    }
    want.sort();
    for (rev, value) in want {
        let got = tokio::time::timeout(Duration::from_secs(5), observe.message())
            .await
            .expect("a proclaimed value was not reported")
            .unwrap()
            .unwrap();
        let kv = got.kv.unwrap();
        assert_eq!(kv.value, value);
        assert_eq!((kv.mod_revision, got.header.unwrap().revision), (rev, rev));
    }
    c.shutdown().await;
}

/// A Proclaim naming the leader with lease 0 puts the key on a fresh lease
/// nobody keeps alive (etcd's server opens an orphaned session for it), as
/// etcd does — never on no lease, which would keep a dead leader's key, and
/// the election, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proclaim_with_lease_0_puts_the_leader_on_a_fresh_lease() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let (mut e0, lead) = lead_with_v0(&c, b"p0").await;
    e0.proclaim(ProclaimRequest {
        leader: Some(LeaderKey {
            lease: 0,
            ..lead.clone()
        }),
        value: b"v1".to_vec(),
    })
    .await
    .unwrap();
    let mut k = c.kv(0).await;
    let r = kv::prefix(&mut k, "p0/", false).await.unwrap();
    assert_eq!(r.kvs.len(), 1);
    let kv = &r.kvs[0];
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (lead.key.as_slice(), &b"v1"[..])
    );
    assert_eq!(kv.create_revision, lead.rev);
    assert!(kv.lease != 0 && kv.lease != lead.lease, "{kv:?}");
    let ttl = LeaseClient::new(channel(&c.nodes[0].client_addr).await)
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: kv.lease,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!((50..=60).contains(&ttl.ttl), "{ttl:?}");
    c.shutdown().await;
}
