//! The nemesis: faults injected into the cluster under test, one at a
//! time, each held for a random 0.5–2.5 s by default (a scenario may hold
//! longer; an armed crash point 3–6 s, so the restarted node gets there)
//! and then healed, with random 0.5–1.5 s
//! quiet gaps — all drawn from the run's seed.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_api::cairnpb::regions_client::RegionsClient;
use cairn_api::cairnpb::{RegionListRequest, RegionMergeRequest, RegionSplitRequest};
use cairn_raft::failpoints;
use cairn_store::DATA_REGION;

use crate::{InProcessCluster, ProcessCluster};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut a random node off from the others (in-process).
    Partition,
    /// Cut the data region's leader off (in-process).
    PartitionLeader,
    /// Drop 30% of all peer messages (in-process).
    Drop,
    /// Delay every peer message by a random 0..=D ms, D in 20..400 (in-process).
    Delay,
    /// Crash a random node and restart it (SIGKILL for processes).
    Crash,
    /// Crash the leader and restart it.
    CrashLeader,
    /// Crash the leader of a random sleeper's region (see `sleepers`) and
    /// restart it: a hibernating region must elect another leader.
    CrashSleeperLeader,
    /// Move the data region's leadership to another member (MoveLeader,
    /// in-process) while the workload runs.
    MoveLeader,
    /// Crash every node at once, then restart them all (processes).
    CrashAll,
    /// SIGSTOP a random node, later SIGCONT (processes).
    Pause,
    /// Split the region holding a random bank account (or another
    /// workload's key, see [`split_points`]) there: the bank's transfers
    /// and reads cross more regions. Through the Regions API on processes.
    Split,
    /// Merge the region holding a random split point (see [`split_points`])
    /// into its left neighbour: with `Split`, regions come and go under
    /// the workload. Through the Regions API on processes.
    Merge,
    /// Start a bank transfer across regions and abandon it as if its
    /// coordinator died, after its prewrite or after its primary commit
    /// (in-process): whoever meets its locks must finish it.
    AbandonTxn,
    /// Restart a random node with a crash point armed (one of
    /// `cairn_raft::failpoints::ALL`, or the one named): it dies when it
    /// reaches the point the k-th time; healing restarts it unarmed
    /// (processes of a `--features failpoints` build).
    Failpoint(Option<&'static str>),
}

impl Fault {
    /// Parses a comma-separated list (`all` = every fault the cluster kind supports).
    pub fn parse_list(s: &str, process: bool) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            match name {
                "all" if process => {
                    out.extend([
                        Fault::Crash,
                        Fault::CrashLeader,
                        Fault::CrashAll,
                        Fault::Pause,
                    ]);
                    if failpoints::COMPILED {
                        out.push(Fault::Failpoint(None));
                    }
                }
                "all" => out.extend([
                    Fault::Partition,
                    Fault::PartitionLeader,
                    Fault::Drop,
                    Fault::Delay,
                    Fault::Crash,
                    Fault::CrashLeader,
                    Fault::MoveLeader,
                ]),
                "none" => {}
                "partition" => out.push(Fault::Partition),
                "partition-leader" => out.push(Fault::PartitionLeader),
                "drop" => out.push(Fault::Drop),
                "delay" => out.push(Fault::Delay),
                "crash" | "kill" => out.push(Fault::Crash),
                "crash-leader" | "kill-leader" => out.push(Fault::CrashLeader),
                "crash-sleeper-leader" => out.push(Fault::CrashSleeperLeader),
                "crash-all" | "kill-all" => out.push(Fault::CrashAll),
                "pause" => out.push(Fault::Pause),
                "move-leader" => out.push(Fault::MoveLeader),
                "split" => out.push(Fault::Split),
                "merge" => out.push(Fault::Merge),
                "abandon-txn" => out.push(Fault::AbandonTxn),
                "failpoint" => out.push(Fault::Failpoint(None)),
                other if other.starts_with("failpoint:") => {
                    let name = &other["failpoint:".len()..];
                    let Some(known) = failpoints::ALL.iter().find(|n| **n == name) else {
                        return Err(format!(
                            "unknown crash point {name:?}; known: {}",
                            failpoints::ALL.join(", ")
                        ));
                    };
                    out.push(Fault::Failpoint(Some(known)));
                }
                other => return Err(format!("unknown nemesis {other:?}")),
            }
        }
        for f in &out {
            let ok = match f {
                Fault::Partition
                | Fault::PartitionLeader
                | Fault::Drop
                | Fault::Delay
                | Fault::MoveLeader
                | Fault::AbandonTxn => !process,
                Fault::CrashAll | Fault::Pause => process,
                Fault::Crash
                | Fault::CrashLeader
                | Fault::CrashSleeperLeader
                | Fault::Split
                | Fault::Merge => true,
                Fault::Failpoint(_) => {
                    if !failpoints::COMPILED {
                        return Err(
                            "nemesis failpoint needs a build with `--features failpoints`".into(),
                        );
                    }
                    process
                }
            };
            if !ok {
                return Err(format!(
                    "nemesis {f:?} needs {} cluster",
                    if process {
                        "an in-process"
                    } else {
                        "a process"
                    }
                ));
            }
        }
        Ok(out)
    }
}

