//! One identity provider's section (`provider`, and each of `providers`) and its **profiles**:
//! how each `kind` turns what was written into a token endpoint, a JWKS URL, accepted issuers
//! and audiences, a required token type and a client authentication — the `ResolvedProvider`
//! that `crate::provider` and `crate::exchange` consume. Everything a profile decides is in
//! this file, which is why it is one file of this length.
//!
//! A new profile needs, here and in the README's provider table only:
//! 1. a `ProviderKind` variant (its YAML name is the lower-cased variant name);
//! 2. its fields, if it needs more than `token_url`, `jwks_url`, `issuer`, `audience`, or
//!    `project_id` and `base_url` (each optional in `ProviderConfig`);
//! 3. its rules in `validate` (which fields it requires or refuses, each error naming the
//!    field) and in `validate_issuers_and_audiences`;
//! 4. its derivations in `resolved_token_url`, `resolved_jwks_url`, `resolved_issuers`,
//!    `resolved_audiences` and `resolved_token_type`, and which field a derived URL is named by
//!    in `plain_http_urls`.
//!
//! The compiler points at every `match` on `ProviderKind` that must learn the new variant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::ConfigError;
use super::text::is_visible;
use super::token::{
    Algorithm, ClientAuth, JWKS_MIN_REFETCH_RANGE, MAX_LEEWAY, MAX_TOKEN_AGE_RANGE, OneOrMany,
};
use crate::defaults;

/// `provider.embedded`: the embedded issuer's settings. Without the `issuer` feature any value is
/// accepted by the parser and then refused by `validate`, naming the field and the feature.
#[cfg(feature = "issuer")]
pub type EmbeddedConfig = crate::issuer::IssuerConfig;
#[cfg(not(feature = "issuer"))]
pub type EmbeddedConfig = serde::de::IgnoredAny;

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

impl ProviderKind {
    /// The config's own word for the kind (`provider.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Oauth2 => "oauth2",
            ProviderKind::Stytch => "stytch",
            ProviderKind::Embedded => "embedded",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub token_url: Option<Url>,
    pub jwks_url: Option<Url>,
    /// `oauth2` only: where the provider's metadata document is (OpenID Connect Discovery or
    /// RFC 8414). Without it, and without `token_url` or `jwks_url`, the metadata is looked up
    /// under the single `issuer` (see [`well_known_urls`]).
    pub discovery_url: Option<Url>,
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
    /// How the sidecar authenticates to the token endpoint; unset: `client_secret_post`, or,
    /// for a discovered provider, what its metadata supports (`client_secret_basic` first).
    pub client_auth: Option<ClientAuth>,
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
    #[serde(default = "default_leeway", with = "crate::config::duration")]
    pub leeway: Duration,
    /// Reject tokens issued longer ago than this (checked against `iat`), whatever their `exp`;
    /// within `MAX_TOKEN_AGE_RANGE`.
    #[serde(default, with = "crate::config::duration::optional")]
    pub max_token_age: Option<Duration>,
    #[serde(default = "default_connect_timeout", with = "crate::config::duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_request_timeout", with = "crate::config::duration")]
    pub request_timeout: Duration,
    /// The longest an identity is cached, whatever the token's `exp` or `expires_in` say.
    #[serde(
        default = "default_max_token_lifetime",
        with = "crate::config::duration"
    )]
    pub max_token_lifetime: Duration,
    /// How often the JWKS is fetched again in the background.
    #[serde(default = "default_jwks_refresh", with = "crate::config::duration")]
    pub jwks_refresh_interval: Duration,
    /// The least time between two fetches caused by tokens with an unknown `kid`; within
    /// `JWKS_MIN_REFETCH_RANGE`.
    #[serde(default = "default_jwks_min_refetch", with = "crate::config::duration")]
    pub jwks_min_refetch_interval: Duration,
    /// Tokens longer than this are refused before any parsing.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// A PEM file of CA certificates trusted for this provider's token and JWKS endpoints, in
    /// addition to the system's roots (a private CA, or the embedded issuer's generated one).
    /// A relative path is taken from the config file's folder.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain, leaf first) this sidecar presents to the provider's
    /// token and JWKS endpoints, for providers that authenticate it with mutual TLS (RFC 8705
    /// endpoints); with `client_key`. A relative path is taken from the config file's folder.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`, under the private-file rules (a regular file of
    /// this user's, mode 0600 or stricter).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// RFC 7662: how opaque access tokens are checked, with the sidecar's own resource-server
    /// credentials.
    pub introspection: Option<IntrospectionConfig>,
    /// Which access tokens are JWTs verified locally and which are introspected; unset: `jwt`
    /// without `introspection`, else `auto`.
    pub token_format: Option<TokenFormat>,
}

