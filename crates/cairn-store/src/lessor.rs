//! The lessor: lease deadlines, renewal, expiry and checkpoints, kept by the
//! data region's leader only.
//!
//! Lease records are replicated (grant, revoke, checkpoint go through Raft);
//! *deadlines* are not. The leader keeps them in memory, indexed by time
//! (expiry and the next checkpoint are each the first entry of an ordered
//! set), so a tick costs O(due · log n) and an idle cluster with 100k
//! leases costs nothing per tick; a keep-alive is a map update plus, as
//! below, a leadership check.
//!
//! Safety — a lease must never expire before its TTL has run since a
//! renewal the client was told succeeded (two lock holders otherwise):
//!
//! - **A renewal proves leadership first.** The node confirms it leads the
//!   region (a read index, or a valid read lease) *after* the keep-alive
//!   arrived and waits until it has applied that far; the new deadline
//!   counts from `since`, a time taken before that confirmation. A leader
//!   cut off from its quorum (openraft 0.9 leaders do not step down) cannot
//!   confirm, so it cannot renew; any leader elected later primes its
//!   deadlines after its election, which is after `since`.
//! - **Deadlines are built only from complete state.** A leader primes (and
//!   answers keep-alive or TimeToLive) only once it has applied an entry of
//!   its own term, which comes after everything any earlier leader
//!   committed — and, restored as leader in its term after a restart
//!   (`restored_lead`), only once the log it restored has applied: a grant
//!   there would otherwise never be tracked, and never expire. Priming
//!   sets each deadline to `now + remaining`, where remaining is the
//!   checkpointed TTL if any, else the full TTL: a lease can outlive its
//!   TTL across a leader change, never expire early.
//! - **An expired lease is reported only once it is gone.** A keep-alive
//!   of a lease past its deadline waits (up to a second) for its revoke to
//!   apply, or for this member to stop leading, as etcd's `Renew` does.
//! - **A renewal clears the checkpoint, durably.** Checkpoints record the
//!   remaining TTL so a long lease does not restart from full on every
//!   leader change. A renewal whose lease carries a checkpoint, or that
//!   races a checkpoint entry not yet applied, proposes a clear (remaining
//!   0) and answers only once it applied. Checkpoints and clears are queued
//!   to the proposer under one ordering lock, and the proposer appends in
//!   queue order, so a checkpoint computed before a renewal never lands
//!   after its clear. (etcd fixed this bug class the same way: `Renew`
//!   resets `remainingTTL`.)
//!
//! - **Decisions carry their term.** A revoke of an expired lease and a
//!   checkpoint carry the leader term whose deadlines they came from, and
//!   the state machine ignores them unless their entry is appended in that
//!   term: a decision held up in the proposer across leader changes (say,
//!   behind a TSO outage) cannot revoke or shorten a lease a later leader
//!   renewed.
//! - **An expiry never outlives its lease into a new grant of its ID.** A
//!   lease is named by its ID alone, and a client may choose the ID. An
//!   expiry across regions starts over when it meets a lock, reading the
//!   lease by ID each time; the client's own revoke may roll its attempt
//!   back meanwhile and the client grant the ID again, in the same term —
//!   and the expiry's next attempt would revoke the new lease, its
//!   renewals answered and its lock key held. So in one term a grant of an
//!   ID and an expiry of it do not overlap: a grant waits (bounded) for an
//!   expiry of its ID under way here, and no expiry of an ID is decided
//!   while a grant of it is being proposed (both decided under the
//!   ordering lock). A grant's lease is then tracked afresh before any
//!   expiry can look at it.
//!
//! An expired lease is revoked through the proposer like any write: its keys
//! are deleted in one transaction and watchers see the deletes (when they
//! lie in several regions, or one of them is locked by a transaction
//! across regions, the region refuses the one-command revoke and the node
//! runs it as a transaction across them, which waits on or resolves such
//! locks, still claimed only in the term that found the lease expired:
//! `node::lease_across`). One revoke
//! per lease is outstanding at a time, and one checkpoint pass: a leader
//! that cannot commit (cut off) does not pile them up. A lease whose revoke
//! did not take is tried again after [`REVOKE_RETRY`]; a tracked lease found
//! gone from the store is dropped then. Leases are tracked from the store
//! when a term is primed and from this leader's grants (a grant finishes
//! tracking even if its client went away).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_mvcc::lease;
use cairn_raft::{Command, Raft, RegionShared, Reply};
use parking_lot::{Mutex, MutexGuard};

