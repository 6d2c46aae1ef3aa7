//! Sequential consistency of serializable reads on one member, as etcd
//! gives it: a client that talks to one member sees its revisions only
//! move forward, and its own writes in its serializable reads. (etcd
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
//! an idle region closes every quarter second) until its replicas are that
//! far; if they are not by [`SEQUENTIAL_WAIT`], it is served the
//! linearizable way instead, whose revision is at least as high.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::node::{Node, Region};

/// How long a serializable read waits for this member's replicas to reach
/// the revisions it has answered with, before it is read linearizably.
pub(super) const SEQUENTIAL_WAIT: Duration = Duration::from_secs(1);

impl Node {
    /// The highest revision this member has answered a KV call with.
    pub(super) fn answered(&self) -> i64 {
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
        loop {
            if region.shared.revisions().current >= floor {
                return true;
            }
            if since.elapsed() >= SEQUENTIAL_WAIT || self.is_stopped() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
