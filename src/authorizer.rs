//! The core of a check, independent of any transport: credential → cached identity, or one
//! (coalesced, limited) exchange and a verification → identity headers → a `Decision`. Only
//! infrastructure failures are errors.
//!
//! What crosses the network (token endpoints, key sources, the shared store) and the clock come
//! in as [`Parts`]: the real ones by default, in-memory ones when a test wants no sockets.
//!
//! One file (about 830 lines, nearly all code): `check` and the exchange flight it starts share
//! `Inner`'s private state (cache, flights, limits, shared tier) and its invariants — one
//! exchange per credential at a time, a refusal cached only as a refusal — which are easier to
//! keep when read together. `Parts` and `Slot` are the pieces that would move out first.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Map, Value};
use tracing::Instrument;

use crate::cache::{CacheKey, KeyDeriver, Lookup, TokenCache};
use crate::config::{Config, ConfigError, DEFAULT_PROVIDER, ProviderConfig, ResolvedProvider};

/// The `context_extensions` key with which an Envoy or Istio route may pick a provider.
pub const PROVIDER_CONTEXT_KEY: &str = "provider";
use crate::clock::SharedClock;
use crate::credentials::{BearerToken, Credential, Extractor, Secret};
use crate::decision::{Allow, DEFAULT_RULE, Decision, Refusal};
use crate::defaults::CACHE_SWEEP_INTERVAL;
use crate::exchange::{ExchangeError, TokenEndpoint};
use crate::flight::SingleFlight;
use crate::identity::{Identity, IdentityBuilder, IdentityError};
use crate::introspect::{INTROSPECTED, IntrospectError};
use crate::jwks::{JwksError, KeySource};
use crate::limits::{Class, ExchangeLimiter};
use crate::policy::reload::LivePolicy;
use crate::policy::{Action, Matched, UpstreamCredential};
use crate::provider::{Provider, ProviderParts, TokenCheckError};
use crate::request::AuthRequest;
use crate::settings::Settings;
#[cfg(feature = "shared-cache")]
use crate::shared_cache::{CredentialRef, SharedEntry, SharedStore, SharedTier};
use crate::stats::{Snapshot, Stats};
use crate::supervisor::{Stage, Supervisor};
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
    /// RFC 7662: the introspection endpoint gave no usable answer (never an allow).
    #[error("token introspection failed: {0}")]
    Introspection(IntrospectError),
    /// The provider issued a token that fails our rules: a provider or configuration fault
    /// (issuer, audience, algorithms), not the caller's.
    #[error("the provider issued a token that fails verification: {0}")]
    IssuedTokenInvalid(VerifyError),
    #[error("the exchange did not finish in time")]
    Timeout,
    #[error("the exchange task was lost")]
    Lost,
    /// A bug: the check panicked. It was contained and counted (`check_panics`).
    #[error("the check failed unexpectedly")]
    Panicked,
}

impl Unavailable {
    /// A short, stable name of the failure for logs and metrics (like `Deny::reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Unavailable::Exchange(_) => "exchange_failed",
            Unavailable::Jwks(_) => "jwks_unavailable",
            Unavailable::KeysNotLoaded => "keys_not_loaded",
            Unavailable::Introspection(_) => "introspection_failed",
            Unavailable::IssuedTokenInvalid(_) => "issued_token_invalid",
            Unavailable::Timeout => "exchange_timeout",
            Unavailable::Lost => "exchange_lost",
            Unavailable::Panicked => "check_panicked",
        }
    }
}

