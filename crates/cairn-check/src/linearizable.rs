//! The linearizability checker.
//!
//! Every operation touches one key, so by locality (Herlihy & Wing: a
//! history is linearizable iff each object's sub-history is) each key is
//! checked alone — a search over orders of a few hundred operations instead
//! of all of them. The search is Wing & Gong's, with Lowe's memo of visited
//! (linearized set, state) pairs: repeatedly pick an operation that was
//! invoked before every unlinearized operation returned, apply it to the
//! model ([`crate::model::step`]), and backtrack on contradiction. Writes
//! with unknown outcome never return, so they may be placed anywhere after
//! their call — or at the very end, where they affect nothing (= did not
//! happen).
//!
//! The revision is global, which per-key checks cannot see, so a second,
//! cheap pass checks it across keys: revisions of writes are unique, and
//! no operation carries a revision below that of a write that completed
//! before it was invoked (a stale read or a write "in the past").
//!
//! On failure the report names the key and the smallest window the search
//! could not get past: the operations linearized last on the deepest path,
//! and the candidates none of which fitted there.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Operation, Request, Status};
use crate::model::{step, KeyState};

/// Outcome of a check.
#[derive(Debug)]
pub enum Verdict {
    /// Linearizable.
    Ok { keys: usize, operations: usize },
    /// A violation, explained.
    Violation(String),
    /// The search gave up (budget) without a verdict.
    Unknown(String),
}

/// Search steps allowed per key before giving up.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks a whole history.
pub fn check(history: &[Operation], budget: u64) -> Verdict {
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| match o.result.status {
            Status::Ok => true,
            // A write that may have happened stays; a certain failure and an
            // unanswered read tell nothing.
            Status::Unknown => o.op.is_write(),
            Status::Fail => false,
        })
        .collect();
    if let Some(v) = check_revisions(&ops) {
        return Verdict::Violation(v);
    }
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for o in &ops {
        by_key.entry(o.op.key()).or_default().push(o);
    }
    for (key, key_ops) in &by_key {
        match check_key(key_ops, budget) {
            KeyVerdict::Ok => {}
            KeyVerdict::Violation(w) => return Verdict::Violation(format!("key {key:?}: {w}")),
            KeyVerdict::Budget => {
                return Verdict::Unknown(format!(
                    "key {key:?}: search budget of {budget} steps exhausted ({} operations)",
                    key_ops.len()
                ))
            }
        }
    }
    Verdict::Ok {
        keys: by_key.len(),
        operations: ops.len(),
    }
}

fn show(o: &Operation) -> String {
    let ret = o.ret.map_or("never".to_string(), |r| r.to_string());
    format!(
        "  #{} client {} [{} .. {}] {} -> {}",
        o.id,
        o.client,
        o.call,
        ret,
        serde_json::to_string(&o.op).unwrap_or_default(),
        serde_json::to_string(&o.result).unwrap_or_default()
    )
}

/// The revision the operation carries (`None` if it carries none).
fn revision(o: &Operation) -> Option<i64> {
    (o.result.status == Status::Ok)
        .then_some(o.result.revision)
        .flatten()
}

/// True when `o` created a new revision.
fn wrote(o: &Operation) -> bool {
    o.result.status == Status::Ok
        && match &o.op {
            Request::Put { .. } => true,
            Request::Delete { .. } => o.result.deleted.unwrap_or(0) > 0,
            Request::Cas { .. } => o.result.succeeded == Some(true),
            Request::Get { .. } => false,
        }
}

fn check_revisions(ops: &[&Operation]) -> Option<String> {
    let mut seen: BTreeMap<i64, &Operation> = BTreeMap::new();
    for o in ops.iter().filter(|o| wrote(o)) {
        let r = revision(o)?;
        if let Some(prev) = seen.insert(r, o) {
            return Some(format!(
                "two writes got revision {r}:\n{}\n{}",
                show(prev),
                show(o)
            ));
        }
    }
    // Sweep by time: writes that completed before `o` was invoked bound
    // `o`'s revision from below.
    let mut done: Vec<&&Operation> = ops.iter().filter(|o| wrote(o)).collect();
    done.sort_by_key(|o| o.ret);
    let mut by_call: Vec<&&Operation> = ops.iter().filter(|o| revision(o).is_some()).collect();
    by_call.sort_by_key(|o| o.call);
    let mut i = 0;
    let mut max: Option<&Operation> = None;
    for o in by_call {
        while i < done.len() && done[i].ret.is_some_and(|r| r < o.call) {
            if max.is_none_or(|m| revision(done[i]) > revision(m)) {
                max = Some(done[i]);
            }
            i += 1;
        }
        let (Some(m), Some(r)) = (max, revision(o)) else {
            continue;
        };
        let floor = revision(m).unwrap_or(0);
        if r < floor || (wrote(o) && r == floor) {
            return Some(format!(
                "revision went backwards: an operation invoked after a write at revision {floor} completed carries revision {r}:\n{}\n{}",
                show(m),
                show(o)
            ));
        }
    }
    None
}

