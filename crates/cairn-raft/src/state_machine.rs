//! A region replica's state machine: apply committed commands, build and
//! install snapshots.
//!
//! Every entry is applied with one atomic engine batch holding its effects
//! and the new [`Applied`] record (last applied log id, membership,
//! revisions, meta tables).
//!
//! Readers ([`RegionShared::read_view`], snapshot builds) get an engine
//! view and revisions that match, and never wait for an entry to be
//! applied. The apply task is the only writer of the region's record and
//! of every stored version a read may ask for (`apply` and
//! `install_snapshot` both run on it, one at a time), so it computes an
//! entry — a lease revoke, a range delete — from the live engine and a copy
//! of the record without any lock: the live engine still matches the
//! published record. (Beside it, the background sweep of a compaction,
//! `sweep`, deletes only versions no read may ask for.)
//! Only while the batch is written does the live engine run ahead of the
//! record; for that span the task parks a view taken just before the write
//! in the shared state and readers get that view instead. The new record
//! then replaces the old one and the parked view is dropped, under the
//! lock, so a reader sees either the state before the entry or after it.
//! The lock guards a copy, a swap, or a reader taking an engine view;
//! nothing longer. The cost is one engine view per entry (fjall: a
//! sequence number registered and released).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_api::etcdserverpb::TxnRequest;
use cairn_mvcc::lease::{self, StoredLeases};
use cairn_mvcc::{Change, Limits, Revisions};
use cairn_storage::keys::Key;
use cairn_storage::{Durability, Engine, Overlay, Snapshot as EngineSnapshot, WriteBatch};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::RwLock;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::codec::{decode, encode};
use crate::snapshot_data::{SnapshotData, Source};
use crate::snapshot_file::{self, SnapshotDir};
use crate::types::{Command, MemberInfo, RegionDesc, RegionRange, Reply};
use crate::{NodeId, TypeConfig};

/// A change to the regions a node hosts, told by the replica that applied
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostChange {
    /// A split gave birth to this region: start its replica.
    Born(u64),
    /// A merge absorbed this region: stop its replica, forget its record.
    Absorbed(u64),
}

/// What a region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Region 0: TSO window, members, region directory.
    Meta,
    /// User data (MVCC) for a key range.
    Data,
}

/// The replicated bookkeeping of a region, persisted with every apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last applied membership.
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// Data regions: revision of the newest write.
    pub current_revision: i64,
    /// Data regions: compaction revision.
    pub compacted_revision: i64,
    /// Meta region: the TSO may issue timestamps below this.
    pub tso_high_water: i64,
    /// Meta region: members by ID.
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// Meta region: the region directory.
    pub regions: BTreeMap<u64, RegionDesc>,
    /// Data regions: raised alarms, `(member, etcd AlarmType number)`.
    /// After the fields above, so a record written before alarms existed
    /// still decodes ([`Applied::decode`]).
    pub alarms: BTreeSet<(NodeId, i32)>,
    /// Meta region: the auth store (users, roles, enabled, revision).
    pub auth: cairn_auth::AuthState,
    /// Data regions: the newest auth revision fenced
    /// ([`Command::AuthFence`]). After the fields above, with `auth`, so a
    /// record written before auth existed still decodes.
    pub auth_fence: u64,
    /// Data regions: the keys the region holds and its epoch. Last, so a
    /// record written before regions split still decodes (as the first
    /// region: every key, epoch 1).
    pub range: RegionRange,
    /// Data regions: locks of transactions across regions, and the
    /// outcomes of those whose primary lock was here. Last, so a record
    /// written before them still decodes.
    pub locks: cairn_mvcc::locks::Locks,
    /// Data regions: a freeze for a merge, the regions absorbed; meta
    /// region: the regions dropped from the directory. After the fields
    /// above, so a record written before merges still decodes.
    pub merge: merge::MergeState,
    /// Data regions: for each committed outcome in `locks`, every region
    /// its primary lock named when it committed. A resolver finishes these
    /// too: the lock it met may have named fewer (a revoke's first
    /// prewrite, widened by a second before the commit), and a part it
    /// left would be rolled back once the outcome is forgotten. Beside the
    /// outcomes rather than in them, and last, so records, snapshots and
    /// replies of the versions before still decode both ways (postcard
    /// ignores trailing bytes; an outcome's layout is unchanged). Not
    /// carried by a merge: a resolver of an outcome the target took over
    /// finishes the regions the lock it met names, as before.
    pub outcome_regions: BTreeMap<i64, Vec<u64>>,
}

// The applied record as older versions wrote it. postcard writes a struct
// as its fields in order with nothing around them, so a layout that added
// fields at the end is the layout before it (nested, first) followed by
// those fields.

/// The applied record as written before outcomes named their regions.
#[derive(Deserialize)]
struct AppliedBeforeOutcomeRegions {
    before: AppliedBeforeMerges,
    merge: merge::MergeState,
}

/// The applied record as written before merges.
#[derive(Deserialize)]
struct AppliedBeforeMerges {
    before: AppliedBeforeLocks,
    locks: cairn_mvcc::locks::Locks,
}

/// The applied record as written before transaction locks.
#[derive(Deserialize)]
struct AppliedBeforeLocks {
    before: AppliedBeforeRanges,
    range: RegionRange,
}

/// The applied record as written before regions split.
#[derive(Deserialize)]
struct AppliedBeforeRanges {
    before: AppliedBeforeAuth,
    auth: cairn_auth::AuthState,
    auth_fence: u64,
}

/// The applied record as written before auth existed.
#[derive(Deserialize)]
struct AppliedBeforeAuth {
    before: AppliedBeforeAlarms,
    alarms: BTreeSet<(NodeId, i32)>,
}

/// The applied record as written before alarms existed.
#[derive(Deserialize)]
struct AppliedBeforeAlarms {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    current_revision: i64,
    compacted_revision: i64,
    tso_high_water: i64,
    members: BTreeMap<NodeId, MemberInfo>,
    regions: BTreeMap<u64, RegionDesc>,
}

impl From<AppliedBeforeAlarms> for Applied {
    fn from(old: AppliedBeforeAlarms) -> Self {
        Applied {
            last_applied: old.last_applied,
            membership: old.membership,
            current_revision: old.current_revision,
            compacted_revision: old.compacted_revision,
            tso_high_water: old.tso_high_water,
            members: old.members,
            regions: old.regions,
            ..Applied::default()
        }
    }
}

impl From<AppliedBeforeAuth> for Applied {
    fn from(old: AppliedBeforeAuth) -> Self {
        Applied {
            alarms: old.alarms,
            ..old.before.into()
        }
    }
}

impl From<AppliedBeforeRanges> for Applied {
    fn from(old: AppliedBeforeRanges) -> Self {
        Applied {
            auth: old.auth,
            auth_fence: old.auth_fence,
            ..old.before.into()
        }
    }
}

impl From<AppliedBeforeOutcomeRegions> for Applied {
    fn from(old: AppliedBeforeOutcomeRegions) -> Self {
        Applied {
            merge: old.merge,
            ..old.before.into()
        }
    }
}

impl From<AppliedBeforeMerges> for Applied {
    fn from(old: AppliedBeforeMerges) -> Self {
        Applied {
            locks: old.locks,
            ..old.before.into()
        }
    }
}

impl From<AppliedBeforeLocks> for Applied {
    fn from(old: AppliedBeforeLocks) -> Self {
        Applied {
            range: old.range,
            ..old.before.into()
        }
    }
}

/// etcd's `AlarmType_NOSPACE`.
pub const ALARM_NOSPACE: i32 = 1;
/// etcd's `AlarmType_CORRUPT`.
pub const ALARM_CORRUPT: i32 = 2;

impl Applied {
    /// Decodes a stored record, of this layout or an older one (before
    /// ranges, before auth, before alarms).
    pub fn decode(bytes: &[u8]) -> crate::Result<Applied> {
        if let Ok(a) = decode::<Applied>(bytes) {
            return Ok(a);
        }
        if let Ok(old) = decode::<AppliedBeforeOutcomeRegions>(bytes) {
            return Ok(old.into());
        }
        if let Ok(old) = decode::<AppliedBeforeMerges>(bytes) {
            return Ok(old.into());
        }
        if let Ok(old) = decode::<AppliedBeforeLocks>(bytes) {
            return Ok(old.into());
        }
        if let Ok(old) = decode::<AppliedBeforeRanges>(bytes) {
            return Ok(old.into());
        }
        if let Ok(old) = decode::<AppliedBeforeAuth>(bytes) {
            return Ok(old.into());
        }
        Ok(decode::<AppliedBeforeAlarms>(bytes)?.into())
    }

    /// Whether writes that add data are refused (NOSPACE raised).
    pub fn no_space(&self) -> bool {
        self.alarms.iter().any(|&(_, a)| a == ALARM_NOSPACE)
    }

