//! [`SpanRegions`]: the data regions a key span touches, as readers of
//! changes see them — each region's change feed, its revisions and read
//! view, and its bounds. The watch service and the lock and election waits
//! get region feeds only through this (the server never holds a region's
//! state machine), merged by the [`crate::watch_hub`].
//!
//! Ordering contract (from the regions): a region publishes a batch only
//! after the state it describes is visible to its read view. So
//! [`SpanRegions::subscribe`] subscribes first and reads each region's
//! resolved revision after (its current one, or lower while a transaction
//! across regions holds a lock there: `cairn_mvcc::locks`), and views for
//! history stop at the resolved revision too: a batch published in between
//! is both in the feed and in any later view, never in neither. Regions
//! resolved past the lowest of them have their events above it read from
//! history into the subscription, which no feed would carry again.
//!
//! Regions move under a reader: a split's new region starts here just
//! after the split applies (until then the span is not covered: nothing
//! here would carry the new region's events), and a region that splits or
//! merges after its bounds were read has a view of the wrong keys at its
//! revision. So readers of changes take their regions through
//! [`Node::covering_span_regions`] (which waits for the span to be
//! covered), a subscription made with regions that have moved or do not
//! cover their span starts broken (the reader looks again), and a reader
//! of history checks [`SpanRegions::moved`] after reading its views: the
//! views are of the regions as they were read only if no epoch moved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_mvcc::Revisions;
use cairn_raft::RegionShared;
use cairn_storage::Snapshot;

use crate::node::close_hurry::CloseHurries;
use crate::watch_hub::{FeedInput, FeedMerger};
use crate::Node;

/// The regions a span touches (see the module essay).
#[derive(Clone)]
pub struct SpanRegions {
    regions: Vec<(Arc<RegionShared>, Vec<u8>, Vec<u8>)>,
    /// Each region's epoch when its bounds were read: a region whose
    /// epoch moved before its feed was subscribed to may have published
    /// the reset that said so already.
    epochs: Vec<u64>,
    /// This node's closes on demand: a new subscription pokes the closes
    /// loop, so the regions' idle revisions move (`node::closes`), and
    /// its merger names the regions that hold its events back
    /// (`node::close_hurry`).
    hurries: Arc<CloseHurries>,
    /// The regions did not cover the span they were read for.
    uncovered: bool,
    /// Each region's ID and freeze epoch, if it was frozen for a merge
    /// when its bounds were read.
    frozen: Vec<Option<(u64, u64)>>,
}

/// How long a reader of changes waits for the regions hosted here to cover
/// its span (a region born by a split starts here just after the split
/// applies; a node busy stopping an absorbed region may take a second or
/// two).
pub const COVER_WAIT: Duration = Duration::from_secs(5);

/// One region's read view for a span reader.
pub struct RegionView {
    /// The storage snapshot.
    pub snapshot: Arc<dyn Snapshot>,
    /// Its current and compaction revisions.
    pub revisions: Revisions,
    /// The region's first key.
    pub start: Vec<u8>,
    /// The key past its last (empty: to the end).
    pub end: Vec<u8>,
}

impl Node {
    /// The data regions holding keys of `[start, end)` (`end` None: to the
    /// end). A region frozen for a merge still holds its keys for readers
    /// of changes — unchanged, with no event to come — until the region
    /// absorbing it does (its reset, or the frozen one's when it is
    /// stopped here, regroups them): a watch of its keys is never left
    /// without a region for them.
    pub fn span_regions(&self, start: &[u8], end: Option<&[u8]>) -> SpanRegions {
        let mut held: Vec<(Arc<RegionShared>, cairn_raft::RegionRange, Option<u64>)> = self
            .data_regions()
            .into_iter()
            .filter(|r| !r.shared.is_retired())
            .map(|r| {
                let frozen = r.shared.merge_frozen();
                (r.shared.clone(), r.shared.held_range(), frozen)
            })
            .filter(|(_, range, _)| {
                (range.end.is_empty() || start < range.end.as_slice())
                    && end.is_none_or(|e| range.start.as_slice() < e)
            })
            .collect();
        // A frozen region already absorbed here (not stopped yet): its keys
        // are the absorbing region's, frozen or not.
        held.retain(|(r, _, frozen)| frozen.is_none() || !self.absorbed_here(r.region));
        let mut sorted: Vec<(&[u8], &[u8])> = held
            .iter()
            .map(|(_, r, _)| (r.start.as_slice(), r.end.as_slice()))
            .collect();
        sorted.sort();
        let covered = crate::node::bounds_tile(sorted.into_iter(), start, end);
        SpanRegions {
            hurries: self.hurries.clone(),
            uncovered: !covered,
            epochs: held.iter().map(|(_, r, _)| r.epoch).collect(),
            frozen: held
                .iter()
                .map(|(r, _, frozen)| frozen.map(|e| (r.region, e)))
                .collect(),
            regions: held
                .into_iter()
                .map(|(r, range, _)| (r, range.start, range.end))
                .collect(),
        }
    }

