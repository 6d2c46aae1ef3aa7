//! The client port's plain HTTP endpoints, as etcd serves them:
//!
//! - `GET /version`: `{"etcdserver":"3.6.0","etcdcluster":"3.6.0"}` — the
//!   etcd API version Cairn speaks, plain numbers (clients parse them).
//! - `GET /health`: etcd 3.5+'s `{"health":"true","reason":""}`, or 503 with
//!   `"false"` and why: no Raft leader (`RAFT NO LEADER`), or a read of the
//!   key `health` failing or timing out (`QGET ERROR`, `QGET TIMEOUT`), or
//!   a raised alarm (`ALARM NOSPACE`, `ALARM CORRUPT`; `?exclude=NOSPACE`
//!   ignores one). `?serializable=true` skips the leader check and reads
//!   locally, as in etcd.
//! - `GET /livez` (a local serializable read works) and `GET /readyz`
//!   (that, and a linearizable read): `ok`, or 503 naming the failed check,
//!   in etcd 3.6's format; `?verbose` lists every check, `?exclude=NAME`
//!   skips one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use cairn_api::etcdserverpb::RangeRequest;
use http::{header, StatusCode, Uri};
use serde::Serialize;

use crate::maintenance::ETCD_VERSION;
use crate::{quota, Context};

/// How long a probe's read may take (etcd: its request timeout, 5 s plus
/// two election timeouts).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The probe routes over `ctx`.
pub fn router(ctx: Arc<Context>) -> axum::Router {
    let (h, l, r) = (ctx.clone(), ctx.clone(), ctx);
    axum::Router::new()
        .route("/version", get(version))
        .route("/health", get(move |uri: Uri| health(h, uri)))
        .route("/livez", get(move |uri: Uri| check(l, uri, "livez", LIVEZ)))
        .route(
            "/readyz",
            get(move |uri: Uri| check(r, uri, "readyz", READYZ)),
        )
}

#[derive(Serialize)]
struct Version<'a> {
    etcdserver: &'a str,
    etcdcluster: String,
}

#[derive(Serialize)]
struct Health<'a> {
    health: &'a str,
    reason: &'a str,
}

async fn version() -> Response {
    let cluster = ETCD_VERSION
        .rsplit_once('.')
        .map_or(ETCD_VERSION.to_string(), |(minor, _)| format!("{minor}.0"));
    let body = Version {
        etcdserver: ETCD_VERSION,
        etcdcluster: cluster,
    };
    respond(StatusCode::OK, "application/json", to_json(&body))
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The query parameters of `uri` as (name, value) pairs.
fn params(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// Reads the key `health` (a missing key is fine: the read is the test).
async fn read(ctx: &Context, serializable: bool) -> Result<(), &'static str> {
    let req = RangeRequest {
        key: b"health".to_vec(),
        serializable,
        ..Default::default()
    };
    match tokio::time::timeout(
        READ_TIMEOUT,
        ctx.node.range(req, &cairn_store::Access::Internal),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err("QGET ERROR"),
        Err(_) => Err("QGET TIMEOUT"),
    }
}

async fn health(ctx: Arc<Context>, uri: Uri) -> Response {
    let serializable = params(&uri)
        .iter()
        .any(|(k, v)| k == "serializable" && v == "true");
    let excluded: Vec<String> = params(&uri)
        .into_iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v)
        .collect();
    let alarm = ctx
        .node
        .alarms()
        .into_iter()
        .map(|(_, a)| quota::alarm_name(a))
        .find(|name| !excluded.iter().any(|x| x == name));
    let verdict = if let Some(alarm) = alarm {
        Err(match alarm {
            "NOSPACE" => "ALARM NOSPACE",
            "CORRUPT" => "ALARM CORRUPT",
            _ => "ALARM UNKNOWN",
        })
    } else if !serializable && ctx.node.status().leader == 0 {
        Err("RAFT NO LEADER")
    } else {
        read(&ctx, serializable).await
    };
    let (status, healthy, reason) = match verdict {
        Ok(()) => (StatusCode::OK, "true", ""),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, "false", reason),
    };
    let body = Health {
        health: healthy,
        reason,
    };
    respond(status, "application/json", to_json(&body))
}

type Probe = fn(&Context) -> Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send + '_>>;

const LIVEZ: &[(&str, Probe)] = &[("serializable_read", |c| Box::pin(read(c, true)))];
const READYZ: &[(&str, Probe)] = &[
    ("serializable_read", |c| Box::pin(read(c, true))),
    ("linearizable_read", |c| Box::pin(read(c, false))),
];

async fn check(ctx: Arc<Context>, uri: Uri, name: &str, checks: &[(&str, Probe)]) -> Response {
    let params = params(&uri);
    let verbose = params.iter().any(|(k, _)| k == "verbose");
    let excluded = |check: &str| params.iter().any(|(k, v)| k == "exclude" && v == check);
    let mut report = String::new();
    let mut failed = false;
    for (check, probe) in checks {
        if excluded(check) {
            report += &format!("[+]{check} excluded: ok\n");
            continue;
        }
        match probe(&ctx).await {
            Ok(()) => report += &format!("[+]{check} ok\n"),
            Err(reason) => {
                failed = true;
                report += &format!("[-]{check} failed: {reason}\n");
            }
        }
    }
    if failed {
        report += &format!("{name} check failed\n");
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            report,
        );
    }
    let body = if verbose {
        report + "ok\n"
    } else {
        "ok".to_string()
    };
    respond(StatusCode::OK, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