    /// Whether every write is refused (CORRUPT raised: etcd's corrupt
    /// applier refuses puts, deletes, txns, compactions, lease grants and
    /// revokes until the alarm is disarmed).
    pub fn corrupt(&self) -> bool {
        self.alarms.iter().any(|&(_, a)| a == ALARM_CORRUPT)
    }
}

impl Default for Applied {
    /// A fresh region. Like etcd's, a fresh store is at revision 1, not 0:
    /// clients read revision 0 in a header as "no revision" (e.g. a progress
    /// notification at 0 is not recognised as one).
    fn default() -> Self {
        Self {
            last_applied: None,
            membership: StoredMembership::default(),
            current_revision: 1,
            compacted_revision: 0,
            tso_high_water: 0,
            members: BTreeMap::new(),
            regions: BTreeMap::new(),
            alarms: BTreeSet::new(),
            auth: cairn_auth::AuthState::default(),
            auth_fence: 0,
            range: RegionRange::default(),
            locks: cairn_mvcc::locks::Locks::default(),
            merge: merge::MergeState::default(),
            outcome_regions: BTreeMap::new(),
        }
    }
}

impl Applied {
    /// The revision up to which the region's history is final: its
    /// current revision, or, while a transaction across regions holds a
    /// lock here, the region's revision when the oldest lock was placed
    /// (its commit lands above that, maybe below the current revision).
    pub fn resolved(&self) -> i64 {
        self.locks.resolved(self.current_revision)
    }

    /// The MVCC revisions.
    pub fn revisions(&self) -> Revisions {
        Revisions {
            current: self.current_revision,
            compacted: self.compacted_revision,
        }
    }
}

/// What one applied entry changed in a data region: the region's change feed.
#[derive(Debug, Default)]
pub struct FeedBatch {
    /// Every event of the entry, in etcd's order: by revision, then the
    /// place of its op in the transaction, then key (the order history
    /// replays use too: `cairn_mvcc::Change`).
    pub events: Vec<Change>,
    /// The region's resolved revision after the entry: every write at or
    /// below it has been published (its current revision, below a lock
    /// held, or up to a close taken beside the log: `side_close`).
    pub resolved: i64,
    /// The replica's state was replaced (snapshot installed), the region
    /// split (its keys from the split key on are the child's now), froze,
    /// thawed or absorbed a region for a merge, or was stopped as absorbed
    /// ([`RegionShared::retire`]): subscribers must look at the regions
    /// again and re-read history instead of trusting the feed's
    /// continuity.
    pub reset: bool,
    /// With a reset: the entry absorbed the region named, frozen at the
    /// epoch named (its freeze's). Every write of the absorbed keys from
    /// then on comes through this region above `resolved`, and the frozen
    /// region wrote nothing since its freeze (`watch_hub::Carry`).
    pub absorbed: Option<(u64, u64)>,
}

/// How many applied entries the feed buffers for slow subscribers; a
/// subscriber further behind is told it lagged and catches up from MVCC.
const FEED_CAPACITY: usize = 1024;

/// What readers see of a region: its applied record, and which engine view
/// matches it.
struct Published {
    applied: Applied,
    /// While the apply task writes a batch, the engine as it was before the
    /// write — the state `applied` describes — for readers to use instead
    /// of the live engine, which may already hold part of the new state.
    /// `None` otherwise: the live engine matches `applied`. Held only for
    /// the write, so it does not keep a fjall snapshot (which pins a
    /// sequence number database-wide and stops compaction dropping any
    /// version written after it) alive in an idle region.
    before_write: Option<Arc<dyn EngineSnapshot>>,
    /// Closes learned beside the log (`side_close`): this replica's own,
    /// outside the replicated record.
    closed: side_close::SideClosed,
}

impl Published {
    /// What this replica reports as resolved: the record's resolved
    /// revision, or a side close taken up, whichever is higher.
    fn resolved(&self) -> i64 {
        self.closed.resolved(&self.applied)
    }

    /// The record's revisions, the current one raised to a side close
    /// taken up (see [`RegionShared::revisions`]).
    fn revisions(&self) -> Revisions {
        let mut r = self.applied.revisions();
        r.current = r.current.max(self.closed.floor(&self.applied));
        r
    }
}

/// State shared between a region's state machine and the node serving reads.
pub struct RegionShared {
    /// Region ID.
    pub region: u64,
    /// What the region holds.
    pub kind: RegionKind,
    engine: Arc<dyn Engine>,
    // parking_lot RwLock: held only to copy or swap the published state
    // (and by readers to take an engine view), never across an await or an
    // entry's execution.
    state: RwLock<Published>,
    feed: broadcast::Sender<Arc<FeedBatch>>,
    snapshots: Arc<SnapshotDir>,
    /// Meta region: the simple tokens registered on this member (memory
    /// only; see `cairn_auth::SimpleTokens`).
    pub tokens: parking_lot::Mutex<cairn_auth::SimpleTokens>,
    /// Told of each region a split applied here gives birth to (the host
    /// starts its replica) and each a merge applied here absorbs (the host
    /// stops it).
    births: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedSender<HostChange>>>,
    /// What this replica has applied of writes (for the split checker
    /// and the listing's write rate).
    load: load::WriteLoad,
    /// Set once a merge absorbed the region and the host stopped this
    /// replica: readers holding it must look at the regions again.
    retired: std::sync::atomic::AtomicBool,
    /// Snapshots this replica began to receive: openraft installs one over
    /// a conflicting log by dropping every entry past the commit index it
    /// knew, committed or not, and answers their proposers as if none had
    /// committed (`ForwardToLeader`). Counted as the first chunk arrives,
    /// before that, so a proposer can tell. A snapshot begun before an
    /// entry was handed over cannot hold it, so the proposer need not
    /// count it: its contents are fixed when the leader takes it, before
    /// it is sent (`StateMachine::current`), and a resend under its ID (named by
    /// its last index) holds the same.
    snapshots_begun: std::sync::atomic::AtomicU64,
    /// A data replica raises its node's marks as it publishes (see
    /// `marks`).
    marks: std::sync::OnceLock<Arc<marks::DataMarks>>,
    /// Held by the apply task from before an entry's engine write (synced,
    /// for some) until its feed batch is out, and by a side close across
    /// its take-up and its own batch: the feed tells its subscribers a
    /// resolved revision only after every event at or below it. (So a side
    /// close does not wait for it: `try_lock`.)
    feed_order: parking_lot::Mutex<()>,
    /// Where this replica's background sweep of compacted versions stands
    /// (`sweep`; `None` until read from the engine). Held across a step
    /// and across a snapshot install's write.
    sweep: parking_lot::Mutex<Option<sweep::Swept>>,
    /// The highest log index this replica knows committed, as its log
    /// store last saved it (`LogStore::report_committed`): Status's
    /// `raftIndex`, as etcd's is its committed index.
    committed: Arc<std::sync::atomic::AtomicU64>,
}

/// A data region's share of the engine, as its record `applied` says: its
/// keys, and the lease table if it holds the first key (the table stays
/// with the first region; see `cairn_mvcc::lease`). Every keyspace
/// operation of the region stays within it.
pub fn share_of(applied: &Applied) -> cairn_mvcc::Share {
    // A region frozen for a merge still holds its keys (its snapshots
    // carry them) until its target absorbs them.
    match &applied.merge.frozen {
        Some(f) => share_of_range(&f.range),
        None => share_of_range(&applied.range),
    }
}

/// [`share_of`] a record with data region range `range`.
pub fn share_of_range(range: &RegionRange) -> cairn_mvcc::Share {
    cairn_mvcc::Share {
        range: range.keys(),
        leases: range.start.is_empty(),
    }
}

impl RegionShared {
    /// A data region's share of the engine now (`None`: the meta region).
    pub fn share(&self) -> Option<cairn_mvcc::Share> {
        (self.kind == RegionKind::Data).then(|| self.with_applied(share_of))
    }

    /// The revision up to which this replica's history of the region is
    /// final (see [`Applied::resolved`]), raised by side closes taken up
    /// (`side_close`).
    pub fn resolved(&self) -> i64 {
        self.state.read().resolved()
    }

    /// Offers a close the region's leader proved beside the log
    /// (`side_close`): taken up now if this replica applied far enough,
    /// else once it has. When it raises the resolved revision, the feed
    /// says so (as a close in the log would).
    pub fn side_close(&self, close: SideClose) {
        let Some(_order) = self.feed_order.try_lock() else {
            // An entry is being applied and published: kept for it (or,
            // if it is past that point, for the next; the leader sends a
            // newer close within a second anyway). Waiting here would
            // hold the caller for as long as a synced write takes.
            let mut g = self.state.write();
            g.closed.keep(close);
            return;
        };
        let resolved = {
            let mut g = self.state.write();
            let g = &mut *g;
            if !g.closed.offer(close, &g.applied) {
                return;
            }
            g.resolved()
        };
        self.publish(FeedBatch {
            events: Vec::new(),
            resolved,
            reset: false,
            absorbed: None,
        });
    }

