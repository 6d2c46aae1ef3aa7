//! The lock workload and its mutual-exclusion checker.
//!
//! Lockers contend for a few locks, through the Lock service and through
//! Election campaigns. Each locker holds a lease (TTL [`LEASE_TTL`]) kept
//! alive by a background stream, and knows how long the server owes it the
//! lease: TTL past the *send* time of the last keep-alive the server
//! acknowledged (a server counts from when it received the request, which
//! is later). A locker that gets the lock:
//!
//! 1. reads the lock's prefix at the grant's revision (the server answers
//!    with the revision of the read that found the locker first, as etcd
//!    does): its own key must be there with nothing ahead of it (smaller
//!    create revision), so that revision is where its hold provably began.
//!    When compaction has taken that revision, it reads the prefix now and
//!    a missing key is only counted as lost (its lease may have ended
//!    since);
//! 2. runs its critical section only while its lease is owed to it, doing
//!    fenced writes: a Txn that puts `fence/<lock>` only if its key still
//!    has the create revision it was granted with (the fencing token);
//! 3. notes when its section ended (never after the lease is owed), then
//!    unlocks (or resigns) and revokes its lease.
//!
//! A grant can reach its locker after the locker's lease stopped being
//! owed (the answer was delayed, and the locker had stopped renewing while
//! it waited): the server found the locker first while its key still
//! existed, and the key has since expired, freeing the lock for the next
//! in line. Such a locker runs no section — it knows its lease is gone —
//! so its hold takes no time and cannot overlap another's; it is counted
//! (`late`), and its post-grant read is still checked.
//!
//! One locker in four stops renewing its lease as soon as it has asked
//! for the lock (its session dies while it waits), and one holder in four
//! keeps the lock for longer than the lease TTL, so that waiters do outlive
//! their leases while they wait. Every other Lock holder asks for the lock
//! again with its own lease three times, giving each call up within 40 ms
//! (a client retrying a lost answer): no such call may end the hold or
//! grant the lock to another.
//!
//! The checker, per lock, for every two holders A and B with A's token
//! below B's (B queued behind A, so B may hold only once A's key is gone):
//! B's grant reached B after A's section ended (real time), every fenced
//! write of A that succeeded has a revision below B's starting revision,
//! and B's post-grant read found its key first. A server that lets a lease
//! expire early, renews on a deposed leader, or grants a lock to a waiter
//! whose key is gone (the planted bug `vanished-waiter`) fails one
//! of these.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::*;
use cairn_api::v3electionpb::election_client::ElectionClient;
use cairn_api::v3electionpb::{CampaignRequest, ResignRequest};
use cairn_api::v3lockpb::lock_client::LockClient;
use cairn_api::v3lockpb::{LockRequest, UnlockRequest};
use parking_lot::Mutex;
use tonic::transport::Channel;

use super::leases::{channel, observe, Deleted, KeepAlive};

/// The lockers' lease TTL, seconds: at most the in-process checkpoint
/// interval, so renewals need no Raft write and only the leadership check
/// keeps a deposed leader from acknowledging them.
pub const LEASE_TTL: i64 = 2;
/// A section stops this long before the lease stops being owed.
const MARGIN: Duration = Duration::from_millis(300);
/// How long a lingering holder keeps the lock after its first write:
/// longer than [`LEASE_TTL`], shorter than [`WAIT`].
const LINGER_MS: u64 = 3_000;
/// How long a locker waits for the lock before giving up its place.
const WAIT: Duration = Duration::from_secs(8);
/// How long one call may take before the locker gives up on it.
const CALL: Duration = Duration::from_secs(4);

/// One granted hold of a lock, as its locker saw it.
#[derive(Clone, Debug)]
pub struct Hold {
    pub lock: String,
    pub locker: u64,
    /// The create revision of the locker's key: its place in line and token.
    pub token: i64,
    /// The grant's revision, where the line was read to begin with this
    /// holder (or, when that was compacted, a later read's revision).
    pub began_rev: i64,
    /// When the grant reached the locker.
    pub granted: Instant,
    /// When the section ended (at most the time the lease was owed until).
    pub ended: Instant,
    /// Revisions of the fenced writes that succeeded.
    pub fenced: Vec<i64>,
    /// Whether the section ran (false: the grant came when the lease was
    /// no longer owed, or about to stop being owed, so nothing was done
    /// under the lock).
    pub ran: bool,
    /// What the post-grant read found wrong, if anything.
    pub wrong: Option<String>,
    /// The locker's key and lease, and what it knew of the lease when the
    /// section ended: owed until, and the last renewals `(sent, answered)`
    /// — for reports.
    pub key: String,
    pub lease: i64,
    pub owed: Instant,
    pub acks: Vec<(Instant, Instant)>,
}

