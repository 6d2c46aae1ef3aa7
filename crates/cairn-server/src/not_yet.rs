//! Services whose RPCs are not built yet. The generated default methods
//! answer gRPC `Unimplemented`; registering them (instead of leaving the
//! service out) keeps the answer explicit and identical for every RPC.

/// The not-yet-built services.
pub struct NotYet;

impl cairn_api::etcdserverpb::auth_server::Auth for NotYet {}
impl cairn_api::v3lockpb::lock_server::Lock for NotYet {}
impl cairn_api::v3electionpb::election_server::Election for NotYet {}
