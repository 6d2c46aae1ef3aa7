//! The watch hub: one ordered change stream over every data region a key
//! span touches.
//!
//! Each region publishes its own feed (`cairn_raft::FeedBatch`) with a
//! resolved revision: no write at or below it can still appear in that
//! region. The hub holds back events until *every* input region has
//! resolved past them, then releases them in etcd's order (revision, then
//! the place of the event's op in its transaction, then key:
//! `cairn_mvcc::Change`) with the minimum resolved revision — so a watcher
//! over several regions sees one ordered history, and a progress
//! notification at R is safe across all of them. Any input lagging or
//! resetting is reported, and the watcher catches up from MVCC history
//! instead. The inputs' feeds are one `SelectAll` of broadcast streams:
//! a batch costs the hub the work of the region that sent it, not of every
//! region watched (Kubernetes watches every key: hundreds of regions).
//!
//! An idle region's resolved revision moves only with its closed
//! timestamps (`node::closes`: beside the log or as `Command::Close`,
//! while there is more than one data region and a member with a watch on
//! the region asks). A merger holding events back names the regions
//! behind them, once per release (`node::close_hurry`), and their leaders
//! close them at once: an event waits one round of closes — milliseconds
//! while a leader has tens of hurried regions; a leader of hundreds spaces
//! its rounds out, up to the 250 ms cadence (`close_hurry`). It keeps the lowest resolved revision as inputs
//! move, so a busy region's batch costs no scan of the idle ones. A region that splits publishes a reset: the watch
//! stream then regroups each watcher over the regions its span touches now
//! and re-reads history, so the keys the split moved out stay watched;
//! what the merger held back goes along ([`Carry`]), for where history
//! was compacted meanwhile.
//! With one input nothing needs holding back, and the
//! region's batch is handed on as is (shared, not copied): every reader (one
//! per watch stream and set of regions) gets the same batch, and each
//! watcher copies only the events it sends. (A copy per watcher per batch
//! was the largest cost of the watch path in a profile with 100 watchers:
//! docs/benchmarks.md.)

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use cairn_mvcc::Change;
use cairn_raft::FeedBatch;

use crate::node::close_hurry::{CloseHurries, HurryPace};
use futures::stream::{self, SelectAll, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// What the merged stream yields.
#[derive(Debug)]
pub enum HubItem {
    /// Events every input has resolved, in etcd's order, and the revision
    /// up to which the merged stream is complete.
    Batch { events: Events, resolved: i64 },
    /// An input lagged behind its bounded feed or installed a snapshot:
    /// re-read history from MVCC.
    Discontinuity,
    /// An input closed (node shutting down).
    Closed,
}

/// The events of a [`HubItem::Batch`]: one region's batch as published,
/// or events merged from several. Cloning shares them.
#[derive(Debug, Clone)]
pub enum Events {
    /// A region's batch, shared with every other subscriber.
    Shared(Arc<FeedBatch>),
    /// Events merged from several regions.
    Merged(Arc<Vec<Change>>),
}

impl Events {
    /// The events, in etcd's order.
    pub fn iter(&self) -> std::slice::Iter<'_, Change> {
        match self {
            Events::Shared(b) => b.events.iter(),
            Events::Merged(v) => v.iter(),
        }
    }
}

/// What an input's feed brings.
enum Fed {
    Batch(Arc<FeedBatch>),
    /// The input fell behind its bounded feed.
    Lagged,
    /// The feed's sender went (the node is stopping).
    Closed,
}

/// One input's feed, its items tagged with the input's place.
type Feed = Pin<Box<dyn Stream<Item = (usize, Fed)> + Send + Sync>>;

struct Input {
    resolved: i64,
    /// Its events at or below this came from history (the feed's copies
    /// of them are skipped).
    start: i64,
    /// Its region's bounds when subscribed (what its events cover until
    /// it publishes a reset).
    bounds: (Vec<u8>, Vec<u8>),
    /// Every event of the region above this has been held (from history
    /// or the feed) or released.
    complete_after: i64,
    /// Frozen for a merge when subscribed: the region's ID and its freeze's
    /// epoch (it publishes no event from then on).
    frozen: Option<(u64, u64)>,
    /// No event of its keys as subscribed can come at or below this other
    /// than those held or released: it or a frozen input was absorbed
    /// ([`FeedBatch::absorbed`]). What [`FeedMerger::carry`] vouches for,
    /// above its resolved revision.
    sealed: i64,
}

/// One region's feed as subscribed, for [`FeedMerger::with_inputs`].
pub struct FeedInput {
    pub feed: broadcast::Receiver<Arc<FeedBatch>>,
    /// The region's bounds when its feed was subscribed to.
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// The revision its reader has seen resolved: events at or below it
    /// come from history, not the feed.
    pub resolved: i64,
    /// Every event of the region above this is in the feed or in the
    /// history handed to the merger.
    pub complete_after: i64,
    /// The region's ID and its freeze's epoch, if it was frozen for a merge
    /// when its bounds were read (and its feed subscribed to).
    pub frozen: Option<(u64, u64)>,
}