/// `provider.token_format`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// Every token is a JWT, verified with the JWKS.
    Jwt,
    /// Every token is introspected.
    Opaque,
    /// A three-segment JWS compact token is verified as a JWT; any other is introspected.
    Auto,
}

/// How the introspection endpoint authenticates the sidecar.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectionAuth {
    /// HTTP Basic with form-urlencoded id and secret (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// `provider.introspection`: the resource-server credentials the sidecar introspects with.
/// `Debug` is written by hand: the secret is never printed.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint; unset: the discovered `introspection_endpoint`.
    pub url: Option<Url>,
    pub client_id: String,
    /// The secret, in the file; or
    pub client_secret: Option<String>,
    /// the name of the environment variable holding it (for a Kubernetes Secret).
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub auth: IntrospectionAuth,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url.as_ref().map(Url::as_str))
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_env", &self.client_secret_env)
            .field("auth", &self.auth)
            .finish()
    }
}

impl IntrospectionConfig {
    /// The secret in effect (file or environment), or the error naming the field.
    fn secret(&self) -> Result<crate::secret::Secret, ConfigError> {
        let secret = match (&self.client_secret, &self.client_secret_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => {
                if var.is_empty() {
                    return Err(ConfigError::invalid(
                        "provider.introspection.client_secret_env",
                        "expected the name of an environment variable",
                    ));
                }
                match std::env::var(var) {
                    Ok(v) if !v.is_empty() => v,
                    _ => {
                        return Err(ConfigError::invalid(
                            "provider.introspection.client_secret_env",
                            format!("the environment variable {var} is not set (or empty)"),
                        ));
                    }
                }
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "provider.introspection.client_secret",
                    "give client_secret or client_secret_env, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "provider.introspection.client_secret",
                    "required (or client_secret_env)",
                ));
            }
        };
        if secret.is_empty() || secret.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                "provider.introspection.client_secret",
                "expected a non-empty secret without control characters",
            ));
        }
        Ok(crate::secret::Secret::new(secret))
    }
}