    /// [`Node::span_regions`] once the regions hosted here cover the span,
    /// waiting until `deadline` (say [`COVER_WAIT`] from now) for a region
    /// being started here; what they are then, covering or not
    /// ([`SpanRegions::covered`]).
    pub async fn covering_span_regions(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        deadline: Instant,
    ) -> SpanRegions {
        loop {
            let regions = self.span_regions(start, end);
            if regions.covered() || Instant::now() >= deadline || self.is_stopped() {
                return regions;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Changes to keys in `[start, end)` (`end` None: to the end), from
    /// every region the span touches, merged; starting after what each has
    /// applied now (broken at once, so the caller looks again, if the
    /// regions here did not come to cover the span).
    pub async fn changes(&self, start: &[u8], end: Option<&[u8]>) -> FeedMerger {
        self.covering_span_regions(start, end, Instant::now() + COVER_WAIT)
            .await
            .subscribe()
    }
}

impl SpanRegions {
    /// The regions' IDs, in key order.
    pub fn ids(&self) -> Vec<u64> {
        self.regions.iter().map(|(r, _, _)| r.region).collect()
    }

    /// The lowest resolved revision of the regions (0: none).
    pub fn resolved(&self) -> i64 {
        self.regions
            .iter()
            .map(|(r, _, _)| r.resolved())
            .min()
            .unwrap_or(0)
    }

    /// The highest resolved revision of the regions (0: none).
    pub fn freshest(&self) -> i64 {
        self.regions
            .iter()
            .map(|(r, _, _)| r.resolved())
            .max()
            .unwrap_or(0)
    }

    /// The highest compaction revision of the regions (0: none).
    pub fn compacted(&self) -> i64 {
        self.regions
            .iter()
            .map(|(r, _, _)| r.revisions().compacted)
            .max()
            .unwrap_or(0)
    }

    /// True when the regions cover every key of the span they were read
    /// for (a region born by a split may not be started here yet).
    pub fn covered(&self) -> bool {
        !self.uncovered
    }

    /// True when a region split, merged or stopped since its bounds were
    /// read: views read before this says false are of the regions as read.
    pub fn moved(&self) -> bool {
        self.regions
            .iter()
            .zip(&self.epochs)
            .any(|((r, _, _), epoch)| r.is_retired() || r.held_range().epoch != *epoch)
    }

    /// True when the regions cover every key of `span` (a region born by
    /// a split may not be started here yet).
    pub fn covers(&self, span: &cairn_mvcc::Span) -> bool {
        let (start, end) = match span {
            cairn_mvcc::Span::Single(k) => (k.clone(), Some([k.as_slice(), &[0]].concat())),
            cairn_mvcc::Span::Range(s, e) => (s.clone(), e.clone()),
        };
        let mut sorted: Vec<&(Arc<RegionShared>, Vec<u8>, Vec<u8>)> = self.regions.iter().collect();
        sorted.sort_by(|a, b| a.1.cmp(&b.1));
        crate::node::bounds_tile(
            sorted.iter().map(|(_, s, e)| (s.as_slice(), e.as_slice())),
            &start,
            end.as_deref(),
        )
    }

    /// A merged subscription to every region's feed, complete after the
    /// lowest revision the regions have resolved now.
    ///
    /// Each region's feed carries what it publishes from now on; what it
    /// resolved before is history. The merged stream starts at the lowest
    /// resolved revision of all, so a region resolved further already has
    /// events between the two that no feed will carry: they are read from
    /// its history here and held with the rest (a subscriber replays
    /// history only up to the lowest, then reads the merged stream).
    pub fn subscribe(&self) -> FeedMerger {
        let feeds: Vec<_> = self.regions.iter().map(|(r, _, _)| r.subscribe()).collect();
        self.hurries.poke();
        // A region whose bounds changed (or that stopped) since they were
        // read may have said so before this subscription: start broken, so
        // the subscriber looks at the regions again.
        // So does one whose regions do not cover its span.
        let mut broken = self.uncovered || self.moved();
        // Read after subscribing: a batch published in between is both in
        // the feed and in the view (the merger skips it in the feed).
        let views: Vec<_> = self
            .regions
            .iter()
            .map(|(r, _, _)| r.read_view_resolved())
            .collect();
        let lowest = views
            .iter()
            .map(|(_, revs)| revs.current)
            .min()
            .unwrap_or(0);
        let mut ahead = Vec::new();
        for ((_, start, end), (snap, revs)) in self.regions.iter().zip(&views) {
            if revs.current <= lowest {
                continue;
            }
            let span =
                cairn_mvcc::Span::Range(start.clone(), (!end.is_empty()).then(|| end.clone()));
            // History below the region's compaction is refused (maybe not
            // yet swept): a subscriber from there is told it is compacted
            // (its replay checks), and an event at it carries no prev_kv.
            let from = (lowest + 1).max(revs.compacted);
            match cairn_mvcc::history(&**snap, &span, from, revs.current) {
                Ok(mut events) => {
                    cairn_mvcc::without_prev_at(&mut events, revs.compacted);
                    ahead.extend(events)
                }
                Err(e) => {
                    tracing::warn!("reading a region's history for a subscription: {e}");
                    broken = true;
                }
            }
        }
        // A region that moved while its view was read: the view may be of
        // its new bounds, not those the merger vouches for (`carry`).
        broken |= self.moved();
        let inputs = feeds
            .into_iter()
            .zip(&views)
            .zip(&self.regions)
            .zip(&self.frozen)
            .map(|(((feed, (_, revs)), (_, start, end)), frozen)| FeedInput {
                feed,
                frozen: *frozen,
                start: start.clone(),
                end: end.clone(),
                resolved: revs.current,
                // What history was read from (above the lowest, or from
                // the compaction when that is higher), or the feed's start.
                complete_after: lowest.max(revs.compacted - 1),
            })
            .collect();
        FeedMerger::with_inputs(inputs, ahead, broken).hurrying(self.ids(), self.hurries.clone())
    }

    /// Every region's read view now.
    pub fn views(&self) -> Vec<RegionView> {
        self.regions
            .iter()
            .map(|(r, start, end)| {
                // History is final only up to the resolved revision (a
                // lock's commit may still land below the current one);
                // what lies above arrives through the feed.
                let (snapshot, revisions) = r.read_view_resolved();
                RegionView {
                    snapshot,
                    revisions,
                    start: start.clone(),
                    end: end.clone(),
                }
            })
            .collect()
    }
}