/// What a merger held when its reader read its regions again (a split,
/// merge or lag): every event of some keys over some revisions, which the
/// regions' history may no longer have (a compaction that reached one
/// region while another held the events back). The reader's next merger
/// holds them on, and a watcher that had kept up replays from them where
/// history is compacted (`FeedMerger::carry`).
///
/// A merge that completes vouches for more: the frozen region published
/// nothing since its freeze, and the target writes the keys it absorbed
/// only above the revision it had resolved when it absorbed them. So the
/// absorb's reset extends what both inputs vouch for up to there
/// (`FeedMerger::absorbed`) — else, with the target compacted at the head
/// while the frozen region refused, the frozen keys' gap between its last
/// revision and the compaction would have no history and no carry.
#[derive(Debug, Default)]
pub struct Carry {
    /// The events, in etcd's order.
    events: Vec<Change>,
    /// Per input: its keys `[start, end)` (`end` empty: to the end) and the
    /// revisions `(after, upto]` over which `events` hold all of theirs.
    spans: Vec<(Vec<u8>, Vec<u8>, i64, i64)>,
}

impl Carry {
    /// The events carried, in etcd's order.
    pub fn events(&self) -> &[Change] {
        &self.events
    }

    /// True when the events carried include every event of the keys
    /// `[lo, hi)` (`hi` `None`: to the end) at revisions `from..=to`.
    ///
    /// Spans may overlap and chain: an inherited carry's beside the
    /// inputs', and a later carry's after an earlier one's
    /// ([`Carry::compose`]). So the keys are cut at every span's bounds,
    /// and each piece must be covered, over `from..=to`, by the revisions
    /// of the spans holding all of it together.
    pub fn covers(&self, lo: &[u8], hi: Option<&[u8]>, from: i64, to: i64) -> bool {
        if from > to {
            return true;
        }
        let spans: Vec<&(Vec<u8>, Vec<u8>, i64, i64)> = self.overlapping(lo, hi).collect();
        let inside = |k: &[u8]| k > lo && hi.is_none_or(|h| k < h);
        let mut cuts: Vec<&[u8]> = spans
            .iter()
            .flat_map(|(s, e, _, _)| [s.as_slice(), e.as_slice()])
            .filter(|k| !k.is_empty() && inside(k))
            .collect();
        cuts.push(lo);
        cuts.sort_unstable();
        cuts.dedup();
        (0..cuts.len()).all(|i| {
            let (a, b) = (cuts[i], cuts.get(i + 1).copied().or(hi));
            let mut revs: Vec<(i64, i64)> = spans
                .iter()
                .filter(|(s, e, _, _)| {
                    s.as_slice() <= a && (e.is_empty() || b.is_some_and(|b| e.as_slice() >= b))
                })
                .map(|(_, _, after, upto)| (*after, *upto))
                .collect();
            revs.sort_unstable();
            let mut reach = from - 1;
            for (after, upto) in revs {
                if after > reach {
                    break;
                }
                reach = reach.max(upto);
            }
            reach >= to
        })
    }

    /// The spans with keys in `[lo, hi)`.
    fn overlapping<'a>(
        &'a self,
        lo: &'a [u8],
        hi: Option<&'a [u8]>,
    ) -> impl Iterator<Item = &'a (Vec<u8>, Vec<u8>, i64, i64)> + 'a {
        self.spans.iter().filter(move |(s, e, _, _)| {
            (e.is_empty() || e.as_slice() > lo) && hi.is_none_or(|h| s.as_slice() < h)
        })
    }

    /// The lowest revision after which the events carried include every
    /// event of `[lo, hi)` up to `to`, if below `to`.
    fn whole_after(&self, lo: &[u8], hi: Option<&[u8]>, to: i64) -> Option<i64> {
        let mut afters: Vec<i64> = self.overlapping(lo, hi).map(|sp| sp.2).collect();
        afters.sort_unstable();
        afters.dedup();
        afters
            .into_iter()
            .find(|&after| after < to && self.covers(lo, hi, after + 1, to))
    }

    /// This carry and `later`, one the same watcher was carried after it
    /// (regrouped again before it had replayed from this one): every event
    /// of either, and every span of either. The later one no longer holds
    /// what its merger released meanwhile — to the groups' other members,
    /// not to a watcher still replaying — so the earlier one's events stand
    /// in for those.
    pub fn compose(&self, later: &Carry) -> Carry {
        let mut events: BTreeMap<(i64, u32, Vec<u8>), Change> = BTreeMap::new();
        for c in self.events.iter().chain(&later.events) {
            events.insert((c.revision, c.sub, c.key().to_vec()), c.clone());
        }
        Carry {
            events: events.into_values().collect(),
            spans: self.spans.iter().chain(&later.spans).cloned().collect(),
        }
    }
}

