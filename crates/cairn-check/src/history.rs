//! The history format: one JSON object per line, one line per operation.
//!
//! ```json
//! {"id":7,"client":2,"call":1200,"return":1900,
//!  "op":{"type":"cas","key":"k3","expect_mod_revision":41,"value":"c2-7"},
//!  "result":{"status":"ok","revision":57,"succeeded":true}}
//! ```
//!
//! - `call` / `return`: nanoseconds since the run started, as seen by the
//!   client (invoke before sending, return after the answer arrived);
//!   `return` is `null` when the client never got an answer.
//! - `op.type`: `put {key, value}`, `get {key}`, `delete {key}`,
//!   `cas {key, expect_mod_revision, value}` (a Txn: if the key's
//!   mod_revision equals `expect_mod_revision` — 0 for an absent key — put
//!   `value`, else read the key).
//! - `result.status`: `ok` (the answer), `fail` (the request certainly did
//!   not take effect, e.g. refused before sending), or `unknown` (it may or
//!   may not have: timeouts, lost connections). A failed or unknown read is
//!   ignored; an unknown write may take effect at any time after its call.
//! - `result.revision`: the response header's revision (for a write, the
//!   revision it created; for a no-op delete or failed cas, the store's
//!   current revision).
//! - `result.kv`: for `get`, and for `cas` when it failed: the key as read,
//!   or `null` if absent (`{value, mod_revision, create_revision, version}`).
//! - `result.deleted`: for `delete`, how many keys it deleted (0 or 1).
//! - `result.succeeded`: for `cas`.

use serde::{Deserialize, Serialize};

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Unique within the history.
    pub id: u64,
    /// Which client issued it (a client has one operation in flight).
    pub client: u64,
    /// Invoke time, ns since the run started.
    pub call: u64,
    /// Return time; `None` when no answer ever came.
    #[serde(rename = "return")]
    pub ret: Option<u64>,
    /// What was asked.
    pub op: Request,
    /// What came back.
    pub result: Outcome,
}

/// The request of an operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expect_mod_revision: i64,
        value: String,
    },
}

impl Request {
    /// The one key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Request::Put { key, .. }
            | Request::Get { key }
            | Request::Delete { key }
            | Request::Cas { key, .. } => key,
        }
    }

    /// True for operations that may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }
}

/// A key as read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    pub value: String,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Fail,
    Unknown,
}

/// The result of an operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KeyValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// Error text for `fail` / `unknown` (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// An outcome of `status` with nothing else.
    pub fn of(status: Status) -> Self {
        Outcome {
            status,
            revision: None,
            kv: None,
            deleted: None,
            succeeded: None,
            error: None,
        }
    }
}

/// Parses a JSON-lines history (blank lines allowed).
pub fn parse(text: &str) -> anyhow::Result<Vec<Operation>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let op: Operation =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
        if let Some(r) = op.ret {
            anyhow::ensure!(r >= op.call, "line {}: returns before its call", n + 1);
        }
        out.push(op);
    }
    Ok(out)
}

/// Serializes one operation as a history line.
pub fn line(op: &Operation) -> String {
    serde_json::to_string(op).expect("operations serialize")
}
