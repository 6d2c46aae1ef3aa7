//! Each region's Raft log and vote, on the node's shared engine, and the
//! node's one [`LogWriter`] that makes appends durable in groups.
//!
//! `append` writes the entries at once (buffered, so readers see them
//! immediately as openraft requires) and hands the flush callback to the
//! [`LogWriter`]. The writer drains every callback queued by every region,
//! issues one fsync for all of them, then fires them: N concurrent appends
//! cost one fsync. The vote is written with its own fsync (rare). Each store
//! counts the bytes it appends, so the host can bound the log in bytes.
//!
//! A purge does not pass what the region's state machine has applied
//! (and so written): openraft 0.9 purges a follower's log up to a snapshot
//! the leader sent as soon as it queues the snapshot's install, before the
//! state machine has installed it. A crash in between left the log purged
//! past the applied record, and openraft then refused to start the member
//! ever again (`purge_upto <= snapshot_last_log_id`). So a store given
//! [`LogStore::bound_purges`] (every region's, in a node) skips a purge
//! past that bound, and the install writes that purge in its own batch
//! ([`LogStore::purge_into`]), with the state it installs. Entries openraft
//! appends past the snapshot meanwhile, and their commit mark, wait until
//! the install is written: before it, they would lie behind a gap in the
//! log on disk.
//!
//! Replication reads are bounded in bytes too: openraft asks for every entry
//! a follower lacks, and an entry is a whole commit group (up to megabytes),
//! so [`LogStore`] answers `limited_get_log_entries` with at most
//! [`MAX_REPLICATION_BYTES`] of encoded entries — always at least one — and
//! openraft sends the rest in the next message.

// openraft's StorageError is large by design; these are its signatures.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_storage::keys::{raft_log_range, Key, RaftStateKind};
use cairn_storage::{Durability, Engine, WriteBatch};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::codec::{decode, encode};
use crate::{NodeId, TypeConfig};

/// Most encoded entry bytes one replication message carries (one entry
/// larger than this still goes, alone). Peers accept messages of any size;
/// this keeps each one, and the memory behind it, bounded.
const MAX_REPLICATION_BYTES: usize = 4 << 20;

/// Counters of the shared log writer (group-commit evidence).
#[derive(Debug, Default)]
pub struct LogWriterStats {
    /// fsyncs issued.
    pub syncs: AtomicU64,
    /// append calls made durable.
    pub appends: AtomicU64,
}

/// The node's one log flusher: a dedicated thread that fsyncs once per
/// group of appends.
///
/// A plain OS thread, not a Tokio task handing each fsync to
/// `spawn_blocking`: the task version woke the flusher task, then a
/// blocking-pool thread, then the task again before the callbacks fired —
/// three wake-ups (often cross-core) per commit group on every replica,
/// where the thread needs one (docs/benchmarks.md, single-client put).
#[derive(Clone)]
pub struct LogWriter {
    tx: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
    stats: Arc<LogWriterStats>,
}

impl LogWriter {
    /// Starts the flusher thread for `engine`. The thread ends when every
    /// clone of the writer is dropped.
    pub fn start(engine: Arc<dyn Engine>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        let stats = Arc::new(LogWriterStats::default());
        let s = stats.clone();
        std::thread::Builder::new()
            .name("cairn-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    group.extend(rx.try_iter());
                    fail::fail_point!(crate::failpoints::BEFORE_LOG_FSYNC);
                    let started = std::time::Instant::now();
                    let res = engine.sync();
                    crate::metrics::WAL_FSYNC.observe(started.elapsed().as_secs_f64());
                    fail::fail_point!(crate::failpoints::AFTER_LOG_FSYNC);
                    s.syncs.fetch_add(1, Ordering::Relaxed);
                    s.appends.fetch_add(group.len() as u64, Ordering::Relaxed);
                    for cb in group {
                        let r = match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        };
                        cb.log_io_completed(r);
                    }
                }
            })?;
        Ok(Self { tx, stats })
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<LogWriterStats> {
        self.stats.clone()
    }
}

/// One region's log store; cloning shares it (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    region: u64,
    engine: Arc<dyn Engine>,
    writer: LogWriter,
    appended: Arc<AtomicU64>,
    /// The highest index a purge may reach (see the module essay).
    applied: Option<PurgeBound>,
    /// A purge past it, left to a snapshot's install not yet written:
    /// appends and commits wait for it.
    held: Option<u64>,
    /// The committed index as last saved, for the host to read.
    committed: Arc<AtomicU64>,
}

