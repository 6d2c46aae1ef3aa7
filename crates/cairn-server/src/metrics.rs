//! `GET /metrics`: Prometheus text format, with etcd's metric names and
//! meanings where etcd has one, so etcd's Grafana dashboard and alerts
//! work unchanged; Cairn's own under `cairn_`.
//!
//! Three sources, merged per scrape:
//! - event instruments kept as things happen, in the process's default
//!   registry: disk, peer and leader-change metrics (`cairn_store::metrics`)
//!   and the gRPC server's (`grpc_server_*`, client traffic; [`GrpcLayer`]);
//! - the process (`process_resident_memory_bytes`, CPU, fds, start time);
//! - gauges read from the node when scraped: `etcd_server_has_leader`,
//!   `etcd_server_is_leader`, `etcd_server_proposals_committed_total` and
//!   `_applied_total` (etcd keeps these as gauges of the Raft indexes, so
//!   does Cairn: the data region's last log and applied index),
//!   `etcd_server_proposals_pending` (entries in the log not yet applied),
//!   `etcd_mvcc_db_total_size_in_bytes` and `_in_use_in_bytes`, version
//!   and id info gauges, and per region `cairn_region_*`.
//!
//! gRPC metrics follow go-grpc-prometheus, which etcd uses: per call
//! `grpc_server_started_total` and, when it ends, `grpc_server_handled_total`
//! with its code, labelled by `grpc_type` (`unary`, `server_stream`,
//! `bidi_stream`, from the method's descriptor), `grpc_service` and
//! `grpc_method`. A stream the client drops counts as `Canceled`. Gateway
//! calls reach the services through the same layer, as etcd's gateway
//! reaches its gRPC server.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Once};
use std::task::{Context as TaskContext, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use http::{header, StatusCode};
use http_body::{Body as HttpBody, Frame};
use prometheus::{
    register_int_counter, register_int_counter_vec, Encoder, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::maintenance::ETCD_VERSION;
use crate::Context;

static STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("registered once")
});

static HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"]
    )
    .expect("registered once")
});

static CLIENT_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients."
    )
    .expect("registered once")
});

static CLIENT_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_network_client_grpc_sent_bytes_total",
        "The total number of bytes sent to grpc clients."
    )
    .expect("registered once")
});

/// Every process-wide instrument and the process collector, once.
fn register_all() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        cairn_store::metrics::register_all();
        LazyLock::force(&STARTED);
        LazyLock::force(&HANDLED);
        LazyLock::force(&CLIENT_RECEIVED);
        LazyLock::force(&CLIENT_SENT);
        #[cfg(target_os = "linux")]
        let _ = prometheus::register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    });
}

/// The `/metrics` route over `ctx`.
pub fn router(ctx: Arc<Context>) -> axum::Router {
    register_all();
    axum::Router::new().route("/metrics", get(move || scrape(ctx.clone())))
}