impl From<TokenCheckError> for Unavailable {
    fn from(e: TokenCheckError) -> Self {
        match e {
            TokenCheckError::Invalid(v) => Unavailable::IssuedTokenInvalid(v),
            TokenCheckError::KeysNotLoaded => Unavailable::KeysNotLoaded,
            TokenCheckError::Jwks(j) => Unavailable::Jwks(j),
            TokenCheckError::Introspection(i) => Unavailable::Introspection(i),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A part of the config its module's compiler refuses (`Settings::compile`), naming the
    /// field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    /// `cache.shared`, naming the field: a URL or fleet key missing from file and environment.
    #[error("{0}")]
    SharedCache(String),
    /// A part given for something the config does not have (a misspelt provider name would
    /// otherwise silently leave the real part in place).
    #[error("a {0} was given for `{1}`, which the config does not define")]
    UnknownPart(&'static str, String),
}

/// What the authorizer reaches across the network, and the clock it reads. `Parts::default()`
/// is the real sidecar: each provider's token endpoint and JWKS over HTTP, Redis for
/// `cache.shared`, the system clock. A test swaps in in-memory parts, per provider by name.
#[derive(Clone)]
pub struct Parts {
    clock: SharedClock,
    token_endpoints: HashMap<String, Arc<dyn TokenEndpoint>>,
    key_sources: HashMap<String, Arc<dyn KeySource>>,
    #[cfg(feature = "shared-cache")]
    shared_store: Option<Arc<dyn SharedStore>>,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            clock: crate::clock::system(),
            token_endpoints: HashMap::new(),
            key_sources: HashMap::new(),
            #[cfg(feature = "shared-cache")]
            shared_store: None,
        }
    }
}

impl Parts {
    /// The clock every expiry, age, rate and token time rule is read from.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The token endpoint of `provider` (`default`, or a name under `providers`).
    pub fn token_endpoint(mut self, provider: &str, endpoint: Arc<dyn TokenEndpoint>) -> Self {
        self.token_endpoints.insert(provider.to_owned(), endpoint);
        self
    }

    /// Where `provider`'s signing keys come from.
    pub fn key_source(mut self, provider: &str, source: Arc<dyn KeySource>) -> Self {
        self.key_sources.insert(provider.to_owned(), source);
        self
    }

    /// The store behind `cache.shared` (which must be configured; its URL is then not needed).
    #[cfg(feature = "shared-cache")]
    pub fn shared_store(mut self, store: Arc<dyn SharedStore>) -> Self {
        self.shared_store = Some(store);
        self
    }

    /// The provider's real parts, with any given for it in place of theirs.
    fn for_provider(
        &self,
        name: &str,
        http: reqwest::Client,
        config: &ResolvedProvider,
    ) -> ProviderParts {
        let mut parts = ProviderParts::http(http, config, self.clock.clone());
        if let Some(t) = self.token_endpoints.get(name) {
            parts.token = t.clone();
        }
        if let Some(k) = self.key_sources.get(name) {
            parts.keys = k.clone();
        }
        parts
    }
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

/// One identity provider as checks use it: `default` (from `provider`) or one of `providers`.
struct Slot {
    /// Shared, so each allowed decision can name its provider without a copy.
    name: Arc<str>,
    provider: Provider,
    /// Each provider has its own exchange limits: a flood aimed at one cannot starve another.
    limiter: ExchangeLimiter,
    /// Part of every cache key, so cache entries never cross providers.
    id: String,
    scope: String,
    max_token_age: Option<Duration>,
    /// `provider.max_token_lifetime`: the longest an identity from this provider is cached.
    max_token_lifetime: Duration,
    jwks_refresh: Duration,
    /// Longest a check waits for an exchange flight (queue, exchange, key refetch).
    flight_wait: Duration,
    clock: SharedClock,
    /// This provider's own exchange counts and latency (the authorizer's `stats` holds the
    /// totals), for the `provider`-labelled metrics.
    stats: Stats,
}

impl Slot {
    fn new(
        name: &str,
        p: &ProviderConfig,
        resolved: &ResolvedProvider,
        c: &crate::config::CacheConfig,
        parts: &Parts,
    ) -> Result<Slot, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(p.connect_timeout)
            .timeout(p.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("m2m-authz/", env!("CARGO_PKG_VERSION")))
            // `provider.ca_file`: trusted besides the system roots, for this provider only.
            .tls_certs_merge(resolved.extra_roots.iter().cloned());
        // `provider.client_cert`/`client_key`: presented to this provider only (mutual TLS).
        let http = match &resolved.client_identity {
            Some(identity) => http.identity(identity.clone()),
            None => http,
        };
        let http = http.build().map_err(|e| BuildError::Http(e.to_string()))?;
        Ok(Slot {
            name: name.into(),
            provider: Provider::with_parts(resolved, parts.for_provider(name, http, resolved)),
            limiter: ExchangeLimiter::with_clock(
                c.max_concurrent_exchanges,
                c.max_exchanges_per_second,
                c.exchange_queue_timeout,
                parts.clock.clone(),
            ),
            // A discovered provider is named by where its metadata is: stable across restarts
            // and sidecars, as a shared cache entry's key must be.
            id: format!(
                "{name} {}",
                resolved
                    .token_url
                    .as_ref()
                    .or(resolved.discovery.as_ref().and_then(|d| d.urls.first()))
                    .map(|u| u.as_str())
                    .unwrap_or_default()
            ),
            scope: p.scope.clone().unwrap_or_default(),
            max_token_age: p.max_token_age,
            max_token_lifetime: p.max_token_lifetime,
            jwks_refresh: p.jwks_refresh_interval,
            flight_wait: c
                .exchange_queue_timeout
                .saturating_add(p.request_timeout.saturating_mul(2))
                .saturating_add(Duration::from_secs(1)),
            clock: parts.clock.clone(),
            stats: Stats::default(),
        })
    }

