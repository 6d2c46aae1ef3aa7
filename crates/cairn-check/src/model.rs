//! The sequential specification of one etcd key, as the checker needs it:
//! given the key's state and an operation with its observed result, which
//! states may follow (none: the result is impossible here).
//!
//! Revisions come from a timestamp oracle, so a write's revision is not
//! predictable — only that it exceeds every earlier write's to this key
//! (`floor`). A write whose answer was lost leaves its revision unknown
//! (`Rev::After(floor)`) until a later read observes it, which pins it.

use crate::history::{KeyValue, Operation, Request, Status};

/// A revision the model knows, or only bounds from below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rev {
    Known(i64),
    /// Some revision greater than this.
    After(i64),
}

impl Rev {
    /// Can this be `r`? If so, the pinned revision.
    fn matches(self, r: i64) -> Option<Rev> {
        match self {
            Rev::Known(k) if k == r => Some(Rev::Known(r)),
            Rev::After(x) if r > x => Some(Rev::Known(r)),
            _ => None,
        }
    }

    /// Can this differ from `r`?
    fn may_differ(self, r: i64) -> bool {
        match self {
            Rev::Known(k) => k != r,
            Rev::After(_) => true,
        }
    }
}

/// One key's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyState {
    /// The value, or `None` if the key does not exist.
    pub value: Option<String>,
    pub mod_rev: Rev,
    pub create_rev: Rev,
    pub version: i64,
    /// Every later write to this key gets a revision above this, and every
    /// later read's header revision is at least this.
    pub floor: i64,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            value: None,
            mod_rev: Rev::Known(0),
            create_rev: Rev::Known(0),
            version: 0,
            floor: 0,
        }
    }
}

impl KeyState {
    /// The state after putting `value` at revision `rev`.
    fn put(&self, value: &str, rev: Rev) -> KeyState {
        let floor = match rev {
            Rev::Known(r) => r,
            Rev::After(_) => self.floor,
        };
        KeyState {
            value: Some(value.to_string()),
            mod_rev: rev,
            create_rev: if self.value.is_some() {
                self.create_rev
            } else {
                rev
            },
            version: self.version + 1,
            floor,
        }
    }

    /// The state after deleting the key.
    fn deleted(&self, rev: Option<i64>) -> KeyState {
        KeyState {
            floor: rev.unwrap_or(self.floor),
            ..KeyState::default()
        }
    }

    /// The mod_revision a Txn compare sees (0 for an absent key).
    fn compare_rev(&self) -> Rev {
        if self.value.is_some() {
            self.mod_rev
        } else {
            Rev::Known(0)
        }
    }

    /// Does a read of `kv` fit this state? If so, the state with whatever
    /// the read pinned.
    fn read(&self, kv: &Option<KeyValue>) -> Option<KeyState> {
        match (kv, &self.value) {
            (None, None) => Some(self.clone()),
            (Some(kv), Some(v)) if *v == kv.value && kv.version == self.version => Some(KeyState {
                mod_rev: self.mod_rev.matches(kv.mod_revision)?,
                create_rev: self.create_rev.matches(kv.create_revision)?,
                ..self.clone()
            }),
            _ => None,
        }
    }

    /// A fresh write's revision must exceed the floor.
    fn write_rev_ok(&self, r: i64) -> bool {
        r > self.floor
    }

    /// A read's header revision may not be below the floor.
    fn read_rev_ok(&self, r: Option<i64>) -> bool {
        r.is_none_or(|r| r >= self.floor)
    }
}

/// The states that may follow `s` when `op` takes effect (for an unknown
/// write: as if it took effect; leaving it out is the checker's choice).
pub fn step(s: &KeyState, op: &Operation) -> Vec<KeyState> {
    let res = &op.result;
    let ok = res.status == Status::Ok;
    match &op.op {
        Request::Get { .. } => {
            if !ok || !s.read_rev_ok(res.revision) {
                return vec![];
            }
            s.read(&res.kv).into_iter().collect()
        }
        Request::Put { value, .. } => match (ok, res.revision) {
            (true, Some(r)) if s.write_rev_ok(r) => vec![s.put(value, Rev::Known(r))],
            (true, _) => vec![],
            (false, _) => vec![s.put(value, Rev::After(s.floor))],
        },
        Request::Delete { .. } => {
            if !ok {
                return if s.value.is_some() {
                    vec![s.deleted(None)]
                } else {
                    vec![s.clone()]
                };
            }
            match (res.deleted, res.revision, s.value.is_some()) {
                (Some(1), Some(r), true) if s.write_rev_ok(r) => vec![s.deleted(Some(r))],
                (Some(0), r, false) if s.read_rev_ok(r) => vec![s.clone()],
                _ => vec![],
            }
        }
        Request::Cas {
            expect_mod_revision: e,
            value,
            ..
        } => {
            let cur = s.compare_rev();
            if !ok {
                let mut out = Vec::new();
                // It may have succeeded (if the compare could hold)...
                if let Some(pinned) = cur.matches(*e) {
                    let mut t = s.clone();
                    if t.value.is_some() {
                        t.mod_rev = pinned;
                    }
                    out.push(t.put(value, Rev::After(s.floor)));
                }
                // ...or failed (changing nothing).
                if cur.may_differ(*e) {
                    out.push(s.clone());
                }
                return out;
            }
            match (res.succeeded, res.revision) {
                (Some(true), Some(r)) if s.write_rev_ok(r) => {
                    let Some(pinned) = cur.matches(*e) else {
                        return vec![];
                    };
                    let mut t = s.clone();
                    if t.value.is_some() {
                        t.mod_rev = pinned;
                    }
                    vec![t.put(value, Rev::Known(r))]
                }
                // A failed cas reports what it read (`kv`, null if absent).
                (Some(false), r) if s.read_rev_ok(r) => s
                    .read(&res.kv)
                    .into_iter()
                    .filter(|t| t.compare_rev().may_differ(*e))
                    .collect(),
                _ => vec![],
            }
        }
    }
}
