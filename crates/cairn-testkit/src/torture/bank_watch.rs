//! The watch side of the bank workload: a watcher follows every account
//! from revision 1 (resuming elsewhere when its stream breaks, as
//! [`super::watch_check::follow`] does) while transfers move money between
//! accounts that the split nemesis spreads over several regions — so a
//! transfer's two puts are often a transaction across regions (two-phase
//! commit), and the regions it touches split and merge under the watch.
//! What the watcher got must be etcd's watch of those transactions:
//!
//! - **ordered and unique:** revisions never go back, and a key appears
//!   once per revision;
//! - **atomic:** a revision comes whole in one response, however many
//!   regions wrote it;
//! - **in op order:** a transfer's two events come in the order of its
//!   puts (from, then to — etcd's sub-revisions), whichever key sorts
//!   first;
//! - **reliable:** every acknowledged transfer at or below the last
//!   revision the watcher vouched for (an event's or a progress
//!   notification's) is there, at its revision, with its values;
//! - **the money adds up:** replaying the events from nothing, the
//!   balances after every revision (once every account exists) sum to the
//!   bank's total. A torn, partial, duplicated or misplaced event of any
//!   transfer — acknowledged or not — breaks the sum.

use std::collections::{BTreeMap, HashMap};

use cairn_check::txns::{self, WriteOutcome};

use super::bank::START;
use super::watch_check::Seen;

/// What the check went through.
#[derive(Debug, Default, Clone, Copy)]
pub struct Watched {
    /// Revisions replayed.
    pub revisions: usize,
    /// Acknowledged transfers found in the watch, in op order.
    pub transfers: usize,
}

/// Checks the events a watcher of every account saw (`seen_to`: every
/// event at or below it was delivered) against the bank's `history`.
pub fn check(
    events: &[Seen],
    history: &[txns::Op],
    accounts: usize,
    seen_to: i64,
) -> Result<Watched, String> {
    for w in events.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.revision < a.revision || (b.revision == a.revision && b.key == a.key) {
            return Err(format!(
                "bank watch: out of order or duplicated: {a:?} then {b:?}"
            ));
        }
        if b.revision == a.revision && b.response != a.response {
            return Err(format!(
                "bank watch: revision {} split across responses",
                a.revision
            ));
        }
    }
    let mut by_revision: BTreeMap<i64, Vec<&Seen>> = BTreeMap::new();
    for e in events {
        by_revision.entry(e.revision).or_default().push(e);
    }
    let mut balances: HashMap<&str, i64> = HashMap::new();
    let total = START * accounts as i64;
    for (rev, group) in &by_revision {
        for e in group {
            let Some(v) = e.value.as_deref() else {
                return Err(format!("bank watch: account {} deleted at {rev}", e.key));
            };
            let Ok(v) = v.parse::<i64>() else {
                return Err(format!("bank watch: {} holds {v:?} at {rev}", e.key));
            };
            balances.insert(&e.key, v);
        }
        let sum: i64 = balances.values().sum();
        let opening = balances.len() < accounts && balances.values().all(|v| *v == START);
        if !(opening || balances.len() == accounts && sum == total) {
            return Err(format!(
                "bank watch: after revision {rev} the {} accounts seen sum to {sum}, not {total} (its events: {group:?})",
                balances.len()
            ));
        }
    }
    let mut transfers = 0;
    for op in history {
        let txns::Op::Write(w) = op else { continue };
        let WriteOutcome::Committed(rev) = w.outcome else {
            continue;
        };
        if rev > seen_to {
            continue;
        }
        let want: Vec<(String, String)> = w
            .puts
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let got: Vec<(String, String)> = by_revision
            .get(&rev)
            .map(|g| {
                g.iter()
                    .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        if got != want {
            return Err(format!(
                "bank watch: the write acknowledged at {rev} put {want:?}, the watch got {got:?} there (seen to {seen_to})"
            ));
        }
        transfers += usize::from(want.len() > 1);
    }
    Ok(Watched {
        revisions: by_revision.len(),
        transfers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(revision: i64, key: &str, value: i64, response: u64) -> Seen {
        Seen {
            revision,
            key: key.into(),
            value: Some(value.to_string()),
            response,
        }
    }

    fn committed(rev: i64, puts: &[(&str, i64)]) -> txns::Op {
        txns::Op::Write(txns::Write {
            call: 0,
            ret: Some(1),
            expect: vec![],
            puts: puts
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_string().into_bytes()))
                .collect(),
            outcome: WriteOutcome::Committed(rev),
        })
    }

    /// Two accounts opened, then a transfer from b to a at 30.
    fn run() -> (Vec<Seen>, Vec<txns::Op>) {
        let events = vec![
            seen(10, "a", START, 1),
            seen(20, "b", START, 2),
            seen(30, "b", START - 7, 3),
            seen(30, "a", START + 7, 3),
        ];
        let history = vec![
            committed(10, &[("a", START)]),
            committed(20, &[("b", START)]),
            committed(30, &[("b", START - 7), ("a", START + 7)]),
        ];
        (events, history)
    }

    #[test]
    fn a_whole_transfer_in_op_order_holds() {
        let (events, history) = run();
        let w = check(&events, &history, 2, 30).unwrap();
        assert_eq!((w.revisions, w.transfers), (3, 1));
    }

    #[test]
    fn key_order_split_partial_or_lost_transfers_are_caught() {
        let (events, history) = run();
        let mut key_order = events.clone();
        key_order.swap(2, 3);
        assert!(check(&key_order, &history, 2, 30).is_err(), "key order");
        let mut split = events.clone();
        split[3].response = 4;
        assert!(check(&split, &history, 2, 30).is_err(), "split");
        let partial = events[..3].to_vec();
        let err = check(&partial, &history, 2, 30).unwrap_err();
        assert!(err.contains("sum to"), "{err}");
        let lost = events[..2].to_vec();
        assert!(check(&lost, &history, 2, 30).is_err(), "lost");
        // Not yet vouched for: a watcher that saw only to 20 is fine.
        assert!(check(&lost, &history, 2, 20).is_ok());
    }
}
