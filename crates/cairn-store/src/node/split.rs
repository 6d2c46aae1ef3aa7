//! Splitting a data region by hand (tests, and later the split checker):
//! the new region's ID comes from the TSO (unique across the cluster, and
//! below 2^53 like every revision), the split is one command in the
//! region's log (see `cairn_raft::state_machine::split`), and every
//! replica that applies it starts the new region's replica on its own
//! node (`Node::host`). The leaders then publish both ranges to the meta
//! region's directory (`background::publish_regions`).
//!
//! A node that missed the split — it caught up on the parent by a snapshot
//! taken after it — learns of the child from the child leader's messages
//! and [`Node::adopt`]s it: an empty replica that can only install the
//! child's snapshot. Only if the directory names this node among the
//! child's peers and no region hosted here overlaps the child's range: a
//! parent that has not split here yet still owns (and may still write)
//! those keys, and the child's snapshot must not land under it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_raft::{Command, RegionRange};
use futures::StreamExt;

use crate::node::{Node, Region, DATA_REGION, META_REGION, REQUEST_TIMEOUT};
use crate::remote::{ForwardOk, ForwardOp};
use crate::tso;
use crate::{Error, Result};

/// How long a message for a region not hosted here waits for a split
/// applying here to bear it, before [`Node::adopt`] looks further.
const BIRTH_WAIT: Duration = Duration::from_millis(80);

/// Regions [`Node::propose_everywhere`] proposes in at once.
const EVERYWHERE_AT_ONCE: usize = 16;

impl Node {
    /// Splits data region `region` at `at` (the new region holds `[at,
    /// end)`); returns the new region's ID once its replica runs on this
    /// node. `EpochMismatch` if the region split meanwhile (this node's
    /// view of its epoch was old) or `at` is not strictly inside it.
    pub async fn split_region(&self, region: u64, at: Vec<u8>) -> Result<u64> {
        let epoch = self.region(region)?.shared.range().epoch;
        self.split_region_at_epoch(region, at, epoch).await
    }

    /// [`Node::split_region`] if the region is still at `epoch` when the
    /// split applies (`EpochMismatch` otherwise): a key chosen from the
    /// region as it was at `epoch` splits nothing else.
    pub(crate) async fn split_region_at_epoch(
        &self,
        region: u64,
        at: Vec<u8>,
        epoch: u64,
    ) -> Result<u64> {
        if region == META_REGION {
            return Err(Error::Internal("the meta region does not split".into()));
        }
        let meta = self.region(META_REGION)?;
        let child = tso::fetch_timestamps(&self.tso, &self.pool, &meta.raft, 1, None).await? as u64;
        let cmd = Command::Split { at, child, epoch };
        self.submit(region, ForwardOp::Plain(cmd))
            .await?
            .applied()?;
        self.hosted_soon(child).await?;
        Ok(child)
    }

