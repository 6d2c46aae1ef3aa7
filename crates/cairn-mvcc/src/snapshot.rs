//! Snapshots in etcd's format: the MVCC keyspace as the bbolt database etcd
//! keeps, so a snapshot moves between Cairn and etcd in both directions.
//!
//! `etcdctl snapshot save` streams a member's database; etcd's is a bbolt
//! file, and etcd's tools (`etcdctl snapshot status`, `snapshot restore`)
//! read it as one. Cairn writes the same file from its own store
//! ([`export`]): every stored version in the `key` bucket, the leases in
//! `lease`, the compaction revision in `meta` — etcd's schema, so etcd can
//! restore a Cairn snapshot, and `cairn snapshot restore` reads etcd's
//! snapshots with the same code that reads Cairn's ([`import`]).
//!
//! etcd's schema (server/storage/schema, 3.4–3.6):
//! - `key`: one entry per stored version, keyed by its revision — the
//!   main revision (8 bytes, big-endian), `_`, the sub revision (8 bytes,
//!   the op's place within its transaction) and, for a delete, a trailing
//!   `t` — with the `mvccpb.KeyValue` as value (a delete's holds only the
//!   key).
//! - `lease`: lease ID (8 bytes, big-endian) → `leasepb.Lease` (ID, TTL,
//!   remaining TTL of the last checkpoint).
//! - `meta`: `finishedCompactRev` and `scheduledCompactRev` (a revision
//!   key: main, `_`, sub 0) and `consistent_index` (8 bytes, big-endian).
//!   Cairn adds `cairn_revision`, the revision the file holds the store
//!   at, which a restore continues above even where no version has it.
//! - `members`, `members_removed`, `alarm`, `auth*`, `cluster`: cluster
//!   state that a restore replaces or that Cairn keeps elsewhere. Cairn
//!   writes the two member buckets empty (etcd's restore clears them) and
//!   reads none of them.
//!
//! Cairn gives each transaction one revision, as etcd does; within one, the
//! sub revisions number its versions in the order etcd's would (the order
//! their ops ran, a DeleteRange's keys in key order: `crate::change`), and
//! a store restored from a file keeps that order for its watchers. Revisions are Cairn's TSO timestamps,
//! far above etcd's counters: both fit the 8-byte field, and a store
//! restored from etcd continues above etcd's last revision.

mod export;
mod import;

pub use export::{export, export_with, ExtraBuckets};
pub use import::{import, Imported};

/// Bucket names of etcd's schema.
const KEY: &[u8] = b"key";
const LEASE: &[u8] = b"lease";
const META: &[u8] = b"meta";
const MEMBERS: &[u8] = b"members";
const MEMBERS_REMOVED: &[u8] = b"members_removed";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// Cairn's own `meta` key: the revision the file holds the store at (8
/// bytes, big-endian). With several regions that can be above the newest
/// version in the file — a revision handed to a client by a read or an
/// empty Txn — and a restored store must continue above it, or a watcher
/// resuming from there would miss writes. etcd's tools ignore the key.
const CAIRN_REVISION: &[u8] = b"cairn_revision";
/// The suffix of a delete's revision key.
const TOMBSTONE: u8 = b't';

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's revision key: main, `_`, sub (and `t` for a delete).
fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(TOMBSTONE);
    }
    k
}

/// Main revision, sub-revision and delete mark of an etcd revision key.
fn parse_rev_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == TOMBSTONE => true,
        _ => return None,
    };
    (k[8] == b'_').then(|| {
        (
            i64::from_be_bytes(k[..8].try_into().expect("8 bytes")),
            i64::from_be_bytes(k[9..17].try_into().expect("8 bytes")),
            tombstone,
        )
    })
}

#[cfg(test)]
mod tests;
