//! Closed timestamps, only where someone waits for them.
//!
//! A data region's resolved revision moves with its writes. One with no
//! writes stays where its last write left it, while the other regions move
//! on. That matters only to a reader that needs several regions, or the
//! whole store, at one recent revision:
//! - a watch: an event of a busy region is released only once every
//!   region the watch covers has resolved past it (`watch_hub`), and a
//!   progress notification reports what the watched regions have resolved;
//! - a serializable read across regions, served at the lowest revision the
//!   regions it reads have resolved here (`range_serializable`);
//! - a serializable read on a member that answered a higher revision than
//!   an idle region's replica holds (`sequential.rs`).
//!
//! For them, the leader of an idle region *closes* the newest timestamp the
//! TSO handed out, T: once every write it stamped at or below T is
//! answered, the region's resolved revision moves up to T. Two ways:
//! - beside the log ([`super::side_closes`]): one round per pass for all
//!   the regions, two calls to each other member, no Raft entry — so a
//!   watched idle region still sleeps (`hibernate`). The way taken
//!   whenever every member with a replica of the region takes the op;
//! - in the log ([`Node::close_region`]): one `Command::Close` in this
//!   leader's term, written and synced by every replica. Taken for a
//!   joint membership, or a replica on a member of the previous version.
//!
//! Closing every idle region in the log four times a second cost a
//! 3-member cluster with 200 idle regions 38% of a core
//! (docs/benchmarks.md). So a leader closes only regions someone wants
//! closed:
//! - A member that has a watch on a region asks for closes while the watch
//!   stands. Its asks are [`ForwardOp::WantCloses`] to the region's leader,
//!   sent at most every [`ASK_EVERY`] from this loop, and at once when a
//!   watch subscribes (`SpanRegions::subscribe` pokes the loop).
//! - A serializable read held back by a region asks too. If that region
//!   was not being closed lately, the read first waits briefly for it to
//!   catch up with the freshest region it reads. Without the wait, the
//!   first read after a quiet spell would answer from long ago. A watch
//!   created from now waits the same way ([`Node::catch_up_closes`]), or
//!   it would start at an idle region's last write and replay the busy
//!   regions' events since.
//! - A leader closes a region for [`WANTED_FOR`] after the last ask, and
//!   after it takes the region's leadership (the asks went to the leader
//!   before). It closes a region at most every [`CLOSE_EVERY`], and only
//!   if it applied no write over the last interval.
//! - A reader actually held back by a region (a watch holding a busy
//!   region's event, a read waiting) also hurries it: its leader closes
//!   it beside the log in its next round, not at the cadence
//!   ([`super::close_hurry`]). The cadence keeps progress notifications
//!   and `WithRequireLeader` streams moving; hurries keep events on time.
//!
//! With one data region nothing is closed. Asks are best effort: an ask
//! counts only once sent to a leader, and one that fails is forgotten, so
//! the next pass (a watch's) or read asks again. One that reaches a member
//! that no longer leads is sent again after [`ASK_EVERY`].
//!
//! Not yet: a member of the previous version never asks, and a leader of
//! this one closes only when asked. During a rolling upgrade a watch on an
//! old member may wait for an idle region's next write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_raft::Command;

use crate::node::close_hurry::{HurryLoop, HurryPace};
use crate::node::sequential::SEQUENTIAL_WAIT;
use crate::node::{Node, Region, META_REGION, REQUEST_TIMEOUT};
use crate::proposer::Proposal;
use crate::remote::{self, ForwardOp};
use crate::Result;

/// How often an idle data region's leader closes a timestamp while closes
/// are wanted.
const CLOSE_EVERY: Duration = Duration::from_millis(250);
/// How often a member asks again for closes it still wants.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// How long a leader goes on closing a region after the last ask.
const WANTED_FOR: Duration = Duration::from_secs(3);

