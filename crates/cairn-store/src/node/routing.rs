//! Routing: which data region holds a key, and which regions a span
//! touches — read from the ranges of the replicas this node hosts (every
//! node hosts a replica of every region until placement exists). A replica
//! that has not applied a split yet still shows the wider range; the
//! region's leader then answers `EpochMismatch` and the caller routes
//! again. Splits only narrow ranges, so a span that crosses regions here
//! crosses them everywhere.

use crate::node::{Node, Region, DATA_REGION, META_REGION};
use crate::{Error, Result};
use std::sync::Arc;

use cairn_api::etcdserverpb::TxnRequest;

impl Node {
    /// The data regions whose ranges overlap `[start, end)` (`end` None: to
    /// the end), each with its own range (`end` empty: to the end).
    pub fn regions_overlapping(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<(Arc<Region>, Vec<u8>, Vec<u8>)> {
        self.regions
            .all()
            .into_iter()
            .filter(|r| r.id != META_REGION)
            .filter_map(|r| {
                let range = r.shared.range();
                let overlaps = (range.end.is_empty() || start < range.end.as_slice())
                    && end.is_none_or(|e| range.start.as_slice() < e);
                overlaps.then_some((r, range.start, range.end))
            })
            .collect()
    }

    /// The data region holding `key`.
    pub fn route(&self, key: &[u8]) -> u64 {
        self.regions
            .all()
            .into_iter()
            .filter(|r| r.id != META_REGION)
            .find(|r| r.shared.range().contains(key))
            .map_or(DATA_REGION, |r| r.id)
    }

    /// The one data region holding every key `req` names, or
    /// `SpansRegions`.
    pub(crate) fn route_txn(&self, req: &TxnRequest) -> Result<u64> {
        let region = self.route(&first_key(req));
        let within = self
            .region(region)
            .is_ok_and(|r| cairn_raft::txn_within(req, &r.shared.range()));
        if within {
            Ok(region)
        } else {
            Err(Error::SpansRegions)
        }
    }

    /// The one data region holding the span `[key, range_end)` (etcd's
    /// form), or `SpansRegions`.
    pub(crate) fn route_span(&self, key: &[u8], range_end: &[u8]) -> Result<u64> {
        let region = self.route(key);
        let within = self
            .region(region)
            .is_ok_and(|r| r.shared.range().covers(key, range_end));
        if within {
            Ok(region)
        } else {
            Err(Error::SpansRegions)
        }
    }
}

/// The key a transaction is routed by (its first named key).
pub(super) fn first_key(req: &TxnRequest) -> Vec<u8> {
    use cairn_api::etcdserverpb::request_op::Request;
    if let Some(c) = req.compare.first() {
        return c.key.clone();
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestPut(p)) => return p.key.clone(),
            Some(Request::RequestRange(r)) => return r.key.clone(),
            Some(Request::RequestDeleteRange(d)) => return d.key.clone(),
            Some(Request::RequestTxn(t)) => return first_key(t),
            None => {}
        }
    }
    Vec::new()
}
