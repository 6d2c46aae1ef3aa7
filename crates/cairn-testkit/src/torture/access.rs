//! The access workload and its checker: a permission change is in force on
//! every member the moment it is acknowledged — a revoked permission
//! admits nothing after, a granted one refuses nothing after.
//!
//! Runs only on a secured cluster ([`crate::secured`]: auth on), in
//! independent lanes (`--access-users N`: N lanes, so N times the changes
//! to catch a stale check in). Setup of lane `i`, as `root`: user and role
//! `tortured-i`. Then the lane's changer grants the role READWRITE on
//! `acl/i/` and revokes it again, over and over, through a random member
//! each time (an attempt that fails is retried until it is acknowledged; a
//! revoke answered "not granted" means an earlier attempt took effect, and
//! counts as acknowledged). Meanwhile the lane's user, logged in as
//! `tortured-i` (a token from `Authenticate`), writes and reads
//! (linearizably) `acl/i/` keys through random members, recording when each
//! request was sent and answered, and whether it was served or refused
//! with `PermissionDenied`. Serializable reads are not made: they may see a
//! member's past, permissions included, as in etcd. A write is a put —
//! or, in a run whose faults include splits, one in two is a Txn putting
//! `acl/i/k0` or `k1` and `k2` or `k3`: the nemesis then splits at each
//! lane's `k2` first ([`split_points`]), so the Txn runs across regions
//! (two-phase, its commit checked at its primary).
//!
//! The permission is certainly revoked from a revoke's acknowledgement to
//! the first attempt of the next grant, and certainly granted from a
//! grant's acknowledgement to the first attempt of the next revoke.
//! (A change still unacknowledged at the end closes the last window where
//! it was first sent.) Violations: a request sent and answered inside a
//! revoked window that was served (a stale grant: an unfenced write, a read
//! checked on a lagging replica), one inside a granted window that was
//! refused (a refusal from a replica behind the meta region), a lane that
//! failed, and a run that decided nothing. Requests whose answer was lost
//! are not resolved afterwards; they count for nothing.

use std::time::{Duration, Instant};

use cairn_api::authpb::{permission, Permission};
use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::*;
use tonic::Request;

/// The users (and roles) of the workload are this and the lane number.
pub const USER: &str = "tortured";
const PASSWORD: &str = "tortured-pw";
const CALL: Duration = Duration::from_secs(3);

/// One lane: a user, its role (the same name) and the keys it is given
/// and denied.
#[derive(Clone, Debug)]
pub struct Lane {
    pub user: String,
    prefix: String,
    end: String,
}

impl Lane {
    fn new(i: usize) -> Self {
        Lane {
            user: format!("{USER}-{i}"),
            prefix: format!("acl/{i}/"),
            end: format!("acl/{i}0"),
        }
    }

    fn perm(&self) -> Permission {
        Permission {
            perm_type: permission::Type::Readwrite as i32,
            key: self.prefix.clone().into(),
            range_end: self.end.clone().into(),
        }
    }
}

/// One acknowledged permission change.
#[derive(Clone, Debug)]
pub struct Change {
    pub grant: bool,
    /// When the first attempt of this change was sent.
    pub first_sent: Instant,
    /// When an attempt was acknowledged.
    pub acked: Instant,
    pub attempts: u32,
}

/// What one user request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Served,
    Denied,
    /// Anything else (unavailable, timed out, token expired): no evidence.
    Other,
}

/// One user request.
#[derive(Clone, Debug)]
pub struct Call {
    pub write: bool,
    /// A Txn across the lane's two regions (when split).
    pub txn: bool,
    pub sent: Instant,
    pub answered: Instant,
    pub answer: Answer,
}

/// What one lane saw.
#[derive(Debug)]
pub struct LaneOutcome {
    pub lane: Lane,
    pub changes: Vec<Change>,
    pub calls: Vec<Call>,
    /// When a change left unacknowledged at the end was first sent: the
    /// last window closes there.
    pub pending_since: Option<Instant>,
    /// Set when setup never succeeded, or the lane failed (it then checks
    /// nothing, and the run fails).
    pub setup_failed: Option<String>,
}

/// Everything the workload saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lanes: Vec<LaneOutcome>,
}

