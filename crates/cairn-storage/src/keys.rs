//! Typed internal keys and their order-preserving byte encoding.
//!
//! The first byte of every stored key is its [`Space`]. Within a space:
//! - Raft keys are `space | region (u64 BE) | ...`, so one region's log is a
//!   contiguous, index-ordered run and deleting a region is one range delete.
//! - MVCC version keys are `0x10 | escaped(user key) | 0x00 0x00 | revision
//!   (u64 BE)`: escaping (`0x00` → `0x00 0xFF`) plus the `0x00 0x00`
//!   terminator keeps user keys in byte order and every version of one user
//!   key adjacent, ascending by revision.
//! - MVCC latest keys are `0x11 | user key`: the newest version of each live
//!   key, so reads at the current revision scan one record per key.
//! - MVCC by-revision keys are `0x13 | revision (u64 BE) | user key`, one
//!   per stored version, valued with the version's place among its
//!   transaction's ops (`cairn_mvcc::Change`; empty for the first): the
//!   versions in revision order, so a
//!   read of the changes in `[from, to]` is one contiguous scan (etcd's
//!   backend is keyed this way). The user key needs no escaping because it
//!   comes last after a fixed-width revision, so raw byte order already
//!   gives (revision, key) order. The one-byte key `0x13` alone, sorting
//!   before every entry, marks the index complete.

use std::ops::Bound;

use crate::{Error, Result};

/// The internal keyspaces, by first key byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Space {
    /// Raft log entries: region, index.
    RaftLog = 0x01,
    /// Raft hard state: region, kind (vote, committed, purged).
    RaftState = 0x02,
    /// Per-region apply state (last applied log id, membership, revisions).
    ApplyState = 0x03,
    /// Region metadata (range, epoch, peers).
    Region = 0x04,
    /// Every version of every user key.
    MvccVersion = 0x10,
    /// The newest live version of each user key.
    MvccLatest = 0x11,
    /// Leases: records and the index of attached keys.
    Lease = 0x12,
    /// Every version of every user key again, ordered by revision, then key.
    MvccByRevision = 0x13,
}

/// Which piece of Raft hard state a [`Key::RaftState`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RaftStateKind {
    /// The persisted vote.
    Vote = 1,
    /// The last committed log id.
    Committed = 2,
    /// The last purged log id.
    Purged = 3,
}

/// A typed internal key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// One Raft log entry of a region.
    RaftLog { region: u64, index: u64 },
    /// One item of a region's Raft hard state.
    RaftState { region: u64, kind: RaftStateKind },
    /// A region's apply state; tag names the item.
    ApplyState { region: u64, tag: &'a [u8] },
    /// A region's metadata.
    Region { region: u64 },
    /// One version of a user key.
    MvccVersion { key: &'a [u8], revision: i64 },
    /// The newest version of a user key.
    MvccLatest { key: &'a [u8] },
    /// The by-revision index entry of the version of `key` at `revision`.
    MvccByRevision { revision: i64, key: &'a [u8] },
    /// Present when every stored version has its [`Key::MvccByRevision`]
    /// entry (absent on stores written before the index existed).
    MvccByRevisionComplete,
    /// A lease record.
    Lease { id: i64 },
    /// A key attached to a lease.
    LeaseKey { id: i64, key: &'a [u8] },
}

fn region_prefix(space: Space, region: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(space as u8);
    out.extend_from_slice(&region.to_be_bytes());
    out
}

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

impl Key<'_> {
    /// The order-preserving byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::RaftLog { region, index } => {
                let mut out = region_prefix(Space::RaftLog, *region);
                out.extend_from_slice(&index.to_be_bytes());
                out
            }
            Key::RaftState { region, kind } => {
                let mut out = region_prefix(Space::RaftState, *region);
                out.push(*kind as u8);
                out
            }
            Key::ApplyState { region, tag } => {
                let mut out = region_prefix(Space::ApplyState, *region);
                out.extend_from_slice(tag);
                out
            }
            Key::Region { region } => region_prefix(Space::Region, *region),
            Key::MvccVersion { key, revision } => {
                let mut out = Vec::with_capacity(key.len() + 11);
                out.push(Space::MvccVersion as u8);
                escape_into(&mut out, key);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&(*revision as u64).to_be_bytes());
                out
            }
            Key::Lease { id } => {
                let mut out = vec![Space::Lease as u8];
                out.extend_from_slice(&(*id as u64).to_be_bytes());
                out.push(0);
                out
            }
            Key::LeaseKey { id, key } => {
                let mut out = vec![Space::Lease as u8];
                out.extend_from_slice(&(*id as u64).to_be_bytes());
                out.push(1);
                out.extend_from_slice(key);
                out
            }
            Key::MvccLatest { key } => {
                let mut out = Vec::with_capacity(key.len() + 1);
                out.push(Space::MvccLatest as u8);
                out.extend_from_slice(key);
                out
            }
            Key::MvccByRevision { revision, key } => {
                let mut out = Vec::with_capacity(key.len() + 9);
                out.push(Space::MvccByRevision as u8);
                out.extend_from_slice(&(*revision as u64).to_be_bytes());
                out.extend_from_slice(key);
                out
            }
            Key::MvccByRevisionComplete => vec![Space::MvccByRevision as u8],
        }
    }
}

