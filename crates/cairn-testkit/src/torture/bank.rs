//! The bank workload (Jepsen's) and its checker: accounts whose keys the
//! split nemesis spreads over several regions, transfers between them by
//! Txn, and reads of every account at once that must always see the same
//! total.
//!
//! Accounts are `zb/NN`. Each transfer reads both balances, then sends one Txn
//! that compares both values and moves a random amount — a Txn across
//! regions once the accounts are split apart (two-phase commit). Readers
//! read all of `zb/` in one Range (one timestamp across regions) and
//! record any total other than the initial one, or a missing account:
//! a torn read, a partial commit, or a lost write. Transfers whose outcome
//! is unknown (a fault cut the answer) are fine either way — a transfer
//! is atomic, so the total holds whether it happened or not.
//!
//! Every read (of all accounts, and of the balances a transfer starts
//! from) and every transfer is also recorded, and the history is judged
//! strictly serializable by its revisions (`cairn_check::txns`): each read
//! is the state at its revision, each committed transfer's compares held
//! at its commit, and revisions agree with real time. Half of the
//! transfers compare the accounts' `mod_revision`s instead of their
//! values, so that check covers their compares too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::*;
use cairn_check::txns;
use parking_lot::Mutex;
use tonic::transport::Channel;

/// The accounts' key prefix.
pub const PREFIX: &str = "zb/";
/// Every account starts with this balance.
pub(crate) const START: i64 = 1_000;
const CALL: Duration = Duration::from_secs(5);

/// An account's key.
pub fn account(i: usize) -> String {
    format!("{PREFIX}{i:02}")
}

/// What the bank saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub transfers: usize,
    pub refused: usize,
    pub unknown: usize,
    pub reads: usize,
    /// Of `reads`, the serializable ones (a replica's own regions, read at
    /// the revision they all resolved: a snapshot too).
    pub serializable_reads: usize,
    /// Reads whose total (or account count) was wrong, described.
    pub bad: Vec<String>,
    /// Every read and transfer, for the serializability check.
    pub history: Vec<txns::Op>,
    /// What that check found (after the run).
    pub judged: txns::Report,
    /// What the watch over every account went through (`bank_watch`).
    pub watched: Option<super::bank_watch::Watched>,
}

impl Outcome {
    /// A violation, if any read saw a wrong total or the history is not
    /// strictly serializable.
    pub fn check(&self) -> Result<(), String> {
        let mut found = Vec::new();
        if let Some(first) = self.bad.first() {
            found.push(format!(
                "{} of {} reads saw a wrong bank total; first: {first}",
                self.bad.len(),
                self.reads
            ));
        }
        if let Some(first) = self.judged.violations.first() {
            found.push(format!(
                "not strictly serializable ({} violations); first: {first}",
                self.judged.violations.len()
            ));
        }
        match found.is_empty() {
            true => Ok(()),
            false => Err(found.join("; ")),
        }
    }

    /// The highest revision a write was acknowledged at (0: none).
    pub fn last_committed(&self) -> i64 {
        self.history
            .iter()
            .filter_map(|op| match op {
                txns::Op::Write(txns::Write {
                    outcome: txns::WriteOutcome::Committed(rev),
                    ..
                }) => Some(*rev),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// A human summary line.
    pub fn summary(&self) -> String {
        let watched = self.watched.map_or(String::new(), |w| {
            format!(
                "; watch: {} revisions replayed, {} acknowledged transfers found whole in op order",
                w.revisions, w.transfers
            )
        });
        format!(
            "bank: {} transfers ({} compares failed, {} unknown), {} reads of every account ({} serializable); history: {} reads and {} committed transfers checked, {} writes known only from reads{watched}",
            self.transfers,
            self.refused,
            self.unknown,
            self.reads,
            self.serializable_reads,
            self.judged.reads,
            self.judged.committed,
            self.judged.inferred
        )
    }
}

fn all_accounts(serializable: bool) -> RangeRequest {
    RangeRequest {
        key: PREFIX.as_bytes().to_vec(),
        range_end: b"zb0".to_vec(),
        serializable,
        ..Default::default()
    }
}

fn value_is(key: &str, v: &[u8]) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: CompareTarget::Value as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::Value(v.to_vec())),
        range_end: Vec::new(),
    }
}

fn put(key: &str, v: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: v.to_string().into_bytes(),
            ..Default::default()
        })),
    }
}

/// A transfer of `amount` from `from` (holding `fv`) to `to` (holding
/// `tv`): applies only if both still hold what was read.
pub fn transfer(from: &str, fv: &[u8], to: &str, tv: &[u8], amount: i64) -> Option<TxnRequest> {
    let parse = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<i64>().ok();
    let (f, t) = (parse(fv)?, parse(tv)?);
    Some(TxnRequest {
        compare: vec![value_is(from, fv), value_is(to, tv)],
        success: vec![put(from, f - amount), put(to, t + amount)],
        failure: vec![],
    })
}

