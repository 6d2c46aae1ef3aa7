//! The timestamp oracle (TSO), served by the meta region's leader.
//!
//! A timestamp is the etcd revision of the transaction it is given to: a
//! counter, strictly increasing across the cluster and, like etcd's
//! revisions, small — far below 2^53 for the life of a cluster, so
//! JavaScript and JSON clients, which read revisions as doubles, read them
//! exactly. The leader persists a *high-water mark* through the meta
//! region's Raft log and hands out timestamps below it from memory; one
//! Raft write covers a window of [`WINDOW`] timestamps. A new leader first
//! catches up (read-index) and starts above the persisted mark, so no
//! timestamp is ever issued twice and none is lower than one a previous
//! leader could have issued.
//!
//! Revisions are as dense as that allows: a gap is a timestamp handed out
//! and not used — a transaction that wrote nothing, a commit group that
//! failed — or the unused rest of a window when the meta leadership moves
//! (at most [`WINDOW`] per change). (Until this counter, timestamps were
//! `milliseconds << 18 | logical`, past 2^58; a cluster started then keeps
//! counting from where it was.)
//!
//! Any node's proposer gets its timestamps through [`fetch_timestamps`]
//! (locally on the meta leader, else one peer call per commit group),
//! confirmed by the meta leader after it takes them — its read lease, or a
//! round — as read timestamps are: a leader deposed without knowing it
//! (paused past an election) still holds a window below its successor's,
//! and a write stamped from it once the successor had served a read at a
//! later timestamp would land below a revision a client already has. And
//! [`colocate`] keeps the meta leadership next to the data leadership so
//! that call is usually local.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_raft::network::PeerPool;
use cairn_raft::{Command, Raft, RegionShared};

use crate::error::{read_index_error, write_error};
use crate::node::{Node, DATA_REGION, META_REGION, REQUEST_TIMEOUT};
use crate::remote::{self, ForwardOp};
use crate::restored_lead::RestoredLead;
use crate::{Error, Result};

/// The first timestamp: a fresh store is at revision 1, as etcd's, so its
/// first write is revision 2 — the TSO's own value, not one the state
/// machine bumps (`revision = max(ts, current + 1)`), so revisions are TSO
/// timestamps from the start.
const FIRST: i64 = 2;

/// Timestamps one Raft write of the meta region makes available. At a
/// hundred thousand writes a second that is ten meta writes a second; a
/// leader change skips at most this many revisions.
pub const WINDOW: i64 = 10_000;

#[derive(Default)]
struct State {
    term: u64,
    last: i64,
    window_end: i64,
}

/// The allocator; only answers while this node leads the meta region.
pub struct Tso {
    me: u64,
    meta: Raft,
    shared: Arc<RegionShared>,
    // tokio Mutex: held across the Raft write that extends the window, so
    // allocations are serialized and strictly increasing.
    state: tokio::sync::Mutex<State>,
    /// Whether the meta replica came back as leader in its term, and with
    /// what log (`restored_lead`).
    restored: Option<RestoredLead>,
}

impl Tso {
    /// The TSO of node `me` over the meta region, whose Raft started as
    /// `restored` says.
    pub fn new(
        me: u64,
        meta: Raft,
        shared: Arc<RegionShared>,
        restored: Option<RestoredLead>,
    ) -> Self {
        Self {
            me,
            meta,
            shared,
            state: tokio::sync::Mutex::new(State::default()),
            restored,
        }
    }

    /// Allocates `count` consecutive timestamps; returns the first.
    pub async fn allocate(&self, count: u32) -> Result<i64> {
        let mut st = self.state.lock().await;
        self.lead(&mut st).await?;
        let first = (st.last + 1).max(FIRST);
        let end = first + i64::from(count.max(1));
        if end > st.window_end {
            let high_water = end + WINDOW;
            let written = bounded(self.meta.client_write(Command::TsoWindow { high_water })).await;
            if !matches!(written, Ok(Ok(_))) {
                // Unknown whether the window was written: recheck (catch
                // up and read the persisted mark) before the next one.
                st.term = 0;
            }
            written?.map_err(write_error)?;
            st.window_end = high_water;
        }
        st.last = end - 1;
        Ok(first)
    }

    /// The newest timestamp handed out, handing out none: what a read
    /// takes as its timestamp. Every write stamped at or below it got its
    /// timestamp before this call; every later one gets one above. So reads
    /// leave no gaps in the revisions, and a read's header is the newest
    /// write's revision, as etcd's is (unless the newest timestamp went to
    /// a write that wrote nothing, or a new leader starts above its
    /// predecessor's window).
    pub async fn newest(&self) -> Result<i64> {
        let mut st = self.state.lock().await;
        self.lead(&mut st).await?;
        Ok(st.last.max(FIRST - 1))
    }

