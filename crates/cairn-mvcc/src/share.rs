//! A data region's share of the engine: what belongs to a region holding
//! the user keys of a [`KeyRange`] (and the leases, if it keeps them).
//!
//! Regions on one node share one engine, and the MVCC keyspaces are not
//! prefixed by region: user keys order them (`cairn_storage::keys`). So a
//! region's state is
//! - its slice of the versions (`0x10`) and latest records (`0x11`), each
//!   one contiguous engine range, because both encodings keep user-key
//!   order;
//! - its entries of the by-revision index (`0x13 | revision | key`), which
//!   are spread through that index by revision and found by their key;
//! - the lease space (`0x12`), whole, for the region that keeps leases;
//! - the index's completeness marker, for a region holding every key (a
//!   region's share of an incomplete index cannot vouch for the rest).
//!
//! [`Share::scan`] reads that state (a snapshot's bytes) and
//! [`Share::clear`] deletes it (before installing a snapshot): both touch
//! nothing outside the share, so installing one region's snapshot leaves
//! every other region's keys as they were.

use std::ops::Bound;

use cairn_storage::keys::{decode_by_revision, EngineRange, Key, KeyRange, Space};
use cairn_storage::{KvPair, Snapshot, WriteBatch};

use crate::Result;

/// Keys [`Share::size_and_middle`] remembers at most.
pub const MARKS_KEPT: usize = 1024;

/// The engine state of a data region (see the module essay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The user keys the region holds.
    pub range: KeyRange,
    /// Whether the region keeps the leases.
    pub leases: bool,
}

fn space(s: Space) -> EngineRange {
    (
        Bound::Included(vec![s as u8]),
        Bound::Excluded(vec![s as u8 + 1]),
    )
}

impl Share {
    /// Every key and the leases: the one data region before any split.
    pub fn everything() -> Self {
        Self {
            range: KeyRange::all(),
            leases: true,
        }
    }

    /// True when `encoded` (a by-revision index key, or the marker) is
    /// this share's.
    fn owns_index_key(&self, encoded: &[u8]) -> bool {
        if encoded == Key::MvccByRevisionComplete.encode() {
            return self.range.is_all();
        }
        decode_by_revision(encoded).is_ok_and(|(_, key)| self.range.contains(key))
    }

    /// Bytes of the share's live keys and values in `view`: its latest
    /// records (the newest version of each live key), keys included. One
    /// scan of that range; history and tombstones are not counted.
    pub fn live_bytes(&self, view: &dyn Snapshot) -> Result<u64> {
        let [_, (lo, hi)] = self.range.mvcc_ranges();
        let mut total = 0u64;
        for pair in view.scan(lo, hi, false) {
            let (k, v) = pair?;
            total += (k.len() + v.len()) as u64;
        }
        Ok(total)
    }

    /// [`Share::live_bytes`], and the live key nearest the middle of
    /// them (by bytes): where a split leaves two halves of equal size.
    /// One scan; it remembers a key every `step` bytes (at least one byte),
    /// and past [`MARKS_KEPT`] keys every other one with the step doubled,
    /// so memory stays bounded however large the share and the middle is
    /// found within `total / MARKS_KEPT` bytes. `None` when the share holds
    /// no key past its first.
    pub fn size_and_middle(
        &self,
        view: &dyn Snapshot,
        step: u64,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let [_, (lo, hi)] = self.range.mvcc_ranges();
        let mut step = step.max(1);
        let mut total = 0u64;
        let mut marks: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next_mark = 0u64;
        for pair in view.scan(lo, hi, false) {
            let (k, v) = pair?;
            if total >= next_mark {
                if marks.len() == MARKS_KEPT {
                    let mut i = 0;
                    marks.retain(|_| {
                        i += 1;
                        i % 2 == 1
                    });
                    step = step.saturating_mul(2);
                }
                let key = cairn_storage::keys::decode_latest(&k)?.to_vec();
                marks.push((total, key));
                next_mark = total + step;
            }
            total += (k.len() + v.len()) as u64;
        }
        // The first mark is the first key: splitting there leaves one side
        // empty.
        let middle = marks
            .into_iter()
            .skip(1)
            .min_by_key(|(at, _)| at.abs_diff(total / 2))
            .map(|(_, key)| key);
        Ok((total, middle))
    }

