//! The linearizability checker.
//!
//! Every operation touches one key, so by locality (Herlihy & Wing: a
//! history is linearizable iff each object's sub-history is) each key is
//! checked alone — a search over orders of a few hundred operations instead
//! of all of them. The search is Wing & Gong's, with Lowe's memo of visited
//! (linearized set, state) pairs — the set kept as a Zobrist hash, the
//! pending operations as a call-ordered linked list (Porcupine's layout), so
//! a step costs the concurrency window, not the history: repeatedly pick an operation that was
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

/// Search steps allowed per key before giving up, plus
/// [`BUDGET_PER_OPERATION`] for each of the key's operations.
pub const DEFAULT_BUDGET: u64 = 20_000_000;
/// Extra search steps per operation of a key (long histories get more).
pub const BUDGET_PER_OPERATION: u64 = 500;

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
        let key_budget = budget.saturating_add(BUDGET_PER_OPERATION * key_ops.len() as u64);
        match check_key(key_ops, key_budget) {
            KeyVerdict::Ok => {}
            KeyVerdict::Violation(w) => return Verdict::Violation(format!("key {key:?}: {w}")),
            KeyVerdict::Budget => {
                return Verdict::Unknown(format!(
                    "key {key:?}: search budget of {key_budget} steps exhausted ({} operations)",
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

/// A 64-bit Zobrist key for operation `i` (splitmix64 of its index): the
/// XOR of the keys of the linearized operations identifies the set in the
/// memo without storing it (a collision could only hide a path, never
/// accept a wrong history).
fn zobrist(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One level of the search: the choices (position in call order, state
/// after it) open at this point, and how this level was reached.
struct Frame {
    choices: Vec<(usize, KeyState)>,
    next: usize,
    /// Position linearized to reach this level, and the state before it.
    via: Option<(usize, KeyState)>,
}

/// The operations not yet linearized, as a linked list in call order, with
/// a multiset of their return times (Porcupine's "lift"/"unlift").
struct Pending<'a> {
    ops: &'a [&'a Operation],
    /// Operation index at each position (sorted by call time).
    order: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// `next[HEAD]` is the first pending position; `END` ends the list.
    rets: BTreeMap<u64, u32>,
}

impl<'a> Pending<'a> {
    fn new(ops: &'a [&'a Operation]) -> Self {
        let n = ops.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (ops[i].call, i));
        // Positions 0..n are operations; n is the head sentinel, n+1 the end.
        let (head, end) = (n, n + 1);
        let first = if n == 0 { end } else { 0 };
        let last = if n == 0 { head } else { n - 1 };
        let next = (0..n + 2)
            .map(|p| match p {
                _ if p == head => first,
                _ if p == last => end,
                _ => p + 1,
            })
            .collect();
        let prev = (0..n + 2)
            .map(|p| match p {
                _ if p == end => last,
                0 => head,
                _ => p.saturating_sub(1),
            })
            .collect();
        let mut rets = BTreeMap::new();
        for o in ops {
            *rets.entry(ret(o)).or_insert(0) += 1;
        }
        Pending {
            ops,
            order,
            next,
            prev,
            rets,
        }
    }

    fn op(&self, p: usize) -> &'a Operation {
        self.ops[self.order[p]]
    }

    /// Pending positions that may be linearized next: those invoked no
    /// later than the earliest return among pending operations.
    fn minimal(&self) -> Vec<usize> {
        let n = self.ops.len();
        let min_ret = self.rets.keys().next().copied().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut p = self.next[n];
        while p != n + 1 && self.op(p).call <= min_ret {
            out.push(p);
            p = self.next[p];
        }
        out
    }

    fn lift(&mut self, p: usize) {
        let (a, b) = (self.prev[p], self.next[p]);
        self.next[a] = b;
        self.prev[b] = a;
        let r = ret(self.op(p));
        if let Some(c) = self.rets.get_mut(&r) {
            *c -= 1;
            if *c == 0 {
                self.rets.remove(&r);
            }
        }
    }

    fn unlift(&mut self, p: usize) {
        let (a, b) = (self.prev[p], self.next[p]);
        self.next[a] = p;
        self.prev[b] = p;
        *self.rets.entry(ret(self.op(p))).or_insert(0) += 1;
    }
}

fn ret(o: &Operation) -> u64 {
    o.ret.unwrap_or(u64::MAX)
}

fn choices(pending: &Pending, state: &KeyState) -> Vec<(usize, KeyState)> {
    let mut out: Vec<(usize, KeyState)> = Vec::new();
    for p in pending.minimal() {
        for s in step(state, pending.op(p)) {
            out.push((p, s));
        }
    }
    // Answered operations first: an unknown write is tried later, which is
    // usually where it belongs (or nowhere).
    out.sort_by_key(|(p, _)| pending.op(*p).result.status != Status::Ok);
    out
}

fn check_key(ops: &[&Operation], budget: u64) -> KeyVerdict {
    let n = ops.len();
    let mut pending = Pending::new(ops);
    let mut state = KeyState::default();
    let mut stack = vec![Frame {
        choices: choices(&pending, &state),
        next: 0,
        via: None,
    }];
    let mut seen: HashSet<(u64, KeyState)> = HashSet::new();
    let mut hash = 0u64;
    let mut steps = 0u64;
    // Deepest point reached: (depth, last linearized, stuck candidates).
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
        let top = stack.last_mut().expect("non-empty");
        if top.next < top.choices.len() {
            let (p, next_state) = top.choices[top.next].clone();
            top.next += 1;
            let h = hash ^ zobrist(p);
            if !seen.insert((h, next_state.clone())) {
                continue;
            }
            hash = h;
            pending.lift(p);
            let before = std::mem::replace(&mut state, next_state);
            let frame = Frame {
                choices: choices(&pending, &state),
                next: 0,
                via: Some((p, before)),
            };
            stack.push(frame);
            continue;
        }
        // Every choice here failed: remember the deepest dead end, undo.
        if depth >= deepest.0 {
            let path: Vec<usize> = stack
                .iter()
                .rev()
                .filter_map(|f| f.via.as_ref().map(|(p, _)| pending.order[*p]))
                .take(5)
                .collect();
            let stuck = pending
                .minimal()
                .into_iter()
                .map(|p| pending.order[p])
                .collect();
            deepest = (depth, path.into_iter().rev().collect(), stuck);
        }
        let frame = stack.pop().expect("non-empty");
        match frame.via {
            Some((p, before)) => {
                pending.unlift(p);
                hash ^= zobrist(p);
                state = before;
            }
            None => return KeyVerdict::Violation(explain(ops, &deepest)),
        }
    }
}

fn explain(ops: &[&Operation], deepest: &(usize, Vec<usize>, Vec<usize>)) -> String {
    let (depth, path, stuck) = deepest;
    let mut s = format!(
        "not linearizable: {} of {} operations linearize; after these (the last linearized)\n",
        depth,
        ops.len()
    );
    for &i in path {
        s.push_str(&show(ops[i]));
        s.push('\n');
    }
    s.push_str("none of these can come next:\n");
    for &i in stuck {
        s.push_str(&show(ops[i]));
        s.push('\n');
    }
    s
}
