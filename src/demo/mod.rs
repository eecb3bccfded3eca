//! `m2m-authz demo`: the whole flow on one machine, in one command.
//!
//! In this process, on one tokio runtime: the sidecar with the embedded Stytch-compatible issuer
//! (`provider.kind: embedded`), and an echo upstream that answers with the headers it received.
//! As a child process: Envoy, with the shipped bootstrap (`deploy/envoy/envoy.yaml`, compiled
//! into the binary) rendered for the chosen ports. Once everything is up, the demo client (kept
//! in `demo-client` across runs; made anew when missing or no longer accepted) makes one
//! request through Envoy to prove the path, and a banner with ready-to-paste `curl` lines is
//! printed. Ctrl-C, SIGTERM or SIGHUP stops Envoy, drains the sidecar and exits 0; if the demo
//! is killed outright, the kernel kills Envoy with it (parent-death signal).
//!
//! The state directory (default `.demo/`) holds the generated configs, the issuer's database and
//! the logs. The database and the project secret (`project-secret`) are kept between runs, so
//! clients made earlier keep working and `m2m-authz clients … --config .demo/issuer.yaml`
//! manages them; the configs and logs are rewritten on every run.
//!
//! Everything in the state directory is owner-only: the directory is created 0700 and each file
//! 0600 (the configs hold the project secret, the database the signing keys). An existing state
//! directory that group or others can enter is refused with the `chmod` that fixes it.
//!
//! One file (about 810 lines of code): the demo is one sequence — state directory, configs,
//! issuer, sidecar, Envoy, demo client, banner, stop — and each step's failure message names the
//! flag that fixes it; the steps are kept in the order they run.

mod echo;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::defaults::LOG_ENV;
use crate::issuer::{ConfigArg, CreateArgs, MIN_PROJECT_SECRET_LEN, private_files};
use crate::server::{self, ServeError};
use crate::shutdown::{Hangup, StopSignals};
use crate::supervisor::{Stage, Supervisor};

/// The shipped Envoy bootstrap; its ports are rewritten as `tests/common/envoy.rs` does.
const ENVOY_TEMPLATE: &str = include_str!("../../deploy/envoy/envoy.yaml");

const DEMO_USER: &str = "user-demo-1";
/// The demo client's id and secret, kept between runs in the state directory.
const DEMO_CLIENT_FILE: &str = "demo-client";
const DEMO_SCOPES: &str = "read:orders write:orders";
/// The M2M template a new demo database starts with: the one Stytch's M2M guides use, reading
/// the user's id from `trusted_metadata.stytch_user_id`.
const DEMO_TEMPLATE: &str = r#"{"user_id": {{ client.trusted_metadata.stytch_user_id }}}"#;
const PROJECT_ID: &str = "project-test-demo";
/// What the state directory's files hold, for permission errors.
const STATE_WHAT: &str = "the demo's state (project secret, issuer database)";
/// A path the demo's first request (and the banner's curl lines) use.
const DEMO_PATH: &str = "/v1/orders";

/// How long Envoy and the sidecar together may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long Envoy gets to exit after SIGTERM before it is killed.
const ENVOY_STOP_GRACE: Duration = Duration::from_secs(10);
/// The sidecar's `listen.drain_timeout` in the demo.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `m2m-authz demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The Envoy binary (`scripts/tools` installs it).
    #[arg(long, value_name = "PATH", default_value = ".tools/venv/bin/envoy")]
    pub envoy: PathBuf,
    /// State directory: generated configs, the issuer's database, logs. The database and the
    /// project secret are kept between runs; delete the directory to start over.
    #[arg(long, value_name = "DIR", default_value = ".demo")]
    pub dir: PathBuf,
    /// Envoy's HTTP listener on 127.0.0.1: where the requests go.
    #[arg(long, value_name = "PORT", default_value_t = 10000, value_parser = port_parser())]
    pub listen_port: u16,
    /// Envoy's admin interface on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 9902, value_parser = port_parser())]
    pub admin_port: u16,
    /// The sidecar's gRPC port (ext_authz Check and health) on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 9001, value_parser = port_parser())]
    pub grpc_port: u16,
    /// The sidecar's admin HTTP port (/metrics, /healthz, /readyz, /version) on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 9901, value_parser = port_parser())]
    pub metrics_port: u16,
    /// The embedded issuer's HTTP port (token endpoint, JWKS) on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 9400, value_parser = port_parser())]
    pub issuer_port: u16,
    /// The echo upstream's HTTP port on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 8080, value_parser = port_parser())]
    pub upstream_port: u16,
}

