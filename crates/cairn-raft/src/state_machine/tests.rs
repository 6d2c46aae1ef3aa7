//! Reads never wait for an apply, and never see half of one.
//!
//! A [`Gated`] engine holds the apply task inside an entry — while it
//! computes a range delete, or after its batch is in the engine but before
//! the state is published — and the tests read the region from another
//! thread meanwhile: the read must return at once, with the state from
//! before the entry. A compaction is its revision in the apply path and
//! drops nothing there: its background sweep does. The ignored test
//! measures a compaction of a million versions on fjall, and reads and
//! writes during its sweep.

use std::ops::Bound;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use cairn_mvcc::{Rejection, Revisions};
use cairn_storage::{
    Durability, Engine, FjallEngine, KvIter, MemoryEngine, Snapshot as EngineSnapshot, WriteBatch,
};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use prost::Message;

use super::{RegionKind, RegionShared, StateMachine};
use crate::types::{Command, Reply};
use crate::{SnapshotDir, TypeConfig};

/// Where a [`Gated`] engine holds the apply task.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// In the first scan of the live engine (computing the entry).
    Scan,
    /// Right after the first batch is written (not yet published).
    AfterWrite,
}

/// A [`MemoryEngine`] that, once armed, holds the caller at one [`Hold`]
/// until the test lets go (or drops its end). Views it hands out are plain
/// memory snapshots and never wait.
struct Gated {
    inner: MemoryEngine,
    armed: Mutex<Option<Hold>>,
    reached: mpsc::Sender<()>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Gated {
    fn hold_if(&self, at: Hold) {
        let mut armed = self.armed.lock().unwrap();
        if *armed != Some(at) {
            return;
        }
        *armed = None;
        drop(armed);
        let _ = self.reached.send(());
        let _ = self.release.lock().unwrap().recv();
    }
}

impl EngineSnapshot for Gated {
    fn get(&self, key: &[u8]) -> cairn_storage::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        self.hold_if(Hold::Scan);
        self.inner.scan(start, end, reverse)
    }
}

impl Engine for Gated {
    fn write(&self, batch: WriteBatch, durability: Durability) -> cairn_storage::Result<()> {
        self.inner.write(batch, durability)?;
        self.hold_if(Hold::AfterWrite);
        Ok(())
    }

    fn sync(&self) -> cairn_storage::Result<()> {
        self.inner.sync()
    }

    fn snapshot(&self) -> Arc<dyn EngineSnapshot> {
        self.inner.snapshot()
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

pub(super) fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// A txn putting every `(key, value)`, at revision `ts` or above.
pub(super) fn puts(ts: i64, kvs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Command {
    let success = kvs
        .into_iter()
        .map(|(key, value)| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key,
                value,
                ..Default::default()
            })),
        })
        .collect();
    let txn = TxnRequest {
        success,
        ..Default::default()
    };
    Command::Txn {
        ts,
        txn: txn.encode_to_vec(),
    }
}

/// A txn deleting every key from `key` on, at revision `ts` or above.
pub(super) fn deletes_from(ts: i64, key: &[u8]) -> Command {
    let txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                range_end: vec![0],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    Command::Txn {
        ts,
        txn: txn.encode_to_vec(),
    }
}

/// A region over `engine` whose snapshot directory lives as long as the
/// returned guard.
pub(super) fn region(engine: Arc<dyn Engine>) -> (Arc<RegionShared>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir.path()).unwrap());
    let shared = RegionShared::load(1, RegionKind::Data, engine, snapshots).unwrap();
    (shared, dir)
}

pub(super) fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// The value of `key` at revision `rev` in `view`, read as if the region
/// were at `revs` (so a version deleted by a compaction shows as absent
/// rather than as a rejected read).
pub(super) fn value_at(
    view: &dyn EngineSnapshot,
    revs: Revisions,
    key: &[u8],
    rev: i64,
) -> Option<Vec<u8>> {
    let req = RangeRequest {
        key: key.to_vec(),
        revision: rev,
        ..Default::default()
    };
    let resp = cairn_mvcc::range(view, &req, revs).unwrap();
    resp.kvs.first().map(|kv| kv.value.clone())
}

/// `f` on another thread; panics if it has not returned within a second.
fn within_a_second<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(1))
        .expect("the read waited for the entry being applied")
}

