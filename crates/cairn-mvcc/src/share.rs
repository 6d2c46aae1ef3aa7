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
//!
//! Both find a partial share's index entries from its versions, not by
//! walking the index: every index entry has its version (they are written
//! together by `Writer::version` and a restore, and deleted together by
//! compaction, the sweep and `clear`), so the entries of the share's
//! versions are exactly the share's entries — read with one point lookup
//! per version (`scan`) or deleted blind (`clear`). That costs the region's
//! own data: a member catching up R regions by snapshot no longer walks
//! the node's whole index R times. (A version may lack its entry, in a
//! store written before the index existed: then there is none to find, as
//! the walk found none.)

use std::ops::Bound;

use cairn_storage::keys::{decode_by_revision, decode_version, EngineRange, Key, KeyRange, Space};
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

    /// Every stored pair of the share in `view`: its versions, latest
    /// records and leases in engine order, then its index entries (in
    /// engine order for a share of every key, in key order otherwise).
    pub fn scan<'a>(
        &'a self,
        view: &'a dyn Snapshot,
    ) -> impl Iterator<Item = cairn_storage::Result<KvPair>> + 'a {
        let [versions, latest] = self.range.mvcc_ranges();
        let leases = self.leases.then(|| space(Space::Lease));
        let plain = [Some(versions.clone()), Some(latest), leases]
            .into_iter()
            .flatten()
            .flat_map(move |(lo, hi)| view.scan(lo, hi, false));
        let index: Box<dyn Iterator<Item = cairn_storage::Result<KvPair>> + 'a> =
            if self.range.is_all() {
                // Every entry is the share's (and the marker).
                let (lo, hi) = space(Space::MvccByRevision);
                Box::new(view.scan(lo, hi, false).filter(move |item| {
                    item.as_ref().map_or(true, |(k, _)| self.owns_index_key(k))
                }))
            } else {
                Box::new(index_keys(view, versions).filter_map(move |key| match key {
                    Ok(k) => view.get(&k).transpose().map(|v| v.map(|v| (k, v))),
                    Err(e) => Some(Err(e)),
                }))
            };
        plain.chain(index)
    }

    /// Adds to `batch` the deletion of everything of the share in `view`.
    /// A share of every key is cleared with one range delete per space;
    /// otherwise the index entries of the share's versions are deleted one
    /// by one.
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
        let [versions, latest] = self.range.mvcc_ranges();
        for key in index_keys(view, versions.clone()) {
            batch.delete(key?);
        }
        for r in [versions, latest] {
            let (lo, hi) = range(r);
            batch.delete_range(lo, hi);
        }
        Ok(())
    }
}

/// The user key a stored MVCC pair is about (`None`: not a version, a
/// latest record or an index entry).
pub fn user_key(k: &[u8]) -> Option<Vec<u8>> {
    match k.first().copied() {
        Some(b) if b == Space::MvccVersion as u8 => decode_version(k).ok().map(|(u, _)| u),
        Some(b) if b == Space::MvccLatest as u8 => Some(k[1..].to_vec()),
        Some(b) if b == Space::MvccByRevision as u8 && k.len() > 1 => {
            decode_by_revision(k).ok().map(|(_, u)| u.to_vec())
        }
        _ => None,
    }
}

/// The keys of `range` outside every range of `others`, as ranges in key
/// order.
pub fn key_range_minus(range: &KeyRange, others: &[KeyRange]) -> Vec<KeyRange> {
    let mut others: Vec<&KeyRange> = others.iter().collect();
    others.sort_by(|a, b| a.start.cmp(&b.start));
    let mut pieces = Vec::new();
    let mut at = range.start.clone();
    for o in others {
        if !o.end.is_empty() && o.end <= at {
            continue;
        }
        if !range.end.is_empty() && o.start >= range.end {
            break;
        }
        if o.start > at {
            pieces.push(KeyRange::new(at.clone(), o.start.clone()));
        }
        if o.end.is_empty() {
            return pieces;
        }
        at = at.max(o.end.clone());
    }
    if range.end.is_empty() || at < range.end {
        pieces.push(KeyRange::new(at, range.end.clone()));
    }
    pieces
}

