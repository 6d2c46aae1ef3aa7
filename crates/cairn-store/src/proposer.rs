//! The write path of a region's leader: group commit and TSO batching.
//!
//! Client writes queue here. The proposer takes everything queued, fetches
//! one run of timestamps for the whole group (one TSO request), and hands the
//! transactions to openraft as ONE log entry (`Command::Batch`): one
//! append, one fsync and one replication round for the whole group. Replies
//! are delivered as entries apply. At most `MAX_INFLIGHT_GROUPS` groups are
//! in flight (proposed, not yet applied, and proposed in the term this node
//! still leads); requests arriving meanwhile wait and form the next group.
//! Consecutive commands of transactions across regions (prewrites, part
//! commits, rollbacks: `node::txn_across`) likewise go as one entry; any
//! other command goes alone, in queue order. (openraft orders a leader's appends behind
//! their flushes, so batching must happen before Raft, not in the log
//! writer.) Such a command whose caller has gone by the time it would be
//! proposed is dropped: its coordinator may have taken the step again
//! since, and a rollback landing after that attempt's prewrite would
//! delete its lock.
//!
//! Ordering: groups are proposed one after another and TSO runs are
//! increasing, so log order equals timestamp order; the state machine also
//! enforces `revision = max(ts, current + 1)`, so revisions stay strictly
//! increasing even across leader changes. A group's entries carry the
//! leader term its timestamps were fetched in (`Command::InTerm`) and apply
//! only if appended in it: a leader deposed and elected again between
//! fetching and appending gets `NotLeader` (nothing changed; the node
//! proposes again with new timestamps) instead of committing, behind
//! another leader's writes and reads, a write stamped below them.
//!
//! Reads at a timestamp (`Proposer::settled`): a group registers in
//! `in_flight` before it fetches its timestamps and leaves when every
//! entry of it is answered, so a reader whose timestamp T came later can
//! wait for every group this leader stamped at or below T. The reader
//! waits only for groups of the leader term it is served in (an older
//! term's group is in the log before anything this term appends, or never
//! commits). The reader first raises the proposer's floor to T; a group
//! that registered after the raise and whose timestamps come out at or
//! below it (from a TSO leader deposed without knowing it yet) fetches new
//! ones, so none can slip in below a read served. A group registered
//! before the raise is waited for instead, whatever its timestamps.
//!
//! The floor lives in this leader's memory, so reads served by an earlier
//! leader of the region, or by the region it split from, did not raise
//! it. The first group of each term therefore first raises the floor to a
//! confirmed read timestamp ([`FloorSeed`]): every read served before
//! this term began took a timestamp at or below it. (Always, even while
//! the region looks whole: a new leader may not have applied a split
//! already in its log, and one meta round per term costs little.) So does
//! the first group after the region's epoch moves (a split, a merge): the
//! replicas of a region it absorbed may have resolved past this floor by
//! closes beside the log (`node::side_closes`), which the absorbed record
//! does not carry.
//!
//! Answers: an entry applied answers what it did. One whose answer is
//! lost is told what is known (`answer_of`): proposed again if a
//! leader's append removed it (it never committed), `Timeout` if a
//! snapshot install may hold it, route again if a merge absorbed the
//! region after it was appended (it came after the freeze).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cairn_raft::{AuthStamp, Command, Raft, Reply};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::{Error, Result};

/// What to propose.
pub enum Proposal {
    /// A prost-encoded `TxnRequest`; gets a timestamp. With an auth
    /// stamp: a client's, proposed as `Command::Checked` (or
    /// `CheckedLease`).
    Txn(Vec<u8>, Option<AuthStamp>),
    /// Revoke a lease (deletes its keys); gets a timestamp. Auth as `Txn`.
    Revoke(i64, Option<AuthStamp>),
    /// Revoke a lease the lessor of leader term `term` found expired (a
    /// no-op unless appended in that term); gets a timestamp.
    Expire { id: i64, term: u64 },
    /// Any other command (no timestamp).
    Plain(Command),
}

type Pending = (Proposal, oneshot::Sender<Result<Reply>>);

/// `cmd`, stamped with what a client was checked against.
pub fn checked(auth: Option<AuthStamp>, cmd: Command) -> Command {
    match auth {
        Some(stamp) => stamp.wrap(cmd),
        None => cmd,
    }
}

/// A source of timestamps (the TSO client).
pub type TimestampSource =
    Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = Result<i64>> + Send>> + Send + Sync>;