/// The index a region's state machine has applied and written: a purge goes
/// no further ([`LogStore::bound_purges`]).
pub type PurgeBound = Arc<dyn Fn() -> u64 + Send + Sync>;

impl LogStore {
    /// The log of `region` in `engine`, flushed by `writer`.
    pub fn new(region: u64, engine: Arc<dyn Engine>, writer: LogWriter) -> Self {
        Self {
            region,
            engine,
            writer,
            appended: Arc::new(AtomicU64::new(0)),
            applied: None,
            held: None,
            committed: Arc::default(),
        }
    }

    /// Purges go no further than `applied` says its state machine has
    /// applied (see the module essay); a purge past it is skipped, left to
    /// the snapshot install that will reach it.
    pub fn bound_purges(mut self, applied: PurgeBound) -> Self {
        self.applied = Some(applied);
        self
    }

    /// Keeps `committed` at the committed index: the one saved before now,
    /// then each one openraft saves.
    pub fn report_committed(mut self, committed: Arc<AtomicU64>) -> Self {
        if let Ok(Some(Some(c))) =
            self.read_state::<Option<LogId<NodeId>>>(RaftStateKind::Committed)
        {
            committed.fetch_max(c.index, Ordering::Relaxed);
        }
        self.committed = committed;
        self
    }

