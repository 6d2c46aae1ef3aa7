//! `Compact`: drop versions no read can ask for any more.
//!
//! Compaction at `c` keeps, for each key, the newest version at or below
//! `c` (unless it is a tombstone below `c`) and every version above `c`;
//! [`Kept`] tells each stored version which it is, looking only at the
//! versions after it in storage order, so any position in a scan is a
//! place to start or stop. Every version it drops is one no read at or
//! above `c` returns: reads answer a key's newest version at or below
//! their revision, and a dropped one is superseded at or below `c`, or a
//! tombstone below `c` with nothing after it up to `c`. Which versions go
//! depends only on the history at or below `c`, which is final once `c`
//! is compacted (nothing commits at or below a compaction).
//!
//! That is what lets Cairn drop them off the apply path: the replicated
//! compaction only records `c` (reads below it are refused from then on),
//! and each replica [`sweep`]s its keys in the background, a bounded step
//! at a time, on its own schedule. Until it has, a replica holds versions
//! another does not; [`crate::hash_kv`] hashes what compaction keeps, so
//! replicas still hash alike.
//!
//! A dropped version takes its by-revision index entry with it, so the index
//! keeps exactly one entry per stored version. (A store written before the
//! index existed is completed when a node opens it:
//! [`crate::complete_index`].)

use std::ops::Bound;

use cairn_storage::keys::{self, decode_version, Key, KeyRange};
use cairn_storage::{Snapshot, WriteBatch};

use crate::record;
use crate::{Error, Rejection, Result, Revisions};

/// The new revisions of a compaction at `rev`, or why it is refused
/// (at or below the compaction already done, or above the newest write).
pub fn compacted(rev: i64, revs: Revisions) -> Result<Revisions> {
    if rev <= revs.compacted {
        return Err(Error::from(Rejection::Compacted));
    }
    if rev > revs.current {
        return Err(Error::from(Rejection::FutureRevision));
    }
    Ok(Revisions {
        compacted: rev,
        ..revs
    })
}

/// Compacts at revision `rev` in one batch: the deletions, and the new
/// revisions.
pub fn compact(read: &dyn Snapshot, rev: i64, revs: Revisions) -> Result<(WriteBatch, Revisions)> {
    compact_range(read, rev, revs, &KeyRange::all())
}

/// [`compact`] of the versions of keys in `range` only (a region's), which
/// is all it reads and all it may delete.
pub fn compact_range(
    read: &dyn Snapshot,
    rev: i64,
    revs: Revisions,
    range: &KeyRange,
) -> Result<(WriteBatch, Revisions)> {
    let revs = compacted(rev, revs)?;
    let mut batch = WriteBatch::new();
    let (lo, hi) = keys::version_range(&range.start, range.end_bound());
    let versions = read
        .scan(lo, hi, false)
        .map(|item| item.map(|(k, v)| (k, Some(v))));
    for v in Kept::new(versions, rev, read) {
        let v = v?;
        if !v.keep {
            drop_version(&mut batch, &v);
        }
    }
    Ok((batch, revs))
}

/// One step of a background compaction of `range` at `rev` (already
/// compacted there): reads at most about `budget` versions from `from` (an
/// encoded version key within the range, or `None` for its start) up to
/// `until` (an encoded version key, excluded; `None`: the range's end) and
/// returns the deletions, and where the next step starts (`None`: it got
/// to the end). Reads keys, and the length of a value only where a
/// version's fate depends on whether it is a tombstone. (Stopped at
/// `until`, the last version before it is kept whatever follows it: never
/// dropped wrongly, maybe left for a later sweep.)
pub fn sweep(
    read: &dyn Snapshot,
    rev: i64,
    range: &KeyRange,
    from: Option<&[u8]>,
    until: Option<&[u8]>,
    budget: usize,
) -> Result<(WriteBatch, Option<Vec<u8>>)> {
    let (lo, hi) = keys::version_range(&range.start, range.end_bound());
    let lo = from.map_or(lo, |f| Bound::Included(f.to_vec()));
    let hi = until.map_or(hi, |u| Bound::Excluded(u.to_vec()));
    let versions = read.scan_keys(lo, hi).map(|item| item.map(|k| (k, None)));
    let mut batch = WriteBatch::new();
    for (seen, v) in Kept::new(versions, rev, read).enumerate() {
        let v = v?;
        if seen >= budget.max(1) {
            // Its fate depends only on what follows it: the next step
            // starts here and tells it again.
            return Ok((batch, Some(v.stored)));
        }
        if !v.keep {
            drop_version(&mut batch, &v);
        }
    }
    Ok((batch, None))
}

