//! Header names, defaults and limits, named once.

use std::time::Duration;

pub const GRPC_LISTEN: &str = "127.0.0.1:9001";
pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const REALM: &str = "m2m-authz";

pub const CLIENT_ID_HEADER: &str = "x-client-id";
pub const CLIENT_SECRET_HEADER: &str = "x-client-secret";
pub const AUTHORIZATION: &str = "authorization";

pub const USER_ID_HEADER: &str = "x-user-id";
pub const USER_ID_CLAIM: &str = "user_id";
pub const CLIENT_ID_OUT_HEADER: &str = "x-client-id";

pub const LEEWAY: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// Retry delay for the background JWKS fetch after a failure (and before the first success).
pub const JWKS_RETRY: Duration = Duration::from_secs(2);
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const MAX_CREDENTIAL_HEADER_BYTES: usize = 4 * 1024;
/// Largest token-endpoint or JWKS response body read; a larger one is a provider fault.
pub const MAX_PROVIDER_BODY_BYTES: usize = 256 * 1024;
/// The largest provider metadata (discovery) document read; real ones are a few KiB.
pub const MAX_DISCOVERY_BODY_BYTES: usize = 64 * 1024;
/// Token lifetime assumed when neither `expires_in` nor a usable `exp` says otherwise.
pub const FALLBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

pub const CACHE_MAX_ENTRIES: usize = 250_000;
pub const CACHE_MAX_NEGATIVE_ENTRIES: usize = 50_000;
pub const CACHE_REFRESH_AHEAD: f64 = 0.8;
pub const CACHE_EXPIRY_MARGIN: Duration = Duration::from_secs(60);
pub const CACHE_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// How often expired cache entries are swept.
pub const CACHE_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
pub const MAX_EXCHANGES_PER_SECOND: u32 = 200;
pub const MAX_CONCURRENT_EXCHANGES: u32 = 64;
pub const EXCHANGE_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// The share of `max_exchanges_per_second` and `max_concurrent_exchanges` reserved for
/// credentials with a cached identity (refreshes, re-exchanges), so a flood of never-seen
/// credentials cannot starve them (see `limits`).
pub const KNOWN_CLIENT_SHARE: f64 = 0.25;
/// `provider.max_token_lifetime`: the longest a token's identity is cached, whatever its `exp`
/// or `expires_in` say.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The largest `provider.max_token_lifetime` accepted (and the cache's own ceiling).
pub const MAX_TOKEN_LIFETIME_CEILING: Duration = Duration::from_secs(366 * 24 * 3600);

/// Longest identity header value sent upstream.
pub const MAX_IDENTITY_VALUE_BYTES: usize = 1024;

pub const CONFIG_ENV: &str = "M2M_AUTHZ_CONFIG";
pub const LOG_ENV: &str = "M2M_AUTHZ_LOG";
pub const LOG_FORMAT_ENV: &str = "M2M_AUTHZ_LOG_FORMAT";
