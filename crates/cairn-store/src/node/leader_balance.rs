//! The leader balancer (PD's balance-leader scheduler, counting leaders):
//! spreads the data regions' leaderships evenly over the members.
//!
//! Why: a region's leader does the work of its writes that followers do
//! not — it takes the client's request (or the forward), fetches the
//! timestamp, proposes, applies first and answers — and serves its
//! linearizable reads. Elections decide where leaders land, and they land
//! unevenly: a split's child usually elects the member that applied the
//! split first, the parent's leader, so a hot key range keeps all its
//! descendants' leaders on one member (74, 32 and 23 of 129 regions after
//! a sequential load of a dev cluster); a member that restarted leads
//! nothing until something moves leaders back. Then one member's CPU and
//! network cap the cluster's write rate, which is what many regions exist
//! to lift.
//!
//! What: every [`CHECK_EVERY`] the meta region's leader (the placement
//! driver's seat, DESIGN §1) counts, from its own replicas' Raft state, how
//! many data regions each member leads. When the member leading the most
//! leads at least two more than the one leading the fewest, and more than
//! a twentieth of all regions more (so a few hundred regions are not
//! shuffled for one or two), it asks that region's leader to hand one over
//! (`Node::hand_over`, the MoveLeader path: the leader waits for the target
//! to come within reach of its log, stops serving leases and holds
//! proposals for the last round, and the target campaigns), at most
//! [`MOVES_PER_CHECK`] one after another per check. The region moved is
//! the coldest the busiest member leads (fewest writes a second: the
//! cheapest pause); never the first data region, whose leader the TSO
//! follows (`tso::colocate`), nor one frozen for a merge.
//!
//! Caution, because a hand-over pauses the region's writes for a round and
//! a read lease: nothing moves on a view taken mid-election (a region with
//! no known leader) or on an imbalance seen only once (two checks in a
//! row must find one); a target must answer a beat first (a member that is
//! down leads nothing, and must not be given leaders); a hand-over that
//! fails leaves its region alone for [`QUIET_AFTER_FAILURE`], and its
//! target too if the target did not catch up in time (one still catching
//! up after a restart would otherwise hold the leaders' one-transfer lock
//! a couple of seconds per try). A move pauses its region's writes for a
//! read lease (150 ms), the target's vote lease if the last election was
//! recent (up to 0.6 s) and an election. Counting is not load: a member
//! can lead its share of regions and still take most of the writes (a hot
//! region splits by load first, `--region-split-qps`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::node::{Node, DATA_REGION, META_REGION};
use crate::remote::{self, ForwardOk, ForwardOp};
use crate::Error;

/// How often the meta leader looks.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Hand-overs at most per check, one after another.
const MOVES_PER_CHECK: usize = 4;
/// After a failed hand-over: how long its region and its target are left
/// alone.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How long a target has to answer a beat.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a hand-over may take, from the balancer's side.
const MOVE_TIMEOUT: Duration = Duration::from_secs(7);

/// One data region as the balancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Led {
    /// The region.
    pub(crate) region: u64,
    /// Its leader.
    pub(crate) leader: u64,
    /// Its voters (a target must be one).
    pub(crate) voters: Vec<u64>,
    /// Writes a second it applied recently.
    pub(crate) writes_per_second: f64,
    /// Counted, never moved.
    pub(crate) pinned: bool,
}

/// A hand-over the balancer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) region: u64,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// The next hand-over that evens out leader counts over `members`, if the
/// counts are uneven enough (see the module essay); `left_alone(region,
/// target)` rules out pairs that failed lately. The busiest member gives
/// to the idlest it can (ties: the lower member ID), its coldest region
/// first (ties: the lower region ID).
pub(crate) fn next_move(
    view: &[Led],
    members: &[u64],
    left_alone: impl Fn(u64, u64) -> bool,
) -> Option<Move> {
    let mut counts: BTreeMap<u64, usize> = members.iter().map(|&m| (m, 0)).collect();
    for l in view {
        if let Some(c) = counts.get_mut(&l.leader) {
            *c += 1;
        }
    }
    let total = view.len();
    let mut by_count: Vec<(usize, u64)> = counts.iter().map(|(&m, &c)| (c, m)).collect();
    by_count.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let (most, from) = *by_count.first()?;
    // The idlest first (ties: the lower member ID).
    by_count.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    for &(fewest, to) in &by_count {
        let gap = most - fewest;
        if gap < 2 || gap * 20 <= total {
            break;
        }
        let coldest = view
            .iter()
            .filter(|l| {
                l.leader == from && !l.pinned && l.voters.contains(&to) && !left_alone(l.region, to)
            })
            .min_by(|a, b| {
                a.writes_per_second
                    .total_cmp(&b.writes_per_second)
                    .then(a.region.cmp(&b.region))
            });
        if let Some(l) = coldest {
            return Some(Move {
                region: l.region,
                from,
                to,
            });
        }
    }
    None
}

