//! The embedded issuer run the way an operator runs it: `m2m-authz issuer --config F` as its own
//! process, and `m2m-authz clients …` against the same config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::process::{ChildGuard, TempDir, free_addr, log_file, tail, wait_for_tcp};
use super::sidecar::binary;

pub const PROJECT_ID: &str = "project-test-stack";
pub const PROJECT_SECRET: &str = "stack-test-project-secret-0123456789";

pub struct IssuerProcess {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl IssuerProcess {
    pub async fn start() -> IssuerProcess {
        let dir = TempDir::new("issuer");
        let addr = free_addr();
        std::fs::write(
            dir.join("issuer.yaml"),
            format!(
                "listen: {addr}\ndatabase: issuer.db\nproject_id: {PROJECT_ID}\nproject_secret: {PROJECT_SECRET}\n"
            ),
        )
        .unwrap();
        let child = ChildGuard::spawn(
            "m2m-authz issuer",
            Command::new(binary())
                .args(["issuer", "--config"])
                .arg(dir.join("issuer.yaml"))
                .env("M2M_AUTHZ_LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .stdout(log_file(&dir.join("stdout.log")))
                .stderr(log_file(&dir.join("stderr.log"))),
        );
        let issuer = IssuerProcess { child, addr, dir };
        if let Err(e) = wait_for_tcp(addr, Duration::from_secs(20)).await {
            panic!(
                "issuer did not start: {e}\n{}",
                tail(&issuer.dir.join("stderr.log"), 40)
            );
        }
        issuer
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("issuer.yaml")
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("{}/v1/public/{PROJECT_ID}/oauth2/token", self.base_url())
    }

    /// The sidecar's provider section for this issuer, with the `stytch` profile.
    pub fn stytch_provider_yaml(&self) -> String {
        format!(
            "provider:\n  kind: stytch\n  project_id: {PROJECT_ID}\n  base_url: {}\n",
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

    /// Asks the token endpoint directly; returns the HTTP status.
    pub async fn token_status(&self, id: &str, secret: &str) -> u16 {
        super::http_client()
            .post(self.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}
