//! Limits on token exchanges: at most `max_concurrent` at once and `per_second` on average (a
//! token bucket holding one second's worth), so a flood of made-up credentials can neither
//! overload the provider nor run up its bill. A caller waits for its turn at most
//! `queue_timeout`; past that it is told when to retry.
//!
//! Fairness under floods: a share of both budgets (`KNOWN_CLIENT_SHARE` of the rate and of the
//! concurrency, rounded, at least one unit each when the budget has two or more) is reserved for
//! credentials that succeeded before ([`Class::Known`]: refreshes and re-exchanges of a cached
//! identity). Never-seen credentials ([`Class::New`]) queue for the rest only; they may take a
//! reserved unit only while the whole reserve is idle (the bucket full, every reserved slot
//! free), so a pod starting cold still has nearly its full budget, while a flood of made-up
//! credentials can hold at most one reserved unit at a time and is answered 429 once the rest is
//! spent. Known credentials draw on the reserve first, then on the rest.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::clock::SharedClock;
pub use crate::defaults::KNOWN_CLIENT_SHARE;

/// `Retry-After` when every exchange slot stayed busy for the whole queue timeout.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest `Retry-After` the limiter answers, however far off its next free slot is.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Who asks for an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A credential with a cached identity: a refresh, or the re-exchange of a stale entry.
    Known,
    /// A credential this sidecar holds nothing for.
    New,
}

pub struct ExchangeLimiter {
    general: Budget,
    /// Absent when the budget is too small to split (1 per second, 1 at a time).
    reserved_rate: Option<Mutex<Bucket>>,
    reserved_slots: Option<Slots>,
    queue_timeout: Duration,
    /// The buckets refill by its readings; waits for a booked turn are tokio timers.
    clock: SharedClock,
}

/// The part of the budget every caller may use.
struct Budget {
    bucket: Mutex<Bucket>,
    slots: Slots,
}

struct Slots {
    semaphore: Arc<Semaphore>,
    size: usize,
}

impl Slots {
    fn new(size: u32) -> Slots {
        let size = size as usize;
        Slots {
            semaphore: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.semaphore.clone().try_acquire_owned().ok()
    }

    fn idle(&self) -> bool {
        self.semaphore.available_permits() == self.size
    }
}

/// Tokens may go negative: each negative unit is a caller that has reserved a future slot and
/// is sleeping until it comes.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(per_second: u32, now: Instant) -> Bucket {
        let rate = f64::from(per_second.max(1));
        Bucket {
            tokens: rate,
            last: now,
            rate,
            burst: rate,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    fn take_now(&mut self) -> bool {
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }

    fn take_if_full(&mut self) -> bool {
        self.tokens >= self.burst && self.take_now()
    }

    /// How long until a token is free for one more caller; never panics (`None`: not within
    /// any representable time).
    fn wait(&self) -> Option<Duration> {
        Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate).ok()
    }
}

/// `(general, reserved)` parts of a budget of `total`: nothing is reserved out of a budget of 1.
fn split(total: u32) -> (u32, u32) {
    let total = total.max(1);
    if total < 2 {
        return (total, 0);
    }
    let reserved = ((f64::from(total) * KNOWN_CLIENT_SHARE).round() as u32).clamp(1, total - 1);
    (total - reserved, reserved)
}

/// Held while an exchange runs.
pub struct ExchangePermit {
    _permit: OwnedSemaphorePermit,
}

