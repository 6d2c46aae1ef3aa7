//! Thin helpers over the etcd KV client for tests.

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::{PutRequest, RangeRequest, RangeResponse};
use tonic::transport::Channel;

/// A KV client for `addr` (`host:port`), connected lazily.
pub async fn connect(addr: &str) -> KvClient<Channel> {
    KvClient::new(crate::secured::channel(addr))
}

/// Puts `key = value`; returns the revision.
pub async fn put(c: &mut KvClient<Channel>, key: &str, value: &str) -> Result<i64, tonic::Status> {
    let r = c
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.header.map_or(0, |h| h.revision))
}

/// Deletes `key`; returns the revision.
pub async fn delete(c: &mut KvClient<Channel>, key: &str) -> Result<i64, tonic::Status> {
    let r = c
        .delete_range(cairn_api::etcdserverpb::DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.header.map_or(0, |h| h.revision))
}

/// Gets one key (linearizable unless `serializable`).
pub async fn get(
    c: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
) -> Result<Option<String>, tonic::Status> {
    let r = c
        .range(RangeRequest {
            key: key.into(),
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// The end of the range of every key under `prefix` (its last byte below
/// 0xFF, as the tests' prefixes are).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Every key with `prefix`.
pub async fn prefix(
    c: &mut KvClient<Channel>,
    prefix: &str,
    serializable: bool,
) -> Result<RangeResponse, tonic::Status> {
    Ok(c.range(RangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix.as_bytes()),
        serializable,
        ..Default::default()
    })
    .await?
    .into_inner())
}
