//! Counters of what the cache and the exchanges did, kept with relaxed atomics (they are
//! statistics, not synchronization) and read as one snapshot by the metrics endpoint and tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of every counter at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Relaxed),)* }
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
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}
