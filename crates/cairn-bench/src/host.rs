//! Figures about the machine and the servers rather than the API: the
//! disk's write+fdatasync latency (the floor under every durable write) and
//! a server's footprint (RSS of its processes, bytes under its data dirs).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::stats::{Recorder, RunResult};

/// `total` rounds of a 4 KiB write plus `fdatasync` in a scratch file in `dir`.
pub fn fsync(dir: &Path, total: u64) -> anyhow::Result<RunResult> {
    let path = dir.join(format!(".cairn-bench-fsync-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0xa5u8; 4096];
    let mut rec = Recorder::new();
    let start = Instant::now();
    for _ in 0..total {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        rec.ok(t.elapsed());
    }
    let took = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    let mut r = rec.result("fsync", took);
    r.params
        .insert("dir".into(), json!(dir.display().to_string()));
    r.params.insert("block_bytes".into(), json!(4096));
    Ok(r)
}

/// Resident memory of one process, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb * 1024)
}

/// Bytes of all files under `dir` (apparent sizes, like `du -sb`).
pub fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// The footprint record: summed RSS and data-dir bytes.
pub fn footprint(pids: &[u32], dirs: &[PathBuf], keys: u64) -> anyhow::Result<RunResult> {
    let mut rss = 0;
    for &p in pids {
        rss += rss_bytes(p)?;
    }
    let mut disk = 0;
    for d in dirs {
        disk += dir_bytes(d)?;
    }
    let mut r = RunResult {
        workload: "footprint".into(),
        ..Default::default()
    };
    r.params.insert("keys".into(), json!(keys));
    r.extra.insert("rss_bytes".into(), json!(rss));
    r.extra.insert("disk_bytes".into(), json!(disk));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_and_footprint_measure_something_real() {
        let dir = tempfile_dir();
        let r = fsync(&dir, 5).unwrap();
        assert_eq!(r.ok, 5);
        assert!(r.latency_ms.max > 0.0);
        std::fs::write(dir.join("a"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/b"), vec![0u8; 24]).unwrap();
        assert_eq!(dir_bytes(&dir).unwrap(), 1024);
        let me = std::process::id();
        let f = footprint(&[me], std::slice::from_ref(&dir), 3).unwrap();
        assert!(f.extra["rss_bytes"].as_u64().unwrap() > 1_000_000);
        assert_eq!(f.extra["disk_bytes"].as_u64().unwrap(), 1024);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("cairn-bench-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
