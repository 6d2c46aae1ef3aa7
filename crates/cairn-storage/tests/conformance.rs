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