enum KeyVerdict {
    Ok,
    Violation(String),
    Budget,
}

/// Bit set over the key's operations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
}

/// One level of the explicit search stack.
struct Frame {
    done: Bits,
    /// (operation, state after it) choices at this level.
    choices: Vec<(usize, KeyState)>,
    next: usize,
    /// Operation linearized to reach this level.
    via: Option<usize>,
}

fn check_key(ops: &[&Operation], budget: u64) -> KeyVerdict {
    let n = ops.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ops[i].call);
    let ret = |i: usize| ops[i].ret.unwrap_or(u64::MAX);
    let choices_at = |state: &KeyState, done: &Bits| -> Vec<(usize, KeyState)> {
        // Minimal operations: invoked no later than the earliest return
        // among those not yet linearized.
        let min_ret = (0..n)
            .filter(|&i| !done.get(i))
            .map(ret)
            .min()
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for &i in &order {
            if ops[i].call > min_ret {
                break;
            }
            if done.get(i) {
                continue;
            }
            for s in step(state, ops[i]) {
                out.push((i, s));
            }
        }
        out
    };
    let root_done = Bits::new(n);
    let root_state = KeyState::default();
    let mut stack = vec![Frame {
        choices: choices_at(&root_state, &root_done),
        done: root_done,
        next: 0,
        via: None,
    }];
    let mut seen: HashSet<(Bits, KeyState)> = HashSet::new();
    let mut steps = 0u64;
    let mut deepest: (usize, Vec<usize>, Vec<usize>) = (0, Vec::new(), Vec::new());
    loop {
        let depth = stack.len() - 1;
        if depth == n {
            return KeyVerdict::Ok;
        }
        steps += 1;
        if steps > budget {
            return KeyVerdict::Budget;
        }
        let exhausted = {
            let top = stack.last().expect("non-empty");
            top.next >= top.choices.len()
        };
        if exhausted {
            if depth >= deepest.0 {
                let path: Vec<usize> = stack.iter().filter_map(|f| f.via).collect();
                let done = &stack.last().expect("non-empty").done;
                let min_ret = (0..n)
                    .filter(|&i| !done.get(i))
                    .map(ret)
                    .min()
                    .unwrap_or(u64::MAX);
                let stuck: Vec<usize> = (0..n)
                    .filter(|&i| !done.get(i) && ops[i].call <= min_ret)
                    .collect();
                deepest = (depth, path, stuck);
            }
            stack.pop();
            if stack.is_empty() {
                return KeyVerdict::Violation(explain(ops, &deepest));
            }
            continue;
        }
        let top = stack.last_mut().expect("non-empty");
        let (op, state) = top.choices[top.next].clone();
        top.next += 1;
        let mut done = top.done.clone();
        done.set(op);
        if !seen.insert((done.clone(), state.clone())) {
            continue;
        }
        stack.push(Frame {
            choices: choices_at(&state, &done),
            done,
            next: 0,
            via: Some(op),
        });
    }
}

fn explain(ops: &[&Operation], deepest: &(usize, Vec<usize>, Vec<usize>)) -> String {
    let (depth, path, stuck) = deepest;
    let mut s = format!(
        "not linearizable: {} of {} operations linearize; after these (the last linearized)\n",
        depth,
        ops.len()
    );
    for &i in path.iter().rev().take(5).collect::<Vec<_>>().iter().rev() {
        s.push_str(&show(ops[*i]));
        s.push('\n');
    }
    s.push_str("none of these can come next:\n");
    for &i in stuck {
        s.push_str(&show(ops[i]));
        s.push('\n');
    }
    s
}
