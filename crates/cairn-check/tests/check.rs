//! Known-good and known-bad histories (tests/histories/*.jsonl): every
//! `good-*` must check linearizable, every `bad-*` must be caught — and the
//! report must point at the offending operations.

use cairn_check::{check, history, Verdict, DEFAULT_BUDGET};

fn verdict(name: &str) -> Verdict {
    let path = format!("{}/tests/histories/{name}", env!("CARGO_MANIFEST_DIR"));
    let ops = history::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    check(&ops, DEFAULT_BUDGET)
}

#[test]
fn good_histories_are_linearizable() {
    match verdict("good-concurrent.jsonl") {
        Verdict::Ok { keys, operations } => {
            assert_eq!(keys, 2);
            assert_eq!(operations, 12, "the failed put is dropped");
        }
        other => panic!("{other:?}"),
    }
}

fn violation(name: &str) -> String {
    match verdict(name) {
        Verdict::Violation(why) => why,
        other => panic!("{name}: expected a violation, got {other:?}"),
    }
}

#[test]
fn a_stale_read_is_caught() {
    let why = violation("bad-stale-read.jsonl");
    assert!(why.contains("key \"a\""), "{why}");
    assert!(why.contains("#3"), "the stale read is named: {why}");
}

#[test]
fn a_lost_update_is_caught() {
    let why = violation("bad-lost-update.jsonl");
    assert!(why.contains("#2") || why.contains("#3"), "{why}");
}

#[test]
fn a_read_of_a_failed_write_is_caught() {
    let why = violation("bad-uncommitted-read.jsonl");
    assert!(why.contains("ghost"), "{why}");
}

#[test]
fn a_revision_going_backwards_is_caught() {
    let why = violation("bad-revision-backwards.jsonl");
    assert!(why.contains("backwards"), "{why}");
}

#[test]
fn the_format_rejects_a_return_before_the_call() {
    let line = r#"{"id":1,"client":1,"call":10,"return":5,"op":{"type":"get","key":"a"},"result":{"status":"ok","revision":1,"kv":null}}"#;
    assert!(history::parse(line).is_err());
}

#[test]
fn many_concurrent_clients_check_quickly() {
    // 8 clients, 400 operations on 4 keys, generated from a real sequential
    // execution with overlapping intervals: must be linearizable.
    use cairn_check::{KeyValue, Operation, Outcome, Request, Status};
    let mut store: std::collections::HashMap<String, KeyValue> = Default::default();
    let mut rev = 1i64;
    let mut ops = Vec::new();
    for i in 0..400u64 {
        let key = format!("k{}", i % 4);
        let client = i % 8;
        // Each op "takes effect" at time 10*i; its interval spans ±15.
        let (call, ret) = (10 * i + 100 - (i * 7 % 15), 10 * i + 100 + (i * 11 % 15));
        let (op, result) = if i % 3 == 0 {
            let kv = store.get(&key).cloned();
            (
                Request::Get { key: key.clone() },
                Outcome {
                    revision: Some(rev),
                    kv,
                    ..Outcome::of(Status::Ok)
                },
            )
        } else {
            rev += 3;
            let value = format!("v{i}");
            let old = store.get(&key).cloned();
            store.insert(
                key.clone(),
                KeyValue {
                    value: value.clone(),
                    mod_revision: rev,
                    create_revision: old.as_ref().map_or(rev, |o| o.create_revision),
                    version: old.map_or(1, |o| o.version + 1),
                },
            );
            (
                Request::Put {
                    key: key.clone(),
                    value,
                },
                Outcome {
                    revision: Some(rev),
                    ..Outcome::of(Status::Ok)
                },
            )
        };
        ops.push(Operation {
            id: i,
            client,
            call,
            ret: Some(ret),
            op,
            result,
        });
    }
    assert!(matches!(check(&ops, DEFAULT_BUDGET), Verdict::Ok { .. }));
    // Corrupt one read to an older value: caught.
    let idx = ops
        .iter()
        .rposition(|o| matches!(o.op, Request::Get { .. }) && o.result.kv.is_some())
        .unwrap();
    ops[idx].result.kv.as_mut().unwrap().value = "v0".into();
    assert!(matches!(check(&ops, DEFAULT_BUDGET), Verdict::Violation(_)));
}