    /// Checks that this node leads the meta region; in a term new to the
    /// allocator, first catches up and starts above the persisted mark.
    async fn lead(&self, st: &mut State) -> Result<()> {
        let (leader, term) = {
            let m = self.meta.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(self.me) {
            return Err(Error::NotLeader { leader });
        }
        if st.term != term {
            bounded(self.meta.ensure_linearizable())
                .await?
                .map_err(read_index_error)?;
            // Restored as leader in its term: its log's end may hold a
            // window written before the crash, below the read index.
            if let Some(restored) = &self.restored {
                let vote = self
                    .meta
                    .with_raft_state(|st| *st.vote_ref())
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                bounded(RestoredLead::settled(Some(restored), &self.meta, &vote, 0)).await??;
            }
            st.last = st.last.max(self.shared.tso_high_water());
            st.window_end = 0;
            st.term = term;
        }
        Ok(())
    }
}

/// Bounds one of the TSO's Raft calls. The allocator's lock is held across
/// them, and openraft answers a write only when it applies or is truncated:
/// a leader deposed with the window's entry unanswered would otherwise hold
/// the lock — and every later allocation on this node, in any term — until
/// a later leader's log decides that entry.
async fn bounded<T>(call: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(RAFT_CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            tracing::warn!("a TSO Raft call timed out; retrying");
            Error::NoLeader
        })
}

/// How long one of the TSO's Raft calls may take (a catch-up or a window
/// write is one quorum round when the meta region is healthy).
const RAFT_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Gets timestamps from the meta leader: locally if that is us. With
/// `confirm` (a write's stamps), a local allocation is confirmed by that
/// node ([`Node::tso_local`], as the meta leader's peer service confirms
/// one asked from elsewhere); without, only unique (a name: a
/// transaction's start, a region's ID).
pub(crate) async fn fetch_timestamps(
    tso: &Tso,
    pool: &Arc<PeerPool>,
    meta: &Raft,
    count: u32,
    confirm: Option<&Node>,
) -> Result<i64> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let leader = meta.metrics().borrow().current_leader;
        let res = match leader {
            Some(l) if l == pool.me() => match confirm {
                Some(node) => node.tso_local(count).await,
                None => tso.allocate(count).await,
            },
            // Timestamps handed out and never used are a gap, nothing
            // more: a call to a leader replaced meanwhile is given up.
            Some(l) => tokio::select! {
                res = remote::tso(pool, meta, l, count) => res,
                () = remote::leader_changed(meta, leader) => Err(Error::NoLeader),
            },
            None => Err(Error::NoLeader),
        };
        match res {
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(?leader, "no timestamps from the meta region: {e}");
                return Err(Error::NoLeader);
            }
            other => return other,
        }
    }
}

/// Keeps the TSO next to the writes: a node that has led the data region
/// for a while but not the meta region asks the meta leader to hand its
/// leadership over (`transfer`: the meta leader first lets its read lease
/// run out, so no election cuts a lease short). Otherwise every commit
/// group pays a network round trip to a TSO on another node before it can
/// be proposed. Rate-limited; TSO calls retry through the change.
pub(crate) async fn colocate(node: std::sync::Weak<Node>) {
    const EVERY: Duration = Duration::from_secs(2);
    let mut led_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let (Ok(data), Ok(meta)) = (n.region(DATA_REGION), n.region(META_REGION)) else {
            return;
        };
        let data_leader = data.raft.metrics().borrow().current_leader;
        let meta_leader = meta.raft.metrics().borrow().current_leader;
        if data_leader != Some(n.id) {
            led_since = None;
            continue;
        }
        let since = *led_since.get_or_insert_with(Instant::now);
        if meta_leader.is_some_and(|m| m != n.id) && since.elapsed() >= EVERY {
            tracing::debug!(id = n.id, "data leader asks to lead the meta region (TSO)");
            let ask = n.submit(META_REGION, ForwardOp::HandOver(n.id));
            let limit = crate::transfer::TRANSFER_TIMEOUT + Duration::from_secs(1);
            if let Ok(Err(e)) = tokio::time::timeout(limit, ask).await {
                tracing::debug!(id = n.id, "no meta hand-over: {e}");
            }
            led_since = Some(Instant::now());
        }
    }
}
