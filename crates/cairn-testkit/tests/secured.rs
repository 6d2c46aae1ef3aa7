//! Secured mode is what it says: with `CAIRN_TEST_SECURED=1`, the cluster
//! every other test uses refuses plain connections on both ports, has auth
//! on, and serves the testkit's clients as `root` by their certificate. In
//! plain mode the same cluster serves plain HTTP/2 and has auth off.

use std::time::Duration;

use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::{AuthStatusRequest, PutRequest};
use cairn_testkit::{kv, secured, InProcessCluster};
use tonic::transport::Endpoint;

/// A plain HTTP/2 (no TLS) channel to `addr`.
fn plain(addr: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secured_mode_secures_both_ports_and_turns_auth_on() {
    let c = InProcessCluster::start(3).await;
    let mut client = c.kv(0).await;
    kv::put(&mut client, "s", "1").await.unwrap();
    let status = AuthClient::new(secured::channel(&c.nodes[1].client_addr))
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let put = PutRequest {
        key: b"s".to_vec(),
        value: b"2".to_vec(),
        ..Default::default()
    };
    if secured::is_on() {
        assert!(status.enabled, "auth must be on in secured mode");
        assert!(status.auth_revision > 0);
        // No TLS: nothing is served, on either port.
        for addr in [&c.nodes[0].client_addr, &c.nodes[0].peer_addr] {
            // (The TLS port drops the connection: the code varies.)
            let r = plain(addr).put(put.clone()).await;
            assert!(r.is_err(), "{addr} served plain HTTP/2: {r:?}");
        }
        // The client certificate does not open the peer port (another CA).
        let mut peer = KvClient::new(secured::channel(&c.nodes[0].peer_addr));
        assert!(peer.put(put.clone()).await.is_err());
        assert_eq!(
            kv::get(&mut client, "s", false).await.unwrap().as_deref(),
            Some("1")
        );
    } else {
        assert!(!status.enabled);
        plain(&c.nodes[0].client_addr).put(put).await.unwrap();
    }
    c.shutdown().await;
}