/// `provider.introspection` resolved: the secret read, the URL (when not discovered) known.
#[derive(Debug, Clone)]
pub struct ResolvedIntrospection {
    /// `None`: the discovered `introspection_endpoint`.
    pub url: Option<Url>,
    pub client_id: String,
    pub client_secret: crate::secret::Secret,
    pub auth: IntrospectionAuth,
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

/// One provider as the token endpoint, the key source and the verifier use it: every URL,
/// issuer, audience and rule resolved from its profile (`ProviderConfig::resolve`).
#[derive(Debug, Clone)]
pub struct ResolvedProvider {
    pub kind: ProviderKind,
    /// `None`: taken from the discovered metadata (`discovery`).
    pub token_url: Option<Url>,
    /// `None`: taken from the discovered metadata (`discovery`).
    pub jwks_url: Option<Url>,
    /// Where and how the provider's metadata is discovered, when an endpoint is not given.
    pub discovery: Option<DiscoveryPlan>,
    /// The accepted `iss` values; never empty.
    pub issuers: Vec<String>,
    /// The accepted `aud` values; empty only with `skip_audience_check` (then `aud` is not
    /// checked).
    pub audiences: Vec<String>,
    /// The required JWT header `typ`, lower-cased; `None` accepts any.
    pub token_type: Option<String>,
    pub client_auth: ClientAuth,
    /// Space-separated scopes requested at the token endpoint.
    pub scope: Option<String>,
    /// Extra form parameters for the token request.
    pub token_params: Vec<(String, String)>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub max_token_age: Option<Duration>,
    pub max_token_bytes: usize,
    pub jwks_min_refetch_interval: Duration,
    /// `ca_file`'s certificates, trusted besides the system roots.
    pub extra_roots: Vec<reqwest::Certificate>,
    /// `client_cert` and `client_key`, presented to the provider (mutual TLS).
    pub client_identity: Option<reqwest::Identity>,
    /// How opaque tokens are introspected; `Some` whenever `token_format` is not `Jwt`.
    pub introspection: Option<ResolvedIntrospection>,
    pub token_format: TokenFormat,
}

/// How a provider's metadata is found and checked (OpenID Connect Discovery 1.0, RFC 8414).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryPlan {
    /// The documents tried in order; the first one served (2xx) is used.
    pub urls: Vec<Url>,
    /// The document's `issuer` must equal one of these exactly (RFC 8414 §3.3, OIDC Discovery
    /// §4.3): the configured `issuer` values.
    pub issuers: Vec<String>,
    /// The client authentication the config names; `None` lets the metadata choose.
    pub client_auth: Option<ClientAuth>,
    /// The field a problem with the document's location is reported under.
    pub field: &'static str,
    /// How often the document is fetched again (with the JWKS).
    pub refresh: Duration,
}

impl ProviderConfig {
    /// This provider resolved from its profile; validates it first, so the error (named as for
    /// `provider`) is the one `validate` gives.
    pub fn resolve(&self) -> Result<ResolvedProvider, ConfigError> {
        self.validate()?;
        let underivable = |field: &str| ConfigError::invalid(field, "cannot be derived");
        let discovery = self.resolved_discovery();
        let token_url = self.resolved_token_url();
        let jwks_url = self.resolved_jwks_url();
        if discovery.is_none() {
            token_url
                .as_ref()
                .ok_or_else(|| underivable("provider.token_url"))?;
            jwks_url
                .as_ref()
                .ok_or_else(|| underivable("provider.jwks_url"))?;
        }
        Ok(ResolvedProvider {
            kind: self.kind,
            token_url,
            jwks_url,
            discovery,
            issuers: self.resolved_issuers(),
            audiences: self.resolved_audiences(),
            token_type: self.resolved_token_type(),
            client_auth: self.client_auth.unwrap_or_default(),
            scope: self.scope.clone(),
            token_params: self
                .token_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            algorithms: self.algorithms.clone(),
            leeway: self.leeway,
            max_token_age: self.max_token_age,
            max_token_bytes: self.max_token_bytes,
            jwks_min_refetch_interval: self.jwks_min_refetch_interval,
            extra_roots: match &self.ca_file {
                Some(path) => read_ca_file(path)
                    .map_err(|problem| ConfigError::invalid("provider.ca_file", problem))?,
                None => Vec::new(),
            },
            client_identity: self.client_identity()?,
            introspection: match &self.introspection {
                Some(i) => Some(ResolvedIntrospection {
                    url: i.url.clone(),
                    client_id: i.client_id.clone(),
                    client_secret: i.secret()?,
                    auth: i.auth,
                }),
                None => None,
            },
            token_format: self.resolved_token_format(),
        })
    }

    /// `token_format` as given, else `auto` with introspection and `jwt` without.
    pub fn resolved_token_format(&self) -> TokenFormat {
        self.token_format.unwrap_or(match self.introspection {
            Some(_) => TokenFormat::Auto,
            None => TokenFormat::Jwt,
        })
    }