    /// Every stored pair of the share in `view`, in engine order.
    pub fn scan<'a>(
        &'a self,
        view: &'a dyn Snapshot,
    ) -> impl Iterator<Item = cairn_storage::Result<KvPair>> + 'a {
        let [versions, latest] = self.range.mvcc_ranges();
        let leases = self.leases.then(|| space(Space::Lease));
        let (ilo, ihi) = space(Space::MvccByRevision);
        let plain = [Some(versions), Some(latest), leases]
            .into_iter()
            .flatten()
            .flat_map(move |(lo, hi)| view.scan(lo, hi, false));
        let index = view
            .scan(ilo, ihi, false)
            .filter(move |item| item.as_ref().map_or(true, |(k, _)| self.owns_index_key(k)));
        plain.chain(index)
    }

    /// Adds to `batch` the deletion of everything of the share in `view`.
    /// A share of every key is cleared with one range delete per space;
    /// otherwise the by-revision index is read to find the share's entries.
    pub fn clear(&self, view: &dyn Snapshot, batch: &mut WriteBatch) -> Result<()> {
        let range = |(lo, hi): EngineRange| match (lo, hi) {
            (Bound::Included(lo), Bound::Excluded(hi)) => (lo, hi),
            _ => unreachable!("key ranges are [included, excluded)"),
        };
        if self.leases {
            let (lo, hi) = range(space(Space::Lease));
            batch.delete_range(lo, hi);
        }
        if self.range.is_all() {
            for s in [Space::MvccVersion, Space::MvccLatest, Space::MvccByRevision] {
                let (lo, hi) = range(space(s));
                batch.delete_range(lo, hi);
            }
            return Ok(());
        }
        for r in self.range.mvcc_ranges() {
            let (lo, hi) = range(r);
            batch.delete_range(lo, hi);
        }
        let (lo, hi) = space(Space::MvccByRevision);
        for key in view.scan_keys(lo, hi) {
            let key = key?;
            if self.owns_index_key(&key) {
                batch.delete(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cairn_api::etcdserverpb::request_op::Request;
    use cairn_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
    use cairn_storage::keys::{decode_by_revision, decode_version};
    use cairn_storage::{Durability, Engine, MemoryEngine};

    use super::*;
    use crate::{apply_txn, compact_range, hash_kv_range, lease, NoLeases, Revisions};

    fn put(engine: &MemoryEngine, revs: Revisions, key: &[u8]) -> Revisions {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let out = apply_txn(engine, &txn, revs.current + 1, revs, &NoLeases).unwrap();
        engine.write(out.batch, Durability::Buffered).unwrap();
        out.revisions
    }

    /// Keys on both sides of `[b, m)` and at its edges (a prefix of the
    /// end with a zero byte after it, too), each written twice, and a lease.
    fn store() -> (MemoryEngine, Revisions) {
        let e = MemoryEngine::new();
        let mut revs = Revisions::default();
        for _ in 0..2 {
            for k in [&b"a"[..], b"b", b"b\x00", b"l\xff", b"m", b"m\x00", b"z"] {
                revs = put(&e, revs, k);
            }
        }
        e.write(
            lease::grant(&*e.snapshot(), 7, 60).unwrap(),
            Durability::Buffered,
        )
        .unwrap();
        (e, revs)
    }

    /// The user key a stored MVCC pair is about (None: not a version,
    /// latest record or index entry).
    fn user_key(k: &[u8]) -> Option<Vec<u8>> {
        match k.first().copied() {
            Some(0x10) => decode_version(k).ok().map(|(u, _)| u),
            Some(0x11) => Some(k[1..].to_vec()),
            Some(0x13) if k.len() > 1 => decode_by_revision(k).ok().map(|(_, u)| u.to_vec()),
            _ => None,
        }
    }

    fn keys(e: &MemoryEngine) -> Vec<Vec<u8>> {
        let view = e.snapshot();
        view.scan(Bound::Unbounded, Bound::Unbounded, false)
            .map(|kv| kv.unwrap().0)
            .collect()
    }

    fn middle() -> Share {
        Share {
            range: KeyRange::new(b"b".to_vec(), b"m".to_vec()),
            leases: false,
        }
    }

    #[test]
    fn a_share_reads_and_clears_its_keys_only() {
        let (e, _) = store();
        let inside = |k: &[u8]| user_key(k).is_some_and(|u| middle().range.contains(&u));
        let view = e.snapshot();
        let got: Vec<Vec<u8>> = middle().scan(&*view).map(|kv| kv.unwrap().0).collect();
        let want: Vec<Vec<u8>> = keys(&e).into_iter().filter(|k| inside(k)).collect();
        // b, b\0, l\xff: two versions, one latest record, two index
        // entries each.
        assert_eq!(want.len(), 15);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted, want,
            "exactly the share's versions, latest records and index entries"
        );

        let mut batch = WriteBatch::new();
        middle().clear(&*view, &mut batch).unwrap();
        e.write(batch, Durability::Buffered).unwrap();
        let left = keys(&e);
        assert!(left.iter().all(|k| !inside(k)), "the share is gone");
        let before = keys_outside(&store().0, inside);
        assert_eq!(keys_outside(&e, inside), before, "everything else stays");
        assert!(
            left.contains(&Key::MvccByRevisionComplete.encode()),
            "a partial share leaves the index marker"
        );
        assert!(
            left.iter().any(|k| k[0] == Space::Lease as u8),
            "and the leases"
        );
    }

    fn keys_outside(e: &MemoryEngine, inside: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        keys(e).into_iter().filter(|k| !inside(k)).collect()
    }

    #[test]
    fn the_middle_key_halves_the_live_bytes() {
        let e = MemoryEngine::new();
        let mut revs = Revisions::default();
        // More keys than marks kept: with step 1 the marks are thinned.
        let n = 3 * MARKS_KEPT;
        let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:05}").into_bytes()).collect();
        for k in &keys {
            revs = put(&e, revs, k);
        }
        let view = e.snapshot();
        let all = Share::everything();
        let total = all.live_bytes(&*view).unwrap();
        for step in [1, 50, 300] {
            let (size, middle) = all.size_and_middle(&*view, step).unwrap();
            assert_eq!(size, total);
            let middle = middle.expect("many keys have a middle");
            let i = keys.iter().position(|k| *k == middle).unwrap();
            assert!(
                i.abs_diff(n / 2) <= n / 50,
                "step {step}: middle at key {i} of {n}"
            );
        }
        // The keys of [b, m) in store(): three of them, so a middle that
        // is not the first; one key has none.
        let (e, _) = store();
        let (_, m) = middle().size_and_middle(&*e.snapshot(), 1).unwrap();
        assert!(m.is_some_and(|k| k.as_slice() > &b"b"[..] && k.as_slice() < &b"m"[..]));
        let one = Share {
            range: KeyRange::new(b"y".to_vec(), Vec::new()),
            leases: false,
        };
        assert_eq!(one.size_and_middle(&*e.snapshot(), 1).unwrap().1, None);
    }

    #[test]
    fn the_whole_share_is_every_mvcc_key_and_the_leases() {
        let (e, _) = store();
        let view = e.snapshot();
        let mut got: Vec<Vec<u8>> = Share::everything()
            .scan(&*view)
            .map(|kv| kv.unwrap().0)
            .collect();
        got.sort();
        assert_eq!(got, keys(&e));
        let mut batch = WriteBatch::new();
        Share::everything().clear(&*view, &mut batch).unwrap();
        e.write(batch, Durability::Buffered).unwrap();
        assert!(keys(&e).is_empty());
    }

    #[test]
    fn compaction_and_hash_of_a_range_see_its_keys_only() {
        let (e, revs) = store();
        let (batch, after) =
            compact_range(&*e.snapshot(), revs.current, revs, &middle().range).unwrap();
        // Each key in range loses its older version and index entry.
        let deleted: Vec<Vec<u8>> = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                cairn_storage::Op::Delete(k) => user_key(k),
                _ => None,
            })
            .collect();
        assert_eq!(deleted.len(), 6);
        assert!(
            deleted.iter().all(|u| middle().range.contains(u)),
            "{deleted:?}"
        );
        assert_eq!(after.compacted, revs.current);

        // A change outside the range leaves the range's hash as it was.
        let h = |e: &MemoryEngine, revs| hash_kv_range(e, 0, revs, &middle().range).unwrap().hash;
        let before = h(&e, revs);
        let revs2 = put(&e, revs, b"z");
        assert_eq!(h(&e, revs2), before);
        let revs3 = put(&e, revs2, b"c");
        assert_ne!(h(&e, revs3), before);
    }
}
