//! The lease-access workload and its checker: a user limited by auth may
//! put onto or revoke a lease exactly when every key the lease holds is
//! one they may write — etcd's `checkLeasePuts` — and a revoke deletes
//! every key the lease holds and no other, while root attaches keys to the
//! lease and detaches them again in regions other than the first.
//!
//! Why it exists: the lease index (which keys hold a lease) lives in the
//! first region, and for a key outside it, it is a superset — a delete or a
//! put without the lease there cannot reach the index. So the auth check
//! of a lease write counts every indexed key outside as attached, and when
//! that refuses the caller the node looks the keys up and proposes a trim
//! (`Command::LeaseUnindex`, `cairn_store` `node::lease_across`). A trim
//! that dropped the entry of a key still holding the lease would let the
//! user join or revoke a lease with a key they may not write, and the
//! revoke would leave that key behind; one that never trimmed would refuse
//! a write etcd serves. This workload drives that path under the faults.
//!
//! Runs only on a secured cluster ([`crate::secured`]), in lanes
//! (`--lease-users N`). Lane `i`: user and role `leaser-i`, READWRITE on
//! `zt/i/u/` only; the nemesis splits at [`SPLIT`] first, so the lane's
//! keys lie outside the first region. Each cycle, one after another (every
//! root step retried until acknowledged):
//! 1. root grants a lease (TTL [`TTL`]) and puts 1–3 keys `zt/i/r/<lease>/n`
//!    on it (keys the user may not write);
//! 2. root detaches them — each deleted or put again without a lease —
//!    except, in three cycles of ten, one left attached;
//! 3. the user puts `zt/i/u/<lease>` on the lease;
//! 4. in three cycles of ten, root attaches one detached key again and the
//!    user puts once more;
//! 5. the user revokes the lease (root does if the user may not);
//! 6. root reads the cycle's keys linearizably, then deletes them.
//!
//! Each user request is judged by the keys' state as root reads it
//! (linearizably) just before and just after it — and only when the two
//! agree — not by the steps root was told succeeded: a root attempt whose
//! answer was lost may still apply after a later step.
//!
//! Violations: a user request served while a key the user may not write
//! held the lease; one refused while none did (a stale index entry never
//! trimmed); after the revoke, a key that held the lease still there, or a
//! detached key gone; the lease gone before its TTL while nobody had
//! revoked it; a lane that never started; and a lane that ran a minute or
//! more and decided nothing.
//! Answers other than served and refused (unavailable, timed out) decide
//! nothing and are retried only for the revoke.

use std::time::{Duration, Instant};

use cairn_api::authpb::{permission, Permission};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::access::{login, setup_user, with_token};
use crate::kv::prefix_end;

/// The workload's keys: after every other workload's, so the split at
/// [`SPLIT`] moves none of theirs out of the first region.
pub const PREFIX: &str = "zt/";
/// Where the nemesis splits before the faults start, on a secured run: the
/// lanes' keys then lie outside the first region, where the lease index
/// is a superset.
pub const SPLIT: &str = PREFIX;
/// The users (and roles) are this and the lane number.
pub const USER: &str = "leaser";
/// The cycle's lease TTL, seconds: far longer than a cycle, so a lease
/// gone before it is an early expiry.
pub const TTL: i64 = 60;
const CALL: Duration = Duration::from_secs(3);
/// A lane that ran this long and decided nothing fails the run (a short
/// one under faults may not get past its setup).
const DECIDE_WITHIN: Duration = Duration::from_secs(60);

/// What one user request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Served,
    Denied,
    /// The lease was not found.
    Gone,
    /// Anything else (unavailable, timed out, token expired): no evidence.
    Other,
}

/// A root key's state, which the lane knows: every root step is retried
/// until acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Attached,
    Deleted,
    /// Put again without a lease.
    Detached,
}

