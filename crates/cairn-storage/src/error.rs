//! The storage crate's one error type.

/// Errors from an [`crate::Engine`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying engine failed (I/O, corruption detected by the engine).
    #[error("storage engine: {0}")]
    Engine(String),
    /// A scan asked for keys across two internal keyspaces.
    #[error("scan range crosses keyspaces: {0}")]
    CrossSpaceScan(String),
    /// A stored key or value could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A bbolt file (an etcd snapshot) could not be read or written.
    #[error("{0}")]
    Bolt(String),
}

/// Result alias for storage operations.
pub type Result<T> = std::result::Result<T, Error>;

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Self {
        Error::Engine(e.to_string())
    }
}
