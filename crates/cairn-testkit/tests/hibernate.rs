//! Idle data regions hibernate (`node::hibernate`): their replicas stop
//! their Raft ticks once the region is quiet. A sleeping region serves a
//! write at once, and stays asleep while it takes writes or is hashed; a write that
//! missed a follower reaches it all the same. A leader back in its term
//! after a restart reads its writes from before the crash, or, deposed
//! before they commit, sends its reads to the new leader. When its
//! leader stops or is cut off, the members' beats wake its followers,
//! which elect a new leader with no client's help. A restarted member
//! hears its leader again.

use std::time::{Duration, Instant};

use cairn_store::{Node, DATA_REGION, META_REGION};
use cairn_testkit::{kv, InProcessCluster};

/// The data region holding `key` on `node`.
fn region_of(node: &Node, key: &[u8]) -> u64 {
    node.regions_overlapping(key, None)[0].0.id
}

/// Waits until every running member's replica of `region` sleeps.
async fn wait_asleep(c: &InProcessCluster, region: u64, members: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !members
        .iter()
        .all(|&i| c.node(i).sleeping_regions().contains(&region))
    {
        assert!(
            Instant::now() < deadline,
            "region {region} never slept on {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader of `region` as `member` sees it.
fn leader_seen(c: &InProcessCluster, member: usize, region: u64) -> Option<u64> {
    c.node(member)
        .region(region)
        .ok()
        .and_then(|r| r.raft.metrics().borrow().current_leader)
}

/// Waits until the members other than `leader` (whose ID is `gone`) see
/// another leader of `region`; returns their indexes.
async fn wait_replaced(c: &InProcessCluster, region: u64, leader: usize, gone: u64) -> Vec<usize> {
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    eventually(
        &format!("region {region} replaces its leader {gone:x}"),
        || {
            others
                .iter()
                .all(|&i| leader_seen(c, i, region).is_some_and(|l| l != gone))
        },
    )
    .await;
    others
}

/// `region`'s Raft term on `member`.
fn term(c: &InProcessCluster, member: usize, region: u64) -> u64 {
    c.raft_metrics(member, region).current_term
}

/// Waits up to 10 s for `ok`; fails saying `what` did not happen.
async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn split_and_sleep() -> (InProcessCluster, u64) {
    let mut c = InProcessCluster::start(3).await;
    // What elections alone do: the balancer would move the new region's
    // leader (both regions are led by one member after the split).
    c.set_leader_balance(false);
    c.wait_leader(DATA_REGION).await;
    let mut client = c.kv(0).await;
    kv::put(&mut client, "z", "0").await.unwrap();
    c.split_at("m").await;
    let region = region_of(c.node(0), b"z");
    wait_asleep(&c, region, &[0, 1, 2]).await;
    (c, region)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_region_serves_at_once_and_sleeps_again() {
    let (c, region) = split_and_sleep().await;
    let before = term(&c, 0, region);
    let mut client = c.kv(1).await;
    // Connected first (the channel is lazy): only the put is timed.
    kv::get(&mut client, "a", true).await.unwrap();
    let started = Instant::now();
    kv::put(&mut client, "z", "1").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a put to a sleeping region took {:?}",
        started.elapsed()
    );
    assert_eq!(
        kv::get(&mut client, "z", false).await.unwrap().as_deref(),
        Some("1")
    );
    // Woken by the read, asleep again once quiet, with no election.
    wait_asleep(&c, region, &[0, 1, 2]).await;
    assert_eq!(term(&c, 0, region), before, "sleeping moved the term");
    c.shutdown().await;
}

/// Waits up to 10 s until every member's replica serves `value` for
/// `key` from its own state (a serializable read). Raft metrics are
/// published after the fact, so the leader's applied index can lag the
/// write it answered: comparing indexes could pass before anyone applied.
async fn serves_everywhere(c: &InProcessCluster, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in 0..3 {
        let mut client = c.kv(m).await;
        loop {
            let got = kv::get(&mut client, key, true).await.unwrap();
            if got.as_deref() == Some(value) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {m}'s replica serves {got:?} for {key}, never {value:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes need no Raft ticks: a sleeping region commits them, every
/// replica applies them (the append after the commit tells the
/// followers), and nobody wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_region_takes_writes_without_waking() {
    let (c, region) = split_and_sleep().await;
    let before = term(&c, 0, region);
    for (i, member) in [0, 1, 2, 0, 1].into_iter().enumerate() {
        let mut client = c.kv(member).await;
        kv::put(&mut client, "z", &format!("w{i}")).await.unwrap();
        for m in 0..3 {
            assert!(
                c.node(m).sleeping_regions().contains(&region),
                "put {i} woke member {m}'s replica"
            );
        }
    }
    serves_everywhere(&c, "z", "w4").await;
    for m in 0..3 {
        assert!(c.node(m).sleeping_regions().contains(&region));
    }
    assert_eq!(term(&c, 0, region), before, "the writes moved the term");
    c.shutdown().await;
}

/// A hash of the whole store (`HashKV`, the corruption check) asks every
/// region's leader for a read index: one round, which needs no ticks, and
/// wakes nobody; nor does the corruption check's ask to each member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hash_of_the_store_leaves_sleeping_regions_asleep() {
    let (c, region) = split_and_sleep().await;
    let mut hashes = Vec::new();
    for m in [0, 1, 2, 0] {
        hashes.push(c.node(m).hash_kv(0).await.unwrap().hash);
        for i in 0..3 {
            assert!(
                c.node(i).sleeping_regions().contains(&region),
                "member {m}'s hash woke member {i}'s replica"
            );
        }
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "the members hash apart: {hashes:?}"
    );
    // The corruption check: the first region's leader hashes, and asks
    // every member for its hash (addressed to the first region, answered
    // by the member). A follower replica woken by that ask, under a leader
    // that sleeps on, would hear nothing and campaign.
    wait_asleep(&c, DATA_REGION, &[0, 1, 2]).await;
    let first = c.wait_leader(DATA_REGION).await;
    let terms: Vec<u64> = (0..3).map(|m| term(&c, m, DATA_REGION)).collect();
    for round in 0..2 {
        let corrupt = c.node(first).check_corruption().await.unwrap();
        assert!(corrupt.is_empty(), "found corrupt: {corrupt:?}");
        for i in 0..3 {
            for rg in [DATA_REGION, region] {
                assert!(
                    c.node(i).sleeping_regions().contains(&rg),
                    "check {round} woke member {i}'s replica of region {rg}"
                );
            }
        }
    }
    // Past a woken follower's election timeout: nobody campaigned.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after: Vec<u64> = (0..3).map(|m| term(&c, m, DATA_REGION)).collect();
    assert_eq!(
        after, terms,
        "the corruption check moved the first region's term"
    );
    c.shutdown().await;
}

/// A write to a sleeping region whose append missed a follower (cut off
/// for a moment) reaches it with no later write (openraft resends it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_missed_a_sleeping_follower_reaches_it() {
    let (c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    // Not the meta region's leader: the put needs its timestamp.
    let meta = c.wait_leader(META_REGION).await;
    let follower = (1..3)
        .map(|d| (leader + d) % 3)
        .find(|&f| f != meta)
        .unwrap();
    let (l, f) = (c.nodes[leader].id, c.nodes[follower].id);
    c.node(leader).pool.faults.partition(l, f);
    let mut client = c.kv(leader).await;
    kv::put(&mut client, "z", "missed").await.unwrap();
    c.heal();
    serves_everywhere(&c, "z", "missed").await;
    wait_asleep(&c, region, &[0, 1, 2]).await;
    c.shutdown().await;
}

/// A sleeping region's followers that got a write but not the notice that
/// it committed (a lost empty append, which openraft does not resend, and
/// the sleeping leader sends no heartbeat) apply it all the same: they
/// ask the leader for a read index, whose round tells them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sleeping_followers_that_missed_a_commit_notice_apply_the_write() {
    let (c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    c.node(leader).pool.faults.drop_empty_appends(true);
    // Asleep, the leader's metrics are settled; after the put they may lag.
    let before = c.raft_metrics(leader, region).last_log_index;
    let mut client = c.kv(leader).await;
    kv::put(&mut client, "z", "unheard").await.unwrap();
    eventually("the followers get the entry", || {
        (0..3).all(|i| c.raft_metrics(i, region).last_log_index > before)
    })
    .await;
    c.heal();
    serves_everywhere(&c, "z", "unheard").await;
    c.shutdown().await;
}

/// A leader that crashes with a write appended and not yet committed, and
/// restarts before its (sleeping) followers elect anyone, comes back as
/// leader in the same term (openraft restores it). A linearizable read
/// there must not be answered below that write: it commits later, at the
/// revision it was stamped with before the crash, below the read's header
/// (`restored_lead`). Appends with entries stay dropped across the restart
/// so the write cannot commit before the read is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_restored_in_its_term_reads_its_uncommitted_writes() {
    let (mut c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    restart_with_unheard_writes(&mut c, region, leader, &[("z", "in flight")]).await;
    followers_elect(&c, region, leader, true);
    let mut client = c.kv(leader).await;
    let read = tokio::spawn(async move { kv::get(&mut client, "z", false).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.heal();
    let got = read.await.unwrap().unwrap();
    assert_eq!(
        got.as_deref(),
        Some("in flight"),
        "read below the restored log"
    );
    c.shutdown().await;
}

/// A leader restored in its term (as above) whose followers elect another
/// leader before its restored writes commit: those writes are truncated,
/// and the new leader's log, idle, never reaches as far. A read it was
/// holding until the restored log applied asks the new leader instead of
/// waiting until its request times out (`RestoredLead::settled`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_on_a_restored_leader_deposed_before_its_log_commits_asks_the_new_leader() {
    let (mut c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    let gone = c.nodes[leader].id;
    // Two restarts: the restored log ends two entries past the followers'
    // logs, one past where a new leader's first entry will land. (One
    // restart cannot: a leader has one group of writes in flight at most.)
    let writes = [("y1", "lost"), ("y2", "lost")];
    restart_with_unheard_writes(&mut c, region, leader, &writes).await;
    let mut client = c.kv(leader).await;
    let read = tokio::spawn(async move { kv::get(&mut client, "z", false).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !read.is_finished(),
        "read before the restored log committed"
    );
    c.isolate(leader);
    followers_elect(&c, region, leader, true);
    wait_replaced(&c, region, leader, gone).await;
    c.heal();
    let got = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the read still waits for the truncated log")
        .unwrap();
    match got {
        Ok(v) => assert_eq!(v.as_deref(), Some("0")),
        Err(e) => panic!("the read waited for the truncated log and failed: {e}"),
    }
    c.shutdown().await;
}

/// Lets (or stops) the followers of `region` (all but `leader`) campaign.
fn followers_elect(c: &InProcessCluster, region: u64, leader: usize, on: bool) {
    for f in [(leader + 1) % 3, (leader + 2) % 3] {
        let r = c.node(f).region(region).unwrap();
        r.raft.runtime_config().elect(on);
    }
}

/// For each of `writes`: a put to `region`'s `leader` appended there and
/// reaching no follower, then a crash and restart of the leader, which
/// comes back as leader in its term with the write in its log. Appends
/// with entries stay dropped from the leader, and its followers campaign
/// for nobody, however slow its stops and restarts (until
/// [`followers_elect`]).
async fn restart_with_unheard_writes(
    c: &mut InProcessCluster,
    region: u64,
    leader: usize,
    writes: &[(&'static str, &'static str)],
) {
    let before = c.raft_metrics(leader, region);
    c.nodes[leader].faults.drop_entry_appends(true);
    followers_elect(c, region, leader, false);
    for (i, &(key, value)) in writes.iter().enumerate() {
        let mut client = c.kv(leader).await;
        let put = tokio::spawn(async move { kv::put(&mut client, key, value).await });
        let want = before.last_log_index.map(|l| l + 1 + i as u64);
        eventually("the put is appended on the leader", || {
            c.raft_metrics(leader, region).last_log_index >= want
        })
        .await;
        c.stop(leader).await;
        put.abort();
        c.restart_keeping_faults(leader).await;
        let after = c.raft_metrics(leader, region);
        assert_eq!(
            (after.current_leader, after.current_term),
            (Some(c.nodes[leader].id), before.current_term),
            "not restored as leader in its term"
        );
        assert!(after.last_log_index >= want, "the put was lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_regions_stopped_leader_is_replaced_by_itself() {
    let (mut c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    let gone = c.nodes[leader].id;
    c.stop(leader).await;
    // No request: the beats alone wake the followers.
    let others = wait_replaced(&c, region, leader, gone).await;
    let mut client = c.kv(others[0]).await;
    kv::put(&mut client, "z", "2").await.unwrap();
    // The stopped member comes back and catches up.
    c.restart(leader).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut back = c.kv(leader).await;
        if kv::get(&mut back, "z", true)
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some("2")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_regions_cut_off_leader_is_replaced_and_steps_down() {
    let (c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    let cut = c.nodes[leader].id;
    c.isolate(leader);
    let others = wait_replaced(&c, region, leader, cut).await;
    let mut client = c.kv(others[0]).await;
    kv::put(&mut client, "z", "3").await.unwrap();
    c.heal();
    // The old leader learns of the new one.
    let new = leader_seen(&c, others[0], region).unwrap();
    eventually("the healed member follows the new leader", || {
        leader_seen(&c, leader, region) == Some(new)
    })
    .await;
    c.shutdown().await;
}

/// A follower of a sleeping region that restarts hears its leader (woken
/// by the follower's new boot id), holding its own election until then:
/// no election, and the region sleeps again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_follower_of_a_sleeping_region_starts_no_election() {
    let (mut c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    let follower = (leader + 1) % 3;
    let before = term(&c, leader, region);
    c.stop(follower).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.restart(follower).await;
    wait_asleep(&c, region, &[0, 1, 2]).await;
    assert_eq!(
        term(&c, leader, region),
        before,
        "the restart moved the term"
    );
    assert_eq!(c.wait_leader(region).await, leader);
    c.shutdown().await;
}

/// A restarted member's replicas hold their own elections for a while
/// after it starts (`hibernate::hold_elections`): its sleeping leaders
/// hear of the restart only from a beat, after it serves, and meanwhile
/// its replicas' election timers run out. Here nothing reaches the
/// restarted follower for longer than its longest election timeout
/// (0.9–1.2 s after its region opened), as on a slow start: it must not
/// campaign, though its own messages go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_follower_holds_its_election_while_its_leader_cannot_reach_it() {
    let (mut c, region) = split_and_sleep().await;
    let leader = c.wait_leader(region).await;
    let follower = (leader + 1) % 3;
    let deaf = c.nodes[follower].id;
    // The hold ends `RESTART_GRACE` (2 s) after the member serves, which
    // is after `restarting`: a term read later than that (a slow start, a
    // stalled test task) proves nothing, so the restart is tried again.
    let mut checked = false;
    for _try in 0..5 {
        let before = term(&c, follower, region);
        c.stop(follower).await;
        for i in (0..3).filter(|&i| i != follower) {
            c.node(i).pool.faults.partition(c.nodes[i].id, deaf);
        }
        let restarting = Instant::now();
        c.restart(follower).await;
        tokio::time::sleep(Duration::from_millis(1250)).await;
        let after = term(&c, follower, region);
        if restarting.elapsed() < Duration::from_millis(1950) {
            assert_eq!(after, before, "the restarted follower campaigned");
            checked = true;
            break;
        }
    }
    assert!(checked, "no restart was quick enough to check its hold");
    c.heal();
    // It follows: a write through the leader (retried: the follower may
    // campaign once its hold ends) reaches its replica. (Its restored
    // vote names the leader at once, so that proves nothing.)
    let mut client = c.kv(leader).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = kv::put(&mut client, "z", "healed").await {
        assert!(Instant::now() < deadline, "the put after healing: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serves_everywhere(&c, "z", "healed").await;
    c.shutdown().await;
}
