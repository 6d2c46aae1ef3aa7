//! The watch hub: one ordered change stream over every data region a key
//! span touches.
//!
//! Each region publishes its own feed (`cairn_raft::FeedBatch`) with a
//! resolved revision: no write at or below it can still appear in that
//! region. The hub holds back events until *every* input region has
//! resolved past them, then releases them in (revision, key) order with the
//! minimum resolved revision — so a watcher over several regions sees one
//! ordered history, and a progress notification at R is safe across all of
//! them. Any input lagging or resetting is reported, and the watcher catches
//! up from MVCC history instead.
//!
//! An idle region's resolved revision moves only with its closed
//! timestamps (`Command::Close`, proposed while there is more than one data
//! region and a member with a watch on the region asks: `node::closes`).
//! A region that splits
//! publishes a reset: the watch stream then regroups each watcher over
//! the regions its span touches now and re-reads history, so the keys the
//! split moved out stay watched. With one input nothing needs holding back, and the
//! region's batch is handed on as is (shared, not copied): every reader (one
//! per watch stream and set of regions) gets the same batch, and each
//! watcher copies only the events it sends. (A copy per watcher per batch
//! was the largest cost of the watch path in a profile with 100 watchers:
//! docs/benchmarks.md.)

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_api::mvccpb::Event;
use cairn_raft::FeedBatch;
use futures::future::select_all;
use tokio::sync::broadcast::{self, error::RecvError};

/// What the merged stream yields.
#[derive(Debug)]
pub enum HubItem {
    /// Events every input has resolved, ordered by (revision, key), and the
    /// revision up to which the merged stream is complete.
    Batch { events: Events, resolved: i64 },
    /// An input lagged behind its bounded feed or installed a snapshot:
    /// re-read history from MVCC.
    Discontinuity,
    /// An input closed (node shutting down).
    Closed,
}

/// The events of a [`HubItem::Batch`]: one region's batch as published,
/// or events merged from several. Cloning shares them.
#[derive(Debug, Clone)]
pub enum Events {
    /// A region's batch, shared with every other subscriber.
    Shared(Arc<FeedBatch>),
    /// Events merged from several regions.
    Merged(Arc<Vec<(i64, Event)>>),
}

impl Events {
    /// The events, ordered by (revision, key).
    pub fn iter(&self) -> std::slice::Iter<'_, (i64, Event)> {
        match self {
            Events::Shared(b) => b.events.iter(),
            Events::Merged(v) => v.iter(),
        }
    }
}

struct Input {
    feed: broadcast::Receiver<Arc<FeedBatch>>,
    resolved: i64,
    /// Its events at or below this came from history (the feed's copies
    /// of them are skipped).
    start: i64,
}

/// Merges the feeds of several regions.
pub struct FeedMerger {
    inputs: Vec<Input>,
    held: BTreeMap<(i64, Vec<u8>), Event>,
    /// Reading history for the subscription failed: the first item is a
    /// discontinuity (subscribe again).
    broken: bool,
}

impl FeedMerger {
    /// A merger over `feeds`, each with the revision its reader has already
    /// seen resolved (from the read view it caught up from).
    pub fn new(feeds: Vec<(broadcast::Receiver<Arc<FeedBatch>>, i64)>) -> Self {
        Self::with_history(feeds, Vec::new(), false)
    }

    /// [`FeedMerger::new`], holding `history`: the events of inputs
    /// resolved past the lowest of them, above it (no feed carries them);
    /// `broken`: reading them failed.
    pub fn with_history(
        feeds: Vec<(broadcast::Receiver<Arc<FeedBatch>>, i64)>,
        history: Vec<(i64, Event)>,
        broken: bool,
    ) -> Self {
        let mut m = Self {
            inputs: feeds
                .into_iter()
                .map(|(feed, resolved)| Input {
                    feed,
                    resolved,
                    start: resolved,
                })
                .collect(),
            held: BTreeMap::new(),
            broken,
        };
        for (rev, e) in history {
            let key = e.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
            m.held.insert((rev, key), e);
        }
        m
    }

    /// The revision every input has resolved.
    pub fn resolved(&self) -> i64 {
        self.inputs.iter().map(|i| i.resolved).min().unwrap_or(0)
    }

