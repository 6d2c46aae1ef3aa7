//! One watcher's state: what it watches, how far it has delivered, and
//! whether it follows its group's feed or is replaying history.
//!
//! The stream drives watchers; a watcher never runs on its own. Its cursor,
//! `next`, only moves forward, and everything below it has been queued for
//! the client — history and feed use the same order (etcd's: revision,
//! sub-revision, key), and a revision comes whole from one or the other,
//! so events are ordered and unique however the two interleave.

use cairn_api::etcdserverpb::watch_create_request::FilterType;
use cairn_api::etcdserverpb::WatchCreateRequest;
use cairn_api::mvccpb::{event::EventType, Event};
use cairn_mvcc::{Change, Span};
use cairn_store::watch_hub::{Carry, Events};
use prost::Message;
use std::sync::Arc;

use super::stream::{response, send};
use super::Out;
use crate::Context;

/// Events per response before a (revision-aligned) split.
const EVENTS_PER_RESPONSE: usize = 1000;

/// Feed batches a watcher replaying history holds for afterwards; past
/// this it drops them and replays again (etcd's "unsynced" watchers).
const PENDING_BATCHES: usize = 1024;

/// Which events a watcher sends, and how.
pub struct Filter {
    pub span: Span,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl Filter {
    fn of(c: &WatchCreateRequest) -> Self {
        Self {
            span: Span::new(&c.key, &c.range_end),
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
        }
    }

    /// The client's copy of `e`, if the watcher sends it.
    pub fn pass(&self, e: &Event) -> Option<Event> {
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

/// Following the group's feed, or replaying history first.
pub enum Mode {
    /// Every batch of the group goes straight to the client.
    Live,
    /// A history read (the blocking task `task`) is in flight; the group's
    /// batches wait here until it returns.
    Replaying {
        task: tokio::task::Id,
        pending: Vec<(Events, i64)>,
        /// Batches were dropped (too many, or the group's feed broke):
        /// replay again once this read returns.
        again: bool,
    },
    /// The group's regions moved since it read them: nothing is sent
    /// until the group has read them again (its feed broken on purpose),
    /// then the watcher replays from where it was.
    Waiting,
}

/// One watcher of a stream.
pub struct Watcher {
    /// The group (region IDs) it reads.
    pub group: Vec<u64>,
    pub filter: Filter,
    fragment: bool,
    pub progress_notify: bool,
    /// The next revision it may deliver; 0 until the first view ("now").
    pub next: i64,
    /// Its group's feed is complete up to here.
    pub resolved: i64,
    /// No event sent since the last progress tick.
    pub quiet: bool,
    /// The revision of the newest event it sent (0: none).
    pub sent: i64,
    pub mode: Mode,
    /// What its group's feed held when it broke (a split, merge or lag),
    /// until it is replayed: where a compaction reached one region while
    /// another held its events back, history no longer has them.
    pub carry: Option<Arc<Carry>>,
    /// Its start was checked against the compaction (it replayed or went
    /// live): only then does a regroup carry it on.
    pub kept_up: bool,
}

impl Watcher {
    /// A watcher for `c` in `group`; `now` is the node's revision.
    pub fn new(c: &WatchCreateRequest, group: Vec<u64>, now: i64) -> Self {
        Self {
            group,
            filter: Filter::of(c),
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            // From now: every event after the created header's revision.
            next: if c.start_revision > 0 {
                c.start_revision
            } else {
                now + 1
            },
            resolved: now,
            quiet: true,
            sent: 0,
            mode: Mode::Live,
            carry: None,
            // From now: at the head, never below a compaction.
            kept_up: c.start_revision <= 0,
        }
    }

    /// Takes `carry` from its group's broken feed, if it kept up. One it
    /// has not replayed from yet (regrouped twice in a row) stays along:
    /// the later carry lacks what its feed released meanwhile to the
    /// group's live members, which this watcher, replaying, dropped.
    pub fn take_carry(&mut self, carry: Option<&Arc<Carry>>) {
        let Some(carry) = carry.filter(|_| self.kept_up) else {
            return;
        };
        self.carry = Some(match self.carry.take() {
            Some(earlier) => Arc::new(earlier.compose(carry)),
            None => carry.clone(),
        });
    }

    /// Every event at or below this revision has been queued.
    pub fn synced(&self) -> i64 {
        if self.next == 0 {
            self.resolved
        } else {
            (self.next - 1).min(self.resolved)
        }
    }

    /// Takes a batch of its group's feed resolved up to `upto`: the events
    /// to send now (a replaying watcher keeps the batch for later).
    pub fn take(&mut self, events: &Events, upto: i64) -> Vec<(i64, Event)> {
        if let Mode::Replaying { pending, again, .. } = &mut self.mode {
            if pending.len() < PENDING_BATCHES && !*again {
                pending.push((events.clone(), upto));
            } else {
                pending.clear();
                *again = true;
            }
            return Vec::new();
        }
        if matches!(self.mode, Mode::Waiting) {
            // Replayed from history once the group read its regions again.
            return Vec::new();
        }
        let out: Vec<(i64, Event)> = events
            .iter()
            .filter(|c| c.revision >= self.next)
            .filter_map(|c| self.filter.pass(&c.event).map(|e| (c.revision, e)))
            .collect();
        self.next = self.next.max(upto + 1);
        self.resolved = self.resolved.max(upto);
        out
    }

    /// History up to `upto` was read (`events`, unfiltered): what to send.
    pub fn replayed(&mut self, events: Vec<Change>, upto: i64) -> Vec<(i64, Event)> {
        let out = events
            .into_iter()
            .filter(|c| c.revision >= self.next)
            .filter_map(|c| self.filter.pass(&c.event).map(|e| (c.revision, e)))
            .collect();
        self.next = self.next.max(upto + 1);
        self.resolved = self.resolved.max(upto);
        out
    }

    /// Sends `events` (ordered by revision) as watcher `id`'s responses:
    /// never splitting a revision, except into `fragment`s when the client
    /// asked for them and one revision alone exceeds the request size limit.
    pub async fn deliver(
        &mut self,
        ctx: &Context,
        id: i64,
        out: &Out,
        events: Vec<(i64, Event)>,
    ) -> bool {
        let Some(&(newest, _)) = events.last() else {
            return true;
        };
        self.quiet = false;
        self.sent = self.sent.max(newest);
        let mut batch: Vec<Event> = Vec::new();
        let mut events = events.into_iter().peekable();
        while let Some((rev, first)) = events.next() {
            let mut group = vec![first];
            while let Some((_, e)) = events.next_if(|(r, _)| *r == rev) {
                group.push(e);
            }
            if batch.len() + group.len() > EVENTS_PER_RESPONSE
                && !batch.is_empty()
                && !send_events(ctx, id, self.fragment, out, std::mem::take(&mut batch)).await
            {
                return false;
            }
            batch.extend(group);
        }
        batch.is_empty() || send_events(ctx, id, self.fragment, out, batch).await
    }
}

async fn send_events(
    ctx: &Context,
    id: i64,
    fragment: bool,
    out: &Out,
    events: Vec<Event>,
) -> bool {
    let limit = ctx.limits.max_request_bytes;
    let size: usize = events.iter().map(|e| e.encoded_len()).sum();
    if !fragment || size <= limit || events.len() == 1 {
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

/// What a watcher whose next revision is `next` does with a view of its
/// regions resolved up to `current`, whose history is compacted up to
/// `compacted` (the highest any region has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Told it is compacted, and ended (etcd's `ErrCompacted`): history it
    /// asked for is gone in some region.
    Compacted,
    /// Nothing to replay: the feed carries everything from `next` on.
    Live,
    /// History from `next` to `current` is read first.
    Replay,
}

/// See [`Start`]. Compaction is looked at first: a region held back below
/// `next` (a lock of a transaction across regions keeps its resolved
/// revision down) must not let a watcher from below another region's
/// compaction go live, missing that region's compacted events unseen.
pub fn start(next: i64, current: i64, compacted: i64) -> Start {
    if next < compacted {
        Start::Compacted
    } else if next > current {
        Start::Live
    } else {
        Start::Replay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_below_any_regions_compaction_is_compacted_even_above_the_view() {
        // One region compacted at 250, another resolved only to 100 (a
        // lock): a watch from 101 is compacted, as etcd answers.
        assert_eq!(start(101, 100, 250), Start::Compacted);
        assert_eq!(start(50, 100, 60), Start::Compacted);
        // At the compaction itself: history there is kept.
        assert_eq!(start(250, 100, 250), Start::Live);
        assert_eq!(start(101, 100, 0), Start::Live);
        assert_eq!(start(60, 100, 60), Start::Replay);
        assert_eq!(start(100, 100, 0), Start::Replay);
    }
}
