//! The `etcd-client` crate against COMPAT_ENDPOINTS. Every assertion here
//! must hold against real etcd too (compat.py runs both).

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, PutOptions,
    SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

/// A client of COMPAT_ENDPOINTS; secured (TLS with a client certificate,
/// and a login) when COMPAT_CA/COMPAT_CERT/COMPAT_KEY (and
/// COMPAT_USER/COMPAT_PASSWORD) are set.
async fn client() -> Client {
    let eps: Vec<String> = std::env::var("COMPAT_ENDPOINTS")
        .expect("COMPAT_ENDPOINTS")
        .split(',')
        .map(String::from)
        .collect();
    let var = |name: &str| std::env::var(name).ok();
    let pem = |name: &str| std::fs::read_to_string(var(name).expect(name)).expect(name);
    let mut opts = None;
    if var("COMPAT_CA").is_some() {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(pem("COMPAT_CA")))
            .identity(Identity::from_pem(pem("COMPAT_CERT"), pem("COMPAT_KEY")));
        let mut o = ConnectOptions::new().with_tls(tls);
        if let (Some(user), Some(password)) = (var("COMPAT_USER"), var("COMPAT_PASSWORD")) {
            o = o.with_user(user, password);
        }
        opts = Some(o);
    }
    Client::connect(eps, opts).await.expect("connect")
}

fn code(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn put_get_options() {
    let mut c = client().await;
    c.delete("rc/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    for (k, v) in [("rc/a", "3"), ("rc/b", "1"), ("rc/c", "2")] {
        c.put(k, v, None).await.unwrap();
    }
    let prev = c.put("rc/a", "4", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(prev.prev_key().unwrap().value_str().unwrap(), "3");

    let r = c.get("rc/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.count(), 3);
    assert_eq!(r.kvs()[0].version(), 2);
    assert_eq!(r.kvs()[0].create_revision() < r.kvs()[0].mod_revision(), true);

    let r = c.get("rc/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert_eq!((r.count(), r.kvs().len()), (3, 0));

    let r = c.get("rc/", Some(GetOptions::new().with_prefix().with_keys_only().with_limit(2))).await.unwrap();
    assert!(r.more());
    assert_eq!(r.kvs().len(), 2);
    assert!(r.kvs()[0].value().is_empty());

    let r = c
        .get("rc/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Value, SortOrder::Descend)))
        .await
        .unwrap();
    let vals: Vec<&str> = r.kvs().iter().map(|kv| kv.value_str().unwrap()).collect();
    assert_eq!(vals, vec!["4", "2", "1"]);

    let r = c.get("rc/b", Some(GetOptions::new().with_range("rc/z"))).await.unwrap();
    assert_eq!(r.count(), 2);
    // From-key: everything at or after the key (other tests' keys may follow).
    let r = c.get("rc/b", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(&r.kvs()[0].key()[..], b"rc/b");
    assert!(r.count() >= 2);

    // Reads at an older revision.
    let old = c.get("rc/a", None).await.unwrap().kvs()[0].create_revision();
    let r = c.get("rc/a", Some(GetOptions::new().with_revision(old))).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "3");

    let r = c.get("rc/", Some(GetOptions::new().with_prefix().with_serializable())).await.unwrap();
    assert_eq!(r.count(), 3);
}

#[tokio::test]
async fn txn_compare_and_swap() {
    let mut c = client().await;
    c.put("tx/k", "v1", None).await.unwrap();
    let txn = Txn::new()
        .when(vec![Compare::value("tx/k", CompareOp::Equal, "v1")])
        .and_then(vec![TxnOp::put("tx/k", "v2", None), TxnOp::get("tx/k", None)])
        .or_else(vec![TxnOp::get("tx/k", None)]);
    let r = c.txn(txn).await.unwrap();
    assert!(r.succeeded());
    match &r.op_responses()[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value_str().unwrap(), "v2"),
        other => panic!("{other:?}"),
    }
    let txn = Txn::new()
        .when(vec![Compare::version("tx/k", CompareOp::Less, 2)])
        .and_then(vec![TxnOp::put("tx/k", "never", None)])
        .or_else(vec![TxnOp::delete("tx/k", Some(DeleteOptions::new().with_prev_key()))]);
    let r = c.txn(txn).await.unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value_str().unwrap(), "v2");
        }
        other => panic!("{other:?}"),
    }
    // Duplicate keys in one branch.
    let dup = Txn::new().and_then(vec![TxnOp::put("tx/d", "1", None), TxnOp::put("tx/d", "2", None)]);
    assert_eq!(
        code(c.txn(dup).await.unwrap_err()),
        (tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request".into())
    );
}

#[tokio::test]
async fn compaction_and_revision_errors() {
    let mut c = client().await;
    let r1 = c.put("cp/k", "1", None).await.unwrap().header().unwrap().revision();
    let r2 = c.put("cp/k", "2", None).await.unwrap().header().unwrap().revision();
    assert!(r2 > r1);
    c.compact(r2, None).await.unwrap();
    assert_eq!(
        code(c.get("cp/k", Some(GetOptions::new().with_revision(r1))).await.unwrap_err()),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into())
    );
    assert_eq!(
        code(c.get("cp/k", Some(GetOptions::new().with_revision(r2 + 1_000_000_000_000))).await.unwrap_err()),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision".into())
    );
    assert_eq!(
        code(c.put("", "x", None).await.unwrap_err()),
        (tonic::Code::InvalidArgument, "etcdserver: key is not provided".into())
    );
}

#[tokio::test]
async fn cluster_and_maintenance() {
    let mut c = client().await;
    let members = c.member_list().await.unwrap();
    assert!(!members.members().is_empty());
    for m in members.members() {
        assert!(!m.client_urls().is_empty(), "member {} publishes client URLs", m.name());
    }
    let s = c.status().await.unwrap();
    assert!(s.leader() != 0);
    assert!(s.raft_term() >= 1);
}
