//! Bad input over the real gRPC API: each case gets etcd's code and message,
//! and nothing is lost or changed by the refused request.

use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::*;
use cairn_server::Limits;
use cairn_store::DATA_REGION;
use cairn_testkit::{kv, secured, InProcessCluster};
use tonic::Code;

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, msg: &str) {
    let s = r.expect_err("request must fail");
    assert_eq!((s.code(), s.message()), (code, msg), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_request_gets_etcds_error_and_changes_nothing() {
    let limits = Limits {
        max_request_bytes: 64 * 1024,
        max_txn_ops: 128,
        ..Default::default()
    };
    let c = InProcessCluster::start_with(3, 10_000, limits).await;
    c.wait_leader(DATA_REGION).await;
    let mut k = c.kv(1).await;
    let mut rev = 0;
    for _ in 0..50 {
        match kv::put(&mut k, "keep", "me").await {
            Ok(r) => {
                rev = r;
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert!(rev > 0);

    // Empty keys.
    assert_status(
        k.put(PutRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        k.range(RangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        k.delete_range(DeleteRangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );

    // range_end before key: an empty result, as in etcd.
    let r = k
        .range(RangeRequest {
            key: "z".into(),
            range_end: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.count, r.kvs.len()), (0, 0));
    let d = k
        .delete_range(DeleteRangeRequest {
            key: "z".into(),
            range_end: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 0);

    // ignore_value with a value; ignore_value on a missing key.
    assert_status(
        k.put(PutRequest {
            key: "x".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        k.put(PutRequest {
            key: "missing".into(),
            ignore_value: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    // Unknown lease.
    assert_status(
        k.put(PutRequest {
            key: "x".into(),
            lease: 42,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );

    // Duplicate keys in a txn; too many ops.
    let dup = TxnRequest {
        success: vec![put_op("d", "1"), put_op("d", "2")],
        ..Default::default()
    };
    assert_status(
        k.txn(dup).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // An op with no request in it, nested too: etcd's "key not found".
    let hollow = RequestOp { request: None };
    for req in [
        TxnRequest {
            success: vec![put_op("h", "1"), hollow.clone()],
            ..Default::default()
        },
        TxnRequest {
            failure: vec![RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    success: vec![hollow.clone()],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        },
    ] {
        assert_status(
            k.txn(req).await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
    }
    let many = TxnRequest {
        success: (0..129).map(|i| put_op(&format!("m{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_status(
        k.txn(many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let ok128 = TxnRequest {
        success: (0..128).map(|i| put_op(&format!("m{i}"), "v")).collect(),
        ..Default::default()
    };
    assert!(
        k.txn(ok128).await.is_ok(),
        "128 ops is within the default limit"
    );
    let empty_cmp = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: vec![],
            target_union: Some(TargetUnion::Value(vec![])),
            range_end: vec![],
        }],
        ..Default::default()
    };
    assert_status(
        k.txn(empty_cmp).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );

    // Too large.
    let big = PutRequest {
        key: "big".into(),
        value: vec![b'x'; 65 * 1024],
        ..Default::default()
    };
    assert_status(
        k.put(big).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // A Txn of ranges alone is not proposed, so etcd does not hold it to
    // the request limit (only to gRPC's); one with a write is held to it.
    let compare_big = |success: Vec<RequestOp>| TxnRequest {
        compare: vec![Compare {
            key: "keep".into(),
            target: CompareTarget::Value as i32,
            target_union: Some(TargetUnion::Value(vec![b'x'; 65 * 1024])),
            ..Default::default()
        }],
        success,
        ..Default::default()
    };
    let get = RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: "keep".into(),
            ..Default::default()
        })),
    };
    let r = k.txn(compare_big(vec![get])).await.unwrap().into_inner();
    assert!(!r.succeeded);
    assert_status(
        k.txn(compare_big(vec![put_op("keep", "x")])).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Past gRPC's own limit (the request limit and 512 KiB): grpc-go's
    // refusal, as etcd's server gives it.
    let huge = PutRequest {
        key: "huge".into(),
        value: vec![b'x'; 65 * 1024 + 512 * 1024],
        ..Default::default()
    };
    let e = k.put(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .starts_with("grpc: received message larger than max ("),
        "{e:?}"
    );

    // Invalid sort option.
    assert_status(
        k.range(RangeRequest {
            key: "a".into(),
            sort_order: 9,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: invalid sort option",
    );

    // Future and compacted revisions.
    let now = kv::put(&mut k, "keep", "me2").await.unwrap();
    assert_status(
        k.range(RangeRequest {
            key: "keep".into(),
            revision: now + 1_000_000,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_status(
        k.compact(CompactionRequest {
            revision: now + 1_000_000,
            physical: true,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    k.compact(CompactionRequest {
        revision: now,
        physical: true,
    })
    .await
    .unwrap();
    assert_status(
        k.range(RangeRequest {
            key: "keep".into(),
            revision: rev,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        k.compact(CompactionRequest {
            revision: rev,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );

    // Nothing was lost or changed by any refused request.
    assert_eq!(
        kv::get(&mut k, "keep", false).await.unwrap().as_deref(),
        Some("me2")
    );
    for key in ["x", "d", "big", "missing"] {
        assert_eq!(
            kv::get(&mut k, key, false).await.unwrap(),
            None,
            "{key} must not exist"
        );
    }
    assert_eq!(kv::prefix(&mut k, "m", false).await.unwrap().count, 128);

    // RPCs not built yet answer Unimplemented, never a fake success.
    let ch = secured::channel(&c.nodes[1].client_addr);
    // Bad auth management gets etcd's errors.
    let mut auth = AuthClient::new(ch.clone());
    let e = auth
        .user_add(AuthUserAddRequest {
            name: String::new(),
            password: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: user name is empty")
    );
    auth.role_add(AuthRoleAddRequest { name: "r".into() })
        .await
        .unwrap();
    let bad_perm = |perm_type, key: &[u8], range_end: &[u8]| AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: Some(cairn_api::authpb::Permission {
            perm_type,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }),
    };
    let e = auth
        .role_grant_permission(bad_perm(7, b"k", b""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = auth
        .role_grant_permission(bad_perm(0, b"b", b"a"))
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: invalid auth management");
    let e = auth
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: permission not given");
    let e = auth
        .authenticate(AuthenticateRequest {
            name: "x".into(),
            password: "y".into(),
        })
        .await
        .unwrap_err();
    let want = if secured::is_on() {
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        )
    } else {
        (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        )
    };
    assert_eq!((e.code(), e.message()), want);
    let mut m = MaintenanceClient::new(ch);
    assert_eq!(
        m.downgrade(DowngradeRequest {
            action: 0,
            version: "3.5".into(),
        })
        .await
        .unwrap_err()
        .code(),
        Code::Unimplemented
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_without_a_quorum_fail_with_unavailable() {
    let mut c = InProcessCluster::start(3).await;
    let leader = c.wait_leader(DATA_REGION).await;
    let mut k = c.kv(leader).await;
    kv::put(&mut k, "a", "1").await.ok();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for i in others {
        c.stop(i).await;
    }
    let s = kv::put(&mut k, "b", "2").await.expect_err("no quorum");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        ["etcdserver: request timed out", "etcdserver: no leader"].contains(&s.message()),
        "{s:?}"
    );
    let s = kv::get(&mut k, "a", false)
        .await
        .expect_err("no quorum for a linearizable read");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    c.shutdown().await;
}
