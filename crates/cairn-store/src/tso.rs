//! The timestamp oracle (TSO), served by the meta region's leader.
//!
//! A timestamp is `physical milliseconds << 18 | logical`: strictly
//! increasing, roughly wall-clock, and 2^18 per millisecond before the
//! physical part runs ahead. The leader persists a *high-water mark* through
//! the meta region's Raft log and hands out timestamps below it from memory;
//! one Raft write covers a 3-second window. A new leader first catches up
//! (read-index) and starts at or above the persisted mark, so no timestamp is
//! ever issued twice and none is lower than one a previous leader could have
//! issued.

use std::time::{SystemTime, UNIX_EPOCH};

use cairn_raft::{Command, Raft, RegionShared};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use std::sync::Arc;

use crate::{Error, Result};

const LOGICAL_BITS: u32 = 18;
const WINDOW_MS: i64 = 3_000;

/// Now as a timestamp with logical part 0.
pub fn physical_now() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    ms << LOGICAL_BITS
}

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
}

impl Tso {
    /// The TSO of node `me` over the meta region.
    pub fn new(me: u64, meta: Raft, shared: Arc<RegionShared>) -> Self {
        Self {
            me,
            meta,
            shared,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// Allocates `count` consecutive timestamps; returns the first.
    pub async fn allocate(&self, count: u32) -> Result<i64> {
        let mut st = self.state.lock().await;
        let (leader, term) = {
            let m = self.meta.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(self.me) {
            return Err(Error::NotLeader { leader });
        }
        if st.term != term {
            self.meta
                .ensure_linearizable()
                .await
                .map_err(read_index_error)?;
            st.last = st.last.max(self.shared.tso_high_water());
            st.window_end = 0;
            st.term = term;
        }
        let now = physical_now();
        let first = (st.last + 1).max(now);
        let end = first + i64::from(count.max(1));
        if end > st.window_end {
            let high_water = end.max(now + (WINDOW_MS << LOGICAL_BITS));
            self.meta
                .client_write(Command::TsoWindow { high_water })
                .await
                .map_err(write_error)?;
            st.window_end = high_water;
        }
        st.last = end - 1;
        Ok(first)
    }
}

/// Maps a failed read-index on any region to a store error.
pub(crate) fn read_index_error(
    e: RaftError<u64, CheckIsLeaderError<u64, openraft::BasicNode>>,
) -> Error {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => Error::Timeout,
        RaftError::Fatal(_) => Error::Stopped,
    }
}

/// Maps a failed proposal on any region to a store error.
pub(crate) fn write_error(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Internal(e.to_string())
        }
        RaftError::Fatal(_) => Error::Stopped,
    }
}
