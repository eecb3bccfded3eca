//! The core of a check, independent of any transport: credential → cached identity, or exchange
//! and verification → identity headers → a `Decision`. Only infrastructure failures are errors.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::{CacheKey, Identity, KeyDeriver, TokenCache};
use crate::config::Config;
use crate::credentials::{Credential, Extractor, Secret};
use crate::decision::{Allow, Decision, Refusal};
use crate::exchange::ExchangeError;
use crate::identity::IdentityMap;
use crate::jwks::JwksError;
use crate::provider::{Provider, ProviderBuildError, TokenCheckError, unix_now};
use crate::request::AuthRequest;
use crate::verify::VerifyError;

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

pub struct Authorizer {
    extractor: Extractor,
    provider: Provider,
    cache: TokenCache,
    keys: KeyDeriver,
    identity: IdentityMap,
    /// Every header name that must not reach the upstream as the caller sent it.
    strip: Vec<String>,
    realm: String,
    expiry_margin: Duration,
    provider_id: String,
    scope: String,
}

impl Authorizer {
    pub fn new(config: &Config) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.provider.connect_timeout)
            .timeout(config.provider.request_timeout)
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
        Ok(Authorizer {
            extractor,
            provider: Provider::new(http, &config.provider)?,
            cache: TokenCache::new(config.cache.max_entries),
            keys: KeyDeriver::default(),
            identity,
            strip,
            realm: config.realm.clone(),
            expiry_margin: config.cache.expiry_margin,
            provider_id: config
                .provider
                .resolved_token_url()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            scope: config.provider.scope.clone().unwrap_or_default(),
        })
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    pub async fn check(&self, request: &AuthRequest) -> Result<Decision, Unavailable> {
        let credential = match self.extractor.extract(&request.headers) {
            Ok(c) => c,
            Err(e) => return Ok(self.deny(Refusal::Credential(e))),
        };
        let identity = match credential {
            Credential::Bearer(token) => match self.provider.verify(token.expose()).await {
                Ok(verified) => match self.identity.headers(&verified.claims) {
                    Ok(headers) => Identity {
                        headers,
                        client_id: subject(&verified.claims),
                    },
                    Err(e) => return Ok(self.deny(Refusal::Identity(e))),
                },
                Err(TokenCheckError::Invalid(e)) => return Ok(self.deny(Refusal::Token(e))),
                Err(TokenCheckError::KeysNotLoaded) => return Err(Unavailable::KeysNotLoaded),
                Err(TokenCheckError::Jwks(e)) => return Err(Unavailable::Jwks(e)),
            }
            .into(),
            Credential::Client {
                client_id, secret, ..
            } => match self.client_identity(&client_id, &secret).await? {
                Ok(identity) => identity,
                Err(refusal) => return Ok(self.deny(refusal)),
            },
        };
        Ok(Decision::Allow(self.allow(&identity)))
    }

    fn cache_key(&self, client_id: &str, secret: &Secret) -> CacheKey {
        self.keys.derive(&[
            self.provider_id.as_bytes(),
            client_id.as_bytes(),
            secret.expose().as_bytes(),
            self.scope.as_bytes(),
        ])
    }

    /// The identity for client credentials: from the cache, or by one exchange + verification.
    async fn client_identity(
        &self,
        client_id: &str,
        secret: &Secret,
    ) -> Result<Result<Arc<Identity>, Refusal>, Unavailable> {
        let key = self.cache_key(client_id, secret);
        if let Some(hit) = self.cache.get(&key) {
            return Ok(Ok(hit));
        }
        let issued = match self.provider.exchange(client_id, secret).await {
            Ok(issued) => issued,
            Err(e) if e.is_callers_fault() => return Ok(Err(Refusal::Exchange(e))),
            Err(e) => return Err(Unavailable::Exchange(e)),
        };
        let verified = match self.provider.verify(&issued.access_token).await {
            Ok(v) => v,
            Err(TokenCheckError::Invalid(e)) => return Err(Unavailable::IssuedTokenInvalid(e)),
            Err(TokenCheckError::KeysNotLoaded) => return Err(Unavailable::KeysNotLoaded),
            Err(TokenCheckError::Jwks(e)) => return Err(Unavailable::Jwks(e)),
        };
        let headers = match self.identity.headers(&verified.claims) {
            Ok(h) => h,
            Err(e) => return Ok(Err(Refusal::Identity(e))),
        };
        let identity = Arc::new(Identity {
            headers,
            client_id: subject(&verified.claims),
        });
        // Lifetime: the token's own `exp`, shortened by `expires_in` when the provider sent a
        // smaller one, minus the safety margin.
        let mut lifetime = Duration::from_secs(verified.exp.saturating_sub(unix_now()));
        if let Some(expires_in) = issued.expires_in {
            lifetime = lifetime.min(expires_in);
        }
        if let Some(ttl) = lifetime.checked_sub(self.expiry_margin) {
            self.cache
                .insert(key, identity.clone(), Instant::now() + ttl);
        }
        Ok(Ok(identity))
    }

    fn allow(&self, identity: &Identity) -> Allow {
        let remove = self
            .strip
            .iter()
            .filter(|h| !identity.headers.iter().any(|(set, _)| set == *h))
            .cloned()
            .collect();
        Allow {
            set: identity.headers.clone(),
            remove,
            client_id: identity.client_id.clone(),
        }
    }

    fn deny(&self, refusal: Refusal) -> Decision {
        Decision::Deny(refusal.to_deny(&self.realm))
    }
}

fn subject(claims: &serde_json::Map<String, serde_json::Value>) -> String {
    claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("")
        .to_owned()
}
