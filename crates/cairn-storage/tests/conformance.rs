//! Runs the engine conformance suite against every engine, plus the
//! durability property only a disk engine has.

use std::ops::Bound;

use cairn_storage::{
    conformance, Durability, Engine, FjallEngine, MemoryEngine, Snapshot, WriteBatch,
};

#[test]
fn memory_engine_conforms() {
    conformance::run_all(&|| Box::new(MemoryEngine::new()));
}

#[test]
fn fjall_engine_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    conformance::run_all(&|| {
        let dir = tempfile::tempdir().unwrap();
        let e = FjallEngine::open(dir.path()).unwrap();
        dirs.borrow_mut().push(dir);
        Box::new(e)
    });
}

#[test]
fn fjall_engine_keeps_synced_writes_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = FjallEngine::open(dir.path()).unwrap();
        let mut b = WriteBatch::new();
        b.put(vec![0x01, 1], b"log".to_vec());
        b.put(vec![0x10, 1], b"data".to_vec());
        e.write(b, Durability::Sync).unwrap();
    }
    let e = FjallEngine::open(dir.path()).unwrap();
    assert_eq!(e.get(&[0x01, 1]).unwrap(), Some(b"log".to_vec()));
    let snap = e.snapshot();
    assert_eq!(
        snap.get(&[0x10, 1]).unwrap(),
        Some(b"data".to_vec()),
        "reopened spaces visible to snapshots"
    );
}

#[test]
fn fjall_engine_counts_the_latest_index_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = |i: u32| [&[0x11u8][..], format!("k{i:05}").as_bytes()].concat();
    {
        let e = FjallEngine::open(dir.path()).unwrap();
        let mut b = WriteBatch::new();
        for i in 0..3_000 {
            b.put(key(i), vec![1]);
        }
        e.write(b, Durability::Sync).unwrap();
        let mut d = WriteBatch::new();
        d.delete_range(key(1_000), key(2_000));
        e.write(d, Durability::Sync).unwrap();
    }
    let e = FjallEngine::open(dir.path()).unwrap();
    let snap = e.snapshot();
    let all = (Bound::Included(vec![0x11]), Bound::Excluded(vec![0x12]));
    assert_eq!(
        snap.count_keys(all.0.clone(), all.1.clone()).unwrap(),
        2_000
    );
    let mut b = WriteBatch::new();
    b.put(key(1_500), vec![2]);
    b.delete(key(0));
    e.write(b, Durability::Sync).unwrap();
    assert_eq!(
        e.snapshot().count_keys(all.0.clone(), all.1).unwrap(),
        2_000
    );
    assert_eq!(
        e.snapshot()
            .count_keys(Bound::Included(key(1_000)), Bound::Excluded(key(2_000)))
            .unwrap(),
        1
    );
}

/// Writers of the latest index (puts, deletes, range deletes) and of
/// another keyspace race snapshots: every snapshot's count of the latest
/// index is the number of its keys it scans (whether it carries the
/// in-memory count or, taken during a commit, counts by scanning).
#[test]
fn fjall_engine_counts_stay_in_step_with_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(FjallEngine::open(dir.path()).unwrap());
    let key = |i: u64| [&[0x11u8][..], format!("k{i:04}").as_bytes()].concat();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (e, stop) = (e.clone(), stop.clone());
        writers.push(std::thread::spawn(move || {
            let mut x = w + 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (x >> 33) % 2_000;
                let mut b = WriteBatch::new();
                match (w, (x >> 20) % 8) {
                    // A batch that touches only the versions.
                    (1, _) => b.put([&[0x10u8][..], &i.to_be_bytes()].concat(), vec![1]),
                    (_, 0) => b.delete_range(key(i), key(i + 40)),
                    (_, 1..=2) => b.delete(key(i)),
                    _ => {
                        b.put(key(i), vec![1]);
                        b.put(key(i + 1), vec![1]);
                        b.delete(key(i + 1));
                    }
                }
                e.write(b, Durability::Buffered).unwrap();
            }
        }));
    }
    let all = || (Bound::Included(vec![0x11]), Bound::Excluded(vec![0x12]));
    let started = std::time::Instant::now();
    let mut checked = 0;
    while started.elapsed() < std::time::Duration::from_secs(2) || checked < 20 {
        let snap = e.snapshot();
        let (lo, hi) = all();
        let scanned = snap.scan_keys(lo.clone(), hi.clone()).count() as u64;
        assert_eq!(snap.count_keys(lo, hi).unwrap(), scanned);
        let (lo, hi) = (Bound::Excluded(key(checked % 2_000)), Bound::Unbounded);
        let scanned = snap.scan_keys(lo.clone(), hi.clone()).count() as u64;
        assert_eq!(snap.count_keys(lo, hi).unwrap(), scanned);
        checked += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
}
