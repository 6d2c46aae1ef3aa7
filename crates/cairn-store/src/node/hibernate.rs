//! Hibernating idle data regions: no heartbeats while nothing happens.
//!
//! Every Raft group's leader sends a heartbeat to each follower ten times a
//! second, and each follower runs an election timer. With hundreds of idle
//! regions that alone cost a 3-member cluster half a core
//! (docs/benchmarks.md). Nothing needs those messages while a region is
//! idle and its members are up. So a region's replicas stop their Raft
//! ticks (openraft's `runtime_config().tick(false)`: no heartbeats from a
//! leader, no election timer on a follower) once the region has been quiet
//! for a while, and start them again when anything happens.
//!
//! What stands in for the heartbeats is one beat per pair of members
//! ([`ForwardOp::Beat`], every [`BEAT_EVERY`]), whatever the number of
//! regions. It answers with the member's boot id, the regions it leads and
//! the regions asleep there ([`ForwardOk::Beat`]).
//! - A member whose beats have failed for [`DOWN_AFTER`] (counted from the
//!   first failure, so a pause of this process does not count), two beats
//!   in a row at least, is down: every
//!   region here that it leads wakes, and its followers campaign (openraft
//!   campaigns within a tick once a leader has been silent past the
//!   election timeout).
//! - A sleeping region whose leader, by two beats in a row, no longer
//!   leads it (its Raft stopped, or it stepped down) wakes the same way.
//! - A member with a new boot id restarted: every region led here with a
//!   replica on it wakes, so the restarted replica hears its leader.
//!
//! A restarted member's replicas learn of their leaders only from those
//! leaders' heartbeats, and a sleeping leader sends none until a beat
//! brings it the new boot id, which cannot happen before the member
//! serves its peers: after every region here has opened (and after the
//! start-up corruption check, if asked for). Their election timers run
//! from the moment each opened. So a replica that existed before this
//! start and has other voters holds its own elections ([`hold_elections`])
//! until Raft has taken a message for its region that arrived after the
//! member began to serve ([`resume_elections`]). One that hears nothing
//! campaigns again [`RESTART_GRACE`] after that, plus up to 300 ms of
//! jitter per region. So a whole cluster restarted at once holds its first
//! elections 2–2.3 s after serving, unless a leader restored in its term
//! (openraft brings one back as leader) reaches them first. A held
//! replica still votes, and a hand-over still makes it campaign. Without
//! the hold a slow start (hundreds of regions) had the first regions
//! opened campaign against live leaders and move their terms.
//!
//! When a region sleeps ([`hibernate`], every [`LOOK_EVERY`]):
//! - Never the meta region (the TSO).
//! - A follower sleeps once awake for [`FOLLOWER_QUIET`], everything in
//!   its log applied, while it hears its leader (a Raft message in the
//!   last [`HEARD_WITHIN`]) and the leader's member beats.
//! - The leader sleeps once awake for [`LEADER_QUIET`] with no op that
//!   wakes it (below) served meanwhile, every replica matched at its last entry and applied, no
//!   merge freeze, and every other member's last beat saying its replica
//!   sleeps. Followers sleep first: there is no PreVote in openraft 0.9,
//!   so an awake follower of a silent leader would campaign, and the term
//!   would move for nothing. (A member started with `--region-hibernate
//!   false` never says so: the regions it has replicas of never sleep.)
//!
//! Writes do not wake a region. A sleeping leader replicates and commits
//! without ticks: a proposal goes out at once, openraft sends the
//! followers an append saying what committed as soon as it commits, and
//! each append renews a follower's vote lease. So a region that takes a
//! write now and then (a put spread over hundreds of regions) sleeps
//! through it, and its heartbeats and election timers cost nothing: 400
//! regions taking puts ran 1.31x as many (docs/benchmarks.md; measured
//! with a first version that also woke a leader whose follower lagged). A failed
//! append needs no tick either: openraft sends it again (after the peer
//! network's backoff). One thing ticks did that nothing else does: a
//! commit notice (an empty append) that was lost is not resent, and a
//! sleeping leader sends no heartbeat to repeat it. So a sleeping
//! follower that finds an entry it had at the previous look still not
//! applied, and not known committed (the notice was lost, or its log
//! holds a deposed leader's entries; one merely applying slowly does not
//! ask), asks its leader for a read index: the round's appends carry the
//! commit index, and the leader wakes.
//!
//! When a region wakes:
//! - A leader wakes as soon as it serves an op that is not a proposal
//!   (`Node::serve_local`): a read, whose read lease comes from heartbeat
//!   rounds, a lease refresh, a hand-over. (So does a follower asked for
//!   one, by a forward that found a stale leader or asked to campaign.) Not for an ask for closes:
//!   those come every second while a watch stands, and closes are made
//!   beside the log with the region asleep (`side_closes`). Nor for a
//!   hash: its read index per region is one round without ticks, and a
//!   member's hash of the whole store is the member's, not the replica's
//!   (`ForwardOp::wakes`).
//! - A leader down, or no longer leading, wakes its followers, after
//!   0–300 ms of jitter so that they do not all campaign in the same tick.
//!   Besides a replica with no known leader (a candidate, a deposed
//!   leader), nothing else wakes a follower: one woken while its leader
//!   sleeps may have heard nothing for long, and campaigns at once.
//! - A region starts awake, after a restart or a split. A replica woken
//!   counts its quiet time from then.
//!
//! Safety does not rest on ticks. A Raft election and a commit need a
//! quorum with or without timers. Votes are still granted only after
//! openraft's leader lease. The read lease (`read_lease.rs`) comes only
//! from rounds, which renew followers' vote leases whether or not they
//! tick. A quiet leader's lease lapses, and its next read pays one round.
//! Ticks bring liveness only, and here the beats do that job.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::node::{Node, Region, META_REGION};
use crate::remote::{self, ForwardOk, ForwardOp};

