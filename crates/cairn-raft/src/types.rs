//! What travels through a region's Raft log, and what applying it returns.

use cairn_mvcc::Rejection;
use serde::{Deserialize, Serialize};

use crate::NodeId;

openraft::declare_raft_types!(
    /// openraft's type configuration for every Cairn region.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = crate::snapshot_data::SnapshotData,
);

/// A command proposed to a region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Data region: an etcd write transaction (prost-encoded `TxnRequest`;
    /// `Put` and `DeleteRange` arrive as one-op transactions) committed at TSO
    /// timestamp `ts`. The revision is `max(ts, current + 1)`.
    Txn { ts: i64, txn: Vec<u8> },
    /// Data region: a group of transactions committed together (group
    /// commit): applied in order, each seeing the ones before, as one atomic
    /// batch. Element `i` replies in `Reply::Batch[i]`.
    Batch(Vec<Command>),
    /// Data region: grant lease `id` for `ttl` seconds.
    LeaseGrant { id: i64, ttl: i64 },
    /// Data region: revoke lease `id`, deleting its keys at TSO timestamp `ts`.
    LeaseRevoke { id: i64, ts: i64 },
    /// Data region: record lease `id`'s remaining TTL (seconds; 0 clears
    /// it). Kept for logs written before [`Command::LeaseCheckpoints`].
    LeaseCheckpoint { id: i64, remaining: i64 },
    /// Data region: compact MVCC history at `revision`.
    Compact { revision: i64 },
    /// Meta region: the TSO may hand out timestamps below `high_water`.
    TsoWindow { high_water: i64 },
    /// Meta region: a member's attributes (for `MemberList`).
    SetMember(MemberInfo),
    /// Meta region: a region's descriptor (the region directory).
    SetRegion(RegionDesc),
    /// Data region: record many leases' remaining TTLs at once, `(id,
    /// remaining seconds)`; a remaining of 0 clears the checkpoint (a
    /// renewal: the lease counts down from its full TTL again). `term`: the
    /// leader term the figures were taken in; the entry is ignored unless
    /// it is appended in that same term (0: applies in any term — clears,
    /// which only ever lengthen a lease).
    LeaseCheckpoints { term: u64, list: Vec<(i64, i64)> },
    /// Data region: lease `id` expired by the lessor of leader term `term`;
    /// revoke it at TSO timestamp `ts` — but only if the entry is appended
    /// in that same term. A decision held up across a leader change (say,
    /// behind a TSO outage) must not revoke a lease a later leader renewed.
    LeaseExpire { id: i64, ts: i64, term: u64 },
    /// Data region: raise (`activate`) or clear alarm `alarm` (etcd's
    /// `AlarmType` number) for member `member`.
    Alarm {
        activate: bool,
        member: NodeId,
        alarm: i32,
    },
    /// Meta region: change the auth store (users, roles, permissions,
    /// enabled). Replies [`Reply::Auth`].
    Auth(cairn_auth::AuthCmd),
    /// Meta region: register a simple token for `user` on every member
    /// (kept in memory; nothing is written). Replies [`Reply::Auth`].
    AuthToken { token: String, user: String },
    /// Data region: the auth store reached `revision`; from this entry on,
    /// a [`Command::Checked`] command checked against an older auth store
    /// is refused (`AuthOldRevision`). Proposed after every auth change,
    /// before the change is acknowledged.
    AuthFence { revision: u64 },
    /// `cmd`, on behalf of a client whose permissions were checked against
    /// auth revision `auth_revision` — applied in a data region only if no
    /// newer auth revision has been fenced, in the meta region only if the
    /// auth store is still at that revision (etcd's `AuthOldRevision`
    /// check at apply).
    Checked {
        auth_revision: u64,
        cmd: Box<Command>,
    },
    /// [`Command::Checked`] for a lease put or revoke by a caller whose
    /// writes are limited to `writable` (as of `auth_revision`): also
    /// refused (`PermissionDenied`) if a key already on the lease is not
    /// writable by the caller — etcd's `checkLeasePuts`, at apply, so a
    /// key attached after the request was checked counts too.
    CheckedLease {
        auth_revision: u64,
        writable: cairn_auth::Writable,
        cmd: Box<Command>,
    },
}

/// What a client's write was checked against: an auth revision, and for a
/// lease put or revoke by a caller with limited writes, the keys it may
/// write. Proposed as [`Command::Checked`] or [`Command::CheckedLease`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthStamp {
    /// The auth revision the request was checked against.
    pub revision: u64,
    /// The caller's writable keys, when the request touches leases and the
    /// caller is not allowed everything.
    pub writable: Option<cairn_auth::Writable>,
}

impl AuthStamp {
    /// `cmd` as checked under this stamp.
    pub fn wrap(self, cmd: Command) -> Command {
        let cmd = Box::new(cmd);
        match self.writable {
            None => Command::Checked {
                auth_revision: self.revision,
                cmd,
            },
            Some(writable) => Command::CheckedLease {
                auth_revision: self.revision,
                writable,
                cmd,
            },
        }
    }
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// A transaction's prost-encoded `TxnResponse` (header revision set).
    Txn(Vec<u8>),
    /// Compaction done; the region's current revision.
    Compacted { current: i64 },
    /// A meta command (or a membership/blank entry) applied.
    Done,
    /// The command was refused; nothing changed.
    Rejected(Rejection),
    /// Done; the region's revision after the command.
    Revision(i64),
    /// One reply per command of a [`Command::Batch`].
    Batch(Vec<Reply>),
    /// The command's bytes did not decode (never produced by Cairn itself).
    Invalid(String),
    /// The alarms an [`Command::Alarm`] changed, `(member, alarm)`.
    Alarms(Vec<(NodeId, i32)>),
    /// An auth command's outcome: the auth revision after it, or etcd's
    /// error (nothing changed).
    Auth(Result<u64, cairn_auth::AuthError>),
}

/// A cluster member as etcd's `MemberList` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member ID (also the Raft node ID).
    pub id: NodeId,
    /// Human-readable name (`--name`).
    pub name: String,
    /// Peer URLs (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    /// Client URLs (`--advertise-client-urls`).
    pub client_urls: Vec<String>,
}

/// One region in the directory: its key range and replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionDesc {
    /// Region ID (0 is the meta region).
    pub id: u64,
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// End key (exclusive); empty means "to the end".
    pub end: Vec<u8>,
    /// Bumped by splits and merges; requests carry it to detect stale routes.
    pub epoch: u64,
    /// Nodes holding a replica.
    pub peers: Vec<NodeId>,
}