/// Merges the feeds of several regions.
pub struct FeedMerger {
    inputs: Vec<Input>,
    /// Every input's feed as one stream, which polls only the feeds that
    /// were woken. (A select over every input's receiver, made afresh for
    /// each batch, cost O(regions) per batch: with hundreds of regions
    /// watched, hundreds of futures made, polled and dropped for each.)
    feeds: SelectAll<Feed>,
    /// An input's feed closed: so is the merged stream.
    closed: bool,
    /// Events not yet resolved everywhere, by (revision, sub, key).
    held: BTreeMap<(i64, u32, Vec<u8>), Change>,
    /// Reading history for the subscription failed (or the reader asked):
    /// the next item is a discontinuity (subscribe again), not before this
    /// time. A deadline, not a pause per call: a reader that drops `next`
    /// for another branch of a `select!` must not restart the wait.
    broken: Option<tokio::time::Instant>,
    /// Its history was read whole for the regions as subscribed (not
    /// broken from the start): what it holds of its inputs' keys can be
    /// carried on.
    sound: bool,
    /// The spans of the carries it was given (`hold_carried`): what it
    /// holds of those keys can be carried on, sound or not.
    inherited: Vec<(Vec<u8>, Vec<u8>, i64, i64)>,
    /// The lowest resolved revision of the inputs, and how many inputs
    /// are at it: kept as inputs move, not found anew per batch (a batch
    /// of a busy region, with hundreds of idle ones watched, moves no
    /// minimum).
    low: i64,
    at_low: usize,
    /// Where to name the inputs holding events back (each input's region
    /// id), and when they were last named (`node::close_hurry`).
    hurry: Option<(Vec<u64>, Arc<CloseHurries>)>,
    pace: HurryPace,
}

impl FeedMerger {
    /// A merger over `feeds`, each with the revision its reader has already
    /// seen resolved (from the read view it caught up from).
    pub fn new(feeds: Vec<(broadcast::Receiver<Arc<FeedBatch>>, i64)>) -> Self {
        Self::with_history(feeds, Vec::new(), false)
    }

    /// [`FeedMerger::new`], holding `history`: the events of inputs
    /// resolved past the lowest of them, above it (no feed carries them);
    /// `broken`: reading them failed.
    pub fn with_history(
        feeds: Vec<(broadcast::Receiver<Arc<FeedBatch>>, i64)>,
        history: Vec<Change>,
        broken: bool,
    ) -> Self {
        let inputs = feeds
            .into_iter()
            .map(|(feed, resolved)| FeedInput {
                feed,
                start: Vec::new(),
                end: Vec::new(),
                resolved,
                complete_after: resolved,
                frozen: None,
            })
            .collect();
        Self::with_inputs(inputs, history, broken)
    }

    /// [`FeedMerger::with_history`] with each input's bounds and what its
    /// history holds: what [`FeedMerger::carry`] vouches for.
    pub fn with_inputs(feeds: Vec<FeedInput>, history: Vec<Change>, broken: bool) -> Self {
        let mut inputs = Vec::with_capacity(feeds.len());
        let mut streams = SelectAll::new();
        for (i, f) in feeds.into_iter().enumerate() {
            let FeedInput {
                feed,
                start,
                end,
                resolved,
                complete_after,
                frozen,
            } = f;
            inputs.push(Input {
                resolved,
                start: resolved,
                bounds: (start, end),
                complete_after,
                frozen,
                sealed: resolved,
            });
            let fed = BroadcastStream::new(feed)
                .map(move |r| match r {
                    Ok(batch) => (i, Fed::Batch(batch)),
                    Err(_) => (i, Fed::Lagged),
                })
                .chain(stream::once(async move { (i, Fed::Closed) }));
            streams.push(Box::pin(fed) as Feed);
        }
        let mut m = Self {
            inputs,
            feeds: streams,
            closed: false,
            held: BTreeMap::new(),
            broken: broken.then(Self::after_pause),
            sound: !broken,
            inherited: Vec::new(),
            low: 0,
            at_low: 0,
            hurry: None,
            pace: HurryPace::default(),
        };
        m.find_low();
        for c in history {
            m.hold(c);
        }
        m
    }

    /// Makes the merger name the inputs (regions `ids`, in input order)
    /// that hold its events back to `hurries`, so their leaders close
    /// them soon.
    pub(crate) fn hurrying(mut self, ids: Vec<u64>, hurries: Arc<CloseHurries>) -> Self {
        debug_assert_eq!(ids.len(), self.inputs.len());
        self.hurry = Some((ids, hurries));
        self.hurry_held_back();
        self
    }

    /// Names the inputs resolved below the newest event held, unless
    /// named since the last release (or lately: [`HurryPace`]). Not only
    /// those below the lowest: the others hold back the newer events, and
    /// named one at a time, the idle regions were closed in turn, each
    /// event waiting for another region's round.
    fn hurry_held_back(&mut self) {
        let (Some((ids, hurries)), Some(((newest, _, _), _))) =
            (&self.hurry, self.held.last_key_value())
        else {
            return;
        };
        if !self.pace.due() {
            return;
        }
        let behind = self
            .inputs
            .iter()
            .zip(ids)
            .filter(|(i, _)| i.resolved < *newest)
            .map(|(_, id)| *id);
        hurries.hurry(behind);
    }

    /// Input `idx` resolved `to`; keeps the lowest.
    fn advance(&mut self, idx: usize, to: i64) {
        let input = &mut self.inputs[idx];
        if to <= input.resolved {
            return;
        }
        let was = std::mem::replace(&mut input.resolved, to);
        if was == self.low {
            self.at_low -= 1;
            if self.at_low == 0 {
                self.find_low();
                // Released: name the inputs again once held back again.
                self.pace.reset();
            }
        }
    }

