//! A request message over the size limit, refused as etcd's gRPC server
//! (grpc-go) refuses it: `ResourceExhausted`, "grpc: received message
//! larger than max (N vs. M)" — HTTP 429 through the gateway. tonic
//! refuses it while decoding, with its own code and words (`OutOfRange`,
//! "Error, decoded message length too large: found N bytes, the limit is:
//! M bytes"); a call refused so is answered with headers only, which
//! [`as_etcd`] rewrites.

use axum::response::Response;
use http::HeaderValue;

/// tonic's words for a message over the decoding limit.
const TONIC: &str = "Error, decoded message length too large: found ";

/// `resp` with tonic's refusal of a too-large request told as grpc-go's.
pub fn as_etcd(mut resp: Response) -> Response {
    if resp.headers().get("grpc-status").map(HeaderValue::as_bytes) != Some(b"11") {
        return resp;
    }
    // (The message travels percent-encoded.)
    let Some(words) =
        tonic::Status::from_header_map(resp.headers()).and_then(|s| grpc_go_words(s.message()))
    else {
        return resp;
    };
    let _ = tonic::Status::resource_exhausted(words).add_header(resp.headers_mut());
    resp
}

/// grpc-go's message for tonic's `message` about a too-large request,
/// if it is one.
fn grpc_go_words(message: &str) -> Option<String> {
    let rest = message.strip_prefix(TONIC)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    let (found, limit): (u64, u64) = (found.parse().ok()?, limit.parse().ok()?);
    Some(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_refusal_is_told_in_grpc_gos_words() {
        let tonic =
            "Error, decoded message length too large: found 700012 bytes, the limit is: 589824 bytes";
        assert_eq!(
            grpc_go_words(tonic).as_deref(),
            Some("grpc: received message larger than max (700012 vs. 589824)")
        );
        assert_eq!(grpc_go_words("etcdserver: request is too large"), None);
        // As tonic sends it: percent-encoded.
        let resp = tonic::Status::out_of_range(tonic).into_http::<axum::body::Body>();
        let resp = as_etcd(resp);
        let told = tonic::Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(told.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            told.message(),
            "grpc: received message larger than max (700012 vs. 589824)"
        );
        // Another OutOfRange (a future revision) is left alone.
        let mut other = Response::new(axum::body::Body::empty());
        other
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("11"));
        other.headers_mut().insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: mvcc: required revision is a future revision"),
        );
        assert_eq!(as_etcd(other).headers()["grpc-status"], "11");
    }
}