/// The cluster under test.
pub enum Target {
    InProcess(InProcessCluster),
    Process(ProcessCluster),
}

/// Nodes under test also snapshot and purge their log after this many
/// bytes of log (the server's default is 64 MiB, which a short run never
/// writes), so byte-triggered purges happen under faults too.
const LOG_BYTES: u64 = 64 << 10;

impl Target {
    /// `n` in-process nodes snapshotting every `snapshot_count` entries (or
    /// [`LOG_BYTES`] of log), running the corruption check every
    /// `check_every` (zero: never).
    pub async fn in_process(n: usize, snapshot_count: u64, check_every: Duration) -> Self {
        let c = InProcessCluster::start_checking(n, snapshot_count, LOG_BYTES, check_every).await;
        c.wait_leader(DATA_REGION).await;
        Target::InProcess(c)
    }

    /// `n` `cairn serve` processes from `bin`, once they serve.
    pub async fn process(bin: &Path, n: usize, snapshot_count: u64, check_every: Duration) -> Self {
        let args = [
            "--snapshot-count".to_string(),
            snapshot_count.to_string(),
            "--snapshot-log-bytes".to_string(),
            LOG_BYTES.to_string(),
            // Leases of the lease workload (2-5 s) get checkpointed.
            "--lease-checkpoint-interval".to_string(),
            "1s".to_string(),
            "--experimental-corrupt-check-time".to_string(),
            format!("{}ms", check_every.as_millis()),
        ];
        let c = ProcessCluster::start_with(bin, n, &args);
        let t = Target::Process(c);
        let deadline = Instant::now() + Duration::from_secs(20);
        while t.leader().await.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t
    }

