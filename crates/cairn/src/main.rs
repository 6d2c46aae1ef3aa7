//! `cairn`: one binary, several roles.
//!
//! - `cairn serve` runs one node of a real cluster, with etcd's flags.
//! - `cairn dev` runs an embedded 3-node cluster in one process (client
//!   ports 2379/22379/32379, data under `./cairn-data/`), so `etcdctl put foo
//!   bar` works right after one command.
//! - `cairn bench` load-tests any etcd-API endpoint (etcd or Cairn) and
//!   writes the side-by-side report (`crates/cairn-bench`).
//! - `cairn snapshot restore` makes a new member's data directory from a
//!   backup (`etcdctl snapshot save` of Cairn or of etcd).
//! - `cairn certs` makes a throwaway CA and certificates for TLS.
//! - `cairn regions` lists the data regions (range, epoch, leader, voters,
//!   size, write rate).
//! - `cairn torture` runs a recorded workload under faults and checks it;
//!   `cairn check linearizable` checks any recorded history.

mod certs;
mod dev;
mod regions;
mod serve;
mod snapshot;
mod tls_args;
mod torture;
mod urls;

use clap::{Parser, Subcommand};

/// mimalloc, not glibc's malloc: allocation led a Txn's profile across
/// regions (docs/benchmarks.md, session 26).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "An etcd-compatible, Raft-replicated key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
enum Cmd {
    /// Run one node of a cluster (etcd-style flags).
    Serve(serve::ServeArgs),
    /// Run an embedded 3-node development cluster in this process.
    Dev(dev::DevArgs),
    /// Load-test any etcd-API cluster (etcd's `benchmark`, plus a report).
    Bench(cairn_bench::BenchArgs),
    /// Snapshot files (`restore`).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// List the data regions: range, epoch, leader, voters, size, write rate.
    Regions(regions::RegionsArgs),
    /// Make a throwaway CA and certificates (for TLS on a test cluster).
    Certs(certs::CertsArgs),
    /// Robustness run: recorded workload under faults, then checked.
    Torture(torture::TortureArgs),
    /// Check a recorded history (`linearizable HISTORY.jsonl`).
    Check(torture::CheckArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,cairn=info,openraft=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = arm_failpoints();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Serve(a) => serve::run(a).await,
            Cmd::Dev(a) => dev::run(a).await,
            Cmd::Bench(a) => cairn_bench::run(a).await,
            Cmd::Torture(a) => torture::run(a).await,
            Cmd::Check(a) => torture::check(a),
            Cmd::Snapshot(c) => snapshot::run(c),
            Cmd::Certs(a) => certs::run(a),
            Cmd::Regions(a) => regions::run(a).await,
        }
    })
}

/// Test builds (`--features failpoints`): arms the crash points named in
/// `FAILPOINTS` (see `cairn_raft::failpoints`). A point's `panic` must kill
/// the node like a SIGKILL at that instant, not just the task it ran in, so
/// when points are armed every panic aborts the process.
#[cfg(feature = "failpoints")]
fn arm_failpoints() -> Option<fail::FailScenario<'static>> {
    let armed = std::env::var("FAILPOINTS").ok()?;
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
    tracing::warn!(%armed, "crash points armed");
    Some(fail::FailScenario::setup())
}
