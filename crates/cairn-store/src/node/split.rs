//! Splitting a data region by hand (tests, and later the split checker):
//! the new region's ID comes from the TSO (unique across the cluster, and
//! below 2^53 like every revision), the split is one command in the
//! region's log (see `cairn_raft::state_machine::split`), and every
//! replica that applies it starts the new region's replica on its own
//! node (`Node::host`). The leaders then publish both ranges to the meta
//! region's directory (`background::publish_regions`).

use std::time::{Duration, Instant};

use cairn_raft::Command;

use crate::node::{Node, META_REGION, REQUEST_TIMEOUT};
use crate::remote::ForwardOp;
use crate::tso;
use crate::{Error, Result};

impl Node {
    /// Splits data region `region` at `at` (the new region holds `[at,
    /// end)`); returns the new region's ID once its replica runs on this
    /// node. `EpochMismatch` if the region split meanwhile (this node's
    /// view of its epoch was old) or `at` is not strictly inside it.
    pub async fn split_region(&self, region: u64, at: Vec<u8>) -> Result<u64> {
        if region == META_REGION {
            return Err(Error::Internal("the meta region does not split".into()));
        }
        let epoch = self.region(region)?.shared.range().epoch;
        let meta = self.region(META_REGION)?;
        let child = tso::fetch_timestamps(&self.tso, &self.pool, &meta.raft, 1).await? as u64;
        let cmd = Command::Split { at, child, epoch };
        self.submit(region, ForwardOp::Plain(cmd))
            .await?
            .applied()?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while self.regions.get(child).is_none() {
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(child)
    }
}
