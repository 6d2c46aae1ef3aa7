//! # cairn-server: etcd's gRPC API on a Cairn node
//!
//! One module per etcd service, one method per RPC (mini-redis style):
//! [`kv`] (Range/Put/DeleteRange/Txn/Compact), [`watch`], [`lease`],
//! [`lock`], [`election`], [`maintenance`], [`cluster`] (MemberList),
//! [`auth`] (users, roles, tokens) — and Cairn's own [`regions`] (the
//! region listing of `cairn regions`). An RPC not built yet answers gRPC
//! `Unimplemented` — never a fake success.
//!
//! Every handler takes the caller's credentials ([`auth::credentials`]:
//! token metadata, or a verified client certificate's common name) and
//! what the request needs of them, and the node checks both.
//!
//! A call carrying etcd's `hasleader` metadata is served only while the
//! member has a leader, and such a stream ends when it loses one
//! ([`require_leader`]).
//!
//! Every handler validates input as etcd's v3rpc layer does, then calls the
//! [`Node`](cairn_store::Node); every failure becomes a gRPC status through
//! the one table in [`error`]. Nothing a client sends can panic the server:
//! validation is total, and MVCC/Raft errors are values.
//!
//! The client port also speaks HTTP/1.1: etcd's JSON gateway ([`gateway`],
//! a gRPC client of these same services) and the probes ([`probes`]),
//! assembled in `client_port`.
//!
//! [`serve_client`] and [`serve_peer`] take an already-bound [`Listener`]
//! (plain TCP, or TCP with a TLS configuration from `cairn-tls`) and a
//! shutdown future, so tests bind port 0.

pub mod auth;
mod backup;
mod client_port;
pub mod cluster;
mod coord;
mod cors;
pub mod election;
pub mod error;
pub mod gateway;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod metrics;
mod observe;
pub mod probes;
pub mod quota;
pub mod regions;
pub mod require_leader;
mod too_large;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use cairn_api::etcdserverpb::ResponseHeader;
use cairn_api::peerpb::peer_server::PeerServer;
use cairn_store::{Node, PeerService};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Client-facing limits (etcd flags).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--max-request-bytes` (etcd default 1.5 MiB).
    pub max_request_bytes: usize,
    /// `--max-txn-ops` (etcd default 128).
    pub max_txn_ops: usize,
    /// How often watchers asking for `progress_notify` get a progress
    /// response when idle (etcd default 10 minutes); `None` disables.
    pub watch_progress_interval: Option<std::time::Duration>,
    /// `--quota-backend-bytes`: past this many bytes on disk, writes that
    /// add data are refused and NOSPACE raised ([`quota`]); 0: no quota.
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            watch_progress_interval: Some(std::time::Duration::from_secs(600)),
            quota_backend_bytes: DEFAULT_QUOTA_BYTES,
        }
    }
}

/// The default storage quota: 8 GiB (etcd's is 2 GiB; an LSM store's
/// files grow past their live data between compactions).
pub const DEFAULT_QUOTA_BYTES: u64 = 8 << 30;

/// What every service handler needs.
pub struct Context {
    /// The node serving requests.
    pub node: Arc<Node>,
    /// Request limits.
    pub limits: Limits,
    /// `--client-cert-auth`: a verified client certificate's common name
    /// is its caller's user. Without it, as on etcd, a certificate (which
    /// a trusted CA file alone already demands) names no one.
    pub cert_names_users: bool,
}

impl Context {
    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.id,
            revision,
            raft_term: self.node.raft_term(),
        }
    }

    /// Runs `work` on the node to its end even if the client goes away
    /// meanwhile (a handler's future is dropped then): for changes that
    /// are proposed in every region one after another, which a cancel
    /// midway would leave in some regions only.
    pub(crate) async fn to_the_end<T, F>(
        &self,
        work: impl FnOnce(Arc<Node>) -> F,
    ) -> Result<T, error::Error>
    where
        F: Future<Output = cairn_store::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(work(self.node.clone()))
            .await
            .map_err(|e| cairn_store::Error::Internal(e.to_string()))?
            .map_err(error::Error::from)
    }
}

/// Accepted connections with Nagle off: small gRPC responses must not wait
/// for delayed ACKs (measured: 44 ms per range request without this).
/// (The TLS acceptor sets it too.)
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A bound port: plain, or TLS under a server configuration (an
/// `https://` URL).
pub enum Listener {
    /// Plain TCP (`http://`).
    Plain(TcpListener),
    /// TLS over TCP (`https://`).
    Tls(TcpListener, Arc<cairn_tls::ServerConfig>),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Plain(l)
    }
}

impl Listener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Listener::Plain(l) | Listener::Tls(l, _) => l.local_addr(),
        }
    }
}

/// Serves `$server` (a tonic router) on `$listener` until `$shutdown`.
macro_rules! serve_on {
    ($server:expr, $listener:expr, $shutdown:expr) => {
        match $listener {
            Listener::Plain(l) => {
                $server
                    .serve_with_incoming_shutdown(incoming(l), $shutdown)
                    .await
            }
            Listener::Tls(l, tls) => {
                $server
                    .serve_with_incoming_shutdown(cairn_tls::incoming(l, tls), $shutdown)
                    .await
            }
        }
    };
}

/// gRPC framing allowance above `max_request_bytes` (etcd adds 512 KiB).
pub(crate) const GRPC_OVERHEAD: usize = 512 * 1024;

/// HTTP/2 streams a peer may cancel before the server has accepted them
/// (h2's rapid-reset guard) before the connection is closed. h2's default,
/// 20, was reached under faults: every peer RPC that times out on a busy
/// node is such a reset, and losing the connection then stalls every
/// region on the link. Clients get a bound too, higher than the default
/// for the same reason (requests with deadlines under load).
const PEER_PENDING_RESETS: usize = 10_000;
const CLIENT_PENDING_RESETS: usize = 1_000;

/// Serves etcd's API on `listener` until `shutdown` resolves: gRPC over
/// HTTP/2, and on the same port over HTTP/1.1 the JSON gateway and the
/// probes, as etcd does ([`client_port`]).
pub async fn serve_client(
    ctx: Arc<Context>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let routes = client_port::routes(&ctx);
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_max_pending_accept_reset_streams(Some(CLIENT_PENDING_RESETS))
        .add_routes(routes);
    serve_on!(server, listener, shutdown)
}

/// Serves the node-to-node service on `listener` until `shutdown` resolves.
pub async fn serve_peer(
    node: Arc<Node>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let server = tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(PEER_PENDING_RESETS))
        .add_service(
            PeerServer::new(PeerService::new(node))
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        );
    serve_on!(server, listener, shutdown)
}
