//! Routing: which data region holds a key, and which regions a span
//! touches — read from the meta region's directory.

use crate::node::{Node, Region, DATA_REGION, META_REGION};
use std::sync::Arc;

use cairn_api::etcdserverpb::TxnRequest;

impl Node {
    /// The data regions whose ranges overlap `[start, end)` (`end` None: to
    /// the end), with each region's own range (`end` empty: to the end), from
    /// the meta region's directory; the hosted data regions until the
    /// directory is published.
    pub fn regions_overlapping(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<(Arc<Region>, Vec<u8>, Vec<u8>)> {
        let dir = self
            .region(META_REGION)
            .map(|m| m.shared.with_applied(|a| a.regions.clone()))
            .unwrap_or_default();
        let mut out: Vec<(Arc<Region>, Vec<u8>, Vec<u8>)> = dir
            .values()
            .filter(|r| r.id != META_REGION)
            .filter(|r| {
                (r.end.is_empty() || start < r.end.as_slice())
                    && end.is_none_or(|e| r.start.as_slice() < e)
            })
            .filter_map(|r| {
                self.regions
                    .get(r.id)
                    .map(|region| (region, r.start.clone(), r.end.clone()))
            })
            .collect();
        if out.is_empty() {
            out = self
                .regions
                .all()
                .into_iter()
                .filter(|r| r.id != META_REGION)
                .map(|r| (r, Vec::new(), Vec::new()))
                .collect();
        }
        out
    }

    /// The data region holding `key`, from the meta region's directory.
    pub fn route(&self, key: &[u8]) -> u64 {
        let Ok(meta) = self.region(META_REGION) else {
            return DATA_REGION;
        };
        meta.shared.with_applied(|a| {
            a.regions
                .values()
                .find(|r| {
                    r.id != META_REGION
                        && key >= r.start.as_slice()
                        && (r.end.is_empty() || key < r.end.as_slice())
                })
                .map_or(DATA_REGION, |r| r.id)
        })
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
