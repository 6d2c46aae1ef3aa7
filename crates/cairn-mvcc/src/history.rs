//! Change history read back from stored versions: what a watcher that fell
//! behind (or starts in the past) replays before joining the live feed.
//!
//! A replay of `[from, to]` reads what changed in that window, not the
//! span's whole history (etcd's backend is keyed by revision, so its replay
//! is bounded the same way). Which read depends on the span and the store:
//! - One key: its versions in `[from, to]` are adjacent in the version
//!   keyspace; one scan of them, plus one seek for the version before the
//!   first (its `prev_kv`).
//! - A range, when the store's by-revision index is complete: the index
//!   entries in `[from, to]` (every key's, tiny), and for each one in the
//!   span a point read of the version and a seek for the one before. Work is
//!   the window's changes, whatever the span's size and age.
//! - A range, when the index is incomplete (a store written before the
//!   index existed, until a node opens it and completes it:
//!   [`crate::complete_index`]): every version of every key in the span.
//!
//! All three give the same events: in etcd's order — by revision, then
//! the place of the op that made them in its transaction, then key
//! ([`crate::change`]) — each with its `prev_kv` taken from the key's
//! previous stored version (none when that was a tombstone, or when
//! compaction dropped it). A single key's replay leaves each event's sub
//! at 0 rather than read the index for it: it has one stored version per
//! revision, so the order needs none.
//!
//! One difference from etcd: a key stores one version per revision. A Txn
//! whose nested transactions put a key and then delete it (etcd's
//! duplicate-key check lets that order through, and etcd keeps both
//! versions at two sub-revisions) keeps only the delete, so its live
//! feed has two events for the key and a replay one — the delete, with
//! the key's `prev_kv` from before the Txn.

use std::ops::Bound;

use cairn_api::mvccpb::{event::EventType, Event, KeyValue};
use cairn_storage::keys::{self, decode_by_revision, decode_version, Key};
use cairn_storage::Snapshot;

use crate::change::{decode_sub, stored_sub, Change};
use crate::range::Span;
use crate::record::{self, Record};
use crate::{index_complete, Error, Result};

/// Every event on keys in `span` with `from <= revision <= to`, in etcd's
/// order (revision, sub, key: the order live events are published in).
/// Each event carries its `prev_kv` when the key was live just before.
///
/// The caller checks `from` against the compaction revision, and for a
/// watcher drops the `prev_kv` of events at it ([`without_prev_at`]).
pub fn history(read: &dyn Snapshot, span: &Span, from: i64, to: i64) -> Result<Vec<Change>> {
    let from = from.max(0);
    if from > to {
        return Ok(Vec::new());
    }
    match span {
        Span::Single(key) => one_key(read, key, from, to),
        Span::Range(..) if index_complete(read)? => indexed(read, span, from, to),
        Span::Range(..) => full_scan(read, span, from, to),
    }
}

/// The versions of `key` in `[from, to]`, chained for `prev_kv`.
fn one_key(read: &dyn Snapshot, key: &[u8], from: i64, to: i64) -> Result<Vec<Change>> {
    let mut before = previous(read, key, from)?;
    let lo = Key::MvccVersion {
        key,
        revision: from,
    }
    .encode();
    let hi = Key::MvccVersion { key, revision: to }.encode();
    let mut out = Vec::new();
    for item in read.scan(Bound::Included(lo), Bound::Included(hi), false) {
        let (k, v) = item?;
        let (_, rev) = decode_version(&k)?;
        let record = Record::decode(key, &v)?;
        let now = live(&record);
        out.push(Change {
            revision: rev,
            sub: 0,
            event: event(key, rev, record, before),
        });
        before = now;
    }
    Ok(out)
}

/// The span's versions named by the by-revision index entries in
/// `[from, to]`, each with the sub its entry records.
fn indexed(read: &dyn Snapshot, span: &Span, from: i64, to: i64) -> Result<Vec<Change>> {
    let (lo, hi) = keys::by_revision_range(from, to);
    let mut out = Vec::new();
    for item in read.scan(lo, hi, false) {
        let (k, v) = item?;
        let (rev, key) = decode_by_revision(&k)?;
        if !span.contains(key) {
            continue;
        }
        let stored = read
            .get(&Key::MvccVersion { key, revision: rev }.encode())?
            .ok_or_else(|| {
                Error::Corrupt(format!("index entry without version: {key:?} at {rev}"))
            })?;
        let record = Record::decode(key, &stored)?;
        let before = previous(read, key, rev)?;
        out.push(Change {
            revision: rev,
            sub: decode_sub(&v),
            event: event(key, rev, record, before),
        });
    }
    // Index order is (revision, key): stable-sorted, each revision's
    // events fall into op order.
    out.sort_by_key(|c| (c.revision, c.sub));
    Ok(out)
}

/// Every version of every key in the span, filtered to `[from, to]`: the
/// read for stores whose index is incomplete (in a range, the sub of a
/// version with an index entry is read from it).
pub(crate) fn full_scan(
    read: &dyn Snapshot,
    span: &Span,
    from: i64,
    to: i64,
) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let (lo, hi) = match span {
        Span::Single(k) => keys::versions_of(k),
        Span::Range(s, e) => keys::version_range(s, e.as_deref()),
    };
    let mut prev: Option<(Vec<u8>, Option<KeyValue>)> = None;
    for item in read.scan(lo, hi, false) {
        let (k, v) = item?;
        let (user, rev) = decode_version(&k)?;
        if !span.contains(&user) {
            continue;
        }
        let record = Record::decode(&user, &v)?;
        let before = match &mut prev {
            Some((u, kv)) if *u == user => kv.take(),
            _ => None,
        };
        let now = live(&record);
        if rev >= from && rev <= to {
            let sub = match span {
                Span::Single(_) => 0,
                Span::Range(..) => stored_sub(read, &user, rev)?,
            };
            out.push(Change {
                revision: rev,
                sub,
                event: event(&user, rev, record, before),
            });
        }
        prev = Some((user, now));
    }
    out.sort_by(|a, b| a.order().cmp(&b.order()));
    Ok(out)
}

/// Drops the `prev_kv` of the events in `events` at revision `compacted`:
/// the version before such an event lies below the compaction, so a read
/// of it is refused (etcd's watch, reading it at the revision before,
/// sends none), and whether it is still stored depends on how far this
/// replica's sweep has got (`compact::sweep`).
pub fn without_prev_at(events: &mut [Change], compacted: i64) {
    for c in events.iter_mut() {
        if c.revision == compacted {
            c.event.prev_kv = None;
        }
    }
}

/// The key's state just before revision `rev`: its newest stored version
/// below `rev`, when that is a put.
fn previous(read: &dyn Snapshot, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
    match rev {
        0 => Ok(None),
        _ => record::at_revision(read, key, rev - 1),
    }
}

fn live(record: &Record) -> Option<KeyValue> {
    match record {
        Record::Put(kv) => Some(kv.clone()),
        Record::Tombstone => None,
    }
}

/// The event a stored version of `key` at `rev` stands for.
fn event(key: &[u8], rev: i64, record: Record, prev_kv: Option<KeyValue>) -> Event {
    match record {
        Record::Put(kv) => Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv,
        },
        Record::Tombstone => Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests;
