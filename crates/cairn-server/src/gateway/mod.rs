//! etcd's JSON gateway: every RPC as `POST /v3/<path>` with a JSON body,
//! for clients that speak HTTP/1.1 and JSON rather than gRPC (Patroni's
//! etcd3 DCS, `etcd3gw`, curl).
//!
//! Like etcd's grpc-gateway, which dials the member's own gRPC port, the
//! gateway is a gRPC client of this node's services: each request is
//! turned from JSON into the method's protobuf message, sent through the
//! same service stack gRPC clients reach (in process, no socket), and the
//! answer turned back into JSON ([`json`]). So the gateway adds no
//! semantics of its own: validation, errors and limits are the gRPC
//! services', and every RPC — including ones not built yet, which answer
//! `Unimplemented` — is reachable. The messages are known by descriptor
//! ([`cairn_api::FILE_DESCRIPTOR_SET`], [`codec`]), so one handler serves
//! every path in [`routes`].
//!
//! The caller travels along: the `Authorization` header becomes the
//! `authorization` metadata (etcd reads a token there, as grpc-gateway
//! forwards it), a `Grpc-Metadata-<key>` header the metadata `<key>` (as
//! grpc-gateway passes it on: `Grpc-Metadata-Hasleader: true` requires a
//! leader), and the connection's verified TLS client certificate
//! stays attached, so the services check the gateway's requests exactly as
//! they check gRPC's.
//!
//! Streams: a bidirectional method (Watch, LeaseKeepAlive) reads its
//! requests as consecutive JSON values from the request body while
//! answering with one `{"result": ...}` line per message; the end of the
//! body half-closes the stream, which (as in etcd) leaves a watch running
//! until the client disconnects. As in the gateway, a first request that
//! is not valid JSON is an HTTP error; a later one ends the requests.

mod codec;
mod json;
pub mod routes;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::post;
use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use http::{header, StatusCode};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc;
use tonic::service::Routes;
use tonic::Status;

use codec::DynamicCodec;
use json::JsonValues;
use routes::Route;

/// One gRPC method as the gateway calls it.
struct Method {
    path: PathAndQuery,
    input: MessageDescriptor,
    output: MessageDescriptor,
    client_streaming: bool,
    server_streaming: bool,
}

impl Method {
    fn resolve(pool: &DescriptorPool, route: &Route) -> Option<Method> {
        let service = pool.get_service_by_name(route.service)?;
        let method = service.methods().find(|m| m.name() == route.method)?;
        Some(Method {
            path: PathAndQuery::try_from(format!("/{}/{}", route.service, route.method)).ok()?,
            input: method.input(),
            output: method.output(),
            client_streaming: method.is_client_streaming(),
            server_streaming: method.is_server_streaming(),
        })
    }
}

/// The descriptors of every Cairn service and message.
fn descriptors() -> DescriptorPool {
    DescriptorPool::decode(cairn_api::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set is built with cairn-api")
}

/// The gateway's routes over `grpc`, the node's gRPC services. A JSON body
/// may be at most `limit` bytes (a streamed one: per message).
pub fn router(grpc: Routes, limit: usize) -> axum::Router {
    let pool = descriptors();
    let mut router = axum::Router::new();
    for route in routes::ALL {
        let method = Arc::new(
            Method::resolve(&pool, route)
                .unwrap_or_else(|| panic!("gateway route {} names no method", route.path)),
        );
        for prefix in routes::PREFIXES {
            let (grpc, method) = (grpc.clone(), method.clone());
            // Answers are bounded by the services (as etcd's gateway, which
            // lifts gRPC's client limit): no 4 MiB client cap here.
            let handler = move |req: axum::extract::Request| {
                let (parts, body) = req.into_parts();
                let client = Grpc::new(grpc).max_decoding_message_size(usize::MAX);
                call(client, method, Caller::of(&parts), body, limit)
            };
            router = router.route(&format!("{prefix}{}", route.path), post(handler));
        }
    }
    router
}

/// Who sent an HTTP request, as the gRPC services learn it.
struct Caller {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// `Grpc-Metadata-<key>` headers, as metadata `<key>` (grpc-gateway's
    /// rule: `Grpc-Metadata-Hasleader: true` requires a leader).
    metadata: Vec<(
        tonic::metadata::AsciiMetadataKey,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
    tls: Option<TlsInfo>,
}

/// The prefix of headers grpc-gateway passes on as metadata.
const METADATA_PREFIX: &str = "grpc-metadata-";

type TlsInfo = tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>;

impl Caller {
    fn of(parts: &http::request::Parts) -> Self {
        Self {
            authorization: parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            metadata: parts
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    let key = name.as_str().strip_prefix(METADATA_PREFIX)?;
                    let key = tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()).ok()?;
                    let value = value.to_str().ok()?.parse().ok()?;
                    Some((key, value))
                })
                .collect(),
            tls: parts.extensions.get::<TlsInfo>().cloned(),
        }
    }

    /// `msg` as a gRPC request from this caller.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        for (key, value) in &self.metadata {
            r.metadata_mut().append(key.clone(), value.clone());
        }
        if let Some(a) = &self.authorization {
            r.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(tls) = &self.tls {
            r.extensions_mut().insert(tls.clone());
        }
        r
    }
}