fn port_parser() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..)
}

/// One port the demo needs, with what to tell the user when it is taken.
#[derive(Debug, Clone, Copy)]
struct PortUse {
    port: u16,
    what: &'static str,
    flag: &'static str,
}

impl PortUse {
    fn addr(self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn bind_error(self, err: &std::io::Error) -> anyhow::Error {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!(
                "port {} ({}) is in use; pass {} to choose another",
                self.port,
                self.what,
                self.flag
            )
        } else {
            anyhow!(
                "cannot bind 127.0.0.1:{} ({}): {err}; pass {} to choose another",
                self.port,
                self.what,
                self.flag
            )
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    listener: PortUse,
    admin: PortUse,
    grpc: PortUse,
    metrics: PortUse,
    issuer: PortUse,
    upstream: PortUse,
}

impl Ports {
    fn from_args(args: &DemoArgs) -> Self {
        let port = |port, what, flag| PortUse { port, what, flag };
        Ports {
            listener: port(args.listen_port, "Envoy listener", "--listen-port"),
            admin: port(args.admin_port, "Envoy admin", "--admin-port"),
            grpc: port(args.grpc_port, "sidecar gRPC", "--grpc-port"),
            metrics: port(args.metrics_port, "sidecar admin", "--metrics-port"),
            issuer: port(args.issuer_port, "embedded issuer", "--issuer-port"),
            upstream: port(args.upstream_port, "echo upstream", "--upstream-port"),
        }
    }

    fn all(&self) -> [PortUse; 6] {
        [
            self.listener,
            self.admin,
            self.grpc,
            self.metrics,
            self.issuer,
            self.upstream,
        ]
    }

    /// Each port distinct and bindable on 127.0.0.1 right now; the first problem as one line.
    fn check(&self) -> anyhow::Result<()> {
        let all = self.all();
        for (i, a) in all.iter().enumerate() {
            if let Some(b) = all[i + 1..].iter().find(|b| b.port == a.port) {
                bail!(
                    "{} ({}) and {} ({}) are both port {}; give each its own port",
                    a.flag,
                    a.what,
                    b.flag,
                    b.what,
                    a.port
                );
            }
        }
        for p in all {
            std::net::TcpListener::bind(p.addr()).map_err(|e| p.bind_error(&e))?;
        }
        Ok(())
    }
}

/// Runs the demo until ctrl-c or SIGTERM. Errors are one line (`main` prints them), except
/// Envoy's early exit, which carries the tail of its log.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !args.envoy.is_file() {
        bail!(
            "envoy not found at {}; run scripts/tools",
            args.envoy.display()
        );
    }
    let ports = Ports::from_args(&args);
    ports.check()?;
    let state = StateDir::prepare(&args.dir)?;
    let files = state.write_files(&ports)?;
    init_logging(&state.path("m2m-authz.log"))?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run_async(args, ports, state, files))
}

/// The state directory, as the user named it (for messages) and absolute (for configs).
struct StateDir {
    shown: PathBuf,
    absolute: PathBuf,
}

/// What `write_files` produced.
struct Files {
    sidecar_yaml: String,
    issuer_config: PathBuf,
    envoy_config: PathBuf,
}

impl StateDir {
    fn prepare(dir: &Path) -> anyhow::Result<Self> {
        if dir.exists() {
            private_files::check_private_dir(dir, STATE_WHAT, "chmod -R go=")?;
        } else {
            private_files::create_dir_all(dir)?;
        }
        let absolute = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve state dir {}", dir.display()))?;
        if absolute.to_str().is_none() {
            bail!("state dir {} is not valid UTF-8", absolute.display());
        }
        Ok(StateDir {
            shown: dir.to_owned(),
            absolute,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.absolute.join(name)
    }

    fn shown(&self, name: &str) -> String {
        self.shown.join(name).display().to_string()
    }

    /// The project secret guarding the issuer's management API: generated on the first run,
    /// then read back so the database and `issuer.yaml` stay usable between runs.
    fn project_secret(&self) -> anyhow::Result<String> {
        let path = self.path("project-secret");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let secret = text.trim();
            if secret.chars().count() >= MIN_PROJECT_SECRET_LEN
                && secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Ok(secret.to_owned());
            }
        }
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let secret = format!("demo-{}", URL_SAFE_NO_PAD.encode(bytes));
        write_private(&path, &format!("{secret}\n"))?;
        Ok(secret)
    }