fn revision_is(key: &str, m: i64) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(m)),
        range_end: Vec::new(),
    }
}

/// The sum of the balances a read of accounts found.
fn total_of(r: &RangeResponse) -> i64 {
    r.kvs
        .iter()
        .filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<i64>().ok())
        .sum()
}

/// The balance of `key`, linearizably.
pub async fn balance(kv: &mut KvClient<Channel>, key: &str) -> Option<Vec<u8>> {
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let r = tokio::time::timeout(CALL, kv.range(req)).await.ok()?.ok()?;
    r.into_inner().kvs.into_iter().next().map(|kv| kv.value)
}

/// One account as read: its value and the revision it was last written
/// at.
struct Balance {
    value: Vec<u8>,
    modified: i64,
}

/// The history's record of a read answer `r` of `[start, end)`.
fn read_op(
    call: u64,
    ret: u64,
    (start, end): (&[u8], &[u8]),
    r: &RangeResponse,
    linearizable: bool,
) -> txns::Op {
    txns::Op::Read(txns::Read {
        call,
        ret,
        start: start.to_vec(),
        end: end.to_vec(),
        revision: r.header.as_ref().map_or(0, |h| h.revision),
        kvs: r
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone(), kv.mod_revision))
            .collect(),
        linearizable,
    })
}

/// Nanoseconds since `start`: the history's clock.
fn since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The balance of `key`, linearizably, recorded in `history`.
async fn balance_recorded(
    kv: &mut KvClient<Channel>,
    key: &str,
    start: Instant,
    history: &Mutex<Outcome>,
) -> Option<Balance> {
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let call = since(start);
    let r = tokio::time::timeout(CALL, kv.range(req)).await.ok()?.ok()?;
    let r = r.into_inner();
    let one_key = [key.as_bytes(), &[0]].concat();
    let op = read_op(call, since(start), (key.as_bytes(), &one_key), &r, true);
    history.lock().history.push(op);
    r.kvs.into_iter().next().map(|kv| Balance {
        value: kv.value,
        modified: kv.mod_revision,
    })
}

/// The history's record of a write of `req` called at `call`, answered
/// `answer` at `ret` (`None`: no answer).
fn write_op(
    call: u64,
    ret: Option<u64>,
    expect: Vec<(Vec<u8>, i64)>,
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    answer: Option<(bool, i64)>,
) -> txns::Op {
    txns::Op::Write(txns::Write {
        call,
        ret,
        expect,
        puts,
        outcome: match answer {
            Some((true, rev)) => txns::WriteOutcome::Committed(rev),
            Some((false, rev)) => txns::WriteOutcome::Refused(rev),
            None => txns::WriteOutcome::Unknown,
        },
    })
}

/// The puts of a transfer request.
fn puts_of(req: &TxnRequest) -> Vec<(Vec<u8>, Vec<u8>)> {
    req.success
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestPut(p)) => Some((p.key.clone(), p.value.clone())),
            _ => None,
        })
        .collect()
}

