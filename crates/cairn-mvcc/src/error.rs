//! The MVCC crate's one error type. The server maps each variant to etcd's
//! exact gRPC status in one table.

use serde::{Deserialize, Serialize};

/// A request the store refuses, deterministically: every replica applying the
/// same command reaches the same rejection, so it can travel through Raft and
/// across nodes as data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A key is empty where one is required.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A value was given together with `ignore_value`.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A lease was given together with `ignore_lease`.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More compares or ops in one branch than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes in one txn branch touch the same key.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// An unknown sort order or target.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// The requested revision was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put names a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant names a lease ID already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant asks for more than the maximum TTL.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A write that adds data while the NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A write checked against an auth store older than one fenced since
    /// (the server re-checks and retries).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// A write while the CORRUPT alarm is raised (members disagree on
    /// their history).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A lease put or revoke by a caller who may not write every key
    /// already on the lease (checked at apply, as etcd does).
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// The first region (which holds the lease table) refuses to revoke
    /// alone a lease that has keys in other regions, and any region other
    /// than the first refuses a put with a lease: both are transactions
    /// across regions, which the host runs instead. Never shown to a
    /// client.
    #[error("etcdserver: a lease holds keys outside the first region")]
    LeaseOutsideFirstRegion,
}

/// MVCC errors: rejections (deterministic) and storage failures (not).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is refused; see [`Rejection`].
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Storage failed; not deterministic, never a client's fault.
    #[error(transparent)]
    Storage(#[from] cairn_storage::Error),
    /// A stored record could not be decoded.
    #[error("corrupt MVCC record: {0}")]
    Corrupt(String),
}

/// Result alias for MVCC operations.
pub type Result<T> = std::result::Result<T, Error>;
