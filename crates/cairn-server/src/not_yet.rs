//! Services whose RPCs are not built yet. The generated default methods
//! answer gRPC `Unimplemented`; registering them (instead of leaving the
//! service out) keeps the answer explicit and identical for every RPC.

/// The not-yet-built services.
pub struct NotYet;

impl cairn_api::etcdserverpb::auth_server::Auth for NotYet {}
