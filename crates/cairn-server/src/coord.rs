//! Shared machinery of the Lock and Election services, built like etcd's
//! `concurrency` package on plain KV, leases and revisions:
//!
//! - a contender writes `prefix/<lease hex>` bound to its lease (or takes
//!   over its own earlier key, writing it again so that the earlier call's
//!   clean-up leaves it alone: [`enter`]), and its `create_revision` is its
//!   place in line; a Lock that took over a key already first holds at
//!   once ([`first_now`]), arming no clean-up of a key another call holds
//!   (one that took it over while not first gives it up if its client goes
//!   away, even if another call of the session is granted meanwhile: etcd's
//!   `Mutex.Lock` unlocks so too — one lease is one contender);
//! - it owns the lock (leads the election) when no key under the prefix has a
//!   smaller `create_revision`; otherwise it waits for the deletion of the
//!   key just before it (not for all of them: no thundering herd);
//! - the key and its revision are the fencing token: a holder that lost its
//!   lease has lost its key, and a write guarded by
//!   `create_revision(key) == rev` fails.
//!
//! - a contender that sends lease 0 gets a fresh lease of
//!   [`SESSION_TTL`] seconds of its own, never refreshed (etcd's servers
//!   open an orphaned session for it): its key is unique, so a second such
//!   caller waits, and the lock frees itself a minute later;
//! - after every wait, one linearizable read at one revision checks both
//!   that the contender's own key still exists with its create revision
//!   and that nothing is ahead of it. A contender whose key vanished while
//!   it waited (lease expired or revoked) is told its session expired, as
//!   etcd 3.5+'s `Mutex.Lock` does — never that it holds the lock, which
//!   would give a lock two holders (etcd-io/etcd#9921, still in 3.4).
//!
//! Every step runs with the caller's access (read and write on the
//! prefix, checked by the RPC before it starts and by the node at each
//! step), so a permission revoked mid-wait ends the wait; abandoning a key
//! is the node's own clean-up.
//!
//! Waiting uses the local change feed only as a wake-up; every decision is
//! taken on a linearizable read, and the grant's header carries that read's
//! revision (as etcd's lock and election servers answer with the header of
//! the read that found the contender first): at that revision the holder's
//! key exists and nothing is ahead of it, which a client can check.

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::response_op::Response;
use cairn_api::etcdserverpb::*;
use cairn_api::mvccpb::{event::EventType, KeyValue};
use cairn_store::watch_hub::{FeedMerger, HubItem};

use crate::error::Error;
use crate::Context;
use cairn_store::Access;

/// The TTL of the lease granted to a contender that brings none (etcd's
/// `concurrency.defaultSessionTTL`).
pub const SESSION_TTL: i64 = 60;

/// The contender's lease: its own, or (for 0) a fresh one of
/// [`SESSION_TTL`] that nobody keeps alive.
pub async fn session_lease(ctx: &Context, lease: i64, access: &Access) -> Result<i64, Error> {
    if lease != 0 {
        return Ok(lease);
    }
    Ok(ctx.node.lease_grant(0, SESSION_TTL, access).await?.0)
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn op(r: Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// A contender's key, as this call entered it.
#[derive(Clone, Debug)]
pub struct Entered {
    /// `prefix + hex(lease)`.
    pub key: Vec<u8>,
    /// Its create revision: its place in line.
    pub rev: i64,
    /// The revision this call last wrote it at: a later call with the same
    /// lease that takes the key over writes it again, so this call's
    /// clean-up ([`AbandonGuard`]) can tell the key is no longer its own.
    pub modified: i64,
    /// The key was there already (an earlier call with the same lease).
    pub taken_over: bool,
}

/// Creates (or takes over) the contender key `prefix + hex(lease)`.
///
/// A key of an earlier call with the same lease keeps its place in line;
/// it is written again (the value, under its create revision: etcd's
/// `Proclaim` where the value differs), so an earlier call that gave up
/// and whose clean-up is still on its way deletes nothing it no longer
/// owns. etcd writes it only when the value differs; the extra write is
/// the price of that clean-up running after its call ended. (A clean-up
/// that lands first deleted the key: entered again, anew.)
pub async fn enter(
    ctx: &Context,
    prefix: &[u8],
    lease: i64,
    value: &[u8],
    access: &Access,
) -> Result<Entered, Error> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    let put = PutRequest {
        key: key.clone(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    };
    let created_at = |rev: i64| Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    };
    for _ in 0..ENTER_ATTEMPTS {
        let txn = TxnRequest {
            compare: vec![created_at(0)],
            success: vec![op(Request::RequestPut(put.clone()))],
            failure: vec![op(Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            }))],
        };
        let resp = ctx.node.txn(&txn, access).await?;
        let at = resp.header.as_ref().map_or(0, |h| h.revision);
        if resp.succeeded {
            return Ok(Entered {
                key,
                rev: at,
                modified: at,
                taken_over: false,
            });
        }
        let existing = match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(Response::ResponseRange(r)) => r.kvs.first().cloned(),
            _ => None,
        };
        let Some(kv) = existing else {
            continue;
        };
        // Only while it is still that key: a put after a concurrent
        // resign, unlock or clean-up deleted it would bring it back at a
        // new create revision nobody waits on.
        let resp = ctx
            .node
            .txn(
                &TxnRequest {
                    compare: vec![created_at(kv.create_revision)],
                    success: vec![op(Request::RequestPut(put.clone()))],
                    ..Default::default()
                },
                access,
            )
            .await?;
        if resp.succeeded {
            return Ok(Entered {
                key,
                rev: kv.create_revision,
                modified: resp.header.map_or(0, |h| h.revision),
                taken_over: true,
            });
        }
    }
    Err(cairn_store::Error::Internal("contender key keeps vanishing".into()).into())
}