/// Applies `a`=1 (revision 2) and `a`=2 (revision 3), then starts a
/// delete of every key from `a` (a scan, then a tombstone at revision 4)
/// and holds it at `at`. Checks that a read meanwhile returns at once with
/// the state before the delete, and after it the state after.
fn read_while_an_entry_is_held(at: Hold) {
    let (reached_tx, reached) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gated = Arc::new(Gated {
        inner: MemoryEngine::new(),
        armed: Mutex::new(None),
        reached: reached_tx,
        release: Mutex::new(release_rx),
    });
    let (shared, _dir) = region(gated.clone());
    let mut sm = StateMachine::new(shared.clone());
    block_on(sm.apply(vec![
        entry(1, puts(2, [(b"a".to_vec(), b"1".to_vec())])),
        entry(2, puts(3, [(b"a".to_vec(), b"2".to_vec())])),
    ]))
    .unwrap();
    let before = Revisions {
        current: 3,
        compacted: 0,
    };
    assert_eq!(shared.revisions(), before);

    *gated.armed.lock().unwrap() = Some(at);
    let delete = entry(3, deletes_from(4, b"a"));
    let applying = thread::spawn(move || block_on(sm.apply(vec![delete])).unwrap());
    reached
        .recv_timeout(Duration::from_secs(5))
        .expect("the delete reached the hold");
    if at == Hold::AfterWrite {
        // The live engine already lacks `a`.
        let after = Revisions {
            current: 4,
            compacted: 0,
        };
        assert_eq!(value_at(&gated.inner, after, b"a", 0), None);
    }

    let reader = shared.clone();
    let (view, revs) = within_a_second(move || reader.read_view());
    assert_eq!(revs, before, "revisions from before the delete");
    assert_eq!(
        value_at(&*view, revs, b"a", 0).as_deref(),
        Some(&b"2"[..]),
        "data from before the delete"
    );
    let snapshot_of = StateMachine::new(shared.clone());
    let (applied, _) = within_a_second(move || snapshot_of.current());
    assert_eq!(applied.revisions(), before, "a snapshot built meanwhile");

    release.send(()).unwrap();
    let replies = applying.join().unwrap();
    assert!(matches!(replies[..], [Reply::Txn(_)]), "{replies:?}");
    let (view, revs) = shared.read_view();
    assert_eq!(
        revs,
        Revisions {
            current: 4,
            compacted: 0
        }
    );
    assert_eq!(value_at(&*view, revs, b"a", 0), None, "data after it");
    assert_eq!(value_at(&*view, revs, b"a", 3).as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_read_while_an_entry_is_computed_returns_at_once_with_the_state_before_it() {
    read_while_an_entry_is_held(Hold::Scan);
}

#[test]
fn a_read_after_an_entry_is_written_but_before_it_is_published_sees_the_state_before_it() {
    read_while_an_entry_is_held(Hold::AfterWrite);
}

/// A compaction of ~1M versions on fjall: how long its apply takes (it
/// records the revision), how long its sweep takes, and one-key reads and
/// one-put entries during the sweep (the sweep runs beside the apply task,
/// as the host runs it). Run with
/// `cargo test --release -p cairn-raft --lib -- --ignored --nocapture compaction_of_a_million`.
#[test]
#[ignore = "measurement: takes a while, run in release"]
fn a_compaction_of_a_million_versions_and_what_runs_during_its_sweep() {
    const KEYS: usize = 1000;
    const ROUNDS: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir.path()).unwrap());
    let (shared, _snapshots) = region(engine);
    let mut sm = StateMachine::new(shared.clone());
    let key = |i: usize| format!("k{i:04}").into_bytes();
    let filled = Instant::now();
    for round in 1..=ROUNDS {
        let kvs = (0..KEYS).map(|i| (key(i), format!("value-{round:08}").into_bytes()));
        block_on(sm.apply(vec![entry(round, puts(0, kvs))])).unwrap();
    }
    let revs = shared.revisions();
    eprintln!(
        "{} versions written in {:?}; revisions {revs:?}",
        KEYS as u64 * ROUNDS,
        filled.elapsed()
    );
    let compacting = Instant::now();
    let replies = block_on(sm.apply(vec![entry(
        ROUNDS + 1,
        Command::Compact {
            revision: revs.current,
        },
    )]))
    .unwrap();
    eprintln!("the compaction applied in {:?}", compacting.elapsed());
    assert!(matches!(replies[0], Reply::Compacted { .. }));

    let swept: Arc<Mutex<Option<Instant>>> = Arc::default();
    let sweeping = Instant::now();
    let sweeper = {
        let (shared, swept) = (shared.clone(), swept.clone());
        thread::spawn(move || {
            let mut steps = 0;
            while shared.sweep_step().unwrap() {
                steps += 1;
            }
            *swept.lock().unwrap() = Some(Instant::now());
            steps + 1
        })
    };
    let reader = {
        let (shared, swept) = (shared.clone(), swept.clone());
        thread::spawn(move || {
            let req = RangeRequest {
                key: key(KEYS / 2),
                ..Default::default()
            };
            // One read due every 100 µs, its latency counted from when it
            // was due: a read that stalls counts against every read it
            // holds back.
            let mut latencies = Vec::new();
            let mut due = Instant::now();
            while swept.lock().unwrap().is_none() {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let (view, revs) = shared.read_view();
                let resp = cairn_mvcc::range(&*view, &req, revs).unwrap();
                assert_eq!(resp.kvs.len(), 1);
                latencies.push(due.elapsed());
                due += Duration::from_micros(100);
            }
            latencies
        })
    };
    // One-put entries on this thread until the sweep is done.
    let mut puts_applied = Vec::new();
    let mut index = ROUNDS + 1;
    while swept.lock().unwrap().is_none() {
        index += 1;
        let started = Instant::now();
        let kv = (key(index as usize % KEYS), b"during".to_vec());
        block_on(sm.apply(vec![entry(index, puts(0, [kv]))])).unwrap();
        puts_applied.push(started.elapsed());
        thread::sleep(Duration::from_millis(1));
    }
    let steps = sweeper.join().unwrap();
    eprintln!("swept in {:?}, {steps} steps", sweeping.elapsed());
    for (what, mut latencies) in [
        ("one-key reads", reader.join().unwrap()),
        ("one-put entries applied", puts_applied),
    ] {
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        eprintln!(
            "{} {what} during the sweep: p50 {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            at(0.50),
            at(0.99),
            latencies.last().unwrap()
        );
    }
}

