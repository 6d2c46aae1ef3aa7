//! etcd's `v3lockpb.Lock` service: distributed locks on leases and revisions
//! (see [`crate::coord`]). The returned key, with its create revision, is the
//! fencing token.

use std::sync::Arc;

use cairn_api::v3lockpb::lock_server::Lock;
use cairn_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use crate::coord::{self, AbandonGuard};
use crate::Context;

/// etcd's `concurrency.ErrSessionExpired`: the waiter's key vanished.
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// The Lock service of one node.
pub struct LockService {
    ctx: Arc<Context>,
}

impl LockService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = req.into_inner();
        let mut prefix = req.name.clone();
        prefix.push(b'/');
        let lease = coord::session_lease(&self.ctx, req.lease).await?;
        let (key, rev) = coord::enter(&self.ctx, &prefix, lease, b"").await?;
        // If the client goes away while waiting, its place in line is given up.
        let guard = AbandonGuard::new(self.ctx.clone(), key.clone(), rev);
        let at = coord::wait_turn(&self.ctx, &prefix, &key, rev, SESSION_EXPIRED).await?;
        guard.disarm();
        Ok(Response::new(LockResponse {
            header: Some(self.ctx.header(at)),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let rev = coord::leave(&self.ctx, &req.into_inner().key, None).await?;
        Ok(Response::new(UnlockResponse {
            header: Some(self.ctx.header(rev)),
        }))
    }
}