/// How often each member beats to each other.
const BEAT_EVERY: Duration = Duration::from_millis(250);
/// How long a beat may take.
const BEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// A member whose beats failed this long, two of them at least, is down.
/// Two: with one, a single slow beat (a beat comes back after up to
/// [`BEAT_EVERY`] + [`BEAT_TIMEOUT`]) could still be on its way, healthy,
/// when this much time has passed since the one before it failed.
const DOWN_AFTER: Duration = Duration::from_millis(750);
/// How long after a restarted member begins to serve its replicas that
/// heard nothing hold their own elections: a beat sent and timed out twice
/// (1.5 s), then a heartbeat, fit in it.
const RESTART_GRACE: Duration = Duration::from_secs(2);
/// How often the hibernate loop looks at each region.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Time awake before a follower sleeps.
const FOLLOWER_QUIET: Duration = Duration::from_secs(2);
/// Time awake with no read served before a leader sleeps (its followers
/// said they sleep).
const LEADER_QUIET: Duration = Duration::from_secs(3);
/// A follower sleeps only if its leader reached it this recently.
const HEARD_WITHIN: Duration = Duration::from_millis(500);
/// How long a replica may know no leader before it is logged, and how
/// often after.
const LEADERLESS_REPORT: Duration = Duration::from_secs(3);

/// One replica's sleep.
pub(crate) struct Sleep {
    /// Whether its ticks are off (held while they are switched), and when
    /// it last woke.
    state: parking_lot::Mutex<(bool, Instant)>,
    /// When a Raft message for the region last arrived here.
    heard: parking_lot::Mutex<Instant>,
    /// When this replica, leading, last served an op that wakes it.
    served: parking_lot::Mutex<Instant>,
}

