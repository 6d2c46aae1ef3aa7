//! The lessor: lease expiry, kept by the data region's leader only.
//!
//! Lease records are replicated (grant, revoke, checkpoint go through Raft);
//! *deadlines* are not. The leader keeps them in memory, so a keep-alive is
//! a map update, not a Raft write. When leadership moves, the new leader
//! rebuilds every deadline as `now + remaining`, where remaining is the
//! checkpointed TTL if any, else the full TTL: a lease can outlive its TTL
//! across a leader change, never expire early. Periodic checkpoints record
//! remaining TTLs so long leases do not restart from full on every change.
//! An expired lease is revoked through the proposer like any write: its keys
//! are deleted in one transaction and watchers see the deletes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_mvcc::lease;
use cairn_raft::{Raft, RegionShared};
use parking_lot::Mutex;

use crate::{Error, Result};

#[derive(Default)]
struct State {
    /// The term these deadlines were built for (0: not leading).
    term: u64,
    deadlines: HashMap<i64, Instant>,
    /// Revokes in flight, so a tick does not propose them twice.
    revoking: HashMap<i64, Instant>,
    last_checkpoint: Option<Instant>,
}

/// Lease deadlines of one data region on this node.
pub struct Lessor {
    me: u64,
    raft: Raft,
    shared: Arc<RegionShared>,
    checkpoint_every: Duration,
    // parking_lot Mutex: held only for map updates, never across an await.
    state: Mutex<State>,
}

/// A lease as `LeaseTimeToLive` reports it.
#[derive(Clone, Debug)]
pub struct LeaseTtl {
    /// Remaining seconds (rounded up), never below 0.
    pub remaining: i64,
    /// Granted TTL.
    pub granted: i64,
    /// Attached keys.
    pub keys: Vec<Vec<u8>>,
}

fn secs(d: i64) -> Duration {
    Duration::from_secs(d.max(0) as u64)
}

impl Lessor {
    /// The lessor of the region behind `raft`/`shared` on node `me`.
    pub fn new(me: u64, raft: Raft, shared: Arc<RegionShared>, checkpoint_every: Duration) -> Self {
        Self {
            me,
            raft,
            shared,
            checkpoint_every,
            state: Mutex::new(State::default()),
        }
    }

    /// True when this node leads the region; (re)builds deadlines on a new term.
    fn prime(&self) -> bool {
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        let mut st = self.state.lock();
        if leader != Some(self.me) {
            st.term = 0;
            st.deadlines.clear();
            st.revoking.clear();
            return false;
        }
        if st.term != term {
            let now = Instant::now();
            let (snap, _) = self.shared.read_view();
            st.deadlines = lease::list(&*snap)
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    (
                        r.id,
                        now + secs(if r.remaining > 0 { r.remaining } else { r.ttl }),
                    )
                })
                .collect();
            st.revoking.clear();
            st.term = term;
            st.last_checkpoint = Some(now);
        }
        true
    }

    /// Refreshes lease `id`; returns its TTL (0 if it does not exist).
    pub fn keep_alive(&self, id: i64) -> Result<i64> {
        if !self.prime() {
            return Err(Error::NotLeader { leader: None });
        }
        let (snap, _) = self.shared.read_view();
        let Some(rec) = lease::get(&*snap, id)? else {
            return Ok(0);
        };
        let mut st = self.state.lock();
        if st.revoking.contains_key(&id) {
            return Ok(0); // already expired, being revoked
        }
        st.deadlines.insert(id, Instant::now() + secs(rec.ttl));
        Ok(rec.ttl)
    }

    /// Remaining and granted TTL of lease `id`, with its keys.
    pub fn time_to_live(&self, id: i64) -> Result<Option<LeaseTtl>> {
        if !self.prime() {
            return Err(Error::NotLeader { leader: None });
        }
        let (snap, _) = self.shared.read_view();
        let Some(rec) = lease::get(&*snap, id)? else {
            return Ok(None);
        };
        let keys = lease::attached_keys(&*snap, id)?;
        let now = Instant::now();
        let deadline = *self
            .state
            .lock()
            .deadlines
            .entry(id)
            .or_insert(now + secs(rec.ttl));
        let left = deadline.saturating_duration_since(now);
        let remaining = (left.as_millis() as i64 + 999) / 1000;
        Ok(Some(LeaseTtl {
            remaining,
            granted: rec.ttl,
            keys,
        }))
    }

    /// One pass: pick up new leases, return those due for revoke and the
    /// checkpoints due. Deadlines of leases found expired move to `revoking`.
    pub fn tick(&self) -> (Vec<i64>, Vec<(i64, i64)>) {
        if !self.prime() {
            return (Vec::new(), Vec::new());
        }
        let (snap, _) = self.shared.read_view();
        let stored = lease::list(&*snap).unwrap_or_default();
        let now = Instant::now();
        let mut st = self.state.lock();
        let live: HashMap<i64, i64> = stored.iter().map(|r| (r.id, r.ttl)).collect();
        st.deadlines.retain(|id, _| live.contains_key(id));
        st.revoking.retain(|id, at| {
            live.contains_key(id) && now.duration_since(*at) < Duration::from_secs(5)
        });
        for r in &stored {
            st.deadlines.entry(r.id).or_insert(now + secs(r.ttl));
        }
        let due: Vec<i64> = st
            .deadlines
            .iter()
            .filter(|(id, d)| **d <= now && !st.revoking.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            st.revoking.insert(*id, now);
        }
        let mut checkpoints = Vec::new();
        if st
            .last_checkpoint
            .is_some_and(|t| now.duration_since(t) >= self.checkpoint_every)
        {
            st.last_checkpoint = Some(now);
            for (id, d) in &st.deadlines {
                let left = d.saturating_duration_since(now).as_secs() as i64;
                if live
                    .get(id)
                    .is_some_and(|ttl| *ttl > self.checkpoint_every.as_secs() as i64)
                    && left > 0
                {
                    checkpoints.push((*id, left));
                }
            }
        }
        (due, checkpoints)
    }
}
