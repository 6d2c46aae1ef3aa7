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

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::*;
use parking_lot::Mutex;
use tonic::transport::Channel;

/// The accounts' key prefix.
pub const PREFIX: &str = "zb/";
/// Every account starts with this balance.
const START: i64 = 1_000;
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
}

impl Outcome {
    /// A violation, if any read saw a wrong total.
    pub fn check(&self) -> Result<(), String> {
        match self.bad.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} of {} reads saw a wrong bank total; first: {first}",
                self.bad.len(),
                self.reads
            )),
        }
    }

    /// A human summary line.
    pub fn summary(&self) -> String {
        format!(
            "bank: {} transfers ({} compares failed, {} unknown), {} reads of every account ({} serializable)",
            self.transfers, self.refused, self.unknown, self.reads, self.serializable_reads
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
            if let Ok(Ok(r)) = tokio::time::timeout(CALL, kv.put(put)).await {
                opened = r.into_inner().header.map_or(0, |h| h.revision);
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
                let (Some(fv), Some(tv)) =
                    (balance(&mut kv, &from).await, balance(&mut kv, &to).await)
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(req) = transfer(&from, &fv, &to, &tv, rng.i64(1..=50)) else {
                    out.lock()
                        .bad
                        .push(format!("unreadable balance {fv:?} or {tv:?}"));
                    continue;
                };
                match tokio::time::timeout(CALL, kv.txn(req)).await {
                    Ok(Ok(r)) if r.get_ref().succeeded => out.lock().transfers += 1,
                    Ok(Ok(_)) => out.lock().refused += 1,
                    _ => {
                        out.lock().unknown += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for endpoint in endpoints {
        let (out, endpoint) = (out.clone(), endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let mut kv = crate::kv::connect(&endpoint).await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                // Linearizable and serializable reads in turn.
                n += 1;
                let serializable = n.is_multiple_of(2);
                let read = kv.range(all_accounts(serializable));
                let Ok(Ok(r)) = tokio::time::timeout(CALL, read).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let r = r.into_inner();
                if serializable && r.header.as_ref().map_or(0, |h| h.revision) < opened {
                    continue;
                }
                let sum = total_of(&r);
                {
                    let mut o = out.lock();
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
    // Once healed, one last read must hold the total too.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(CALL, kv.range(all_accounts(false))).await {
            let r = r.into_inner();
            let sum = total_of(&r);
            let mut o = out.lock();
            if sum != total || r.kvs.len() != accounts {
                o.bad.push(format!(
                    "final read: total {sum} over {} accounts",
                    r.kvs.len()
                ));
            }
            break;
        }
        if Instant::now() >= end {
            out.lock().bad.push("no final read in 10 s".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Arc::try_unwrap(out)
        .map(Mutex::into_inner)
        .unwrap_or_default()
}