/// What the balancer remembers between checks.
#[derive(Default)]
struct Memory {
    /// The last check found a move to make.
    uneven_before: bool,
    /// Regions and targets left alone after a failure, until when.
    quiet_regions: BTreeMap<u64, Instant>,
    quiet_targets: BTreeMap<u64, Instant>,
}

/// Runs the balancer until the node is gone (it acts only while this node
/// leads the meta region).
pub(super) async fn balance_leaders(node: Weak<Node>) {
    let mut memory = Memory::default();
    while let Some(n) = super::background::tick(&node, CHECK_EVERY).await {
        let Ok(meta) = n.region(META_REGION) else {
            return;
        };
        let (leads_meta, members) = {
            let m = meta.raft.metrics();
            let m = m.borrow();
            let members: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (m.current_leader == Some(n.id), members)
        };
        if !leads_meta || !n.balancing.load(Ordering::Relaxed) {
            memory.uneven_before = false;
            continue;
        }
        n.balance_once(&members, &mut memory).await;
    }
}

impl Node {
    /// Switches the leader balancer on or off on this member (it starts as
    /// `--region-balance-leaders` says); a hand-over under way finishes.
    pub fn set_leader_balance(&self, on: bool) {
        self.balancing.store(on, Ordering::Relaxed);
    }

