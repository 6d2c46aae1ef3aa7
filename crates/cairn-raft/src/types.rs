//! What travels through a region's Raft log, and what applying it returns.

use cairn_mvcc::Rejection;
use serde::{Deserialize, Serialize};

use crate::NodeId;

openraft::declare_raft_types!(
    /// openraft's type configuration for every Cairn region.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = crate::snapshot_data::SnapshotData,
);

/// A command proposed to a region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Data region: an etcd write transaction (prost-encoded `TxnRequest`;
    /// `Put` and `DeleteRange` arrive as one-op transactions) committed at TSO
    /// timestamp `ts`. The revision is `max(ts, current + 1)`.
    Txn {
        ts: i64,
        #[serde(with = "serde_bytes")]
        txn: Vec<u8>,
    },
    /// Data region: a group of transactions committed together (group
    /// commit): applied in order, each seeing the ones before, as one atomic
    /// batch. Element `i` replies in `Reply::Batch[i]`.
    Batch(Vec<Command>),
    /// Data region: grant lease `id` for `ttl` seconds.
    LeaseGrant { id: i64, ttl: i64 },
    /// Data region: revoke lease `id`, deleting its keys at TSO timestamp `ts`.
    LeaseRevoke { id: i64, ts: i64 },
    /// Data region: record lease `id`'s remaining TTL (seconds; 0 clears
    /// it). Kept for logs written before [`Command::LeaseCheckpoints`].
    LeaseCheckpoint { id: i64, remaining: i64 },
    /// Data region: compact MVCC history at `revision`.
    Compact { revision: i64 },
    /// Meta region: the TSO may hand out timestamps below `high_water`.
    TsoWindow { high_water: i64 },
    /// Meta region: a member's attributes (for `MemberList`).
    SetMember(MemberInfo),
    /// Meta region: a region's descriptor (the region directory).
    SetRegion(RegionDesc),
    /// Data region: record many leases' remaining TTLs at once, `(id,
    /// remaining seconds)`; a remaining of 0 clears the checkpoint (a
    /// renewal: the lease counts down from its full TTL again). `term`: the
    /// leader term the figures were taken in; the entry is ignored unless
    /// it is appended in that same term (0: applies in any term — clears,
    /// which only ever lengthen a lease).
    LeaseCheckpoints { term: u64, list: Vec<(i64, i64)> },
    /// Data region: lease `id` expired by the lessor of leader term `term`;
    /// revoke it at TSO timestamp `ts` — but only if the entry is appended
    /// in that same term. A decision held up across a leader change (say,
    /// behind a TSO outage) must not revoke a lease a later leader renewed.
    LeaseExpire { id: i64, ts: i64, term: u64 },
    /// Data region: raise (`activate`) or clear alarm `alarm` (etcd's
    /// `AlarmType` number) for member `member`.
    Alarm {
        activate: bool,
        member: NodeId,
        alarm: i32,
    },
    /// Meta region: change the auth store (users, roles, permissions,
    /// enabled). Replies [`Reply::Auth`].
    Auth(cairn_auth::AuthCmd),
    /// Meta region: register a simple token for `user` on every member
    /// (kept in memory; nothing is written). Replies [`Reply::Auth`].
    AuthToken { token: String, user: String },
    /// Data region: the auth store reached `revision`; from this entry on,
    /// a [`Command::Checked`] command checked against an older auth store
    /// is refused (`AuthOldRevision`). Proposed after every auth change,
    /// before the change is acknowledged.
    AuthFence { revision: u64 },
    /// `cmd`, on behalf of a client whose permissions were checked against
    /// auth revision `auth_revision` — applied in a data region only if no
    /// newer auth revision has been fenced, in the meta region only if the
    /// auth store is still at that revision (etcd's `AuthOldRevision`
    /// check at apply).
    Checked {
        auth_revision: u64,
        cmd: Box<Command>,
    },
    /// [`Command::Checked`] for a lease put or revoke by a caller whose
    /// writes are limited to `writable` (as of `auth_revision`): also
    /// refused (`PermissionDenied`) if a key already on the lease is not
    /// writable by the caller — etcd's `checkLeasePuts`, at apply, so a
    /// key attached after the request was checked counts too.
    CheckedLease {
        auth_revision: u64,
        writable: cairn_auth::Writable,
        cmd: Box<Command>,
    },
    /// Data region: split at `at`. This region keeps `[start, at)` and
    /// region `child` is born holding `[at, end)`, both at epoch
    /// `epoch + 1` — only if the region is still at `epoch` and `at` falls
    /// strictly inside it (else [`Reply::WrongRegion`]). The child's data
    /// is already in the engine; every replica applying the split seeds the
    /// child's Raft state (see `state_machine::split`).
    Split { at: Vec<u8>, child: u64, epoch: u64 },
    /// Timestamped commands (a `Txn`, a lease revoke or expiry, or a
    /// `Batch` of them, maybe `Checked`) whose timestamps were fetched
    /// while this region's leader was in term `term`: applied only from an
    /// entry of that term, else answered [`Reply::StaleTerm`] and nothing
    /// changes. A leader that lost and regained leadership between
    /// fetching and appending would otherwise commit, behind a read that
    /// another leader served at a later timestamp meanwhile, a write
    /// stamped below it (see `cairn-store`'s `node::range_across`).
    InTerm { term: u64, cmd: Box<Command> },
    /// Data region: a closed timestamp, proposed (inside `InTerm`) once
    /// every write its leader stamped at or below `ts` is answered, so
    /// each is before it in the log. It writes nothing and raises the
    /// region's current revision to `ts`: the region's change feed is then
    /// resolved up to `ts`, and a watch over it and a busier region moves
    /// on though this one is idle.
    Close { ts: i64 },
    /// Data region: phase one of a transaction across regions (see
    /// `cairn_mvcc::locks`): lock `spans` (all inside the region) for the
    /// transaction started at `start_ts`, whose primary lock is in region
    /// `primary`, locking `regions` (the primary first); `txn` is its
    /// prost-encoded `TxnRequest`. Replies [`Reply::Revision`] with the
    /// lock's floor (the region's revision now: the commit timestamp must
    /// be above it); refused with [`Reply::Locked`] if another
    /// transaction's lock overlaps, with [`Reply::Outcome`] if the
    /// transaction was already settled. In the region holding the lease
    /// table it also claims `leases` (the spans may then be empty); a
    /// revoke's claim is refused with [`Reply::LeaseKeys`] if the lease
    /// indexes a key `txn` does not name.
    Prewrite {
        start_ts: i64,
        primary: u64,
        regions: Vec<u64>,
        spans: Vec<cairn_mvcc::locks::KeySpan>,
        #[serde(with = "serde_bytes")]
        txn: Vec<u8>,
        leases: cairn_mvcc::locks::LeaseClaims,
    },
    /// Data region: commit this region's part of transaction `start_ts` at
    /// revision `commit_ts` along branches `path`, and drop its lock; in
    /// the primary region this decides the transaction. Replies
    /// [`Reply::Outcome`]: committed (now or before), rolled back, or
    /// nothing known (a secondary part already finished).
    CommitLocked {
        start_ts: i64,
        commit_ts: i64,
        path: Vec<bool>,
    },
    /// Data region: drop a secondary lock of transaction `start_ts`
    /// (rolled back at its primary).
    RollbackLocked { start_ts: i64 },
    /// Primary region: settle transaction `start_ts`'s fate: its outcome
    /// if decided, else, if its lock is here, roll it back (drop the lock,
    /// record the rollback). Replies [`Reply::Outcome`] (`None`: nothing
    /// known — never locked here, or finished and forgotten).
    ResolvePrimary { start_ts: i64 },
    /// Primary region: forget transaction `start_ts`'s outcome (every part
    /// of it is finished).
    ForgetOutcome { start_ts: i64 },
    /// Data region S: freeze S to merge into its left neighbour `target`
    /// while `target` is at epoch `target_epoch`, if S is still at `epoch`
    /// (see `state_machine::merge`). Answers [`Reply::Frozen`].
    PrepareMerge {
        target: u64,
        target_epoch: u64,
        epoch: u64,
    },
    /// Data region T: absorb the frozen region `source`, whose freeze is
    /// `freeze`, if T is still at `freeze.target_epoch`. Each replica first
    /// waits for its own replica of `source` to have applied the freeze.
    CommitMerge {
        source: u64,
        freeze: crate::state_machine::Freeze,
    },
    /// Data region T: make sure no `CommitMerge` of `source` planned at
    /// `target_epoch` can apply any more (T's epoch moves past it). Answers
    /// [`Reply::Absorbed`] if T already absorbed `source`.
    AbandonMerge { source: u64, target_epoch: u64 },
    /// Data region S: thaw the freeze at `epoch` (only once T answered
    /// that it will never absorb S).
    RollbackMerge { epoch: u64 },
    /// Meta region: region `id` was absorbed by a merge; its directory
    /// entry goes and is never published again.
    DropRegion { id: u64 },
    /// The lease table's region: drop from lease `id`'s index each
    /// `(key, entry value)` the host found detached, if the entry still
    /// has that value (`cairn_mvcc::lease::unindex`).
    LeaseUnindex {
        id: i64,
        detached: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// A data region's keys, `[start, end)` (`end` empty: to the end), and
/// its epoch: bumped by every split (and merge), so a request routed by an
/// older directory is told so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRange {
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// The key past the last (empty: to the end).
    pub end: Vec<u8>,
    /// Bumped by splits and merges.
    pub epoch: u64,
}