    /// Waits for the next releasable batch (possibly empty when only the
    /// resolved revision advanced).
    pub async fn next(&mut self) -> HubItem {
        if self.inputs.is_empty() {
            return HubItem::Closed;
        }
        if std::mem::take(&mut self.broken) {
            // Not at once: a failing read would otherwise spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            return HubItem::Discontinuity;
        }
        if let [only] = &mut self.inputs[..] {
            return match only.feed.recv().await {
                Ok(batch) if batch.reset => HubItem::Discontinuity,
                Ok(batch) => {
                    only.resolved = only.resolved.max(batch.resolved);
                    HubItem::Batch {
                        resolved: only.resolved,
                        events: Events::Shared(batch),
                    }
                }
                Err(RecvError::Lagged(_)) => HubItem::Discontinuity,
                Err(RecvError::Closed) => HubItem::Closed,
            };
        }
        let (res, idx, _) =
            select_all(self.inputs.iter_mut().map(|i| Box::pin(i.feed.recv()))).await;
        match res {
            Ok(batch) => {
                if batch.reset {
                    return HubItem::Discontinuity;
                }
                let start = self.inputs[idx].start;
                for (rev, e) in batch.events.iter().filter(|(rev, _)| *rev > start) {
                    let key = e.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
                    self.held.insert((*rev, key), e.clone());
                }
                let input = &mut self.inputs[idx];
                input.resolved = input.resolved.max(batch.resolved);
                let resolved = self.resolved();
                let rest = self.held.split_off(&(resolved + 1, Vec::new()));
                let ready = std::mem::replace(&mut self.held, rest);
                HubItem::Batch {
                    events: Events::Merged(Arc::new(
                        ready.into_iter().map(|((rev, _), e)| (rev, e)).collect(),
                    )),
                    resolved,
                }
            }
            Err(RecvError::Lagged(_)) => HubItem::Discontinuity,
            Err(RecvError::Closed) => HubItem::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::mvccpb::KeyValue;

    fn ev(key: &str, rev: i64) -> (i64, Event) {
        (
            rev,
            Event {
                kv: Some(KeyValue {
                    key: key.into(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    fn batch(events: Vec<(i64, Event)>, resolved: i64) -> Arc<FeedBatch> {
        Arc::new(FeedBatch {
            events,
            resolved,
            reset: false,
        })
    }

    fn keys(item: HubItem) -> (Vec<(i64, String)>, i64) {
        match item {
            HubItem::Batch { events, resolved } => (
                events
                    .iter()
                    .map(|(r, e)| {
                        let key = e.kv.as_ref().unwrap().key.clone();
                        (*r, String::from_utf8(key).unwrap())
                    })
                    .collect(),
                resolved,
            ),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_are_released_in_order_once_every_region_resolved_them() {
        let (a_tx, a_rx) = broadcast::channel(16);
        let (b_tx, b_rx) = broadcast::channel(16);
        let mut m = FeedMerger::new(vec![(a_rx, 0), (b_rx, 0)]);
        // Region A commits 10 and 30; region B has resolved nothing yet.
        a_tx.send(batch(vec![ev("a1", 10), ev("a2", 30)], 30))
            .unwrap();
        assert_eq!(keys(m.next().await), (vec![], 0));
        // Region B commits 20 and resolves 25: 10 and 20 are safe, 30 is not.
        b_tx.send(batch(vec![ev("b1", 20)], 25)).unwrap();
        assert_eq!(
            keys(m.next().await),
            (vec![(10, "a1".into()), (20, "b1".into())], 25)
        );
        // B resolves past 30 with a write at 30 too: both at 30, key order.
        b_tx.send(batch(vec![ev("a0", 30)], 40)).unwrap();
        assert_eq!(
            keys(m.next().await),
            (vec![(30, "a0".into()), (30, "a2".into())], 30)
        );
        a_tx.send(batch(vec![], 50)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 40));
    }

    #[tokio::test]
    async fn one_input_hands_on_the_published_batch_uncopied() {
        let (tx, rx) = broadcast::channel(16);
        let mut m = FeedMerger::new(vec![(rx, 5)]);
        let b = batch(vec![ev("k", 7), ev("l", 8)], 9);
        tx.send(b.clone()).unwrap();
        match m.next().await {
            HubItem::Batch {
                events: Events::Shared(got),
                resolved,
            } => {
                assert!(Arc::ptr_eq(&got, &b));
                assert_eq!(resolved, 9);
            }
            other => panic!("expected the shared batch, got {other:?}"),
        }
        assert_eq!(m.resolved(), 9);
        // The resolved revision never moves back.
        tx.send(batch(vec![], 6)).unwrap();
        assert_eq!(keys(m.next().await), (vec![], 9));
    }

    #[tokio::test]
    async fn a_lagging_or_reset_input_is_a_discontinuity() {
        let (a_tx, a_rx) = broadcast::channel(1);
        let mut m = FeedMerger::new(vec![(a_rx, 0)]);
        a_tx.send(batch(vec![], 1)).unwrap();
        a_tx.send(batch(vec![], 2)).unwrap();
        assert!(matches!(m.next().await, HubItem::Discontinuity));
        a_tx.send(Arc::new(FeedBatch {
            events: vec![],
            resolved: 3,
            reset: true,
        }))
        .unwrap();
        assert!(matches!(m.next().await, HubItem::Discontinuity));
    }
}
