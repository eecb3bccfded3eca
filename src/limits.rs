//! Limits on token exchanges: at most `max_concurrent` at once and `per_second` on average (a
//! token bucket holding one second's worth), so a flood of made-up credentials can neither
//! overload the provider nor run up its bill. A caller waits for its turn at most
//! `queue_timeout`; past that it is told when to retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub struct ExchangeLimiter {
    concurrency: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
    queue_timeout: Duration,
}

/// Tokens may go negative: each negative unit is a caller that has reserved a future slot and
/// is sleeping until it comes.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

/// Held while an exchange runs.
pub struct ExchangePermit {
    _permit: OwnedSemaphorePermit,
}

impl ExchangeLimiter {
    pub fn new(max_concurrent: u32, per_second: u32, queue_timeout: Duration) -> Self {
        let rate = f64::from(per_second.max(1));
        ExchangeLimiter {
            concurrency: Arc::new(Semaphore::new(max_concurrent.max(1) as usize)),
            bucket: Mutex::new(Bucket {
                tokens: rate,
                last: Instant::now(),
                rate,
                burst: rate,
            }),
            queue_timeout,
        }
    }

    /// Waits for a slot, or says how long to wait before retrying (for `Retry-After`).
    pub async fn acquire(&self) -> Result<ExchangePermit, Duration> {
        let now = Instant::now();
        let deadline = now + self.queue_timeout;
        let at = self.reserve(now, deadline)?;
        tokio::time::sleep_until(at).await;
        match tokio::time::timeout_at(deadline, self.concurrency.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(ExchangePermit { _permit: permit }),
            // Every slot stayed busy for the whole queue timeout.
            _ => Err(Duration::from_secs(1)),
        }
    }

    fn reserve(&self, now: Instant, deadline: Instant) -> Result<Instant, Duration> {
        let Ok(mut b) = self.bucket.lock() else {
            return Err(Duration::from_secs(1));
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.rate).min(b.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(now);
        }
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / b.rate);
        let at = now + wait;
        if at > deadline {
            return Err(wait);
        }
        b.tokens -= 1.0;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sequential_callers_are_paced_at_the_rate() {
        let l = ExchangeLimiter::new(100, 10, Duration::from_secs(1));
        let start = Instant::now();
        for _ in 0..30 {
            assert!(l.acquire().await.is_ok());
        }
        // A burst of 10, then one every 100 ms.
        let took = Instant::now() - start;
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_burst_beyond_the_queue_is_refused() {
        let l = Arc::new(ExchangeLimiter::new(100, 10, Duration::from_millis(550)));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire().await.is_ok() })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        // 10 immediately plus 5 within the queue window; the rest are told when to retry.
        assert_eq!(ok, 15);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let l = Arc::new(ExchangeLimiter::new(2, 1000, Duration::from_millis(100)));
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert_eq!(l.acquire().await.err(), Some(Duration::from_secs(1)));
        drop(a);
        assert!(l.acquire().await.is_ok());
    }
}
