//! The embedded issuer run the way an operator runs it: `m2m-authz issuer --config F` as its own
//! process, and `m2m-authz clients …` against the same config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::process::{ChildGuard, TempDir, free_addr, log_file, tail};
use super::sidecar::binary;

pub const PROJECT_ID: &str = "project-test-stack";
pub const PROJECT_SECRET: &str = "stack-test-project-secret-0123456789";
/// The management key of [`IssuerProcess::start_managed`] (`management.key_id`,
/// `management.key_secret`) and its slugs.
pub const MANAGEMENT_KEY_ID: &str = "workspace-key-test";
pub const MANAGEMENT_KEY_SECRET: &str = "stack-test-management-secret-98765";
pub const MANAGEMENT_PROJECT_SLUG: &str = "stack-project";
pub const MANAGEMENT_ENVIRONMENT_SLUG: &str = "test";

pub struct IssuerProcess {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub dir: TempDir,
    /// Serving HTTPS with the certificate it generated (`tls: {self_signed: true}`).
    pub tls: bool,
}

/// What `tls: {self_signed: true}` adds to an issuer config.
pub const SELF_SIGNED_TLS: &str = "tls:\n  self_signed: true\n";

/// Writes `dir/issuer.yaml` (mode 0600, as it holds the project secret) for an issuer on `addr`
/// with this database (relative paths are taken beside the file) and project secret.
pub fn write_config(dir: &Path, addr: SocketAddr, database: &str, secret: &str) -> PathBuf {
    let path = dir.join("issuer.yaml");
    write_private(
        &path,
        &format!(
            "listen: {addr}\ndatabase: {database}\nproject_id: {PROJECT_ID}\nproject_secret: {secret}\n"
        ),
    );
    path
}

/// Writes `text` to `path`, replacing it, with mode 0600 from the start.
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Runs `m2m-authz <args…> --config <config>` without the project-secret variable and returns
/// its output, whatever the exit status.
pub fn cli_output(config: &Path, args: &[&str]) -> Output {
    cli_output_env(config, args, None)
}

/// Runs `m2m-authz <args…> --config <config>` with the project-secret variable set to `secret`
/// (or unset) and returns its output, whatever the exit status. It is killed after 20 s should
/// it not exit: `serve` and `issuer` run until stopped when they accept their config, and a test
/// expecting a refusal must fail, not hang, when there is none.
pub fn cli_output_env(config: &Path, args: &[&str], secret: Option<&str>) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("20")
        .arg(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("M2M_ISSUER_PROJECT_SECRET")
        .stdin(Stdio::null());
    if let Some(secret) = secret {
        cmd.env("M2M_ISSUER_PROJECT_SECRET", secret);
    }
    cmd.output().unwrap()
}

/// Writes `dir/sidecar.yaml` (mode 0600) for the sidecar with the embedded issuer on free
/// ports, with this database and, when given, the project secret in the file.
pub fn write_embedded_sidecar_config(dir: &Path, database: &str, secret: Option<&str>) -> PathBuf {
    let path = dir.join("sidecar.yaml");
    let secret = secret
        .map(|s| format!("    project_secret: {s}\n"))
        .unwrap_or_default();
    write_private(
        &path,
        &format!(
            "listen:\n  grpc: {}\n  admin: {}\nprovider:\n  kind: embedded\n  embedded:\n    \
             listen: {}\n    database: {database}\n    project_id: {PROJECT_ID}\n{secret}",
            free_addr(),
            free_addr(),
            free_addr()
        ),
    );
    path
}

impl IssuerProcess {
    pub async fn start() -> IssuerProcess {
        let dir = TempDir::new("issuer");
        let addr = free_addr();
        write_config(dir.path(), addr, "issuer.db", PROJECT_SECRET);
        Self::start_in(dir, addr).await
    }

