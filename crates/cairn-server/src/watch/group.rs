//! The watchers of one stream that read the same regions, and the one
//! subscription they share.
//!
//! A put wakes one reader per stream, not one per watcher: the stream reads
//! each group's merged feed once and hands every batch to the group's
//! members in turn, which also lets their responses leave in one write
//! (etcd, likewise, fans out from one loop per stream). A group is opened by
//! its first watcher and closed with its last.
//!
//! Ordering contract: a region publishes a batch only after the state it
//! describes is visible to `read_view`. So a view read now covers every
//! batch the group has already handed out, and a watcher that joins by
//! replaying history up to its view's revision misses nothing: later batches
//! arrive through the group (those at or below the view are skipped).
//!
//! That holds for the regions as the group read them. Once a region split
//! or merged since, or the regions do not cover a watcher's span, a view
//! is refused (`view` says `None`): the moved region's view would be of
//! the wrong keys at its revision — a split's new region may yet apply,
//! below that revision, writes another member acknowledged. The watcher
//! waits, and the group is made to read its regions again at once (its
//! feed breaks: `look_again`), then the watcher replays regrouped — with
//! what the broken feed held (`Group::carry`), for history a compaction
//! took meanwhile (`cairn_store::watch_hub::Carry`). And a
//! group is only made of regions that cover its watchers' spans
//! (`touched` waits for a region a split is starting here).

use std::sync::Arc;

use cairn_mvcc::Span;
use cairn_store::watch_hub::{Carry, FeedMerger};
use cairn_store::{Snapshot, SpanRegions};

use crate::Context;

/// One group of a stream.
pub struct Group {
    /// IDs of the regions read, in the node's order: the group's identity.
    pub key: Vec<u64>,
    regions: SpanRegions,
    merger: FeedMerger,
    /// The group has handed out every batch resolved up to here.
    pub resolved: i64,
    /// IDs of the watchers in the group.
    pub members: Vec<i64>,
}

/// A consistent view to replay a watcher's history from.
pub struct View {
    /// Per region: its storage view, the watcher's span clipped to it, and
    /// its compaction.
    pub history: Vec<(Arc<dyn Snapshot>, Span, i64)>,
    /// Every region has applied at least this revision.
    pub current: i64,
    /// Compaction is global: the highest any region reports.
    pub compacted: i64,
}

/// The regions `span` touches, once the regions here cover it (waiting
/// until `deadline` for a region a split is starting here); `None` if they
/// do not by then.
pub async fn touched(
    ctx: &Context,
    span: &Span,
    deadline: std::time::Instant,
) -> Option<(Vec<u64>, SpanRegions)> {
    let (start, end) = bounds(span);
    let regions = ctx
        .node
        .covering_span_regions(&start, end.as_deref(), deadline)
        .await;
    regions.covered().then(|| (regions.ids(), regions))
}

impl Group {
    /// Subscribes to the feeds of `regions`, holding on what `carry`
    /// carried from a group before it.
    pub fn open(key: Vec<u64>, regions: SpanRegions, carry: Option<&Carry>) -> Self {
        let mut g = Self {
            key,
            regions,
            merger: FeedMerger::new(Vec::new()),
            resolved: 0,
            members: Vec::new(),
        };
        g.resubscribe(carry);
        g
    }

    /// Takes the group's regions as read now (the same IDs, maybe with new
    /// bounds after a split or merge): views and the next subscription use
    /// them. The current subscription stays; a region whose bounds moved
    /// after it was made publishes a reset into it.
    pub fn refresh(&mut self, regions: SpanRegions) {
        debug_assert_eq!(regions.ids(), self.key);
        self.regions = regions;
    }

    /// Subscribes afresh (after the old subscription lagged or a region's
    /// state was replaced): views read from now on cover every batch the new
    /// subscription skips. The new subscription holds on what `carry`
    /// carried (the old one's, [`Group::carry`]).
    pub fn resubscribe(&mut self, carry: Option<&Carry>) {
        // Subscribes first, then reads what has been resolved: a batch
        // published in between is both in the feed and in any later view.
        self.merger = self.regions.subscribe();
        if let Some(c) = carry {
            self.merger.hold_carried(c);
        }
        self.resolved = self.resolved.max(self.merger.resolved());
    }

    /// Has the group read its regions again: its feed's next item is a
    /// discontinuity (regroup, resubscribe, replay), whether or not a
    /// region published a reset (an abandoned merge moves its target's
    /// epoch without one).
    pub fn look_again(&mut self) {
        self.merger.break_now();
    }

    /// What the feed held when it broke, to carry across the regroup
    /// (`FeedMerger::carry`).
    pub fn carry(&mut self) -> Option<Carry> {
        self.merger.carry()
    }

    /// The merged feed.
    pub fn merger(&mut self) -> &mut FeedMerger {
        &mut self.merger
    }

    /// A view of every region for `span`'s history; `None` when a region
    /// split, merged or stopped since the group read them (the views would
    /// be of the wrong keys at their revisions), or the regions as read do
    /// not cover `span` (read again for another member after a split):
    /// then the caller has the group read its regions again
    /// ([`Group::look_again`]).
    pub fn view(&self, span: &Span) -> Option<View> {
        let mut history = Vec::new();
        let (mut current, mut compacted) = (i64::MAX, 0);
        for v in self.regions.views() {
            current = current.min(v.revisions.current);
            compacted = compacted.max(v.revisions.compacted);
            if let Some(s) = clip(span, &v.start, &v.end) {
                history.push((v.snapshot, s, v.revisions.compacted));
            }
        }
        if self.regions.moved() || !self.regions.covers(span) {
            return None;
        }
        Some(View {
            history,
            current: if current == i64::MAX { 0 } else { current },
            compacted,
        })
    }
}

/// The keys of `span` as `[start, end)` (`end` `None`: to the end).
pub fn bounds(span: &Span) -> (Vec<u8>, Option<Vec<u8>>) {
    match span {
        Span::Single(k) => (k.clone(), Some(k.iter().copied().chain([0]).collect())),
        Span::Range(s, e) => (s.clone(), e.clone()),
    }
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