fn entry_in_term(term: u64, index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

#[test]
fn an_expiry_across_regions_is_claimed_and_committed_only_in_the_term_that_found_it() {
    use cairn_mvcc::locks::{LeaseClaims, Outcome};
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let exists = |shared: &RegionShared| {
        let (view, _) = shared.read_view();
        cairn_mvcc::lease::get(&*view, 7).unwrap().is_some()
    };
    let body = cairn_mvcc::lease::revoke_txn(7, Vec::new()).encode_to_vec();
    let prewrite = |start_ts, decided_in| Command::Prewrite {
        start_ts,
        primary: shared.region,
        regions: vec![shared.region],
        spans: Vec::new(),
        txn: body.clone(),
        leases: LeaseClaims {
            revoke: vec![7],
            decided_in,
            ..LeaseClaims::default()
        },
    };
    let commit = |start_ts| Command::CommitLocked {
        start_ts,
        commit_ts: 150,
        path: vec![true],
    };
    let mut apply =
        |term, index, cmd| block_on(sm.apply(vec![entry_in_term(term, index, cmd)])).unwrap();
    apply(2, 1, Command::LeaseGrant { id: 7, ttl: 600 });
    // Found expired in term 2, claimed in term 3: dropped.
    assert_eq!(apply(3, 2, prewrite(100, 2)), vec![Reply::Done]);
    // Claimed in term 3, committed in term 4 (a leader of term 4 may have
    // renewed it): rolled back.
    assert!(matches!(
        apply(3, 3, prewrite(101, 3))[..],
        [Reply::Revision(_)]
    ));
    assert_eq!(
        apply(4, 4, commit(101)),
        vec![Reply::Outcome(Some(Outcome::RolledBack))]
    );
    assert!(exists(&shared), "a stale expiry revoked the lease");
    // All in term 4: revoked.
    assert!(matches!(
        apply(4, 5, prewrite(102, 4))[..],
        [Reply::Revision(_)]
    ));
    assert!(matches!(
        apply(4, 6, commit(102))[..],
        [Reply::Outcome(Some(Outcome::Committed { .. }))]
    ));
    assert!(!exists(&shared));
}

/// A backup reads the lease table from `lease_table_view`: a revoke's
/// lock there that holds no key (its keys lie in other regions) and was
/// placed below the revision the view is complete to may still delete the
/// lease at or below it, so it is returned; one placed at that revision is
/// not (it commits above).
#[test]
fn the_lease_table_view_names_a_revoke_lock_that_holds_no_key_here() {
    use cairn_mvcc::locks::LeaseClaims;
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let body = cairn_mvcc::lease::revoke_txn(7, Vec::new()).encode_to_vec();
    let mut apply = |index, cmd| block_on(sm.apply(vec![entry_in_term(2, index, cmd)])).unwrap();
    apply(1, Command::LeaseGrant { id: 7, ttl: 600 });
    apply(2, puts(10, [(b"a".to_vec(), b"1".to_vec())]));
    apply(
        3,
        Command::Prewrite {
            start_ts: 11,
            primary: shared.region,
            regions: vec![shared.region, 99],
            spans: Vec::new(),
            txn: body,
            leases: LeaseClaims {
                revoke: vec![7],
                ..LeaseClaims::default()
            },
        },
    );
    // Placed at revision 10: a view complete to 10 need not wait for it.
    let (_, at, _, lock) = shared.lease_table_view(0);
    assert_eq!((at, lock), (10, None));
    // Complete to 20 (caught up to a read timestamp of 20): it may commit
    // at or below 20.
    let (_, at, _, lock) = shared.lease_table_view(20);
    assert_eq!(at, 20);
    assert_eq!(lock.map(|l| l.start_ts), Some(11));
    // And once the region's own revision moves past it.
    apply(4, puts(30, [(b"b".to_vec(), b"1".to_vec())]));
    let (_, at, _, lock) = shared.lease_table_view(0);
    assert_eq!(at, 30);
    assert_eq!(lock.map(|l| l.start_ts), Some(11));
}

#[test]
fn lessor_decisions_apply_only_in_the_term_they_were_taken_in() {
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let remaining = |shared: &RegionShared| {
        let (view, _) = shared.read_view();
        cairn_mvcc::lease::get(&*view, 7)
            .unwrap()
            .map(|r| r.remaining)
    };
    let cmds = [
        Command::LeaseGrant { id: 7, ttl: 600 },
        // Figures taken by term 1's lessor, appended in term 2: ignored.
        Command::LeaseCheckpoints {
            term: 1,
            list: vec![(7, 300)],
        },
    ];
    for (i, c) in cmds.into_iter().enumerate() {
        block_on(sm.apply(vec![entry_in_term(2, i as u64 + 1, c)])).unwrap();
    }
    assert_eq!(remaining(&shared), Some(0));
    block_on(sm.apply(vec![entry_in_term(
        2,
        3,
        Command::LeaseCheckpoints {
            term: 2,
            list: vec![(7, 400)],
        },
    )]))
    .unwrap();
    assert_eq!(remaining(&shared), Some(400));
    // A renewal's clear (term 0) applies in any term.
    block_on(sm.apply(vec![entry_in_term(
        3,
        4,
        Command::LeaseCheckpoints {
            term: 0,
            list: vec![(7, 0)],
        },
    )]))
    .unwrap();
    assert_eq!(remaining(&shared), Some(0));
    // An expiry decided in term 2 but appended in term 3 revokes nothing.
    let stale = Command::LeaseExpire {
        id: 7,
        ts: 10,
        term: 2,
    };
    let r = block_on(sm.apply(vec![entry_in_term(3, 5, stale)])).unwrap();
    assert_eq!(r, vec![Reply::Done]);
    assert_eq!(
        remaining(&shared),
        Some(0),
        "a stale expiry revoked the lease"
    );
    let fresh = Command::LeaseExpire {
        id: 7,
        ts: 11,
        term: 3,
    };
    let r = block_on(sm.apply(vec![entry_in_term(3, 6, fresh)])).unwrap();
    assert!(matches!(r[..], [Reply::Revision(_)]), "{r:?}");
    assert_eq!(remaining(&shared), None);
}

#[test]
fn an_applied_record_written_before_alarms_still_decodes() {
    use super::Applied;
    let mut applied = Applied {
        current_revision: 77,
        compacted_revision: 5,
        tso_high_water: 9,
        ..Default::default()
    };
    // The old layout is the new one without its last field.
    let new = crate::codec::encode(&applied).unwrap();
    // postcard writes a struct as its fields in order, like a tuple.
    let old = crate::codec::encode(&(
        &applied.last_applied,
        &applied.membership,
        applied.current_revision,
        applied.compacted_revision,
        applied.tso_high_water,
        &applied.members,
        &applied.regions,
    ))
    .unwrap();
    assert_eq!(&new[..old.len()], &old[..], "alarms is the last field");
    let back = Applied::decode(&old).unwrap();
    assert_eq!(back, applied);
    applied.alarms.insert((3, super::ALARM_NOSPACE));
    let with_alarm = crate::codec::encode(&applied).unwrap();
    assert_eq!(Applied::decode(&with_alarm).unwrap(), applied);
}

#[test]
fn nospace_refuses_writes_that_add_data_at_apply_and_lets_deletes_through() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (shared, _snapshots) = region(engine);
    let mut sm = StateMachine::new(shared.clone());
    let put = |i: u64| entry(i, puts(0, [(b"k".to_vec(), b"v".to_vec())]));
    let alarm = |i: u64, activate: bool| {
        entry(
            i,
            Command::Alarm {
                activate,
                member: 7,
                alarm: super::ALARM_NOSPACE,
            },
        )
    };
    let delete = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestDeleteRange(
                cairn_api::etcdserverpb::DeleteRangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                },
            )),
        }],
        ..Default::default()
    };
    let replies = block_on(sm.apply(vec![
        put(1),
        alarm(2, true),
        alarm(3, true),
        put(4),
        entry(5, Command::LeaseGrant { id: 1, ttl: 10 }),
        entry(
            6,
            Command::Txn {
                ts: 0,
                txn: delete.encode_to_vec(),
            },
        ),
        alarm(7, false),
        put(8),
    ]))
    .unwrap();
    assert!(matches!(replies[0], Reply::Txn(_)));
    assert_eq!(replies[1], Reply::Alarms(vec![(7, super::ALARM_NOSPACE)]));
    assert_eq!(
        replies[2],
        Reply::Alarms(vec![]),
        "raising twice changes nothing"
    );
    assert_eq!(replies[3], Reply::Rejected(Rejection::NoSpace));
    assert_eq!(replies[4], Reply::Rejected(Rejection::NoSpace));
    assert!(matches!(replies[5], Reply::Txn(_)), "a delete goes through");
    assert_eq!(replies[6], Reply::Alarms(vec![(7, super::ALARM_NOSPACE)]));
    assert!(
        matches!(replies[7], Reply::Txn(_)),
        "writes resume once disarmed"
    );
    assert!(shared.applied().alarms.is_empty());
}

