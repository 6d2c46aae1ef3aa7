//! [`FjallEngine`]: the production engine, on the pure-Rust LSM tree `fjall`.
//!
//! Each internal keyspace (first key byte, see [`crate::keys::Space`]) is its
//! own fjall keyspace (its own LSM tree), all in one fjall database sharing
//! one journal. A batch spanning several is still atomic: fjall commits a
//! cross-keyspace batch as one journal record. Durability: `Sync` persists the
//! journal with `fdatasync` before `write` returns, outside fjall's journal
//! lock so other writes go on meanwhile (`crate::journal_sync`).
//!
//! The keys of the MVCC latest index (one per live user key) are also held
//! in memory ([`CountedKeys`]), changed with every batch that touches them
//! and captured by every snapshot, so a snapshot counts a span of live keys
//! without scanning it ([`Snapshot::count_keys`]).

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::AbstractTree as _;
use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode, Readable,
};
use parking_lot::RwLock;

use crate::counted_keys::{as_slices, CountedKeys};
use crate::engine::{
    count_scanned, space_end, Durability, Engine, KeyIter, KvIter, Op, Snapshot, WriteBatch,
};
use crate::journal_bound::{JournalBound, JOURNAL_LIMIT};
use crate::journal_sync::JournalSync;
use crate::keys::Space;
use crate::quiet_flush::{QuietFlush, FLUSH_AT_LEAST};
use crate::{Error, Result};

/// Memtable size per keyspace. fjall's default is 64 MiB each, and the hot
/// keyspaces (Raft log, MVCC versions, latest index) fill together. Measured
/// (docs/benchmarks.md, put with 200 clients, 1 node, beside etcd): 16 MiB
/// doubled put p99 (65–79 ms vs etcd's 40) through more frequent flushes;
/// 32 MiB and 64 MiB both gave ~33 ms, and 32 MiB keeps RSS after 1M keys
/// at 0.42× etcd's (16 MiB: 0.35×).
const MAX_MEMTABLE_BYTES: u64 = 32 << 20;

/// The keyspaces whose large values (fjall's default threshold, 1 KiB) live
/// in blob files apart from the keys: the MVCC versions and the latest
/// index. A count or the key-only part of a range then reads the small key
/// tree only, and compaction rewrites keys, not values. The option is fixed
/// when a keyspace is created; stores created before keep reading values.
const SEPARATED: [u8; 2] = [Space::MvccVersion as u8, Space::MvccLatest as u8];

/// The keyspace whose keys are held counted in memory: the latest index,
/// one key per live user key, which a Range's `count` counts.
const COUNTED: u8 = Space::MvccLatest as u8;

/// At most this many major compactions per defragment.
const DEFRAGMENT_PASSES: usize = 3;

/// An [`Engine`] on fjall.
#[derive(Clone)]
pub struct FjallEngine {
    db: Database,
    path: Arc<PathBuf>,
    // One fjall keyspace per first key byte, opened on first use. A lock, not a
    // fixed table, because the set of spaces is small and grows rarely.
    spaces: Arc<RwLock<HashMap<u8, Keyspace>>>,
    journal: Arc<JournalBound>,
    syncer: Arc<JournalSync>,
    quiet: Arc<QuietFlush>,
    /// The [`COUNTED`] keyspace's keys as of the last committed batch.
    /// Written under the lock across a batch's commit, so a snapshot that
    /// reads it under the lock gets the keys of exactly its own view.
    counted: Arc<RwLock<CountedKeys>>,
}

