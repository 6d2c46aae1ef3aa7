//! A store left quiet after a burst of writes flushes the memtables they
//! filled, once (`quiet_flush.rs`), and leaves small ones alone.

use std::time::{Duration, Instant};

use cairn_storage::{Durability, Engine, FjallEngine, Snapshot, WriteBatch};

const MIB: u64 = 1 << 20;

#[test]
fn a_quiet_store_flushes_the_memtables_its_writes_filled() {
    let dir = tempfile::tempdir().unwrap();
    let e = FjallEngine::open(dir.path()).unwrap();
    // 4 MiB into one keyspace, 16 KiB into another; random values, so
    // that the tables' compression does not shrink them.
    let mut rng = fastrand::Rng::with_seed(28);
    let mut value = vec![0u8; 4096];
    let mut small = Vec::new();
    for i in 0..1024u64 {
        rng.fill(&mut value);
        let mut b = WriteBatch::new();
        b.put([&[0x20u8][..], &i.to_be_bytes()].concat(), value.clone());
        if i < 4 {
            b.put([&[0x21u8][..], &i.to_be_bytes()].concat(), value.clone());
            small = value.clone();
        }
        e.write(b, Durability::Sync).unwrap();
    }
    assert!(
        e.size_in_use() - e.memtable_bytes() < MIB,
        "nothing in tables yet"
    );
    assert!(e.memtable_bytes() >= 4 * MIB, "{}", e.memtable_bytes());
    // Not while writes are recent.
    assert!(!e.flush_if_quiet().unwrap());
    let written = Instant::now();
    let flushed = loop {
        std::thread::sleep(Duration::from_millis(200));
        if e.flush_if_quiet().unwrap() {
            break written.elapsed();
        }
        assert!(written.elapsed() < Duration::from_secs(10), "never flushed");
    };
    assert!(
        flushed >= Duration::from_secs(2),
        "flushed after {flushed:?}"
    );
    // The big memtable went to a table (fjall flushes it in the
    // background); the small one stays in memory.
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.size_in_use() - e.memtable_bytes() < 4 * MIB {
        assert!(
            Instant::now() < deadline,
            "tables {} B, memtables {} B",
            e.size_in_use() - e.memtable_bytes(),
            e.memtable_bytes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(e.memtable_bytes() > 0 && e.memtable_bytes() < MIB);
    // Once per quiet spell.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!e.flush_if_quiet().unwrap());
    // Nothing lost.
    drop(e);
    let e = FjallEngine::open(dir.path()).unwrap();
    assert_eq!(
        e.get(&[&[0x20u8][..], &1023u64.to_be_bytes()].concat())
            .unwrap(),
        Some(value.clone())
    );
    assert_eq!(
        e.get(&[&[0x21u8][..], &3u64.to_be_bytes()].concat())
            .unwrap(),
        Some(small)
    );
}
