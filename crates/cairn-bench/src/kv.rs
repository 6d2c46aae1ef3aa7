//! The KV workloads: `put`, `range`, `txn-put` and `txn-mixed`, each one
//! gRPC request per operation, exactly as etcd's benchmark sends them.

use std::sync::Arc;
use std::time::Duration;

use crate::conn::Chan;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::request_op::Request as OpRequest;
use cairn_api::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use serde_json::json;
use tonic::Code;

use crate::args::{Consistency, Global, KeyShape};
use crate::driver;
use crate::keys::KeyGen;
use crate::stats::RunResult;

fn put_op(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

fn shape_params(r: &mut RunResult, shape: &KeyShape) {
    r.params.insert("key_size".into(), json!(shape.key_size));
    r.params.insert("val_size".into(), json!(shape.val_size));
    r.params
        .insert("key_space_size".into(), json!(shape.key_space_size));
    r.params
        .insert("sequential_keys".into(), json!(shape.sequential_keys));
    r.params.insert("key_start".into(), json!(shape.key_start));
    r.params
        .insert("val_random_bytes".into(), json!(shape.val_random_bytes));
}

/// `put`: one Put per request.
pub async fn put(g: &Global, chans: &[Chan], total: u64, shape: &KeyShape, rate: u64) -> RunResult {
    let shape2 = shape.clone();
    let (rec, took) = driver::run(g.clients, total, rate, |c| {
        let kv = KvClient::new(chans[c % chans.len()].clone());
        let mut keys = KeyGen::new(&shape2, c as u64 + 1);
        move |i| {
            let req = PutRequest {
                key: keys.key(i),
                value: keys.value(),
                ..Default::default()
            };
            let mut kv = kv.clone();
            async move { kv.put(req).await.map(|_| ()) }
        }
    })
    .await;
    let mut r = rec.result("put", took);
    shape_params(&mut r, shape);
    r
}

/// The exclusive end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `range KEY [END]`: one Range per request.
pub async fn range(
    g: &Global,
    chans: &[Chan],
    key: &str,
    end: Option<&str>,
    prefix: bool,
    total: u64,
    rate: u64,
) -> RunResult {
    let range_end = match (end, prefix) {
        (Some(e), _) => e.as_bytes().to_vec(),
        (None, true) => prefix_end(key.as_bytes()),
        (None, false) => Vec::new(),
    };
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end,
        serializable: g.consistency == Consistency::S,
        ..Default::default()
    };
    let (rec, took) = driver::run(g.clients, total, rate, |c| {
        let kv = KvClient::new(chans[c % chans.len()].clone());
        let req = req.clone();
        move |_i| {
            let mut kv = kv.clone();
            let req = req.clone();
            async move { kv.range(req).await.map(|_| ()) }
        }
    })
    .await;
    let mut r = rec.result("range", took);
    r.params.insert("key".into(), json!(key));
    r.params.insert("prefix".into(), json!(prefix));
    r
}

/// Sends one Txn per operation; `ops(client)` gives each client its
/// builder of the Txn's success ops from its key generator and the
/// operation's index. Returns the result named `name` with the key shape.
async fn run_txns<M, B>(
    g: &Global,
    chans: &[Chan],
    total: u64,
    shape: &KeyShape,
    rate: u64,
    name: &str,
    ops: M,
) -> RunResult
where
    M: Fn(usize) -> B,
    B: FnMut(&mut KeyGen, u64) -> Vec<RequestOp> + Send + 'static,
{
    let (rec, took) = driver::run(g.clients, total, rate, |c| {
        let kv = KvClient::new(chans[c % chans.len()].clone());
        let mut keys = KeyGen::new(shape, c as u64 + 1);
        let mut build = ops(c);
        move |i| {
            let req = TxnRequest {
                success: build(&mut keys, i),
                ..Default::default()
            };
            let mut kv = kv.clone();
            async move { kv.txn(req).await.map(|_| ()) }
        }
    })
    .await;
    let mut r = rec.result(name, took);
    shape_params(&mut r, shape);
    r
}

/// `txn-put`: a Txn with `txn_ops` puts in its success branch.
pub async fn txn_put(
    g: &Global,
    chans: &[Chan],
    total: u64,
    shape: &KeyShape,
    txn_ops: usize,
    spread: bool,
    rate: u64,
) -> RunResult {
    let n = txn_ops as u64;
    let mut r = run_txns(g, chans, total, shape, rate, "txn-put", |_| {
        move |keys: &mut KeyGen, i| {
            (0..n)
                .map(|j| {
                    let mut key = keys.key(i * n + j);
                    if spread {
                        // Lane j: first byte `a` + j (wrapping in `a`..=`z`).
                        key.insert(0, b'a' + (j % 26) as u8);
                    }
                    put_op(key, keys.value())
                })
                .collect()
        }
    })
    .await;
    r.params.insert("txn_ops".into(), json!(txn_ops));
    r.params.insert("spread".into(), json!(spread));
    r
}

/// `txn-mixed`: read-only Txns (one Range) and write Txns (one Put) in
/// `rw_ratio` reads per write, on the same key space.
pub async fn txn_mixed(
    g: &Global,
    chans: &[Chan],
    total: u64,
    shape: &KeyShape,
    rw_ratio: f64,
    rate: u64,
) -> RunResult {
    let serializable = g.consistency == Consistency::S;
    let read_share = rw_ratio / (rw_ratio + 1.0);
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut r = run_txns(g, chans, total, shape, rate, "txn-mixed", |c| {
        let mut coin = fastrand::Rng::with_seed(1000 + c as u64);
        let reads = reads.clone();
        move |keys: &mut KeyGen, i| {
            let key = keys.key(i);
            let op = if coin.f64() < read_share {
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                RequestOp {
                    request: Some(OpRequest::RequestRange(RangeRequest {
                        key,
                        serializable,
                        ..Default::default()
                    })),
                }
            } else {
                put_op(key, keys.value())
            };
            vec![op]
        }
    })
    .await;
    r.params.insert("rw_ratio".into(), json!(rw_ratio));
    r.extra.insert(
        "reads".into(),
        json!(reads.load(std::sync::atomic::Ordering::Relaxed)),
    );
    r
}

/// Waits until a linearizable range of one key succeeds (the cluster has
/// a leader). A refusal for the caller (no credentials, no permission,
/// a bad request)
/// ends the wait at once: waiting would not change it.
pub async fn wait_ready(chans: &[Chan]) -> anyhow::Result<()> {
    let mut kv = KvClient::new(chans[0].clone());
    let mut last = None;
    for _ in 0..100 {
        let req = RangeRequest {
            key: b"bench-ready".to_vec(),
            ..Default::default()
        };
        match kv.range(req).await {
            Ok(_) => return Ok(()),
            Err(s)
                if matches!(
                    s.code(),
                    Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
                ) =>
            {
                anyhow::bail!("the cluster refused this client: {}", s.message())
            }
            Err(s) => last = Some(s),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "cluster did not answer a linearizable range within 10 s (last: {})",
        last.map_or_else(String::new, |s| s.message().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
