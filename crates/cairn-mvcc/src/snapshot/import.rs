//! An etcd-format bbolt file (from etcd or from Cairn) → Cairn's store.
//!
//! Three passes, each streaming: the `key` bucket's versions (with their
//! by-revision index) and the leases are written as they are read; the
//! compaction the file records is then done by [`crate::compact`] itself,
//! as etcd finishes a scheduled compaction on start; a last scan of the
//! versions in key order writes each live key's latest record and its
//! lease attachment. Memory stays bounded by one write batch and the set of
//! lease IDs, whatever the file's size.

use std::collections::HashSet;

use cairn_api::mvccpb::KeyValue;
use cairn_storage::bolt::{ReadAt, Reader};
use cairn_storage::keys::{self, decode_version, Key};
use cairn_storage::{Durability, Engine, WriteBatch};
use prost::Message;

use super::*;
use crate::change::encode_sub;
use crate::lease::LeaseRecord;
use crate::record::Record;
use crate::{compact, Error, Result, Revisions};

/// What an import wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// The store's revisions: the newest write and the compaction.
    pub revisions: Revisions,
    /// Versions read from the file (before its compaction was finished).
    pub versions: u64,
    /// Live keys after it.
    pub keys: u64,
    pub leases: u64,
}

/// Bytes of writes gathered before a batch goes to the engine.
const BATCH_BYTES: usize = 4 << 20;

/// Writes in batches of about [`BATCH_BYTES`].
struct Batcher<'a> {
    engine: &'a dyn Engine,
    batch: WriteBatch,
    bytes: usize,
}

impl Batcher<'_> {
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) -> Result<()> {
        self.bytes += k.len() + v.len();
        self.batch.put(k, v);
        if self.bytes >= BATCH_BYTES {
            self.flush(Durability::Buffered)?;
        }
        Ok(())
    }

    fn flush(&mut self, durability: Durability) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.bytes = 0;
        Ok(self.engine.write(batch, durability)?)
    }
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("snapshot: {what}"))
}

/// Imports the etcd-schema database in `file` into `engine`, which must
/// hold no MVCC data or leases yet.
pub fn import<R: ReadAt + ?Sized>(file: &Reader<R>, engine: &dyn Engine) -> Result<Imported> {
    let view = engine.snapshot();
    let (lo, hi) = keys::version_range(b"", None);
    if view.scan(lo, hi, false).next().is_some() || !crate::lease::list(&*view)?.is_empty() {
        return Err(corrupt("the store to restore into is not empty"));
    }
    drop(view);
    let mut out = Imported::default();
    let mut compacted = 0i64;
    // The revision a Cairn backup holds the store at (none in etcd's).
    let mut held_at = 0i64;
    file.for_each(META, &mut |k, v| {
        let bad = || cairn_storage::Error::Bolt(format!("bad {k:?} in meta"));
        if k == FINISHED_COMPACT || k == SCHEDULED_COMPACT {
            let (rev, _, _) = parse_rev_key(v).ok_or_else(bad)?;
            compacted = compacted.max(rev);
        } else if k == CAIRN_REVISION {
            held_at = <[u8; 8]>::try_from(v)
                .map(i64::from_be_bytes)
                .map_err(|_| bad())?;
        }
        Ok(())
    })?;
    let mut w = Batcher {
        engine,
        batch: WriteBatch::new(),
        bytes: 0,
    };
    let mut current = 0i64;
    let mut failed: Option<Error> = None;
    let found = file.for_each(KEY, &mut |k, v| {
        let step: Result<()> = (|| {
            let (rev, sub, tombstone) =
                parse_rev_key(k).ok_or_else(|| corrupt("bad revision key"))?;
            let kv = KeyValue::decode(v).map_err(|e| corrupt(format!("bad KeyValue: {e}")))?;
            if kv.key.is_empty() || rev <= 0 {
                return Err(corrupt(format!("version {rev} without a key")));
            }
            let record = if tombstone {
                Record::Tombstone
            } else {
                Record::Put(kv.clone())
            };
            let key = &kv.key;
            w.put(
                Key::MvccVersion { key, revision: rev }.encode(),
                record.encode(),
            )?;
            // The sub-revision keeps the revision's events in etcd's order
            // for watchers (`crate::change`).
            let sub = u32::try_from(sub)
                .map_err(|_| corrupt(format!("version {rev} has sub-revision {sub}")))?;
            w.put(
                Key::MvccByRevision { revision: rev, key }.encode(),
                encode_sub(sub),
            )?;
            current = current.max(rev);
            out.versions += 1;
            Ok(())
        })();
        step.map_err(|e| {
            let msg = e.to_string();
            failed = Some(e);
            cairn_storage::Error::Bolt(msg)
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    if !found? {
        return Err(corrupt("no `key` bucket: not an etcd database"));
    }
    let mut leases = HashSet::new();
    let mut failed: Option<Error> = None;
    file.for_each(LEASE, &mut |k, v| {
        let step: Result<()> = (|| {
            let id = <[u8; 8]>::try_from(k)
                .map(i64::from_be_bytes)
                .map_err(|_| corrupt("bad lease ID"))?;
            let l = EtcdLease::decode(v).map_err(|e| corrupt(format!("bad lease: {e}")))?;
            let rec = LeaseRecord {
                id,
                ttl: l.ttl,
                remaining: l.remaining_ttl.max(0),
            };
            w.put(Key::Lease { id }.encode(), rec.encode())?;
            leases.insert(id);
            Ok(())
        })();
        step.map_err(|e| {
            let msg = e.to_string();
            failed = Some(e);
            cairn_storage::Error::Bolt(msg)
        })
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    out.leases = leases.len() as u64;
    w.put(Key::MvccByRevisionComplete.encode(), Vec::new())?;
    w.flush(Durability::Buffered)?;
    let mut revs = Revisions {
        // A store with no write yet is at revision 1, as a fresh one is.
        current: current.max(compacted).max(held_at).max(1),
        compacted: 0,
    };
    if compacted > 0 {
        let (batch, after) = compact(&*engine.snapshot(), compacted, revs)?;
        engine.write(batch, Durability::Buffered)?;
        revs = after;
    }
    // Each key's newest version, when it is a put, is its latest record.
    let view = engine.snapshot();
    let mut newest: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut settle = |w: &mut Batcher, key: Vec<u8>, stored: Vec<u8>| -> Result<()> {
        if let Record::Put(kv) = Record::decode(&key, &stored)? {
            if kv.lease != 0 && leases.contains(&kv.lease) {
                let attach = Key::LeaseKey {
                    id: kv.lease,
                    key: &key,
                };
                // As a put writes it: the revision that put the key.
                w.put(attach.encode(), crate::lease::entry_value(kv.mod_revision))?;
            }
            w.put(Key::MvccLatest { key: &key }.encode(), stored)?;
            out.keys += 1;
        }
        Ok(())
    };
    let (lo, hi) = keys::version_range(b"", None);
    for item in view.scan(lo, hi, false) {
        let (k, v) = item?;
        let (key, _) = decode_version(&k)?;
        if let Some((prev, stored)) = newest.take() {
            if prev != key {
                settle(&mut w, prev, stored)?;
            }
        }
        newest = Some((key, v));
    }
    if let Some((key, stored)) = newest {
        settle(&mut w, key, stored)?;
    }
    w.flush(Durability::Sync)?;
    out.revisions = revs;
    Ok(out)
}
