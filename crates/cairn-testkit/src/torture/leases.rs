//! The lease workload and its checker: no key disappears before its lease
//! is due, and every lease left to expire does.
//!
//! Clients grant leases (TTL 2–5 s unless the run says otherwise), attach keys `lz/<lease hex>/<n>`, keep
//! each alive for a while over a KeepAlive stream, then either revoke it or
//! abandon it. A client knows how long the server owes it the lease: TTL
//! past the *send* time of the last acknowledged keep-alive (or of the
//! grant) — a server counts from when the request reached it, later.
//! Observers watch `lz/` on every node at once and note when each delete
//! first reached one of them (after the delete happened; a node cut off
//! from the others would learn late, the others on time).
//!
//! Violations: a delete of a lease's key that reached the observer before
//! the lease was owed until, and before the client revoked it (early
//! expiry: a deposed leader renewing, a new leader resuming from a stale
//! checkpoint or from state it had not applied); and, once the run is over
//! and healed, a key of a finished lease still present after every lease's
//! TTL plus [`EXPIRY_GRACE`] (a lease that never expires).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::*;
use cairn_api::mvccpb::event::EventType;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::watch::WatchStream;

/// How long after every lease's TTL (the run over and healed) a finished
/// lease's keys may still exist: a leader change right after the last heal
/// costs an election and a full TTL counted again by the new leader, and a
/// failed revoke a retry (measured: at most ~6 s past due). Generous, so
/// it catches leases that stay, not slow ones.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(20);
const CALL: Duration = Duration::from_secs(3);
const PREFIX: &str = "lz/";

/// A lazily connected channel to `addr`.
pub fn channel(addr: &str) -> Channel {
    crate::secured::channel(addr)
}

/// A granted lease kept alive in the background, and how long the server
/// owes it to us.
pub struct KeepAlive {
    pub id: i64,
    pub ttl: i64,
    owed: Arc<Mutex<Instant>>,
    acks: Acks,
    task: tokio::task::JoinHandle<()>,
}

/// The last few acknowledged renewals, `(sent, answered)`, for reports.
type Acks = Arc<Mutex<std::collections::VecDeque<(Instant, Instant)>>>;
/// How many renewals [`KeepAlive`] remembers.
const ACKS_KEPT: usize = 6;

impl KeepAlive {
    /// Grants a lease of `ttl` seconds and starts renewing it every third
    /// of that.
    pub async fn start(ch: Channel, ttl: i64) -> Result<Self, tonic::Status> {
        let sent = Instant::now();
        let mut client = LeaseClient::new(ch.clone());
        let grant = client.lease_grant(LeaseGrantRequest { ttl, id: 0 });
        let g = tokio::time::timeout(CALL, grant)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("grant"))??
            .into_inner();
        let owed = Arc::new(Mutex::new(sent + Duration::from_secs(g.ttl as u64)));
        let acks: Acks = Arc::new(Mutex::new([(sent, Instant::now())].into()));
        let task = tokio::spawn(renew(ch, g.id, g.ttl, owed.clone(), acks.clone()));
        Ok(Self {
            id: g.id,
            ttl: g.ttl,
            owed,
            acks,
            task,
        })
    }

    /// Until when the server owes us the lease.
    pub fn owed_until(&self) -> Instant {
        *self.owed.lock()
    }

    /// The grant and the last few acknowledged renewals, `(sent, answered)`.
    pub fn acks(&self) -> Vec<(Instant, Instant)> {
        self.acks.lock().iter().copied().collect()
    }

    /// Stops renewing but keeps the handle (a client whose session died
    /// while it still waits on a call); the lease is left to expire.
    pub fn stop_renewing(&self) {
        self.task.abort();
    }

    /// Stops renewing; the lease is left to expire.
    pub fn abandon(self) -> Instant {
        self.task.abort();
        self.owed_until()
    }

    /// Stops renewing and revokes the lease (best effort).
    pub async fn revoke(self, ch: &Channel) {
        self.task.abort();
        let mut client = LeaseClient::new(ch.clone());
        let call = client.lease_revoke(LeaseRevokeRequest { id: self.id });
        let _ = tokio::time::timeout(CALL, call).await;
    }
}

