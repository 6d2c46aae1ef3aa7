//! `Compact`: drop versions no read can ask for any more.
//!
//! A dropped version takes its by-revision index entry with it, so the index
//! keeps exactly one entry per stored version. On a store whose index is
//! incomplete (written before the index existed, or installed from a
//! snapshot of such a store), compaction also writes the entry of every
//! version it keeps and marks the index complete: the one moment the whole
//! keyspace is read anyway.

use cairn_storage::keys::{self, decode_version, Key, KeyRange};
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
/// Caveat: the whole keyspace is scanned and the batch holds every deletion
/// (and, once per store, the index entries an incomplete index lacks); a
/// background, incremental sweep is future work for very large stores.
pub fn compact(read: &dyn Snapshot, rev: i64, revs: Revisions) -> Result<(WriteBatch, Revisions)> {
    compact_range(read, rev, revs, &KeyRange::all())
}

/// [`compact`] of the versions of keys in `range` only (a region's), which
/// is all it reads and all it may delete. An incomplete by-revision index
/// is completed and marked so only by a compaction of every key.
pub fn compact_range(
    read: &dyn Snapshot,
    rev: i64,
    revs: Revisions,
    range: &KeyRange,
) -> Result<(WriteBatch, Revisions)> {
    if rev <= revs.compacted {
        return Err(Error::from(Rejection::Compacted));
    }
    if rev > revs.current {
        return Err(Error::from(Rejection::FutureRevision));
    }
    let marker = Key::MvccByRevisionComplete.encode();
    let mut sweep = Sweep {
        batch: WriteBatch::new(),
        rev,
        fill_index: range.is_all() && read.get(&marker)?.is_none(),
    };
    let (lo, hi) = keys::version_range(&range.start, range.end_bound());
    // The newest version <= rev seen so far for the current user key.
    let mut held: Option<Version> = None;
    for item in read.scan(lo, hi, false) {
        let (k, v) = item?;
        let (user, r) = decode_version(&k)?;
        if r > rev {
            sweep.keep(&user, r);
            continue;
        }
        let tomb = matches!(Record::decode(&user, &v)?, Record::Tombstone);
        if let Some(h) = held.take() {
            let superseded = h.user == user;
            sweep.settle(h, superseded);
        }
        held = Some(Version { user, r, tomb });
    }
    if let Some(h) = held {
        sweep.settle(h, false);
    }
    if sweep.fill_index {
        sweep.batch.put(marker, Vec::new());
    }
    Ok((
        sweep.batch,
        Revisions {
            compacted: rev,
            ..revs
        },
    ))
}

/// A stored version at or below the compaction revision.
struct Version {
    user: Vec<u8>,
    r: i64,
    tomb: bool,
}

/// The writes of one compaction.
struct Sweep {
    batch: WriteBatch,
    rev: i64,
    /// The index is incomplete: write the entry of every version kept.
    fill_index: bool,
}

impl Sweep {
    /// Drops `v` when a newer version at or below `rev` supersedes it, or
    /// when it is the key's newest at or below `rev` and a tombstone below
    /// `rev`; keeps it otherwise.
    fn settle(&mut self, v: Version, superseded: bool) {
        if superseded || (v.tomb && v.r != self.rev) {
            let (key, revision) = (v.user.as_slice(), v.r);
            self.batch
                .delete(Key::MvccVersion { key, revision }.encode());
            self.batch
                .delete(Key::MvccByRevision { revision, key }.encode());
        } else {
            self.keep(&v.user, v.r);
        }
    }

    fn keep(&mut self, key: &[u8], revision: i64) {
        if self.fill_index {
            self.batch
                .put(Key::MvccByRevision { revision, key }.encode(), Vec::new());
        }
    }
}
