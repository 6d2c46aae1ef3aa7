//! The corruption check, as etcd's `--experimental-corrupt-check-time`
//! runs it: every interval the first data region's leader hashes the
//! whole store's key history at one revision (`HashKV` over every region,
//! `node::store_hash`) and asks every other member for its hash at that
//! same revision over the peer service (a member answers once its regions
//! hold everything at or below it). With one region the revision is the
//! one the leader's replica resolved; with several, a read timestamp, each
//! member's regions caught up to it through their leaders (an idle
//! region's replica may have resolved only its last write). Hashes are
//! compared only between members with the same compaction map (a
//! compaction applied in a region on one member and not yet on another
//! leaves them different histories); where the regions' boundaries are
//! does not matter (a split or merge applied on one member and not yet on
//! another hashes the same keys). Members hashed alike must agree: they
//! applied the same entries. One that disagrees with the majority — or,
//! when no hash has a majority, with the leader, as etcd 3.4 decides —
//! gets the `CORRUPT` alarm, raised through Raft like `NOSPACE`.
//!
//! While `CORRUPT` is raised every member's state machine refuses writes,
//! compactions, lease grants and revokes with `etcdserver: corrupt
//! cluster` (`DataLoss`), as etcd's corrupt applier does; reads still
//! work, so the data can be inspected and backed up. An operator repairs
//! or replaces the member (restore it from a backup) and disarms the alarm.
//!
//! A member that does not answer in time is skipped for that round: the
//! check looks for members that disagree, not for members that are down.
//! So is one of the previous version (it does not know the ask).
//!
//! At start-up (etcd's `--experimental-initial-corrupt-check`), before it
//! serves clients, a member compares its history with every reachable
//! peer's, and refuses to start if one differs. It cannot ask the regions'
//! leaders to catch it up (it does not serve its peers yet), so it hashes
//! each of its regions' key spans at the revision that region resolved
//! here, and asks each peer for its hash of the same spans at the same
//! revisions (`ForwardOp::HashSpansAt`), its regions caught up by
//! themselves. One revision for the whole store — the lowest any region
//! here resolved — would leave out everything written after the coldest
//! region's last write: with hundreds of regions, hours of history. The
//! peers are asked at once and given 6 s; a peer gives what spans it can
//! within 4 s (`node::store_hash`), and the spans it could not hash are
//! counted in a warning, not compared. A peer of the previous version
//! refuses that ask and is asked for one hash of the whole store at that
//! lowest revision instead.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use cairn_mvcc::locks::KeySpan;
use cairn_raft::ALARM_CORRUPT as CORRUPT;

use crate::node::{CatchUp, Node, StoreHash, DATA_REGION};
use crate::remote::{self, ForwardOk, ForwardOp};
use crate::{Error, Result};

/// How long the start-up check waits for a peer's hash.
const PEER_WAIT: Duration = Duration::from_secs(6);

impl Node {
    /// One round of the check (see the module essay), on the first data
    /// region's leader only; returns the members found corrupt.
    pub async fn check_corruption(&self) -> Result<Vec<u64>> {
        let r = self.region(DATA_REGION)?;
        let voters: Vec<u64> = {
            let m = r.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(self.id) {
                return Ok(Vec::new());
            }
            m.membership_config.membership().voter_ids().collect()
        };
        let (at, catch_up) = self.hash_point().await?;
        let mine = self.store_hash(at, at, catch_up).await?;
        let mut hashes = vec![(self.id, mine.hash.hash)];
        for peer in voters.iter().copied().filter(|&p| p != self.id) {
            match self.peer_store_hash(peer, at, catch_up).await {
                // Only a hash over the same compactions is comparable.
                Ok(theirs) if theirs.comparable(&mine) => hashes.push((peer, theirs.hash.hash)),
                Ok(_) => {}
                Err(e) => tracing::debug!(peer, "corruption check: no hash: {e}"),
            }
        }
        cairn_raft::metrics::CORRUPTION_HASHES_COMPARED.inc_by(hashes.len() as u64 - 1);
        let mut votes: HashMap<u32, usize> = HashMap::new();
        for &(_, h) in &hashes {
            *votes.entry(h).or_default() += 1;
        }
        let good = votes
            .iter()
            .find(|&(_, &n)| n * 2 > voters.len())
            .map_or(mine.hash.hash, |(&h, _)| h);
        let corrupt: Vec<u64> = hashes
            .iter()
            .filter(|&&(_, h)| h != good)
            .map(|&(m, _)| m)
            .collect();
        let raised = self.store_alarms();
        for &member in &corrupt {
            tracing::error!(
                member = format_args!("{member:x}"),
                revision = at,
                "corruption check: this member's history differs from the cluster's"
            );
            if !raised.contains(&(member, CORRUPT)) {
                self.alarm(true, member, CORRUPT).await?;
            }
        }
        Ok(corrupt)
    }

