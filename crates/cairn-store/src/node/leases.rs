//! The Lease entry points. Grants and revokes are proposed in the first
//! data region, which holds the lease table (a revoke whose keys lie in
//! several regions is a transaction across them: `node::lease_across`);
//! keep-alives and TimeToLive are answered by that region leader's lessor
//! (see `crate::lessor`).

use cairn_mvcc::Rejection;
use cairn_raft::Command;

use crate::lessor::{fresh_lease_id, LeaseTtl};
use crate::node::{Node, DATA_REGION};
use crate::remote::ForwardOp;
use crate::{Access, Error, Result};

impl Node {
    /// Grants a lease (`id` 0: the node picks one); returns (id, ttl).
    pub async fn lease_grant(&self, id: i64, ttl: i64, access: &Access) -> Result<(i64, i64)> {
        let chosen = id != 0;
        for attempt in 0..5u64 {
            let id = if chosen {
                id
            } else {
                fresh_lease_id(self.id, attempt)
            };
            let cmd = Command::LeaseGrant { id, ttl };
            let granted = self
                .checked_submit(DATA_REGION, access, ForwardOp::Plain(cmd), false)
                .await?
                .revision();
            match granted {
                Ok(_) => return Ok((id, ttl)),
                Err(Error::Rejected(Rejection::LeaseExists)) if !chosen => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Rejected(Rejection::LeaseExists))
    }

    /// Revokes a lease and deletes its keys (at one revision, in whichever
    /// regions they are); returns the revision after.
    pub async fn lease_revoke(&self, id: i64, access: &Access) -> Result<i64> {
        // Its deletions are this member's answer (`sequential.rs`).
        let revision = self.revoke_lease(id, access).await?;
        self.answering(revision);
        Ok(revision)
    }

    async fn revoke_lease(&self, id: i64, access: &Access) -> Result<i64> {
        let stale = super::kv::StaleRoutes::new();
        loop {
            match self
                .checked_submit(DATA_REGION, access, ForwardOp::Revoke(id), true)
                .await?
                .revision()
            {
                Err(Error::Rejected(Rejection::LeaseOutsideFirstRegion)) => {}
                other => return other,
            }
            // Its keys are in several regions.
            match self.revoke_across(id, 0, access).await {
                Ok(Some(revision)) => return Ok(revision),
                Ok(None) => return Err(Error::Internal("a revoke dropped as an expiry".into())),
                // A split or a stale route meanwhile: from the top.
                Err(Error::EpochMismatch) => stale.wait().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Holds (`on`) or lets go the proposals of this node's replica of
    /// `region` (a leader whose proposals wait behind a slow group, for
    /// tests): they queue until let go.
    #[doc(hidden)]
    pub fn hold_proposals(&self, region: u64, on: bool) -> Result<()> {
        self.region(region)?.proposer.hold(on);
        Ok(())
    }

    /// Refreshes a lease at the region leader; its TTL, 0 if unknown.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        self.submit(DATA_REGION, ForwardOp::LeaseKeepAlive(id))
            .await?
            .ttl()
    }

    /// A lease's remaining TTL, granted TTL and keys (None: no such lease).
    /// `keys`: with its attached keys (else `keys` is empty).
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<Option<LeaseTtl>> {
        let t = self
            .submit(DATA_REGION, ForwardOp::LeaseTimeToLive(id))
            .await?
            .time_to_live()?;
        let Some((remaining, granted, indexed)) = t else {
            return Ok(None);
        };
        Ok(Some(LeaseTtl {
            remaining,
            granted,
            keys: if keys {
                self.still_attached(id, indexed).await?
            } else {
                Vec::new()
            },
        }))
    }

    /// Every granted lease ID (linearizable).
    pub async fn lease_list(&self) -> Result<Vec<i64>> {
        let (snap, _) = self.linearizable_view(DATA_REGION).await?;
        Ok(cairn_mvcc::lease::list(&*snap)?
            .into_iter()
            .map(|l| l.id)
            .collect())
    }
}