    /// The events of the region's keys at revisions `[from, to]`, from the
    /// engine as it is now (the feed's events once a lock that held them
    /// back goes).
    fn released_history(&self, from: i64, to: i64) -> crate::Result<Vec<Change>> {
        let range = self.range();
        let end = (!range.end.is_empty()).then_some(range.end);
        let span = cairn_mvcc::Span::Range(range.start, end);
        Ok(cairn_mvcc::history(
            &*self.engine.snapshot(),
            &span,
            from,
            to,
        )?)
    }

    /// A read view, with the first lock of a transaction across regions
    /// that a read of `spans` at `revision` must wait for, taken together
    /// (a lock released after the view was taken would leave its commit
    /// out of the view). A read of the newest state (`revision` 0) waits
    /// for every lock in its spans: the transaction may have committed at
    /// its primary — and been acknowledged — already, at a revision above
    /// this region's newest.
    pub fn read_view_locked(
        &self,
        spans: &[cairn_mvcc::locks::KeySpan],
        revision: i64,
    ) -> (
        Arc<dyn EngineSnapshot>,
        Revisions,
        RegionRange,
        Option<cairn_mvcc::locks::LockRef>,
    ) {
        let g = self.state.read();
        let a = &g.applied;
        let at = if revision > 0 { revision } else { i64::MAX };
        let lock = if a.locks.is_empty() {
            None
        } else {
            spans.iter().find_map(|s| a.locks.blocking_read(s, at))
        };
        (self.view(&g), g.revisions(), a.range.clone(), lock)
    }

    /// A view of the region holding the lease table, the revision it is
    /// complete to — its own newest, or `at_least` when that is higher
    /// (the caller caught the replica up to it) — and the first lock that
    /// may still commit at or below that revision and change a key or a
    /// lease record there, taken together (a backup reads the lease table
    /// from it: `cairn-store`'s `node::backup_view`). Besides the locks
    /// on keys, a revoke's lock, which may hold no key here.
    pub fn lease_table_view(
        &self,
        at_least: i64,
    ) -> (
        Arc<dyn EngineSnapshot>,
        i64,
        RegionRange,
        Option<cairn_mvcc::locks::LockRef>,
    ) {
        let g = self.state.read();
        let a = &g.applied;
        let at = g.revisions().current.max(at_least);
        let everything: cairn_mvcc::locks::KeySpan = (Vec::new(), Vec::new());
        let lock = a
            .locks
            .blocking_read(&everything, at)
            .or_else(|| a.locks.revoking_below(at));
        (self.view(&g), at, a.range.clone(), lock)
    }

    /// Marks this replica stopped for good (a merge absorbed its region)
    /// and tells its feed's subscribers to look at the regions again.
    pub fn retire(&self) {
        // After any sweep step in progress (none starts once retired): the
        // host forgets the region's records next.
        let sweep = self.sweep.lock();
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        drop(sweep);
        let resolved = self.resolved();
        self.publish(FeedBatch {
            events: Vec::new(),
            resolved,
            reset: true,
            absorbed: None,
        });
    }