impl Default for Sleep {
    fn default() -> Self {
        Self {
            state: parking_lot::Mutex::new((false, Instant::now())),
            heard: parking_lot::Mutex::new(Instant::now()),
            served: parking_lot::Mutex::new(Instant::now()),
        }
    }
}

impl Sleep {
    /// A Raft message for the region arrived.
    pub(crate) fn heard(&self) {
        *self.heard.lock() = Instant::now();
    }

    /// True while the replica sleeps.
    pub(crate) fn is_asleep(&self) -> bool {
        self.state.lock().0
    }

    /// How long since the replica last woke.
    fn awake_for(&self) -> Duration {
        self.state.lock().1.elapsed()
    }

    /// How long since the replica last woke or served an op that wakes it.
    fn idle_for(&self) -> Duration {
        self.awake_for().min(self.served.lock().elapsed())
    }
}

impl Region {
    /// Starts the replica's Raft ticks again, if it slept.
    pub(crate) fn wake(&self) {
        let mut state = self.sleep.state.lock();
        if state.0 {
            self.raft.runtime_config().tick(true);
            *state = (false, Instant::now());
            tracing::debug!(region = self.id, "awake");
        }
    }

    /// Wakes the replica to serve an op (see `Node::serve_local`).
    pub(crate) fn wake_to_serve(&self) {
        *self.sleep.served.lock() = Instant::now();
        self.wake();
    }

    fn fall_asleep(&self) {
        let mut state = self.sleep.state.lock();
        if !state.0 {
            self.raft.runtime_config().tick(false);
            state.0 = true;
            tracing::debug!(region = self.id, "asleep");
        }
    }
}

/// What this member knows of the others' beats.
#[derive(Default)]
pub(crate) struct Beats {
    peers: parking_lot::Mutex<BTreeMap<u64, PeerBeat>>,
}

struct PeerBeat {
    /// When a beat last came back.
    ok: Option<Instant>,
    /// Since when this member has beaten to it.
    since: Instant,
    /// Since when its beats have failed (None: the last one came back).
    /// Counted from a failure, not from the last success: after this
    /// process was paused, the first look must not find every member down.
    failing_since: Option<Instant>,
    /// Beats failed in a row.
    failures: u32,
    /// Its boot id at the last beat.
    boot: u64,
    /// The regions it led at the last beat and the one before.
    leading: [BTreeSet<u64>; 2],
    /// The regions asleep there at the last beat.
    asleep: BTreeSet<u64>,
    /// A beat is on its way.
    flying: bool,
    /// Beats answered.
    answers: u64,
}

impl PeerBeat {
    fn new() -> Self {
        Self {
            ok: None,
            since: Instant::now(),
            failing_since: None,
            failures: 0,
            boot: 0,
            leading: Default::default(),
            asleep: BTreeSet::new(),
            flying: false,
            answers: 0,
        }
    }
}

impl PeerBeat {
    fn down(&self) -> bool {
        match (self.ok, self.failing_since) {
            (_, Some(t)) => t.elapsed() >= DOWN_AFTER && self.failures >= 2,
            (None, None) => self.since.elapsed() >= DOWN_AFTER,
            (Some(_), None) => false,
        }
    }
}

/// Clears a member's beat in flight when the beat's task ends, however it
/// ends.
struct Flying {
    node: std::sync::Weak<Node>,
    peer: u64,
}

impl Drop for Flying {
    fn drop(&mut self) {
        if let Some(n) = self.node.upgrade() {
            if let Some(p) = n.beats.peers.lock().get_mut(&self.peer) {
                p.flying = false;
            }
        }
    }
}

impl Beats {
    /// True when member `id` beat within [`DOWN_AFTER`].
    fn fresh(&self, id: u64) -> bool {
        self.peers
            .lock()
            .get(&id)
            .is_some_and(|p| p.ok.is_some() && !p.down())
    }