/// What the lockers did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub holds: Vec<Hold>,
    /// Grants whose key was already gone at the post-grant read (lease lost
    /// under faults: no section ran).
    pub lost: usize,
    /// Fenced writes refused (the token no longer matched).
    pub fenced_out: usize,
    /// Waits that ended in "session is expired" (the waiter's key vanished).
    pub expired: usize,
    pub attempts: usize,
    /// Deletes of lock keys an observer saw (for reports).
    pub deletes: Vec<Deleted>,
}

/// The span of every lock's keys (locks are named `lk<n>`).
const LOCK_KEYS: (&[u8], &[u8]) = (b"lk", b"ll");

/// Runs `lockers` lockers on `locks` locks until `deadline`, with an
/// observer of the lock keys' deletes; it keeps `progress` at the revision
/// up to which it has seen every event.
pub async fn run(
    endpoints: &[String],
    lockers: usize,
    locks: usize,
    seed: u64,
    deadline: Instant,
    progress: Arc<std::sync::atomic::AtomicI64>,
) -> Outcome {
    let span = (LOCK_KEYS.0.to_vec(), LOCK_KEYS.1.to_vec());
    let observer = tokio::spawn(observe(
        endpoints.to_vec(),
        span,
        deadline + Duration::from_secs(5),
        progress,
    ));
    let out = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = Vec::new();
    for i in 0..lockers {
        let ch = channel(&endpoints[i % endpoints.len()]);
        let out = out.clone();
        let mut rng = fastrand::Rng::with_seed(seed ^ (0x10c4 + i as u64));
        tasks.push(tokio::spawn(async move {
            while Instant::now() + Duration::from_secs(1) < deadline {
                let lock = format!("lk{}", rng.usize(0..locks));
                let campaign = rng.bool();
                out.lock().attempts += 1;
                let _ = locker_round(&ch, i as u64 + 1, &lock, campaign, &mut rng, &out).await;
                tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut out = Arc::try_unwrap(out)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    out.deletes = observer.await.map(|(d, _)| d).unwrap_or_default();
    out
}

/// One acquisition, section and release. Errors just end the round.
async fn locker_round(
    ch: &Channel,
    locker: u64,
    lock: &str,
    campaign: bool,
    rng: &mut fastrand::Rng,
    out: &Mutex<Outcome>,
) -> Result<(), tonic::Status> {
    let ka = KeepAlive::start(ch.clone(), LEASE_TTL).await?;
    let lease = ka.id;
    // Some lockers' sessions die while they wait (etcd-io/etcd#9921's
    // case: the server must not then say they hold the lock), and some
    // holders linger past the TTL, so that waiters behind them outlive it.
    let dies_waiting = rng.usize(0..4) == 0;
    let lingers = rng.usize(0..4) == 0;
    if dies_waiting {
        ka.stop_renewing();
    }
    let prefix = format!("{lock}/");
    let acquired = tokio::time::timeout(WAIT, async {
        if campaign {
            let l = ElectionClient::new(ch.clone())
                .campaign(CampaignRequest {
                    name: lock.as_bytes().to_vec(),
                    lease,
                    value: format!("c{locker}").into_bytes(),
                })
                .await?
                .into_inner();
            let at = l.header.map_or(0, |h| h.revision);
            let l = l.leader.unwrap_or_default();
            Ok::<_, tonic::Status>((l.key.clone(), at, Some(l)))
        } else {
            let r = LockClient::new(ch.clone())
                .lock(LockRequest {
                    name: lock.as_bytes().to_vec(),
                    lease,
                })
                .await?
                .into_inner();
            Ok((r.key, r.header.map_or(0, |h| h.revision), None))
        }
    })
    .await;
    let (key, granted_at, leader) = match acquired {
        Ok(Ok(grant)) => grant,
        Ok(Err(e)) => {
            if e.message().contains("session is expired") {
                out.lock().expired += 1;
            }
            ka.revoke(ch).await;
            return Ok(());
        }
        Err(_) => {
            ka.revoke(ch).await;
            return Ok(());
        }
    };
    let granted = Instant::now();
    let mut kv = KvClient::new(ch.clone());
    // The line as of the grant's revision, where the server found the
    // locker first; if compacted away since, the line now.
    let at_grant = RangeRequest {
        revision: granted_at,
        ..prefix_range(&prefix)
    };
    let (check, exact) = match tokio::time::timeout(CALL, kv.range(at_grant)).await {
        Ok(Err(e)) if e.code() == tonic::Code::OutOfRange => (
            tokio::time::timeout(CALL, kv.range(prefix_range(&prefix))).await,
            false,
        ),
        other => (other, true),
    };
    let result = match check {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            let began_rev = if exact {
                granted_at
            } else {
                r.header.map_or(0, |h| h.revision)
            };
            match r.kvs.iter().position(|kv| kv.key == key) {
                None if exact => Some((
                    -1,
                    began_rev,
                    Some(format!(
                        "its key {} did not exist at the grant's revision {granted_at}",
                        String::from_utf8_lossy(&key)
                    )),
                )),
                None => {
                    out.lock().lost += 1;
                    None
                }
                Some(pos) => {
                    let token = r.kvs[pos].create_revision;
                    let wrong = (pos > 0).then(|| {
                        format!(
                            "key {} (created at {}) ahead of the holder's {} (created at {}) at revision {began_rev}",
                            String::from_utf8_lossy(&r.kvs[0].key),
                            r.kvs[0].create_revision,
                            String::from_utf8_lossy(&key),
                            token
                        )
                    });
                    Some((token, began_rev, wrong))
                }
            }
        }
        _ => None,
    };
    if let Some((token, began_rev, wrong)) = result {
        let asks_again = if leader.is_none() && rng.bool() { 3 } else { 0 };
        for _ in 0..asks_again {
            // A client that lost an answer asks again with its session and
            // gives that call up part-way: the lock stays its own (etcd's
            // Mutex.Lock holds at once when the session's key is first).
            let mut client = LockClient::new(ch.clone());
            let again = client.lock(LockRequest {
                name: lock.as_bytes().to_vec(),
                lease,
            });
            let _ = tokio::time::timeout(Duration::from_millis(rng.u64(0..40)), again).await;
        }
        let mut fenced = Vec::new();
        let mut ended = granted;
        let mut ran = false;
        for n in 0..rng.usize(1..4) {
            if Instant::now() + MARGIN >= ka.owed_until() {
                break;
            }
            ran = true;
            let put = fenced_put(lock, &key, token, &format!("c{locker}-t{token}-{n}"));
            let answer = tokio::time::timeout(CALL, kv.txn(put)).await;
            // Whatever the write's fate, the locker held the lock until now
            // as far as it knows — as long as its lease was owed to it.
            ended = Instant::now().min(ka.owed_until());
            match answer {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if r.succeeded {
                        fenced.push(r.header.map_or(0, |h| h.revision));
                    } else {
                        out.lock().fenced_out += 1;
                    }
                }
                _ => break,
            }
            let pause = if lingers && n == 0 {
                Duration::from_millis(LINGER_MS)
            } else {
                Duration::from_millis(rng.u64(0..60))
            };
            tokio::time::sleep(pause).await;
        }
        out.lock().holds.push(Hold {
            lock: lock.to_string(),
            locker,
            token,
            began_rev,
            granted,
            ended,
            fenced,
            ran,
            wrong,
            key: String::from_utf8_lossy(&key).into_owned(),
            lease,
            owed: ka.owed_until(),
            acks: ka.acks(),
        });
    }
    let release = async {
        match leader {
            Some(l) => ElectionClient::new(ch.clone())
                .resign(ResignRequest { leader: Some(l) })
                .await
                .map(|_| ()),
            None => LockClient::new(ch.clone())
                .unlock(UnlockRequest { key })
                .await
                .map(|_| ()),
        }
    };
    let _ = tokio::time::timeout(CALL, release).await;
    ka.revoke(ch).await;
    Ok(())
}

/// What is known about an overlap of `a`'s section with `b`'s hold, times
/// relative to `b`'s grant: when `a`'s lease was owed until and renewed,
/// and when the observer saw `a`'s key deleted.
fn overlap_report(a: &Hold, b: &Hold, deletes: &[Deleted]) -> String {
    let rel = |t: Instant| {
        if t >= b.granted {
            format!("+{} ms", (t - b.granted).as_millis())
        } else {
            format!("-{} ms", (b.granted - t).as_millis())
        }
    };
    let wall = std::time::SystemTime::now()
        .checked_sub(b.granted.elapsed())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let acks: Vec<String> = a
        .acks
        .iter()
        .map(|&(sent, got)| format!("sent {} answered {}", rel(sent), rel(got)))
        .collect();
    let gone: Vec<String> = deletes
        .iter()
        .filter(|d| d.key == a.key)
        .map(|d| format!("revision {} seen {}", d.revision, rel(d.seen)))
        .collect();
    format!(
        "  times relative to locker {}'s grant (unix {wall:.3}, revision {}): locker {} key {} lease {:x} granted {}, section ended {}, lease owed until {}; renewals [{}]; its key's delete [{}]",
        b.locker,
        b.began_rev,
        a.locker,
        a.key,
        a.lease,
        rel(a.granted),
        rel(a.ended),
        rel(a.owed),
        acks.join("; "),
        gone.join("; ")
    )
}

fn prefix_range(prefix: &str) -> RangeRequest {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The fenced write: `fence/<lock> = value` only while `key` has `token`.
fn fenced_put(lock: &str, key: &[u8], token: i64, value: &str) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(token)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: format!("fence/{lock}").into_bytes(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// Checks mutual exclusion over every hold (see the module essay);
/// `deletes` (lock keys' deletes seen by the observer) only add detail to
/// a report.
pub fn check(holds: &[Hold], deletes: &[Deleted]) -> Result<(), String> {
    let mut by_lock: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in holds {
        if let Some(why) = &h.wrong {
            return Err(format!(
                "lock {}: locker {} was granted wrongly: {why}",
                h.lock, h.locker
            ));
        }
        // A hold whose section never ran did nothing under the lock.
        if h.ran {
            by_lock.entry(&h.lock).or_default().push(h);
        }
    }
    for (lock, mut hs) in by_lock {
        hs.sort_by_key(|h| h.token);
        for (i, a) in hs.iter().enumerate() {
            for b in &hs[i + 1..] {
                if a.token == b.token {
                    return Err(format!(
                        "lock {lock}: lockers {} and {} both hold token {}",
                        a.locker, b.locker, a.token
                    ));
                }
                if b.granted <= a.ended {
                    return Err(format!(
                        "lock {lock}: two holders at once — locker {} (token {}) was granted {:?} before locker {} (token {}) ended its section\n{}",
                        b.locker,
                        b.token,
                        a.ended - b.granted,
                        a.locker,
                        a.token,
                        overlap_report(a, b, deletes)
                    ));
                }
                if let Some(w) = a.fenced.iter().find(|&&w| w >= b.began_rev) {
                    return Err(format!(
                        "lock {lock}: stale holder's fenced write succeeded — locker {} (token {}) wrote at revision {w}, at or after locker {} (token {}) held the lock (revision {})",
                        a.locker, a.token, b.locker, b.token, b.began_rev
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(token: i64, granted_ms: u64, ended_ms: u64, began_rev: i64, fenced: &[i64]) -> Hold {
        let t0 = Instant::now();
        Hold {
            lock: "l".into(),
            locker: token as u64,
            token,
            began_rev,
            granted: t0 + Duration::from_millis(granted_ms),
            ended: t0 + Duration::from_millis(ended_ms),
            fenced: fenced.to_vec(),
            ran: true,
            wrong: None,
            key: format!("l/{token:x}"),
            lease: token,
            owed: t0,
            acks: Vec::new(),
        }
    }

    #[test]
    fn sequential_holds_pass() {
        let t0 = Instant::now();
        let mut a = hold(10, 0, 100, 11, &[12, 13]);
        let mut b = hold(20, 150, 300, 21, &[22]);
        a.granted = t0;
        a.ended = t0 + Duration::from_millis(100);
        b.granted = t0 + Duration::from_millis(150);
        b.ended = t0 + Duration::from_millis(300);
        assert!(check(&[b, a], &[]).is_ok());
    }

    #[test]
    fn overlapping_sections_fail() {
        let t0 = Instant::now();
        let mut a = hold(10, 0, 0, 11, &[12]);
        let mut b = hold(20, 0, 0, 21, &[22]);
        a.granted = t0;
        a.ended = t0 + Duration::from_millis(200);
        b.granted = t0 + Duration::from_millis(150);
        b.ended = t0 + Duration::from_millis(300);
        assert!(check(&[a, b], &[])
            .unwrap_err()
            .contains("two holders at once"));
    }

    #[test]
    fn a_grant_that_came_after_the_lease_was_due_takes_no_time() {
        // The earlier contender's grant reached it late, when its lease was
        // no longer owed: it ran no section, so the next holder's earlier
        // grant is no overlap — unless that section had run.
        let t0 = Instant::now();
        let mut a = hold(10, 0, 0, 11, &[]);
        let mut b = hold(20, 0, 0, 21, &[22]);
        a.granted = t0 + Duration::from_millis(500);
        a.ended = a.granted;
        a.ran = false;
        b.granted = t0;
        b.ended = t0 + Duration::from_millis(100);
        assert!(check(&[a.clone(), b.clone()], &[]).is_ok());
        a.ran = true;
        assert!(check(&[a, b], &[])
            .unwrap_err()
            .contains("two holders at once"));
    }

    #[test]
    fn a_stale_fenced_write_fails() {
        let t0 = Instant::now();
        let mut a = hold(10, 0, 0, 11, &[25]);
        let mut b = hold(20, 0, 0, 21, &[22]);
        a.granted = t0;
        a.ended = t0 + Duration::from_millis(10);
        b.granted = t0 + Duration::from_millis(20);
        b.ended = t0 + Duration::from_millis(30);
        assert!(check(&[a, b], &[]).unwrap_err().contains("stale holder"));
    }

    #[test]
    fn a_grant_with_a_contender_ahead_fails() {
        let mut a = hold(10, 0, 10, 11, &[]);
        a.wrong = Some("x".into());
        assert!(check(&[a], &[]).is_err());
    }
}
