//! One identity provider as the request path sees it: its token endpoint, its keys and the rules
//! its tokens must meet, as its profile resolved them (`config::ResolvedProvider`).

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::{ResolvedProvider, TokenFormat};
use crate::credentials::Secret;
use crate::discovery::{Discovery, HttpDocumentSource};
use crate::exchange::http::HttpTokenEndpoint;
use crate::exchange::{ExchangeError, Issued, TokenEndpoint};
use crate::introspect::{IntrospectError, Introspector, is_jws_compact, judge};
use crate::jwks::http::HttpKeySource;
use crate::jwks::{Jwks, JwksError, KeySource};
use crate::verify::{TokenRules, Verified, VerifyError, verify};

/// Why a token could not be checked or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenCheckError {
    /// The token itself fails a rule: the caller's problem.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// No key set could be had: the provider's problem.
    #[error("no signing keys are loaded yet")]
    KeysNotLoaded,
    #[error(transparent)]
    Jwks(#[from] JwksError),
    /// The introspection endpoint gave no usable answer: the provider's problem.
    #[error(transparent)]
    Introspection(#[from] IntrospectError),
}

pub struct Provider {
    token: Arc<dyn TokenEndpoint>,
    discovery: Option<Arc<Discovery>>,
    jwks: Arc<Jwks>,
    rules: TokenRules,
    format: TokenFormat,
    /// RFC 7662, for opaque tokens; `Some` whenever `format` is not `Jwt`.
    introspector: Option<Arc<Introspector>>,
    /// The time the token rules (`exp`, `nbf`, `iat`, maximum age) are checked against.
    clock: SharedClock,
}

/// What a provider reaches across the network, and the clock it reads: the endpoints its
/// config names over HTTP ([`ProviderParts::http`]), or in-memory ones in tests.
#[derive(Clone)]
pub struct ProviderParts {
    pub token: Arc<dyn TokenEndpoint>,
    pub keys: Arc<dyn KeySource>,
    pub clock: SharedClock,
    /// The provider's metadata, when an endpoint is discovered rather than configured.
    pub discovery: Option<Arc<Discovery>>,
    /// The introspection endpoint, when `provider.introspection` is configured.
    pub introspector: Option<Arc<Introspector>>,
}

impl ProviderParts {
    /// The real parts: the token endpoint and JWKS URL the config gives or its profile derives
    /// (explicit ones win) or its metadata names, reached with `http`.
    pub fn http(http: reqwest::Client, config: &ResolvedProvider, clock: SharedClock) -> Self {
        let discovery = config.discovery.clone().map(|plan| {
            Arc::new(Discovery::new(
                plan,
                Arc::new(HttpDocumentSource::new(http.clone())),
                http.clone(),
                config,
                clock.clone(),
            ))
        });
        let token: Arc<dyn TokenEndpoint> = match (&config.token_url, &discovery) {
            (Some(url), _) => Arc::new(HttpTokenEndpoint::new(
                http.clone(),
                config,
                url.clone(),
                config.client_auth,
                clock.clone(),
            )),
            (None, Some(d)) => d.token_endpoint(),
            (None, None) => Arc::new(Undiscoverable),
        };
        let introspector = config
            .introspection
            .as_ref()
            .map(|i| Arc::new(Introspector::new(http.clone(), i, discovery.clone())));
        let keys: Arc<dyn KeySource> = match (&config.jwks_url, &discovery) {
            (Some(url), _) => Arc::new(HttpKeySource::new(http, url.clone())),
            (None, Some(d)) => d.key_source(),
            (None, None) => Arc::new(Undiscoverable),
        };
        ProviderParts {
            token,
            keys,
            clock,
            discovery,
            introspector,
        }
    }
}

/// A provider without an endpoint and without a way to discover one: `ProviderConfig::resolve`
/// refuses such a config, so this only keeps the request path free of a panic.
struct Undiscoverable;

impl TokenEndpoint for Undiscoverable {
    fn exchange<'a>(
        &'a self,
        _: &'a str,
        _: &'a Secret,
    ) -> futures::future::BoxFuture<'a, Result<Issued, ExchangeError>> {
        Box::pin(async { Err(ExchangeError::NotDiscovered) })
    }
}

impl KeySource for Undiscoverable {
    fn fetch(&self) -> futures::future::BoxFuture<'_, Result<Vec<u8>, JwksError>> {
        Box::pin(async { Err(JwksError::NotDiscovered) })
    }

    fn describe(&self) -> String {
        "(no JWKS URL)".to_owned()
    }
}

impl Provider {
    /// The real provider: its endpoints over HTTP, the system clock.
    pub fn new(http: reqwest::Client, config: &ResolvedProvider) -> Self {
        let parts = ProviderParts::http(http, config, crate::clock::system());
        Provider::with_parts(config, parts)
    }

    /// A provider with the rules `config` gives and the given parts.
    pub fn with_parts(config: &ResolvedProvider, parts: ProviderParts) -> Self {
        let pinned = config.algorithms.iter().map(|a| a.to_jwt()).collect();
        Provider {
            token: parts.token,
            discovery: parts.discovery,
            jwks: Arc::new(Jwks::new(
                parts.keys,
                pinned,
                config.jwks_min_refetch_interval,
                parts.clock.clone(),
            )),
            rules: TokenRules {
                issuers: config.issuers.clone(),
                audiences: config.audiences.clone(),
                leeway: config.leeway,
                max_age: config.max_token_age,
                token_type: config.token_type.clone(),
                max_bytes: config.max_token_bytes,
            },
            format: match parts.introspector {
                Some(_) => config.token_format,
                None => TokenFormat::Jwt,
            },
            introspector: parts.introspector,
            clock: parts.clock,
        }
    }

    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// The provider's discovered metadata, when its endpoints are discovered.
    pub fn discovery(&self) -> Option<&Arc<Discovery>> {
        self.discovery.as_ref()
    }

    pub async fn exchange(
        &self,
        client_id: &str,
        secret: &Secret,
    ) -> Result<Issued, ExchangeError> {
        self.token.exchange(client_id, secret).await
    }

    /// Whether `token` is checked by introspection (`provider.token_format`) rather than
    /// verified locally as a JWT.
    pub fn introspects(&self, token: &str) -> bool {
        match self.format {
            TokenFormat::Jwt => false,
            TokenFormat::Opaque => true,
            TokenFormat::Auto => !is_jws_compact(token),
        }
    }

    /// Verifies a JWT against the current keys; a token naming a `kid` they lack triggers one
    /// rate-limited JWKS refetch (RFC 7517 key rotation) before it is refused. An opaque token
    /// (`introspects`) is introspected instead, and the answer judged by the same rules.
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenCheckError> {
        if let Some(introspector) = self
            .introspector
            .as_ref()
            .filter(|_| self.introspects(token))
        {
            if token.len() > self.rules.max_bytes {
                return Err(VerifyError::TooLong.into());
            }
            let answer = introspector.introspect(token).await?;
            return Ok(judge(answer, &self.rules, self.clock.unix_now())?);
        }
        let keys = self.jwks.snapshot().ok_or(TokenCheckError::KeysNotLoaded)?;
        match verify(token, &keys, &self.rules, self.clock.unix_now()) {
            Err(VerifyError::UnknownKey) => {
                let Some(fresh) = self.jwks.refetch_for_unknown_kid(&keys).await? else {
                    return Err(VerifyError::UnknownKey.into());
                };
                Ok(verify(token, &fresh, &self.rules, self.clock.unix_now())?)
            }
            other => Ok(other?),
        }
    }
}
