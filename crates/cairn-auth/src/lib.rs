//! # cairn-auth: etcd's users, roles and permissions — the pure core
//!
//! [`AuthState`] is the whole auth store: whether auth is on, its
//! revision, users (bcrypt password hash, granted roles) and roles (key
//! permissions). It changes only by [`AuthState::apply`] of an
//! [`AuthCmd`] — deterministic, so every replica of the meta region that
//! applies the same commands holds the same state — with etcd's rules and
//! errors ([`AuthError`], etcd's messages): `root` must exist and hold the
//! `root` role before auth is enabled, and while it is on neither can be
//! deleted nor the role taken from the user; grants are sorted, a repeated
//! grant updates; every change bumps the revision (enabling too — etcd does
//! not, but here the revision is what fences writes checked against an
//! older state, and a write checked while auth was off must not pass once
//! it is on).
//!
//! [`AuthState::check`] answers whether a user may do what a request
//! [`Needs`] ([`needs`] derives them from etcd requests exactly as etcd's
//! auth applier does: every compare and op of a Txn, recursively; `prev_kv`
//! needs read too). A key range is permitted when the union of the user's
//! permitted intervals of that kind covers it; a single key, when one of
//! them holds it; the `root` role may do anything.
//!
//! [`SimpleTokens`] are etcd's `simple` tokens: random, registered on every
//! member when the meta region applies them, valid for a TTL refreshed on
//! each use; [`jwt`] tokens are signed and checked by key, registered
//! nowhere. [`password`] hashes and checks passwords with bcrypt.
//!
//! Nothing here does I/O or waits; the async shell (`cairn-store`'s auth
//! module) keeps the live state and fences, `cairn-server` maps requests to
//! needs and errors to gRPC statuses.

mod check;
mod error;
pub mod etcd_schema;
pub mod jwt;
pub mod needs;
pub mod password;
mod state;
mod tokens;

pub use check::{Need, Needs, PermKind, Writable};
pub use error::AuthError;
pub use state::{AuthCmd, AuthState, Perm, Role, User, ROOT};
pub use tokens::{SimpleTokens, TOKEN_TTL};
