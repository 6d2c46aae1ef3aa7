//! The corruption check under faults: no false alarm.
//!
//! Every member under test runs the corruption check every
//! [`CHECK_EVERY`] (`--experimental-corrupt-check-time`; a scenario may
//! turn it off, `scenario.rs`): the first data
//! region's leader hashes the whole store at one revision, every region
//! caught up to it, and compares every member's hash over the same
//! compactions. Members that applied the same entries must hash alike
//! whatever splits, merges, compactions, snapshots, crashes and pauses
//! happened between them, so at the end of a run no member may carry the
//! `CORRUPT` alarm: one raised on a healthy cluster would have stopped
//! every write (and, for a real divergence, the other checkers say what
//! diverged). With in-process members the run also counts the peer hashes
//! compared, and one that compared none in ten check periods fails.

use std::time::Duration;

use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::AlarmRequest;

use crate::secured;

/// How often each member runs the check, unless told otherwise.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A run this many check periods long must have compared a hash.
const COMPARES_WITHIN: u32 = 10;

/// etcd's `AlarmType.CORRUPT`.
const CORRUPT: i32 = 2;

/// What the check did over a run.
#[derive(Debug, Default)]
pub struct Outcome {
    /// How often members ran the check (zero: never).
    pub every: Duration,
    /// Peer hashes compared over the whole run (in-process members).
    pub compared: Option<u64>,
    /// Peer hashes the member processes alive at the end compared since
    /// they last started (from their `/metrics`; plain clusters only).
    pub compared_lately: Option<u64>,
    /// Members carrying the `CORRUPT` alarm at the end.
    pub corrupt: Vec<u64>,
    /// Why the alarms could not be read, if no member answered.
    pub unread: Option<String>,
    /// How long the run lasted.
    pub ran: Duration,
}

impl Outcome {
    pub fn summary(&self) -> String {
        if self.every.is_zero() {
            return "corruption check: off".to_string();
        }
        let compared = match (self.compared, self.compared_lately) {
            (Some(n), _) => format!("{n} peer hashes compared"),
            (None, Some(n)) => {
                format!("{n} peer hashes compared by the members since they last started")
            }
            (None, None) => "counted by the members".to_string(),
        };
        format!(
            "corruption check: every member every {:?}, {compared}, {} found corrupt",
            self.every,
            self.corrupt.len()
        )
    }

    /// A violation when a member was found corrupt, or the alarms could
    /// not be read, or (in-process) a run of at least [`COMPARES_WITHIN`]
    /// check periods compared no hash at all: a check that never compares
    /// proves nothing.
    pub fn check(&self) -> Result<(), String> {
        if let Some(e) = &self.unread {
            return Err(format!("no member listed its alarms: {e}"));
        }
        let long = !self.every.is_zero() && self.ran >= self.every * COMPARES_WITHIN;
        if long && self.compared == Some(0) {
            return Err(format!(
                "the corruption check compared no hash in {:?} (every {:?})",
                self.ran, self.every
            ));
        }
        match &self.corrupt[..] {
            [] => Ok(()),
            members => Err(format!(
                "members {:x?} raised CORRUPT: their history differs from the cluster's",
                members
            )),
        }
    }
}

/// The alarms at the end of a run, from the first member in `endpoints`
/// that answers (every member applies them alike); `compared` as counted.
pub async fn outcome(
    endpoints: &[String],
    every: Duration,
    compared: Option<u64>,
    ran: Duration,
) -> Outcome {
    let compared_lately = match compared {
        None if !every.is_zero() => compared_by_members(endpoints).await,
        _ => None,
    };
    let mut unread = None;
    for addr in endpoints {
        let ep = secured::endpoint(addr)
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5));
        let answer = match secured::connect(ep).await {
            Ok(ch) => MaintenanceClient::new(ch)
                .alarm(AlarmRequest::default())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(r) => {
                let corrupt = r
                    .into_inner()
                    .alarms
                    .iter()
                    .filter(|a| a.alarm == CORRUPT)
                    .map(|a| a.member_id)
                    .collect();
                return Outcome {
                    every,
                    compared,
                    corrupt,
                    unread: None,
                    ran,
                    compared_lately,
                };
            }
            Err(e) => unread = Some(format!("{addr}: {e}")),
        }
    }
    Outcome {
        every,
        compared,
        corrupt: Vec::new(),
        unread,
        ran,
        compared_lately,
    }
}

/// Peer hashes the members at `endpoints` compared since they last
/// started, summed over those whose `/metrics` answered; `None` if none
/// did, or on a secured cluster.
pub async fn compared_by_members(endpoints: &[String]) -> Option<u64> {
    if secured::is_on() {
        // TLS on the client port: no plain HTTP to scrape.
        return None;
    }
    let mut total = None;
    for addr in endpoints {
        if let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(3), scrape(addr)).await {
            *total.get_or_insert(0) += n;
        }
    }
    total
}

/// `cairn_corruption_check_hashes_compared_total` from one member's
/// `/metrics` (HTTP/1.0 on its client port).
async fn scrape(addr: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let ask = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    conn.write_all(ask.as_bytes()).await.ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await.ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cairn_corruption_check_hashes_compared_total "))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()
        .map(|n| n as u64)
}

/// Peer hashes this process's members compared so far (in-process).
pub fn compared_here() -> u64 {
    cairn_raft::metrics::CORRUPTION_HASHES_COMPARED.get()
}
