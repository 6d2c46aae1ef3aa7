//! Sequential consistency of serializable reads on one member, as etcd
//! gives it: a client that talks to one member sees its own writes in its
//! serializable reads, and their revisions only move forward. (etcd
//! answers a write only once the member that took it has applied it, and
//! a serializable read there is that member's newest state.)
//!
//! Here a write is answered once its region's leader has applied it, and a
//! serializable read is served from this member's replicas: of one region
//! at its newest revision, of several at the lowest revision they have
//! all resolved (`range_serializable`). Either can lie below a revision
//! this member has already answered with — a write through it whose
//! entry its own replica has not applied yet, a read of a busier region,
//! or an idle region waiting for its next closed timestamp. So the member
//! keeps the highest revision it has answered any KV call with, and a
//! serializable read waits (briefly: a replica catches up in milliseconds,
//! and the read asks an idle region's leader for a close, `closes.rs`)
//! until its replicas are that far; if they are not by [`SEQUENTIAL_WAIT`], it is served the
//! linearizable way instead, whose revision is at least as high.
//!
//! What counts as an answer: a write's revision (a Txn, Put or DeleteRange
//! that wrote, a lease revoke), a serializable Range's or read-only Txn's
//! served from this member's replicas, and with one region a linearizable
//! read's. Not, with several regions, a linearizable read's, a Txn's that
//! wrote nothing across regions, or a serializable read's that was served
//! linearizably after all: those answer with a fresh timestamp no
//! write may ever be stamped at, which an idle region's replica reaches
//! only at its next close — every serializable read after a health probe
//! would wait for it, and a member cut off just after one could serve no
//! stale read at all. They hold no write a later read could miss, so a
//! serializable read may answer below them (a header revision lower than
//! a linearizable one just before; never a missing write). Watch events
//! do not count either. A watch from now starts above the highest answer
//! (`Node::answered_revision`), even where the regions it watches here
//! have not resolved that far: it never sends a client an event older
//! than a write this member already answered it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::response_op::Response;
use cairn_api::etcdserverpb::TxnResponse;

use crate::node::{Node, Region};

/// How long a serializable read waits for this member's replicas to reach
/// the revisions it has answered with, before it is read linearizably.
pub(super) const SEQUENTIAL_WAIT: Duration = Duration::from_secs(1);

impl Node {
    /// The highest revision this member has answered a KV call with (of
    /// those that count, see the module essay). A serializable read waits
    /// for its replicas to reach it; a watch from now starts above it, as
    /// etcd's member has applied every write it answered before it takes
    /// a watch, so a client that wrote through it and then watches from
    /// now is never sent its own, older write.
    pub fn answered_revision(&self) -> i64 {
        self.answered.load(Ordering::Acquire)
    }

    /// Records an answer at `revision`.
    pub(super) fn answering(&self, revision: i64) {
        self.answered.fetch_max(revision, Ordering::AcqRel);
    }

    /// Waits (up to [`SEQUENTIAL_WAIT`] from `since`) until `region`'s
    /// replica here holds every revision up to `floor`; false if it did
    /// not.
    pub(super) async fn region_reaches(&self, region: &Region, since: Instant, floor: i64) -> bool {
        let mut pace = super::close_hurry::HurryPace::default();
        loop {
            if region.shared.revisions().current >= floor {
                return true;
            }
            // An idle region moves only with closes (`closes.rs`): hurry
            // them (`close_hurry`).
            self.want_closes(region);
            if pace.due() && self.data_region_count() > 1 {
                self.hurries.hurry([region.id]);
            }
            if since.elapsed() >= SEQUENTIAL_WAIT || self.is_stopped() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// True when `r` (its branch taken, nested ones included) wrote: a put,
/// or a delete that deleted something.
pub(super) fn wrote(r: &TxnResponse) -> bool {
    r.responses.iter().any(|op| match &op.response {
        Some(Response::ResponsePut(_)) => true,
        Some(Response::ResponseDeleteRange(d)) => d.deleted > 0,
        Some(Response::ResponseTxn(t)) => wrote(t),
        _ => false,
    })
}