/// Renews `id` every `ttl / 3` over a KeepAlive stream. A request whose
/// answer is late drops the stream (a late answer must not be taken for a
/// later request's); an answer of TTL 0 (lease gone) ends renewing.
async fn renew(ch: Channel, id: i64, ttl: i64, owed: Arc<Mutex<Instant>>, acks: Acks) {
    let every = Duration::from_millis(ttl as u64 * 1000 / 3);
    loop {
        let (tx, rx) = mpsc::channel(1);
        let mut client = LeaseClient::new(ch.clone());
        let Ok(Ok(resp)) =
            tokio::time::timeout(CALL, client.lease_keep_alive(ReceiverStream::new(rx))).await
        else {
            tokio::time::sleep(every / 2).await;
            continue;
        };
        let mut inbound = resp.into_inner();
        loop {
            tokio::time::sleep(every).await;
            let sent = Instant::now();
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                break;
            }
            match tokio::time::timeout(every, inbound.message()).await {
                Ok(Ok(Some(r))) if r.ttl > 0 => {
                    let mut o = owed.lock();
                    *o = (*o).max(sent + Duration::from_secs(r.ttl as u64));
                    let mut a = acks.lock();
                    if a.len() == ACKS_KEPT {
                        a.pop_front();
                    }
                    a.push_back((sent, Instant::now()));
                }
                Ok(Ok(Some(_))) => return, // the lease is gone
                _ => break,
            }
        }
    }
}

/// One lease's life, as its client saw it.
#[derive(Clone, Debug)]
pub struct Life {
    pub id: i64,
    pub ttl: i64,
    /// Until when the server owed it (after the last acknowledged renewal).
    pub owed_until: Instant,
    /// When the client sent its revoke, if it revoked.
    pub revoked_at: Option<Instant>,
}

/// A delete the observer saw.
#[derive(Clone, Debug)]
pub struct Deleted {
    pub key: String,
    pub revision: i64,
    pub seen: Instant,
}

/// What the lease workload did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lives: Vec<Life>,
    pub deletes: Vec<Deleted>,
    /// Keys of finished leases still present after the grace period.
    pub leftover: Vec<String>,
    /// Watch restarts that skipped events (history compacted meanwhile).
    pub gaps: u32,
    /// How long past `owed_until` abandoned leases' keys took to go.
    pub max_late: Duration,
}

impl Outcome {
    /// Checks the two properties of the module essay.
    pub fn check(&self) -> Result<(), String> {
        let lives: HashMap<i64, &Life> = self.lives.iter().map(|l| (l.id, l)).collect();
        for d in &self.deletes {
            let Some(life) = lease_of(&d.key).and_then(|id| lives.get(&id)) else {
                continue;
            };
            let until = life
                .revoked_at
                .map_or(life.owed_until, |r| r.min(life.owed_until));
            if d.seen < until {
                return Err(format!(
                    "lease {:x} (TTL {} s) lost key {} at revision {} {:?} before the server stopped owing it",
                    life.id,
                    life.ttl,
                    d.key,
                    d.revision,
                    until - d.seen
                ));
            }
        }
        if let Some(k) = self.leftover.first() {
            return Err(format!(
                "{} keys of finished leases outlived their TTL by more than {EXPIRY_GRACE:?}, e.g. {k}",
                self.leftover.len()
            ));
        }
        Ok(())
    }
}

fn lease_of(key: &str) -> Option<i64> {
    let hex = key.strip_prefix(PREFIX)?.split('/').next()?;
    i64::from_str_radix(hex, 16).ok()
}

