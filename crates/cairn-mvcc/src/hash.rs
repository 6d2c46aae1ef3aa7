//! `HashKV`: a checksum of the key-value history up to a revision, for
//! telling whether replicas hold the same data (etcd's corruption check).
//!
//! The hash covers every version compaction keeps (puts and tombstones,
//! key and record bytes) with revision at or below the one asked for, in
//! storage order: replicas that applied the same entries, and the same
//! compaction, hash equal however far each has swept the versions that
//! compaction drops (`compact`); a replica whose bytes differ does not. As
//! in etcd, two hashes are comparable only at the same revision and the
//! same compaction revision, which is why the answer carries both. The values
//! are Cairn's own (CRC-32 over Cairn's encoding), not etcd's.

use cairn_storage::keys::{self, KeyRange};
use cairn_storage::Snapshot;

use crate::compact::Kept;
use crate::range::read_revision;
use crate::{Result, Revisions};

/// A replica's hash of its history up to a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 of the versions at or below `revision`.
    pub hash: u32,
    /// The revision hashed up to (the current one when 0 was asked for).
    pub revision: i64,
    /// The replica's compaction revision when hashed.
    pub compacted: i64,
}

/// Hashes the versions in `read` at or below `rev` (0: the current
/// revision). Fails as a read at `rev` would (future or compacted).
pub fn hash_kv(read: &dyn Snapshot, rev: i64, revs: Revisions) -> Result<KvHash> {
    hash_kv_range(read, rev, revs, &KeyRange::all())
}

/// [`hash_kv`] of the versions of keys in `range` only (a region's).
pub fn hash_kv_range(
    read: &dyn Snapshot,
    rev: i64,
    revs: Revisions,
    range: &KeyRange,
) -> Result<KvHash> {
    let revision = read_revision(rev, revs)?;
    hash_kv_ranges([(read, revs, range)], revision)
}

/// [`hash_kv`] at revision `rev` (> 0) of several key ranges, each read
/// from its own view at its own revisions, given in key order: the hash of
/// one scan over their union, however the keys are divided among them (a
/// store split into regions hashes as it did whole).
///
/// Every range is hashed as compacted at the highest of their compaction
/// revisions, which is the one the answer carries: a range still below it
/// holds every version a compaction there keeps (compactions only move
/// up, and which versions one at `c` keeps depends only on the history at
/// or below `c`), so a member part-way through applying a compaction to
/// its regions hashes what it will once all have, and equal answers on
/// equal data carry equal hashes. Fails as a read at `rev` of the store
/// compacted there would.
pub fn hash_kv_ranges<'a>(
    parts: impl IntoIterator<Item = (&'a dyn Snapshot, Revisions, &'a KeyRange)>,
    rev: i64,
) -> Result<KvHash> {
    let parts: Vec<_> = parts.into_iter().collect();
    let compacted = parts.iter().map(|p| p.1.compacted).max().unwrap_or(0);
    let mut hasher = crc32fast::Hasher::new();
    for (read, revs, range) in parts {
        let revision = read_revision(rev, Revisions { compacted, ..revs })?;
        let (lo, hi) = keys::version_range(&range.start, range.end_bound());
        let versions = read
            .scan(lo, hi, false)
            .map(|item| item.map(|(k, v)| (k, Some(v))));
        // What compaction keeps, whether or not this replica's sweep has
        // dropped the rest yet.
        for v in Kept::new(versions, compacted, read) {
            let v = v?;
            if v.keep && v.revision <= revision {
                hasher.update(&v.stored);
                hasher.update(v.value.as_deref().unwrap_or_default());
            }
        }
    }
    Ok(KvHash {
        hash: hasher.finalize(),
        revision: rev,
        compacted,
    })
}

#[cfg(test)]
mod tests {
    use cairn_api::etcdserverpb::request_op::Request;
    use cairn_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
    use cairn_storage::{Durability, Engine, MemoryEngine};

    use super::*;
    use crate::{apply_txn, NoLeases};