    fn find_low(&mut self) {
        self.low = self.inputs.iter().map(|i| i.resolved).min().unwrap_or(0);
        self.at_low = self
            .inputs
            .iter()
            .filter(|i| i.resolved == self.low)
            .count();
    }

    fn hold(&mut self, c: Change) {
        self.held.insert((c.revision, c.sub, c.key().to_vec()), c);
    }

    /// Makes the next item a discontinuity (after the usual pause): the
    /// reader looks at its regions again and subscribes afresh.
    pub fn break_now(&mut self) {
        self.broken.get_or_insert_with(Self::after_pause);
    }

    /// When a discontinuity asked for now is delivered.
    fn after_pause() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_millis(50)
    }

    /// Takes what it holds, with the keys and revisions over which that
    /// is every event: per input, its bounds as subscribed, from what it
    /// released (or its history began) up to its resolved revision.
    /// `None` if its history was not read whole. Called once its reader
    /// is done with it (a discontinuity).
    pub fn carry(&mut self) -> Option<Carry> {
        let low = self.low;
        let own = self.inputs.iter().filter(|_| self.sound).map(|i| {
            let (start, end) = i.bounds.clone();
            (start, end, i.complete_after, i.resolved.max(i.sealed))
        });
        // What it released is not held any more; a span left empty goes.
        let spans: Vec<_> = own
            .chain(self.inherited.iter().cloned())
            .map(|(start, end, after, upto)| (start, end, after.max(low), upto))
            .filter(|(_, _, after, upto)| upto > after)
            .collect();
        if spans.is_empty() && !self.sound {
            return None;
        }
        let held = std::mem::take(&mut self.held);
        Some(Carry {
            events: held.into_values().collect(),
            spans,
        })
    }

    /// Holds the events `carry` carried that it has not released (those
    /// above its resolved revision): what a merger before it held back,
    /// which its regions' history may not have any more.
    pub fn hold_carried(&mut self, carry: &Carry) {
        let low = self.low;
        for c in carry.events.iter().filter(|c| c.revision > low) {
            self.hold(c.clone());
        }
        self.inherited.extend(carry.spans.iter().cloned());
        // What it holds of an input's keys now begins where the carry's
        // does, if that is lower (a compaction cut its history short):
        // carried again, it still stands in for the compacted history.
        for i in &mut self.inputs {
            let (lo, hi) = (&i.bounds.0, &i.bounds.1);
            let hi = (!hi.is_empty()).then_some(hi.as_slice());
            if let Some(after) = carry.whole_after(lo, hi, i.complete_after) {
                i.complete_after = after;
            }
        }
    }

    /// Input `idx` absorbed `source` (the region's ID and its freeze's
    /// epoch), as `batch` says: every event of its keys as subscribed and of
    /// the absorbed keys at or below the batch's resolved revision is held
    /// or released here, if the absorbed region was frozen at that freeze
    /// when subscribed (it published no event since). So the carry
    /// vouches for both up to there: history the compaction took meanwhile
    /// is not needed, and a watcher that kept up is not cancelled.
    fn absorbed(&mut self, idx: usize, batch: &FeedBatch, source: (u64, u64)) {
        let start = self.inputs[idx].start;
        for c in batch.events.iter().filter(|c| c.revision > start) {
            self.hold(c.clone());
        }
        for (i, input) in self.inputs.iter_mut().enumerate() {
            if i == idx || input.frozen == Some(source) {
                input.sealed = input.sealed.max(batch.resolved);
            }
        }
    }

    /// Takes what the feeds hold ready now, once one has reset (this
    /// merger is done): an absorb's reset among them still vouches
    /// ([`FeedMerger::absorbed`]). A member publishes the absorb in the
    /// target's feed before it retires the absorbed region here, whose
    /// reset may be the one taken first. Other batches go on as usual
    /// (their events held; nothing released any more), up to their
    /// input's own reset (`reset`: the input whose reset ended it): what
    /// follows one is of other bounds.
    fn drain_absorbs(&mut self, reset: usize) {
        use futures::FutureExt;
        let mut done = vec![false; self.inputs.len()];
        done[reset] = true;
        // Unconstrained: tokio's budget would end a drain of many ready
        // batches early, the absorb maybe still among them.
        while let Some(Some((idx, fed))) =
            tokio::task::unconstrained(self.feeds.next()).now_or_never()
        {
            if done[idx] {
                continue;
            }
            let batch = match fed {
                Fed::Batch(batch) => batch,
                // Its feed lagged or closed (a retired region's sender goes
                // right after its reset): nothing more of it.
                Fed::Lagged | Fed::Closed => {
                    done[idx] = true;
                    continue;
                }
            };
            if batch.reset {
                done[idx] = true;
                if let Some(source) = batch.absorbed {
                    self.absorbed(idx, &batch, source);
                }
                continue;
            }
            let start = self.inputs[idx].start;
            for c in batch.events.iter().filter(|c| c.revision > start) {
                self.hold(c.clone());
            }
            // Its own claim only: the lowest resolved revision stays, as
            // nothing is released (`carry` claims every input from there).
            let input = &mut self.inputs[idx];
            input.resolved = input.resolved.max(batch.resolved);
        }
    }

    /// The revision every input has resolved.
    pub fn resolved(&self) -> i64 {
        self.low
    }

    /// Waits for the next releasable batch (possibly empty when only the
    /// resolved revision advanced).
    pub async fn next(&mut self) -> HubItem {
        if self.closed {
            return HubItem::Closed;
        }
        if let Some(at) = self.broken {
            // Not at once: a failing read would otherwise spin. Cleared
            // only after the pause, so a caller that drops this future
            // meanwhile (a `select!`) still gets the discontinuity.
            // (Before looking at the inputs: a subscription to no region,
            // none hosted here yet, is broken, and its reader subscribes
            // again — a lock waiter told `Closed` waited for good.)
            tokio::time::sleep_until(at).await;
            self.broken = None;
            return HubItem::Discontinuity;
        }
        if self.inputs.is_empty() {
            return HubItem::Closed;
        }
        let fed = loop {
            // Held back: name the inputs behind again if nothing moves
            // for a while (a hurry lost on its way, a leader moved).
            let again = match (&self.hurry, self.held.is_empty()) {
                (Some(_), false) => self.pace.again_at(),
                _ => None,
            };
            let Some(again) = again else {
                break self.feeds.next().await;
            };
            tokio::select! {
                fed = self.feeds.next() => break fed,
                () = tokio::time::sleep_until(again.into()) => self.hurry_held_back(),
            }
        };
        let (idx, batch) = match fed {
            Some((idx, Fed::Batch(batch))) => (idx, batch),
            Some((_, Fed::Lagged)) => return HubItem::Discontinuity,
            Some((_, Fed::Closed)) | None => {
                self.closed = true;
                return HubItem::Closed;
            }
        };
        if batch.reset {
            if let Some(source) = batch.absorbed {
                self.absorbed(idx, &batch, source);
            }
            self.drain_absorbs(idx);
            return HubItem::Discontinuity;
        }
        if self.inputs.len() == 1 && self.held.is_empty() {
            // Nothing to hold back: the batch goes on as published.
            self.advance(0, batch.resolved);
            return HubItem::Batch {
                resolved: self.low,
                events: Events::Shared(batch),
            };
        }
        let start = self.inputs[idx].start;
        for c in batch.events.iter().filter(|c| c.revision > start) {
            self.hold(c.clone());
        }
        self.advance(idx, batch.resolved);
        let resolved = self.low;
        let rest = self.held.split_off(&(resolved + 1, 0, Vec::new()));
        let ready = std::mem::replace(&mut self.held, rest);
        self.hurry_held_back();
        HubItem::Batch {
            events: Events::Merged(Arc::new(ready.into_values().collect())),
            resolved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::mvccpb::{Event, KeyValue};

    fn ev(key: &str, rev: i64) -> Change {
        ev_op(key, rev, 0)
    }

    /// An event made by the op at `sub` of its transaction.
    fn ev_op(key: &str, rev: i64, sub: u32) -> Change {
        Change {
            revision: rev,
            sub,
            event: Event {
                kv: Some(KeyValue {
                    key: key.into(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    fn batch(events: Vec<Change>, resolved: i64) -> Arc<FeedBatch> {
        Arc::new(FeedBatch {
            events,
            resolved,
            ..Default::default()
        })
    }

    fn keys(item: HubItem) -> (Vec<(i64, String)>, i64) {
        match item {
            HubItem::Batch { events, resolved } => (
                events
                    .iter()
                    .map(|c| (c.revision, String::from_utf8(c.key().to_vec()).unwrap()))
                    .collect(),
                resolved,
            ),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_are_released_in_order_once_every_region_resolved_them() {
        let (a_tx, a_rx) = broadcast::channel(16);
        let (b_tx, b_rx) = broadcast::channel(16);
        let mut m = FeedMerger::new(vec![(a_rx, 0), (b_rx, 0)]);
        // Region A commits 10 and 30; region B has resolved nothing yet.
        a_tx.send(batch(vec![ev("a1", 10), ev("a2", 30)], 30))
            .unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        // Region B commits 20 and resolves 25: 10 and 20 are safe, 30 is not.
        b_tx.send(batch(vec![ev("b1", 20)], 25)).unwrap();
        assert_eq!(
            keys(m.next().await),
            (vec![(10, "a1".into()), (20, "b1".into())], 25)
        );
        // B resolves past 30 with a write at 30 too: both at 30, key order.
        b_tx.send(batch(vec![ev("a0", 30)], 40)).unwrap();
        assert_eq!(
            keys(m.next().await),
            (vec![(30, "a0".into()), (30, "a2".into())], 30)
        );
        a_tx.send(batch(vec![], 50)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 40));
    }

    #[tokio::test]
    async fn a_transaction_across_regions_merges_in_the_order_its_ops_ran() {
        // One transaction at 10: put z (op 0, region B), put a (op 1,
        // region A), delete c and d (op 2, one DeleteRange over both).
        let (a_tx, a_rx) = broadcast::channel(16);
        let (b_tx, b_rx) = broadcast::channel(16);
        let mut m = FeedMerger::new(vec![(a_rx, 0), (b_rx, 0)]);
        a_tx.send(batch(vec![ev_op("a", 10, 1), ev_op("c", 10, 2)], 10))
            .unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        b_tx.send(batch(vec![ev_op("z", 10, 0), ev_op("d", 10, 2)], 10))
            .unwrap();
        let want = ["z", "a", "c", "d"].map(|k| (10, k.to_string())).to_vec();
        assert_eq!(keys(m.next().await), (want, 10));
    }

    /// A reader that polls `next` inside a `select!` with a busier branch
    /// (a stream's other groups, its client) drops the future again and
    /// again: a discontinuity asked for must still arrive after its pause,
    /// not wait for a poll that lasts that long. (A pause restarted per
    /// call never arrived here.)
    #[tokio::test]
    async fn a_discontinuity_asked_for_arrives_though_next_is_dropped_again_and_again() {
        let (_tx, rx) = broadcast::channel::<Arc<FeedBatch>>(16);
        let mut m = FeedMerger::new(vec![(rx, 0)]);
        m.break_now();
        let started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                item = m.next() => {
                    assert!(matches!(item, HubItem::Discontinuity), "{item:?}");
                    break;
                }
                () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "the discontinuity never came"
            );
        }
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
    }

    #[tokio::test]
    async fn one_input_hands_on_the_published_batch_uncopied() {
        let (tx, rx) = broadcast::channel(16);
        let mut m = FeedMerger::new(vec![(rx, 5)]);
        let b = batch(vec![ev("k", 7), ev("l", 8)], 9);
        tx.send(b.clone()).unwrap();
        match m.next().await {
            HubItem::Batch {
                events: Events::Shared(got),
                resolved,
            } => {
                assert!(Arc::ptr_eq(&got, &b));
                assert_eq!(resolved, 9);
            }
            other => panic!("expected the shared batch, got {other:?}"),
        }
        assert_eq!(m.resolved(), 9);
        // The resolved revision never moves back.
        tx.send(batch(vec![], 6)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 9));
    }

    #[tokio::test]
    async fn a_closed_input_closes_the_merged_stream_for_good() {
        let (a_tx, a_rx) = broadcast::channel(16);
        let (b_tx, b_rx) = broadcast::channel(16);
        let mut m = FeedMerger::new(vec![(a_rx, 0), (b_rx, 0)]);
        drop(a_tx);
        assert!(matches!(m.next().await, HubItem::Closed));
        b_tx.send(batch(vec![ev("b", 5)], 5)).unwrap();
        assert!(matches!(m.next().await, HubItem::Closed));
    }

    #[tokio::test]
    async fn with_hundreds_of_inputs_an_event_waits_for_the_last_to_resolve() {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..400).map(|_| broadcast::channel(16)).unzip();
        let mut m = FeedMerger::new(rxs.into_iter().map(|rx| (rx, 0)).collect());
        // Region 7 writes at 10; the others resolve past it one by one.
        txs[7].send(batch(vec![ev("k", 10)], 10)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        for (i, tx) in txs.iter().enumerate().filter(|(i, _)| *i != 7) {
            tx.send(batch(vec![], 20)).unwrap();
            let (events, resolved) = keys(m.next().await);
            if i == 399 {
                assert_eq!((events, resolved), (vec![(10, "k".into())], 10));
            } else {
                assert_eq!((events, resolved), (vec![], 0), "after input {i}");
            }
        }
        txs[7].send(batch(vec![], 30)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 20));
    }

    /// A merger holding events back names the regions behind the newest
    /// one it holds, once until its resolved revision moves (then again
    /// if it still holds some), not once per batch of a busy region.
    #[tokio::test]
    async fn a_held_back_merger_names_the_regions_behind_once_per_release() {
        let hurries = Arc::new(CloseHurries::new(Default::default()));
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| broadcast::channel(16)).unzip();
        let mut m = FeedMerger::new(rxs.into_iter().map(|rx| (rx, 0)).collect())
            .hurrying(vec![11, 12, 13], hurries.clone());
        assert!(hurries.take().is_empty(), "nothing held, nothing named");
        txs[0].send(batch(vec![ev("a", 10)], 10)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        assert_eq!(hurries.take(), [12, 13].into());
        // More from the busy region, and one idle region moves, but the
        // lowest does not: named already.
        txs[0].send(batch(vec![ev("a", 11)], 11)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        txs[1].send(batch(vec![], 20)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        assert!(hurries.take().is_empty());
        // The last one moves, not far enough: named again, alone (not
        // within a few milliseconds of the last time, though).
        txs[2].send(batch(vec![], 5)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 5));
        let waited = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(waited, m.next()).await.is_err());
        assert_eq!(hurries.take(), [13].into());
        txs[2].send(batch(vec![], 30)).unwrap();
        let want = vec![(10, "a".into()), (11, "a".into())];
        assert_eq!(keys(m.next().await), (want, 11));
        assert!(hurries.take().is_empty(), "nothing held");
    }

    /// A merger still held back with nothing arriving names the regions
    /// behind again (the first hurry may have been lost).
    #[tokio::test]
    async fn a_merger_held_back_with_nothing_arriving_names_the_regions_again() {
        let hurries = Arc::new(CloseHurries::new(Default::default()));
        let (a_tx, a_rx) = broadcast::channel(16);
        let (_b_tx, b_rx) = broadcast::channel(16);
        let mut m =
            FeedMerger::new(vec![(a_rx, 0), (b_rx, 0)]).hurrying(vec![1, 2], hurries.clone());
        a_tx.send(batch(vec![ev("a", 10)], 10)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        assert_eq!(hurries.take(), [2].into());
        let waited = std::time::Duration::from_millis(250);
        assert!(tokio::time::timeout(waited, m.next()).await.is_err());
        assert_eq!(hurries.take(), [2].into(), "not named again");
    }

    #[tokio::test]
    async fn a_lagging_or_reset_input_is_a_discontinuity() {
        let (a_tx, a_rx) = broadcast::channel(1);
        let mut m = FeedMerger::new(vec![(a_rx, 0)]);
        a_tx.send(batch(vec![], 1)).unwrap();
        a_tx.send(batch(vec![], 2)).unwrap();
        assert!(matches!(m.next().await, HubItem::Discontinuity));
        a_tx.send(Arc::new(FeedBatch {
            events: vec![],
            resolved: 3,
            reset: true,
            absorbed: None,
        }))
        .unwrap();
        assert!(matches!(m.next().await, HubItem::Discontinuity));
    }

    fn input(rx: broadcast::Receiver<Arc<FeedBatch>>, start: &str, end: &str) -> FeedInput {
        FeedInput {
            feed: rx,
            start: start.into(),
            end: end.into(),
            resolved: 0,
            complete_after: 0,
            frozen: None,
        }
    }

    #[tokio::test]
    async fn a_broken_feed_carries_what_it_held_and_vouches_only_for_that() {
        let (a_tx, a_rx) = broadcast::channel(16);
        let (b_tx, b_rx) = broadcast::channel(16);
        let (_c_tx, c_rx) = broadcast::channel(16);
        let mut m = FeedMerger::with_inputs(
            vec![
                input(a_rx, "", "m"),
                input(b_rx, "m", "t"),
                input(c_rx, "t", ""),
            ],
            vec![],
            false,
        );
        // a and b run ahead to 6 and 7; c (frozen, say) stays at 0.
        a_tx.send(batch(vec![ev("b", 2), ev("c", 5)], 6)).unwrap();
        b_tx.send(batch(vec![ev("n", 3)], 7)).unwrap();
        for _ in 0..2 {
            let (got, resolved) = keys(m.next().await);
            assert!(got.is_empty());
            assert_eq!(resolved, 0);
        }
        let carry = m.carry().unwrap();
        let held: Vec<_> = carry.events().iter().map(|c| c.revision).collect();
        assert_eq!(held, vec![2, 3, 5]);
        // Every event of [a, t) from 1 to 6 is carried, of [a, m) to 6.
        assert!(carry.covers(b"a", Some(b"t"), 1, 6));
        assert!(carry.covers(b"b", Some(b"c"), 1, 6));
        assert!(!carry.covers(b"a", Some(b"t"), 1, 7));
        assert!(carry.covers(b"n", Some(b"o"), 1, 7));
        // Not c's keys (it resolved nothing), nor from before the start.
        assert!(!carry.covers(b"a", Some(b"u"), 1, 2));
        assert!(!carry.covers(b"a", None, 1, 2));
        assert!(!carry.covers(b"a", Some(b"b"), 0, 2));
        // Spans that overlap (an inherited carry's beside the inputs')
        // still cover what their union does; a gap does not.
        let spans = |v: &[(&str, &str)]| Carry {
            events: Vec::new(),
            spans: v
                .iter()
                .map(|(s, e)| (s.as_bytes().to_vec(), e.as_bytes().to_vec(), 0, 10))
                .collect(),
        };
        let overlapping = spans(&[("", "m"), ("m", ""), ("m", "t"), ("t", "")]);
        assert!(overlapping.covers(b"a", Some(b"z"), 1, 10));
        assert!(overlapping.covers(b"a", None, 1, 10));
        let gap = spans(&[("", "c"), ("d", "")]);
        assert!(!gap.covers(b"a", Some(b"e"), 1, 10));
        assert!(gap.covers(b"a", Some(b"c"), 1, 10));
        // A merger whose history was not read whole vouches for nothing.
        let (_tx, rx) = broadcast::channel(16);
        assert!(
            FeedMerger::with_inputs(vec![input(rx, "", "")], vec![], true)
                .carry()
                .is_none()
        );
    }

    #[test]
    fn carries_composed_cover_what_their_spans_cover_together() {
        let span = |s: &str, e: &str, after, upto| {
            (s.as_bytes().to_vec(), e.as_bytes().to_vec(), after, upto)
        };
        let earlier = Carry {
            events: vec![ev("b", 3), ev("n", 4)],
            spans: vec![span("", "m", 2, 6), span("m", "", 2, 5)],
        };
        // Regrouped again: the later carry vouches from where its merger
        // had released (5), over other bounds.
        let later = Carry {
            events: vec![ev("n", 4), ev("p", 7)],
            spans: vec![span("", "t", 5, 9), span("t", "", 5, 8)],
        };
        assert!(!later.covers(b"a", None, 3, 8));
        assert!(!earlier.covers(b"a", None, 3, 8));
        let both = earlier.compose(&later);
        let revs: Vec<i64> = both.events().iter().map(|c| c.revision).collect();
        assert_eq!(revs, vec![3, 4, 7], "each event once");
        assert!(both.covers(b"a", None, 3, 8));
        assert!(both.covers(b"a", Some(b"t"), 3, 9));
        // Nothing reaches 9 from t on.
        assert!(!both.covers(b"a", None, 3, 9));
        let gap = Carry {
            events: vec![],
            spans: vec![span("m", "", 2, 4), span("m", "", 5, 9)],
        };
        assert!(!gap.covers(b"n", Some(b"o"), 3, 6));
        assert!(gap.covers(b"n", Some(b"o"), 6, 9));
        assert_eq!(both.whole_after(b"a", Some(b"m"), 9), Some(2));
        assert_eq!(both.whole_after(b"m", Some(b"t"), 9), Some(2));
        assert_eq!(both.whole_after(b"t", None, 9), None);
        assert_eq!(later.whole_after(b"m", Some(b"t"), 9), Some(5));
    }

    #[tokio::test]
    async fn an_absorb_vouches_for_its_region_and_the_frozen_one_up_to_its_resolved_revision() {
        for (epoch, vouched, retired_first) in
            [(3, true, false), (2, false, false), (3, true, true)]
        {
            let (t_tx, t_rx) = broadcast::channel(16);
            let (s_tx, s_rx) = broadcast::channel(16);
            let mut s = input(s_rx, "m", "t");
            s.frozen = Some((7, 3));
            s.resolved = 2;
            let mut m = FeedMerger::with_inputs(vec![input(t_rx, "", "m"), s], vec![], false);
            t_tx.send(batch(vec![ev("b", 4)], 5)).unwrap();
            assert_eq!(keys(m.next().await), (vec![], 2));
            // The target absorbs region 7 at 9: only the freeze the frozen
            // input was subscribed at wrote nothing since. (The absorbed
            // region's retirement may be taken first: the absorb, ready
            // too, still counts.)
            if retired_first {
                s_tx.send(Arc::new(FeedBatch {
                    resolved: 2,
                    reset: true,
                    ..Default::default()
                }))
                .unwrap();
                // Its feed closes right after (the region is forgotten
                // here), and the target publishes once more first.
                drop(s_tx);
                t_tx.send(batch(vec![], 7)).unwrap();
            }
            t_tx.send(Arc::new(FeedBatch {
                events: vec![],
                resolved: 9,
                reset: true,
                absorbed: Some((7, epoch)),
            }))
            .unwrap();
            // (The target's batch before its absorb may come first.)
            let mut item = m.next().await;
            if matches!(item, HubItem::Batch { .. }) {
                item = m.next().await;
            }
            assert!(matches!(item, HubItem::Discontinuity));
            let carry = m.carry().unwrap();
            // From what it released (2) on.
            assert_eq!(carry.events().len(), 1);
            assert!(carry.covers(b"a", Some(b"m"), 3, 9));
            assert!(!carry.covers(b"a", Some(b"m"), 2, 9));
            assert_eq!(carry.covers(b"a", Some(b"t"), 3, 9), vouched);
            assert_eq!(carry.covers(b"n", Some(b"o"), 3, 9), vouched);
            assert!(!carry.covers(b"a", Some(b"u"), 3, 9));
        }
    }

    #[tokio::test]
    async fn a_merger_holds_on_what_it_was_carried_until_every_input_resolves_it() {
        let carry = Carry {
            events: vec![ev("b", 2), ev("u", 4)],
            spans: Vec::new(),
        };
        let (a_tx, a_rx) = broadcast::channel(16);
        let (b_tx, b_rx) = broadcast::channel(16);
        let mut m = FeedMerger::new(vec![(a_rx, 1), (b_rx, 1)]);
        m.hold_carried(&carry);
        // The feed carries 4 again (a region's history seeded it too).
        a_tx.send(batch(vec![ev("u", 4)], 5)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 1));
        b_tx.send(batch(vec![], 3)).unwrap();
        assert_eq!(keys(m.next().await), (vec![(2, "b".into())], 3));
        b_tx.send(batch(vec![], 5)).unwrap();
        assert_eq!(keys(m.next().await), (vec![(4, "u".into())], 5));
        // One input: what it was carried is held too, not passed by.
        let (tx, rx) = broadcast::channel(16);
        let mut one = FeedMerger::new(vec![(rx, 1)]);
        one.hold_carried(&carry);
        tx.send(batch(vec![ev("x", 3)], 3)).unwrap();
        assert_eq!(
            keys(one.next().await),
            (vec![(2, "b".into()), (3, "x".into())], 3)
        );
    }
}
