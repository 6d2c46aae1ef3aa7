//! Whether a user may do what a request needs.

use serde::{Deserialize, Serialize};

use crate::state::{AuthState, Perm};
use crate::AuthError;

/// A permission kind (etcd's `authpb.Permission.Type` numbers: READ 0,
/// WRITE 1, READWRITE 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Both.
    ReadWrite,
}

impl PermKind {
    /// From etcd's number.
    pub fn from_i32(n: i32) -> Option<Self> {
        match n {
            0 => Some(Self::Read),
            1 => Some(Self::Write),
            2 => Some(Self::ReadWrite),
            _ => None,
        }
    }

    /// etcd's number.
    pub fn as_i32(self) -> i32 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::ReadWrite => 2,
        }
    }

    fn grants(self, want: PermKind) -> bool {
        self == PermKind::ReadWrite || self == want
    }
}

/// One key range a request reads or writes: `end` empty means the single
/// key, `[0]` every key from `key` on (etcd's range conventions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// Read or Write.
    pub kind: PermKind,
    /// First key.
    pub key: Vec<u8>,
    /// Range end.
    pub end: Vec<u8>,
}

/// What a request needs of its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Only to be a known user (when auth is on).
    User,
    /// The `root` role (etcd's admin calls). `maintenance`: denied with the
    /// auth package's own error, as etcd's maintenance server does.
    Admin { maintenance: bool },
    /// These key ranges.
    Keys(Vec<Need>),
}

/// An interval of keys; `None` end: to the end of the keyspace.
type Interval<'a> = (&'a [u8], Option<&'a [u8]>);

fn interval(p: &Perm) -> Interval<'_> {
    match p.range_end.as_slice() {
        [0] => (&p.key, None),
        [] => (&p.key, Some(&[][..])), // a point; handled by the callers
        end => (&p.key, Some(end)),
    }
}

/// Whether the point `key` lies in one of `perms`.
fn holds_point(perms: &[&Perm], key: &[u8]) -> bool {
    perms.iter().any(|p| match interval(p) {
        (k, Some([])) => k == key,
        (k, None) => key >= k,
        (k, Some(end)) => key >= k && key < end,
    })
}

/// Whether the union of `perms` covers `[key, end)` (`end` `None`: to the
/// end of the keyspace).
fn covers(perms: &[&Perm], key: &[u8], end: Option<&[u8]>) -> bool {
    // Each permission as a half-open interval; a point k is [k, k\0).
    let mut ivs: Vec<(Vec<u8>, Option<Vec<u8>>)> = perms
        .iter()
        .map(|p| match interval(p) {
            (k, Some([])) => {
                let mut e = k.to_vec();
                e.push(0);
                (k.to_vec(), Some(e))
            }
            (k, e) => (k.to_vec(), e.map(<[u8]>::to_vec)),
        })
        .collect();
    ivs.sort();
    // Sweep: `reached` is how far from `key` on everything is covered.
    let mut reached: Vec<u8> = key.to_vec();
    for (start, stop) in ivs {
        if start.as_slice() > reached.as_slice() {
            break; // a gap
        }
        match stop {
            None => return true,
            Some(stop) if stop > reached => reached = stop,
            Some(_) => {}
        }
        if end.is_some_and(|e| reached.as_slice() >= e) {
            return true;
        }
    }
    false
}

/// The keys one user may write, as of one auth revision: taken along with
/// a write to where the store's contents are known (apply), for checks on
/// keys the request does not name — etcd's `checkLeasePuts`: a lease put
/// or revoke needs write permission on every key already on the lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writable(Vec<Perm>);

impl Writable {
    /// Whether the user may write `key`.
    pub fn allows(&self, key: &[u8]) -> bool {
        holds_point(&self.0.iter().collect::<Vec<_>>(), key)
    }
}

