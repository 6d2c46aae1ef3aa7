//! One watcher: replay history, then follow the region's change feed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use cairn_api::etcdserverpb::watch_create_request::FilterType;
use cairn_api::etcdserverpb::WatchCreateRequest;
use cairn_api::mvccpb::{event::EventType, Event};
use cairn_mvcc::Span;
use cairn_store::DATA_REGION;
use prost::Message;
use tokio::sync::broadcast::error::RecvError;

use super::stream::{response, send};
use super::Out;
use crate::Context;

/// Events per response before a (revision-aligned) split.
const EVENTS_PER_RESPONSE: usize = 1000;

struct Filter {
    span: Span,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl Filter {
    fn pass(&self, e: &Event) -> Option<Event> {
        let key = e.kv.as_ref().map(|kv| kv.key.as_slice())?;
        if !self.span.contains(key) {
            return None;
        }
        let is_put = e.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return None;
        }
        let mut e = e.clone();
        if !self.prev_kv {
            e.prev_kv = None;
        }
        Some(e)
    }
}

/// Runs until cancelled (task abort), compacted away, or the client leaves.
pub async fn run(
    ctx: Arc<Context>,
    id: i64,
    c: WatchCreateRequest,
    out: Out,
    synced: Arc<AtomicI64>,
) {
    let Ok(region) = ctx.node.region(DATA_REGION) else {
        return;
    };
    let shared = region.shared.clone();
    let filter = Filter {
        span: Span::new(&c.key, &c.range_end),
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: c.prev_kv,
    };
    let mut feed = shared.subscribe();
    let (_, revs) = shared.read_view();
    // The next revision this watcher may deliver; it only moves forward.
    let mut next = if c.start_revision > 0 {
        c.start_revision
    } else {
        revs.current + 1
    };
    let mut resolved = revs.current;
    let mut catch_up = true;
    let mut progress = ctx
        .limits
        .watch_progress_interval
        .filter(|_| c.progress_notify)
        .map(|d| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
    let mut quiet = true;
    loop {
        if catch_up {
            catch_up = false;
            let (snap, revs) = shared.read_view();
            if next <= revs.current {
                if next < revs.compacted {
                    let r = response(&ctx, id, |r| {
                        r.compact_revision = revs.compacted;
                        r.canceled = true;
                    });
                    send(&out, r).await;
                    return;
                }
                let (span, from, to) = (filter.span.clone(), next, revs.current);
                let history = tokio::task::spawn_blocking(move || {
                    cairn_mvcc::history(&*snap, &span, from, to)
                })
                .await;
                let Ok(Ok(events)) = history else { return };
                let events: Vec<(i64, Event)> = events
                    .into_iter()
                    .filter_map(|(r, e)| filter.pass(&e).map(|e| (r, e)))
                    .collect();
                if !events.is_empty() {
                    quiet = false;
                }
                if !deliver(&ctx, id, &c, &out, events).await {
                    return;
                }
                next = revs.current + 1;
            }
            resolved = resolved.max(revs.current);
            synced.store((next - 1).min(resolved), Ordering::Release);
        }
        let tick = async {
            match &mut progress {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            item = feed.recv() => match item {
                Ok(batch) => {
                    if batch.reset {
                        catch_up = true;
                        continue;
                    }
                    let events: Vec<(i64, Event)> = batch
                        .events
                        .iter()
                        .filter(|(r, _)| *r >= next)
                        .filter_map(|(r, e)| filter.pass(e).map(|e| (*r, e)))
                        .collect();
                    if !events.is_empty() {
                        quiet = false;
                        if !deliver(&ctx, id, &c, &out, events).await {
                            return;
                        }
                    }
                    next = next.max(batch.resolved + 1);
                    resolved = resolved.max(batch.resolved);
                    synced.store((next - 1).min(resolved), Ordering::Release);
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the bounded feed: catch up from MVCC.
                    feed = shared.subscribe();
                    catch_up = true;
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick => {
                if quiet {
                    let rev = synced.load(Ordering::Acquire);
                    let mut r = response(&ctx, id, |_| {});
                    if let Some(h) = &mut r.header {
                        h.revision = rev;
                    }
                    if !send(&out, r).await {
                        return;
                    }
                }
                quiet = true;
            }
        }
    }
}

/// Sends `events` (ordered by revision) in responses that never split a
/// revision, except into `fragment`s when the client asked for them and one
/// revision alone exceeds the request size limit.
async fn deliver(
    ctx: &Context,
    id: i64,
    c: &WatchCreateRequest,
    out: &Out,
    events: Vec<(i64, Event)>,
) -> bool {
    let mut batch: Vec<Event> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let rev = events[i].0;
        let mut j = i;
        while j < events.len() && events[j].0 == rev {
            j += 1;
        }
        let group: Vec<Event> = events[i..j].iter().map(|(_, e)| e.clone()).collect();
        if batch.len() + group.len() > EVENTS_PER_RESPONSE && !batch.is_empty() {
            if !send_events(ctx, id, c, out, std::mem::take(&mut batch)).await {
                return false;
            }
        }
        batch.extend(group);
        i = j;
    }
    batch.is_empty() || send_events(ctx, id, c, out, batch).await
}

async fn send_events(
    ctx: &Context,
    id: i64,
    c: &WatchCreateRequest,
    out: &Out,
    events: Vec<Event>,
) -> bool {
    let limit = ctx.limits.max_request_bytes;
    let size: usize = events.iter().map(|e| e.encoded_len()).sum();
    if !c.fragment || size <= limit || events.len() == 1 {
        return send(out, response(ctx, id, |r| r.events = events)).await;
    }
    // Fragments: each under the limit (a single huge event goes alone).
    let mut parts: Vec<Vec<Event>> = vec![Vec::new()];
    let mut part_size = 0;
    for e in events {
        let n = e.encoded_len();
        if part_size + n > limit && !parts.last().is_some_and(Vec::is_empty) {
            parts.push(Vec::new());
            part_size = 0;
        }
        part_size += n;
        parts.last_mut().expect("non-empty").push(e);
    }
    let last = parts.len() - 1;
    for (k, p) in parts.into_iter().enumerate() {
        if !send(
            out,
            response(ctx, id, |r| {
                r.events = p;
                r.fragment = k < last;
            }),
        )
        .await
        {
            return false;
        }
    }
    true
}
