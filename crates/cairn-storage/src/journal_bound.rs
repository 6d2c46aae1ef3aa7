//! Keeping fjall's journal short, so that a restart replays little.
//!
//! fjall writes every batch to one journal shared by all keyspaces and, on
//! open, replays every journal file some keyspace has not flushed past.
//! A journal file is dropped only once every keyspace with writes in it
//! has flushed its memtable. In fjall 3.1 two things let that grow:
//! - The active journal is sealed only inside a flush job (once past
//!   64 MB), and a flush job starts only when one keyspace's memtable fills
//!   (32 MiB here, [`super::fjall_engine`]). Writes spread over the Raft
//!   log, MVCC and index keyspaces fill none for a long while.
//! - Sealed journals are kept until every keyspace flushed past them, and
//!   a quiet keyspace (a few lease or region records) flushes only when the
//!   sealed journals pass `max_journaling_size` (512 MiB by default), a
//!   check made only when a journal is sealed.
//!
//! So a member's journal climbed to hundreds of MiB between such flushes,
//! and its restart replayed all of it: a 25-minute torture run saw a
//! member's start-up grow from 0.2 s to 20–37 s, and fall back after fjall
//! flushed (docs/robustness.md). With a member down that long, a second
//! fault leaves a region without a quorum.
//!
//! [`JournalBound`] bounds it: after a sync, when the journal takes more
//! than the limit and grew by half a limit since the last time it acted,
//! it rotates the memtable of every keyspace. Each rotation queues a flush;
//! the first flush seals the active journal, and once all are flushed fjall
//! drops every sealed journal. The journal then stays under about the
//! limit plus what is written while the flushes run, at the cost of a few
//! small tables per limit written (compaction merges them). The same limit
//! goes to fjall as `max_journaling_size`, for the sealed-journal check it
//! makes itself. The journal's size counts the active file at its
//! preallocated 64 MiB at least.
//!
//! Measured (`tests/journal_bound.rs`, debug build, 208 MiB of random
//! values over 8 keyspaces, an 80 MiB bound): the journal ends at 64 MiB
//! instead of 210 MiB, and reopening takes 1.6 s instead of 5.9 s.
//!
//! It bounds the replay; it does not make it short. A node's writes are
//! mostly tiny items (a Raft entry, its purge, the applied record, MVCC
//! keys), which fjall replays at ~15–20 µs each in a debug build: 128 MiB
//! of them still took ~35 s in a 30-minute torture run
//! (docs/robustness.md). A bound much lower would not help while fjall
//! seals the active journal only past 64 MB.

use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, Keyspace};

/// The journal size [`JournalBound`] keeps to by default. It counts the
/// active file at its preallocated 64 MiB at least, so this is one sealed
/// file's worth beyond it: four memtables, so that busy keyspaces mostly
/// flush on their own before it acts.
pub(crate) const JOURNAL_LIMIT: u64 = 128 << 20;

/// Flushes every keyspace when the journal outgrows its limit (see the
/// module essay).
pub(crate) struct JournalBound {
    limit: u64,
    /// The journal's size when this last acted (0: not since it was under
    /// the limit).
    acted_at: AtomicU64,
}

impl JournalBound {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            acted_at: AtomicU64::new(0),
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Called after a sync: rotates every keyspace's memtable if the
    /// journal is over the limit and grew by half a limit since the last
    /// time (`spaces` lists them only then). Returns whether it did.
    pub(crate) fn check(
        &self,
        db: &Database,
        spaces: impl FnOnce() -> Vec<Keyspace>,
    ) -> crate::Result<bool> {
        let size = db.journal_disk_space()?;
        if size <= self.limit {
            self.acted_at.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        let last = self.acted_at.load(Ordering::Relaxed);
        if last != 0 && size < last + self.limit / 2 {
            return Ok(false);
        }
        if self
            .acted_at
            .compare_exchange(last, size, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another sync acted meanwhile.
            return Ok(false);
        }
        for ks in spaces() {
            ks.rotate_memtable()?;
        }
        Ok(true)
    }
}