/// Where a leader's floor starts in a new term: a confirmed read
/// timestamp (the newest the TSO has handed out).
pub type FloorSeed =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<i64>> + Send>> + Send + Sync>;

/// Handle to a region's proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    /// While true, queued proposals wait (a leader handing over, see
    /// `transfer`): the log stops growing so the new leader can catch up.
    hold: Arc<watch::Sender<bool>>,
    /// Groups of timestamped proposals not answered yet.
    in_flight: Arc<InFlight>,
    /// The highest timestamp a read asked this leader to settle at: a
    /// group whose timestamps came out at or below it as it was when the
    /// group registered (from a TSO leader deposed without knowing it yet)
    /// fetches new ones.
    floor: Arc<std::sync::atomic::AtomicI64>,
    /// Set once the region is absorbed by a merge and every entry its
    /// replica applied has been answered ([`Proposer::absorbed`]).
    absorbed: Arc<std::sync::atomic::AtomicBool>,
}

const MAX_GROUP: usize = 4096;
/// Groups proposed but not yet applied, at most. One: while a group is
/// being made durable, replicated and applied, every request that arrives
/// joins the next group, so groups are as large as the load makes them and
/// each fsync, log entry and replication round carries as many writes as
/// possible. Measured on 2 cores beside etcd (docs/benchmarks.md): with 1
/// instead of 2, 1-node put throughput +10–25% at 10–50 clients in direct
/// A/B, and deeper pipelines (4, 8) were worse again; the ratio to etcd rose
/// on 1 and 3 nodes at 10–200 clients.
const MAX_INFLIGHT_GROUPS: usize = 1;

/// A pipeline slot, shared by every entry of one group.
type Slot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// The groups of timestamped proposals not answered yet, by sequence
/// number: `None` while the group's timestamps are being fetched, then the
/// first of them. A read at timestamp T waits until none is `None` or at
/// most T ([`Proposer::settled`]).
type InFlight = watch::Sender<std::collections::BTreeMap<u64, (u64, Option<i64>)>>;

/// A group's entry in [`InFlight`], removed when the last of its replies
/// has been sent (every task answering one holds a clone).
struct Unanswered {
    in_flight: Arc<InFlight>,
    seq: u64,
    /// The leader term the group's timestamps were fetched in: its
    /// entries apply only if appended in it (`Command::InTerm`).
    term: u64,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.in_flight.send_modify(|m| {
            m.remove(&self.seq);
        });
    }
}
/// Soft cap on the payload of one group-commit entry.
const MAX_ENTRY_BYTES: usize = 4 << 20;

/// True for a command of a transaction across regions (a prewrite, a
/// part's commit or rollback, settling or forgetting an outcome): these
/// batch into one entry with their neighbours.
fn lock_command(c: &Command) -> bool {
    match c {
        Command::Prewrite { .. }
        | Command::CommitLocked { .. }
        | Command::RollbackLocked { .. }
        | Command::ResolvePrimary { .. }
        | Command::ForgetOutcome { .. } => true,
        Command::InTerm { cmd, .. }
        | Command::Checked { cmd, .. }
        | Command::CheckedLease { cmd, .. } => lock_command(cmd),
        Command::Batch(cmds) => !cmds.is_empty() && cmds.iter().all(lock_command),
        _ => false,
    }
}

/// A region's Raft as the proposer hands it entries, with what tells an
/// entry's lost answer from one that changed nothing.
#[derive(Clone)]
struct Log {
    raft: Raft,
    /// How many snapshots this replica began to receive (an entry's answer
    /// means less across one: [`answer_of`]).
    snapshots: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// See [`Proposer::absorbed`].
    absorbed: Arc<std::sync::atomic::AtomicBool>,
}

/// openraft's answer to an entry it accepted (`None`: dropped, which only
/// its shutdown does).
type RaftAnswer = Option<
    std::result::Result<
        openraft::raft::ClientWriteResponse<cairn_raft::TypeConfig>,
        ClientWriteError<u64, openraft::BasicNode>,
    >,
>;

