//! etcd's gateway paths: which gRPC method each `POST /v3/...` reaches.
//!
//! etcd declares these with `google.api.http` annotations on its services;
//! our `.proto` files leave the annotations out, so the table is here. Each
//! path is served under `/v3` and, as etcd 3.4 still does, `/v3beta`.
//! Where etcd binds one method to two paths (the lease calls once lived
//! under `/v3/kv/lease/`), both are listed.

/// One gateway path and the fully qualified gRPC method behind it.
pub struct Route {
    /// The path after the version prefix (`/v3`).
    pub path: &'static str,
    /// `package.Service`.
    pub service: &'static str,
    /// The method's name in the service.
    pub method: &'static str,
}

const fn route(path: &'static str, service: &'static str, method: &'static str) -> Route {
    Route {
        path,
        service,
        method,
    }
}

const KV: &str = "etcdserverpb.KV";
const WATCH: &str = "etcdserverpb.Watch";
const LEASE: &str = "etcdserverpb.Lease";
const CLUSTER: &str = "etcdserverpb.Cluster";
const MAINTENANCE: &str = "etcdserverpb.Maintenance";
const AUTH: &str = "etcdserverpb.Auth";
const LOCK: &str = "v3lockpb.Lock";
const ELECTION: &str = "v3electionpb.Election";

/// The version prefixes every path is served under.
pub const PREFIXES: [&str; 2] = ["/v3", "/v3beta"];

/// Every gateway path.
pub const ALL: &[Route] = &[
    route("/kv/range", KV, "Range"),
    route("/kv/put", KV, "Put"),
    route("/kv/deleterange", KV, "DeleteRange"),
    route("/kv/txn", KV, "Txn"),
    route("/kv/compaction", KV, "Compact"),
    route("/watch", WATCH, "Watch"),
    route("/lease/grant", LEASE, "LeaseGrant"),
    route("/lease/revoke", LEASE, "LeaseRevoke"),
    route("/kv/lease/revoke", LEASE, "LeaseRevoke"),
    route("/lease/keepalive", LEASE, "LeaseKeepAlive"),
    route("/lease/timetolive", LEASE, "LeaseTimeToLive"),
    route("/kv/lease/timetolive", LEASE, "LeaseTimeToLive"),
    route("/lease/leases", LEASE, "LeaseLeases"),
    route("/kv/lease/leases", LEASE, "LeaseLeases"),
    route("/cluster/member/add", CLUSTER, "MemberAdd"),
    route("/cluster/member/remove", CLUSTER, "MemberRemove"),
    route("/cluster/member/update", CLUSTER, "MemberUpdate"),
    route("/cluster/member/list", CLUSTER, "MemberList"),
    route("/cluster/member/promote", CLUSTER, "MemberPromote"),
    route("/maintenance/alarm", MAINTENANCE, "Alarm"),
    route("/maintenance/status", MAINTENANCE, "Status"),
    route("/maintenance/defragment", MAINTENANCE, "Defragment"),
    route("/maintenance/hash", MAINTENANCE, "Hash"),
    route("/maintenance/hashkv", MAINTENANCE, "HashKV"),
    route("/maintenance/snapshot", MAINTENANCE, "Snapshot"),
    route(
        "/maintenance/transfer-leadership",
        MAINTENANCE,
        "MoveLeader",
    ),
    route("/maintenance/downgrade", MAINTENANCE, "Downgrade"),
    route("/auth/enable", AUTH, "AuthEnable"),
    route("/auth/disable", AUTH, "AuthDisable"),
    route("/auth/status", AUTH, "AuthStatus"),
    route("/auth/authenticate", AUTH, "Authenticate"),
    route("/auth/user/add", AUTH, "UserAdd"),
    route("/auth/user/get", AUTH, "UserGet"),
    route("/auth/user/list", AUTH, "UserList"),
    route("/auth/user/delete", AUTH, "UserDelete"),
    route("/auth/user/changepw", AUTH, "UserChangePassword"),
    route("/auth/user/grant", AUTH, "UserGrantRole"),
    route("/auth/user/revoke", AUTH, "UserRevokeRole"),
    route("/auth/role/add", AUTH, "RoleAdd"),
    route("/auth/role/get", AUTH, "RoleGet"),
    route("/auth/role/list", AUTH, "RoleList"),
    route("/auth/role/delete", AUTH, "RoleDelete"),
    route("/auth/role/grant", AUTH, "RoleGrantPermission"),
    route("/auth/role/revoke", AUTH, "RoleRevokePermission"),
    route("/lock/lock", LOCK, "Lock"),
    route("/lock/unlock", LOCK, "Unlock"),
    route("/election/campaign", ELECTION, "Campaign"),
    route("/election/proclaim", ELECTION, "Proclaim"),
    route("/election/leader", ELECTION, "Leader"),
    route("/election/observe", ELECTION, "Observe"),
    route("/election/resign", ELECTION, "Resign"),
];
