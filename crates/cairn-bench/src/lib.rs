//! `cairn bench`: a load generator that speaks the etcd v3 API, so the same
//! tool drives etcd and Cairn and their numbers can be set side by side.
//!
//! It is modelled on etcd's own `tools/benchmark` (same global flags, same
//! workload names), with latencies in HDR histograms and errors counted by
//! gRPC code. Each run prints one result — a table, or one JSON line with
//! `--output json` that `bench/compare.sh` collects and `cairn bench report`
//! turns into `docs/benchmarks.md` (tables, Cairn/etcd ratios, targets,
//! PNG charts).
//!
//! Map: [`args`] the command line; [`driver`] the closed-loop client pool;
//! [`stats`] histograms and the result record; [`kv`], [`watch`], [`lease`]
//! the workloads; [`host`] fsync latency and server footprint; [`report`]
//! the comparison report.
//!
//! A run with any failed request exits non-zero (unless `--allow-errors`):
//! a benchmark that errored measured something else.

pub mod args;
pub mod conn;
pub mod driver;
pub mod host;
pub mod keys;
pub mod kv;
pub mod lease;
pub mod report;
pub mod stats;
pub mod watch;

use anyhow::bail;
use serde_json::json;

pub use args::BenchArgs;
use args::{Output, Workload};
use stats::RunResult;

/// Runs one `cairn bench` invocation.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let g = &a.global;
    let result = match &a.workload {
        Workload::Report(r) => return report::run(r),
        Workload::Fsync { dir, total } => host::fsync(dir, *total)?,
        Workload::Footprint {
            pids,
            data_dirs,
            keys,
        } => host::footprint(pids, data_dirs, *keys)?,
        w => {
            let chans = conn::channels(g).await?;
            kv::wait_ready(&chans).await?;
            let mut r = match w {
                Workload::Put { total, shape, rate } => {
                    kv::put(g, &chans, *total, shape, *rate).await
                }
                Workload::Range {
                    key,
                    end,
                    prefix,
                    total,
                    rate,
                } => kv::range(g, &chans, key, end.as_deref(), *prefix, *total, *rate).await,
                Workload::TxnPut {
                    total,
                    shape,
                    txn_ops,
                    spread,
                    rate,
                } => kv::txn_put(g, &chans, *total, shape, *txn_ops, *spread, *rate).await,
                Workload::TxnMixed {
                    total,
                    shape,
                    rw_ratio,
                    rate,
                } => kv::txn_mixed(g, &chans, *total, shape, *rw_ratio, *rate).await,
                Workload::WatchLatency {
                    put_total,
                    put_rate,
                    streams,
                    watchers_per_stream,
                    val_size,
                } => {
                    watch::latency(
                        g,
                        &chans,
                        *put_total,
                        *put_rate,
                        *streams,
                        *watchers_per_stream,
                        *val_size,
                    )
                    .await?
                }
                Workload::LeaseKeepalive { total } => lease::keepalive(g, &chans, *total).await?,
                Workload::Report(_) | Workload::Fsync { .. } | Workload::Footprint { .. } => {
                    unreachable!("handled above")
                }
            };
            r.params.insert("clients".into(), json!(g.clients));
            r.params.insert("conns".into(), json!(g.conns));
            r.params.insert(
                "consistency".into(),
                json!(format!("{:?}", g.consistency).to_lowercase()),
            );
            r.params
                .insert("target_leader".into(), json!(g.target_leader));
            r
        }
    };
    emit(g, result)
}

fn emit(g: &args::Global, mut r: RunResult) -> anyhow::Result<()> {
    r.tags.extend(g.tags.iter().cloned());
    match g.output {
        Output::Json => println!("{}", serde_json::to_string(&r)?),
        Output::Text => r.print_text(),
    }
    if r.error_count() > 0 && !g.allow_errors {
        bail!(
            "{} request(s) failed: {:?} (pass --allow-errors to accept)",
            r.error_count(),
            r.errors
        );
    }
    Ok(())
}