impl FjallEngine {
    /// Opens (creating if needed) a database in `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_journal_limit(path, JOURNAL_LIMIT)
    }

    /// Opens with the journal kept to about `limit` bytes plus one active
    /// file (`crate::journal_bound`); [`FjallEngine::open`] uses 128 MiB.
    pub fn open_with_journal_limit(path: impl AsRef<Path>, limit: u64) -> Result<Self> {
        let journal = JournalBound::new(limit);
        let db = Database::builder(path.as_ref())
            .manual_journal_persist(true)
            .max_journaling_size(journal.limit())
            .open()?;
        let engine = Self {
            db,
            path: Arc::new(path.as_ref().to_path_buf()),
            spaces: Arc::new(RwLock::new(HashMap::new())),
            journal: Arc::new(journal),
            syncer: Arc::new(JournalSync::new(path.as_ref())),
            quiet: Arc::new(QuietFlush::default()),
            counted: Arc::default(),
        };
        // Reopen every keyspace that exists on disk so snapshots see them.
        for name in engine.db.list_keyspace_names() {
            let name: &str = name.as_ref();
            if let Some(b) = name
                .strip_prefix('s')
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                engine.space(b)?;
            }
        }
        let mut failed = None;
        let keys = engine
            .scan_keys(Bound::Included(vec![COUNTED]), space_end(COUNTED))
            .map_while(|key| key.map_err(|e| failed = Some(e)).ok());
        let counted = CountedKeys::from_sorted(keys);
        if let Some(e) = failed {
            return Err(e);
        }
        *engine.counted.write() = counted;
        Ok(engine)
    }

    fn space(&self, b: u8) -> Result<Keyspace> {
        if let Some(ks) = self.spaces.read().get(&b) {
            return Ok(ks.clone());
        }
        let mut spaces = self.spaces.write();
        if let Some(ks) = spaces.get(&b) {
            return Ok(ks.clone());
        }
        let ks = self.db.keyspace(&format!("s{b:02x}"), || {
            let opts = KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_BYTES);
            if SEPARATED.contains(&b) {
                opts.with_kv_separation(Some(KvSeparationOptions::default()))
            } else {
                opts
            }
        })?;
        spaces.insert(b, ks.clone());
        Ok(ks)
    }

    /// Before a batch that touches the counted keys takes their lock:
    /// waits while fjall would halt that batch's commit (a keyspace with 4
    /// sealed memtables not yet flushed, or 30 level-0 runs; fjall sleeps
    /// the writer until they drain, after publishing). Under the lock those
    /// sleeps would leave every snapshot meanwhile without counts. Such a
    /// batch writes the MVCC versions and the latest index, so those two
    /// are the keyspaces that matter.
    fn wait_out_halts(&self) {
        for b in [Space::MvccVersion as u8, COUNTED] {
            let Some(ks) = self.existing_space(b) else {
                continue;
            };
            while ks.tree.sealed_memtable_count() >= 4 || ks.tree.l0_run_count() >= 30 {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    fn existing_space(&self, b: u8) -> Option<Keyspace> {
        self.spaces.read().get(&b).cloned()
    }

    /// What fjall's journal files take: the writes a restart replays
    /// (unless flushed) are in them.
    pub fn journal_bytes(&self) -> Result<u64> {
        Ok(self.db.journal_disk_space()?)
    }

    /// What the keyspaces' active memtables hold: writes not yet flushed
    /// to tables, resident until they are.
    pub fn memtable_bytes(&self) -> u64 {
        self.spaces
            .read()
            .values()
            .map(|ks| ks.tree.active_memtable().size())
            .sum()
    }

    /// After a sync: flushes every keyspace if the journal outgrew its
    /// bound.
    fn bound_journal(&self) -> Result<()> {
        let spaces = || self.spaces.read().values().cloned().collect();
        self.journal.check(&self.db, spaces)?;
        Ok(())
    }
}

/// Bytes allocated to the files under `dir`, recursively.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Which keyspace a scan range lies in, with the end clamped to that space.
fn scan_space(start: &Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Result<(u8, Bound<Vec<u8>>)> {
    let b = match start {
        Bound::Included(s) | Bound::Excluded(s) if !s.is_empty() => s[0],
        _ => {
            return Err(Error::CrossSpaceScan(
                "scan must start inside a keyspace".into(),
            ))
        }
    };
    let end = match end {
        Bound::Unbounded => space_end(b),
        Bound::Excluded(e) if e.len() == 1 && b < u8::MAX && e[0] == b + 1 => Bound::Excluded(e),
        Bound::Included(e) | Bound::Excluded(e) if e.first().copied() != Some(b) => {
            return Err(Error::CrossSpaceScan(format!(
                "end {e:?} outside space {b:#x}"
            )))
        }
        other => other,
    };
    Ok((b, end))
}

fn first_byte(k: &[u8]) -> Result<u8> {
    k.first()
        .copied()
        .ok_or_else(|| Error::Engine("empty internal key".into()))
}

fn guard_pair(g: fjall::Guard) -> Result<(Vec<u8>, Vec<u8>)> {
    let (k, v) = g.into_inner()?;
    Ok((k.to_vec(), v.to_vec()))
}

fn boxed(iter: fjall::Iter, reverse: bool) -> KvIter<'static> {
    if reverse {
        Box::new(iter.rev().map(guard_pair))
    } else {
        Box::new(iter.map(guard_pair))
    }
}

fn keys_of(iter: fjall::Iter) -> KeyIter<'static> {
    Box::new(iter.map(|g| Ok(g.key()?.to_vec())))
}

/// A scan's keyspace byte and bounds, the end clamped to that keyspace.
type SpaceBounds = (u8, Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The bounds of a key-only scan, clamped to its keyspace; None when empty.
fn key_scan_bounds(start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Result<Option<SpaceBounds>> {
    let (b, end) = scan_space(&start, end)?;
    Ok((!inverted(&start, &end)).then_some((b, start, end)))
}

fn empty_or_err(e: Error) -> KvIter<'static> {
    Box::new(std::iter::once(Err(e)))
}

fn inverted(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    matches!((start, end), (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) if s > e)
}

impl Snapshot for FjallEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(&b) = key.first() else {
            return Ok(None);
        };
        match self.existing_space(b) {
            Some(ks) => Ok(ks.get(key)?.map(|v| v.to_vec())),
            None => Ok(None),
        }
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        let (b, end) = match scan_space(&start, end) {
            Ok(x) => x,
            Err(e) => return empty_or_err(e),
        };
        if inverted(&start, &end) {
            return Box::new(std::iter::empty());
        }
        match self.existing_space(b) {
            Some(ks) => boxed(ks.range::<Vec<u8>, _>((start, end)), reverse),
            None => Box::new(std::iter::empty()),
        }
    }

    fn scan_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KeyIter<'_> {
        match key_scan_bounds(start, end) {
            Ok(Some((b, start, end))) => match self.existing_space(b) {
                Some(ks) => keys_of(ks.range::<Vec<u8>, _>((start, end))),
                None => Box::new(std::iter::empty()),
            },
            Ok(None) => Box::new(std::iter::empty()),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// From the counted keys as they are now, unless a batch touching
    /// them is being committed (then by scanning). Like every read of the
    /// live engine it sees each commit whole, not one moment across
    /// commits: the state machine counts so within the region it alone
    /// writes.
    fn count_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Result<u64> {
        if let Ok(Some((COUNTED, lo, hi))) = key_scan_bounds(start.clone(), end.clone()) {
            if let Some(keys) = self.counted.try_read() {
                return Ok(keys.count(as_slices(&lo), as_slices(&hi)));
            }
        }
        count_scanned(self.scan_keys(start, end))
    }

    fn value_len(&self, key: &[u8]) -> Result<Option<usize>> {
        let Some(&b) = key.first() else {
            return Ok(None);
        };
        match self.existing_space(b) {
            Some(ks) => Ok(ks.size_of(key)?.map(|n| n as usize)),
            None => Ok(None),
        }
    }
}

impl Engine for FjallEngine {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        // After a failed fsync nothing more is written (`journal_sync`).
        self.syncer.check()?;
        let mut wb = self.db.batch();
        // The batch's changes to the counted keyspace, in order: key, and
        // whether it is there after.
        let mut counted: Vec<(Vec<u8>, bool)> = Vec::new();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    let b = first_byte(&k)?;
                    if b == COUNTED {
                        counted.push((k.clone(), true));
                    }
                    wb.insert(&self.space(b)?, k, v);
                }
                Op::Delete(k) => {
                    let b = first_byte(&k)?;
                    if b == COUNTED {
                        counted.push((k.clone(), false));
                    }
                    wb.remove(&self.space(b)?, k);
                }
                Op::DeleteRange(s, e) => {
                    let b = first_byte(&s)?;
                    let ks = self.space(b)?;
                    // Exactly the keys the batch deletes leave the count.
                    for key in self.scan_keys(Bound::Included(s), Bound::Excluded(e)) {
                        let key = key?;
                        if b == COUNTED {
                            counted.push((key.clone(), false));
                        }
                        wb.remove(&ks, key);
                    }
                }
            }
        }
        if counted.is_empty() {
            wb.commit()?;
        } else {
            self.wait_out_halts();
            // Under the lock across the commit: no snapshot sees the
            // batch's keys without their count, or the reverse.
            let mut keys = self.counted.write();
            wb.commit()?;
            for (key, live) in counted {
                if live {
                    keys.insert(&key);
                } else {
                    keys.remove(&key);
                }
            }
        }
        self.quiet.wrote();
        if durability == Durability::Sync {
            self.syncer.sync(&self.db)?;
            self.bound_journal()?;
        } else {
            self.db.persist(PersistMode::Buffer)?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.syncer.sync(&self.db)?;
        self.bound_journal()
    }

    /// With the counted keys as of its view, unless a batch touching them
    /// is being committed: a commit can wait out fjall's write stalls
    /// (100 ms sleeps), and a reader must not. That snapshot counts by
    /// scanning instead.
    fn snapshot(&self) -> Arc<dyn Snapshot> {
        let (snap, counted) = match self.counted.try_read() {
            Some(keys) => (self.db.snapshot(), Some(keys.clone())),
            None => (self.db.snapshot(), None),
        };
        Arc::new(FjallSnapshot {
            snap,
            engine: self.clone(),
            counted,
        })
    }

    /// What the files take on the filesystem (allocated blocks, as `du`
    /// counts them): fjall's journal is a sparse preallocated file, so its
    /// length (64 MiB from the start) is not what it takes.
    fn size_on_disk(&self) -> u64 {
        allocated(&self.path)
    }

    /// The state machine's trees (the MVCC and lease keyspaces: what
    /// etcd's backend database holds; not the Raft log, which is etcd's
    /// WAL): their files and their active memtables (writes not flushed
    /// yet count too; a sealed memtable being flushed is briefly missed).
    fn size_in_use(&self) -> u64 {
        self.spaces
            .read()
            .iter()
            .filter(|(&b, _)| b >= Space::MvccVersion as u8)
            .map(|(_, ks)| ks.disk_space() + ks.tree.active_memtable().size())
            .sum()
    }

    /// See `crate::quiet_flush`.
    fn flush_if_quiet(&self) -> Result<bool> {
        // After a failed fsync nothing more is written (`journal_sync`).
        self.syncer.check()?;
        if !self.quiet.due(std::time::Instant::now()) {
            return Ok(false);
        }
        let spaces: Vec<Keyspace> = self.spaces.read().values().cloned().collect();
        let mut flushed = false;
        for ks in spaces {
            if ks.tree.active_memtable().size() >= FLUSH_AT_LEAST {
                ks.rotate_memtable()?;
                flushed = true;
            }
        }
        Ok(flushed)
    }

    fn defragment(&self) -> Result<()> {
        let spaces: Vec<Keyspace> = self.spaces.read().values().cloned().collect();
        // Flush every memtable first: the journal holding their writes can
        // then be dropped, and the compaction sees all the data.
        for ks in &spaces {
            ks.rotate_memtable_and_wait()?;
        }
        // A pass drops dead entries; the value files only they referenced
        // go in the pass after (fjall accounts their staleness as the
        // first pass rewrites the keys). Repeat while it still frees space.
        let mut size = self.size_in_use();
        for _ in 0..DEFRAGMENT_PASSES {
            for ks in &spaces {
                ks.major_compact()?;
            }
            let after = self.size_in_use();
            if after >= size {
                break;
            }
            size = after;
        }
        Ok(())
    }
}