/// Applies each command in the next entry of its own; its reply.
fn one_by_one(sm: &mut StateMachine) -> impl FnMut(Command) -> Reply + '_ {
    let mut index = 0;
    move |cmd| {
        index += 1;
        block_on(sm.apply(vec![entry(index, cmd)]))
            .unwrap()
            .remove(0)
    }
}

/// A prewrite of transaction `start_ts` putting `key`, in the regions
/// `regions` (the primary first).
fn prewrite_put(start_ts: i64, regions: &[u64], key: &[u8]) -> Command {
    let Command::Txn { txn, .. } = puts(0, [(key.to_vec(), b"v".to_vec())]) else {
        unreachable!()
    };
    Command::Prewrite {
        start_ts,
        primary: regions[0],
        regions: regions.to_vec(),
        spans: vec![cairn_mvcc::locks::etcd_span(key, &[])],
        txn,
        leases: cairn_mvcc::locks::LeaseClaims::default(),
    }
}

/// The commit of transaction `start_ts` at `commit_ts`, its first branch.
fn commit_locked(start_ts: i64, commit_ts: i64) -> Command {
    Command::CommitLocked {
        start_ts,
        commit_ts,
        path: vec![true],
    }
}

/// The commit at a transaction's primary decides it, so it is where a
/// cross-region Txn meets what etcd checks at apply: an auth change fenced
/// since the caller was checked (`Checked` around it: refused), a NOSPACE
/// alarm raised since its prewrite (refused when it puts) and a CORRUPT
/// one (refused). Each time the lock stays for the coordinator to roll
/// back. A secondary part (its transaction decided at its primary)
/// commits under the alarm.
#[test]
fn the_primary_commit_is_refused_behind_a_newer_auth_fence_or_an_alarm() {
    use cairn_mvcc::locks::Outcome;
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let here = shared.region;
    let prewrite = |start_ts, primary, key: &[u8]| prewrite_put(start_ts, &[primary, here], key);
    let commit = commit_locked;
    let checked = |auth_revision, cmd| Command::Checked {
        auth_revision,
        cmd: Box::new(cmd),
    };
    let alarm = |activate| Command::Alarm {
        activate,
        member: 7,
        alarm: super::ALARM_NOSPACE,
    };
    let mut apply = one_by_one(&mut sm);
    let held = |start_ts| shared.applied().locks.held.contains_key(&start_ts);
    assert!(matches!(
        apply(prewrite(10, here, b"a")),
        Reply::Revision(_)
    ));
    assert!(matches!(apply(prewrite(11, 99, b"b")), Reply::Revision(_)));
    // Checked at auth revision 1, fenced at 2 since.
    apply(Command::AuthFence { revision: 2 });
    assert_eq!(
        apply(checked(1, commit(10, 20))),
        Reply::Rejected(Rejection::AuthOldRevision)
    );
    assert!(held(10), "a refused commit keeps its lock");
    apply(alarm(true));
    assert_eq!(
        apply(checked(2, commit(10, 20))),
        Reply::Rejected(Rejection::NoSpace)
    );
    assert!(held(10));
    assert!(matches!(
        apply(commit(11, 21)),
        Reply::Outcome(Some(Outcome::Committed { .. }))
    ));
    apply(alarm(false));
    let corrupt = |activate| Command::Alarm {
        activate,
        member: 7,
        alarm: super::ALARM_CORRUPT,
    };
    apply(corrupt(true));
    assert_eq!(
        apply(checked(2, commit(10, 22))),
        Reply::Rejected(Rejection::Corrupt)
    );
    assert!(held(10));
    apply(corrupt(false));
    assert!(matches!(
        apply(checked(2, commit(10, 22))),
        Reply::Outcome(Some(Outcome::Committed { commit_ts: 22, .. }))
    ));
    assert!(!held(10) && !held(11));
}

/// A checked commit of a lock that claims a lease (`CheckedLease`) checks
/// the keys on that lease as etcd's `checkLeasePuts` does at apply — here
/// a revoke's, whose key the caller may not write: refused, the lock
/// stays. Unchecked (an internal expiry), it commits.
#[test]
fn a_checked_commit_checks_the_keys_on_the_leases_its_lock_claims() {
    use cairn_mvcc::locks::{etcd_span, LeaseClaims, Outcome};
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let mut apply = one_by_one(&mut sm);
    apply(Command::LeaseGrant { id: 7, ttl: 600 });
    let leased = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 7,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let put = Command::Txn {
        ts: 0,
        txn: leased.encode_to_vec(),
    };
    assert!(matches!(apply(put), Reply::Txn(_)));
    let revoke = cairn_mvcc::lease::revoke_txn(7, vec![b"k".to_vec()]);
    let prewrite = Command::Prewrite {
        start_ts: 10,
        primary: shared.region,
        regions: vec![shared.region],
        spans: vec![etcd_span(b"k", &[])],
        txn: revoke.encode_to_vec(),
        leases: LeaseClaims {
            revoke: vec![7],
            ..LeaseClaims::default()
        },
    };
    assert!(matches!(apply(prewrite), Reply::Revision(_)));
    let commit = || Command::CommitLocked {
        start_ts: 10,
        commit_ts: 20,
        path: vec![true],
    };
    // A user the auth store does not know may write nothing.
    let enabled = cairn_auth::AuthState {
        enabled: true,
        ..Default::default()
    };
    let nothing = enabled.writable(Some("nobody")).unwrap();
    let checked = Command::CheckedLease {
        auth_revision: 0,
        writable: nothing,
        cmd: Box::new(commit()),
    };
    assert_eq!(apply(checked), Reply::Rejected(Rejection::PermissionDenied));
    assert!(shared.applied().locks.held.contains_key(&10));
    assert!(matches!(
        apply(commit()),
        Reply::Outcome(Some(Outcome::Committed { .. }))
    ));
}

