//! Counting a span's live keys from the keys alone, as etcd counts from its
//! in-memory index: what a limited range needs for `count` and `more` after
//! it has its `limit` key-values, and all a `count_only` range needs.
//!
//! At the current revision every latest-index entry is one live key, so the
//! count is the engine's count of that index's keys in the span
//! ([`Snapshot::count_keys`]: fjall keeps them counted in memory, as etcd
//! keeps its key index, so a span of any size costs microseconds) adjusted
//! by a transaction's pending writes. At an older revision it is a key-only
//! scan of the version records: each key's last version at or below the
//! revision decides, and whether that version is a tombstone is read from
//! its stored length alone ([`record::is_tombstone_len`]).

use std::ops::Bound;

use cairn_storage::keys::{self, Key};
use cairn_storage::Snapshot;

use super::{Overlay, Span};
use crate::record;
use crate::Result;

/// The live keys of `span` as of `rev` that sort after `after` (every one
/// when None), with `overlay`'s pending writes when reading the current
/// revision. Only for `Span::Range`: a single key is read, not counted.
pub(super) fn live_keys_after(
    read: &dyn Snapshot,
    span: &Span,
    rev: i64,
    latest: bool,
    overlay: Option<&Overlay>,
    after: Option<&[u8]>,
) -> Result<i64> {
    let Span::Range(start, end) = span else {
        unreachable!("single keys are read, not counted");
    };
    if span.is_empty() {
        return Ok(0);
    }
    if latest {
        let (lo, hi) = keys::latest_range(start, end.as_deref());
        let lo = match after {
            Some(k) => Bound::Excluded(Key::MvccLatest { key: k }.encode()),
            None => lo,
        };
        let mut n = i64::try_from(read.count_keys(lo, hi)?).unwrap_or(i64::MAX);
        for (key, write) in overlay.into_iter().flatten() {
            if !span.contains(key) || after.is_some_and(|a| key.as_slice() <= a) {
                continue;
            }
            let stored = read.value_len(&Key::MvccLatest { key }.encode())?.is_some();
            n += i64::from(write.is_some()) - i64::from(stored);
        }
        return Ok(n);
    }
    debug_assert!(
        overlay.is_none(),
        "pending writes are read at the current revision"
    );
    let (lo, hi) = keys::version_range(start, end.as_deref());
    let lo = match after.map(|k| keys::versions_of(k).1) {
        Some(Bound::Included(last)) => Bound::Excluded(last),
        Some(_) => unreachable!("versions_of ends inclusively"),
        None => lo,
    };
    let mut n = 0i64;
    // The key being read and its last version key at or below `rev`.
    let mut current: Option<(Vec<u8>, Option<Vec<u8>>)> = None;
    for encoded in read.scan_keys(lo, hi) {
        let encoded = encoded?;
        let (user, r) = keys::decode_version(&encoded)?;
        if current.as_ref().is_some_and(|(u, _)| *u != user) {
            n += live_version(read, current.take())?;
        }
        let entry = current.get_or_insert((user, None));
        if r <= rev {
            entry.1 = Some(encoded);
        }
    }
    n += live_version(read, current)?;
    Ok(n)
}

/// 1 when the key's deciding version exists and is a put.
fn live_version(read: &dyn Snapshot, key: Option<(Vec<u8>, Option<Vec<u8>>)>) -> Result<i64> {
    let Some((_, Some(version))) = key else {
        return Ok(0);
    };
    Ok(match read.value_len(&version)? {
        Some(len) => i64::from(!record::is_tombstone_len(len)),
        None => 0,
    })
}
