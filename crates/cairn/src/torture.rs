//! `cairn torture` and `cairn check`: robustness runs and the history
//! checker, from the command line.
//!
//! `cairn torture --duration 30m --seed 7 --nemesis all` starts a cluster
//! (in-process, or `--cluster process` for `cairn serve` processes), runs
//! the recorded workload under the nemesis, writes the history and checks
//! it (linearizability + watch guarantees, lock mutual exclusion and
//! fencing, lease safety, and with `--bank-accounts` the bank total);
//! exit status 1 on a violation.
//! `--secured` runs the same on a secured cluster (TLS on both ports,
//! client certificates, auth on).
//! `cairn check linearizable HISTORY.jsonl` checks any history file in the
//! documented format (`crates/cairn-check/src/history.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use cairn_check::Verdict;
use cairn_testkit::torture::{self, scenario, Fault};
use clap::{Args, Subcommand, ValueEnum};

/// Which cluster a torture run uses.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// Nodes in this process (faults: partition, partition-leader, drop, delay, crash, crash-leader, move-leader).
    Inprocess,
    /// `cairn serve` processes (faults: kill, kill-leader, kill-all, pause).
    Process,
}

/// Options of `cairn torture`.
#[derive(Args, Debug)]
pub struct TortureArgs {
    /// How long the workload runs (e.g. 30s, 5m, 1h).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Comma-separated faults, or `all`, or `none`.
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    #[arg(long, value_enum, default_value = "inprocess")]
    pub cluster: ClusterKind,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Lockers contending for `--locks` locks via Lock and Campaign (0: none).
    #[arg(long, default_value_t = 4)]
    pub lockers: usize,
    #[arg(long, default_value_t = 2)]
    pub locks: usize,
    /// Clients granting, renewing, revoking and abandoning leases (0: none).
    #[arg(long, default_value_t = 3)]
    pub lease_clients: usize,
    /// Users of the access workload, which runs on secured clusters only
    /// (0: none).
    #[arg(long, default_value_t = 2)]
    pub access_users: usize,
    /// Lanes of the lease-access workload (users limited to keys of their
    /// own putting onto and revoking leases whose other keys root attaches
    /// and detaches), on secured clusters only (0: none).
    #[arg(long, default_value_t = 1)]
    pub lease_users: usize,
    /// Bank accounts, spread over regions by the `split` nemesis, with
    /// clients transferring between them by Txn and readers checking the
    /// total (0: no bank workload).
    #[arg(long, default_value_t = 0)]
    pub bank_accounts: usize,
    /// Clients of the bank workload.
    #[arg(long, default_value_t = 4)]
    pub bank_clients: usize,
    /// Keys of the sleepers workload, each in a region of its own that
    /// hibernates between touches (0: none).
    #[arg(long, default_value_t = 0)]
    pub sleepers: usize,
    /// How often every member runs the corruption check (0s: never); a
    /// run fails on any CORRUPT alarm.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub corrupt_check_every: Duration,
    /// Set by a scenario: how long each fault is held.
    #[arg(skip)]
    pub fault_hold: Option<(Duration, Duration)>,
    /// Set by a scenario: the lease workload's TTL range.
    #[arg(skip)]
    pub lease_ttl: Option<(i64, i64)>,
    /// Where to write the history (default: cairn-torture-SEED.jsonl in the temp dir).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Compact this often, just past the watcher's last event (0s: never).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub compact_every: Duration,
    /// Snapshot every this many log entries (etcd's --snapshot-count).
    #[arg(long, default_value_t = 1_000)]
    pub snapshot_count: u64,
    /// A named regression scenario (sets --cluster, --nemesis,
    /// --compact-every, --snapshot-count); `list` shows them.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Run secured: TLS on client and peer ports (separate CAs), client
    /// certificates required, auth on; every client is `root` by its
    /// certificate (also set by CAIRN_TEST_SECURED=1).
    #[arg(long)]
    pub secured: bool,
}

/// `cairn check ...`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(subcommand)]
    pub what: CheckWhat,
}

/// What to check.
#[derive(Subcommand, Debug)]
pub enum CheckWhat {
    /// Is this history (JSON lines) linearizable? Exit 1 if not, 2 if undecided.
    Linearizable {
        /// The history file.
        history: PathBuf,
        /// Search steps allowed per key.
        #[arg(long, default_value_t = cairn_check::DEFAULT_BUDGET)]
        budget: u64,
    },
}