/// One replica's record of asks for closes.
#[derive(Default)]
pub(crate) struct CloseWants {
    /// (Leader) Closes are wanted until then.
    wanted_until: parking_lot::Mutex<Option<Instant>>,
    /// (Any member) When this member last sent an ask.
    asked_at: Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl CloseWants {
    /// Someone asked: close until [`WANTED_FOR`] from now.
    pub(super) fn want(&self) {
        *self.wanted_until.lock() = Some(Instant::now() + WANTED_FOR);
    }

    /// True while closes are wanted.
    fn wanted(&self) -> bool {
        self.wanted_until.lock().is_some_and(|t| Instant::now() < t)
    }

    /// True (and now counts as asked) when this member last asked
    /// [`ASK_EVERY`] ago or longer.
    fn ask_due(&self) -> bool {
        let mut at = self.asked_at.lock();
        let due = at.is_none_or(|t| t.elapsed() >= ASK_EVERY);
        if due {
            *at = Some(Instant::now());
        }
        due
    }

    /// Forgets an ask that did not reach the leader.
    fn ask_lost(asked_at: &parking_lot::Mutex<Option<Instant>>) {
        *asked_at.lock() = None;
    }

    /// True when this member asked within [`WANTED_FOR`]: the leader is
    /// closing the region, unless the ask was lost.
    pub(super) fn flowing(&self) -> bool {
        self.asked_at
            .lock()
            .is_some_and(|t| t.elapsed() < WANTED_FOR)
    }
}

impl Node {
    /// Asks `r`'s leader for closes, unless this member asked less than
    /// [`ASK_EVERY`] ago. Returns at once; the ask is sent in the
    /// background.
    pub(super) fn want_closes(&self, r: &Region) {
        if r.id == META_REGION {
            return;
        }
        let Some(leader) = r.raft.metrics().borrow().current_leader else {
            return;
        };
        if !r.closes.ask_due() {
            return;
        }
        if leader == self.id {
            self.closes_wanted(r);
            return;
        }
        let (pool, raft, id) = (self.pool.clone(), r.raft.clone(), r.id);
        let asked_at = r.closes.asked_at.clone();
        tokio::spawn(async move {
            let ask = remote::forward(&pool, &raft, leader, id, &ForwardOp::WantCloses);
            if let Err(e) = ask.await {
                CloseWants::ask_lost(&asked_at);
                tracing::debug!(region = id, leader, "asking for closes: {e}");
            }
        });
    }

