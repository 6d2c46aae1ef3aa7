//! Transaction locks: the lock column of a Percolator-style two-phase
//! commit, for a `Txn` whose keys lie in several regions.
//!
//! A transaction across regions first *prewrites* in every region it
//! touches: the region records a [`Lock`] over every span the transaction
//! reads or writes there (its *footprint*: compare keys and ranges, and the
//! keys and ranges of every op of both branches, nested ones included) —
//! refused if a span overlaps another transaction's lock. While a lock is
//! held, nothing else writes in its spans (a single-region write that
//! touches one is refused and retried after the lock goes), so the
//! coordinator can evaluate the compares against the state the commit will
//! follow, and no write can slip in between (write skew is impossible: the
//! compared keys are locked as much as the written ones).
//!
//! The lock in the *primary* region (the one holding the transaction's
//! lowest key) is where the transaction's fate is decided: committing it
//! records [`Outcome::Committed`] with the commit timestamp and the branch
//! path, a rollback records [`Outcome::RolledBack`] — both in the primary's
//! Raft-replicated state. Anyone who meets a lock whose coordinator went
//! away asks the primary, which settles the fate once (rolling the
//! transaction back if it is still undecided), and then finishes that
//! region's part the same way.
//!
//! Each lock remembers the region's revision when it was placed (its
//! *floor*): the commit's timestamp is fetched after every prewrite, so it
//! is above the floor, and no revision above the floor is final in the
//! lock's spans until the lock goes. A reader at a revision above a lock's
//! floor whose span overlaps the lock waits (or resolves it); the region's
//! change feed is resolved only up to the lowest floor.
//!
//! **Leases.** The lease table (records and the lease → key index) lives
//! in the region holding the first key. A transaction that puts a key
//! outside it with a lease also locks there, *claiming the lease for an
//! attach*: the table's part of its commit records the attachment, and is
//! refused unless the lease still exists and no revoke claims it then (the
//! transaction rolls back and starts again, to find the lease gone). A
//! revoke whose keys lie in several regions is a transaction too, deleting
//! them at one revision; it *claims its lease for the revoke*. A revoke
//! claim stands in the way of every later claim of its lease (attach or
//! revoke), but does not wait for attaches already claimed: those cannot
//! commit past it. So while it is held no key joins the lease, and the
//! keys the revoke names are all the lease has; and a stream of attaches
//! never starves a revoke.
//!
//! Everything here is a pure function of the state: the region's state
//! machine applies it identically on every replica.

use std::collections::BTreeMap;

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::TxnRequest;
use serde::{Deserialize, Serialize};

/// A key span `[start, end)`; `end` empty: to the end of the keyspace.
pub type KeySpan = (Vec<u8>, Vec<u8>);

/// One transaction's lock in a region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The region holding the transaction's primary lock.
    pub primary: u64,
    /// Every region the transaction locks, the primary first (whoever
    /// resolves it finishes them all, then the primary forgets it).
    pub regions: Vec<u64>,
    /// The spans locked here.
    pub spans: Vec<KeySpan>,
    /// The region's revision when the lock was placed.
    pub floor: i64,
    /// The prost-encoded `TxnRequest`, so whoever finishes the transaction
    /// here can apply its writes. Shared: the applied record holding
    /// the lock is copied for every entry the region applies.
    pub txn: bytes::Bytes,
    /// Leases claimed here (only in the region holding the lease table).
    pub leases: LeaseClaims,
}

/// The leases a transaction's lock claims in the region holding the
/// lease table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseClaims {
    /// Leases it attaches keys to (shared claims).
    pub attach: Vec<i64>,
    /// Leases it revokes (exclusive claims); committing the part in the
    /// lease table's region deletes them.
    pub revoke: Vec<i64>,
    /// Not 0: the revoke of leases the lease leader of this term found
    /// expired, claimed only from an entry of that term (a later leader
    /// may have renewed them).
    pub decided_in: u64,
}

impl LeaseClaims {
    /// True when no lease is claimed.
    pub fn is_empty(&self) -> bool {
        self.attach.is_empty() && self.revoke.is_empty()
    }