/// Decodes an MVCC version key into (user key, revision).
pub fn decode_version(encoded: &[u8]) -> Result<(Vec<u8>, i64)> {
    let corrupt = || Error::Corrupt(format!("bad version key {encoded:?}"));
    if encoded.first() != Some(&(Space::MvccVersion as u8)) || encoded.len() < 11 {
        return Err(corrupt());
    }
    let (body, rev) = encoded[1..].split_at(encoded.len() - 9);
    let revision = u64::from_be_bytes(rev.try_into().map_err(|_| corrupt())?) as i64;
    let mut key = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match (body[i], body.get(i + 1)) {
            (0, Some(0xFF)) => {
                key.push(0);
                i += 2;
            }
            (0, Some(0)) if i + 2 == body.len() => return Ok((key, revision)),
            (0, _) => return Err(corrupt()),
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    Err(corrupt())
}

/// Decodes a latest key into its user key.
pub fn decode_latest(encoded: &[u8]) -> Result<&[u8]> {
    match encoded.split_first() {
        Some((&b, rest)) if b == Space::MvccLatest as u8 => Ok(rest),
        _ => Err(Error::Corrupt(format!("bad latest key {encoded:?}"))),
    }
}

/// Decodes a by-revision index entry into (revision, user key).
pub fn decode_by_revision(encoded: &[u8]) -> Result<(i64, &[u8])> {
    match encoded {
        [space, rest @ ..] if *space == Space::MvccByRevision as u8 && rest.len() >= 8 => {
            let (rev, key) = rest.split_at(8);
            let rev = u64::from_be_bytes(rev.try_into().expect("8 bytes"));
            Ok((rev as i64, key))
        }
        _ => Err(Error::Corrupt(format!("bad by-revision key {encoded:?}"))),
    }
}

/// The bounds of the by-revision index entries with `from <= revision <=
/// to`, both at least 0 (revisions are never negative).
pub fn by_revision_range(from: i64, to: i64) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    debug_assert!(from >= 0 && to >= 0, "revisions {from}..={to}");
    let bound = |rev: u64| {
        let mut out = vec![Space::MvccByRevision as u8];
        out.extend_from_slice(&rev.to_be_bytes());
        out
    };
    (
        Bound::Included(bound(from as u64)),
        Bound::Excluded(bound(to as u64 + 1)),
    )
}

/// The bounds of every version of every user key in `[start, end)`;
/// `end = None` means no upper bound.
pub fn version_range(start: &[u8], end: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut s = vec![Space::MvccVersion as u8];
    escape_into(&mut s, start);
    let e = match end {
        Some(end) => {
            let mut e = vec![Space::MvccVersion as u8];
            escape_into(&mut e, end);
            Bound::Excluded(e)
        }
        None => Bound::Excluded(vec![Space::MvccVersion as u8 + 1]),
    };
    (Bound::Included(s), e)
}

/// The bounds of every version of exactly `key`.
pub fn versions_of(key: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lo = Key::MvccVersion { key, revision: 0 }.encode();
    let hi = Key::MvccVersion { key, revision: -1 }.encode(); // u64::MAX
    (Bound::Included(lo), Bound::Included(hi))
}

/// The bounds of the latest records of user keys in `[start, end)`.
pub fn latest_range(start: &[u8], end: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let s = Key::MvccLatest { key: start }.encode();
    let e = match end {
        Some(end) => Bound::Excluded(Key::MvccLatest { key: end }.encode()),
        None => Bound::Excluded(vec![Space::MvccLatest as u8 + 1]),
    };
    (Bound::Included(s), e)
}

/// An engine range: inclusive start, exclusive end.
pub type EngineRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// A region's range of user keys: `[start, end)`, `end` empty meaning to
/// the end of the keyspace. Every keyspace operation of a data region
/// (snapshot build and install, compaction, hash) works within its range,
/// so regions sharing one engine never touch each other's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// The key past the last (empty: to the end).
    pub end: Vec<u8>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }

    /// `[start, end)` (`end` empty: to the end).
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: end.into(),
        }
    }

    /// True when the range is the whole keyspace.
    pub fn is_all(&self) -> bool {
        self.start.is_empty() && self.end.is_empty()
    }

    /// The end as `version_range` and `latest_range` take it.
    pub fn end_bound(&self) -> Option<&[u8]> {
        (!self.end.is_empty()).then_some(self.end.as_slice())
    }

    /// True when `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// The engine ranges holding this range's versions and latest records.
    pub fn mvcc_ranges(&self) -> [EngineRange; 2] {
        [
            version_range(&self.start, self.end_bound()),
            latest_range(&self.start, self.end_bound()),
        ]
    }
}

