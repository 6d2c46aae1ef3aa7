//! Crash points: named places inside a replica where a robustness run can
//! make the node die, to prove that no acknowledged write is lost and no
//! revision goes backwards whatever instant a crash hits (the failure
//! classes etcd's robustness suite found with gofail).
//!
//! They are `fail` crate points, compiled in only with the test-only cargo
//! feature `failpoints` (otherwise `fail_point!` expands to nothing). A
//! `cairn serve` built with `--features failpoints` arms them from the
//! `FAILPOINTS` environment variable (e.g. `FAILPOINTS=raft-after-log-fsync=40*off->panic`:
//! the 41st time the point is reached, the node panics — and such a build
//! turns every panic into an abort, so it dies like a SIGKILL at exactly
//! that point). `cairn torture --cluster process --nemesis failpoint`
//! restarts a node with one of [`ALL`] armed.

/// True when this build has the crash points compiled in.
pub const COMPILED: bool = cfg!(feature = "failpoints");

/// Log entries are written to the engine but not yet fsynced.
pub const BEFORE_LOG_FSYNC: &str = "raft-before-log-fsync";
/// The fsync returned; Raft has not yet been told the entries are durable.
pub const AFTER_LOG_FSYNC: &str = "raft-after-log-fsync";
/// A committed entry is about to be applied (its batch not yet written).
pub const BEFORE_APPLY: &str = "raft-before-apply";
/// An entry's effects are written; the client has not been answered.
pub const AFTER_APPLY: &str = "raft-after-apply";
/// openraft is building a snapshot (to purge the log up to it): the view is
/// taken, the engine not yet synced, the log not yet purged.
pub const SNAPSHOT_BUILD: &str = "raft-snapshot-build";
/// A received snapshot is about to replace the state (batch not written).
pub const SNAPSHOT_INSTALL: &str = "raft-snapshot-install";
/// A compaction is applied, not yet written (it records its revision; the
/// versions it drops go in background sweeps, `SWEEP_BEFORE_WRITE`).
pub const COMPACT_BEFORE_APPLY: &str = "mvcc-compact-before-apply";
/// A compaction is written; the compact request has not been answered.
pub const COMPACT_AFTER_APPLY: &str = "mvcc-compact-after-apply";
/// A step of a background sweep after a compaction has its deletions
/// computed, not yet written.
pub const SWEEP_BEFORE_WRITE: &str = "mvcc-sweep-before-write";

/// The coordinator of a transaction across regions placed every lock and
/// committed nothing (in `cairn-store`): its locks stay for whoever meets
/// them to roll back.
pub const TXN_AFTER_PREWRITE: &str = "txn-after-prewrite";
/// The coordinator of a transaction across regions committed its primary
/// and no secondary part: whoever meets a secondary lock commits it.
pub const TXN_AFTER_PRIMARY_COMMIT: &str = "txn-after-primary-commit";

/// Every crash point.
pub const ALL: &[&str] = &[
    BEFORE_LOG_FSYNC,
    AFTER_LOG_FSYNC,
    BEFORE_APPLY,
    AFTER_APPLY,
    SNAPSHOT_BUILD,
    SNAPSHOT_INSTALL,
    COMPACT_BEFORE_APPLY,
    COMPACT_AFTER_APPLY,
    SWEEP_BEFORE_WRITE,
    TXN_AFTER_PREWRITE,
    TXN_AFTER_PRIMARY_COMMIT,
];
