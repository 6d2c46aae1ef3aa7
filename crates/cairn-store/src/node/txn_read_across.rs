//! A read-only `Txn` whose keys lie in several regions, answered at one
//! read timestamp like a Range across regions (`range_across`), with no
//! lock placed and no revision taken.
//!
//! Such a Txn used to run as a two-phase commit that wrote nothing: a lock
//! in every region it touched, and a commit timestamp of its own — a
//! revision no write used, which then showed as the store's revision in
//! every later read (etcd's revision moves only with writes). Now:
//!
//! 1. take the read timestamp T (the newest the TSO has handed out);
//! 2. catch each region of the footprint (`cairn_mvcc::locks::footprint`:
//!    its compares and both branches' ranges) up to T, and wait for, or
//!    resolve, any lock in the footprint that may still commit at or below
//!    T (a region that split meanwhile keeps what it was checked for, and
//!    only the split-off part is routed and checked again at the same T,
//!    as a Range across regions does);
//! 3. evaluate the compares and ranges as of revision T
//!    (`cairn_mvcc::read_txn_at`: versions, not the newest-key index) on
//!    one view of the node's engine (every region shares it), taken after
//!    every region's check: what landed since has revisions above T
//!    (a transaction across regions whose lock was not in the way commits
//!    above T), which a read as of T does not see.
//!
//! The header carries T. A compaction past T applied meanwhile makes the
//! read start again at a new timestamp (etcd never refuses a read of the
//! newest keys as compacted); a range naming a compacted revision is
//! refused, as etcd's.

use cairn_api::etcdserverpb::{TxnRequest, TxnResponse};
use cairn_mvcc::locks::{footprint, KeySpan};
use futures::{StreamExt, TryStreamExt};

use super::kv::StaleRoutes;
use super::range_across::CATCH_UP_AT_ONCE;
use super::store_hash::CatchUp;
use crate::node::Node;
use crate::{Access, Error, Result};

impl Node {
    /// Serves a read-only `req` whose footprint lies in several regions
    /// (see the module essay).
    pub(crate) async fn read_txn_across(
        &self,
        req: &TxnRequest,
        access: &Access,
    ) -> Result<TxnResponse> {
        let stale = StaleRoutes::new();
        let spans = joined(footprint(req));
        // Kept while the read waits for locks (as a Range's: only
        // transactions started below it can commit at or below it).
        let mut kept = None;
        loop {
            let t = match kept.take() {
                Some(t) => t,
                None => self.read_timestamp().await?,
            };
            // Each span's regions caught up to T; one that split meanwhile
            // keeps its left part and the rest is routed again at the same
            // T (`regions_caught_up_at`): under splits every few puts,
            // beginning again at a new T each time starved the read.
            let caught: Vec<_> = futures::stream::iter(spans.clone())
                .map(|s| async move {
                    let end = (!s.1.is_empty()).then_some(s.1.as_slice());
                    self.regions_caught_up_at(&s.0, end, t, Some(&s), CatchUp::Read)
                        .await
                })
                .buffered(CATCH_UP_AT_ONCE)
                .try_collect()
                .await?;
            let Some(caught) = caught.into_iter().collect::<Option<Vec<_>>>() else {
                stale.wait().await?;
                continue;
            };
            if let Some((region, lock)) = caught.iter().flatten().find_map(|(_, lock)| *lock) {
                // Waited for or resolved: read again at the same T.
                self.resolve_lock(region, lock).await?;
                kept = Some(t);
                continue;
            }
            // Taken after every region's check (see the module essay).
            let view = self.engine.snapshot();
            let Some(now) = self.revisions_after_view(&spans, &stale).await? else {
                stale.wait().await?;
                continue;
            };
            if now.compacted > t {
                // Past T: read again at a new timestamp.
                stale.wait().await?;
                continue;
            }
            self.authorize(access).await?;
            // The view may hold versions up to the newest; the txn reads
            // as of T.
            let revs = cairn_mvcc::Revisions {
                current: now.current.max(t),
                compacted: now.compacted,
            };
            let whole = req.clone();
            return self
                .spans
                .run(move || cairn_mvcc::read_txn_at(&*view, &whole, revs, t))
                .await?
                .map_err(Error::from);
        }
    }
}

/// `spans` (sorted, as `footprint` gives them) with those that overlap or
/// touch joined into one: each is caught up on its own, so a compare on a
/// key inside a range the Txn reads would otherwise ask its region twice.
fn joined(spans: Vec<KeySpan>) -> Vec<KeySpan> {
    let mut out: Vec<KeySpan> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match out.last_mut() {
            // The last reaches to the end of the keyspace, or to this one.
            Some(last) if last.1.is_empty() || start <= last.1 => {
                if end.is_empty() || (!last.1.is_empty() && end > last.1) {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::joined;

    #[test]
    fn overlapping_and_touching_spans_are_joined() {
        let s = |a: &str, b: &str| (a.as_bytes().to_vec(), b.as_bytes().to_vec());
        // A key inside a range, a range touching it, a disjoint key.
        assert_eq!(
            joined(vec![s("a", "c"), s("b", "b\0"), s("c", "d"), s("x", "x\0")]),
            vec![s("a", "d"), s("x", "x\0")]
        );
        // Anything after a span to the end of the keyspace is inside it.
        assert_eq!(
            joined(vec![s("a", "b"), s("m", ""), s("z", "z\0")]),
            vec![s("a", "b"), s("m", "")]
        );
        // A span to the end swallows nothing before it.
        assert_eq!(
            joined(vec![s("a", "b"), s("c", "")]),
            vec![s("a", "b"), s("c", "")]
        );
    }
}
