//! Crash points inside a member, placed one at a time: `cairn serve`
//! processes built with `--features failpoints` (tests/robustness/run.sh
//! runs this file; a plain `cargo test` builds nothing here). The torture
//! runs arm crash points at random; these place one where a past run found
//! a member that could not start again.

#![cfg(feature = "failpoints")]

use std::time::{Duration, Instant};

use cairn_testkit::{kv, ProcessCluster};

/// The running member leading the data region, once one does.
async fn leader(c: &ProcessCluster, skip: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = c.leader(skip).await {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member whose log fell behind its leader's purge is sent a snapshot.
/// openraft 0.9 purges the member's log up to it as it queues the install,
/// before the install is written: a member that died in between had its
/// log purged past its applied state, and openraft refused every start
/// after (`purge_upto <= snapshot_last_log_id`; seed 3502 of the process
/// torture). Now the purge goes with the install's own batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_dies_installing_a_snapshot_starts_again() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_cairn"));
    let args = ["--snapshot-count".to_string(), "10".to_string()];
    let mut c = ProcessCluster::start_with(bin, 3, &args);
    let l = leader(&c, &[]).await;
    let victim = (l + 1) % 3;
    c.kill(victim);
    // Through either live member, trying the other after a failure (a
    // leader may change under load).
    let mut at = l;
    let mut client = kv::connect(&c.client_addr(at)).await;
    for i in 0..300 {
        let key = format!("k{i:03}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = kv::put(&mut client, &key, "v").await {
            assert!(Instant::now() < deadline, "put {key}: {e}");
            at = if at == l { (l + 2) % 3 } else { l };
            client = kv::connect(&c.client_addr(at)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    c.restart_with_env(victim, &[("FAILPOINTS", "raft-snapshot-install=panic")]);
    c.wait_exited(victim, Duration::from_secs(30), "no snapshot was installed")
        .await;
    let log = c.run_log(victim, 2);
    assert!(
        log.contains("failpoint raft-snapshot-install panic"),
        "the member died elsewhere\n{log}"
    );
    c.restart(victim);
    // Serving, with every key: Raft may fail after the member answers
    // status, so the read itself is what must succeed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut k = kv::connect(&c.client_addr(victim)).await;
        let read = tokio::time::timeout(Duration::from_secs(5), kv::prefix(&mut k, "k", false));
        match read.await {
            Ok(Ok(got)) if got.kvs.len() == 300 => break,
            other => assert!(
                Instant::now() < deadline,
                "the member does not serve every key again: {other:?}\n{}",
                c.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
