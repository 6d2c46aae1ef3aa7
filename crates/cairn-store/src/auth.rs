//! Authentication and access checks on a node: who the caller is, whether
//! it may, and the fence that makes an auth change take effect at once.
//!
//! The auth store lives in the meta region (`Applied::auth`, changed by
//! `Command::Auth`), so every member holds a replica of it and checks
//! requests locally, without a round trip. A local replica can lag, so
//! every change is **fenced** before it is acknowledged: after the meta
//! region commits it, the node proposes `Command::AuthFence{revision}` to
//! the data region. Then:
//!
//! - a client write travels as `Command::Checked{auth_revision}` — the auth
//!   revision it was checked against (`Command::CheckedLease`, with the
//!   caller's writable ranges, for a lease put or revoke by a limited
//!   caller: the keys already on the lease are checked at apply, etcd's
//!   `checkLeasePuts`) — and the data region refuses it at
//!   apply (`AuthOldRevision`) if a newer revision was fenced before it in
//!   the log; the node catches its meta replica up and checks again
//!   ([`Node::checked_submit`]), so a write ordered after a revoke is
//!   checked against the revoke;
//! - a read, once its view is established (linearizable: applied past the
//!   read index), is checked against a meta replica at least as new as
//!   every fence in that view ([`Node::authorize`]); so a read that starts
//!   after a revoke returned is checked against it;
//! - a refusal is only ever given by a replica caught up with the meta
//!   region (a read index there), so a grant acknowledged through another
//!   member is never refused by a lagging one.
//!
//! That is etcd's guarantee (there, auth changes and KV share one log),
//! kept with the auth store in the meta region, where it stays valid when
//! the keyspace is split (each data region would get the fence).
//!
//! Callers are named by a token — simple (`Authenticate` registers it on
//! every member through the meta region) or a JWT (signed; any member
//! holding the public key checks it; one issued before the current auth
//! revision is old, as in etcd) — or, failing that, by the common name of
//! their verified TLS client certificate (etcd's rule under
//! `--client-cert-auth`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cairn_auth::{AuthCmd, AuthError, Needs, SimpleTokens, Writable};
use cairn_mvcc::Rejection;
use cairn_raft::{AuthStamp, Command, Reply};

use crate::remote::{ForwardOk, ForwardOp};
use crate::{Error, Node, Result, TokenConfig, META_REGION};

/// How a request names its caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The `token` (or `authorization`) metadata.
    pub token: Option<String>,
    /// The common name of the caller's verified TLS client certificate.
    pub common_name: Option<String>,
}

/// Who asks, and what for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The node itself (lease expiry, internal reads): never checked.
    Internal,
    /// A client with `creds`, needing `needs`.
    Client {
        /// Its credentials.
        creds: Credentials,
        /// What the request needs.
        needs: Needs,
    },
}

impl Access {
    /// A client request.
    pub fn client(creds: &Credentials, needs: Needs) -> Self {
        Access::Client {
            creds: creds.clone(),
            needs,
        }
    }
}

/// Seconds since the Unix epoch (JWT times).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Attempts at a write refused as checked against an old auth revision.
const AUTH_ATTEMPTS: usize = 5;

/// Distinguishes tokens minted by this process (etcd's token suffix).
static MINTED: AtomicU64 = AtomicU64::new(0);

impl Node {
    /// The auth store revision of this member's meta replica.
    pub fn auth_revision(&self) -> u64 {
        self.meta_shared().with_applied(|a| a.auth.revision)
    }

    /// A copy of this member's auth store (for the Auth service's reads).
    pub fn auth_state(&self) -> cairn_auth::AuthState {
        self.meta_shared().with_applied(|a| a.auth.clone())
    }

    pub(crate) fn meta_shared(&self) -> std::sync::Arc<cairn_raft::RegionShared> {
        self.region(META_REGION)
            .expect("the meta region is always hosted")
            .shared
            .clone()
    }

    /// The user a valid token names on this member (a simple token's TTL
    /// starts again).
    pub fn token_user(&self, token: &str) -> Option<String> {
        let creds = Credentials {
            token: Some(token.to_string()),
            common_name: None,
        };
        self.user_of(&creds, 0).ok().flatten()
    }

    /// Brings this member's meta replica up to everything committed before
    /// the call (a read index on the meta region).
    pub async fn catch_up_auth(&self) -> Result<()> {
        self.linearizable_view(META_REGION).await.map(|_| ())
    }