    /// A fresh issuer serving HTTPS with a certificate it generates (`tls.self_signed`), with
    /// these extra environment variables; clients trust [`IssuerProcess::ca_file`].
    pub async fn start_tls_env(env: &[(&str, &str)]) -> IssuerProcess {
        let dir = TempDir::new("issuer");
        let addr = free_addr();
        let config = write_config(dir.path(), addr, "issuer.db", PROJECT_SECRET);
        let text = std::fs::read_to_string(&config).unwrap();
        write_private(&config, &format!("{text}{SELF_SIGNED_TLS}"));
        Self::launch(dir, addr, env, true).await
    }

    /// Starts the issuer on the `issuer.yaml` already in `dir` (see [`write_config`]), which
    /// listens on `addr`.
    pub async fn start_in(dir: TempDir, addr: SocketAddr) -> IssuerProcess {
        Self::start_in_env(dir, addr, &[]).await
    }

    /// A fresh issuer (as [`IssuerProcess::start`]) with these extra environment variables,
    /// such as `("M2M_AUTHZ_LOG", "trace")`.
    pub async fn start_env(env: &[(&str, &str)]) -> IssuerProcess {
        let dir = TempDir::new("issuer");
        let addr = free_addr();
        write_config(dir.path(), addr, "issuer.db", PROJECT_SECRET);
        Self::start_in_env(dir, addr, env).await
    }

    /// A fresh issuer whose Management API subset is open to [`MANAGEMENT_KEY_ID`] /
    /// [`MANAGEMENT_KEY_SECRET`] under [`MANAGEMENT_PROJECT_SLUG`] /
    /// [`MANAGEMENT_ENVIRONMENT_SLUG`], with `extra_yaml` appended to its config (such as a
    /// `claims_template:` line, or [`SELF_SIGNED_TLS`] to serve HTTPS) and these environment
    /// variables.
    pub async fn start_managed(extra_yaml: &str, env: &[(&str, &str)]) -> IssuerProcess {
        let dir = TempDir::new("issuer");
        let addr = free_addr();
        let path = write_config(dir.path(), addr, "issuer.db", PROJECT_SECRET);
        let base = std::fs::read_to_string(&path).unwrap();
        write_private(
            &path,
            &format!(
                "{base}management:\n  key_id: {MANAGEMENT_KEY_ID}\n  key_secret: \
                 {MANAGEMENT_KEY_SECRET}\n  project_slug: {MANAGEMENT_PROJECT_SLUG}\n  \
                 environment_slug: {MANAGEMENT_ENVIRONMENT_SLUG}\n{extra_yaml}"
            ),
        );
        Self::launch(dir, addr, env, extra_yaml.contains(SELF_SIGNED_TLS)).await
    }

    /// [`IssuerProcess::start_in`] with these extra environment variables.
    pub async fn start_in_env(
        dir: TempDir,
        addr: SocketAddr,
        env: &[(&str, &str)],
    ) -> IssuerProcess {
        Self::launch(dir, addr, env, false).await
    }

