//! `Range` with etcd's exact semantics: key spans (single key, `[key,
//! range_end)`, `range_end = "\0"` for "to the end"), reads at a revision,
//! `count`, `limit` + `more`, min/max mod/create revision filters, sorting,
//! `keys_only` and `count_only`.
//!
//! A range streams: [`Visible`] yields the span's live key-values one at a
//! time, ascending by key (a transaction's pending writes merged in), and
//! [`range`] keeps only what the response will carry. `count` is every key
//! the stream yields (etcd counts before the revision filters); of the keys
//! that pass the filters, key order keeps the first `limit`, another sort
//! target a top-`limit` heap (or, with no sort order given, a key-ordered
//! window sorted afterwards: below), `count_only` none. So a limited range
//! holds O(limit) key-values however large the span. Once a key-ordered
//! range without revision filters has its `limit`, the rest of the span is
//! only counted, from keys alone ([`count`]); so is the whole span of a
//! `count_only` range, and the rest of a window's. A limited range sorted
//! in a given order, or filtered, reads the whole span, because which
//! key-values it keeps and `more` depend on every key's metadata. Without a limit the response itself is the span, and so
//! is the memory.
//!
//! Ties under a sort target keep ascending key order (as a stable sort of
//! the key-ordered stream would), so the heap's order is total and the
//! result does not depend on how it was collected.
//!
//! One quirk of etcd's is kept on purpose: a sort target other than the
//! key with no sort order given (`SortOrder::None`, which etcd sorts
//! ascending), a limit and no revision filter sorts only a *window*: etcd
//! fetches the first `limit + 1` keys in key order (its fast path for
//! unsorted reads) and sorts those, then truncates to `limit`. So
//! `etcdctl get --prefix p --sort-by=MODIFY --limit 2` answers the first
//! three keys' two oldest, not the span's two oldest ([`Keep`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::iter::Peekable;

use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use cairn_api::mvccpb::KeyValue;
use cairn_storage::keys::{self, decode_version};
use cairn_storage::{KvIter, KvPair, Snapshot};

use crate::record::{self, Record};
use crate::{Error, Rejection, Result, Revisions};

/// Pending writes of a transaction: key → new latest (None = deleted).
pub(crate) type Overlay = BTreeMap<Vec<u8>, Option<KeyValue>>;

/// The keys a request names, decoded from etcd's (key, range_end) convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span {
    /// Exactly one key (`range_end` empty).
    Single(Vec<u8>),
    /// `[start, end)`; `end = None` means "to the end of the keyspace".
    Range(Vec<u8>, Option<Vec<u8>>),
}

impl Span {
    /// Decodes etcd's convention.
    pub fn new(key: &[u8], range_end: &[u8]) -> Span {
        match range_end {
            [] => Span::Single(key.to_vec()),
            [0] => Span::Range(key.to_vec(), None),
            end => Span::Range(key.to_vec(), Some(end.to_vec())),
        }
    }

    /// True when `key` lies in the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            Span::Single(k) => k == key,
            Span::Range(s, e) => key >= s.as_slice() && e.as_deref().is_none_or(|e| key < e),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Span::Range(s, Some(e)) if e <= s)
    }
}

/// Every live key-value in `span` as of `rev`, for callers that need them
/// all (txn compares, `DeleteRange`). See [`Visible`].
pub(crate) fn visible(
    read: &dyn Snapshot,
    span: &Span,
    rev: i64,
    revs: Revisions,
    overlay: Option<&Overlay>,
) -> Result<Vec<KeyValue>> {
    Visible::new(read, span, rev, revs, overlay).collect()
}

type KvStream<'a> = Box<dyn Iterator<Item = Result<KeyValue>> + 'a>;

/// The live key-values in a span as of `rev` (`rev` = current when latest),
/// one at a time, ascending by key, merged with a transaction's pending
/// writes. The first error ends the useful part of the stream.
struct Visible<'a> {
    stored: Peekable<KvStream<'a>>,
    /// The overlay's entries in the span, ascending (a txn's few writes).
    pending: VecDeque<(&'a [u8], Option<&'a KeyValue>)>,
}

