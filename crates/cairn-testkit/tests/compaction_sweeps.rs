//! A compaction applies as its revision; each member sweeps the versions
//! it dropped in the background (`cairn_raft::state_machine::sweep`,
//! `cairn_store::node::compaction_sweeps`). End to end, on a cluster split
//! in two regions: a physical compaction answers once the serving member
//! has swept every region; the others sweep on their own; members hash
//! alike before, during and after their sweeps; a watch from the
//! compaction revision gets no `prev_kv` there; reads below the
//! compaction are refused and at it see the same values.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{CompactionRequest, HashKvRequest, RangeRequest, WatchCreateRequest};
use cairn_storage::keys::{decode_version, version_range};
use cairn_store::DATA_REGION;
use cairn_testkit::watch::WatchStream;
use cairn_testkit::{kv, secured, InProcessCluster};

/// The stored versions (key, revision) of every region on `member`.
fn versions(c: &InProcessCluster, member: usize) -> Vec<(Vec<u8>, i64)> {
    let node = c.node(member);
    let mut out = Vec::new();
    for (r, _, _) in node.regions_overlapping(b"", None) {
        let (view, _) = r.shared.read_view();
        let (lo, hi) = version_range(b"", None);
        for item in view.scan_keys(lo, hi) {
            out.push(decode_version(&item.unwrap()).unwrap());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every member's HashKV at `revision`.
async fn hashes(c: &InProcessCluster, revision: i64) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let mut m = MaintenanceClient::new(secured::channel(&c.nodes[i].client_addr));
        let h = m
            .hash_kv(HashKvRequest { revision })
            .await
            .unwrap()
            .into_inner();
        out.push((h.hash, h.compact_revision));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_sweep_what_a_compaction_dropped_and_hash_alike_throughout() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let mut client = c.kv(0).await;
    kv::put(&mut client, "a", "0").await.unwrap();
    kv::put(&mut client, "z", "0").await.unwrap();
    c.split_at("m").await;
    // Both regions: keys written many times, and one put then deleted.
    for round in 1..=30 {
        for key in ["a", "b", "y", "z"] {
            kv::put(&mut client, key, &format!("{round}"))
                .await
                .unwrap();
        }
    }
    kv::delete(&mut client, "b").await.unwrap();
    let deleted = kv::delete(&mut client, "y").await.unwrap();
    let at = kv::put(&mut client, "a", "last").await.unwrap();
    let before = hashes(&c, at).await;
    assert!(before.windows(2).all(|w| w[0] == w[1]), "{before:?}");
    assert!(versions(&c, 0).len() > 100);

    // Not physical: answered once applied; the sweeps come after.
    client
        .compact(CompactionRequest {
            revision: deleted,
            physical: false,
        })
        .await
        .unwrap();
    // Whoever has swept how far, members hash alike at the compaction.
    let during = hashes(&c, at).await;
    assert!(during.windows(2).all(|w| w[0] == w[1]), "{during:?}");
    // A watch from the compaction revision (the delete of "y") gets no
    // prev_kv on any member, swept or not, as on etcd (the revision before
    // is compacted).
    for i in 0..3 {
        let mut w = WatchStream::open(&c.nodes[i].client_addr).await.unwrap();
        w.create(WatchCreateRequest {
            key: b"y".to_vec(),
            start_revision: deleted,
            prev_kv: true,
            ..Default::default()
        })
        .await;
        assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
        let events = w.next(Duration::from_secs(5)).await.unwrap().events;
        assert_eq!(events.len(), 1, "member {i}: {events:?}");
        let kv = events[0].kv.as_ref().unwrap();
        assert_eq!(kv.mod_revision, deleted);
        assert_eq!(events[0].prev_kv, None, "member {i}");
    }
    // Physical: member 0 answers once its own replicas have swept.
    client
        .compact(CompactionRequest {
            revision: at,
            physical: true,
        })
        .await
        .unwrap();
    let want: Vec<(Vec<u8>, i64)> = ["a", "z"]
        .iter()
        .map(|k| {
            let found = versions(&c, 0);
            let rev = found
                .iter()
                .filter(|(u, _)| u == k.as_bytes())
                .map(|(_, r)| *r)
                .max();
            (k.as_bytes().to_vec(), rev.unwrap())
        })
        .collect();
    assert_eq!(versions(&c, 0), want, "member 0 swept before answering");
    // The other members sweep in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    for member in 1..3 {
        while versions(&c, member) != want {
            assert!(Instant::now() < deadline, "member {member} never swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // At the compaction revision a hash is refused, as on etcd; of the
    // current state, every member agrees.
    let mut m = MaintenanceClient::new(secured::channel(&c.nodes[0].client_addr));
    let refused = m.hash_kv(HashKvRequest { revision: at }).await.unwrap_err();
    assert!(refused.message().contains("compacted"), "{refused:?}");
    let after = hashes(&c, 0).await;
    assert!(after.windows(2).all(|w| w[0] == w[1]), "{after:?}");
    assert_eq!(after[0].1, at);
    // Reads: below the compaction refused, at it the same values.
    let read = |revision| RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    };
    let refused = client.range(read(deleted)).await.unwrap_err();
    assert!(refused.message().contains("compacted"), "{refused:?}");
    let kvs = client.range(read(at)).await.unwrap().into_inner().kvs;
    let got: Vec<(&[u8], &[u8])> = kvs.iter().map(|kv| (&kv.key[..], &kv.value[..])).collect();
    assert_eq!(got, vec![(&b"a"[..], &b"last"[..]), (b"z", b"30")]);
    c.shutdown().await;
}

/// A region that missed a compaction (here: proposed in the first region
/// only, as when the fan-out's proposal to another region failed) is
/// brought up to the store's by its leader's background check: a read
/// below the compaction is then refused in every region, as in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_that_missed_a_compaction_is_brought_up_to_the_store() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    let mut client = c.kv(0).await;
    // `!a` lies in the first region also in many-regions mode (below
    // every cut), `z` in another.
    for round in 0..5 {
        for key in ["!a", "z"] {
            kv::put(&mut client, key, &round.to_string()).await.unwrap();
        }
    }
    // Below both regions' own revisions, so the first region's compaction
    // alone needs no raise.
    let holding = |i: usize, key: &[u8]| {
        let end = [key, &[0]].concat();
        c.node(i).regions_overlapping(key, Some(&end))[0].0.clone()
    };
    let (first, z) = (holding(0, b"!a"), holding(0, b"z"));
    assert_eq!(first.id, DATA_REGION);
    assert_ne!(z.id, DATA_REGION);
    let revision = first
        .shared
        .revisions()
        .current
        .min(z.shared.revisions().current)
        - 1;
    let leader = c.wait_leader(DATA_REGION).await;
    let compacted = c
        .node(leader)
        .region(DATA_REGION)
        .unwrap()
        .raft
        .client_write(cairn_raft::Command::Compact { revision })
        .await
        .unwrap()
        .data;
    assert!(
        matches!(compacted, cairn_raft::Reply::Compacted { .. }),
        "{compacted:?}"
    );
    assert!(z.shared.revisions().compacted < revision);
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..3 {
        // (Looked up each time: a merge may absorb it.)
        while holding(i, b"z").shared.revisions().compacted < revision {
            assert!(
                Instant::now() < deadline,
                "member {i}'s region of z never compacted up to {revision}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let below = RangeRequest {
        key: b"z".to_vec(),
        revision: revision - 1,
        ..Default::default()
    };
    let e = client.range(below).await.unwrap_err();
    assert!(e.message().contains("compacted"), "{e}");
}

/// A split that applies in a region just before a compaction does gives
/// birth to a region at the parent's old compaction: the compaction's
/// fan-out looks again and compacts it before answering, so a read below
/// the compaction there is refused as soon as it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_born_by_a_split_during_a_compaction_is_compacted_too() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("m").await;
    let mut client = c.kv(0).await;
    // (Not a key any cut falls on, in many-regions mode either: the
    // split below is at it.)
    let key = "u5x";
    let mut revision = 0;
    for round in 0..5 {
        for key in ["!a", key, "z"] {
            revision = kv::put(&mut client, key, &round.to_string()).await.unwrap();
        }
    }
    let x = c.node(0).regions_overlapping(b"u5x", Some(b"u5x\0"))[0]
        .0
        .id;
    let leader = c.wait_leader(x).await;
    // The split of the key's region at it waits in its leader's proposer,
    // and the compaction's proposal there queues behind it.
    c.node(leader).hold_proposals(x, true).unwrap();
    let split = {
        let node = c.node(leader).clone();
        tokio::spawn(async move { node.split_region(x, key.as_bytes().to_vec()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let compact = {
        let mut client = c.kv(0).await;
        tokio::spawn(async move {
            client
                .compact(CompactionRequest {
                    revision,
                    physical: false,
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.node(leader).hold_proposals(x, false).unwrap();
    let child = split.await.unwrap().unwrap();
    compact.await.unwrap().unwrap();
    assert_ne!(child, x);
    let below = RangeRequest {
        key: key.as_bytes().to_vec(),
        revision: revision - 1,
        ..Default::default()
    };
    let e = client.range(below).await.unwrap_err();
    assert!(e.message().contains("compacted"), "{e}");
    c.shutdown().await;
}