    fn write_files(&self, ports: &Ports) -> anyhow::Result<Files> {
        let secret = self.project_secret()?;
        let issuer_listen = quoted(&ports.issuer.addr().to_string());
        let database = self.path("issuer.db");
        let database = quoted(database.to_str().unwrap_or_default());
        let secret = quoted(&secret);

        let issuer_config = self.path("issuer.yaml");
        write_private(
            &issuer_config,
            &format!(
                "# Written by `m2m-authz demo` on every run: the embedded issuer it starts, for\n\
                 #   m2m-authz clients list --config {}\n\
                 listen: {issuer_listen}\n\
                 database: {database}\n\
                 project_id: {PROJECT_ID}\n\
                 project_secret: {secret}\n\
                 # The template a new database starts with (later ones: `issuer template set`).\n\
                 claims_template: {template}\n",
                self.shown("issuer.yaml"),
                template = quoted(DEMO_TEMPLATE),
            ),
        )?;

        let sidecar_yaml = format!(
            "# Written by `m2m-authz demo` on every run: the sidecar it runs in-process, with the\n\
             # embedded issuer. `m2m-authz serve --config` on this file runs the same sidecar.\n\
             listen:\n  grpc: {grpc}\n  admin: {admin}\n  drain_timeout: {drain}s\n\
             provider:\n  kind: embedded\n  embedded:\n    listen: {issuer_listen}\n    \
             database: {database}\n    project_id: {PROJECT_ID}\n    project_secret: {secret}\n    \
             claims_template: {template}\n",
            grpc = quoted(&ports.grpc.addr().to_string()),
            template = quoted(DEMO_TEMPLATE),
            admin = quoted(&ports.metrics.addr().to_string()),
            drain = DRAIN_TIMEOUT.as_secs(),
        );
        write_private(&self.path("m2m-authz.yaml"), &sidecar_yaml)?;

        let envoy_config = self.path("envoy.yaml");
        write_private(&envoy_config, &render_envoy(ENVOY_TEMPLATE, ports)?)?;
        Ok(Files {
            sidecar_yaml,
            issuer_config,
            envoy_config,
        })
    }
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it).
fn quoted(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Writes a file only its owner can read (0600 from the moment it is created): the configs
/// hold the project secret.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = private_files::create_truncate(path, STATE_WHAT)?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Renders the Envoy bootstrap for `ports`: each `port_value: N` text of the template replaced,
/// and the listener's all-interfaces address replaced with 127.0.0.1 — the same edits as
/// `tests/common/envoy.rs`. Every edited text must occur exactly once in the template; they are
/// located in the original before any replacement, so a new port never matches an old text.
fn render_envoy(template: &str, ports: &Ports) -> anyhow::Result<String> {
    let edits = [
        (
            "port_value: 9902",
            format!("port_value: {}", ports.admin.port),
        ),
        (
            "port_value: 10000",
            format!("port_value: {}", ports.listener.port),
        ),
        (
            "port_value: 9001",
            format!("port_value: {}", ports.grpc.port),
        ),
        (
            "port_value: 8080",
            format!("port_value: {}", ports.upstream.port),
        ),
        ("address: 0.0.0.0", "address: 127.0.0.1".to_owned()),
    ];
    let mut at = Vec::with_capacity(edits.len());
    for (from, to) in &edits {
        let found: Vec<usize> = template.match_indices(from).map(|(i, _)| i).collect();
        let [index] = found[..] else {
            bail!(
                "the Envoy template has {} occurrences of {from:?}, expected exactly one",
                found.len()
            );
        };
        // `port_value: 9001` must not be the start of `port_value: 90010`.
        if template[index + from.len()..].starts_with(|c: char| c.is_ascii_digit()) {
            bail!("the Envoy template's {from:?} is followed by another digit");
        }
        at.push((index, *from, to.as_str()));
    }
    at.sort_by_key(|(index, _, _)| *index);
    let mut out = String::with_capacity(template.len());
    let mut done = 0;
    for (index, from, to) in at {
        out.push_str(&template[done..index]);
        out.push_str(to);
        done = index + from.len();
    }
    out.push_str(&template[done..]);
    Ok(out)
}

/// The sidecar's tracing logs go to a file, so the banner on stdout stays readable. The format
/// follows `serve`'s rule for a destination that is not a terminal (JSON unless
/// `M2M_AUTHZ_LOG_FORMAT=text`); level from `M2M_AUTHZ_LOG` (default `info`).
fn init_logging(path: &Path) -> anyhow::Result<()> {
    let file = private_files::create_truncate(path, STATE_WHAT)?;
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(
            crate::telemetry::log_layer(Mutex::new(file), false)
                .with_filter(crate::telemetry::capped(filter)),
        )
        .try_init();
    Ok(())
}

async fn run_async(
    args: DemoArgs,
    ports: Ports,
    state: StateDir,
    files: Files,
) -> anyhow::Result<()> {
    // Installed at once, so no stop signal can kill the process with Envoy still running; a
    // terminal closing (SIGHUP) stops the demo too.
    let mut signals = StopSignals::install(Hangup::Stops)?;
    let (config, settings) = crate::settings::from_yaml(&files.sidecar_yaml)
        .map_err(|e| anyhow!("{}: {e}", state.shown("m2m-authz.yaml")))?;
    // Everything that can fail (the issuer's database above all) before any port is bound.
    let prepared = server::prepare(&config, settings)
        .await
        .map_err(|e| anyhow!("{}: {e}", state.shown("m2m-authz.yaml")))?;

    let echo_listener = TcpListener::bind(ports.upstream.addr())
        .await
        .map_err(|e| ports.upstream.bind_error(&e))?;
    let bound = prepared.bind().await.map_err(|e| match e {
        ServeError::Bind { field, error, .. } if field == server::GRPC_FIELD => {
            ports.grpc.bind_error(&error)
        }
        ServeError::Bind { field, error, .. } if field == server::ADMIN_FIELD => {
            ports.metrics.bind_error(&error)
        }
        ServeError::Bind { field, error, .. } if field == server::ISSUER_LISTEN_FIELD => {
            ports.issuer.bind_error(&error)
        }
        other => other.into(),
    })?;

    let mut supervisor = Supervisor::new(DRAIN_TIMEOUT);
    supervisor.spawn_server(Stage::Background, "echo upstream", |stop| {
        echo::serve(echo_listener, stop)
    });
    bound.start(&supervisor).await;

    let mut envoy = match Envoy::spawn(&args.envoy, &files.envoy_config, &state) {
        Ok(envoy) => envoy,
        Err(e) => {
            supervisor.shutdown().await;
            return Err(e);
        }
    };

    let demo = Demo {
        ports,
        state: &state,
        issuer_config: files.issuer_config.clone(),
    };
    let outcome = tokio::select! {
        result = demo.run(&mut envoy, &mut supervisor) => result,
        _ = signals.recv() => Ok(()),
    };

    // Stop in order: no new requests (Envoy), then the supervisor drains the checks, then stops
    // the issuer and the upstream.
    envoy.stop().await;
    let mut outcome = outcome;
    if let Some(failure) = supervisor.shutdown().await {
        outcome = outcome.and(Err(anyhow!("sidecar: {failure}")));
    }
    if outcome.is_ok() {
        // After SIGHUP the terminal may be gone: a failed write is no reason to fail the stop.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "stopped").and_then(|()| out.flush());
    }
    outcome
}

struct Demo<'a> {
    ports: Ports,
    state: &'a StateDir,
    issuer_config: PathBuf,
}