    /// The user `creds` name (`None`: no credentials). A JWT issued
    /// before the auth store's current revision is old, as in etcd.
    fn user_of(&self, creds: &Credentials, revision: u64) -> Result<Option<String>> {
        let Some(token) = &creds.token else {
            return Ok(creds.common_name.clone());
        };
        if let TokenConfig::Jwt(keys) = &self.config.auth_tokens {
            let (user, issued_at) = keys.verify(token, unix_now())?;
            if issued_at < revision {
                return Err(Error::Auth(AuthError::AuthOldRevision));
            }
            return Ok(Some(user));
        }
        self.meta_shared()
            .tokens
            .lock()
            .user(token, Instant::now())
            .map(Some)
            .ok_or(Error::Auth(AuthError::InvalidAuthToken))
    }

    /// Checks a lease renewal on a keep-alive stream an authorized caller
    /// opened, against this member's auth replica as it is: its user must
    /// still exist and meet `access` (a deleted user's renewals stop), but
    /// a JWT issued before a later auth change still renews. etcd checks
    /// nothing there; refusing the old revision ended every JWT client's
    /// keep-alive stream at every auth change, unrelated ones too, and a
    /// client that does not re-authenticate when it opens a stream again
    /// lost its leases.
    pub fn authorize_renewal(&self, access: &Access) -> Result<()> {
        let Access::Client { creds, needs } = access else {
            return Ok(());
        };
        if !self.meta_shared().with_applied(|a| a.auth.enabled) {
            return Ok(());
        }
        let user = self.user_of(creds, 0)?;
        self.meta_shared()
            .with_applied(|a| a.auth.check(user.as_deref(), needs))?;
        Ok(())
    }

    /// Checks `access` against this member's auth replica as it is; the
    /// auth revision checked against (`None` for internal access).
    fn authorize_local(&self, access: &Access) -> Result<Option<u64>> {
        let Access::Client { creds, needs } = access else {
            return Ok(None);
        };
        let (enabled, revision) = self
            .meta_shared()
            .with_applied(|a| (a.auth.enabled, a.auth.revision));
        if !enabled {
            return Ok(Some(revision));
        }
        // A JWT issued before the current revision still names an admin:
        // etcd's IsAdminPermitted reads no revision (a root client with an
        // old token could otherwise neither manage auth nor run the
        // maintenance calls, whose error clientv3 does not refresh on).
        let token_revision = match needs {
            Needs::Admin { .. } => 0,
            _ => revision,
        };
        let user = self.user_of(creds, token_revision)?;
        self.meta_shared().with_applied(|a| {
            // Checked under the same revision the caller is stamped with.
            if a.auth.revision != revision {
                return Err(Error::Auth(AuthError::AuthOldRevision));
            }
            a.auth.check(user.as_deref(), needs)?;
            Ok(Some(revision))
        })
    }

    /// Checks `access` against an auth replica at least as new as every
    /// fence the data region has applied here (call it after a read's
    /// view is established: then every change acknowledged before the
    /// read began is in force). Returns the auth revision checked against.
    pub async fn authorize(&self, access: &Access) -> Result<Option<u64>> {
        let admin = match access {
            Access::Internal => return Ok(None),
            Access::Client { needs, .. } => matches!(needs, Needs::Admin { .. }),
        };
        // The newest fence any data region here has applied (at least the
        // one of the region a read is served from).
        let fence = self.auth_fence();
        let (enabled, revision) = self
            .meta_shared()
            .with_applied(|a| (a.auth.enabled, a.auth.revision));
        // The common case, one look each at two records: auth is off in a
        // replica as new as every fence this member has applied.
        if !enabled && !admin && revision >= fence {
            return Ok(Some(revision));
        }
        // Admin calls (auth changes, backups, hashes) are rare and their
        // effects are not ordered by the data region: always checked
        // against a caught-up replica.
        if admin || revision < fence {
            self.catch_up_auth().await?;
        }
        match self.authorize_local(access) {
            // Refused by this replica as it is: a grant acknowledged a
            // moment ago through another member, a token registered there,
            // or a change applied while checking may not be here yet. A
            // refusal must come from a state at least as new as every
            // change acknowledged before the request: catch up, look again.
            Err(Error::Auth(_)) => {
                self.catch_up_auth().await?;
                self.authorize_local(access)
            }
            other => other,
        }
    }

