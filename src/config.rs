//! The sidecar's one typed configuration: parsed from YAML, then validated whole before any port
//! opens. Every error names the field path and what was expected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::defaults;

/// `provider.embedded`: the embedded issuer's settings. Without the `issuer` feature any value is
/// accepted by the parser and then refused by `validate`, naming the field and the feature.
#[cfg(feature = "issuer")]
pub type EmbeddedConfig = crate::issuer::IssuerConfig;
#[cfg(not(feature = "issuer"))]
pub type EmbeddedConfig = serde::de::IgnoredAny;

/// `cache.shared`: the Redis tier's settings; without the `shared-cache` feature, refused by
/// `validate` like `EmbeddedConfig`.
#[cfg(feature = "shared-cache")]
pub type SharedCacheConfig = crate::shared_cache::SharedCacheConfig;
#[cfg(not(feature = "shared-cache"))]
pub type SharedCacheConfig = serde::de::IgnoredAny;

/// A configuration problem, always naming the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl ConfigError {
    fn invalid(field: &str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    pub provider: ProviderConfig,
    /// More identity providers by name, chosen per policy rule (`provider: NAME`) or by Envoy's
    /// `context_extensions` (`provider: NAME`); `provider` above is the one named `default`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Route rules; none: every request needs a valid credential.
    pub policy: Option<crate::policy::PolicyConfig>,
    /// The `realm` of every `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The folder of the config file, for relative paths in it.
    #[serde(skip)]
    pub dir: Option<std::path::PathBuf>,
}

/// The name of the provider configured under `provider`.
pub const DEFAULT_PROVIDER: &str = "default";

/// The most clock skew `provider.leeway` may forgive. RFC 7519 §4.1.4 speaks of "a small leeway,
/// usually no more than a few minutes"; NTP-synchronised hosts differ by well under a second, so
/// 5 minutes covers a badly drifting clock while keeping an expired token from living on.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Bounds of `provider.jwks_min_refetch_interval`. Under 1 s a stream of tokens with made-up
/// `kid`s turns into a stream of JWKS fetches at the provider; over 1 h the first token signed
/// with a freshly rotated key may be refused for an hour.
pub const JWKS_MIN_REFETCH_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// The most `cache.stale_if_error` may be. It serves tokens past their `exp` while the provider
/// fails: an hour outlasts a typical provider incident, and is as long again as a typical
/// token's whole lifetime; beyond that it would quietly stand in for an expiry check.
pub const MAX_STALE_IF_ERROR: Duration = Duration::from_secs(3600);

/// Bounds of `provider.max_token_age`. Under a second every token is too old by the time it
/// arrives; past a day the age bound is looser than any access token's own lifetime, and a
/// bounded age keeps `iat + max_token_age` far from overflow.
pub const MAX_TOKEN_AGE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

/// Bounds of `cache.max_credential_age`. Its point is to make a rotated-out secret stop working
/// sooner than its token's `exp`, so a small value only costs exchanges (which
/// `cache.max_exchanges_per_second` bounds) and a second is allowed; past a day it bounds
/// nothing a token's own `exp` does not already bound.
pub const MAX_CREDENTIAL_AGE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

fn default_realm() -> String {
    defaults::REALM.to_owned()
}

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
    #[serde(default = "default_drain", with = "duration")]
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

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OAuth2 client-credentials server; every URL is given explicitly.
    Oauth2,
    /// Stytch M2M: `project_id` and `base_url` derive the endpoints, issuers and audience.
    Stytch,
    /// The embedded Stytch-compatible issuer, started in-process from `provider.embedded`;
    /// verified with the `stytch` profile.
    Embedded,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (RFC 6749 §2.3.1).
    #[default]
    ClientSecretPost,
    /// HTTP Basic with form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
}

/// A JWS algorithm the sidecar may accept. Only asymmetric ones: a shared-secret (HMAC) token
/// could be minted by anyone holding the JWKS's public material (RFC 8725 §3.1).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Algorithm::RS256 => A::RS256,
            Algorithm::RS384 => A::RS384,
            Algorithm::RS512 => A::RS512,
            Algorithm::PS256 => A::PS256,
            Algorithm::PS384 => A::PS384,
            Algorithm::PS512 => A::PS512,
            Algorithm::ES256 => A::ES256,
            Algorithm::ES384 => A::ES384,
            Algorithm::EdDSA => A::EdDSA,
        }
    }
}