/// Rounds [`enter`] tries before giving up on a key deleted under it each
/// time.
const ENTER_ATTEMPTS: usize = 5;

/// The first key (smallest create revision) under `prefix`, linearizably:
/// the lock holder or election leader; and the revision it was read at.
pub async fn first(
    ctx: &Context,
    prefix: &[u8],
    access: &Access,
) -> Result<(Option<KeyValue>, i64), Error> {
    let r = ctx
        .node
        .range(
            RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: SortOrder::Ascend as i32,
                sort_target: SortTarget::Create as i32,
                ..Default::default()
            },
            access,
        )
        .await?;
    let at = r.header.as_ref().map_or(0, |h| h.revision);
    Ok((r.kvs.into_iter().next(), at))
}

/// Waits until the contender `entered` is first in line under `prefix`;
/// fails with `expired` (etcd's message) if its own key is gone. Returns
/// the revision of the read that found it first.
pub async fn wait_turn(
    ctx: &Context,
    prefix: &[u8],
    entered: &Entered,
    expired: &'static str,
    access: &Access,
) -> Result<i64, Error> {
    let (key, rev) = (entered.key.as_slice(), entered.rev);
    loop {
        let mut feed = changes(ctx, prefix).await;
        let (own, ahead, at) = place_in_line(ctx, prefix, key, rev, access).await?;
        let vanished = own.is_none_or(|kv| kv.create_revision != rev);
        if vanished && !cairn_store::planted::on("vanished-waiter") {
            return Err(Error::SessionExpired(expired));
        }
        let Some(ahead) = ahead else {
            return Ok(at);
        };
        let watched = [ahead.key.as_slice(), key];
        tokio::select! {
            _ = wait_deleted(&mut feed, &watched) => {}
            _ = ctx.node.stopped() => return Err(cairn_store::Error::Stopped.into()),
        }
    }
}

/// The revision of a linearizable read that found `entered` first in line
/// under `prefix` (its key there, nothing ahead), or `None` if it was not.
pub async fn first_now(
    ctx: &Context,
    prefix: &[u8],
    entered: &Entered,
    access: &Access,
) -> Result<Option<i64>, Error> {
    let (own, ahead, at) = place_in_line(ctx, prefix, &entered.key, entered.rev, access).await?;
    let here = own.is_some_and(|kv| kv.create_revision == entered.rev);
    Ok((here && ahead.is_none()).then_some(at))
}

