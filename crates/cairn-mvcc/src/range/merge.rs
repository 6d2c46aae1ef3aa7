//! A `Range` over keys held by several regions, answered as one: the
//! request is cut into one part per region ([`part_request`]), each part
//! is served by its region's store at the same revision, and the answers
//! are merged ([`merge_ranges`]) into what one store holding every key
//! would have answered.
//!
//! Each part keeps the whole request's limit, sort, filters and flags, so
//! it carries at most `limit` key-values, the best by the request's order
//! within its keys; the best `limit` of all of them are the best overall.
//! Counts add up (a count is of every key in the span, before filters and
//! limit, as etcd counts), and there are more to return when any part had
//! more or the parts together kept more than the limit. A part sorted by
//! value keeps its values until the merge, which clears them afterwards
//! for a keys-only request.

use cairn_api::etcdserverpb::{RangeRequest, RangeResponse};

use super::{Kept, Order, SortTarget, Span};
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
    Ok(Some(RangeRequest {
        key,
        range_end,
        revision,
        keys_only: req.keys_only && !by_value,
        ..req.clone()
    }))
}

/// The answer to `req` from its parts' answers, in the key order of the
/// regions they came from, with header revision `revision`.
pub fn merge_ranges(
    req: &RangeRequest,
    parts: Vec<RangeResponse>,
    revision: i64,
) -> Result<RangeResponse> {
    let order = Order::of(req)?;
    let limit = usize::try_from(req.limit).ok().filter(|&l| l > 0);
    let mut kept = Kept::new(order);
    let mut count = 0;
    let mut more = false;
    let mut offered = 0usize;
    for part in parts {
        count += part.count;
        more |= part.more;
        offered += part.kvs.len();
        for kv in part.kvs {
            kept.offer(kv, limit);
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
                parts.push(range(e, &p, revs).unwrap());
            }
        }
        merge_ranges(req, parts, revs.current).unwrap()
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
