//! Closes on demand: a reader held back by an idle region hurries its
//! leader's next close.
//!
//! An idle region's resolved revision moves only by closes (`closes`),
//! which its leader makes every [`super::closes`] interval (250 ms) while
//! someone wants them. A watch over several regions releases a busy
//! region's event only once every region it covers has resolved past it,
//! so with that cadence alone every event of a watch over the whole
//! keyspace waited 150–500 ms, against 1–10 ms within one region and on
//! etcd. So a reader that is held back names the regions holding it:
//! - the watch hub's merger (`watch_hub`), when it holds events back,
//!   names the inputs resolved below the newest event it holds (all of
//!   them, at once: named only below the lowest, the idle regions were
//!   closed one at a time, each event waiting for another's round) — at
//!   most once per release of events and every [`NAME_GAP`], or again
//!   after [`HURRY_AGAIN`] if that hurry was lost;
//! - a serializable read, and a watch created from now
//!   ([`Node::catch_up_closes`]), name the regions behind the freshest
//!   they read, once per wait (again after [`HURRY_AGAIN`]).
//!
//! The names go to this member's [`CloseHurries`], which pokes the closes
//! loop. The loop sends them on at most every [`SEND_SPACING`]: a region
//! led here is marked hurried; for the others, one
//! [`ForwardOp::HurryCloses`] goes to each leader, which marks its
//! regions. A leader's loop closes its hurried regions beside the log in
//! its next round, skipping the idle and wanted checks and the cadence:
//! one round in flight, and the next hurried round no sooner than
//! [`HURRY_SPACING`] after the last began, or 1 ms per region of the last
//! round if more (up to 250 ms). Woken for hurries, the loop looks at the
//! hurried regions only, not at every region it hosts. A hurried region
//! that can only be closed in the log (a joint membership, a member of
//! the previous version) keeps the cadence: a Raft entry per hurry would
//! cost every replica a synced write.
//!
//! Safety does not change: each round stands on its own (a TSO timestamp
//! read after the hurry, writes settled, votes checked, `side_closes`).
//! The timestamp a round reads is the newest handed out, so it is at or
//! above any event already published, which is what the reader waits
//! for: one round after the hurry releases it. A hurry lost (a leader
//! moved, a member of the previous version refused the op) costs only
//! time: the reader names the region again after [`HURRY_AGAIN`], and the
//! cadence goes on under it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::{Node, Region, META_REGION};
use crate::remote::{self, ForwardOk, ForwardOp};

/// How often the closes loop sends hurries on: bounds the ops sent
/// under readers held back again and again.
const SEND_SPACING: Duration = Duration::from_millis(5);
/// How often a leader starts a hurried round: bounds their cost under a
/// reader held back again and again (a watch over a busy region and
/// hundreds of idle ones).
const HURRY_SPACING: Duration = Duration::from_millis(10);
/// After how long a reader still held back names its regions again.
pub const HURRY_AGAIN: Duration = Duration::from_millis(100);
/// How soon a reader released and held back again names its regions:
/// with writes spread over every region of a watch, every batch releases
/// events and holds back the next, and naming hundreds of regions per
/// batch cost more than the closes.
const NAME_GAP: Duration = Duration::from_millis(5);
/// A hurried round of this many regions puts the next one off by this
/// much more than [`HURRY_SPACING`], up to [`MAX_SPACING`]: the cost of
/// hurried rounds per leader is bounded whatever the number of regions
/// (a watch over every key with writes spread over hundreds of regions
/// hurries all of them all the time).
const SPACING_PER_REGION: Duration = Duration::from_millis(1);
const MAX_SPACING: Duration = Duration::from_millis(250);

/// Closes on demand on one member (see the module essay): the regions
/// readers here wait on, to send on, and the regions this member leads
/// that readers anywhere wait on, to close.
pub struct CloseHurries {
    pending: parking_lot::Mutex<BTreeSet<u64>>,
    marked: parking_lot::Mutex<BTreeSet<u64>>,
    /// Wakes the closes loop for the hurries alone.
    wake: tokio::sync::Notify,
    /// Pokes the closes loop for a whole pass.
    poke: Arc<tokio::sync::Notify>,
}

impl CloseHurries {
    pub(crate) fn new(poke: Arc<tokio::sync::Notify>) -> Self {
        Self {
            pending: Default::default(),
            marked: Default::default(),
            wake: Default::default(),
            poke,
        }
    }

    /// Readers here wait on `regions` to resolve further.
    pub fn hurry(&self, regions: impl IntoIterator<Item = u64>) {
        let mut pending = self.pending.lock();
        let before = pending.len();
        pending.extend(regions);
        if pending.len() > before {
            self.wake.notify_one();
        }
    }

    /// Pokes the closes loop for a whole pass (a new subscription:
    /// `SpanRegions`).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Wakes the closes loop for the hurries (a round ended, a leader
    /// was hurried).
    pub(super) fn wake_loop(&self) {
        self.wake.notify_one();
    }

    /// Waits until the loop is woken for the hurries.
    pub(super) async fn woken(&self) {
        self.wake.notified().await
    }

    pub(crate) fn take(&self) -> BTreeSet<u64> {
        std::mem::take(&mut *self.pending.lock())
    }

