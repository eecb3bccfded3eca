//! `cache.shared`: the fleet-wide token cache tier on Redis (issue 9; the tier itself is
//! `crate::shared_cache`). The Redis URL and fleet key may come from the environment instead of
//! the file, so that a Kubernetes Secret holds them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

/// Where the fleet key comes from when `cache.shared.fleet_key` is not set (a Kubernetes
/// Secret, in the shipped overlay).
pub const FLEET_KEY_ENV: &str = "M2M_AUTHZ_FLEET_KEY";
/// Where the Redis URL comes from when `cache.shared.url` is not set (it may hold a password).
pub const URL_ENV: &str = "M2M_AUTHZ_REDIS_URL";

pub const DEFAULT_KEY_PREFIX: &str = "m2m-authz:";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(5);
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(2);
/// The shortest fleet key accepted, in bytes (after base64 decoding).
pub const MIN_FLEET_KEY_BYTES: usize = 32;
/// The most extra seed nodes `cache.shared.nodes` may list.
pub const MAX_SEED_NODES: usize = 16;

/// `cache.shared`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedCacheConfig {
    /// `redis://host:6379/0` or `rediss://` (TLS); else `$M2M_AUTHZ_REDIS_URL`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Base64 of at least 32 random bytes, the same on every pod; else `$M2M_AUTHZ_FLEET_KEY`.
    #[serde(default)]
    pub fleet_key: Option<String>,
    /// Longest one Redis operation may take before the check goes on without it.
    #[serde(default = "default_timeout", with = "super::duration")]
    pub timeout: Duration,
    /// How long a pod's claim to exchange a credential for the fleet lasts.
    #[serde(default = "default_lock_ttl", with = "super::duration")]
    pub lock_ttl: Duration,
    /// Longest a pod waits for another pod's exchange before exchanging itself.
    #[serde(default = "default_lock_wait", with = "super::duration")]
    pub lock_wait: Duration,
    /// PEM CA certificate(s) that `rediss://` servers are checked against, instead of the
    /// system roots (a private CA, as managed Redis and self-run TLS use). Only with `rediss://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Redis Cluster: `url` (and `nodes`) are seed nodes; the client learns the slot map from
    /// them and sends each key to the node that owns it.
    #[serde(default)]
    pub cluster: bool,
    /// More Cluster seed nodes besides `url` (only with `cluster: true`), so that a pod starting
    /// while one node is down still finds the cluster. Same scheme as `url`.
    #[serde(default)]
    pub nodes: Vec<String>,
}

fn default_key_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_owned()
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_lock_ttl() -> Duration {
    DEFAULT_LOCK_TTL
}
fn default_lock_wait() -> Duration {
    DEFAULT_LOCK_WAIT
}

