//! The API edge's one error type and THE table from internal errors to
//! etcd's gRPC status codes and messages (etcd's `rpctypes`). Every service
//! returns errors through [`to_status`]; no other place builds a `Status`
//! from an internal error.

use cairn_auth::AuthError;
use cairn_mvcc::Rejection;
use tonic::{Code, Status};

/// Errors a service handler can produce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the store (routing, Raft, MVCC rejections).
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    /// The request exceeds `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A Lock or Campaign waiter's own key vanished while it waited (its
    /// lease expired or was revoked): it holds nothing. The message is
    /// etcd's (`concurrency.ErrSessionExpired`), code Unknown as etcd's
    /// lock server returns it.
    #[error("{0}")]
    SessionExpired(&'static str),
}

impl From<cairn_mvcc::Error> for Error {
    fn from(e: cairn_mvcc::Error) -> Self {
        Error::Store(e.into())
    }
}

/// The etcd code for each rejection.
fn rejection_code(r: Rejection) -> Code {
    match r {
        Rejection::EmptyKey
        | Rejection::KeyNotFound
        | Rejection::ValueProvided
        | Rejection::LeaseProvided
        | Rejection::TooManyOps
        | Rejection::DuplicateKey
        | Rejection::InvalidSortOption => Code::InvalidArgument,
        Rejection::Compacted | Rejection::FutureRevision => Code::OutOfRange,
        Rejection::LeaseNotFound => Code::NotFound,
        Rejection::LeaseExists => Code::FailedPrecondition,
        Rejection::LeaseTtlTooLarge => Code::OutOfRange,
        Rejection::NoSpace => Code::ResourceExhausted,
        Rejection::Corrupt => Code::DataLoss,
        Rejection::AuthOldRevision => Code::InvalidArgument,
        Rejection::PermissionDenied => Code::PermissionDenied,
        // Internal (the store runs a transaction across regions instead).
        Rejection::LeaseOutsideFirstRegion => Code::Unavailable,
    }
}

/// The etcd code for each auth error (etcd's `rpctypes`).
fn auth_code(e: &AuthError) -> Code {
    use AuthError as A;
    match e {
        A::RootUserNotExist
        | A::RootRoleNotExist
        | A::UserAlreadyExist
        | A::UserNotFound
        | A::RoleAlreadyExist
        | A::RoleNotFound
        | A::RoleNotGranted
        | A::PermissionNotGranted
        | A::AuthNotEnabled => Code::FailedPrecondition,
        A::UserEmpty
        | A::RoleEmpty
        | A::AuthFailed
        | A::PermissionNotGiven
        | A::InvalidAuthMgmt
        | A::AuthOldRevision => Code::InvalidArgument,
        A::PermissionDenied => Code::PermissionDenied,
        A::InvalidAuthToken => Code::Unauthenticated,
        // etcd's maintenance server returns its auth package's error as is.
        A::AdminDenied => Code::Unknown,
    }
}

/// The one mapping from internal errors to etcd's gRPC statuses.
pub fn to_status(e: Error) -> Status {
    use cairn_store::Error as S;
    let code = match &e {
        Error::RequestTooLarge => Code::InvalidArgument,
        Error::SessionExpired(_) => Code::Unknown,
        Error::Store(S::Rejected(r)) => rejection_code(*r),
        Error::Store(S::NoLeader) => Code::Unavailable,
        Error::Store(S::NotLeader { .. }) => Code::FailedPrecondition,
        Error::Store(S::Timeout) => Code::Unavailable,
        Error::Store(S::Stopped) => Code::Unavailable,
        Error::Store(S::Internal(_)) => Code::Internal,
        Error::Store(S::Refused(_)) => Code::Unavailable,
        Error::Store(S::BadLeaderTransferee) => Code::FailedPrecondition,
        Error::Store(S::LeaderTransferTimeout) => Code::Unavailable,
        Error::Store(S::EpochMismatch) => Code::Unavailable,
        Error::Store(S::SpansRegions) => Code::Unimplemented,
        Error::Store(S::Locked(_)) | Error::Store(S::RolledBack) => Code::Unavailable,
        Error::Store(S::Auth(a)) => auth_code(a),
    };
    Status::new(code, e.to_string())
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        to_status(e)
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        Error::Store(cairn_store::Error::Rejected(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_etcd() {
        let cases: Vec<(Error, Code, &str)> = vec![
            (
                Rejection::EmptyKey.into(),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                Rejection::DuplicateKey.into(),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                Rejection::TooManyOps.into(),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                Rejection::Compacted.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                Rejection::FutureRevision.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                Rejection::LeaseNotFound.into(),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                Rejection::NoSpace.into(),
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                Error::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                cairn_store::Error::NoLeader.into(),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                cairn_store::Error::Timeout.into(),
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                cairn_store::Error::Auth(AuthError::PermissionDenied).into(),
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                cairn_store::Error::Auth(AuthError::UserEmpty).into(),
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                cairn_store::Error::Auth(AuthError::InvalidAuthToken).into(),
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                cairn_store::Error::Auth(AuthError::RootUserNotExist).into(),
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                cairn_store::Error::Auth(AuthError::AdminDenied).into(),
                Code::Unknown,
                "auth: permission denied",
            ),
        ];
        for (e, code, msg) in cases {
            let s = to_status(e);
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }
}
