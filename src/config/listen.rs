//! `listen`: where the sidecar serves gRPC (TCP or a Unix socket) and its admin HTTP port.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::defaults;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Where Envoy's ext_authz filter (and gRPC health checks) connect.
    #[serde(default = "default_grpc_listen")]
    pub grpc: String,
    /// The admin HTTP port (`/metrics`, `/healthz`, `/readyz`, `/version`); TCP only.
    #[serde(default = "default_admin_listen")]
    pub admin: String,
    /// How long in-flight checks may take to finish after SIGTERM.
    #[serde(default = "default_drain", with = "crate::config::duration")]
    pub drain_timeout: Duration,
}

fn default_grpc_listen() -> String {
    defaults::GRPC_LISTEN.to_owned()
}

fn default_admin_listen() -> String {
    defaults::ADMIN_LISTEN.to_owned()
}

fn default_drain() -> Duration {
    defaults::DRAIN_TIMEOUT
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            grpc: default_grpc_listen(),
            admin: default_admin_listen(),
            drain_timeout: default_drain(),
        }
    }
}

/// Where to serve gRPC: a TCP address, or a Unix domain socket (`unix:/path`), which spares a
/// sidecar sharing its pod with Envoy the TCP stack on every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

pub fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!(
                "expected an absolute socket path after unix:, got {path:?}"
            ));
        }
        return Ok(ListenAddr::Unix(path.into()));
    }
    s.parse::<SocketAddr>()
        .map(ListenAddr::Tcp)
        .map_err(|_| format!("expected host:port such as 127.0.0.1:9001, or unix:/path, got {s:?}"))
}

/// The admin port's address: TCP only (Kubernetes probes and Prometheus speak TCP).
pub fn parse_admin_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("expected host:port such as 127.0.0.1:9901, got {s:?}"))
}

impl ListenConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let grpc = parse_listen(&self.grpc).map_err(|p| ConfigError::invalid("listen.grpc", p))?;
        let admin =
            parse_admin_listen(&self.admin).map_err(|p| ConfigError::invalid("listen.admin", p))?;
        if grpc == ListenAddr::Tcp(admin) && admin.port() != 0 {
            return Err(ConfigError::invalid(
                "listen.admin",
                "must differ from listen.grpc",
            ));
        }
        Ok(())
    }
}