/// Runs `clients` lease clients until `deadline`, observing deletes; then
/// waits out the grace period and looks for leftovers.
/// `progress[i]` is kept at the revision up to which observer `i` has seen
/// every event (the run's compactor stays behind it).
pub async fn run(
    endpoints: &[String],
    clients: usize,
    ttls: (i64, i64),
    seed: u64,
    deadline: Instant,
    progress: Vec<Arc<std::sync::atomic::AtomicI64>>,
) -> Outcome {
    let lives = Arc::new(Mutex::new(Vec::new()));
    let observers: Vec<_> = progress
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut order = endpoints.to_vec();
            order.rotate_left(i % endpoints.len().max(1));
            let span = (PREFIX.as_bytes().to_vec(), b"lz0".to_vec());
            tokio::spawn(observe(order, span, deadline + Duration::from_secs(5), p))
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let ch = channel(&endpoints[(i + 1) % endpoints.len()]);
        let lives = lives.clone();
        let mut rng = fastrand::Rng::with_seed(seed ^ (0x1ea5e + i as u64));
        tasks.push(tokio::spawn(async move {
            while Instant::now() + Duration::from_secs(1) < deadline {
                let ttl = rng.i64(ttls.0..=ttls.1.max(ttls.0));
                let Ok(ka) = KeepAlive::start(ch.clone(), ttl).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut kv = KvClient::new(ch.clone());
                for n in 0..rng.usize(1..=2) {
                    let put = kv.put(PutRequest {
                        key: format!("{PREFIX}{:x}/{n}", ka.id).into_bytes(),
                        value: b"v".to_vec(),
                        lease: ka.id,
                        ..Default::default()
                    });
                    let _ = tokio::time::timeout(CALL, put).await;
                }
                let hold = Duration::from_millis(rng.u64(0..3 * ttl as u64 * 1000));
                let until = (Instant::now() + hold).min(deadline);
                tokio::time::sleep_until(until.into()).await;
                let (id, ttl) = (ka.id, ka.ttl);
                let life = if rng.bool() {
                    let revoked_at = Instant::now();
                    let owed_until = ka.owed_until();
                    ka.revoke(&ch).await;
                    Life {
                        id,
                        ttl,
                        owed_until,
                        revoked_at: Some(revoked_at),
                    }
                } else {
                    Life {
                        id,
                        ttl,
                        owed_until: ka.abandon(),
                        revoked_at: None,
                    }
                };
                lives.lock().push(life);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let lives = std::mem::take(&mut *lives.lock());
    // Every lease is finished: their keys must be gone by the last one's
    // due time plus the grace.
    let last = lives.iter().map(|l| l.owed_until).max().unwrap_or(deadline);
    let give_up = last.max(deadline) + EXPIRY_GRACE;
    let leftover = loop {
        let left = leftovers(endpoints).await;
        if left.is_empty() || Instant::now() >= give_up {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The earliest sighting of each delete, across the observers.
    let mut first: HashMap<(String, i64), Instant> = HashMap::new();
    let mut gaps = 0;
    for o in observers {
        let (seen, g) = o.await.unwrap_or_default();
        gaps += g;
        for d in seen {
            let at = first.entry((d.key, d.revision)).or_insert(d.seen);
            *at = (*at).min(d.seen);
        }
    }
    let mut deletes: Vec<Deleted> = first
        .into_iter()
        .map(|((key, revision), seen)| Deleted {
            key,
            revision,
            seen,
        })
        .collect();
    deletes.sort_by_key(|d| d.seen);
    let owed: HashMap<i64, Instant> = lives
        .iter()
        .filter(|l| l.revoked_at.is_none())
        .map(|l| (l.id, l.owed_until))
        .collect();
    let max_late = deletes
        .iter()
        .filter_map(|d| {
            Some(
                d.seen
                    .saturating_duration_since(*owed.get(&lease_of(&d.key)?)?),
            )
        })
        .max()
        .unwrap_or_default();
    Outcome {
        lives,
        deletes,
        leftover,
        gaps,
        max_late,
    }
}

/// Keys still under `lz/`, read linearizably from any node that answers.
async fn leftovers(endpoints: &[String]) -> Vec<String> {
    for _ in 0..10 {
        for e in endpoints {
            let mut kv = KvClient::new(channel(e));
            let req = RangeRequest {
                key: PREFIX.as_bytes().to_vec(),
                range_end: b"lz0".to_vec(),
                keys_only: true,
                ..Default::default()
            };
            if let Ok(Ok(r)) = tokio::time::timeout(CALL, kv.range(req)).await {
                return r
                    .into_inner()
                    .kvs
                    .iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                    .collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    vec!["(no node answered the final read)".into()]
}

/// Watches `span` (key, range end) until `until`, resuming elsewhere after
/// a failure; returns the deletes seen and how many restarts skipped
/// history.
pub(super) async fn observe(
    endpoints: Vec<String>,
    span: (Vec<u8>, Vec<u8>),
    until: Instant,
    progress: Arc<std::sync::atomic::AtomicI64>,
) -> (Vec<Deleted>, u32) {
    let caught_up = |rev: i64| progress.fetch_max(rev, std::sync::atomic::Ordering::Relaxed);
    let mut deletes = Vec::new();
    let (mut next_rev, mut gaps, mut turn) = (0i64, 0u32, 0usize);
    while Instant::now() < until {
        turn += 1;
        let Ok(mut w) = WatchStream::open(&endpoints[turn % endpoints.len()]).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        w.create(WatchCreateRequest {
            key: span.0.clone(),
            range_end: span.1.clone(),
            start_revision: next_rev,
            ..Default::default()
        })
        .await;
        while Instant::now() < until {
            let r = match w.next(Duration::from_secs(1)).await {
                Some(r) => r,
                // Quiet: ask how far the stream has sent everything; no
                // answer means it died, and it is reopened (resuming).
                None if w.request_progress().await => match w.next(Duration::from_secs(2)).await {
                    Some(r) => r,
                    None => break,
                },
                None => break,
            };
            let header_rev = r.header.map_or(0, |h| h.revision);
            if r.created && next_rev == 0 {
                next_rev = header_rev + 1;
                caught_up(header_rev);
            }
            if !r.created && !r.canceled && r.events.is_empty() && header_rev >= next_rev {
                // A progress response: every event up to it was sent.
                next_rev = header_rev + 1;
                caught_up(header_rev);
                continue;
            }
            if r.canceled {
                if r.compact_revision > 0 {
                    gaps += 1;
                    next_rev = r.compact_revision;
                }
                break;
            }
            let seen = Instant::now();
            for e in &r.events {
                let Some(kv) = &e.kv else { continue };
                next_rev = next_rev.max(kv.mod_revision + 1);
                caught_up(kv.mod_revision);
                if e.r#type == EventType::Delete as i32 {
                    deletes.push(Deleted {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        revision: kv.mod_revision,
                        seen,
                    });
                }
            }
        }
    }
    (deletes, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(id: i64, owed_ms: u64, revoked_ms: Option<u64>, t0: Instant) -> Life {
        Life {
            id,
            ttl: 2,
            owed_until: t0 + Duration::from_millis(owed_ms),
            revoked_at: revoked_ms.map(|m| t0 + Duration::from_millis(m)),
        }
    }

    fn deleted(id: i64, seen_ms: u64, t0: Instant) -> Deleted {
        Deleted {
            key: format!("lz/{id:x}/0"),
            revision: 1,
            seen: t0 + Duration::from_millis(seen_ms),
        }
    }

    #[test]
    fn a_key_deleted_after_its_lease_was_due_passes() {
        let t0 = Instant::now();
        let o = Outcome {
            lives: vec![life(7, 1000, None, t0), life(8, 5000, Some(200), t0)],
            deletes: vec![deleted(7, 1500, t0), deleted(8, 300, t0)],
            ..Default::default()
        };
        assert!(o.check().is_ok());
    }

    #[test]
    fn a_key_deleted_while_its_lease_was_owed_fails() {
        let t0 = Instant::now();
        let o = Outcome {
            lives: vec![life(7, 1000, None, t0)],
            deletes: vec![deleted(7, 900, t0)],
            ..Default::default()
        };
        assert!(o.check().unwrap_err().contains("lost key"));
    }

    #[test]
    fn a_leftover_key_fails() {
        let o = Outcome {
            leftover: vec!["lz/7/0".into()],
            ..Default::default()
        };
        assert!(o.check().is_err());
    }
}