struct FjallSnapshot {
    snap: fjall::Snapshot,
    engine: FjallEngine,
    /// The counted keyspace's keys in this view (None: count by scanning).
    counted: Option<CountedKeys>,
}

impl Snapshot for FjallSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(&b) = key.first() else {
            return Ok(None);
        };
        match self.engine.existing_space(b) {
            Some(ks) => Ok(self.snap.get(&ks, key)?.map(|v| v.to_vec())),
            None => Ok(None),
        }
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        let (b, end) = match scan_space(&start, end) {
            Ok(x) => x,
            Err(e) => return empty_or_err(e),
        };
        if inverted(&start, &end) {
            return Box::new(std::iter::empty());
        }
        match self.engine.existing_space(b) {
            Some(ks) => boxed(self.snap.range::<Vec<u8>, _>(&ks, (start, end)), reverse),
            None => Box::new(std::iter::empty()),
        }
    }

    fn scan_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KeyIter<'_> {
        match key_scan_bounds(start, end) {
            Ok(Some((b, start, end))) => match self.engine.existing_space(b) {
                Some(ks) => keys_of(self.snap.range::<Vec<u8>, _>(&ks, (start, end))),
                None => Box::new(std::iter::empty()),
            },
            Ok(None) => Box::new(std::iter::empty()),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn count_keys(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Result<u64> {
        let (Some(keys), Some((COUNTED, start, end))) =
            (&self.counted, key_scan_bounds(start.clone(), end.clone())?)
        else {
            return count_scanned(self.scan_keys(start, end));
        };
        let n = keys.count(as_slices(&start), as_slices(&end));
        // Every debug build (the tests, the torture runs) checks the count
        // against the engine's own keys.
        if cfg!(debug_assertions) {
            let scanned = count_scanned(self.scan_keys(start.clone(), end.clone()))?;
            assert_eq!(
                n, scanned,
                "counted keys out of step with the engine in {start:?}..{end:?}"
            );
        }
        Ok(n)
    }

    fn value_len(&self, key: &[u8]) -> Result<Option<usize>> {
        let Some(&b) = key.first() else {
            return Ok(None);
        };
        match self.engine.existing_space(b) {
            Some(ks) => Ok(self.snap.size_of(&ks, key)?.map(|n| n as usize)),
            None => Ok(None),
        }
    }
}
