//! Sweeping what compactions dropped, in the background.
//!
//! A compaction applies as its revision alone; each replica then deletes
//! the versions it dropped in steps of a few thousand versions
//! (`cairn_raft::state_machine::sweep`, which says why that is safe beside
//! the apply task). This loop runs the steps of every region hosted here,
//! one region at a time, on the blocking pool, with a pause after each step
//! [`PAUSE_PER_STEP`] times as long as the step took (at least
//! [`MIN_PAUSE`]), so a sweep takes at most a quarter of one core rather
//! than all of it: the apply tasks and reads of every region go on
//! meanwhile. (etcd likewise sleeps between compaction batches,
//! `--experimental-compaction-sleep-interval`.) A background sweep writes
//! no Raft entry, so it never wakes a sleeping region.
//!
//! A `physical` compaction (etcd's flag: answer once the compaction is
//! physically applied to the serving member's store) sweeps each region's
//! replica here itself, once the replica has applied what was
//! acknowledged before (a read index, which does wake a sleeping region),
//! and answers after that. A defragmentation sweeps what every replica
//! here has applied first, so the space compactions dropped is there for
//! it to reclaim.

use std::sync::Arc;
use std::time::Duration;

use cairn_raft::RegionShared;

use crate::error::Result;
use crate::node::Node;

/// How often the loop looks for a region with a sweep due.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// The pause after each step of a background sweep, as a multiple of the
/// time the step took.
const PAUSE_PER_STEP: u32 = 3;

/// The shortest pause after a step.
const MIN_PAUSE: Duration = Duration::from_millis(5);

/// Steps one region's sweep takes at most per round of the loop, so one
/// large region does not hold up every other's (about a million versions).
const STEPS_PER_ROUND: usize = 256;

/// Runs every sweep due on this node's replicas until the node stops.
pub(super) async fn sweep_compactions(node: std::sync::Weak<Node>) {
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let regions = n.regions.all();
        drop(n);
        let stopped = || node.upgrade().is_none_or(|n| n.is_stopped());
        for r in regions {
            if stopped() {
                return;
            }
            match r.shared.sweep_due() {
                Ok(false) => {}
                Ok(true) => match sweep(&r.shared, true, STEPS_PER_ROUND, &stopped).await {
                    Ok(()) | Err(crate::Error::Stopped) => {}
                    Err(e) => tracing::warn!(region = r.id, "sweeping a compaction: {e}"),
                },
                Err(e) => tracing::warn!(region = r.id, "sweeping a compaction: {e}"),
            }
        }
    }
}

/// Steps `shared`'s sweep until none is due or `steps` were taken,
/// pausing after each step if `paced` (see the module essay); fails with
/// `Stopped` once `stopped` (the node is shutting down, and a step holds
/// its engine).
async fn sweep(
    shared: &Arc<RegionShared>,
    paced: bool,
    steps: usize,
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<()> {
    for _ in 0..steps {
        if stopped() {
            return Err(crate::Error::Stopped);
        }
        let began = std::time::Instant::now();
        let s = shared.clone();
        let more = tokio::task::spawn_blocking(move || s.sweep_step())
            .await
            .map_err(|e| crate::Error::Internal(format!("sweep step: {e}")))??;
        if !more {
            return Ok(());
        }
        if paced {
            tokio::time::sleep((began.elapsed() * PAUSE_PER_STEP).max(MIN_PAUSE)).await;
        }
    }
    Ok(())
}

impl Node {
    /// Sweeps every region's replica here (a `physical` compaction's
    /// wait), each once it has applied what was acknowledged before.
    pub(super) async fn sweep_here(&self) -> Result<()> {
        for r in self.regions.all() {
            if r.shared.kind != cairn_raft::RegionKind::Data {
                continue;
            }
            self.caught_up(r.id).await?;
            sweep(&r.shared, false, usize::MAX, &|| self.is_stopped()).await?;
        }
        Ok(())
    }

    /// Sweeps what every replica here has applied of compactions (before a
    /// defragmentation: the space they dropped is then there to reclaim).
    /// Best effort: a region that fails is logged and left.
    pub(super) async fn sweep_applied(&self) -> Result<()> {
        for r in self.regions.all() {
            match sweep(&r.shared, false, usize::MAX, &|| self.is_stopped()).await {
                Ok(()) => {}
                Err(crate::Error::Stopped) => return Err(crate::Error::Stopped),
                Err(e) => tracing::warn!(region = r.id, "sweeping before a defragmentation: {e}"),
            }
        }
        Ok(())
    }
}
