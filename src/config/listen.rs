//! `listen`: where the sidecar serves gRPC (TCP or a Unix socket, TLS optional) and its admin
//! HTTP port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// The HTTP authorization port (Envoy HTTP ext_authz under `/ext_authz/`, forward auth at
    /// `/forward_auth` for nginx, Caddy and Traefik); off unless set. TCP only.
    #[serde(default)]
    pub http: Option<String>,
    /// How long in-flight checks may take to finish after SIGTERM.
    #[serde(default = "default_drain", with = "crate::config::duration")]
    pub drain_timeout: Duration,
    /// TLS on the Check port, for Envoy outside a mesh (`crate::grpc_tls` reads the files).
    #[serde(default)]
    pub tls: Option<GrpcTlsConfig>,
}

/// `listen.tls`: the Check port serves TLS 1.2+ with these PEM files; with `client_ca_file` it
/// requires client certificates signed by one of its CAs (mTLS). Relative paths are taken from
/// the config file's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// The server certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// Its private key; the same rules as every private key file (owner-only, no symlink).
    pub key_file: PathBuf,
    /// The CAs a client certificate must chain to; without it no client certificate is asked.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl GrpcTlsConfig {
    /// Every file with its field path.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("listen.tls.cert_file", Some(self.cert_file.as_path())),
            ("listen.tls.key_file", Some(self.key_file.as_path())),
            ("listen.tls.client_ca_file", self.client_ca_file.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, path)| path.map(|p| (field, p)))
    }
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
            http: None,
            drain_timeout: default_drain(),
            tls: None,
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
        if let Some(http) = &self.http {
            let http =
                parse_admin_listen(http).map_err(|p| ConfigError::invalid("listen.http", p))?;
            if http.port() != 0 && (grpc == ListenAddr::Tcp(http) || http == admin) {
                return Err(ConfigError::invalid(
                    "listen.http",
                    "must differ from listen.grpc and listen.admin",
                ));
            }
        }
        if let Some(tls) = &self.tls {
            // A socket is reached only by who may open its file (mode 0660, the Pod's own
            // containers): TLS there would guard nothing the file mode does not.
            if let ListenAddr::Unix(_) = grpc {
                return Err(ConfigError::invalid(
                    "listen.tls",
                    "TLS is for a TCP listen.grpc; a unix: socket is guarded by its file mode \
                     (remove listen.tls, or listen on host:port)",
                ));
            }
            for (field, path) in tls.files() {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(field, "expected a file path"));
                }
            }
        }
        Ok(())
    }

    /// Takes relative `listen.tls` paths from `dir` (the config file's folder).
    pub fn resolve_paths_in(&mut self, dir: &Path) {
        if let Some(tls) = self.tls.as_mut() {
            for path in [Some(&mut tls.cert_file), Some(&mut tls.key_file)]
                .into_iter()
                .chain([tls.client_ca_file.as_mut()])
                .flatten()
            {
                if path.is_relative() && !path.as_os_str().is_empty() {
                    *path = dir.join(&*path);
                }
            }
        }
    }
}