    /// True when member `id` beat within [`DOWN_AFTER`] and said its
    /// replica of `region` sleeps.
    fn asleep_at(&self, id: u64, region: u64) -> bool {
        self.peers
            .lock()
            .get(&id)
            .is_some_and(|p| p.ok.is_some() && !p.down() && p.asleep.contains(&region))
    }
}

impl Node {
    /// The regions hosted here that sleep now.
    pub fn sleeping_regions(&self) -> Vec<u64> {
        self.regions
            .all()
            .into_iter()
            .filter(|r| r.sleep.is_asleep())
            .map(|r| r.id)
            .collect()
    }

    /// The regions this member leads.
    fn led_regions(&self) -> Vec<u64> {
        self.regions
            .all()
            .into_iter()
            .filter(|r| r.raft.metrics().borrow().current_leader == Some(self.id))
            .map(|r| r.id)
            .collect()
    }

    /// What a beat answers (see the module essay).
    pub(super) fn beat(&self) -> ForwardOk {
        ForwardOk::Beat {
            boot: self.boot,
            leading: self.led_regions(),
            asleep: self.sleeping_regions(),
        }
    }

    /// Wakes the sleeping regions here that member `peer` leads (`all`),
    /// or those of them it said twice it does not lead; each after up to
    /// 300 ms (spread by region).
    fn wake_led_by(&self, peer: u64, all: bool, leading: &[BTreeSet<u64>; 2]) {
        for r in self.regions.all() {
            let gone = all || !(leading[0].contains(&r.id) || leading[1].contains(&r.id));
            if gone && r.sleep.is_asleep() && r.raft.metrics().borrow().current_leader == Some(peer)
            {
                let why = if all { "is down" } else { "no longer leads it" };
                tracing::info!(region = r.id, peer, "waking: its leader {why}");
                let jitter = jitter(r.id, self.id);
                tokio::spawn(async move {
                    tokio::time::sleep(jitter).await;
                    r.wake();
                });
            }
        }
    }

    /// Wakes the regions led here that have a replica on member `peer`.
    fn wake_replicated_on(&self, peer: u64) {
        for r in self.regions.all() {
            let m = r.raft.metrics().borrow().clone();
            if m.current_leader == Some(self.id)
                && m.membership_config.membership().get_node(&peer).is_some()
            {
                r.wake();
            }
        }
    }
}

/// Beats to every other member of the cluster (see the module essay):
/// one beat in flight per member, each with its own timeout, so a slow
/// member does not hold back the others' beats.
pub(super) async fn beat_peers(node: std::sync::Weak<Node>) {
    while let Some(n) = super::background::tick(&node, BEAT_EVERY).await {
        let Ok(meta) = n.region(META_REGION) else {
            continue;
        };
        let members: Vec<u64> = {
            let m = meta.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        };
        let mut send = Vec::new();
        let mut down = Vec::new();
        {
            let mut peers = n.beats.peers.lock();
            peers.retain(|id, _| members.contains(id));
            for &id in members.iter().filter(|&&id| id != n.id) {
                let p = peers.entry(id).or_insert_with(PeerBeat::new);
                if !p.flying {
                    p.flying = true;
                    send.push(id);
                }
                if p.down() {
                    down.push((id, true, Default::default()));
                } else if p.answers >= 2 {
                    down.push((id, false, p.leading.clone()));
                }
            }
        }
        for peer in send {
            let (pool, raft, weak) = (n.pool.clone(), meta.raft.clone(), node.clone());
            let flying = Flying {
                node: weak.clone(),
                peer,
            };
            tokio::spawn(async move {
                let _flying = flying;
                let beat = remote::forward(&pool, &raft, peer, META_REGION, &ForwardOp::Beat);
                let answer = tokio::time::timeout(BEAT_TIMEOUT, beat).await;
                let Some(n) = weak.upgrade() else { return };
                let restarted = {
                    let mut peers = n.beats.peers.lock();
                    let Some(p) = peers.get_mut(&peer) else {
                        return;
                    };
                    let Ok(Ok(ForwardOk::Beat {
                        boot,
                        leading,
                        asleep,
                    })) = answer
                    else {
                        p.failing_since.get_or_insert_with(Instant::now);
                        p.failures += 1;
                        return;
                    };
                    let restarted = p.boot != 0 && p.boot != boot;
                    p.boot = boot;
                    p.failing_since = None;
                    p.failures = 0;
                    p.ok = Some(Instant::now());
                    p.answers += 1;
                    p.leading.swap(0, 1);
                    p.leading[0] = leading.into_iter().collect();
                    p.asleep = asleep.into_iter().collect();
                    restarted
                };
                if restarted {
                    tracing::info!(peer, "member restarted: waking the regions led here");
                    n.wake_replicated_on(peer);
                }
            });
        }
        for (peer, all, leading) in down {
            if !cairn_raft::planted::on("sleepy-followers") {
                n.wake_led_by(peer, all, &leading);
            }
        }
    }
}

