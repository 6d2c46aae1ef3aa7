//! # cairn-api: the wire contract
//!
//! Cairn speaks etcd's v3 gRPC API. This crate holds our own `.proto` files
//! for etcd's packages (`etcdserverpb`, `mvccpb`, `authpb`, `v3lockpb`,
//! `v3electionpb`) — identical to etcd's on the wire: same package names,
//! service names, message names, field numbers and enum values — plus
//! Cairn's internal peer protocol (`cairnpeerpb`) and its own client-port
//! services (`cairnpb`: the region listing).
//!
//! Invariants:
//! - A field number, once published, never changes meaning: any etcd client
//!   must be able to talk to Cairn unchanged.
//! - Services are generated with default stubs, so an RPC not implemented by
//!   the server answers `Unimplemented`, never a fake success.
//!
//! Caveat: etcd's HTTP-gateway annotations (`google.api.http`) and gogoproto
//! options are left out; they do not change the gRPC wire format. The
//! gateway's paths are a table in `cairn-server`'s gateway, and
//! [`FILE_DESCRIPTOR_SET`] gives it the messages to map to JSON.

#![allow(clippy::all, missing_docs)]

/// etcd's `mvccpb` package: `KeyValue` and `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `authpb` package: users, roles, permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's `etcdserverpb` package: KV, Watch, Lease, Cluster, Maintenance, Auth.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's `v3lockpb` package: the Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's `v3electionpb` package: the Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Every file above as an encoded `google.protobuf.FileDescriptorSet`: the
/// messages and services by name, for mapping them to and from JSON.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Cairn's node-to-node protocol.
pub mod peerpb {
    tonic::include_proto!("cairnpeerpb");
}

/// Cairn's own client-port services (`cairn regions`).
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}