    /// `provider.introspection` and `provider.token_format`, each error naming its field.
    fn validate_introspection(&self) -> Result<(), ConfigError> {
        let Some(i) = &self.introspection else {
            if matches!(
                self.token_format,
                Some(TokenFormat::Opaque | TokenFormat::Auto)
            ) {
                return Err(ConfigError::invalid(
                    "provider.introspection",
                    "required when provider.token_format is opaque or auto",
                ));
            }
            return Ok(());
        };
        if self.kind != ProviderKind::Oauth2 {
            return Err(ConfigError::invalid(
                "provider.introspection",
                "only for provider.kind oauth2",
            ));
        }
        if self.token_format == Some(TokenFormat::Jwt) {
            return Err(ConfigError::invalid(
                "provider.token_format",
                "jwt never introspects: remove provider.introspection or choose opaque or auto",
            ));
        }
        if i.client_id.is_empty() || !is_visible(&i.client_id) {
            return Err(ConfigError::invalid(
                "provider.introspection.client_id",
                "expected a non-empty client id without spaces or control characters",
            ));
        }
        i.secret()?;
        match &i.url {
            Some(url) => {
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::invalid(
                        "provider.introspection.url",
                        "expected an http(s) URL",
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(ConfigError::invalid(
                        "provider.introspection.url",
                        "expected a URL without user:password@",
                    ));
                }
            }
            None if self.resolved_discovery().is_none() => {
                return Err(ConfigError::invalid(
                    "provider.introspection.url",
                    "required unless the provider is discovered (without token_url and jwks_url both set)",
                ));
            }
            None => {}
        }
        Ok(())
    }

    /// `client_cert` and `client_key` read and checked together: both or neither, the key
    /// under the private-file rules and belonging to the certificate. The error names the
    /// field and the file, never what the key file holds.
    fn client_identity(&self) -> Result<Option<reqwest::Identity>, ConfigError> {
        let (cert, key) = match (&self.client_cert, &self.client_key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "provider.client_key",
                    "required with provider.client_cert (its private key)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "provider.client_cert",
                    "required with provider.client_key (the certificate it belongs to)",
                ));
            }
        };
        let cert_err = |p: String| ConfigError::invalid("provider.client_cert", p);
        let key_err = |p: String| ConfigError::invalid("provider.client_key", p);
        let chain = crate::pem::read_certs(cert).map_err(cert_err)?;
        let key_der = read_client_key(key).map_err(key_err)?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| key_err(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => key_err(format!(
                    "{}: the private key does not belong to provider.client_cert's first \
                     certificate",
                    key.display()
                )),
                e => key_err(format!("{}: not a usable private key: {e}", key.display())),
            })?;
        let mut pem = crate::pem::read_bounded(cert).map_err(cert_err)?;
        pem.push(b'\n');
        pem.extend_from_slice(&crate::pem::read_bounded(key).map_err(key_err)?);
        reqwest::Identity::from_pem(&pem)
            .map(Some)
            .map_err(|_| key_err(format!("{}: not a usable private key", key.display())))
    }
}

/// A private key from a PEM file that passes the private-file rules; the error names the path
/// but never shows what the file holds.
fn read_client_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let shown = path.display();
    match crate::private_files::check_file(path, "the provider client certificate's private key") {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("{shown} does not exist")),
        Err(e) => return Err(e.to_string()),
    }
    let bytes = crate::pem::read_bounded(path)?;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        format!(
            "{shown} holds no PEM private key (PKCS#8, PKCS#1 or SEC1: -----BEGIN … PRIVATE \
             KEY-----)"
        )
    })
}