    /// True when these claims must wait for `held`: a held revoke claim
    /// stands in the way of any new claim of its lease.
    fn blocked_by(&self, held: &LeaseClaims) -> bool {
        self.attach
            .iter()
            .chain(&self.revoke)
            .any(|id| held.revoke.contains(id))
    }
}

/// What a write needs free of other transactions' locks: its key spans,
/// and its lease claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// Spans read or written.
    pub spans: Vec<KeySpan>,
    /// Leases attached to or revoked.
    pub leases: LeaseClaims,
}

/// The fate of a transaction whose primary lock was in this region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Committed at `commit_ts`, taking the branches `path`.
    Committed { commit_ts: i64, path: Vec<bool> },
    /// Rolled back: no part of it may commit.
    RolledBack,
}

/// A lock met by a request: whose it is, and where its fate is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRef {
    /// The transaction (its start timestamp, unique).
    pub start_ts: i64,
    /// The region holding its primary lock.
    pub primary: u64,
}

/// A region's transaction locks and the outcomes of the transactions
/// whose primary was here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locks {
    /// Held locks by transaction start timestamp.
    pub held: BTreeMap<i64, Lock>,
    /// Outcomes of transactions whose primary lock was here, by start
    /// timestamp, kept until the coordinator has finished every region
    /// (`forget`).
    pub outcomes: BTreeMap<i64, Outcome>,
}

impl Locks {
    /// True when no lock is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The first lock (of a transaction other than `except`) in the way of
    /// `claim`: a span overlapping one of its spans, or a revoke claim of
    /// a lease it claims.
    pub fn conflict(&self, claim: &Claim, except: Option<i64>) -> Option<LockRef> {
        self.held
            .iter()
            .filter(|(ts, _)| Some(**ts) != except)
            .find(|(_, l)| {
                l.spans
                    .iter()
                    .any(|a| claim.spans.iter().any(|b| overlaps(a, b)))
                    || claim.leases.blocked_by(&l.leases)
            })
            .map(|(ts, l)| LockRef {
                start_ts: *ts,
                primary: l.primary,
            })
    }

    /// The lock (of a transaction other than `except`) claiming lease `id`
    /// for a revoke, if any.
    pub fn revoking(&self, id: i64, except: i64) -> Option<LockRef> {
        self.held
            .iter()
            .find(|(ts, l)| **ts != except && l.leases.revoke.contains(&id))
            .map(|(ts, l)| LockRef {
                start_ts: *ts,
                primary: l.primary,
            })
    }

    /// The first lock overlapping `span` that a read at `revision` must
    /// wait for: one placed below it whose transaction started below it
    /// (its commit may land at or below it). A commit timestamp is fetched,
    /// confirmed, after the start timestamp was handed out, so it is above
    /// it: a transaction started at or above `revision` commits above it.
    /// So a read that keeps its timestamp while it waits is held up only
    /// by transactions started below it, not by a stream of later ones.
    pub fn blocking_read(&self, span: &KeySpan, revision: i64) -> Option<LockRef> {
        self.held
            .iter()
            .filter(|(ts, l)| l.floor < revision && **ts < revision)
            .find(|(_, l)| l.spans.iter().any(|a| overlaps(a, span)))
            .map(|(ts, l)| LockRef {
                start_ts: *ts,
                primary: l.primary,
            })
    }

    /// The first lock placed, and started, below `revision` that revokes a
    /// lease (its commit may delete lease records at or below it), whatever its
    /// spans: a revoke whose keys lie in other regions holds no span in
    /// the lease table's region.
    pub fn revoking_below(&self, revision: i64) -> Option<LockRef> {
        self.held
            .iter()
            .filter(|(ts, l)| l.floor < revision && **ts < revision && !l.leases.revoke.is_empty())
            .map(|(ts, l)| LockRef {
                start_ts: *ts,
                primary: l.primary,
            })
            .next()
    }

    /// The revision up to which the region's history is final: `current`,
    /// or just the lowest floor of a held lock.
    pub fn resolved(&self, current: i64) -> i64 {
        self.held
            .values()
            .map(|l| l.floor)
            .min()
            .map_or(current, |f| f.min(current))
    }

