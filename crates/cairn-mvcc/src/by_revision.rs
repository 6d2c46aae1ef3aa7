//! Completing the by-revision index of a store written before it existed.
//!
//! Every version is indexed under `MvccByRevision(revision, key)` in the
//! batch that writes it, and the marker `MvccByRevisionComplete` says the
//! index holds every stored version: watch replay reads a window of it
//! ([`crate::history`]) and a backup streams it in revision order
//! ([`crate::snapshot::export`]). A store an older Cairn wrote has versions
//! without entries and no marker; [`complete_index`] writes the missing
//! entries and the marker, once, when a node opens the store — one scan of
//! the versions in key order, written in batches, so memory stays bounded
//! whatever the store's size.
//!
//! Doing it on open, not on the first compaction as before, is what keeps
//! the marker true on every member: a member that gets its regions by
//! snapshot installs receives each region's entries but never the marker
//! (it belongs to no one region), and compaction runs per region. A
//! store is opened complete, so it stays complete: entries come and go
//! with their versions, and an installed region brings its own.

use cairn_storage::keys::{self, decode_version, Key};
use cairn_storage::{Durability, Engine, WriteBatch};

use crate::Result;

/// Bytes of missing entries gathered before a batch is written.
const BATCH_BYTES: usize = 4 << 20;

/// True when `read`'s by-revision index holds every stored version.
pub fn index_complete(read: &dyn cairn_storage::Snapshot) -> Result<bool> {
    Ok(read.get(&Key::MvccByRevisionComplete.encode())?.is_some())
}

/// Writes the by-revision entry of every stored version lacking one, then
/// the marker, durably; returns how many entries it wrote. Nothing to do
/// (and nothing read) on a store already marked. For a store no one else
/// writes meanwhile: a node calls it before it starts its replicas.
pub fn complete_index(engine: &dyn Engine) -> Result<u64> {
    let view = engine.snapshot();
    if index_complete(&*view)? {
        return Ok(0);
    }
    let (mut batch, mut bytes, mut written) = (WriteBatch::new(), 0usize, 0u64);
    let (lo, hi) = keys::version_range(b"", None);
    for item in view.scan_keys(lo, hi) {
        let stored = item?;
        let (key, revision) = decode_version(&stored)?;
        let entry = Key::MvccByRevision {
            revision,
            key: &key,
        }
        .encode();
        if view.get(&entry)?.is_none() {
            // No sub recorded: such entries order by key within their
            // revision (`crate::change`).
            bytes += entry.len();
            batch.put(entry, Vec::new());
            written += 1;
            if bytes >= BATCH_BYTES {
                engine.write(std::mem::take(&mut batch), Durability::Buffered)?;
                bytes = 0;
            }
        }
    }
    batch.put(Key::MvccByRevisionComplete.encode(), Vec::new());
    engine.write(batch, Durability::Sync)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use cairn_storage::{MemoryEngine, Snapshot};

    use super::*;

    fn put(e: &MemoryEngine, key: &[u8], revision: i64) {
        let mut b = WriteBatch::new();
        b.put(Key::MvccVersion { key, revision }.encode(), b"v".to_vec());
        e.write(b, Durability::Buffered).unwrap();
    }

    fn index(e: &MemoryEngine) -> Vec<(i64, Vec<u8>)> {
        let (lo, hi) = keys::by_revision_range(0, i64::MAX);
        e.scan(lo, hi, false)
            .map(|i| {
                let (k, _) = i.unwrap();
                let (rev, key) = keys::decode_by_revision(&k).unwrap();
                (rev, key.to_vec())
            })
            .collect()
    }

    #[test]
    fn an_old_store_gets_every_missing_entry_and_the_marker_once() {
        let e = MemoryEngine::new();
        for (key, rev) in [(&b"b"[..], 3), (b"a", 5), (b"b", 9)] {
            put(&e, key, rev);
        }
        // One version already indexed, with its sub: left as it is.
        let mut b = WriteBatch::new();
        let indexed = Key::MvccByRevision {
            revision: 5,
            key: b"a",
        }
        .encode();
        b.put(indexed.clone(), crate::encode_sub(2));
        e.write(b, Durability::Buffered).unwrap();
        assert!(!index_complete(&e).unwrap());
        assert_eq!(complete_index(&e).unwrap(), 2);
        assert!(index_complete(&e).unwrap());
        assert_eq!(
            index(&e),
            vec![(3, b"b".to_vec()), (5, b"a".to_vec()), (9, b"b".to_vec())]
        );
        assert_eq!(e.get(&indexed).unwrap(), Some(crate::encode_sub(2)));
        // Marked: a version written without its entry now is not looked
        // for (none is: every write indexes its versions).
        put(&e, b"c", 11);
        assert_eq!(complete_index(&e).unwrap(), 0);
        assert_eq!(index(&e).len(), 3);
    }
}
