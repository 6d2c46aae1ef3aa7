//! The node-to-node gRPC service: Raft messages by region, forwarded
//! requests, and TSO allocation.
//!
//! Raft messages come alone or in batches of many regions' messages
//! (`cairn_raft::peer_batch`), each served as if it came alone. A data
//! region's snapshot older than a region hosted here that holds some of
//! its keys is refused on its first chunk (`older_snapshot`); its leader
//! sends again once it has caught up.
//!
//! Only members are served: every request must name this cluster and a
//! member ID (stamped by the sender's `PeerPool`), and a Raft message for
//! a region must come from a member of that region's Raft group. With
//! `--peer-client-cert-auth` the TLS handshake has already required a
//! certificate from the peer CA; this keeps out members of other clusters
//! (another `--initial-cluster-token`) and nodes that are not members —
//! a crash-fault model's guard against misrouted traffic, not against a
//! member that lies (see docs/security.md).

use std::sync::Arc;

use cairn_api::peerpb::peer_server::Peer;
use cairn_api::peerpb::{
    ForwardReply, ForwardRequest, RaftBatchRequest, RaftBatchResult, RaftReply, RaftRequest,
    TsoReply, TsoRequest,
};
use cairn_raft::{decode, encode};
use tokio_util::task::AbortOnDropHandle;
use tonic::codegen::BoxStream;
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
        node.begin_serving_peers();
        Self { node }
    }
}

impl PeerService {
    fn initial_member(&self, id: u64) -> bool {
        let c = &self.node.config;
        c.initial_cluster
            .iter()
            .any(|m| crate::member_id(&m.name, &m.peer_url, &c.cluster_token) == id)
    }

    /// The member a request comes from, if it is one of this cluster's
    /// (of region `region`'s Raft group, when given).
    fn member<T>(&self, req: &Request<T>, region: Option<u64>) -> Result<u64, Status> {
        self.member_of(cairn_raft::network::sender(req), region)
    }

    /// Serves one Raft message from `sender` (alone or from a batch).
    async fn serve_raft(
        &self,
        sender: Option<(u64, u64)>,
        req: RaftRequest,
    ) -> Result<RaftReply, Status> {
        let region_id = req.region_id;
        if self.node.is_stopped() {
            // Its Rafts are stopping: an answer saying so would come back to
            // the sender as a remote error, which openraft sends again at
            // once; `unavailable` is unreachable, which it backs off from.
            return Err(Status::unavailable("member shutting down"));
        }
        if self.node.region(region_id).is_err() {
            // Only a member may make this node adopt a region.
            self.member_of(sender, None)?;
        }
        let region = self
            .node
            .adopt(region_id)
            .await
            .map_err(|e| Status::not_found(e.to_string()))?;
        self.member_of(sender, Some(region_id))?;
        let refuse = |applied: &cairn_raft::Applied| self.older_snapshot(region_id, applied);
        let payload =
            cairn_raft::network::serve_raft_request(&region.raft, req.kind, &req.payload, refuse)
                .await
                .map_err(|e| match e {
                    cairn_raft::Error::Refused(why) => Status::failed_precondition(why),
                    e => Status::invalid_argument(e.to_string()),
                })?;
        // Once Raft has taken it: a replica held after a restart campaigns
        // again on this (`hibernate::resume_elections`), and must not
        // before the append that renews its election timer is in.
        region.sleep.heard();
        Ok(RaftReply { payload })
    }

    /// Why a snapshot of data region `region` whose state is `applied`
    /// must not be taken, if it must not: it is older than a region hosted
    /// here that holds some of its keys — from before a split, sent by a
    /// leader that has not applied it yet to a replica that adopted the
    /// split's child already (it missed the split, and took both halves
    /// from the directory). Taken, the region would replay its writes from
    /// before the split over the child's newer keys (one engine holds
    /// every region's keys). Its leader sends again later, once it has
    /// applied the split. (As TiKV drops a snapshot overlapping a newer
    /// region on its store.)
    fn older_snapshot(&self, region: u64, applied: &cairn_raft::Applied) -> Option<String> {
        if region == crate::node::META_REGION {
            return None;
        }
        let newer = match cairn_raft::newer_here(&*self.node.engine, region, applied) {
            Ok(newer) => newer,
            Err(e) => return Some(format!("reading the regions here: {e}")),
        };
        if newer.is_empty() {
            return None;
        }
        tracing::warn!(
            region,
            epoch = applied.range.epoch,
            "refused a snapshot older than a region here holding some of its keys"
        );
        Some(format!(
            "snapshot of region {region} at epoch {} is older than a region here holding some of its keys",
            applied.range.epoch
        ))
    }

