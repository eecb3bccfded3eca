//! One owner for every task a running command starts, and one ordered stop.
//!
//! Each task belongs to a [`Stage`]. All stage tokens are children of one root
//! [`CancellationToken`]: cancelling it (or dropping the supervisor) stops everything at once,
//! while [`Supervisor::shutdown`] stops the stages one after another, each within its deadline:
//!
//! 1. [`Stage::Checks`]: the Check server stops accepting and drains the checks in flight, for at
//!    most `listen.drain_timeout`; then its remaining connections are closed.
//! 2. [`Stage::Background`]: the admin port, the embedded issuer and the loops (JWKS refresh,
//!    cache sweep, policy reload, the health reporter). The admin port answers (`/readyz` 503)
//!    and the issuer keeps issuing while checks drain: a draining check may still need a token.
//! 3. The stop hooks, in the order they were added: flushing telemetry, removing the Unix socket.
//!
//! A loop given to [`Supervisor::spawn`] is simply dropped at its next `.await` when its stage
//! stops; a server given to [`Supervisor::spawn_server`] gets its stage's token to stop
//! gracefully, and is dropped only when it outlives the stage's deadline. A server that fails
//! (or any task that panics) asks for the whole supervisor to stop: [`Supervisor::failed`].

use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long the background stage may take to stop (the admin port and the issuer finishing
/// their last responses).
pub const BACKGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// When a task stops, in shutdown order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The Check server: stops accepting first, then drains.
    Checks,
    /// Everything a draining check may still need, and what outlives it.
    Background,
}

impl Stage {
    const ALL: [Stage; 2] = [Stage::Checks, Stage::Background];

    fn index(self) -> usize {
        match self {
            Stage::Checks => 0,
            Stage::Background => 1,
        }
    }
}

struct Task {
    stage: Stage,
    name: &'static str,
    handle: JoinHandle<()>,
}

type Hook = (&'static str, Box<dyn FnOnce() + Send>);

/// Owns the tasks of one running command (see the module docs).
pub struct Supervisor {
    /// The one token: every stage's token is its child.
    root: CancellationToken,
    stages: [CancellationToken; 2],
    deadlines: [Duration; 2],
    tasks: Mutex<Vec<Task>>,
    hooks: Mutex<Vec<Hook>>,
    failures: mpsc::UnboundedSender<String>,
    failed: mpsc::UnboundedReceiver<String>,
    /// Cancels the root when the supervisor is dropped without `shutdown` (an error while
    /// starting, a test): nothing it started outlives it.
    _guard: DropGuard,
}

impl Supervisor {
    /// `drain`: how long the checks in flight get to finish (`listen.drain_timeout`).
    pub fn new(drain: Duration) -> Supervisor {
        let root = CancellationToken::new();
        let (failures, failed) = mpsc::unbounded_channel();
        Supervisor {
            stages: [root.child_token(), root.child_token()],
            deadlines: [drain, BACKGROUND_STOP_TIMEOUT],
            _guard: root.clone().drop_guard(),
            root,
            tasks: Mutex::new(Vec::new()),
            hooks: Mutex::new(Vec::new()),
            failures,
            failed,
        }
    }

    /// Cancelled when `stage` begins to stop (or the whole supervisor does).
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.stages[stage.index()].clone()
    }

    /// Runs `task` until it ends by itself or `stage` stops; then it is dropped at its next
    /// `.await`. For loops that hold nothing that needs a goodbye.
    pub fn spawn<F>(&self, stage: Stage, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token(stage);
        self.track(
            stage,
            name,
            tokio::spawn(async move {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = task => {}
                }
            }),
        );
    }

    /// Runs a server made by `make`, which is given the future that completes when `stage`
    /// begins to stop: the server then stops accepting and finishes what it has, within the
    /// stage's deadline. An error ends the server and asks the supervisor to stop
    /// ([`Supervisor::failed`]).
    pub fn spawn_server<M, F, E>(&self, stage: Stage, name: &'static str, make: M)
    where
        M: FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> F,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let server = make(self.token(stage).cancelled_owned());
        let failures = self.failures.clone();
        self.track(
            stage,
            name,
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    let _ = failures.send(format!("{name}: {e}"));
                }
            }),
        );
    }

    /// Runs `hook` once every task has stopped, after the hooks added before it.
    pub fn on_stop(&self, name: &'static str, hook: impl FnOnce() + Send + 'static) {
        lock(&self.hooks).push((name, Box::new(hook)));
    }

    /// Completes with the first failure of a server (see [`Supervisor::spawn_server`]); a
    /// running supervisor should then be shut down.
    pub async fn failed(&mut self) -> String {
        match self.failed.recv().await {
            Some(failure) => failure,
            // We hold a sender ourselves: the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// The first server failure, if one has happened; it is not reported again.
    pub fn try_failed(&mut self) -> Option<String> {
        self.failed.try_recv().ok()
    }

    /// Waits for `stop` (a stop signal) or a failure, whichever comes first, then stops
    /// everything in order. A failure is returned after the stop.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), String> {
        let failure = tokio::select! {
            () = stop => None,
            failure = self.failed() => Some(failure),
        };
        if let Some(failure) = &failure {
            tracing::error!(%failure, "stopping");
        }
        let late = self.shutdown().await;
        match failure.or(late) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Stops the stages in order (see the module docs), then runs the stop hooks. Returns a
    /// server failure that happened meanwhile, if any.
    pub async fn shutdown(mut self) -> Option<String> {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        for stage in Stage::ALL {
            let deadline = self.deadlines[stage.index()];
            if stage == Stage::Checks {
                tracing::info!(
                    drain_secs = deadline.as_secs_f32(),
                    "shutting down: draining in-flight checks"
                );
            }
            self.stages[stage.index()].cancel();
            let (mine, rest): (Vec<Task>, Vec<Task>) =
                tasks.into_iter().partition(|t| t.stage == stage);
            tasks = rest;
            let stopping = tokio::time::Instant::now() + deadline;
            for mut task in mine {
                match tokio::time::timeout_at(stopping, &mut task.handle).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.is_panic() => {
                        tracing::error!(task = task.name, "a task panicked");
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        if stage == Stage::Checks {
                            tracing::warn!("drain timeout reached; closing remaining connections");
                        } else {
                            tracing::warn!(task = task.name, "did not stop in time; dropped");
                        }
                        task.handle.abort();
                        let _ = task.handle.await;
                    }
                }
            }
        }
        self.root.cancel();
        let hooks = std::mem::take(&mut *lock(&self.hooks));
        for (name, hook) in hooks {
            // A hook may block (the trace exporter's flush): not on a runtime worker.
            if tokio::task::spawn_blocking(hook).await.is_err() {
                tracing::error!(hook = name, "a stop hook panicked");
            }
        }
        self.failed.try_recv().ok()
    }

    fn track(&self, stage: Stage, name: &'static str, handle: JoinHandle<()>) {
        lock(&self.tasks).push(Task {
            stage,
            name,
            handle,
        });
    }
}

