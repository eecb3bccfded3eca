//! Runs the real Envoy (from `scripts/tools`) with deploy/envoy/envoy.yaml,
//! its ports rewritten to free ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::echo::EchoUpstream;
use super::process::{self, ChildGuard, TempDir};
use super::sidecar::Sidecar;

/// The bootstrap shipped for users, relative to the repository root.
pub const CONFIG: &str = "deploy/envoy/envoy.yaml";

/// The texts of deploy/envoy/envoy.yaml that `render_config` replaces; each
/// must occur exactly once in the template.
pub const ADMIN_PORT_TEXT: &str = "port_value: 9902";
pub const LISTENER_PORT_TEXT: &str = "port_value: 10000";
pub const EXT_AUTHZ_PORT_TEXT: &str = "port_value: 9001";
pub const UPSTREAM_PORT_TEXT: &str = "port_value: 8080";
pub const LISTENER_ADDRESS_TEXT: &str = "address: 0.0.0.0";

/// How long Envoy may take to become LIVE.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Envoy sends traffic. Both must be on 127.0.0.1 (the template's
/// cluster addresses; only the ports are rewritten).
#[derive(Clone, Copy, Debug)]
pub struct EnvoyPorts {
    /// The ext_authz gRPC server (cluster `m2m_authz`).
    pub ext_authz: SocketAddr,
    /// The protected application (cluster `upstream`).
    pub upstream: SocketAddr,
}

/// Less common knobs; `EnvoyOptions::default()` is what `Envoy::start` uses.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Bootstrap template (default: deploy/envoy/envoy.yaml); must contain
    /// the same replaceable texts.
    pub config_template: Option<PathBuf>,
    /// Further edits applied to the rendered config: (from, to), each `from`
    /// must occur in it.
    pub replacements: Vec<(String, String)>,
    /// Worker threads (`--concurrency`); default 1.
    pub concurrency: u32,
    /// `-l` log level; default "warning".
    pub log_level: String,
    /// Appended to Envoy's command line.
    pub extra_args: Vec<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            config_template: None,
            replacements: Vec::new(),
            concurrency: 1,
            log_level: "warning".to_owned(),
            extra_args: Vec::new(),
        }
    }
}

/// A running Envoy; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Envoy {
    child: ChildGuard,
    dir: TempDir,
    listener: SocketAddr,
    admin: SocketAddr,
}

/// Renders the bootstrap `template`: listener bound to 127.0.0.1:`listener_port`,
/// admin on `admin_port`, clusters pointed at `ports`. Panics if one of the
/// replaced texts does not occur exactly once.
pub fn render_config(
    template: &str,
    listener_port: u16,
    admin_port: u16,
    ports: &EnvoyPorts,
) -> String {
    for (what, addr) in [("ext_authz", ports.ext_authz), ("upstream", ports.upstream)] {
        assert_eq!(
            addr.ip().to_string(),
            "127.0.0.1",
            "EnvoyPorts.{what} must be on 127.0.0.1 (only ports are rewritten), got {addr}"
        );
    }
    let mut config = template.to_owned();
    for (from, to) in [
        (ADMIN_PORT_TEXT, format!("port_value: {admin_port}")),
        (LISTENER_PORT_TEXT, format!("port_value: {listener_port}")),
        (
            EXT_AUTHZ_PORT_TEXT,
            format!("port_value: {}", ports.ext_authz.port()),
        ),
        (
            UPSTREAM_PORT_TEXT,
            format!("port_value: {}", ports.upstream.port()),
        ),
        (LISTENER_ADDRESS_TEXT, "address: 127.0.0.1".to_owned()),
    ] {
        let count = config.matches(from).count();
        assert_eq!(
            count, 1,
            "{from:?} must occur exactly once in the Envoy template, found {count}"
        );
        config = config.replacen(from, &to, 1);
    }
    config
}

impl Envoy {
    /// Starts Envoy with deploy/envoy/envoy.yaml and waits until it is LIVE.
    pub async fn start(ports: EnvoyPorts) -> Self {
        Self::start_with(ports, EnvoyOptions::default()).await
    }