#[test]
fn an_applied_record_written_before_ranges_still_decodes() {
    use super::Applied;
    let applied = Applied {
        current_revision: 12,
        auth_fence: 3,
        ..Default::default()
    };
    let old = crate::codec::encode(&(
        &applied.last_applied,
        &applied.membership,
        applied.current_revision,
        applied.compacted_revision,
        applied.tso_high_water,
        &applied.members,
        &applied.regions,
        &applied.alarms,
        &applied.auth,
        applied.auth_fence,
    ))
    .unwrap();
    let new = crate::codec::encode(&applied).unwrap();
    assert_eq!(&new[..old.len()], &old[..], "range is the last field");
    let back = Applied::decode(&old).unwrap();
    assert_eq!(back, applied);
    assert_eq!(
        back.range,
        crate::RegionRange::default(),
        "the first region"
    );

    // And the layout before auth (alarms last), with an alarm raised.
    let mut applied = Applied {
        current_revision: 13,
        ..Default::default()
    };
    applied.alarms.insert((4, super::ALARM_CORRUPT));
    let before_auth = crate::codec::encode(&(
        &applied.last_applied,
        &applied.membership,
        applied.current_revision,
        applied.compacted_revision,
        applied.tso_high_water,
        &applied.members,
        &applied.regions,
        &applied.alarms,
    ))
    .unwrap();
    assert_eq!(Applied::decode(&before_auth).unwrap(), applied);
}

#[test]
fn a_split_starts_the_child_led_by_the_voter_that_appended_it() {
    use openraft::storage::RaftLogStorage;
    use openraft::{Membership, Vote};
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (shared, _dir) = region(engine.clone());
    let mut sm = StateMachine::new(shared.clone());
    let voters = Membership::<u64, openraft::BasicNode>::new(
        vec![std::collections::BTreeSet::from([1, 2, 3])],
        None,
    );
    let at = |term, leader, index, cmd| Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
        payload: cmd,
    };
    let split = |at: &str, child, epoch| {
        EntryPayload::Normal(Command::Split {
            at: at.as_bytes().to_vec(),
            child,
            epoch,
        })
    };
    let r = block_on(sm.apply(vec![
        at(1, 1, 1, EntryPayload::Membership(voters)),
        at(4, 2, 2, split("m", 9, 1)),
        // Appended by a member that is not a voter (none is, today): the
        // child starts with no vote, and elects its leader.
        at(5, 7, 3, split("f", 10, 2)),
        // Refused (a stale epoch): no child, no vote.
        at(5, 2, 4, split("c", 11, 2)),
    ]))
    .unwrap();
    assert!(
        matches!(
            &r[..],
            [Reply::Done, Reply::Done, Reply::Done, Reply::WrongRegion(_)]
        ),
        "{r:?}"
    );
    let writer = crate::LogWriter::start(engine.clone()).unwrap();
    let vote = |region| {
        let mut log = crate::LogStore::new(region, engine.clone(), writer.clone());
        block_on(log.read_vote()).unwrap()
    };
    assert_eq!(vote(9), Some(Vote::new_committed(4, 2)));
    assert_eq!(vote(10), None);
    assert_eq!(vote(11), None);
    assert_eq!(vote(1), None, "the parent's own vote is untouched");
}

#[test]
fn a_split_narrows_the_parent_seeds_the_child_and_keeps_commands_inside_each() {
    use openraft::storage::RaftLogStorage;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (shared, _dir) = region(engine.clone());
    let mut sm = StateMachine::new(shared.clone());
    let kv = |k: &str| (k.as_bytes().to_vec(), b"v".to_vec());
    let r = block_on(sm.apply(vec![entry(1, puts(10, [kv("a"), kv("q")]))])).unwrap();
    assert!(matches!(r[..], [Reply::Txn(_)]), "{r:?}");
    let (tx, mut born) = tokio::sync::mpsc::unbounded_channel();
    shared.on_change(tx);

    // A stale epoch, or a key not strictly inside, changes nothing.
    for (at, epoch) in [("m", 7), ("", 1)] {
        let split = Command::Split {
            at: at.as_bytes().to_vec(),
            child: 9,
            epoch,
        };
        let r = block_on(sm.apply(vec![entry(2, split)])).unwrap();
        assert!(
            matches!(&r[..], [Reply::WrongRegion(range)] if range.epoch == 1),
            "{r:?}"
        );
    }
    assert!(born.try_recv().is_err());
    let split = Command::Split {
        at: b"m".to_vec(),
        child: 9,
        epoch: 1,
    };
    let r = block_on(sm.apply(vec![entry(3, split)])).unwrap();
    assert_eq!(r, vec![Reply::Done]);
    assert_eq!(
        born.try_recv().ok(),
        Some(crate::HostChange::Born(9)),
        "the host is told"
    );
    let parent = shared.range();
    assert_eq!(
        (parent.start.as_slice(), parent.end.as_slice(), parent.epoch),
        (&b""[..], &b"m"[..], 2)
    );

    // The child's record: the other half, the same epoch and revisions,
    // applied (and its log purged) up to the initial index.
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir.path()).unwrap());
    let child = RegionShared::load(9, RegionKind::Data, engine.clone(), snapshots).unwrap();
    let a = child.applied();
    assert_eq!(
        (
            a.range.start.as_slice(),
            a.range.end.as_slice(),
            a.range.epoch
        ),
        (&b"m"[..], &b""[..], 2)
    );
    assert_eq!(a.revisions(), shared.revisions());
    assert_eq!(
        a.last_applied.map(|l| l.index),
        Some(super::CHILD_INIT_INDEX)
    );
    assert_eq!(
        a.membership.membership().voter_ids().collect::<Vec<_>>(),
        shared
            .applied()
            .membership
            .membership()
            .voter_ids()
            .collect::<Vec<_>>()
    );
    let writer = crate::LogWriter::start(engine.clone()).unwrap();
    let mut log = crate::LogStore::new(9, engine.clone(), writer);
    let state = block_on(log.get_log_state()).unwrap();
    assert_eq!(
        state.last_purged_log_id.map(|l| l.index),
        Some(super::CHILD_INIT_INDEX)
    );
    assert_eq!(super::stored_regions(&*engine).unwrap(), vec![1, 9]);
    assert!(
        !child.share().unwrap().leases,
        "leases stay with the first region"
    );
    assert!(shared.share().unwrap().leases);

    // Each region applies only commands inside its range.
    let r = block_on(sm.apply(vec![entry(4, puts(20, [kv("q")]))])).unwrap();
    assert!(
        matches!(&r[..], [Reply::WrongRegion(range)] if range.end == b"m"),
        "{r:?}"
    );
    let r = block_on(sm.apply(vec![entry(5, puts(21, [kv("b")]))])).unwrap();
    assert!(matches!(r[..], [Reply::Txn(_)]), "{r:?}");
    let mut child_sm = StateMachine::new(child.clone());
    let r = block_on(child_sm.apply(vec![entry(6, puts(22, [kv("b")]))])).unwrap();
    assert!(matches!(r[..], [Reply::WrongRegion(_)]), "{r:?}");
    let r = block_on(child_sm.apply(vec![entry(7, puts(23, [kv("q")]))])).unwrap();
    assert!(matches!(r[..], [Reply::Txn(_)]), "{r:?}");
}

