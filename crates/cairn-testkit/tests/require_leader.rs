//! etcd's `hasleader` metadata (`clientv3.WithRequireLeader`, asked by
//! Kubernetes of every watch): a member cut off from the others refuses
//! calls that ask for a leader with `Unavailable: etcdserver: no leader`,
//! and ends the streams that asked, so their clients move to another
//! member instead of reading a watch that silently stopped (the JSON
//! gateway's callers ask with grpc-gateway's `Grpc-Metadata-Hasleader`);
//! streams that did not ask stay; once the member is back, calls that ask
//! are served again.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::{PutRequest, RangeRequest};
use cairn_store::{DATA_REGION, META_REGION};
use cairn_testkit::watch::WatchStream;
use cairn_testkit::InProcessCluster;
use tonic::transport::Channel;
use tonic::Code;

/// A one-key Range asking for a leader.
async fn range_asking(k: &mut KvClient<Channel>) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(RangeRequest {
        key: b"k".to_vec(),
        serializable: true,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    k.range(req).await.map(|_| ())
}

/// A one-key Range through the JSON gateway with grpc-gateway's
/// `Grpc-Metadata-Hasleader: true`; the whole answer.
async fn gateway_range_asking(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = br#"{"key":"aw==","serializable":true}"#;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Grpc-Metadata-Hasleader: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("the gateway answers")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A stream watching "k", created; asking for a leader or not.
async fn watch_k(addr: &str, asking: bool) -> WatchStream {
    let w = WatchStream::open_asking(addr, asking)
        .await
        .expect("watch stream");
    w.create(cairn_api::etcdserverpb::WatchCreateRequest {
        key: b"k".to_vec(),
        ..Default::default()
    })
    .await;
    let mut w = w;
    let created = w.next(Duration::from_secs(10)).await.expect("created");
    assert!(created.created, "{created:?}");
    w
}

/// Cuts off member `i`, checks what its clients see, and brings it back.
async fn cut_off(c: &InProcessCluster, i: usize) {
    let addr = c.nodes[i].client_addr.clone();
    let mut k = c.kv(i).await;
    range_asking(&mut k)
        .await
        .expect("a member with a leader serves it");
    let mut asking = watch_k(&addr, true).await;
    let mut not_asking = watch_k(&addr, false).await;

    let cut = Instant::now();
    c.isolate(i);
    // The stream that asked ends with etcd's status: after three looks
    // without a leader, a second apart (etcd: three election timeouts).
    let status = loop {
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "the stream asking for a leader was not ended"
        );
        match asking.recv(Duration::from_secs(1)).await {
            Some(Err(s)) => break s,
            Some(Ok(None)) => panic!("the stream ended without a status"),
            Some(Ok(Some(_))) | None => {}
        }
    };
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "etcdserver: no leader")
    );
    assert!(
        cut.elapsed() >= Duration::from_secs(2),
        "ended {:?} after the cut: before three looks",
        cut.elapsed()
    );
    // A call that asks is refused at once now.
    let s = range_asking(&mut k).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::Unavailable, "etcdserver: no leader")
    );
    // So is one through the JSON gateway that asks by grpc-gateway's
    // header (plain clusters: the gateway shares the client port's TLS).
    if !cairn_testkit::secured::is_on() {
        let answer = gateway_range_asking(&addr).await;
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("etcdserver: no leader"),
            "{answer}"
        );
    }
    // The stream that did not ask stays open.
    assert!(
        not_asking.recv(Duration::from_millis(500)).await.is_none(),
        "the stream that did not ask for a leader ended"
    );

    c.rejoin(i);
    let back = Instant::now();
    while let Err(s) = range_asking(&mut k).await {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "not served again after the cut healed: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A stream that asks works again, events and all.
    let mut again = watch_k(&addr, true).await;
    let mut other = c.kv((i + 1) % c.nodes.len()).await;
    other
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no event after the cut healed");
        if let Some(r) = again.next(Duration::from_secs(1)).await {
            if !r.events.is_empty() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_meta_leader_cut_off_ends_the_streams_that_require_a_leader() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let leader = c.wait_leader(META_REGION).await;
    cut_off(&c, leader).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_ends_the_streams_that_require_a_leader() {
    let c = InProcessCluster::start(3).await;
    c.wait_leader(DATA_REGION).await;
    let leader = c.wait_leader(META_REGION).await;
    cut_off(&c, (leader + 1) % 3).await;
    c.shutdown().await;
}
