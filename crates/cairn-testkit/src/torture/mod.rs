//! Robustness runs ("torture"): a recorded workload against a real cluster
//! while a nemesis injects faults, then the history is checked for
//! linearizability (`cairn_check`) and the watcher's events for etcd's
//! watch guarantees ([`watch_check`]). Beside the KV workload, lockers
//! contend for locks through Lock and Campaign ([`locks`]: mutual
//! exclusion and fencing checked) and lease clients keep leases alive or
//! let them go ([`leases`]: no key lost while its lease is owed, none kept
//! past it). On a secured cluster ([`crate::secured`]), users with a
//! permission granted and revoked over and over make requests ([`access`]:
//! every change in force at once on every member), and users limited to
//! keys of their own put onto and revoke leases whose other keys root
//! attaches and detaches outside the first region ([`lease_access`]: the
//! lease's keys decide, never a stale index entry). With regions, a bank
//! moves money between accounts in different regions ([`bank`]: every
//! read sees the same total, the history strictly serializable), and
//! sleepers touch keys in regions of their own that hibernate between
//! touches ([`sleepers`]: a dead leader's sleeping regions elect another).
//!
//! Clusters: in-process nodes (faults through the real peer transport's
//! switchboard: partitions, message loss and delay, crash-restart of a
//! node) or `cairn serve` processes (SIGKILL of one node, of the leader, of
//! all nodes at once; SIGSTOP/SIGCONT pauses; restarts with a crash point
//! armed, in a `--features failpoints` build). Meanwhile a compactor
//! compacts just behind the watcher and nodes snapshot often, so compaction,
//! snapshot build and install all happen under faults, and every member
//! runs the corruption check ([`corruption`]: no false alarm). Named scenarios
//! ([`scenario`]) aim this at etcd's known bug classes. Everything random
//! comes from one seed, so a failing run is rerun with `--seed`.

pub mod access;
pub mod bank;
pub mod bank_watch;
pub mod corruption;
pub mod lease_access;
pub mod leases;
pub mod locks;
pub mod nemesis;
pub mod scenario;
pub mod sleepers;
pub mod watch_check;
pub mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::CompactionRequest;

use cairn_check::{Operation, Status, Verdict};

pub use nemesis::{Fault, Target};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<Fault>,
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    /// `Some(binary)`: a cluster of `cairn serve` processes; `None`: in-process.
    pub process_bin: Option<PathBuf>,
    /// Where to write the history (JSON lines); the history with lost
    /// answers resolved from watch events goes beside it (`.resolved.jsonl`).
    pub history: Option<PathBuf>,
    /// Compact this often (to just past the watcher's last event, so a
    /// resumed watch starts exactly at the compaction revision); `None`: never.
    pub compact_every: Option<Duration>,
    /// Nodes snapshot (and purge their log) every this many entries, so
    /// snapshot build and install happen during a run.
    pub snapshot_count: u64,
    /// Lockers contending for [`Config::locks`] locks (0: no lock workload).
    pub lockers: usize,
    pub locks: usize,
    /// Lease clients (0: no lease workload).
    pub lease_clients: usize,
    /// How long each fault is held: a random time in this range.
    pub fault_hold: (Duration, Duration),
    /// The lease workload's TTLs, seconds: a random one in this range.
    pub lease_ttl: (i64, i64),
    /// Users of the access workload (secured clusters only; 0: none).
    pub access_users: usize,
    /// Lanes of the lease-access workload (secured clusters only; 0: none).
    pub lease_users: usize,
    /// Bank accounts (0: no bank workload), and clients transferring.
    pub bank_accounts: usize,
    pub bank_clients: usize,
    /// Keys of the sleepers workload, each in a region of its own that
    /// hibernates between touches (0: none).
    pub sleepers: usize,
    /// How often every member runs the corruption check (zero: never).
    pub corrupt_check_every: Duration,
}

