//! etcd's `v3electionpb.Election` service: campaign, proclaim, leader,
//! observe, resign — on leases and revisions like locks (see
//! [`crate::coord`]): the leader is the contender with the smallest create
//! revision under the election's prefix. Observe is [`crate::observe`].

use std::sync::Arc;

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use cairn_api::v3electionpb::election_server::Election;
use cairn_api::v3electionpb::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use cairn_auth::needs;
use cairn_store::Access;

use crate::auth;
use crate::coord::{self, AbandonGuard};
use crate::Context;

/// etcd's messages for election misuse.
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER: &str = "\"leader\" field must be provided";
/// A campaigner whose key vanished while it waited. etcd's `Campaign` has
/// no such check (it would report leadership); Cairn refuses, with the
/// message etcd's mutex uses for the same case.
const SESSION_EXPIRED: &str = "election: session is expired";

/// The Election service of one node.
pub struct ElectionService {
    ctx: Arc<Context>,
}

impl ElectionService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

/// Read on every contender under `pfx` (Leader, Observe).
fn read_prefix(pfx: &[u8]) -> cairn_auth::Needs {
    needs::range(&RangeRequest {
        key: pfx.to_vec(),
        range_end: coord::prefix_end(pfx),
        ..Default::default()
    })
}

fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        // A put (and maybe a lease grant), refused over quota as etcd's
        // election service's KV calls are; so is a Proclaim.
        crate::quota::check(&self.ctx, true)?;
        let pfx = prefix(&req.get_ref().name);
        let access = auth::access(&req, needs::prefix(&pfx, &coord::prefix_end(&pfx)));
        let req = req.into_inner();
        let lease = coord::session_lease(&self.ctx, req.lease, &access).await?;
        let entered = coord::enter(&self.ctx, &pfx, lease, &req.value, &access).await?;
        let guard = AbandonGuard::new(self.ctx.clone(), &entered);
        let at = coord::wait_turn(&self.ctx, &pfx, &entered, SESSION_EXPIRED, &access).await?;
        guard.disarm();
        Ok(Response::new(CampaignResponse {
            header: Some(self.ctx.header(at)),
            leader: Some(LeaderKey {
                name: req.name,
                key: entered.key,
                rev: entered.rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let creds = auth::credentials(&req);
        let req = req.into_inner();
        let Some(l) = req.leader else {
            return Err(Status::unknown(MISSING_LEADER));
        };
        crate::quota::check(&self.ctx, true)?;
        // A leader named with lease 0 goes on a fresh lease nobody keeps
        // alive, as etcd's server opens an orphaned session for it: the
        // key is never left without a lease (a dead leader would then
        // hold the election for good).
        let key_rw = Access::client(&creds, needs::prefix(&l.key, &[]));
        let lease = coord::session_lease(&self.ctx, l.lease, &key_rw).await?;
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: l.key.clone(),
                target_union: Some(TargetUnion::CreateRevision(l.rev)),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: l.key,
                    value: req.value,
                    lease,
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        let access = Access::client(&creds, needs::txn(&txn));
        let resp = self
            .ctx
            .node
            .txn(&txn, &access)
            .await
            .map_err(crate::error::Error::from)?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(ProclaimResponse {
            header: Some(self.ctx.header(resp.header.map_or(0, |h| h.revision))),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let pfx = prefix(&req.get_ref().name);
        let access = auth::access(&req, read_prefix(&pfx));
        match coord::first(&self.ctx, &pfx, &access).await? {
            (Some(kv), at) => Ok(Response::new(LeaderResponse {
                header: Some(self.ctx.header(at)),
                kv: Some(kv),
            })),
            (None, _) => Err(Status::unknown(NO_LEADER)),
        }
    }

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<LeaderResponse>>, Status> {
        let pfx = prefix(&req.get_ref().name);
        let access = auth::access(&req, read_prefix(&pfx));
        let creds = auth::credentials(&req);
        // Refused at once, not as the stream's first message.
        self.ctx
            .node
            .authorize(&access)
            .await
            .map_err(crate::error::Error::from)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(crate::observe::run(
            self.ctx.clone(),
            pfx,
            access,
            creds,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let creds = auth::credentials(&req);
        let Some(l) = req.into_inner().leader else {
            return Err(Status::unknown(MISSING_LEADER));
        };
        let key_rw = needs::prefix(&l.key, &[]);
        let rev = coord::leave(
            &self.ctx,
            &l.key,
            coord::Only::Created(l.rev),
            &Access::client(&creds, key_rw),
        )
        .await?;
        Ok(Response::new(ResignResponse {
            header: Some(self.ctx.header(rev)),
        }))
    }
}