impl fmt::Debug for SharedCacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCacheConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("key_prefix", &self.key_prefix)
            .field("fleet_key", &self.fleet_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_wait", &self.lock_wait)
            .field("ca_file", &self.ca_file)
            .field("cluster", &self.cluster)
            .field(
                "nodes",
                &self.nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The URL without its password, for logs and `/readyz`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable>".to_owned(),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl SharedCacheConfig {
    /// `url`, else `$M2M_AUTHZ_REDIS_URL`.
    pub fn resolved_url(&self) -> Result<String, String> {
        self.url
            .clone()
            .or_else(|| env_nonempty(URL_ENV))
            .ok_or_else(|| format!("required (or set {URL_ENV})"))
    }

    /// The decoded fleet key: `fleet_key`, else `$M2M_AUTHZ_FLEET_KEY`.
    pub fn resolved_fleet_key(&self) -> Result<Vec<u8>, String> {
        let text = self
            .fleet_key
            .clone()
            .or_else(|| env_nonempty(FLEET_KEY_ENV))
            .ok_or_else(|| format!("required (or set {FLEET_KEY_ENV})"))?;
        let text = text.trim();
        let key = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| "expected base64".to_owned())?;
        if key.len() < MIN_FLEET_KEY_BYTES {
            return Err(format!(
                "expected at least {MIN_FLEET_KEY_BYTES} bytes (`openssl rand -base64 32`), got {}",
                key.len()
            ));
        }
        Ok(key)
    }

    /// The field at fault (`cache.shared.*`) and what is wrong with it.
    ///
    /// A URL or fleet key given neither in the file nor in the environment is not an error here
    /// (`check-config` runs where the Pod's Secret is not): `serve` refuses to start without
    /// them (`SharedTier::new`), naming the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = self.resolved_url().ok();
        if let Some(url) = &url {
            Self::validate_url(url)?;
        }
        self.validate_cluster(url.as_deref())?;
        self.validate_tls(url.as_deref())?;
        self.validate_rest()
    }

    /// A relative `ca_file` is taken relative to `dir` (the config file's folder).
    pub fn resolve_paths_in(&mut self, dir: &Path) {
        if let Some(path) = self.ca_file.as_mut()
            && path.is_relative()
        {
            *path = dir.join(&*path);
        }
    }

    /// The CA certificates in `ca_file` as PEM text, for the Redis client (which parses them
    /// again); `None` without `ca_file`. Every certificate is parsed here, so a bad file is a
    /// config error, not a failed connection later.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        crate::pem::read_certs(path)?;
        crate::pem::read_bounded(path).map(Some)
    }

    /// Every seed URL: `url`, then `nodes`.
    pub fn seed_urls(&self) -> Result<Vec<String>, String> {
        let mut urls = vec![self.resolved_url()?];
        urls.extend(self.nodes.iter().cloned());
        Ok(urls)
    }

    fn validate_cluster(&self, url: Option<&str>) -> Result<(), (&'static str, String)> {
        if self.nodes.is_empty() {
            return Ok(());
        }
        if !self.cluster {
            return Err((
                "cache.shared.nodes",
                "only with cache.shared.cluster: true (a single Redis takes one url)".into(),
            ));
        }
        if self.nodes.len() > MAX_SEED_NODES {
            return Err((
                "cache.shared.nodes",
                format!("expected at most {MAX_SEED_NODES} seed nodes"),
            ));
        }
        let scheme = url.and_then(|u| url::Url::parse(u).ok().map(|u| u.scheme().to_owned()));
        for node in &self.nodes {
            Self::validate_url(node).map_err(|(_, p)| ("cache.shared.nodes", p))?;
            let node_scheme = url::Url::parse(node).map(|u| u.scheme().to_owned()).ok();
            if scheme.is_some() && node_scheme != scheme {
                return Err((
                    "cache.shared.nodes",
                    "expected the same scheme (redis:// or rediss://) as cache.shared.url".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_tls(&self, url: Option<&str>) -> Result<(), (&'static str, String)> {
        if self.ca_file.is_none() {
            return Ok(());
        }
        if let Some(url) = url
            && !url.starts_with("rediss://")
        {
            return Err((
                "cache.shared.ca_file",
                "only with a rediss:// (TLS) url".into(),
            ));
        }
        self.ca_pem()
            .map(drop)
            .map_err(|p| ("cache.shared.ca_file", p))
    }

    fn validate_url(url: &str) -> Result<(), (&'static str, String)> {
        match url::Url::parse(url) {
            Ok(u) if u.scheme() == "redis" || u.scheme() == "rediss" => {}
            Ok(_) => {
                return Err((
                    "cache.shared.url",
                    "expected a redis:// or rediss:// (TLS) URL".into(),
                ));
            }
            Err(e) => return Err(("cache.shared.url", format!("not a URL: {e}"))),
        }
        redis::Client::open(url)
            .map(|_| ())
            .map_err(|e| ("cache.shared.url", format!("not a Redis URL: {e}")))
    }

    fn validate_rest(&self) -> Result<(), (&'static str, String)> {
        if self.key_prefix.len() > 64 || self.key_prefix.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err((
                "cache.shared.key_prefix",
                "expected at most 64 printable ASCII characters, without spaces".into(),
            ));
        }
        if self.fleet_key.is_some() || env_nonempty(FLEET_KEY_ENV).is_some() {
            self.resolved_fleet_key()
                .map_err(|p| ("cache.shared.fleet_key", p))?;
        }
        for (field, d, min, max) in [
            (
                "cache.shared.timeout",
                self.timeout,
                Duration::from_millis(1),
                Duration::from_secs(5),
            ),
            (
                "cache.shared.lock_ttl",
                self.lock_ttl,
                Duration::from_millis(100),
                Duration::from_secs(300),
            ),
            (
                "cache.shared.lock_wait",
                self.lock_wait,
                Duration::ZERO,
                Duration::from_secs(60),
            ),
        ] {
            if d < min || d > max {
                return Err((field, format!("expected between {min:?} and {max:?}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let base = SharedCacheConfig {
            url: Some("redis://127.0.0.1:6379".into()),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            fleet_key: Some(base64::engine::general_purpose::STANDARD.encode([1u8; 32])),
            timeout: DEFAULT_TIMEOUT,
            lock_ttl: DEFAULT_LOCK_TTL,
            lock_wait: DEFAULT_LOCK_WAIT,
            ca_file: None,
            cluster: false,
            nodes: Vec::new(),
        };
        base.validate().unwrap();
        let mut c = base.clone();
        c.url = Some("http://x".into());
        assert_eq!(c.validate().unwrap_err().0, "cache.shared.url");
        let mut c = base.clone();
        c.fleet_key = Some(base64::engine::general_purpose::STANDARD.encode([1u8; 16]));
        assert_eq!(c.validate().unwrap_err().0, "cache.shared.fleet_key");
        let mut c = base.clone();
        c.fleet_key = Some("not base64!".into());
        assert_eq!(c.validate().unwrap_err().0, "cache.shared.fleet_key");
        let mut c = base.clone();
        c.timeout = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().0, "cache.shared.timeout");
        let mut c = base.clone();
        c.nodes = vec!["redis://127.0.0.1:7001".into()];
        assert_eq!(
            c.validate().unwrap_err().0,
            "cache.shared.nodes",
            "nodes without cluster"
        );
        c.cluster = true;
        c.validate().unwrap();
        c.nodes = vec!["rediss://127.0.0.1:7001".into()];
        assert_eq!(
            c.validate().unwrap_err().0,
            "cache.shared.nodes",
            "mixed schemes"
        );
        c.nodes = vec!["http://127.0.0.1:7001".into()];
        assert_eq!(c.validate().unwrap_err().0, "cache.shared.nodes");
        let mut c = base.clone();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(
            c.validate().unwrap_err().0,
            "cache.shared.ca_file",
            "plain redis://"
        );
        c.url = Some("rediss://127.0.0.1:6380".into());
        assert_eq!(
            c.validate().unwrap_err().0,
            "cache.shared.ca_file",
            "missing file"
        );
        let mut c = base;
        c.key_prefix = "has space".into();
        assert_eq!(c.validate().unwrap_err().0, "cache.shared.key_prefix");
        assert!(
            !format!("{c:?}").contains("AQEB"),
            "the fleet key is redacted"
        );
    }
}
