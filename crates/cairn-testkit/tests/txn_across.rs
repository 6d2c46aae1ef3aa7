//! A Txn across regions (issue 17, phase 3): two-phase commit with its
//! state in Raft. One revision for every write in every region, compares
//! evaluated under the locks, etcd's response (`prev_kv`, deleted counts,
//! nested txns, ranges that see the txn's own writes); a bank of accounts
//! in three regions keeps its total under concurrent transfers and reads;
//! a coordinator that dies after its prewrite or after its primary commit
//! blocks nobody — whoever meets a lock, or the sweeper, finishes the
//! transaction from the primary's outcome; a coordinator whose attempt a
//! resolver rolled back and forgot under it starts again; a watch over the regions
//! gets a transaction's events together, in order; a watch opened
//! before a split still sees the keys the split moved out; and the commit
//! that decides is checked as etcd checks a Txn at apply (a permission
//! revoked, or a key the caller may not write attached to its lease,
//! since the prewrite refuses it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::response_op::Response;
use cairn_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use cairn_store::{Access, CoordinatorCrash, Credentials, DATA_REGION};
use cairn_testkit::{kv, secured, InProcessCluster};

/// A cluster with regions `[, f)`, `[f, q)`, `[q, )`.
async fn three_regions() -> InProcessCluster {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    c.split_at("f").await;
    c.split_at("q").await;
    c
}

fn put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            prev_kv: true,
            ..Default::default()
        })),
    }
}

fn value_is(k: &str, v: &str) -> Compare {
    Compare {
        key: k.into(),
        target: CompareTarget::Value as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::Value(v.into())),
        range_end: Vec::new(),
    }
}

fn get_op(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

/// A Range of every key.
fn every_key() -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    }
}

/// (key, value, mod revision) of every key.
async fn everything(
    client: &mut cairn_api::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
) -> Vec<(String, String, i64)> {
    client
        .range(every_key())
        .await
        .unwrap()
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                kv.mod_revision,
            )
        })
        .collect()
}

/// Asserts each of `expected`'s keys holds its value, read through `client`.
async fn assert_values(
    client: &mut cairn_api::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    expected: &[(&str, &str)],
) {
    for (k, v) in expected {
        assert_eq!(
            kv::get(client, k, false).await.unwrap().as_deref(),
            Some(*v),
            "{k}"
        );
    }
}

/// `node`'s replica of the region holding `key`.
fn region_of(node: &cairn_store::Node, key: &str) -> std::sync::Arc<cairn_store::Region> {
    let end = format!("{key}\0");
    node.regions_overlapping(key.as_bytes(), Some(end.as_bytes()))[0]
        .0
        .clone()
}