/// One value or a list, as YAML users write either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub token_url: Option<Url>,
    pub jwks_url: Option<Url>,
    /// The accepted `iss` values; never empty.
    pub issuer: Option<OneOrMany>,
    /// The accepted `aud` values; never empty. Required for `oauth2` unless
    /// `skip_audience_check` says, in so many words, that the provider issues no audience.
    pub audience: Option<OneOrMany>,
    /// `oauth2` only: accept tokens whatever their `aud`. An explicit opt-out, so that a missing
    /// `audience` line can never switch the check off unnoticed; the stytch profile always
    /// checks its project's audience.
    #[serde(default)]
    pub skip_audience_check: bool,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Space-separated scopes requested at the token endpoint; omitted: the client's defaults.
    pub scope: Option<String>,
    /// Extra form parameters for the token request (`audience` for Auth0, `resource` per RFC 8707).
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// The JWT header `typ` every access token must carry (`JWT`, `at+jwt`), or `any`.
    pub token_type: Option<String>,
    pub project_id: Option<String>,
    pub base_url: Option<Url>,
    /// The embedded issuer's settings, for `kind: embedded` (see `m2m-authz issuer`).
    pub embedded: Option<EmbeddedConfig>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`; at most `MAX_LEEWAY`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Reject tokens issued longer ago than this (checked against `iat`), whatever their `exp`;
    /// within `MAX_TOKEN_AGE_RANGE`.
    #[serde(default, with = "opt_duration")]
    pub max_token_age: Option<Duration>,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// The longest an identity is cached, whatever the token's `exp` or `expires_in` say.
    #[serde(default = "default_max_token_lifetime", with = "duration")]
    pub max_token_lifetime: Duration,
    /// How often the JWKS is fetched again in the background.
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub jwks_refresh_interval: Duration,
    /// The least time between two fetches caused by tokens with an unknown `kid`; within
    /// `JWKS_MIN_REFETCH_RANGE`.
    #[serde(default = "default_jwks_min_refetch", with = "duration")]
    pub jwks_min_refetch_interval: Duration,
    /// Tokens longer than this are refused before any parsing.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256]
}
fn default_leeway() -> Duration {
    defaults::LEEWAY
}
fn default_connect_timeout() -> Duration {
    defaults::CONNECT_TIMEOUT
}
fn default_request_timeout() -> Duration {
    defaults::REQUEST_TIMEOUT
}
fn default_max_token_lifetime() -> Duration {
    defaults::MAX_TOKEN_LIFETIME
}
fn default_jwks_refresh() -> Duration {
    defaults::JWKS_REFRESH
}
fn default_jwks_min_refetch() -> Duration {
    defaults::JWKS_MIN_REFETCH
}
fn default_max_token_bytes() -> usize {
    defaults::MAX_TOKEN_BYTES
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// Accept `Authorization: Basic` client credentials.
    #[serde(default = "yes")]
    pub basic: bool,
    /// Accept `Authorization: Bearer` access tokens, verified without an exchange.
    #[serde(default = "yes")]
    pub bearer: bool,
    #[serde(default)]
    pub headers: HeaderPairConfig,
    /// Longest credential header value accepted; longer ones are refused unread.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

fn yes() -> bool {
    true
}
fn default_max_header_bytes() -> usize {
    defaults::MAX_CREDENTIAL_HEADER_BYTES
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            basic: true,
            bearer: true,
            headers: HeaderPairConfig::default(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderPairConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_client_id_header")]
    pub client_id: String,
    #[serde(default = "default_client_secret_header")]
    pub client_secret: String,
}

fn default_client_id_header() -> String {
    defaults::CLIENT_ID_HEADER.to_owned()
}
fn default_client_secret_header() -> String {
    defaults::CLIENT_SECRET_HEADER.to_owned()
}

impl Default for HeaderPairConfig {
    fn default() -> Self {
        HeaderPairConfig {
            enabled: true,
            client_id: default_client_id_header(),
            client_secret: default_client_secret_header(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Upstream header name → claim (a top-level claim name, or an RFC 6901 JSON Pointer such as
    /// `/ext/user_id` for nested claims).
    #[serde(default = "default_identity_headers")]
    pub headers: BTreeMap<String, String>,
    /// Header names that must get a value for a request to be allowed.
    #[serde(default = "default_required")]
    pub required: Vec<String>,
}

fn default_identity_headers() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            defaults::USER_ID_HEADER.to_owned(),
            defaults::USER_ID_CLAIM.to_owned(),
        ),
        (defaults::CLIENT_ID_OUT_HEADER.to_owned(), "sub".to_owned()),
    ])
}
fn default_required() -> Vec<String> {
    vec![defaults::USER_ID_HEADER.to_owned()]
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            headers: default_identity_headers(),
            required: default_required(),
        }
    }
}

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
    #[serde(default = "default_expiry_margin", with = "duration")]
    pub expiry_margin: Duration,
    /// How long a credential the provider refused is refused without asking again.
    #[serde(default = "default_negative_ttl", with = "duration")]
    pub negative_ttl: Duration,
    /// How long past its `exp` a cached identity may still be served while the provider
    /// fails; `0s` (the default) never serves an expired token.
    #[serde(default, with = "duration")]
    pub stale_if_error: Duration,
    /// Re-exchange a credential this long after its last exchange even if its token is still
    /// valid: bounds how long a rotated-out or deactivated secret keeps working here.
    #[serde(default, with = "opt_duration")]
    pub max_credential_age: Option<Duration>,
    #[serde(default = "default_max_exchanges_per_second")]
    pub max_exchanges_per_second: u32,
    #[serde(default = "default_max_concurrent_exchanges")]
    pub max_concurrent_exchanges: u32,
    /// Longest a check waits for an exchange slot before it is answered 429.
    #[serde(default = "default_exchange_queue_timeout", with = "duration")]
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
    fn validate(&self) -> Result<(), ConfigError> {
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

    pub fn settings(&self) -> crate::cache::CacheSettings {
        crate::cache::CacheSettings {
            max_entries: self.max_entries,
            max_negative_entries: self.max_negative_entries,
            refresh_ahead: self.refresh_ahead,
            expiry_margin: self.expiry_margin,
            negative_ttl: self.negative_ttl,
            stale_if_error: self.stale_if_error,
            max_credential_age: self.max_credential_age,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file. One that holds the embedded issuer's project
    /// secret (the one in effect) is refused when other users can read or write it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let unreadable = |source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        };
        // With the issuer compiled in, the metadata of the very file read, to judge who else can
        // read the project secret it may hold.
        #[cfg(feature = "issuer")]
        let (text, meta) = crate::issuer::private_files::read_config(path).map_err(unreadable)?;
        #[cfg(not(feature = "issuer"))]
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        let config = Config::from_yaml_in(&text, path.parent())?;
        #[cfg(feature = "issuer")]
        if let Some(embedded) = &config.provider.embedded {
            embedded.check_file_access(path, &meta).map_err(|e| {
                ConfigError::invalid("provider.embedded.project_secret", e.to_string())
            })?;
        }
        Ok(config)
    }

    /// Parses and validates YAML text; the error names the field path.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_in(text, None)
    }

    /// A relative `provider.embedded.database` is taken relative to `dir` (the config file's
    /// folder), as `m2m-authz issuer` does.
    fn from_yaml_in(text: &str, dir: Option<&Path>) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() {
                "config".to_owned()
            } else {
                path
            };
            ConfigError::invalid(&field, e.into_inner().to_string())
        })?;
        let mut config = config;
        config.dir = dir.map(Path::to_path_buf);
        #[cfg(feature = "issuer")]
        if let Some(embedded) = config.provider.embedded.as_mut() {
            if let Some(dir) = dir
                && embedded.database.is_relative()
            {
                embedded.database = dir.join(&embedded.database);
            }
            embedded.apply_env();
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: required combinations, header syntax, ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let grpc =
            parse_listen(&self.listen.grpc).map_err(|p| ConfigError::invalid("listen.grpc", p))?;
        let admin = parse_admin_listen(&self.listen.admin)
            .map_err(|p| ConfigError::invalid("listen.admin", p))?;
        if grpc == ListenAddr::Tcp(admin) && admin.port() != 0 {
            return Err(ConfigError::invalid(
                "listen.admin",
                "must differ from listen.grpc",
            ));
        }
        self.provider.validate()?;
        for (name, p) in &self.providers {
            let at = format!("providers.{name}");
            if name == DEFAULT_PROVIDER
                || name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::invalid(
                    &at,
                    "expected a name of letters, digits, '-' or '_', other than \"default\"",
                ));
            }
            if p.kind == ProviderKind::Embedded {
                return Err(ConfigError::invalid(
                    &format!("{at}.kind"),
                    "embedded is only for provider.kind",
                ));
            }
            p.validate().map_err(|e| match e {
                ConfigError::Invalid { field, problem } => ConfigError::Invalid {
                    field: field.replacen("provider", &at, 1),
                    problem,
                },
                other => other,
            })?;
        }
        let c = &self.credentials;
        if !c.basic && !c.bearer && !c.headers.enabled {
            return Err(ConfigError::invalid(
                "credentials",
                "every credential source is switched off; enable basic, bearer or headers",
            ));
        }
        if c.headers.enabled {
            check_header_name("credentials.headers.client_id", &c.headers.client_id)?;
            check_header_name(
                "credentials.headers.client_secret",
                &c.headers.client_secret,
            )?;
            if c.headers
                .client_id
                .eq_ignore_ascii_case(&c.headers.client_secret)
            {
                return Err(ConfigError::invalid(
                    "credentials.headers",
                    "client_id and client_secret must be different headers",
                ));
            }
        }
        if !(64..=65_536).contains(&c.max_header_bytes) {
            return Err(ConfigError::invalid(
                "credentials.max_header_bytes",
                "expected a number from 64 to 65536",
            ));
        }
        if self.identity.headers.is_empty() {
            return Err(ConfigError::invalid(
                "identity.headers",
                "at least one header must carry the caller's identity",
            ));
        }
        for (header, claim) in &self.identity.headers {
            let field = format!("identity.headers.{header}");
            check_header_name(&field, header)?;
            // The client-id header may double as an identity header (the default `x-client-id`
            // comes in as the caller's claim and goes out overwritten with the verified `sub`);
            // a header that carries a secret may not.
            if header.eq_ignore_ascii_case("authorization")
                || (c.headers.enabled && header.eq_ignore_ascii_case(&c.headers.client_secret))
            {
                return Err(ConfigError::invalid(&field, "is a credential header"));
            }
            crate::identity::ClaimPath::parse(claim)
                .map_err(|p| ConfigError::invalid(&field, p))?;
        }
        for (i, name) in self.identity.required.iter().enumerate() {
            if !self
                .identity
                .headers
                .keys()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                return Err(ConfigError::invalid(
                    &format!("identity.required[{i}]"),
                    format!("{name:?} is not one of identity.headers"),
                ));
            }
        }
        self.cache.validate()?;
        crate::policy::reload::LivePolicy::from_config(
            self.policy.as_ref(),
            self.dir.as_deref(),
            &self.provider_names(),
        )
        .map_err(|e| ConfigError::invalid(&e.field, e.problem))?;
        if self.realm.is_empty() || self.realm.contains(['"', '\\']) || !is_visible(&self.realm) {
            return Err(ConfigError::invalid(
                "realm",
                "expected printable text without quotes or backslashes",
            ));
        }
        Ok(())
    }

    /// Every provider's name: `default` first, then those under `providers`.
    pub fn provider_names(&self) -> Vec<String> {
        std::iter::once(DEFAULT_PROVIDER.to_owned())
            .chain(self.providers.keys().cloned())
            .collect()
    }

    /// One line warning of provider URLs that use plain `http://` to another host, naming each
    /// field and host (never a path, query or password); `None` when there are none. Shown at
    /// start-up and by `check-config`: accepted (a mesh may encrypt the hop), but never silently.
    pub fn plain_http_warning(&self) -> Option<String> {
        let mut found: Vec<String> = Vec::new();
        let named = std::iter::once((None, &self.provider))
            .chain(self.providers.iter().map(|(n, p)| (Some(n), p)));
        for (name, provider) in named {
            for (field, host) in provider.plain_http_urls() {
                let field = match name {
                    Some(n) => field.replacen("provider", &format!("providers.{n}"), 1),
                    None => field.to_owned(),
                };
                found.push(format!("{field} (host {host})"));
            }
        }
        (!found.is_empty()).then(|| {
            format!(
                "provider URLs use plain http:// to another host, so secrets and tokens cross the network unencrypted; use https: {}",
                found.join(", ")
            )
        })
    }

    /// A one-line description for `check-config` and the start-up log; never includes secrets.
    pub fn summary(&self) -> String {
        let sources: Vec<&str> = [
            (self.credentials.basic, "basic"),
            (self.credentials.bearer, "bearer"),
            (self.credentials.headers.enabled, "headers"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        format!(
            "ok: provider {:?} ({}), grpc on {}, admin on {}, credentials {}, identity headers {}",
            self.provider.kind,
            self.provider
                .resolved_token_url()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            self.listen.grpc,
            self.listen.admin,
            sources.join("+"),
            self.identity
                .headers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

impl ProviderConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match self.kind {
            ProviderKind::Oauth2 => {
                for (field, v) in [
                    ("provider.token_url", self.token_url.is_some()),
                    ("provider.jwks_url", self.jwks_url.is_some()),
                    ("provider.issuer", self.issuer.is_some()),
                ] {
                    if !v {
                        return Err(ConfigError::invalid(
                            field,
                            "required when provider.kind is oauth2",
                        ));
                    }
                }
                for (field, v) in [
                    ("provider.project_id", self.project_id.is_some()),
                    ("provider.base_url", self.base_url.is_some()),
                    ("provider.embedded", self.embedded.is_some()),
                ] {
                    if v {
                        return Err(ConfigError::invalid(field, "not for provider.kind oauth2"));
                    }
                }
            }
            #[cfg(not(feature = "issuer"))]
            ProviderKind::Embedded => {
                return Err(ConfigError::invalid(
                    "provider.kind",
                    crate::features::missing("embedded", crate::features::ISSUER),
                ));
            }
            #[cfg(feature = "issuer")]
            ProviderKind::Embedded => {
                let Some(embedded) = &self.embedded else {
                    return Err(ConfigError::invalid(
                        "provider.embedded",
                        "required when provider.kind is embedded",
                    ));
                };
                embedded
                    .validate()
                    .map_err(|e| ConfigError::invalid("provider.embedded", e.to_string()))?;
                if embedded.project_secret.is_none() {
                    return Err(ConfigError::invalid(
                        "provider.embedded.project_secret",
                        format!("required (or set {})", crate::issuer::PROJECT_SECRET_ENV),
                    ));
                }
                if embedded.listen.port() == 0 {
                    return Err(ConfigError::invalid(
                        "provider.embedded.listen",
                        "expected a fixed port: the token and JWKS URLs are derived from it",
                    ));
                }
                for (field, set) in [
                    ("provider.project_id", self.project_id.is_some()),
                    ("provider.base_url", self.base_url.is_some()),
                    ("provider.token_url", self.token_url.is_some()),
                    ("provider.jwks_url", self.jwks_url.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::invalid(
                            field,
                            "derived from provider.embedded; remove it",
                        ));
                    }
                }
            }
            ProviderKind::Stytch => {
                let Some(project) = &self.project_id else {
                    return Err(ConfigError::invalid(
                        "provider.project_id",
                        "required when provider.kind is stytch",
                    ));
                };
                if project.is_empty()
                    || !project
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ConfigError::invalid(
                        "provider.project_id",
                        "expected letters, digits, '-' or '_'",
                    ));
                }
                if self.base_url.is_none() {
                    return Err(ConfigError::invalid(
                        "provider.base_url",
                        "required when provider.kind is stytch (https://test.stytch.com, https://api.stytch.com or your custom domain)",
                    ));
                }
            }
        }
        #[cfg(not(feature = "issuer"))]
        if self.embedded.is_some() {
            return Err(ConfigError::invalid(
                "provider.embedded",
                crate::features::missing("the embedded issuer", crate::features::ISSUER),
            ));
        }
        self.validate_issuers_and_audiences()?;
        for (field, url) in [
            ("provider.token_url", self.resolved_token_url()),
            ("provider.jwks_url", self.resolved_jwks_url()),
            ("provider.base_url", self.base_url.clone()),
        ] {
            let Some(url) = url else { continue };
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(field, "expected an http(s) URL"));
            }
            // A password in a URL would be printed wherever the URL is (the start-up summary,
            // JWKS fetch warnings); credentials for the provider never belong there.
            if !url.username().is_empty() || url.password().is_some() {
                return Err(ConfigError::invalid(
                    field,
                    "expected a URL without user:password@",
                ));
            }
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "provider.algorithms",
                "expected at least one algorithm",
            ));
        }
        if let Some(t) = &self.token_type
            && (t.is_empty() || !is_visible(t))
        {
            return Err(ConfigError::invalid(
                "provider.token_type",
                "expected a JWT typ such as JWT or at+jwt, or any",
            ));
        }
        if let Some(scope) = &self.scope
            && scope.split(' ').any(|s| s.is_empty() || !is_visible(s))
        {
            return Err(ConfigError::invalid(
                "provider.scope",
                "expected scopes separated by single spaces",
            ));
        }
        for reserved in ["grant_type", "client_id", "client_secret", "scope"] {
            if self.token_params.contains_key(reserved) {
                return Err(ConfigError::invalid(
                    &format!("provider.token_params.{reserved}"),
                    "is set by m2m-authz itself",
                ));
            }
        }
        for (field, d) in [
            ("provider.connect_timeout", self.connect_timeout),
            ("provider.request_timeout", self.request_timeout),
            ("provider.jwks_refresh_interval", self.jwks_refresh_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(
                    field,
                    "expected a duration above zero",
                ));
            }
        }
        if self.max_token_lifetime < Duration::from_secs(1)
            || self.max_token_lifetime > defaults::MAX_TOKEN_LIFETIME_CEILING
        {
            return Err(ConfigError::invalid(
                "provider.max_token_lifetime",
                "expected a duration from 1s to 365d",
            ));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(ConfigError::invalid(
                "provider.leeway",
                format!(
                    "expected at most {} of clock skew",
                    humantime::format_duration(MAX_LEEWAY)
                ),
            ));
        }
        if self
            .max_token_age
            .is_some_and(|a| !MAX_TOKEN_AGE_RANGE.contains(&a))
        {
            return Err(ConfigError::invalid(
                "provider.max_token_age",
                format!(
                    "expected a duration from {} to {}",
                    humantime::format_duration(*MAX_TOKEN_AGE_RANGE.start()),
                    humantime::format_duration(*MAX_TOKEN_AGE_RANGE.end())
                ),
            ));
        }
        if !JWKS_MIN_REFETCH_RANGE.contains(&self.jwks_min_refetch_interval) {
            return Err(ConfigError::invalid(
                "provider.jwks_min_refetch_interval",
                format!(
                    "expected a duration from {} to {}",
                    humantime::format_duration(*JWKS_MIN_REFETCH_RANGE.start()),
                    humantime::format_duration(*JWKS_MIN_REFETCH_RANGE.end())
                ),
            ));
        }
        if !(256..=1 << 20).contains(&self.max_token_bytes) {
            return Err(ConfigError::invalid(
                "provider.max_token_bytes",
                "expected a number from 256 to 1048576",
            ));
        }
        Ok(())
    }

    /// Neither list may be empty or hold an empty value: an empty list would quietly switch the
    /// check off. `oauth2` needs an audience or the explicit `skip_audience_check`; the stytch
    /// profile always checks its audience.
    fn validate_issuers_and_audiences(&self) -> Result<(), ConfigError> {
        for (field, values) in [
            ("provider.issuer", &self.issuer),
            ("provider.audience", &self.audience),
        ] {
            let Some(values) = values else { continue };
            let values = values.clone().into_vec();
            if values.is_empty() {
                return Err(ConfigError::invalid(field, "expected at least one value"));
            }
            if let Some(i) = values.iter().position(|v| v.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    &format!("{field}[{i}]"),
                    "expected a non-empty value",
                ));
            }
        }
        match (self.kind, self.skip_audience_check, self.audience.is_some()) {
            (ProviderKind::Oauth2, false, false) => {
                return Err(ConfigError::invalid(
                    "provider.audience",
                    "required when provider.kind is oauth2 (for a provider that issues no audience, set provider.skip_audience_check: true instead)",
                ));
            }
            (ProviderKind::Oauth2, true, true) => {
                return Err(ConfigError::invalid(
                    "provider.skip_audience_check",
                    "cannot be combined with provider.audience",
                ));
            }
            (ProviderKind::Stytch | ProviderKind::Embedded, true, _) => {
                return Err(ConfigError::invalid(
                    "provider.skip_audience_check",
                    "not for the stytch profile, which always checks the project's audience",
                ));
            }
            _ => {}
        }
        if self.resolved_issuers().is_empty() {
            return Err(ConfigError::invalid(
                "provider.issuer",
                "expected at least one value",
            ));
        }
        if self.resolved_audiences().is_empty() && !self.skip_audience_check {
            return Err(ConfigError::invalid(
                "provider.audience",
                "expected at least one value",
            ));
        }
        Ok(())
    }

    /// The provider URLs sent in clear text to a host off this machine, as (field, host):
    /// tokens, secrets and keys travel over them. Loopback (127.0.0.0/8, ::1, `localhost`) and
    /// the unspecified address (which reaches this host) are not listed.
    pub fn plain_http_urls(&self) -> Vec<(&'static str, String)> {
        #[cfg(feature = "issuer")]
        let derived_from = match self.embedded_issuer() {
            Some(e) if e.issuer_base_url.is_some() => "provider.embedded.issuer_base_url",
            Some(_) => "provider.embedded.listen",
            None => "provider.base_url",
        };
        #[cfg(not(feature = "issuer"))]
        let derived_from = "provider.base_url";
        let mut out: Vec<(&'static str, String)> = Vec::new();
        for (explicit, field, url) in [
            (
                self.token_url.is_some(),
                "provider.token_url",
                self.resolved_token_url(),
            ),
            (
                self.jwks_url.is_some(),
                "provider.jwks_url",
                self.resolved_jwks_url(),
            ),
        ] {
            let Some(url) = url else { continue };
            if url.scheme() != "http" || is_local_host(&url) {
                continue;
            }
            let field = if explicit { field } else { derived_from };
            let host = url.host_str().unwrap_or_default().to_owned();
            if !out.iter().any(|(f, h)| *f == field && *h == host) {
                out.push((field, host));
            }
        }
        out
    }

    /// The embedded issuer's settings, when this provider is `kind: embedded`.
    #[cfg(feature = "issuer")]
    fn embedded_issuer(&self) -> Option<&crate::issuer::IssuerConfig> {
        self.embedded
            .as_ref()
            .filter(|_| self.kind == ProviderKind::Embedded)
    }

    /// The Stytch project id: configured, or the embedded issuer's.
    fn project(&self) -> Option<String> {
        #[cfg(feature = "issuer")]
        if let Some(e) = self.embedded_issuer() {
            return Some(e.project_id.clone());
        }
        self.project_id.clone()
    }

    /// The Stytch base URL: configured, or where the embedded issuer listens.
    fn base(&self) -> Option<Url> {
        #[cfg(feature = "issuer")]
        if let Some(e) = self.embedded_issuer() {
            return e
                .issuer_base_url
                .clone()
                .or_else(|| Url::parse(&format!("http://{}", e.listen)).ok());
        }
        self.base_url.clone()
    }

    /// The token endpoint, explicit or derived from the Stytch project.
    pub fn resolved_token_url(&self) -> Option<Url> {
        if let Some(u) = &self.token_url {
            return Some(u.clone());
        }
        let project = self.project()?;
        stytch_url(&self.base()?, &format!("v1/public/{project}/oauth2/token"))
    }

    /// The JWKS endpoint, explicit or derived from the Stytch project.
    pub fn resolved_jwks_url(&self) -> Option<Url> {
        if let Some(u) = &self.jwks_url {
            return Some(u.clone());
        }
        let project = self.project()?;
        stytch_url(&self.base()?, &format!("v1/sessions/jwks/{project}"))
    }

    /// The accepted `iss` values. Stytch signs `stytch.com/{project_id}`, or the custom-domain
    /// base URL when one is in use; both are accepted for the stytch kind.
    pub fn resolved_issuers(&self) -> Vec<String> {
        if let Some(i) = &self.issuer {
            return i.clone().into_vec();
        }
        match (self.project(), self.base()) {
            (Some(p), Some(base)) => vec![
                format!("stytch.com/{p}"),
                base.as_str().trim_end_matches('/').to_owned(),
            ],
            _ => Vec::new(),
        }
    }

    /// The accepted `aud` values; empty (only with `skip_audience_check`) means `aud` is not
    /// checked.
    pub fn resolved_audiences(&self) -> Vec<String> {
        if let Some(a) = &self.audience {
            return a.clone().into_vec();
        }
        match self.kind {
            ProviderKind::Stytch | ProviderKind::Embedded => self.project().into_iter().collect(),
            ProviderKind::Oauth2 => Vec::new(),
        }
    }

    /// The required `typ` header, lower-cased; `None` accepts any.
    pub fn resolved_token_type(&self) -> Option<String> {
        match self.token_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("any") => None,
            Some(t) => Some(t.to_ascii_lowercase()),
            None => match self.kind {
                ProviderKind::Stytch | ProviderKind::Embedded => Some("jwt".to_owned()),
                ProviderKind::Oauth2 => None,
            },
        }
    }
}