/// Holds `raft`'s own elections if it has other voters (a replica that
/// existed before this start; see the module essay). True if held.
pub(super) async fn hold_elections(raft: &cairn_raft::Raft) -> bool {
    let voters = raft
        .with_raft_state(|st| st.membership_state.effective().voter_ids().count())
        .await;
    let hold = matches!(voters, Ok(n) if n > 1);
    if hold {
        raft.runtime_config().elect(false);
    }
    hold
}

/// Lets each replica in `held` campaign again once a Raft message for its
/// region arrived after this member began to serve its peers, or
/// [`RESTART_GRACE`] after that; the stragglers each after up to 300 ms
/// (spread by region), so that they do not all campaign in one tick.
pub(super) async fn resume_elections(node: std::sync::Weak<Node>, mut held: Vec<u64>) {
    if held.is_empty() {
        return;
    }
    let (mut serving, mut stopped) = {
        let Some(n) = node.upgrade() else { return };
        (n.serving.subscribe(), n.stopped.subscribe())
    };
    let since = tokio::select! {
        s = serving.wait_for(|s| s.is_some()) => match s {
            Ok(s) => s.unwrap_or_else(Instant::now),
            Err(_) => return,
        },
        _ = stopped.wait_for(|s| *s) => return,
    };
    while let Some(n) = super::background::tick(&node, Duration::from_millis(50)).await {
        let late = since.elapsed() >= RESTART_GRACE;
        held.retain(|&id| {
            let Ok(r) = n.region(id) else { return false };
            if *r.sleep.heard.lock() > since {
                r.raft.runtime_config().elect(true);
                return false;
            }
            if late {
                let jitter = jitter(id, n.id);
                tokio::spawn(async move {
                    tokio::time::sleep(jitter).await;
                    r.raft.runtime_config().elect(true);
                });
                return false;
            }
            true
        });
        if held.is_empty() {
            return;
        }
    }
}