/// What the caller is told of an entry openraft accepted, from `answer`;
/// `snapshot_since`: this replica began to receive a snapshot after the
/// entry was handed over; `absorbed`: see [`Proposer::absorbed`].
///
/// openraft answers `ForwardToLeader` for an entry a conflict removed from
/// this replica's log. From a leader's append that entry never committed,
/// so proposing again is safe (`NotLeader`). But a snapshot installed over
/// a conflicting log removes every entry past the commit index this
/// replica knew, and some of those may be committed, in the snapshot: if a
/// snapshot arrived meanwhile the outcome is unknown (`Timeout`, as etcd
/// says of a proposal lost to a leader change). A dropped answer is
/// likewise unknown, unless the region was absorbed by a merge with no
/// snapshot since: then the entry came after the freeze and changed
/// nothing (`EpochMismatch`: route again).
fn answer_of(answer: RaftAnswer, snapshot_since: bool, absorbed: bool) -> Result<Reply> {
    match answer {
        Some(Ok(resp)) => not_stale(resp.data),
        Some(Err(ClientWriteError::ForwardToLeader(f))) if !snapshot_since => {
            Err(Error::NotLeader {
                leader: f.leader_id,
            })
        }
        Some(Err(ClientWriteError::ForwardToLeader(_))) => Err(Error::Timeout),
        Some(Err(e)) => Err(Error::Internal(e.to_string())),
        None if absorbed && !snapshot_since => Err(Error::EpochMismatch),
        None => Err(Error::Timeout),
    }
}

/// Proposes `txns` as one entry (a `Batch` when more than one) and routes
/// each reply back to its waiter.
async fn propose_txns(
    log: &Log,
    mut txns: Vec<(Command, oneshot::Sender<Result<Reply>>)>,
    slot: &Slot,
    unanswered: &Option<Arc<Unanswered>>,
) {
    let in_term = |cmd: Command| match unanswered {
        Some(u) => Command::InTerm {
            term: u.term,
            cmd: Box::new(cmd),
        },
        None => cmd,
    };
    match txns.len() {
        0 => {}
        1 => {
            let (c, reply) = txns.pop().expect("one");
            propose(log, in_term(c), reply, slot, unanswered).await;
        }
        _ => {
            let (cmds, replies): (Vec<_>, Vec<_>) = txns.into_iter().unzip();
            let (tx, rx) = oneshot::channel();
            propose(log, in_term(Command::Batch(cmds)), tx, slot, unanswered).await;
            let unanswered = unanswered.clone();
            tokio::spawn(async move {
                let _unanswered = unanswered;
                match rx.await {
                    Ok(Ok(Reply::Batch(rs))) if rs.len() == replies.len() => {
                        for (r, reply) in rs.into_iter().zip(replies) {
                            let _ = reply.send(not_stale(r));
                        }
                    }
                    Ok(Ok(other)) => {
                        for reply in replies {
                            let _ = reply.send(Err(Error::Internal(format!(
                                "unexpected batch reply {other:?}"
                            ))));
                        }
                    }
                    Ok(Err(e)) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    Err(_) => {
                        for reply in replies {
                            let _ = reply.send(Err(Error::Timeout));
                        }
                    }
                }
            });
        }
    }
}

