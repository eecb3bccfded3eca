//! The real `m2m-authz` binary as a process: config written to a temp dir, started with
//! `serve --config`, ready once its gRPC health says SERVING.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use m2m_authz::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::process::{ChildGuard, TempDir, free_addr, log_file, tail};

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The file in a sidecar's temp dir that names its `listen.admin` address.
const ADMIN_ADDR_FILE: &str = "admin.addr";
/// The Check socket of a sidecar started with `Sidecar::start_unix`, in its temp dir.
const SOCKET_FILE: &str = "grpc.sock";

/// The sidecar's log line once all its listeners are bound.
const LISTENING: &str = "m2m-authz listening for ext_authz checks";

/// When a starting sidecar counts as started.
#[derive(Debug, Clone, Copy)]
enum Ready {
    /// gRPC health says SERVING.
    Serving,
    /// The gRPC port accepts connections.
    Listening,
    /// The admin port's `/readyz` answers 200.
    Readyz,
    /// The Check socket accepts connections.
    UnixSocket,
}

/// A free `listen.admin` address for a sidecar in `dir`, remembered for `Sidecar::admin_url`.
fn admin_addr(dir: &TempDir) -> SocketAddr {
    let admin = free_addr();
    std::fs::write(dir.join(ADMIN_ADDR_FILE), admin.to_string()).unwrap();
    admin
}

pub struct Sidecar {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

/// The binary under test. Cargo names it to tests and benches; the load tool (an example,
/// which Cargo does not tell) finds it itself.
pub fn binary() -> &'static str {
    match option_env!("CARGO_BIN_EXE_m2m-authz") {
        Some(path) => path,
        None => panic!("CARGO_BIN_EXE_m2m-authz: only tests and benches know the binary"),
    }
}

impl Sidecar {
    /// Starts the binary with `config` (YAML without `listen`), on a free port.
    pub async fn start(config: &str) -> Sidecar {
        Self::start_with_env(config, &[]).await
    }

    /// Like `start`, with extra environment variables.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Sidecar {
        Self::start_until(Ready::Serving, || Self::spawn_serve("", config, env)).await
    }

    /// Starts the binary with `config` and returns once its gRPC port accepts connections,
    /// without waiting for SERVING: for a sidecar that cannot load its provider's keys.
    pub async fn start_unready(config: &str) -> Sidecar {
        Self::start_until(Ready::Listening, || Self::spawn_serve("", config, &[])).await
    }

    /// Starts the binary with more `listen` fields (YAML lines indented by two spaces, such as
    /// `  tls:\n    cert_file: …\n`); ready once its admin port's `/readyz` answers 200, for a
    /// Check port the plain-text health check cannot reach (TLS).
    pub async fn start_with_listen(listen: &str, config: &str) -> Sidecar {
        Self::start_until(Ready::Readyz, || Self::spawn_serve(listen, config, &[])).await
    }

    /// Starts the binary serving Check on a Unix domain socket in its temp dir; ready once the
    /// socket accepts connections. Returns the sidecar and the socket path.
    pub async fn start_unix(config: &str) -> (Sidecar, std::path::PathBuf) {
        let sidecar = Self::start_until(Ready::UnixSocket, || Self::spawn_unix(config)).await;
        let socket = sidecar.dir.join(SOCKET_FILE);
        (sidecar, socket)
    }

    /// Spawns with `spawn` until the sidecar is `ready`. A free port can be taken by another
    /// test between being chosen and being bound (the sidecar builds everything before it
    /// binds): a sidecar that exits early with "Address already in use" is started again, on
    /// new ports.
    async fn start_until(ready: Ready, spawn: impl Fn() -> Sidecar) -> Sidecar {
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            let mut sidecar = spawn();
            match sidecar.ready_within(ready, READY_TIMEOUT).await {
                Ok(()) => return sidecar,
                Err(logs) if attempt < ATTEMPTS && logs.contains("Address already in use") => {
                    eprintln!("m2m-authz lost its port to another test; starting it again");
                }
                Err(logs) => panic!("{logs}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn_serve(listen: &str, config: &str, env: &[(&str, &str)]) -> Sidecar {
        let dir = TempDir::new("sidecar");
        let addr = free_addr();
        let admin = admin_addr(&dir);
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            format!(
                "listen:\n  grpc: \"{addr}\"\n  admin: \"{admin}\"\n  drain_timeout: 5s\n{listen}{config}"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("M2M_AUTHZ_LOG", "m2m_authz=debug,info")
            .env("M2M_AUTHZ_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("stdout.log")))
            .stderr(log_file(&dir.join("stderr.log")));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = ChildGuard::spawn("m2m-authz", &mut cmd);
        Sidecar { child, addr, dir }
    }

    fn spawn_unix(config: &str) -> Sidecar {
        let dir = TempDir::new("sidecar-uds");
        let socket = dir.join(SOCKET_FILE);
        let path = dir.join("config.yaml");
        let admin = admin_addr(&dir);
        std::fs::write(
            &path,
            format!(
                "listen:\n  grpc: \"unix:{}\"\n  admin: \"{admin}\"\n{config}",
                socket.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("M2M_AUTHZ_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stderr(log_file(&dir.join("stderr.log")));
        let child = ChildGuard::spawn("m2m-authz", &mut cmd);
        Sidecar {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://host:port` of the admin port (`listen.admin`), for sidecars started here.
    pub fn admin_url(&self) -> String {
        let addr = std::fs::read_to_string(self.dir.join(ADMIN_ADDR_FILE))
            .expect("this sidecar was not started with a known listen.admin");
        format!("http://{}", addr.trim())
    }

    /// GETs `path` on the admin port: the status and the body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.admin_url());
        let r = super::http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status().as_u16();
        (
            status,
            r.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}")),
        )
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {text}");
        text
    }

    /// Polls gRPC health until SERVING; panics with the log tail on timeout or exit.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        if let Err(e) = self.ready_within(Ready::Serving, timeout).await {
            panic!("{e}");
        }
    }

    /// Polls until the sidecar is `ready`; on timeout or exit, what happened and the log tail.
    async fn ready_within(&mut self, ready: Ready, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait() {
                return Err(format!(
                    "m2m-authz exited early ({status}):\n{}",
                    self.logs()
                ));
            }
            if self.is(ready).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "m2m-authz not {ready:?} after {timeout:?}:\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(super::process::POLL_INTERVAL).await;
        }
    }

    async fn is(&self, ready: Ready) -> bool {
        // Logged once every port is bound: before it, a connection or an answer may come from
        // another test's process that holds the port this one was given.
        if !self.full_logs().contains(LISTENING) {
            return false;
        }
        match ready {
            Ready::Serving => self.health().await == Some(ServingStatus::Serving),
            Ready::Listening => tokio::net::TcpStream::connect(self.addr).await.is_ok(),
            Ready::Readyz => super::http_client()
                .get(format!("{}/readyz", self.admin_url()))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            Ready::UnixSocket => tokio::net::UnixStream::connect(self.dir.join(SOCKET_FILE))
                .await
                .is_ok(),
        }
    }

    pub async fn health(&self) -> Option<ServingStatus> {
        let channel = Channel::from_shared(self.url())
            .ok()?
            .connect()
            .await
            .ok()?;
        let r = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    }

    pub async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(self.url())
            .await
            .expect("connect to m2m-authz")
    }

    pub fn logs(&self) -> String {
        tail(&self.dir.join("stderr.log"), 60)
    }

    pub fn full_logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}
