//! The auth store in etcd's backup file: the buckets etcd 3.4's bbolt
//! database keeps it in, so a backup carries users, roles and whether auth
//! is on — from Cairn to etcd and back, as `etcdctl snapshot save` and
//! restore do for etcd.
//!
//! - `auth`: `authEnabled` (one byte, 1 or 0) and `authRevision` (eight
//!   bytes, big-endian);
//! - `authUsers`: user name → `authpb.User` (the bcrypt hash as the
//!   password, roles, `no_password`);
//! - `authRoles`: role name → `authpb.Role` (its key permissions).
//!
//! Entries are sorted by key, as a bbolt bucket holds them.

use cairn_api::authpb;
use prost::Message;

use crate::check::PermKind;
use crate::state::{AuthState, Perm, Role, User};

/// Bucket `auth`.
pub const AUTH: &[u8] = b"auth";
/// Bucket `authUsers`.
pub const USERS: &[u8] = b"authUsers";
/// Bucket `authRoles`.
pub const ROLES: &[u8] = b"authRoles";
const ENABLED: &[u8] = b"authEnabled";
const REVISION: &[u8] = b"authRevision";

/// One bucket's entries, sorted by key.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The three buckets for `s`, in bucket-name order.
pub fn to_buckets(s: &AuthState) -> Vec<(&'static [u8], Entries)> {
    let auth = vec![
        (ENABLED.to_vec(), vec![u8::from(s.enabled)]),
        (REVISION.to_vec(), s.revision.to_be_bytes().to_vec()),
    ];
    let roles = s
        .roles
        .iter()
        .map(|(name, r)| {
            let role = authpb::Role {
                name: name.clone().into_bytes(),
                key_permission: r
                    .perms
                    .iter()
                    .map(|p| authpb::Permission {
                        perm_type: p.kind.as_i32(),
                        key: p.key.clone(),
                        range_end: p.range_end.clone(),
                    })
                    .collect(),
            };
            (name.clone().into_bytes(), role.encode_to_vec())
        })
        .collect();
    let users = s
        .users
        .iter()
        .map(|(name, u)| {
            let user = authpb::User {
                name: name.clone().into_bytes(),
                password: u.password.clone().unwrap_or_default().into_bytes(),
                roles: u.roles.clone(),
                options: Some(authpb::UserAddOptions {
                    no_password: u.password.is_none(),
                }),
            };
            (name.clone().into_bytes(), user.encode_to_vec())
        })
        .collect();
    // Byte order of the names: auth < authRoles < authUsers.
    vec![(AUTH, auth), (ROLES, roles), (USERS, users)]
}

/// The auth store the three buckets describe (an absent bucket: empty).
pub fn from_buckets(auth: &Entries, users: &Entries, roles: &Entries) -> Result<AuthState, String> {
    let mut s = AuthState::default();
    for (k, v) in auth {
        match k.as_slice() {
            ENABLED => s.enabled = v.as_slice() == [1],
            REVISION => {
                let b = <[u8; 8]>::try_from(v.as_slice())
                    .map_err(|_| format!("authRevision of {} bytes", v.len()))?;
                s.revision = u64::from_be_bytes(b);
            }
            _ => {}
        }
    }
    let text = |b: &[u8], what: &str| {
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} name is not UTF-8"))
    };
    for (k, v) in roles {
        let r = authpb::Role::decode(v.as_slice()).map_err(|e| format!("role record: {e}"))?;
        let mut perms = r
            .key_permission
            .into_iter()
            .map(|p| {
                Ok(Perm {
                    kind: PermKind::from_i32(p.perm_type)
                        .ok_or_else(|| format!("permission type {}", p.perm_type))?,
                    key: p.key,
                    range_end: p.range_end,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        perms.sort_by(|a, b| a.key.cmp(&b.key));
        s.roles.insert(text(k, "role")?, Role { perms });
    }
    for (k, v) in users {
        let u = authpb::User::decode(v.as_slice()).map_err(|e| format!("user record: {e}"))?;
        let no_password = u.options.is_some_and(|o| o.no_password) || u.password.is_empty();
        let mut roles = u.roles;
        roles.sort();
        roles.dedup();
        s.users.insert(
            text(k, "user")?,
            User {
                password: (!no_password)
                    .then(|| text(&u.password, "password"))
                    .transpose()?,
                roles,
            },
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AuthCmd, ROOT};

    #[test]
    fn the_auth_store_goes_through_etcds_buckets_unchanged() {
        let mut s = AuthState::default();
        for c in [
            AuthCmd::UserAdd {
                name: ROOT.into(),
                password: Some("$2a$04$hashhashhash".into()),
            },
            AuthCmd::UserAdd {
                name: "cert-only".into(),
                password: None,
            },
            AuthCmd::RoleAdd { name: ROOT.into() },
            AuthCmd::RoleAdd { name: "r".into() },
            AuthCmd::RoleGrantPermission {
                role: "r".into(),
                perm: Perm {
                    kind: PermKind::Write,
                    key: b"a/".to_vec(),
                    range_end: b"a0".to_vec(),
                },
            },
            AuthCmd::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCmd::UserGrantRole {
                user: "cert-only".into(),
                role: "r".into(),
            },
            AuthCmd::Enable,
        ] {
            s.apply(&c).unwrap();
        }
        let b = to_buckets(&s);
        let names: Vec<&[u8]> = b.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "buckets in name order");
        for (_, entries) in &b {
            assert!(
                entries.windows(2).all(|w| w[0].0 < w[1].0),
                "entries in key order"
            );
        }
        let back = from_buckets(&b[0].1, &b[2].1, &b[1].1).unwrap();
        assert_eq!(back, s);
        assert!(back.enabled && back.revision == s.revision);
        assert_eq!(
            from_buckets(&vec![], &vec![], &vec![]).unwrap(),
            AuthState::default()
        );
        let bad = vec![(b"x".to_vec(), b"\xff\xff".to_vec())];
        assert!(from_buckets(&vec![], &bad, &vec![]).is_err());
    }
}