fn stytch_url(base: &Url, path: &str) -> Option<Url> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    base.join(path).ok()
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

/// Whether a URL's host is this machine: loopback or the unspecified address.
fn is_local_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

fn is_visible(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !name.starts_with(':');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, "expected an HTTP header name"))
    }
}

/// Durations are written as humantime strings: `30s`, `5m`, `1h 30m`.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// No setting means more than a year, and the ceiling keeps every `Instant + duration` and
    /// `duration * n` the code computes from config far from overflow (a panic at start or on
    /// the request path). Fields with tighter bounds check them in `validate`.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("expected a duration such as 30s or 5m: {e}"))
        })?;
        if d > MAX {
            return Err(serde::de::Error::custom(
                "expected a duration of at most 365 days",
            ));
        }
        Ok(d)
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STYTCH: &str = "provider:\n  kind: stytch\n  project_id: project-test-1\n  base_url: https://test.stytch.com\n";

    #[test]
    fn stytch_profile_derives_endpoints_issuers_and_audience() {
        let c = Config::from_yaml(STYTCH).unwrap();
        let p = &c.provider;
        assert_eq!(
            p.resolved_token_url().unwrap().as_str(),
            "https://test.stytch.com/v1/public/project-test-1/oauth2/token"
        );
        assert_eq!(
            p.resolved_jwks_url().unwrap().as_str(),
            "https://test.stytch.com/v1/sessions/jwks/project-test-1"
        );
        assert_eq!(
            p.resolved_issuers(),
            vec!["stytch.com/project-test-1", "https://test.stytch.com"]
        );
        assert_eq!(p.resolved_audiences(), vec!["project-test-1"]);
        assert_eq!(p.resolved_token_type().as_deref(), Some("jwt"));
        assert_eq!(c.listen.grpc, "127.0.0.1:9001");
        assert_eq!(c.listen.admin, "127.0.0.1:9901");
    }

    #[test]
    fn stytch_base_url_with_path_keeps_it() {
        let c = Config::from_yaml(
            "provider: {kind: stytch, project_id: p1, base_url: 'http://127.0.0.1:9400/stytch'}",
        )
        .unwrap();
        assert_eq!(
            c.provider.resolved_token_url().unwrap().as_str(),
            "http://127.0.0.1:9400/stytch/v1/public/p1/oauth2/token"
        );
    }

    /// Each bad config is refused with an error naming the field.
    #[test]
    fn errors_name_the_field() {
        let oauth2 = "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: 'http://a', audience: api}\n";
        let cases: &[(&str, &str)] = &[
            ("provider: {kind: oauth2}", "provider.token_url"),
            (
                "provider: {kind: stytch, base_url: 'http://a'}",
                "provider.project_id",
            ),
            (
                "provider: {kind: stytch, project_id: p}",
                "provider.base_url",
            ),
            ("provider: {kind: other}", "provider.kind"),
            (&format!("{oauth2}listen: {{grpc: nope}}"), "listen.grpc"),
            (
                &format!("{oauth2}listen: {{admin: 'unix:/run/admin.sock'}}"),
                "listen.admin",
            ),
            (
                &format!("{oauth2}listen: {{grpc: '127.0.0.1:9001', admin: '127.0.0.1:9001'}}"),
                "listen.admin",
            ),
            (&format!("{oauth2}bogus: 1"), "bogus"),
            (&format!("{oauth2}credentials: {{bogus: 1}}"), "credentials"),
            (
                "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api, leeway: soon}",
                "provider.leeway",
            ),
            (
                "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api, algorithms: [HS256]}",
                "provider.algorithms",
            ),
            (
                "provider: {kind: oauth2, token_url: 'ftp://a/t', jwks_url: 'http://a/j', issuer: i, audience: api}",
                "provider.token_url",
            ),
            (
                "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api, token_params: {client_secret: x}}",
                "provider.token_params.client_secret",
            ),
            (
                &format!(
                    "{oauth2}credentials: {{basic: false, bearer: false, headers: {{enabled: false}}}}"
                ),
                "credentials",
            ),
            (
                &format!("{oauth2}identity: {{headers: {{'x user': user_id}}}}"),
                "identity.headers.x user",
            ),
            (
                &format!("{oauth2}identity: {{headers: {{x-user-id: '/a/~2'}}}}"),
                "identity.headers.x-user-id",
            ),
            (
                &format!("{oauth2}identity: {{headers: {{authorization: sub}}, required: []}}"),
                "identity.headers.authorization",
            ),
            (
                &format!("{oauth2}identity: {{headers: {{x-sub: sub}}}}"),
                "identity.required[0]",
            ),
            (
                &format!("{oauth2}cache: {{max_entries: 0}}"),
                "cache.max_entries",
            ),
            (&format!("{oauth2}realm: 'a\"b'"), "realm"),
        ];
        for (yaml, field) in cases {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { field: f, .. }) => {
                    assert!(f.starts_with(field), "{yaml}: got field {f}, want {field}")
                }
                other => panic!("{yaml}: expected an error about {field}, got {other:?}"),
            }
        }
    }

    #[cfg(feature = "issuer")]
    #[test]
    fn embedded_kind_derives_the_stytch_profile_from_the_issuer() {
        let c = Config::from_yaml(
            "provider:\n  kind: embedded\n  embedded:\n    listen: 127.0.0.1:9400\n    project_id: project-demo\n    project_secret: demo-project-secret-0123456789\n",
        )
        .unwrap();
        let p = &c.provider;
        assert_eq!(
            p.resolved_token_url().unwrap().as_str(),
            "http://127.0.0.1:9400/v1/public/project-demo/oauth2/token"
        );
        assert_eq!(p.resolved_issuers()[0], "stytch.com/project-demo");
        assert_eq!(p.resolved_audiences(), vec!["project-demo"]);
        assert_eq!(p.resolved_token_type().as_deref(), Some("jwt"));
        for (yaml, field) in [
            ("provider: {kind: embedded}", "provider.embedded"),
            (
                "provider: {kind: embedded, embedded: {listen: '127.0.0.1:0', project_secret: demo-project-secret-0123456789}}",
                "provider.embedded.listen",
            ),
            (
                "provider: {kind: embedded, base_url: 'http://x', embedded: {listen: '127.0.0.1:9400', project_secret: demo-project-secret-0123456789}}",
                "provider.base_url",
            ),
        ] {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("unix:/run/m2m-authz.sock"),
            Ok(ListenAddr::Unix("/run/m2m-authz.sock".into()))
        );
        assert!(matches!(
            parse_listen("0.0.0.0:9001"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert!(parse_listen("unix:relative.sock").is_err());
        assert!(parse_listen("localhost").is_err());
    }

    fn field_of(yaml: &str) -> Option<String> {
        match Config::from_yaml(yaml) {
            Err(ConfigError::Invalid { field, .. }) => Some(field),
            Err(e) => panic!("{yaml}: {e}"),
            Ok(_) => None,
        }
    }

    /// No spelling switches the issuer or audience check off, or leaves it without a value.
    #[test]
    fn issuer_and_audience_cannot_be_emptied() {
        let oauth2 = "provider: {kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://a/j'";
        let cases: &[(&str, Option<&str>)] = &[
            (
                &format!("{oauth2}, issuer: [], audience: api}}"),
                Some("provider.issuer"),
            ),
            (
                &format!("{oauth2}, issuer: '', audience: api}}"),
                Some("provider.issuer[0]"),
            ),
            (
                &format!("{oauth2}, issuer: [a, ' '], audience: api}}"),
                Some("provider.issuer[1]"),
            ),
            (
                &format!("{oauth2}, issuer: i, audience: []}}"),
                Some("provider.audience"),
            ),
            (
                &format!("{oauth2}, issuer: i, audience: ''}}"),
                Some("provider.audience[0]"),
            ),
            (
                &format!("{oauth2}, issuer: i, audience: [api, '']}}"),
                Some("provider.audience[1]"),
            ),
            // oauth2 without an audience needs the explicit opt-out...
            (&format!("{oauth2}, issuer: i}}"), Some("provider.audience")),
            (
                &format!("{oauth2}, issuer: i, skip_audience_check: false}}"),
                Some("provider.audience"),
            ),
            (
                &format!("{oauth2}, issuer: i, skip_audience_check: true}}"),
                None,
            ),
            // ...which cannot be combined with an audience,
            (
                &format!("{oauth2}, issuer: i, audience: api, skip_audience_check: true}}"),
                Some("provider.skip_audience_check"),
            ),
            (
                &format!("{oauth2}, issuer: i, skip_audience_check: yes-please}}"),
                Some("provider.skip_audience_check"),
            ),
            // and the stytch profile always checks its audience.
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://x', audience: []}",
                Some("provider.audience"),
            ),
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://x', issuer: []}",
                Some("provider.issuer"),
            ),
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://x', skip_audience_check: true}",
                Some("provider.skip_audience_check"),
            ),
            (
                "provider: {kind: embedded, skip_audience_check: true, embedded: {listen: '127.0.0.1:9400', project_secret: demo-project-secret-0123456789}}",
                Some(if cfg!(feature = "issuer") {
                    "provider.skip_audience_check"
                } else {
                    "provider.kind"
                }),
            ),
            // The same rules for every named provider.
            (
                &format!(
                    "{oauth2}, issuer: i, audience: api}}\nproviders: {{b: {{kind: oauth2, token_url: 'https://b/t', jwks_url: 'https://b/j', issuer: j}}}}"
                ),
                Some("providers.b.audience"),
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(field_of(yaml).as_deref(), *want, "{yaml}");
        }
        let c = Config::from_yaml(&format!("{oauth2}, issuer: i, skip_audience_check: true}}"))
            .unwrap();
        assert!(c.provider.resolved_audiences().is_empty());
        let c = Config::from_yaml(
            "provider: {kind: stytch, project_id: p1, base_url: 'https://x', audience: [p1, other]}",
        )
        .unwrap();
        assert_eq!(c.provider.resolved_audiences(), vec!["p1", "other"]);
    }

    /// Each bound holds at its edge and refuses one step past it, naming the field.
    #[test]
    fn verification_durations_are_bounded() {
        let base = "provider: {kind: stytch, project_id: p1, base_url: 'https://x'";
        let cases: &[(&str, Option<&str>)] = &[
            ("leeway: 0s", None),
            ("leeway: 5m", None),
            ("leeway: 301s", Some("provider.leeway")),
            ("leeway: 100years", Some("provider.leeway")),
            ("max_token_age: 1s", None),
            ("max_token_age: 24h", None),
            ("max_token_age: 0s", Some("provider.max_token_age")),
            ("max_token_age: 25h", Some("provider.max_token_age")),
            (
                "max_token_age: 500000000000years",
                Some("provider.max_token_age"),
            ),
            ("jwks_min_refetch_interval: 1s", None),
            ("jwks_min_refetch_interval: 1h", None),
            (
                "jwks_min_refetch_interval: 999ms",
                Some("provider.jwks_min_refetch_interval"),
            ),
            (
                "jwks_min_refetch_interval: 0s",
                Some("provider.jwks_min_refetch_interval"),
            ),
            (
                "jwks_min_refetch_interval: 61m",
                Some("provider.jwks_min_refetch_interval"),
            ),
        ];
        for (extra, want) in cases {
            let yaml = format!("{base}, {extra}}}");
            assert_eq!(field_of(&yaml).as_deref(), *want, "{yaml}");
        }
        let base = "provider: {kind: stytch, project_id: p1, base_url: 'https://x'}\ncache: ";
        let cases: &[(&str, Option<&str>)] = &[
            ("{stale_if_error: 0s}", None),
            ("{stale_if_error: 1h}", None),
            ("{stale_if_error: 3601s}", Some("cache.stale_if_error")),
            (
                "{stale_if_error: 1000000years}",
                Some("cache.stale_if_error"),
            ),
            ("{max_credential_age: 1s}", None),
            ("{max_credential_age: 24h}", None),
            ("{max_credential_age: 0s}", Some("cache.max_credential_age")),
            (
                "{max_credential_age: 500ms}",
                Some("cache.max_credential_age"),
            ),
            (
                "{max_credential_age: 25h}",
                Some("cache.max_credential_age"),
            ),
        ];
        for (extra, want) in cases {
            let yaml = format!("{base}{extra}");
            assert_eq!(field_of(&yaml).as_deref(), *want, "{yaml}");
        }
        // Every duration has a ceiling, so no sum or product of config durations overflows.
        for (yaml, field) in [
            ("cache: {negative_ttl: 1000000years}", "cache.negative_ttl"),
            ("cache: {expiry_margin: 366days}", "cache.expiry_margin"),
            (
                "cache: {exchange_queue_timeout: 18446744073709551615s}",
                "cache.exchange_queue_timeout",
            ),
            ("listen: {drain_timeout: 1000years}", "listen.drain_timeout"),
            (
                "policy: {reload_interval: 1000years}",
                "policy.reload_interval",
            ),
        ] {
            let yaml = format!(
                "provider: {{kind: stytch, project_id: p1, base_url: 'https://x'}}\n{yaml}"
            );
            assert_eq!(field_of(&yaml).as_deref(), Some(field), "{yaml}");
        }
        for (extra, field) in [
            ("request_timeout: 500000years", "provider.request_timeout"),
            ("connect_timeout: 2000years", "provider.connect_timeout"),
            (
                "jwks_refresh_interval: 2000years",
                "provider.jwks_refresh_interval",
            ),
        ] {
            let yaml = format!(
                "provider: {{kind: stytch, project_id: p1, base_url: 'https://x', {extra}}}"
            );
            assert_eq!(field_of(&yaml).as_deref(), Some(field), "{yaml}");
        }
        // A named provider's bound names its own path.
        assert_eq!(
            field_of(&format!(
                "{base}{{}}\nproviders: {{b: {{kind: stytch, project_id: p2, base_url: 'https://y', leeway: 1h}}}}"
            ))
            .as_deref(),
            Some("providers.b.leeway")
        );
    }

    /// Provider URLs carrying a password are refused, wherever they are written.
    #[test]
    fn provider_urls_carry_no_credentials() {
        for (yaml, field) in [
            (
                "provider: {kind: oauth2, token_url: 'https://u:p@a/t', jwks_url: 'https://a/j', issuer: i, audience: api}",
                "provider.token_url",
            ),
            (
                "provider: {kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://u@a/j', issuer: i, audience: api}",
                "provider.jwks_url",
            ),
            (
                "provider: {kind: stytch, project_id: p1, base_url: 'https://u:p@x'}",
                "provider.token_url",
            ),
        ] {
            assert_eq!(field_of(yaml).as_deref(), Some(field), "{yaml}");
        }
    }

    /// Plain http to another host is warned about in one line naming field and host; loopback
    /// in any spelling, and https, are not.
    #[test]
    fn plain_http_off_loopback_is_warned_about() {
        let oauth2 = |token: &str, jwks: &str| {
            Config::from_yaml(&format!(
                "provider: {{kind: oauth2, token_url: '{token}', jwks_url: '{jwks}', issuer: i, audience: api}}"
            ))
            .unwrap()
        };
        for local in [
            "http://127.0.0.1:8080/t",
            "http://127.9.9.9/t",
            "http://localhost/t",
            "http://LOCALHOST./t",
            "http://[::1]:9/t",
            "http://[::ffff:127.0.0.1]/t",
            "http://0.0.0.0:9/t",
            "https://auth.example.com/t",
        ] {
            assert_eq!(oauth2(local, local).plain_http_warning(), None, "{local}");
        }
        let w = oauth2(
            "http://auth.example.com/oauth/token?x=secret-query",
            "http://10.0.0.7:8080/jwks",
        )
        .plain_http_warning()
        .expect("a warning");
        assert!(!w.contains('\n'), "{w}");
        assert!(
            w.contains("provider.token_url (host auth.example.com)"),
            "{w}"
        );
        assert!(w.contains("provider.jwks_url (host 10.0.0.7)"), "{w}");
        assert!(!w.contains("secret-query") && !w.contains("/oauth"), "{w}");
        for (spelling, host) in [
            ("http://localhost.evil.com/t", "localhost.evil.com"),
            ("http://127.0.0.1.nip.io/t", "127.0.0.1.nip.io"),
            ("http://[::2]/t", "[::2]"),
        ] {
            let w = oauth2(spelling, "https://a/j").plain_http_warning();
            assert!(
                w.as_deref()
                    .is_some_and(|w| w.contains(&format!("(host {host})"))),
                "{spelling}: {w:?}"
            );
        }
        // Derived Stytch URLs are named by the field that was written; named providers by path.
        let c = Config::from_yaml(
            "provider: {kind: stytch, project_id: p1, base_url: 'http://stytch.internal'}\nproviders: {b: {kind: oauth2, token_url: 'https://b/t', jwks_url: 'http://b.internal/j', issuer: j, audience: api}}",
        )
        .unwrap();
        let w = c.plain_http_warning().unwrap();
        assert!(
            w.contains("provider.base_url (host stytch.internal)"),
            "{w}"
        );
        assert_eq!(w.matches("provider.base_url").count(), 1, "{w}");
        assert!(w.contains("providers.b.jwks_url (host b.internal)"), "{w}");
        // The embedded issuer: named by what set its address.
        #[cfg(feature = "issuer")]
        {
            let embedded = |extra: &str| {
                Config::from_yaml(&format!(
                "provider: {{kind: embedded, embedded: {{project_secret: demo-project-secret-0123456789{extra}}}}}"
            ))
            .unwrap()
            .plain_http_warning()
            };
            assert_eq!(embedded(", listen: '127.0.0.1:9400'"), None);
            assert_eq!(embedded(", listen: '0.0.0.0:9400'"), None);
            let w = embedded(", listen: '10.1.2.3:9400'").unwrap();
            assert!(
                w.contains("provider.embedded.listen (host 10.1.2.3)"),
                "{w}"
            );
            let w =
                embedded(", listen: '127.0.0.1:9400', issuer_base_url: 'http://issuer.internal'")
                    .unwrap();
            assert!(
                w.contains("provider.embedded.issuer_base_url (host issuer.internal)"),
                "{w}"
            );
        }
    }

    #[test]
    fn issuer_and_audience_accept_one_or_many() {
        let c = Config::from_yaml(
            "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: [a, b], audience: api}",
        )
        .unwrap();
        assert_eq!(c.provider.resolved_issuers(), vec!["a", "b"]);
        assert_eq!(c.provider.resolved_audiences(), vec!["api"]);
        assert_eq!(c.provider.resolved_token_type(), None);
    }

    /// The lean build (no `issuer`, no `shared-cache`) refuses, in one line naming the field and
    /// the feature, every setting that needs a part it was built without; it never ignores one.
    #[test]
    fn settings_of_parts_left_out_are_refused_naming_the_feature() {
        let oauth2 = "provider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i, audience: api}\n";
        let mut cases: Vec<(String, &str, &str)> = Vec::new();
        if cfg!(not(feature = "issuer")) {
            cases.extend([
                (
                    "provider:\n  kind: embedded\n  embedded:\n    listen: 127.0.0.1:9400\n    project_secret: demo-project-secret-0123456789\n".to_owned(),
                    "provider.kind",
                    "issuer",
                ),
                ("provider: {kind: embedded}".to_owned(), "provider.kind", "issuer"),
                (
                    "provider: {kind: stytch, project_id: p1, base_url: 'https://x', embedded: {listen: '127.0.0.1:9400'}}".to_owned(),
                    "provider.embedded",
                    "issuer",
                ),
            ]);
        }
        if cfg!(not(feature = "shared-cache")) {
            cases.extend([
                (
                    format!("{oauth2}cache:\n  shared:\n    url: redis://127.0.0.1:6379\n"),
                    "cache.shared",
                    "shared-cache",
                ),
                (
                    format!("{oauth2}cache: {{shared: {{}}}}"),
                    "cache.shared",
                    "shared-cache",
                ),
            ]);
        }
        for (yaml, field, feature) in &cases {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { field: f, problem }) => {
                    assert_eq!(&f, field, "{yaml}");
                    assert!(
                        problem.contains(&format!("needs the `{feature}` feature")),
                        "{yaml}: {problem}"
                    );
                    assert!(!problem.contains('\n'), "{problem}");
                }
                other => panic!("{yaml}: {other:?}"),
            }
        }
        // A named provider may never be embedded, with or without the feature.
        let named = format!(
            "{oauth2}providers: {{b: {{kind: embedded, embedded: {{listen: '127.0.0.1:9400'}}}}}}"
        );
        assert!(matches!(
            Config::from_yaml(&named),
            Err(ConfigError::Invalid { field, .. }) if field == "providers.b.kind"
        ));
    }
}