    /// How many snapshots this replica began to receive (see the field).
    pub fn snapshots_begun(&self) -> u64 {
        self.snapshots_begun
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// True once [`RegionShared::retire`]d.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The keys this replica holds and the epoch naming them: its range,
    /// or while frozen for a merge the range it froze with (its keys stay
    /// in the engine, unchanged, until the merge ends).
    pub fn held_range(&self) -> RegionRange {
        self.with_applied(|a| {
            a.merge
                .frozen
                .as_ref()
                .map_or_else(|| a.range.clone(), |f| f.range.clone())
        })
    }

    /// The epoch of the freeze standing on this replica, if frozen for a
    /// merge.
    pub fn merge_frozen(&self) -> Option<u64> {
        self.with_applied(|a| a.merge.frozen.as_ref().map(|f| f.range.epoch))
    }

    /// While frozen for a merge: the freeze's epoch and the region it
    /// merges into.
    pub fn merge_frozen_into(&self) -> Option<(u64, u64)> {
        self.with_applied(|a| a.merge.frozen.as_ref().map(|f| (f.range.epoch, f.target)))
    }

    /// A data region's keys and epoch now.
    pub fn range(&self) -> RegionRange {
        self.with_applied(|a| a.range.clone())
    }

    /// What this replica has applied of writes since it started.
    pub fn write_load(&self) -> &load::WriteLoad {
        &self.load
    }

    /// Where to tell of regions born by splits and absorbed by merges
    /// applied here.
    pub fn on_change(&self, tx: tokio::sync::mpsc::UnboundedSender<HostChange>) {
        *self.births.lock() = Some(tx);
    }

    /// Loads a region's applied state from `engine` (default if new).
    pub fn load(
        region: u64,
        kind: RegionKind,
        engine: Arc<dyn Engine>,
        snapshots: Arc<SnapshotDir>,
    ) -> crate::Result<Arc<Self>> {
        let applied = match engine.get(&apply_key(region))? {
            Some(b) => Applied::decode(&b)?,
            None => Applied::default(),
        };
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Ok(Arc::new(Self {
            region,
            kind,
            engine,
            state: RwLock::new(Published {
                applied,
                before_write: None,
                closed: side_close::SideClosed::default(),
            }),
            feed,
            snapshots,
            tokens: parking_lot::Mutex::new(cairn_auth::SimpleTokens::default()),
            births: parking_lot::Mutex::new(None),
            load: load::WriteLoad::default(),
            retired: std::sync::atomic::AtomicBool::new(false),
            snapshots_begun: std::sync::atomic::AtomicU64::new(0),
            marks: std::sync::OnceLock::new(),
            feed_order: parking_lot::Mutex::new(()),
            sweep: parking_lot::Mutex::new(None),
            committed: Arc::default(),
        }))
    }

    /// Where the log store reports the committed index
    /// (`LogStore::report_committed`).
    pub fn committed_handle(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.committed.clone()
    }

    /// The highest log index known committed here (at least the applied
    /// one).
    pub fn committed_index(&self) -> u64 {
        let applied = self.with_applied(|a| a.last_applied.map_or(0, |l| l.index));
        self.committed
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(applied)
    }

    /// Raises `marks` to this data replica's state now and at every state
    /// it publishes from now on (once; the meta region reports nothing).
    pub fn report_to(&self, marks: Arc<marks::DataMarks>) {
        if self.kind != RegionKind::Data {
            return;
        }
        let g = self.state.read();
        marks.raise(&g.applied);
        // Set under the lock: no state is published between the two.
        let _ = self.marks.set(marks);
    }

    /// A consistent (storage view, revisions) pair for reads. Never waits
    /// for an entry being applied: it gets the state from before it.
    pub fn read_view(&self) -> (Arc<dyn EngineSnapshot>, Revisions) {
        let g = self.state.read();
        (self.view(&g), g.applied.revisions())
    }

    /// [`RegionShared::read_view`] with the current revision lowered to the
    /// resolved one (history replays stop there: above it, a commit of a
    /// transaction across regions may still land).
    pub fn read_view_resolved(&self) -> (Arc<dyn EngineSnapshot>, Revisions) {
        let g = self.state.read();
        let mut revs = g.applied.revisions();
        revs.current = g.resolved();
        (self.view(&g), revs)
    }

    /// [`RegionShared::read_view_in`], and the region's resolved revision
    /// with it: a replica's own snapshot of the region, complete up to
    /// that revision (a serializable read across regions reads it there).
    /// The revisions stay the region's own: MVCC reads a revision at or
    /// above the current one from the newest versions, so a read below
    /// the newest must not be told it is the newest.
    pub fn resolved_view_in(&self) -> ((Arc<dyn EngineSnapshot>, Revisions, RegionRange), i64) {
        let g = self.state.read();
        let view = (
            self.view(&g),
            g.applied.revisions(),
            g.applied.range.clone(),
        );
        (view, g.resolved())
    }

    /// [`RegionShared::read_view`], and the region's range that goes with
    /// it (a read must check its keys are still the region's).
    pub fn read_view_in(&self) -> (Arc<dyn EngineSnapshot>, Revisions, RegionRange) {
        let g = self.state.read();
        (
            self.view(&g),
            g.applied.revisions(),
            g.applied.range.clone(),
        )
    }

    /// The revisions, if no write is in progress: every batch written to
    /// the engine before this call is then in them (a view of the engine
    /// taken before it holds no compaction they lack). `None` while a
    /// write is in progress: ask again shortly.
    pub fn published_revisions(&self) -> Option<Revisions> {
        let g = self.state.read();
        g.before_write.is_none().then(|| g.applied.revisions())
    }

    /// The engine view matching `published`; the caller holds the lock, so
    /// the apply task cannot start or finish a write meanwhile.
    fn view(&self, published: &Published) -> Arc<dyn EngineSnapshot> {
        match &published.before_write {
            Some(before) => before.clone(),
            None => self.engine.snapshot(),
        }
    }

    /// A copy of the applied record.
    pub fn applied(&self) -> Applied {
        self.state.read().applied.clone()
    }

    /// `f` of the applied record, read in place (no copy; `f` runs under
    /// the read lock, so keep it short and synchronous).
    pub fn with_applied<R>(&self, f: impl FnOnce(&Applied) -> R) -> R {
        f(&self.state.read().applied)
    }

    /// The MVCC revisions, without copying the rest of the record; the
    /// current one raised to a side close taken up above it (`side_close`:
    /// nothing lies between them, and a read there answers with it).
    pub fn revisions(&self) -> Revisions {
        self.state.read().revisions()
    }

    /// Meta region: the TSO's persisted high-water mark.
    pub fn tso_high_water(&self) -> i64 {
        self.state.read().applied.tso_high_water
    }

    /// The last applied log index (0 if none).
    pub fn applied_index(&self) -> u64 {
        self.state
            .read()
            .applied
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// True while someone here is subscribed to the change feed.
    pub fn watched(&self) -> bool {
        self.feed.receiver_count() > 0
    }

    /// Subscribes to the change feed. Subscribe *before* reading the state
    /// you catch up from, so nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedBatch>> {
        self.feed.subscribe()
    }

    fn publish(&self, batch: FeedBatch) {
        // No subscribers is fine: nobody is watching.
        let _ = self.feed.send(Arc::new(batch));
    }

    /// The engine under this region.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Apply task: writes `batch`, which holds `next`'s record, and makes
    /// `next` the published state. Until the batch is in the engine readers
    /// keep the state from before it; then both change under one lock.
    /// `after_write` runs between the two (the crash points). On an error the
    /// old state stays published: the replica stops.
    fn write_and_publish(
        &self,
        batch: WriteBatch,
        durability: Durability,
        next: Applied,
        after_write: impl FnOnce(),
    ) -> crate::Result<()> {
        // Nothing else writes what the published record describes (a
        // sweep deletes only versions no read may ask for), so a view
        // taken now matches it.
        let before = self.engine.snapshot();
        self.state.write().before_write = Some(before);
        let started = std::time::Instant::now();
        self.engine.write(batch, durability)?;
        if durability == Durability::Sync {
            crate::metrics::BACKEND_COMMIT.observe(started.elapsed().as_secs_f64());
        }
        after_write();
        let old = {
            let mut g = self.state.write();
            let old = std::mem::replace(&mut g.applied, next);
            // A side close waiting for this entry is taken up with it (the
            // feed batch published after this write reports it).
            let g = &mut *g;
            g.closed.fold(&g.applied);
            if let Some(marks) = self.marks.get() {
                // Under the lock: whoever sees the new state sees the marks
                // raised.
                marks.raise(&g.applied);
            }
            (old, g.before_write.take())
        };
        // Released after the lock: closing a fjall snapshot does its own
        // bookkeeping.
        drop(old);
        Ok(())
    }
}

/// A write stamped `ts` in one region of several, at or below the
/// region's revision: refused as from a stale term (nothing changes; the
/// proposer fetches new timestamps). Its timestamp came from a stale TSO
/// (a meta leader paused past an election): lifting it to the next
/// revision, as one region of the whole keyspace does, could give it a
/// revision another region's write has, or one above the newest timestamp
/// a read then takes. (Closes, compactions and commits across regions
/// move a region's revision only up to timestamps whose leader first
/// answered every write it stamped at or below them, and stamps none there
/// again: a fresh TSO never stamps one this low.)
fn stale_stamp(state: &Applied, ts: i64) -> Option<(WriteBatch, Reply)> {
    let whole = state.range.is_whole();
    (!whole && ts <= state.current_revision).then(|| (WriteBatch::new(), Reply::StaleTerm))
}

/// Records `revs` as the applied state of a region that has applied no
/// log entry: a store restored from a backup (`cairn snapshot restore`),
/// its data already in `engine`. Raft then starts from nothing on top of
/// it, and the first entries applied continue from these revisions.
pub fn seed_restored(
    engine: &dyn cairn_storage::Engine,
    region: u64,
    revs: cairn_mvcc::Revisions,
) -> crate::Result<()> {
    seed(
        engine,
        region,
        Applied {
            current_revision: revs.current,
            compacted_revision: revs.compacted,
            ..Applied::default()
        },
    )
}

/// Records a restored auth store, and a TSO high-water mark at the
/// restored revision (so new revisions are TSO timestamps above every
/// restored one), as `region`'s (the meta region's) applied state, before
/// the restored member first starts.
pub fn seed_restored_meta(
    engine: &dyn cairn_storage::Engine,
    region: u64,
    auth: cairn_auth::AuthState,
    tso_high_water: i64,
) -> crate::Result<()> {
    seed(
        engine,
        region,
        Applied {
            auth,
            tso_high_water,
            ..Applied::default()
        },
    )
}

/// Records an empty replica of data region `range`'s region, created
/// because its leader sent this node a message (this node missed the
/// split that made the region): nothing applied, so Raft can only install
/// a snapshot. Fails if the region already has a record (a split applied
/// here wrote it; that replica is to be started instead).
pub fn seed_empty(
    engine: &dyn cairn_storage::Engine,
    region: u64,
    range: RegionRange,
) -> crate::Result<()> {
    seed(
        engine,
        region,
        Applied {
            range,
            ..Applied::default()
        },
    )
}

fn seed(engine: &dyn cairn_storage::Engine, region: u64, applied: Applied) -> crate::Result<()> {
    if engine.get(&apply_key(region))?.is_some() {
        return Err(crate::Error::Io(format!(
            "region {region} already has applied state"
        )));
    }
    let mut b = WriteBatch::new();
    b.put(apply_key(region), encode(&applied)?);
    engine.write(b, Durability::Sync)?;
    Ok(())
}

/// The regions that have an applied record in `engine` (every region a
/// replica here has applied something of, or a split here gave birth to),
/// by ID.
pub fn stored_regions(engine: &dyn cairn_storage::Engine) -> crate::Result<Vec<u64>> {
    use std::ops::Bound;
    let lo = Key::ApplyState {
        region: 0,
        tag: b"",
    }
    .encode();
    let hi = vec![lo[0] + 1];
    let mut out = Vec::new();
    for key in engine.scan_keys(Bound::Included(lo), Bound::Excluded(hi)) {
        let key = key?;
        if let Some(id) = key.get(1..9) {
            let id = u64::from_be_bytes(id.try_into().expect("eight bytes"));
            if key.ends_with(b"applied") && key.len() == 9 + b"applied".len() {
                out.push(id);
            }
        }
    }
    out.dedup();
    Ok(out)
}

/// Every region a merge absorbed, as the records of the data regions in
/// `engine` say (not the meta region's, `meta`: its directory drops a
/// region once any member absorbed it, maybe before this member's target
/// did — which then still needs the source's record). A node that
/// restarts before forgetting one of them must not host it.
pub fn absorbed_regions(
    engine: &dyn cairn_storage::Engine,
    meta: u64,
) -> crate::Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for id in stored_regions(engine)?.into_iter().filter(|id| *id != meta) {
        if let Some(b) = engine.get(&apply_key(id))? {
            out.extend(Applied::decode(&b)?.merge.absorbed);
        }
    }
    Ok(out)
}

/// Deletes every record of region `region` on this node — its Raft log
/// and hard state, its applied record — but none of its keys (the region
/// that absorbed it holds them now). Its Raft must be stopped first.
pub fn forget_region(engine: &dyn cairn_storage::Engine, region: u64) -> crate::Result<()> {
    use cairn_storage::keys::Space;
    let mut b = WriteBatch::new();
    for space in [
        Space::RaftLog,
        Space::RaftState,
        Space::ApplyState,
        Space::Region,
    ] {
        let at = |id: u64| [&[space as u8][..], &id.to_be_bytes()].concat();
        b.delete_range(at(region), at(region + 1));
    }
    engine.write(b, Durability::Sync)?;
    Ok(())
}

/// Each region with an applied record in `engine`, with the range that
/// record gives it (data regions; the meta region's is meaningless).
pub fn stored_ranges(engine: &dyn cairn_storage::Engine) -> crate::Result<Vec<(u64, RegionRange)>> {
    let mut out = Vec::new();
    for id in stored_regions(engine)? {
        if let Some(b) = engine.get(&apply_key(id))? {
            // A region frozen for a merge still holds its keys here.
            let a = Applied::decode(&b)?;
            out.push((id, a.merge.frozen.map_or(a.range, |f| f.range)));
        }
    }
    Ok(out)
}

