//! A `Range` over keys held by several regions, answered as one: the
//! request is cut into one part per region ([`part_request`]), and the
//! parts are read, in key order, from their regions' stores at the same
//! revision and merged as they are read ([`range_parts`]) into what one
//! store holding every key would have answered.
//!
//! Sorted in a given order or filtered, a part keeps the whole request's
//! sort, filters and limit (and its values, if sorted by value), so it
//! carries at most `limit` key-values, the best by the request's order
//! within its keys, and the best `limit` of all of them are the best
//! overall. In key order without filters, a part carries only what the
//! parts before it left of the limit, and once the limit is met the later
//! parts are only counted, from their keys: a limited read across many
//! regions reads no more values than one region would, however many
//! regions its span covers. A window sorted after the read (etcd's quirk,
//! see `range`) is gathered the same way, its parts asked in key order for
//! what is left of `limit + 1`, and sorted once merged.
//!
//! Counts add up (a count is of every key in the span, before filters and
//! limit, as etcd counts), and there are more to return when any part had
//! more, a part only counted had any key, or the parts together kept more
//! than the limit. A part sorted by value keeps its values until the
//! merge, which clears them afterwards for a keys-only request. The merge
//! holds the kept key-values and one part's answer at a time.

use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget as Target};
use cairn_api::etcdserverpb::{RangeRequest, RangeResponse};
use cairn_storage::Snapshot;

use super::{Keep, Kept, Order, Revisions, SortTarget, Span};
use crate::Result;

/// The part of `req` that falls in the region holding `[start, end)`
/// (`end` empty: to the end of the keyspace), or `None` if none does.
/// Reads a revision's answer from `revision` (0: the store's newest).
pub fn part_request(
    req: &RangeRequest,
    start: &[u8],
    end: &[u8],
    revision: i64,
) -> Result<Option<RangeRequest>> {
    let (key, range_end) = match Span::new(&req.key, &req.range_end) {
        Span::Single(k) => {
            let inside = k.as_slice() >= start && (end.is_empty() || k.as_slice() < end);
            if !inside {
                return Ok(None);
            }
            (k, Vec::new())
        }
        Span::Range(k, e) => {
            let key = k.max(start.to_vec());
            let range_end = match (e, end.is_empty()) {
                (None, true) => vec![0],
                (None, false) => end.to_vec(),
                (Some(e), true) => e,
                (Some(e), false) => e.min(end.to_vec()),
            };
            if range_end != [0] && range_end <= key {
                return Ok(None);
            }
            (key, range_end)
        }
    };
    let by_value = Order::of(req)?.is_some_and(|o| o.target == SortTarget::Value);
    let mut part = RangeRequest {
        key,
        range_end,
        revision,
        keys_only: req.keys_only && !by_value,
        ..req.clone()
    };
    if Keep::window_order(req).is_some() {
        // A window is gathered in key order, `limit + 1` of it, and
        // sorted once merged.
        part.sort_target = Target::Key as i32;
        part.sort_order = SortOrder::None as i32;
        part.limit = req.limit.saturating_add(1);
    }
    Ok(Some(part))
}

/// The answer to `req` from its parts — each a region's store view, the
/// part of `req` it holds ([`part_request`]) and its revisions — given in
/// the key order of their regions, with header revision `revision`. Parts
/// are read one at a time, in that order (see the module essay).
pub fn range_parts<'a>(
    req: &RangeRequest,
    parts: impl IntoIterator<Item = (&'a dyn Snapshot, RangeRequest, Revisions)>,
    revision: i64,
) -> Result<RangeResponse> {
    let keep = Keep::of(req)?;
    let limit = usize::try_from(req.limit).ok().filter(|&l| l > 0);
    let lean = keep.counts_past(req) && !req.count_only;
    let mut kept = Kept::new(keep.order);
    let mut count = 0;
    let mut more = false;
    let mut offered = 0usize;
    for (snapshot, mut part, revs) in parts {
        let left = keep.limit.map(|l| l - kept.len().min(l));
        let only_counted = lean && left == Some(0);
        if let (true, Some(left)) = (lean, left) {
            part.count_only = left == 0;
            part.limit = i64::try_from(left).unwrap_or(i64::MAX);
        }
        let answer = super::range(snapshot, &part, revs)?;
        count += answer.count;
        more |= answer.more || (only_counted && answer.count > 0);
        offered += answer.kvs.len();
        for kv in answer.kvs {
            kept.offer(kv, keep.limit);
        }
    }
    more |= limit.is_some_and(|l| offered > l);
    Ok(super::response(req, kept, revision, more, count))
}

