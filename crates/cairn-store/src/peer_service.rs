//! The node-to-node gRPC service: Raft messages by region, forwarded
//! requests, and TSO allocation.

use std::sync::Arc;

use cairn_api::peerpb::peer_server::Peer;
use cairn_api::peerpb::{
    ForwardReply, ForwardRequest, RaftReply, RaftRequest, TsoReply, TsoRequest,
};
use cairn_raft::{decode, encode};
use tonic::{Request, Response, Status};

use crate::remote::ForwardOp;
use crate::{Error, Node};

/// Serves `cairnpeerpb.Peer` for one node.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// The service of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let region = self
            .node
            .region(req.region_id)
            .map_err(|e| Status::not_found(e.to_string()))?;
        let payload = cairn_raft::network::serve_raft_request(&region.raft, req.kind, &req.payload)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(RaftReply { payload }))
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let req = req.into_inner();
        let op: ForwardOp =
            decode(&req.payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let res = self.node.serve_local(req.region_id, op).await;
        let payload = encode(&res).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ForwardReply { payload }))
    }

    async fn tso(&self, req: Request<TsoRequest>) -> Result<Response<TsoReply>, Status> {
        let count = req.into_inner().count;
        match self.node.tso_local(count).await {
            Ok(first) => Ok(Response::new(TsoReply { first, count })),
            Err(Error::NotLeader { .. }) => Err(Status::failed_precondition("not the meta leader")),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
