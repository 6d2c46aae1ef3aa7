//! History against the full scan it replaced (kept as the read for stores
//! with an incomplete index, and as the oracle here), its upgrade path, and
//! its bound on work.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use cairn_storage::keys::Space;
use cairn_storage::{Durability, Engine, KvIter, MemoryEngine, WriteBatch};

use super::*;
use crate::lease::{self, StoredLeases};
use crate::test_rng::Rng;
use crate::{apply_txn, compact, Revisions};

pub(crate) const KEYS: &[&[u8]] = &[
    b"", b"a", b"b", b"ba", b"b\0", b"c", b"d", b"e", b"f", b"\xff",
];
const LEASE: i64 = 7;

pub(crate) fn txn(ops: Vec<Request>) -> TxnRequest {
    TxnRequest {
        success: ops
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
        ..Default::default()
    }
}

pub(crate) fn put(key: &[u8], value: &[u8], lease: i64) -> Request {
    Request::RequestPut(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    })
}

/// Applies `req` at the next (sparse) revision and commits it.
pub(crate) fn write(
    rng: &mut Rng,
    e: &MemoryEngine,
    revs: Revisions,
    req: TxnRequest,
) -> Revisions {
    let rev = revs.current + 1 + rng.below(3) as i64;
    let out = apply_txn(e, &req, rev, revs, &StoredLeases(e)).unwrap();
    e.write(out.batch, Durability::Buffered).unwrap();
    out.revisions
}

/// `rounds` random transactions on top of `revs`: puts (several per txn in
/// any key order, so revisions tie and subs matter), deletes, range deletes, puts on a lease and its
/// revoke, sparse revisions and occasional compactions.
pub(crate) fn random_history(
    rng: &mut Rng,
    e: &MemoryEngine,
    mut revs: Revisions,
    rounds: usize,
) -> Revisions {
    for _ in 0..rounds {
        match rng.below(10) {
            0 => {
                let del = Request::RequestDeleteRange(DeleteRangeRequest {
                    key: rng.pick(KEYS).to_vec(),
                    range_end: rng.pick(&[&b""[..], b"\0", b"c"]).to_vec(),
                    ..Default::default()
                });
                revs = write(rng, e, revs, txn(vec![del]));
            }
            1 if lease::get(e, LEASE).unwrap().is_some() => {
                let rev = revs.current + 1 + rng.below(3) as i64;
                let out = lease::revoke(e, LEASE, rev, revs).unwrap();
                e.write(out.batch, Durability::Buffered).unwrap();
                revs = out.revisions;
            }
            1 => e
                .write(lease::grant(e, LEASE, 10).unwrap(), Durability::Buffered)
                .unwrap(),
            _ => {
                let leased = lease::get(e, LEASE).unwrap().is_some();
                let mut ops = Vec::new();
                for key in KEYS {
                    if rng.chance(25) {
                        let lease = if leased && rng.chance(30) { LEASE } else { 0 };
                        ops.push(put(key, rng.pick(&[&b"x"[..], b"y", b""]), lease));
                    }
                }
                // In any order: a revision's events follow its ops.
                for i in (1..ops.len()).rev() {
                    ops.swap(i, rng.below(i as u64 + 1) as usize);
                }
                revs = write(rng, e, revs, txn(ops));
            }
        }
        if rng.chance(6) && revs.current > revs.compacted {
            let at = revs.compacted + 1 + rng.below((revs.current - revs.compacted) as u64) as i64;
            let (batch, after) = compact(e, at, revs).unwrap();
            e.write(batch, Durability::Buffered).unwrap();
            revs = after;
        }
    }
    revs
}

fn random_span(rng: &mut Rng) -> Span {
    let end: &[u8] = match rng.below(4) {
        0 => b"",
        1 => b"\0",
        _ => rng.pick(KEYS),
    };
    Span::new(rng.pick(KEYS), end)
}

/// Every stored version has exactly one index entry, and every entry one
/// version; the marker says so.
fn assert_index_is_complete(e: &MemoryEngine) {
    let (lo, hi) = keys::version_range(b"", None);
    let versions: BTreeSet<(i64, Vec<u8>)> = e
        .scan(lo, hi, false)
        .map(|item| {
            let (user, rev) = decode_version(&item.unwrap().0).unwrap();
            (rev, user)
        })
        .collect();
    let (lo, hi) = keys::by_revision_range(0, i64::MAX);
    let index: BTreeSet<(i64, Vec<u8>)> = e
        .scan(lo, hi, false)
        .map(|item| {
            let (k, _) = item.unwrap();
            let (rev, user) = decode_by_revision(&k).unwrap();
            (rev, user.to_vec())
        })
        .collect();
    assert_eq!(index, versions, "one index entry per stored version");
    assert!(index_complete(e).unwrap(), "marker present");
}

/// Checks `history` against the full scan on random spans and windows,
/// some reaching below the compaction revision. Returns how many events
/// were compared.
fn compare_with_full_scan(rng: &mut Rng, e: &MemoryEngine, revs: Revisions, seed: u64) -> usize {
    let mut events = 0;
    for _ in 0..200 {
        let span = random_span(rng);
        let from = rng.below(revs.current as u64 + 2) as i64;
        let to = from - 1 + rng.below((revs.current + 3 - from) as u64) as i64;
        let got = history(e, &span, from, to).unwrap();
        let want = full_scan(e, &span, from, to).unwrap();
        assert_eq!(got, want, "seed {seed} {span:?} [{from}, {to}] at {revs:?}");
        events += got.len();
    }
    events
}