    /// How long an identity whose token is valid until `until` (Unix seconds, from claims or
    /// the provider) may be cached: never negative, never past `max_token_lifetime`.
    fn lifetime(&self, until: u64) -> Duration {
        Duration::from_secs(until.saturating_sub(self.clock.unix_now()))
            .min(self.max_token_lifetime)
    }
}

/// Runs `check`, turning a panic inside it into `Unavailable::Panicked` (counted in
/// `check_panics`). Unwind safety is asserted: what a check shares (the cache, the flights, the
/// limiter) uses locks that do not poison or are recovered from, and its entries stay valid.
async fn contain<F>(stats: &Stats, check: F) -> Result<Decision, Unavailable>
where
    F: Future<Output = Result<Decision, Unavailable>>,
{
    match AssertUnwindSafe(check).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            Stats::add(&stats.check_panics);
            // The panic hook has printed where; the payload is not logged (it is not ours to
            // vouch for).
            tracing::error!("a check panicked; answered UNAVAILABLE");
            Err(Unavailable::Panicked)
        }
    }
}

struct Inner {
    extractor: Extractor,
    /// `default` first.
    providers: Vec<Arc<Slot>>,
    cache: TokenCache,
    /// `cache.shared`: the fleet's tier on Redis, consulted inside a flight before exchanging.
    #[cfg(feature = "shared-cache")]
    shared: Option<Arc<SharedTier>>,
    flights: SingleFlight<Loaded>,
    keys: KeyDeriver,
    identity: IdentityBuilder,
    realm: String,
    stats: Arc<Stats>,
    policy: Arc<LivePolicy>,
    /// What anonymous routes send upstream: no identity, every identity and credential header
    /// stripped.
    anonymous: Arc<Identity>,
    /// [`DEFAULT_RULE`], allocated once: what a decision names when no rule matched.
    default_rule: Arc<str>,
}

impl Authorizer {
    /// The real authorizer: providers over HTTP, Redis for `cache.shared`, the system clock.
    pub fn new(config: &Config) -> Result<Self, BuildError> {
        Authorizer::with_parts(config, Parts::default())
    }

    /// An authorizer for `config` whose network parts and clock are `parts`.
    pub fn with_parts(config: &Config, parts: Parts) -> Result<Self, BuildError> {
        Authorizer::from_settings(config, Settings::compile(config)?, parts)
    }