impl Default for RegionRange {
    /// The whole keyspace at epoch 1: the first data region.
    fn default() -> Self {
        Self {
            start: Vec::new(),
            end: Vec::new(),
            epoch: 1,
        }
    }
}

impl RegionRange {
    /// True for the whole keyspace: the only data region, whose revision
    /// is the store's.
    pub fn is_whole(&self) -> bool {
        self.start.is_empty() && self.end.is_empty()
    }

    /// True when `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// True when the span `[key, range_end)` (etcd's form: `range_end`
    /// empty is the key alone, `\0` is every key from `key` on) lies in the
    /// range. A span whose end is at or below its key holds no key (etcd
    /// answers it empty): every range covers it, so it never makes a
    /// request span regions (`cairn_mvcc::locks::footprint` leaves it out
    /// too).
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        if !matches!(range_end, [] | [0]) && range_end <= key {
            return true;
        }
        if !self.contains(key) {
            return false;
        }
        match range_end {
            [] => true,
            [0] => self.end.is_empty(),
            e => self.end.is_empty() || e <= self.end.as_slice(),
        }
    }

    /// True for a range holding no key (a region frozen for a merge).
    pub fn is_empty(&self) -> bool {
        !self.end.is_empty() && self.end <= self.start
    }

    /// True when the two ranges share a key.
    pub fn overlaps(&self, other: &RegionRange) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && (self.end.is_empty() || other.start < self.end)
            && (other.end.is_empty() || self.start < other.end)
    }

    /// The range as the storage layer names it.
    pub fn keys(&self) -> cairn_storage::keys::KeyRange {
        cairn_storage::keys::KeyRange::new(self.start.clone(), self.end.clone())
    }
}

