//! Watch helpers for tests: open a stream, create watchers, collect
//! responses.

use std::time::Duration;

use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::Streaming;

/// One open Watch stream.
pub struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl WatchStream {
    /// Opens a stream to `addr`.
    pub async fn open(addr: &str) -> Result<Self, tonic::Status> {
        Self::open_asking(addr, false).await
    }

    /// Opens a stream to `addr` that asks for a leader (etcd's `hasleader`
    /// metadata: `clientv3.WithRequireLeader`), or not.
    pub async fn open_asking(addr: &str, require_leader: bool) -> Result<Self, tonic::Status> {
        let ch = crate::secured::connect(crate::secured::endpoint(addr))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(16);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if require_leader {
            req.metadata_mut().insert(
                "hasleader",
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        let rx = WatchClient::new(ch).watch(req).await?.into_inner();
        Ok(Self { tx, rx })
    }

    /// Opens a stream to `addr` with one watcher of every key from
    /// revision `from` (0: now), created.
    pub async fn everything(addr: &str, from: i64) -> Self {
        let mut w = Self::open(addr).await.expect("watch stream");
        w.create(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: from,
            ..Default::default()
        })
        .await;
        let created = w.next(Duration::from_secs(5)).await.expect("created");
        assert!(created.created, "{created:?}");
        w
    }

    /// Sends a create request.
    pub async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    /// Sends a cancel request.
    pub async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await;
    }

    /// Sends a progress request; false if the stream is gone.
    pub async fn request_progress(&self) -> bool {
        self.tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            })
            .await
            .is_ok()
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .expect("stream open");
    }

    /// The next response (`Ok(None)`: the stream ended cleanly; `Err`: it
    /// ended with that status), or None after `timeout`.
    pub async fn recv(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<Option<WatchResponse>, tonic::Status>> {
        tokio::time::timeout(timeout, self.rx.message()).await.ok()
    }

    /// The next response, or None after `timeout` or at stream end.
    pub async fn next(&mut self, timeout: Duration) -> Option<WatchResponse> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(r)) => r,
            _ => None,
        }
    }
}
