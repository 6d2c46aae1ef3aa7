//! Flushing the memtables of a store that went quiet.
//!
//! fjall flushes a keyspace's memtable only when it fills (32 MiB here,
//! [`super::fjall_engine`]) or when the journal outgrows its bound
//! ([`super::journal_bound`]). After a burst of writes — a bulk load, a
//! migration, a Kubernetes upgrade — each hot keyspace (Raft log, MVCC
//! versions, latest index, by-revision index) is left holding a memtable
//! of up to 32 MiB, resident for as long as the store stays quiet: its
//! writes are already durable in the journal, and a restart replays them
//! from it. Measured after a load of 1,000,000 keys of 256 B into one
//! member (docs/benchmarks.md, session 28): 370 MB resident, 280 MB once the
//! memtables were flushed.
//!
//! [`QuietFlush`] decides when: once no write has come for [`QUIET`]
//! (polled by the node about each second), and only once per quiet spell.
//! The engine then rotates every memtable holding at least
//! [`FLUSH_AT_LEAST`] bytes; fjall flushes them in the background, frees
//! them, and drops the journal files nothing needs any more. A keyspace with
//! a few small writes is left alone, so an almost idle store (a lease
//! renewed now and then) does not write a tiny table every few seconds.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long without a write before the memtables are flushed.
pub(crate) const QUIET: Duration = Duration::from_secs(2);

/// The least a memtable must hold to be flushed when the store goes quiet.
pub(crate) const FLUSH_AT_LEAST: u64 = 1 << 20;

/// Counts writes and says when the store has gone quiet (see the module).
#[derive(Debug, Default)]
pub(crate) struct QuietFlush {
    writes: AtomicU64,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The write count at the last look, and when it was first seen.
    count: u64,
    since: Option<Instant>,
    /// The write count when the memtables were last flushed for quiet.
    flushed_at: u64,
}

impl QuietFlush {
    /// Counts one write.
    pub(crate) fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// True once per quiet spell: when no write has come for [`QUIET`]
    /// before `now` (as far as the calls so far saw) and some came since
    /// the last time this said so.
    pub(crate) fn due(&self, now: Instant) -> bool {
        let count = self.writes.load(Ordering::Relaxed);
        let mut seen = self.seen.lock();
        if seen.since.is_none() || seen.count != count {
            seen.count = count;
            seen.since = Some(now);
            return false;
        }
        let quiet = seen
            .since
            .is_some_and(|since| now.saturating_duration_since(since) >= QUIET);
        if quiet && seen.flushed_at != count {
            seen.flushed_at = count;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_quiet_spell_after_writes() {
        let q = QuietFlush::default();
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_millis(s * 500);
        // Nothing written yet: nothing to flush, ever.
        assert!(!q.due(at(0)));
        assert!(!q.due(at(10)));
        // Writes, then quiet: due once, QUIET after the first look that
        // saw the last of them.
        q.wrote();
        q.wrote();
        assert!(!q.due(at(11)));
        assert!(!q.due(at(12)));
        assert!(!q.due(at(14)));
        assert!(q.due(at(15)));
        assert!(!q.due(at(16)));
        assert!(!q.due(at(40)));
        // A write starts a new spell.
        q.wrote();
        assert!(!q.due(at(41)));
        q.wrote();
        assert!(!q.due(at(44)), "a write between looks restarts the wait");
        assert!(!q.due(at(47)));
        assert!(q.due(at(48)));
    }
}