/// The bounds of the keys attached to lease `id`.
pub fn lease_keys_range(id: i64) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut lo = vec![Space::Lease as u8];
    lo.extend_from_slice(&(id as u64).to_be_bytes());
    let mut hi = lo.clone();
    lo.push(1);
    hi.push(2);
    (Bound::Included(lo), Bound::Excluded(hi))
}

/// Decodes a lease-space key: (lease id, Some(attached key)) or (id, None)
/// for the lease record itself.
pub fn decode_lease(encoded: &[u8]) -> Result<(i64, Option<&[u8]>)> {
    let corrupt = || Error::Corrupt(format!("bad lease key {encoded:?}"));
    if encoded.len() < 10 || encoded[0] != Space::Lease as u8 {
        return Err(corrupt());
    }
    let id = u64::from_be_bytes(encoded[1..9].try_into().map_err(|_| corrupt())?) as i64;
    match encoded[9] {
        0 if encoded.len() == 10 => Ok((id, None)),
        1 => Ok((id, Some(&encoded[10..]))),
        _ => Err(corrupt()),
    }
}

/// The bounds of one region's Raft log.
pub fn raft_log_range(region: u64) -> (Vec<u8>, Vec<u8>) {
    let lo = Key::RaftLog { region, index: 0 }.encode();
    let mut hi = region_prefix(Space::RaftLog, region);
    hi.extend_from_slice(&[0xFF; 9]);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_order_by_user_key_then_revision() {
        let cases: Vec<(&[u8], i64)> = vec![
            (b"", 1),
            (b"\x00", 1),
            (b"\x00\x00", 5),
            (b"\x00\x01", 1),
            (b"a", 1),
            (b"a", 2),
            (b"a", 1 << 40),
            (b"a\x00", 1),
            (b"a\x00\xff", 1),
            (b"a\x01", 1),
            (b"ab", 1),
            (b"b", 1),
        ];
        let enc: Vec<_> = cases
            .iter()
            .map(|(k, r)| {
                Key::MvccVersion {
                    key: k,
                    revision: *r,
                }
                .encode()
            })
            .collect();
        for w in enc.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        for ((k, r), e) in cases.iter().zip(&enc) {
            assert_eq!(decode_version(e).unwrap(), (k.to_vec(), *r));
        }
    }

    #[test]
    fn version_range_covers_exactly_the_user_range() {
        let (lo, hi) = version_range(b"ab", Some(b"ac"));
        let inside = Key::MvccVersion {
            key: b"ab\x00",
            revision: 9,
        }
        .encode();
        let outside = Key::MvccVersion {
            key: b"ac",
            revision: 1,
        }
        .encode();
        let below = Key::MvccVersion {
            key: b"a",
            revision: 1 << 50,
        }
        .encode();
        let within = |k: &Vec<u8>| {
            matches!(&lo, Bound::Included(l) if k >= l)
                && matches!(&hi, Bound::Excluded(h) if k < h)
        };
        assert!(within(&inside));
        assert!(!within(&outside));
        assert!(!within(&below));
    }

    #[test]
    fn by_revision_keys_order_by_revision_then_key_after_the_marker() {
        let cases: Vec<(i64, &[u8])> = vec![
            (0, b""),
            (1, b""),
            (1, b"\x00"),
            (1, b"a"),
            (1, b"a\x00"),
            (1, b"b"),
            (2, b""),
            (2, b"a"),
            (1 << 40, b"\xff"),
        ];
        let mut enc = vec![Key::MvccByRevisionComplete.encode()];
        enc.extend(cases.iter().map(|(r, k)| {
            Key::MvccByRevision {
                revision: *r,
                key: k,
            }
            .encode()
        }));
        for w in enc.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        for ((r, k), e) in cases.iter().zip(&enc[1..]) {
            assert_eq!(decode_by_revision(e).unwrap(), (*r, *k));
        }
        assert!(
            decode_by_revision(&enc[0]).is_err(),
            "the marker is no entry"
        );
    }

    #[test]
    fn by_revision_range_covers_exactly_the_revisions_asked() {
        let (lo, hi) = by_revision_range(5, 7);
        let within = |revision: i64, key: &[u8]| {
            let k = Key::MvccByRevision { revision, key }.encode();
            matches!(&lo, Bound::Included(l) if k >= *l)
                && matches!(&hi, Bound::Excluded(h) if k < *h)
        };
        assert!(within(5, b""));
        assert!(within(7, b"\xff\xff"));
        assert!(!within(4, b"\xff\xff"));
        assert!(!within(8, b""));
        let marker = Key::MvccByRevisionComplete.encode();
        let (lo, _) = by_revision_range(0, 0);
        assert!(
            matches!(lo, Bound::Included(l) if marker < l),
            "marker outside"
        );
    }

    #[test]
    fn corrupt_version_keys_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\x10",
            b"\x10a\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01",
            b"\x11abc",
        ] {
            assert!(decode_version(bad).is_err());
        }
    }
}
