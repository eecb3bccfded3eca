//! Counters of what the cache and the exchanges did, kept with relaxed atomics (they are
//! statistics, not synchronization) and read as one snapshot by the metrics endpoint and tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// How long calls to the token endpoint took, whatever their outcome.
            pub exchange_latency: LatencyHistogram,
        }

        /// A copy of every counter at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
            pub exchange_latency: LatencySnapshot,
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.load(Relaxed),)*
                    exchange_latency: self.exchange_latency.snapshot(),
                }
            }
        }
    };
}

counters! {
    /// Checks answered from a cached identity (client credentials or bearer).
    hits,
    /// Checks that waited for an exchange or a verification: nothing was cached, or the
    /// cached entry was past its soft expiry.
    misses,
    /// Misses that joined an exchange already in flight for the same credential.
    coalesced,
    /// Checks refused from the negative cache, without asking the provider.
    negative_hits,
    /// Entries dropped to keep the cache within its bound.
    evictions,
    /// Background refreshes started ahead of expiry.
    refreshes,
    /// Checks answered from an expired-but-still-valid entry because the provider was failing.
    stale_served,
    /// Token exchanges by outcome.
    exchanges_ok,
    exchanges_rejected,
    exchanges_failed,
    /// Exchanges refused by the sidecar's own limits (answered 429).
    exchanges_limited,
    /// Shared tier (`cache.shared`): flights answered by a token another pod shared.
    shared_hits,
    /// Shared tier: flights that found nothing usable there and exchanged.
    shared_misses,
    /// Shared tier: Redis failures, timeouts and values that failed to open or verify.
    shared_errors,
    /// Shared tier: flights that waited for another pod's exchange of the same credential.
    shared_lock_waits,
    /// Exchanges refused by the sidecar's own limits for credentials with a cached identity
    /// (refreshes, re-exchanges): the share reserved for them was spent too.
    exchanges_limited_known,
    /// Checks that panicked; each was answered UNAVAILABLE.
    check_panics,
    /// Exchange flights that panicked; each of their waiters was answered UNAVAILABLE.
    flight_panics,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Upper bounds of the latency buckets, in microseconds: 100 µs to 10 s, so both a cache hit
/// and a slow token endpoint land in a bucket of their own. Shared by every latency histogram.
pub const LATENCY_BUCKETS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const BUCKETS: usize = LATENCY_BUCKETS_MICROS.len();

/// A latency histogram with fixed buckets, recorded with relaxed atomics: no lock, no
/// allocation. A reader may see a sample in a bucket a moment before it shows in the sum; that
/// is fine for statistics.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative); the last slot holds those above every bound.
    slots: [AtomicU64; BUCKETS + 1],
    sum_micros: AtomicU64,
}

/// A copy of a `LatencyHistogram`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// `per_bucket[i]`: samples above the previous bound and at or below
    /// `LATENCY_BUCKETS_MICROS[i]` (not cumulative).
    pub per_bucket: [u64; BUCKETS],
    /// Every sample, including those above the last bound.
    pub count: u64,
    pub sum_micros: u64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_MICROS.partition_point(|bound| *bound < micros);
        self.slots[slot].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut per_bucket = [0u64; BUCKETS];
        for (slot, n) in per_bucket.iter_mut().enumerate() {
            *n = self.slots[slot].load(Relaxed);
        }
        // The count is the sum of the slots read here, so the buckets never exceed it.
        let count = per_bucket.iter().sum::<u64>() + self.slots[BUCKETS].load(Relaxed);
        LatencySnapshot {
            per_bucket,
            count,
            sum_micros: self.sum_micros.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets() {
        let h = LatencyHistogram::default();
        for micros in [50, 100, 101, 3_000, 20_000_000] {
            h.record(Duration::from_micros(micros));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum_micros, 50 + 100 + 101 + 3_000 + 20_000_000);
        // A bound is inclusive, as Prometheus's `le`: 50 and 100 µs are in the first bucket.
        assert_eq!(&s.per_bucket[..6], &[2, 1, 0, 0, 0, 1]);
        // 20 s is above every bound: counted, in no bucket.
        assert_eq!(s.per_bucket.iter().sum::<u64>(), 4);
    }
}
