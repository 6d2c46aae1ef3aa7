//! One Watch stream: its requests, its watchers, and the one loop that
//! feeds them.
//!
//! The loop waits on four things: the client's next request, the next batch
//! of any group's feed, a finished history replay, and the progress ticker.
//! Everything a watcher sends is queued from here, so a cancel is answered
//! after the last event of the cancelled watcher and a progress response at
//! R after every watcher has queued its events up to R — answered once no
//! watcher is replaying history, so R never goes back below what the
//! stream's other watchers were sent.

use std::collections::{HashMap, HashSet};

use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use cairn_auth::needs;
use cairn_store::watch_hub::{Carry, HubItem};
use cairn_store::{Access, Credentials};
use futures::future::select_all;
use futures::{Stream as RequestStream, StreamExt};
use std::sync::Arc;
use tokio::task::{Id, JoinSet};
use tonic::Status;

use super::group::{self, Group};
use super::watcher::{self, Mode, Start, Watcher};
use super::Out;
use crate::Context;

/// etcd's reasons for refusing a watch (`mvcc` errors).
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// Cairn's reason for refusing (or ending) a watch whose keys lie partly in
/// a region this member does not host (a split's new region not started
/// here within seconds): watch again, here or elsewhere.
const UNCOVERED: &str =
    "etcdserver: a region of the watched keys is not served by this member; watch again";
/// etcd's reason for a watch on keys the caller may not read (the gRPC
/// status's text, as etcd's watch server puts it).
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// etcd's reason for a watch the auth check refused (its watch server's
/// `isWatchPermitted` cases): a bad token, an old auth revision and no
/// user each in their gRPC status's words, anything else "permission
/// denied". clientv3 opens a new stream (with a new token) on the first
/// two, so their words matter.
fn refusal_reason(e: cairn_store::Error) -> String {
    use cairn_auth::AuthError as A;
    use cairn_store::Error as S;
    match e {
        S::Auth(A::InvalidAuthToken | A::AuthOldRevision | A::UserEmpty)
        | S::Rejected(cairn_mvcc::Rejection::AuthOldRevision) => {
            let status = crate::error::to_status(e.into());
            format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            )
        }
        _ => PERMISSION_DENIED.to_string(),
    }
}

/// A finished history read: the events (unfiltered) up to the revision.
type Replay = Result<(Vec<cairn_mvcc::Change>, i64), String>;

struct Stream {
    ctx: Arc<Context>,
    /// The caller's credentials: each watch is checked when created.
    creds: Credentials,
    out: Out,
    watchers: HashMap<i64, Watcher>,
    /// Watches the server cancelled as compacted, kept until the client
    /// cancels them, as etcd's watch stream keeps a compacted watcher: its
    /// ID stays taken, and the client's cancel is answered.
    compacted: HashSet<i64>,
    groups: Vec<Group>,
    replays: JoinSet<Replay>,
    /// Which watcher each history read in flight is for.
    replaying: HashMap<Id, i64>,
    /// The next ID handed to a watch created without one: never one handed
    /// out before on this stream (as etcd's `nextID`), so a client's late
    /// cancel of a watch the server ended cannot end a newer one.
    next_id: i64,
    /// A progress request waits to be answered ([`Stream::answer_progress`]).
    progress_asked: bool,
}

