//! [`MemoryEngine`]: a `BTreeMap` behind a lock. For tests and for checking
//! that the layers above depend only on the [`Engine`] contract.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::engine::{Durability, Engine, KvIter, Op, Snapshot, WriteBatch};
use crate::Result;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory engine. Snapshots copy the map (tests only; O(n)).
#[derive(Default, Clone)]
pub struct MemoryEngine {
    // std-like RwLock: every operation is short and synchronous; readers share.
    map: Arc<RwLock<Map>>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

fn scan_map(
    map: &Map,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    reverse: bool,
) -> KvIter<'static> {
    if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
        (&start, &end)
    {
        if s > e {
            return Box::new(std::iter::empty());
        }
    }
    let items: Vec<_> = map
        .range((start, end))
        .map(|(k, v)| Ok((k.clone(), v.clone())))
        .collect();
    if reverse {
        Box::new(items.into_iter().rev())
    } else {
        Box::new(items.into_iter())
    }
}

impl Snapshot for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().get(key).cloned())
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        scan_map(&self.map.read(), start, end, reverse)
    }
}

impl Engine for MemoryEngine {
    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<()> {
        let mut map = self.map.write();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(k) => {
                    map.remove(&k);
                }
                Op::DeleteRange(s, e) => {
                    if s < e {
                        let doomed: Vec<_> = map.range(s..e).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn snapshot(&self) -> Arc<dyn Snapshot> {
        Arc::new(MemorySnapshot(self.map.read().clone()))
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

struct MemorySnapshot(Map);

impl Snapshot for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        scan_map(&self.0, start, end, reverse)
    }
}