impl<'a> Visible<'a> {
    fn new(
        read: &'a dyn Snapshot,
        span: &Span,
        rev: i64,
        revs: Revisions,
        overlay: Option<&'a Overlay>,
    ) -> Self {
        if span.is_empty() {
            return Self {
                stored: (Box::new(std::iter::empty()) as KvStream).peekable(),
                pending: VecDeque::new(),
            };
        }
        let latest = rev >= revs.current;
        let stored: KvStream<'a> = match (span, latest) {
            (Span::Single(k), true) => Box::new(record::latest(read, k).transpose().into_iter()),
            (Span::Single(k), false) => {
                Box::new(record::at_revision(read, k, rev).transpose().into_iter())
            }
            (Span::Range(s, e), true) => {
                let (lo, hi) = keys::latest_range(s, e.as_deref());
                Box::new(
                    read.scan(lo, hi, false)
                        .filter_map(|item| latest_put(item).transpose()),
                )
            }
            (Span::Range(s, e), false) => {
                let (lo, hi) = keys::version_range(s, e.as_deref());
                Box::new(AsOf {
                    versions: read.scan(lo, hi, false),
                    rev,
                    current: None,
                })
            }
        };
        let pending = overlay
            .into_iter()
            .flatten()
            .filter(|(k, _)| span.contains(k))
            .map(|(k, v)| (k.as_slice(), v.as_ref()))
            .collect();
        Self {
            stored: stored.peekable(),
            pending,
        }
    }
}

impl Iterator for Visible<'_> {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Result<KeyValue>> {
        loop {
            let Some(&(key, write)) = self.pending.front() else {
                return self.stored.next();
            };
            match self.stored.peek() {
                Some(Ok(kv)) if kv.key.as_slice() < key => return self.stored.next(),
                Some(Err(_)) => return self.stored.next(),
                // The pending write replaces (or deletes) the stored key.
                Some(Ok(kv)) if kv.key.as_slice() == key => {
                    self.stored.next();
                }
                Some(Ok(_)) | None => {}
            }
            self.pending.pop_front();
            if let Some(kv) = write {
                return Some(Ok(kv.clone()));
            }
        }
    }
}

/// A latest-index record as a live key-value (None for a tombstone).
fn latest_put(item: cairn_storage::Result<KvPair>) -> Result<Option<KeyValue>> {
    let (k, v) = item?;
    let user = keys::decode_latest(&k)?.to_vec();
    Ok(match Record::decode(&user, &v)? {
        Record::Put(kv) => Some(kv),
        Record::Tombstone => None,
    })
}

/// Each key's version as of `rev`, from a scan of the version records.
/// Versions of one key are adjacent and ascending: the last one at or below
/// `rev` wins; a tombstone there means "absent".
struct AsOf<'a> {
    versions: KvIter<'a>,
    rev: i64,
    /// The key being read, and its state at `rev` so far.
    current: Option<(Vec<u8>, Option<KeyValue>)>,
}

impl AsOf<'_> {
    fn next_live(&mut self) -> Result<Option<KeyValue>> {
        for item in self.versions.by_ref() {
            let (k, v) = item?;
            let (user, r) = decode_version(&k)?;
            let finished = match &self.current {
                Some((u, _)) if *u != user => self.current.take(),
                _ => None,
            };
            if r > self.rev {
                if self.current.is_none() {
                    self.current = Some((user, None));
                }
            } else {
                let state = match Record::decode(&user, &v)? {
                    Record::Put(kv) => Some(kv),
                    Record::Tombstone => None,
                };
                self.current = Some((user, state));
            }
            if let Some((_, Some(kv))) = finished {
                return Ok(Some(kv));
            }
        }
        Ok(self.current.take().and_then(|(_, kv)| kv))
    }
}

impl Iterator for AsOf<'_> {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Result<KeyValue>> {
        self.next_live().transpose()
    }
}

