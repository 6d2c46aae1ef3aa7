//! Range against the full-materialization reference, and its memory bound.

use std::ops::{Bound, RangeBounds};

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use cairn_storage::keys::Key;
use cairn_storage::{Durability, Engine, MemoryEngine};
use prost::Message;

use super::*;
use crate::test_rng::Rng;
use crate::{apply_txn, compact, NoLeases};

/// The range as served before it streamed: every live key-value of the
/// span materialized, then filtered, sorted and truncated. The oracle.
fn materialized_range(
    read: &dyn Snapshot,
    req: &RangeRequest,
    revs: Revisions,
    overlay: Option<&Overlay>,
) -> Result<RangeResponse> {
    let rev = read_revision(req.revision, revs)?;
    let span = Span::new(&req.key, &req.range_end);
    let mut kvs = materialized_visible(read, &span, rev, revs, overlay)?;
    let count = kvs.len() as i64;
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }
    let target = SortTarget::try_from(req.sort_target)
        .map_err(|_| Error::from(Rejection::InvalidSortOption))?;
    let mut order = SortOrder::try_from(req.sort_order)
        .map_err(|_| Error::from(Rejection::InvalidSortOption))?;
    let filtered = req.max_mod_revision != 0
        || req.min_mod_revision != 0
        || req.max_create_revision != 0
        || req.min_create_revision != 0;
    if order == SortOrder::None && req.limit > 0 && !filtered {
        // etcd 3.4 fetches only `limit + 1` (key order) unless it sorts or
        // filters, and promotes None to Ascend after the fetch.
        kvs.truncate(
            usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        );
    }
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    if req.count_only {
        kvs.clear();
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    let header = Some(ResponseHeader {
        revision: revs.current,
        ..Default::default()
    });
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count,
    })
}

/// The span's live key-values, gathered into one map (the oracle).
fn materialized_visible(
    read: &dyn Snapshot,
    span: &Span,
    rev: i64,
    revs: Revisions,
    overlay: Option<&Overlay>,
) -> Result<Vec<KeyValue>> {
    if span.is_empty() {
        return Ok(Vec::new());
    }
    let latest = rev >= revs.current;
    let mut out: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    match (span, latest) {
        (Span::Single(k), true) => {
            if let Some(kv) = record::latest(read, k)? {
                out.insert(k.clone(), kv);
            }
        }
        (Span::Single(k), false) => {
            if let Some(kv) = record::at_revision(read, k, rev)? {
                out.insert(k.clone(), kv);
            }
        }
        (Span::Range(s, e), true) => {
            let (lo, hi) = keys::latest_range(s, e.as_deref());
            for item in read.scan(lo, hi, false) {
                let (k, v) = item?;
                let user = keys::decode_latest(&k)?.to_vec();
                if let Record::Put(kv) = Record::decode(&user, &v)? {
                    out.insert(user, kv);
                }
            }
        }
        (Span::Range(s, e), false) => {
            let (lo, hi) = keys::version_range(s, e.as_deref());
            // Versions of one key are adjacent and ascending: the last one at
            // or below `rev` wins; a tombstone there means "absent".
            let mut current: Option<(Vec<u8>, Option<KeyValue>)> = None;
            for item in read.scan(lo, hi, false) {
                let (k, v) = item?;
                let (user, r) = decode_version(&k)?;
                if current.as_ref().is_some_and(|(u, _)| *u != user) {
                    if let Some((u, Some(kv))) = current.take() {
                        out.insert(u, kv);
                    }
                }
                if r > rev {
                    if current.is_none() {
                        current = Some((user, None));
                    }
                    continue;
                }
                let state = match Record::decode(&user, &v)? {
                    Record::Put(kv) => Some(kv),
                    Record::Tombstone => None,
                };
                current = Some((user, state));
            }
            if let Some((u, Some(kv))) = current {
                out.insert(u, kv);
            }
        }
    }
    if let Some(overlay) = overlay {
        for (k, v) in overlay.iter().filter(|(k, _)| span.contains(k)) {
            match v {
                Some(kv) => out.insert(k.clone(), kv.clone()),
                None => out.remove(k),
            };
        }
    }
    Ok(out.into_values().collect())
}

