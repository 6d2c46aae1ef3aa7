//! etcd's `v3electionpb.Election` service: campaign, proclaim, leader,
//! observe, resign — on leases and revisions like locks (see
//! [`crate::coord`]): the leader is the contender with the smallest create
//! revision under the election's prefix.

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
use cairn_api::mvccpb::event::EventType;
use cairn_store::watch_hub::{FeedMerger, HubItem};

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
                    lease: l.lease,
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
        // Refused at once, not as the stream's first message.
        self.ctx
            .node
            .authorize(&access)
            .await
            .map_err(crate::error::Error::from)?;
        let ctx = self.ctx.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // The leader's key and revision last sent.
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let mut feed = coord::changes(&ctx, &pfx).await;
                let (leader, at) = match coord::first(&ctx, &pfx, &access).await {
                    Ok(found) => found,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let go_on = match leader {
                    Some(kv) => {
                        let id = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&id) {
                            last = Some(id);
                            let r = LeaderResponse {
                                header: Some(ctx.header(at)),
                                kv: Some(kv.clone()),
                            };
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                        // Every value the leader proclaims, until its key
                        // goes (or the feed breaks): read again then.
                        tokio::select! {
                            go_on = follow(&ctx, &mut feed, kv.key, &mut last, &tx) => go_on,
                            _ = tx.closed() => false,
                            _ = ctx.node.stopped() => false,
                        }
                    }
                    // No leader: read again at the next change under the
                    // prefix.
                    None => tokio::select! {
                        _ = coord::wait_change(&mut feed, &pfx) => true,
                        _ = tx.closed() => false,
                        _ = ctx.node.stopped() => false,
                    },
                };
                if !go_on {
                    return;
                }
            }
        });
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

/// Sends every put of the leader's `key` the feed brings (above the
/// revision `last` sent), as etcd's observer does (it watches the leader's
/// key); ends when the key is deleted or the feed breaks (true: read the
/// leader again) or the client is gone (false).
async fn follow(
    ctx: &Context,
    feed: &mut FeedMerger,
    key: Vec<u8>,
    last: &mut Option<(Vec<u8>, i64)>,
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> bool {
    loop {
        let events = match feed.next().await {
            HubItem::Batch { events, .. } => events,
            HubItem::Discontinuity => return true,
            HubItem::Closed => std::future::pending().await,
        };
        for change in events.iter() {
            let Some(kv) = change.event.kv.as_ref().filter(|kv| kv.key == key) else {
                continue;
            };
            if change.event.r#type == EventType::Delete as i32 {
                return true;
            }
            let sent = last
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map_or(0, |(_, rev)| *rev);
            if kv.mod_revision <= sent {
                continue;
            }
            *last = Some((key.clone(), kv.mod_revision));
            let r = LeaderResponse {
                header: Some(ctx.header(kv.mod_revision)),
                kv: Some(kv.clone()),
            };
            if tx.send(Ok(r)).await.is_err() {
                return false;
            }
        }
    }
}