impl ProviderConfig {
    /// The whole provider section, as `provider`; `Config::validate` renames the path of a
    /// named provider.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.kind {
            ProviderKind::Oauth2 => {
                if self.issuer.is_none() {
                    return Err(ConfigError::invalid(
                        "provider.issuer",
                        "required when provider.kind is oauth2",
                    ));
                }
                self.validate_discovery()?;
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
                if embedded.tls.is_some() {
                    return Err(ConfigError::invalid(
                        "provider.embedded.tls",
                        "not for the in-process issuer, which the sidecar reaches over loopback; \
                         run `m2m-authz issuer` with tls and point a stytch provider at it (with \
                         provider.ca_file for a self-signed CA)",
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
                    ("provider.discovery_url", self.discovery_url.is_some()),
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
                if self.discovery_url.is_some() {
                    return Err(ConfigError::invalid(
                        "provider.discovery_url",
                        "not for provider.kind stytch, whose endpoints are derived from project_id",
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
            ("provider.discovery_url", self.discovery_url.clone()),
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
        if let Some(path) = &self.ca_file {
            read_ca_file(path)
                .map_err(|problem| ConfigError::invalid("provider.ca_file", problem))?;
        }
        self.client_identity()?;
        self.validate_introspection()?;
        Ok(())
    }

    /// Takes a relative `ca_file` from `dir` (the config file's folder).
    pub fn resolve_paths_in(&mut self, dir: &Path) {
        for path in [
            self.ca_file.as_mut(),
            self.client_cert.as_mut(),
            self.client_key.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
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
        ]
        .into_iter()
        .chain(
            self.resolved_discovery()
                .and_then(|d| Some((true, d.field, d.urls.first()?.clone())))
                .map(|(e, f, u)| (e, f, Some(u))),
        )
        // Callers' Bearer tokens and the introspection secret cross it.
        .chain(
            self.introspection
                .as_ref()
                .and_then(|i| i.url.clone())
                .map(|u| (true, "provider.introspection.url", Some(u))),
        ) {
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

    /// `oauth2` without `token_url` or `jwks_url` discovers them: from `discovery_url`, or else
    /// from the `issuer`, which must then be one http(s) URL without query or fragment
    /// (RFC 8414 §2).
    fn validate_discovery(&self) -> Result<(), ConfigError> {
        let needed = self.token_url.is_none() || self.jwks_url.is_none();
        if let Some(url) = &self.discovery_url
            && (url.query().is_some() || url.fragment().is_some())
        {
            return Err(ConfigError::invalid(
                "provider.discovery_url",
                "expected a URL without query or fragment",
            ));
        }
        if !needed || self.discovery_url.is_some() {
            return Ok(());
        }
        let missing = if self.token_url.is_none() {
            "provider.token_url"
        } else {
            "provider.jwks_url"
        };
        let issuers = self
            .issuer
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        let [issuer] = issuers.as_slice() else {
            return Err(ConfigError::invalid(
                missing,
                "required when provider.kind is oauth2, unless it is discovered: give provider.discovery_url (provider.issuer lists several values)",
            ));
        };
        match Url::parse(issuer) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && url.username().is_empty()
                    && url.password().is_none() =>
            {
                Ok(())
            }
            _ => Err(ConfigError::invalid(
                missing,
                "required when provider.kind is oauth2, unless it is discovered: provider.issuer must then be the issuer's https URL (without query, fragment or user:password@), or give provider.discovery_url",
            )),
        }
    }

    /// Where this provider's metadata is discovered, when an endpoint is not configured
    /// (explicit `token_url` and `jwks_url` win, and then nothing is fetched).
    pub fn resolved_discovery(&self) -> Option<DiscoveryPlan> {
        if self.kind != ProviderKind::Oauth2
            || (self.token_url.is_some() && self.jwks_url.is_some())
        {
            return None;
        }
        let issuers = self.resolved_issuers();
        let (urls, field) = match &self.discovery_url {
            Some(url) => (vec![url.clone()], "provider.discovery_url"),
            None => match issuers.as_slice() {
                [issuer] => (
                    well_known_urls(&Url::parse(issuer).ok()?),
                    "provider.issuer",
                ),
                _ => return None,
            },
        };
        Some(DiscoveryPlan {
            urls,
            issuers,
            client_auth: self.client_auth,
            field,
            refresh: self.jwks_refresh_interval,
        })
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

/// The certificates of a PEM CA file, each checked to be usable as a trust anchor; the error
/// says what is wrong with the file (naming it), for `provider.ca_file`.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let shown = path.display();
    let certs = crate::pem::read_certs(path)?;
    let mut anchors = rustls::RootCertStore::empty();
    certs
        .into_iter()
        .enumerate()
        .map(|(i, der)| {
            anchors.add(der.clone()).map_err(|e| {
                format!("{shown}: certificate {} is not usable as a CA: {e}", i + 1)
            })?;
            reqwest::Certificate::from_der(der.as_ref())
                .map_err(|e| format!("{shown}: certificate {}: {e}", i + 1))
        })
        .collect()
}

fn stytch_url(base: &Url, path: &str) -> Option<Url> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    base.join(path).ok()
}

/// The metadata documents of an issuer, in the order they are tried: OpenID Connect Discovery
/// (§4: `/.well-known/openid-configuration` appended to the issuer's path), then RFC 8414 (§3:
/// `/.well-known/oauth-authorization-server` inserted between the host and the issuer's path).
/// For an issuer without a path both are at the root.
pub fn well_known_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut oauth = issuer.clone();
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    vec![oidc, oauth]
}

/// Whether a URL's host is this machine: loopback or the unspecified address.
pub(crate) fn is_local_host(url: &Url) -> bool {
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

#[cfg(test)]
mod discovery_tests {
    use super::*;
    use crate::config::Config;

    fn urls(issuer: &str) -> Vec<String> {
        well_known_urls(&Url::parse(issuer).unwrap())
            .iter()
            .map(|u| u.to_string())
            .collect()
    }

    #[test]
    fn well_known_locations_for_issuers_with_and_without_a_path() {
        for root in ["https://idp.example", "https://idp.example/"] {
            assert_eq!(
                urls(root),
                [
                    "https://idp.example/.well-known/openid-configuration",
                    "https://idp.example/.well-known/oauth-authorization-server"
                ]
            );
        }
        for tenant in ["https://idp.example/t/a", "https://idp.example/t/a/"] {
            assert_eq!(
                urls(tenant),
                [
                    "https://idp.example/t/a/.well-known/openid-configuration",
                    "https://idp.example/.well-known/oauth-authorization-server/t/a"
                ]
            );
        }
    }

    #[test]
    fn an_issuer_alone_is_discovered_and_explicit_endpoints_win() {
        let c = Config::from_yaml(
            "provider: {kind: oauth2, issuer: 'https://idp.example/t', audience: api}",
        )
        .unwrap();
        let r = c.provider.resolve().unwrap();
        assert_eq!(r.token_url, None);
        let plan = r.discovery.unwrap();
        assert_eq!(plan.urls.len(), 2);
        assert_eq!(plan.issuers, ["https://idp.example/t"]);
        assert_eq!(plan.client_auth, None);
        assert!(c.summary().contains(
            "discovered from https://idp.example/t/.well-known/openid-configuration or https://idp.example/.well-known/oauth-authorization-server/t"
        ), "{}", c.summary());

        let c = Config::from_yaml(
            "provider: {kind: oauth2, issuer: i, discovery_url: 'https://idp.example/meta', audience: api, client_auth: client_secret_basic}",
        )
        .unwrap();
        let plan = c.provider.resolve().unwrap().discovery.unwrap();
        assert_eq!(plan.urls[0].as_str(), "https://idp.example/meta");
        assert_eq!(plan.client_auth, Some(ClientAuth::ClientSecretBasic));

        let c = Config::from_yaml(
            "provider: {kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://a/j', issuer: 'https://a', audience: api}",
        )
        .unwrap();
        let r = c.provider.resolve().unwrap();
        assert!(r.discovery.is_none());
        assert_eq!(r.client_auth, ClientAuth::ClientSecretPost);
    }

    #[test]
    fn undiscoverable_providers_are_refused_naming_the_field() {
        for (yaml, field) in [
            (
                "provider: {kind: oauth2, issuer: not-a-url, audience: api}",
                "provider.token_url",
            ),
            (
                "provider: {kind: oauth2, issuer: 'https://a?x=1', audience: api}",
                "provider.token_url",
            ),
            (
                "provider: {kind: oauth2, issuer: 'https://u:p@a', audience: api}",
                "provider.token_url",
            ),
            (
                "provider: {kind: oauth2, token_url: 'https://a/t', issuer: [a, b], audience: api}",
                "provider.jwks_url",
            ),
            (
                "provider: {kind: oauth2, issuer: 'https://a', discovery_url: 'https://a/m?x', audience: api}",
                "provider.discovery_url",
            ),
            (
                "provider: {kind: oauth2, issuer: 'https://a', discovery_url: 'ftp://a/m', audience: api}",
                "provider.discovery_url",
            ),
            (
                "provider: {kind: oauth2, issuer: 'https://a', discovery_url: 'https://u:p@a/m', audience: api}",
                "provider.discovery_url",
            ),
            (
                "provider: {kind: stytch, project_id: p, base_url: 'https://a', discovery_url: 'https://a/m'}",
                "provider.discovery_url",
            ),
            ("provider: {kind: oauth2, audience: api}", "provider.issuer"),
        ] {
            let err = Config::from_yaml(yaml)
                .err()
                .unwrap_or_else(|| panic!("accepted: {yaml}"));
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn a_plain_http_issuer_off_this_host_is_warned_about() {
        let c = Config::from_yaml(
            "provider: {kind: oauth2, issuer: 'http://idp.internal', audience: api}",
        )
        .unwrap();
        let w = c.plain_http_warning().unwrap();
        assert!(w.contains("provider.issuer (host idp.internal)"), "{w}");
        let c = Config::from_yaml(
            "provider: {kind: oauth2, issuer: 'http://127.0.0.1:9', audience: api}",
        )
        .unwrap();
        assert!(c.plain_http_warning().is_none());
    }
}

#[cfg(test)]
mod introspection_tests {
    use super::*;
    use crate::config::Config;

    const EXPLICIT: &str = "kind: oauth2, token_url: 'https://a/t', jwks_url: 'https://a/j', issuer: 'https://a', audience: api";

    #[test]
    fn token_format_defaults_to_auto_with_introspection_and_jwt_without() {
        let c = Config::from_yaml(&format!(
            "provider: {{{EXPLICIT}, introspection: {{url: 'https://a/i', client_id: rs, client_secret: s3cret}}}}"
        ))
        .unwrap();
        let r = c.provider.resolve().unwrap();
        assert_eq!(r.token_format, TokenFormat::Auto);
        let i = r.introspection.unwrap();
        assert_eq!(i.auth, IntrospectionAuth::Basic);
        assert_eq!(i.client_secret.expose(), "s3cret");
        // Never printed.
        let shown = format!("{:?} {:?}", c.provider, i);
        assert!(!shown.contains("s3cret"), "{shown}");

        let c = Config::from_yaml(&format!("provider: {{{EXPLICIT}}}")).unwrap();
        let r = c.provider.resolve().unwrap();
        assert_eq!(r.token_format, TokenFormat::Jwt);
        assert!(r.introspection.is_none());

        // Discovered: the URL may come from the metadata.
        let c = Config::from_yaml(
            "provider: {kind: oauth2, issuer: 'https://a', audience: api, token_format: opaque, introspection: {client_id: rs, client_secret: s, auth: post}}",
        )
        .unwrap();
        let r = c.provider.resolve().unwrap();
        assert_eq!(r.token_format, TokenFormat::Opaque);
        assert_eq!(r.introspection.unwrap().url, None);
    }

    #[test]
    fn the_secret_may_come_from_the_environment() {
        // A variable every test environment has (setting one would need `unsafe`).
        let var = "PATH";
        let c = Config::from_yaml(&format!(
            "provider: {{{EXPLICIT}, introspection: {{url: 'https://a/i', client_id: rs, client_secret_env: {var}}}}}"
        ))
        .unwrap();
        let i = c.provider.resolve().unwrap().introspection.unwrap();
        assert_eq!(Ok(i.client_secret.expose()), std::env::var(var).as_deref());
    }

    #[test]
    fn bad_introspection_settings_are_refused_naming_the_field() {
        for (rest, field) in [
            ("token_format: opaque", "provider.introspection"),
            ("token_format: auto", "provider.introspection"),
            ("token_format: jws", "token_format"),
            (
                "token_format: jwt, introspection: {url: 'https://a/i', client_id: rs, client_secret: s}",
                "provider.token_format",
            ),
            (
                "introspection: {client_id: rs, client_secret: s}",
                "provider.introspection.url",
            ),
            (
                "introspection: {url: 'ftp://a/i', client_id: rs, client_secret: s}",
                "provider.introspection.url",
            ),
            (
                "introspection: {url: 'https://u:p@a/i', client_id: rs, client_secret: s}",
                "provider.introspection.url",
            ),
            (
                "introspection: {url: 'https://a/i', client_id: '', client_secret: s}",
                "provider.introspection.client_id",
            ),
            (
                "introspection: {url: 'https://a/i', client_id: rs}",
                "provider.introspection.client_secret",
            ),
            (
                "introspection: {url: 'https://a/i', client_id: rs, client_secret: ''}",
                "provider.introspection.client_secret",
            ),
            (
                "introspection: {url: 'https://a/i', client_id: rs, client_secret: s, client_secret_env: X}",
                "provider.introspection.client_secret",
            ),
            (
                "introspection: {url: 'https://a/i', client_id: rs, client_secret_env: M2M_AUTHZ_TEST_UNSET_T18}",
                "provider.introspection.client_secret_env",
            ),
            (
                "introspection: {url: 'https://a/i', client_id: rs, client_secret: s, auth: jwt}",
                "introspection",
            ),
            (
                "introspection: {url: 'https://a/i', client_id: rs, client_secret: s, extra: 1}",
                "introspection",
            ),
        ] {
            let yaml = format!("provider: {{{EXPLICIT}, {rest}}}");
            let err = Config::from_yaml(&yaml)
                .err()
                .unwrap_or_else(|| panic!("accepted: {yaml}"));
            assert!(err.to_string().contains(field), "{yaml}: {err}");
            // The secret is never echoed.
            assert!(!err.to_string().contains(": s,"), "{err}");
        }
        let named = Config::from_yaml(&format!(
            "provider: {{{EXPLICIT}}}\nproviders:\n  idp: {{{EXPLICIT}, token_format: opaque}}\n"
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(named.contains("providers.idp.introspection"), "{named}");
        let offhost = Config::from_yaml(&format!(
            "provider: {{{EXPLICIT}, introspection: {{url: 'http://idp.example/i', client_id: rs, client_secret: s}}}}"
        ))
        .unwrap();
        assert!(
            offhost
                .provider
                .plain_http_urls()
                .iter()
                .any(|(f, _)| *f == "provider.introspection.url")
        );
        let stytch = Config::from_yaml(
            "provider: {kind: stytch, project_id: p, base_url: 'https://a', introspection: {url: 'https://a/i', client_id: rs, client_secret: s}}",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(stytch.contains("provider.introspection"), "{stytch}");
    }
}
