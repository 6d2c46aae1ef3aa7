//! Election `Observe`, as etcd's observer (`concurrency.Election.observe`,
//! which etcd's election server runs for the stream): read the leader —
//! the contender with the smallest create revision — and send it, then
//! watch its key from the read's revision on and send every value it is
//! given, until the key is deleted; then read the leader again. With no
//! leader, the first key put under the prefix is the leader.
//!
//! The watches are served in-process by the Watch service's own code
//! ([`crate::watch::open`]), so a value is never lost to a feed that broke
//! (a split of the key's region, a slow reader): the watch replays it
//! from history. A watch cancelled for any reason but a compaction (a
//! region not served here yet) is opened again from where it got to, after
//! a pause that doubles up to [`MAX_PAUSE`], as etcd's client watch
//! reconnects. A compaction past where it got to ends the stream, as it
//! ends etcd's observer.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::etcdserverpb::WatchCreateRequest;
use cairn_api::mvccpb::event::EventType;
use cairn_api::mvccpb::{Event, KeyValue};
use cairn_api::v3electionpb::LeaderResponse;
use cairn_store::{Access, Credentials};
use tokio::sync::mpsc;
use tonic::Status;

use crate::watch::{self, Responses};
use crate::{coord, Context};

/// The first pause before a cancelled watch is opened again.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest.
const MAX_PAUSE: Duration = Duration::from_secs(2);

type Out = mpsc::Sender<Result<LeaderResponse, Status>>;

/// Observes the election of prefix `pfx` for a caller with `access` and
/// `creds` (checked already), sending to `tx` until the caller goes.
pub async fn run(ctx: Arc<Context>, pfx: Vec<u8>, access: Access, creds: Credentials, tx: Out) {
    // The leader's key and revision last sent.
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        let (leader, at) = match coord::first(&ctx, &pfx, &access).await {
            Ok(found) => found,
            Err(e) => {
                let _ = tx.send(Err(Status::from(e))).await;
                return;
            }
        };
        let (kv, rev) = match leader {
            Some(kv) => (kv, at),
            // No leader: the first key put under the prefix.
            None => {
                let mut puts = Follower::new(&ctx, &creds, &pfx, coord::prefix_end(&pfx), at + 1);
                match first_put(&mut puts, &tx).await {
                    Some(kv) => {
                        let rev = kv.mod_revision;
                        (kv, rev)
                    }
                    None => return,
                }
            }
        };
        let id = (kv.key.clone(), kv.mod_revision);
        if last.as_ref() != Some(&id) {
            last = Some(id);
            let r = LeaderResponse {
                header: Some(ctx.header(rev)),
                kv: Some(kv.clone()),
            };
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
        // Every value the leader proclaims after `rev` (no put of its key
        // came between its value and `rev`), until its key goes. (From the
        // read's revision, as etcd's observer, not the value's: history
        // below a compaction is gone.)
        let mut key = Follower::new(&ctx, &creds, &kv.key, Vec::new(), rev + 1);
        if !follow(&mut key, &ctx, &mut last, &tx).await {
            return;
        }
    }
}

/// The first put `puts` brings; `None` when the stream ends.
async fn first_put(puts: &mut Follower, tx: &Out) -> Option<KeyValue> {
    loop {
        for ev in puts.events(tx).await? {
            match ev.kv {
                Some(kv) if ev.r#type == EventType::Put as i32 => return Some(kv),
                // A delete with no leader ends nothing.
                _ => {}
            }
        }
    }
}

/// Sends every put of the leader's key `key` brings, each at its own
/// revision. True when the key was deleted (read the leader again), false
/// when the stream ends.
async fn follow(
    key: &mut Follower,
    ctx: &Context,
    last: &mut Option<(Vec<u8>, i64)>,
    tx: &Out,
) -> bool {
    while let Some(events) = key.events(tx).await {
        for ev in events {
            let Some(kv) = ev.kv else { continue };
            if ev.r#type == EventType::Delete as i32 {
                return true;
            }
            *last = Some((kv.key.clone(), kv.mod_revision));
            let r = LeaderResponse {
                header: Some(ctx.header(kv.mod_revision)),
                kv: Some(kv),
            };
            if tx.send(Ok(r)).await.is_err() {
                return false;
            }
        }
    }
    false
}

/// A watch of `[key, range_end)` that opens again where it got to when it
/// is cancelled for any reason but a compaction.
struct Follower {
    ctx: Arc<Context>,
    creds: Credentials,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The revision to open it from again: past every event it brought.
    next: i64,
    responses: Responses,
    pause: Duration,
}

impl Follower {
    fn new(
        ctx: &Arc<Context>,
        creds: &Credentials,
        key: &[u8],
        range_end: Vec<u8>,
        from: i64,
    ) -> Self {
        let mut f = Self {
            ctx: ctx.clone(),
            creds: creds.clone(),
            key: key.to_vec(),
            range_end,
            next: from,
            responses: mpsc::channel(1).1,
            pause: FIRST_PAUSE,
        };
        f.open();
        f
    }

    fn open(&mut self) {
        let create = WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            start_revision: self.next,
            ..Default::default()
        };
        self.responses = watch::open(self.ctx.clone(), self.creds.clone(), create);
    }

    /// The next events; `None` when the caller behind `tx` went, the node
    /// stopped, or a compaction cancelled the watch.
    async fn events(&mut self, tx: &Out) -> Option<Vec<Event>> {
        loop {
            let r = tokio::select! {
                r = self.responses.recv() => r,
                _ = tx.closed() => return None,
            };
            let r = r?.ok()?;
            if r.canceled {
                if r.compact_revision > 0 {
                    return None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.pause) => {}
                    _ = tx.closed() => return None,
                    _ = self.ctx.node.stopped() => return None,
                }
                self.pause = (self.pause * 2).min(MAX_PAUSE);
                self.open();
                continue;
            }
            let Some(newest) = r
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision)
                .max()
            else {
                continue;
            };
            self.next = self.next.max(newest + 1);
            self.pause = FIRST_PAUSE;
            return Some(r.events);
        }
    }
}