async fn call(
    grpc: Grpc<Routes>,
    method: Arc<Method>,
    caller: Caller,
    body: Body,
    limit: usize,
) -> Response {
    let result = if method.client_streaming {
        bidi(grpc, &method, &caller, body, limit).await
    } else {
        match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => unary_or_server_streaming(grpc, &method, &caller, &bytes).await,
            // Over the limit: refused as etcd's gRPC server refuses the
            // message its gateway would make of it.
            Err(e) if e.to_string().contains("length limit exceeded") => {
                Err(Status::resource_exhausted(format!(
                    "grpc: received message larger than max (a JSON body over {limit} bytes)"
                )))
            }
            Err(e) => Err(Status::invalid_argument(format!(
                "reading the request body: {e}"
            ))),
        }
    };
    result.unwrap_or_else(|status| error_response(&status))
}

async fn unary_or_server_streaming(
    mut grpc: Grpc<Routes>,
    method: &Method,
    caller: &Caller,
    body: &[u8],
) -> Result<Response, Status> {
    let request = caller.request(json::decode(&method.input, body)?);
    let codec = DynamicCodec {
        output: method.output.clone(),
    };
    ready(&mut grpc).await?;
    if method.server_streaming {
        match grpc
            .server_streaming(request, method.path.clone(), codec)
            .await
        {
            Ok(answers) => Ok(stream_response(answers.into_inner())),
            Err(status) => Ok(stream_failed(&status)),
        }
    } else {
        let answer = grpc.unary(request, method.path.clone(), codec).await?;
        Ok(json_response(
            StatusCode::OK,
            json::encode(answer.get_ref()),
        ))
    }
}

/// A bidirectional stream: requests parsed from the body as it arrives.
async fn bidi(
    mut grpc: Grpc<Routes>,
    method: &Method,
    caller: &Caller,
    body: Body,
    limit: usize,
) -> Result<Response, Status> {
    let mut chunks = body.into_data_stream();
    let mut values = JsonValues::new(limit);
    // The first request decides between an HTTP error and a stream. The
    // gateway reports a first request it cannot read as its decoder's
    // error, which gRPC's status of a plain error makes `Unknown`.
    let unreadable = |s: Status| Status::unknown(s.message().to_string());
    let mut pending = std::collections::VecDeque::new();
    while pending.is_empty() {
        match chunks.next().await {
            Some(Ok(chunk)) => pending.extend(values.push(&chunk).map_err(unreadable)?),
            Some(Err(e)) => {
                return Err(Status::invalid_argument(format!(
                    "reading the request body: {e}"
                )))
            }
            None if values.unfinished() => {
                return Err(Status::unknown("unexpected EOF"));
            }
            None => break,
        }
    }
    let (tx, rx) = mpsc::channel::<DynamicMessage>(16);
    let input = method.input.clone();
    let first = match pending.pop_front() {
        Some(value) => Some(json::decode(&input, &value).map_err(unreadable)?),
        None => None,
    };
    // Later requests: forwarded, in order and with back-pressure, until
    // the body ends or one is malformed (either half-closes the stream),
    // or the call ends (the receiver is dropped).
    tokio::spawn(async move {
        let forward = |value: Vec<u8>| json::decode(&input, &value).ok();
        let mut queued: Vec<DynamicMessage> = first.into_iter().collect();
        queued.extend(pending.into_iter().map_while(forward));
        for msg in queued {
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        while let Some(Ok(chunk)) = chunks.next().await {
            let Ok(parsed) = values.push(&chunk) else {
                return;
            };
            for value in parsed {
                let Some(msg) = forward(value) else {
                    return;
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
    });
    let codec = DynamicCodec {
        output: method.output.clone(),
    };
    ready(&mut grpc).await?;
    let requests = caller.request(ReceiverStream::new(rx));
    match grpc.streaming(requests, method.path.clone(), codec).await {
        Ok(answers) => Ok(stream_response(answers.into_inner())),
        Err(status) => Ok(stream_failed(&status)),
    }
}

/// A stream that failed before its first message: the gateway answers
/// with the code's HTTP status and the stream's error line.
fn stream_failed(status: &Status) -> Response {
    json_response(json::http_status(status.code()), json::stream_error(status))
}

async fn ready(grpc: &mut Grpc<Routes>) -> Result<(), Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("gateway: {e}")))
}

/// Streamed answers as `{"result": ...}` lines; an error is the last line.
fn stream_response(
    answers: impl Stream<Item = Result<DynamicMessage, Status>> + Send + 'static,
) -> Response {
    let lines = answers.scan(false, |ended, item| {
        if *ended {
            return futures::future::ready(None);
        }
        let line = match item {
            Ok(msg) => json::encode_result(&msg),
            Err(status) => {
                *ended = true;
                json::stream_error(&status)
            }
        };
        futures::future::ready(Some(Ok::<_, Infallible>(Bytes::from(line))))
    });
    json_response(StatusCode::OK, Body::from_stream(lines))
}

fn error_response(status: &Status) -> Response {
    let (code, body) = json::error(status);
    json_response(code, body)
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_method_of_the_api() {
        let pool = descriptors();
        for route in routes::ALL {
            assert!(
                Method::resolve(&pool, route).is_some(),
                "{} -> {}/{}",
                route.path,
                route.service,
                route.method
            );
        }
        // And every method of etcd's services has a path.
        for service in pool.services() {
            // Cairn's own services (peer, regions) are not etcd's API.
            if service.full_name().starts_with("cairn") {
                continue;
            }
            for m in service.methods() {
                assert!(
                    routes::ALL
                        .iter()
                        .any(|r| r.service == service.full_name() && r.method == m.name()),
                    "{}/{} has no gateway path",
                    service.full_name(),
                    m.name()
                );
            }
        }
    }
}
