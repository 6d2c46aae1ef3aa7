//! etcd's `Cluster` service: `MemberList` from the meta region's member
//! table; membership changes answer `Unimplemented` until built.

use std::sync::Arc;

use cairn_api::etcdserverpb::cluster_server::Cluster;
use cairn_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::Context;

/// The Cluster service of one node.
pub struct ClusterService {
    ctx: Arc<Context>,
}

impl ClusterService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self
            .ctx
            .node
            .members()
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: false,
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.header(self.ctx.node.revision())),
            members,
        }))
    }
}