/// A poisoned lock only means a panic elsewhere while pushing to a list; the list is intact.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records the order in which things happened.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Log {
        fn push(&self, s: &str) {
            lock(&self.0).push(s.to_owned());
        }
        fn get(&self) -> Vec<String> {
            lock(&self.0).clone()
        }
    }

    /// Pushes `name` to `log` when dropped: a loop's end, seen from outside.
    struct OnDrop(Log, &'static str);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.push(self.1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_and_hooks_run_last() {
        let log = Log::default();
        let sup = Supervisor::new(Duration::from_secs(5));
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        // A server that needs 1 s to drain after it is told to stop.
        sup.spawn_server(Stage::Checks, "grpc", move |stop| async move {
            stop.await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            l1.push("checks drained");
            Ok::<(), String>(())
        });
        sup.spawn(Stage::Background, "loop", async move {
            let _g = OnDrop(l2, "loop stopped");
            std::future::pending::<()>().await;
        });
        sup.on_stop("flush", move || l3.push("flushed"));
        let l4 = log.clone();
        sup.on_stop("socket", move || l4.push("socket removed"));
        tokio::task::yield_now().await;
        assert!(sup.shutdown().await.is_none());
        assert_eq!(
            log.get(),
            [
                "checks drained",
                "loop stopped",
                "flushed",
                "socket removed"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_outliving_its_deadline_is_dropped_at_the_deadline() {
        let sup = Supervisor::new(Duration::from_secs(5));
        let log = Log::default();
        let l = log.clone();
        sup.spawn_server(Stage::Checks, "grpc", move |_stop| async move {
            let _g = OnDrop(l, "cut off");
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        });
        let started = tokio::time::Instant::now();
        assert!(sup.shutdown().await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(log.get(), ["cut off"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_server_stops_everything_and_is_reported() {
        let sup = Supervisor::new(Duration::from_secs(5));
        let stopped = Arc::new(AtomicUsize::new(0));
        let s = stopped.clone();
        sup.spawn_server(Stage::Background, "admin", |_stop| async {
            Err::<(), _>("address vanished")
        });
        sup.spawn_server(Stage::Checks, "grpc", move |stop| async move {
            stop.await;
            s.fetch_add(1, Ordering::SeqCst);
            Ok::<(), String>(())
        });
        let result = sup.run_until(std::future::pending()).await;
        assert_eq!(result, Err("admin: address vanished".to_owned()));
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            1,
            "the Check server drained"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_supervisor_stops_its_tasks() {
        let log = Log::default();
        let l = log.clone();
        let sup = Supervisor::new(Duration::from_secs(5));
        let token = sup.token(Stage::Checks);
        sup.spawn(Stage::Background, "loop", async move {
            let _g = OnDrop(l, "loop stopped");
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        drop(sup);
        assert!(token.is_cancelled());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(log.get(), ["loop stopped"]);
    }
}
