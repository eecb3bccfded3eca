//! The core of a check, independent of any transport: credential → cached identity, or one
//! (coalesced, limited) exchange and a verification → identity headers → a `Decision`. Only
//! infrastructure failures are errors.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::cache::{CacheKey, Identity, KeyDeriver, Lookup, TokenCache};
use crate::config::Config;
use crate::credentials::{BearerToken, Credential, Extractor, Secret};
use crate::decision::{Allow, Decision, Refusal};
use crate::defaults::CACHE_SWEEP_INTERVAL;
use crate::exchange::ExchangeError;
use crate::flight::SingleFlight;
use crate::identity::{IdentityError, IdentityMap};
use crate::jwks::JwksError;
use crate::limits::ExchangeLimiter;
use crate::provider::{Provider, ProviderBuildError, TokenCheckError, unix_now};
use crate::request::AuthRequest;
use crate::stats::{Snapshot, Stats};
use crate::verify::{Verified, VerifyError};

/// An infrastructure failure: the check cannot be decided. The adapter answers gRPC
/// `UNAVAILABLE`, so Envoy's `failure_mode_allow` (false by default: fail closed) decides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("token exchange failed: {0}")]
    Exchange(ExchangeError),
    #[error("signing keys unavailable: {0}")]
    Jwks(JwksError),
    #[error("no signing keys are loaded yet")]
    KeysNotLoaded,
    /// The provider issued a token that fails our rules: a provider or configuration fault
    /// (issuer, audience, algorithms), not the caller's.
    #[error("the provider issued a token that fails verification: {0}")]
    IssuedTokenInvalid(VerifyError),
    #[error("the exchange did not finish in time")]
    Timeout,
    #[error("the exchange task was lost")]
    Lost,
}