/// Checks a read revision against the store's revisions and resolves 0.
pub(crate) fn read_revision(requested: i64, revs: Revisions) -> Result<i64> {
    if requested <= 0 {
        return Ok(revs.current);
    }
    if requested > revs.current {
        return Err(Error::from(Rejection::FutureRevision));
    }
    if requested < revs.compacted {
        return Err(Error::from(Rejection::Compacted));
    }
    Ok(requested)
}

/// Serves a `Range` request at the store's revisions. The header carries the
/// current revision (as in etcd, even for reads of older revisions);
/// cluster/member ids and term are the caller's to fill.
pub fn range(read: &dyn Snapshot, req: &RangeRequest, revs: Revisions) -> Result<RangeResponse> {
    range_with(read, req, revs, None)
}

pub(crate) fn range_with(
    read: &dyn Snapshot,
    req: &RangeRequest,
    revs: Revisions,
    overlay: Option<&Overlay>,
) -> Result<RangeResponse> {
    let rev = read_revision(req.revision, revs)?;
    let order = Order::of(req)?;
    let keep = Keep::of(req)?;
    let span = Span::new(&req.key, &req.range_end);
    let limit = usize::try_from(req.limit).ok().filter(|&l| l > 0);
    // Values are dropped as they stream unless the sort needs them.
    let drop_values = req.keys_only && order.is_none_or(|o| o.target != SortTarget::Value);
    let latest = rev >= revs.current;
    // Whether the span's keys can be counted without their values.
    let countable = matches!(span, Span::Range(..)) && (latest || overlay.is_none());
    let mut count = 0;
    let mut matched = 0;
    let mut kept = Kept::new(keep.order);
    let stream = if req.count_only && countable {
        count = count::live_keys_after(read, &span, rev, latest, overlay, None)?;
        None
    } else {
        Some(Visible::new(read, &span, rev, revs, overlay))
    };
    for kv in stream.into_iter().flatten() {
        let mut kv = kv?;
        count += 1;
        if req.count_only || !passes_filters(req, &kv) {
            continue;
        }
        matched += 1;
        if drop_values {
            kv.value = Vec::new();
        }
        let key = kv.key.clone();
        kept.offer(kv, keep.limit);
        if countable && keep.counts_past(req) && keep.limit == Some(kept.len()) {
            // Every later key only counts, and passes (there are no filters).
            let rest = count::live_keys_after(read, &span, rev, latest, overlay, Some(&key))?;
            count += rest;
            matched += rest;
            break;
        }
    }
    Ok(response(
        req,
        kept,
        revs.current,
        limit.is_some_and(|l| matched > l as i64),
        count,
    ))
}

/// The response carrying `kept` (a window sorted and cut to the limit,
/// [`Keep`]; values cleared for a keys-only request).
fn response(
    req: &RangeRequest,
    kept: Kept,
    revision: i64,
    more: bool,
    count: i64,
) -> RangeResponse {
    let mut kvs = kept.into_vec();
    if let Some(order) = Keep::window_order(req) {
        kvs.sort_by(|a, b| order.cmp(a, b));
        kvs.truncate(usize::try_from(req.limit).unwrap_or(usize::MAX));
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    }
}

/// True when the request sets any min/max mod/create revision filter.
fn has_filters(req: &RangeRequest) -> bool {
    req.max_mod_revision != 0
        || req.min_mod_revision != 0
        || req.max_create_revision != 0
        || req.min_create_revision != 0
}

/// The min/max mod/create revision filters (0 = no filter).
fn passes_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
}

/// A sort the stream's key order does not already give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Order {
    target: SortTarget,
    descend: bool,
}