fn root_auth(addr: &str) -> AuthClient<tonic::transport::Channel> {
    AuthClient::new(crate::secured::channel(addr))
}

/// Creates `user` and a role of the same name, gives the user the role
/// and, if `perm` is given, the role that permission (each step retried
/// through every member until acknowledged).
pub(crate) async fn setup_user(
    user: &str,
    perm: Option<Permission>,
    endpoints: &[String],
    deadline: Instant,
) -> Result<(), String> {
    let steps = if perm.is_some() { 4 } else { 3 };
    let mut step = 0;
    let mut i = 0;
    let mut last = String::new();
    while step < steps {
        if Instant::now() > deadline {
            return Err(format!("setup step {step}: {last}"));
        }
        let mut a = root_auth(&endpoints[i % endpoints.len()]);
        i += 1;
        let r = match step {
            0 => a
                .user_add(AuthUserAddRequest {
                    name: user.into(),
                    password: PASSWORD.into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            1 => a
                .role_add(AuthRoleAddRequest { name: user.into() })
                .await
                .map(drop),
            2 => a
                .user_grant_role(AuthUserGrantRoleRequest {
                    user: user.into(),
                    role: user.into(),
                })
                .await
                .map(drop),
            _ => a
                .role_grant_permission(AuthRoleGrantPermissionRequest {
                    name: user.into(),
                    perm: perm.clone(),
                })
                .await
                .map(drop),
        };
        match r {
            Ok(()) => step += 1,
            // An earlier attempt's answer was lost; it was done.
            Err(s) if s.message().contains("already exists") => step += 1,
            Err(s) => {
                last = s.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// Grants (`grant`) or revokes the lane's permission until acknowledged;
/// past `deadline` unacknowledged, `Err(first attempt's send time)` (it
/// may still have taken effect).
async fn change(
    lane: &Lane,
    endpoints: &[String],
    rng: &mut fastrand::Rng,
    grant: bool,
    deadline: Instant,
) -> Result<Change, Instant> {
    let first_sent = Instant::now();
    let mut attempts = 0;
    while Instant::now() < deadline {
        attempts += 1;
        let mut a = root_auth(&endpoints[rng.usize(0..endpoints.len())]);
        let call = async {
            if grant {
                a.role_grant_permission(AuthRoleGrantPermissionRequest {
                    name: lane.user.clone(),
                    perm: Some(lane.perm()),
                })
                .await
                .map(drop)
            } else {
                a.role_revoke_permission(AuthRoleRevokePermissionRequest {
                    role: lane.user.clone(),
                    key: lane.prefix.clone().into(),
                    range_end: lane.end.clone().into(),
                })
                .await
                .map(drop)
            }
        };
        match tokio::time::timeout(CALL, call).await {
            Ok(Ok(())) => {}
            // An earlier attempt took effect.
            Ok(Err(s)) if !grant && s.message().contains("permission is not granted") => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        return Ok(Change {
            grant,
            first_sent,
            acked: Instant::now(),
            attempts,
        });
    }
    Err(first_sent)
}

/// Where the nemesis splits first for `lanes` lanes: inside each lane's
/// keys, so its Txns run across regions.
pub fn split_points(lanes: usize) -> Vec<String> {
    (0..lanes)
        .map(|i| format!("{}k2", Lane::new(i).prefix))
        .collect()
}

/// A token for `user` (made by [`setup_user`]) from any member
/// (retried); `None` past `deadline`.
pub(crate) async fn login(
    user: &str,
    endpoints: &[String],
    rng: &mut fastrand::Rng,
    deadline: Instant,
) -> Option<String> {
    while Instant::now() < deadline {
        let mut a = root_auth(&endpoints[rng.usize(0..endpoints.len())]);
        let r = a.authenticate(AuthenticateRequest {
            name: user.into(),
            password: PASSWORD.into(),
        });
        if let Ok(Ok(r)) = tokio::time::timeout(CALL, r).await {
            return Some(r.into_inner().token);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// `msg` with `token` in its metadata, as etcd's clients send it.
pub(crate) fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = token.parse() {
        r.metadata_mut().insert("token", v);
    }
    r
}

/// The lane's user: puts and linearizable reads on its keys until
/// `deadline`.
async fn user(
    lane: Lane,
    endpoints: Vec<String>,
    seed: u64,
    deadline: Instant,
    across: bool,
) -> Vec<Call> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut calls = Vec::new();
    let mut token = None;
    let mut n = 0u64;
    while Instant::now() < deadline {
        let Some(t) = &token else {
            token = login(&lane.user, &endpoints, &mut rng, deadline).await;
            continue;
        };
        let addr = &endpoints[rng.usize(0..endpoints.len())];
        let mut kv = KvClient::new(crate::secured::channel(addr));
        let write = rng.bool();
        let key = format!("{}k{}", lane.prefix, rng.u8(0..4));
        n += 1;
        let sent = Instant::now();
        let put = |key: String| PutRequest {
            key: key.into(),
            value: n.to_string().into(),
            ..Default::default()
        };
        let txn = write && across && rng.bool();
        let r = if txn {
            let op = |key| RequestOp {
                request: Some(request_op::Request::RequestPut(put(key))),
            };
            let (low, high) = (rng.u8(0..2), rng.u8(2..4));
            let req = TxnRequest {
                success: vec![
                    op(format!("{}k{low}", lane.prefix)),
                    op(format!("{}k{high}", lane.prefix)),
                ],
                ..Default::default()
            };
            let txn = kv.txn(with_token(req, t));
            tokio::time::timeout(CALL, txn).await.map(|r| r.map(drop))
        } else if write {
            let put = kv.put(with_token(put(key), t));
            tokio::time::timeout(CALL, put).await.map(|r| r.map(drop))
        } else {
            let req = RangeRequest {
                key: key.into(),
                ..Default::default()
            };
            let range = kv.range(with_token(req, t));
            tokio::time::timeout(CALL, range).await.map(|r| r.map(drop))
        };
        let answered = Instant::now();
        let answer = match r {
            Ok(Ok(())) => Answer::Served,
            Ok(Err(s)) if s.code() == tonic::Code::PermissionDenied => Answer::Denied,
            Ok(Err(s)) => {
                if s.message().contains("invalid auth token") {
                    token = None;
                }
                Answer::Other
            }
            Err(_) => Answer::Other,
        };
        calls.push(Call {
            write,
            txn,
            sent,
            answered,
            answer,
        });
        tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
    }
    calls
}

/// One lane: setup, then its user and changer until `deadline`.
async fn run_lane(
    lane: Lane,
    endpoints: Vec<String>,
    seed: u64,
    deadline: Instant,
    across: bool,
) -> LaneOutcome {
    if let Err(e) = setup_user(&lane.user, None, &endpoints, deadline).await {
        return LaneOutcome::failed(lane, e);
    }
    let calls = tokio::spawn(user(
        lane.clone(),
        endpoints.clone(),
        seed ^ 0xacc0,
        deadline,
        across,
    ));
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xacce55);
    let mut changes = Vec::new();
    let mut grant = true;
    let mut pending_since = None;
    loop {
        let c = match change(&lane, &endpoints, &mut rng, grant, deadline).await {
            Ok(c) => c,
            Err(first_sent) => {
                pending_since = Some(first_sent);
                break;
            }
        };
        changes.push(c);
        grant = !grant;
        // Revoked for long enough to span a fault and its heal: a member
        // cut off across the revoke and asked meanwhile answers after the
        // heal — inside the window only if the window is still open.
        let pause = Duration::from_millis(if grant {
            rng.u64(1500..4000)
        } else {
            rng.u64(200..800)
        });
        if Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    let mut calls = match calls.await {
        Ok(c) => c,
        Err(e) => return LaneOutcome::failed(lane, format!("the user task failed: {e}")),
    };
    calls.sort_by_key(|c| c.sent);
    LaneOutcome {
        lane,
        changes,
        calls,
        pending_since,
        setup_failed: None,
    }
}

/// Runs the workload: `lanes` lanes until `deadline`; `across`: with
/// Txns across each lane's two regions.
pub async fn run(
    endpoints: &[String],
    lanes: usize,
    seed: u64,
    deadline: Instant,
    across: bool,
) -> Outcome {
    let tasks: Vec<_> = (0..lanes)
        .map(|i| {
            let seed = seed.wrapping_mul(31).wrapping_add(i as u64);
            tokio::spawn(run_lane(
                Lane::new(i),
                endpoints.to_vec(),
                seed,
                deadline,
                across,
            ))
        })
        .collect();
    let mut out = Outcome::default();
    for (i, t) in tasks.into_iter().enumerate() {
        out.lanes.push(match t.await {
            Ok(l) => l,
            Err(e) => LaneOutcome::failed(Lane::new(i), format!("the lane failed: {e}")),
        });
    }
    out
}

impl LaneOutcome {
    fn failed(lane: Lane, why: String) -> Self {
        LaneOutcome {
            lane,
            changes: Vec::new(),
            calls: Vec::new(),
            pending_since: None,
            setup_failed: Some(why),
        }
    }

    /// The certain windows: `(from, to, granted)`.
    pub fn windows(&self) -> Vec<(Instant, Instant, bool)> {
        let far = self
            .pending_since
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        self.changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let to = self.changes.get(i + 1).map_or(far, |n| n.first_sent);
                (c.acked, to, c.grant)
            })
            .collect()
    }

    /// The violations, if any.
    pub fn check(&self) -> Result<(), String> {
        let user = &self.lane.user;
        if let Some(e) = &self.setup_failed {
            return Err(format!("the access workload of {user} never started: {e}"));
        }
        let windows = self.windows();
        for c in &self.calls {
            let Some(&(from, _, granted)) = windows
                .iter()
                .find(|(from, to, _)| *from <= c.sent && c.answered <= *to)
            else {
                continue;
            };
            let what = if c.write { "put" } else { "linearizable read" };
            let since = c.sent.duration_since(from);
            match (granted, c.answer) {
                (false, Answer::Served) => {
                    return Err(format!(
                        "a {what} by {user} was served though it was sent {since:?} after the revoke was acknowledged"
                    ))
                }
                (true, Answer::Denied) => {
                    return Err(format!(
                        "a {what} by {user} was refused though it was sent {since:?} after the grant was acknowledged"
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Calls decided inside a certain window: `(served while granted,
    /// refused while revoked)`.
    pub fn decided(&self) -> (usize, usize) {
        let windows = self.windows();
        let inside = |c: &&Call, g: bool, a: Answer| {
            c.answer == a
                && windows
                    .iter()
                    .any(|(f, t, granted)| *granted == g && *f <= c.sent && c.answered <= *t)
        };
        (
            self.calls
                .iter()
                .filter(|c| inside(c, true, Answer::Served))
                .count(),
            self.calls
                .iter()
                .filter(|c| inside(c, false, Answer::Denied))
                .count(),
        )
    }
}

impl Outcome {
    /// The first lane's violation, if any; also a run in which no request
    /// was decided inside a window (it would have checked nothing).
    pub fn check(&self) -> Result<(), String> {
        self.lanes.iter().try_for_each(LaneOutcome::check)?;
        let (served, refused) = self.decided();
        if served + refused == 0 {
            return Err("no request was answered inside a certain window: nothing checked".into());
        }
        Ok(())
    }

    /// Requests decided inside a window, over all lanes.
    fn decided(&self) -> (usize, usize) {
        self.lanes
            .iter()
            .map(LaneOutcome::decided)
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let changes: Vec<&Change> = self.lanes.iter().flat_map(|l| &l.changes).collect();
        let grants = changes.iter().filter(|c| c.grant).count();
        let calls: usize = self.lanes.iter().map(|l| l.calls.len()).sum();
        let (served, refused) = self.decided();
        let txns: Vec<&Call> = self
            .lanes
            .iter()
            .flat_map(|l| &l.calls)
            .filter(|c| c.txn)
            .collect();
        let txns_served = txns.iter().filter(|c| c.answer == Answer::Served).count();
        format!(
            "access: {} users, {} permission changes ({grants} grants, {} revokes), {calls} requests ({served} served while granted, {refused} refused while revoked; {} Txns across the lanes' regions, {txns_served} served)",
            self.lanes.len(),
            changes.len(),
            changes.len() - grants,
            txns.len(),
        )
    }
}