impl AuthState {
    /// What `user` may write; `None`: anything (auth off, or root). An
    /// unknown user may write nothing.
    pub fn writable(&self, user: Option<&str>) -> Option<Writable> {
        if !self.enabled {
            return None;
        }
        let Some(u) = user.and_then(|n| self.users.get(n)) else {
            return Some(Writable(Vec::new()));
        };
        if u.is_root() {
            return None;
        }
        let perms = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| p.kind.grants(PermKind::Write))
            .cloned()
            .collect();
        Some(Writable(perms))
    }

    /// Whether `user` (`None`: no credentials) may do what `needs` says.
    /// Always yes while auth is off.
    pub fn check(&self, user: Option<&str>, needs: &Needs) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.ok_or(AuthError::UserEmpty)?;
        let Some(u) = self.users.get(name) else {
            return Err(match needs {
                Needs::Admin { maintenance: true } => AuthError::AdminDenied,
                Needs::Admin { .. } => AuthError::UserNotFound,
                _ => AuthError::PermissionDenied,
            });
        };
        if u.is_root() {
            return Ok(());
        }
        match needs {
            Needs::User => Ok(()),
            Needs::Admin { maintenance: true } => Err(AuthError::AdminDenied),
            Needs::Admin { .. } => Err(AuthError::PermissionDenied),
            Needs::Keys(list) => {
                let perms: Vec<&Perm> = u
                    .roles
                    .iter()
                    .filter_map(|r| self.roles.get(r))
                    .flat_map(|r| r.perms.iter())
                    .collect();
                for need in list {
                    let of_kind: Vec<&Perm> = perms
                        .iter()
                        .copied()
                        .filter(|p| p.kind.grants(need.kind))
                        .collect();
                    let ok = match need.end.as_slice() {
                        [] => holds_point(&of_kind, &need.key),
                        [0] => covers(&of_kind, &need.key, None),
                        end => covers(&of_kind, &need.key, Some(end)),
                    };
                    if !ok {
                        return Err(AuthError::PermissionDenied);
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AuthCmd, ROOT};

    fn perm(kind: PermKind, key: &str, end: &[u8]) -> Perm {
        Perm {
            kind,
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
        }
    }

    fn need(kind: PermKind, key: &str, end: &[u8]) -> Needs {
        Needs::Keys(vec![Need {
            kind,
            key: key.as_bytes().to_vec(),
            end: end.to_vec(),
        }])
    }

    /// alice: read foo/ prefix, readwrite foo/b, write [w1, w5), and [x, y)
    /// + [y, z) as two pieces.
    fn store() -> AuthState {
        let mut s = AuthState::default();
        for c in [
            AuthCmd::UserAdd {
                name: ROOT.into(),
                password: None,
            },
            AuthCmd::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCmd::UserAdd {
                name: "alice".into(),
                password: None,
            },
            AuthCmd::RoleAdd { name: "r".into() },
            AuthCmd::RoleGrantPermission {
                role: "r".into(),
                perm: perm(PermKind::Read, "foo/", b"foo0"),
            },
            AuthCmd::RoleGrantPermission {
                role: "r".into(),
                perm: perm(PermKind::ReadWrite, "foo/b", b""),
            },
            AuthCmd::RoleGrantPermission {
                role: "r".into(),
                perm: perm(PermKind::Write, "w1", b"w5"),
            },
            AuthCmd::RoleGrantPermission {
                role: "r".into(),
                perm: perm(PermKind::Read, "x", b"y"),
            },
            AuthCmd::RoleGrantPermission {
                role: "r".into(),
                perm: perm(PermKind::Read, "y", b"z"),
            },
            AuthCmd::UserGrantRole {
                user: "alice".into(),
                role: "r".into(),
            },
            AuthCmd::Enable,
        ] {
            s.apply(&c).unwrap();
        }
        s
    }

    #[test]
    fn writable_keys_are_the_write_permissions_of_the_user() {
        let s = store();
        let w = s.writable(Some("alice")).expect("alice is limited");
        assert!(w.allows(b"foo/b"), "readwrite point");
        assert!(w.allows(b"w1") && w.allows(b"w4\xff"));
        assert!(!w.allows(b"w5"), "end is exclusive");
        assert!(!w.allows(b"foo/a"), "read-only prefix");
        assert!(!w.allows(b"x"), "read-only range");
        let nobody = s.writable(Some("mallory")).expect("unknown: limited");
        assert!(!nobody.allows(b"foo/b"));
        assert!(!s.writable(None).expect("no user").allows(b"w1"));
        assert_eq!(s.writable(Some(ROOT)), None, "root writes anything");
        assert_eq!(
            AuthState::default().writable(Some("alice")),
            None,
            "auth off"
        );
    }

    #[test]
    fn ranges_points_and_kinds_are_checked_like_etcd() {
        let s = store();
        let a = Some("alice");
        assert!(s.check(a, &need(PermKind::Read, "foo/a", b"")).is_ok());
        assert!(s.check(a, &need(PermKind::Read, "foo/", b"foo0")).is_ok());
        assert!(s.check(a, &need(PermKind::Read, "foo/a", b"foo/c")).is_ok());
        assert!(
            s.check(a, &need(PermKind::Read, "foo/", b"fop")).is_err(),
            "past the prefix"
        );
        assert!(s.check(a, &need(PermKind::Write, "foo/a", b"")).is_err());
        assert!(s.check(a, &need(PermKind::Write, "foo/b", b"")).is_ok());
        assert!(s.check(a, &need(PermKind::Write, "w3", b"")).is_ok());
        assert!(
            s.check(a, &need(PermKind::Write, "w5", b"")).is_err(),
            "end is exclusive"
        );
        assert!(
            s.check(a, &need(PermKind::Read, "w3", b"")).is_err(),
            "write-only"
        );
        assert!(
            s.check(a, &need(PermKind::Read, "x", b"z")).is_ok(),
            "two adjacent pieces cover it"
        );
        assert!(s.check(a, &need(PermKind::Read, "x", b"z0")).is_err());
        assert!(s.check(a, &need(PermKind::Read, "", &[0])).is_err());
        assert!(s.check(a, &need(PermKind::Read, "foo/", &[0])).is_err());
        assert!(s
            .check(Some(ROOT), &need(PermKind::Write, "", &[0]))
            .is_ok());
        assert_eq!(s.check(None, &Needs::User), Err(AuthError::UserEmpty));
        assert_eq!(
            s.check(Some("nobody"), &need(PermKind::Read, "foo/a", b"")),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check(a, &Needs::Admin { maintenance: false }),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check(a, &Needs::Admin { maintenance: true }),
            Err(AuthError::AdminDenied)
        );
    }

    #[test]
    fn open_ended_permissions_cover_everything_after() {
        let mut s = store();
        s.apply(&AuthCmd::RoleGrantPermission {
            role: "r".into(),
            perm: perm(PermKind::Read, "m", &[0]),
        })
        .unwrap();
        let a = Some("alice");
        assert!(s.check(a, &need(PermKind::Read, "m", &[0])).is_ok());
        assert!(s.check(a, &need(PermKind::Read, "zzz", b"")).is_ok());
        assert!(s.check(a, &need(PermKind::Read, "a", &[0])).is_err());
    }

    #[test]
    fn management_follows_etcds_rules() {
        let mut s = AuthState::default();
        assert_eq!(s.apply(&AuthCmd::Enable), Err(AuthError::RootUserNotExist));
        s.apply(&AuthCmd::UserAdd {
            name: ROOT.into(),
            password: None,
        })
        .unwrap();
        assert_eq!(s.apply(&AuthCmd::Enable), Err(AuthError::RootRoleNotExist));
        s.apply(&AuthCmd::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        })
        .unwrap();
        let before = s.revision;
        s.apply(&AuthCmd::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        })
        .unwrap();
        assert_eq!(s.revision, before, "a repeated grant changes nothing");
        s.apply(&AuthCmd::Enable).unwrap();
        assert!(s.revision > before);
        assert_eq!(
            s.apply(&AuthCmd::UserDelete { name: ROOT.into() }),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(&AuthCmd::UserRevokeRole {
                user: ROOT.into(),
                role: ROOT.into()
            }),
            Err(AuthError::InvalidAuthMgmt)
        );
        s.apply(&AuthCmd::RoleAdd { name: "r".into() }).unwrap();
        assert_eq!(
            s.apply(&AuthCmd::RoleAdd { name: "r".into() }),
            Err(AuthError::RoleAlreadyExist)
        );
        assert_eq!(
            s.apply(&AuthCmd::RoleAdd { name: "".into() }),
            Err(AuthError::RoleEmpty)
        );
        assert_eq!(
            s.apply(&AuthCmd::RoleGrantPermission {
                role: "r".into(),
                perm: perm(PermKind::Read, "b", b"a")
            }),
            Err(AuthError::InvalidAuthMgmt)
        );
        s.apply(&AuthCmd::RoleGrantPermission {
            role: "r".into(),
            perm: perm(PermKind::Read, "b", b""),
        })
        .unwrap();
        s.apply(&AuthCmd::RoleGrantPermission {
            role: "r".into(),
            perm: perm(PermKind::Write, "a", b""),
        })
        .unwrap();
        s.apply(&AuthCmd::RoleGrantPermission {
            role: "r".into(),
            perm: perm(PermKind::ReadWrite, "b", b""),
        })
        .unwrap();
        let perms = s.role_perms("r").unwrap();
        assert_eq!(perms.len(), 2, "the same range is updated, not added");
        assert_eq!(perms[0].key, b"a", "sorted by key");
        assert_eq!(perms[1].kind, PermKind::ReadWrite);
        assert_eq!(
            s.apply(&AuthCmd::RoleRevokePermission {
                role: "r".into(),
                key: b"c".to_vec(),
                range_end: vec![]
            }),
            Err(AuthError::PermissionNotGranted)
        );
        s.apply(&AuthCmd::UserAdd {
            name: "u".into(),
            password: None,
        })
        .unwrap();
        s.apply(&AuthCmd::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        })
        .unwrap();
        s.apply(&AuthCmd::RoleDelete { name: "r".into() }).unwrap();
        assert!(
            s.users["u"].roles.is_empty(),
            "a deleted role is taken from its users"
        );
        assert_eq!(s.role_perms(ROOT), None, "root is a role only once added");
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<AuthState>(&bytes).unwrap(), s);
    }
}
