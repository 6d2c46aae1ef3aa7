//! The auth store and the commands that change it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::PermKind;
use crate::AuthError;

/// The name of the administrator user and of its role.
pub const ROOT: &str = "root";

/// A user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// bcrypt hash of the password; `None` for a user added with no
    /// password (it can only be a client certificate's common name).
    pub password: Option<String>,
    /// Granted roles, sorted.
    pub roles: Vec<String>,
}

impl User {
    /// Whether the user holds the `root` role.
    pub fn is_root(&self) -> bool {
        self.roles.iter().any(|r| r == ROOT)
    }
}

/// One key permission of a role (etcd's `authpb.Permission`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    /// READ, WRITE or READWRITE.
    pub kind: PermKind,
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (exclusive); empty: the single key; `[0]`: every
    /// key from `key` on.
    pub range_end: Vec<u8>,
}

/// A role: its permissions, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The permissions.
    pub perms: Vec<Perm>,
}

/// The whole auth store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Whether requests are authenticated and checked.
    pub enabled: bool,
    /// Bumped by every change.
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name (`root` is a role like any other, except that holding
    /// it permits everything).
    pub roles: BTreeMap<String, Role>,
}

/// A change to the auth store (passwords arrive hashed: the serving member
/// hashes, so the log never holds a password).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCmd {
    /// Turn auth on.
    Enable,
    /// Turn auth off.
    Disable,
    /// Add a user; `password` `None`: a user without one.
    UserAdd {
        name: String,
        password: Option<String>,
    },
    /// Delete a user.
    UserDelete { name: String },
    /// Replace a user's password hash.
    UserChangePassword { name: String, password: String },
    /// Grant `role` to `user`.
    UserGrantRole { user: String, role: String },
    /// Take `role` from `user`.
    UserRevokeRole { user: String, role: String },
    /// Add a role.
    RoleAdd { name: String },
    /// Delete a role (and take it from every user).
    RoleDelete { name: String },
    /// Grant a permission to a role (an existing one on the same range
    /// changes kind).
    RoleGrantPermission { role: String, perm: Perm },
    /// Take the permission on exactly `key`..`range_end` from a role.
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// etcd's test of a grantable range: a key (or the empty key with `\0`,
/// every key), then nothing (one key), an end above it, or `\0`.
fn valid_range(key: &[u8], end: &[u8]) -> bool {
    if end == [0] {
        return true;
    }
    !key.is_empty() && (end.is_empty() || end > key)
}

impl AuthState {
    /// Applies `cmd`; on success the revision is bumped (unless nothing
    /// changed: enabling when on, disabling when off). Deterministic.
    pub fn apply(&mut self, cmd: &AuthCmd) -> Result<(), AuthError> {
        let changed = self.change(cmd)?;
        if changed {
            self.revision += 1;
        }
        Ok(())
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, AuthError> {
        self.users.get_mut(name).ok_or(AuthError::UserNotFound)
    }

    fn change(&mut self, cmd: &AuthCmd) -> Result<bool, AuthError> {
        match cmd {
            AuthCmd::Enable => {
                if self.enabled {
                    return Ok(false);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.is_root() {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            AuthCmd::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
            }
            AuthCmd::UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password: password.clone(),
                        roles: Vec::new(),
                    },
                );
            }
            AuthCmd::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthCmd::UserChangePassword { name, password } => {
                let u = self.user_mut(name)?;
                // A user added without a password keeps having none.
                if u.password.is_some() {
                    u.password = Some(password.clone());
                }
            }
            AuthCmd::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.user_mut(user)?;
                match u.roles.binary_search(role) {
                    Ok(_) => return Ok(false),
                    Err(i) => u.roles.insert(i, role.clone()),
                }
            }
            AuthCmd::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.user_mut(user)?;
                let i = u
                    .roles
                    .binary_search(role)
                    .map_err(|_| AuthError::RoleNotGranted)?;
                u.roles.remove(i);
            }
            AuthCmd::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCmd::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.retain(|r| r != name);
                }
            }
            AuthCmd::RoleGrantPermission { role, perm } => {
                if !valid_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let i = r.perms.partition_point(|p| p.key < perm.key);
                match r.perms[i..]
                    .iter_mut()
                    .take_while(|p| p.key == perm.key)
                    .find(|p| p.range_end == perm.range_end)
                {
                    Some(p) => p.kind = perm.kind,
                    None => r.perms.insert(i, perm.clone()),
                }
            }
            AuthCmd::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.perms.len();
                r.perms
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        Ok(true)
    }

    /// The permissions `RoleGet` shows: those granted (for `root` too, as
    /// etcd 3.4 answers — 3.5 shows it read-write on every key, which is
    /// what holding it means); `None` if there is no such role.
    pub fn role_perms(&self, name: &str) -> Option<Vec<Perm>> {
        self.roles.get(name).map(|r| r.perms.clone())
    }
}