/// Puts quiet regions to sleep and wakes busy ones (see the module essay).
pub(super) async fn hibernate(node: std::sync::Weak<Node>) {
    // Per region: its last log index at the last look.
    let mut last: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    // Per region with no known leader: since when, and when it was last
    // reported.
    let mut leaderless: BTreeMap<u64, (Instant, Instant)> = BTreeMap::new();
    while let Some(n) = super::background::tick(&node, LOOK_EVERY).await {
        let mut here = BTreeSet::new();
        for r in n.regions.all() {
            if r.id == META_REGION {
                continue;
            }
            here.insert(r.id);
            let m = r.raft.metrics().borrow().clone();
            let index = m.last_log_index;
            let now = Instant::now();
            report_leaderless(&mut leaderless, &r, &m, now);
            let was = last.entry(r.id).or_insert(index);
            let leading = m.current_leader == Some(n.id);
            // Entries this follower had at the last look still not applied:
            // the append telling it they committed was lost (openraft
            // resends a failed append, not a failed commit notice). Its
            // leader, asked for a read index, says so in the round's
            // appends, and wakes.
            let unapplied = !leading && m.last_applied.map(|l| l.index) < *was;
            let was_before = *was;
            *was = index;
            if let (true, true, Some(leader), Some(was)) =
                (unapplied, r.sleep.is_asleep(), m.current_leader, was_before)
            {
                poke(&n, &r, leader, was);
            }
            let applied = m.last_applied.map(|l| l.index) == index;
            let sleepy = match m.current_leader {
                Some(_) if leading => {
                    let membership = m.membership_config.membership();
                    let matched = m
                        .replication
                        .as_ref()
                        .is_some_and(|rep| rep.values().all(|x| x.map(|l| l.index) == index));
                    r.sleep.idle_for() >= LEADER_QUIET
                        && applied
                        && matched
                        && membership.get_joint_config().len() == 1
                        && r.shared.merge_frozen().is_none()
                        && membership
                            .nodes()
                            .all(|(id, _)| *id == n.id || n.beats.asleep_at(*id, r.id))
                }
                Some(l) => {
                    r.sleep.awake_for() >= FOLLOWER_QUIET
                        && applied
                        && r.sleep.heard.lock().elapsed() < HEARD_WITHIN
                        && n.beats.fresh(l)
                }
                None => false,
            };
            if sleepy {
                r.fall_asleep();
            } else if m.current_leader.is_none() {
                r.wake();
            }
        }
        last.retain(|id, _| here.contains(id));
        leaderless.retain(|id, _| here.contains(id));
    }
}

/// Asks `leader` for `r`'s read index, which wakes it there (a read):
/// its round and heartbeats then tell this sleeping follower what
/// committed. Only if this replica does not know entry `was` committed
/// (it may know and be applying slowly: no ask then).
fn poke(n: &std::sync::Arc<Node>, r: &std::sync::Arc<Region>, leader: u64, was: u64) {
    let (pool, raft, region) = (n.pool.clone(), r.raft.clone(), r.id);
    tokio::spawn(async move {
        let committed = raft
            .with_raft_state(|st| st.committed.map(|c| c.index))
            .await;
        if !matches!(committed, Ok(c) if c < Some(was)) {
            return;
        }
        let ask = remote::forward(&pool, &raft, leader, region, &ForwardOp::ReadIndex);
        let _ = tokio::time::timeout(LOOK_EVERY, ask).await;
    });
}

/// A replica left without a known leader for longer than an election
/// should take is logged with its Raft state every [`LEADERLESS_REPORT`]:
/// what an operator (or a torture run's member logs) needs to see why a
/// region does not serve.
fn report_leaderless(
    leaderless: &mut BTreeMap<u64, (Instant, Instant)>,
    r: &Region,
    m: &openraft::RaftMetrics<u64, openraft::BasicNode>,
    now: Instant,
) {
    if m.current_leader.is_some() {
        leaderless.remove(&r.id);
        return;
    }
    let (since, reported) = leaderless.entry(r.id).or_insert((now, now));
    if now - *since >= LEADERLESS_REPORT && now - *reported >= LEADERLESS_REPORT {
        *reported = now;
        tracing::warn!(
            region = r.id,
            for_ms = (now - *since).as_millis() as u64,
            state = ?m.state,
            vote = %m.vote,
            last_log = ?m.last_log_index,
            applied = ?m.last_applied.map(|l| l.index),
            asleep = r.sleep.is_asleep(),
            "no known leader"
        );
    }
}

/// 0–300 ms, spread by region and member, so that the replicas woken or
/// released together do not all campaign in the same tick.
fn jitter(region: u64, me: u64) -> Duration {
    Duration::from_millis((region.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ me) % 300)
}

/// A fresh boot id for this process.
pub(super) fn boot_id(me: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ me.rotate_left(32)) | 1
}