    /// Waits (up to [`SEQUENTIAL_WAIT`]) until each region of `regions`
    /// here has resolved as far as the freshest of them had, asking for
    /// closes in those behind: a watch created from now starts there.
    pub async fn catch_up_closes(&self, regions: &crate::SpanRegions) {
        let ids = regions.ids();
        if ids.len() < 2 {
            return;
        }
        let since = Instant::now();
        let freshest = regions.freshest();
        let mut pace = HurryPace::default();
        while regions.resolved() < freshest
            && since.elapsed() < SEQUENTIAL_WAIT
            && !self.is_stopped()
        {
            let mut behind = Vec::new();
            for r in ids.iter().filter_map(|id| self.regions.get(*id)) {
                if r.shared.resolved() < freshest {
                    self.want_closes(&r);
                    behind.push(r.id);
                }
            }
            if pace.due() {
                self.hurries.hurry(behind);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Serves [`ForwardOp::WantCloses`] for region `r` (led here, or it
    /// was when asked), and an ask from this member: pokes the loop when
    /// the want begins (it closes at its next pass, [`CLOSE_EVERY`] after
    /// the last close at the most).
    pub(super) fn closes_wanted(&self, r: &Region) {
        let fresh = !r.closes.wanted();
        r.closes.want();
        if fresh {
            self.close_now.notify_one();
        }
    }

    /// Closes the newest timestamp the TSO has handed out, T, in region
    /// `id`, which this node leads: once every write it stamped at or
    /// below T is answered (and none will be stamped so low again), its
    /// revision moves up to T in this leader term (`Command::Close`), and
    /// with it its resolved revision. A close takes no timestamp of its
    /// own: closes leave no gaps in the revisions, and a read's header,
    /// the newest timestamp, stays the newest write's.
    async fn close_region(&self, id: u64) -> Result<()> {
        let t = self.read_timestamp().await?;
        let r = self.region(id)?;
        let term = self.leading_term(&r)?;
        r.proposer.settled(t, term, REQUEST_TIMEOUT).await?;
        let close = Command::InTerm {
            term,
            cmd: Box::new(Command::Close { ts: t }),
        };
        r.proposer.propose(Proposal::Plain(close)).await?;
        Ok(())
    }
}

/// The closes loop (see the module essay). Every [`CLOSE_EVERY`], or at
/// once when poked (a new watch, a new want): asks for closes of the
/// watched regions here, and closes the wanted regions this node leads
/// that applied no write over the last interval, while there is more than
/// one data region: those it can beside the log in one round (one round
/// in flight), the others in the log. At most one close per region is in
/// flight, and one per [`CLOSE_EVERY`] (a hurried close beside the log
/// may run beside a close in the log, each sound on its own). Hurries
/// (`close_hurry`) wake it too, for a pass over the hurried regions alone:
/// it sends them on, and closes those led here beside the log in the next
/// round.
pub(super) async fn close_idle_regions(node: std::sync::Weak<Node>) {
    // Per region: its writes at the last timed pass, and when its last
    // close was started.
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut closed: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut flying: BTreeMap<u64, tokio::task::JoinHandle<()>> = BTreeMap::new();
    // The round of closes beside the log in flight (`side_closes`).
    // (Set until its task is about to wake the loop: a wake that came
    // before its JoinHandle finished found the round still in flight, and
    // the hurries it was for waited for the next look.)
    let side_round = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The regions led here at the last pass.
    let mut led: BTreeSet<u64> = BTreeSet::new();
    // When the last timed pass ran: pokes come between timed passes and
    // never put them off (a watch regrouping on every split pokes many
    // times a second, and idleness is judged at timed passes only, so
    // with the timer restarted at each poke no region was ever closed
    // while splits went on).
    let mut last_timed = Instant::now();
    let mut hurry = HurryLoop::default();
    loop {
        let Some(n) = node.upgrade() else { return };
        let (poke, hurried, every) = (n.close_now.clone(), n.hurries.clone(), n.close_every());
        drop(n);
        let mut due = every.saturating_sub(last_timed.elapsed());
        if let Some(at) = hurry.wake {
            due = due.min(at.saturating_duration_since(Instant::now()));
        }
        let poked = tokio::select! {
            _ = tokio::time::sleep(due) => false,
            _ = poke.notified() => true,
            _ = hurried.woken() => false,
        };
        let timed = last_timed.elapsed() >= every;
        if timed {
            last_timed = Instant::now();
        }
        let Some(n) = node.upgrade() else { return };
        if n.is_stopped() {
            return;
        }
        flying.retain(|_, t| !t.is_finished());
        let round_flying = side_round.load(Ordering::Acquire);
        hurry.send_on(&n);
        // Two data regions at least.
        if n.data_region_count() < 2 {
            continue;
        }
        let mut side = BTreeSet::new();
        if timed || poked {
            let data: Vec<_> = n
                .regions
                .all()
                .into_iter()
                .filter(|r| r.id != META_REGION)
                .collect();
            let mut leading = BTreeSet::new();
            for r in data {
                if r.shared.watched() {
                    n.want_closes(&r);
                }
                let writes = r.shared.write_load().writes();
                // Idle over the last interval (a poked pass compares with
                // the last timed one, and does not move it).
                let idle = if timed {
                    seen.insert(r.id, writes) == Some(writes)
                } else {
                    seen.get(&r.id) == Some(&writes)
                };
                let leads = r.raft.metrics().borrow().current_leader == Some(n.id);
                if leads {
                    leading.insert(r.id);
                    if !led.contains(&r.id) {
                        // Asks went to the leader before.
                        r.closes.want();
                    }
                }
                // (A region frozen for a merge keeps its revision as frozen.)
                let frozen = r.shared.merge_frozen().is_some();
                let recent = closed.get(&r.id).is_some_and(|t| t.elapsed() < every);
                if !idle || !leads || frozen || !r.closes.wanted() || recent {
                    continue;
                }
                if flying.contains_key(&r.id) {
                    continue;
                }
                if n.side_closable(&r) {
                    // Beside the log, with the others, unless a round is
                    // on its way (the next pass then takes it).
                    if !round_flying {
                        closed.insert(r.id, Instant::now());
                        side.insert(r.id);
                    }
                    continue;
                }
                closed.insert(r.id, Instant::now());
                let (node, id) = (n.clone(), r.id);
                flying.insert(
                    r.id,
                    tokio::spawn(async move {
                        let close = node.close_region(id);
                        let _ = tokio::time::timeout(Duration::from_secs(3), close).await;
                    }),
                );
            }
            led = leading;
            seen.retain(|id, _| n.regions.get(*id).is_some());
            closed.retain(|id, _| n.regions.get(*id).is_some());
        }
        for id in hurry.take_ready(&n, round_flying) {
            closed.insert(id, Instant::now());
            side.insert(id);
        }
        if !side.is_empty() {
            let node = n.clone();
            side_round.store(true, Ordering::Release);
            let flying = side_round.clone();
            tokio::spawn(async move {
                {
                    let _flying = RoundFlying(flying);
                    let round = node.side_close_round(side.into_iter().collect());
                    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(3), round).await {
                        tracing::debug!("closing beside the log: {e}");
                    }
                }
                // Hurries that came meanwhile wait for this round.
                node.hurries.wake_loop();
            });
        }
    }
}

/// Clears the closes loop's round-in-flight flag when dropped (a round
/// that ends, or panics).
struct RoundFlying(Arc<std::sync::atomic::AtomicBool>);

impl Drop for RoundFlying {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Node {
    /// How often an idle region is closed while wanted ([`CLOSE_EVERY`],
    /// unless a test set it: [`Node::set_close_every`]).
    fn close_every(&self) -> Duration {
        match self.close_every_ms.load(Ordering::Relaxed) {
            0 => CLOSE_EVERY,
            ms => Duration::from_millis(ms),
        }
    }

    /// Makes this member close its wanted idle regions every `every`
    /// instead of [`CLOSE_EVERY`] (hurried ones still at once: a test of
    /// closes on demand).
    #[doc(hidden)]
    pub fn set_close_every(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.close_every_ms.store(ms, Ordering::Relaxed);
    }
}