    /// An authorizer from `config` already compiled into `settings` (by `settings::load`, so
    /// `serve` reads the files a config names once).
    pub fn from_settings(
        config: &Config,
        settings: Settings,
        parts: Parts,
    ) -> Result<Self, BuildError> {
        for (kind, given) in [
            (
                "token endpoint",
                parts.token_endpoints.keys().collect::<Vec<_>>(),
            ),
            ("key source", parts.key_sources.keys().collect()),
        ] {
            let known = |n: &String| settings.providers.iter().any(|p| p.name == *n);
            if let Some(unknown) = given.into_iter().find(|n| !known(n)) {
                return Err(BuildError::UnknownPart(kind, unknown.clone()));
            }
        }
        let providers = settings
            .providers
            .iter()
            .map(|p| {
                Slot::new(&p.name, &p.config, &p.resolved, &config.cache, &parts).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let extractor = Extractor::new(&config.credentials);
        let identity = IdentityBuilder::new(settings.identity, extractor.credential_headers());
        let stats = Arc::new(Stats::default());
        let flight_panics = stats.clone();
        let flights = SingleFlight::new(Arc::new(move || Stats::add(&flight_panics.flight_panics)));
        #[cfg(feature = "shared-cache")]
        let c = &config.cache;
        #[cfg(feature = "shared-cache")]
        if parts.shared_store.is_some() && c.shared.is_none() {
            return Err(BuildError::UnknownPart(
                "shared store",
                "cache.shared".into(),
            ));
        }
        #[cfg(feature = "shared-cache")]
        let shared = match &c.shared {
            Some(s) => Some(Arc::new(
                SharedTier::with_parts(
                    s,
                    c.refresh_ahead,
                    c.max_credential_age,
                    stats.clone(),
                    parts.shared_store.clone(),
                    parts.clock.clone(),
                )
                .map_err(BuildError::SharedCache)?,
            )),
            None => None,
        };
        let policy = Arc::new(settings.policy);
        let anonymous = Arc::new(identity.anonymous());
        Ok(Authorizer {
            inner: Arc::new(Inner {
                extractor,
                providers,
                cache: TokenCache::with_clock(settings.cache, stats.clone(), parts.clock.clone()),
                #[cfg(feature = "shared-cache")]
                shared,
                flights,
                keys: KeyDeriver::default(),
                identity,
                realm: config.realm.clone(),
                stats,
                policy,
                anonymous,
                default_rule: DEFAULT_RULE.into(),
            }),
        })
    }

    /// The `default` provider.
    pub fn provider(&self) -> &Provider {
        &self.inner.providers[0].provider
    }

    /// Every provider by name, `default` first.
    /// Every provider's own exchange counts and latency, by its config name (the metrics'
    /// `provider` label).
    pub fn provider_stats(&self) -> impl Iterator<Item = (&str, &Stats)> {
        self.inner.providers.iter().map(|s| (&*s.name, &s.stats))
    }

    pub fn providers(&self) -> impl Iterator<Item = (&str, &Provider)> {
        self.inner.providers.iter().map(|s| (&*s.name, &s.provider))
    }

    /// Keeps every provider's JWKS fresh, under `supervisor`; the receiver turns true once all
    /// of them have loaded.
    pub fn start_key_refresh(&self, supervisor: &Supervisor) -> tokio::sync::watch::Receiver<bool> {
        for s in &self.inner.providers {
            let discovered = s.provider.discovery().map(|d| {
                d.clone().spawn_refresher(supervisor);
                d.loaded()
            });
            s.provider
                .jwks()
                .clone()
                .spawn_refresher(s.jwks_refresh, discovered, supervisor);
        }
        let (all_tx, all_rx) = tokio::sync::watch::channel(false);
        let mut each: Vec<_> = self
            .inner
            .providers
            .iter()
            .map(|s| s.provider.jwks().loaded())
            .collect();
        supervisor.spawn(Stage::Background, "keys loaded", async move {
            for loaded in &mut each {
                if loaded.wait_for(|l| *l).await.is_err() {
                    return;
                }
            }
            all_tx.send_replace(true);
            // Keep the sender alive so receivers never see it closed.
            std::future::pending::<()>().await;
        });
        all_rx
    }

    pub fn cache(&self) -> &TokenCache {
        &self.inner.cache
    }

    /// How many credentials have an exchange running or queued now (background refreshes
    /// included): a test waits for it to reach zero instead of sleeping.
    pub fn exchanges_in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// The shared tier on Redis, when `cache.shared` is configured (for `/readyz` detail).
    #[cfg(feature = "shared-cache")]
    pub fn shared_cache(&self) -> Option<&Arc<SharedTier>> {
        self.inner.shared.as_ref()
    }

    /// The live route policy (for the reload watcher and metrics).
    pub fn policy(&self) -> &Arc<LivePolicy> {
        &self.inner.policy
    }

    pub fn stats(&self) -> Snapshot {
        self.inner.stats.snapshot()
    }

    /// The live counters, for code that records into them (policy reloads).
    pub fn counters(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// The client id the caller claims (Basic or the header pair), for logs: unverified and not
    /// secret. `None` for a bearer token or when no client credential can be read.
    pub fn claimed_client_id(&self, request: &AuthRequest) -> Option<String> {
        match self.inner.extractor.extract(&request.headers) {
            Ok(Credential::Client { client_id, .. }) => Some(client_id),
            _ => None,
        }
    }

    /// Sweeps expired cache entries periodically, until `supervisor` stops.
    pub fn spawn_maintenance(&self, supervisor: &Supervisor) {
        let inner = self.inner.clone();
        supervisor.spawn(Stage::Background, "cache sweep", async move {
            let mut tick = tokio::time::interval(CACHE_SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                inner.cache.sweep();
            }
        });
    }

    /// Decides one check. A panic anywhere in it (a bug) is contained: the check is answered
    /// `Unavailable::Panicked` (gRPC UNAVAILABLE, so `failure_mode_allow` decides, as for any
    /// failure) instead of resetting Envoy's stream, and counted in `check_panics`.
    pub async fn check(&self, request: &AuthRequest) -> Result<Decision, Unavailable> {
        contain(&self.inner.stats, self.decide(request)).await
    }

    async fn decide(&self, request: &AuthRequest) -> Result<Decision, Unavailable> {
        // One whole policy snapshot per check, even if a reload lands meanwhile.
        let policy = self.inner.policy.snapshot();
        let (matched, action) = match policy.select(request) {
            // Refused before any rule is consulted: the decision names no rule.
            Err(e) => return Ok(self.deny(Refusal::Target(e))),
            Ok(selected) => selected,
        };
        let rule = match matched {
            Matched::Rule { index, .. } => &policy.rules()[index].name,
            Matched::Default => &self.inner.default_rule,
        };
        self.apply(request, action)
            .await
            .map(|decision| decision.with_rule(rule))
    }

    /// Decides one check under the action its rule (or the default) chose.
    async fn apply(&self, request: &AuthRequest, action: &Action) -> Result<Decision, Unavailable> {
        let requirement = match action {
            Action::Deny => return Ok(self.deny(Refusal::RouteDenied)),
            Action::AllowAnonymous => {
                return Ok(Decision::Allow(Allow {
                    identity: self.inner.anonymous.clone(),
                    forward: None,
                    provider: None,
                    rule: None,
                }));
            }
            Action::Require(r) => r,
        };
        let credential = match self.inner.extractor.extract(&request.headers) {
            Ok(c) => c,
            Err(e) => return Ok(self.deny(Refusal::Credential(e))),
        };
        // The rule's provider, else the route's `context_extensions`, else `default`.
        let wanted = requirement
            .provider
            .as_deref()
            .or_else(|| {
                request
                    .context
                    .get(PROVIDER_CONTEXT_KEY)
                    .map(String::as_str)
            })
            .unwrap_or(DEFAULT_PROVIDER);
        let Some(slot) = self.inner.providers.iter().find(|s| &*s.name == wanted) else {
            return Ok(self.deny(Refusal::UnknownProvider));
        };
        let forward = requirement.upstream == UpstreamCredential::Bearer;
        let loaded = match &credential {
            Credential::Bearer(token) => self.bearer(slot, token).await,
            Credential::Client {
                client_id, secret, ..
            } => {
                let mut loaded = self.client(slot, client_id, secret, forward).await;
                // Cached while no rule forwarded tokens (a policy reload added one since): one
                // more exchange, whose token is kept. The entry stays until that exchange
                // replaces it, so other routes keep it (and its stale-if-error fallback) if the
                // provider fails meanwhile.
                if forward && matches!(&loaded, Loaded::Identity(i) if i.access_token.is_none()) {
                    let key = self.client_key(slot, client_id, secret);
                    loaded =
                        Box::pin(self.wait(slot, key, client_id, secret, true, Class::Known)).await;
                }
                loaded
            }
        };
        match loaded {
            Loaded::Identity(identity) if requirement.met_by(&identity.scopes) => {
                let forward = match (forward, &credential) {
                    (false, _) => None,
                    // The caller's own token, verified just now or earlier.
                    (true, Credential::Bearer(token)) => Some(token.clone()),
                    (true, Credential::Client { .. }) => match &identity.access_token {
                        Some(token) => Some(token.clone()),
                        None => return Ok(self.deny(Refusal::TokenNotKept)),
                    },
                };
                Ok(Decision::Allow(Allow {
                    identity,
                    forward,
                    provider: Some(slot.name.clone()),
                    rule: None,
                }))
            }
            Loaded::Identity(_) => Ok(self.deny(Refusal::InsufficientScope {
                required: requirement.describe(),
            })),
            Loaded::Refused(r) => Ok(self.deny(r)),
            Loaded::Failed(u) => Err(u),
        }
    }

    fn client_key(&self, slot: &Slot, client_id: &str, secret: &Secret) -> CacheKey {
        self.inner.keys.derive(&[
            b"client",
            slot.id.as_bytes(),
            client_id.as_bytes(),
            secret.expose().as_bytes(),
            slot.scope.as_bytes(),
        ])
    }

    /// `forward`: the route sends the access token upstream, so an exchange started here keeps
    /// it whatever the live policy says by then.
    async fn client(
        &self,
        slot: &Arc<Slot>,
        client_id: &str,
        secret: &Secret,
        forward: bool,
    ) -> Loaded {
        let inner = &self.inner;
        let key = self.client_key(slot, client_id, secret);
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
                drop(self.flight(slot, key, client_id, secret, forward, Class::Known));
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
                match Box::pin(self.wait(slot, key, client_id, secret, forward, Class::Known)).await
                {
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
                Box::pin(self.wait(slot, key, client_id, secret, forward, Class::New)).await
            }
        }
    }

    fn flight(
        &self,
        slot: &Arc<Slot>,
        key: CacheKey,
        client_id: &str,
        secret: &Secret,
        forward: bool,
        class: Class,
    ) -> crate::flight::Flight<Loaded> {
        let (flight, started) = self.inner.flights.join_or_start(
            key,
            || {
                // The exchange task is traced as part of the check that started it.
                Inner::exchange(
                    self.inner.clone(),
                    slot.clone(),
                    key,
                    client_id.to_owned(),
                    secret.clone(),
                    forward,
                    class,
                )
                .instrument(tracing::Span::current())
            },
            Loaded::Failed(Unavailable::Lost),
        );
        if !started {
            Stats::add(&self.inner.stats.coalesced);
        }
        flight
    }

    /// Boxed by its callers: the exchange's wait is far larger than a cache hit, and every move
    /// of a future copies its whole size, so the hit path's future stays small (issue 19).
    async fn wait(
        &self,
        slot: &Arc<Slot>,
        key: CacheKey,
        client_id: &str,
        secret: &Secret,
        forward: bool,
        class: Class,
    ) -> Loaded {
        let flight = self.flight(slot, key, client_id, secret, forward, class);
        tokio::time::timeout(slot.flight_wait, flight)
            .await
            .unwrap_or(Loaded::Failed(Unavailable::Timeout))
    }

    /// Bearer tokens: verified once, then served from the cache until they expire or their
    /// signing key leaves the JWKS. An opaque token is introspected (RFC 7662) in a single
    /// flight under the provider's exchange limits, like an exchange: it costs the provider a
    /// request. Its refusal is kept by the negative cache; its identity until its `exp`.
    async fn bearer(&self, slot: &Arc<Slot>, token: &BearerToken) -> Loaded {
        let inner = &self.inner;
        let key = inner
            .keys
            .derive(&[b"bearer", slot.id.as_bytes(), token.expose().as_bytes()]);
        let keys = slot.provider.jwks().snapshot();
        // The very key that verified the token, not merely one under its `kid`; an introspected
        // token has no key, and holds until its `exp`.
        let alive = |fingerprint: &str| {
            fingerprint == INTROSPECTED || keys.as_ref().is_some_and(|k| k.holds(fingerprint))
        };
        match inner.cache.lookup(&key, alive) {
            Lookup::Fresh(identity) | Lookup::RefreshDue(identity) => {
                Stats::add(&inner.stats.hits);
                return Loaded::Identity(identity);
            }
            Lookup::Refused => {
                Stats::add(&inner.stats.negative_hits);
                return Loaded::Refused(Refusal::Token(VerifyError::Inactive));
            }
            Lookup::Stale(_) | Lookup::Miss => {}
        }
        Stats::add(&inner.stats.misses);
        Box::pin(self.bearer_miss(slot, key, token)).await
    }

    /// A Bearer token not in the cache: verified here, or introspected in a single flight.
    async fn bearer_miss(&self, slot: &Arc<Slot>, key: CacheKey, token: &BearerToken) -> Loaded {
        let inner = &self.inner;
        if !slot.provider.introspects(token.expose()) {
            return inner.verify_bearer(slot, key, token).await;
        }
        let (flight, started) = inner.flights.join_or_start(
            key,
            || {
                let (inner, slot, token) = (inner.clone(), slot.clone(), token.clone());
                async move {
                    let _permit = match slot.limiter.acquire(Class::New).await {
                        Ok(p) => p,
                        Err(retry_after) => {
                            Stats::add(&inner.stats.exchanges_limited);
                            return Loaded::Refused(Refusal::Limited { retry_after });
                        }
                    };
                    inner.verify_bearer(&slot, key, &token).await
                }
                .instrument(tracing::Span::current())
            },
            Loaded::Failed(Unavailable::Lost),
        );
        if !started {
            Stats::add(&inner.stats.coalesced);
        }
        tokio::time::timeout(slot.flight_wait, flight)
            .await
            .unwrap_or(Loaded::Failed(Unavailable::Timeout))
    }

    fn deny(&self, refusal: Refusal) -> Decision {
        Decision::Deny(refusal.to_deny(&self.inner.realm))
    }
}

impl Inner {
    /// Verifies (or introspects) a caller's Bearer token and caches the outcome under `key`.
    async fn verify_bearer(&self, slot: &Slot, key: CacheKey, token: &BearerToken) -> Loaded {
        let verified = match slot.provider.verify(token.expose()).await {
            Ok(v) => v,
            Err(TokenCheckError::Invalid(e)) => {
                // An introspected token's refusal cost the provider a request: remembered, so
                // a replayed revoked or garbage token does not cost another.
                if slot.provider.introspects(token.expose()) {
                    self.cache.refuse(key);
                }
                return Loaded::Refused(Refusal::Token(e));
            }
            Err(e) => return Loaded::Failed(e.into()),
        };
        // Never kept: a route that forwards a token forwards the caller's own.
        let identity = match self.identity(&verified.claims, None, false) {
            Ok(i) => Arc::new(i),
            Err(e) => return Loaded::Refused(Refusal::Identity(e)),
        };
        let mut until = verified.exp;
        if let (Some(age), Some(iat)) = (slot.max_token_age, verified.iat) {
            until = until.min(iat.saturating_add(age.as_secs()));
        }
        let lifetime = slot.lifetime(until);
        self.cache
            .insert_bearer(key, identity.clone(), lifetime, &verified.key_fingerprint);
        Loaded::Identity(identity)
    }

    /// One exchange + verification for a credential, run on its own task by the single flight;
    /// it fills (or clears) the cache before the flight ends, so no later check repeats it.
    async fn exchange(
        self: Arc<Self>,
        slot: Arc<Slot>,
        key: CacheKey,
        client_id: String,
        secret: Secret,
        forward: bool,
        class: Class,
    ) -> Loaded {
        // The shared tier first (before taking an exchange slot): a token another pod shared
        // ends the flight once verified; else this pod exchanges, holding the fleet lock if it
        // got it.
        #[cfg(feature = "shared-cache")]
        let ticket = match &self.shared {
            Some(tier) => {
                let shared_key = tier.key(CredentialRef {
                    provider: &slot.id,
                    client_id: &client_id,
                    secret: secret.expose(),
                    scope: &slot.scope,
                });
                match tier
                    .before_exchange(shared_key, |entry| self.adopt(&slot, key, entry, forward))
                    .await
                {
                    Ok(loaded) => return loaded,
                    Err(ticket) => Some(ticket),
                }
            }
            None => None,
        };
        let permit = match slot.limiter.acquire(class).await {
            Ok(p) => p,
            Err(retry_after) => {
                Stats::add(&self.stats.exchanges_limited);
                Stats::add(&slot.stats.exchanges_limited);
                if class == Class::Known {
                    Stats::add(&self.stats.exchanges_limited_known);
                }
                self.cache.refresh_failed(&key);
                return Loaded::Refused(Refusal::Limited { retry_after });
            }
        };
        let started = slot.clock.now();
        let exchanged = slot.provider.exchange(&client_id, &secret).await;
        let took = slot.clock.now().saturating_duration_since(started);
        self.stats.exchange_latency.record(took);
        slot.stats.exchange_latency.record(took);
        let issued = match exchanged {
            Ok(issued) => issued,
            // The provider's own rate limit: answered 429 like ours, never cached as a refusal.
            Err(ExchangeError::RateLimited { retry_after }) => {
                Stats::add(&self.stats.exchanges_failed);
                Stats::add(&slot.stats.exchanges_failed);
                self.cache.refresh_failed(&key);
                return Loaded::Refused(Refusal::Limited { retry_after });
            }
            Err(e) if e.is_callers_fault() => {
                Stats::add(&self.stats.exchanges_rejected);
                Stats::add(&slot.stats.exchanges_rejected);
                if matches!(e, ExchangeError::Rejected { .. }) {
                    self.cache.refuse(key);
                } else {
                    self.cache.remove(&key);
                }
                return Loaded::Refused(Refusal::Exchange(e));
            }
            Err(e) => {
                Stats::add(&self.stats.exchanges_failed);
                Stats::add(&slot.stats.exchanges_failed);
                self.cache.refresh_failed(&key);
                return Loaded::Failed(Unavailable::Exchange(e));
            }
        };
        drop(permit);
        Stats::add(&self.stats.exchanges_ok);
        Stats::add(&slot.stats.exchanges_ok);
        let verified: Verified = match slot.provider.verify(&issued.access_token).await {
            Ok(v) => v,
            Err(e) => {
                self.cache.refresh_failed(&key);
                return Loaded::Failed(e.into());
            }
        };
        let identity = match self.identity(&verified.claims, Some(&issued.access_token), forward) {
            Ok(i) => Arc::new(i),
            Err(e) => {
                self.cache.remove(&key);
                return Loaded::Refused(Refusal::Identity(e));
            }
        };
        // The token's own `exp`, shortened by `expires_in` when the provider sent a smaller one
        // (and by `max_token_lifetime`).
        let mut lifetime = slot.lifetime(verified.exp);
        if let Some(expires_in) = issued.expires_in {
            lifetime = lifetime.min(expires_in);
        }
        self.cache.insert(key, identity.clone(), lifetime);
        // Only verified tokens are shared; refusals and failures never are.
        #[cfg(feature = "shared-cache")]
        if let Some(ticket) = ticket {
            ticket.store(&issued.access_token, lifetime).await;
        }
        Loaded::Identity(identity)
    }

    /// A token from the shared tier: verified with the provider's keys like a fresh exchange
    /// (Redis is never trusted), then cached locally. `None`: not usable, exchange instead.
    #[cfg(feature = "shared-cache")]
    async fn adopt(
        &self,
        slot: &Slot,
        key: CacheKey,
        entry: SharedEntry,
        forward: bool,
    ) -> Option<Loaded> {
        let verified = slot.provider.verify(&entry.access_token).await.ok()?;
        let identity = Arc::new(
            self.identity(&verified.claims, Some(&entry.access_token), forward)
                .ok()?,
        );
        let lifetime = slot.lifetime(verified.exp.min(entry.expires_at));
        self.cache.insert(key, identity.clone(), lifetime);
        Some(Loaded::Identity(identity))
    }

    /// The identity to cache for verified claims. `token`: the exchanged access token, kept only
    /// if the check that started the exchange forwards it (`forward`) or the live policy has a
    /// rule that does.
    fn identity(
        &self,
        claims: &Map<String, Value>,
        token: Option<&str>,
        forward: bool,
    ) -> Result<Identity, IdentityError> {
        let policy = self.policy.load();
        let keep = token.filter(|_| forward || policy.forwards_tokens());
        let scopes = crate::policy::scopes::from_claims(claims, policy.scope_claim);
        self.identity.build(claims, scopes, keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside a check becomes a counted `Unavailable::Panicked`; answers pass through.
    #[tokio::test]
    async fn a_panicking_check_is_contained_and_counted() {
        let stats = Stats::default();
        let answer = contain(&stats, async {
            tokio::task::yield_now().await;
            if stats.hits.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                panic!("a bug");
            }
            Ok(Decision::Deny(Refusal::RouteDenied.to_deny("r")))
        })
        .await;
        assert_eq!(answer.err(), Some(Unavailable::Panicked));
        assert_eq!(stats.snapshot().check_panics, 1);
        assert_eq!(Unavailable::Panicked.reason(), "check_panicked");
        let passed = contain(&stats, async { Err(Unavailable::Timeout) }).await;
        assert_eq!(passed.err(), Some(Unavailable::Timeout));
        assert_eq!(stats.snapshot().check_panics, 1);
    }
}
