//! The provider's signing keys (RFC 7517): fetched in the background, published as an immutable
//! snapshot the request path only reads, refetched on an unknown `kid` at most once per interval,
//! and kept serving when the endpoint is down.
//!
//! The document comes from a [`KeySource`]: the provider's JWKS URL over HTTP ([`http`]) in the
//! sidecar, an in-memory one in tests. Caching, the refetch gate and parsing are here, whatever
//! the source; every time they read comes from the injected [`Clock`](crate::clock::Clock).

pub mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tracing::field::Empty;

use crate::clock::SharedClock;
use crate::defaults::JWKS_RETRY;

/// Where a provider's JWK set document comes from. One call is one fetch; how often to fetch,
/// and what the document means, is [`Jwks`]'s.
pub trait KeySource: Send + Sync + 'static {
    /// The raw JWK set document (RFC 7517 §5), at most a bounded size.
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<u8>, JwksError>>;
    /// Where the keys come from, for logs (a URL; never a secret).
    fn describe(&self) -> String;
}
use crate::supervisor::{Stage, Supervisor};

/// One usable verification key and the algorithms it may verify: the intersection of what its
/// type allows, its own `alg` if it names one, and the configured pin list (RFC 8725 §3.1).
pub struct Key {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
    /// Names this key's public material, not its `kid`: several keys may share a `kid`, and a
    /// token cached as verified must stop when *its* key leaves the set, not when the last key
    /// under that name does.
    pub fingerprint: std::sync::Arc<str>,
}

/// An immutable set of keys as fetched at one moment.
pub struct KeySet {
    keys: Vec<Key>,
    pub fetched_at: Instant,
    /// Keys in the document that were skipped as unusable (wrong type, use, or algorithm).
    pub skipped: usize,
}

impl KeySet {
    /// The first key for a token's `kid` (whether the set still holds one). A token without
    /// `kid` is matched only when the set holds a single key, so the choice is never a guess
    /// between several.
    pub fn find(&self, kid: Option<&str>) -> Option<&Key> {
        self.candidates(kid).next()
    }

    /// Every key a token with this `kid` may have been signed with, in document order: several
    /// keys may share a `kid` (a provider publishing a new key under an old name mid-rotation),
    /// and each is tried. Without a `kid`, only the single key of a one-key set.
    pub fn candidates<'a, 'k>(
        &'a self,
        kid: Option<&'k str>,
    ) -> impl Iterator<Item = &'a Key> + use<'a, 'k> {
        let single = kid.is_none() && self.keys.len() == 1;
        self.keys
            .iter()
            .filter(move |k| single || (kid.is_some() && k.kid.as_deref() == kid))
    }

    /// Whether the set still holds the key with this [`Key::fingerprint`].
    pub fn holds(&self, fingerprint: &str) -> bool {
        self.keys.iter().any(|k| &*k.fingerprint == fingerprint)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS endpoint timed out")]
    Timeout,
    #[error("the JWKS endpoint could not be reached")]
    Connect,
    #[error("the JWKS endpoint's TLS certificate is not trusted (set provider.ca_file to its CA)")]
    UntrustedCertificate,
    #[error(
        "the JWKS endpoint refused the TLS handshake or closed the connection right after it (it may \
         require a client certificate: provider.client_cert and provider.client_key, or not \
         accept the one sent)"
    )]
    TlsRefused,
    #[error("the JWKS endpoint answered HTTP {0}")]
    Status(u16),
    /// The provider's metadata has not been discovered yet, so there is no JWKS URL.
    #[error("the provider's endpoints are not discovered yet")]
    NotDiscovered,
    #[error("the JWKS document is unusable: {0}")]
    BadDocument(&'static str),
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document leniently: members other than `keys` are ignored (Stytch adds
/// `request_id`), and each key that cannot be used is skipped rather than failing the set.
pub fn parse(body: &[u8], pinned: &[Algorithm], fetched_at: Instant) -> Result<KeySet, JwksError> {
    let doc: Document =
        serde_json::from_slice(body).map_err(|_| JwksError::BadDocument("not a JWK set"))?;
    let total = doc.keys.len();
    let keys: Vec<Key> = doc
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| usable_key(&jwk, pinned))
        .collect();
    if keys.is_empty() {
        return Err(JwksError::BadDocument("no usable signing key"));
    }
    Ok(KeySet {
        skipped: total - keys.len(),
        keys,
        fetched_at,
    })
}

fn usable_key(jwk: &Jwk, pinned: &[Algorithm]) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // Symmetric (`oct`) keys are never accepted from a JWKS (RFC 8725 §3.1).
        _ => return None,
    };
    let named = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| pinned.contains(a))
        .filter(|a| named.as_deref().is_none_or(|n| n == format!("{a:?}")))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
        fingerprint: fingerprint(&jwk.algorithm)?,
    })
}