    /// The first held lock with a span at or above `at`: what a split at
    /// `at` waits for. A lock wholly below it stays with the parent, whose
    /// commit writes only there (a lock's spans cover every key its
    /// transaction reads or writes in the region); lease claims have no
    /// span and stay with the lease table, which never moves.
    pub fn at_or_above(&self, at: &[u8]) -> Option<LockRef> {
        let above: KeySpan = (at.to_vec(), Vec::new());
        self.held
            .iter()
            .find(|(_, l)| l.spans.iter().any(|s| overlaps(s, &above)))
            .map(|(ts, l)| LockRef {
                start_ts: *ts,
                primary: l.primary,
            })
    }

    /// Some held lock, if any (what a compaction waits for).
    pub fn any(&self) -> Option<LockRef> {
        self.held.iter().next().map(|(ts, l)| LockRef {
            start_ts: *ts,
            primary: l.primary,
        })
    }
}

/// True when two spans share a key.
pub fn overlaps(a: &KeySpan, b: &KeySpan) -> bool {
    (a.1.is_empty() || b.0 < a.1) && (b.1.is_empty() || a.0 < b.1)
}

/// etcd's `(key, range_end)` as a [`KeySpan`]: one key is `[key, key\0)`,
/// `range_end` `\0` is everything from `key` on.
pub fn etcd_span(key: &[u8], range_end: &[u8]) -> KeySpan {
    match range_end {
        [] => (key.to_vec(), [key, &[0]].concat()),
        [0] => (key.to_vec(), Vec::new()),
        e => (key.to_vec(), e.to_vec()),
    }
}

/// `span` cut to `[start, end)` (`end` empty: to the end); `None` if they
/// do not meet.
pub fn clip(span: &KeySpan, start: &[u8], end: &[u8]) -> Option<KeySpan> {
    let s = span.0.as_slice().max(start).to_vec();
    let e = match (span.1.is_empty(), end.is_empty()) {
        (true, true) => Vec::new(),
        (true, false) => end.to_vec(),
        (false, true) => span.1.clone(),
        (false, false) => span.1.as_slice().min(end).to_vec(),
    };
    (e.is_empty() || s < e).then_some((s, e))
}

