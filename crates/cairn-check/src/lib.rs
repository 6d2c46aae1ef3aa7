//! # cairn-check: histories and the checkers that judge them
//!
//! A robustness run records every client operation (invoke time, return
//! time, request, outcome) in the JSON-lines format of [`history`]; the
//! [`linearizable`] checker decides whether some sequential order of those
//! operations, consistent with real time, explains every result under the
//! etcd KV model of [`model`]. `cairn check linearizable FILE` runs it on
//! any history file. Histories of transactions over several keys are
//! judged by [`txns`] instead: it verifies the order their revisions claim
//! rather than searching for one.
//!
//! The checker is written here, not borrowed: it must understand etcd's
//! revisions (global, TSO-assigned, not dense) and operations whose outcome
//! is unknown (a timed-out write may or may not have happened).

pub mod history;
pub mod linearizable;
pub mod model;
pub mod txns;

pub use history::{KeyValue, Operation, Outcome, Request, Status};
pub use linearizable::{check, Verdict, DEFAULT_BUDGET};