/// Serves one stream until the client goes away.
pub async fn run(
    ctx: Arc<Context>,
    creds: Credentials,
    mut inbound: impl RequestStream<Item = Result<WatchRequest, Status>> + Unpin,
    out: Out,
) {
    let mut ticker = ctx.limits.watch_progress_interval.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut s = Stream {
        ctx,
        creds,
        out,
        watchers: HashMap::new(),
        compacted: HashSet::new(),
        groups: Vec::new(),
        replays: JoinSet::new(),
        replaying: HashMap::new(),
        next_id: 0,
        progress_asked: false,
    };
    // A client may half-close its sending side after its requests (etcd's
    // grpc-gateway does): the stream goes on until the client disconnects,
    // as in etcd. Only a transport error ends it from this side.
    let mut receiving = true;
    loop {
        let next_request = async {
            if receiving {
                inbound.next().await
            } else {
                std::future::pending().await
            }
        };
        let tick = async {
            match &mut ticker {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let ok = tokio::select! {
            m = next_request => match m {
                Some(Ok(req)) => s.request(req).await,
                None => {
                    receiving = false;
                    true
                }
                Some(Err(_)) => false,
            },
            (g, item) = next_batch(&mut s.groups) => s.batch(g, item).await,
            Some(done) = s.replays.join_next_with_id() => match done {
                Ok((task, replay)) => s.replayed(task, replay).await,
                Err(e) => s.replayed(e.id(), Err(e.to_string())).await,
            },
            _ = tick => s.progress_tick().await,
            _ = s.out.closed() => false,
            // A stopping node ends its streams (they hold the node).
            _ = s.ctx.node.stopped() => false,
        };
        if !ok || (s.progress_asked && !s.answer_progress().await) {
            break;
        }
    }
}

/// The next item of any group's feed, with the group's index.
async fn next_batch(groups: &mut [Group]) -> (usize, HubItem) {
    match groups {
        [] => std::future::pending().await,
        [only] => (0, only.merger().next().await),
        many => {
            let (item, g, _) =
                select_all(many.iter_mut().map(|g| Box::pin(g.merger().next()))).await;
            (g, item)
        }
    }
}

impl Stream {
    /// Handles one client request; false when the client is gone.
    async fn request(&mut self, req: WatchRequest) -> bool {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c))
                if self.remove(c.watch_id) || self.compacted.remove(&c.watch_id) =>
            {
                let r = response(&self.ctx, c.watch_id, |r| r.canceled = true);
                send(&self.out, r).await
            }
            // etcd ignores a cancel of an unknown watch.
            Some(RequestUnion::CancelRequest(_)) => true,
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_asked = true;
                true
            }
            None => true,
        }
    }

    /// Answers a progress request at the lowest revision every watcher is
    /// synced to (every event at or below it sent), or the store's when
    /// there is none — once that is no lower than any event the stream's
    /// watchers were sent. A watcher still replaying history, or whose
    /// regions have resolved less far than another's, is synced below
    /// what the others were sent: answered then, clients that hand the
    /// one notification to every watcher of the stream (clientv3) would
    /// see progress go back. It waits until they catch up (their regions'
    /// closes move on while watched). (etcd since 3.5 also waits until its
    /// watchers are synced.)
    async fn answer_progress(&mut self) -> bool {
        let catching_up = self
            .watchers
            .values()
            .any(|w| matches!(w.mode, Mode::Replaying { .. } | Mode::Waiting));
        let rev = self
            .watchers
            .values()
            .map(Watcher::synced)
            .min()
            .unwrap_or_else(|| header_revision(&self.ctx));
        let sent = self.watchers.values().map(|w| w.sent).max().unwrap_or(0);
        if catching_up || rev < sent {
            return true;
        }
        self.progress_asked = false;
        send(&self.out, progress(&self.ctx, -1, rev)).await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let ctx = &self.ctx;
        let refuse = |reason: &str| {
            response(ctx, -1, |r| {
                r.created = true;
                r.canceled = true;
                r.cancel_reason = reason.to_string();
            })
        };
        let from_key = c.range_end == [0];
        if !c.range_end.is_empty() && !from_key && c.key >= c.range_end {
            return send(&self.out, refuse(EMPTY_RANGE)).await;
        }
        let access = Access::client(&self.creds, needs::watch(&c.key, &c.range_end));
        // Checked once, at creation (as etcd), so against a caught-up replica.
        if let Err(e) = ctx.node.authorize_fresh(&access).await {
            return send(&self.out, refuse(&refusal_reason(e))).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) || self.compacted.contains(&c.watch_id) {
                return send(&self.out, refuse(DUPLICATE_ID)).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id)
                || self.compacted.contains(&self.next_id)
            {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let span = cairn_mvcc::Span::new(&c.key, &c.range_end);
        let cover_by = std::time::Instant::now() + cairn_store::COVER_WAIT;
        let Some((key, regions)) = group::touched(ctx, &span, cover_by).await else {
            // A region of the span is not hosted here (yet): nothing here
            // could send its events.
            return send(&self.out, refuse(UNCOVERED)).await;
        };
        // An idle region's resolved revision moves only while asked: wait
        // (briefly) for the regions to catch up with the freshest, or the
        // watch would start at an idle one's last write.
        ctx.node.catch_up_closes(&regions).await;
        // The created response goes out before any event of the watcher,
        // with the revision every region watched has resolved: events
        // above it are still to come (a transaction across regions may
        // yet commit at or below a region's newest revision) — or the
        // store's compaction, if higher (a region compacted past another's
        // resolved revision: history below it is gone, and a watch from
        // now is never told it is compacted). A watch from now starts
        // above the newest revision this member answered a write with
        // too, if the regions here have not resolved it yet: it leaves
        // out what this member already answered, as etcd's would. (Not
        // one from a revision: its replay reads history up to here.)
        let mut now = regions.resolved().max(regions.compacted());
        if c.start_revision <= 0 {
            now = now.max(ctx.node.answered_revision());
        }
        let mut created = response(ctx, id, |r| r.created = true);
        if let Some(h) = created.header.as_mut() {
            h.revision = now;
        }
        if !send(&self.out, created).await {
            return false;
        }
        let g = match self.groups.iter().position(|g| g.key == key) {
            Some(g) => {
                self.groups[g].refresh(regions);
                g
            }
            None => {
                self.groups.push(Group::open(key.clone(), regions, None));
                self.groups.len() - 1
            }
        };
        self.groups[g].members.push(id);
        let w = Watcher::new(&c, key, now);
        self.watchers.insert(id, w);
        self.replay(id).await
    }

    /// Brings watcher `id` up to its group's feed: from the history of a
    /// fresh view, unless it has nothing to replay. False when the client
    /// is gone.
    async fn replay(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.get_mut(&id) else {
            return true;
        };
        let Some(g) = self.groups.iter_mut().find(|g| g.key == w.group) else {
            return true;
        };
        let Some(view) = g.view(&w.filter.span) else {
            // The group's regions moved: it reads them again (its feed
            // breaks), and the regrouped watcher replays then.
            w.mode = Mode::Waiting;
            g.look_again();
            return true;
        };
        // A view covers everything its group handed out (group.rs); if it
        // somehow did not, replaying again with a later view will.
        let behind = view.current < g.resolved;
        if w.next == 0 {
            w.next = view.current + 1;
        }
        // A watcher regrouped with what its group's feed held is compacted
        // only where history it needs is gone and the carry does not hold
        // it; any other, below any region's compaction (a compaction is
        // of the whole store, as etcd's).
        let carry = w.carry.clone();
        let compacted = match &carry {
            None => view.compacted,
            Some(c) => uncarried_compaction(c, &view, w.next),
        };
        let start = watcher::start(w.next, view.current, compacted);
        // Its start checked against the compaction: from here on it keeps
        // up, and a regroup may carry it on (not before: a watch created
        // from a compacted revision is told so, as on etcd).
        w.kept_up |= start != Start::Compacted;
        match start {
            Start::Compacted => {
                let compacted = view.compacted;
                self.remove(id);
                self.compacted.insert(id);
                let r = response(&self.ctx, id, |r| {
                    r.compact_revision = compacted;
                    r.canceled = true;
                });
                return send(&self.out, r).await;
            }
            Start::Live => {
                w.resolved = w.resolved.max(view.current);
                w.mode = Mode::Live;
                w.carry = None;
                return true;
            }
            Start::Replay => {}
        }
        let (from, to, views) = (w.next, view.current, view.history);
        let compacted = view.compacted;
        let task = self
            .replays
            .spawn_blocking(move || {
                let mut all = Vec::new();
                for (snap, span, region_compacted) in views {
                    // Below the region's compaction, the carry holds it.
                    let from = from.max(region_compacted);
                    if from > to {
                        continue;
                    }
                    let mut events =
                        cairn_mvcc::history(&*snap, &span, from, to).map_err(|e| e.to_string())?;
                    cairn_mvcc::without_prev_at(&mut events, region_compacted);
                    all.extend(events);
                }
                cairn_mvcc::without_prev_at(&mut all, compacted);
                if let Some(c) = carry {
                    with_carried(&mut all, &c, from, to);
                }
                all.sort_by(|a, b| a.order().cmp(&b.order()));
                Ok((all, to))
            })
            .id();
        self.replaying.insert(task, id);
        w.mode = Mode::Replaying {
            task,
            pending: Vec::new(),
            again: behind,
        };
        true
    }

    /// A history read finished: send it, then what the group fed meanwhile.
    async fn replayed(&mut self, task: Id, replay: Replay) -> bool {
        let Some(id) = self.replaying.remove(&task) else {
            return true;
        };
        let Some(w) = self.watchers.get_mut(&id) else {
            return true;
        };
        let (pending, again) = match &mut w.mode {
            Mode::Replaying {
                task: t,
                pending,
                again,
            } if *t == task => (std::mem::take(pending), *again),
            _ => return true,
        };
        w.mode = Mode::Live;
        let (events, upto) = match replay {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(watch_id = id, error = %e, "watch history read failed");
                self.remove(id);
                let r = response(&self.ctx, id, |r| {
                    r.canceled = true;
                    r.cancel_reason = format!("history read failed: {e}");
                });
                return send(&self.out, r).await;
            }
        };
        let events = w.replayed(events, upto);
        if !w.deliver(&self.ctx, id, &self.out, events).await {
            return false;
        }
        if again {
            return self.replay(id).await;
        }
        w.carry = None;
        for (batch, upto) in pending {
            let events = w.take(&batch, upto);
            if !w.deliver(&self.ctx, id, &self.out, events).await {
                return false;
            }
        }
        true
    }

    /// The next item of group `g`'s feed.
    async fn batch(&mut self, g: usize, item: HubItem) -> bool {
        match item {
            HubItem::Batch { events, resolved } => {
                let group = &mut self.groups[g];
                group.resolved = group.resolved.max(resolved);
                for i in 0..group.members.len() {
                    let id = group.members[i];
                    let Some(w) = self.watchers.get_mut(&id) else {
                        continue;
                    };
                    let events = w.take(&events, resolved);
                    if !w.deliver(&self.ctx, id, &self.out, events).await {
                        return false;
                    }
                }
                true
            }
            // Fell behind the bounded feed, or a replica was replaced by a
            // snapshot: subscribe again and replay from MVCC.
            HubItem::Discontinuity => {
                tracing::debug!(
                    regions = ?self.groups[g].key,
                    watchers = self.groups[g].members.len(),
                    "watch feed broke (lagged, snapshot installed or split): replaying from MVCC"
                );
                // What the feed held goes on with its members: history may
                // have lost it since (a compaction while a region held it).
                let carry = self.groups[g].carry().map(Arc::new);
                let members = self.regroup(g, carry.as_ref()).await;
                self.groups[g].resubscribe(carry.as_deref());
                for id in members {
                    let live = match self.watchers.get_mut(&id).map(|w| &mut w.mode) {
                        Some(Mode::Replaying { pending, again, .. }) => {
                            pending.clear();
                            *again = true;
                            false
                        }
                        Some(Mode::Live | Mode::Waiting) => true,
                        None => false,
                    };
                    if live && !self.replay(id).await {
                        return false;
                    }
                }
                self.groups.retain(|g| !g.members.is_empty());
                true
            }
            // The node is shutting down.
            HubItem::Closed => false,
        }
    }

    /// After a split, the members of group `g` whose span now touches
    /// other regions move to the group of those regions (opened if new);
    /// returns every member of `g` before the move, each to be replayed.
    /// Waits (briefly) until the regions hosted here cover each span: the
    /// child of a split is started here just after the split applies. A
    /// member whose span they still do not cover then is ended (told to
    /// watch again) rather than left without some of its keys' events.
    /// A member takes `carry`, and the group it stays in or moves to holds
    /// it on: a group opened here from its first subscription, one already
    /// open from now (`FeedMerger::hold_carried` keeps only what it has
    /// not released, deduplicated against its own feed; its members skip
    /// what is below their positions, so none gets an event twice).
    async fn regroup(&mut self, g: usize, carry: Option<&Arc<Carry>>) -> Vec<i64> {
        let members = self.groups[g].members.clone();
        // Groups already open that hold `carry` on now (once each).
        let mut carried_to: Vec<usize> = Vec::new();
        // One wait for them all: the stream serves nothing meanwhile.
        let cover_by = std::time::Instant::now() + cairn_store::COVER_WAIT;
        for &id in &members {
            let Some(span) = self.watchers.get(&id).map(|w| w.filter.span.clone()) else {
                continue;
            };
            let Some((key, regions)) = group::touched(&self.ctx, &span, cover_by).await else {
                self.groups[g].members.retain(|m| *m != id);
                if let Some(w) = self.watchers.remove(&id) {
                    if let Mode::Replaying { task, .. } = w.mode {
                        self.replaying.remove(&task);
                    }
                }
                let r = response(&self.ctx, id, |r| {
                    r.canceled = true;
                    r.cancel_reason = UNCOVERED.to_string();
                });
                let _ = send(&self.out, r).await;
                continue;
            };
            if key == self.groups[g].key {
                // The same regions, maybe with new bounds (a split or
                // merge moved them): the group resubscribes with these.
                self.groups[g].refresh(regions);
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.take_carry(carry);
                }
                continue;
            }
            self.groups[g].members.retain(|m| *m != id);
            let to = match self.groups.iter().position(|x| x.key == key) {
                Some(to) => {
                    self.groups[to].refresh(regions);
                    if let Some(c) = carry.filter(|_| !carried_to.contains(&to)) {
                        self.groups[to].merger().hold_carried(c);
                        carried_to.push(to);
                    }
                    to
                }
                None => {
                    let group = Group::open(key.clone(), regions, carry.map(|c| &**c));
                    self.groups.push(group);
                    self.groups.len() - 1
                }
            };
            self.groups[to].members.push(id);
            if let Some(w) = self.watchers.get_mut(&id) {
                w.take_carry(carry);
                w.group = key;
            }
        }
        members
    }

    /// Progress notifications for quiet watchers that asked for them.
    async fn progress_tick(&mut self) -> bool {
        for (id, w) in &mut self.watchers {
            if !w.progress_notify || matches!(w.mode, Mode::Replaying { .. } | Mode::Waiting) {
                continue;
            }
            if w.quiet && !send(&self.out, progress(&self.ctx, *id, w.synced())).await {
                return false;
            }
            w.quiet = true;
        }
        true
    }

    /// Forgets watcher `id` (and its group, if it was the last member).
    fn remove(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.remove(&id) else {
            return false;
        };
        if let Mode::Replaying { task, .. } = w.mode {
            self.replaying.remove(&task);
        }
        if let Some(g) = self.groups.iter().position(|g| g.key == w.group) {
            self.groups[g].members.retain(|m| *m != id);
            if self.groups[g].members.is_empty() {
                self.groups.swap_remove(g);
            }
        }
        true
    }
}

