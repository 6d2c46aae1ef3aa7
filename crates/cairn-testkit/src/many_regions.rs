//! Many-regions mode: the same tests, on a keyspace cut into many regions.
//!
//! With `CAIRN_TEST_REGIONS=1` in the environment, every in-process
//! cluster this crate starts with no split policy of its own is, before
//! the test sees it:
//!
//! - **cut by hand** at [`split_keys`]: between keys tests use (every
//!   digit and letter, and inside each letter, so `k1` and `k7` land in
//!   different regions), so a prefix, a range, a Txn, a lease or a lock
//!   of an ordinary test crosses regions;
//! - **left splitting by itself** at a few KiB ([`SPLIT_BYTES`]), so a
//!   test that writes more than a handful of keys grows more regions
//!   while it runs, splits racing its requests;
//! - **never merged** (the cut regions are small and cold: merged, they
//!   would be one region again).
//!
//! A cluster of `cairn serve` processes (`ProcessCluster`) is cut the
//! same way through `cairnpb.Regions/Split`, its members started with
//! `--region-split-bytes` at [`SPLIT_BYTES`] ([`serve_args`],
//! [`cut_processes`]): SIGKILLs, SIGSTOPs and restarts then land on
//! regions splitting and hibernating.
//!
//! So a test written against one region runs unchanged across many, and
//! its assertions, which are etcd's semantics, must still hold: the
//! issue-17 promise that splitting changes nothing a client can see.
//!
//! Tests of regions themselves (`regions`, `range_across`,
//! `txn_across`, ...) lay out their own regions and are not run in this
//! mode; `test.sh` names the test files that are. A test that asserts
//! something only one region can show (which region a key is in, the
//! data region's leader) checks [`is_on`].

use std::time::{Duration, Instant};

use cairn_store::SplitPolicy;

/// The environment variable that turns many-regions mode on.
pub const ENV: &str = "CAIRN_TEST_REGIONS";

/// A region splits itself past this many bytes of live keys and values.
pub const SPLIT_BYTES: u64 = 4 << 10;

/// True when this test run is in many-regions mode.
pub fn is_on() -> bool {
    std::env::var(ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The split policy a cluster with no policy of its own gets: splitting
/// at [`SPLIT_BYTES`] in many-regions mode, never otherwise.
pub fn policy(asked: SplitPolicy) -> SplitPolicy {
    if asked != SplitPolicy::default() || !is_on() {
        return asked;
    }
    SplitPolicy {
        bytes: SPLIT_BYTES,
        qps: 0,
        merge_bytes: 0,
    }
}

/// Where a cluster is cut by hand: at each digit and lowercase letter, and
/// inside each letter after `5` (`k1` | `k5` | `k7`): 63 regions. (Five
/// cuts a letter made 181, and a debug build of two such clusters at once
/// spent both cores waking them: every `HashKV` woke every region then.)
pub fn split_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (b'0'..=b'9').chain(b'a'..=b'z').map(|c| vec![c]).collect();
    keys.extend((b'a'..=b'z').map(|c| vec![c, b'5']));
    keys.sort();
    keys
}

/// Cuts `nodes`' keyspace at every key of [`split_keys`] (through the
/// first node), then waits until each node routes every cut to its own
/// region.
pub(crate) async fn cut(nodes: &[&std::sync::Arc<cairn_store::Node>]) {
    let first = nodes[0];
    // Highest first: each cut then splits the region holding the low
    // keys, whose leader is long elected, and not a region just born.
    for at in split_keys().into_iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let split = match first.route(&at) {
                Ok(r) if r.shared.range().start == at => break,
                Ok(r) => first.split_region(r.id, at.clone()).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match split {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("splitting at {at:?}: {e}"),
            }
        }
    }
    // Every node routes every cut to a region with a leader: the test
    // starts on regions that are all serving.
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in nodes {
        for at in split_keys() {
            while !node.route(&at).is_ok_and(|r| {
                r.shared.range().start == at && r.raft.metrics().borrow().current_leader.is_some()
            }) {
                assert!(Instant::now() < deadline, "cut at {at:?} not everywhere");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The `cairn serve` arguments that give a process cluster the mode's
/// split policy, unless `asked` sets one of its own: splitting at
/// [`SPLIT_BYTES`] (never merging, as every process cluster here).
pub(crate) fn serve_args(asked: &[String]) -> Vec<String> {
    if !is_on() || asked.iter().any(|a| a.starts_with("--region-split-bytes")) {
        return Vec::new();
    }
    vec!["--region-split-bytes".into(), SPLIT_BYTES.to_string()]
}

/// [`cut`] for a cluster of `cairn serve` processes at `endpoints`: splits
/// through the first (`cairnpb.Regions/Split`), then waits until every
/// member lists every cut as a region with a leader.
pub(crate) async fn cut_processes(endpoints: &[String]) {
    use cairn_api::cairnpb::regions_client::RegionsClient;
    use cairn_api::cairnpb::{RegionListRequest, RegionSplitRequest};
    let mut first = RegionsClient::new(crate::secured::channel(&endpoints[0]));
    for at in split_keys().into_iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = first.split(RegionSplitRequest { key: at.clone() }).await {
            assert!(Instant::now() < deadline, "splitting at {at:?}: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for ep in endpoints {
        let mut member = RegionsClient::new(crate::secured::channel(ep));
        loop {
            let led: Vec<Vec<u8>> = match member.list(RegionListRequest {}).await {
                Ok(r) => r
                    .into_inner()
                    .regions
                    .into_iter()
                    .filter(|r| r.leader != 0)
                    .map(|r| r.start)
                    .collect(),
                Err(_) => Vec::new(),
            };
            if split_keys().iter().all(|k| led.contains(k)) {
                eprintln!(
                    "many-regions mode: {ep} lists {} regions with leaders",
                    led.len()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cuts not everywhere: {ep} lists {led:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
