//! Cairn's `Regions` service (`cairnpb`, not part of etcd's API): the data
//! regions as the serving member sees them, for `cairn regions`, a split
//! at a key (`cairn regions split`) and a merge of the region holding a
//! key into its left neighbour (`cairn regions merge`). With auth on it is
//! the root role's, like etcd's admin calls: region boundaries are keys.

use std::sync::Arc;

use cairn_api::cairnpb::regions_server::Regions;
use cairn_api::cairnpb::{
    RegionInfo, RegionListRequest, RegionListResponse, RegionMergeRequest, RegionMergeResponse,
    RegionSplitRequest, RegionSplitResponse,
};
use cairn_auth::Needs;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::{auth, Context};

/// The Regions service of one node.
pub struct RegionsService {
    ctx: Arc<Context>,
}

impl RegionsService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Regions for RegionsService {
    async fn list(
        &self,
        req: Request<RegionListRequest>,
    ) -> Result<Response<RegionListResponse>, Status> {
        let access = auth::access(&req, Needs::Admin { maintenance: false });
        let node = &self.ctx.node;
        node.authorize(&access).await.map_err(Error::from)?;
        let regions = node
            .region_reports()
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|r| RegionInfo {
                id: r.id,
                start: r.start,
                end: r.end,
                epoch: r.epoch,
                leader: r.leader,
                voters: r.voters,
                approximate_bytes: r.approximate_bytes,
                writes_per_second: r.writes_per_second,
            })
            .collect();
        Ok(Response::new(RegionListResponse { regions }))
    }

    async fn split(
        &self,
        req: Request<RegionSplitRequest>,
    ) -> Result<Response<RegionSplitResponse>, Status> {
        let access = auth::access(&req, Needs::Admin { maintenance: false });
        let node = &self.ctx.node;
        node.authorize(&access).await.map_err(Error::from)?;
        let key = req.into_inner().key;
        if key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        let region = node.route(&key).map_err(Error::from)?;
        if region.shared.range().start == key {
            return Ok(Response::new(RegionSplitResponse {
                region: region.id,
                child: 0,
            }));
        }
        let child = node
            .split_region(region.id, key)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(RegionSplitResponse {
            region: region.id,
            child,
        }))
    }

    async fn merge(
        &self,
        req: Request<RegionMergeRequest>,
    ) -> Result<Response<RegionMergeResponse>, Status> {
        let access = auth::access(&req, Needs::Admin { maintenance: false });
        let node = &self.ctx.node;
        node.authorize(&access).await.map_err(Error::from)?;
        let key = req.into_inner().key;
        let source = node.route(&key).map_err(Error::from)?;
        let range = source.shared.range();
        let start = range.start;
        if start.is_empty() {
            return Ok(Response::new(RegionMergeResponse {
                target: source.id,
                source: 0,
            }));
        }
        let (target, target_start) = node
            .regions_overlapping(b"", None)
            .into_iter()
            .find(|(_, _, end)| *end == start)
            .map(|(r, s, _)| (r.id, s))
            .ok_or_else(|| Error::from(cairn_store::Error::EpochMismatch))?;
        if target_start.is_empty() && range.end.is_empty() {
            return Err(Status::failed_precondition(
                "the last two regions do not merge (a store that split keeps the rules of several regions)",
            ));
        }
        let source = node.merge_regions(target).await.map_err(Error::from)?;
        Ok(Response::new(RegionMergeResponse { target, source }))
    }
}