/// The contender's own key and the contender just ahead of it (largest
/// create revision below `rev`), read linearizably at one revision (a
/// read-only Txn), and that revision.
async fn place_in_line(
    ctx: &Context,
    prefix: &[u8],
    key: &[u8],
    rev: i64,
    access: &Access,
) -> Result<(Option<KeyValue>, Option<KeyValue>, i64), Error> {
    let txn = TxnRequest {
        success: vec![
            op(Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
            op(Request::RequestRange(ahead_of(prefix, rev))),
        ],
        ..Default::default()
    };
    let resp = ctx.node.txn(&txn, access).await?;
    let at = resp.header.as_ref().map_or(0, |h| h.revision);
    let mut kvs = resp.responses.into_iter().map(|r| match r.response {
        Some(Response::ResponseRange(r)) => r.kvs.into_iter().next(),
        _ => None,
    });
    Ok((kvs.next().flatten(), kvs.next().flatten(), at))
}

/// The range naming the contender just ahead of `rev` under `prefix`.
fn ahead_of(prefix: &[u8], rev: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: rev - 1,
        ..Default::default()
    }
}

/// The changes under `prefix`, through the watch hub (every region the
/// prefix touches, once the regions here cover it), from now on.
pub async fn changes(ctx: &Context, prefix: &[u8]) -> FeedMerger {
    let end = prefix_end(prefix);
    // `[0]` is etcd's "to the end of the keyspace".
    let end = (end != [0]).then_some(end);
    ctx.node.changes(prefix, end.as_deref()).await
}

/// Waits for a delete of any of `keys` on the feed (or a feed
/// discontinuity, after which the caller re-reads).
async fn wait_deleted(feed: &mut FeedMerger, keys: &[&[u8]]) {
    wait_for(feed, |e| {
        e.r#type == EventType::Delete as i32
            && e.kv
                .as_ref()
                .is_some_and(|kv| keys.contains(&kv.key.as_slice()))
    })
    .await
}

/// Waits for an event `hit` picks, or a discontinuity (the caller then
/// re-reads); forever once the feed closed (the node is stopping, which
/// the caller also waits for).
async fn wait_for(feed: &mut FeedMerger, hit: impl Fn(&cairn_api::mvccpb::Event) -> bool) {
    loop {
        match feed.next().await {
            HubItem::Batch { events, .. } => {
                if events.iter().any(|c| hit(&c.event)) {
                    return;
                }
            }
            HubItem::Discontinuity => return,
            HubItem::Closed => std::future::pending::<()>().await,
        }
    }
}

/// Which key [`leave`] deletes.
#[derive(Clone, Copy, Debug)]
pub enum Only {
    /// Whatever is there (Unlock).
    Any,
    /// The key created at this revision (Resign).
    Created(i64),
    /// The key as a call entered it: created and last written at these
    /// revisions (an abandoned acquisition's clean-up).
    Untouched { created: i64, modified: i64 },
}

/// Deletes `key` if it is still the one `only` names (a no-op otherwise).
pub async fn leave(ctx: &Context, key: &[u8], only: Only, access: &Access) -> Result<i64, Error> {
    let del = op(Request::RequestDeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }));
    let compare = |target: CompareTarget, union: TargetUnion| Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    };
    let compare = match only {
        Only::Any => Vec::new(),
        Only::Created(rev) => vec![compare(
            CompareTarget::Create,
            TargetUnion::CreateRevision(rev),
        )],
        Only::Untouched { created, modified } => vec![
            compare(CompareTarget::Create, TargetUnion::CreateRevision(created)),
            compare(CompareTarget::Mod, TargetUnion::ModRevision(modified)),
        ],
    };
    let resp = ctx
        .node
        .txn(
            &TxnRequest {
                compare,
                success: vec![del],
                ..Default::default()
            },
            access,
        )
        .await?;
    Ok(resp.header.map_or(0, |h| h.revision))
}

/// Deletes a contender key when an acquisition is abandoned (client gone)
/// before it completed — unless a later call with the same lease took the
/// key over meanwhile (its write moved the key's mod revision): the
/// clean-up runs after the call ended, maybe long after (it waits on
/// whatever holds the key), and must not delete a key another call holds.
pub struct AbandonGuard {
    ctx: Option<(std::sync::Arc<Context>, Entered)>,
}

impl AbandonGuard {
    /// Guards `entered`.
    pub fn new(ctx: std::sync::Arc<Context>, entered: &Entered) -> Self {
        Self {
            ctx: Some((ctx, entered.clone())),
        }
    }
    /// The acquisition completed: keep the key.
    pub fn disarm(mut self) {
        self.ctx = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some((ctx, e)) = self.ctx.take() {
            tokio::spawn(async move {
                let only = Only::Untouched {
                    created: e.rev,
                    modified: e.modified,
                };
                let _ = leave(&ctx, &e.key, only, &Access::Internal).await;
            });
        }
    }
}