/// `need` timestamps from `timestamps`, the first above `floor`, the
/// floor as it was when the group registered (see [`Proposer::settled`]):
/// ones at or below it came from a TSO leader deposed without knowing it
/// yet, and are fetched again (`NoLeader` after a while). A floor raised
/// since does not count: that reader found the group registered and waits
/// for it, whatever its timestamps. (Counting it starved writes: a read's
/// timestamp is the newest handed out, often the group's own, and every
/// read raised the floor onto it again.)
async fn stamps_above_floor(timestamps: &TimestampSource, need: u32, floor: i64) -> Result<i64> {
    let deadline = std::time::Instant::now() + crate::node::REQUEST_TIMEOUT;
    loop {
        let ts = timestamps(need).await?;
        if ts > floor {
            return Ok(ts);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::NoLeader);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `reply`, or `NotLeader` for a command appended in another term than
/// its timestamps were fetched in: nothing changed, so proposing it again
/// (as `Node::submit` does on `NotLeader`) is safe.
fn not_stale(reply: Reply) -> Result<Reply> {
    match reply {
        Reply::StaleTerm => Err(Error::NotLeader { leader: None }),
        r => Ok(r),
    }
}

/// Proposes one command; the reply arrives when it applies.
///
/// The pipeline slot frees when every entry of the group answered — or
/// when this node stops leading in the term it proposed in. openraft 0.9
/// answers an entry only when it applies or is truncated; a leader cut off
/// from its quorum keeps its uncommitted entries, unanswered, until a new
/// leader's log overwrites them, which can take a long time (measured: a
/// slot held 17 s across back-to-back leader partitions, and every write and
/// lease revoke queued behind it when the node led again). The entry's
/// reply still arrives when its fate is known.
async fn propose(
    log: &Log,
    cmd: Command,
    reply: oneshot::Sender<Result<Reply>>,
    slot: &Slot,
    unanswered: &Option<Arc<Unanswered>>,
) {
    let raft = &log.raft;
    // The server metrics change with the vote, state or leader only: the
    // full metrics change on every step of every entry, and would wake
    // each waiting proposal several times per write on every member.
    let mut metrics = raft.server_metrics();
    let (term, me) = {
        let m = metrics.borrow_and_update();
        (m.vote.leader_id().get_term(), m.id)
    };
    let snapshots_before = (log.snapshots)();
    match raft.client_write_ff(cmd).await {
        Ok(rx) => {
            let slot = slot.clone();
            let unanswered = unanswered.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let _unanswered = unanswered;
                let mut slot = Some(slot);
                tokio::pin!(rx);
                let answer = loop {
                    tokio::select! {
                        r = &mut rx => break r,
                        changed = metrics.changed(), if slot.is_some() => {
                            let m = metrics.borrow_and_update();
                            if changed.is_err()
                                || m.vote.leader_id().get_term() != term
                                || m.current_leader != Some(me)
                            {
                                slot = None;
                            }
                        }
                    }
                };
                drop(slot);
                let r = answer_of(
                    answer.ok(),
                    (log.snapshots)() != snapshots_before,
                    log.absorbed.load(std::sync::atomic::Ordering::SeqCst),
                );
                if r.is_err() {
                    cairn_raft::metrics::PROPOSALS_FAILED.inc();
                }
                let _ = reply.send(r);
            });
        }
        Err(_) => {
            cairn_raft::metrics::PROPOSALS_FAILED.inc();
            let _ = reply.send(Err(Error::Stopped));
        }
    }
}