use crate::proposer::{Proposal, Proposer};
use crate::{Error, Result};

/// How long an expired lease waits before its revoke is proposed again.
pub const REVOKE_RETRY: Duration = Duration::from_secs(3);
/// How long a keep-alive of a lease found expired waits for its revoke to
/// apply (see [`Lessor::keep_alive`]).
const EXPIRED_WAIT: Duration = Duration::from_secs(1);
/// Most checkpoints in one Raft entry (etcd's batch size).
const CHECKPOINT_BATCH: usize = 1000;
/// How long a grant waits for an expiry of its ID under way (then it
/// fails as timed out: the client asks again).
const GRANT_WAIT: Duration = Duration::from_secs(3);

/// What the leader tracks of one lease.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    ttl: i64,
    deadline: Instant,
    /// The key of this lease in `State::expiry` (deadline, or a revoke retry).
    expiry_at: Instant,
    /// The key of this lease in `State::checkpoints`, if scheduled.
    checkpoint_at: Option<Instant>,
    /// Expired: renewals answer TTL 0.
    revoking: bool,
    /// A revoke of it is in the proposer and has not answered yet.
    revoke_pending: bool,
}

#[derive(Default)]
struct State {
    /// The term these deadlines were built for (0: not primed).
    term: u64,
    leases: HashMap<i64, Tracked>,
    expiry: BTreeSet<(Instant, i64)>,
    checkpoints: BTreeSet<(Instant, i64)>,
    /// Checkpoint entries queued in this term and not yet answered.
    checkpoints_in_flight: usize,
    /// Leases whose expiry, decided in this term, is under way (until its
    /// last attempt answered): a grant of the same ID waits for it.
    expiring: HashSet<i64>,
    /// Leases a grant of which this leader is proposing (how many grants):
    /// no expiry of the ID is decided meanwhile.
    granting: HashMap<i64, u32>,
}

impl State {
    fn insert(&mut self, id: i64, ttl: i64, deadline: Instant, every: Duration) {
        self.remove(id);
        let checkpoint_at = (ttl > every.as_secs() as i64).then(|| Instant::now() + every);
        self.leases.insert(
            id,
            Tracked {
                ttl,
                deadline,
                expiry_at: deadline,
                checkpoint_at,
                revoking: false,
                revoke_pending: false,
            },
        );
        self.expiry.insert((deadline, id));
        if let Some(at) = checkpoint_at {
            self.checkpoints.insert((at, id));
        }
    }

    fn unschedule_checkpoint(&mut self, id: i64) {
        if let Some(t) = self.leases.get_mut(&id) {
            if let Some(at) = t.checkpoint_at.take() {
                self.checkpoints.remove(&(at, id));
            }
        }
    }

    fn remove(&mut self, id: i64) {
        if let Some(t) = self.leases.remove(&id) {
            self.expiry.remove(&(t.expiry_at, id));
            if let Some(at) = t.checkpoint_at {
                self.checkpoints.remove(&(at, id));
            }
        }
    }

    fn clear(&mut self) {
        *self = State::default();
    }
}

/// Lease deadlines of one data region on this node.
pub struct Lessor {
    me: u64,
    raft: Raft,
    shared: Arc<RegionShared>,
    proposer: Proposer,
    checkpoint_every: Duration,
    // parking_lot Mutex: held only for map updates, never across an await.
    state: Mutex<State>,
    /// Held while deciding on and queueing a checkpoint or a clear, so the
    /// proposer's queue order matches the order of those decisions.
    order: tokio::sync::Mutex<()>,
    /// Revokes an expired lease whose keys lie in several regions (the
    /// region refused the one-command revoke), given the lease and the
    /// term that found it expired; set once by the node.
    across: std::sync::OnceLock<RevokeAcross>,
    /// The term and last log index the region's replica was restored as
    /// leader with, if it was (`restored_lead`): that term is primed only
    /// once the log has applied that far.
    restored: Option<(u64, u64)>,
}

