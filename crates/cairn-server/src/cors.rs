//! Cross-origin headers on the client port's HTTP answers, as etcd's
//! default `--cors '*'` gives them (its `accessController`): every answer
//! of the JSON gateway, the probes and `/metrics` allows any origin, and
//! a preflight `OPTIONS` of a path served is answered 200, so a browser's
//! page can call the gateway. gRPC answers carry none, as on etcd, whose
//! gRPC server is not behind that handler.

use axum::body::Body;
use axum::middleware::Next;
use axum::response::Response;
use http::{header, HeaderValue, Request, StatusCode};

/// Adds etcd's three CORS headers to every answer.
pub async fn allow_any_origin(req: Request<Body>, next: Next) -> Response {
    let mut response = next.run(req).await;
    add_headers(&mut response);
    response
}

/// The answer to a preflight `OPTIONS` (a path's methods do not include
/// it: the router's answer for a method it does not serve gives this).
pub fn preflight() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::OK;
    add_headers(&mut r);
    r
}

fn add_headers(response: &mut Response) {
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
}
