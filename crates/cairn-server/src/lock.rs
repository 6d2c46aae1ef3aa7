//! etcd's `v3lockpb.Lock` service: distributed locks on leases and revisions
//! (see [`crate::coord`]). The returned key, with its create revision, is the
//! fencing token.

use std::sync::Arc;

use cairn_api::v3lockpb::lock_server::Lock;
use cairn_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use cairn_api::etcdserverpb::DeleteRangeRequest;
use cairn_auth::needs;

use crate::auth;
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
        // A put (and maybe a lease grant), refused over quota as etcd's
        // lock service's KV calls are.
        crate::quota::check(&self.ctx, true)?;
        let mut prefix = req.get_ref().name.clone();
        prefix.push(b'/');
        let access = auth::access(&req, needs::prefix(&prefix, &coord::prefix_end(&prefix)));
        let req = req.into_inner();
        let lease = coord::session_lease(&self.ctx, req.lease, &access).await?;
        let entered = coord::enter(&self.ctx, &prefix, lease, b"", &access).await?;
        if entered.taken_over && !cairn_store::planted::on("relock-clean-up") {
            // The key of an earlier call with the same lease (the session),
            // maybe holding the lock now: then this call holds it too, at
            // once, with no clean-up armed (as etcd's Mutex.Lock returns
            // when the session's key is first) — giving up mid-wait must
            // not delete a key another call holds. Not first: it waits,
            // and gives up the key if the client goes away (etcd unlocks).
            if let Some(at) = coord::first_now(&self.ctx, &prefix, &entered, &access).await? {
                return Ok(Response::new(LockResponse {
                    header: Some(self.ctx.header(at)),
                    key: entered.key,
                }));
            }
        }
        // If the client goes away while waiting, its place in line is given up.
        let guard = AbandonGuard::new(self.ctx.clone(), &entered);
        let at = coord::wait_turn(&self.ctx, &prefix, &entered, SESSION_EXPIRED, &access).await?;
        guard.disarm();
        Ok(Response::new(LockResponse {
            header: Some(self.ctx.header(at)),
            key: entered.key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = req.get_ref().key.clone();
        let access = auth::access(
            &req,
            needs::delete(&DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            }),
        );
        let rev = coord::leave(&self.ctx, &key, coord::Only::Any, &access).await?;
        Ok(Response::new(UnlockResponse {
            header: Some(self.ctx.header(rev)),
        }))
    }
}
