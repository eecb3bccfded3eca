//! `runtime`: the async runtime's worker threads. Without `worker_threads`, the count follows
//! the CPU the sidecar may use (its cgroup CPU quota, then the CPUs it may run on); see
//! `crate::runtime`.

use serde::Deserialize;

use super::ConfigError;

/// The most `runtime.worker_threads` may be: far past any useful count for a sidecar, low enough
/// that a typo (an extra zero or three) is refused rather than starting thousands of threads.
pub const MAX_WORKER_THREADS: usize = 256;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run checks. 1 runs everything on one thread (no work stealing, no wake-ups
    /// across threads: the cheapest per check under a one-CPU limit); more run a work-stealing
    /// pool. Absent: the whole CPUs of the cgroup quota, or the CPUs this process may run on,
    /// whichever is fewer, and at least 1.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

impl RuntimeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match self.worker_threads {
            Some(n) if n == 0 || n > MAX_WORKER_THREADS => Err(ConfigError::invalid(
                "runtime.worker_threads",
                format!("expected a whole number from 1 to {MAX_WORKER_THREADS}, got {n}"),
            )),
            _ => Ok(()),
        }
    }
}
