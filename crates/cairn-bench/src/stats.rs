//! What a run measured: latencies in an HDR histogram (microseconds, three
//! significant digits, so p99.9 of a million samples costs a few kB), errors
//! counted by gRPC code, and the one result record every workload prints —
//! as a table for people or as one JSON line for `bench/compare.sh`.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One client's (or the merged) measurements.
pub struct Recorder {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// The first message seen per error code (what a reader needs to act).
    samples: BTreeMap<String, String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder (1 µs .. 10 min, 3 significant digits).
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Self {
            hist,
            errors: BTreeMap::new(),
            samples: BTreeMap::new(),
        }
    }

    /// Records one successful operation's latency.
    pub fn ok(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        self.hist.saturating_record(us);
    }

    /// Records one failed operation.
    pub fn error(&mut self, status: &tonic::Status) {
        let code = format!("{:?}", status.code());
        self.samples
            .entry(code.clone())
            .or_insert_with(|| status.message().to_string());
        *self.errors.entry(code).or_default() += 1;
    }

    /// Records one failure that has no gRPC status (e.g. a missing event).
    pub fn error_named(&mut self, name: &str) {
        *self.errors.entry(name.to_string()).or_default() += 1;
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: Recorder) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.samples {
            self.samples.entry(k).or_insert(v);
        }
    }

    /// Successful operations so far.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The result record of a run that took `elapsed`.
    pub fn result(&self, workload: &str, elapsed: Duration) -> RunResult {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let ok = self.hist.len();
        let secs = elapsed.as_secs_f64().max(1e-9);
        RunResult {
            workload: workload.to_string(),
            tags: BTreeMap::new(),
            params: BTreeMap::new(),
            ok,
            errors: self.errors.clone(),
            seconds: secs,
            ops_per_sec: ok as f64 / secs,
            latency_ms: Latency {
                mean: if ok == 0 {
                    0.0
                } else {
                    self.hist.mean() / 1000.0
                },
                p50: ms(0.50),
                p90: ms(0.90),
                p99: ms(0.99),
                p999: ms(0.999),
                max: self.hist.max() as f64 / 1000.0,
            },
            extra: if self.samples.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([("error_samples".to_string(), serde_json::json!(self.samples))])
            },
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One run's result: the JSON-lines record `bench/compare.sh` collects and
/// `cairn bench report` reads.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RunResult {
    /// Workload name (`put`, `range`, …).
    pub workload: String,
    /// Labels from `--tag` (system, nodes, round, …).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The workload's parameters (clients, conns, sizes, …).
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations by gRPC code name.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run.
    pub seconds: f64,
    /// `ok / seconds`.
    pub ops_per_sec: f64,
    /// Latency percentiles.
    #[serde(default)]
    pub latency_ms: Latency,
    /// Workload-specific figures (bytes, RSS, …).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl RunResult {
    /// Total failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Prints the result as a short human table.
    pub fn print_text(&self) {
        let params = serde_json::to_string(&self.params).unwrap_or_default();
        println!("{} {params}", self.workload);
        println!(
            "  ok {}  errors {}  {:.2} s  {:.0} ops/s",
            self.ok,
            self.error_count(),
            self.seconds,
            self.ops_per_sec
        );
        let l = &self.latency_ms;
        println!(
            "  latency ms: mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        );
        for (code, n) in &self.errors {
            println!("  error {code}: {n}");
        }
        for (k, v) in &self.extra {
            println!("  {k}: {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors_merge() {
        let mut a = Recorder::new();
        for ms in 1..=100 {
            a.ok(Duration::from_millis(ms));
        }
        let mut b = Recorder::new();
        b.error(&tonic::Status::unavailable("x"));
        b.error(&tonic::Status::unavailable("y"));
        b.error_named("missing-event");
        a.merge(b);
        let r = a.result("put", Duration::from_secs(2));
        assert_eq!(r.ok, 100);
        assert_eq!(r.error_count(), 3);
        assert_eq!(r.errors["Unavailable"], 2);
        assert!((r.ops_per_sec - 50.0).abs() < 1e-9);
        assert!(
            (r.latency_ms.p50 - 50.0).abs() < 0.1,
            "{}",
            r.latency_ms.p50
        );
        assert!(
            (r.latency_ms.p99 - 99.0).abs() < 0.1,
            "{}",
            r.latency_ms.p99
        );
        assert!((r.latency_ms.max - 100.0).abs() < 0.1);
        let line = serde_json::to_string(&r).unwrap();
        let back: RunResult = serde_json::from_str(&line).unwrap();
        assert_eq!(back.ok, 100);
    }
}
