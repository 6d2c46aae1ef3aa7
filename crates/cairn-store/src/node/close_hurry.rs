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
//!   names the inputs resolved below the lowest event it holds — at most
//!   once per release of events, or again after [`HURRY_AGAIN`] if that
//!   hurry was lost;
//! - a serializable read, and a watch created from now
//!   ([`Node::catch_up_closes`]), name the regions behind the freshest
//!   they read, once per wait (again after [`HURRY_AGAIN`]).
//!
//! The names go to this member's [`CloseHurries`], which pokes the closes
//! loop. The loop sends them on at most every [`HURRY_SPACING`]: a region
//! led here is marked hurried at once; for the others, one
//! [`ForwardOp::HurryCloses`] goes to each leader, which marks its
//! regions. A leader's loop closes its hurried regions beside the log in
//! its next round, skipping the idle and wanted checks and the cadence:
//! one round in flight, at most one hurried round every
//! [`HURRY_SPACING`]. A hurried region that can only be closed in the log
//! (a joint membership, a member of the previous version) keeps the
//! cadence: a Raft entry per hurry would cost every replica a synced
//! write.
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

use crate::node::{Node, META_REGION};
use crate::remote::{self, ForwardOk, ForwardOp};

/// How often the closes loop sends hurries on, and how often a leader
/// starts a hurried round: bounds their cost under a reader held back
/// again and again (a watch over a busy region and hundreds of idle
/// ones).
pub(super) const HURRY_SPACING: Duration = Duration::from_millis(20);
/// After how long a reader still held back names its regions again.
pub const HURRY_AGAIN: Duration = Duration::from_millis(100);

/// A member's regions that readers here wait on (see the module essay).
pub struct CloseHurries {
    pending: parking_lot::Mutex<BTreeSet<u64>>,
    /// Pokes the closes loop.
    poke: Arc<tokio::sync::Notify>,
}

impl CloseHurries {
    pub(crate) fn new(poke: Arc<tokio::sync::Notify>) -> Self {
        Self {
            pending: Default::default(),
            poke,
        }
    }

    /// Readers here wait on `regions` to resolve further.
    pub fn hurry(&self, regions: impl IntoIterator<Item = u64>) {
        let mut pending = self.pending.lock();
        let before = pending.len();
        pending.extend(regions);
        if pending.len() > before {
            self.poke.notify_one();
        }
    }

    /// Pokes the closes loop (a new subscription: `SpanRegions`).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    pub(super) fn any(&self) -> bool {
        !self.pending.lock().is_empty()
    }

    pub(crate) fn take(&self) -> BTreeSet<u64> {
        std::mem::take(&mut *self.pending.lock())
    }
}

/// When a reader last named its regions: it names them again once it
/// was released (`reset`) or [`HURRY_AGAIN`] after.
#[derive(Default)]
pub struct HurryPace {
    at: Option<Instant>,
}

impl HurryPace {
    /// True (and now counts as named) when the reader may name its
    /// regions.
    pub fn due(&mut self) -> bool {
        let due = self.at.is_none_or(|t| t.elapsed() >= HURRY_AGAIN);
        if due {
            self.at = Some(Instant::now());
        }
        due
    }

    /// The reader was released: it names regions again as soon as it is
    /// held back again.
    pub fn reset(&mut self) {
        self.at = None;
    }
}

impl Node {
    /// Sends the hurries pending here on: marks the regions led here, and
    /// tells the other regions' leaders (one op each, in the background).
    /// False when none was pending.
    pub(super) fn send_hurries(&self) -> bool {
        let ids = self.hurries.take();
        if ids.is_empty() {
            return false;
        }
        let mut remote: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for id in ids {
            let Some(r) = self.regions.get(id) else {
                continue;
            };
            match r.raft.metrics().borrow().current_leader {
                Some(l) if l == self.id => r.closes.hurry(),
                Some(l) => remote.entry(l).or_default().push(id),
                None => {}
            }
        }
        let Ok(meta) = self.region(META_REGION) else {
            return true;
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
        true
    }

    /// Serves [`ForwardOp::HurryCloses`]: marks those of `ids` led here
    /// (the others moved: the reader names them again).
    pub(super) fn serve_hurry(&self, ids: Vec<u64>) -> ForwardOk {
        let mut any = false;
        for r in ids.into_iter().filter_map(|id| self.regions.get(id)) {
            if r.raft.metrics().borrow().current_leader == Some(self.id) {
                r.closes.hurry();
                any = true;
            }
        }
        if any {
            self.close_now.notify_one();
        }
        ForwardOk::Done
    }
}
