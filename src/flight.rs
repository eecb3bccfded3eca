//! Single flight: concurrent requests for the same credential share one exchange. The work runs
//! on its own task, so it finishes (and fills the cache) even when the request that started it
//! is cancelled, e.g. by Envoy's ext_authz timeout; every waiter gets a clone of the result.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::cache::CacheKey;

pub type Flight<T> = Shared<BoxFuture<'static, T>>;

/// What a flight whose work panicked reports, e.g. a counter to bump.
pub type OnPanic = Arc<dyn Fn() + Send + Sync>;

/// In-flight work by credential. Bounded by the exchange limits: at most one entry per
/// credential whose exchange is running or queued. An entry never outlives its work: it is
/// removed when the work finishes, panics or is cancelled, so the next call starts afresh.
pub struct SingleFlight<T: Clone + Send + Sync + 'static> {
    inflight: Arc<DashMap<CacheKey, (u64, Flight<T>)>>,
    /// Tells one flight's entry from a later one's for the same key.
    generation: AtomicU64,
    /// Called once for each flight whose work panicked (each of its waiters got `if_lost`).
    on_panic: OnPanic,
}

impl<T: Clone + Send + Sync + 'static> Default for SingleFlight<T> {
    fn default() -> Self {
        Self::new(Arc::new(|| {}))
    }
}

/// Removes a flight's entry when dropped: after its work finished, panicked or was cancelled
/// (its task aborted, e.g. when the runtime shuts down).
struct Remove<T: Clone + Send + Sync + 'static> {
    map: Arc<DashMap<CacheKey, (u64, Flight<T>)>>,
    key: CacheKey,
    generation: u64,
}

impl<T: Clone + Send + Sync + 'static> Drop for Remove<T> {
    fn drop(&mut self) {
        self.map
            .remove_if(&self.key, |_, (g, _)| *g == self.generation);
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// `on_panic` is called for each flight whose work panicked.
    pub fn new(on_panic: OnPanic) -> Self {
        SingleFlight {
            inflight: Arc::new(DashMap::new()),
            generation: AtomicU64::new(0),
            on_panic,
        }
    }

    /// Joins the flight for `key`, or starts one with `start()`. Returns the shared result and
    /// whether this call started it. `if_lost` is the result should the work panic or its task
    /// be cancelled.
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
            Entry::Occupied(e) => (e.get().1.clone(), false),
            Entry::Vacant(v) => {
                let generation = self.generation.fetch_add(1, Relaxed);
                let map = self.inflight.clone();
                let work = start();
                let on_panic = self.on_panic.clone();
                let lost = if_lost.clone();
                // The guard removes the entry however the task ends. It cannot do so before
                // the insert below: `v` holds the shard's write lock until then. It is made on
                // the task's first poll, never on this thread (which holds that lock).
                let task = tokio::spawn(async move {
                    let _guard = Remove {
                        map,
                        key,
                        generation,
                    };
                    match AssertUnwindSafe(work).catch_unwind().await {
                        Ok(out) => out,
                        Err(_) => {
                            // The panic message went to the panic hook; it names code, not
                            // the credential.
                            on_panic();
                            tracing::error!("an exchange flight panicked; its waiters fail");
                            lost
                        }
                    }
                });
                let flight = async move { task.await.unwrap_or(if_lost) }
                    .boxed()
                    .shared();
                v.insert((generation, flight.clone()));
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

    /// Work that panics: every waiter gets `if_lost`, the entry is gone, the panic is counted,
    /// and the next call for the same key starts a new flight that succeeds.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_flight_is_removed_and_the_next_call_starts_afresh() {
        let panics = Arc::new(AtomicU64::new(0));
        let counter = panics.clone();
        let flights = SingleFlight::<u32>::new(Arc::new(move || {
            counter.fetch_add(1, Relaxed);
        }));
        let key = KeyDeriver::default().derive(&[b"k"]);
        let (f, leader) = flights.join_or_start(
            key,
            || async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("boom");
            },
            0,
        );
        let (joined, second_leader) = flights.join_or_start(key, || async { 5 }, 0);
        assert!(leader && !second_leader);
        assert_eq!((f.await, joined.await), (0, 0));
        assert_eq!(panics.load(Relaxed), 1);
        assert!(flights.is_empty(), "the panicked flight removed itself");
        let (f, leader) = flights.join_or_start(key, || async { 7 }, 0);
        assert!(leader, "a new flight started");
        assert_eq!(f.await, 7);
        assert!(flights.is_empty());
    }

    /// A flight whose task is cancelled (the runtime shutting down) leaves no entry behind.
    #[test]
    fn a_cancelled_flight_leaves_no_entry() {
        let flights = SingleFlight::<u32>::default();
        let key = KeyDeriver::default().derive(&[b"k"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_f, _) = flights.join_or_start(key, std::future::pending::<u32>, 0);
            tokio::task::yield_now().await;
        });
        assert_eq!(flights.len(), 1);
        drop(rt);
        assert!(flights.is_empty(), "dropping the task removed its entry");
    }
}