/// SHA-256 over the key type and its public parameters (each length-prefixed), hex: the same
/// key gives the same fingerprint in every fetch, whatever its `kid`, `alg` or `use` say.
fn fingerprint(params: &AlgorithmParameters) -> Option<std::sync::Arc<str>> {
    use sha2::{Digest, Sha256};
    let curve;
    let parts: [&[u8]; 4] = match params {
        AlgorithmParameters::RSA(r) => [b"RSA", r.n.as_bytes(), r.e.as_bytes(), b""],
        AlgorithmParameters::EllipticCurve(e) => {
            curve = format!("{:?}", e.curve);
            [b"EC", curve.as_bytes(), e.x.as_bytes(), e.y.as_bytes()]
        }
        AlgorithmParameters::OctetKeyPair(o) => {
            curve = format!("{:?}", o.curve);
            [b"OKP", curve.as_bytes(), o.x.as_bytes(), b""]
        }
        _ => return None,
    };
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into(),
    )
}

/// The provider's JWKS, shared by every check.
pub struct Jwks {
    source: Arc<dyn KeySource>,
    clock: SharedClock,
    pinned: Vec<Algorithm>,
    min_refetch: Duration,
    current: ArcSwapOption<KeySet>,
    /// Serializes fetches and remembers when the last unknown-`kid` fetch started: background
    /// refreshes do not count against that limit, so the first token signed with a freshly
    /// rotated key is verified at once.
    fetch_gate: Mutex<Option<Instant>>,
    loaded: watch::Sender<bool>,
    fetches: FetchCounts,
}

/// How many JWKS fetches succeeded and failed, for metrics.
#[derive(Debug, Default)]
pub struct FetchCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl Jwks {
    pub fn new(
        source: Arc<dyn KeySource>,
        pinned: Vec<Algorithm>,
        min_refetch: Duration,
        clock: SharedClock,
    ) -> Self {
        Jwks {
            source,
            clock,
            pinned,
            min_refetch,
            current: ArcSwapOption::empty(),
            fetch_gate: Mutex::new(None),
            loaded: watch::channel(false).0,
            fetches: FetchCounts::default(),
        }
    }

    /// Fetches so far, by outcome.
    pub fn fetches(&self) -> &FetchCounts {
        &self.fetches
    }

    /// The keys as last loaded; `None` until the first fetch succeeds.
    pub fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Becomes true once a key set has been loaded, and stays true.
    pub fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// Fetches now and publishes the result; on failure the last good set stays in place.
    pub async fn refresh(&self) -> Result<Arc<KeySet>, JwksError> {
        let _gate = self.fetch_gate.lock().await;
        self.fetch_and_publish().await
    }

