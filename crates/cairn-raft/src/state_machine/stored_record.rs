//! How a region's applied record is kept in the engine: the record, and
//! beside it each lock a transaction across regions holds in the region.
//!
//! The record is written whole with every entry the region applies. A
//! data region in the middle of transactions across regions holds a lock
//! for each, and each lock carries its whole encoded `TxnRequest` (so
//! whoever finishes the transaction can apply its writes): 16 clients
//! running 8-op transactions keep about 35 KB of locks in every region
//! they touch. Written inside the record, all of it went to the journal
//! and the memtable again for every entry, though an entry changes one
//! lock at most. So the stored record leaves the held locks out, and each
//! lock is its own key, `ApplyState{region, "lock/" + start_ts}` (big
//! endian: in start order), written in the same batch as the record when
//! it is placed, changed or dropped ([`write_locks`]: the old and new maps
//! walked together; an unchanged lock shares its transaction's bytes, so
//! comparing pointers tells most of them apart). Nothing else moves: the
//! record in memory, in snapshots and in Raft keeps its locks, so members
//! of either layout exchange snapshots and entries alike.
//!
//! **Layouts.** A record in this layout starts with [`MARK`] and a layout
//! number. Every older layout starts with `last_applied`, an `Option`,
//! whose postcard tag is 0 or 1; so an older Cairn, which decodes every
//! record at start-up (`absorbed_regions`), refuses to start on a store
//! written in this layout rather than read it as a region holding no
//! locks (postcard ignores trailing bytes: a layout that only moved the
//! locks out would have decoded, and lost the writes of every transaction
//! in flight). A record of an older layout still loads, with its locks
//! inline ([`Held::Inline`]); the first entry applied after it writes them
//! all beside the new record.

use std::collections::BTreeMap;
use std::ops::Bound;

use cairn_mvcc::locks::Lock;
use cairn_storage::keys::Key;
use cairn_storage::{Snapshot, WriteBatch};

use super::Applied;
use crate::codec::{decode, encode};

/// The first byte of a record in this layout (never a postcard `Option`
/// tag, which is 0 or 1).
pub(super) const MARK: u8 = 0xCA;
/// The layout after [`MARK`]: locks beside the record.
const LAYOUT: u8 = 1;

/// The tag prefix of a lock's key among the region's `ApplyState` keys.
const LOCK_TAG: &[u8] = b"lock/";

/// Where a decoded record's held locks are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// In the record (an older layout): decoded with it.
    Inline,
    /// Beside it, under their own keys ([`read_locks`]); the decoded
    /// record holds none.
    Beside,
}

/// The stored bytes of `applied`: [`MARK`], the layout, then the record
/// without its held locks (put back before returning).
pub(super) fn encode_record(applied: &mut Applied) -> crate::Result<Vec<u8>> {
    let held = std::mem::take(&mut applied.locks.held);
    let body = encode(applied);
    applied.locks.held = held;
    let body = body?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&[MARK, LAYOUT]);
    out.extend_from_slice(&body);
    Ok(out)
}

/// A stored record, of this layout or an older one, and where its held
/// locks are.
pub(super) fn decode_record(bytes: &[u8]) -> crate::Result<(Applied, Held)> {
    match bytes {
        [MARK, LAYOUT, body @ ..] => Ok((decode(body)?, Held::Beside)),
        [MARK, layout, ..] => Err(crate::Error::Codec(format!(
            "an applied record of layout {layout}, written by a newer Cairn"
        ))),
        _ => Ok((Applied::decode(bytes)?, Held::Inline)),
    }
}

fn lock_key(region: u64, start_ts: i64) -> Vec<u8> {
    let mut tag = Vec::with_capacity(LOCK_TAG.len() + 8);
    tag.extend_from_slice(LOCK_TAG);
    tag.extend_from_slice(&start_ts.to_be_bytes());
    Key::ApplyState { region, tag: &tag }.encode()
}

/// The locks stored beside region `region`'s record in `view`.
pub(super) fn read_locks(view: &dyn Snapshot, region: u64) -> crate::Result<BTreeMap<i64, Lock>> {
    let lo = Key::ApplyState {
        region,
        tag: LOCK_TAG,
    }
    .encode();
    let mut hi = lo.clone();
    *hi.last_mut().expect("a tag") += 1;
    let mut out = BTreeMap::new();
    for item in view.scan(Bound::Included(lo.clone()), Bound::Excluded(hi), false) {
        let (key, value) = item?;
        let ts: [u8; 8] = key[lo.len()..]
            .try_into()
            .map_err(|_| crate::Error::Codec("a lock key of the wrong length".into()))?;
        out.insert(i64::from_be_bytes(ts), decode(&value)?);
    }
    Ok(out)
}

