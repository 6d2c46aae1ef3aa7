//! Everything the client port answers, on one router: etcd's gRPC services
//! and Cairn's region listing (HTTP/2), and over HTTP/1.1 the JSON gateway ([`crate::gateway`]) and
//! the probes ([`crate::probes`]), as etcd serves them on one port. A path
//! nobody serves gets gRPC's `Unimplemented` when the request is gRPC, and
//! otherwise etcd's 404 (the gateway's `Not Found` under `/v3/`, Go's
//! `404 page not found` elsewhere); a gateway path asked with another
//! method than POST, 405. HTTP answers allow any origin ([`crate::cors`]).
//! Every gRPC call is counted ([`crate::metrics`]),
//! and one that asks for a leader is served only while there is one
//! ([`crate::require_leader`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use cairn_api::cairnpb::regions_server::RegionsServer;
use cairn_api::etcdserverpb::auth_server::AuthServer;
use cairn_api::etcdserverpb::cluster_server::ClusterServer;
use cairn_api::etcdserverpb::kv_server::KvServer;
use cairn_api::etcdserverpb::lease_server::LeaseServer;
use cairn_api::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_api::etcdserverpb::watch_server::WatchServer;
use cairn_api::v3electionpb::election_server::ElectionServer;
use cairn_api::v3lockpb::lock_server::LockServer;
use http::{header, Request, StatusCode};
use tonic::service::Routes;

use crate::{
    auth, cluster, cors, election, gateway, kv, lease, lock, maintenance, metrics, probes, regions,
    require_leader, too_large, watch,
};
use crate::{Context, GRPC_OVERHEAD};

/// etcd's gRPC services of one node, and Cairn's `Regions`.
fn grpc_routes(ctx: &Arc<Context>) -> Routes {
    let max = ctx.limits.max_request_bytes + GRPC_OVERHEAD;
    let mut routes = Routes::builder();
    routes
        .add_service(KvServer::new(kv::KvService::new(ctx.clone())).max_decoding_message_size(max))
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService::new(ctx.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(ClusterServer::new(cluster::ClusterService::new(
            ctx.clone(),
        )))
        .add_service(WatchServer::new(watch::WatchService::new(ctx.clone())))
        .add_service(LeaseServer::new(lease::LeaseService::new(ctx.clone())))
        .add_service(AuthServer::new(auth::AuthService::new(ctx.clone())))
        .add_service(LockServer::new(lock::LockService::new(ctx.clone())))
        .add_service(RegionsServer::new(regions::RegionsService::new(
            ctx.clone(),
        )))
        .add_service(ElectionServer::new(election::ElectionService::new(
            ctx.clone(),
        )));
    routes.routes()
}

/// The client port's routes over `ctx`.
pub fn routes(ctx: &Arc<Context>) -> Routes {
    // Every gRPC call is counted, the gateway's too (it calls these); one
    // that asks for a leader is served only while there is one.
    // One middleware for both: each layer costs every call.
    let monitor = require_leader::Monitor::start(&ctx.node);
    let state = (monitor, ctx.cert_names_users);
    let grpc = Routes::from(
        grpc_routes(ctx)
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(state, grpc_calls)),
    );
    // A JSON body carries its bytes as base64 (4/3) plus field names.
    let json_limit = 2 * ctx.limits.max_request_bytes + GRPC_OVERHEAD;
    let http = gateway::router(grpc.clone(), json_limit)
        .merge(probes::router(ctx.clone()))
        .merge(metrics::router(ctx.clone()))
        .layer(axum::middleware::from_fn(cors::allow_any_origin));
    let router = grpc
        .into_axum_router()
        .merge(http)
        .fallback(unrouted)
        .method_not_allowed_fallback(wrong_method);
    Routes::from(router)
}

/// What every gRPC call goes through: counted, then served if it may be
/// (a request over the size limit refused in grpc-go's words). Without
/// `--client-cert-auth` its client certificate is dropped from it first:
/// the certificate's name is then no one's (`auth::credentials`).
async fn grpc_calls(
    State((m, cert_names_users)): State<(Arc<require_leader::Monitor>, bool)>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    if !cert_names_users {
        req.extensions_mut().remove::<auth::TlsInfo>();
    }
    metrics::counted(req, |req| async move {
        too_large::as_etcd(require_leader::guarded(&m, req, next).await)
    })
    .await
}

async fn unrouted(req: Request<Body>) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http::<Body>();
    }
    // Under the gateway's prefixes its mux answers; elsewhere Go's.
    let gateway = gateway::routes::PREFIXES
        .iter()
        .any(|p| req.uri().path().starts_with(&format!("{p}/")));
    let text = if gateway {
        "Not Found\n"
    } else {
        "404 page not found\n"
    };
    plain(StatusCode::NOT_FOUND, text)
}

/// A known path asked with the wrong method (the gateway's answer), or
/// a preflight `OPTIONS` of it.
async fn wrong_method(req: Request<Body>) -> Response {
    if req.method() == http::Method::OPTIONS {
        return cors::preflight();
    }
    plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
