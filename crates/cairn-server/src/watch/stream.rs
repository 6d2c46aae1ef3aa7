//! One Watch stream: its requests and its watchers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::task::JoinHandle;
use tonic::Streaming;

use super::{watcher, Out};
use crate::Context;

/// etcd's reasons for refusing a watch (`mvcc` errors).
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

struct Watcher {
    task: JoinHandle<()>,
    /// Every event at or below this revision has been queued.
    synced: Arc<AtomicI64>,
}

/// Serves one stream until the client goes away.
pub async fn run(ctx: Arc<Context>, mut inbound: Streaming<WatchRequest>, out: Out) {
    let mut watchers: HashMap<i64, Watcher> = HashMap::new();
    let mut next_id = 0i64;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = out.closed() => break,
        };
        let Ok(Some(req)) = msg else { break };
        let ok = match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                create(&ctx, &out, &mut watchers, &mut next_id, c).await
            }
            Some(RequestUnion::CancelRequest(c)) => match watchers.remove(&c.watch_id) {
                Some(w) => {
                    w.task.abort();
                    send(&out, response(&ctx, c.watch_id, |r| r.canceled = true)).await
                }
                // etcd ignores a cancel of an unknown watch.
                None => true,
            },
            Some(RequestUnion::ProgressRequest(_)) => {
                // Watchers that ended on their own (compacted) owe nothing.
                watchers.retain(|_, w| !w.task.is_finished());
                let rev = watchers
                    .values()
                    .map(|w| w.synced.load(Ordering::Acquire))
                    .min()
                    .unwrap_or_else(|| ctx.node.revision());
                let mut r = response(&ctx, -1, |_| {});
                if let Some(h) = &mut r.header {
                    h.revision = rev;
                }
                send(&out, r).await
            }
            None => true,
        };
        if !ok {
            break;
        }
    }
    for w in watchers.into_values() {
        w.task.abort();
    }
}

async fn create(
    ctx: &Arc<Context>,
    out: &Out,
    watchers: &mut HashMap<i64, Watcher>,
    next_id: &mut i64,
    c: WatchCreateRequest,
) -> bool {
    let refuse = |reason: &str| {
        response(ctx, -1, |r| {
            r.created = true;
            r.canceled = true;
            r.cancel_reason = reason.to_string();
        })
    };
    let from_key = c.range_end == [0];
    if !c.range_end.is_empty() && !from_key && c.key >= c.range_end {
        return send(out, refuse(EMPTY_RANGE)).await;
    }
    watchers.retain(|_, w| !w.task.is_finished());
    let id = if c.watch_id != 0 {
        if watchers.contains_key(&c.watch_id) {
            return send(out, refuse(DUPLICATE_ID)).await;
        }
        c.watch_id
    } else {
        while watchers.contains_key(next_id) {
            *next_id += 1;
        }
        *next_id
    };
    // The created response goes out before any event of the watcher.
    if !send(out, response(ctx, id, |r| r.created = true)).await {
        return false;
    }
    // Owed so far: nothing at or below `start - 1` (or below "now" for a
    // watch from now); the watcher raises this as it delivers.
    let now = ctx.node.revision();
    let owed_from = if c.start_revision > 0 {
        (c.start_revision - 1).min(now)
    } else {
        now
    };
    let synced = Arc::new(AtomicI64::new(owed_from));
    let task = tokio::spawn(watcher::run(
        ctx.clone(),
        id,
        c,
        out.clone(),
        synced.clone(),
    ));
    watchers.insert(id, Watcher { task, synced });
    true
}

/// A response for `watch_id` with the current header, shaped by `f`.
pub(super) fn response(
    ctx: &Context,
    watch_id: i64,
    f: impl FnOnce(&mut WatchResponse),
) -> WatchResponse {
    let mut r = WatchResponse {
        header: Some(ctx.header(ctx.node.revision())),
        watch_id,
        ..Default::default()
    };
    f(&mut r);
    r
}

/// Queues `r`; false when the client is gone.
pub(super) async fn send(out: &Out, r: WatchResponse) -> bool {
    out.send(Ok(r)).await.is_ok()
}