impl Demo<'_> {
    /// Waits until everything is up, creates the demo client, proves the path with one request,
    /// prints the banner, then runs until Envoy or a part of the sidecar stops by itself (an
    /// error).
    async fn run(&self, envoy: &mut Envoy, sidecar: &mut Supervisor) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .context("cannot build an HTTP client")?;
        self.wait_ready(&http, envoy, sidecar, deadline).await?;

        let client = self.demo_client(&http, deadline).await?;
        self.print_banner(&client.id, &client.secret, envoy.pid)
            .context("cannot write to stdout")?;

        tokio::select! {
            status = envoy.child.wait() => {
                let status = status.context("cannot wait for envoy")?;
                Err(envoy.exited("envoy stopped unexpectedly", status))
            }
            failure = sidecar.failed() => Err(anyhow!("sidecar: {failure}")),
        }
    }

    /// Polls (never a fixed sleep) until Envoy's admin says LIVE and its listener accepts, and the
    /// sidecar's gRPC health says SERVING; fails at once if either stops.
    async fn wait_ready(
        &self,
        http: &reqwest::Client,
        envoy: &mut Envoy,
        sidecar: &mut Supervisor,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let ready_url = format!("http://{}/ready", self.ports.admin.addr());
        let (mut envoy_live, mut sidecar_serving) = (false, false);
        loop {
            if let Some(status) = envoy.child.try_wait().context("cannot wait for envoy")? {
                return Err(envoy.exited("envoy exited during start-up", status));
            }
            if let Some(failure) = sidecar.try_failed() {
                bail!("the sidecar stopped during start-up: {failure}");
            }
            if !envoy_live {
                envoy_live = envoy_is_live(http, &ready_url).await
                    && tokio::net::TcpStream::connect(self.ports.listener.addr())
                        .await
                        .is_ok();
            }
            if !sidecar_serving {
                sidecar_serving = health_is_serving(self.ports.grpc.addr()).await;
            }
            if envoy_live && sidecar_serving {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut waiting = Vec::new();
                if !envoy_live {
                    waiting.push(format!(
                        "Envoy is not LIVE (see {})",
                        self.state.shown("envoy.log")
                    ));
                }
                if !sidecar_serving {
                    waiting.push(format!(
                        "the sidecar is not SERVING (see {})",
                        self.state.shown("m2m-authz.log")
                    ));
                }
                bail!(
                    "not ready after {}s: {}",
                    START_TIMEOUT.as_secs(),
                    waiting.join("; ")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The demo client: the one saved in the state directory by an earlier run when the issuer
    /// still accepts it, else a new one (saved for the next run). Either way one request went
    /// through Envoy with it.
    async fn demo_client(
        &self,
        http: &reqwest::Client,
        deadline: Instant,
    ) -> anyhow::Result<SavedClient> {
        let saved_path = self.state.path(DEMO_CLIENT_FILE);
        if let Some(saved) = SavedClient::read(&saved_path) {
            match self
                .first_request(http, &saved.id, &saved.secret, deadline)
                .await?
            {
                FirstRequest::Allowed => return Ok(saved),
                // Deleted, deactivated or rotated since: make a new one.
                FirstRequest::Refused => {}
            }
        }
        let args = CreateArgs {
            config: ConfigArg {
                config: self.issuer_config.clone(),
            },
            user_id: DEMO_USER.to_owned(),
            scopes: DEMO_SCOPES.to_owned(),
            name: None,
            description: Some("created by m2m-authz demo".to_owned()),
            metadata: None,
            client_id: None,
            json: false,
        };
        let created = tokio::task::spawn_blocking(move || crate::issuer::create_client(args))
            .await
            .context("client creation task failed")?
            .context("cannot create the demo client")?;
        let client = SavedClient {
            id: created.client_id,
            secret: created.client_secret,
        };
        write_private(&saved_path, &client.to_text())?;
        match self
            .first_request(http, &client.id, &client.secret, deadline)
            .await?
        {
            FirstRequest::Allowed => Ok(client),
            FirstRequest::Refused => bail!(
                "the first request through Envoy was refused with the demo client just created (see {})",
                self.state.shown("m2m-authz.log")
            ),
        }
    }

    /// One request through Envoy, so `ready` means the whole path works (and the token is
    /// cached). A 5xx (e.g. Envoy's 1 s ext_authz timeout on a busy machine) is retried; a 401
    /// or 403 is [`FirstRequest::Refused`].
    async fn first_request(
        &self,
        http: &reqwest::Client,
        id: &str,
        secret: &str,
        deadline: Instant,
    ) -> anyhow::Result<FirstRequest> {
        let url = format!("http://{}{DEMO_PATH}", self.ports.listener.addr());
        loop {
            let last = match http.get(&url).basic_auth(id, Some(secret)).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        let echo: Value = serde_json::from_str(&body).unwrap_or_default();
                        let user = echo.pointer("/headers/x-user-id").and_then(Value::as_str);
                        if user == Some(DEMO_USER)
                            && echo.pointer("/headers/authorization").is_none()
                        {
                            return Ok(FirstRequest::Allowed);
                        }
                        bail!(
                            "the first request through Envoy was not rewritten as expected: {body}"
                        );
                    }
                    if matches!(status.as_u16(), 401 | 403) {
                        return Ok(FirstRequest::Refused);
                    }
                    if !status.is_server_error() {
                        bail!(
                            "the first request through Envoy got {status}: {}",
                            body.trim()
                        );
                    }
                    format!("{status}: {}", body.trim())
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the first request through Envoy failed: {last} (see {})",
                    self.state.shown("m2m-authz.log")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn print_banner(&self, id: &str, secret: &str, envoy_pid: u32) -> std::io::Result<()> {
        let url = format!("http://127.0.0.1:{}{DEMO_PATH}", self.ports.listener.port);
        let exe = std::env::args()
            .next()
            .unwrap_or_else(|| "m2m-authz".to_owned());
        let issuer_config = self.state.shown("issuer.yaml");
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        writeln!(out)?;
        writeln!(
            out,
            "  curl → Envoy 127.0.0.1:{} → ext_authz → m2m-authz 127.0.0.1:{} → embedded issuer 127.0.0.1:{}",
            self.ports.listener.port, self.ports.grpc.port, self.ports.issuer.port
        )?;
        writeln!(
            out,
            "                                  └──(allowed)──→ echo upstream 127.0.0.1:{} (answers with the headers it got)",
            self.ports.upstream.port
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "demo client for user {DEMO_USER}, scopes {DEMO_SCOPES}:"
        )?;
        writeln!(out, "client_id: {id}")?;
        writeln!(out, "client_secret: {secret}")?;
        writeln!(out)?;
        writeln!(out, "Try it from another shell:")?;
        writeln!(out)?;
        writeln!(out, "  ID='{id}'")?;
        writeln!(out, "  SECRET='{secret}'")?;
        writeln!(out)?;
        writeln!(
            out,
            "  # allowed: 200; the echo shows \"x-user-id\": \"{DEMO_USER}\" and no authorization header"
        )?;
        writeln!(out, "  curl -s -u \"$ID:$SECRET\" {url}")?;
        writeln!(out)?;
        writeln!(
            out,
            "  # the header pair works too; no x-client-secret reaches the upstream (its x-client-id is the verified client id)"
        )?;
        writeln!(
            out,
            "  curl -s -H \"x-client-id: $ID\" -H \"x-client-secret: $SECRET\" {url}"
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "  # forged identity: the echo shows \"x-user-id\": \"{DEMO_USER}\", not admin"
        )?;
        writeln!(
            out,
            "  curl -s -u \"$ID:$SECRET\" -H 'x-user-id: admin' {url}"
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "  # wrong secret: 401 with www-authenticate: Bearer realm=\"m2m-authz\", error=\"invalid_token\", …"
        )?;
        writeln!(out, "  curl -si -u \"$ID:wrong-secret\" {url}")?;
        writeln!(out)?;
        writeln!(
            out,
            "  # no credential: 401 with www-authenticate: Bearer realm=\"m2m-authz\""
        )?;
        writeln!(out, "  curl -si {url}")?;
        writeln!(out)?;
        writeln!(
            out,
            "more clients: {exe} clients create --config {issuer_config} --user-id user-demo-2 --scopes read:orders"
        )?;
        writeln!(
            out,
            "logs: {} (sidecar and issuer), {} (Envoy), {} (Envoy access log)",
            self.state.shown("m2m-authz.log"),
            self.state.shown("envoy.log"),
            self.state.shown("envoy-access.log")
        )?;
        writeln!(
            out,
            "envoy: pid {envoy_pid}, admin http://127.0.0.1:{}",
            self.ports.admin.port
        )?;
        writeln!(
            out,
            "m2m-authz: metrics http://127.0.0.1:{}/metrics, readiness /readyz",
            self.ports.metrics.port
        )?;
        writeln!(out, "stop with ctrl-c")?;
        out.flush()
    }
}

/// How the demo's first request through Envoy ended (other outcomes are errors).
enum FirstRequest {
    Allowed,
    /// 401/403: the credential is not (or no longer) valid.
    Refused,
}

/// The demo client kept in the state directory (`demo-client`, 0600 like the project secret),
/// so every run shows the same `client_id` and secret. No `Debug`: it holds a secret.
struct SavedClient {
    id: String,
    secret: String,
}

impl SavedClient {
    /// The saved client, or `None` when the file is missing, empty, half-written or not ours
    /// (then a new client is made and the file rewritten).
    fn read(path: &Path) -> Option<SavedClient> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        let id = lines.next()?.strip_prefix("client_id: ")?;
        let secret = lines.next()?.strip_prefix("client_secret: ")?;
        // Only what the issuer generates: no header-breaking byte, no `:` in the id.
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        (plain(id) && plain(secret) && lines.next().is_none()).then(|| SavedClient {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    fn to_text(&self) -> String {
        format!("client_id: {}\nclient_secret: {}\n", self.id, self.secret)
    }
}

async fn envoy_is_live(http: &reqwest::Client, url: &str) -> bool {
    match http.get(url).timeout(Duration::from_secs(1)).send().await {
        Ok(resp) if resp.status().is_success() => {
            resp.text().await.is_ok_and(|t| t.trim() == "LIVE")
        }
        _ => false,
    }
}

async fn health_is_serving(addr: SocketAddr) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(resp) => resp.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

/// Makes the child ask the kernel for SIGKILL when the demo dies, however it dies (SIGKILL
/// included, where no handler of ours runs): no Envoy is left holding the demo's ports.
///
/// Linux sends the parent-death signal when the *thread* that forked the child exits, not the
/// process. The demo spawns Envoy from `run_async`, the future `block_on` drives on the main
/// thread, which lives exactly as long as the process; this refuses any other thread, so a
/// refactor that moves the spawn into a worker task fails loudly instead of killing Envoy when
/// an idle thread exits.
///
/// The demo may die between the fork and the `prctl`; the child then checks that its parent is
/// still the demo and does not start Envoy if it was already re-parented.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_this_process(command: &mut tokio::process::Command) -> anyhow::Result<()> {
    use rustix::process::{Pid, Signal, getppid, set_parent_process_death_signal};
    if std::thread::current().name() != Some("main") {
        bail!("internal error: Envoy must be started from the main thread");
    }
    let parent = Pid::from_raw(std::process::id() as i32);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes two raw system calls (prctl, getppid) and builds an
    // `io::Error` from a raw errno, with no allocation, lock or shared state.
    unsafe {
        command.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            if getppid() != parent {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Envoy as a child process, in its own process group (so a terminal's ctrl-c reaches only the
/// demo, which then stops Envoy in order), killed if dropped.
struct Envoy {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
    log_shown: String,
}

impl Envoy {
    fn spawn(bin: &Path, config: &Path, state: &StateDir) -> anyhow::Result<Self> {
        let log = state.path("envoy.log");
        let create = |path: &Path| private_files::create_truncate(path, STATE_WHAT);
        let stderr = create(&log)?;
        let stdout = create(&state.path("envoy-access.log"))?;
        let mut command = tokio::process::Command::new(bin);
        command
            .arg("-c")
            .arg(config)
            // No shared memory or domain socket: another Envoy may run on this machine.
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1"])
            .args(["-l", "warning"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        #[cfg(target_os = "linux")]
        die_with_this_process(&mut command)?;
        let child = command
            .spawn()
            .with_context(|| format!("cannot start envoy {}", bin.display()))?;
        let pid = child.id().unwrap_or_default();
        Ok(Envoy {
            child,
            pid,
            log,
            log_shown: state.shown("envoy.log"),
        })
    }

    fn exited(&self, what: &str, status: ExitStatus) -> anyhow::Error {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        anyhow!(
            "{what} ({status}); last lines of {}:\n{tail}",
            self.log_shown
        )
    }

    /// SIGTERM, then SIGKILL if Envoy has not exited within the grace period; always reaped.
    async fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // The shell's built-in `kill` is on every system that has `sh`; SIGTERM lets Envoy
        // close its listeners and connections itself.
        let sent = tokio::process::Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &self.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if sent
            && tokio::time::timeout(ENVOY_STOP_GRACE, self.child.wait())
                .await
                .is_ok()
        {
            return;
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(listener: u16, admin: u16, grpc: u16, issuer: u16, upstream: u16) -> Ports {
        Ports::from_args(&DemoArgs {
            envoy: PathBuf::new(),
            dir: PathBuf::new(),
            listen_port: listener,
            admin_port: admin,
            grpc_port: grpc,
            metrics_port: 9901,
            issuer_port: issuer,
            upstream_port: upstream,
        })
    }

    #[test]
    fn envoy_template_renders_every_port_and_loopback() {
        let rendered = render_envoy(ENVOY_TEMPLATE, &ports(11000, 11001, 11002, 11003, 11004))
            .expect("render");
        for text in [
            "port_value: 11000",
            "port_value: 11001",
            "port_value: 11002",
            "port_value: 11004",
        ] {
            assert_eq!(rendered.matches(text).count(), 1, "{text}");
        }
        for old in [
            "port_value: 9902",
            "port_value: 10000",
            "port_value: 9001",
            "port_value: 8080",
        ] {
            assert!(!rendered.contains(old), "{old} left in");
        }
        assert!(!rendered.contains("address: 0.0.0.0"));
    }

    #[test]
    fn rendering_is_not_confused_by_ports_that_swap_texts() {
        // The admin port becomes the template's sidecar port and the other way round.
        let rendered =
            render_envoy(ENVOY_TEMPLATE, &ports(10000, 9001, 9902, 9400, 8080)).expect("render");
        let admin = rendered.find("port_value: 9001").expect("admin");
        let sidecar = rendered.find("port_value: 9902").expect("sidecar");
        assert!(admin < sidecar, "admin comes first in the template");
    }

    #[test]
    fn same_port_twice_is_refused_by_name() {
        let err = ports(10000, 9902, 9001, 9001, 8080).check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--grpc-port (sidecar gRPC) and --issuer-port (embedded issuer) are both port 9001; give each its own port"
        );
    }

    #[test]
    fn a_taken_port_is_named_with_its_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let grpc = ports(10000, 9902, port, 9400, 8080).grpc;
        let err = std::net::TcpListener::bind(grpc.addr())
            .map_err(|e| grpc.bind_error(&e))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("port {port} (sidecar gRPC) is in use; pass --grpc-port to choose another")
        );
    }

    #[test]
    fn a_saved_client_is_read_back_and_a_damaged_file_is_not() {
        let dir = std::env::temp_dir().join(format!("m2m-authz-demo-saved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(DEMO_CLIENT_FILE);
        let saved = SavedClient {
            id: "m2m-client-test-abc".to_owned(),
            secret: "secret-test-xyz".to_owned(),
        };
        std::fs::write(&path, saved.to_text()).unwrap();
        let back = SavedClient::read(&path).expect("read back");
        assert_eq!(
            (back.id.as_str(), back.secret.as_str()),
            ("m2m-client-test-abc", "secret-test-xyz")
        );
        for damaged in [
            "",
            "client_id: m2m-client-test-abc\n",
            "client_id: m2m-client-test-abc\nclient_secret: \n",
            "client_id: a:b\nclient_secret: s\n",
            "client_id: a\nclient_secret: s t\n",
            "client_id: a\nclient_secret: s\nextra\n",
            "client_secret: s\nclient_id: a\n",
        ] {
            std::fs::write(&path, damaged).unwrap();
            assert!(SavedClient::read(&path).is_none(), "{damaged:?}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(SavedClient::read(&path).is_none(), "missing file");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn quoted_strings_are_yaml_safe() {
        assert_eq!(quoted("a\"b: c"), "\"a\\\"b: c\"");
    }
}
