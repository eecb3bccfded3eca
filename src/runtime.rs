//! The async runtime `serve` runs on, sized for a sidecar that shares its pod's CPU with Envoy.
//!
//! Worker threads beyond the CPU the process may use do no extra work: they only add wake-ups
//! across threads and, under a CPU limit, throttling. So without `runtime.worker_threads` the
//! count is the whole CPUs of the cgroup CPU quota (cgroup v2 `cpu.max`, or v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us`), or the CPUs this process may run on (its affinity
//! mask, as `taskset` sets it), whichever is fewer, and at least 1. One worker runs tokio's
//! current-thread scheduler: every task on the thread that polls the sockets, no work stealing,
//! no cross-thread wake-ups (measured in BENCHMARKS.md, "Runtime").

use std::path::Path;

/// Where the worker count came from, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WorkerSource {
    /// `runtime.worker_threads`.
    Config,
    /// The cgroup CPU quota, in CPUs (may be fractional).
    CpuQuota(f64),
    /// The CPUs this process may run on (no quota, or a larger one).
    Cpus,
}

impl std::fmt::Display for WorkerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerSource::Config => f.write_str("runtime.worker_threads"),
            WorkerSource::CpuQuota(cpus) => write!(f, "cgroup CPU quota of {cpus:.2} CPUs"),
            WorkerSource::Cpus => f.write_str("CPUs available to the process"),
        }
    }
}

/// How many worker threads, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workers {
    pub threads: usize,
    pub source: WorkerSource,
}

impl Workers {
    /// `configured` if set, else what the CPU quota and affinity allow (see the module docs).
    pub fn choose(configured: Option<usize>) -> Workers {
        match configured {
            Some(threads) => Workers {
                threads: threads.max(1),
                source: WorkerSource::Config,
            },
            None => Workers::from_limits(
                cgroup_cpu_quota(Path::new("/")),
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        }
    }

    /// The whole CPUs of `quota` (rounded down: a thread for a fraction of a CPU would only be
    /// throttled), at most `cpus`, at least 1.
    pub fn from_limits(quota: Option<f64>, cpus: usize) -> Workers {
        let cpus = cpus.max(1);
        match quota {
            Some(q) if (q.floor() as usize) < cpus => Workers {
                threads: (q.floor() as usize).max(1),
                source: WorkerSource::CpuQuota(q),
            },
            _ => Workers {
                threads: cpus,
                source: WorkerSource::Cpus,
            },
        }
    }

    /// `current_thread` for one worker, `multi_thread` otherwise.
    pub fn flavour(&self) -> &'static str {
        if self.threads <= 1 {
            "current_thread"
        } else {
            "multi_thread"
        }
    }

    /// The runtime, with I/O and timers.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .enable_all()
                .build()
        }
    }
}

/// The CPU quota of this process's cgroup in CPUs, read under `root` (`/` in production): cgroup
/// v2 first (the process's own cgroup from `/proc/self/cgroup`, then the mount's root, which is
/// the container's own cgroup under a cgroup namespace), then v1. `None`: no quota, or none that
/// can be read (a missing, empty or half-written file is no quota, never an error).
pub fn cgroup_cpu_quota(root: &Path) -> Option<f64> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    let own = read("proc/self/cgroup").unwrap_or_default();
    let mut v2 = Vec::new();
    if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
        let path = path.trim().trim_start_matches('/');
        if !path.is_empty() && !path.contains("..") {
            v2.push(format!("sys/fs/cgroup/{path}/cpu.max"));
        }
    }
    v2.push("sys/fs/cgroup/cpu.max".to_owned());
    if let Some(q) = v2
        .iter()
        .find_map(|p| read(p).and_then(|s| parse_cpu_max(&s)))
    {
        return Some(q);
    }
    ["sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct"]
        .iter()
        .find_map(|dir| {
            parse_cfs(
                &read(&format!("{dir}/cpu.cfs_quota_us"))?,
                &read(&format!("{dir}/cpu.cfs_period_us"))?,
            )
        })
}

/// cgroup v2 `cpu.max`: `QUOTA PERIOD` in microseconds, or `max PERIOD` for no limit.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period = fields.next()?;
    if fields.next().is_some() || quota == "max" {
        return None;
    }
    ratio(quota, period)
}

/// cgroup v1: `cpu.cfs_quota_us` (-1 for no limit) over `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    ratio(quota.trim(), period.trim())
}

fn ratio(quota: &str, period: &str) -> Option<f64> {
    let quota: u64 = quota.parse().ok()?;
    let period: u64 = period.parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_and_cfs_are_parsed_and_anything_else_is_no_quota() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        for no in [
            "max 100000\n",
            "",
            "\n",
            "150000",
            "150000 0",
            "0 100000",
            "-1 100000",
            "15x 100000",
            "150000 100000 7",
            "150000 1000x0",
        ] {
            assert_eq!(parse_cpu_max(no), None, "{no:?}");
        }
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
        for (q, p) in [
            ("-1", "100000"),
            ("", "100000"),
            ("100000", ""),
            ("100000", "0"),
        ] {
            assert_eq!(parse_cfs(q, p), None, "{q:?} {p:?}");
        }
    }

    #[test]
    fn workers_are_whole_cpus_of_the_quota_within_the_cpus_and_at_least_one() {
        let w = |q, cpus| Workers::from_limits(q, cpus).threads;
        assert_eq!(w(None, 8), 8);
        assert_eq!(w(Some(1.5), 8), 1);
        assert_eq!(w(Some(0.25), 8), 1);
        assert_eq!(w(Some(2.0), 8), 2);
        assert_eq!(w(Some(16.0), 4), 4);
        assert_eq!(w(None, 0), 1);
        assert_eq!(
            Workers::from_limits(Some(0.5), 2).source,
            WorkerSource::CpuQuota(0.5)
        );
        assert_eq!(
            Workers::from_limits(Some(4.0), 2).source,
            WorkerSource::Cpus
        );
        assert_eq!(Workers::choose(Some(3)).threads, 3);
        assert_eq!(Workers::choose(Some(3)).source, WorkerSource::Config);
        assert_eq!(Workers::from_limits(None, 1).flavour(), "current_thread");
        assert_eq!(Workers::from_limits(None, 2).flavour(), "multi_thread");
    }

    /// A fake root: v2 in the process's own cgroup wins over the mount's root, v2 over v1, and
    /// files that are missing or half written are no quota.
    #[test]
    fn the_quota_is_read_from_the_own_cgroup_then_the_root_then_v1() {
        let dir = std::env::temp_dir().join(format!("m2m-authz-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |p: &str, s: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        assert_eq!(cgroup_cpu_quota(&dir), None);
        write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "300000\n");
        write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
        assert_eq!(cgroup_cpu_quota(&dir), Some(3.0));
        write("sys/fs/cgroup/cpu.max", "max 100000\n");
        assert_eq!(
            cgroup_cpu_quota(&dir),
            Some(3.0),
            "v2 without a limit falls to v1"
        );
        write("sys/fs/cgroup/cpu.max", "200000 100000\n");
        assert_eq!(cgroup_cpu_quota(&dir), Some(2.0));
        write("proc/self/cgroup", "0::/kubepods/pod1/c1\n");
        write("sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "100000 100000\n");
        assert_eq!(cgroup_cpu_quota(&dir), Some(1.0));
        write("sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "");
        assert_eq!(
            cgroup_cpu_quota(&dir),
            Some(2.0),
            "a half-written file is no quota"
        );
        write("proc/self/cgroup", "0::/../../etc\n");
        assert_eq!(cgroup_cpu_quota(&dir), Some(2.0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
