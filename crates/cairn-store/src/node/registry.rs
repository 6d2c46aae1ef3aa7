//! The region replicas a node hosts: a live set, by region ID. Replicas
//! join when the node starts them, when a split applied here gives birth
//! to one, or when one this node missed is adopted; they leave when a
//! merge applied here absorbs them (`node::merge`). A caller takes an
//! `Arc<Region>` and may keep using it after the region left: its Raft
//! then answers `NotLeader`/stopped, and the caller routes again.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::node::Region;

/// The hosted replicas (see the module essay).
#[derive(Default)]
pub(crate) struct Registry(RwLock<BTreeMap<u64, Arc<Region>>>);

impl Registry {
    /// The replica of region `id`, if hosted here.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Region>> {
        self.0.read().get(&id).cloned()
    }

    /// Adds (or replaces) a replica.
    pub(crate) fn insert(&self, region: Arc<Region>) {
        self.0.write().insert(region.id, region);
    }

    /// Takes a replica out (a merge absorbed its region).
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<Region>> {
        self.0.write().remove(&id)
    }

    /// Every hosted replica, by region ID.
    pub(crate) fn all(&self) -> Vec<Arc<Region>> {
        self.0.read().values().cloned().collect()
    }
}
