//! [`SpanPool`]: a bound on how many blocking span reads run at once.
//!
//! A read of a large span is synchronous work — an engine scan that may take
//! milliseconds or seconds. Run on a Tokio worker it stalls every task
//! queued behind it there (heartbeats, appends, small reads); handed to
//! `spawn_blocking` with no bound, a burst of large ranges grows the
//! blocking pool to hundreds of threads, each holding a scan and its
//! memory. The pool runs each read on Tokio's blocking pool and lets at
//! most `max_concurrent` run at once; the others wait asynchronously, in
//! arrival order (Tokio's semaphore is fair), for a permit.
//!
//! The permit moves into the blocking task, so it is released when the read
//! *ends*, not when its caller stops waiting: a started closure cannot be
//! cancelled, and a dropped caller must not let one more read start beside
//! it.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::{Error, Result};

/// Runs blocking reads on Tokio's blocking pool, at most N at a time.
/// Cloning shares the bound.
#[derive(Clone, Debug)]
pub struct SpanPool {
    permits: Arc<Semaphore>,
}

impl SpanPool {
    /// A pool running at most `max_concurrent` reads at once (at least 1).
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// The default bound: twice the available parallelism, at least 4 —
    /// enough to keep the cores busy while some reads wait on the disk.
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_mul(2)
            .max(4)
    }

    /// Runs `f` on the blocking pool once a permit is free, and returns its
    /// result. A panic in `f` comes back as [`Error::Internal`].
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(format!("span pool: {e}")))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| Error::Internal(format!("span read: {e}")))
    }
}

impl Default for SpanPool {
    fn default() -> Self {
        Self::new(Self::default_concurrency())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn at_most_n_reads_run_at_once() {
        let pool = SpanPool::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let reads = (0..12).map(|i| {
            let (running, most) = (running.clone(), most.clone());
            pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                i
            })
        });
        let done: Vec<_> = futures::future::join_all(reads).await;
        let done: Vec<usize> = done.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(done, (0..12).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_dropped_caller_keeps_its_permit_until_its_read_ends() {
        let pool = SpanPool::new(1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        tokio::select! {
            _ = pool.run(move || {
                started.send(()).unwrap();
                wait.recv().unwrap();
            }) => unreachable!("the read waits to be released"),
            _ = has_started => {}
        }
        // The first read still runs: a second may not start.
        let second = tokio::time::timeout(Duration::from_millis(50), pool.run(|| ())).await;
        assert!(second.is_err(), "a second read ran beside the first");
        release.send(()).unwrap();
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_read_is_an_internal_error() {
        let pool = SpanPool::new(1);
        let err = pool.run::<()>(|| panic!("boom")).await.unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
        assert_eq!(pool.run(|| 1).await.unwrap(), 1, "the permit came back");
    }
}