/// What one lane saw.
#[derive(Debug, Default)]
pub struct LaneOutcome {
    pub user: String,
    pub cycles: usize,
    /// User puts and revokes served while only detached keys were left on
    /// the lease (the index named keys it no longer held).
    pub served_stale: usize,
    /// User requests refused while a key they may not write held the lease.
    pub refused: usize,
    /// Revokes by the user.
    pub revoked: usize,
    /// Root keys checked after a revoke.
    pub keys_checked: usize,
    /// User requests not judged: the keys changed while they ran (a root
    /// attempt applied late).
    pub moved: usize,
    /// How long the lane ran.
    pub ran_for: Duration,
    pub violations: Vec<String>,
    /// Set when setup never succeeded (the lane then checks nothing).
    pub setup_failed: Option<String>,
}

/// Everything the workload saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lanes: Vec<LaneOutcome>,
}

/// One lane's names and clients.
struct Lane {
    user: String,
    endpoints: Vec<String>,
    rng: fastrand::Rng,
    deadline: Instant,
    token: Option<String>,
    i: usize,
}

impl Lane {
    fn channel(&mut self) -> Channel {
        crate::secured::channel(&self.endpoints[self.rng.usize(0..self.endpoints.len())])
    }

    fn root_key(&self, lease: i64, n: usize) -> String {
        format!("{PREFIX}{}/r/{lease:x}/{n}", self.i)
    }

    fn root_prefix(&self, lease: i64) -> String {
        format!("{PREFIX}{}/r/{lease:x}/", self.i)
    }

    fn user_key(&self, lease: i64) -> String {
        format!("{PREFIX}{}/u/{lease:x}", self.i)
    }

