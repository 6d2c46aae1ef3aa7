//! Cairn's store → an etcd-format bbolt file.

use std::io::{Seek, Write};

use cairn_api::mvccpb::KeyValue;
use cairn_storage::bolt::Writer;
use cairn_storage::keys::{self, decode_by_revision, Key};
use cairn_storage::Snapshot;
use prost::Message;

use super::*;
use crate::change::decode_sub;
use crate::lease;
use crate::record::Record;
use crate::{Error, Result, Revisions};

/// Writes the MVCC state in `view` (at `revs`: versions above
/// `revs.current` are left out, as a view holding regions read at one
/// timestamp has some) to `out` as etcd's bbolt database; returns `out`
/// positioned after the last page.
pub fn export<W: Write + Seek>(view: &dyn Snapshot, revs: Revisions, out: W) -> Result<W> {
    export_with(view, revs, lease::list(view)?, Vec::new(), out)
}

/// Buckets written beside the MVCC state: `(name, entries in key order)`.
pub type ExtraBuckets = Vec<(&'static [u8], Vec<(Vec<u8>, Vec<u8>)>)>;

/// [`export`], with the lease records given (as of `revs.current`: a
/// backup across regions lists them from the view of the region holding
/// the lease table, taken at that revision, while the keys come from a
/// later view of every region) and `extra` buckets too (the auth store's,
/// say).
pub fn export_with<W: Write + Seek>(
    view: &dyn Snapshot,
    revs: Revisions,
    mut leases: Vec<lease::LeaseRecord>,
    extra: ExtraBuckets,
    out: W,
) -> Result<W> {
    let mut w = Writer::new(out)?;
    for (name, entries) in extra {
        w.bucket(name, entries.into_iter().map(Ok))?;
    }
    w.bucket(KEY, versions(view, revs)?)?;
    // Bucket order is byte order: a negative ID's big-endian bytes sort
    // after every positive one's.
    leases.sort_by_key(|l| l.id as u64);
    w.bucket(
        LEASE,
        leases.into_iter().map(|l| {
            let v = EtcdLease {
                id: l.id,
                ttl: l.ttl,
                remaining_ttl: l.remaining,
            };
            Ok((l.id.to_be_bytes().to_vec(), v.encode_to_vec()))
        }),
    )?;
    // In key order, as a bucket's entries are written.
    let mut meta = vec![
        (CAIRN_REVISION.to_vec(), revs.current.to_be_bytes().to_vec()),
        (CONSISTENT_INDEX.to_vec(), 1u64.to_be_bytes().to_vec()),
    ];
    if revs.compacted > 0 {
        let at = rev_key(revs.compacted, 0, false);
        meta.push((FINISHED_COMPACT.to_vec(), at.clone()));
        meta.push((SCHEDULED_COMPACT.to_vec(), at));
    }
    w.bucket(META, meta.into_iter().map(Ok))?;
    w.bucket(MEMBERS, std::iter::empty())?;
    w.bucket(MEMBERS_REMOVED, std::iter::empty())?;
    Ok(w.finish()?)
}

/// Entries of a bucket being written.
type Entries<'a> = Box<dyn Iterator<Item = cairn_storage::Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// Versions as (revision, sub, key).
type Order<'a> = Box<dyn Iterator<Item = Result<(i64, u32, Vec<u8>)>> + 'a>;

/// Every version at or below `revs.current` that the compaction keeps as
/// `key` bucket entries, in etcd's order: by revision, each revision's
/// versions numbered by sub-revision in the order their ops ran (sub, then
/// key: [`crate::change`]), read from the by-revision index, which must be
/// complete (a node completes it on open: [`crate::complete_index`]).
/// (A version the compaction dropped may still be stored, its sweep not
/// done: left out, as etcd's own file would not hold it.)
fn versions(view: &dyn Snapshot, revs: Revisions) -> Result<Entries<'_>> {
    let order = stored(view, revs.current)?.filter_map(move |item| match item {
        Ok((rev, sub, key)) => match crate::compact::dropped(view, &key, rev, revs.compacted) {
            Ok(true) => None,
            Ok(false) => Some(Ok((rev, sub, key))),
            Err(e) => Some(Err(e)),
        },
        Err(e) => Some(Err(e)),
    });
    let next = numbered(Box::new(order));
    Ok(Box::new(std::iter::from_fn(next).map(move |item| {
        let (rev, sub, key) = item.map_err(storage)?;
        let stored = view
            .get(
                &Key::MvccVersion {
                    key: &key,
                    revision: rev,
                }
                .encode(),
            )?
            .ok_or_else(|| {
                cairn_storage::Error::Corrupt(format!("indexed version {rev} of {key:?} missing"))
            })?;
        let (value, tombstone) = match Record::decode(&key, &stored).map_err(storage)? {
            Record::Put(kv) => (kv.encode_to_vec(), false),
            Record::Tombstone => (
                KeyValue {
                    key,
                    ..Default::default()
                }
                .encode_to_vec(),
                true,
            ),
        };
        Ok((rev_key(rev, sub, tombstone), value))
    })))
}

/// Every stored version at or below `up_to`, ordered by revision, then
/// key, with its sub: a scan of the by-revision index. (A store without a
/// complete one is refused rather than sorted in memory.)
fn stored(view: &dyn Snapshot, up_to: i64) -> Result<Order<'_>> {
    if !crate::index_complete(view)? {
        return Err(Error::Corrupt(
            "snapshot: the by-revision index is incomplete".into(),
        ));
    }
    let (lo, hi) = keys::by_revision_range(0, up_to.max(0));
    Ok(Box::new(view.scan(lo, hi, false).map(|item| {
        let (k, v) = item?;
        let (rev, key) = decode_by_revision(&k)?;
        Ok((rev, decode_sub(&v), key.to_vec()))
    })))
}

/// `order`'s versions (by revision) with etcd's sub-revisions: each
/// revision's held, put in (sub, key) order and numbered from 0.
fn numbered(order: Order<'_>) -> impl FnMut() -> Option<Result<(i64, i64, Vec<u8>)>> + '_ {
    let mut order = order.peekable();
    let mut revision: std::vec::IntoIter<(i64, i64, Vec<u8>)> = Vec::new().into_iter();
    move || {
        if let Some(v) = revision.next() {
            return Some(Ok(v));
        }
        let mut held = match order.next()? {
            Ok(first) => vec![first],
            Err(e) => return Some(Err(e)),
        };
        while let Some(Ok((rev, _, _))) = order.peek() {
            if *rev != held[0].0 {
                break;
            }
            if let Some(Ok(v)) = order.next() {
                held.push(v);
            }
        }
        held.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
        revision = held
            .into_iter()
            .enumerate()
            .map(|(sub, (rev, _, key))| (rev, sub as i64, key))
            .collect::<Vec<_>>()
            .into_iter();
        revision.next().map(Ok)
    }
}

/// The bbolt writer's iterators carry storage errors.
fn storage(e: Error) -> cairn_storage::Error {
    match e {
        Error::Storage(s) => s,
        other => cairn_storage::Error::Corrupt(other.to_string()),
    }
}