/// A split waits for a lock on keys the new region would hold, not for
/// one wholly below the split key (a lease claim in the first region is
/// held by every leased put across regions: waiting for none to be held
/// would starve the first region's splits under such writes). The lock
/// below stays in the parent and commits there.
#[test]
fn a_split_waits_only_for_locks_on_the_new_regions_keys() {
    use cairn_mvcc::locks::Outcome;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (shared, _dir) = region(engine.clone());
    let mut sm = StateMachine::new(shared.clone());
    let here = shared.region;
    let mut apply = one_by_one(&mut sm);
    let prewrite = |start_ts, key: &[u8]| prewrite_put(start_ts, &[here, 77], key);
    let commit = commit_locked;
    let split = || Command::Split {
        at: b"m".to_vec(),
        child: 9,
        epoch: 1,
    };
    assert!(matches!(apply(prewrite(10, b"b")), Reply::Revision(_)));
    assert!(matches!(apply(prewrite(11, b"q")), Reply::Revision(_)));
    assert!(
        matches!(apply(split()), Reply::Locked(l) if l.start_ts == 11),
        "the lock on q holds the split"
    );
    assert!(matches!(
        apply(commit(11, 20)),
        Reply::Outcome(Some(Outcome::Committed { .. }))
    ));
    assert_eq!(apply(split()), Reply::Done, "only the lock on b is left");
    assert_eq!(shared.range().end, b"m".to_vec());
    assert!(shared.applied().locks.held.contains_key(&10));
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir.path()).unwrap());
    let child = RegionShared::load(9, RegionKind::Data, engine, snapshots).unwrap();
    assert!(child.applied().locks.is_empty());
    assert_eq!(child.resolved(), child.applied().current_revision);
    assert!(matches!(
        apply(commit(10, 21)),
        Reply::Outcome(Some(Outcome::Committed { commit_ts: 21, .. }))
    ));
    let (view, revs) = shared.read_view();
    let got = cairn_mvcc::range(
        &*view,
        &RangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        },
        revs,
    )
    .unwrap();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].mod_revision, 21);
}

#[test]
fn a_split_moves_leased_keys_and_the_first_region_then_leaves_their_revoke_to_a_txn_across() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (shared, _dir) = region(engine);
    let mut sm = StateMachine::new(shared.clone());
    let put = |key: &str| TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                lease: 5,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let txn = |ts, key| Command::Txn {
        ts,
        txn: put(key).encode_to_vec(),
    };
    let r = block_on(sm.apply(vec![
        entry(1, Command::LeaseGrant { id: 5, ttl: 60 }),
        entry(2, txn(10, "x")),
    ]))
    .unwrap();
    assert!(
        matches!(r[..], [Reply::Revision(_), Reply::Txn(_)]),
        "{r:?}"
    );
    let split = Command::Split {
        at: b"m".to_vec(),
        child: 9,
        epoch: 1,
    };
    let r = block_on(sm.apply(vec![entry(3, split)])).unwrap();
    assert_eq!(r, vec![Reply::Done]);
    assert_eq!(shared.range().end, b"m".to_vec());
    // The lease stays here, its index naming "x" (now the child's): a
    // revoke here alone would leave "x", so it is refused.
    let r = block_on(sm.apply(vec![
        entry(4, Command::LeaseRevoke { id: 5, ts: 20 }),
        entry(5, txn(21, "a")),
    ]))
    .unwrap();
    assert!(
        matches!(
            r[..],
            [
                Reply::Rejected(Rejection::LeaseOutsideFirstRegion),
                Reply::Txn(_)
            ]
        ),
        "{r:?}"
    );
    assert!(cairn_mvcc::lease::get(&*shared.read_view().0, 5)
        .unwrap()
        .is_some());
}

