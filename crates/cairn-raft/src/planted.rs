//! Planted bugs: test-only faults the robustness script requires its
//! checkers to catch (docs/robustness.md), so a checker that can no longer
//! fail is noticed.
//!
//! Built in only with the `planted` feature, and then each is off unless
//! the environment variable `CAIRN_PLANTED` names it: one test build runs
//! every planted bug in turn (a build per bug cost CI a rebuild of the
//! crates above each feature, about 80 s apiece). Without the feature,
//! [`on`] is `false`, known at compile time, and the faults compile away.
//!
//! The bugs, and the code each breaks:
//! - `stale-read`: linearizable reads skip the read index (`cairn-store`
//!   `node/reads.rs`);
//! - `unconfirmed-renewal`: a lease renewal skips the leadership check
//!   (`node/forward.rs`);
//! - `vanished-waiter`: a lock or election waiter whose key vanished is
//!   granted (`cairn-server` `coord.rs`);
//! - `relock-clean-up`: a Lock that takes over its session's key arms
//!   its clean-up even when the key already holds the lock (`lock.rs`);
//! - `unfenced-auth`: a region applies a write checked against an auth
//!   revision older than its fence (`state_machine.rs`);
//! - `blind-lease-trim`: the lease-index trim drops entries it never
//!   looked up (`node/lease_across.rs`);
//! - `sleepy-followers`: a hibernating region's followers are never woken
//!   under a dead leader (`node/hibernate.rs`);
//! - `key-ordered-events`: a region publishes an entry's watch events in
//!   key order, not op order (`state_machine.rs`).

/// The environment variable naming the planted bug to turn on.
pub const ENV: &str = "CAIRN_PLANTED";

/// True when planted bug `name` is on.
#[cfg(feature = "planted")]
pub fn on(name: &str) -> bool {
    static PLANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PLANTED.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name)
}

/// True when planted bug `name` is on: never, in this build.
#[cfg(not(feature = "planted"))]
#[inline(always)]
pub const fn on(_name: &str) -> bool {
    false
}