    /// Like `start`, with options.
    pub async fn start_with(ports: EnvoyPorts, options: EnvoyOptions) -> Self {
        let template_path = options
            .config_template
            .clone()
            .unwrap_or_else(|| super::tools::repo_file(CONFIG));
        let template = std::fs::read_to_string(&template_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
        let envoy_bin = super::tools::envoy_bin();

        // A free port may be taken by someone else before Envoy binds it:
        // retry with new ports when Envoy exits during start-up.
        let mut failures = Vec::new();
        for _attempt in 0..3 {
            match Self::try_start(&envoy_bin, &template, &ports, &options).await {
                Ok(envoy) => return envoy,
                Err((message, exited)) => {
                    failures.push(message);
                    if !exited {
                        break;
                    }
                }
            }
        }
        panic!("Envoy did not start:\n{}", failures.join("\n-----\n"));
    }

    /// Err((report, whether Envoy exited by itself)).
    async fn try_start(
        envoy_bin: &Path,
        template: &str,
        ports: &EnvoyPorts,
        options: &EnvoyOptions,
    ) -> Result<Self, (String, bool)> {
        let dir = TempDir::new("envoy");
        let listener = process::free_addr();
        let admin = process::free_addr();
        let mut config = render_config(template, listener.port(), admin.port(), ports);
        for (from, to) in &options.replacements {
            assert!(
                config.contains(from.as_str()),
                "replacement {from:?} not found in Envoy config"
            );
            config = config.replace(from.as_str(), to);
        }
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write Envoy config");

        let mut cmd = Command::new(envoy_bin);
        cmd.arg("-c")
            .arg(&config_path)
            // No shared memory / domain socket: several Envoys may run at once.
            .arg("--disable-hot-restart")
            .args(["--concurrency", &options.concurrency.to_string()])
            .args(["-l", &options.log_level])
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(process::log_file(&dir.join("stdout.log")))
            .stderr(process::log_file(&dir.join("stderr.log")));
        let child = ChildGuard::spawn("envoy", &mut cmd);
        let mut envoy = Self {
            child,
            dir,
            listener,
            admin,
        };

        match envoy.wait_live(START_TIMEOUT).await {
            Ok(()) => Ok(envoy),
            Err(err) => {
                let exited = envoy.child.try_wait();
                let status = envoy.child.stop();
                let report = format!(
                    "{err}\nEnvoy exit status: {status:?}\nconfig: {}\nstderr (tail):\n{}",
                    envoy.dir.join("envoy.yaml").display(),
                    process::tail(&envoy.dir.join("stderr.log"), 60)
                );
                Err((report, exited.is_some()))
            }
        }
    }

    async fn wait_live(&mut self, timeout: Duration) -> Result<(), String> {
        let client = super::http_client();
        let url = format!("{}/ready", self.admin_url());
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait() {
                return Err(format!("Envoy exited during start-up: {status}"));
            }
            let live = match client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    resp.text().await.unwrap_or_default().trim() == "LIVE"
                }
                _ => false,
            };
            if live {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("Envoy admin {url} not LIVE after {timeout:?}"));
            }
            tokio::time::sleep(process::POLL_INTERVAL).await;
        }
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        process::wait_for_tcp(self.listener, remaining.max(Duration::from_secs(1))).await
    }

    /// The HTTP listener's address (127.0.0.1).
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// `http://127.0.0.1:<listener port>`.
    pub fn listener_url(&self) -> String {
        format!("http://{}", self.listener)
    }

    /// `listener_url()` + `path` (which starts with '/').
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.listener_url())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The rendered bootstrap file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("envoy.yaml")
    }

    /// Envoy's log (stderr) so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The access log (stdout) so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// The value of one counter or gauge from the admin `/stats`, e.g.
    /// `http.ingress_http.ext_authz.ok`; `None` if Envoy has no such stat.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let url = format!(
            "{}/stats?filter=^{}$",
            self.admin_url(),
            name.replace('.', "\\.")
        );
        let text = super::http_client()
            .get(&url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|line| {
            let (stat, value) = line.split_once(": ")?;
            (stat == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// Stops Envoy now (also done on drop).
    pub fn stop(&mut self) {
        self.child.stop();
    }
}

/// An echo upstream behind a real Envoy whose ext_authz cluster points at `ext_authz` (the usual
/// front of an end-to-end test). Fields are dropped in reverse order: Envoy first.
pub struct Front {
    pub envoy: Envoy,
    pub upstream: EchoUpstream,
}

impl Front {
    pub async fn start(ext_authz: SocketAddr) -> Front {
        Front::start_with(ext_authz, EnvoyOptions::default()).await
    }

    pub async fn start_with(ext_authz: SocketAddr, options: EnvoyOptions) -> Front {
        let upstream = EchoUpstream::start().await;
        let ports = EnvoyPorts {
            ext_authz,
            upstream: upstream.addr(),
        };
        let envoy = Envoy::start_with(ports, options).await;
        Front { envoy, upstream }
    }
}

/// The whole stack: the real sidecar started with `config`, and a [`Front`] asking it.
pub async fn stack(config: &str) -> (Sidecar, Front) {
    stack_with(config, EnvoyOptions::default()).await
}

/// Like [`stack`], with Envoy options.
pub async fn stack_with(config: &str, options: EnvoyOptions) -> (Sidecar, Front) {
    let sidecar = Sidecar::start(config).await;
    let front = Front::start_with(sidecar.addr, options).await;
    (sidecar, front)
}