const KEYS: &[&[u8]] = &[
    b"a", b"b", b"ba", b"b\0", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"\xff",
];
const VALUES: &[&[u8]] = &[b"", b"x", b"y", b"yy", b"z"];

/// A random history: puts (several per txn, so revisions tie), deletes,
/// range deletes, sparse revisions and an occasional compaction.
fn history(rng: &mut Rng, engine: &MemoryEngine) -> Revisions {
    let mut revs = Revisions::default();
    for _ in 0..40 {
        let op = |request| RequestOp {
            request: Some(request),
        };
        let mut success = Vec::new();
        if rng.chance(20) {
            success.push(op(Request::RequestDeleteRange(DeleteRangeRequest {
                key: rng.pick(KEYS).to_vec(),
                range_end: rng.pick(&[&b""[..], b"\0", b"d"]).to_vec(),
                ..Default::default()
            })));
        } else {
            for key in KEYS {
                if !rng.chance(20) {
                    continue;
                }
                success.push(op(Request::RequestPut(PutRequest {
                    key: key.to_vec(),
                    value: rng.pick(VALUES).to_vec(),
                    ..Default::default()
                })));
            }
        }
        let txn = TxnRequest {
            success,
            ..Default::default()
        };
        let rev = revs.current + 1 + rng.below(3) as i64;
        let out = apply_txn(engine, &txn, rev, revs, &NoLeases).unwrap();
        engine.write(out.batch, Durability::Buffered).unwrap();
        revs = out.revisions;
        if rng.chance(5) && revs.current > revs.compacted {
            let at = revs.compacted + 1 + rng.below((revs.current - revs.compacted) as u64) as i64;
            let (batch, after) = compact(engine, at, revs).unwrap();
            engine.write(batch, Durability::Buffered).unwrap();
            revs = after;
        }
    }
    revs
}

fn random_overlay(rng: &mut Rng, revs: Revisions) -> Overlay {
    let mut overlay = Overlay::new();
    for _ in 0..rng.below(5) {
        let key = rng.pick(KEYS).to_vec();
        let write = rng.chance(70).then(|| KeyValue {
            key: key.clone(),
            value: rng.pick(VALUES).to_vec(),
            create_revision: rng.rev(revs),
            mod_revision: revs.current + 1,
            version: 1 + rng.below(4) as i64,
            lease: 0,
        });
        overlay.insert(key, write);
    }
    overlay
}

fn random_request(rng: &mut Rng, revs: Revisions) -> RangeRequest {
    let filter = |rng: &mut Rng| if rng.chance(70) { 0 } else { rng.rev(revs) };
    RangeRequest {
        key: rng.pick(KEYS).to_vec(),
        range_end: match rng.below(3) {
            0 => Vec::new(),
            1 => vec![0],
            _ => rng.pick(KEYS).to_vec(),
        },
        limit: rng.pick(&[0, 0, 1, 2, 3, 5, 20, -1]),
        revision: if rng.chance(60) { 0 } else { rng.rev(revs) },
        sort_order: if rng.chance(2) {
            7
        } else {
            rng.below(3) as i32
        },
        sort_target: rng.below(5) as i32,
        serializable: false,
        keys_only: rng.chance(25),
        count_only: rng.chance(15),
        min_mod_revision: filter(rng),
        max_mod_revision: filter(rng),
        min_create_revision: filter(rng),
        max_create_revision: filter(rng),
    }
}