/// Adds to `batch` what turns the locks stored as `old` into `new`:
/// every lock placed or changed put, every lock gone deleted. `old`
/// `None`: nothing is stored beside the record yet (an older layout), so
/// every lock is put.
pub(super) fn write_locks(
    region: u64,
    old: Option<&BTreeMap<i64, Lock>>,
    new: &BTreeMap<i64, Lock>,
    batch: &mut WriteBatch,
) -> crate::Result<()> {
    let empty = BTreeMap::new();
    let old = old.unwrap_or(&empty);
    if old.is_empty() && new.is_empty() {
        return Ok(());
    }
    let mut old_it = old.iter().peekable();
    let mut new_it = new.iter().peekable();
    loop {
        match (old_it.peek(), new_it.peek()) {
            (None, None) => return Ok(()),
            (Some((ts, _)), None) => {
                batch.delete(lock_key(region, **ts));
                old_it.next();
            }
            (None, Some((ts, lock))) => {
                batch.put(lock_key(region, **ts), encode(*lock)?);
                new_it.next();
            }
            (Some((o_ts, o)), Some((n_ts, n))) => {
                if o_ts < n_ts {
                    batch.delete(lock_key(region, **o_ts));
                    old_it.next();
                } else if n_ts < o_ts {
                    batch.put(lock_key(region, **n_ts), encode(*n)?);
                    new_it.next();
                } else {
                    if !same(o, n) {
                        batch.put(lock_key(region, **n_ts), encode(*n)?);
                    }
                    old_it.next();
                    new_it.next();
                }
            }
        }
    }
}

/// Whether two locks are equal, cheaply when one is a copy of the other
/// (their transactions' bytes shared).
fn same(a: &Lock, b: &Lock) -> bool {
    let shared = a.txn.as_ptr() == b.txn.as_ptr() && a.txn.len() == b.txn.len();
    if shared {
        a.primary == b.primary
            && a.floor == b.floor
            && a.regions == b.regions
            && a.spans == b.spans
            && a.leases == b.leases
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::{Durability, Engine, MemoryEngine};

    fn lock(floor: i64, txn: &'static [u8]) -> Lock {
        Lock {
            primary: 4,
            regions: vec![4, 5],
            spans: vec![(b"a".to_vec(), b"b".to_vec())],
            floor,
            txn: txn.into(),
            leases: Default::default(),
        }
    }

    fn ops(batch: &WriteBatch) -> Vec<String> {
        batch
            .ops
            .iter()
            .map(|op| match op {
                cairn_storage::Op::Put(k, _) => format!("put {}", ts_of(k)),
                cairn_storage::Op::Delete(k) => format!("delete {}", ts_of(k)),
                cairn_storage::Op::DeleteRange(..) => "range".into(),
            })
            .collect()
    }

    fn ts_of(key: &[u8]) -> i64 {
        i64::from_be_bytes(key[key.len() - 8..].try_into().unwrap())
    }

    #[test]
    fn only_the_locks_an_entry_changed_are_written() {
        let a = lock(1, b"txn a");
        let b = lock(2, b"txn b");
        let old: BTreeMap<i64, Lock> = [(10, a.clone()), (20, b.clone()), (30, lock(3, b"c"))]
            .into_iter()
            .collect();
        let mut new = old.clone();
        new.remove(&30); // dropped
        new.insert(25, lock(4, b"txn d")); // placed
        new.insert(20, lock(2, b"txn b widened")); // changed
        let mut batch = WriteBatch::new();
        write_locks(9, Some(&old), &new, &mut batch).unwrap();
        assert_eq!(ops(&batch), ["put 20", "put 25", "delete 30"]);
        // Nothing changed: nothing written (shared bytes, or equal ones).
        let mut batch = WriteBatch::new();
        write_locks(9, Some(&old), &old.clone(), &mut batch).unwrap();
        assert!(batch.is_empty());
        // An older layout: every lock written.
        let mut batch = WriteBatch::new();
        write_locks(9, None, &old, &mut batch).unwrap();
        assert_eq!(ops(&batch), ["put 10", "put 20", "put 30"]);
    }

    #[test]
    fn locks_written_beside_a_record_read_back_and_stay_in_their_region() {
        let engine = MemoryEngine::new();
        let held: BTreeMap<i64, Lock> = [(7, lock(1, b"x")), (1 << 40, lock(2, b"y"))]
            .into_iter()
            .collect();
        let other: BTreeMap<i64, Lock> = [(8, lock(3, b"z"))].into_iter().collect();
        let mut batch = WriteBatch::new();
        write_locks(3, None, &held, &mut batch).unwrap();
        write_locks(4, None, &other, &mut batch).unwrap();
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(read_locks(&engine, 3).unwrap(), held);
        assert_eq!(read_locks(&engine, 4).unwrap(), other);
        assert!(read_locks(&engine, 5).unwrap().is_empty());
    }

    #[test]
    fn a_record_leaves_its_locks_out_and_older_decoders_refuse_it() {
        let mut applied = Applied {
            current_revision: 12,
            ..Applied::default()
        };
        applied.locks.held.insert(5, lock(1, b"t"));
        let stored = encode_record(&mut applied).unwrap();
        assert_eq!(applied.locks.held.len(), 1, "the locks are put back");
        let (back, held) = decode_record(&stored).unwrap();
        assert_eq!(held, Held::Beside);
        assert!(back.locks.held.is_empty());
        assert_eq!(back.current_revision, 12);
        // Every layout an older Cairn decodes fails on it (the one before
        // this is the inline record, every field of today).
        assert!(Applied::decode(&stored).is_err());
        // An inline record still loads, locks and all.
        let inline = encode(&applied).unwrap();
        assert_eq!(decode_record(&inline).unwrap(), (applied, Held::Inline));
        // A layout from the future is refused, not misread.
        let mut future = stored.clone();
        future[1] = LAYOUT + 1;
        assert!(decode_record(&future).is_err());
    }
}