impl Config {
    /// The defaults of `cairn torture`: 3 in-process nodes, 6 clients on 8
    /// keys, compaction every 2 s, snapshots every 1,000 entries.
    pub fn new(duration: Duration, seed: u64, faults: Vec<Fault>) -> Self {
        Config {
            duration,
            seed,
            faults,
            nodes: 3,
            clients: 6,
            keys: 8,
            process_bin: None,
            history: None,
            compact_every: Some(Duration::from_secs(2)),
            snapshot_count: 1_000,
            lockers: 4,
            locks: 2,
            lease_clients: 3,
            fault_hold: (Duration::from_millis(500), Duration::from_millis(2500)),
            lease_ttl: (2, 5),
            access_users: 2,
            lease_users: 1,
            bank_accounts: 0,
            bank_clients: 4,
            sleepers: 0,
            corrupt_check_every: corruption::CHECK_EVERY,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub operations: usize,
    pub ok: usize,
    pub unknown: usize,
    pub failed: usize,
    /// Unknown outcomes resolved from the watch events before checking.
    pub resolved: usize,
    /// Faults injected, with the time (ms since start) each began.
    pub faults: Vec<(u64, String)>,
    pub linearizable: Verdict,
    pub watch: Result<(), String>,
    pub events: usize,
    pub watch_resumes: u32,
    /// Compactions that succeeded, and the last compaction revision.
    pub compactions: usize,
    pub compacted_to: i64,
    pub locks: locks::Outcome,
    pub lock_check: Result<(), String>,
    pub leases: leases::Outcome,
    pub lease_check: Result<(), String>,
    /// `None` when the access workload did not run (a plain cluster).
    pub access: Option<access::Outcome>,
    pub access_check: Result<(), String>,
    /// `None` when the lease-access workload did not run.
    pub lease_access: Option<lease_access::Outcome>,
    pub lease_access_check: Result<(), String>,
    /// `None` when the bank workload did not run.
    pub bank: Option<bank::Outcome>,
    pub bank_check: Result<(), String>,
    /// `None` when the sleepers workload did not run.
    pub sleepers: Option<sleepers::Outcome>,
    pub sleepers_check: Result<(), String>,
    pub corruption: corruption::Outcome,
}

impl Report {
    /// True when no checker found a violation.
    pub fn passed(&self) -> bool {
        matches!(self.linearizable, Verdict::Ok { .. })
            && self.watch.is_ok()
            && self.lock_check.is_ok()
            && self.lease_check.is_ok()
            && self.access_check.is_ok()
            && self.lease_access_check.is_ok()
            && self.bank_check.is_ok()
            && self.sleepers_check.is_ok()
            && self.corruption.check().is_ok()
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "operations: {} (ok {}, unknown {} of which {} resolved from watch events, failed {}), faults injected: {}, watch events: {} (resumed {} times), compactions: {} (last at revision {})\n",
            self.operations,
            self.ok,
            self.unknown,
            self.resolved,
            self.failed,
            self.faults.iter().filter(|(_, f)| !f.starts_with(nemesis::NOTE)).count(),
            self.events,
            self.watch_resumes,
            self.compactions,
            self.compacted_to,
        );
        for (t, f) in &self.faults {
            s += &format!("  fault at {t} ms: {f}\n");
        }
        s += &match &self.linearizable {
            Verdict::Ok { keys, operations } => {
                format!("linearizable: yes ({operations} operations on {keys} keys)\n")
            }
            Verdict::Violation(w) => format!("linearizable: NO\n{w}\n"),
            Verdict::Unknown(w) => format!("linearizable: undecided ({w})\n"),
        };
        s += &match &self.watch {
            Ok(()) => "watch guarantees: hold\n".to_string(),
            Err(w) => format!("watch guarantees: VIOLATED: {w}\n"),
        };
        let l = &self.locks;
        s += &format!(
            "locks: {} attempts, {} holds ({} fenced writes, {} refused), {} grants came after the lease was due (no section), {} grants lost their key before the section, {} waiters told their session expired\n",
            l.attempts,
            l.holds.len(),
            l.holds.iter().map(|h| h.fenced.len()).sum::<usize>(),
            l.fenced_out,
            l.holds.iter().filter(|h| !h.ran).count(),
            l.lost,
            l.expired,
        );
        s += &match &self.lock_check {
            Ok(()) => "mutual exclusion: holds\n".to_string(),
            Err(w) => format!("mutual exclusion: VIOLATED: {w}\n"),
        };
        let e = &self.leases;
        s += &format!(
            "leases: {} ({} revoked, {} left to expire), {} key deletes seen, slowest expiry {:?} past due, {} watch gaps\n",
            e.lives.len(),
            e.lives.iter().filter(|l| l.revoked_at.is_some()).count(),
            e.lives.iter().filter(|l| l.revoked_at.is_none()).count(),
            e.deletes.len(),
            e.max_late,
            e.gaps,
        );
        s += &match &self.lease_check {
            Ok(()) => "lease safety: holds\n".to_string(),
            Err(w) => format!("lease safety: VIOLATED: {w}\n"),
        };
        if let Some(b) = &self.bank {
            s += &b.summary();
            s += "\n";
            s += &match &self.bank_check {
                Ok(()) => "bank total, strict serializability and its watch: hold\n".to_string(),
                Err(w) => format!("bank: VIOLATED: {w}\n"),
            };
        }
        if let Some(z) = &self.sleepers {
            s += &z.summary();
            s += "\n";
            s += &match &self.sleepers_check {
                Ok(()) => "sleeping regions: serve, lose nothing, come back\n".to_string(),
                Err(w) => format!("sleepers: VIOLATED: {w}\n"),
            };
        }
        s += &self.corruption.summary();
        s += "\n";
        s += &match self.corruption.check() {
            Ok(()) => "no false corruption alarm\n".to_string(),
            Err(w) => format!("corruption check: VIOLATED: {w}\n"),
        };
        if let Some(a) = &self.access {
            s += &a.summary();
            s += "\n";
            s += &match &self.access_check {
                Ok(()) => "access control: holds\n".to_string(),
                Err(w) => format!("access control: VIOLATED: {w}\n"),
            };
        }
        if let Some(a) = &self.lease_access {
            s += &a.summary();
            s += "\n";
            s += &match &self.lease_access_check {
                Ok(()) => "lease access: holds\n".to_string(),
                Err(w) => format!("lease access: VIOLATED: {w}\n"),
            };
        }
        s
    }
}

/// Runs one robustness run.
pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    let compared_before = corruption::compared_here();
    let mut target = match &cfg.process_bin {
        Some(bin) => {
            Target::process(bin, cfg.nodes, cfg.snapshot_count, cfg.corrupt_check_every).await
        }
        None => Target::in_process(cfg.nodes, cfg.snapshot_count, cfg.corrupt_check_every).await,
    };
    let endpoints = target.endpoints();
    let epoch = Instant::now();
    let deadline = epoch + cfg.duration;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Operation>();
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        let kv = crate::kv::connect(&endpoints[c % endpoints.len()]).await;
        clients.push(tokio::spawn(workload::client(
            c as u64 + 1,
            kv,
            cfg.keys,
            cfg.seed.wrapping_mul(1000).wrapping_add(c as u64),
            epoch,
            deadline,
            tx.clone(),
        )));
    }
    drop(tx);
    let progress = Arc::new(AtomicI64::new(0));
    // The lease observers report how far they have seen too: compaction
    // stays behind every watcher, so none of them loses events to it.
    let lease_progress: Vec<Arc<AtomicI64>> = (0..endpoints.len())
        .map(|_| Arc::new(AtomicI64::new(0)))
        .collect();
    let lock_progress = Arc::new(AtomicI64::new(0));
    let mut floors = vec![progress.clone()];
    if cfg.lease_clients > 0 {
        floors.extend(lease_progress.iter().cloned());
    }
    if cfg.lockers > 0 {
        floors.push(lock_progress.clone());
    }
    // A watch over the sleepers' keys too: their regions are watched idle
    // regions, closed beside the log while they sleep (`node::side_closes`).
    let sleepers_progress = Arc::new(AtomicI64::new(0));
    if cfg.sleepers > 0 {
        floors.push(sleepers_progress.clone());
    }
    let (sleepers_until, until_slept) = tokio::sync::watch::channel(None);
    let sleepers_watch = (cfg.sleepers > 0).then(|| {
        tokio::spawn(watch_check::follow(
            endpoints.clone(),
            sleepers::PREFIX,
            deadline,
            sleepers_progress.clone(),
            until_slept,
        ))
    });
    // A watch over every bank account: transfers across regions arrive
    // whole, in op order, and add up (`bank_watch`).
    let bank_progress = Arc::new(AtomicI64::new(0));
    if cfg.bank_accounts > 1 {
        floors.push(bank_progress.clone());
    }
    let (bank_until, until_banked) = tokio::sync::watch::channel(None);
    let bank_watch = (cfg.bank_accounts > 1).then(|| {
        tokio::spawn(watch_check::follow(
            endpoints.clone(),
            bank::PREFIX,
            deadline,
            bank_progress.clone(),
            until_banked,
        ))
    });
    let (watch_until, until) = tokio::sync::watch::channel(None);
    let watcher = tokio::spawn(watch_check::follow(
        endpoints.clone(),
        "key",
        deadline,
        progress.clone(),
        until,
    ));
    let compactor = cfg.compact_every.map(|every| {
        tokio::spawn(compactor(
            endpoints.clone(),
            every,
            cfg.seed,
            floors,
            deadline,
        ))
    });
    let lockers = (cfg.lockers > 0).then(|| {
        let (endpoints, cfg) = (endpoints.clone(), cfg.clone());
        tokio::spawn(async move {
            locks::run(
                &endpoints,
                cfg.lockers,
                cfg.locks.max(1),
                cfg.seed,
                deadline,
                lock_progress,
            )
            .await
        })
    });
    let lease_clients = (cfg.lease_clients > 0).then(|| {
        let (endpoints, cfg) = (endpoints.clone(), cfg.clone());
        tokio::spawn(async move {
            let (n, seed, ttl) = (cfg.lease_clients, cfg.seed, cfg.lease_ttl);
            leases::run(&endpoints, n, ttl, seed, deadline, lease_progress).await
        })
    });
    // With splits among the faults, each access lane's keys lie in two
    // regions from the start and its writes include Txns across them.
    let access_across = cfg.faults.contains(&nemesis::Fault::Split);
    let access_users = (cfg.access_users > 0 && crate::secured::is_on()).then(|| {
        let (endpoints, n, seed) = (endpoints.clone(), cfg.access_users, cfg.seed);
        tokio::spawn(async move { access::run(&endpoints, n, seed, deadline, access_across).await })
    });
    let lease_users = (cfg.lease_users > 0 && crate::secured::is_on()).then(|| {
        let (endpoints, n, seed) = (endpoints.clone(), cfg.lease_users, cfg.seed);
        tokio::spawn(async move { lease_access::run(&endpoints, n, seed, deadline).await })
    });
    let bank = (cfg.bank_accounts > 1).then(|| {
        let (endpoints, cfg) = (endpoints.clone(), cfg.clone());
        tokio::spawn(async move {
            let (n, clients, seed) = (cfg.bank_accounts, cfg.bank_clients, cfg.seed);
            bank::run(&endpoints, n, clients, seed, deadline).await
        })
    });
    let sleepers = (cfg.sleepers > 0).then(|| {
        let (endpoints, n, seed) = (endpoints.clone(), cfg.sleepers, cfg.seed);
        tokio::spawn(async move { sleepers::run(&endpoints, n, seed, epoch, deadline).await })
    });
    // The lease-access lanes' keys outside the first region; each access
    // lane's keys in two regions.
    let mut splits_first = match lease_users {
        Some(_) => vec![lease_access::SPLIT.to_string()],
        None => Vec::new(),
    };
    if access_users.is_some() && access_across {
        splits_first.extend(access::split_points(cfg.access_users));
    }
    let faults = nemesis::run(
        &mut target,
        &cfg.faults,
        cfg.seed,
        epoch,
        deadline,
        cfg.fault_hold,
        cfg.bank_accounts,
        cfg.sleepers,
        &splits_first,
    )
    .await;
    let mut sleepers = match sleepers {
        Some(t) => Some(t.await?),
        None => None,
    };
    let mut sleepers_check = sleepers.as_ref().map_or(Ok(()), |z| z.check());
    if let (Some(z), Some(w)) = (&mut sleepers, sleepers_watch) {
        let until = watch_check::last_answered(&z.history);
        let _ = sleepers_until.send(Some(until));
        let followed = w.await?;
        z.watched = followed.events.len();
        let watch = match (followed.compacted, followed.broken_progress) {
            (Some(e), _) | (None, Some(e)) => Err(e),
            (None, None) => watch_check::check(&followed.events, &z.history, followed.seen_to)
                .and_then(|()| watch_check::caught_up(followed.seen_to, until)),
        };
        if let (Ok(()), Err(e)) = (&sleepers_check, watch) {
            sleepers_check = Err(format!("the watch over the sleepers' keys: {e}"));
        }
    }
    let mut bank = match bank {
        Some(t) => Some(t.await?),
        None => None,
    };
    let mut bank_check = bank.as_ref().map_or(Ok(()), |b| b.check());
    if let (Some(b), Some(w)) = (&mut bank, bank_watch) {
        let until = b.last_committed();
        let _ = bank_until.send(Some(until));
        let followed = w.await?;
        let watch = match (followed.compacted, followed.broken_progress) {
            (Some(e), _) | (None, Some(e)) => Err(e),
            (None, None) => bank_watch::check(
                &followed.events,
                &b.history,
                cfg.bank_accounts,
                followed.seen_to,
            )
            .and_then(|w| watch_check::caught_up(followed.seen_to, until).map(|()| w)),
        };
        match watch {
            Ok(w) => b.watched = Some(w),
            Err(e) if bank_check.is_ok() => bank_check = Err(e),
            Err(_) => {}
        }
    }
    let locks = match lockers {
        Some(t) => t.await?,
        None => locks::Outcome::default(),
    };
    let leases = match lease_clients {
        Some(t) => t.await?,
        None => leases::Outcome::default(),
    };
    let (lock_check, lease_check) = (locks::check(&locks.holds, &locks.deletes), leases.check());
    let access = match access_users {
        Some(t) => Some(t.await?),
        None => None,
    };
    let access_check = access.as_ref().map_or(Ok(()), |a| a.check());
    let lease_access = match lease_users {
        Some(t) => Some(t.await?),
        None => None,
    };
    let lease_access_check = lease_access.as_ref().map_or(Ok(()), |a| a.check());
    for c in clients {
        c.await?;
    }
    let mut history = Vec::new();
    while let Some(op) = rx.recv().await {
        history.push(op);
    }
    history.sort_by_key(|o| (o.call, o.id));
    // The watcher follows until it has seen every event up to the last
    // revision any answer carries.
    let until = watch_check::last_answered(&history);
    let _ = watch_until.send(Some(until));
    let (compactions, compacted_to) = match compactor {
        Some(c) => c.await?,
        None => (0, 0),
    };
    let followed = watcher.await?;
    let (events, watch_resumes, seen_to) = (followed.events, followed.resumes, followed.seen_to);
    let compared = match target {
        Target::InProcess(_) => Some(corruption::compared_here() - compared_before),
        Target::Process(_) => None,
    };
    let corruption = corruption::outcome(
        &endpoints,
        cfg.corrupt_check_every,
        compared,
        epoch.elapsed(),
    )
    .await;
    // Beside the history, the members' logs (`<history>.logs/`).
    let logs_to = cfg.history.as_ref().map(|p| p.with_extension("logs"));
    target.shutdown(logs_to.as_deref()).await;
    if let Some(p) = &cfg.history {
        let text: String = history
            .iter()
            .map(|o| cairn_check::history::line(o) + "\n")
            .collect();
        std::fs::write(p, text)?;
        // And the watch events, one `revision key value|null` per line.
        let text: String = events
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}\n",
                    e.revision,
                    e.key,
                    e.value.as_deref().unwrap_or("null")
                )
            })
            .collect();
        std::fs::write(p.with_extension("events.txt"), text)?;
    }
    let count = |s: Status| history.iter().filter(|o| o.result.status == s).count();
    let (operations, ok, unknown, failed) = (
        history.len(),
        count(Status::Ok),
        count(Status::Unknown),
        count(Status::Fail),
    );
    let watch = match followed.compacted {
        Some(e) => Err(e),
        None => match followed.broken_progress {
            Some(e) => Err(e),
            None => watch_check::check(&events, &history, seen_to)
                .and_then(|()| watch_check::caught_up(seen_to, until)),
        },
    };
    // With complete, valid events, lost answers are resolved from them.
    let resolved = if watch.is_ok() {
        watch_check::resolve_unknown(&mut history, &events, seen_to)
    } else {
        0
    };
    if let Some(p) = &cfg.history {
        // The resolved history too, so the check can be rerun quickly.
        let text: String = history
            .iter()
            .map(|o| cairn_check::history::line(o) + "\n")
            .collect();
        std::fs::write(p.with_extension("resolved.jsonl"), text)?;
    }
    let linearizable = {
        let h = history.clone();
        tokio::task::spawn_blocking(move || cairn_check::check(&h, cairn_check::DEFAULT_BUDGET))
            .await?
    };
    Ok(Report {
        operations,
        ok,
        unknown,
        failed,
        resolved,
        faults,
        linearizable,
        watch,
        events: events.len(),
        watch_resumes,
        compactions,
        compacted_to,
        locks,
        lock_check,
        leases,
        lease_check,
        access,
        access_check,
        lease_access,
        lease_access_check,
        bank,
        bank_check,
        sleepers,
        sleepers_check,
        corruption,
    })
}

