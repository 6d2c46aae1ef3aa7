//! One change event, and where it falls in the order etcd gives them.
//!
//! etcd numbers the changes of a transaction by *sub-revision*, in the
//! order its ops ran (a DeleteRange's keys in key order), and a watcher
//! gets a revision's events in that order — live or replayed. Cairn gives
//! every change a [`Change::sub`]: the place of the op that made it among
//! the transaction's ops (each op but a nested Txn counts — Put,
//! DeleteRange, Range, an empty one — along the branches taken, nested
//! transactions depth first; a DeleteRange's keys share their op's
//! place). Ordering a revision's events by
//! (sub, key) is then etcd's order, and it is the same whichever region
//! made an event: every region's part of a transaction across regions
//! walks all of its ops, so each numbers them alike, and merging the
//! regions' events by (revision, sub, key) interleaves them as one
//! region would have. A lease revoke deletes its keys in key order, each
//! in its own op, as etcd does.
//!
//! The sub is stored as the value of the version's by-revision index
//! entry ([`encode_sub`]): empty for 0 — a transaction's first op, so a
//! lone put or delete costs nothing — and 4 bytes big-endian otherwise.
//! Entries written before subs existed are empty, so they read as 0 and
//! order by key, as they were published. A snapshot in etcd's format
//! carries subs as etcd's sub-revisions (`crate::snapshot`).

use cairn_api::mvccpb::Event;

/// One change event at `revision`, with its place in that revision.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The revision the change was made at.
    pub revision: i64,
    /// The place of the op that made it within its transaction.
    pub sub: u32,
    /// The event.
    pub event: Event,
}

impl Change {
    /// The changed key.
    pub fn key(&self) -> &[u8] {
        self.event
            .kv
            .as_ref()
            .map_or(&[][..], |kv| kv.key.as_slice())
    }

    /// Where the change falls in etcd's order of events: by revision, then
    /// sub, then key.
    pub fn order(&self) -> (i64, u32, &[u8]) {
        (self.revision, self.sub, self.key())
    }
}

/// The sub of the version of `key` at `revision`, read from its index
/// entry (0 without one).
pub(crate) fn stored_sub(
    read: &dyn cairn_storage::Snapshot,
    key: &[u8],
    revision: i64,
) -> crate::Result<u32> {
    let entry = cairn_storage::keys::Key::MvccByRevision { revision, key }.encode();
    Ok(read.get(&entry)?.map_or(0, |v| decode_sub(&v)))
}

/// The by-revision index value that records `sub`.
pub fn encode_sub(sub: u32) -> Vec<u8> {
    match sub {
        0 => Vec::new(),
        n => n.to_be_bytes().to_vec(),
    }
}

/// The sub a by-revision index value records (0 for an empty or unknown
/// one: such entries order by key alone).
pub fn decode_sub(value: &[u8]) -> u32 {
    <[u8; 4]>::try_from(value).map_or(0, u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subs_round_trip_and_the_first_costs_nothing() {
        assert!(encode_sub(0).is_empty());
        for sub in [0, 1, 255, 256, u32::MAX] {
            assert_eq!(decode_sub(&encode_sub(sub)), sub);
        }
        assert_eq!(decode_sub(b"odd"), 0);
    }
}