    /// Called when a token names a `kid` the snapshot `seen` lacks. Returns a newer set when one
    /// was loaded (by this call or a concurrent one), or `None` when the refetch limit says wait:
    /// a stream of tokens with made-up `kid`s costs the provider one fetch per interval.
    pub async fn refetch_for_unknown_kid(
        &self,
        seen: &Arc<KeySet>,
    ) -> Result<Option<Arc<KeySet>>, JwksError> {
        let mut last = self.fetch_gate.lock().await;
        if let Some(current) = self.snapshot()
            && !Arc::ptr_eq(&current, seen)
            // `>=`: a clock held still (a test's) dates two fetches alike.
            && current.fetched_at >= seen.fetched_at
        {
            return Ok(Some(current));
        }
        let now = self.clock.now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.min_refetch) {
            return Ok(None);
        }
        *last = Some(now);
        self.fetch_and_publish().await.map(Some)
    }

    async fn fetch_and_publish(&self) -> Result<Arc<KeySet>, JwksError> {
        let fetched = self.fetch().await;
        let counter = match &fetched {
            Ok(_) => &self.fetches.ok,
            Err(_) => &self.fetches.failed,
        };
        counter.fetch_add(1, Relaxed);
        let set = Arc::new(fetched?);
        self.current.store(Some(set.clone()));
        self.loaded.send_replace(true);
        Ok(set)
    }

    /// One fetch, as a trace span (a child of the check that caused it, if any).
    #[tracing::instrument(
        name = "jwks.fetch",
        skip_all,
        fields(otel.kind = "client", otel.status_code = Empty, error = Empty)
    )]
    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let fetched = self.fetch_inner().await;
        if let Err(e) = &fetched {
            let span = tracing::Span::current();
            span.record("otel.status_code", "error");
            span.record("error", tracing::field::display(e));
        }
        fetched
    }

    async fn fetch_inner(&self) -> Result<KeySet, JwksError> {
        let body = self.source.fetch().await?;
        parse(&body, &self.pinned, self.clock.now())
    }

    /// Keeps the set fresh: every `interval` after a success, every few seconds (doubling up to
    /// `interval`) after a failure, so a provider outage at start-up heals without a restart.
    /// With `after`, the first fetch waits until it turns true (the provider's metadata is
    /// discovered), so no fetch fails only for want of a URL.
    pub fn spawn_refresher(
        self: Arc<Self>,
        interval: Duration,
        after: Option<watch::Receiver<bool>>,
        supervisor: &Supervisor,
    ) {
        supervisor.spawn(Stage::Background, "JWKS refresh", async move {
            if let Some(mut after) = after
                && after.wait_for(|ready| *ready).await.is_err()
            {
                return;
            }
            let mut retry = JWKS_RETRY.min(interval);
            loop {
                match self.refresh().await {
                    Ok(set) => {
                        tracing::debug!(keys = set.len(), skipped = set.skipped, "JWKS loaded");
                        retry = JWKS_RETRY.min(interval);
                        tokio::time::sleep(interval).await;
                    }
                    Err(error) => {
                        if self.current.load().is_some() {
                            tracing::warn!(%error, url = %self.source.describe(), "JWKS fetch failed; keeping the last good key set");
                        } else {
                            tracing::warn!(%error, url = %self.source.describe(), retry_in = %humantime::format_duration(retry), "JWKS fetch failed and no key set was loaded yet: tokens cannot be verified until a fetch succeeds");
                        }
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(interval);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    fn rsa(kid: &str, extra: &str) -> String {
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{RSA_N}","e":"AQAB"{extra}}}"#)
    }

    #[test]
    fn parses_leniently_and_skips_unusable_keys() {
        let doc = format!(
            r#"{{"keys":[{},{},{},{},{{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},{{"kty":"weird"}}],"request_id":"req-1","status_code":200}}"#,
            rsa("a", r#","alg":"RS256","use":"sig""#),
            rsa("enc", r#","use":"enc""#),
            rsa("ps", r#","alg":"PS256""#),
            rsa("b", ""),
        );
        let set = parse(doc.as_bytes(), &[Algorithm::RS256], Instant::now()).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.skipped, 4);
        assert!(set.find(Some("a")).is_some());
        assert!(set.find(Some("b")).is_some());
        for skipped in ["enc", "ps", "hmac", "missing"] {
            assert!(set.find(Some(skipped)).is_none(), "{skipped}");
        }
        // Without a kid and with several keys, nothing is guessed.
        assert!(set.find(None).is_none());
        assert_eq!(
            set.find(Some("a")).unwrap().algorithms,
            vec![Algorithm::RS256]
        );
    }

    #[test]
    fn refuses_documents_without_usable_keys() {
        for doc in [
            &b"[]"[..],
            b"{}",
            br#"{"keys":[]}"#,
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
        ] {
            assert!(parse(doc, &[Algorithm::RS256], Instant::now()).is_err());
        }
        let one = format!(r#"{{"keys":[{}]}}"#, rsa("a", ""));
        let set = parse(one.as_bytes(), &[Algorithm::RS256], Instant::now()).unwrap();
        assert!(set.find(None).is_some());
        assert!(parse(one.as_bytes(), &[Algorithm::ES256], Instant::now()).is_err());
    }
}