#[cfg(test)]
mod tests {
    use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
    use cairn_api::etcdserverpb::request_op::Request;
    use cairn_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
    use cairn_storage::{Durability, Engine, MemoryEngine};

    use super::*;
    use crate::{apply_txn, range, NoLeases, Revisions};

    fn put(e: &MemoryEngine, revs: Revisions, key: &str, value: &str) -> Revisions {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let out = apply_txn(e, &txn, revs.current + 1, revs, &NoLeases).unwrap();
        e.write(out.batch, Durability::Buffered).unwrap();
        out.revisions
    }

    /// Keys in three "regions" [,d) [d,p) [p,), some written twice, with
    /// values out of key order.
    fn store() -> (MemoryEngine, Revisions, i64) {
        let e = MemoryEngine::new();
        let mut revs = Revisions::default();
        let keys = ["a", "b", "c", "d", "e", "k", "p", "q", "r", "z"];
        for (i, k) in keys.iter().enumerate() {
            revs = put(&e, revs, k, &format!("v{}", (i * 7) % 10));
        }
        let middle = revs.current;
        for k in ["b", "q", "e"] {
            revs = put(&e, revs, k, "w");
        }
        (e, revs, middle)
    }

    const REGIONS: [(&str, &str); 3] = [("", "d"), ("d", "p"), ("p", "")];

    fn merged(e: &MemoryEngine, revs: Revisions, req: &RangeRequest) -> RangeResponse {
        let mut parts = Vec::new();
        for (s, end) in REGIONS {
            if let Some(p) = part_request(req, s.as_bytes(), end.as_bytes(), req.revision).unwrap()
            {
                parts.push((e as &dyn Snapshot, p, revs));
            }
        }
        range_parts(req, parts, revs.current).unwrap()
    }

    #[test]
    fn a_merged_answer_is_the_answer_of_one_store() {
        let (e, revs, middle) = store();
        let spans: [(&str, &str); 5] = [("", "\0"), ("a", "zz"), ("c", "q"), ("d", "p"), ("k", "")];
        let mut tried = 0;
        for (key, end) in spans {
            for limit in [0, 1, 2, 3, 5, 20] {
                for target in [
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ] {
                    for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
                        for (keys_only, count_only) in
                            [(false, false), (true, false), (false, true)]
                        {
                            for revision in [0, middle] {
                                for min_mod_revision in [0, middle] {
                                    let req = RangeRequest {
                                        key: key.as_bytes().to_vec(),
                                        range_end: end.as_bytes().to_vec(),
                                        limit,
                                        sort_target: target as i32,
                                        sort_order: order as i32,
                                        keys_only,
                                        count_only,
                                        revision,
                                        min_mod_revision,
                                        ..Default::default()
                                    };
                                    let one = range(&e, &req, revs).unwrap();
                                    let got = merged(&e, revs, &req);
                                    assert_eq!(got, one, "{req:?}");
                                    tried += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(tried, 5 * 6 * 5 * 3 * 3 * 2 * 2);
    }

    #[test]
    fn a_part_is_the_request_cut_to_its_region() {
        let req = RangeRequest {
            key: b"c".to_vec(),
            range_end: b"q".to_vec(),
            ..Default::default()
        };
        let cut = |s: &str, e: &str| {
            part_request(&req, s.as_bytes(), e.as_bytes(), 7)
                .unwrap()
                .map(|p| (p.key, p.range_end, p.revision))
        };
        assert_eq!(cut("", "d"), Some((b"c".to_vec(), b"d".to_vec(), 7)));
        assert_eq!(cut("d", "p"), Some((b"d".to_vec(), b"p".to_vec(), 7)));
        assert_eq!(cut("p", ""), Some((b"p".to_vec(), b"q".to_vec(), 7)));
        assert_eq!(cut("q", ""), None);
        assert_eq!(cut("", "c"), None);
        let all = RangeRequest {
            key: b"m".to_vec(),
            range_end: vec![0],
            ..Default::default()
        };
        let p = part_request(&all, b"p", b"", 0).unwrap().unwrap();
        assert_eq!((p.key, p.range_end), (b"p".to_vec(), vec![0]));
        let one = RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert!(part_request(&one, b"d", b"p", 0).unwrap().is_some());
        assert!(part_request(&one, b"p", b"", 0).unwrap().is_none());
    }
}