    /// Region `r`, led here, is waited on: close it in the next round
    /// (and go on closing it while wanted).
    fn mark(&self, r: &Region) {
        r.closes.want();
        self.marked.lock().insert(r.id);
    }
}

/// When a reader last named its regions: it names them again once it
/// was released (`reset`), but not within [`NAME_GAP`] of the last time,
/// or [`HURRY_AGAIN`] after if it was not.
#[derive(Default)]
pub struct HurryPace {
    at: Option<Instant>,
    released: bool,
}

impl HurryPace {
    fn gap(&self) -> Duration {
        if self.released {
            NAME_GAP
        } else {
            HURRY_AGAIN
        }
    }

    /// True (and now counts as named) when the reader may name its
    /// regions.
    pub fn due(&mut self) -> bool {
        let due = self.at.is_none_or(|t| t.elapsed() >= self.gap());
        if due {
            self.at = Some(Instant::now());
            self.released = false;
        }
        due
    }

    /// When the reader, still held back, names its regions again.
    pub fn again_at(&self) -> Option<Instant> {
        self.at.map(|t| t + self.gap())
    }

    /// The reader was released: it names regions again as soon as it is
    /// held back again (and [`NAME_GAP`] has passed).
    pub fn reset(&mut self) {
        self.released = true;
    }
}

/// The closes loop's side of hurries: when it last sent them on and last
/// started a hurried round, and when it must look again.
#[derive(Default)]
pub(super) struct HurryLoop {
    last_sent: Option<Instant>,
    /// When the next hurried round may begin.
    next_round: Option<Instant>,
    /// Hurries were held back for the spacing: look again then.
    pub(super) wake: Option<Instant>,
}

impl HurryLoop {
    fn wake_at(&mut self, at: Instant) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// Sends the pending hurries on, unless they were sent less than
    /// [`SEND_SPACING`] ago (then wakes when that is over).
    pub(super) fn send_on(&mut self, n: &Node) {
        self.wake = None;
        if n.hurries.pending.lock().is_empty() {
            return;
        }
        if let Some(at) = self.last_sent.map(|t| t + SEND_SPACING) {
            if at > Instant::now() {
                self.wake_at(at);
                return;
            }
        }
        n.send_hurries();
        self.last_sent = Some(Instant::now());
    }

    /// The hurried regions to close beside the log in a round now: none
    /// while a round is in flight (it wakes the loop when it ends) or
    /// before the last hurried round's spacing is over ([`HURRY_SPACING`],
    /// more after a round of many regions; the loop wakes then).
    pub(super) fn take_ready(&mut self, n: &Node, in_flight: bool) -> Vec<u64> {
        if n.hurries.marked.lock().is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let spaced = self.next_round;
        if in_flight {
            // (Also look then, should the round's wake come first.)
            self.wake_at(now + HURRY_SPACING);
            return Vec::new();
        }
        if let Some(at) = spaced.filter(|at| *at > now) {
            self.wake_at(at);
            return Vec::new();
        }
        let marked = std::mem::take(&mut *n.hurries.marked.lock());
        let ready: Vec<u64> = marked
            .into_iter()
            .filter_map(|id| n.regions.get(id))
            .filter(|r| {
                // A region closed in the log keeps the cadence (wanted
                // already), and a frozen one its revision.
                r.raft.metrics().borrow().current_leader == Some(n.id)
                    && r.shared.merge_frozen().is_none()
                    && n.side_closable(r)
            })
            .map(|r| r.id)
            .collect();
        if !ready.is_empty() {
            let count = u32::try_from(ready.len()).unwrap_or(u32::MAX);
            let spacing = (SPACING_PER_REGION * count).clamp(HURRY_SPACING, MAX_SPACING);
            self.next_round = Some(now + spacing);
        }
        ready
    }
}

impl Node {
    /// Sends the hurries pending here on: marks the regions led here, and
    /// tells the other regions' leaders (one op each, in the background).
    fn send_hurries(&self) {
        let ids = self.hurries.take();
        let mut remote: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for id in ids {
            let Some(r) = self.regions.get(id) else {
                continue;
            };
            match r.raft.metrics().borrow().current_leader {
                Some(l) if l == self.id => self.hurries.mark(&r),
                Some(l) => remote.entry(l).or_default().push(id),
                None => {}
            }
        }
        let Ok(meta) = self.region(META_REGION) else {
            return;
        };
        for (leader, ids) in remote {
            let (pool, raft) = (self.pool.clone(), meta.raft.clone());
            tokio::spawn(async move {
                let op = ForwardOp::HurryCloses(ids);
                if let Err(e) = remote::forward(&pool, &raft, leader, META_REGION, &op).await {
                    tracing::debug!(leader, "hurrying closes: {e}");
                }
            });
        }
    }

    /// Serves [`ForwardOp::HurryCloses`]: marks those of `ids` led here
    /// (the others moved: the reader names them again).
    pub(super) fn serve_hurry(&self, ids: Vec<u64>) -> ForwardOk {
        let mut any = false;
        for r in ids.into_iter().filter_map(|id| self.regions.get(id)) {
            if r.raft.metrics().borrow().current_leader == Some(self.id) {
                self.hurries.mark(&r);
                any = true;
            }
        }
        if any {
            self.hurries.wake_loop();
        }
        ForwardOk::Done
    }
}
