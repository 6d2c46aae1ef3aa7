//! # cairn-storage: the ordered byte store under everything
//!
//! Every byte Cairn keeps on a node — Raft logs and hard state of every region
//! replica, each region's apply state and metadata, and the MVCC data itself —
//! lives in one [`Engine`]: an ordered map from byte keys to byte values with
//! atomic write batches and point-in-time snapshots.
//!
//! Keys are never raw: [`keys::Key`] is a typed internal key whose first byte
//! names its keyspace ([`keys::Space`]) so the Raft log, Raft state, apply
//! state, region metadata and MVCC data never collide, and whose encoding
//! preserves the order the layers above need (log indexes ascending, MVCC
//! versions of one user key adjacent and ascending by revision, and again
//! in a by-revision index ordered by revision, then key).
//!
//! Two engines implement the trait: [`FjallEngine`] (the LSM tree `fjall`,
//! one physical fjall keyspace per internal keyspace so the churn of Raft logs
//! never compacts together with user data) and [`MemoryEngine`] (a `BTreeMap`,
//! for tests). [`conformance`] is one suite both must pass. fjall also
//! keeps the keys of the MVCC latest index (one per live user key) counted
//! in memory, captured by every snapshot (`counted_keys`), so a Range's
//! `count` over any span costs microseconds ([`Snapshot::count_keys`]).
//!
//! Invariants:
//! - A [`WriteBatch`] is atomic: after a crash either all of it is visible or
//!   none. With [`Durability::Sync`] it is on stable storage when `write`
//!   returns; this is how "applied index written atomically with the data"
//!   and "acknowledged means durable" are kept.
//! - A scan never crosses a keyspace boundary: callers scan within one space.
//! - Everything here is synchronous and deterministic; no async, no clocks.

pub mod bolt;
pub mod conformance;
mod counted_keys;
mod engine;
mod error;
mod fjall_engine;
mod journal_bound;
mod journal_sync;
pub mod keys;
mod memory;
mod overlay;
mod quiet_flush;

pub use engine::{Durability, Engine, KeyIter, KvIter, KvPair, Op, Snapshot, WriteBatch};
pub use error::{Error, Result};
pub use fjall_engine::FjallEngine;
pub use memory::MemoryEngine;
pub use overlay::Overlay;