/// The key ranges, overlapping the range `applied` holds, of the data
/// regions recorded in `engine` (other than `region`) at a higher epoch:
/// later in the history of splits and merges than `applied`, so their keys
/// are theirs, whatever `applied` (an older state) says. Epochs order
/// overlapping ranges: a split moves both halves' epochs past the
/// parent's, and an absorb the target's past both.
pub fn newer_here(
    engine: &dyn cairn_storage::Engine,
    region: u64,
    applied: &Applied,
) -> crate::Result<Vec<cairn_storage::keys::KeyRange>> {
    let held = applied
        .merge
        .frozen
        .as_ref()
        .map_or(&applied.range, |f| &f.range);
    Ok(stored_ranges(engine)?
        .into_iter()
        .filter(|(id, r)| {
            *id != region && *id != crate::META_REGION && r.epoch > held.epoch && r.overlaps(held)
        })
        .map(|(_, r)| r.keys())
        .collect())
}

fn apply_key(region: u64) -> Vec<u8> {
    Key::ApplyState {
        region,
        tag: b"applied",
    }
    .encode()
}

/// A region's openraft state machine.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<RegionShared>,
}

impl StateMachine {
    /// The state machine over `shared`.
    pub fn new(shared: Arc<RegionShared>) -> Self {
        Self { shared }
    }

    /// The freeze epoch of this node's replica of region `source`, as its
    /// record in the engine says (`None`: not frozen, or no record).
    fn source_frozen_here(&self, source: u64) -> crate::Result<Option<u64>> {
        Ok(self
            .engine_record(source)?
            .and_then(|a| a.merge.frozen.map(|f| f.range.epoch)))
    }