impl Order {
    /// The request's sort, None when ascending by key. As in etcd, a target
    /// other than the key sorts ascending when no order is given.
    fn of(req: &RangeRequest) -> Result<Option<Order>> {
        let target = SortTarget::try_from(req.sort_target)
            .map_err(|_| Error::from(Rejection::InvalidSortOption))?;
        let order = SortOrder::try_from(req.sort_order)
            .map_err(|_| Error::from(Rejection::InvalidSortOption))?;
        Ok(match (target, order) {
            (SortTarget::Key, SortOrder::None | SortOrder::Ascend) => None,
            (_, SortOrder::Descend) => Some(Order {
                target,
                descend: true,
            }),
            (_, SortOrder::None | SortOrder::Ascend) => Some(Order {
                target,
                descend: false,
            }),
        })
    }

    /// Response order: by the target, ties ascending by key.
    fn cmp(self, a: &KeyValue, b: &KeyValue) -> Ordering {
        let by = match self.target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        let by = if self.descend { by.reverse() } else { by };
        by.then_with(|| a.key.cmp(&b.key))
    }
}

/// What a read keeps of the key-values that pass its filters: in which
/// order, and how many.
#[derive(Clone, Copy, Debug)]
struct Keep {
    /// None: key order, the stream's own.
    order: Option<Order>,
    limit: Option<usize>,
}

impl Keep {
    fn of(req: &RangeRequest) -> Result<Keep> {
        let order = Order::of(req)?;
        let limit = usize::try_from(req.limit).ok().filter(|&l| l > 0);
        Ok(match (Self::window_order(req), limit) {
            // The first `limit + 1` in key order, sorted afterwards.
            (Some(_), Some(l)) => Keep {
                order: None,
                limit: Some(l.saturating_add(1)),
            },
            _ => Keep { order, limit },
        })
    }

    /// The order a window is sorted by, if `req` sorts one (see the
    /// module essay): a target other than the key, no order given, a
    /// limit, no revision filter. (An invalid sort option is refused by
    /// [`Order::of`] first.)
    fn window_order(req: &RangeRequest) -> Option<Order> {
        let windowed =
            req.sort_order == SortOrder::None as i32 && req.limit > 0 && !has_filters(req);
        match Order::of(req) {
            Ok(Some(order)) if windowed => Some(order),
            _ => None,
        }
    }

    /// True when, once `limit` are kept, the rest only counts: key order
    /// and no filter (every later key passes and would not be kept).
    fn counts_past(&self, req: &RangeRequest) -> bool {
        self.order.is_none() && !has_filters(req)
    }
}

/// A key-value in a sorted response; greater = later in the response.
struct Ranked(Order, KeyValue);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&self.1, &other.1)
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// The key-values a response will carry, collected from the stream.
enum Kept {
    /// Key order: the stream's first `limit`.
    InKeyOrder(Vec<KeyValue>),
    /// Another order: the best `limit` so far, the worst on top.
    Sorted(Order, BinaryHeap<Ranked>),
}

impl Kept {
    fn new(order: Option<Order>) -> Self {
        match order {
            None => Kept::InKeyOrder(Vec::new()),
            Some(o) => Kept::Sorted(o, BinaryHeap::new()),
        }
    }

    fn offer(&mut self, kv: KeyValue, limit: Option<usize>) {
        match self {
            Kept::InKeyOrder(kvs) => {
                if limit.is_none_or(|l| kvs.len() < l) {
                    kvs.push(kv);
                }
            }
            Kept::Sorted(order, heap) => {
                let kv = Ranked(*order, kv);
                match limit {
                    Some(l) if heap.len() >= l => {
                        if let Some(mut worst) = heap.peek_mut() {
                            if kv < *worst {
                                *worst = kv;
                            }
                        }
                    }
                    _ => heap.push(kv),
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Kept::InKeyOrder(kvs) => kvs.len(),
            Kept::Sorted(_, heap) => heap.len(),
        }
    }

    fn into_vec(self) -> Vec<KeyValue> {
        match self {
            Kept::InKeyOrder(kvs) => kvs,
            Kept::Sorted(_, heap) => heap.into_sorted_vec().into_iter().map(|r| r.1).collect(),
        }
    }
}

mod count;
mod merge;
#[cfg(test)]
mod tests;

pub use merge::{part_request, range_parts};