async fn scrape(ctx: Arc<Context>) -> Response {
    let mut families = prometheus::gather();
    match node_gauges(&ctx) {
        Ok(node) => families.extend(node.gather()),
        Err(e) => tracing::warn!("metrics: {e}"),
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    if let Err(e) = encoder.encode(&families, &mut out) {
        let mut r = Response::new(Body::from(e.to_string()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let mut r = Response::new(Body::from(out));
    if let Ok(v) = header::HeaderValue::from_str(encoder.format_type()) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn gauge(registry: &Registry, name: &str, help: &str, value: i64) -> prometheus::Result<()> {
    let g = IntGauge::new(name, help)?;
    g.set(value);
    registry.register(Box::new(g))
}

fn info(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    value: &str,
) -> prometheus::Result<()> {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label])?;
    g.with_label_values(&[value]).set(1);
    registry.register(Box::new(g))
}

/// The node's state now, as gauges.
fn node_gauges(ctx: &Context) -> prometheus::Result<Registry> {
    let r = Registry::new();
    let node = &ctx.node;
    let s = node.status();
    gauge(
        &r,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        i64::from(s.leader != 0),
    )?;
    gauge(
        &r,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        i64::from(s.leader == node.id),
    )?;
    gauge(
        &r,
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        s.raft_index as i64,
    )?;
    gauge(
        &r,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        s.raft_applied_index as i64,
    )?;
    gauge(
        &r,
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        s.raft_index.saturating_sub(s.raft_applied_index) as i64,
    )?;
    gauge(
        &r,
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        s.db_size,
    )?;
    gauge(
        &r,
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes (the older name).",
        s.db_size,
    )?;
    gauge(
        &r,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        s.db_size_in_use,
    )?;
    gauge(
        &r,
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        ctx.limits.quota_backend_bytes as i64,
    )?;
    gauge(
        &r,
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        node.revision(),
    )?;
    info(
        &r,
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        "server_version",
        ETCD_VERSION,
    )?;
    info(
        &r,
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        "server_id",
        &format!("{:x}", node.id),
    )?;
    let regions = node.region_statuses();
    gauge(
        &r,
        "cairn_region_count",
        "Region replicas this node hosts.",
        regions.len() as i64,
    )?;
    gauge(
        &r,
        "cairn_region_asleep_count",
        "Region replicas this node hosts whose Raft ticks are stopped (hibernating: idle, no heartbeats).",
        node.sleeping_regions().len() as i64,
    )?;
    let leader = IntGaugeVec::new(
        Opts::new(
            "cairn_region_is_leader",
            "Whether this node leads the region.",
        ),
        &["region"],
    )?;
    let term = IntGaugeVec::new(
        Opts::new("cairn_region_raft_term", "The region's current Raft term."),
        &["region"],
    )?;
    let applied = IntGaugeVec::new(
        Opts::new(
            "cairn_region_applied_index",
            "The region replica's applied Raft index.",
        ),
        &["region"],
    )?;
    for (id, st) in &regions {
        let id = id.to_string();
        leader
            .with_label_values(&[id.as_str()])
            .set(i64::from(st.leader == node.id));
        term.with_label_values(&[id.as_str()])
            .set(st.raft_term as i64);
        applied
            .with_label_values(&[id.as_str()])
            .set(st.raft_applied_index as i64);
    }
    r.register(Box::new(leader))?;
    r.register(Box::new(term))?;
    r.register(Box::new(applied))?;
    Ok(r)
}

/// The gRPC type of every method, by path (`/package.Service/Method`).
static GRPC_TYPES: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let pool = prost_reflect::DescriptorPool::decode(cairn_api::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set is built with cairn-api");
    let mut types = HashMap::new();
    for service in pool.services() {
        for m in service.methods() {
            let kind = match (m.is_client_streaming(), m.is_server_streaming()) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            types.insert(format!("/{}/{}", service.full_name(), m.name()), kind);
        }
    }
    types
});

/// The kind of the gRPC method at `path` (`unary`, `client_stream`,
/// `server_stream`, `bidi_stream`), if it is one.
pub(crate) fn grpc_kind(path: &str) -> Option<&'static str> {
    GRPC_TYPES.get(path).copied()
}

/// go-grpc-prometheus's name of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(code_name(tonic::Code::from_i32(v)))
}

/// One call's labels: type, service, method.
#[derive(Clone)]
struct Call([String; 3]);

impl Call {
    fn handled(&self, code: &str) {
        let [t, s, m] = &self.0;
        HANDLED
            .with_label_values(&[t.as_str(), s.as_str(), m.as_str(), code])
            .inc();
    }
}

/// Counts a gRPC call and its bytes (see the module essay) around `serve`,
/// which answers it; requests to paths that are not gRPC methods pass
/// untouched. (A function the client port's one middleware calls, not a
/// layer of its own: each layer costs every request an allocation or two.)
pub async fn counted<F, Fut>(req: Request, serve: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let path = req.uri().path().to_string();
    let Some(kind) = GRPC_TYPES.get(&path) else {
        return serve(req).await;
    };
    let (service, method) = path[1..].split_once('/').unwrap_or(("", ""));
    let call = Call([kind.to_string(), service.to_string(), method.to_string()]);
    let [t, s, m] = &call.0;
    STARTED
        .with_label_values(&[t.as_str(), s.as_str(), m.as_str()])
        .inc();
    let req = req.map(|b| Body::new(Counted::new(b, &CLIENT_RECEIVED, None)));
    let resp = serve(req).await;
    // A call answered with headers only (an immediate error) is done.
    if let Some(code) = grpc_code(resp.headers()) {
        call.handled(code);
        return resp;
    }
    resp.map(|b| Body::new(Counted::new(b, &CLIENT_SENT, Some(call))))
}

/// A body that counts its data bytes and, for a response, reports the
/// call's end: the code in its trailers, or `Canceled` if dropped first.
struct Counted {
    inner: Body,
    bytes: &'static IntCounter,
    call: Option<Call>,
}

impl Counted {
    fn new(inner: Body, bytes: &'static IntCounter, call: Option<Call>) -> Self {
        Self { inner, bytes, call }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.inc_by(data.len() as u64);
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(call) = self.call.take() {
                        call.handled(grpc_code(trailers).unwrap_or("Unknown"));
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.handled("Unknown");
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.handled("Canceled");
        }
    }
}