/// The highest compaction of a region of `view` that cuts into the history
/// a watcher from `next` needs and that `carry` does not stand in for (0
/// if none does).
fn uncarried_compaction(carry: &Carry, view: &group::View, next: i64) -> i64 {
    view.history
        .iter()
        .filter(|(_, span, compacted)| {
            let (lo, hi) = group::bounds(span);
            next < *compacted && !carry.covers(&lo, hi.as_deref(), next, compacted - 1)
        })
        .map(|(_, _, compacted)| *compacted)
        .max()
        .unwrap_or(0)
}

/// Adds to `history` the events `carry` holds at revisions `from..=to`,
/// in place of history's copies of them (which lack `prev_kv` at a
/// region's compaction).
fn with_carried(history: &mut Vec<cairn_mvcc::Change>, carry: &Carry, from: i64, to: i64) {
    let carried: Vec<&cairn_mvcc::Change> = carry
        .events()
        .iter()
        .filter(|c| (from..=to).contains(&c.revision))
        .collect();
    if carried.is_empty() {
        return;
    }
    // By revision and key (a key changes once per revision; history of a
    // single key does not read its op's place in the transaction).
    let have: std::collections::HashSet<(i64, &[u8])> =
        carried.iter().map(|c| (c.revision, c.key())).collect();
    history.retain(|c| !have.contains(&(c.revision, c.key())));
    history.extend(carried.into_iter().cloned());
}

/// A progress response: every event at or below `rev` has been sent.
fn progress(ctx: &Context, watch_id: i64, rev: i64) -> WatchResponse {
    let mut r = response(ctx, watch_id, |_| {});
    if let Some(h) = &mut r.header {
        h.revision = rev;
    }
    r
}

/// The revision of a watch response's header: this member's newest, and
/// never below a revision it answered a KV call with — the revision a
/// watch from now starts above — so headers on a stream never go back
/// from a created response's.
fn header_revision(ctx: &Context) -> i64 {
    ctx.node.revision().max(ctx.node.answered_revision())
}

/// A response for `watch_id` with the current header, shaped by `f`.
pub(super) fn response(
    ctx: &Context,
    watch_id: i64,
    f: impl FnOnce(&mut WatchResponse),
) -> WatchResponse {
    let mut r = WatchResponse {
        header: Some(ctx.header(header_revision(ctx))),
        watch_id,
        ..Default::default()
    };
    f(&mut r);
    r
}

/// Queues `r`; false when the client is gone.
pub(super) async fn send(out: &Out, r: WatchResponse) -> bool {
    out.send(Ok(r)).await.is_ok()
}