/// True when a compaction at `rev` drops version `revision` of `key`, as
/// stored in `read`: it is below `rev` and superseded at or below it, or
/// the key's newest there and a tombstone. (For a reader of versions one at
/// a time, in revision order; a scan of them uses [`Kept`].)
pub(crate) fn dropped(read: &dyn Snapshot, key: &[u8], revision: i64, rev: i64) -> Result<bool> {
    if revision >= rev {
        return Ok(false);
    }
    let at = |revision| Key::MvccVersion { key, revision }.encode();
    let newer = (Bound::Excluded(at(revision)), Bound::Included(at(rev)));
    if read
        .scan_keys(newer.0, newer.1)
        .next()
        .transpose()?
        .is_some()
    {
        return Ok(true);
    }
    Ok(read
        .value_len(&at(revision))?
        .is_some_and(record::is_tombstone_len))
}

fn drop_version(batch: &mut WriteBatch, v: &Version) {
    let (key, revision) = (v.user.as_slice(), v.revision);
    batch.delete(v.stored.clone());
    batch.delete(Key::MvccByRevision { revision, key }.encode());
}

/// One stored version, and whether a compaction at the given revision
/// keeps it.
pub(crate) struct Version {
    /// Its encoded key.
    pub stored: Vec<u8>,
    /// Its record, when the scan read values.
    pub value: Option<Vec<u8>>,
    pub user: Vec<u8>,
    pub revision: i64,
    pub keep: bool,
}

/// The versions of an ascending scan of version keys, in order, each told
/// whether a compaction at `rev` keeps it (see the module essay). Holds
/// back one version at or below `rev` until the next one shows whether it
/// is its key's newest there.
pub(crate) struct Kept<'a, I> {
    versions: std::iter::Fuse<I>,
    rev: i64,
    /// Where a value the scan did not read is looked up.
    read: &'a dyn Snapshot,
    held: Option<Version>,
    /// Told, not yet returned (a version above `rev` after a held one).
    next: Option<Version>,
}

impl<'a, I> Kept<'a, I>
where
    I: Iterator<Item = cairn_storage::Result<(Vec<u8>, Option<Vec<u8>>)>>,
{
    pub(crate) fn new(versions: I, rev: i64, read: &'a dyn Snapshot) -> Self {
        Kept {
            versions: versions.fuse(),
            rev,
            read,
            held: None,
            next: None,
        }
    }

    /// `held`, told: dropped when a newer version at or below `rev`
    /// supersedes it, or when it is its key's newest there and a tombstone
    /// below `rev`.
    fn settle(&self, mut held: Version, superseded: bool) -> Result<Version> {
        held.keep = !superseded && (held.revision == self.rev || !self.is_tombstone(&held)?);
        Ok(held)
    }

    /// By its length alone, so a damaged record is told like any other
    /// (and a hash over it differs rather than fails).
    fn is_tombstone(&self, v: &Version) -> Result<bool> {
        let len = match &v.value {
            Some(bytes) => Some(bytes.len()),
            None => self.read.value_len(&v.stored)?,
        };
        Ok(len.is_some_and(record::is_tombstone_len))
    }
}

impl<I> Iterator for Kept<'_, I>
where
    I: Iterator<Item = cairn_storage::Result<(Vec<u8>, Option<Vec<u8>>)>>,
{
    type Item = Result<Version>;

    fn next(&mut self) -> Option<Result<Version>> {
        if let Some(v) = self.next.take() {
            return Some(Ok(v));
        }
        loop {
            let Some(item) = self.versions.next() else {
                let held = self.held.take()?;
                return Some(self.settle(held, false));
            };
            let v = match item.map_err(Error::from).and_then(|(stored, value)| {
                let (user, revision) = decode_version(&stored)?;
                Ok(Version {
                    stored,
                    value,
                    user,
                    revision,
                    keep: true,
                })
            }) {
                Ok(v) => v,
                Err(e) => return Some(Err(e)),
            };
            let held = self.held.take();
            if v.revision > self.rev {
                // Kept; and a held version of its key was the newest at
                // or below `rev` (versions of a key ascend).
                return Some(match held {
                    None => Ok(v),
                    Some(h) => {
                        self.next = Some(v);
                        self.settle(h, false)
                    }
                });
            }
            self.held = Some(v);
            if let Some(h) = held {
                let superseded = self.held.as_ref().is_some_and(|v| v.user == h.user);
                return Some(self.settle(h, superseded));
            }
        }
    }
}

#[cfg(test)]
mod tests;
