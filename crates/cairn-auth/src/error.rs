//! Auth errors, with etcd's messages (`rpctypes`); `cairn-server` maps each
//! to etcd's gRPC code.

use serde::{Deserialize, Serialize};

/// Why an auth operation or check failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AuthError {
    /// AuthEnable without a `root` user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while `root` lacks the `root` role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of an existing name.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// No user name (also: a request without credentials while auth is on).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of an existing name.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// RoleAdd with no name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user or password (never says which).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A grant without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// The caller may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is off.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is unknown, expired or revoked.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Deleting root, its role, or taking the role from it while auth is
    /// on; or a permission range that is not one.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// A request checked against an auth state older than one already in
    /// force (retried by the server; a client sees it only if retries run
    /// out).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// An admin-only maintenance call by a non-admin: etcd answers with its
    /// auth package's own error, gRPC code Unknown.
    #[error("auth: permission denied")]
    AdminDenied,
}