/// What a client's write was checked against: an auth revision, and for a
/// lease put or revoke by a caller with limited writes, the keys it may
/// write. Proposed as [`Command::Checked`] or [`Command::CheckedLease`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthStamp {
    /// The auth revision the request was checked against.
    pub revision: u64,
    /// The caller's writable keys, when the request touches leases and the
    /// caller is not allowed everything.
    pub writable: Option<cairn_auth::Writable>,
}

impl AuthStamp {
    /// `cmd` as checked under this stamp.
    pub fn wrap(self, cmd: Command) -> Command {
        let cmd = Box::new(cmd);
        match self.writable {
            None => Command::Checked {
                auth_revision: self.revision,
                cmd,
            },
            Some(writable) => Command::CheckedLease {
                auth_revision: self.revision,
                writable,
                cmd,
            },
        }
    }
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// A transaction's prost-encoded `TxnResponse` (header revision set).
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Compaction done; the region's current revision.
    Compacted { current: i64 },
    /// A meta command (or a membership/blank entry) applied.
    Done,
    /// The command was refused; nothing changed.
    Rejected(Rejection),
    /// Done; the region's revision after the command.
    Revision(i64),
    /// One reply per command of a [`Command::Batch`].
    Batch(Vec<Reply>),
    /// The command's bytes did not decode (never produced by Cairn itself).
    Invalid(String),
    /// The alarms an [`Command::Alarm`] changed, `(member, alarm)`.
    Alarms(Vec<(NodeId, i32)>),
    /// An auth command's outcome: the auth revision after it, or etcd's
    /// error (nothing changed).
    Auth(Result<u64, cairn_auth::AuthError>),
    /// The command names a key outside this data region, or a split named
    /// an epoch the region has left: a stale route. Nothing changed; the
    /// region's range now is `range` (route again).
    WrongRegion(RegionRange),
    /// A [`Command::InTerm`] appended in another term than its timestamps
    /// were fetched in: nothing changed; propose again.
    StaleTerm,
    /// The command touches keys a transaction across regions holds locked:
    /// nothing changed; resolve the lock (or wait for it) and try again.
    Locked(cairn_mvcc::locks::LockRef),
    /// A transaction's fate as the region knows it (`None`: nothing known).
    Outcome(Option<cairn_mvcc::locks::Outcome>),
    /// A revoke's prewrite named fewer keys than its lease indexes now (one
    /// was attached since the coordinator read them): the lease is claimed
    /// all the same (no key can join it now), and these are all the keys
    /// it indexes — prewrite again naming them.
    LeaseKeys(Vec<Vec<u8>>),
    /// A region frozen for a merge, and its freeze.
    Frozen(Box<crate::state_machine::Freeze>),
    /// The merge's target absorbed the source already.
    Absorbed,
}

