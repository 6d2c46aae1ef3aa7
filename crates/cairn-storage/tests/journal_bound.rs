//! fjall's journal stays bounded when writes spread over many keyspaces,
//! none of which fills its memtable (what made restarts replay hundreds of
//! MiB: `journal_bound.rs`).

use std::time::{Duration, Instant};

use cairn_storage::{Durability, Engine, FjallEngine, Snapshot, WriteBatch};

const MIB: u64 = 1 << 20;

#[test]
fn the_journal_stays_bounded_when_no_memtable_fills() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 80 * MIB;
    let e = FjallEngine::open_with_journal_limit(dir.path(), limit).unwrap();
    // 8 keyspaces × 26 MiB: below the 32 MiB at which one would flush by
    // itself, 208 MiB of journal in all. Random values, so that the
    // journal's compression does not shrink them.
    let mut last = Vec::new();
    let mut rng = fastrand::Rng::with_seed(17);
    let mut value = vec![0u8; 4096];
    let per_space = 26 * MIB / value.len() as u64;
    for i in 0..per_space {
        let mut b = WriteBatch::new();
        for space in 0x20u8..0x28 {
            let mut key = vec![space];
            key.extend_from_slice(&i.to_be_bytes());
            rng.fill(&mut value);
            if i == per_space - 1 {
                last.push((key.clone(), value.clone()));
            }
            b.put(key, value.clone());
        }
        e.write(b, Durability::Sync).unwrap();
    }
    // Flushes run in the background: give them time to finish.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut journal = e.journal_bytes().unwrap();
    while journal >= 2 * limit && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        e.sync().unwrap();
        journal = e.journal_bytes().unwrap();
    }
    assert!(
        journal < 2 * limit,
        "journal {} MiB after 208 MiB written with a {} MiB bound",
        journal / MIB,
        limit / MIB
    );
    // Nothing was lost to the flushes.
    drop(e);
    let e = FjallEngine::open(dir.path()).unwrap();
    for (key, value) in last {
        assert_eq!(e.get(&key).unwrap(), Some(value));
    }
}
