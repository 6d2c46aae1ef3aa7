//! JSON as etcd's grpc-gateway (v1) reads and writes it, through
//! `prost-reflect`'s proto3 JSON mapping with the gateway's settings:
//! original proto field names (`create_revision`, `ID`, `dbSize`), 64-bit
//! integers as strings, bytes as base64, enums by name, fields at their
//! default value left out. Requests may use either field name form and
//! may carry fields this server does not know (ignored, as the gateway
//! does), but not enum names it does not know (refused, as the gateway's
//! `jsonpb` does: a misspelt compare target must not turn into another);
//! an empty body is the empty request, and what follows the first JSON
//! value is ignored (the gateway's decoder reads one).
//!
//! Errors: a unary call's error is the body `{"error", "message",
//! "code"}` with the HTTP status the gateway maps the gRPC code to; a
//! stream's is one last line `{"error": {"grpc_code", "http_code",
//! "message", "http_status"}}`. Streamed messages are lines of
//! `{"result": ...}`.

use http::StatusCode;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde::Serialize;
use serde_json::Value;
use tonic::{Code, Status};

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .stringify_64_bit_integers(true)
        .use_proto_field_name(true)
        .skip_default_fields(true)
}

/// Strict: an unknown field or enum name is an error. (`prost-reflect`
/// ignores unknown enum names too when it ignores unknown fields, so
/// unknown fields are dropped first instead: [`strip_unknown`].)
fn deserialize_options() -> DeserializeOptions {
    DeserializeOptions::new().deny_unknown_fields(true)
}

/// The message `prost-reflect` gives a field name it does not know.
const UNKNOWN_FIELD: &str = "unrecognized field name";

/// A request body (its first JSON value) as a message of type `desc`.
/// Straight from the bytes; only a body naming a field `desc` does not
/// know is parsed into a JSON tree to drop such fields.
pub fn decode(desc: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    let bad = |e: serde_json::Error| Status::invalid_argument(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(body);
    match DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &deserialize_options()) {
        Ok(msg) => Ok(msg),
        Err(e) if e.to_string().contains(UNKNOWN_FIELD) => {
            let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
            let mut value = values
                .next()
                .transpose()
                .map_err(bad)?
                .unwrap_or(Value::Null);
            strip_unknown(desc, &mut value);
            DynamicMessage::deserialize_with_options(desc.clone(), value, &deserialize_options())
                .map_err(bad)
        }
        Err(e) => Err(bad(e)),
    }
}

