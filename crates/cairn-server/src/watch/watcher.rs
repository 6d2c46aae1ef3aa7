//! One watcher: replay history, then follow the region's change feed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use cairn_api::etcdserverpb::watch_create_request::FilterType;
use cairn_api::etcdserverpb::WatchCreateRequest;
use cairn_api::mvccpb::{event::EventType, Event};
use cairn_mvcc::Span;
use cairn_store::watch_hub::{FeedMerger, HubItem};
use prost::Message;

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
        Some(Event {
            r#type: e.r#type,
            kv: e.kv.clone(),
            prev_kv: if self.prev_kv {
                e.prev_kv.clone()
            } else {
                None
            },
        })
    }
}

/// The regions a watcher reads: their feeds merged by the watch hub, and a
/// consistent read view of each for history.
struct Sources {
    merger: FeedMerger,
    history: Vec<(Arc<dyn cairn_storage::Snapshot>, Span)>,
    /// Every region has applied at least this revision.
    current: i64,
    /// Compaction is global: the highest any region reports.
    compacted: i64,
}

/// `span` ∩ `[start, end)` (`end` empty: to the end), if not empty.
fn clip(span: &Span, start: &[u8], end: &[u8]) -> Option<Span> {
    let within = |k: &[u8]| k >= start && (end.is_empty() || k < end);
    match span {
        Span::Single(k) => within(k).then(|| span.clone()),
        Span::Range(s, e) => {
            let lo = if s.as_slice() > start {
                s.clone()
            } else {
                start.to_vec()
            };
            let hi = match (e, end.is_empty()) {
                (None, true) => None,
                (None, false) => Some(end.to_vec()),
                (Some(e), true) => Some(e.clone()),
                (Some(e), false) => Some(if e.as_slice() < end {
                    e.clone()
                } else {
                    end.to_vec()
                }),
            };
            hi.as_ref()
                .is_none_or(|h| lo < *h)
                .then_some(Span::Range(lo, hi))
        }
    }
}

fn open_sources(ctx: &Context, span: &Span) -> Sources {
    let (start, end) = match span {
        Span::Single(k) => (
            k.clone(),
            Some(k.iter().copied().chain([0]).collect::<Vec<u8>>()),
        ),
        Span::Range(s, e) => (s.clone(), e.clone()),
    };
    let regions = ctx.node.regions_overlapping(&start, end.as_deref());
    // Subscribe to every feed before reading any view: nothing falls between.
    let feeds: Vec<_> = regions
        .iter()
        .map(|(r, _, _)| r.shared.subscribe())
        .collect();
    let mut history = Vec::new();
    let mut inputs = Vec::new();
    let (mut current, mut compacted) = (i64::MAX, 0);
    for ((r, rs, re), feed) in regions.iter().zip(feeds) {
        let (snap, revs) = r.shared.read_view();
        current = current.min(revs.current);
        compacted = compacted.max(revs.compacted);
        inputs.push((feed, revs.current));
        if let Some(s) = clip(span, rs, re) {
            history.push((snap, s));
        }
    }
    Sources {
        merger: FeedMerger::new(inputs),
        history,
        current: if current == i64::MAX { 0 } else { current },
        compacted,
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
    let filter = Filter {
        span: Span::new(&c.key, &c.range_end),
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: c.prev_kv,
    };
    let mut src = open_sources(&ctx, &filter.span);
    // The next revision this watcher may deliver; it only moves forward.
    let mut next = if c.start_revision > 0 {
        c.start_revision
    } else {
        src.current + 1
    };
    let mut resolved = src.current;
    let mut catch_up = true;
    let mut fresh = true;
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
            if !fresh {
                src = open_sources(&ctx, &filter.span);
            }
            fresh = false;
            if next <= src.current {
                if next < src.compacted {
                    let compacted = src.compacted;
                    let r = response(&ctx, id, |r| {
                        r.compact_revision = compacted;
                        r.canceled = true;
                    });
                    send(&out, r).await;
                    return;
                }
                let (views, from, to) = (src.history.clone(), next, src.current);
                let history = tokio::task::spawn_blocking(move || {
                    let mut all = Vec::new();
                    for (snap, span) in views {
                        all.extend(cairn_mvcc::history(&*snap, &span, from, to)?);
                    }
                    all.sort_by(|(ra, a), (rb, b)| {
                        ra.cmp(rb).then_with(|| event_key(a).cmp(event_key(b)))
                    });
                    Ok::<_, cairn_mvcc::Error>(all)
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
                next = src.current + 1;
            }
            resolved = resolved.max(src.current);
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
            item = src.merger.next() => match item {
                HubItem::Batch { events, resolved: upto } => {
                    let events: Vec<(i64, Event)> = events
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
                    next = next.max(upto + 1);
                    resolved = resolved.max(upto);
                    synced.store((next - 1).min(resolved), Ordering::Release);
                }
                // Fell behind a bounded feed, or a replica was replaced by a
                // snapshot: catch up from MVCC.
                HubItem::Discontinuity => catch_up = true,
                HubItem::Closed => return,
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

fn event_key(e: &Event) -> &[u8] {
    e.kv.as_ref().map_or(&[][..], |kv| kv.key.as_slice())
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
    let mut events = events.into_iter().peekable();
    while let Some((rev, first)) = events.next() {
        let mut group = vec![first];
        while let Some((_, e)) = events.next_if(|(r, _)| *r == rev) {
            group.push(e);
        }
        if batch.len() + group.len() > EVENTS_PER_RESPONSE
            && !batch.is_empty()
            && !send_events(ctx, id, c, out, std::mem::take(&mut batch)).await
        {
            return false;
        }
        batch.extend(group);
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