    /// Region `region`'s record in this node's engine, if any.
    fn engine_record(&self, region: u64) -> crate::Result<Option<Applied>> {
        match self.shared.engine.get(&apply_key(region))? {
            Some(b) => Ok(Some(Applied::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Waits until this node's replica of `source` has applied the freeze
    /// at `epoch`. The host proposes the absorb only once every member
    /// applied it (synced), so this normally returns at once; a replica
    /// still behind catches up through the source's own Raft.
    async fn await_source_frozen(&self, source: u64, epoch: u64) -> crate::Result<()> {
        let started = std::time::Instant::now();
        let mut warned = started;
        loop {
            match self.engine_record(source)? {
                Some(a) if a.merge.frozen.as_ref().map(|f| f.range.epoch) == Some(epoch) => break,
                Some(_) => {}
                None => {
                    // Forgotten here (or never hosted): its keys here are
                    // not known to be its final ones. Stop rather than
                    // absorb them.
                    return Err(crate::Error::Io(format!(
                        "absorbing region {source}: no record of it on this member"
                    )));
                }
            }
            if warned.elapsed() >= std::time::Duration::from_secs(10) {
                warned = std::time::Instant::now();
                tracing::warn!(
                    region = self.shared.region,
                    source,
                    waited = ?started.elapsed(),
                    "absorbing a region whose replica here has not applied its freeze: waiting"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Compacts the region's history at `revision`: records it (reads
    /// below it are refused from now on); this replica's background sweep
    /// drops the versions (`sweep`). In one region of
    /// several, a revision above the region's own moves it up — only if
    /// `settled` (proposed as `Command::InTerm` by a leader that first
    /// checked `revision` against the TSO and settled its writes there);
    /// otherwise it changes nothing and answers `StaleTerm`. (Unchecked, a
    /// client's revision far in the future would raise the region past
    /// every timestamp to come, and `stale_stamp` would refuse its writes.)
    fn compact(
        &self,
        revision: i64,
        settled: bool,
        state: &mut Applied,
    ) -> crate::Result<(WriteBatch, Reply)> {
        // Only a data region holds versions (and only its own).
        if self.shared.share().is_none() {
            return Ok((
                WriteBatch::new(),
                Reply::Invalid("compaction of the meta region".into()),
            ));
        };
        if state.merge.frozen.is_some() {
            // Frozen for a merge (a settled compaction wrapped in
            // `InTerm` gets here past the freeze check): its keys stay as
            // frozen on every member, whichever stops it first.
            return Ok((WriteBatch::new(), Reply::WrongRegion(state.range.clone())));
        }
        if revision > state.resolved() {
            // Locks hold revisions above `resolved` open (a commit
            // may land below the current revision): compact once
            // they are gone.
            if let Some(lock) = state.locks.any() {
                return Ok((WriteBatch::new(), Reply::Locked(lock)));
            }
        }
        if !state.range.is_whole() && revision > state.current_revision {
            if !settled {
                // Not settled at `revision` by its leader (one that
                // routed it while the region was still whole): nothing
                // changed, the host asks again.
                return Ok((WriteBatch::new(), Reply::StaleTerm));
            }
            // One region of several, settled at `revision` by its
            // leader in this term (it answered every write it stamped
            // at or below it, and stamps none there again): nothing
            // can land below it now, so the region's revision moves up
            // to it, as by a closed timestamp.
            state.current_revision = revision;
        }
        // The compaction is its revision; a background sweep drops the
        // versions (`sweep`), never the apply path.
        match cairn_mvcc::compacted(revision, state.revisions()) {
            Ok(revs) => {
                fail::fail_point!(crate::failpoints::COMPACT_BEFORE_APPLY);
                state.compacted_revision = revs.compacted;
                Ok((
                    WriteBatch::new(),
                    Reply::Compacted {
                        current: revs.current,
                    },
                ))
            }
            Err(e) => reject(e),
        }
    }

    /// Applies one command to `state`, reading through `engine` (the live
    /// engine, or an overlay holding earlier writes of the same entry);
    /// returns the writes and the reply.
    /// `term` is the term of the log entry being applied.
    fn execute(
        &self,
        cmd: Command,
        term: u64,
        state: &mut Applied,
        engine: &dyn EngineSnapshot,
        events: &mut Vec<Change>,
    ) -> crate::Result<(WriteBatch, Reply)> {
        if state.merge.frozen.is_some() && !merge::allowed_while_frozen(&cmd) {
            // Frozen for a merge: its keys and revisions stay as frozen.
            return Ok((WriteBatch::new(), Reply::WrongRegion(state.range.clone())));
        }
        match cmd {
            // Data regions: refused behind a newer fence. The meta region
            // (auth changes, tokens): refused if the auth store changed at
            // all since the check — optimistic concurrency, so two changes
            // checked against the same state cannot both pass.
            Command::Checked { auth_revision, .. }
            | Command::CheckedLease { auth_revision, .. }
                if (auth_revision < state.auth_fence && !crate::planted::on("unfenced-auth"))
                    || (self.shared.kind == RegionKind::Meta
                        && auth_revision != state.auth.revision) =>
            {
                Ok((
                    WriteBatch::new(),
                    Reply::Rejected(cairn_mvcc::Rejection::AuthOldRevision),
                ))
            }
            Command::Checked { cmd, .. } => self.execute(*cmd, term, state, engine, events),
            Command::CheckedLease { writable, cmd, .. } => {
                for id in
                    txn_locks::leases_committed(state, &cmd).unwrap_or_else(|| leases_written(&cmd))
                {
                    let (start, end) = (&state.range.start, &state.range.end);
                    let keys = lease::attached_in(engine, id, start, end)?;
                    if !keys.iter().all(|k| writable.allows(k)) {
                        return Ok((
                            WriteBatch::new(),
                            Reply::Rejected(cairn_mvcc::Rejection::PermissionDenied),
                        ));
                    }
                }
                self.execute(*cmd, term, state, engine, events)
            }
            Command::AuthFence { revision } => {
                state.auth_fence = state.auth_fence.max(revision);
                Ok((WriteBatch::new(), Reply::Done))
            }
            Command::Auth(c) => {
                let outcome = state.auth.apply(&c).map(|()| state.auth.revision);
                if outcome.is_ok() {
                    let mut tokens = self.shared.tokens.lock();
                    match &c {
                        cairn_auth::AuthCmd::Disable => tokens.clear(),
                        cairn_auth::AuthCmd::UserDelete { name }
                        | cairn_auth::AuthCmd::UserChangePassword { name, .. } => {
                            tokens.forget_user(name)
                        }
                        _ => {}
                    }
                }
                Ok((WriteBatch::new(), Reply::Auth(outcome)))
            }
            Command::AuthToken { token, user } => {
                // Only for a user that still exists with auth on: a token
                // minted just before a delete or a disable is void.
                let outcome = if state.auth.enabled && state.auth.users.contains_key(&user) {
                    self.shared
                        .tokens
                        .lock()
                        .insert(token, user, std::time::Instant::now());
                    Ok(state.auth.revision)
                } else {
                    Err(cairn_auth::AuthError::AuthFailed)
                };
                Ok((WriteBatch::new(), Reply::Auth(outcome)))
            }
            Command::InTerm { term: fetched, cmd } => {
                if fetched == term {
                    // A compaction in its leader's term: that leader
                    // settled the region at its revision (see `compact`).
                    // (Refused on a corrupt member like a plain one.)
                    if let Command::Compact { revision } = *cmd {
                        if state.corrupt() {
                            return Ok((
                                WriteBatch::new(),
                                Reply::Rejected(cairn_mvcc::Rejection::Corrupt),
                            ));
                        }
                        return self.compact(revision, true, state);
                    }
                    return self.execute(*cmd, term, state, engine, events);
                }
                let reply = match *cmd {
                    Command::Batch(cmds) => Reply::Batch(vec![Reply::StaleTerm; cmds.len()]),
                    _ => Reply::StaleTerm,
                };
                Ok((WriteBatch::new(), reply))
            }
            Command::Close { ts } => {
                state.current_revision = state.current_revision.max(ts);
                Ok((WriteBatch::new(), Reply::Revision(state.current_revision)))
            }
            Command::Batch(cmds) => {
                let mut overlay = Overlay::new(engine);
                let mut replies = Vec::with_capacity(cmds.len());
                for c in cmds {
                    let (b, r) = self.execute(c, term, state, &overlay, events)?;
                    overlay.write(b)?;
                    replies.push(r);
                }
                Ok((overlay.into_batch(), Reply::Batch(replies)))
            }
            Command::Txn { .. }
            | Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. }
            | Command::Prewrite { .. }
                if state.corrupt() =>
            {
                Ok((
                    WriteBatch::new(),
                    Reply::Rejected(cairn_mvcc::Rejection::Corrupt),
                ))
            }
            Command::Txn { ts, txn } => {
                let req = match TxnRequest::decode(txn.as_slice()) {
                    Ok(r) => r,
                    Err(e) => return Ok((WriteBatch::new(), Reply::Invalid(e.to_string()))),
                };
                if let Err(e) = cairn_mvcc::validate_txn(
                    &req,
                    Limits {
                        max_txn_ops: usize::MAX,
                    },
                ) {
                    return reject(e);
                }
                if !split::txn_within(&req, &state.range) {
                    return Ok((WriteBatch::new(), Reply::WrongRegion(state.range.clone())));
                }
                let lease_table = state.range.start.is_empty();
                if !lease_table && !leases_put(&req).is_empty() {
                    // The lease table is in the first region: a put with a
                    // lease elsewhere is a transaction across regions (the
                    // host routes it so; this is a stale route).
                    return Ok((
                        WriteBatch::new(),
                        Reply::Rejected(cairn_mvcc::Rejection::LeaseOutsideFirstRegion),
                    ));
                }
                if state.no_space() && cairn_mvcc::has_put(&req) {
                    return Ok((
                        WriteBatch::new(),
                        Reply::Rejected(cairn_mvcc::Rejection::NoSpace),
                    ));
                }
                if let Some(lock) = txn_locks::txn_conflict(state, &req) {
                    return Ok((WriteBatch::new(), Reply::Locked(lock)));
                }
                let revs = state.revisions();
                if let Some(stale) = stale_stamp(state, ts) {
                    return Ok(stale);
                }
                let rev = ts.max(revs.current + 1);
                let stored = StoredLeases(engine);
                let leases: &dyn cairn_mvcc::LeaseView = if lease_table {
                    &stored
                } else {
                    &cairn_mvcc::NoLeases
                };
                // In one region of several, the store is at `rev - 1` (a
                // TSO stamp: above every revision acknowledged before),
                // though this region's keys last changed at its own
                // revision: a read in the Txn at a revision another region
                // wrote is served, as etcd serves it (no lock on the Txn's
                // keys, checked above, may commit in between), and its
                // header is the store's, not this region's older one.
                let whole = state.range.is_whole();
                let evaluated = if whole {
                    revs
                } else {
                    cairn_mvcc::Revisions {
                        current: revs.current.max(rev - 1),
                        ..revs
                    }
                };
                match cairn_mvcc::apply_txn(engine, &req, rev, evaluated, leases) {
                    Ok(mut out) => {
                        if out.batch.is_empty() && !whole {
                            // Wrote nothing, in one region of several: its
                            // revision is not the store's. The answer
                            // carries this write's stamp (a TSO timestamp:
                            // above every write acknowledged before it),
                            // the region's revision stays.
                            cairn_mvcc::set_header_revision(&mut out.response, rev);
                        }
                        if out.revisions.current > evaluated.current {
                            // It wrote (else the region's revision stays).
                            state.current_revision = out.revisions.current;
                        }
                        events.extend(out.events);
                        self.shared.load.record(&out.batch);
                        Ok((out.batch, Reply::Txn(out.response.encode_to_vec())))
                    }
                    Err(e) => reject(e),
                }
            }
            Command::Compact { revision } => self.compact(revision, false, state),
            Command::LeaseGrant { .. } if state.no_space() => Ok((
                WriteBatch::new(),
                Reply::Rejected(cairn_mvcc::Rejection::NoSpace),
            )),
            Command::Alarm {
                activate,
                member,
                alarm,
            } => {
                let changed = if activate {
                    state.alarms.insert((member, alarm))
                } else {
                    state.alarms.remove(&(member, alarm))
                };
                let list = if changed {
                    vec![(member, alarm)]
                } else {
                    Vec::new()
                };
                Ok((WriteBatch::new(), Reply::Alarms(list)))
            }
            Command::LeaseGrant { id, ttl } => match lease::grant(engine, id, ttl) {
                Ok(b) => Ok((b, Reply::Revision(state.current_revision))),
                Err(e) => reject(e),
            },
            Command::LeaseCheckpoint { id, remaining } => Ok((
                lease::checkpoint(engine, &[(id, remaining)])?,
                Reply::Revision(state.current_revision),
            )),
            Command::LeaseCheckpoints {
                term: decided,
                list,
            } => {
                if decided != 0 && decided != term {
                    return Ok((WriteBatch::new(), Reply::Done)); // stale figures
                }
                Ok((
                    lease::checkpoint(engine, &list)?,
                    Reply::Revision(state.current_revision),
                ))
            }
            Command::LeaseExpire { term: decided, .. } if decided != term => {
                Ok((WriteBatch::new(), Reply::Done)) // a stale expiry
            }
            Command::LeaseRevoke { id, ts } | Command::LeaseExpire { id, ts, .. } => {
                if let Some(lock) = txn_locks::lease_conflict(state, engine, id)? {
                    return Ok((WriteBatch::new(), Reply::Locked(lock)));
                }
                if !state.range.start.is_empty() {
                    return Ok((
                        WriteBatch::new(),
                        Reply::Invalid("a lease revoked outside the lease table's region".into()),
                    ));
                }
                let range = &state.range;
                if lease::attached_keys(engine, id)?
                    .iter()
                    .any(|k| !range.contains(k))
                {
                    // Keys in other regions: a revoke across regions (the
                    // host runs it as a transaction, its lease claimed).
                    return Ok((
                        WriteBatch::new(),
                        Reply::Rejected(cairn_mvcc::Rejection::LeaseOutsideFirstRegion),
                    ));
                }
                let revs = state.revisions();
                if let Some(stale) = stale_stamp(state, ts) {
                    return Ok(stale);
                }
                let rev = ts.max(revs.current + 1);
                match lease::revoke(engine, id, rev, revs) {
                    Ok(out) => {
                        state.current_revision = out.revisions.current;
                        events.extend(out.events);
                        Ok((out.batch, Reply::Revision(state.current_revision)))
                    }
                    Err(e) => reject(e),
                }
            }
            Command::TsoWindow { high_water } => {
                state.tso_high_water = state.tso_high_water.max(high_water);
                Ok((WriteBatch::new(), Reply::Done))
            }
            Command::SetMember(m) => {
                state.members.insert(m.id, m);
                Ok((WriteBatch::new(), Reply::Done))
            }
            Command::SetRegion(r) => {
                // A directory entry only moves forward: a publisher that
                // read an older epoch must not undo a newer one.
                // (A region absorbed by a merge never comes back.)
                let newer = state
                    .regions
                    .get(&r.id)
                    .is_none_or(|old| old.epoch <= r.epoch);
                if newer && !state.merge.absorbed.contains(&r.id) {
                    state.regions.insert(r.id, r);
                }
                Ok((WriteBatch::new(), Reply::Done))
            }
            Command::Prewrite { .. }
            | Command::CommitLocked { .. }
            | Command::RollbackLocked { .. }
            | Command::ResolvePrimary { .. }
            | Command::ForgetOutcome { .. }
                if self.shared.kind != RegionKind::Data =>
            {
                Ok((
                    WriteBatch::new(),
                    Reply::Invalid("a transaction lock in the meta region".into()),
                ))
            }
            Command::Prewrite {
                start_ts,
                primary,
                regions,
                spans,
                txn,
                leases,
            } => Ok((
                WriteBatch::new(),
                txn_locks::prewrite(
                    state, start_ts, primary, regions, spans, txn, leases, engine, term,
                )?,
            )),
            Command::CommitLocked {
                start_ts,
                commit_ts,
                path,
            } => {
                let (batch, reply) = txn_locks::commit(
                    state,
                    self.shared.region,
                    start_ts,
                    commit_ts,
                    path,
                    engine,
                    events,
                    term,
                )?;
                self.shared.load.record(&batch);
                Ok((batch, reply))
            }
            Command::RollbackLocked { start_ts } => {
                Ok((WriteBatch::new(), txn_locks::rollback(state, start_ts)))
            }
            Command::ResolvePrimary { start_ts } => Ok((
                WriteBatch::new(),
                txn_locks::resolve_primary(state, start_ts),
            )),
            Command::ForgetOutcome { start_ts } => {
                Ok((WriteBatch::new(), txn_locks::forget(state, start_ts)))
            }
            Command::Split { .. } if self.shared.kind != RegionKind::Data => Ok((
                WriteBatch::new(),
                Reply::Invalid("split of the meta region".into()),
            )),
            Command::Split { at, .. } if state.locks.at_or_above(&at).is_some() => {
                // A lock on keys the child would hold stays with its
                // region until it is gone; one below the split key (a
                // lease claim, say) stays in the parent, which keeps its
                // keys and the lease table.
                let first = state.locks.at_or_above(&at);
                Ok((WriteBatch::new(), first.map_or(Reply::Done, Reply::Locked)))
            }
            Command::Split { at, child, epoch } => {
                let mut batch = WriteBatch::new();
                let recorded = engine.get(&apply_key(child))?.is_some();
                let reply = split::split(state, at, child, epoch, recorded, &mut batch)?;
                Ok((batch, reply))
            }
            Command::DropRegion { id } if self.shared.kind == RegionKind::Meta => {
                state.regions.remove(&id);
                state.merge.absorbed.insert(id);
                Ok((WriteBatch::new(), Reply::Done))
            }
            Command::PrepareMerge { .. }
            | Command::CommitMerge { .. }
            | Command::AbandonMerge { .. }
            | Command::RollbackMerge { .. }
            | Command::DropRegion { .. }
                if self.shared.kind != RegionKind::Data =>
            {
                Ok((
                    WriteBatch::new(),
                    Reply::Invalid("a merge command in the wrong kind of region".into()),
                ))
            }
            Command::PrepareMerge {
                target,
                target_epoch,
                epoch,
            } => Ok((
                WriteBatch::new(),
                merge::prepare(state, target, target_epoch, epoch),
            )),
            Command::CommitMerge { source, freeze } => {
                if let Err(refused) =
                    merge::commit_check(state, self.shared.region, source, &freeze)
                {
                    return Ok((WriteBatch::new(), refused));
                }
                // `apply` waited for this replica of `source` to apply the
                // freeze; a replica here that has not (a wrapped command
                // `apply` did not look into) must not absorb stale keys.
                if self.source_frozen_here(source)? != Some(freeze.range.epoch) {
                    return Err(crate::Error::Io(format!(
                        "merging region {source}: its replica here has not applied the freeze"
                    )));
                }
                Ok((WriteBatch::new(), merge::commit(state, source, freeze)))
            }
            Command::AbandonMerge {
                source,
                target_epoch,
            } => Ok((
                WriteBatch::new(),
                merge::abandon(state, source, target_epoch),
            )),
            Command::RollbackMerge { epoch } => {
                merge::rollback(state, epoch);
                Ok((WriteBatch::new(), Reply::Done))
            }
            Command::DropRegion { .. } => Ok((
                WriteBatch::new(),
                Reply::Invalid("a directory change in a data region".into()),
            )),
            Command::LeaseUnindex { id, detached } => {
                if self.shared.kind != RegionKind::Data || !state.range.start.is_empty() {
                    return Ok((
                        WriteBatch::new(),
                        Reply::Invalid("a lease index trimmed outside the lease table".into()),
                    ));
                }
                Ok((lease::unindex(engine, id, &detached)?, Reply::Done))
            }
        }
    }
}

/// The leases a write puts keys on or revokes (etcd's `checkLeasePuts`
/// looks at each): a revoke's lease; every put's lease in a transaction,
/// both branches, nested ones included. An undecodable transaction names
/// none (its apply answers `Invalid`).
pub fn leases_written(cmd: &Command) -> Vec<i64> {
    let mut out = match cmd {
        Command::LeaseRevoke { id, .. } => vec![*id],
        Command::Prewrite { leases, .. } => leases
            .attach
            .iter()
            .chain(&leases.revoke)
            .copied()
            .collect(),
        Command::Txn { txn, .. } => TxnRequest::decode(txn.as_slice())
            .map(|t| leases_put(&t))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// The leases a transaction puts keys on (both branches, nested ones
/// included; a put keeping its lease by `ignore_lease` names none).
pub fn leases_put(t: &TxnRequest) -> Vec<i64> {
    fn walk(t: &TxnRequest, out: &mut Vec<i64>) {
        use cairn_api::etcdserverpb::request_op::Request as Op;
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Op::RequestPut(p)) if p.lease != 0 && !p.ignore_lease => out.push(p.lease),
                Some(Op::RequestTxn(inner)) => walk(inner, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(t, &mut out);
    out
}

/// Deterministic rejections become replies; anything else is a storage fault.
fn reject(e: cairn_mvcc::Error) -> crate::Result<(WriteBatch, Reply)> {
    match e {
        cairn_mvcc::Error::Rejected(r) => Ok((WriteBatch::new(), Reply::Rejected(r))),
        other => Err(other.into()),
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snapshot_meta(region: u64, applied: &Applied) -> SnapshotMeta<NodeId, BasicNode> {
    let last = applied.last_applied;
    SnapshotMeta {
        last_log_id: last,
        last_membership: applied.membership.clone(),
        snapshot_id: format!("r{region}-{}", last.map_or(0, |l| l.index)),
    }
}

impl StateMachine {
    /// The region's current state as a snapshot: its meta and
    /// [`SnapshotData`] that writes the bytes only if they are read. The
    /// engine view and the applied record are taken as
    /// [`RegionShared::read_view`] takes them, so they match.
    fn current(&self) -> (Applied, Snapshot<TypeConfig>) {
        let shared = &self.shared;
        let (view, applied) = {
            let g = shared.state.read();
            (shared.view(&g), g.applied.clone())
        };
        let snapshot = Snapshot {
            meta: snapshot_meta(shared.region, &applied),
            snapshot: Box::new(SnapshotData::unwritten(Source {
                applied: applied.clone(),
                view,
                share: (shared.kind == RegionKind::Data).then(|| share_of(&applied)),
                dir: shared.snapshots.clone(),
            })),
        };
        (applied, snapshot)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// openraft builds a snapshot so it can purge the log up to it. The
    /// state is already in the engine; this makes it durable (one fsync of
    /// the engine's journal: applies are written unsynced, the log is what
    /// made them durable until now) and writes no copy — see
    /// [`crate::snapshot_data`].
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (_, snapshot) = self.current();
        fail::fail_point!(crate::failpoints::SNAPSHOT_BUILD);
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let synced = engine.sync();
            crate::metrics::BACKEND_COMMIT.observe(started.elapsed().as_secs_f64());
            synced
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok(self
            .shared
            .with_applied(|a| (a.last_applied, a.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let mut events = Vec::new();
            // A copy, not a lock: this task is the record's only writer.
            let mut next = self.shared.applied();
            let born = match &entry.payload {
                EntryPayload::Normal(Command::Split { child, .. }) => Some(*child),
                _ => None,
            };
            let absorbs = match &entry.payload {
                EntryPayload::Normal(Command::CommitMerge { source, freeze })
                    if merge::commit_check(&next, self.shared.region, *source, freeze).is_ok() =>
                {
                    // The keys in the engine must be the source's final
                    // ones: wait for this node's replica of it to apply
                    // the freeze (see `merge`).
                    self.await_source_frozen(*source, freeze.range.epoch)
                        .await
                        .map_err(sm_err)?;
                    Some((*source, freeze.range.epoch))
                }
                _ => None,
            };
            let thaws = match &entry.payload {
                EntryPayload::Normal(Command::RollbackMerge { epoch }) => next
                    .merge
                    .frozen
                    .as_ref()
                    .is_some_and(|f| f.range.epoch == *epoch),
                _ => false,
            };
            let (mut batch, reply) = match entry.payload {
                EntryPayload::Blank => (WriteBatch::new(), Reply::Done),
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                    (WriteBatch::new(), Reply::Done)
                }
                EntryPayload::Normal(cmd) => self
                    .execute(
                        cmd,
                        entry.log_id.leader_id.term,
                        &mut next,
                        &*self.shared.engine,
                        &mut events,
                    )
                    .map_err(sm_err)?,
            };
            if let (Some(child), Reply::Done) = (born, &reply) {
                // (Not for a child recorded here before: see `split`.)
                let recorded = self.shared.engine.get(&apply_key(child)).map_err(sm_err)?;
                if recorded.is_none() {
                    split::seed_leader(&mut batch, child, entry.log_id.leader_id, &next)
                        .map_err(sm_err)?;
                }
            }
            next.last_applied = Some(entry.log_id);
            // What the feed may publish: every revision up to the new
            // resolved one. Events above it (a write beside a lock, whose
            // transaction may still commit below them) wait in MVCC
            // history until the lock goes.
            let was_resolved = self
                .shared
                .with_applied(|a| (a.resolved(), a.current_revision));
            let resolved = next.resolved();
            let held_back = was_resolved.0 < was_resolved.1;
            if held_back || resolved < next.current_revision {
                events.retain(|c| c.revision <= resolved);
            }
            fail::fail_point!(crate::failpoints::BEFORE_APPLY);
            batch.put(
                apply_key(self.shared.region),
                encode(&next).map_err(sm_err)?,
            );
            let compacted = matches!(reply, Reply::Compacted { .. });
            let froze = matches!(reply, Reply::Frozen(_)) && self.shared.merge_frozen().is_none();
            let absorbed = absorbs.filter(|_| reply == Reply::Done);
            // A freeze and an absorb are synced: the host checks that every
            // member applied the freeze before the target absorbs it, and
            // forgets the source only once the absorb is on disk.
            let durability = if froze || absorbed.is_some() {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            // Until this entry's feed batch is out (see `feed_order`).
            let order = self.shared.feed_order.lock();
            self.shared
                .write_and_publish(batch, durability, next, || {
                    fail::fail_point!(crate::failpoints::AFTER_APPLY);
                    if compacted {
                        fail::fail_point!(crate::failpoints::COMPACT_AFTER_APPLY);
                    }
                })
                .map_err(sm_err)?;
            // Only now may the split checker count the entry's bytes (see
            // `load`).
            self.shared.load.settle();
            let split = matches!((&reply, born), (Reply::Done, Some(_)));
            let told = match (&reply, born) {
                (Reply::Done, Some(child)) => Some(HostChange::Born(child)),
                _ => absorbed.map(|(source, _)| HostChange::Absorbed(source)),
            };
            if let Some(change) = told {
                if let Some(tx) = &*self.shared.births.lock() {
                    let _ = tx.send(change);
                }
            }
            // (Nobody subscribed: nothing to publish. Looked at after the
            // write: one subscribing from now on reads the new state.)
            if held_back && resolved > was_resolved.0 && self.shared.feed.receiver_count() > 0 {
                // A lock went: what it held back, and this entry's events
                // up to the new resolved revision, from history.
                events = self
                    .shared
                    .released_history(was_resolved.0 + 1, resolved)
                    .map_err(sm_err)?;
            }
            // One entry may commit several locks, a later-stamped one
            // first (lock commands are batched as they reach the leader),
            // below the revision of a write before them: published in
            // revision order, each transaction's events in their op order
            // (a stable sort).
            if !events.is_sorted_by_key(|c| c.revision) {
                events.sort_by_key(|c| c.revision);
            }
            // Published only now that read_view shows the entry (the
            // ordering contract watchers rely on).
            if crate::planted::on("key-ordered-events") {
                events.sort_by(|a, b| (a.revision, a.key()).cmp(&(b.revision, b.key())));
            }
            if self.shared.kind == RegionKind::Data {
                // A split moves keys to the child, a freeze takes them from
                // the region, an absorb or a thaw brings them: a watcher of
                // them must regroup over the regions now holding them and
                // re-read history.
                self.shared.publish(FeedBatch {
                    events,
                    // With a side close taken up (`side_close`).
                    resolved: self.shared.resolved(),
                    reset: split || froze || absorbed.is_some() || thaws,
                    absorbed,
                });
            }
            drop(order);
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        self.shared
            .snapshots_begun
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let f = self
            .shared
            .snapshots
            .temp_file()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotData::file(f)))
    }

    /// Replaces the region's state with the snapshot's, in one atomic
    /// engine batch (so a crash leaves the old state or the new one).
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<NodeId>> {
        let sig = Some(meta.signature());
        let mut file = snapshot
            .into_file()
            .await
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        let data = self.shared.kind == RegionKind::Data;
        let engine = self.shared.engine.clone();
        let view = engine.snapshot();
        let frozen_here = self.shared.merge_frozen();
        let region = self.shared.region;
        let (applied, mut batch) = tokio::task::spawn_blocking(move || {
            let mut pairs = Vec::new();
            let applied = snapshot_file::read(&mut file, |k, v| pairs.push((k, v)))?;
            let mut batch = WriteBatch::new();
            let frozen_there = applied.merge.frozen.as_ref().map(|f| f.range.epoch);
            if frozen_here.is_some() && frozen_here == frozen_there {
                // Frozen here at the same freeze: the keys here are the
                // snapshot's, or the target's since it absorbed them.
                return crate::Result::Ok((applied, batch));
            }
            let mut kept = Vec::new();
            if data {
                // Only the installed state's share: other regions' keys
                // stay. (A replica behind a split it has not applied keeps
                // the newer region's keys until that region's own replica
                // here installs over them.) So do the keys of a region
                // hosted here that is newer than the state installed (a
                // child this replica's region split off after it: adopted
                // here first, it holds writes the snapshot never saw).
                let share = share_of(&applied);
                kept = newer_here(&*engine, region, &applied)?;
                share.clear_except(&*view, &mut batch, &kept)?;
            }
            let theirs = |k: &[u8]| {
                cairn_mvcc::user_key(k).is_some_and(|u| kept.iter().any(|r| r.contains(&u)))
            };
            for (k, v) in pairs {
                if !theirs(&k) {
                    batch.put(k, v);
                }
            }
            crate::Result::Ok((applied, batch))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?
        .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        fail::fail_point!(crate::failpoints::SNAPSHOT_INSTALL);
        batch.put(
            apply_key(self.shared.region),
            encode(&applied).map_err(sm_err)?,
        );
        // The log up to the snapshot goes in the same batch: openraft asks
        // for that purge as it queues this install, and the log store
        // leaves it here (`log_store`; had it run already, this adds only
        // the mark), so a crash leaves both or neither.
        if let Some(last) = meta.last_log_id {
            crate::LogStore::purge_into(&mut batch, &*self.shared.engine, self.shared.region, last)
                .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        }
        // Regions the snapshot's state absorbed that this replica had not:
        // the host stops them here too. (Each applied its freeze here
        // before the absorb was proposed, so none writes keys meanwhile.)
        let absorbed: Vec<u64> = self.shared.with_applied(|old| {
            applied
                .merge
                .absorbed
                .difference(&old.merge.absorbed)
                .copied()
                .collect()
        });
        // The keys are replaced: a sweep starts again over them.
        let mut sweep = self.shared.sweep.lock();
        RegionShared::sweep_forget(&mut sweep, self.shared.region, &mut batch);
        let order = self.shared.feed_order.lock();
        self.shared
            .write_and_publish(batch, Durability::Sync, applied, || {})
            .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
        self.shared.publish(FeedBatch {
            events: Vec::new(),
            // A side close taken up stays true of the log the snapshot
            // stands for (`side_close`).
            resolved: self.shared.resolved(),
            reset: true,
            absorbed: None,
        });
        drop(order);
        drop(sweep);
        if data {
            if let Some(tx) = &*self.shared.births.lock() {
                for id in absorbed {
                    let _ = tx.send(HostChange::Absorbed(id));
                }
            }
        }
        // The entries this snapshot stands for may have deleted users,
        // changed passwords or turned auth off: tokens registered before
        // it cannot be trusted (clients authenticate again).
        self.shared.tokens.lock().clear();
        Ok(())
    }

    /// The current state (openraft asks at startup, for the meta, and to
    /// send a lagging follower the state, when the bytes get written).
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let (applied, snapshot) = self.current();
        Ok(applied.last_applied.map(|_| snapshot))
    }
}

pub mod load;
pub mod marks;
mod merge;
mod side_close;
mod split;
pub mod sweep;
mod txn_locks;
pub use merge::{Freeze, MergeState};
pub use side_close::SideClose;
pub use split::{txn_within, CHILD_INIT_INDEX};

#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod tests;