/// A grant of a lease being proposed ([`Lessor::granting`]); dropped once
/// it answered.
pub struct Granting {
    lessor: Arc<Lessor>,
    id: i64,
    /// The term it was marked in (a later term's state never had it).
    term: u64,
}

impl Drop for Granting {
    fn drop(&mut self) {
        let mut st = self.lessor.state.lock();
        if st.term != self.term {
            return;
        }
        if let Some(n) = st.granting.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                st.granting.remove(&self.id);
            }
        }
    }
}

/// How the lessor has an expired lease whose keys lie in several regions
/// revoked: `(lease, term)` to a transaction across them.
pub type RevokeAcross =
    Box<dyn Fn(i64, u64) -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

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

/// What a tick found to do.
#[derive(Debug, Default)]
pub struct Due {
    /// The leader term these decisions were taken in.
    pub term: u64,
    /// Expired leases to revoke.
    pub revoke: Vec<i64>,
    /// Checkpoint entries, `(id, remaining)`, at most [`CHECKPOINT_BATCH`] each.
    pub checkpoints: Vec<Vec<(i64, i64)>>,
}

impl Lessor {
    /// The lessor of the region behind `raft`/`shared` on node `me`.
    pub fn new(
        me: u64,
        raft: Raft,
        shared: Arc<RegionShared>,
        proposer: Proposer,
        checkpoint_every: Duration,
        restored: Option<&crate::restored_lead::RestoredLead>,
    ) -> Self {
        Self {
            me,
            raft,
            shared,
            proposer,
            checkpoint_every,
            state: Mutex::new(State::default()),
            order: tokio::sync::Mutex::new(()),
            across: std::sync::OnceLock::new(),
            restored: restored.map(crate::restored_lead::RestoredLead::term_and_last),
        }
    }

    /// Sets how expired leases with keys in several regions are revoked.
    pub(crate) fn revoke_across_with(&self, f: RevokeAcross) {
        let _ = self.across.set(f);
    }