/// Every `every` (±50%), compacts at the watcher's last revision + 1
/// through a random node: history the watcher has not seen is never
/// compacted, and a watch it resumes starts right at the compaction
/// revision — where etcd once lost or duplicated events. Returns how many
/// compactions succeeded and the last revision compacted to. (Failures —
/// a node down, a revision not yet written — are expected and ignored.)
async fn compactor(
    endpoints: Vec<String>,
    every: Duration,
    seed: u64,
    floors: Vec<Arc<AtomicI64>>,
    deadline: Instant,
) -> (usize, i64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xc0_4ac7);
    let (mut done, mut last) = (0, 0);
    let half = every.as_millis() as u64 / 2;
    loop {
        let pause = Duration::from_millis(half + rng.u64(0..=2 * half));
        if Instant::now() + pause >= deadline {
            return (done, last);
        }
        tokio::time::sleep(pause).await;
        let seen = floors.iter().map(|f| f.load(Ordering::Relaxed)).min();
        let rev = seen.unwrap_or(0) + 1;
        if rev <= last + 1 {
            continue;
        }
        let mut kv = crate::kv::connect(&endpoints[rng.usize(0..endpoints.len())]).await;
        let req = CompactionRequest {
            revision: rev,
            physical: rng.bool(),
        };
        let call = tokio::time::timeout(Duration::from_secs(3), kv.compact(req));
        if let Ok(Ok(_)) = call.await {
            done += 1;
            last = rev;
        }
    }
}
