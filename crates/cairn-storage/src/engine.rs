//! The [`Engine`] trait: an ordered byte map with atomic batches and snapshots.

use std::ops::Bound;
use std::sync::Arc;

use crate::Result;

/// One key-value pair as returned by scans.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A forward or reverse iterator over a key range.
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<KvPair>> + Send + 'a>;

/// An ascending iterator over the keys of a range, values unread.
pub type KeyIter<'a> = Box<dyn Iterator<Item = Result<Vec<u8>>> + Send + 'a>;

/// How durable a committed batch must be when `write` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage (fsync/fdatasync) before returning.
    Sync,
    /// Handed to the OS; survives a process crash, not a power cut.
    Buffered,
}

/// One mutation inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key` (absent keys are fine).
    Delete(Vec<u8>),
    /// Remove every key in `[start, end)`; both within one keyspace.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// An ordered list of mutations applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The mutations, applied in order.
    pub ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(key.into(), value.into()));
    }
    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(key.into()));
    }
    /// Adds a range delete of `[start, end)`.
    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(start.into(), end.into()));
    }
    /// Appends every op of `other`.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }
    /// True when the batch has no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A read-only view of an engine: either a point-in-time [`Engine::snapshot`]
/// or the live engine itself (every `Engine` is also a `Snapshot` of "now").
pub trait Snapshot: Send + Sync {
    /// The value of `key` in this view.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Pairs in the range, ascending (or descending when `reverse`).
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_>;
    /// The keys in the range, ascending. An engine that keeps large values
    /// apart from its keys (fjall's key-value separation) reads none of
    /// them, so counting a span costs its keys, not its bytes.
    fn scan_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KeyIter<'_> {
        Box::new(
            self.scan(start, end, false)
                .map(|item| item.map(|(k, _)| k)),
        )
    }
    /// How many keys the range holds: [`Snapshot::scan_keys`] counted,
    /// unless the engine keeps the range's keys counted in memory (fjall
    /// does for the MVCC latest index: `crate::counted_keys`).
    fn count_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Result<u64> {
        count_scanned(self.scan_keys(start, end))
    }
    /// The length of `key`'s value, without reading a separated value.
    fn value_len(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.get(key)?.map(|v| v.len()))
    }
}

/// The number of keys `keys` yields (the first error ends it).
pub(crate) fn count_scanned(keys: KeyIter<'_>) -> Result<u64> {
    let mut n = 0u64;
    for key in keys {
        key?;
        n += 1;
    }
    Ok(n)
}

/// An ordered byte key-value store. Implementations must pass
/// [`crate::conformance::run_all`].
/// Reads (`get`, `scan`) come from [`Snapshot`]; a scan range must lie within
/// one keyspace (one first byte).
pub trait Engine: Snapshot {
    /// Applies `batch` atomically with the given durability.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;
    /// Makes every earlier buffered write durable.
    fn sync(&self) -> Result<()>;
    /// A point-in-time view unaffected by later writes.
    fn snapshot(&self) -> Arc<dyn Snapshot>;
    /// Bytes allocated on disk (0 for in-memory engines; approximate).
    fn size_on_disk(&self) -> u64;
    /// Bytes of the state machine's data on disk (the MVCC and lease
    /// keyspaces' files — what etcd's backend database holds; not the Raft
    /// log). What the storage quota measures.
    fn size_in_use(&self) -> u64 {
        self.size_on_disk()
    }
    /// Rewrites the stored data compactly (etcd's defragment): an LSM
    /// engine runs a major compaction of every keyspace, dropping what
    /// deletes and overwrites left behind. Reads and writes continue
    /// meanwhile; returns when done.
    fn defragment(&self) -> Result<()> {
        Ok(())
    }
    /// Called about once a second: once no write has come for a while,
    /// an LSM engine flushes the memtables its writes filled, so a store
    /// left quiet after a burst of writes does not keep them resident.
    /// True if it flushed.
    fn flush_if_quiet(&self) -> Result<bool> {
        Ok(false)
    }
}

/// The exclusive end of the keyspace that starts with byte `b`.
pub(crate) fn space_end(b: u8) -> Bound<Vec<u8>> {
    if b == u8::MAX {
        Bound::Unbounded
    } else {
        Bound::Excluded(vec![b + 1])
    }
}