    /// `peer`'s hash of the whole store at `revision`, its regions caught
    /// up by `catch_up`.
    async fn peer_store_hash(
        &self,
        peer: u64,
        revision: i64,
        catch_up: CatchUp,
    ) -> Result<StoreHash> {
        let r = self.region(DATA_REGION)?;
        let op = ForwardOp::HashStoreAt {
            revision,
            leaders: catch_up == CatchUp::Leaders,
        };
        remote::forward(&self.pool, &r.raft, peer, DATA_REGION, &op)
            .await
            .and_then(ForwardOk::store_hash)
    }
}

impl Node {
    /// The start-up check (see the module essay): an error naming the first
    /// peer whose history of a region's span here differs from this
    /// member's, at the revision that region resolved here. Peers that do
    /// not answer, and spans either side could not hash or hashed over
    /// other compactions, are skipped.
    pub async fn initial_corruption_check(&self) -> Result<()> {
        let r = self.region(DATA_REGION)?;
        // Raft learns the membership (and so the peers' addresses) from its
        // log as it starts; a member of a new cluster has none until it is
        // initialized, and has nothing to compare then.
        let deadline = std::time::Instant::now() + PEER_WAIT;
        let voters: Vec<u64> = loop {
            let voters: Vec<u64> = {
                let m = r.raft.metrics();
                let m = m.borrow();
                m.membership_config.membership().voter_ids().collect()
            };
            if !voters.is_empty() || std::time::Instant::now() >= deadline {
                break voters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // This member serves no peer until the check is done, so a region
        // frozen for a merge here stays frozen: it hashes what it can at
        // once, or skips that part (the check looks for members that
        // disagree). Each region here is hashed at the revision it
        // resolved, so a region written since another went cold is
        // checked to its last write too.
        let mut mine: Vec<(KeySpan, i64, StoreHash)> = Vec::new();
        for (span, at) in self.resolved_spans() {
            if at == 0 {
                continue;
            }
            match self.span_hash_now(&span, at).await {
                Ok(h) => mine.push((span, at, h)),
                Err(e) => tracing::warn!(
                    "initial corruption check: this member cannot hash {} at revision {at}: {e}",
                    show_span(&span)
                ),
            }
        }
        if mine.is_empty() {
            return Ok(());
        }
        // The whole store's hash, for peers of the previous version: made
        // once, if one is met, and not on any peer's clock.
        let mut whole = None;
        let peers: Vec<u64> = voters.into_iter().filter(|&p| p != self.id).collect();
        let asks = peers
            .iter()
            .map(|&peer| tokio::time::timeout(PEER_WAIT, self.peer_span_hashes(peer, &mine)));
        let answers = futures::future::join_all(asks).await;
        for (peer, answer) in peers.into_iter().zip(answers) {
            let differs = match answered(peer, answer) {
                Some(Some(theirs)) => self.compare_spans(peer, &mine, theirs),
                Some(None) => {
                    let at = mine.iter().map(|(_, at, _)| *at).min().unwrap_or(0);
                    let everything: KeySpan = (Vec::new(), Vec::new());
                    if whole.is_none() {
                        whole = Some(self.span_hash_now(&everything, at).await?);
                    }
                    let ask = self.peer_store_hash(peer, at, CatchUp::Local);
                    let theirs = answered(peer, tokio::time::timeout(PEER_WAIT, ask).await);
                    theirs.and_then(|t| differs(&everything, at, whole.as_ref()?, Some(t)))
                }
                None => None,
            };
            if let Some(differs) = differs {
                return Err(Error::Internal(format!(
                    "found data inconsistency with peers: member {peer:x} {differs}"
                )));
            }
        }
        Ok(())
    }

    /// `peer`'s hash of each span of `mine` at its revision (`None` in
    /// place of one it had none of); `None`: a peer of the previous
    /// version, which refuses the ask.
    async fn peer_span_hashes(
        &self,
        peer: u64,
        mine: &[(KeySpan, i64, StoreHash)],
    ) -> Result<Option<Vec<Option<StoreHash>>>> {
        let r = self.region(DATA_REGION)?;
        let spans = mine.iter().map(|(s, at, _)| (s.clone(), *at)).collect();
        let op = ForwardOp::HashSpansAt(spans);
        match remote::forward(&self.pool, &r.raft, peer, DATA_REGION, &op).await {
            Err(Error::Refused(_)) => Ok(None),
            answer => answer.and_then(ForwardOk::span_hashes).map(Some),
        }
    }

    /// How `peer`'s hashes (`theirs`, in the order of `mine`) differ from
    /// this member's for the first span where they do; says how many spans
    /// could not be compared (the peer had no hash, or compacted them
    /// otherwise).
    fn compare_spans(
        &self,
        peer: u64,
        mine: &[(KeySpan, i64, StoreHash)],
        theirs: Vec<Option<StoreHash>>,
    ) -> Option<String> {
        let skipped = theirs
            .iter()
            .zip(mine)
            .filter(|(t, (_, _, m))| !t.as_ref().is_some_and(|t| t.comparable(m)))
            .count();
        if skipped > 0 {
            tracing::warn!(
                peer,
                "initial corruption check: {skipped} of {} region spans not compared (the peer could not hash them in time, or compacted them otherwise)",
                mine.len()
            );
        }
        mine.iter()
            .zip(theirs)
            .find_map(|((span, at, mine), theirs)| differs(span, *at, mine, theirs))
    }
}

/// A peer's answer to the start-up check, or `None` (logged) if it gave
/// none in time.
fn answered<T>(
    peer: u64,
    answer: std::result::Result<Result<T>, tokio::time::error::Elapsed>,
) -> Option<T> {
    match answer {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            tracing::warn!(peer, "initial corruption check: no hash: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(peer, "initial corruption check: no answer");
            None
        }
    }
}

/// How `theirs` differs from `mine`, the hashes of `span` at `at`: `None`
/// when they agree, or cannot be compared (no hash, other compactions).
fn differs(span: &KeySpan, at: i64, mine: &StoreHash, theirs: Option<StoreHash>) -> Option<String> {
    let theirs = theirs.filter(|t| t.comparable(mine))?;
    (theirs.hash.hash != mine.hash.hash).then(|| {
        format!(
            "hashes {} at revision {at} as {}, this member as {}",
            show_span(span),
            theirs.hash.hash,
            mine.hash.hash
        )
    })
}

/// A key span for a log line.
fn show_span((start, end): &KeySpan) -> String {
    format!(
        "keys [{}, {})",
        String::from_utf8_lossy(start),
        if end.is_empty() {
            "end".into()
        } else {
            String::from_utf8_lossy(end)
        }
    )
}

/// Runs [`Node::check_corruption`] every `every` until the node stops.
pub(crate) async fn check_every(node: Weak<Node>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(n) = node.upgrade() else {
            return;
        };
        if n.is_stopped() {
            return;
        }
        if let Err(e) = n.check_corruption().await {
            tracing::debug!("corruption check: {e}");
        }
    }
}