    /// Waits until the state machine has applied as far as a purge left
    /// to a snapshot's install. openraft appends entries past the snapshot
    /// and commits them as soon as it has queued the install; written
    /// before the install, a crash would leave them behind a gap in the
    /// log on disk (and a commit mark past it), which no start can apply.
    /// (Should the install fail, Raft stops, and this with it.)
    async fn after_held_purge(&mut self) {
        let (Some(upto), Some(applied)) = (self.held, &self.applied) else {
            return;
        };
        while applied() < upto {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.held = None;
    }

    /// Adds to `batch` the purge of `region`'s log in `engine` up to
    /// `log_id`: the purged mark, and the entries from the last purge on
    /// deleted. A snapshot install writes it with the state it installs.
    pub fn purge_into(
        batch: &mut WriteBatch,
        engine: &dyn Engine,
        region: u64,
        log_id: LogId<NodeId>,
    ) -> crate::Result<()> {
        let mark = purged_key(region);
        // Entries up to the previous purge are already gone: start after
        // it, so the scan behind the range delete does not walk their
        // tombstones.
        let from = match engine.get(&mark)? {
            Some(b) => decode::<LogId<NodeId>>(&b)?.index + 1,
            None => 0,
        };
        batch.put(mark, encode(&log_id)?);
        if from <= log_id.index {
            let entry = |index| Key::RaftLog { region, index }.encode();
            batch.delete_range(entry(from), entry(log_id.index + 1));
        }
        Ok(())
    }

    /// Encoded bytes appended since this store was opened (monotonic). The
    /// host snapshots by it: openraft's policy counts entries, and an entry
    /// is a whole commit group, anywhere from a few bytes to megabytes.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    /// Adds to `batch` what makes region `region`'s log start past
    /// `log_id`: every entry up to it counts as purged, so Raft begins
    /// there (a region born by a split, its state already applied) and
    /// sends a replica that lacks that state a snapshot, never entries.
    pub fn seed_purged(
        batch: &mut WriteBatch,
        region: u64,
        log_id: LogId<NodeId>,
    ) -> crate::Result<()> {
        batch.put(purged_key(region), encode(&log_id)?);
        Ok(())
    }

    /// Adds to `batch` region `region`'s vote: a region born by a split
    /// starts with the vote the split's entry was appended under (see
    /// `state_machine::split`), so its leader leads it from the start.
    pub fn seed_vote(batch: &mut WriteBatch, region: u64, vote: Vote<NodeId>) -> crate::Result<()> {
        let key = Key::RaftState {
            region,
            kind: RaftStateKind::Vote,
        }
        .encode();
        batch.put(key, encode(&vote)?);
        Ok(())
    }

    fn state_key(&self, kind: RaftStateKind) -> Vec<u8> {
        Key::RaftState {
            region: self.region,
            kind,
        }
        .encode()
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        kind: RaftStateKind,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        match self.engine.get(&self.state_key(kind)).map_err(read_err)? {
            Some(b) => Ok(Some(decode(&b).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn entry_key(&self, index: u64) -> Vec<u8> {
        Key::RaftLog {
            region: self.region,
            index,
        }
        .encode()
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let (lo, hi) = raft_log_range(self.region);
        match self
            .engine
            .scan(Bound::Included(lo), Bound::Excluded(hi), true)
            .next()
        {
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                let e: Entry<TypeConfig> = decode(&v).map_err(read_err)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

/// Where region `region`'s purged mark is kept.
fn purged_key(region: u64) -> Vec<u8> {
    Key::RaftState {
        region,
        kind: RaftStateKind::Purged,
    }
    .encode()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// The entries between two engine keys, in index order, until the next
    /// one would take their encoded size past `budget` bytes (the first
    /// entry is always taken).
    fn read_entries(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.engine.scan(lo, hi, false) {
            let (_, v) = item.map_err(read_err)?;
            bytes = bytes.saturating_add(v.len());
            if bytes > budget && !out.is_empty() {
                break;
            }
            out.push(decode(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let lo = match range.start_bound() {
            Bound::Included(i) => Bound::Included(self.entry_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(self.entry_key(*i)),
            Bound::Unbounded => Bound::Included(self.entry_key(0)),
        };
        let hi = match range.end_bound() {
            Bound::Included(i) => Bound::Included(self.entry_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(self.entry_key(*i)),
            Bound::Unbounded => Bound::Excluded(raft_log_range(self.region).1),
        };
        self.read_entries(lo, hi, usize::MAX)
    }

    /// What replication sends: `[start, end)` cut at [`MAX_REPLICATION_BYTES`].
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let lo = Bound::Included(self.entry_key(start));
        let hi = Bound::Excluded(self.entry_key(end));
        self.read_entries(lo, hi, MAX_REPLICATION_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_state(RaftStateKind::Purged)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut b = WriteBatch::new();
        b.put(
            self.state_key(RaftStateKind::Vote),
            encode(vote).map_err(write_err)?,
        );
        self.engine
            .write(b, Durability::Sync)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_state(RaftStateKind::Vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.after_held_purge().await;
        let mut b = WriteBatch::new();
        b.put(
            self.state_key(RaftStateKind::Committed),
            encode(&committed).map_err(write_err)?,
        );
        self.engine
            .write(b, Durability::Buffered)
            .map_err(write_err)?;
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_state::<Option<LogId<NodeId>>>(RaftStateKind::Committed)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        self.after_held_purge().await;
        let mut b = WriteBatch::new();
        let mut bytes = 0;
        for e in entries {
            let v = encode(&e).map_err(write_err)?;
            bytes += v.len() as u64;
            b.put(self.entry_key(e.log_id.index), v);
        }
        self.appended.fetch_add(bytes, Ordering::Relaxed);
        self.engine
            .write(b, Durability::Buffered)
            .map_err(write_err)?;
        if let Err(std::sync::mpsc::SendError(cb)) = self.writer.tx.send(callback) {
            // The flusher is gone (shutdown): flush inline.
            let r = self
                .engine
                .sync()
                .map_err(|e| std::io::Error::other(e.to_string()));
            cb.log_io_completed(r);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut b = WriteBatch::new();
        b.delete_range(self.entry_key(log_id.index), raft_log_range(self.region).1);
        self.engine
            .write(b, Durability::Buffered)
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        if self.applied.as_ref().is_some_and(|a| log_id.index > a()) {
            // A snapshot's install is queued and not yet written: it
            // purges this far itself, with the state it installs.
            tracing::debug!(
                region = self.region,
                upto = log_id.index,
                "purge past the applied state: left to the snapshot install"
            );
            self.held = self.held.max(Some(log_id.index));
            return Ok(());
        }
        let mut b = WriteBatch::new();
        Self::purge_into(&mut b, &*self.engine, self.region, log_id).map_err(write_err)?;
        self.engine
            .write(b, Durability::Buffered)
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cairn_storage::MemoryEngine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::Command;

    /// A store whose log holds one entry per payload size, from index 1.
    fn log_of(sizes: &[usize]) -> LogStore {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let store = LogStore::new(3, engine.clone(), LogWriter::start(engine.clone()).unwrap());
        let mut b = WriteBatch::new();
        for (i, &size) in sizes.iter().enumerate() {
            let index = i as u64 + 1;
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Command::Txn {
                    ts: index as i64,
                    txn: vec![7; size],
                }),
            };
            b.put(store.entry_key(index), encode(&entry).unwrap());
        }
        engine.write(b, Durability::Buffered).unwrap();
        store
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn a_run_of_large_entries_is_replicated_a_byte_budget_at_a_time() {
        let mib = 1 << 20;
        let mut log = log_of(&[mib + mib / 2; 5]);
        // 1.5 MiB each: two fit in 4 MiB, a third would not.
        let sent = log.limited_get_log_entries(1, 6).await.unwrap();
        assert_eq!(indexes(&sent), [1, 2]);
        let sent = log.limited_get_log_entries(3, 6).await.unwrap();
        assert_eq!(indexes(&sent), [3, 4]);
        let sent = log.limited_get_log_entries(5, 6).await.unwrap();
        assert_eq!(indexes(&sent), [5]);
        // Reads that are not replication still get the whole range.
        assert_eq!(log.try_get_log_entries(1..6).await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn an_entry_over_the_budget_goes_alone_and_small_entries_go_together() {
        let mut log = log_of(&[5 << 20, 10, 10, 10]);
        let sent = log.limited_get_log_entries(1, 5).await.unwrap();
        assert_eq!(indexes(&sent), [1]);
        let sent = log.limited_get_log_entries(2, 5).await.unwrap();
        assert_eq!(indexes(&sent), [2, 3, 4]);
        assert!(log.limited_get_log_entries(3, 3).await.unwrap().is_empty());
    }

    /// openraft 0.9 purges a follower's log up to a snapshot as it queues
    /// the snapshot's install: the log store leaves that purge to the
    /// install (`purge_into`, in the install's batch), so a crash between
    /// the two never leaves the log purged past the applied state — which
    /// openraft refuses to start from (`purge_upto <= snapshot_last_log_id`).
    #[tokio::test]
    async fn a_purge_past_the_applied_state_is_left_to_the_snapshot_install() {
        let applied = Arc::new(AtomicU64::new(4));
        let bound = applied.clone();
        let mut log =
            log_of(&[10; 10]).bound_purges(Arc::new(move || bound.load(Ordering::SeqCst)));
        async fn purged(log: &mut LogStore) -> Option<u64> {
            log.get_log_state()
                .await
                .unwrap()
                .last_purged_log_id
                .map(|l| l.index)
        }
        let at = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        log.purge(at(3)).await.unwrap();
        assert_eq!(purged(&mut log).await, Some(3));
        // The install of a snapshot at 8 is queued, not written: skipped.
        log.purge(at(8)).await.unwrap();
        assert_eq!(purged(&mut log).await, Some(3));
        assert_eq!(
            indexes(&log.try_get_log_entries(4..11).await.unwrap()),
            [4, 5, 6, 7, 8, 9, 10]
        );
        // Until the install is written, nothing past it is committed (or
        // appended) here: it would lie behind a gap in the log on disk.
        let commit = log.save_committed(Some(at(9)));
        let waited = tokio::time::timeout(Duration::from_millis(50), commit).await;
        assert!(
            waited.is_err(),
            "committed past a purge left to the install"
        );
        // The install writes the purge with its state.
        let mut b = WriteBatch::new();
        LogStore::purge_into(&mut b, &*log.engine, 3, at(8)).unwrap();
        log.engine.write(b, Durability::Buffered).unwrap();
        applied.store(8, Ordering::SeqCst);
        assert_eq!(purged(&mut log).await, Some(8));
        log.save_committed(Some(at(9))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(at(9)));
        assert_eq!(
            indexes(&log.try_get_log_entries(1..11).await.unwrap()),
            [9, 10]
        );
        // Purges within the applied state go through as before.
        log.purge(at(8)).await.unwrap();
        log.purge(at(9)).await.unwrap();
        assert_eq!(purged(&mut log).await, Some(8));
        applied.store(9, Ordering::SeqCst);
        log.purge(at(9)).await.unwrap();
        assert_eq!(purged(&mut log).await, Some(9));
    }
}
