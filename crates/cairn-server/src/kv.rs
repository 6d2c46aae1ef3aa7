//! etcd's `KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Each RPC validates like etcd's v3rpc layer, checks the size limit (not
//! for a Txn of ranges alone, which etcd serves without a proposal), then
//! hands the request to the node with the caller's credentials and what
//! the request needs (`cairn_auth::needs`: etcd's per-op permissions); the
//! node checks them (see `cairn-store`'s `auth`). Put and DeleteRange travel as one-op
//! transactions (same semantics, one write path).

use std::sync::Arc;

use cairn_api::etcdserverpb::kv_server::Kv;
use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::response_op::Response as OpResponse;
use cairn_api::etcdserverpb::*;
use cairn_mvcc::Limits;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::error::Error;
use crate::Context;
use cairn_auth::{needs, Needs};
use cairn_store::Access;

/// etcd's `isTxnReadonly`: every op of both branches is a Range (a nested
/// Txn counts as a write).
fn ranges_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(Op::RequestRange(_))))
}

/// The KV service of one node.
pub struct KvService {
    ctx: Arc<Context>,
}

impl KvService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    fn check_size(&self, m: &impl Message) -> Result<(), Error> {
        if m.encoded_len() > self.ctx.limits.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        Ok(())
    }

    async fn one_op(&self, op: Op, access: &Access) -> Result<(ResponseHeader, OpResponse), Error> {
        let txn = TxnRequest {
            success: vec![RequestOp { request: Some(op) }],
            ..Default::default()
        };
        let resp = self.ctx.node.txn(&txn, access).await?;
        let header = self.ctx.header(resp.header.map_or(0, |h| h.revision));
        let op = resp
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response)
            .ok_or_else(|| {
                Error::Store(cairn_store::Error::Internal("empty txn response".into()))
            })?;
        Ok((header, op))
    }
}

fn mvcc_limits(ctx: &Context) -> Limits {
    Limits {
        max_txn_ops: ctx.limits.max_txn_ops,
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let access = auth::access(&req, needs::range(req.get_ref()));
        let req = req.into_inner();
        cairn_mvcc::validate_range(&req).map_err(Error::from)?;
        let mut resp = self
            .ctx
            .node
            .range(req, &access)
            .await
            .map_err(Error::from)?;
        resp.header = Some(self.ctx.header(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        // The quota first, as etcd's quotaKVServer wraps the KV server.
        crate::quota::check(&self.ctx, true)?;
        let access = auth::access(&req, needs::put(req.get_ref()));
        let req = req.into_inner();
        cairn_mvcc::validate_put(&req).map_err(Error::from)?;
        self.check_size(&req)?;
        match self.one_op(Op::RequestPut(req), &access).await? {
            (header, OpResponse::ResponsePut(mut p)) => {
                p.header = Some(header);
                Ok(Response::new(p))
            }
            _ => Err(Status::internal("unexpected response to put")),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let access = auth::access(&req, needs::delete(req.get_ref()));
        let req = req.into_inner();
        cairn_mvcc::validate_delete(&req).map_err(Error::from)?;
        self.check_size(&req)?;
        match self.one_op(Op::RequestDeleteRange(req), &access).await? {
            (header, OpResponse::ResponseDeleteRange(mut d)) => {
                d.header = Some(header);
                Ok(Response::new(d))
            }
            _ => Err(Status::internal("unexpected response to delete")),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req_ref = req.get_ref();
        // The quota first, as etcd's quotaKVServer wraps the KV server
        // (prost bounds the nesting `has_put` walks).
        crate::quota::check(&self.ctx, cairn_mvcc::has_put(req_ref))?;
        cairn_mvcc::validate_txn_request(req_ref, mvcc_limits(&self.ctx)).map_err(Error::from)?;
        // etcd holds only a Txn it proposes to the request size limit: one
        // of ranges alone is served beside the log (still bounded by the
        // gRPC message limit).
        if !ranges_only(req_ref) {
            self.check_size(req_ref)?;
        }
        // Needs are derived only from a validated (bounded) request.
        let access = auth::access(&req, needs::txn(req_ref));
        let mut req = req.into_inner();
        cairn_mvcc::normalize_compares(&mut req);
        let mut resp = self
            .ctx
            .node
            .txn(&req, &access)
            .await
            .map_err(Error::from)?;
        resp.header = Some(self.ctx.header(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd checks no key permission for a compaction: any user may.
        let access = auth::access(&req, Needs::User);
        let req = req.into_inner();
        let current = self
            .ctx
            .node
            .compact(req.revision, req.physical, &access)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(CompactionResponse {
            header: Some(self.ctx.header(current)),
        }))
    }
}