    /// The state, primed for the current term, when this node leads the
    /// region and has applied an entry of its own term; `None` otherwise
    /// (and the deadlines are dropped when it does not lead).
    fn primed(&self) -> Option<MutexGuard<'_, State>> {
        let (leader, term, applied) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term, m.last_applied)
        };
        let applied_term = applied.map(|l| l.leader_id.term);
        // A leader restored in its term may hold entries of it not yet
        // applied (a grant among them): its state is complete only once
        // they have.
        let restored_pending = self
            .restored
            .is_some_and(|(t, last)| t == term && applied.map_or(0, |l| l.index) < last);
        let mut st = self.state.lock();
        if leader != Some(self.me) || applied_term != Some(term) || restored_pending {
            if st.term != 0 {
                st.clear();
            }
            return None;
        }
        if st.term != term {
            st.clear();
            let now = Instant::now();
            let (snap, _) = self.shared.read_view();
            let listed = match lease::list(&*snap) {
                Ok(listed) => listed,
                Err(e) => {
                    // Primed with no lease, none would expire this term:
                    // unprimed, it is tried again at the next call.
                    tracing::warn!(node = self.me, term, "lessor: listing the leases: {e}");
                    return None;
                }
            };
            for r in listed {
                let left = if r.remaining > 0 { r.remaining } else { r.ttl };
                st.insert(r.id, r.ttl, now + secs(left), self.checkpoint_every);
            }
            st.term = term;
            tracing::debug!(
                node = self.me,
                term,
                leases = st.leases.len(),
                "lessor primed"
            );
        }
        Some(st)
    }

    /// Errors for a lessor that cannot answer now: `NotLeader` makes the
    /// caller retry (at the new leader, or here once primed).
    fn not_ready() -> Error {
        Error::NotLeader { leader: None }
    }

    /// Marks lease `id` as being granted here, once no expiry of the ID
    /// decided in this term is under way (waiting up to [`GRANT_WAIT`]):
    /// no expiry of it is decided until the guard goes, after the grant
    /// answered (and, granted, is tracked). See the module essay.
    /// `NotLeader` (asked again) until this leader is primed: a grant
    /// marked in a state about to be primed afresh would be forgotten.
    pub async fn granting(self: &Arc<Self>, id: i64) -> Result<Granting> {
        let deadline = Instant::now() + GRANT_WAIT;
        loop {
            {
                let _order = self.order.lock().await;
                let mut st = self.primed().ok_or_else(Self::not_ready)?;
                // Nor while a lease of the ID is past its deadline: its
                // expiry waits for grants being proposed, and grants one
                // after another (each refused: it exists) would keep a
                // lease nobody renews alive for ever.
                let due = st
                    .leases
                    .get(&id)
                    .is_some_and(|t| t.deadline <= Instant::now());
                if !st.expiring.contains(&id) && !due {
                    *st.granting.entry(id).or_default() += 1;
                    return Ok(Granting {
                        lessor: self.clone(),
                        id,
                        term: st.term,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts tracking a lease this leader just granted.
    pub fn granted(&self, id: i64, ttl: i64) {
        if let Some(mut st) = self.primed() {
            st.insert(id, ttl, Instant::now() + secs(ttl), self.checkpoint_every);
        }
    }

    /// Renews lease `id` from `since` (a time taken before the caller
    /// confirmed leadership and applied state, after the request arrived);
    /// returns its TTL, 0 if it does not exist. Clears a checkpoint durably
    /// before answering (see the module essay).
    ///
    /// A lease this leader found expired is answered only once its revoke
    /// applied (0) or this member stopped leading (`NotLeader`: the caller
    /// asks the next leader, which renews it), as etcd's `Renew` waits for
    /// the revoke or the demotion: its revoke is decided in this term and
    /// does not apply in another, so a 0 told before it applied could
    /// end a client's session while its lease and keys live on for
    /// another TTL. Bounded by [`EXPIRED_WAIT`] (then 0: a revoke that
    /// keeps failing is retried every [`REVOKE_RETRY`]), shorter than
    /// etcd's unbounded wait: a stream renews its leases one at a time, and
    /// the others' renewals wait behind this one.
    pub async fn keep_alive(&self, id: i64, since: Instant) -> Result<i64> {
        // From the first answer that it expired (a renewal may first wait
        // on its clear for longer than this wait).
        let mut until = None;
        loop {
            match self.renew(id, since).await? {
                Some(ttl) => return Ok(ttl),
                None if until.is_some_and(|u| Instant::now() >= u) => return Ok(0),
                None => {
                    until.get_or_insert_with(|| Instant::now() + EXPIRED_WAIT);
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
            }
        }
    }

    /// [`Lessor::keep_alive`] once: `None` while the lease's revoke is
    /// under way (or about to be).
    async fn renew(&self, id: i64, since: Instant) -> Result<Option<i64>> {
        let order = self.order.lock().await;
        let (ttl, clear) = {
            let mut st = self.primed().ok_or_else(Self::not_ready)?;
            let (snap, _) = self.shared.read_view();
            let Some(rec) = lease::get(&*snap, id)? else {
                st.remove(id);
                return Ok(Some(0));
            };
            let every = self.checkpoint_every;
            let t = match st.leases.get(&id) {
                Some(t) => *t,
                None => {
                    st.insert(id, rec.ttl, Instant::now() + secs(rec.ttl), every);
                    st.leases[&id]
                }
            };
            if t.revoking || t.deadline <= Instant::now() {
                return Ok(None); // expired: its revoke is (about to be) under way
            }
            let deadline = t.deadline.max(since + secs(rec.ttl));
            st.insert(id, rec.ttl, deadline, every);
            tracing::debug!(
                node = self.me,
                term = st.term,
                lease = format_args!("{id:x}"),
                since_ms = since.elapsed().as_millis() as u64,
                left_ms = deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                "lease renewed"
            );
            (rec.ttl, rec.remaining > 0 || st.checkpoints_in_flight > 0)
        };
        if !clear {
            return Ok(Some(ttl));
        }
        // No checkpoint of it until the clear answered and the deadline is
        // counted again: one queued behind the clear would store a
        // remaining TTL from the old count, which a new leader would take
        // up (`State::insert` below schedules the next one).
        if let Some(mut st) = self.primed() {
            st.unschedule_checkpoint(id);
        }
        let reply = self
            .proposer
            .enqueue(Proposal::Plain(Command::LeaseCheckpoints {
                term: 0,
                list: vec![(id, 0)],
            }))
            .await?;
        drop(order);
        if let Reply::Rejected(r) = reply.await.map_err(|_| Error::Stopped)?? {
            return Err(Error::Rejected(r));
        }
        // The answer may leave long after `since` (the clear waited behind
        // a proposal group): the client counts its TTL from when it hears
        // it, so the deadline here is counted from now too (etcd's `Renew`
        // refreshes after its checkpoint is cleared) — or a holder cut off
        // right after would believe in its lease for that long after this
        // leader expired it. Expired meanwhile: answered as such.
        let mut st = self.primed().ok_or_else(Self::not_ready)?;
        let now = Instant::now();
        match st.leases.get(&id).copied() {
            Some(t) if !t.revoking && t.deadline > now => {
                let every = self.checkpoint_every;
                st.insert(id, ttl, t.deadline.max(now + secs(ttl)), every);
                Ok(Some(ttl))
            }
            _ => Ok(None),
        }
    }

    /// Remaining and granted TTL of lease `id`, with its keys.
    pub fn time_to_live(&self, id: i64) -> Result<Option<LeaseTtl>> {
        let mut st = self.primed().ok_or_else(Self::not_ready)?;
        let (snap, _) = self.shared.read_view();
        let Some(rec) = lease::get(&*snap, id)? else {
            return Ok(None);
        };
        let keys = lease::attached_keys(&*snap, id)?;
        let now = Instant::now();
        if !st.leases.contains_key(&id) {
            st.insert(id, rec.ttl, now + secs(rec.ttl), self.checkpoint_every);
        }
        let left = st.leases[&id].deadline.saturating_duration_since(now);
        // Whole seconds left, rounded down, as etcd reports them.
        let remaining = left.as_secs() as i64;
        Ok(Some(LeaseTtl {
            remaining,
            granted: rec.ttl,
            keys,
        }))
    }

    /// Takes what is due now: expired leases (each moved to a revoke retry
    /// slot) and checkpoints (each rescheduled). Leases found gone from the
    /// store are dropped.
    fn take_due(&self) -> Due {
        let Some(mut st) = self.primed() else {
            return Due::default();
        };
        let now = Instant::now();
        let (snap, _) = self.shared.read_view();
        let mut due = Due {
            term: st.term,
            ..Due::default()
        };
        while let Some(&(at, id)) = st.expiry.first() {
            if at > now {
                break;
            }
            st.expiry.pop_first();
            match lease::get(&*snap, id) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    st.remove(id);
                    continue;
                }
                Err(e) => {
                    // Not known to be gone: looked at again shortly.
                    tracing::warn!(node = self.me, id, "lessor: reading a due lease: {e}");
                    let again = now + REVOKE_RETRY;
                    if let Some(t) = st.leases.get_mut(&id) {
                        t.expiry_at = again;
                        st.expiry.insert((again, id));
                    }
                    continue;
                }
            }
            if st.granting.contains_key(&id) {
                // A grant of the ID is being proposed (the lease exists, so
                // it will be refused, unless a revoke applies before it):
                // looked at again once it answered.
                let again = now + Duration::from_millis(100);
                if let Some(t) = st.leases.get_mut(&id) {
                    t.expiry_at = again;
                    st.expiry.insert((again, id));
                }
                continue;
            }
            let retry = now + REVOKE_RETRY;
            let Some(t) = st.leases.get_mut(&id) else {
                continue;
            };
            t.revoking = true;
            t.expiry_at = retry;
            let propose = !t.revoke_pending;
            t.revoke_pending = true;
            st.expiry.insert((retry, id));
            if propose {
                tracing::debug!(
                    node = self.me,
                    term = st.term,
                    lease = format_args!("{id:x}"),
                    "lease expired: revoking"
                );
                due.revoke.push(id);
                st.expiring.insert(id);
            }
        }
        // One checkpoint pass at a time: what is due waits for the next tick.
        let mut batch = Vec::new();
        while let Some(&(at, id)) = st.checkpoints.first() {
            if st.checkpoints_in_flight > 0 {
                break;
            }
            if at > now {
                break;
            }
            st.checkpoints.pop_first();
            let next = now + self.checkpoint_every;
            let Some(t) = st.leases.get_mut(&id) else {
                continue;
            };
            t.checkpoint_at = Some(next);
            let left = (t.deadline.saturating_duration_since(now).as_millis() as i64 + 999) / 1000;
            let (ttl, revoking) = (t.ttl, t.revoking);
            st.checkpoints.insert((next, id));
            if !revoking && left > 0 && left < ttl {
                batch.push((id, left));
                if batch.len() == CHECKPOINT_BATCH {
                    due.checkpoints.push(std::mem::take(&mut batch));
                }
            }
        }
        if !batch.is_empty() {
            due.checkpoints.push(batch);
        }
        due
    }

    /// The lease leader's expiry loop: five [`Lessor::tick`]s a second,
    /// until its node shuts down or is dropped (`stopped` is the node's
    /// shutdown signal; its sender goes with the node). Not until the
    /// lessor is dropped: a tick spawns tasks that hold the lessor while
    /// they wait for their proposals, so ticks on a dead node's lessor
    /// would keep it — and its engine — alive, and the node's data dir
    /// locked, for good.
    pub(crate) async fn expire(
        lessor: std::sync::Weak<Lessor>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // Shut down (true), or the node is gone (the sender dropped).
                _ = stopped.wait_for(|s| *s) => return,
            }
            let Some(lessor) = lessor.upgrade() else {
                return;
            };
            lessor.tick().await;
        }
    }

    /// One pass of the leader's lease work: proposes the revokes and
    /// checkpoints that are due (their answers are awaited in the
    /// background).
    pub async fn tick(self: &Arc<Self>) {
        let order = self.order.lock().await;
        let due = self.take_due();
        let mut answers = Vec::new();
        let term = due.term;
        for list in due.checkpoints {
            {
                let mut st = self.state.lock();
                if st.term != term {
                    break; // leadership moved meanwhile
                }
                st.checkpoints_in_flight += 1;
            }
            match self
                .proposer
                .enqueue(Proposal::Plain(Command::LeaseCheckpoints { term, list }))
                .await
            {
                Ok(rx) => answers.push((term, rx)),
                Err(_) => self.checkpoint_answered(term),
            }
        }
        drop(order);
        for (term, rx) in answers {
            let me = self.clone();
            tokio::spawn(async move {
                // Any answer will do: an error means leadership moved, and a
                // new term primes from applied state anyway.
                let _ = rx.await;
                me.checkpoint_answered(term);
            });
        }
        for id in due.revoke {
            let me = self.clone();
            tokio::spawn(async move {
                let answer = match me.proposer.propose(Proposal::Expire { id, term }).await {
                    // Its keys lie in several regions, or one of them is
                    // locked by a transaction across regions: revoked as a
                    // transaction across regions, which waits on (or
                    // resolves) the lock rather than leaving the lease to
                    // the next retry while its keep-alives answer 0.
                    Ok(Reply::Rejected(cairn_mvcc::Rejection::LeaseOutsideFirstRegion))
                    | Ok(Reply::Locked(_)) => match me.across.get() {
                        Some(across) => across(id, term).await.map(|()| Reply::Done),
                        None => Err(Error::Internal("no revoke across regions".into())),
                    },
                    other => other,
                };
                if let Err(e) = &answer {
                    tracing::debug!(lease = id, "revoking expired lease: {e}");
                }
                // Done or not, the next retry looks at the store again.
                let mut st = me.state.lock();
                if st.term == term {
                    st.expiring.remove(&id);
                    if let Some(t) = st.leases.get_mut(&id) {
                        t.revoke_pending = false;
                    }
                }
            });
        }
    }

    fn checkpoint_answered(&self, term: u64) {
        let mut st = self.state.lock();
        if st.term == term {
            st.checkpoints_in_flight = st.checkpoints_in_flight.saturating_sub(1);
        }
    }
}

/// A lease ID no other node picks at the same moment: time and node mixed,
/// positive, never 0.
pub(crate) fn fresh_lease_id(node: u64, attempt: u64) -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (node.rotate_left(17) ^ nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ attempt)
        & (i64::MAX as u64);
    mixed.max(1) as i64
}
