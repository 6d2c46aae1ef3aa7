//! Scan cost with and without key-value separation (0x11 is separated,
//! 0x12 is not): `cargo run --release -p cairn-storage --example scan_cost`.
use std::ops::Bound;
use std::time::Instant;

use cairn_storage::{Durability, Engine, FjallEngine, Snapshot, WriteBatch};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let e = FjallEngine::open(dir.path()).unwrap();
    let n = 400_000u32;
    let vlen: usize = std::env::var("VLEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for space in [0x11u8, 0x12] {
        for chunk in 0..(n / 1000) {
            let mut b = WriteBatch::new();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                let mut k = vec![space];
                k.extend_from_slice(format!("key{i:08}").as_bytes());
                b.put(k, vec![7u8; vlen]);
            }
            e.write(b, Durability::Buffered).unwrap();
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(5));
    for round in 0..3 {
        for space in [0x11u8, 0x12] {
            let lo = Bound::Included(vec![space]);
            let hi = Bound::Excluded(vec![space + 1]);
            let t = Instant::now();
            let full = e.scan(lo.clone(), hi.clone(), false).count();
            let full_t = t.elapsed();
            let t = Instant::now();
            let keys = e.scan_keys(lo, hi).count();
            let keys_t = t.elapsed();
            println!(
                "round {round} space {space:#x} vlen {vlen}: scan {full} in {:?} ({:.0} ns/key), scan_keys {keys} in {:?} ({:.0} ns/key)",
                full_t,
                full_t.as_nanos() as f64 / n as f64,
                keys_t,
                keys_t.as_nanos() as f64 / n as f64
            );
        }
    }
}