    /// Whether `sender` names this cluster.
    fn of_this_cluster(&self, sender: Option<(u64, u64)>) -> Result<(), Status> {
        match sender {
            Some((cluster, _)) if cluster == self.node.cluster_id => Ok(()),
            _ => Err(Status::permission_denied(
                "peer request without this cluster's ID",
            )),
        }
    }

    /// [`PeerService::member`] for a request that said it comes from
    /// `sender` (cluster, member).
    fn member_of(&self, sender: Option<(u64, u64)>, region: Option<u64>) -> Result<u64, Status> {
        let Some((cluster, from)) = sender else {
            return Err(Status::permission_denied(
                "peer request without a cluster and member ID",
            ));
        };
        if cluster != self.node.cluster_id {
            return Err(Status::permission_denied(format!(
                "peer request for cluster {cluster:x}, this is cluster {:x}",
                self.node.cluster_id
            )));
        }
        let group = region.unwrap_or(crate::META_REGION);
        let known = self.node.region(group).is_ok_and(|r| {
            let m = r.raft.metrics().borrow().membership_config.clone();
            let m = m.membership();
            match m.get_node(&from) {
                Some(_) => true,
                // A replica that knows no membership yet (its group not
                // initialized here) takes the initial cluster's word.
                None => m.nodes().next().is_none() && self.initial_member(from),
            }
        });
        if !known {
            return Err(Status::permission_denied(format!(
                "peer {from:x} is not a member of region {group}"
            )));
        }
        Ok(from)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let sender = cairn_raft::network::sender(&req);
        let reply = self.serve_raft(sender, req.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn raft_batch(
        &self,
        req: Request<RaftBatchRequest>,
    ) -> Result<Response<BoxStream<RaftBatchResult>>, Status> {
        let sender = cairn_raft::network::sender(&req);
        // Nothing is spawned for another cluster's member (each message is
        // still checked against its region's members).
        self.of_this_cluster(sender)?;
        let requests = req.into_inner().requests;
        if requests.len() > cairn_raft::peer_batch::MAX_MESSAGES {
            return Err(Status::invalid_argument(format!(
                "a batch of {} raft messages (at most {})",
                requests.len(),
                cairn_raft::peer_batch::MAX_MESSAGES
            )));
        }
        // Every message at once, each in its own task as if it came alone;
        // each answer as soon as it is ready.
        let answers: futures::stream::FuturesUnordered<_> = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let this = self.clone();
                // Aborted if the caller drops the call, as a lone call's
                // handler is.
                let task = AbortOnDropHandle::new(tokio::spawn(async move {
                    this.serve_raft(sender, r).await
                }));
                async move {
                    let answer = task
                        .await
                        .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
                    Ok(cairn_raft::peer_batch::result_of(i, answer))
                }
            })
            .collect();
        Ok(Response::new(Box::pin(answers)))
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        self.member(&req, None)?;
        let req = req.into_inner();
        let op: ForwardOp =
            decode(&req.payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let res = self.node.serve_local(req.region_id, op).await;
        let payload = encode(&res).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ForwardReply { payload }))
    }

    async fn tso(&self, req: Request<TsoRequest>) -> Result<Response<TsoReply>, Status> {
        self.member(&req, None)?;
        let count = req.into_inner().count;
        match self.node.tso_local(count).await {
            Ok(first) => Ok(Response::new(TsoReply { first, count })),
            Err(Error::NotLeader { .. }) => Err(Status::failed_precondition("not the meta leader")),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
