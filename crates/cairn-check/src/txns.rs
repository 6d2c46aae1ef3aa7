//! Strict serializability of a history of multi-key transactions, judged
//! by the revisions etcd stamps on everything.
//!
//! The [`linearizable`](crate::linearizable) checker searches for an order
//! of single-key operations; over transactions that touch several keys
//! that search explodes. But an etcd history carries its own order: every
//! committed write has one revision, shared by all of its keys (the
//! `mod_revision` each read shows), and every answer carries the revision
//! it was served at. So instead of searching, this checker *verifies*
//! that the order the revisions claim explains every result, and agrees
//! with real time — as Jepsen's Elle uses version orders it can infer,
//! and etcd's own robustness tests validate watch and reads by revision.
//!
//! The history is of keys that are never deleted (the bank's accounts).
//! From it the checker learns the writes: each committed transaction's
//! puts at its revision, and every `(key, mod_revision, value)` any read
//! returned (a write whose answer was lost, or one a resolver finished for
//! a dead coordinator, is known only so). Then:
//!
//! 1. **One value per version, one transaction per revision.** Two values
//!    seen at one `(key, revision)`, two committed transactions at one
//!    revision, or a key seen modified at a committed transaction's
//!    revision that the transaction did not write: a write lost,
//!    duplicated or torn. (A write whose answer was lost is known only by
//!    the keys reads showed at its revision: half of one that no read ever
//!    showed whole goes unseen here — the bank's total still sees it.)
//! 2. **Reads are snapshots.** A read at revision R that shows key k at
//!    `mod_revision` m must have m ≤ R, and no known write of k may lie in
//!    `(m, R]`; a key with a known write at or below R must be there. This
//!    is what catches a torn read across regions (one half of a transfer),
//!    a stale one, or a version from above the read's revision.
//! 3. **Compares held.** A committed transaction that compared the keys'
//!    `mod_revision`s read them as newest below its revision: no known
//!    write of such a key lies strictly between the compared revision and
//!    the commit (a write skew, or two transfers from one balance, shows
//!    here).
//! 4. **Real time.** A linearizable operation that started after another
//!    ended is at a revision at least as high; a committed write strictly
//!    higher (every write is new). Serializable reads may be stale and are
//!    checked for 2 only.
//!
//! Known writes are a subset of the real ones, so every violation reported
//! is real: nothing here guesses about writes it has not seen. (A compare
//! by value, not by revision, is checked only by 1, 2 and 4: a value can
//! come back. A refused transaction is checked by nothing here: a write
//! no read showed may be what refused it.)

use std::collections::{BTreeMap, BTreeSet};

/// A key, a value.
pub type Bytes = Vec<u8>;

/// One operation of the history.
#[derive(Clone, Debug)]
pub enum Op {
    /// A read of every key in `[start, end)`.
    Read(Read),
    /// A transaction that may write.
    Write(Write),
}

/// A read of `[start, end)` at `revision` (the answer's header).
#[derive(Clone, Debug)]
pub struct Read {
    /// Invoke time (any monotonic unit, the same for every operation).
    pub call: u64,
    /// Return time.
    pub ret: u64,
    /// The keys asked for, `[start, end)`.
    pub start: Bytes,
    pub end: Bytes,
    /// The revision the answer was served at.
    pub revision: i64,
    /// `(key, value, mod_revision)` of every key returned.
    pub kvs: Vec<(Bytes, Bytes, i64)>,
    /// Linearizable (checked against real time), or serializable.
    pub linearizable: bool,
}

/// A transaction that puts `puts` if its compares hold.
#[derive(Clone, Debug)]
pub struct Write {
    /// Invoke time.
    pub call: u64,
    /// Return time; `None` when no answer came.
    pub ret: Option<u64>,
    /// Compares of `mod_revision`s: each key must have been last written
    /// at that revision (empty when it compares something else).
    pub expect: Vec<(Bytes, i64)>,
    /// What it writes when the compares hold.
    pub puts: Vec<(Bytes, Bytes)>,
    /// How it ended.
    pub outcome: WriteOutcome,
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Its compares held; its puts are at this revision.
    Committed(i64),
    /// Its compares failed; nothing written (the answer's revision).
    Refused(i64),
    /// No answer: it may or may not have happened.
    Unknown,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Reads checked.
    pub reads: usize,
    /// Committed writes checked.
    pub committed: usize,
    /// Writes known only from what reads showed (unknown outcomes, and
    /// writes finished by others).
    pub inferred: usize,
    /// Violations, described (empty: the history is strictly
    /// serializable by its revisions).
    pub violations: Vec<String>,
}

