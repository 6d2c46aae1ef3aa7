//! The storage quota (`--quota-backend-bytes`), as etcd enforces it.
//!
//! A write that may add data (a Put, a Txn with a put in either branch, a
//! LeaseGrant) is refused on the member that received it when that
//! member's state-machine data (the MVCC and lease trees' files, what
//! etcd's backend database holds, flushed or still in memtables; not the
//! Raft log) exceeds the quota; the member
//! then raises the `NOSPACE` alarm for itself through Raft. While any
//! `NOSPACE` alarm is raised, every member's state machine refuses such
//! writes too (deterministically, at apply), so the whole cluster turns
//! read-and-delete-only, as etcd does: reads, deletes, delete-only Txns,
//! compaction and defragment still work. `etcdctl alarm disarm` clears the
//! alarm; if the member is still over quota the next write raises it again.
//! The error is etcd's: `etcdserver: mvcc: database space exceeded`
//! (`ResourceExhausted`).

use std::collections::HashSet;
use std::sync::LazyLock;

use cairn_mvcc::Rejection;
use parking_lot::Mutex;
use tonic::Status;

use crate::error::Error;
use crate::Context;

/// etcd's `AlarmType_NOSPACE`.
pub const NOSPACE: i32 = cairn_store::ALARM_NOSPACE;
/// etcd's `AlarmType_CORRUPT`.
pub const CORRUPT: i32 = cairn_store::ALARM_CORRUPT;

/// Members whose NOSPACE proposal is in flight.
static RAISING: LazyLock<Mutex<HashSet<u64>>> = LazyLock::new(Default::default);

/// etcd's name of an alarm type.
pub fn alarm_name(alarm: i32) -> &'static str {
    match alarm {
        0 => "NONE",
        NOSPACE => "NOSPACE",
        CORRUPT => "CORRUPT",
        _ => "UNKNOWN",
    }
}

/// Refuses a write that `may_add` data when this member is over quota,
/// raising its NOSPACE alarm (in the background, as etcd does).
pub fn check(ctx: &Context, may_add: bool) -> Result<(), Status> {
    let quota = ctx.limits.quota_backend_bytes;
    if !may_add || quota == 0 || ctx.node.data_size() <= quota {
        return Ok(());
    }
    // One proposal at a time per member, not one per refused write.
    if !ctx.node.store_alarms().contains(&(ctx.node.id, NOSPACE))
        && RAISING.lock().insert(ctx.node.id)
    {
        let node = ctx.node.clone();
        tokio::spawn(async move {
            if let Err(e) = node.alarm(true, node.id, NOSPACE).await {
                tracing::warn!("raising the NOSPACE alarm: {e}");
            }
            RAISING.lock().remove(&node.id);
        });
    }
    Err(Error::from(Rejection::NoSpace).into())
}
