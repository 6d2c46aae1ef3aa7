//! # cairn-mvcc: etcd's revision model on an [`Engine`](cairn_storage::Engine)
//!
//! etcd keeps every version of every key, addressed by *revision*: each
//! write transaction gets one revision, every key it touches records it as
//! `mod_revision`, and a read may ask for the store "as of" any revision not
//! yet compacted. This crate implements exactly that model — `Range`, `Put`,
//! `DeleteRange`, `Txn` (compares, nested txns, read-your-writes inside a
//! txn) and `Compact` with etcd's semantics — as pure, synchronous functions
//! over a storage snapshot that return a [`WriteBatch`](cairn_storage::WriteBatch)
//! for the caller to commit.
//!
//! Revisions are chosen by the caller (in Cairn: a TSO commit timestamp, so
//! they are strictly increasing but not dense). Nothing here reads a clock or
//! a random source: given the same stored state, request and revision, the
//! result and the batch are byte-identical on every replica. That is the
//! state-machine contract Raft needs.
//!
//! Layout (see `cairn_storage::keys`): every version is stored under
//! `MvccVersion(key, revision)`; the newest live version also under
//! `MvccLatest(key)`, so reads at the current revision scan one record per
//! key. A delete writes a tombstone version and removes the latest record.
//! Every version is also indexed under `MvccByRevision(revision, key)`,
//! valued with the place of the op that wrote it in its transaction
//! ([`Change`]; after a restore, etcd's sub-revision), so a watcher's replay of `[from, to]` reads
//! that window, not the span's whole history, and gets each revision's
//! events in etcd's order ([`history`]; a store written before the index
//! existed is completed when a node opens it: [`complete_index`]).
//!
//! Invariants:
//! - `create_revision`, `mod_revision`, `version` follow etcd: a put on an
//!   absent key creates (version 1, create = mod = rev), a delete resets the
//!   key's life; a txn's writes all carry the txn's revision.
//! - A transaction that changes nothing does not consume its revision.
//! - Compaction at `c` keeps, for each key, the newest version `<= c` unless
//!   it is a tombstone below `c`, and every version above `c`. The versions
//!   it drops may stay stored until a background [`sweep`] reaches them:
//!   no read at or above `c` returns them, and [`hash_kv`] skips them.
//! - Once the index is marked complete, it holds exactly one entry per
//!   stored version: written in the version's batch, dropped in the batch
//!   that drops the version.

mod by_revision;
mod change;
mod compact;
mod error;
mod hash;
mod history;
pub mod lease;
pub mod locks;
mod range;
mod record;
mod share;
pub mod snapshot;
#[cfg(test)]
mod test_rng;
mod txn;
mod validate;

pub use by_revision::{complete_index, index_complete};
pub use change::{decode_sub, encode_sub, Change};
pub use compact::{compact, compact_range, compacted, sweep};
pub use error::{Error, Rejection, Result};
pub use hash::{hash_kv, hash_kv_range, hash_kv_ranges, KvHash};
pub use history::{history, without_prev_at};
pub use range::{part_request, range, range_parts, Span};
pub use record::Record;
pub use share::{key_range_minus, user_key, Share};
pub use txn::{
    apply_txn, apply_txn_part, has_put, is_read_only, is_serializable, leases_put_along, read_txn,
    read_txn_at, set_header_revision, LeaseView, NoLeases, TxnOutcome,
};
pub use validate::{
    normalize_compares, validate_delete, validate_put, validate_range, validate_txn,
    validate_txn_request, Limits,
};

/// The revision bookkeeping of an MVCC store, owned by the caller (the
/// region's apply state) and passed in and out of every operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revisions {
    /// The revision of the newest applied write transaction (0: none yet).
    pub current: i64,
    /// Versions older than this were compacted away (0: never compacted).
    pub compacted: i64,
}