    /// Starts the issuer on `dir`'s config and waits until it accepts connections. A free port
    /// can be taken by another test between being chosen and being bound: an issuer that exits
    /// with "Address already in use" is started again on a new port (its `listen` rewritten).
    async fn launch(
        mut dir: TempDir,
        mut addr: SocketAddr,
        env: &[(&str, &str)],
        tls: bool,
    ) -> IssuerProcess {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            let child = ChildGuard::spawn(
                "m2m-authz issuer",
                Command::new(binary())
                    .args(["issuer", "--config"])
                    .arg(dir.join("issuer.yaml"))
                    .env("M2M_AUTHZ_LOG_FORMAT", "json")
                    .envs(env.iter().copied())
                    .stdin(Stdio::null())
                    .stdout(log_file(&dir.join("stdout.log")))
                    .stderr(log_file(&dir.join("stderr.log"))),
            );
            let mut issuer = IssuerProcess {
                child,
                addr,
                dir,
                tls,
            };
            match issuer.listening_within(Duration::from_secs(20)).await {
                Ok(()) => return issuer,
                Err(e) if attempt < ATTEMPTS && e.contains("Address already in use") => {
                    eprintln!("the issuer lost its port to another test; starting it again");
                    addr = free_addr();
                    let config = issuer.config_path();
                    let text = std::fs::read_to_string(&config).unwrap();
                    let moved: Vec<String> = text
                        .lines()
                        .map(|l| match l.starts_with("listen:") {
                            true => format!("listen: {addr}"),
                            false => l.to_owned(),
                        })
                        .collect();
                    write_private(&config, &(moved.join("\n") + "\n"));
                    let IssuerProcess { child, dir: d, .. } = issuer;
                    drop(child);
                    dir = d;
                    attempt += 1;
                }
                Err(e) => panic!("issuer did not start: {e}"),
            }
        }
    }

    /// Polls until the issuer accepts connections; on its exit or a timeout, why, with its log.
    async fn listening_within(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait() {
                return Err(format!(
                    "exited early ({status}):\n{}",
                    tail(&self.dir.join("stderr.log"), 40)
                ));
            }
            // The log line comes once the port is bound; before it, a connection may reach
            // another test's process that holds the port this one was given.
            let log = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
            if log.contains("embedded M2M issuer listening")
                && tokio::net::TcpStream::connect(self.addr).await.is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} not accepting connections after {timeout:?}:\n{}",
                    self.addr,
                    tail(&self.dir.join("stderr.log"), 40)
                ));
            }
            tokio::time::sleep(super::process::POLL_INTERVAL).await;
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("issuer.yaml")
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/v1/sessions/jwks/{PROJECT_ID}", self.base_url())
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA a TLS issuer generated beside its database, which its clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("issuer-tls-ca.pem")
    }

    /// An HTTP client for this issuer: [`super::http_client`], trusting its CA when it has one.
    pub fn http(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if self.tls {
            let pem = std::fs::read(self.ca_file()).expect("the issuer's CA file");
            builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        }
        builder.build().expect("build reqwest client")
    }

    pub fn token_url(&self) -> String {
        format!("{}/v1/public/{PROJECT_ID}/oauth2/token", self.base_url())
    }

    /// The sidecar's provider section for this issuer, with the `stytch` profile (and, over
    /// HTTPS, `ca_file` naming the issuer's CA).
    pub fn stytch_provider_yaml(&self) -> String {
        let ca = if self.tls {
            format!("  ca_file: {}\n", self.ca_file().display())
        } else {
            String::new()
        };
        format!(
            "provider:\n  kind: stytch\n  project_id: {PROJECT_ID}\n  base_url: {}\n{ca}",
            self.base_url()
        )
    }

    /// Runs `m2m-authz <args…> --config <issuer.yaml>`; panics unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "m2m-authz {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates a client for `user_id`; returns (client_id, client_secret).
    pub fn create_client(&self, user_id: &str, scopes: &str) -> (String, String) {
        let out = self.cli(&[
            "clients",
            "create",
            "--user-id",
            user_id,
            "--scopes",
            scopes,
            "--json",
        ]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        (
            v["client_id"].as_str().unwrap().to_owned(),
            v["client_secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Asks the token endpoint directly; returns the HTTP status and the JSON body (`Null` when
    /// the body is not JSON).
    pub async fn token_response(&self, id: &str, secret: &str) -> (u16, Value) {
        token_response_with(&self.http(), &self.token_url(), id, secret).await
    }

    /// Asks the token endpoint directly; returns the HTTP status.
    pub async fn token_status(&self, id: &str, secret: &str) -> u16 {
        self.token_response(id, secret).await.0
    }
}

/// Asks the token endpoint at `url` for a client-credentials token (credentials in the form);
/// returns the HTTP status and the JSON body (`Null` when the body is not JSON).
pub async fn token_response_at(url: &str, id: &str, secret: &str) -> (u16, Value) {
    token_response_with(&super::http_client(), url, id, secret).await
}

async fn token_response_with(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    secret: &str,
) -> (u16, Value) {
    let resp = http
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .expect("token request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
