//! Bringing a region that missed a compaction up to the store's.
//!
//! A `Compact` is proposed in every data region, the first one's answer
//! being the store's (`kv.rs`): a region whose proposal failed (its leader
//! changing, a timeout) or was refused while it was frozen for a merge
//! that was then abandoned kept its older history. A read at a revision
//! below the compaction would then be served from that region's keys and
//! refused for every other's, and no later `Compact` at or below the
//! store's is accepted to mend it (the store answers "compacted").
//!
//! So every [`CHECK_EVERY`], each member proposes, in every data region it
//! leads, the first region's compaction revision (as this member's replica
//! of the first region has it) where the region's own is below it. It is
//! the same command a client's compaction proposes, so a region idle below
//! that revision moves up to it as there (in its leader's term, settled).
//! A region frozen for a merge refuses it and is tried again at the next
//! check; one a merge absorbs goes with its target's, the higher of the
//! two. Proposals do not wake a hibernating region.

use std::sync::Weak;
use std::time::Duration;

use crate::node::{Node, DATA_REGION, META_REGION};
use crate::remote::ForwardOp;

/// How often each member looks for regions behind the store's compaction.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs the check until the node is gone.
pub(super) async fn catch_up_compactions(node: Weak<Node>) {
    while let Some(n) = super::background::tick(&node, CHECK_EVERY).await {
        n.compact_lagging_regions().await;
    }
}

impl Node {
    /// One check (see the module essay).
    async fn compact_lagging_regions(&self) {
        let Ok(first) = self.region(DATA_REGION) else {
            return;
        };
        let store = first.shared.revisions().compacted;
        if store == 0 {
            return;
        }
        for r in self.regions.all() {
            let lags = r.id != META_REGION
                && r.id != DATA_REGION
                && r.raft.metrics().borrow().current_leader == Some(self.id)
                && r.shared.merge_frozen().is_none()
                && r.shared.revisions().compacted < store;
            if !lags {
                continue;
            }
            match self
                .submit(r.id, ForwardOp::Compact(store))
                .await
                .and_then(|ok| ok.compacted())
            {
                Ok(_) => tracing::info!(region = r.id, store, "compacted up to the store"),
                Err(crate::Error::Rejected(cairn_mvcc::Rejection::Compacted)) => {}
                Err(e) => tracing::debug!(region = r.id, "compacting up to the store: {e}"),
            }
        }
    }
}