#[test]
fn streamed_range_is_byte_identical_to_full_materialization_on_random_histories() {
    let mut answered = 0;
    for seed in 0..24 {
        let rng = &mut Rng::new(seed);
        let engine = MemoryEngine::new();
        let revs = history(rng, &engine);
        for _ in 0..300 {
            let req = random_request(rng, revs);
            let overlay = rng.chance(40).then(|| random_overlay(rng, revs));
            let got = range_with(&engine, &req, revs, overlay.as_ref());
            let want = materialized_range(&engine, &req, revs, overlay.as_ref());
            match (&got, &want) {
                (Ok(g), Ok(w)) => {
                    assert_eq!(g.encode_to_vec(), w.encode_to_vec(), "seed {seed} {req:?}");
                    answered += usize::from(!g.kvs.is_empty());
                }
                _ => assert_eq!(format!("{got:?}"), format!("{want:?}"), "seed {seed}"),
            }
            let Ok(rev) = read_revision(req.revision, revs) else {
                continue;
            };
            let span = Span::new(&req.key, &req.range_end);
            assert_eq!(
                visible(&engine, &span, rev, revs, overlay.as_ref()).unwrap(),
                materialized_visible(&engine, &span, rev, revs, overlay.as_ref()).unwrap(),
                "seed {seed} {span:?} at {rev}"
            );
        }
    }
    // The generator must produce non-trivial answers, not just errors.
    assert!(answered > 1000, "only {answered} non-empty responses");
}

const GENERATED_KEYS: usize = 1000;
const VALUE_LEN: usize = 16 << 10;

/// A store of `GENERATED_KEYS` large live keys in the latest index, made
/// on the fly as a scan reaches them, so only the range holds them.
struct Generated;

impl Snapshot for Generated {
    fn get(&self, _key: &[u8]) -> cairn_storage::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, _rev: bool) -> KvIter<'_> {
        let bounds = (start, end);
        Box::new(
            (0..GENERATED_KEYS)
                .map(|i| {
                    let key = format!("k{i:05}").into_bytes();
                    let kv = KeyValue {
                        value: vec![(i * 37 % 251) as u8; VALUE_LEN],
                        create_revision: (GENERATED_KEYS - i) as i64,
                        mod_revision: (i % 97 + 1) as i64,
                        version: (i % 5 + 1) as i64,
                        ..Default::default()
                    };
                    let stored = Key::MvccLatest { key: &key }.encode();
                    (stored, Record::Put(kv).encode())
                })
                .filter(move |(k, _)| bounds.contains(k))
                .map(Ok),
        )
    }
}

#[test]
fn a_limited_range_holds_memory_for_its_limit_not_its_span() {
    let revs = Revisions {
        current: GENERATED_KEYS as i64,
        compacted: 0,
    };
    let span_bytes = GENERATED_KEYS * VALUE_LEN;
    let all = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..Default::default()
    };
    // The meter sees a range that must hold the span.
    let (resp, peak) = meter::peak_during(|| range(&Generated, &all, revs).unwrap());
    assert_eq!(resp.kvs.len(), GENERATED_KEYS);
    assert!(peak > span_bytes, "peak {peak} of an unlimited range");

    let limited = RangeRequest { limit: 10, ..all };
    let by = |target: SortTarget, order: SortOrder| RangeRequest {
        sort_target: target as i32,
        sort_order: order as i32,
        ..limited.clone()
    };
    let requests = [
        limited.clone(),
        by(SortTarget::Value, SortOrder::Descend),
        by(SortTarget::Mod, SortOrder::Ascend),
        by(SortTarget::Key, SortOrder::Descend),
        RangeRequest {
            keys_only: true,
            ..by(SortTarget::Create, SortOrder::None)
        },
        RangeRequest {
            count_only: true,
            ..limited.clone()
        },
    ];
    for req in requests {
        let (resp, peak) = meter::peak_during(|| range(&Generated, &req, revs).unwrap());
        assert_eq!(resp.count, GENERATED_KEYS as i64);
        assert_eq!(resp.kvs.len(), if req.count_only { 0 } else { 10 });
        assert_eq!(resp.more, !req.count_only);
        // Ten kept values plus the one in flight, with room to spare;
        // the span is 16 MiB.
        assert!(peak < 1 << 20, "peak {peak} bytes for {req:?}");
    }
}

/// A view that counts the values its scans hand out (key-only scans and
/// value lengths read none).
struct CountingValues<'a> {
    inner: &'a MemoryEngine,
    values: std::sync::atomic::AtomicUsize,
}