/// Opens `accounts` accounts, then runs `clients` transferring clients and
/// one reader per endpoint until `deadline`.
pub async fn run(
    endpoints: &[String],
    accounts: usize,
    clients: usize,
    seed: u64,
    deadline: Instant,
) -> Outcome {
    let out = Arc::new(Mutex::new(Outcome::default()));
    let start = Instant::now();
    let mut kv = crate::kv::connect(&endpoints[0]).await;
    // The revision every account exists at: a serializable read below it
    // (a replica behind) may see some of them.
    let mut opened = 0;
    for i in 0..accounts {
        // Retried through faults until it lands (a put is idempotent here).
        while Instant::now() < deadline {
            let put = PutRequest {
                key: account(i).into_bytes(),
                value: START.to_string().into_bytes(),
                ..Default::default()
            };
            let puts = vec![(put.key.clone(), put.value.clone())];
            let call = since(start);
            let answer = tokio::time::timeout(CALL, kv.put(put)).await;
            let rev = match &answer {
                Ok(Ok(r)) => Some(r.get_ref().header.as_ref().map_or(0, |h| h.revision)),
                _ => None,
            };
            let ret = rev.map(|_| since(start));
            let op = write_op(call, ret, vec![], puts, rev.map(|r| (true, r)));
            out.lock().history.push(op);
            if let Some(rev) = rev {
                opened = rev;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let total = START * accounts as i64;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (out, endpoint) = (out.clone(), endpoints[c % endpoints.len()].clone());
        let mut rng = fastrand::Rng::with_seed(seed ^ (0xba4c + c as u64));
        tasks.push(tokio::spawn(async move {
            let mut kv = crate::kv::connect(&endpoint).await;
            while Instant::now() < deadline {
                let (a, b) = (rng.usize(0..accounts), rng.usize(0..accounts));
                if a == b {
                    continue;
                }
                let (from, to) = (account(a), account(b));
                let (Some(fb), Some(tb)) = (
                    balance_recorded(&mut kv, &from, start, &out).await,
                    balance_recorded(&mut kv, &to, start, &out).await,
                ) else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(mut req) = transfer(&from, &fb.value, &to, &tb.value, rng.i64(1..=50))
                else {
                    out.lock().bad.push(format!(
                        "unreadable balance {:?} or {:?}",
                        fb.value, tb.value
                    ));
                    continue;
                };
                // Half compare the revisions the balances were written at.
                let mut expect = Vec::new();
                if rng.bool() {
                    req.compare = vec![
                        revision_is(&from, fb.modified),
                        revision_is(&to, tb.modified),
                    ];
                    expect = vec![
                        (from.clone().into_bytes(), fb.modified),
                        (to.clone().into_bytes(), tb.modified),
                    ];
                }
                let puts = puts_of(&req);
                let call = since(start);
                let answer = match tokio::time::timeout(CALL, kv.txn(req)).await {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        Some((r.succeeded, r.header.map_or(0, |h| h.revision)))
                    }
                    _ => None,
                };
                let ret = answer.map(|_| since(start));
                {
                    let mut o = out.lock();
                    o.history.push(write_op(call, ret, expect, puts, answer));
                    match answer {
                        Some((true, _)) => o.transfers += 1,
                        Some((false, _)) => o.refused += 1,
                        None => o.unknown += 1,
                    }
                }
                if answer.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let everything = all_accounts(false);
    let span = (everything.key.clone(), everything.range_end.clone());
    for endpoint in endpoints {
        let (out, endpoint, span) = (out.clone(), endpoint.clone(), span.clone());
        tasks.push(tokio::spawn(async move {
            let mut kv = crate::kv::connect(&endpoint).await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                // Linearizable and serializable reads in turn.
                n += 1;
                let serializable = n.is_multiple_of(2);
                let call = since(start);
                let read = kv.range(all_accounts(serializable));
                let Ok(Ok(r)) = tokio::time::timeout(CALL, read).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let r = r.into_inner();
                let ret = since(start);
                if serializable && r.header.as_ref().map_or(0, |h| h.revision) < opened {
                    continue;
                }
                let sum = total_of(&r);
                {
                    let mut o = out.lock();
                    let op = read_op(call, ret, (&span.0, &span.1), &r, !serializable);
                    o.history.push(op);
                    o.reads += 1;
                    o.serializable_reads += usize::from(serializable);
                    if r.kvs.len() == accounts && sum != total {
                        let rev = r.header.map_or(0, |h| h.revision);
                        let how = if serializable {
                            "serializable"
                        } else {
                            "linearizable"
                        };
                        o.bad.push(format!(
                            "total {sum} (not {total}) at revision {rev} ({how} read): {:?}",
                            r.kvs
                                .iter()
                                .map(|kv| (
                                    String::from_utf8_lossy(&kv.key).into_owned(),
                                    String::from_utf8_lossy(&kv.value).into_owned(),
                                    kv.mod_revision
                                ))
                                .collect::<Vec<_>>()
                        ));
                    } else if r.kvs.len() != accounts && !r.kvs.is_empty() {
                        o.bad
                            .push(format!("{} accounts of {accounts}", r.kvs.len()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Once the faults end, one last read must hold the total too — through
    // whichever member answers: the last fault's heal may still be
    // restarting one (an in-process restart late in a long run has taken
    // tens of seconds), and a client with several endpoints moves on.
    let end = Instant::now() + Duration::from_secs(30);
    let mut next = 0;
    loop {
        let call = since(start);
        let answer = tokio::time::timeout(CALL, kv.range(all_accounts(false))).await;
        if !matches!(answer, Ok(Ok(_))) {
            next = (next + 1) % endpoints.len();
            kv = crate::kv::connect(&endpoints[next]).await;
        }
        if let Ok(Ok(r)) = answer {
            let r = r.into_inner();
            let sum = total_of(&r);
            let mut o = out.lock();
            let op = read_op(call, since(start), (&span.0, &span.1), &r, true);
            o.history.push(op);
            if sum != total || r.kvs.len() != accounts {
                o.bad.push(format!(
                    "final read: total {sum} over {} accounts",
                    r.kvs.len()
                ));
            }
            break;
        }
        if Instant::now() >= end {
            out.lock().bad.push("no final read in 30 s".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let mut o = out.lock();
        o.judged = txns::check(&o.history);
    }
    Arc::try_unwrap(out)
        .map(Mutex::into_inner)
        .unwrap_or_default()
}