fn lock(m: &Mutex<Bucket>) -> MutexGuard<'_, Bucket> {
    // A bucket is plain numbers, consistent after any panic: keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ExchangeLimiter {
    /// Limits on the system clock.
    pub fn new(max_concurrent: u32, per_second: u32, queue_timeout: Duration) -> Self {
        ExchangeLimiter::with_clock(
            max_concurrent,
            per_second,
            queue_timeout,
            crate::clock::system(),
        )
    }

    pub fn with_clock(
        max_concurrent: u32,
        per_second: u32,
        queue_timeout: Duration,
        clock: SharedClock,
    ) -> Self {
        let now = clock.now();
        let (rate, reserved_rate) = split(per_second);
        let (slots, reserved_slots) = split(max_concurrent);
        ExchangeLimiter {
            general: Budget {
                bucket: Mutex::new(Bucket::new(rate, now)),
                slots: Slots::new(slots),
            },
            reserved_rate: (reserved_rate > 0).then(|| Mutex::new(Bucket::new(reserved_rate, now))),
            reserved_slots: (reserved_slots > 0).then(|| Slots::new(reserved_slots)),
            queue_timeout,
            clock,
        }
    }

    /// Waits for a slot, or says how long to wait before retrying (for `Retry-After`).
    pub async fn acquire(&self, class: Class) -> Result<ExchangePermit, Duration> {
        let now = self.clock.now();
        // A queue timeout too large to add is as good as none.
        let deadline = now
            .checked_add(self.queue_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        let at = self.reserve(class, now, deadline)?;
        if at > now {
            tokio::time::sleep(at - now).await;
        }
        let permit = match self.try_slot(class) {
            Some(p) => p,
            None => {
                let wait = async {
                    match (&self.reserved_slots, class) {
                        (Some(r), Class::Known) => tokio::select! {
                            p = r.semaphore.clone().acquire_owned() => p,
                            p = self.general.slots.semaphore.clone().acquire_owned() => p,
                        },
                        _ => self.general.slots.semaphore.clone().acquire_owned().await,
                    }
                };
                let left = deadline.saturating_duration_since(self.clock.now());
                match tokio::time::timeout(left, wait).await {
                    Ok(Ok(p)) => p,
                    // Every slot stayed busy for the whole queue timeout.
                    _ => return Err(BUSY_RETRY_AFTER),
                }
            }
        };
        Ok(ExchangePermit { _permit: permit })
    }

    /// A free exchange slot right now, if `class` may have one.
    fn try_slot(&self, class: Class) -> Option<OwnedSemaphorePermit> {
        let reserved = self.reserved_slots.as_ref();
        match class {
            Class::Known => reserved
                .and_then(Slots::try_take)
                .or_else(|| self.general.slots.try_take()),
            Class::New => self
                .general
                .slots
                .try_take()
                .or_else(|| reserved.filter(|r| r.idle()).and_then(Slots::try_take)),
        }
    }

    /// Takes a rate token now or books the earliest future one within `deadline`: returns when
    /// to go, or how long to wait before retrying.
    fn reserve(&self, class: Class, now: Instant, deadline: Instant) -> Result<Instant, Duration> {
        let mut general = lock(&self.general.bucket);
        general.refill(now);
        let mut reserved = self.reserved_rate.as_ref().map(lock);
        if let Some(r) = reserved.as_deref_mut() {
            r.refill(now);
        }
        let taken_now = match class {
            Class::Known => {
                reserved.as_deref_mut().is_some_and(Bucket::take_now) || general.take_now()
            }
            Class::New => {
                general.take_now() || reserved.as_deref_mut().is_some_and(Bucket::take_if_full)
            }
        };
        if taken_now {
            return Ok(now);
        }
        // The earliest bucket this class may queue on.
        let mut choice: (Option<Duration>, &mut Bucket) = (general.wait(), &mut *general);
        if let (Class::Known, Some(r)) = (class, reserved.as_deref_mut()) {
            let w = r.wait();
            if w.is_some() && (choice.0.is_none() || w < choice.0) {
                choice = (w, r);
            }
        }
        let (wait, bucket) = choice;
        let wait = wait.unwrap_or(Duration::MAX);
        match now.checked_add(wait) {
            Some(at) if at <= deadline => {
                bucket.tokens -= 1.0;
                Ok(at)
            }
            _ => Err(wait.min(MAX_RETRY_AFTER)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_split_with_something_left_for_each_side() {
        assert_eq!(split(0), (1, 0));
        assert_eq!(split(1), (1, 0));
        assert_eq!(split(2), (1, 1));
        assert_eq!(split(10), (7, 3));
        assert_eq!(split(200), (150, 50));
        assert_eq!(split(u32::MAX).0 + split(u32::MAX).1, u32::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_callers_are_paced_at_the_rate() {
        for class in [Class::Known, Class::New] {
            let l = ExchangeLimiter::new(100, 10, Duration::from_secs(1));
            let start = Instant::now();
            for _ in 0..30 {
                assert!(l.acquire(class).await.is_ok());
            }
            // A burst of (about) 10, then about one every 100 ms: never faster than the rate.
            let took = Instant::now() - start;
            assert!(
                took >= Duration::from_millis(1900) && took < Duration::from_millis(2500),
                "{class:?}: {took:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_burst_beyond_the_queue_is_refused() {
        let l = Arc::new(ExchangeLimiter::new(100, 10, Duration::from_millis(550)));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire(Class::New).await.is_ok() })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        // 7 immediately, one borrowed from the idle reserve, and 3 more of the general 7 per
        // second within the queue window; the rest are told when to retry.
        assert_eq!(ok, 11);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let l = Arc::new(ExchangeLimiter::new(2, 1000, Duration::from_millis(100)));
        let a = l.acquire(Class::New).await.unwrap();
        // The second takes the idle reserved slot.
        let _b = l.acquire(Class::New).await.unwrap();
        assert_eq!(l.acquire(Class::New).await.err(), Some(BUSY_RETRY_AFTER));
        assert_eq!(l.acquire(Class::Known).await.err(), Some(BUSY_RETRY_AFTER));
        drop(a);
        assert!(l.acquire(Class::New).await.is_ok());
    }

    /// A flood of never-seen credentials spends the general budget and is refused, while known
    /// credentials keep getting rate and concurrency from the reserve, without waiting long.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_new_credentials_cannot_starve_known_ones() {
        let l = Arc::new(ExchangeLimiter::new(8, 20, Duration::from_millis(200)));
        let mut flood = Vec::new();
        let mut known = Vec::new();
        // For 5 s: 50 new credentials every 50 ms (each holding its slot for 40 ms), and one
        // known credential every 250 ms.
        for tick in 0..100u32 {
            for _ in 0..50 {
                let l = l.clone();
                flood.push(tokio::spawn(async move {
                    let p = l.acquire(Class::New).await;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    p.is_ok()
                }));
            }
            if tick % 5 == 0 {
                let l = l.clone();
                known.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let p = l.acquire(Class::Known).await;
                    let waited = Instant::now() - start;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    (p.is_ok(), waited)
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut flood_ok = 0;
        for t in flood {
            flood_ok += usize::from(t.await.unwrap());
        }
        for t in known {
            let (ok, waited) = t.await.unwrap();
            assert!(ok, "a known credential was refused");
            assert!(waited <= Duration::from_millis(200), "{waited:?}");
        }
        // The flood had at most the whole rate (15 + the borrowed reserve) and was mostly
        // refused: 5000 asked.
        assert!(flood_ok > 50 && flood_ok <= 20 * 5 + 20, "{flood_ok}");
    }

    /// Without a reserve (a budget of 1), both classes share it: nothing panics or locks up.
    #[tokio::test(start_paused = true)]
    async fn a_budget_of_one_is_shared() {
        let l = ExchangeLimiter::new(1, 1, Duration::from_millis(10));
        let p = l.acquire(Class::New).await.unwrap();
        assert_eq!(
            l.acquire(Class::Known).await.err(),
            Some(Duration::from_secs(1))
        );
        drop(p);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.acquire(Class::Known).await.is_ok());
    }

    /// The buckets refill by the injected clock alone: held still, nothing refills; moved, the
    /// rate's worth comes back, with no timer involved (a zero queue timeout never waits).
    #[tokio::test]
    async fn buckets_refill_on_the_injected_clock() {
        let clock = crate::clock::FakeClock::new();
        let l = ExchangeLimiter::with_clock(100, 4, Duration::ZERO, clock.clone());
        // 3 general + 1 reserved (idle, so a new credential may borrow it).
        for _ in 0..4 {
            assert!(l.acquire(Class::New).await.is_ok());
        }
        let refused = l.acquire(Class::New).await.err();
        assert!(refused.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(1)));
        clock.advance(Duration::from_millis(300));
        assert!(l.acquire(Class::New).await.is_err(), "0.9 of a token");
        clock.advance(Duration::from_millis(34));
        assert!(
            l.acquire(Class::New).await.is_ok(),
            "one token of the 3 per second"
        );
        assert!(l.acquire(Class::New).await.is_err());
        // The reserve refills at its own 1 per second, for known credentials first.
        clock.advance(Duration::from_secs(1));
        assert!(l.acquire(Class::Known).await.is_ok());
    }

    /// Queue timeouts and rates at their extremes give an answer, never a panic.
    #[tokio::test(start_paused = true)]
    async fn extreme_settings_never_panic() {
        for (conc, rate, queue) in [
            (u32::MAX, u32::MAX, Duration::MAX),
            (1, 1, Duration::MAX),
            (u32::MAX, 1, Duration::ZERO),
            (0, 0, Duration::from_secs(u64::MAX)),
        ] {
            let l = ExchangeLimiter::new(conc, rate, queue);
            for class in [Class::Known, Class::New, Class::New] {
                let _ = l.acquire(class).await;
            }
        }
    }
}