impl Share {
    /// [`Share::clear`], except the user keys of `kept` (and their index
    /// entries): what is left of the share between them.
    pub fn clear_except(
        &self,
        view: &dyn Snapshot,
        batch: &mut WriteBatch,
        kept: &[KeyRange],
    ) -> Result<()> {
        if kept.is_empty() {
            return self.clear(view, batch);
        }
        if self.leases {
            let (lo, hi) = space(Space::Lease);
            if let (Bound::Included(lo), Bound::Excluded(hi)) = (lo, hi) {
                batch.delete_range(lo, hi);
            }
        }
        for range in key_range_minus(&self.range, kept) {
            Share {
                range,
                leases: false,
            }
            .clear(view, batch)?;
        }
        Ok(())
    }
}

/// The index key of each version in `versions` (an engine range of
/// version keys), in key order.
fn index_keys<'a>(
    view: &'a dyn Snapshot,
    (lo, hi): EngineRange,
) -> impl Iterator<Item = cairn_storage::Result<Vec<u8>>> + 'a {
    view.scan_keys(lo, hi).map(|k| {
        let (key, revision) = decode_version(&k?)?;
        Ok(Key::MvccByRevision {
            revision,
            key: &key,
        }
        .encode())
    })
}

#[cfg(test)]
mod tests {
    use cairn_api::etcdserverpb::request_op::Request;
    use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
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

    fn keys(e: &MemoryEngine) -> Vec<Vec<u8>> {
        let view = e.snapshot();
        view.scan(Bound::Unbounded, Bound::Unbounded, false)
            .map(|kv| kv.unwrap().0)
            .collect()
    }

    #[test]
    fn a_range_minus_others_is_what_lies_between_them() {
        let r = |s: &str, e: &str| KeyRange::new(s.as_bytes().to_vec(), e.as_bytes().to_vec());
        let minus = |range, others: &[KeyRange]| key_range_minus(&range, others);
        assert_eq!(minus(r("", ""), &[]), vec![r("", "")]);
        assert_eq!(minus(r("", ""), &[r("m", "")]), vec![r("", "m")]);
        assert_eq!(
            minus(r("b", "x"), &[r("p", "r"), r("a", "c"), r("f", "g")]),
            vec![r("c", "f"), r("g", "p"), r("r", "x")]
        );
        assert_eq!(minus(r("b", "x"), &[r("a", "")]), vec![]);
        assert_eq!(
            minus(r("b", "x"), &[r("x", ""), r("", "b")]),
            vec![r("b", "x")]
        );
        assert_eq!(
            minus(r("b", ""), &[r("c", "d"), r("c", "e")]),
            vec![r("b", "c"), r("e", "")]
        );
    }