    /// This node's replica of `region`, starting one if a split applied
    /// here gave birth to it, or adopting it empty (see the module essay)
    /// if the directory says it should be here and no region here — hosted,
    /// or recorded in the engine and about to be — overlaps it. `Internal`
    /// otherwise (the sender retries).
    pub(crate) async fn adopt(self: &Arc<Self>, region: u64) -> Result<Arc<Region>> {
        if let Some(r) = self.regions.get(region) {
            return Ok(r);
        }
        let refuse = |why: &str| {
            Err(Error::Internal(format!(
                "region {region} not hosted here: {why}"
            )))
        };
        // A region a merge absorbed never comes back: one absorbed here
        // whose directory entry is not dropped yet (a lagging replica of it
        // calling) would be started empty and never stopped.
        if self.absorbed_here(region) {
            return refuse("a merge absorbed it");
        }
        // Its leader's first messages may come before this replica has
        // applied the split that bears it (the leader applied it first):
        // they are answered once it has, not refused (openraft would try
        // again only after a backoff). Not for longer than openraft waits
        // for an append's answer.
        if let Some(r) = self.regions.get_within(region, BIRTH_WAIT).await {
            return Ok(r);
        }
        if self
            .adoptions_held
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return refuse("held (a test's slow member)");
        }
        let (desc, dropped) = self.region(META_REGION)?.shared.with_applied(|a| {
            let dropped = a.merge.absorbed.contains(&region);
            (a.regions.get(&region).cloned(), dropped)
        });
        if dropped {
            return refuse("a merge absorbed it");
        }
        let Some(desc) = desc.filter(|d| d.id != META_REGION) else {
            return refuse("not in the directory");
        };
        if !desc.peers.contains(&self.id) {
            return refuse("not one of its peers");
        }
        let range = RegionRange {
            start: desc.start.clone(),
            end: desc.end.clone(),
            epoch: desc.epoch,
        };
        {
            let _one = self.hosting.lock().await;
            let engine = self.engine.clone();
            let stored = cairn_raft::stored_ranges(&*engine)?;
            if !stored.iter().any(|(id, _)| *id == region) {
                // Records cover every replica hosted here and every one
                // being started (a split writes the child's record in the
                // batch that narrows the parent).
                let overlaps = stored
                    .iter()
                    .any(|(id, r)| *id != META_REGION && r.overlaps(&range));
                if overlaps {
                    return refuse("a region here still holds some of its keys");
                }
                cairn_raft::seed_empty(&*engine, region, range)?;
                tracing::info!(region, "adopting a region this node missed the split of");
            }
        }
        self.host(region).await?;
        self.region(region)
    }

    /// Makes this member start each region a split gives birth to `by`
    /// after it applies the split (a slow member, for tests).
    #[doc(hidden)]
    pub fn delay_births(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.birth_delay
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes this member refuse to adopt a region it missed the split of
    /// while `on` (a member slow to, for tests).
    #[doc(hidden)]
    pub fn hold_adoptions(&self, on: bool) {
        self.adoptions_held
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Proposes `cmd` in every data region (an auth fence, an alarm: state
    /// each region keeps for itself), [`EVERYWHERE_AT_ONCE`] at a time;
    /// returns the first region's answer.
    /// A region born by a split copies its parent's state, so only a split
    /// ordered before `cmd` in its parent can leave a region without it;
    /// once the parent's replica here has applied past `cmd`, that split's
    /// record is in this node's engine (or, if the replica caught up by a
    /// snapshot taken after the split, the keys the child took are held by
    /// no region here until the directory lists it), and the region gets
    /// `cmd` too. A region that missed it anyway (the deadline passed) is
    /// brought in line by its leader (`region_catch_up`).
    pub(crate) async fn propose_everywhere(&self, cmd: Command) -> Result<ForwardOk> {
        let mut done = std::collections::BTreeMap::new();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            // The regions recorded here, and the directory's (a region
            // this node missed the split of, not adopted yet).
            let mut todo: Vec<u64> = cairn_raft::stored_regions(&*self.engine)?;
            todo.extend(
                self.region(META_REGION)?
                    .shared
                    .with_applied(|a| a.regions.keys().copied().collect::<Vec<_>>()),
            );
            todo.push(DATA_REGION);
            todo.sort_unstable();
            todo.dedup();
            // (A region a merge absorbed here is gone; the directory may
            // list it a little longer.)
            todo.retain(|id| {
                *id != META_REGION && !done.contains_key(id) && !self.absorbed_here(*id)
            });
            if todo.is_empty() {
                // Every region recorded or listed here has it. A region
                // born by a split that this member's replica of the parent
                // skipped (caught up by a snapshot taken after it) is
                // neither, until its leader lists it in the directory: the
                // regions done must hold every key, or look again.
                let all = self.span_regions(b"", None);
                if all.covered() && all.ids().iter().all(|id| done.contains_key(id)) {
                    break;
                }
                if Instant::now() >= deadline || self.is_stopped() {
                    return Err(Error::Timeout);
                }
                let _ = self.caught_up(META_REGION).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // Many at once: with hundreds of regions, one by one made an
            // auth change take seconds. A region that failed is tried
            // again in the next pass, until the deadline — unless a merge
            // absorbed it here meanwhile (the pass's list leaves it out):
            // the region that absorbed it, hosted here, gets `cmd` in this
            // pass, a later one, or had it already (a merge keeps the
            // higher auth fence).
            let answers: Vec<(u64, Result<ForwardOk>)> = futures::stream::iter(todo)
                .map(|id| {
                    let cmd = cmd.clone();
                    async move {
                        let one = async {
                            self.hosted_soon(id).await?;
                            let ok = self.submit(id, ForwardOp::Plain(cmd)).await?;
                            self.caught_up(id).await?;
                            Ok::<_, Error>(ok)
                        };
                        (id, one.await)
                    }
                })
                .buffer_unordered(EVERYWHERE_AT_ONCE)
                .collect()
                .await;
            let mut failed = None;
            for (id, res) in answers {
                match res {
                    Ok(ok) => {
                        done.insert(id, ok);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                if Instant::now() >= deadline || self.is_stopped() {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        done.remove(&DATA_REGION)
            .ok_or_else(|| Error::Internal("the first data region is not hosted".into()))
    }

    /// Waits (bounded) until this node hosts `region`, whose record is in
    /// its engine (a birth being started); `Timeout` at once if a merge
    /// absorbed it here.
    async fn hosted_soon(&self, region: u64) -> Result<()> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while self.regions.get(region).is_none() {
            if Instant::now() >= deadline || self.absorbed_here(region) {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}
