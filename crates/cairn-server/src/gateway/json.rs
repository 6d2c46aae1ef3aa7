//! JSON as etcd's grpc-gateway (v1) reads and writes it, through
//! `prost-reflect`'s proto3 JSON mapping with the gateway's settings:
//! original proto field names (`create_revision`, `ID`, `dbSize`), 64-bit
//! integers as strings, bytes as base64, enums by name, fields at their
//! default value left out. Requests may use either field name form and
//! may carry fields this server does not know (ignored, as the gateway
//! does); an empty body is the empty request.
//!
//! Errors: a unary call's error is the body `{"error", "message",
//! "code"}` with the HTTP status the gateway maps the gRPC code to; a
//! stream's is one last line `{"error": {"grpc_code", "http_code",
//! "message", "http_status"}}`. Streamed messages are lines of
//! `{"result": ...}`.

use http::StatusCode;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde::Serialize;
use tonic::{Code, Status};

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .stringify_64_bit_integers(true)
        .use_proto_field_name(true)
        .skip_default_fields(true)
}

fn deserialize_options() -> DeserializeOptions {
    DeserializeOptions::new().deny_unknown_fields(false)
}

/// A request body as a message of type `desc`.
pub fn decode(desc: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let msg =
        DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &deserialize_options())
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(msg)
}

/// One parsed JSON value as a message of type `desc`.
pub fn from_value(
    desc: &MessageDescriptor,
    value: serde_json::Value,
) -> Result<DynamicMessage, Status> {
    DynamicMessage::deserialize_with_options(desc.clone(), value, &deserialize_options())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn write_message(out: &mut Vec<u8>, msg: &DynamicMessage) {
    let mut ser = serde_json::Serializer::new(&mut *out);
    // Writing JSON into a Vec fails only on a non-finite float, which no
    // etcd message has; an empty object is the honest fallback.
    if msg
        .serialize_with_options(&mut ser, &serialize_options())
        .is_err()
    {
        out.extend_from_slice(b"{}");
    }
}

/// A unary response body.
pub fn encode(msg: &DynamicMessage) -> Vec<u8> {
    let mut out = Vec::new();
    write_message(&mut out, msg);
    out
}

/// One streamed message: `{"result":...}` and a newline.
pub fn encode_result(msg: &DynamicMessage) -> Vec<u8> {
    let mut out = b"{\"result\":".to_vec();
    write_message(&mut out, msg);
    out.extend_from_slice(b"}\n");
    out
}

/// The gateway's error body (its fields in the gateway's order).
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// The gateway's stream error, inside `{"error": ...}`.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

#[derive(Serialize)]
struct StreamErrorLine<'a> {
    error: StreamError<'a>,
}

/// A unary error: its HTTP status and body.
pub fn error(status: &Status) -> (StatusCode, Vec<u8>) {
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    (http_status(status.code()), bytes)
}

/// A stream's closing error line (also the whole body, with the mapped
/// HTTP status, when a stream fails before its first message).
pub fn stream_error(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    let line = StreamErrorLine {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        },
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The HTTP status grpc-gateway v1 gives a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Splits a streamed request body into JSON values as its bytes arrive
/// (the gateway reads a stream's requests as consecutive JSON values).
/// Holds at most `limit` bytes of one unfinished value.
pub struct JsonValues {
    buf: Vec<u8>,
    limit: usize,
}

impl JsonValues {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// Adds `chunk`; returns the values it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<serde_json::Value>, Status> {
        self.buf.extend_from_slice(chunk);
        let mut values = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(v)) => {
                    values.push(v);
                    consumed = stream.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(Status::invalid_argument(e.to_string())),
                None => {
                    consumed = stream.byte_offset();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > self.limit {
            return Err(Status::invalid_argument(format!(
                "a streamed request is larger than {} bytes",
                self.limit
            )));
        }
        Ok(values)
    }

    /// Whether the body ended in the middle of a value.
    pub fn unfinished(&self) -> bool {
        !self.buf.iter().all(u8::is_ascii_whitespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_across_chunks_and_whitespace() {
        let mut s = JsonValues::new(1024);
        assert!(s.push(b"{\"a\":").unwrap().is_empty());
        assert!(s.unfinished());
        let v = s.push(b"1} {\"b\"").unwrap();
        assert_eq!(v, vec![serde_json::json!({"a": 1})]);
        let v = s.push(b":2}\n{\"c\":3}\n").unwrap();
        assert_eq!(
            v,
            vec![serde_json::json!({"b": 2}), serde_json::json!({"c": 3})]
        );
        assert!(!s.unfinished());
        assert!(s.push(b"{x}").is_err());
    }

    #[test]
    fn messages_map_as_etcds_gateway_writes_and_reads_them() {
        use cairn_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
        use cairn_api::mvccpb::KeyValue;
        use prost::Message;
        let pool = super::super::descriptors();
        let out = pool
            .get_message_by_name("etcdserverpb.RangeResponse")
            .unwrap();
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 7,
                version: 3,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let msg = DynamicMessage::decode(out, resp.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            String::from_utf8(encode(&msg)).unwrap(),
            r#"{"header":{"revision":"7"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"7","version":"3","value":"YmFy"}],"count":"1"}"#
        );
        // Either field-name form, numbers as strings or not, unknown fields
        // ignored, enums by name.
        let input = pool
            .get_message_by_name("etcdserverpb.RangeRequest")
            .unwrap();
        let body = br#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"2","revision":5,"sort_order":"DESCEND","x":1}"#;
        let req =
            RangeRequest::decode(decode(&input, body).unwrap().encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (req.key.as_slice(), req.range_end.as_slice()),
            (&b"foo"[..], &b"fop"[..])
        );
        assert_eq!((req.limit, req.revision, req.sort_order), (2, 5, 2));
        assert_eq!(
            decode(&input, b"  ").unwrap().encode_to_vec(),
            Vec::<u8>::new()
        );
        assert_eq!(
            decode(&input, b"{} x").unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn errors_carry_the_gateways_fields_and_statuses() {
        let (status, body) = error(&Status::out_of_range(
            "etcdserver: mvcc: required revision is a future revision",
        ));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#
        );
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            String::from_utf8(stream_error(&Status::unavailable("x"))).unwrap(),
            "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"x\",\"http_status\":\"Service Unavailable\"}}\n"
        );
    }

    #[test]
    fn an_unfinished_value_is_bounded() {
        let mut s = JsonValues::new(8);
        assert!(s.push(b"{\"aaaaaaaaaaaa").is_err());
    }
}
