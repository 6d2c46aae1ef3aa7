//! `Compact`: drop versions no read can ask for any more.

use cairn_storage::keys::{self, decode_version};
use cairn_storage::{Snapshot, WriteBatch};

use crate::record::Record;
use crate::{Error, Rejection, Result, Revisions};

/// Compacts at revision `rev`: for each key keeps the newest version at or
/// below `rev` and every version above it. A newest tombstone is dropped
/// when it is below `rev`; one exactly at `rev` stays, so a watch starting at
/// the compaction revision still sees that delete (the etcd bug class
/// "missing watch events at the compaction revision").
/// Returns the deletions and the new revisions.
///
/// Caveat: the whole keyspace is scanned and the batch holds every deletion;
/// a background, incremental sweep is future work for very large stores.
pub fn compact(read: &dyn Snapshot, rev: i64, revs: Revisions) -> Result<(WriteBatch, Revisions)> {
    if rev <= revs.compacted {
        return Err(Error::from(Rejection::Compacted));
    }
    if rev > revs.current {
        return Err(Error::from(Rejection::FutureRevision));
    }
    let mut batch = WriteBatch::new();
    let (lo, hi) = keys::version_range(b"", None);
    // The newest version <= rev seen so far for the current user key.
    let mut keep: Option<(Vec<u8>, Vec<u8>, bool)> = None; // (user key, stored key, is tombstone)
    for item in read.scan(lo, hi, false) {
        let (k, v) = item?;
        let (user, r) = decode_version(&k)?;
        if r > rev {
            continue;
        }
        let tomb = matches!(Record::decode(&user, &v)?, Record::Tombstone);
        if let Some((prev_user, prev_key, prev_tomb)) = keep.take() {
            if prev_user == user || (prev_tomb && !at_rev(&prev_key, rev)) {
                batch.delete(prev_key);
            }
        }
        keep = Some((user, k, tomb));
    }
    if let Some((_, key, true)) = keep {
        if !at_rev(&key, rev) {
            batch.delete(key);
        }
    }
    Ok((
        batch,
        Revisions {
            compacted: rev,
            ..revs
        },
    ))
}

/// True when the stored version key is at exactly `rev`.
fn at_rev(version_key: &[u8], rev: i64) -> bool {
    decode_version(version_key).is_ok_and(|(_, r)| r == rev)
}