    #[test]
    fn a_share_cleared_except_some_keys_keeps_exactly_theirs() {
        let (e, _) = store();
        let before = keys(&e);
        let kept = [KeyRange::new(b"b".to_vec(), b"m".to_vec())];
        let mut batch = WriteBatch::new();
        Share::everything()
            .clear_except(&*e.snapshot(), &mut batch, &kept)
            .unwrap();
        e.write(batch, Durability::Buffered).unwrap();
        let inside = |k: &Vec<u8>| user_key(k).is_some_and(|u| kept[0].contains(&u));
        let want: Vec<Vec<u8>> = before
            .into_iter()
            .filter(|k| inside(k) || user_key(k).is_none() && k[0] != Space::Lease as u8)
            .collect();
        assert_eq!(keys(&e), want);
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

    /// The share's index entries as found by walking the whole index
    /// (what `scan` and `clear` did before they went by versions).
    fn walked_index(share: &Share, view: &dyn cairn_storage::Snapshot) -> Vec<KvPair> {
        let (lo, hi) = space(Space::MvccByRevision);
        view.scan(lo, hi, false)
            .map(|kv| kv.unwrap())
            .filter(|(k, _)| share.owns_index_key(k))
            .collect()
    }

    #[test]
    fn a_partial_share_finds_the_index_entries_a_walk_of_the_index_finds() {
        let (e, mut revs) = store();
        // Entries with subs (a transaction of several ops), tombstones,
        // and versions compacted away with their entries.
        let txn = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: b"b".to_vec(),
                        range_end: b"c".to_vec(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"l\xff".to_vec(),
                        value: b"w".to_vec(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"c".to_vec(),
                        value: b"w".to_vec(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let out = apply_txn(&e, &txn, revs.current + 1, revs, &NoLeases).unwrap();
        e.write(out.batch, Durability::Buffered).unwrap();
        revs = out.revisions;
        let (batch, after) =
            compact_range(&*e.snapshot(), revs.current - 3, revs, &KeyRange::all()).unwrap();
        e.write(batch, Durability::Buffered).unwrap();
        revs = put(&e, after, b"m");
        assert!(revs.current > 0);
        let view = e.snapshot();
        for (lo, hi) in [
            (&b"b"[..], &b"m"[..]),
            (b"", b"b\x00"),
            (b"b\x00", b"l\xff\x00"),
            (b"m", b""),
            (b"c", b"d"),
            (b"n", b"o"),
        ] {
            let share = Share {
                range: KeyRange::new(lo.to_vec(), hi.to_vec()),
                leases: false,
            };
            let mut want = walked_index(&share, &*view);
            want.sort();
            let mut got: Vec<KvPair> = share
                .scan(&*view)
                .map(|kv| kv.unwrap())
                .filter(|(k, _)| k[0] == Space::MvccByRevision as u8)
                .collect();
            got.sort();
            assert_eq!(got, want, "the index entries of [{lo:?}, {hi:?})");
            assert!(
                lo != b"b" || want.iter().any(|(_, v)| !v.is_empty()),
                "some entry carries a sub"
            );

            // Cleared: none of its entries is left, and every other is.
            let copy = MemoryEngine::new();
            let mut all = WriteBatch::new();
            for (k, v) in view
                .scan(Bound::Unbounded, Bound::Unbounded, false)
                .map(|kv| kv.unwrap())
            {
                all.put(k, v);
            }
            copy.write(all, Durability::Buffered).unwrap();
            let mut batch = WriteBatch::new();
            share.clear(&*view, &mut batch).unwrap();
            copy.write(batch, Durability::Buffered).unwrap();
            let left = walked_index(&Share::everything(), &*copy.snapshot());
            let before = walked_index(&Share::everything(), &*view);
            let kept: Vec<KvPair> = before.into_iter().filter(|p| !want.contains(p)).collect();
            assert_eq!(
                left, kept,
                "clearing [{lo:?}, {hi:?}) removes its entries only"
            );
        }
    }

    /// A view that refuses any scan of the by-revision index.
    struct NoIndexWalk(std::sync::Arc<dyn cairn_storage::Snapshot>);

    impl cairn_storage::Snapshot for NoIndexWalk {
        fn get(&self, key: &[u8]) -> cairn_storage::Result<Option<Vec<u8>>> {
            self.0.get(key)
        }
        fn scan(
            &self,
            start: Bound<Vec<u8>>,
            end: Bound<Vec<u8>>,
            reverse: bool,
        ) -> cairn_storage::KvIter<'_> {
            let index = Space::MvccByRevision as u8;
            assert!(
                !matches!(&start, Bound::Included(k) if k.first() == Some(&index)),
                "a partial share walked the index"
            );
            self.0.scan(start, end, reverse)
        }
    }

    #[test]
    fn a_partial_share_reads_and_clears_without_walking_the_index() {
        let (e, _) = store();
        let view = NoIndexWalk(e.snapshot());
        assert_eq!(middle().scan(&view).count(), 15);
        middle().clear(&view, &mut WriteBatch::new()).unwrap();
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
