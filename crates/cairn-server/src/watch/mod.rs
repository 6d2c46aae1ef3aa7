//! etcd's `Watch` service: many watchers per bidirectional stream.
//!
//! One task serves a stream ([`stream`]): it reads create/cancel/progress
//! requests, owns the stream's watchers ([`watcher`]), and feeds them all
//! into one bounded outgoing channel. Watchers that read the same regions
//! form a group ([`group`]) with one subscription, so a put wakes one task
//! per stream, not one per watcher, and the responses it causes on a stream
//! leave together.
//!
//! Where events come from: each data region publishes a change feed — one
//! batch per applied Raft entry, events in etcd's order (by revision, then
//! the place of their op in the transaction, then key:
//! `cairn_mvcc::Change`), with the region's resolved revision. The watch hub
//! (`cairn_store::watch_hub::FeedMerger`) merges the feeds of every region
//! a group touches, releasing an event only once all of them have resolved
//! past it. A watcher first replays history from MVCC (`cairn_mvcc::history`,
//! per region, merged; on a blocking thread while the stream goes on) up to
//! the revision every region has applied, then follows its group's feed,
//! skipping what it already sent; batches that arrive during the replay wait
//! in the watcher. A group that falls too far behind (the feed is a bounded
//! broadcast) subscribes again and its watchers replay from MVCC — etcd's
//! "unsynced" watchers — so a slow client never blocks writes and never
//! grows memory without bound. If the revision a watcher needs was
//! compacted meanwhile, it is cancelled with `compact_revision`, as in etcd
//! — and, as there, its ID stays taken until the client cancels it, and
//! that cancel is answered.
//!
//! The six guarantees: *ordered* and *unique* (one cursor per watcher,
//! `next`, only moves forward; history and feed use the same order),
//! *reliable* (no gap: a group subscribes before any view is read, and a
//! view covers every batch the group handed out; on lag or snapshot
//! install, re-read), *atomic* (a revision is never split across responses
//! unless the client asked for `fragment`), *resumable* (start at any
//! uncompacted revision), *bookmarkable* (a progress response at revision R
//! is queued only after every watcher of the stream has queued all its
//! events ≤ R, and only once R is no lower than any event the stream
//! sent, so it never goes back).
//!
//! [`open`] serves one watch in-process, through the same stream code, for
//! a service that follows keys as an etcd client would (Election Observe).

mod group;
mod stream;
mod watcher;

use std::sync::Arc;

use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::watch_server::Watch;
use cairn_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use cairn_store::Credentials;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Context;

/// Responses queued per stream before watchers wait for the client.
const OUT_CAPACITY: usize = 128;

/// The Watch service of one node.
pub struct WatchService {
    ctx: Arc<Context>,
}

impl WatchService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

/// The responses of a watch served in-process ([`open`]).
pub type Responses = mpsc::Receiver<Result<WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchResponse>>, Status> {
        let creds = crate::auth::credentials(&req);
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(OUT_CAPACITY);
        tokio::spawn(stream::run(self.ctx.clone(), creds, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watch served in-process as a client's would be, with `creds`'
/// permissions: the responses to `create` until the receiver is dropped.
/// (Election Observe follows the leader's key so, as etcd's observer
/// watches it: every put, replayed from history across a split or a slow
/// reader, and a compaction ends it.)
pub fn open(ctx: Arc<Context>, creds: Credentials, create: WatchCreateRequest) -> Responses {
    let (tx, rx) = mpsc::channel(OUT_CAPACITY);
    let request = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    };
    // The requests end after the create; the stream goes on (as for a
    // client that half-closed) until `rx` is dropped.
    let inbound = futures::stream::iter([Ok(request)]);
    tokio::spawn(stream::run(ctx, creds, inbound, tx));
    rx
}