    fn put(engine: &MemoryEngine, revs: Revisions, key: &str, value: &str) -> Revisions {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.into(),
                    value: value.into(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let out = apply_txn(engine, &txn, revs.current + 1, revs, &NoLeases).unwrap();
        engine.write(out.batch, Durability::Buffered).unwrap();
        out.revisions
    }

    #[test]
    fn equal_histories_hash_equal_and_any_difference_shows() {
        let (a, b) = (MemoryEngine::new(), MemoryEngine::new());
        let (mut ra, mut rb) = (Revisions::default(), Revisions::default());
        for (k, v) in [("x", "1"), ("y", "2"), ("x", "3")] {
            ra = put(&a, ra, k, v);
            rb = put(&b, rb, k, v);
        }
        let h = |e: &MemoryEngine, rev, revs| hash_kv(e, rev, revs).unwrap();
        assert_eq!(h(&a, 0, ra), h(&b, 0, rb));
        assert_eq!(h(&a, 0, ra).revision, 3);
        // Up to revision 2 both agree, and differ from the whole history.
        assert_eq!(h(&a, 2, ra), h(&b, 2, rb));
        assert_ne!(h(&a, 2, ra).hash, h(&a, 3, ra).hash);
        // One more write on one side: its current hash differs, its hash
        // at the old revision does not.
        let rb2 = put(&b, rb, "z", "4");
        assert_ne!(h(&a, 0, ra).hash, h(&b, 0, rb2).hash);
        assert_eq!(h(&a, 3, ra).hash, h(&b, 3, rb2).hash);
        // A corrupted byte shows.
        let c = MemoryEngine::new();
        let mut rc = Revisions::default();
        for (k, v) in [("x", "1"), ("y", "2"), ("x", "4")] {
            rc = put(&c, rc, k, v);
        }
        assert_ne!(h(&a, 0, ra).hash, h(&c, 0, rc).hash);
        assert!(hash_kv(&a, 9, ra).is_err(), "a future revision fails");
    }

    #[test]
    fn a_store_divided_into_ranges_hashes_as_it_did_whole() {
        let e = MemoryEngine::new();
        let mut revs = Revisions::default();
        for (k, v) in [("a", "1"), ("m", "2"), ("z", "3"), ("m", "4"), ("b", "5")] {
            revs = put(&e, revs, k, v);
        }
        let whole = hash_kv(&e, 4, revs).unwrap();
        let (left, right) = (KeyRange::new(b"", b"c"), KeyRange::new(b"c", b""));
        let parts = |l: &KeyRange, r: &KeyRange| {
            hash_kv_ranges(
                [
                    (&e as &dyn Snapshot, revs, l),
                    (&e as &dyn Snapshot, revs, r),
                ],
                4,
            )
        };
        assert_eq!(parts(&left, &right).unwrap(), whole);
        let (left, right) = (KeyRange::new(b"", b"n"), KeyRange::new(b"n", b""));
        assert_eq!(parts(&left, &right).unwrap(), whole);
        // Out of key order, or with a gap, it differs.
        assert_ne!(parts(&right, &left).unwrap().hash, whole.hash);
        let gap = KeyRange::new(b"n", b"y");
        assert_ne!(parts(&left, &gap).unwrap().hash, whole.hash);
        // A part that has not reached the revision fails the hash.
        let behind = Revisions { current: 3, ..revs };
        let late = hash_kv_ranges([(&e as &dyn Snapshot, behind, &left)], 4);
        assert!(late.is_err());
    }

    #[test]
    fn ranges_part_way_through_a_compaction_hash_as_when_it_is_done() {
        let e = MemoryEngine::new();
        let mut revs = Revisions::default();
        for (k, v) in [("x", "1"), ("y", "2"), ("y", "3"), ("x", "4")] {
            revs = put(&e, revs, k, v);
        }
        let (left, right) = (KeyRange::new(b"", b"m"), KeyRange::new(b"m", b""));
        let hash = |l: i64, r: i64| {
            let at = |compacted| Revisions { compacted, ..revs };
            hash_kv_ranges(
                [
                    (&e as &dyn Snapshot, at(l), &left),
                    (&e as &dyn Snapshot, at(r), &right),
                ],
                4,
            )
            .unwrap()
        };
        // The right range (y@2 dropped at 3) has not applied the
        // compaction at 3 yet: same answer, same hash.
        let done = hash(3, 3);
        assert_eq!(done.compacted, 3);
        assert_eq!(hash(3, 0), done);
        assert_eq!(hash(0, 3), done);
        assert_ne!(hash(0, 0).hash, done.hash, "the compaction shows");
        // Below the highest compaction the hash is refused, as a read of
        // the store there is.
        let refused = hash_kv_ranges(
            [
                (
                    &e as &dyn Snapshot,
                    Revisions {
                        compacted: 3,
                        ..revs
                    },
                    &left,
                ),
                (&e as &dyn Snapshot, revs, &right),
            ],
            2,
        );
        assert!(refused.is_err());
    }
}