/// Checks `ops` (see the module essay).
pub fn check(ops: &[Op]) -> Report {
    let mut report = Report::default();
    let mut versions: BTreeMap<Bytes, BTreeMap<i64, Bytes>> = BTreeMap::new();
    let mut by_revision: BTreeMap<i64, BTreeSet<Bytes>> = BTreeMap::new();
    let mut bad = |v: String| {
        if report.violations.len() < 100 {
            report.violations.push(v);
        }
    };
    let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    // Known writes: committed transactions first, then what reads saw.
    for op in ops {
        let Op::Write(w) = op else { continue };
        let WriteOutcome::Committed(rev) = w.outcome else {
            continue;
        };
        report.committed += 1;
        if by_revision.contains_key(&rev) {
            bad(format!("two transactions committed at revision {rev}"));
            continue;
        }
        by_revision.insert(rev, w.puts.iter().map(|(k, _)| k.clone()).collect());
        for (k, v) in &w.puts {
            versions
                .entry(k.clone())
                .or_default()
                .insert(rev, v.clone());
        }
    }
    for op in ops {
        let Op::Read(r) = op else { continue };
        for (k, v, m) in &r.kvs {
            let known = versions.entry(k.clone()).or_default();
            match known.get(m) {
                Some(seen) if seen != v => bad(format!(
                    "{} at revision {m} read as {:?}, written as {:?}",
                    show(k),
                    show(v),
                    show(seen)
                )),
                Some(_) => {}
                None => {
                    if let Some(keys) = by_revision.get(m) {
                        if !keys.contains(k) {
                            bad(format!(
                                "{} modified at revision {m}, by a transaction that did not write it",
                                show(k)
                            ));
                        }
                    }
                    report.inferred += 1;
                    known.insert(*m, v.clone());
                }
            }
        }
    }
    // 2: every read is the state at its revision.
    for op in ops {
        let Op::Read(r) = op else { continue };
        report.reads += 1;
        let shown: BTreeMap<&Bytes, i64> = r.kvs.iter().map(|(k, _, m)| (k, *m)).collect();
        for (k, known) in &versions {
            let inside = k >= &r.start && (r.end.is_empty() || k < &r.end);
            if !inside {
                continue;
            }
            let newest = known.range(..=r.revision).next_back().map(|(m, _)| *m);
            match (shown.get(k), newest) {
                (Some(m), _) if *m > r.revision => bad(format!(
                    "a read at revision {} shows {} modified at {m}, above it",
                    r.revision,
                    show(k)
                )),
                (Some(m), Some(n)) if n > *m => bad(format!(
                    "a read at revision {} shows {} modified at {m}, missing its write at {n}",
                    r.revision,
                    show(k)
                )),
                (None, Some(n)) => bad(format!(
                    "a read at revision {} misses {}, written at {n}",
                    r.revision,
                    show(k)
                )),
                _ => {}
            }
        }
    }
    // 3: committed compares of revisions held at the commit.
    for op in ops {
        let Op::Write(w) = op else { continue };
        let WriteOutcome::Committed(rev) = w.outcome else {
            continue;
        };
        for (k, m) in &w.expect {
            if *m >= rev {
                bad(format!(
                    "the transaction committed at {rev} compared {} at revision {m}, not below it",
                    show(k)
                ));
                continue;
            }
            let between = versions
                .get(k)
                .and_then(|known| known.range(m + 1..rev).next().map(|(n, _)| *n));
            if let Some(n) = between {
                bad(format!(
                    "the transaction committed at {rev} compared {} at revision {m}, but it was written at {n} in between",
                    show(k)
                ));
            }
        }
    }
    // 4: real time, over linearizable operations with an answer.
    let mut timed: Vec<(u64, u64, i64, bool)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Read(r) if r.linearizable => Some((r.call, r.ret, r.revision, false)),
            Op::Write(w) => match (w.outcome, w.ret) {
                (WriteOutcome::Committed(rev), Some(ret)) => Some((w.call, ret, rev, true)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let mut ended: Vec<(u64, i64)> = timed.iter().map(|t| (t.1, t.2)).collect();
    ended.sort_unstable();
    timed.sort_unstable_by_key(|t| t.0);
    let (mut next, mut highest) = (0, i64::MIN);
    for (call, _, rev, writes) in timed {
        while next < ended.len() && ended[next].0 < call {
            highest = highest.max(ended[next].1);
            next += 1;
        }
        let behind = if writes {
            rev <= highest
        } else {
            rev < highest
        };
        if behind {
            let what = if writes {
                "a write committed"
            } else {
                "a read"
            };
            bad(format!(
                "{what} at revision {rev}, after an operation at revision {highest} had ended"
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        s.as_bytes().to_vec()
    }

    fn write(call: u64, ret: u64, expect: &[(&str, i64)], puts: &[(&str, &str)], rev: i64) -> Op {
        Op::Write(Write {
            call,
            ret: Some(ret),
            expect: expect.iter().map(|(k, m)| (b(k), *m)).collect(),
            puts: puts.iter().map(|(k, v)| (b(k), b(v))).collect(),
            outcome: WriteOutcome::Committed(rev),
        })
    }

    fn read(call: u64, ret: u64, revision: i64, kvs: &[(&str, &str, i64)]) -> Op {
        Op::Read(Read {
            call,
            ret,
            start: b("a"),
            end: b("z"),
            revision,
            kvs: kvs.iter().map(|(k, v, m)| (b(k), b(v), *m)).collect(),
            linearizable: true,
        })
    }

    /// Two accounts opened at 1 and 2, a transfer between them at 5.
    fn transfers() -> Vec<Op> {
        vec![
            write(0, 1, &[], &[("a1", "10")], 1),
            write(2, 3, &[], &[("a2", "10")], 2),
            write(
                4,
                5,
                &[("a1", 1), ("a2", 2)],
                &[("a1", "7"), ("a2", "13")],
                5,
            ),
        ]
    }

    #[test]
    fn a_history_in_revision_order_passes() {
        let mut h = transfers();
        h.push(read(6, 7, 5, &[("a1", "7", 5), ("a2", "13", 5)]));
        h.push(read(3, 4, 2, &[("a1", "10", 1), ("a2", "10", 2)]));
        let r = check(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.reads, r.committed, r.inferred), (2, 3, 0));
    }

    #[test]
    fn a_torn_read_is_caught() {
        let mut h = transfers();
        h.push(read(6, 7, 5, &[("a1", "7", 5), ("a2", "10", 2)]));
        let r = check(&h);
        assert!(
            r.violations[0].contains("missing its write at 5"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_version_above_the_read_is_caught() {
        let mut h = transfers();
        h.push(read(6, 7, 4, &[("a1", "7", 5), ("a2", "10", 2)]));
        let r = check(&h);
        assert!(r.violations[0].contains("above it"), "{:?}", r.violations);
    }

    #[test]
    fn a_stale_read_is_caught_by_real_time() {
        let mut h = transfers();
        // Consistent as a snapshot at 2, but it began after the transfer
        // at 5 had been acknowledged.
        h.push(read(6, 7, 2, &[("a1", "10", 1), ("a2", "10", 2)]));
        let r = check(&h);
        assert!(
            r.violations[0].contains("after an operation at revision 5"),
            "{:?}",
            r.violations
        );
        // The same read, serializable, is fine.
        if let Some(Op::Read(r)) = h.last_mut() {
            r.linearizable = false;
        }
        assert!(check(&h).violations.is_empty());
    }

    #[test]
    fn a_write_skew_is_caught() {
        let mut h = transfers();
        // Another transfer out of a1 that compared a1 at 1: committed at 6
        // over the write at 5 it never saw.
        h.push(write(4, 8, &[("a1", 1)], &[("a1", "1")], 6));
        let r = check(&h);
        assert!(
            r.violations[0].contains("written at 5 in between"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn an_unacknowledged_write_is_learnt_from_reads_and_must_be_whole() {
        let mut h = transfers();
        h.push(Op::Write(Write {
            call: 6,
            ret: None,
            expect: vec![],
            puts: vec![(b("a1"), b("6")), (b("a2"), b("14"))],
            outcome: WriteOutcome::Unknown,
        }));
        h.push(read(8, 9, 9, &[("a1", "6", 8), ("a2", "14", 8)]));
        assert!(check(&h).violations.is_empty());
        // Half of it, at a later revision: the other half is missing.
        h.push(read(10, 11, 9, &[("a1", "6", 8), ("a2", "13", 5)]));
        let r = check(&h);
        assert_eq!(r.inferred, 2);
        assert!(
            r.violations[0].contains("missing its write at 8"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn two_values_at_one_version_or_two_commits_at_one_revision_are_caught() {
        let mut h = transfers();
        h.push(read(6, 7, 5, &[("a1", "8", 5), ("a2", "13", 5)]));
        assert!(check(&h).violations[0].contains("read as \"8\", written as \"7\""));
        let mut h = transfers();
        h.push(write(6, 7, &[], &[("a3", "1")], 5));
        assert!(check(&h).violations[0].contains("two transactions committed at revision 5"));
    }

    #[test]
    fn a_compare_at_or_above_its_own_commit_is_caught() {
        let mut h = transfers();
        h.push(write(6, 7, &[("a1", 9)], &[("a1", "1")], 9));
        let r = check(&h);
        assert!(
            r.violations[0].contains("not below it"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_committed_write_below_one_already_acknowledged_is_caught() {
        let mut h = transfers();
        h.push(write(6, 7, &[], &[("a1", "1")], 4));
        let r = check(&h);
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("a write committed at revision 4")),
            "{:?}",
            r.violations
        );
    }
}
