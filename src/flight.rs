//! Single flight: concurrent requests for the same credential share one exchange. The work runs
//! on its own task, so it finishes (and fills the cache) even when the request that started it
//! is cancelled, e.g. by Envoy's ext_authz timeout; every waiter gets a clone of the result.

use std::future::Future;
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::cache::CacheKey;

pub type Flight<T> = Shared<BoxFuture<'static, T>>;

/// In-flight work by credential. Bounded by the exchange limits: at most one entry per
/// credential whose exchange is running or queued.
pub struct SingleFlight<T: Clone + Send + Sync + 'static> {
    inflight: Arc<DashMap<CacheKey, Flight<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            inflight: Arc::new(DashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// Joins the flight for `key`, or starts one with `start()`. Returns the shared result and
    /// whether this call started it. `if_lost` is the result should the task panic.
    pub fn join_or_start<F>(
        &self,
        key: CacheKey,
        start: impl FnOnce() -> F,
        if_lost: T,
    ) -> (Flight<T>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        match self.inflight.entry(key) {
            Entry::Occupied(e) => (e.get().clone(), false),
            Entry::Vacant(v) => {
                let map = self.inflight.clone();
                let work = start();
                // The task removes its own entry when done. It cannot do so before the insert
                // below: `v` holds the shard's write lock until then.
                let task = tokio::spawn(async move {
                    let out = work.await;
                    map.remove(&key);
                    out
                });
                let flight = async move { task.await.unwrap_or(if_lost) }
                    .boxed()
                    .shared();
                v.insert(flight.clone());
                (flight, true)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::cache::KeyDeriver;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let key = KeyDeriver::default().derive(&[b"k"]);
        let mut waiters = Vec::new();
        let mut leaders = 0;
        for _ in 0..100 {
            let runs = runs.clone();
            let (f, leader) = flights.join_or_start(
                key,
                move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    7
                },
                0,
            );
            leaders += usize::from(leader);
            waiters.push(tokio::spawn(f));
        }
        for w in waiters {
            assert_eq!(w.await.unwrap(), 7);
        }
        assert_eq!((runs.load(Ordering::SeqCst), leaders), (1, 1));
        assert!(flights.is_empty(), "the finished flight removed itself");
    }

    #[tokio::test(start_paused = true)]
    async fn work_completes_when_every_waiter_is_gone() {
        let flights = SingleFlight::<u32>::default();
        let done = Arc::new(AtomicUsize::new(0));
        let key = KeyDeriver::default().derive(&[b"k"]);
        let d = done.clone();
        let (f, _) = flights.join_or_start(
            key,
            move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                d.fetch_add(1, Ordering::SeqCst);
                1
            },
            0,
        );
        drop(f);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
