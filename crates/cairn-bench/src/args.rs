//! The command line of `cairn bench`, modelled on etcd's `tools/benchmark`:
//! the same global flags (`--endpoints --conns --clients --target-leader
//! --consistency`) and the same workload names, so a reader who knows one
//! knows the other.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// `cairn bench [global flags] WORKLOAD [workload flags]`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub workload: Workload,
}

/// Flags every load workload shares.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Where and how to connect.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Number of gRPC connections (HTTP/2), shared round-robin by clients.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients (closed loop: one request in flight each).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Send every request to the leader (found with Maintenance.Status).
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Read consistency: l (linearizable) or s (serializable).
    #[arg(long, global = true, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Result format: a human table or one JSON object per run.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub output: Output,
    /// `key=value` labels copied into the JSON result (e.g. system=etcd).
    #[arg(long = "tag", global = true, value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Exit 0 even if requests failed (by default any error fails the run:
    /// a benchmark with errors measures the wrong thing).
    #[arg(long, global = true)]
    pub allow_errors: bool,
}

/// How to reach a cluster, as etcd's tools take it: endpoints, TLS files
/// and a user (shared by `cairn bench` and `cairn regions`).
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Comma-separated client endpoints (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// TLS: the CA bundle that signs the servers' certificates (etcd's
    /// `--cacert`). Given, or with `https://` endpoints, connections use TLS.
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// TLS: this client's certificate (etcd's `--cert`); under
    /// `--client-cert-auth` its common name is the user.
    #[arg(long, global = true, requires = "key_file")]
    pub cert: Option<PathBuf>,
    /// TLS: the private key of `--cert` (etcd's `--key`).
    #[arg(long = "key", id = "key_file", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// `name:password`: authenticate once and send the token with every
    /// request (etcd's `--user`).
    #[arg(long, global = true)]
    pub user: Option<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("tag {s:?} is not key=value"))
}

/// Read consistency of ranges.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable (read-index on the server).
    L,
    /// Serializable (served from the local replica).
    S,
}

/// How results are printed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Key and value shape shared by writing workloads.
#[derive(Args, Debug, Clone)]
pub struct KeyShape {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Keys are drawn from this many distinct keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use keys 0, 1, 2, … in order instead of random ones.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Number the keys from here (a load in several runs writes new keys
    /// in each).
    #[arg(long, default_value_t = 0)]
    pub key_start: u64,
    /// Make the first N bytes of each value random (the rest stays `v`), so
    /// compression cannot make the data vanish.
    #[arg(long, default_value_t = 0)]
    pub val_random_bytes: usize,
}

/// The workloads.
#[derive(Subcommand, Debug, Clone)]
pub enum Workload {
    /// Put keys (one Put per request).
    Put {
        /// Total number of requests.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        #[command(flatten)]
        shape: KeyShape,
        /// Maximum requests per second over all clients (0: unlimited).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Range over one key, or `[KEY, END)` (etcd's `benchmark range`).
    Range {
        /// The key (or the start of the range).
        key: String,
        /// The end of the range (exclusive); omit for a single key.
        end: Option<String>,
        /// Treat KEY as a prefix (range over every key starting with it).
        #[arg(long)]
        prefix: bool,
        /// Total number of requests.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// Maximum requests per second over all clients (0: unlimited).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Txn whose success branch puts `--txn-ops` keys.
    TxnPut {
        /// Total number of requests.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        #[command(flatten)]
        shape: KeyShape,
        /// Puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
        /// Put the i-th op's key under its own first byte (`a`, `b`, …):
        /// split the keyspace at `b`, `c`, … (`cairn regions split`) and
        /// every op of a transaction lies in its own region.
        #[arg(long)]
        spread: bool,
        /// Maximum requests per second over all clients (0: unlimited).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Txns that either range (read-only) or put, in `--rw-ratio` reads per write.
    TxnMixed {
        /// Total number of requests.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        #[command(flatten)]
        shape: KeyShape,
        /// Read transactions per write transaction.
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
        /// Maximum requests per second over all clients (0: unlimited).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Delay from sending a put to each watcher receiving its event.
    WatchLatency {
        /// Number of puts (writers: `--clients`, closed loop unless `--put-rate`).
        #[arg(long, default_value_t = 10_000)]
        put_total: u64,
        /// Puts per second over all writers (0: unlimited).
        #[arg(long, default_value_t = 0)]
        put_rate: u64,
        /// Watch streams (each on its own connection).
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Watchers per stream, all on the watched prefix.
        #[arg(long, default_value_t = 1)]
        watchers_per_stream: usize,
        /// Value size in bytes (at least 8: it carries the send time).
        #[arg(long, default_value_t = 32)]
        val_size: usize,
    },
    /// Lease keep-alive round trips, one lease and stream per client.
    LeaseKeepalive {
        /// Total number of keep-alives.
        #[arg(long, default_value_t = 10_000)]
        total: u64,
    },
    /// Latency of write + fdatasync on a directory's disk (the floor under
    /// any durable write), printed like a workload.
    Fsync {
        /// Directory to write a scratch file in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Number of write+fdatasync rounds.
        #[arg(long, default_value_t = 500)]
        total: u64,
    },
    /// A server's memory and disk footprint: RSS of PIDs and bytes under data dirs.
    Footprint {
        /// Server process IDs (RSS summed).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        /// Data directories (sizes summed).
        #[arg(long, value_delimiter = ',')]
        data_dirs: Vec<PathBuf>,
        /// Keys loaded, recorded with the figures.
        #[arg(long, default_value_t = 0)]
        keys: u64,
    },
    /// Turn a JSON-lines results file into docs/benchmarks.md tables and PNG charts.
    Report(crate::report::ReportArgs),
}