    /// Client endpoints, one per node.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Target::InProcess(c) => c.nodes.iter().map(|t| t.client_addr.clone()).collect(),
            Target::Process(c) => c.endpoints(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Target::InProcess(c) => c.nodes.len(),
            Target::Process(c) => c.len(),
        }
    }

    /// The index of the data region's leader, if one is known.
    pub async fn leader(&self) -> Option<usize> {
        match self {
            Target::InProcess(c) => {
                let id = (0..c.nodes.len())
                    .filter(|&i| c.is_running(i))
                    .find_map(|i| {
                        c.node(i)
                            .region(DATA_REGION)
                            .ok()?
                            .raft
                            .metrics()
                            .borrow()
                            .current_leader
                    })?;
                c.nodes.iter().position(|t| t.id == id)
            }
            Target::Process(c) => c.leader(&[]).await,
        }
    }

    /// The node leading the region of `key`, as node `asked` lists the
    /// regions.
    async fn leader_of(&self, key: &str, asked: usize) -> Option<usize> {
        match self {
            Target::InProcess(c) => {
                let asked = nth_running(c, asked);
                let id = c
                    .node(asked)
                    .route(key.as_bytes())
                    .ok()?
                    .raft
                    .metrics()
                    .borrow()
                    .current_leader?;
                let i = c.nodes.iter().position(|t| t.id == id)?;
                c.is_running(i).then_some(i)
            }
            Target::Process(c) => {
                let mut client = RegionsClient::new(crate::secured::channel(&c.client_addr(asked)));
                let list = client.list(RegionListRequest {});
                let regions = tokio::time::timeout(Duration::from_secs(5), list)
                    .await
                    .ok()?
                    .ok()?
                    .into_inner()
                    .regions;
                let leader = regions
                    .iter()
                    .find(|r| {
                        r.start.as_slice() <= key.as_bytes()
                            && (r.end.is_empty() || key.as_bytes() < r.end.as_slice())
                    })?
                    .leader;
                c.member_index(leader).await
            }
        }
    }

    async fn crash(&mut self, i: usize) {
        match self {
            Target::InProcess(c) => c.stop(i).await,
            Target::Process(c) => c.kill(i),
        }
    }

    async fn recover(&mut self, i: usize) -> Option<String> {
        match self {
            Target::InProcess(c) => {
                if c.is_running(i) {
                    return None;
                }
                // A slow restart is said (late in long runs they have
                // taken tens of seconds).
                let started = Instant::now();
                c.restart(i).await;
                let took = started.elapsed();
                (took > SLOW_RESTART).then(|| format!("{NOTE}node {i} took {took:.1?} to restart"))
            }
            Target::Process(c) => {
                c.reap_exited(i);
                if c.pid(i).is_none() {
                    c.restart(i);
                    // Serving before the next fault: one member down at a
                    // time means one (a run once took a second member down
                    // while the first still replayed its journal for 20 s,
                    // and the sleepers' checker blamed hibernation). A slow
                    // restart is said.
                    let started = Instant::now();
                    let serving = c.wait_serving(i, Duration::from_secs(60)).await;
                    let took = started.elapsed();
                    if !serving || took > SLOW_RESTART {
                        let what = if serving {
                            "serving"
                        } else {
                            "still not serving"
                        };
                        return Some(format!(
                            "{NOTE}node {i} {what} {took:.1?} after its restart"
                        ));
                    }
                }
                None
            }
        }
    }

    /// Splits the region holding `at` there, through node `node` (in
    /// process: the node's own call; processes: the Regions API); says
    /// what happened.
    async fn split(&self, at: &str, node: usize) -> String {
        let how = match self {
            Target::InProcess(c) => {
                let node = nth_running(c, node);
                match c.node(node).route(at.as_bytes()) {
                    Ok(r) if r.shared.range().start == at.as_bytes() => "already a boundary".into(),
                    Ok(r) => {
                        let split = c.node(node).split_region(r.id, at.as_bytes().to_vec());
                        match tokio::time::timeout(Duration::from_secs(5), split).await {
                            Ok(Ok(child)) => format!("region {child} born"),
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "timed out".into(),
                        }
                    }
                    Err(e) => e.to_string(),
                }
            }
            Target::Process(c) => {
                let mut client = RegionsClient::new(crate::secured::channel(&c.client_addr(node)));
                let split = client.split(RegionSplitRequest {
                    key: at.as_bytes().to_vec(),
                });
                match tokio::time::timeout(Duration::from_secs(5), split).await {
                    Ok(Ok(r)) if r.get_ref().child == 0 => "already a boundary".into(),
                    Ok(Ok(r)) => format!("region {} born", r.get_ref().child),
                    Ok(Err(e)) => e.message().to_string(),
                    Err(_) => "timed out".into(),
                }
            }
        };
        format!("split at {at} (node {node}): {how}")
    }

    /// The first keys of the data regions past the first, as node `node`
    /// lists them (empty if it cannot).
    async fn region_starts(&self, node: usize) -> Vec<String> {
        let starts: Vec<Vec<u8>> = match self {
            Target::InProcess(c) => {
                let node = nth_running(c, node);
                crate::region_ranges(c.node(node))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            }
            Target::Process(c) => {
                let mut client = RegionsClient::new(crate::secured::channel(&c.client_addr(node)));
                let list = client.list(RegionListRequest {});
                match tokio::time::timeout(Duration::from_secs(5), list).await {
                    Ok(Ok(r)) => r
                        .into_inner()
                        .regions
                        .into_iter()
                        .map(|r| r.start)
                        .collect(),
                    _ => Vec::new(),
                }
            }
        };
        starts
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .collect()
    }

    /// Merges the region holding `at` into its left neighbour, through
    /// node `node` (as [`Target::split`]); says what happened.
    async fn merge(&self, at: &str, node: usize) -> String {
        let how = match self {
            Target::InProcess(c) => {
                let node = nth_running(c, node);
                let n = c.node(node);
                let start = n.route(at.as_bytes()).map(|r| r.shared.range().start);
                let target = start.as_ref().ok().and_then(|start| {
                    n.regions_overlapping(b"", None)
                        .into_iter()
                        .find(|(_, _, end)| !start.is_empty() && end == start)
                        .map(|(r, _, _)| r.id)
                });
                match (start, target) {
                    (Err(e), _) => e.to_string(),
                    (Ok(_), None) => "in the first region".into(),
                    (Ok(_), Some(t)) => {
                        match tokio::time::timeout(Duration::from_secs(10), n.merge_regions(t))
                            .await
                        {
                            Ok(Ok(source)) => format!("region {source} merged into {t}"),
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "timed out".into(),
                        }
                    }
                }
            }
            Target::Process(c) => {
                let mut client = RegionsClient::new(crate::secured::channel(&c.client_addr(node)));
                let merge = client.merge(RegionMergeRequest {
                    key: at.as_bytes().to_vec(),
                });
                match tokio::time::timeout(Duration::from_secs(10), merge).await {
                    Ok(Ok(r)) if r.get_ref().source == 0 => "in the first region".into(),
                    Ok(Ok(r)) => format!(
                        "region {} merged into {}",
                        r.get_ref().source,
                        r.get_ref().target
                    ),
                    Ok(Err(e)) => e.message().to_string(),
                    Err(_) => "timed out".into(),
                }
            }
        };
        format!("merge the region of {at} (node {node}): {how}")
    }

    /// Applies `f`; returns a description and the nodes it affected.
    /// `accounts`: the bank's accounts (what `AbandonTxn` aims at, and
    /// `Split` among others: see [`split_points`]).
    async fn inject(
        &mut self,
        f: Fault,
        rng: &mut fastrand::Rng,
        accounts: usize,
    ) -> (String, Vec<usize>) {
        let n = self.len();
        let random = rng.usize(0..n);
        let leader = self.leader().await.unwrap_or(random);
        match (f, &mut *self) {
            (Fault::Partition, Target::InProcess(c)) => {
                c.isolate(random);
                (format!("partition node {random}"), vec![])
            }
            (Fault::PartitionLeader, Target::InProcess(c)) => {
                c.isolate(leader);
                (format!("partition leader (node {leader})"), vec![])
            }
            (Fault::Drop, Target::InProcess(c)) => {
                c.drop_messages(30);
                ("drop 30% of peer messages".into(), vec![])
            }
            (Fault::Delay, Target::InProcess(c)) => {
                let max = rng.u32(20..400);
                c.delay_messages(max);
                (format!("delay peer messages by 0..{max} ms"), vec![])
            }
            (Fault::MoveLeader, Target::InProcess(_)) if n < 2 => {
                ("move leader: a single node".into(), vec![])
            }
            (Fault::MoveLeader, Target::InProcess(c)) => {
                let to = (leader + 1 + rng.usize(0..n - 1)) % n;
                let answer = c.node(leader).move_leader(c.nodes[to].id).await;
                let how = match answer {
                    Ok(()) => "done".to_string(),
                    Err(e) => e.to_string(),
                };
                (
                    format!("move leader (node {leader} to node {to}): {how}"),
                    vec![],
                )
            }
            (Fault::AbandonTxn, Target::InProcess(_)) if accounts < 2 => {
                (format!("{f:?}: no bank accounts (skipped)"), vec![])
            }
            (Fault::Split, _) => {
                let points = split_points(accounts);
                let at = points[rng.usize(0..points.len())].clone();
                (self.split(&at, random).await, vec![])
            }
            (Fault::Merge, _) => {
                // A region that exists (past the first), else a split point.
                let mut starts = self.region_starts(random).await;
                if starts.is_empty() {
                    starts = split_points(accounts);
                }
                let at = starts[rng.usize(0..starts.len())].clone();
                (self.merge(&at, random).await, vec![])
            }
            (Fault::AbandonTxn, Target::InProcess(c)) => {
                let node = (0..n)
                    .filter(|&i| c.is_running(i))
                    .nth(rng.usize(0..n))
                    .unwrap_or(0);
                let (a, b) = (rng.usize(0..accounts), rng.usize(0..accounts));
                let (from, to) = (
                    super::bank::account(a),
                    super::bank::account(b.max(a + 1) % accounts),
                );
                let mut kv = crate::kv::connect(&c.nodes[node].client_addr).await;
                let balances = (
                    super::bank::balance(&mut kv, &from).await,
                    super::bank::balance(&mut kv, &to).await,
                );
                let req = match balances {
                    (Some(fv), Some(tv)) => super::bank::transfer(&from, &fv, &to, &tv, 7),
                    _ => None,
                };
                let stage = if rng.bool() {
                    cairn_store::CoordinatorCrash::AfterPrewrite
                } else {
                    cairn_store::CoordinatorCrash::AfterPrimaryCommit
                };
                let how = match req {
                    None => "balances unreadable".to_string(),
                    Some(req) => {
                        let run = c.node(node).txn_across_then_crash(&req, stage);
                        match tokio::time::timeout(Duration::from_secs(10), run).await {
                            Ok(Ok(None)) => format!("abandoned {stage:?}"),
                            Ok(Ok(Some(_))) => "compares failed: nothing to abandon".into(),
                            Ok(Err(cairn_store::Error::EpochMismatch)) => {
                                "both accounts in one region".into()
                            }
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "timed out".into(),
                        }
                    }
                };
                (
                    format!("abandon a transfer {from} -> {to} (node {node}): {how}"),
                    vec![],
                )
            }
            (Fault::Crash, _) => {
                self.crash(random).await;
                (format!("crash node {random}"), vec![random])
            }
            (Fault::CrashLeader, _) => {
                self.crash(leader).await;
                (format!("crash leader (node {leader})"), vec![leader])
            }
            (Fault::CrashSleeperLeader, _) => {
                let key = super::sleepers::key(rng.usize(0..super::sleepers::KEYS_AT_MOST));
                match self.leader_of(&key, random).await {
                    Some(i) => {
                        self.crash(i).await;
                        (
                            format!("crash the leader of {key}'s region (node {i})"),
                            vec![i],
                        )
                    }
                    None => (format!("{key}'s region has no leader to crash"), vec![]),
                }
            }
            (Fault::CrashAll, _) => {
                for i in 0..n {
                    self.crash(i).await;
                }
                ("crash all nodes".into(), (0..n).collect())
            }
            (Fault::Pause, Target::Process(c)) => {
                c.signal(random, "STOP");
                (format!("pause node {random}"), vec![random])
            }
            (Fault::Failpoint(point), Target::Process(c)) => {
                let name =
                    point.unwrap_or_else(|| failpoints::ALL[rng.usize(0..failpoints::ALL.len())]);
                // Frequent points die after some passes; rare ones (a
                // compaction, a snapshot) at the first.
                let passes = match name {
                    failpoints::BEFORE_LOG_FSYNC
                    | failpoints::AFTER_LOG_FSYNC
                    | failpoints::BEFORE_APPLY
                    | failpoints::AFTER_APPLY => rng.u32(0..50),
                    failpoints::TXN_AFTER_PREWRITE | failpoints::TXN_AFTER_PRIMARY_COMMIT => {
                        rng.u32(0..10)
                    }
                    _ => 0,
                };
                let armed = format!("{name}={passes}*off->panic");
                c.kill(random);
                c.restart_with_env(random, &[("FAILPOINTS", &armed)]);
                (format!("node {random} armed {armed}"), vec![random])
            }
            (f, _) => (format!("{f:?} not supported here (skipped)"), vec![]),
        }
    }

    /// Undoes `f`; returns what healing found (a node that died at its
    /// armed crash point).
    async fn heal(&mut self, f: Fault, nodes: &[usize]) -> Option<String> {
        match (f, &mut *self) {
            (
                Fault::Partition | Fault::PartitionLeader | Fault::Drop | Fault::Delay,
                Target::InProcess(c),
            ) => c.heal(),
            (Fault::Pause, Target::Process(c)) => {
                for &i in nodes {
                    c.signal(i, "CONT");
                }
            }
            (Fault::Failpoint(_), Target::Process(c)) => {
                // Dead at the point, or never reached it: restart unarmed,
                // and serving before the next fault, as `recover` waits
                // (one member down at a time: without the wait, the next
                // crash point often took a second member down while the
                // first still restarted, and a 3-member cluster sat
                // without a quorum for tens of seconds — a lease was seen
                // expiring 47.7 s past due).
                let mut died = Vec::new();
                for &i in nodes {
                    if c.reap_exited(i) {
                        died.push(i);
                    }
                    c.kill(i);
                }
                let mut notes = Vec::new();
                if !died.is_empty() {
                    notes.push(format!(
                        "{NOTE}node(s) {died:?} died at the crash point, restarted"
                    ));
                }
                for &i in nodes {
                    notes.extend(self.recover(i).await);
                }
                return (!notes.is_empty()).then(|| notes.join("; "));
            }
            _ => {
                let mut notes = Vec::new();
                for &i in nodes {
                    notes.extend(self.recover(i).await);
                }
                if !notes.is_empty() {
                    return Some(notes.join("; "));
                }
            }
        }
        None
    }

    /// Stops everything.
    /// Stops the cluster; a process cluster's member logs are first copied
    /// into `logs_to`, if given.
    pub async fn shutdown(self, logs_to: Option<&Path>) {
        match self {
            Target::InProcess(c) => c.shutdown().await,
            Target::Process(mut c) => {
                if let Some(to) = logs_to {
                    if let Err(e) = c.copy_logs(to) {
                        eprintln!("could not keep the member logs in {}: {e}", to.display());
                    }
                }
                for i in 0..c.len() {
                    c.signal(i, "CONT");
                    c.kill(i);
                }
            }
        }
    }
}