    /// [`Node::authorize`] against a replica caught up with the meta region
    /// first, for checks no later apply repeats (a watch's creation) — when
    /// auth is on here. With auth off here, a watch is checked as etcd
    /// checks it, against the local replica: catching up on every watch
    /// of a cluster without auth would cost a quorum round each, and an
    /// `auth enable` acknowledged a moment ago elsewhere reaches this
    /// replica within a heartbeat.
    pub async fn authorize_fresh(&self, access: &Access) -> Result<Option<u64>> {
        let enabled = self.meta_shared().with_applied(|a| a.auth.enabled);
        if enabled && !matches!(access, Access::Internal) {
            self.catch_up_auth().await?;
        }
        self.authorize(access).await
    }

    /// Submits a client write stamped with the auth revision it was
    /// checked against; a write refused because a newer revision was
    /// fenced first is checked again against the new state and retried.
    /// `lease_keys`: the write puts keys on a lease or revokes one, so the
    /// caller's writable keys travel along (unless it may write anything)
    /// for the check of the keys already on the lease at apply.
    pub(crate) async fn checked_submit(
        &self,
        region: u64,
        access: &Access,
        op: ForwardOp,
        lease_keys: bool,
    ) -> Result<ForwardOk> {
        let mut trimmed = false;
        let mut attempts = 0;
        while attempts < AUTH_ATTEMPTS {
            attempts += 1;
            let (stamped, writable) = match self.authorize(access).await? {
                Some(revision) => {
                    let writable = if lease_keys {
                        match self.writable_at(access, revision) {
                            Ok(w) => w,
                            // The store moved on since the check: again.
                            Err(Error::Auth(AuthError::AuthOldRevision)) => continue,
                            Err(e) => return Err(e),
                        }
                    } else {
                        None
                    };
                    let stamp = AuthStamp {
                        revision,
                        writable: writable.clone(),
                    };
                    (ForwardOp::stamped(stamp, op.clone()), writable)
                }
                None => (op.clone(), None),
            };
            match self.submit(region, stamped).await? {
                ForwardOk::Reply(Reply::Rejected(Rejection::AuthOldRevision)) => {
                    self.catch_up_auth().await?;
                }
                // A key on the lease the caller may not write — or one
                // detached outside the first region that its index still
                // names: trimmed, then checked once more (not an attempt
                // of its own). Nothing to trim: the refusal stands. A trim
                // that failed answers its own (retryable) error: the
                // refusal is not known to be right, and a wrong refusal
                // is an answer etcd would not give.
                refused @ ForwardOk::Reply(Reply::Rejected(Rejection::PermissionDenied))
                    if lease_keys && !trimmed =>
                {
                    trimmed = true;
                    attempts -= 1;
                    let Some(writable) = writable else {
                        return Ok(refused);
                    };
                    if !self.trim_lease_index(&leases_of(&op), &writable).await? {
                        return Ok(refused);
                    }
                }
                other => return Ok(other),
            }
        }
        Err(Error::Rejected(Rejection::AuthOldRevision))
    }

    /// The keys the caller of `access` may write as of auth `revision`
    /// (`None`: anything); `AuthOldRevision` if this replica moved past it.
    fn writable_at(&self, access: &Access, revision: u64) -> Result<Option<Writable>> {
        let Access::Client { creds, .. } = access else {
            return Ok(None);
        };
        let meta = self.meta_shared();
        let stale = |now: u64| now != revision;
        // Enabled or not as of the very revision the check saw; with auth
        // off the caller's credentials are not looked at (as in the check).
        let (enabled, now) = meta.with_applied(|a| (a.auth.enabled, a.auth.revision));
        if stale(now) {
            return Err(Error::Auth(AuthError::AuthOldRevision));
        }
        if !enabled {
            return Ok(None);
        }
        let user = self.user_of(creds, revision)?;
        meta.with_applied(|a| {
            if stale(a.auth.revision) {
                return Err(Error::Auth(AuthError::AuthOldRevision));
            }
            Ok(a.auth.writable(user.as_deref()))
        })
    }

