//! `cache`: the local token cache's bounds and timings, the exchange limits, and the optional
//! shared tier (`cache.shared`). `crate::cache::CacheSettings` is compiled from it.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::defaults;

/// `cache.shared`: the Redis tier's settings; without the `shared-cache` feature any value is
/// accepted by the parser and then refused by `validate`, naming the field and the feature.
#[cfg(feature = "shared-cache")]
pub type SharedCacheConfig = super::shared_cache::SharedCacheConfig;
#[cfg(not(feature = "shared-cache"))]
pub type SharedCacheConfig = serde::de::IgnoredAny;

/// The most `cache.stale_if_error` may be. It serves tokens past their `exp` while the provider
/// fails: an hour outlasts a typical provider incident, and is as long again as a typical
/// token's whole lifetime; beyond that it would quietly stand in for an expiry check.
pub const MAX_STALE_IF_ERROR: Duration = Duration::from_secs(3600);

/// Bounds of `cache.max_credential_age`. Its point is to make a rotated-out secret stop working
/// sooner than its token's `exp`, so a small value only costs exchanges (which
/// `cache.max_exchanges_per_second` bounds) and a second is allowed; past a day it bounds
/// nothing a token's own `exp` does not already bound.
pub const MAX_CREDENTIAL_AGE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most verified credentials (and bearer tokens) kept at once.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Most refused credentials remembered at once.
    #[serde(default = "default_max_negative_entries")]
    pub max_negative_entries: usize,
    /// Fraction of a token's usable lifetime after which a credential still in use is
    /// re-exchanged in the background.
    #[serde(default = "default_refresh_ahead")]
    pub refresh_ahead: f64,
    /// A token is re-exchanged this long before its `exp` (at most a quarter of its lifetime).
    #[serde(default = "default_expiry_margin", with = "crate::config::duration")]
    pub expiry_margin: Duration,
    /// How long a credential the provider refused is refused without asking again.
    #[serde(default = "default_negative_ttl", with = "crate::config::duration")]
    pub negative_ttl: Duration,
    /// How long past its `exp` a cached identity may still be served while the provider
    /// fails; `0s` (the default) never serves an expired token.
    #[serde(default, with = "crate::config::duration")]
    pub stale_if_error: Duration,
    /// Re-exchange a credential this long after its last exchange even if its token is still
    /// valid: bounds how long a rotated-out or deactivated secret keeps working here.
    #[serde(default, with = "crate::config::duration::optional")]
    pub max_credential_age: Option<Duration>,
    #[serde(default = "default_max_exchanges_per_second")]
    pub max_exchanges_per_second: u32,
    #[serde(default = "default_max_concurrent_exchanges")]
    pub max_concurrent_exchanges: u32,
    /// Longest a check waits for an exchange slot before it is answered 429.
    #[serde(
        default = "default_exchange_queue_timeout",
        with = "crate::config::duration"
    )]
    pub exchange_queue_timeout: Duration,
    /// The optional fleet-wide tier on Redis (issue 9); absent: off.
    #[serde(default)]
    pub shared: Option<SharedCacheConfig>,
}

fn default_max_entries() -> usize {
    defaults::CACHE_MAX_ENTRIES
}
fn default_max_negative_entries() -> usize {
    defaults::CACHE_MAX_NEGATIVE_ENTRIES
}
fn default_refresh_ahead() -> f64 {
    defaults::CACHE_REFRESH_AHEAD
}
fn default_expiry_margin() -> Duration {
    defaults::CACHE_EXPIRY_MARGIN
}
fn default_negative_ttl() -> Duration {
    defaults::CACHE_NEGATIVE_TTL
}
fn default_max_exchanges_per_second() -> u32 {
    defaults::MAX_EXCHANGES_PER_SECOND
}
fn default_max_concurrent_exchanges() -> u32 {
    defaults::MAX_CONCURRENT_EXCHANGES
}
fn default_exchange_queue_timeout() -> Duration {
    defaults::EXCHANGE_QUEUE_TIMEOUT
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: default_max_entries(),
            max_negative_entries: default_max_negative_entries(),
            refresh_ahead: default_refresh_ahead(),
            expiry_margin: default_expiry_margin(),
            negative_ttl: default_negative_ttl(),
            stale_if_error: Duration::ZERO,
            max_credential_age: None,
            max_exchanges_per_second: default_max_exchanges_per_second(),
            max_concurrent_exchanges: default_max_concurrent_exchanges(),
            exchange_queue_timeout: default_exchange_queue_timeout(),
            shared: None,
        }
    }
}

impl CacheConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (field, n) in [
            ("cache.max_entries", self.max_entries),
            ("cache.max_negative_entries", self.max_negative_entries),
            (
                "cache.max_exchanges_per_second",
                self.max_exchanges_per_second as usize,
            ),
            (
                "cache.max_concurrent_exchanges",
                self.max_concurrent_exchanges as usize,
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(field, "expected at least 1"));
            }
        }
        if !(self.refresh_ahead > 0.0 && self.refresh_ahead < 1.0) {
            return Err(ConfigError::invalid(
                "cache.refresh_ahead",
                "expected a fraction between 0 and 1, such as 0.8",
            ));
        }
        if self
            .max_credential_age
            .is_some_and(|a| !MAX_CREDENTIAL_AGE_RANGE.contains(&a))
        {
            return Err(ConfigError::invalid(
                "cache.max_credential_age",
                format!(
                    "expected a duration from {} to {}",
                    humantime::format_duration(*MAX_CREDENTIAL_AGE_RANGE.start()),
                    humantime::format_duration(*MAX_CREDENTIAL_AGE_RANGE.end())
                ),
            ));
        }
        if self.stale_if_error > MAX_STALE_IF_ERROR {
            return Err(ConfigError::invalid(
                "cache.stale_if_error",
                format!(
                    "expected at most {}",
                    humantime::format_duration(MAX_STALE_IF_ERROR)
                ),
            ));
        }
        #[cfg(feature = "shared-cache")]
        if let Some(shared) = &self.shared {
            shared
                .validate()
                .map_err(|(field, problem)| ConfigError::invalid(field, problem))?;
        }
        #[cfg(not(feature = "shared-cache"))]
        if self.shared.is_some() {
            return Err(ConfigError::invalid(
                "cache.shared",
                crate::features::missing("the shared tier", crate::features::SHARED_CACHE),
            ));
        }
        Ok(())
    }
}