/// A cluster member as etcd's `MemberList` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member ID (also the Raft node ID).
    pub id: NodeId,
    /// Human-readable name (`--name`).
    pub name: String,
    /// Peer URLs (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    /// Client URLs (`--advertise-client-urls`).
    pub client_urls: Vec<String>,
}

/// One region in the directory: its key range and replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionDesc {
    /// Region ID (0 is the meta region).
    pub id: u64,
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// End key (exclusive); empty means "to the end".
    pub end: Vec<u8>,
    /// Bumped by splits and merges; requests carry it to detect stale routes.
    pub epoch: u64,
    /// Nodes holding a replica.
    pub peers: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::RegionRange;

    fn range(start: &str, end: &str) -> RegionRange {
        RegionRange {
            start: start.as_bytes().to_vec(),
            end: end.as_bytes().to_vec(),
            epoch: 1,
        }
    }

    #[test]
    fn covers_spans_in_etcd_form() {
        let r = range("b", "d");
        assert!(r.covers(b"b", b""));
        assert!(r.covers(b"b", b"d"));
        assert!(!r.covers(b"b", b"e"));
        assert!(!r.covers(b"a", b"c"));
        assert!(!r.covers(b"c", b"\0"));
        assert!(range("b", "").covers(b"c", b"\0"));
        // A span ending at or below its key holds no key: every range
        // covers it, the region of its key or not.
        assert!(r.covers(b"c", b"a"));
        assert!(r.covers(b"z", b"y"));
        assert!(r.covers(b"z", b"z"));
        assert!(range("x", "").covers(b"c", b"a"));
    }

    /// `serde_bytes` changed how a byte string is encoded in the program
    /// (one run instead of one serde call per byte), not on disk or the
    /// wire: logs, records and peers of before read the same.
    #[test]
    fn byte_strings_encode_as_they_did_before_serde_bytes() {
        use serde::{Deserialize, Serialize};
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum Before {
            Txn { ts: i64, txn: Vec<u8> },
        }
        let txn: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let before = crate::codec::encode(&Before::Txn {
            ts: 7,
            txn: txn.clone(),
        })
        .unwrap();
        let now = crate::codec::encode(&super::Command::Txn {
            ts: 7,
            txn: txn.clone(),
        })
        .unwrap();
        assert_eq!(before, now);
        assert_eq!(
            crate::codec::decode::<super::Command>(&before).unwrap(),
            super::Command::Txn {
                ts: 7,
                txn: txn.clone()
            }
        );
        assert_eq!(
            crate::codec::decode::<Before>(&now).unwrap(),
            Before::Txn {
                ts: 7,
                txn: txn.clone()
            }
        );
        // A lock's transaction, shared (`bytes::Bytes`) since: applied
        // records holding locks read the same.
        #[derive(Serialize)]
        struct LockBefore {
            primary: u64,
            regions: Vec<u64>,
            spans: Vec<(Vec<u8>, Vec<u8>)>,
            floor: i64,
            txn: Vec<u8>,
            leases: cairn_mvcc::locks::LeaseClaims,
        }
        let spans = vec![(b"a".to_vec(), b"b".to_vec())];
        let before = crate::codec::encode(&LockBefore {
            primary: 3,
            regions: vec![3, 4],
            spans: spans.clone(),
            floor: 9,
            txn: txn.clone(),
            leases: Default::default(),
        })
        .unwrap();
        let lock = cairn_mvcc::locks::Lock {
            primary: 3,
            regions: vec![3, 4],
            spans,
            floor: 9,
            txn: txn.into(),
            leases: Default::default(),
        };
        assert_eq!(crate::codec::encode(&lock).unwrap(), before);
        assert_eq!(
            crate::codec::decode::<cairn_mvcc::locks::Lock>(&before).unwrap(),
            lock
        );
    }
}