async fn get_kv(
    client: &mut cairn_api::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    key: &str,
) -> cairn_api::mvccpb::KeyValue {
    let r = client
        .range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_txn_across_regions_commits_at_one_revision_as_etcd_answers() {
    let c = three_regions().await;
    let mut client = c.kv(1).await;
    for k in ["a", "b", "g", "h", "r", "s"] {
        kv::put(&mut client, k, "0").await.unwrap();
    }
    // Compares in two regions, writes in three, a nested txn, a range
    // that sees the txn's own writes.
    let req = TxnRequest {
        compare: vec![value_is("a", "0"), value_is("r", "0")],
        success: vec![
            put("a", "1"),
            put("g", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    compare: vec![value_is("h", "nope")],
                    success: vec![put("h", "wrong")],
                    failure: vec![put("z", "1")],
                })),
            },
            get_op("a", "\0"),
            RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"b".to_vec(),
                    range_end: b"c".to_vec(),
                    prev_kv: true,
                })),
            },
        ],
        failure: vec![put("a", "failed")],
    };
    let resp: TxnResponse = client.txn(req.clone()).await.unwrap().into_inner();
    assert!(resp.succeeded);
    let rev = resp.header.as_ref().unwrap().revision;
    match &resp.responses[0].response {
        Some(Response::ResponsePut(p)) => {
            assert_eq!(p.prev_kv.as_ref().unwrap().value, b"0");
        }
        other => panic!("{other:?}"),
    }
    match &resp.responses[2].response {
        Some(Response::ResponseTxn(t)) => assert!(!t.succeeded),
        other => panic!("{other:?}"),
    }
    match &resp.responses[3].response {
        Some(Response::ResponseRange(r)) => {
            let got: Vec<(&[u8], &[u8], i64)> = r
                .kvs
                .iter()
                .map(|kv| (kv.key.as_slice(), kv.value.as_slice(), kv.mod_revision))
                .collect();
            // Its own writes at its revision, across all three regions.
            assert_eq!(got[0], (&b"a"[..], &b"1"[..], rev));
            assert!(got.contains(&(&b"g"[..], &b"1"[..], rev)));
            assert!(got.contains(&(&b"z"[..], &b"1"[..], rev)));
        }
        other => panic!("{other:?}"),
    }
    match &resp.responses[4].response {
        Some(Response::ResponseDeleteRange(d)) => {
            assert_eq!(d.deleted, 1);
            assert_eq!(d.prev_kvs[0].key, b"b");
        }
        other => panic!("{other:?}"),
    }
    // Every node sees all of it at that one revision.
    for i in 0..3 {
        let mut client = c.kv(i).await;
        let all = everything(&mut client).await;
        let want: Vec<(String, String, i64)> = all
            .iter()
            .filter(|(k, _, _)| ["a", "g", "z"].contains(&k.as_str()))
            .cloned()
            .collect();
        assert_eq!(
            want,
            vec![
                ("a".into(), "1".into(), rev),
                ("g".into(), "1".into(), rev),
                ("z".into(), "1".into(), rev)
            ],
            "node {i}"
        );
        assert!(!all.iter().any(|(k, _, _)| k == "b"), "node {i}: {all:?}");
    }
    // A range whose end is before its key names no key, as in etcd: the
    // txn across regions still commits, and the range reads nothing.
    let inverted = TxnRequest {
        success: vec![put("c", "1"), put("t", "1"), get_op("z", "a")],
        ..Default::default()
    };
    let r = client.txn(inverted).await.unwrap().into_inner();
    match &r.responses[2].response {
        Some(Response::ResponseRange(range)) => assert!(range.kvs.is_empty()),
        other => panic!("{other:?}"),
    }
    // Again: the compares fail now, the failure branch runs.
    let again = client.txn(req).await.unwrap().into_inner();
    assert!(!again.succeeded);
    let later = kv::put(&mut client, "s", "x").await.unwrap();
    assert!(later > again.header.unwrap().revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bank_across_regions_keeps_its_total() {
    let c = Arc::new(three_regions().await);
    let accounts = ["acct-a", "acct-b", "h1", "h2", "x1", "x2"];
    let mut client = c.kv(0).await;
    for a in accounts {
        kv::put(&mut client, a, "100").await.unwrap();
    }
    let total = 100 * accounts.len() as i64;
    let stop = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (c, stop, transfers) = (c.clone(), stop.clone(), transfers.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = c.kv(w as usize % 3).await;
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let from = accounts[(n >> 33) as usize % accounts.len()];
                let to = accounts[(n >> 40) as usize % accounts.len()];
                if from == to {
                    continue;
                }
                let (Some(fv), Some(tv)) = (
                    kv::get(&mut client, from, false).await.unwrap(),
                    kv::get(&mut client, to, false).await.unwrap(),
                ) else {
                    panic!("an account vanished")
                };
                let (f, t): (i64, i64) = (fv.parse().unwrap(), tv.parse().unwrap());
                let amount = (n >> 50) as i64 % 7 + 1;
                let req = TxnRequest {
                    compare: vec![value_is(from, &fv), value_is(to, &tv)],
                    success: vec![
                        put(from, &(f - amount).to_string()),
                        put(to, &(t + amount).to_string()),
                    ],
                    failure: vec![],
                };
                match client.txn(req).await {
                    Ok(r) if r.get_ref().succeeded => {
                        transfers.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("transfer failed: {e:?}"),
                }
            }
        }));
    }
    // Six seconds of reads, and on to ten reads and ten transfers if the
    // machine is slow: this checks that both make progress, not how fast.
    let mut reads = 0;
    let start = Instant::now();
    let mut reader = c.kv(2).await;
    while start.elapsed() < Duration::from_secs(6)
        || (start.elapsed() < Duration::from_secs(60)
            && (reads < 10 || transfers.load(Ordering::Relaxed) < 10))
    {
        let r = reader.range(every_key()).await.unwrap().into_inner();
        let sum: i64 = r
            .kvs
            .iter()
            .map(|kv| {
                std::str::from_utf8(&kv.value)
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(sum, total, "a read of every account saw a torn transfer");
        assert_eq!(r.kvs.len(), accounts.len());
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let done = transfers.load(Ordering::Relaxed);
    assert!(done >= 10, "only {done} transfers in 60 s");
    assert!(reads >= 10, "only {reads} reads in 60 s");
    // Same on every node at the end.
    for i in 0..3 {
        let mut client = c.kv(i).await;
        let sum: i64 = everything(&mut client)
            .await
            .iter()
            .map(|(_, v, _)| v.parse::<i64>().unwrap())
            .sum();
        assert_eq!(sum, total, "node {i}");
    }
}

fn transfer(from: &str, to: &str) -> TxnRequest {
    TxnRequest {
        compare: vec![value_is(from, "100"), value_is(to, "100")],
        success: vec![put(from, "90"), put(to, "110")],
        failure: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_that_dies_blocks_nobody() {
    let c = three_regions().await;
    let mut client = c.kv(0).await;
    for k in ["a", "g", "r", "t"] {
        kv::put(&mut client, k, "100").await.unwrap();
    }
    // Dies after its prewrite: a write to its secondary key goes through
    // once the lock is resolved (rolled back), and nothing of it is seen.
    let gone = c
        .node(1)
        .txn_across_then_crash(&transfer("a", "r"), CoordinatorCrash::AfterPrewrite)
        .await
        .unwrap();
    assert!(gone.is_none());
    let started = Instant::now();
    kv::put(&mut client, "r", "100").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(
        kv::get(&mut client, "a", false).await.unwrap().as_deref(),
        Some("100")
    );
    // The transaction cannot commit any more: a transfer that compares
    // the old values commits.
    assert!(
        client
            .txn(transfer("a", "r"))
            .await
            .unwrap()
            .into_inner()
            .succeeded
    );
    assert_eq!(
        kv::get(&mut client, "r", false).await.unwrap().as_deref(),
        Some("110")
    );

    // Dies after its primary committed: a reader of the secondary key
    // finishes the commit from the primary's outcome.
    let gone = c
        .node(2)
        .txn_across_then_crash(&transfer("g", "t"), CoordinatorCrash::AfterPrimaryCommit)
        .await
        .unwrap();
    assert!(gone.is_none());
    let mut other = c.kv(1).await;
    assert_eq!(
        kv::get(&mut other, "t", false).await.unwrap().as_deref(),
        Some("110")
    );
    assert_eq!(
        kv::get(&mut other, "g", false).await.unwrap().as_deref(),
        Some("90")
    );
    let g = get_kv(&mut other, "g").await;
    let t = get_kv(&mut other, "t").await;
    assert_eq!(
        g.mod_revision, t.mod_revision,
        "one revision for both parts"
    );

    // Nobody meets the locks of a third: the sweeper resolves them.
    c.node(0)
        .txn_across_then_crash(&transfer("a", "g"), CoordinatorCrash::AfterPrewrite)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let any = |f: fn(&cairn_mvcc::locks::Locks) -> bool| {
        (0..3).any(|i| {
            c.node(i)
                .regions_overlapping(b"", None)
                .iter()
                .any(|(r, _, _)| r.shared.with_applied(|a| f(&a.locks)))
        })
    };
    while any(|l| !l.held.is_empty()) {
        assert!(Instant::now() < deadline, "locks left standing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And every outcome is forgotten: by the coordinators that finished,
    // and by the resolvers that finished for the ones that died.
    while any(|l| !l.outcomes.is_empty()) {
        assert!(Instant::now() < deadline, "outcomes never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The start timestamp of a lock `region`'s replica holds, once it holds one.
async fn a_held_lock(region: &cairn_store::Region) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = region
            .shared
            .with_applied(|a| a.locks.held.keys().next().copied());
        if let Some(ts) = held {
            return ts;
        }
        assert!(
            Instant::now() < deadline,
            "no lock held in region {}",
            region.id
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A coordinator held between its prewrite and its commit while a
/// resolver rolls its transaction back, finishes every part and forgets
/// the outcome: its commit then finds no lock and no outcome at the
/// primary. Nothing of that attempt committed, so it starts again (once
/// answered `Internal`), and the transfer is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_that_finds_its_attempt_rolled_back_and_forgotten_starts_again() {
    let c = three_regions().await;
    let mut client = c.kv(0).await;
    for k in ["a", "g"] {
        kv::put(&mut client, k, "100").await.unwrap();
    }
    let (go, held) = tokio::sync::oneshot::channel();
    let coordinator = c.node(1).clone();
    let txn = tokio::spawn(async move {
        coordinator
            .txn_across_held(&transfer("a", "g"), &Access::Internal, held)
            .await
    });
    let node = c.node(0);
    let first = region_of(node, "a");
    let start_ts = a_held_lock(&first).await;
    // As a waiter past the lock's time to live would: rolled back at the
    // primary, `g`'s part rolled back, the outcome forgotten.
    let lock = cairn_mvcc::locks::LockRef {
        start_ts,
        primary: first.id,
    };
    node.settle_now(first.id, lock).await.unwrap();
    go.send(()).unwrap();
    let resp = txn
        .await
        .unwrap()
        .expect("the transfer starts again and commits");
    assert!(resp.succeeded);
    assert_values(&mut client, &[("a", "90"), ("g", "110")]).await;
}

/// Users `root` (root role) and `alice` (role `rw`: read-write on each
/// of `perms`), auth on; their credentials, alice's through member 1.
async fn root_and_alice(
    c: &InProcessCluster,
    perms: &[(&str, &str)],
) -> (Credentials, Credentials) {
    use cairn_auth::{AuthCmd, Perm, PermKind};
    let node = c.node(0);
    let anyone = Credentials::default();
    let (rootpw, alicepw) = (
        node.hash_password("rootpw").await.unwrap(),
        node.hash_password("alicepw").await.unwrap(),
    );
    let mut steps = vec![
        AuthCmd::UserAdd {
            name: "root".into(),
            password: Some(rootpw),
        },
        AuthCmd::UserAdd {
            name: "alice".into(),
            password: Some(alicepw),
        },
        AuthCmd::RoleAdd { name: "rw".into() },
    ];
    for (key, end) in perms {
        steps.push(AuthCmd::RoleGrantPermission {
            role: "rw".into(),
            perm: Perm {
                kind: PermKind::ReadWrite,
                key: key.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
            },
        });
    }
    for (user, role) in [("root", "root"), ("alice", "rw")] {
        steps.push(AuthCmd::UserGrantRole {
            user: user.into(),
            role: role.into(),
        });
    }
    steps.push(AuthCmd::Enable);
    for step in steps {
        node.auth_change(&anyone, step).await.unwrap();
    }
    let creds = |token: String| Credentials {
        token: Some(token),
        common_name: None,
    };
    (
        creds(node.authenticate("root", "rootpw").await.unwrap()),
        creds(c.node(1).authenticate("alice", "alicepw").await.unwrap()),
    )
}

/// Runs `req` for `alice` from member 1, held after its prewrites (both
/// of `keys`' parts locked) while `meanwhile` runs; its answer.
async fn held_while<F: std::future::Future<Output = ()>>(
    c: &InProcessCluster,
    alice: &Credentials,
    req: TxnRequest,
    keys: [&str; 2],
    meanwhile: F,
) -> cairn_store::Result<TxnResponse> {
    let access = Access::client(alice, cairn_auth::needs::txn(&req));
    let (go, held) = tokio::sync::oneshot::channel();
    let coordinator = c.node(1).clone();
    let txn = tokio::spawn(async move { coordinator.txn_across_held(&req, &access, held).await });
    for k in keys {
        a_held_lock(&region_of(c.node(0), k)).await;
    }
    meanwhile.await;
    go.send(()).unwrap();
    txn.await.unwrap()
}

/// Waits until no region holding one of `keys` holds a lock.
async fn no_lock_left(node: &cairn_store::Node, keys: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for k in keys {
        let region = region_of(node, k);
        while region.shared.with_applied(|a| !a.locks.held.is_empty()) {
            assert!(
                Instant::now() < deadline,
                "a lock left in region {}",
                region.id
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A permission taken away while a cross-region Txn is between its
/// prewrites and its commit is in force for that commit: the revoke was
/// acknowledged first, so the transaction is ordered after it, and etcd
/// checks a Txn at apply. The commit at the primary meets the revoke's
/// fence, the caller is checked again, refused, and nothing is written
/// (the locks are rolled back). The commit once went through unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permission_revoked_between_prewrite_and_commit_refuses_the_commit() {
    use cairn_auth::AuthCmd;
    if secured::skipped("a_permission_revoked_between_prewrite_and_commit_refuses_the_commit") {
        return;
    }
    let c = three_regions().await;
    let mut client = c.kv(0).await;
    for k in ["a", "g"] {
        kv::put(&mut client, k, "100").await.unwrap();
    }
    let node = c.node(0);
    let (root, alice) = root_and_alice(&c, &[("a", "z")]).await;
    let revoke = AuthCmd::UserRevokeRole {
        user: "alice".into(),
        role: "rw".into(),
    };
    let refused = held_while(&c, &alice, transfer("a", "g"), ["a", "g"], async {
        node.auth_change(&root, revoke).await.unwrap();
    })
    .await;
    assert!(
        matches!(refused, Err(cairn_store::Error::Auth(_))),
        "a commit after the revoke: {refused:?}"
    );
    // Nothing of it was written, and its locks are gone.
    node.auth_change(&root, AuthCmd::Disable).await.unwrap();
    assert_values(&mut client, &[("a", "100"), ("g", "100")]).await;
    no_lock_left(node, &["a", "g"]).await;
}

/// etcd refuses a put onto a lease holding a key the caller may not write,
/// checked at apply (`checkLeasePuts`). A cross-region Txn putting onto a
/// lease is checked so at its prewrite and again at its primary's commit:
/// a key attached to the lease in between (by root, acknowledged) makes
/// the commit refuse, and the Txn, started again, is refused at its
/// prewrite. The commit once went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_attached_to_the_lease_between_prewrite_and_commit_is_checked_at_the_commit() {
    use cairn_auth::AuthCmd;
    if secured::skipped(
        "a_key_attached_to_the_lease_between_prewrite_and_commit_is_checked_at_the_commit",
    ) {
        return;
    }
    let c = three_regions().await;
    let mut client = c.kv(0).await;
    let node = c.node(0);
    let lease = node
        .lease_grant(77, 600, &Access::Internal)
        .await
        .unwrap()
        .0;
    // alice may write `a` and `g`, not `b` (all three: first two regions).
    let (root, alice) = root_and_alice(&c, &[("a", "a\0"), ("g", "g\0")]).await;
    let leased = |k: &str| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.into(),
            value: b"1".to_vec(),
            lease,
            ..Default::default()
        })),
    };
    let req = TxnRequest {
        success: vec![leased("a"), put("g", "1")],
        ..Default::default()
    };
    let b = TxnRequest {
        success: vec![leased("b")],
        ..Default::default()
    };
    let root_access = Access::client(&root, cairn_auth::needs::txn(&b));
    let refused = held_while(&c, &alice, req, ["a", "g"], async {
        node.txn(&b, &root_access).await.unwrap();
    })
    .await;
    assert!(
        matches!(
            refused,
            Err(cairn_store::Error::Rejected(
                cairn_mvcc::Rejection::PermissionDenied
            ))
        ),
        "a put onto a lease holding a key alice may not write: {refused:?}"
    );
    node.auth_change(&root, AuthCmd::Disable).await.unwrap();
    let got = kv::get(&mut client, "a", false).await.unwrap();
    assert_eq!(got, None, "a was written");
    no_lock_left(node, &["a", "g"]).await;
}

/// A settle asked where the lock has already gone (its part finished
/// there: here the primary's, committed) does nothing. It once guessed the
/// transaction's regions as the primary and that one, found nothing to
/// finish, and forgot the outcome; the parts still locked elsewhere were
/// then rolled back by whoever met them: a committed transaction torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_where_the_lock_has_gone_leaves_the_outcome_to_the_parts_still_locked() {
    let c = three_regions().await;
    let mut client = c.kv(0).await;
    for k in ["a", "g", "t"] {
        kv::put(&mut client, k, "100").await.unwrap();
    }
    let three = TxnRequest {
        compare: vec![value_is("a", "100")],
        success: vec![put("a", "1"), put("g", "2"), put("t", "3")],
        failure: vec![],
    };
    // The primary (`a`'s region) commits; `g` and `t` stay locked.
    let gone = c
        .node(1)
        .txn_across_then_crash(&three, CoordinatorCrash::AfterPrimaryCommit)
        .await
        .unwrap();
    assert!(gone.is_none());
    let node = c.node(0);
    let (first, middle) = (region_of(node, "a"), region_of(node, "g"));
    assert_ne!(first.id, middle.id);
    let start_ts = a_held_lock(&middle).await;
    let lock = cairn_mvcc::locks::LockRef {
        start_ts,
        primary: first.id,
    };
    // Asked in the primary's region, whose lock went with its commit
    // (once this replica applied it).
    while first
        .shared
        .with_applied(|a| a.locks.held.contains_key(&start_ts))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.settle_now(first.id, lock).await.unwrap();
    // The outcome is still there for the parts still locked: they commit.
    let mut other = c.kv(2).await;
    assert_values(&mut other, &[("a", "1"), ("g", "2"), ("t", "3")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_gets_a_txn_across_regions_together_and_in_order() {
    use cairn_api::etcdserverpb::WatchCreateRequest;
    use cairn_testkit::watch::WatchStream;
    let c = three_regions().await;
    let mut w = WatchStream::open(&c.nodes[2].client_addr).await.unwrap();
    w.create(WatchCreateRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    })
    .await;
    let created = w.next(Duration::from_secs(5)).await.unwrap();
    assert!(created.created);
    let mut client = c.kv(0).await;
    let mut want = Vec::new();
    for i in 0..5 {
        let rev = kv::put(&mut client, "m", &i.to_string()).await.unwrap();
        want.push((rev, "m".to_string()));
        let resp = client
            .txn(TxnRequest {
                success: vec![put("b", &i.to_string()), put("k", "x"), put("w", "y")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let rev = resp.header.unwrap().revision;
        for k in ["b", "k", "w"] {
            want.push((rev, k.to_string()));
        }
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < want.len() {
        assert!(Instant::now() < deadline, "got {got:?}, want {want:?}");
        let Some(r) = w.next(Duration::from_secs(5)).await else {
            continue;
        };
        let revs: Vec<i64> = r
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        // A transaction's events never straddle two responses.
        if let Some(last) = revs.last() {
            let n = revs.iter().filter(|r| *r == last).count();
            let all = want.iter().filter(|(r, _)| r == last).count();
            assert_eq!(n, all, "revision {last} split across responses");
        }
        for e in r.events {
            let kv = e.kv.unwrap();
            got.push((kv.mod_revision, String::from_utf8(kv.key).unwrap()));
        }
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_opened_before_a_split_sees_the_keys_it_moved() {
    use cairn_api::etcdserverpb::WatchCreateRequest;
    use cairn_testkit::watch::WatchStream;
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let mut w = WatchStream::open(&c.nodes[1].client_addr).await.unwrap();
    w.create(WatchCreateRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..Default::default()
    })
    .await;
    assert!(w.next(Duration::from_secs(5)).await.unwrap().created);
    let mut client = c.kv(0).await;
    let mut want = Vec::new();
    for (i, k) in ["ka", "kz", "kb"].iter().enumerate() {
        want.push((
            kv::put(&mut client, k, &i.to_string()).await.unwrap(),
            k.to_string(),
        ));
    }
    // Split inside the watched span, twice, then write on every side.
    c.split_at("km").await;
    c.split_at("kt").await;
    for (i, k) in ["ka", "kz", "kp", "kb", "kx"].iter().enumerate() {
        want.push((
            kv::put(&mut client, k, &i.to_string()).await.unwrap(),
            k.to_string(),
        ));
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < want.len() {
        assert!(Instant::now() < deadline, "got {got:?}, want {want:?}");
        let Some(r) = w.next(Duration::from_secs(5)).await else {
            continue;
        };
        for e in r.events {
            let kv = e.kv.unwrap();
            got.push((kv.mod_revision, String::from_utf8(kv.key).unwrap()));
        }
    }
    assert_eq!(got, want);
}

/// A read-only Txn of one region, among several, keeps its read timestamp
/// while it waits for a lock: once the transaction it waited for (started
/// below it) is done, a transaction on its keys started after it does not
/// hold it up (it commits above the read's timestamp). Taking a fresh
/// timestamp after each wait, a stream of transactions on its keys held
/// it up indefinitely, and it rolled each back past the lock's time to
/// live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_txn_waits_only_for_transactions_started_before_it() {
    let c = three_regions().await;
    let mut client = c.kv(0).await;
    for k in ["a", "b", "g", "h"] {
        kv::put(&mut client, k, "100").await.unwrap();
    }
    let held = |node: usize, req: TxnRequest| {
        let (go, held) = tokio::sync::oneshot::channel();
        let coordinator = c.node(node).clone();
        let txn = tokio::spawn(async move {
            coordinator
                .txn_across_held(&req, &Access::Internal, held)
                .await
        });
        (go, txn)
    };
    let first = region_of(c.node(0), "a");
    let (go_first, first_txn) = held(1, transfer("a", "g"));
    a_held_lock(&first).await;
    // A write elsewhere: the read's timestamp (the newest handed out) is
    // above the held transaction's start, which it must wait for.
    kv::put(&mut client, "z", "1").await.unwrap();
    let read = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let mut reader = c.kv(0).await;
    let reading = tokio::spawn(async move { reader.txn(read).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    if reading.is_finished() {
        panic!("the read did not wait for the lock: {:?}", reading.await);
    }
    // Started after the read: locks `b` beside it.
    let (go_later, later_txn) = held(2, transfer("b", "h"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.shared.with_applied(|a| a.locks.held.len()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the later transaction never locked b"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And another: a timestamp taken now is above the later start.
    kv::put(&mut client, "z", "2").await.unwrap();
    let released = Instant::now();
    go_first.send(()).unwrap();
    let r = reading.await.unwrap().unwrap().into_inner();
    let waited = released.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "the read waited {waited:?} after the transaction before it was done"
    );
    // As of its timestamp: before either transfer.
    let Some(Response::ResponseRange(range)) = &r.responses[0].response else {
        panic!("{r:?}")
    };
    let values: Vec<&[u8]> = range.kvs.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, vec![&b"100"[..], b"100"]);
    assert!(first_txn.await.unwrap().unwrap().succeeded);
    go_later.send(()).unwrap();
    assert!(later_txn.await.unwrap().unwrap().succeeded);
    assert_values(
        &mut client,
        &[("a", "90"), ("b", "90"), ("g", "110"), ("h", "110")],
    )
    .await;
}
