//! The Raft crate's one error type.

/// Errors of the replication layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stored or received bytes did not decode.
    #[error("codec: {0}")]
    Codec(String),
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] cairn_storage::Error),
    /// A snapshot file could not be read or written.
    #[error("snapshot io: {0}")]
    Io(String),
    /// MVCC failed non-deterministically (storage).
    #[error(transparent)]
    Mvcc(#[from] cairn_mvcc::Error),
    /// A replica would not take what a peer sent (a snapshot older than
    /// its state): the peer tries again later.
    #[error("refused: {0}")]
    Refused(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