/// Drops from `value` every object key that names no field of the
/// message it stands for (`desc`, and the messages of its fields, however
/// deep), as the gateway ignores them.
fn strip_unknown(desc: &MessageDescriptor, value: &mut Value) {
    let Value::Object(map) = value else {
        return;
    };
    let field = |k: &str| {
        desc.get_field_by_json_name(k)
            .or_else(|| desc.get_field_by_name(k))
    };
    map.retain(|k, _| field(k).is_some());
    for (k, v) in map.iter_mut() {
        let Some(f) = field(k) else { continue };
        let Kind::Message(m) = f.kind() else { continue };
        if f.is_map() {
            if let (Kind::Message(vm), Value::Object(entries)) =
                (m.map_entry_value_field().kind(), &mut *v)
            {
                entries.values_mut().for_each(|e| strip_unknown(&vm, e));
            }
        } else if let Value::Array(items) = v {
            items.iter_mut().for_each(|e| strip_unknown(&m, e));
        } else {
            strip_unknown(&m, v);
        }
    }
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

/// Splits a streamed request body into JSON objects as its bytes arrive
/// (the gateway reads a stream's requests as consecutive JSON values),
/// each returned as its bytes for [`decode`]. A scan that resumes where
/// the last chunk ended (nesting depth, inside a string or not) finds
/// where each object ends: every byte is looked at once, however the body
/// is cut. Holds at most `limit` bytes of one unfinished object.
pub struct JsonValues {
    /// Bytes of the unfinished object (and whitespace before it).
    buf: Vec<u8>,
    /// How far `buf` is scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    limit: usize,
    /// Bytes looked at, in all (what the tests check stays linear).
    #[cfg(test)]
    looked: usize,
}

impl JsonValues {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
            #[cfg(test)]
            looked: 0,
        }
    }

    /// Adds `chunk`; returns the objects it completed. A value that is not
    /// an object (a request is one) fails, as does an unfinished one past
    /// the limit; what is inside an object is [`decode`]'s to judge.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, Status> {
        self.buf.extend_from_slice(chunk);
        let mut done = Vec::new();
        let mut from = 0;
        #[cfg(test)]
        {
            self.looked += self.buf.len() - self.scanned;
        }
        for i in self.scanned..self.buf.len() {
            let b = self.buf[i];
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' | b'[' if self.depth > 0 || b == b'{' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        done.push(self.buf[from..=i].to_vec());
                        from = i + 1;
                    }
                }
                _ if self.depth > 0 || b.is_ascii_whitespace() => {}
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "a streamed request is not a JSON object (found {:?})",
                        b as char
                    )))
                }
            }
        }
        self.buf.drain(..from);
        self.scanned = self.buf.len();
        if self.buf.len() > self.limit {
            return Err(Status::invalid_argument(format!(
                "a streamed request is larger than {} bytes",
                self.limit
            )));
        }
        Ok(done)
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
        assert_eq!(v, vec![b"{\"a\":1}".to_vec()]);
        // Braces and escaped quotes inside strings are not structure.
        let v = s.push(b":\"}\\\"{\"}\n{\"c\":[3,{}]}\n").unwrap();
        assert_eq!(
            v,
            vec![
                b" {\"b\":\"}\\\"{\"}".to_vec(),
                b"\n{\"c\":[3,{}]}".to_vec()
            ]
        );
        assert!(!s.unfinished());
        // Not an object: refused at once.
        assert!(s.push(b" 7").is_err());
    }

    #[test]
    fn a_body_cut_into_bytes_is_scanned_once() {
        let value = format!("{{\"key\":\"{}\"}}", "QUJD".repeat(64 << 10));
        let mut s = JsonValues::new(1 << 20);
        let mut got = Vec::new();
        for b in value.as_bytes() {
            got.extend(s.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, vec![value.as_bytes().to_vec()]);
        assert_eq!(s.looked, value.len());
    }

    #[test]
    fn unknown_enum_names_are_refused_and_unknown_fields_ignored_at_any_depth() {
        let pool = super::super::descriptors();
        let txn = pool.get_message_by_name("etcdserverpb.TxnRequest").unwrap();
        // etcd's gateway: `unknown value "mod" for enum ...`, 400.
        let misspelt = br#"{"compare":[{"key":"YQ==","target":"mod","result":"NOT_EQUAL","mod_revision":"5"}]}"#;
        assert_eq!(
            decode(&txn, misspelt).unwrap_err().code(),
            Code::InvalidArgument
        );
        let range = pool
            .get_message_by_name("etcdserverpb.RangeRequest")
            .unwrap();
        let descend = br#"{"key":"YQ==","sort_order":"descend"}"#;
        assert!(decode(&range, descend).is_err());
        // Unknown fields, here nested and beside a known enum, are dropped.
        let known = br#"{"x":{"y":1},"compare":[{"key":"YQ==","target":"MOD","result":"NOT_EQUAL","mod_revision":"5","extra":[1]}],"success":[{"request_put":{"key":"YQ==","junk":true}}]}"#;
        use prost::Message;
        let req = cairn_api::etcdserverpb::TxnRequest::decode(
            decode(&txn, known).unwrap().encode_to_vec().as_slice(),
        )
        .unwrap();
        assert_eq!(req.compare[0].target, 2);
        assert_eq!(req.compare[0].result, 3);
        assert_eq!(req.success.len(), 1);
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
        // One value is read; what follows it is not (etcd's decoder).
        assert!(decode(&input, b"{\"key\":\"Zm9v\"} x").is_ok());
        assert_eq!(
            decode(&input, b"{x}").unwrap_err().code(),
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
