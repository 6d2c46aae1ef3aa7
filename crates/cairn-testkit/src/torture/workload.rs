//! The recorded workload: concurrent clients issue single-key Put, Get
//! (linearizable; half of them as a read-only Txn, which the server serves
//! on the read path too), Delete and compare-and-set Txns on a few keys, and every
//! operation is written to the history with its invoke and return times and
//! its outcome (see `cairn_check::history`).
//!
//! Outcomes: an answer is `ok`; a write that got no answer or an error is
//! `unknown` (it may still commit — a timed-out etcd write can); a read that
//! failed is `fail` (reads change nothing). Values are unique per write
//! (`c{client}-{n}`), so any value read names the write that made it.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::request_op::Request as OpRequest;
use cairn_api::etcdserverpb::response_op::Response as OpResponse;
use cairn_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use cairn_api::mvccpb;
use cairn_check::{KeyValue, Operation, Outcome, Request, Status};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// How long a client waits for one answer before calling it unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

fn kv_of(kv: &mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
        version: kv.version,
    }
}

fn header_rev(h: &Option<cairn_api::etcdserverpb::ResponseHeader>) -> Option<i64> {
    h.as_ref().map(|h| h.revision)
}

/// Runs one request; the outcome as the history records it. A Get is sent
/// as a Range, or as a read-only Txn when `get_as_txn`.
pub async fn execute(kv: &mut KvClient<Channel>, req: &Request, get_as_txn: bool) -> Outcome {
    let key = req.key().as_bytes().to_vec();
    let call = async {
        Ok::<Outcome, tonic::Status>(match req {
            Request::Put { value, .. } => {
                let r = kv
                    .put(PutRequest {
                        key,
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Outcome {
                    revision: header_rev(&r.header),
                    ..Outcome::of(Status::Ok)
                }
            }
            Request::Get { .. } if get_as_txn => {
                let r = kv
                    .txn(TxnRequest {
                        success: vec![RequestOp {
                            request: Some(OpRequest::RequestRange(RangeRequest {
                                key,
                                ..Default::default()
                            })),
                        }],
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                // Any other shape is a server bug; recorded as a failed read
                // it would vanish from the check, so it stops the run.
                let kv = match r.responses.first().and_then(|x| x.response.as_ref()) {
                    Some(OpResponse::ResponseRange(rr)) => rr.kvs.first().map(kv_of),
                    other => panic!("a one-Range read-only txn answered {other:?}"),
                };
                Outcome {
                    revision: header_rev(&r.header),
                    kv,
                    ..Outcome::of(Status::Ok)
                }
            }
            Request::Get { .. } => {
                let r = kv
                    .range(RangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Outcome {
                    revision: header_rev(&r.header),
                    kv: r.kvs.first().map(kv_of),
                    ..Outcome::of(Status::Ok)
                }
            }
            Request::Delete { .. } => {
                let r = kv
                    .delete_range(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Outcome {
                    revision: header_rev(&r.header),
                    deleted: Some(r.deleted),
                    ..Outcome::of(Status::Ok)
                }
            }
            Request::Cas {
                expect_mod_revision,
                value,
                ..
            } => {
                let r = kv
                    .txn(TxnRequest {
                        compare: vec![Compare {
                            result: CompareResult::Equal as i32,
                            target: CompareTarget::Mod as i32,
                            key: key.clone(),
                            target_union: Some(TargetUnion::ModRevision(*expect_mod_revision)),
                            range_end: Vec::new(),
                        }],
                        success: vec![RequestOp {
                            request: Some(OpRequest::RequestPut(PutRequest {
                                key: key.clone(),
                                value: value.clone().into_bytes(),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![RequestOp {
                            request: Some(OpRequest::RequestRange(RangeRequest {
                                key,
                                ..Default::default()
                            })),
                        }],
                    })
                    .await?
                    .into_inner();
                let read = r.responses.first().and_then(|x| match &x.response {
                    Some(OpResponse::ResponseRange(rr)) => Some(rr.kvs.first().map(kv_of)),
                    _ => None,
                });
                Outcome {
                    revision: header_rev(&r.header),
                    succeeded: Some(r.succeeded),
                    kv: if r.succeeded { None } else { read.flatten() },
                    ..Outcome::of(Status::Ok)
                }
            }
        })
    };
    let failed = if req.is_write() {
        Status::Unknown
    } else {
        Status::Fail
    };
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(Ok(o)) => o,
        Ok(Err(s)) => Outcome {
            error: Some(format!("{:?}: {}", s.code(), s.message())),
            // No connection, no request: even a write certainly failed.
            ..Outcome::of(if never_sent(&s) { Status::Fail } else { failed })
        },
        Err(_) => Outcome {
            error: Some("client timeout".into()),
            ..Outcome::of(failed)
        },
    }
}

/// True when the client could not connect, so nothing was sent.
fn never_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message().contains("tcp connect error")
}

/// One client's loop: random operations on `keys` keys until `deadline`,
/// every one sent to `history`.
pub async fn client(
    id: u64,
    mut kv: KvClient<Channel>,
    keys: usize,
    seed: u64,
    epoch: Instant,
    deadline: Instant,
    history: mpsc::UnboundedSender<Operation>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    // The last mod_revision this client saw per key (for cas).
    let mut seen = vec![0i64; keys];
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let k = rng.usize(0..keys);
        let key = format!("key{k}");
        let value = format!("c{id}-{n}");
        let req = match rng.u32(0..100) {
            0..40 => Request::Get { key },
            40..70 => Request::Put { key, value },
            70..90 => Request::Cas {
                key,
                expect_mod_revision: seen[k],
                value,
            },
            _ => Request::Delete { key },
        };
        let call = epoch.elapsed().as_nanos() as u64;
        let result = execute(&mut kv, &req, rng.bool()).await;
        let ret = epoch.elapsed().as_nanos() as u64;
        match (&req, &result) {
            (_, Outcome { kv: Some(x), .. }) => seen[k] = x.mod_revision,
            (
                Request::Put { .. } | Request::Cas { .. },
                Outcome {
                    status: Status::Ok,
                    revision: Some(r),
                    succeeded,
                    ..
                },
            ) if *succeeded != Some(false) => seen[k] = *r,
            (
                Request::Delete { .. } | Request::Get { .. },
                Outcome {
                    status: Status::Ok, ..
                },
            ) => seen[k] = 0,
            _ => {}
        }
        let unknown = result.status == Status::Unknown;
        let answered = result.status == Status::Ok;
        let _ = history.send(Operation {
            id: id * 1_000_000_000 + n,
            client: id,
            call,
            ret: (!unknown).then_some(ret),
            op: req,
            result,
        });
        if !answered {
            // Give a failing endpoint a moment rather than spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
