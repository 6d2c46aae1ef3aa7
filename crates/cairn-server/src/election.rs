//! etcd's `v3electionpb.Election` service: campaign, proclaim, leader,
//! observe, resign — on leases and revisions like locks (see
//! [`crate::coord`]): the leader is the contender with the smallest create
//! revision under the election's prefix.

use std::sync::Arc;

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchResponse,
};
use cairn_api::mvccpb::KeyValue;
use cairn_api::v3electionpb::election_server::Election;
use cairn_api::v3electionpb::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use cairn_auth::needs;
use cairn_store::{Access, Credentials};

use crate::auth;
use crate::coord::{self, AbandonGuard};
use crate::watch;
use crate::Context;
use cairn_api::mvccpb::event::EventType;

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
        let creds = auth::credentials(&req);
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
                let (leader, at) = match coord::first(&ctx, &pfx, &access).await {
                    Ok(found) => found,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let found = match leader {
                    Some(kv) => Followed::Put(kv, at),
                    // No leader: the first key put under the prefix.
                    None => {
                        let create = WatchCreateRequest {
                            key: pfx.clone(),
                            range_end: coord::prefix_end(&pfx),
                            start_revision: at + 1,
                            ..Default::default()
                        };
                        next_put(&ctx, &creds, create, &tx).await
                    }
                };
                let (kv, rev) = match found {
                    Followed::Put(kv, rev) => (kv, rev),
                    Followed::ReadAgain => continue,
                    Followed::End => return,
                };
                let id = (kv.key.clone(), kv.mod_revision);
                if last.as_ref() != Some(&id) {
                    last = Some(id);
                    let r = LeaderResponse {
                        header: Some(ctx.header(rev)),
                        kv: Some(kv.clone()),
                    };
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                // Every value the leader proclaims after `rev` (no put of
                // its key came between its value and `rev`), from history
                // on, until its key goes: read the leader again then. (From
                // the read's revision, as etcd's observer, not the value's:
                // history below a compaction is gone.)
                if !follow(&ctx, &creds, kv.key, rev + 1, &mut last, &tx).await {
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

/// What a watch of the election brought.
enum Followed {
    /// A put, and the revision to answer it at.
    Put(KeyValue, i64),
    /// Its key was deleted, or the watch was refused or cut short (not by
    /// a compaction): read the leader again.
    ReadAgain,
    /// The client or the node went, or a compaction cancelled the watch
    /// (etcd's observer then ends the stream).
    End,
}

/// The first put `create`'s watch brings (at its own revision).
async fn next_put(
    ctx: &Arc<Context>,
    creds: &Credentials,
    create: WatchCreateRequest,
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Followed {
    let mut watch = watch::open(ctx.clone(), creds.clone(), create);
    loop {
        let r = tokio::select! {
            r = watch.recv() => r,
            _ = tx.closed() => return Followed::End,
        };
        let Some(Ok(r)) = r else {
            return Followed::End;
        };
        if r.canceled {
            return cancelled(&r).await;
        }
        for ev in r.events {
            match ev.kv {
                Some(kv) if ev.r#type == EventType::Put as i32 => {
                    let rev = kv.mod_revision;
                    return Followed::Put(kv, rev);
                }
                // A delete with no leader ends nothing.
                _ => {}
            }
        }
    }
}

/// Sends every put of the leader's `key` from revision `from` on, as
/// etcd's observer does: it watches the key from there, so a put is
/// reported even if the next came before it was read. True when the key
/// was deleted (or the watch ended early): read the leader again.
async fn follow(
    ctx: &Arc<Context>,
    creds: &Credentials,
    key: Vec<u8>,
    from: i64,
    last: &mut Option<(Vec<u8>, i64)>,
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> bool {
    let create = WatchCreateRequest {
        key: key.clone(),
        start_revision: from,
        ..Default::default()
    };
    let mut watch = watch::open(ctx.clone(), creds.clone(), create);
    loop {
        let r = tokio::select! {
            r = watch.recv() => r,
            _ = tx.closed() => return false,
        };
        let Some(Ok(r)) = r else {
            return false;
        };
        if r.canceled {
            return !matches!(cancelled(&r).await, Followed::End);
        }
        for ev in r.events {
            let Some(kv) = ev.kv else { continue };
            if ev.r#type == EventType::Delete as i32 {
                return true;
            }
            *last = Some((key.clone(), kv.mod_revision));
            let r = LeaderResponse {
                header: Some(ctx.header(kv.mod_revision)),
                kv: Some(kv),
            };
            if tx.send(Ok(r)).await.is_err() {
                return false;
            }
        }
    }
}

/// A watch the election followed was cancelled: by a compaction, the end
/// (as etcd's observer ends); otherwise (a region not served here yet)
/// read again after a pause.
async fn cancelled(r: &WatchResponse) -> Followed {
    if r.compact_revision > 0 {
        return Followed::End;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Followed::ReadAgain
}