impl From<TokenCheckError> for Unavailable {
    fn from(e: TokenCheckError) -> Self {
        match e {
            TokenCheckError::Invalid(v) => Unavailable::IssuedTokenInvalid(v),
            TokenCheckError::KeysNotLoaded => Unavailable::KeysNotLoaded,
            TokenCheckError::Jwks(j) => Unavailable::Jwks(j),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Provider(#[from] ProviderBuildError),
    #[error("identity.headers: {0}")]
    Identity(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// What one exchange flight produced, shared by every check that waited for it.
#[derive(Debug, Clone)]
enum Loaded {
    Identity(Arc<Identity>),
    Refused(Refusal),
    Failed(Unavailable),
}

pub struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    extractor: Extractor,
    provider: Provider,
    cache: TokenCache,
    flights: SingleFlight<Loaded>,
    limiter: ExchangeLimiter,
    keys: KeyDeriver,
    identity: IdentityMap,
    /// Every header name that must not reach the upstream as the caller sent it.
    strip: Vec<String>,
    realm: String,
    provider_id: String,
    scope: String,
    max_token_age: Option<Duration>,
    /// Longest a check waits for an exchange flight (queue, exchange, key refetch).
    flight_wait: Duration,
    stats: Arc<Stats>,
}

impl Authorizer {
    pub fn new(config: &Config) -> Result<Self, BuildError> {
        let p = &config.provider;
        let http = reqwest::Client::builder()
            .connect_timeout(p.connect_timeout)
            .timeout(p.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("m2m-authz/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Http(e.to_string()))?;
        let extractor = Extractor::new(&config.credentials);
        let identity = IdentityMap::new(&config.identity).map_err(BuildError::Identity)?;
        let mut strip: Vec<String> = identity.header_names().map(str::to_owned).collect();
        for h in extractor.credential_headers() {
            if !strip.contains(&h) {
                strip.push(h);
            }
        }
        let stats = Arc::new(Stats::default());
        let c = &config.cache;
        Ok(Authorizer {
            inner: Arc::new(Inner {
                extractor,
                provider: Provider::new(http, p)?,
                cache: TokenCache::new(c.settings(), stats.clone()),
                flights: SingleFlight::default(),
                limiter: ExchangeLimiter::new(
                    c.max_concurrent_exchanges,
                    c.max_exchanges_per_second,
                    c.exchange_queue_timeout,
                ),
                keys: KeyDeriver::default(),
                identity,
                strip,
                realm: config.realm.clone(),
                provider_id: p
                    .resolved_token_url()
                    .map(|u| u.to_string())
                    .unwrap_or_default(),
                scope: p.scope.clone().unwrap_or_default(),
                max_token_age: p.max_token_age,
                flight_wait: c.exchange_queue_timeout
                    + p.request_timeout * 2
                    + Duration::from_secs(1),
                stats,
            }),
        })
    }

    pub fn provider(&self) -> &Provider {
        &self.inner.provider
    }

    pub fn cache(&self) -> &TokenCache {
        &self.inner.cache
    }

    pub fn stats(&self) -> Snapshot {
        self.inner.stats.snapshot()
    }

    /// Sweeps expired cache entries periodically; stops when the returned handle is aborted.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CACHE_SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                inner.cache.sweep();
            }
        })
    }

    pub async fn check(&self, request: &AuthRequest) -> Result<Decision, Unavailable> {
        let credential = match self.inner.extractor.extract(&request.headers) {
            Ok(c) => c,
            Err(e) => return Ok(self.deny(Refusal::Credential(e))),
        };
        let loaded = match credential {
            Credential::Bearer(token) => self.bearer(&token).await,
            Credential::Client {
                client_id, secret, ..
            } => self.client(&client_id, &secret).await,
        };
        match loaded {
            Loaded::Identity(identity) => Ok(Decision::Allow(Allow { identity })),
            Loaded::Refused(r) => Ok(self.deny(r)),
            Loaded::Failed(u) => Err(u),
        }
    }

    async fn client(&self, client_id: &str, secret: &Secret) -> Loaded {
        let inner = &self.inner;
        let key = inner.keys.derive(&[
            b"client",
            inner.provider_id.as_bytes(),
            client_id.as_bytes(),
            secret.expose().as_bytes(),
            inner.scope.as_bytes(),
        ]);
        match inner.cache.lookup(&key, |_| true) {
            Lookup::Fresh(identity) => {
                Stats::add(&inner.stats.hits);
                Loaded::Identity(identity)
            }
            Lookup::RefreshDue(identity) => {
                // Refreshed with this caller's own credential, in the background: a busy client
                // never waits for an exchange, and an idle one is never refreshed.
                Stats::add(&inner.stats.hits);
                Stats::add(&inner.stats.refreshes);
                drop(self.flight(key, client_id, secret));
                Loaded::Identity(identity)
            }
            Lookup::Refused => {
                Stats::add(&inner.stats.negative_hits);
                Loaded::Refused(Refusal::Exchange(ExchangeError::Rejected {
                    code: "cached_refusal".into(),
                }))
            }
            Lookup::Stale(identity) => {
                Stats::add(&inner.stats.misses);
                match self.wait(key, client_id, secret).await {
                    // The provider is failing or we are over our own limits: the token is still
                    // within its (grace) validity, so keep serving it.
                    Loaded::Failed(_) | Loaded::Refused(Refusal::Limited { .. }) => {
                        Stats::add(&inner.stats.stale_served);
                        Loaded::Identity(identity)
                    }
                    fresh => fresh,
                }
            }
            Lookup::Miss => {
                Stats::add(&inner.stats.misses);
                self.wait(key, client_id, secret).await
            }
        }
    }

    fn flight(
        &self,
        key: CacheKey,
        client_id: &str,
        secret: &Secret,
    ) -> crate::flight::Flight<Loaded> {
        let (flight, started) = self.inner.flights.join_or_start(
            key,
            || {
                Inner::exchange(
                    self.inner.clone(),
                    key,
                    client_id.to_owned(),
                    secret.clone(),
                )
            },
            Loaded::Failed(Unavailable::Lost),
        );
        if !started {
            Stats::add(&self.inner.stats.coalesced);
        }
        flight
    }

    async fn wait(&self, key: CacheKey, client_id: &str, secret: &Secret) -> Loaded {
        let flight = self.flight(key, client_id, secret);
        tokio::time::timeout(self.inner.flight_wait, flight)
            .await
            .unwrap_or(Loaded::Failed(Unavailable::Timeout))
    }

    /// Bearer tokens: verified once, then served from the cache until they expire or their
    /// signing key leaves the JWKS.
    async fn bearer(&self, token: &BearerToken) -> Loaded {
        let inner = &self.inner;
        let key = inner.keys.derive(&[b"bearer", token.expose().as_bytes()]);
        let keys = inner.provider.jwks().snapshot();
        let alive = |kid: &str| {
            keys.as_ref()
                .is_some_and(|k| k.find((!kid.is_empty()).then_some(kid)).is_some())
        };
        if let Lookup::Fresh(identity) = inner.cache.lookup(&key, alive) {
            Stats::add(&inner.stats.hits);
            return Loaded::Identity(identity);
        }
        Stats::add(&inner.stats.misses);
        let verified = match inner.provider.verify(token.expose()).await {
            Ok(v) => v,
            Err(TokenCheckError::Invalid(e)) => return Loaded::Refused(Refusal::Token(e)),
            Err(e) => return Loaded::Failed(e.into()),
        };
        let identity = match inner.identity(&verified.claims) {
            Ok(i) => Arc::new(i),
            Err(e) => return Loaded::Refused(Refusal::Identity(e)),
        };
        let mut until = verified.exp;
        if let (Some(age), Some(iat)) = (inner.max_token_age, verified.iat) {
            until = until.min(iat + age.as_secs());
        }
        let lifetime = Duration::from_secs(until.saturating_sub(unix_now()));
        inner
            .cache
            .insert_bearer(key, identity.clone(), lifetime, verified.kid.as_deref());
        Loaded::Identity(identity)
    }

    fn deny(&self, refusal: Refusal) -> Decision {
        Decision::Deny(refusal.to_deny(&self.inner.realm))
    }
}

impl Inner {
    /// One exchange + verification for a credential, run on its own task by the single flight;
    /// it fills (or clears) the cache before the flight ends, so no later check repeats it.
    async fn exchange(self: Arc<Self>, key: CacheKey, client_id: String, secret: Secret) -> Loaded {
        let permit = match self.limiter.acquire().await {
            Ok(p) => p,
            Err(retry_after) => {
                Stats::add(&self.stats.exchanges_limited);
                self.cache.refresh_failed(&key);
                return Loaded::Refused(Refusal::Limited { retry_after });
            }
        };
        let issued = match self.provider.exchange(&client_id, &secret).await {
            Ok(issued) => issued,
            Err(e) if e.is_callers_fault() => {
                Stats::add(&self.stats.exchanges_rejected);
                if matches!(e, ExchangeError::Rejected { .. }) {
                    self.cache.refuse(key);
                } else {
                    self.cache.remove(&key);
                }
                return Loaded::Refused(Refusal::Exchange(e));
            }
            Err(e) => {
                Stats::add(&self.stats.exchanges_failed);
                self.cache.refresh_failed(&key);
                return Loaded::Failed(Unavailable::Exchange(e));
            }
        };
        drop(permit);
        Stats::add(&self.stats.exchanges_ok);
        let verified: Verified = match self.provider.verify(&issued.access_token).await {
            Ok(v) => v,
            Err(e) => {
                self.cache.refresh_failed(&key);
                return Loaded::Failed(e.into());
            }
        };
        let identity = match self.identity(&verified.claims) {
            Ok(i) => Arc::new(i),
            Err(e) => {
                self.cache.remove(&key);
                return Loaded::Refused(Refusal::Identity(e));
            }
        };
        // The token's own `exp`, shortened by `expires_in` when the provider sent a smaller one.
        let mut lifetime = Duration::from_secs(verified.exp.saturating_sub(unix_now()));
        if let Some(expires_in) = issued.expires_in {
            lifetime = lifetime.min(expires_in);
        }
        self.cache.insert(key, identity.clone(), lifetime);
        Loaded::Identity(identity)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, IdentityError> {
        let headers = self.identity.headers(claims)?;
        let remove = self
            .strip
            .iter()
            .filter(|h| !headers.iter().any(|(set, _)| set == *h))
            .cloned()
            .collect();
        let client_id = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("")
            .to_owned();
        Ok(Identity {
            headers,
            remove,
            client_id,
        })
    }
}