    /// Applies an auth change (the caller must be admin, checked here) and
    /// fences it in the data region before returning the new revision.
    /// The change is stamped with the auth revision its admin check saw
    /// and refused at apply if the store changed meanwhile (then checked
    /// again), so a caller whose admin role was just taken away cannot
    /// slip a change in behind the revoke.
    pub async fn auth_change(&self, creds: &Credentials, cmd: AuthCmd) -> Result<u64> {
        // Enabling needs no admin while auth is off (everyone is then).
        let admin = Access::client(creds, Needs::Admin { maintenance: false });
        let outcome = self
            .checked_submit(
                META_REGION,
                &admin,
                ForwardOp::Plain(Command::Auth(cmd)),
                false,
            )
            .await?
            .auth()?;
        match outcome {
            Ok(revision) => {
                self.fence_auth(revision).await?;
                Ok(revision)
            }
            Err(e) => {
                // Refused (say, a revoke retried after a fence that failed):
                // fence what is there, so an earlier change that was
                // committed but never fenced is in force before the caller
                // hears "not granted" — or the caller hears why it is not
                // (and retries), never a refusal that implies it is.
                self.catch_up_auth().await?;
                self.fence_auth(self.auth_revision()).await?;
                Err(Error::Auth(e))
            }
        }
    }

    /// Fences auth `revision` in every data region, then waits until this
    /// member's meta replica has it (so this caller's next request here is
    /// checked against it).
    async fn fence_auth(&self, revision: u64) -> Result<()> {
        self.propose_everywhere(Command::AuthFence { revision })
            .await?
            .applied()?;
        if self.auth_revision() < revision {
            self.catch_up_auth().await?;
        }
        Ok(())
    }

    /// etcd's `Authenticate`: checks the password (against an up-to-date
    /// replica: a password changed a moment ago counts) and registers a
    /// new simple token on every member; returns it once this member has
    /// it.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String> {
        for _ in 0..AUTH_ATTEMPTS {
            self.catch_up_auth().await?;
            let (enabled, revision, hash) = self.meta_shared().with_applied(|a| {
                let hash = a.auth.users.get(name).map(|u| u.password.clone());
                (a.auth.enabled, a.auth.revision, hash)
            });
            if !enabled {
                return Err(Error::Auth(AuthError::AuthNotEnabled));
            }
            // No such user, or one without a password: the same answer.
            let Some(Some(hash)) = hash else {
                return Err(Error::Auth(AuthError::AuthFailed));
            };
            let password = password.to_string();
            let ok =
                tokio::task::spawn_blocking(move || cairn_auth::password::verify(&password, &hash))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
            if !ok {
                return Err(Error::Auth(AuthError::AuthFailed));
            }
            // The token names the auth revision the password was checked
            // at: a JWT is then refused once the store changes, and a
            // simple token is registered only if the store is still there
            // (a password changed during the check voids it).
            if let TokenConfig::Jwt(keys) = &self.config.auth_tokens {
                return Ok(keys.sign(name, revision, unix_now())?);
            }
            let token = SimpleTokens::mint(MINTED.fetch_add(1, Ordering::Relaxed));
            let cmd = Command::AuthToken {
                token: token.clone(),
                user: name.to_string(),
            };
            let op = ForwardOp::Checked {
                auth: revision,
                op: Box::new(ForwardOp::Plain(cmd)),
            };
            match self.submit(META_REGION, op).await?.auth() {
                Ok(r) => r?,
                Err(Error::Rejected(Rejection::AuthOldRevision)) => continue,
                Err(e) => return Err(e),
            };
            self.catch_up_auth().await?;
            return Ok(token);
        }
        Err(Error::Auth(AuthError::AuthOldRevision))
    }

    /// The bcrypt hash of a new password at this member's cost.
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        let (password, cost) = (password.to_string(), self.config.bcrypt_cost);
        tokio::task::spawn_blocking(move || cairn_auth::password::hash(&password, cost))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(Error::Internal)
    }
}

/// The leases a lease write (`checked_submit`'s `lease_keys`) puts keys on
/// or revokes.
fn leases_of(op: &ForwardOp) -> Vec<i64> {
    match op {
        ForwardOp::Txn(b) => {
            <cairn_api::etcdserverpb::TxnRequest as prost::Message>::decode(b.as_slice())
                .map(|t| cairn_raft::leases_put(&t))
                .unwrap_or_default()
        }
        ForwardOp::Revoke(id) => vec![*id],
        ForwardOp::Plain(cmd) => cairn_raft::leases_written(cmd),
        _ => Vec::new(),
    }
}