/// Runs `cairn torture`.
pub async fn run(mut a: TortureArgs) -> anyhow::Result<()> {
    if let Some(name) = &a.scenario {
        if name == "list" {
            for s in scenario::ALL {
                let cluster = match (s.process, s.secured) {
                    (true, _) => "processes",
                    (false, true) => "in-process, secured",
                    (false, false) => "in-process",
                };
                println!(
                    "{:<36} {cluster}, nemesis {}\n{:<36} guards: {}",
                    s.name, s.nemesis, "", s.guards
                );
            }
            return Ok(());
        }
        let Some(s) = scenario::find(name) else {
            bail!("unknown scenario {name:?} (`--scenario list` shows them)");
        };
        eprintln!("scenario {}: {}", s.name, s.guards);
        a.cluster = if s.process {
            ClusterKind::Process
        } else {
            ClusterKind::Inprocess
        };
        a.nemesis = s.nemesis.to_string();
        a.compact_every = s.compact_every.unwrap_or_default();
        a.snapshot_count = s.snapshot_count;
        a.fault_hold = s.fault_hold;
        a.lease_ttl = s.lease_ttl;
        if let Some(n) = s.lease_clients {
            a.lease_clients = n;
        }
        a.secured |= s.secured;
        if s.bank_accounts > 0 {
            a.bank_accounts = s.bank_accounts;
        }
        if s.sleepers > 0 {
            a.sleepers = s.sleepers;
        }
        if let Some(every) = s.corrupt_check_every {
            a.corrupt_check_every = every;
        }
    }
    if a.secured {
        cairn_testkit::secured::enable();
    }
    let process = a.cluster == ClusterKind::Process;
    let faults = Fault::parse_list(&a.nemesis, process).map_err(anyhow::Error::msg)?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let history = a
        .history
        .unwrap_or_else(|| std::env::temp_dir().join(format!("cairn-torture-{seed}.jsonl")));
    eprintln!(
        "torture: seed {seed}, {:?}, {} {:?} nodes{}, {} clients on {} keys, faults {:?}",
        a.duration,
        a.nodes,
        a.cluster,
        if cairn_testkit::secured::is_on() {
            " (secured: TLS, client certificates, auth on)"
        } else {
            ""
        },
        a.clients,
        a.keys,
        faults
    );
    let cfg = torture::Config {
        nodes: a.nodes,
        clients: a.clients,
        keys: a.keys,
        process_bin: process.then(std::env::current_exe).transpose()?,
        history: Some(history.clone()),
        compact_every: (!a.compact_every.is_zero()).then_some(a.compact_every),
        snapshot_count: a.snapshot_count,
        lockers: a.lockers,
        locks: a.locks,
        lease_clients: a.lease_clients,
        fault_hold: a
            .fault_hold
            .unwrap_or((Duration::from_millis(500), Duration::from_millis(2500))),
        lease_ttl: a.lease_ttl.unwrap_or((2, 5)),
        access_users: a.access_users,
        lease_users: a.lease_users,
        bank_accounts: a.bank_accounts,
        bank_clients: a.bank_clients,
        sleepers: a.sleepers,
        corrupt_check_every: a.corrupt_check_every,
        ..torture::Config::new(a.duration, seed, faults)
    };
    let report = torture::run(&cfg).await?;
    print!("{}", report.summary());
    println!("history: {}", history.display());
    if process {
        println!("member logs: {}", history.with_extension("logs").display());
    }
    if !report.passed() {
        let what = if matches!(report.linearizable, Verdict::Unknown(_)) && report.watch.is_ok() {
            "no verdict (checker budget)"
        } else {
            "violation found"
        };
        bail!("{what} (reproduce with --seed {seed})");
    }
    Ok(())
}

/// Runs `cairn check`.
pub fn check(a: CheckArgs) -> anyhow::Result<()> {
    match a.what {
        CheckWhat::Linearizable { history, budget } => {
            let ops = cairn_check::history::parse(&std::fs::read_to_string(&history)?)?;
            match cairn_check::check(&ops, budget) {
                Verdict::Ok { keys, operations } => {
                    println!("linearizable: {operations} operations on {keys} keys");
                    Ok(())
                }
                Verdict::Violation(why) => {
                    println!("NOT linearizable\n{why}");
                    std::process::exit(1)
                }
                Verdict::Unknown(why) => {
                    println!("undecided: {why}");
                    std::process::exit(2)
                }
            }
        }
    }
}
