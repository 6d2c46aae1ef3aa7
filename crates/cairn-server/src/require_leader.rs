//! etcd's `hasleader` request metadata (`clientv3.WithRequireLeader`):
//! a call that asks for it is served only while this member has a leader,
//! and a stream that asked for it is ended once the member has gone
//! without one for a while — so a client of a member cut off from the
//! cluster learns it and moves to another member, instead of reading a
//! watch that has silently stopped. Kubernetes' API server asks it of
//! every watch.
//!
//! As etcd's v3rpc interceptors do:
//! - A call, unary or stream, made while the member has no leader is
//!   refused at once: `Unavailable`, `etcdserver: no leader`.
//! - A [`Monitor`] looks every [`CHECK_EVERY`] (etcd: one election
//!   timeout); once it has found no leader [`NO_LEADER_CHECKS`] times in a
//!   row, every stream that asked is ended with that status, and again at
//!   each later check while there is still none (etcd cancels them and
//!   its Watch and LeaseKeepAlive handlers answer the cancel with the same
//!   error; its other streams, Snapshot and Observe, end as `Canceled`). A
//!   stream that did not ask is left alone.
//!
//! "Has a leader" is [`cairn_store::Node::has_leader`]: the member's meta
//! region replica knows a leader, and when that is this member, it reached
//! a majority within a second at the last look. Streams
//! are ended here, around the handlers (in the client port's middleware):
//! the response body gets the status as its trailers and the handler's
//! stream is dropped, which ends its tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use cairn_store::Node;
use http_body::{Body as HttpBody, Frame};
use tokio::sync::watch;

/// The metadata key and the value that ask for a leader (etcd's
/// `rpctypes.MetadataRequireLeaderKey` and `MetadataHasLeader`).
const KEY: &str = "hasleader";
const ASKS: &str = "true";
/// etcd's `rpctypes.ErrGRPCNoLeader` message (code `Unavailable`).
pub const NO_LEADER: &str = "etcdserver: no leader";
/// How often the monitor looks (etcd: its election timeout, 1 s).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Looks in a row without a leader before streams are ended (etcd's
/// `maxNoLeaderCnt`: reconnecting streams costs more than refusing calls).
pub const NO_LEADER_CHECKS: u32 = 3;

/// Whether the member has a leader, as last looked, and the signal that
/// ends the streams that asked for one.
pub struct Monitor {
    node: Weak<Node>,
    present: AtomicBool,
    /// Bumped each time the streams are to end: a stream ends once it
    /// moves past the value it started at.
    ends: watch::Sender<u64>,
}

impl Monitor {
    /// A monitor of `node`, looking until the node stops or is dropped.
    pub fn start(node: &Arc<Node>) -> Arc<Self> {
        let m = Arc::new(Self {
            node: Arc::downgrade(node),
            present: AtomicBool::new(true),
            ends: watch::Sender::new(0),
        });
        tokio::spawn(watch_leader(Arc::downgrade(&m)));
        m
    }

    /// True while the member has a leader: its meta replica knows one now,
    /// and if that is this member, it reached a majority when last looked
    /// (a follower knowing a leader is enough, as etcd asks only its raft
    /// state; a cut-off follower campaigns and knows none).
    fn has_leader(&self) -> bool {
        let Some(node) = self.node.upgrade() else {
            return false;
        };
        match node.meta_leader() {
            None => false,
            Some(l) if l != node.id => true,
            Some(_) => self.present.load(Ordering::Relaxed),
        }
    }
}

/// The monitor's loop (see the module essay).
async fn watch_leader(monitor: Weak<Monitor>) {
    let mut without = 0;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(m) = monitor.upgrade() else { return };
        let Some(node) = m.node.upgrade() else { return };
        if node.is_stopped() {
            return;
        }
        // A leader is given the election timeout etcd's CheckQuorum gives
        // it to hear from a majority.
        let present = node.has_leader(CHECK_EVERY).await;
        drop(node);
        m.present.store(present, Ordering::Relaxed);
        without = if present { 0 } else { without + 1 };
        if without >= NO_LEADER_CHECKS {
            tracing::warn!("no leader for {without} checks: ending the streams that require one");
            m.ends.send_modify(|e| *e += 1);
        }
    }
}

/// Serves `req` with `next` if it may be (see the module essay).
pub async fn guarded(m: &Monitor, req: Request, next: Next) -> Response {
    let asks = req
        .headers()
        .get(KEY)
        .is_some_and(|v| v.as_bytes() == ASKS.as_bytes());
    if !asks {
        return next.run(req).await;
    }
    if !m.has_leader() {
        return tonic::Status::unavailable(NO_LEADER).into_http();
    }
    let path = req.uri().path();
    if crate::metrics::grpc_kind(path).is_none_or(|k| k == "unary") {
        return next.run(req).await;
    }
    // etcd's Watch and LeaseKeepAlive answer the cancel with "no leader";
    // its other streams (Snapshot, Observe) end as canceled.
    let status = match path {
        "/etcdserverpb.Watch/Watch" | "/etcdserverpb.Lease/LeaseKeepAlive" => {
            tonic::Status::unavailable(NO_LEADER)
        }
        _ => tonic::Status::cancelled("context canceled"),
    };
    let mut ends = m.ends.subscribe();
    let start = *ends.borrow_and_update();
    let resp = next.run(req).await;
    // A call refused at once (its status in the headers) is over.
    if resp.headers().contains_key("grpc-status") {
        return resp;
    }
    let ended: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        // An error: the monitor is gone with its node, which ends the
        // stream its own way.
        if ends.wait_for(|e| *e > start).await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    resp.map(|b| Body::new(Ending::new(b, ended, status)))
}

/// A stream's response body that ends with `status` when its signal
/// fires.
struct Ending {
    inner: Option<Body>,
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    status: tonic::Status,
}

impl Ending {
    fn new(
        inner: Body,
        ended: Pin<Box<dyn Future<Output = ()> + Send>>,
        status: tonic::Status,
    ) -> Self {
        Self {
            inner: Some(inner),
            ended,
            status,
        }
    }
}

impl HttpBody for Ending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.inner.is_none() {
            return Poll::Ready(None);
        }
        if self.ended.as_mut().poll(cx).is_ready() {
            // Dropping the handler's body ends its stream and its tasks.
            self.inner = None;
            let mut trailers = http::HeaderMap::new();
            let _ = self.status.add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let inner = self.inner.as_mut().expect("checked above");
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}
