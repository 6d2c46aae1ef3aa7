//! etcd's `Lease` service: grant, revoke, keep-alive (stream), time-to-live,
//! list. Deadlines live in the region leader's lessor (`cairn-store`);
//! requests to other nodes are forwarded there.
//!
//! Access, as etcd: any user may grant, keep alive, list and ask a lease's
//! TTL; the attached keys are shown only to a caller who may read them
//! all (etcd 3.4.26's fix); revoking needs write on every key attached to
//! the lease (it deletes them), checked at apply against the keys attached
//! then — as is a put onto a lease (`cairn-store`'s `checked_submit`).

use std::sync::Arc;

use cairn_api::etcdserverpb::lease_server::Lease;
use cairn_api::etcdserverpb::*;
use cairn_mvcc::Rejection;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use cairn_auth::{Need, Needs, PermKind};
use cairn_store::Access;

use crate::auth;
use crate::error::Error;
use crate::Context;

/// etcd's largest TTL (seconds).
const MAX_TTL: i64 = 9_000_000_000;
/// The smallest TTL granted: etcd's, 1.5 of its 1 s election timeout rounded
/// up, so a client gets what etcd would grant; it is also more than 1.5 of
/// Cairn's longest election timeout (600 ms, `cairn_raft::raft_config`).
const MIN_TTL: i64 = 2;

/// The Lease service of one node.
pub struct LeaseService {
    ctx: Arc<Context>,
}

impl LeaseService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let access = auth::access(&req, Needs::User);
        let req = req.into_inner();
        if req.ttl > MAX_TTL {
            return Err(Error::from(Rejection::LeaseTtlTooLarge).into());
        }
        let ttl = req.ttl.max(MIN_TTL);
        crate::quota::check(&self.ctx, true)?;
        let (id, ttl) = self
            .ctx
            .node
            .lease_grant(req.id, ttl, &access)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(LeaseGrantResponse {
            header: Some(self.ctx.header(self.ctx.node.revision())),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = req.get_ref().id;
        // A known user (with auth on); that it may write every key on the
        // lease is checked where the keys are known for certain: at apply
        // (`Command::CheckedLease`), as etcd does.
        let access = auth::access(&req, Needs::Keys(Vec::new()));
        let rev = self
            .ctx
            .node
            .lease_revoke(id, &access)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(self.ctx.header(rev)),
        }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<tonic::codegen::BoxStream<LeaseKeepAliveResponse>>, Status> {
        let access = auth::access(&req, Needs::User);
        self.ctx
            .node
            .authorize(&access)
            .await
            .map_err(Error::from)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(r)) => r,
                        _ => return,
                    },
                    // A stopping node ends its streams (they hold the node).
                    _ = ctx.node.stopped() => return,
                    // The response side went (the client, or a stream ended
                    // for want of a leader: `require_leader`).
                    _ = tx.closed() => return,
                };
                // Checked per renewal: a user deleted meanwhile stops
                // renewing (a JWT older than an auth change still renews).
                if let Err(e) = ctx.node.authorize_renewal(&access) {
                    let _ = tx.send(Err(Status::from(Error::from(e)))).await;
                    return;
                }
                let reply = match ctx.node.lease_keep_alive(r.id).await {
                    // An unknown lease answers TTL 0 (the stream goes on), as in etcd.
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: Some(ctx.header(ctx.node.revision())),
                        id: r.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(Error::from(e))),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let creds = auth::credentials(&req);
        self.ctx
            .node
            .authorize(&Access::client(&creds, Needs::User))
            .await
            .map_err(Error::from)?;
        let req = req.into_inner();
        let header = Some(self.ctx.header(self.ctx.node.revision()));
        let found = self
            .ctx
            .node
            .lease_time_to_live(req.id, req.keys)
            .await
            .map_err(Error::from)?;
        // The attached keys are data: shown only to a caller who may read
        // every one of them (etcd's fix for CVE-2023-32082).
        if let (true, Some(t)) = (req.keys, &found) {
            let reads = t
                .keys
                .iter()
                .map(|key| Need {
                    kind: PermKind::Read,
                    key: key.clone(),
                    end: Vec::new(),
                })
                .collect();
            self.ctx
                .node
                .authorize(&Access::client(&creds, Needs::Keys(reads)))
                .await
                .map_err(Error::from)?;
        }
        let resp = match found {
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(t) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: if req.keys { t.keys } else { Vec::new() },
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let access = auth::access(&req, Needs::User);
        self.ctx
            .node
            .authorize(&access)
            .await
            .map_err(Error::from)?;
        let ids = self.ctx.node.lease_list().await.map_err(Error::from)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.ctx.header(self.ctx.node.revision())),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}