#[test]
fn timestamped_writes_apply_only_in_the_term_they_were_stamped_in_and_closes_raise_the_revision() {
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let get = |shared: &RegionShared, key: &[u8]| {
        let (view, revs) = shared.read_view();
        value_at(&*view, revs, key, revs.current)
    };
    let in_term = |term, cmd| Command::InTerm {
        term,
        cmd: Box::new(cmd),
    };
    let start = shared.revisions().current;
    // Stamped in term 1, appended in term 2: nothing changes, every
    // command of a batch is told.
    let stale = in_term(
        1,
        Command::Batch(vec![
            puts(10, [(b"a".to_vec(), b"1".to_vec())]),
            puts(11, [(b"b".to_vec(), b"1".to_vec())]),
        ]),
    );
    let r = block_on(sm.apply(vec![entry_in_term(2, 1, stale)])).unwrap();
    assert_eq!(r, vec![Reply::Batch(vec![Reply::StaleTerm; 2])]);
    assert_eq!(get(&shared, b"a"), None);
    assert_eq!(shared.revisions().current, start);
    // Stamped and appended in term 2: applied at its timestamp.
    let fresh = in_term(2, puts(20, [(b"a".to_vec(), b"2".to_vec())]));
    let r = block_on(sm.apply(vec![entry_in_term(2, 2, fresh)])).unwrap();
    assert!(matches!(r[..], [Reply::Txn(_)]), "{r:?}");
    assert_eq!(get(&shared, b"a"), Some(b"2".to_vec()));
    assert_eq!(shared.revisions().current, 20);
    // A close raises the revision and writes nothing; the next write is
    // above it.
    let close = in_term(2, Command::Close { ts: 30 });
    let r = block_on(sm.apply(vec![entry_in_term(2, 3, close)])).unwrap();
    assert_eq!(r, vec![Reply::Revision(30)]);
    assert_eq!(shared.revisions().current, 30);
    assert_eq!(get(&shared, b"a"), Some(b"2".to_vec()));
    let next = in_term(2, puts(31, [(b"b".to_vec(), b"3".to_vec())]));
    block_on(sm.apply(vec![entry_in_term(2, 4, next)])).unwrap();
    assert_eq!(shared.revisions().current, 31);
}

#[test]
fn a_write_stamped_at_or_below_the_revision_of_one_region_of_several_is_refused() {
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let put = |ts, key: &[u8], value: &[u8]| puts(ts, [(key.to_vec(), value.to_vec())]);
    // The whole keyspace: a stale stamp is lifted to the next revision.
    let r = block_on(sm.apply(vec![
        entry(1, put(10, b"a", b"1")),
        entry(2, put(5, b"b", b"1")),
    ]))
    .unwrap();
    assert!(matches!(r[..], [Reply::Txn(_), Reply::Txn(_)]), "{r:?}");
    assert_eq!(shared.revisions().current, 11);
    let split = Command::Split {
        at: b"m".to_vec(),
        child: 9,
        epoch: 1,
    };
    assert_eq!(
        block_on(sm.apply(vec![entry(3, split)])).unwrap(),
        vec![Reply::Done]
    );
    // One region of several: refused as from a stale term, nothing
    // written; a fresh stamp applies at itself.
    let r = block_on(sm.apply(vec![
        entry(4, put(11, b"a", b"2")),
        entry(5, put(14, b"a", b"3")),
    ]))
    .unwrap();
    assert!(matches!(r[..], [Reply::StaleTerm, Reply::Txn(_)]), "{r:?}");
    assert_eq!(shared.revisions().current, 14);
    let (view, revs) = shared.read_view();
    assert_eq!(value_at(&*view, revs, b"a", 13), Some(b"1".to_vec()));
}

#[test]
fn a_compaction_raises_one_region_of_several_only_in_its_leaders_term() {
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let split = Command::Split {
        at: b"m".to_vec(),
        child: 9,
        epoch: 1,
    };
    let r = block_on(sm.apply(vec![
        entry(1, puts(10, [(b"a".to_vec(), b"1".to_vec())])),
        entry(2, split),
    ]))
    .unwrap();
    assert!(matches!(r[..], [Reply::Txn(_), Reply::Done]), "{r:?}");
    // Not settled by its leader: nothing changes, the host asks again.
    let r = block_on(sm.apply(vec![entry(3, Command::Compact { revision: 1000 })])).unwrap();
    assert_eq!(r, vec![Reply::StaleTerm]);
    assert_eq!(shared.revisions().current, 10);
    // Settled, but by a leader of another term: nothing changes either.
    let in_term = |term, revision| Command::InTerm {
        term,
        cmd: Box::new(Command::Compact { revision }),
    };
    let r = block_on(sm.apply(vec![entry(4, in_term(0, 20))])).unwrap();
    assert_eq!(r, vec![Reply::StaleTerm]);
    assert_eq!(shared.revisions().current, 10);
    // Settled in the term it applies in: the region moves up, as by a
    // closed timestamp, and is compacted there.
    let r = block_on(sm.apply(vec![entry(5, in_term(1, 20))])).unwrap();
    assert_eq!(r, vec![Reply::Compacted { current: 20 }]);
    assert_eq!(shared.revisions().current, 20);
    assert_eq!(shared.revisions().compacted, 20);
    // At or below the region's revision, a plain compaction applies.
    let r = block_on(sm.apply(vec![entry(6, Command::Compact { revision: 20 })])).unwrap();
    assert!(matches!(r[..], [Reply::Rejected(_)]), "{r:?}");
}

/// One entry that commits two transactions' locks here, the later-stamped
/// first (lock commands are batched in the order they reach the leader):
/// the feed publishes their events in revision order, as etcd's watchers
/// see them, not in the order the entry applied them. (With no lock left
/// after the entry and none holding anything back before it, the entry's
/// own events are published: unsorted, a watcher of this region alone
/// got revision 105 before 103.)
#[test]
fn one_entry_committing_two_locks_publishes_their_events_in_revision_order() {
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let here = shared.region;
    let mut apply = |index, cmd| block_on(sm.apply(vec![entry_in_term(2, index, cmd)])).unwrap();
    apply(1, puts(100, [(b"a".to_vec(), b"0".to_vec())]));
    apply(2, prewrite_put(101, &[99, here], b"a"));
    apply(3, prewrite_put(102, &[99, here], b"b"));
    let mut feed = shared.subscribe();
    let replies = apply(
        4,
        Command::Batch(vec![commit_locked(101, 105), commit_locked(102, 103)]),
    );
    assert!(
        matches!(&replies[..], [Reply::Batch(r)] if r.len() == 2),
        "{replies:?}"
    );
    let batch = feed.try_recv().unwrap();
    let revs: Vec<i64> = batch.events.iter().map(|c| c.revision).collect();
    assert_eq!(revs, vec![103, 105]);
    assert_eq!(batch.resolved, 105);
}

