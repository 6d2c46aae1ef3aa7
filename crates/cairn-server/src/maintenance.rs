//! etcd's `Maintenance` service: `Status` (sizes as the filesystem and the
//! LSM trees count them), `Alarm` (list), `HashKV` and `Hash` (this
//! member's checksum of its key history, see `cairn_mvcc::hash_kv`),
//! `Defragment` (a major compaction of every LSM tree; reads and writes go
//! on, the call returns when it is done), `Alarm` (list, activate,
//! deactivate; replicated through the data region, see [`crate::quota`]),
//! `Snapshot` (a backup in etcd's bbolt format, see [`crate::backup`]),
//! `MoveLeader` (see `cairn_store`'s `transfer`).
//! The rest answer `Unimplemented` until built.

use std::sync::Arc;

use cairn_api::etcdserverpb::alarm_request::AlarmAction;
use cairn_api::etcdserverpb::maintenance_server::Maintenance;
use cairn_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use cairn_auth::Needs;

use crate::auth;
use crate::error::Error;
use crate::{quota, Context};

/// The Maintenance service of one node.
pub struct MaintenanceService {
    ctx: Arc<Context>,
}

impl MaintenanceService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

/// The etcd API version Cairn reports (what etcdctl's checks expect).
pub const ETCD_VERSION: &str = "3.6.0";

impl MaintenanceService {
    /// etcd's maintenance server lets only admins (the root role) hash,
    /// defragment, back up and move the leader; others get its auth
    /// package's own `auth: permission denied` (gRPC Unknown).
    async fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let access = auth::access(req, Needs::Admin { maintenance: true });
        match self.ctx.node.authorize(&access).await {
            Ok(_) => Ok(()),
            // No user, a bad token: etcd's auth package words them too.
            Err(cairn_store::Error::Auth(a)) => Err(Status::unknown(a.to_string().replacen(
                "etcdserver: ",
                "auth: ",
                1,
            ))),
            Err(e) => Err(Error::from(e).into()),
        }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.ctx.node.status();
        let revision = self.ctx.node.revision();
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(revision)),
            version: ETCD_VERSION.to_string(),
            db_size: s.db_size,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            // As etcd's: no leader first, then every alarm.
            errors: (s.leader == 0)
                .then(|| "etcdserver: no leader".to_string())
                .into_iter()
                .chain(self.ctx.node.alarms().into_iter().map(|(member, alarm)| {
                    format!("memberID:{member} alarm:{} ", quota::alarm_name(alarm))
                }))
                .collect(),
            db_size_in_use: s.db_size_in_use,
            is_learner: false,
            storage_version: String::new(),
            db_size_quota: self.ctx.limits.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&req).await?;
        let h = self
            .ctx
            .node
            .hash_kv(req.into_inner().revision)
            .await
            .map_err(Error::from)?;
        // (A hash across regions is taken at a read timestamp, which can
        // be above every revision this member's regions wrote.)
        let revision = self.ctx.node.revision().max(h.revision);
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.header(revision)),
            hash: h.hash,
            compact_revision: h.compacted,
            hash_revision: h.revision,
        }))
    }

    /// etcd hashes its whole backend here (for testing, it says); Cairn's
    /// answer is the hash of its whole key history, as `HashKV` at the
    /// current revision.
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&req).await?;
        let h = self.ctx.node.hash_kv(0).await.map_err(Error::from)?;
        Ok(Response::new(HashResponse {
            header: Some(self.ctx.header(self.ctx.node.revision())),
            hash: h.hash,
        }))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<SnapshotResponse>>, Status> {
        self.admin(&req).await?;
        let backup = self.ctx.node.backup().await.map_err(Error::from)?;
        let header = self.ctx.header(backup.revision);
        Ok(Response::new(crate::backup::stream(backup, header)))
    }

    /// etcd's `MoveLeader`: on the leader only (`etcdserver: not leader`
    /// elsewhere, as etcdctl expects: it asks the leader's endpoint).
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.admin(&req).await?;
        let target = req.into_inner().target_id;
        self.ctx
            .node
            .move_leader(target)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.ctx.header(self.ctx.node.revision())),
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&req).await?;
        self.ctx.node.defragment().await.map_err(Error::from)?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.ctx.header(self.ctx.node.revision())),
        }))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // Listing is open (etcd 3.4); raising or clearing is the admin's.
        let admin = auth::access(&req, Needs::Admin { maintenance: false });
        let req = req.into_inner();
        let node = &self.ctx.node;
        let alarms = match AlarmAction::try_from(req.action) {
            // All alarms of the type asked for (NONE: every type).
            Ok(AlarmAction::Get) => node
                .alarms()
                .into_iter()
                .filter(|&(_, a)| req.alarm == 0 || a == req.alarm)
                .collect(),
            Ok(action) => {
                node.authorize(&admin).await.map_err(Error::from)?;
                let activate = action == AlarmAction::Activate;
                if req.alarm == 0 {
                    // etcd clears no alarm of type NONE, and says nothing
                    // (a gateway `{"action":"DEACTIVATE"}`); nor does it
                    // raise one since 3.5 (3.4 recorded a NONE alarm that
                    // did nothing but show in the list).
                    return Ok(Response::new(AlarmResponse {
                        header: Some(self.ctx.header(node.revision())),
                        alarms: Vec::new(),
                    }));
                }
                let member = if req.member_id == 0 {
                    node.id
                } else {
                    req.member_id
                };
                // Proposed in every region: it runs to its end even if
                // the client goes away, or regions would disagree until
                // their leaders mend them.
                let alarm = req.alarm;
                self.ctx
                    .to_the_end(|node| async move { node.alarm(activate, member, alarm).await })
                    .await?
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        Ok(Response::new(AlarmResponse {
            header: Some(self.ctx.header(node.revision())),
            alarms: alarms
                .into_iter()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
        }))
    }
}
