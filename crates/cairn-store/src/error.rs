//! The store crate's one error type. It is serializable because it crosses
//! nodes when a request is forwarded to a region's leader.

use cairn_mvcc::Rejection;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

/// Errors of the multi-region host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The request was refused deterministically (bad input, revisions).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// No leader is known for the region (election in progress, no quorum).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// This replica is not the leader; retry at `leader` (internal only).
    #[error("etcdserver: not leader")]
    NotLeader {
        /// The leader this replica believes in, if any.
        leader: Option<u64>,
    },
    /// The request was proposed but its outcome is unknown in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The node is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Something failed inside the node (storage, codec).
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
    /// MoveLeader named a member that cannot lead (not a voter).
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// Authentication or permission failure (etcd's auth errors).
    #[error(transparent)]
    Auth(#[from] cairn_auth::AuthError),
    /// MoveLeader did not see the new leader elected in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// The request was routed by a region directory older than a split:
    /// nothing was applied; route again (internal until the retries run out).
    #[error("etcdserver: region epoch mismatch (the request's route is stale)")]
    EpochMismatch,
    /// The request needs keys of several regions, which is not built yet
    /// (regions split only in tests until it is).
    #[error("etcdserver: a request across regions is not supported yet")]
    SpansRegions,
    /// The request met a lock of a transaction across regions that did
    /// not go in time (internal: resolved and retried until the request's
    /// time runs out).
    #[error("etcdserver: request timed out, waiting for a transaction's lock")]
    Locked(cairn_mvcc::locks::LockRef),
    /// A transaction across regions was rolled back by another request
    /// that found it stalled (internal: the coordinator starts it again).
    #[error("etcdserver: request timed out, transaction rolled back")]
    RolledBack,
    /// A member could not read a forwarded request (a member of an older
    /// version, which answers `InvalidArgument`): it did nothing.
    #[error("etcdserver: a member could not read the request: {0}")]
    Refused(String),
}

impl Error {
    /// True when nothing was proposed, so the request may be retried elsewhere.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NoLeader | Error::NotLeader { .. })
    }
}

impl From<cairn_raft::Error> for Error {
    fn from(e: cairn_raft::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<cairn_storage::Error> for Error {
    fn from(e: cairn_storage::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<cairn_mvcc::Error> for Error {
    fn from(e: cairn_mvcc::Error) -> Self {
        match e {
            cairn_mvcc::Error::Rejected(r) => Error::Rejected(r),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

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
