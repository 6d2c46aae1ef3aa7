//! Cross-origin headers on the client port's HTTP answers, as etcd's
//! default `--cors '*'` gives them (its `accessController`): every answer
//! of the JSON gateway, the probes and `/metrics` allows any origin, and
//! a preflight `OPTIONS` is answered 200 before routing, so a browser's
//! page can call the gateway. gRPC answers carry none, as on etcd, whose
//! gRPC server is not behind that handler.

use axum::body::Body;
use axum::middleware::Next;
use axum::response::Response;
use http::{header, HeaderValue, Method, Request, StatusCode};

/// Adds etcd's three CORS headers; answers `OPTIONS` itself.
pub async fn allow_any_origin(req: Request<Body>, next: Next) -> Response {
    let mut response = if req.method() == Method::OPTIONS {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::OK;
        r
    } else {
        next.run(req).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "POST, GET, OPTIONS, PUT, DELETE",
        ),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "accept, content-type, authorization",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