#[test]
fn history_equals_the_full_scan_on_random_histories_with_compactions() {
    let mut events = 0;
    for seed in 0..24 {
        let rng = &mut Rng::new(seed);
        let e = MemoryEngine::new();
        let revs = random_history(rng, &e, Revisions::default(), 60);
        assert_index_is_complete(&e);
        events += compare_with_full_scan(rng, &e, revs, seed);
    }
    // The generator must produce real replays, not empty windows.
    assert!(events > 5000, "only {events} events compared");
}

#[test]
fn a_store_written_before_the_index_is_read_in_full_until_it_is_completed() {
    for seed in 0..12 {
        let rng = &mut Rng::new(100 + seed);
        let e = MemoryEngine::new();
        let revs = random_history(rng, &e, Revisions::default(), 30);
        let revs = write(rng, &e, revs, txn(vec![put(b"a", b"old", 0)]));
        // What an older Cairn left (or a snapshot from one installs):
        // versions and no index at all.
        let mut strip = WriteBatch::new();
        let space = Space::MvccByRevision as u8;
        strip.delete_range(vec![space], vec![space + 1]);
        e.write(strip, Durability::Buffered).unwrap();
        // This version writes on: later versions are indexed, earlier
        // ones not, and the index is not marked complete.
        let mut revs = revs;
        for key in [&b"a"[..], b"b", b"\xff"] {
            revs = write(rng, &e, revs, txn(vec![put(key, b"new", 0)]));
        }
        assert!(!index_complete(&e).unwrap());
        let all = Span::Range(Vec::new(), None);
        assert_ne!(
            indexed(&e, &all, 0, revs.current).unwrap(),
            full_scan(&e, &all, 0, revs.current).unwrap(),
            "seed {seed}: the partial index alone would miss events"
        );
        compare_with_full_scan(rng, &e, revs, seed);
        // Opened by a node: the missing entries and the marker are written.
        crate::complete_index(&e).unwrap();
        assert_index_is_complete(&e);
        compare_with_full_scan(rng, &e, revs, seed);
        // And it compacts and replays as any store does.
        let at = revs.compacted + 1;
        let (batch, revs) = compact(&e, at, revs).unwrap();
        e.write(batch, Durability::Buffered).unwrap();
        assert_index_is_complete(&e);
        compare_with_full_scan(rng, &e, revs, seed);
    }
}

/// A view that counts what is read through it: point reads and the items
/// scans yield (an LSM's scan reads lazily, so items taken is work done).
struct Counting<'a> {
    inner: &'a dyn Snapshot,
    reads: AtomicUsize,
}

impl<'a> Counting<'a> {
    fn new(inner: &'a dyn Snapshot) -> Self {
        Self {
            inner,
            reads: AtomicUsize::new(0),
        }
    }
    fn take(&self) -> usize {
        self.reads.swap(0, Ordering::Relaxed)
    }
}

impl Snapshot for Counting<'_> {
    fn get(&self, key: &[u8]) -> cairn_storage::Result<Option<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        Box::new(self.inner.scan(start, end, reverse).inspect(|_| {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }))
    }
}

#[test]
fn replaying_the_last_ten_revisions_of_a_large_span_reads_about_ten_versions() {
    const SPAN_KEYS: usize = 10_000;
    let e = MemoryEngine::new();
    let rng = &mut Rng::new(1);
    let mut revs = Revisions::default();
    let key = |i: usize| format!("k{i:05}").into_bytes();
    for round in 0..5u8 {
        let ops = (0..SPAN_KEYS).map(|i| put(&key(i), &[round], 0)).collect();
        revs = write(rng, &e, revs, txn(ops));
    }
    let from = revs.current + 1;
    for i in 0..10 {
        revs = write(rng, &e, revs, txn(vec![put(&key(i * 997), b"new", 0)]));
    }
    let span = Span::new(b"k", b"l");
    let view = Counting::new(&e);
    let replay = history(&view, &span, from, revs.current).unwrap();
    let indexed_reads = view.take();
    let full = full_scan(&view, &span, from, revs.current).unwrap();
    let full_reads = view.take();
    assert_eq!(replay, full);
    assert_eq!(replay.len(), 10);
    assert!(replay.iter().all(|c| c.event.prev_kv.is_some()));
    // Per event: its index entry, the version, the version before; plus
    // the marker.
    assert!(indexed_reads <= 31, "{indexed_reads} reads for 10 events");
    assert!(
        full_reads > 5 * SPAN_KEYS,
        "the full scan reads {full_reads}"
    );
}

#[test]
fn replaying_the_last_ten_revisions_of_one_key_reads_about_ten_versions() {
    let e = MemoryEngine::new();
    let rng = &mut Rng::new(2);
    let mut revs = Revisions::default();
    for i in 0..2000u32 {
        revs = write(rng, &e, revs, txn(vec![put(b"hot", &i.to_be_bytes(), 0)]));
    }
    let span = Span::Single(b"hot".to_vec());
    let (lo, hi) = keys::versions_of(b"hot");
    let tenth_last = e.scan(lo, hi, true).nth(9).unwrap().unwrap().0;
    let from = decode_version(&tenth_last).unwrap().1;
    let view = Counting::new(&e);
    let replay = history(&view, &span, from, revs.current).unwrap();
    let reads = view.take();
    assert_eq!(replay, full_scan(&view, &span, from, revs.current).unwrap());
    assert_eq!(replay.len(), 10);
    // The ten versions and the one before the first.
    assert_eq!(reads, 11);
    assert!(view.take() >= 2000, "the full scan reads every version");
}