/// A restart slower than this is noted in the fault log.
const SLOW_RESTART: Duration = Duration::from_secs(5);

/// Log lines that note what a fault did rather than inject one start so.
pub const NOTE: &str = "-> ";

/// Injects faults from `faults` until `deadline`; leaves the cluster healed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    target: &mut Target,
    faults: &[Fault],
    seed: u64,
    epoch: Instant,
    deadline: Instant,
    hold: (Duration, Duration),
    accounts: usize,
    sleepers: usize,
    splits_first: &[String],
) -> Vec<(u64, String)> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut log = Vec::new();
    let ms = |rng: &mut fastrand::Rng, lo: u64, hi: u64| Duration::from_millis(rng.u64(lo..hi));
    // Let the workload warm up first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if faults.contains(&Fault::Split) && accounts > 2 {
        // Transfers cross regions from the start: the bank splits at every
        // other account (the nemesis then splits further).
        for a in (2..accounts).step_by(2) {
            let what = target
                .split(&super::bank::account(a), rng.usize(0..target.len()))
                .await;
            log.push((epoch.elapsed().as_millis() as u64, what));
        }
    }
    // Where other workloads want regions from the start (tried a few
    // times: the run is for nothing there without them).
    for at in splits_first {
        for _ in 0..5 {
            let what = target.split(at, rng.usize(0..target.len())).await;
            let born = what.contains("born");
            log.push((epoch.elapsed().as_millis() as u64, what));
            if born {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Each sleeper's key in a region of its own.
    for i in 0..sleepers {
        let what = target
            .split(&super::sleepers::key(i), rng.usize(0..target.len()))
            .await;
        log.push((epoch.elapsed().as_millis() as u64, what));
    }
    if sleepers > 0 {
        // Let the new regions fall asleep first.
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    while !faults.is_empty() && Instant::now() + Duration::from_secs(1) < deadline {
        let f = faults[rng.usize(0..faults.len())];
        let (what, nodes) = target.inject(f, &mut rng, accounts).await;
        log.push((epoch.elapsed().as_millis() as u64, what));
        // An armed node first restarts and catches up: give it longer.
        let hold = match f {
            Fault::Failpoint(_) => ms(&mut rng, 3000, 6000),
            _ => ms(
                &mut rng,
                hold.0.as_millis() as u64,
                hold.1.as_millis() as u64,
            ),
        };
        let hold = hold.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(hold).await;
        if let Some(note) = target.heal(f, &nodes).await {
            log.push((epoch.elapsed().as_millis() as u64, note));
        }
        tokio::time::sleep(ms(&mut rng, 500, 1500)).await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(left).await;
    log
}

/// The `n`-th running node of `c` (the first node if fewer run).
fn nth_running(c: &InProcessCluster, n: usize) -> usize {
    (0..c.nodes.len())
        .filter(|&i| c.is_running(i))
        .nth(n)
        .unwrap_or(0)
}

/// Where the `split` nemesis splits: inside every workload's keys — the
/// plain keys (`key0`..), the locks' (`lk0`, `lk1`, and among the
/// contenders of `lk0`, `lk0/<lease hex>`), the leases' (`lz/<lease
/// hex>/…`: leases whose keys then lie in several regions), the
/// lease-access lanes' (`zt/<lane>/…`: a lane's keys and the user's apart),
/// and the bank's accounts — so a run ends with keys, locks, leases and accounts spread
/// over many regions.
pub fn split_points(accounts: usize) -> Vec<String> {
    let mut out: Vec<String> = [
        "key2", "key5", "lk1", "lk0/4", "lz/", "lz/3", "lz/5", "lz/7", "zt/0/r/", "zt/1/",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    out.extend((1..accounts).map(super::bank::account));
    out
}