/// Every span `req` reads or writes, whichever branches it takes: its
/// compares and the keys and ranges of the ops of both branches, nested
/// transactions included (a Range op with an explicit revision too: it
/// reads history, but its keys are cheap to lock and keep the rule simple).
pub fn footprint(req: &TxnRequest) -> Vec<KeySpan> {
    fn walk(req: &TxnRequest, out: &mut Vec<KeySpan>) {
        for c in &req.compare {
            out.push(etcd_span(&c.key, &c.range_end));
        }
        for op in req.success.iter().chain(&req.failure) {
            match &op.request {
                Some(Request::RequestRange(r)) => out.push(etcd_span(&r.key, &r.range_end)),
                Some(Request::RequestPut(p)) => out.push(etcd_span(&p.key, &[])),
                Some(Request::RequestDeleteRange(d)) => out.push(etcd_span(&d.key, &d.range_end)),
                Some(Request::RequestTxn(t)) => walk(t, out),
                None => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(req, &mut out);
    // A range whose end is not past its key names no key (etcd answers
    // it empty): nothing to lock.
    out.retain(|(start, end)| end.is_empty() || start < end);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp};

    fn lock(spans: &[(&str, &str)], floor: i64) -> Lock {
        Lock {
            primary: 1,
            regions: vec![1],
            spans: spans
                .iter()
                .map(|(s, e)| (s.as_bytes().to_vec(), e.as_bytes().to_vec()))
                .collect(),
            floor,
            txn: bytes::Bytes::new(),
            leases: LeaseClaims::default(),
        }
    }

    fn spans_claim(spans: &[KeySpan]) -> Claim {
        Claim {
            spans: spans.to_vec(),
            ..Claim::default()
        }
    }

    fn span(s: &str, e: &str) -> KeySpan {
        (s.as_bytes().to_vec(), e.as_bytes().to_vec())
    }

    #[test]
    fn spans_overlap_only_when_they_share_a_key() {
        assert!(overlaps(&span("a", "c"), &span("b", "d")));
        assert!(!overlaps(&span("a", "b"), &span("b", "c")));
        assert!(overlaps(&span("a", ""), &span("z", "zz")));
        assert!(!overlaps(&span("b", ""), &span("a", "b")));
        assert!(overlaps(&etcd_span(b"k", b""), &span("k", "l")));
        assert!(!overlaps(&etcd_span(b"k", b""), &etcd_span(b"k0", b"")));
    }

    #[test]
    fn clip_cuts_a_span_to_a_region() {
        assert_eq!(clip(&span("a", "z"), b"m", b""), Some(span("m", "z")));
        assert_eq!(clip(&span("a", ""), b"m", b"p"), Some(span("m", "p")));
        assert_eq!(clip(&span("a", "m"), b"m", b"p"), None);
        assert_eq!(clip(&span("q", ""), b"m", b"p"), None);
    }

    #[test]
    fn a_conflict_is_another_transactions_overlapping_lock() {
        let mut l = Locks::default();
        l.held.insert(10, lock(&[("a", "c")], 5));
        let claim = spans_claim(&[span("b", "b\0")]);
        assert_eq!(l.conflict(&claim, None).map(|r| r.start_ts), Some(10));
        assert_eq!(l.conflict(&claim, Some(10)), None);
        assert_eq!(l.conflict(&spans_claim(&[span("c", "d")]), None), None);
    }

    #[test]
    fn a_revoke_claim_stands_in_the_way_of_later_claims_only() {
        let mut l = Locks::default();
        let mut attach = lock(&[], 5);
        attach.leases.attach = vec![7];
        l.held.insert(10, attach);
        let claim = |attach: Vec<i64>, revoke: Vec<i64>| Claim {
            spans: Vec::new(),
            leases: LeaseClaims {
                attach,
                revoke,
                decided_in: 0,
            },
        };
        // Attaches share; a revoke does not wait for them.
        assert_eq!(l.conflict(&claim(vec![7], vec![]), None), None);
        assert_eq!(l.conflict(&claim(vec![], vec![7]), None), None);
        let mut revoke = lock(&[], 6);
        revoke.leases.revoke = vec![8];
        l.held.insert(11, revoke);
        assert_eq!(
            l.conflict(&claim(vec![8], vec![]), None)
                .map(|r| r.start_ts),
            Some(11)
        );
        assert_eq!(
            l.conflict(&claim(vec![], vec![8]), None)
                .map(|r| r.start_ts),
            Some(11)
        );
        assert_eq!(l.conflict(&claim(vec![9], vec![]), None), None);
    }

    #[test]
    fn reads_wait_only_for_locks_placed_below_their_revision() {
        let mut l = Locks::default();
        l.held.insert(10, lock(&[("a", "c")], 5));
        l.held.insert(11, lock(&[("x", "y")], 7));
        assert!(l.blocking_read(&span("a", "b"), 5).is_none());
        // Placed below 6, but started at 10: it commits above 10.
        assert!(l.blocking_read(&span("a", "b"), 6).is_none());
        assert!(l.blocking_read(&span("a", "b"), 10).is_none());
        assert_eq!(l.blocking_read(&span("a", "b"), 11).unwrap().start_ts, 10);
        assert!(l.blocking_read(&span("c", "x"), 100).is_none());
        assert_eq!(l.resolved(9), 5);
        assert_eq!(l.resolved(3), 3);
        assert_eq!(Locks::default().resolved(9), 9);
    }

    #[test]
    fn the_footprint_holds_compares_and_both_branches_nested() {
        let put = |k: &str| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        };
        let inner = TxnRequest {
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b"r".to_vec(),
                    range_end: b"s".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let req = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                range_end: vec![0],
                ..Default::default()
            }],
            success: vec![put("p")],
            failure: vec![RequestOp {
                request: Some(Request::RequestTxn(inner)),
            }],
        };
        assert_eq!(
            footprint(&req),
            vec![span("c", ""), span("p", "p\0"), span("r", "s")]
        );
    }
}