/// A lock widened by a second prewrite (a revoke told of more keys) and
/// committed: the region keeps, beside the outcome, every region the lock
/// named then, so a resolver that read the narrow lock first still
/// finishes them all; forgetting the outcome forgets them.
#[test]
fn a_committed_outcome_keeps_every_region_of_the_widened_lock() {
    use cairn_mvcc::locks::Outcome;
    let (shared, _dir) = region(Arc::new(MemoryEngine::new()));
    let mut sm = StateMachine::new(shared.clone());
    let here = shared.region;
    let mut apply = one_by_one(&mut sm);
    assert!(matches!(
        apply(prewrite_put(10, &[here, 5], b"a")),
        Reply::Revision(_)
    ));
    // The same transaction prewritten again, naming more (another txn
    // body: a widening, not a retry).
    let Command::Prewrite {
        spans, txn, leases, ..
    } = prewrite_put(10, &[here], b"b")
    else {
        unreachable!()
    };
    let widened = Command::Prewrite {
        start_ts: 10,
        primary: here,
        regions: vec![here, 5, 6],
        spans,
        txn,
        leases,
    };
    assert!(matches!(apply(widened), Reply::Revision(_)));
    assert!(matches!(
        apply(commit_locked(10, 20)),
        Reply::Outcome(Some(Outcome::Committed { .. }))
    ));
    let named = || shared.applied().outcome_regions.get(&10).cloned();
    assert_eq!(named(), Some(vec![here, 5, 6]));
    apply(Command::ForgetOutcome { start_ts: 10 });
    assert_eq!(named(), None);
}

#[test]
fn an_applied_record_written_before_outcome_regions_still_decodes_and_back() {
    use super::{Applied, AppliedBeforeOutcomeRegions};
    let mut applied = Applied {
        current_revision: 77,
        ..Default::default()
    };
    applied
        .locks
        .outcomes
        .insert(9, cairn_mvcc::locks::Outcome::RolledBack);
    let new = crate::codec::encode(&applied).unwrap();
    // The old layout is the new one without its last field (an empty map:
    // one byte, its length).
    assert_eq!(new.last(), Some(&0));
    let old = &new[..new.len() - 1];
    assert_eq!(Applied::decode(old).unwrap(), applied);
    // And a record of this version read by the one before (trailing bytes
    // ignored).
    applied.outcome_regions.insert(9, vec![1, 2]);
    let new = crate::codec::encode(&applied).unwrap();
    let back: Applied = crate::codec::decode::<AppliedBeforeOutcomeRegions>(&new)
        .unwrap()
        .into();
    assert_eq!(back.locks, applied.locks);
    assert_eq!(Applied::decode(&new).unwrap(), applied);
}

/// A replica that missed a split installs a snapshot of the parent taken
/// before it (its new leader had not applied the split yet), while it
/// hosts the child already — adopted from the directory, and written to
/// since. The child's keys stay the child's (the snapshot never saw their
/// writes), and the split, applied from the log after the snapshot, leaves
/// the child's record, log and vote as they are.
#[test]
fn a_snapshot_from_before_a_split_keeps_the_childs_keys_and_the_split_its_record() {
    use openraft::storage::RaftSnapshotBuilder;
    let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    // The new leader's replica of the parent, not split yet.
    let there: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (p_there, _d1) = region(there.clone());
    let epoch = p_there.range().epoch;
    let mut sm = StateMachine::new(p_there.clone());
    block_on(sm.apply(vec![
        entry(1, puts(10, [kv("a", "1"), kv("q", "1")])),
        entry(2, puts(11, [kv("b", "1")])),
    ]))
    .unwrap();
    let snapshot = block_on(sm.build_snapshot()).unwrap();

    // Here: both halves adopted from the directory after the split; the
    // child has taken a write of its own.
    let here: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let half = |start: &str, end: &str| crate::RegionRange {
        start: start.into(),
        end: end.into(),
        epoch: epoch + 1,
    };
    super::seed_empty(&*here, 1, half("", "m")).unwrap();
    super::seed_empty(&*here, 9, half("m", "")).unwrap();
    let (parent, _d2) = region(here.clone());
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotDir::open(dir.path()).unwrap());
    let child = RegionShared::load(9, RegionKind::Data, here.clone(), snapshots.clone()).unwrap();
    let mut child_sm = StateMachine::new(child.clone());
    block_on(child_sm.apply(vec![entry(6, puts(20, [kv("q", "2")]))])).unwrap();

    // A member refuses such a snapshot on its way in (its peer service:
    // the state is older than the child's, and overlaps it); one that got
    // here anyway (a child adopted while the snapshot streamed) keeps the
    // child's keys.
    let older = super::newer_here(&*here, 1, &p_there.applied()).unwrap();
    assert_eq!(older, vec![half("m", "").keys()]);
    let mut split_there = p_there.applied();
    split_there.range = half("", "m");
    assert!(super::newer_here(&*here, 1, &split_there)
        .unwrap()
        .is_empty());
    let mut sm = StateMachine::new(parent.clone());
    block_on(sm.install_snapshot(&snapshot.meta, snapshot.snapshot)).unwrap();
    let latest = |key: &str| {
        let revs = Revisions {
            current: 100,
            compacted: 0,
        };
        value_at(&*here.snapshot(), revs, key.as_bytes(), 0)
    };
    assert_eq!(latest("q"), Some(b"2".to_vec()), "the child's write stays");
    assert_eq!(latest("a"), Some(b"1".to_vec()));
    assert_eq!(latest("b"), Some(b"1".to_vec()));

    let split = Command::Split {
        at: b"m".to_vec(),
        child: 9,
        epoch,
    };
    let r = block_on(sm.apply(vec![entry(3, split)])).unwrap();
    assert_eq!(r, vec![Reply::Done]);
    assert_eq!(parent.range(), half("", "m"));
    let again = RegionShared::load(9, RegionKind::Data, here.clone(), snapshots).unwrap();
    assert_eq!(
        again.applied().last_applied.map(|l| l.index),
        Some(6),
        "the child's record is its own"
    );
    assert_eq!(latest("q"), Some(b"2".to_vec()));
}
