//! The closed-loop driver: `clients` tasks each keep one request in flight
//! and take request numbers from one shared counter until `total` have been
//! issued. With a `rate`, request `i` may not start before `start + i/rate`
//! (one global schedule, so the rate holds however the clients interleave).
//! Every request's latency or error lands in the client's own recorder;
//! the recorders merge at the end (no shared lock on the hot path).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::stats::Recorder;

/// A progress bar on a terminal, nothing otherwise (indicatif hides itself
/// when stderr is not a terminal, as in CI).
pub fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec}")
    {
        bar.set_style(style);
    }
    bar
}

/// Runs `total` requests over `clients` tasks. `make(c)` builds client
/// `c`'s request function; calling it with a request number returns the
/// request's future. Returns the merged recorder and the wall time.
pub async fn run<M, F, Fut>(clients: usize, total: u64, rate: u64, make: M) -> (Recorder, Duration)
where
    M: Fn(usize) -> F,
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress(total);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let mut op = make(c);
        let next = next.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                match op(i).await {
                    Ok(()) => rec.ok(t.elapsed()),
                    Err(s) => rec.error(&s),
                }
                bar.inc(1);
            }
            rec
        }));
    }
    let mut all = Recorder::new();
    for t in tasks {
        if let Ok(r) = t.await {
            all.merge(r);
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    (all, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issues_exactly_total_requests_and_counts_errors() {
        let (rec, _) = run(4, 103, 0, |_c| {
            |i: u64| async move {
                if i.is_multiple_of(10) {
                    Err(tonic::Status::unavailable("down"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        let r = rec.result("t", Duration::from_secs(1));
        assert_eq!(r.ok + r.error_count(), 103);
        assert_eq!(r.errors["Unavailable"], 11);
    }

    #[tokio::test]
    async fn rate_limits_the_schedule() {
        let t = Instant::now();
        let (rec, _) = run(8, 21, 100, |_c| |_i: u64| async { Ok(()) }).await;
        assert_eq!(rec.count(), 21);
        // Request 20 may not start before 200 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(195),
            "{:?}",
            t.elapsed()
        );
    }
}