impl Proposer {
    /// Starts the proposer of `raft`, whose floor starts each leader term,
    /// and again whenever the region's `epoch` moves, at `seed`'s.
    pub fn start(
        raft: Raft,
        timestamps: TimestampSource,
        seed: FloorSeed,
        epoch: Arc<dyn Fn() -> u64 + Send + Sync>,
        snapshots: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        let absorbed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = Log {
            raft: raft.clone(),
            snapshots,
            absorbed: absorbed.clone(),
        };
        let (tx, mut rx) = mpsc::channel::<Pending>(65_536);
        let (hold, mut held) = watch::channel(false);
        let in_flight: Arc<InFlight> = Arc::new(watch::Sender::new(Default::default()));
        let flights = in_flight.clone();
        let floor = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let read_floor = floor.clone();
        let me = raft.metrics().borrow().id;
        tokio::spawn(async move {
            let mut seq = 0u64;
            // The leader term and region epoch the floor was seeded at.
            let mut seeded = (0u64, 0u64);
            let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_GROUPS));
            while let Some(first) = rx.recv().await {
                while *held.borrow_and_update() {
                    if held.changed().await.is_err() {
                        break;
                    }
                }
                // Wait for a free pipeline slot *before* draining the queue:
                // while earlier groups are being made durable and replicated,
                // new requests pile up and join this group.
                let Ok(slot) = inflight.clone().acquire_owned().await else {
                    return;
                };
                let slot = Arc::new(slot);
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                let need = group
                    .iter()
                    .filter(|(p, _)| {
                        matches!(
                            p,
                            Proposal::Txn(..) | Proposal::Revoke(..) | Proposal::Expire { .. }
                        )
                    })
                    .count() as u32;
                let (leader, term) = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    (m.current_leader, m.current_term)
                };
                if need > 0 && leader != Some(me) {
                    // Timestamps fetched while not leading could be
                    // stamped into the term this node is campaigning in.
                    for (_, reply) in group {
                        let _ = reply.send(Err(Error::NotLeader { leader }));
                    }
                    continue;
                }
                let at = (term, epoch());
                if need > 0 && seeded != at {
                    // A new term (or a region just born): reads this
                    // node did not serve may have been served at
                    // timestamps above the floor — by the previous leader,
                    // or in the parent region — so first the floor rises
                    // to a read timestamp taken now, above all of them.
                    // Likewise once the region absorbed another in a
                    // merge: the other's replicas may have resolved its
                    // keys past this floor, by closes beside the log
                    // (`node::side_closes`) that its record does not hold.
                    match seed().await {
                        Ok(t) => {
                            read_floor.fetch_max(t, std::sync::atomic::Ordering::SeqCst);
                            seeded = at;
                        }
                        Err(e) => {
                            for (_, reply) in group {
                                let _ = reply.send(Err(e.clone()));
                            }
                            continue;
                        }
                    }
                }
                // Registered before the timestamps are fetched: a reader
                // whose timestamp came after ours finds the group here.
                let unanswered = (need > 0).then(|| {
                    seq += 1;
                    flights.send_modify(|m| {
                        m.insert(seq, (term, None));
                    });
                    Arc::new(Unanswered {
                        in_flight: flights.clone(),
                        seq,
                        term,
                    })
                });
                // The floor once registered: an RMW, so a reader whose
                // raise comes after it in the floor's order sees the
                // group registered (its look follows its raise).
                let floor = read_floor.fetch_add(0, std::sync::atomic::Ordering::SeqCst);
                let mut ts = if need > 0 {
                    match stamps_above_floor(&timestamps, need, floor).await {
                        Ok(t) => t,
                        Err(e) => {
                            for (_, reply) in group {
                                let _ = reply.send(Err(e.clone()));
                            }
                            continue;
                        }
                    }
                } else {
                    0
                };
                if let Some(u) = &unanswered {
                    flights.send_modify(|m| {
                        m.insert(u.seq, (u.term, Some(ts)));
                    });
                }
                // Consecutive transactions become one Raft entry (up to
                // MAX_ENTRY_BYTES), and so do consecutive commands of
                // transactions across regions (prewrites, commits,
                // rollbacks: one entry, one apply and one record write for
                // many); other commands go alone, in order.
                let mut txns: Vec<(Command, oneshot::Sender<Result<Reply>>)> = Vec::new();
                let mut locks: Vec<(Command, oneshot::Sender<Result<Reply>>)> = Vec::new();
                let mut bytes = 0usize;
                for (p, reply) in group {
                    let p = match p {
                        Proposal::Plain(c) if lock_command(&c) => {
                            if reply.is_closed() {
                                // Nobody waits for it: its coordinator (or
                                // resolver) gave up, and may since have
                                // taken the step again in a later try. A
                                // rollback proposed now could land after
                                // that try's prewrite of the same
                                // transaction and delete its lock.
                                continue;
                            }
                            propose_txns(&log, std::mem::take(&mut txns), &slot, &unanswered).await;
                            locks.push((c, reply));
                            continue;
                        }
                        p => p,
                    };
                    propose_txns(&log, std::mem::take(&mut locks), &slot, &None).await;
                    // Timestamped proposals join the group's entry; others go alone.
                    let stamped = match p {
                        Proposal::Txn(txn, auth) => {
                            bytes += txn.len();
                            Ok(checked(auth, Command::Txn { ts, txn }))
                        }
                        Proposal::Revoke(id, auth) => {
                            Ok(checked(auth, Command::LeaseRevoke { id, ts }))
                        }
                        Proposal::Expire { id, term } => Ok(Command::LeaseExpire { id, ts, term }),
                        Proposal::Plain(c) => Err(c),
                    };
                    match stamped {
                        Ok(cmd) => {
                            txns.push((cmd, reply));
                            ts += 1;
                            if bytes >= MAX_ENTRY_BYTES {
                                propose_txns(&log, std::mem::take(&mut txns), &slot, &unanswered)
                                    .await;
                                bytes = 0;
                            }
                        }
                        Err(c) => {
                            propose_txns(&log, std::mem::take(&mut txns), &slot, &unanswered).await;
                            bytes = 0;
                            propose(&log, c, reply, &slot, &None).await;
                        }
                    }
                }
                propose_txns(&log, txns, &slot, &unanswered).await;
                propose_txns(&log, locks, &slot, &None).await;
            }
        });
        Self {
            tx,
            hold: Arc::new(hold),
            in_flight,
            floor,
            absorbed,
        }
    }

    /// Tells the proposer that its region was absorbed by a merge, that its
    /// replica here applied the freeze, and that openraft has answered
    /// every entry the replica applied — by applying it: a snapshot
    /// installed over an entry answers nothing, so an entry handed over
    /// before a snapshot arrived does not count ([`answer_of`]). A
    /// proposal unanswered now is in the log after the freeze (or in
    /// none), where it changes nothing — a frozen region refuses every
    /// write. Stopping Raft then drops its answer; the caller is told
    /// `EpochMismatch` (route again: the keys are the absorbing region's
    /// now) instead of `Timeout`, which would tell a client its write may
    /// or may not have happened.
    pub fn absorbed(&self) {
        self.absorbed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds (true) or releases (false) every proposal not yet handed to
    /// Raft; held ones wait in order and go once released.
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// Waits until every group of timestamped proposals this proposer
    /// fetched timestamps for in leader term `term`, or is fetching them
    /// for, whose first timestamp is at most `ts`, has been answered (applied, or failed:
    /// see the module essay); `Timeout` after `within`. A read at
    /// timestamp `ts` that then takes a read index misses no write
    /// stamped at or below it that this leader proposed.
    pub async fn settled(&self, ts: i64, term: u64, within: std::time::Duration) -> Result<()> {
        // First the floor, then the look at the groups: a group that
        // registers after the look finds the floor raised.
        self.floor
            .fetch_max(ts, std::sync::atomic::Ordering::SeqCst);
        let mut rx = self.in_flight.subscribe();
        // Only groups of the leader term `term` (the caller's, which it
        // leads in): one stamped in an earlier term of this node is in the
        // log before anything this term appends, or never commits (its
        // entries apply only in their own term) — waiting for its answer
        // could take as long as a new leader takes to overwrite it.
        let done = async move {
            rx.wait_for(|m| {
                m.values()
                    .all(|(t, first)| *t != term || first.is_some_and(|f| f > ts))
            })
            .await
            .is_ok()
        };
        match tokio::time::timeout(within, done).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Proposes and waits for the applied reply.
    ///
    /// One never handed to Raft, because Raft stopped, changed nothing:
    /// once the region was [`Proposer::absorbed`], it routes again.
    pub async fn propose(&self, p: Proposal) -> Result<Reply> {
        let answer = match self.enqueue(p).await {
            Ok(rx) => rx.await.unwrap_or(Err(Error::Stopped)),
            Err(e) => Err(e),
        };
        match answer {
            Err(Error::Stopped) if self.absorbed.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(Error::EpochMismatch)
            }
            other => other,
        }
    }

    /// Queues a proposal and returns where its reply will arrive. Proposals
    /// are appended to the log in the order they are queued (one queue, one
    /// task), so a caller that queues B after A's `enqueue` returned knows B
    /// applies after A if both commit in this term.
    pub async fn enqueue(&self, p: Proposal) -> Result<oneshot::Receiver<Result<Reply>>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((p, tx)).await.map_err(|_| Error::Stopped)?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use openraft::error::{ClientWriteError, ForwardToLeader};
    use openraft::raft::ClientWriteResponse;
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn applied(data: Reply) -> RaftAnswer {
        Some(Ok(ClientWriteResponse {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 7),
            data,
            membership: None,
        }))
    }

    fn truncated() -> RaftAnswer {
        Some(Err(ClientWriteError::ForwardToLeader(ForwardToLeader {
            leader_id: Some(2),
            leader_node: None,
        })))
    }

    #[test]
    fn an_applied_entry_answers_what_it_did_whatever_happened_since() {
        for (snapshot, absorbed) in [(false, false), (true, true)] {
            assert_eq!(
                answer_of(applied(Reply::Done), snapshot, absorbed),
                Ok(Reply::Done)
            );
            assert_eq!(
                answer_of(applied(Reply::StaleTerm), snapshot, absorbed),
                Err(Error::NotLeader { leader: None })
            );
        }
    }

    #[test]
    fn a_truncated_entry_is_proposed_again_unless_a_snapshot_may_hold_it() {
        assert_eq!(
            answer_of(truncated(), false, false),
            Err(Error::NotLeader { leader: Some(2) })
        );
        // A snapshot installed over a conflicting log drops entries past
        // the commit index this replica knew: some may be in it.
        assert_eq!(answer_of(truncated(), true, false), Err(Error::Timeout));
        assert_eq!(answer_of(truncated(), true, true), Err(Error::Timeout));
    }

    #[test]
    fn a_dropped_answer_routes_again_only_after_a_merge_with_no_snapshot_since() {
        assert_eq!(answer_of(None, false, false), Err(Error::Timeout));
        assert_eq!(answer_of(None, false, true), Err(Error::EpochMismatch));
        // An entry a snapshot covered is never answered: it may have
        // committed before the freeze.
        assert_eq!(answer_of(None, true, true), Err(Error::Timeout));
    }
}
