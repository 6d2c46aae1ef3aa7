//! Runs the engine conformance suite against every engine, plus the
//! durability property only a disk engine has.

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