    /// Runs root's `op` through random members until it is acknowledged,
    /// or `done` says an error means an earlier attempt took effect;
    /// `None` past the deadline.
    async fn as_root<T, F, Fut>(&mut self, mut op: F) -> Option<T>
    where
        F: FnMut(Channel, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut attempt = 0;
        while Instant::now() < self.deadline {
            attempt += 1;
            let ch = self.channel();
            if let Ok(Ok(t)) = tokio::time::timeout(CALL, op(ch, attempt)).await {
                return Some(t);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Root's put of `key` on `lease` (0: none); `Some(false)` when the
    /// lease is gone.
    async fn root_put(&mut self, key: String, lease: i64) -> Option<bool> {
        self.as_root(|ch, _| {
            let req = PutRequest {
                key: key.clone().into(),
                value: b"root".to_vec(),
                lease,
                ..Default::default()
            };
            async move {
                match KvClient::new(ch).put(req).await {
                    Ok(_) => Ok(true),
                    Err(s) if s.message().contains("requested lease not found") => Ok(false),
                    Err(s) => Err(s),
                }
            }
        })
        .await
    }

    /// The state of the cycle's `k` root keys, and whether the user's key
    /// is there, as root reads them now (linearizably).
    async fn observe(&mut self, lease: i64, k: usize) -> Option<(Vec<Fate>, bool)> {
        let prefix = self.root_prefix(lease);
        let user_key = self.user_key(lease);
        let kvs = self
            .as_root(|ch, _| {
                let reads = [
                    RangeRequest {
                        key: prefix.clone().into(),
                        range_end: prefix_end(prefix.as_bytes()),
                        ..Default::default()
                    },
                    RangeRequest {
                        key: user_key.clone().into(),
                        ..Default::default()
                    },
                ];
                async move {
                    let mut kv = KvClient::new(ch);
                    let mut out = Vec::new();
                    for r in reads {
                        out.extend(kv.range(r).await?.into_inner().kvs);
                    }
                    Ok(out)
                }
            })
            .await?;
        let fates = (0..k)
            .map(|n| {
                let key = self.root_key(lease, n);
                match kvs.iter().find(|kv| kv.key == key.as_bytes()) {
                    Some(kv) if kv.lease == lease => Fate::Attached,
                    Some(_) => Fate::Detached,
                    None => Fate::Deleted,
                }
            })
            .collect();
        Some((fates, kvs.iter().any(|kv| kv.key == user_key.as_bytes())))
    }

    /// The user's put onto the lease, judged by the keys' state just
    /// before and after it; false when the lease is gone.
    async fn judged_put(
        &mut self,
        c: &mut Cycle,
        out: &mut LaneOutcome,
        what: &str,
    ) -> Option<bool> {
        let k = c.fates.len();
        let (before, _) = self.observe(c.lease, k).await?;
        let a = self.user_call(c.lease, false).await;
        let (after, _) = self.observe(c.lease, k).await?;
        c.fates = after;
        if before != c.fates && a != Answer::Gone {
            out.moved += 1;
            return Some(true);
        }
        Some(judge(out, c, what, a))
    }

    async fn root_delete(&mut self, key: String, prefix: bool) -> Option<()> {
        let range_end = if prefix {
            prefix_end(key.as_bytes())
        } else {
            Vec::new()
        };
        self.as_root(|ch, _| {
            let req = DeleteRangeRequest {
                key: key.clone().into(),
                range_end: range_end.clone(),
                ..Default::default()
            };
            async move { KvClient::new(ch).delete_range(req).await.map(drop) }
        })
        .await
    }

    /// The user's put onto the lease, or revoke of it: one attempt through
    /// a random member.
    async fn user_call(&mut self, lease: i64, revoke: bool) -> Answer {
        if self.token.is_none() {
            let (user, endpoints) = (self.user.clone(), self.endpoints.clone());
            self.token = login(&user, &endpoints, &mut self.rng, self.deadline).await;
        }
        let Some(token) = self.token.clone() else {
            return Answer::Other;
        };
        let ch = self.channel();
        let r = if revoke {
            let req = with_token(LeaseRevokeRequest { id: lease }, &token);
            let mut client = LeaseClient::new(ch);
            let call = client.lease_revoke(req);
            tokio::time::timeout(CALL, call).await.map(|r| r.map(drop))
        } else {
            let put = PutRequest {
                key: self.user_key(lease).into(),
                value: b"user".to_vec(),
                lease,
                ..Default::default()
            };
            let mut client = KvClient::new(ch);
            let call = client.put(with_token(put, &token));
            tokio::time::timeout(CALL, call).await.map(|r| r.map(drop))
        };
        match r {
            Ok(Ok(())) => Answer::Served,
            Ok(Err(s)) if s.code() == Code::PermissionDenied => Answer::Denied,
            Ok(Err(s)) if s.message().contains("requested lease not found") => Answer::Gone,
            Ok(Err(s)) => {
                if s.message().contains("invalid auth token") {
                    self.token = None;
                }
                Answer::Other
            }
            Err(_) => Answer::Other,
        }
    }
}

/// One cycle's state and what it found.
struct Cycle {
    lease: i64,
    granted: Instant,
    fates: Vec<Fate>,
}

impl Cycle {
    fn attached(&self) -> bool {
        self.fates.contains(&Fate::Attached)
    }
}

/// Judges one decided user answer against the lane's model; `false` when
/// the cycle cannot go on (lease gone).
fn judge(out: &mut LaneOutcome, c: &Cycle, what: &str, a: Answer) -> bool {
    let lease = c.lease;
    match (a, c.attached()) {
        (Answer::Served, true) => out.violations.push(format!(
            "{}'s {what} on lease {lease:x} was served though a key they may not write held it ({:?})",
            out.user, c.fates
        )),
        (Answer::Denied, false) => out.violations.push(format!(
            "{}'s {what} on lease {lease:x} was refused though no key they may not write held it ({:?})",
            out.user, c.fates
        )),
        // Every key of the cycle detached: the index may still name them.
        (Answer::Served, false) => out.served_stale += 1,
        (Answer::Denied, true) => out.refused += 1,
        (Answer::Gone, _) => {
            let age = c.granted.elapsed();
            if age < Duration::from_secs(TTL as u64) {
                out.violations.push(format!(
                    "lease {lease:x} was gone {age:?} after its grant (TTL {TTL} s) though nobody revoked it"
                ));
            }
            return false;
        }
        _ => {}
    }
    true
}

/// One cycle (see the module); `None` past the deadline.
async fn cycle(lane: &mut Lane, out: &mut LaneOutcome) -> Option<()> {
    // 1. A lease and 1–3 keys on it the user may not write.
    let granted = Instant::now();
    let lease = lane
        .as_root(|ch, _| async move {
            let req = LeaseGrantRequest { ttl: TTL, id: 0 };
            Ok(LeaseClient::new(ch).lease_grant(req).await?.into_inner().id)
        })
        .await?;
    let k = lane.rng.usize(1..=3);
    let mut c = Cycle {
        lease,
        granted,
        fates: vec![Fate::Attached; k],
    };
    // Root found the lease gone: judged as an early expiry if it was.
    let mut lost = false;
    for n in 0..k {
        lost = lost || !lane.root_put(lane.root_key(lease, n), lease).await?;
    }
    let mut alive = !lost;
    // 2. Detached, but for one key in three cycles of ten.
    let keep = (lane.rng.u8(0..10) < 3).then(|| lane.rng.usize(0..k));
    for n in (0..k).filter(|n| alive && Some(*n) != keep) {
        let key = lane.root_key(lease, n);
        if lane.rng.bool() {
            lane.root_delete(key, false).await?;
        } else {
            lane.root_put(key, 0).await?;
        }
    }
    // 3. The user's put onto the lease.
    alive = alive && lane.judged_put(&mut c, out, "put").await?;
    // 4. A key attached again, and the user's put once more.
    if alive && lane.rng.u8(0..10) < 3 {
        if let Some(n) = (0..k).find(|&n| c.fates[n] != Fate::Attached) {
            lost = !lane.root_put(lane.root_key(lease, n), lease).await?;
            alive = !lost
                && lane
                    .judged_put(&mut c, out, "put after a key was attached again")
                    .await?;
        }
    }
    if lost {
        judge(out, &c, "put by root", Answer::Gone);
    }
    // 5. The user's revoke (root's when the user may not, or could not),
    // judged by the keys' state just before.
    (c.fates, _) = lane.observe(lease, k).await?;
    let mut revoked = !alive;
    let mut earlier_unknown = false;
    for _ in 0..4 {
        if revoked {
            break;
        }
        match lane.user_call(lease, true).await {
            Answer::Served => {
                judge(out, &c, "revoke", Answer::Served);
                out.revoked += 1;
                revoked = true;
            }
            // An earlier attempt whose answer was lost took effect.
            Answer::Gone if earlier_unknown => revoked = true,
            a @ (Answer::Gone | Answer::Denied) => {
                revoked = !judge(out, &c, "revoke", a);
                break;
            }
            Answer::Other => earlier_unknown = true,
        }
    }
    if !revoked {
        lane.as_root(|ch, attempt| async move {
            match LeaseClient::new(ch)
                .lease_revoke(LeaseRevokeRequest { id: lease })
                .await
            {
                Ok(_) => Ok(()),
                // An earlier attempt (root's or the user's, whose answer
                // was lost) took effect.
                Err(s) if s.message().contains("requested lease not found") && attempt > 1 => {
                    Ok(())
                }
                Err(s) => Err(s),
            }
        })
        .await?;
    }
    // 6. Every key that held the lease is gone; every detached key stays.
    let (now, user_key_there) = lane.observe(lease, k).await?;
    for (n, (was, is)) in c.fates.iter().zip(&now).enumerate() {
        let key = lane.root_key(lease, n);
        out.keys_checked += 1;
        match (was, is) {
            (Fate::Attached, Fate::Attached | Fate::Detached) => out.violations.push(format!(
                "{key} was still there after lease {lease:x}'s revoke was acknowledged ({is:?}), though it held the lease"
            )),
            (Fate::Deleted, Fate::Attached | Fate::Detached) => out.violations.push(format!(
                "{key}, deleted, was there again after lease {lease:x}'s revoke"
            )),
            (Fate::Detached, Fate::Deleted) => out.violations.push(format!(
                "{key}, put again without a lease, was deleted by lease {lease:x}'s revoke"
            )),
            (Fate::Detached, Fate::Attached) => out.violations.push(format!(
                "{key}, put again without a lease, holds lease {lease:x} after its revoke"
            )),
            _ => {}
        }
    }
    if user_key_there {
        out.violations.push(format!(
            "{} still held lease {lease:x} after its revoke was acknowledged",
            lane.user_key(lease)
        ));
    }
    lane.root_delete(lane.root_prefix(lease), true).await?;
    out.cycles += 1;
    Some(())
}

/// One lane: its user, then cycles until `deadline`.
async fn run_lane(i: usize, endpoints: Vec<String>, seed: u64, deadline: Instant) -> LaneOutcome {
    let user = format!("{USER}-{i}");
    let mut out = LaneOutcome {
        user: user.clone(),
        ..Default::default()
    };
    let own = format!("{PREFIX}{i}/u/");
    let perm = Permission {
        perm_type: permission::Type::Readwrite as i32,
        range_end: prefix_end(own.as_bytes()),
        key: own.into(),
    };
    if let Err(e) = setup_user(&user, Some(perm), &endpoints, deadline).await {
        out.setup_failed = Some(e);
        return out;
    }
    let mut lane = Lane {
        user,
        endpoints,
        rng: fastrand::Rng::with_seed(seed),
        deadline,
        token: None,
        i,
    };
    let began = Instant::now();
    while cycle(&mut lane, &mut out).await.is_some() {
        tokio::time::sleep(Duration::from_millis(lane.rng.u64(0..50))).await;
    }
    out.ran_for = began.elapsed();
    out
}

/// Runs the workload: `lanes` lanes until `deadline`.
pub async fn run(endpoints: &[String], lanes: usize, seed: u64, deadline: Instant) -> Outcome {
    let tasks: Vec<_> = (0..lanes)
        .map(|i| {
            let seed = seed.wrapping_mul(37).wrapping_add(i as u64) ^ 0x1ea5e;
            tokio::spawn(run_lane(i, endpoints.to_vec(), seed, deadline))
        })
        .collect();
    let mut out = Outcome::default();
    for (i, t) in tasks.into_iter().enumerate() {
        out.lanes.push(t.await.unwrap_or_else(|e| LaneOutcome {
            user: format!("{USER}-{i}"),
            setup_failed: Some(format!("the lane failed: {e}")),
            ..Default::default()
        }));
    }
    out
}

impl Outcome {
    /// The first violation, if any; also a lane that never started, and a
    /// run in which no user request was decided (it checked nothing).
    pub fn check(&self) -> Result<(), String> {
        for l in &self.lanes {
            if let Some(e) = &l.setup_failed {
                return Err(format!(
                    "the lease-access workload of {} never started: {e}",
                    l.user
                ));
            }
            if let Some(v) = l.violations.first() {
                return Err(v.clone());
            }
        }
        let decided: usize = self.lanes.iter().map(|l| l.served_stale + l.refused).sum();
        let long = self.lanes.iter().any(|l| l.ran_for >= DECIDE_WITHIN);
        if decided == 0 && long {
            return Err(format!(
                "no user request on a lease was decided in {DECIDE_WITHIN:?} or more: nothing checked"
            ));
        }
        Ok(())
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let sum = |f: fn(&LaneOutcome) -> usize| self.lanes.iter().map(f).sum::<usize>();
        format!(
            "lease access: {} users, {} cycles, {} requests served with only detached keys left on the lease, {} refused for an attached key, {} not judged (keys changed meanwhile), {} revokes by the user, {} keys checked after a revoke",
            self.lanes.len(),
            sum(|l| l.cycles),
            sum(|l| l.served_stale),
            sum(|l| l.refused),
            sum(|l| l.moved),
            sum(|l| l.revoked),
            sum(|l| l.keys_checked),
        )
    }
}
