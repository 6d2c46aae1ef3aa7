//! The region replicas a node hosts: a live set, by region ID. Replicas
//! join when the node starts them, when a split applied here gives birth
//! to one, or when one this node missed is adopted; they leave when a
//! merge applied here absorbs them (`node::merge`). A caller takes an
//! `Arc<Region>` and may keep using it after the region left: its Raft
//! then answers `NotLeader`/stopped, and the caller routes again.
//!
//! Beside the set, a routing hint: the data replicas by the first key of
//! their ranges when it was last drawn. Ranges change when a replica
//! applies a split or merge, which the registry does not see, so the hint
//! is only a guess that routing checks against the replica's range as
//! applied; a wrong guess (or none) makes routing look at every replica
//! and draw the hint again. A replica joining or leaving drops it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::node::Region;

/// The hosted replicas (see the module essay).
#[derive(Default)]
pub(crate) struct Registry {
    by_id: RwLock<BTreeMap<u64, Arc<Region>>>,
    by_start: RwLock<BTreeMap<Vec<u8>, Arc<Region>>>,
    /// Woken whenever a replica joins.
    joined: Notify,
}

impl Registry {
    /// The replica of region `id`, if hosted here.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Region>> {
        self.by_id.read().get(&id).cloned()
    }

    /// Adds (or replaces) a replica.
    pub(crate) fn insert(&self, region: Arc<Region>) {
        self.by_id.write().insert(region.id, region);
        self.by_start.write().clear();
        self.joined.notify_waiters();
    }

    /// The replica of region `id`, waiting up to `wait` for one to join.
    pub(crate) async fn get_within(&self, id: u64, wait: Duration) -> Option<Arc<Region>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the look, so a join in between is not missed.
            let joined = self.joined.notified();
            tokio::pin!(joined);
            joined.as_mut().enable();
            if let Some(r) = self.get(id) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                return self.get(id);
            }
        }
    }

    /// Takes a replica out (a merge absorbed its region).
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<Region>> {
        let gone = self.by_id.write().remove(&id);
        self.by_start.write().clear();
        gone
    }

    /// How many replicas are hosted.
    pub(crate) fn len(&self) -> usize {
        self.by_id.read().len()
    }

    /// Every hosted replica, by region ID.
    pub(crate) fn all(&self) -> Vec<Arc<Region>> {
        self.by_id.read().values().cloned().collect()
    }

    /// The data replica whose range started at or below `key`, nearest to
    /// it, when the hint was drawn: probably the one holding `key` (check).
    pub(crate) fn hint(&self, key: &[u8]) -> Option<Arc<Region>> {
        self.by_start
            .read()
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(_, r)| r.clone())
    }

    /// Draws the hint again from `data`'s ranges as applied now (a replica
    /// frozen for a merge holds no key, a retired one none either: left
    /// out).
    pub(crate) fn draw_hint(&self, data: &[Arc<Region>]) {
        let hint = data
            .iter()
            .filter(|r| !r.shared.is_retired())
            .filter_map(|r| {
                let range = r.shared.range();
                (!range.is_empty()).then(|| (range.start, r.clone()))
            })
            .collect();
        *self.by_start.write() = hint;
    }
}
