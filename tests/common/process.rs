//! Child processes that cannot outlive the test, readiness polling (never fixed
//! sleeps), free ports and scratch directories.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// How often readiness is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

const SIGTERM: i32 = 15;

unsafe extern "C" {
    // From the C library that std already links; avoids a libc/nix dependency.
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Owns a child process and stops it on drop: SIGTERM, then SIGKILL if it has
/// not exited within the grace period.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    grace: Duration,
}

impl ChildGuard {
    /// Spawns `cmd`; panics (naming `name`) if it cannot be started.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Self {
        let name = name.into();
        let child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name} ({cmd:?}): {err}"));
        Self::new(name, child)
    }

    /// Takes ownership of an already started child.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child: Some(child),
            grace: Duration::from_secs(5),
        }
    }

    /// Changes how long `stop` waits after SIGTERM before SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The child itself (e.g. to take its stdout), while it is owned.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already stopped")
    }

    /// `Some(status)` once the child has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends a signal (e.g. 1 = SIGHUP, 15 = SIGTERM) to a running child.
    pub fn signal(&mut self, sig: i32) {
        if self.try_wait().is_none() && self.child.is_some() {
            let pid = self.id() as i32;
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // that of our own child, which has not been reaped yet.
            unsafe {
                kill(pid, sig);
            }
        }
    }

    /// Stops the child (SIGTERM, SIGKILL after the grace period) and reaps it.
    /// Returns its exit status; `None` if it was already stopped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: as in `signal`: our own, not yet reaped child.
        unsafe {
            kill(child.id() as i32, SIGTERM);
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {:?}; killing it",
            self.name,
            child.id(),
            self.grace
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The lines a child writes to a pipe, read on a background thread so the
/// child never blocks on a full pipe.
#[derive(Debug)]
pub struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
}

impl Lines {
    /// Starts reading `pipe` (e.g. `child.stdout.take().unwrap()`) line by line.
    pub fn spawn(pipe: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                // Keep draining even when nobody listens any more.
                let _ = tx.send(line);
            }
        });
        Self { rx }
    }

    /// Waits for the next line starting with `prefix` (earlier lines are
    /// discarded) and returns it. Fails at once if the pipe closes (the child
    /// exited), or when `timeout` passes.
    pub async fn wait_for_prefix(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(format!(
                        "output closed before a line starting with {prefix:?}"
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "no line starting with {prefix:?} within {timeout:?}"
                    ));
                }
            }
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then
/// released). Another process may take it in between; starters that use it
/// should retry on "address in use".
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls until a TCP connection to `addr` succeeds.
pub async fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{addr} not accepting connections after {timeout:?}: {last}"
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `url` with GET until it answers 200; returns the body.
pub async fn wait_for_http_ok(url: &str, timeout: Duration) -> Result<String, String> {
    let client = super::http_client();
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get(url).timeout(Duration::from_secs(1)).send().await {
            Ok(resp) if resp.status().is_success() => {
                return resp.text().await.map_err(|e| format!("GET {url}: {e}"));
            }
            Ok(resp) => format!("status {}", resp.status()),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("GET {url} not 200 after {timeout:?}: {last}"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A fresh scratch directory under the system temp dir. Removed on drop,
/// except while the thread is panicking (a failed test): then it is kept, and
/// its path printed, for the logs in it.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "m2m-authz-{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // Owner-only whatever the umask: the issuer refuses a database folder others can write.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file (or subdir) path inside this dir.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Opens `path` for a child's stdout/stderr (created or truncated).
pub fn log_file(path: &Path) -> Stdio {
    Stdio::from(
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())),
    )
}

/// The last `max_lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, max_lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}
