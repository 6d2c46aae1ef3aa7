//! Read-index batching: many concurrent linearizable reads share one
//! read-index round.
//!
//! A read index proves leadership with a heartbeat round to a quorum; doing
//! that once per read costs a network round and a burst of AppendEntries per
//! read, and under a few hundred concurrent readers the heartbeats queue
//! behind each other until checks time out (measured: 3-node, 200 clients,
//! 94 reads/s and most requests "request timed out"). Instead, one task per
//! batcher takes every request waiting, runs ONE read-index fetch, and
//! answers them all with its result.
//!
//! Why this stays linearizable: a request only joins a fetch that *starts
//! after the request arrived* (requests that arrive while a fetch runs wait
//! for the next one). The fetched index is the leader's commit index at a
//! moment after the request arrived, confirmed by a quorum heartbeat after
//! that moment — exactly what a private read index would have given it,
//! possibly newer.
//!
//! The batching task is independent of callers, so a caller that gives up
//! (client disconnect) never strands the others.
//!
//! The same batching serves what a read takes while there are several
//! regions (`node::range_across`): a TSO read timestamp (any answer
//! obtained after the read arrived will do), a region's read timestamp
//! with its read index after it, and a region's read index after a
//! timestamp each reader brings — a round asks after the highest of its
//! batch, which serves every lower one too (a leader that answered every
//! write it stamped at or below T' has answered those at or below T).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::Result;

/// A waiting reader: what it asks for, and where its answer goes.
type Waiter<A, T> = (A, oneshot::Sender<Result<T>>);

/// A handle to one batching task of read indexes.
pub type ReadIndexBatcher = Batcher<u64>;

/// A handle to one batching task, whose rounds answer `T` to readers
/// asking `A` (ordered: a round asks for the highest of its batch).
pub struct Batcher<T, A = ()> {
    tx: mpsc::UnboundedSender<Waiter<A, T>>,
}

impl<T: Clone + Send + 'static> Batcher<T> {
    /// Starts the task; `fetch` runs one round. The task ends when the
    /// batcher is dropped.
    pub fn start<F, Fut>(mut fetch: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        Self::start_with(move |()| fetch())
    }

    /// The answer of a round that started after this call.
    pub async fn round(&self) -> Result<T> {
        self.round_with(()).await
    }
}

impl<T: Clone + Send + 'static, A: Ord + Copy + Send + 'static> Batcher<T, A> {
    /// Starts the task; `fetch(a)` runs one round, `a` the highest any
    /// reader of the round asks. The task ends when the batcher is
    /// dropped.
    pub fn start_with<F, Fut>(mut fetch: F) -> Self
    where
        F: FnMut(A) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter<A, T>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Everyone already waiting joins this round; later arrivals
                // stay queued for the next one.
                let mut batch = vec![first];
                while let Ok(w) = rx.try_recv() {
                    batch.push(w);
                }
                batch.retain(|(_, w)| !w.is_closed());
                let Some(highest) = batch.iter().map(|(a, _)| *a).max() else {
                    continue;
                };
                let res = fetch(highest).await;
                for (_, w) in batch {
                    let _ = w.send(res.clone());
                }
            }
        });
        Self { tx }
    }

    /// The answer of a round that started after this call and asked for
    /// `a` or more.
    pub async fn round_with(&self, a: A) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((a, tx)).map_err(|_| crate::Error::Stopped)?;
        rx.await.map_err(|_| crate::Error::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_reads_share_rounds_that_start_after_they_arrive() {
        // Each round returns the round number; it takes 20 ms.
        let rounds = Arc::new(AtomicU64::new(0));
        let r2 = rounds.clone();
        let b = Arc::new(ReadIndexBatcher::start(move || {
            let r = r2.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(n)
            }
        }));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let b = b.clone();
            let rounds = rounds.clone();
            tasks.push(tokio::spawn(async move {
                // Rounds already started when this read arrived.
                let started_before = rounds.load(Ordering::SeqCst);
                let got = b.round().await.unwrap();
                assert!(got > started_before, "joined a round that began earlier");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = rounds.load(Ordering::SeqCst);
        assert!(n <= 3, "100 concurrent reads took {n} rounds");
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_batch_and_the_next_round_runs() {
        let calls = Arc::new(AtomicU64::new(0));
        let c2 = calls.clone();
        let b = ReadIndexBatcher::start(move || {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(crate::Error::Timeout)
                } else {
                    Ok(7)
                }
            }
        });
        assert_eq!(b.round().await, Err(crate::Error::Timeout));
        assert_eq!(b.round().await, Ok(7));
    }

    #[tokio::test]
    async fn a_round_asks_for_the_highest_of_its_batch() {
        // Each round answers what it was asked for; it takes 20 ms.
        let b = Arc::new(Batcher::<i64, i64>::start_with(|a| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(a)
        }));
        let mut tasks = Vec::new();
        for a in 1..=50 {
            let b = b.clone();
            tasks.push(tokio::spawn(
                async move { (a, b.round_with(a).await.unwrap()) },
            ));
        }
        let mut answers = std::collections::BTreeSet::new();
        for t in tasks {
            let (asked, got) = t.await.unwrap();
            assert!(got >= asked, "asked {asked}, got {got}");
            answers.insert(got);
        }
        assert!(answers.len() <= 3, "50 readers took rounds {answers:?}");
    }

    #[tokio::test]
    async fn an_abandoned_read_does_not_block_others() {
        let b = Arc::new(ReadIndexBatcher::start(|| async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(1)
        }));
        let b2 = b.clone();
        let gone = tokio::spawn(async move { b2.round().await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        gone.abort();
        assert_eq!(b.round().await, Ok(1));
    }
}
