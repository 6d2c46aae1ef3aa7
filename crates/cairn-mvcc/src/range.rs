//! `Range` with etcd's exact semantics: key spans (single key, `[key,
//! range_end)`, `range_end = "\0"` for "to the end"), reads at a revision,
//! `count`, `limit` + `more`, min/max mod/create revision filters, sorting,
//! `keys_only` and `count_only`.

use std::collections::BTreeMap;

use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use cairn_api::mvccpb::KeyValue;
use cairn_storage::keys::{self, decode_version};
use cairn_storage::Snapshot;

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

/// The live key-values in `span` as of `rev` (`rev` = current when latest),
/// ascending by key, merged with a transaction's pending writes.
pub(crate) fn visible(
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
    let span = Span::new(&req.key, &req.range_end);
    let mut kvs = visible(read, &span, rev, revs, overlay)?;
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
    // Results come ascending by key; etcd sorts ascending by default only when
    // the target is not the key, and skips the no-op ascending key sort.
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
        // Stable either way: ties keep ascending key order, as etcd's sort
        // does for the small result sets clients usually sort.
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
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: revs.current,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    })
}