    /// One check: up to [`MOVES_PER_CHECK`] hand-overs.
    async fn balance_once(self: &Arc<Self>, members: &[u64], memory: &mut Memory) {
        for _ in 0..MOVES_PER_CHECK {
            if self.is_stopped() || !self.balancing.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            memory.quiet_regions.retain(|_, t| *t > now);
            memory.quiet_targets.retain(|_, t| *t > now);
            let Some(view) = self.leader_view() else {
                memory.uneven_before = false;
                return;
            };
            let next = next_move(&view, members, |region, to| {
                memory.quiet_regions.contains_key(&region) || memory.quiet_targets.contains_key(&to)
            });
            let Some(m) = next else {
                memory.uneven_before = false;
                return;
            };
            if !std::mem::replace(&mut memory.uneven_before, true) {
                // Seen once: act if the next check sees it too.
                return;
            }
            if !self.answers(m.to).await {
                tracing::debug!(target = m.to, "leader balance: the target does not answer");
                memory
                    .quiet_targets
                    .insert(m.to, Instant::now() + QUIET_AFTER_FAILURE);
                continue;
            }
            let ask = self.submit(m.region, ForwardOp::HandOver(m.to));
            let failed = match tokio::time::timeout(MOVE_TIMEOUT, ask).await {
                Ok(Ok(_)) => {
                    crate::metrics::LEADER_BALANCE_MOVES.inc();
                    tracing::info!(
                        region = m.region,
                        "leader balance: moved from {:x} to {:x}",
                        m.from,
                        m.to
                    );
                    if !self.sees_leader(m.region, m.to).await {
                        // Not seen here yet: looked at again from scratch
                        // (two checks), not on a view that would count the
                        // region where it was.
                        memory.uneven_before = false;
                        return;
                    }
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => Error::LeaderTransferTimeout,
            };
            tracing::debug!(region = m.region, "leader balance: no hand-over: {failed}");
            let until = Instant::now() + QUIET_AFTER_FAILURE;
            memory.quiet_regions.insert(m.region, until);
            if matches!(failed, Error::LeaderTransferTimeout) {
                // The target did not catch up (a member just restarted):
                // offered region after region, it would hold the leaders'
                // one-transfer lock for seconds each.
                memory.quiet_targets.insert(m.to, until);
            }
        }
    }

    /// Every data region hosted here with its leader as this replica
    /// knows it; `None` while any has no known leader (an election, a
    /// replica catching up): no move is decided on such a view.
    fn leader_view(&self) -> Option<Vec<Led>> {
        let rates = self.write_rates.lock().clone();
        let mut view = Vec::new();
        for r in self.regions.all() {
            if r.id == META_REGION {
                continue;
            }
            let (leader, voters) = {
                let m = r.raft.metrics();
                let m = m.borrow();
                let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                (m.current_leader?, voters)
            };
            view.push(Led {
                region: r.id,
                leader,
                voters,
                writes_per_second: rates.get(&r.id).map_or(0.0, |w| w.per_second()),
                // Frozen for a merge: its range is empty until the merge ends.
                pinned: r.id == DATA_REGION || r.shared.range().is_empty(),
            });
        }
        Some(view)
    }

    /// Whether member `id` answers a beat within [`PING_TIMEOUT`].
    async fn answers(&self, id: u64) -> bool {
        if id == self.id {
            return true;
        }
        let Ok(meta) = self.region(META_REGION) else {
            return false;
        };
        let beat = remote::forward(&self.pool, &meta.raft, id, META_REGION, &ForwardOp::Beat);
        matches!(
            tokio::time::timeout(PING_TIMEOUT, beat).await,
            Ok(Ok(ForwardOk::Beat { .. }))
        )
    }

    /// Waits (up to a second) until this replica of `region` knows `leader`
    /// leads it, so the next look counts the move; false if it does not.
    async fn sees_leader(&self, region: u64, leader: u64) -> bool {
        let Ok(r) = self.region(region) else {
            return false;
        };
        let mut metrics = r.raft.metrics();
        let seen = tokio::time::timeout(
            Duration::from_secs(1),
            metrics.wait_for(|m| m.current_leader == Some(leader)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(region: u64, leader: u64, writes: f64) -> Led {
        Led {
            region,
            leader,
            voters: vec![1, 2, 3],
            writes_per_second: writes,
            pinned: false,
        }
    }

    fn never(_: u64, _: u64) -> bool {
        false
    }

    #[test]
    fn the_busiest_gives_its_coldest_region_to_the_idlest() {
        let view = vec![
            led(10, 1, 5.0),
            led(11, 1, 0.5),
            led(12, 1, 9.0),
            led(13, 2, 0.0),
        ];
        assert_eq!(
            next_move(&view, &[1, 2, 3], never),
            Some(Move {
                region: 11,
                from: 1,
                to: 3
            })
        );
    }

    #[test]
    fn even_enough_counts_move_nothing() {
        // Two regions apart, but not a twentieth of 60.
        let mut view: Vec<Led> = (0..21).map(|i| led(i, 1, 0.0)).collect();
        view.extend((21..41).map(|i| led(i, 2, 0.0)));
        view.extend((41..60).map(|i| led(i, 3, 0.0)));
        assert_eq!(next_move(&view, &[1, 2, 3], never), None);
        // One apart.
        let view = vec![led(1, 1, 0.0), led(2, 2, 0.0)];
        assert_eq!(next_move(&view, &[1, 2, 3], never), None);
        // Two apart: 2, 1, 0 becomes 1, 1, 1.
        let view = vec![led(1, 1, 0.0), led(2, 1, 0.0), led(3, 2, 0.0)];
        assert_eq!(
            next_move(&view, &[1, 2, 3], never),
            Some(Move {
                region: 1,
                from: 1,
                to: 3
            })
        );
        // A single region leads somewhere: nothing to even out.
        assert_eq!(next_move(&[led(1, 2, 0.0)], &[1, 2, 3], never), None);
        assert_eq!(next_move(&[], &[1, 2, 3], never), None);
    }

    #[test]
    fn repeated_moves_converge_to_within_one() {
        let mut view: Vec<Led> = (0..74).map(|i| led(i, 1, 0.0)).collect();
        view.extend((74..106).map(|i| led(i, 2, 0.0)));
        view.extend((106..129).map(|i| led(i, 3, 0.0)));
        let mut moves = 0;
        while let Some(m) = next_move(&view, &[1, 2, 3], never) {
            let l = view.iter_mut().find(|l| l.region == m.region).unwrap();
            assert_eq!(l.leader, m.from);
            l.leader = m.to;
            moves += 1;
            assert!(moves < 100, "never settles");
        }
        let count = |m| view.iter().filter(|l| l.leader == m).count();
        let counts = [count(1), count(2), count(3)];
        let (max, min) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
        // Within a twentieth of 129 (6), and no move past it.
        assert!(max - min <= 6, "{counts:?}");
        assert!(moves <= 31, "{moves} moves for {counts:?}");
    }

    #[test]
    fn pinned_regions_count_but_stay_and_targets_must_be_voters() {
        let mut view = vec![
            led(1, 1, 0.0),
            led(2, 1, 0.0),
            led(3, 1, 0.0),
            led(4, 2, 0.0),
            led(5, 3, 0.0),
        ];
        view[0].pinned = true;
        view[1].voters = vec![1, 2];
        // Member 4 leads nothing; only region 3 has it among its voters.
        view[2].voters = vec![1, 2, 3, 4];
        assert_eq!(
            next_move(&view, &[1, 2, 3, 4], never),
            Some(Move {
                region: 3,
                from: 1,
                to: 4
            })
        );
        // Region 3 left alone: region 2 goes to the idlest member among its
        // voters (3 is not one).
        let alone = |region, _| region == 3;
        assert_eq!(
            next_move(&view, &[1, 2, 3, 4], alone),
            Some(Move {
                region: 2,
                from: 1,
                to: 2
            })
        );
    }

    #[test]
    fn leaders_outside_the_members_are_not_counted() {
        // A leader that is no longer a member (removed): its regions are
        // not a member's load.
        let view = vec![led(1, 9, 0.0), led(2, 9, 0.0), led(3, 9, 0.0)];
        assert_eq!(next_move(&view, &[1, 2, 3], never), None);
    }
}