impl Snapshot for CountingValues<'_> {
    fn get(&self, key: &[u8]) -> cairn_storage::Result<Option<Vec<u8>>> {
        self.values
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(key)
    }
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, rev: bool) -> KvIter<'_> {
        Box::new(self.inner.scan(start, end, rev).inspect(|_| {
            self.values
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }))
    }
    fn scan_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> cairn_storage::KeyIter<'_> {
        self.inner.scan_keys(start, end)
    }
    fn value_len(&self, key: &[u8]) -> cairn_storage::Result<Option<usize>> {
        self.inner.value_len(key)
    }
}

#[test]
fn a_limited_range_reads_the_values_it_returns_and_counts_the_rest_from_keys() {
    let engine = MemoryEngine::new();
    let mut revs = Revisions::default();
    let put = |i: usize| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: format!("k{i:03}").into_bytes(),
            value: vec![b'v'; 100],
            ..Default::default()
        })),
    };
    // 300 keys written twice, then every third deleted.
    for round in 0..2 {
        let txn = TxnRequest {
            success: (0..300).map(put).collect(),
            ..Default::default()
        };
        let out = apply_txn(&engine, &txn, revs.current + 1, revs, &NoLeases).unwrap();
        engine.write(out.batch, Durability::Buffered).unwrap();
        revs = out.revisions;
        assert_eq!(revs.current, round + 1);
    }
    let deletes = TxnRequest {
        success: (0..300)
            .step_by(3)
            .map(|i| RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: format!("k{i:03}").into_bytes(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    let out = apply_txn(&engine, &deletes, 3, revs, &NoLeases).unwrap();
    engine.write(out.batch, Durability::Buffered).unwrap();
    revs = out.revisions;
    let view = CountingValues {
        inner: &engine,
        values: Default::default(),
    };
    let ask = |revision: i64, limit: i64, count_only: bool| {
        view.values.store(0, std::sync::atomic::Ordering::Relaxed);
        let req = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            revision,
            limit,
            count_only,
            ..Default::default()
        };
        let resp = range(&view, &req, revs).unwrap();
        let read = view.values.load(std::sync::atomic::Ordering::Relaxed);
        (resp.kvs.len(), resp.count, resp.more, read)
    };
    // Now: 200 live keys; at revision 2, all 300 (two versions each).
    let (kvs, count, more, read) = ask(0, 10, false);
    assert_eq!((kvs, count, more), (10, 200, true));
    assert!(
        read <= 11,
        "{read} values read for 10 at the current revision"
    );
    let (kvs, count, more, read) = ask(2, 10, false);
    assert_eq!((kvs, count, more), (10, 300, true));
    assert!(read <= 3 * 12, "{read} values read for 10 at revision 2");
    let (kvs, count, more, read) = ask(3, 10, false);
    assert_eq!((kvs, count, more), (10, 200, true));
    assert!(read <= 3 * 16, "{read} values read for 10 at revision 3");
    for revision in [0, 1, 2, 3] {
        let (kvs, count, _, read) = ask(revision, 0, true);
        let want = if revision == 0 || revision == 3 {
            200
        } else {
            300
        };
        assert_eq!((kvs, count, read), (0, want, 0), "count_only at {revision}");
    }
    let (kvs, count, more, _) = ask(0, 200, false);
    assert_eq!(
        (kvs, count, more),
        (200, 200, false),
        "a limit of exactly the span"
    );
}

/// Puts each `(key, value)` in its own transaction, in the order given.
fn put_each(engine: &MemoryEngine, pairs: &[(String, Vec<u8>)]) -> Revisions {
    let mut revs = Revisions::default();
    for (key, value) in pairs {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let out = apply_txn(engine, &txn, revs.current + 1, revs, &NoLeases).unwrap();
        engine.write(out.batch, Durability::Buffered).unwrap();
        revs = out.revisions;
    }
    revs
}

/// The answer to `req` read in parts cut at `cuts`, merged.
fn in_parts(
    view: &dyn Snapshot,
    req: &RangeRequest,
    revs: Revisions,
    cuts: &[&str],
) -> RangeResponse {
    let mut bounds = vec![""];
    bounds.extend_from_slice(cuts);
    bounds.push("");
    let parts = bounds.windows(2).filter_map(|w| {
        part_request(req, w[0].as_bytes(), w[1].as_bytes(), 0)
            .unwrap()
            .map(|p| (view, p, revs))
    });
    range_parts(req, parts, revs.current).unwrap()
}

/// etcd 3.4 fetches `limit + 1` keys in key order when no sort order is
/// given, and only then sorts them by a non-key target (ascending): the
/// answer is the window's first, not the span's.
#[test]
fn a_sort_target_with_no_order_sorts_the_first_limit_plus_one_keys() {
    let engine = MemoryEngine::new();
    // e first, a last: mod revisions a 5, b 4, c 3, d 2, e 1.
    let pairs: Vec<_> = ["e", "d", "c", "b", "a"]
        .iter()
        .map(|k| (k.to_string(), k.as_bytes().to_vec()))
        .collect();
    let revs = put_each(&engine, &pairs);
    let req = |order: SortOrder, limit: i64| RangeRequest {
        key: b"a".to_vec(),
        range_end: b"f".to_vec(),
        sort_target: SortTarget::Mod as i32,
        sort_order: order as i32,
        limit,
        ..Default::default()
    };
    let keys = |r: &RangeResponse| {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect::<Vec<_>>()
    };
    for cuts in [&[][..], &["b"], &["c"], &["b", "c", "d"]] {
        let windowed = in_parts(&engine, &req(SortOrder::None, 2), revs, cuts);
        assert_eq!(keys(&windowed), ["c", "b"], "cut at {cuts:?}");
        assert_eq!((windowed.more, windowed.count), (true, 5));
        // An order given sorts the whole span.
        let sorted = in_parts(&engine, &req(SortOrder::Ascend, 2), revs, cuts);
        assert_eq!(keys(&sorted), ["e", "d"], "cut at {cuts:?}");
        assert_eq!((sorted.more, sorted.count), (true, 5));
        // A window as large as the span: all of it, sorted.
        let all = in_parts(&engine, &req(SortOrder::None, 5), revs, cuts);
        assert_eq!(keys(&all), ["e", "d", "c", "b", "a"]);
        assert!(!all.more);
    }
    assert_eq!(
        range(&engine, &req(SortOrder::None, 2), revs).unwrap(),
        in_parts(&engine, &req(SortOrder::None, 2), revs, &[])
    );
}

/// A limited read in key order across many parts reads the values it
/// returns (and one more), not every part's `limit`: later parts are only
/// counted.
#[test]
fn a_limited_read_across_parts_reads_values_only_up_to_its_limit() {
    let engine = MemoryEngine::new();
    let pairs: Vec<_> = (0..300)
        .map(|i| (format!("k{i:03}"), vec![b'v'; 100]))
        .collect();
    let revs = put_each(&engine, &pairs);
    let view = CountingValues {
        inner: &engine,
        values: Default::default(),
    };
    let cuts: Vec<String> = (1..30).map(|i| format!("k{:03}", i * 10)).collect();
    let cuts: Vec<&str> = cuts.iter().map(String::as_str).collect();
    for (key, limit, want_more) in [("k", 10, true), ("k", 25, true), ("k295", 10, false)] {
        let req = RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: b"l".to_vec(),
            limit,
            ..Default::default()
        };
        view.values.store(0, std::sync::atomic::Ordering::Relaxed);
        let got = in_parts(&view, &req, revs, &cuts);
        let read = view.values.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(got, range(&engine, &req, revs).unwrap(), "{req:?}");
        assert_eq!(got.more, want_more, "{req:?}");
        assert!(
            read <= limit as usize + 3,
            "{read} values read across 30 parts for a limit of {limit}"
        );
    }
}

/// Counts the bytes each thread has allocated and not freed, so a test
/// can measure the peak a call holds (test threads run apart).
mod meter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn note(delta: isize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    /// The most bytes this thread held at once while running `f`,
    /// beyond what it held before (the result included).
    pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let out = f();
        (out, (PEAK.with(Cell::get) - base) as usize)
    }

    struct Meter;

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size() as isize);
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size() as isize);
            System.alloc_zeroed(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            note(-(layout.size() as isize));
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            note(new as isize - layout.size() as isize);
            System.realloc(ptr, layout, new)
        }
    }

    #[global_allocator]
    static METER: Meter = Meter;
}
