//! The one clock of the request path. Everything that asks "what time is it" — cache expiry and
//! refresh-ahead, negative entries, JWT `exp`/`nbf`/`iat`, rate limits, key refetch gates — asks
//! a [`Clock`], so a test can hold time still or move it forward without sleeping.
//!
//! Two readings, because two questions are asked: a monotonic [`Clock::now`] (tokio's `Instant`,
//! so it agrees with tokio timers and with a paused tokio test clock) for ages and deadlines, and
//! wall-clock [`Clock::unix_now`] seconds for the claims in a token, which are wall-clock times.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// What the request path reads the time from.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Monotonic time, for ages, deadlines and expiries of cached entries.
    fn now(&self) -> Instant;
    /// Wall-clock seconds since the Unix epoch, for token claims (`exp`, `nbf`, `iat`).
    fn unix_now(&self) -> u64;
}

/// A shared clock, as the components hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock: tokio's monotonic time and the system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_now(&self) -> u64 {
        unix_now()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Wall-clock seconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A clock that moves only when told to, for tests and simulations: both readings start where
/// they are created and move together by [`FakeClock::advance`].
#[derive(Debug)]
pub struct FakeClock {
    start: Instant,
    start_unix: u64,
    elapsed_ms: AtomicU64,
}

impl FakeClock {
    /// A clock whose wall-clock reading starts at `start_unix` seconds.
    pub fn at(start_unix: u64) -> Arc<FakeClock> {
        Arc::new(FakeClock {
            start: Instant::now(),
            start_unix,
            elapsed_ms: AtomicU64::new(0),
        })
    }

    /// A clock starting at the system's current wall-clock time.
    pub fn new() -> Arc<FakeClock> {
        FakeClock::at(unix_now())
    }

    /// Moves both readings forward by `by` (whole milliseconds).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.elapsed_ms.fetch_add(ms, Ordering::SeqCst);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn unix_now(&self) -> u64 {
        self.start_unix.saturating_add(self.elapsed().as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_both_readings_together_and_only_when_told() {
        let clock = FakeClock::at(1_000);
        let t0 = clock.now();
        assert_eq!(clock.unix_now(), 1_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now() - t0, Duration::from_millis(1_500));
        assert_eq!(clock.unix_now(), 1_001);
        clock.advance(Duration::from_millis(500));
        assert_eq!(clock.unix_now(), 1_002);
    }

    #[test]
    fn system_clock_reads_the_wall_clock() {
        let now = SystemClock.unix_now();
        assert!(now > 1_700_000_000, "{now}");
    }
}
