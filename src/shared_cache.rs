//! The optional shared token cache tier (`cache.shared`, issue 9): tokens exchanged by one
//! sidecar are served to the fleet's other sidecars through Redis, so a fleet of pods costs the
//! provider about what one pod does.
//!
//! Lookup order is local cache → Redis → exchange. Redis is consulted only inside a
//! credential's single-flight task (`Inner::exchange`), so within one pod concurrent misses make
//! one Redis read and at most one exchange; across pods a short lock (`SET NX PX`) keeps a burst
//! of pods from exchanging the same credential at once, with a bounded wait (`lock_wait`) and a
//! fallback to exchanging anyway when the lock holder died.
//!
//! Nothing usable leaks from Redis:
//! - the key is `key_prefix` + hex(HMAC-SHA-256(fleet key, provider ‖ client id ‖ secret ‖
//!   scope)), each part length-prefixed: pods agree on it, and it reveals none of its inputs;
//! - the value (access token, issue and expiry times) is sealed with ChaCha20-Poly1305 under a
//!   key derived by HKDF-SHA-256 from the caller's own secret (salt: the fleet key), with a
//!   random 96-bit nonce per write and the Redis key as associated data. Reading Redis with the
//!   fleet key but without a caller's secret yields nothing that caller could replay.
//!
//! A value read from Redis is still verified against the provider's JWKS before use, and one
//! that fails to open or verify is ignored (and overwritten by the next exchange). Refusals are
//! never written. Redis trouble (down, slow, garbage) never fails a check: every operation is
//! bounded by `timeout`, after a connection failure Redis is skipped for a moment, and the check
//! goes on down the local path; it is counted (`m2m_authz_shared_cache_*`) and shown in
//! `/readyz` detail.
//!
//! The store itself is a [`SharedStore`] (get, put with a TTL, a lock with a TTL, unlock): Redis
//! ([`redis_store`]) in the sidecar, an in-memory map in tests. Keys, sealing, the lock protocol,
//! backoff and ages are here, whatever the store; times are read from the injected clock.
//!
//! One file (about 610 lines with its tests; the store itself is in `redis_store`): key
//! derivation, sealing and the lock protocol are one contract between pods, kept in one place
//! so that a change to one is seen beside the others.

pub mod redis_store;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use futures::future::BoxFuture;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::time::Instant;

use crate::clock::SharedClock;
use crate::stats::Stats;

use crate::config::shared_cache::redact_url;
pub use crate::config::shared_cache::{
    DEFAULT_KEY_PREFIX, DEFAULT_LOCK_TTL, DEFAULT_LOCK_WAIT, DEFAULT_TIMEOUT, FLEET_KEY_ENV,
    MIN_FLEET_KEY_BYTES, SharedCacheConfig, URL_ENV,
};

/// The fleet's key-value store for sealed tokens and exchange locks. Every operation is bounded
/// in time by the store itself (the tier's `timeout`); a store that fails says whether it is
/// unreachable (the tier then skips it for a moment) or answered with an error.
pub trait SharedStore: Send + Sync + 'static {
    /// The value under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Stores `value` under `key` for `ttl` (replacing any value).
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Sets `key` to `token` for `ttl` only if it is not set: true when this caller now holds it.
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Deletes `key` only if it still holds `token` (a lock that expired and was taken by
    /// another is left alone).
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Where the store is, for `/readyz` (no password).
    fn describe(&self) -> String;
}

/// Why a store operation failed. Carries no key and no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Not reachable, the connection broke, or no answer within the timeout: the tier skips
    /// the store for a moment.
    #[error("{0}")]
    Unavailable(String),
    /// The store answered with an error; the connection stays usable.
    #[error("{0}")]
    Refused(String),
}

/// After a failed connection, Redis is skipped for this long: an outage costs one timeout, not
/// one per flight.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A value this close to its expiry is not worth sharing or adopting.
const MIN_SHARED_LIFETIME: Duration = Duration::from_secs(2);
/// Longest pause between two reads while another pod holds the lock.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The first byte of every sealed value: its format.
const VALUE_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

fn length_prefixed<M: Mac>(mac: &mut M, parts: &[&[u8]]) {
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// What identifies a credential across the fleet. `provider` is the provider slot's id (its
/// name and token URL), `scope` the scope it is exchanged for.
#[derive(Clone, Copy)]
pub struct CredentialRef<'a> {
    pub provider: &'a str,
    pub client_id: &'a str,
    pub secret: &'a str,
    pub scope: &'a str,
}

/// A credential's Redis keys and value key, derived once per flight.
pub struct SharedKey {
    /// Where the sealed value lives.
    pub entry: String,
    /// The fleet's exchange lock for this credential.
    pub lock: String,
    seal: Key,
}

impl SharedKey {
    /// Derives the keys: HMAC under the fleet key for the Redis key, HKDF from the caller's
    /// secret (salt: the fleet key) for the value key.
    pub fn derive(fleet_key: &[u8], prefix: &str, c: CredentialRef<'_>) -> SharedKey {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(fleet_key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        length_prefixed(
            &mut mac,
            &[
                b"m2m-authz shared-cache v1 key",
                c.provider.as_bytes(),
                c.client_id.as_bytes(),
                c.secret.as_bytes(),
                c.scope.as_bytes(),
            ],
        );
        let id = hex(&mac.finalize().into_bytes());
        let mut info = b"m2m-authz shared-cache v1 value".to_vec();
        for part in [c.provider, c.client_id, c.scope] {
            info.extend_from_slice(&(part.len() as u64).to_be_bytes());
            info.extend_from_slice(part.as_bytes());
        }
        let mut seal = [0u8; 32];
        let Ok(()) =
            Hkdf::<Sha256>::new(Some(fleet_key), c.secret.as_bytes()).expand(&info, &mut seal)
        else {
            unreachable!("32 bytes is a valid HKDF-SHA-256 output length")
        };
        SharedKey {
            entry: format!("{prefix}{id}"),
            lock: format!("{prefix}lock:{id}"),
            seal: Key::from(seal),
        }
    }

    /// Seals `entry` for this key: version ‖ nonce ‖ ciphertext, the Redis key as associated
    /// data.
    pub fn seal(&self, entry: &SharedEntry) -> Vec<u8> {
        let plain = serde_json::to_vec(entry).unwrap_or_default();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = self.aad();
        let Ok(sealed) = ChaCha20Poly1305::new(&self.seal).encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        ) else {
            unreachable!("ChaCha20-Poly1305 seals any message that fits in memory")
        };
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VALUE_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value read from Redis; `None` for anything not sealed by this key for this entry.
    pub fn open(&self, value: &[u8]) -> Option<SharedEntry> {
        let (&version, rest) = value.split_first()?;
        if version != VALUE_VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let aad = self.aad();
        let plain = ChaCha20Poly1305::new(&self.seal)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = vec![VALUE_VERSION];
        aad.extend_from_slice(self.entry.as_bytes());
        aad
    }
}

/// What the fleet shares for a credential (only ever stored sealed).
#[derive(Clone, Serialize, Deserialize)]
pub struct SharedEntry {
    pub access_token: String,
    /// Unix seconds when it was exchanged.
    pub issued_at: u64,
    /// Unix seconds after which it must not be used (its `exp`, or sooner per `expires_in`).
    pub expires_at: u64,
}

impl fmt::Debug for SharedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedEntry")
            .field("access_token", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Whether a shared token is worth adopting at `now` (see `SharedTier::usable`). `as` from a
/// float saturates; `refresh_ahead` is validated to lie in 0..1.
fn usable_at(
    e: &SharedEntry,
    now: u64,
    refresh_ahead: f64,
    max_credential_age: Option<Duration>,
) -> bool {
    let lifetime = e.expires_at.saturating_sub(e.issued_at) as f64;
    let refresh_at = e
        .issued_at
        .saturating_add((lifetime * refresh_ahead) as u64);
    let too_old =
        max_credential_age.is_some_and(|age| now >= e.issued_at.saturating_add(age.as_secs()));
    now >= e.issued_at.saturating_sub(60)
        && now < refresh_at
        && e.expires_at.saturating_sub(now) >= MIN_SHARED_LIFETIME.as_secs()
        && !too_old
}

/// Why an operation on Redis did not succeed.
#[derive(Debug)]
enum OpError {
    /// Skipped: a recent connection failure.
    Backoff,
    Store(StoreError),
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Backoff => f.write_str("unavailable (retrying shortly)"),
            OpError::Store(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Default)]
struct Health {
    /// Unix seconds and description of the last failure.
    last_error: Option<(u64, String)>,
    last_ok: Option<u64>,
}

/// The shared tier, shared by every provider slot of one authorizer.
pub struct SharedTier {
    store: Arc<dyn SharedStore>,
    /// Set after a connection failure: the store is skipped until then.
    retry_at: Mutex<Option<Instant>>,
    health: Mutex<Health>,
    prefix: String,
    fleet_key: Vec<u8>,
    lock_ttl: Duration,
    lock_wait: Duration,
    refresh_ahead: f64,
    max_credential_age: Option<Duration>,
    stats: Arc<Stats>,
    /// Ages of shared values, the backoff and health times are read from it.
    clock: SharedClock,
}

/// What `SharedTier::before_exchange` leaves the flight to do: exchange, then `store`. Holds
/// the fleet lock when this pod took it; dropping it unstored releases the lock.
pub struct Ticket {
    tier: Arc<SharedTier>,
    key: SharedKey,
    lock: Option<String>,
}

impl SharedTier {
    /// The tier on Redis and the system clock. `config` must have passed
    /// `SharedCacheConfig::validate`. No connection is made here.
    pub fn new(
        config: &SharedCacheConfig,
        refresh_ahead: f64,
        max_credential_age: Option<Duration>,
        stats: Arc<Stats>,
    ) -> Result<SharedTier, String> {
        SharedTier::with_parts(
            config,
            refresh_ahead,
            max_credential_age,
            stats,
            None,
            crate::clock::system(),
        )
    }

    /// The tier on `store` (Redis at the configured URL when `None`; the URL is then not
    /// needed) and `clock`. Errors name the field.
    pub fn with_parts(
        config: &SharedCacheConfig,
        refresh_ahead: f64,
        max_credential_age: Option<Duration>,
        stats: Arc<Stats>,
        store: Option<Arc<dyn SharedStore>>,
        clock: SharedClock,
    ) -> Result<SharedTier, String> {
        fn field(f: &'static str) -> impl Fn(String) -> String {
            move |p| format!("cache.shared.{f}: {p}")
        }
        let store = match store {
            Some(s) => s,
            None => {
                config.resolved_url().map_err(field("url"))?;
                Arc::new(redis_store::RedisStore::open(config)?)
            }
        };
        Ok(SharedTier {
            store,
            retry_at: Mutex::new(None),
            health: Mutex::new(Health::default()),
            prefix: config.key_prefix.clone(),
            fleet_key: config.resolved_fleet_key().map_err(field("fleet_key"))?,
            lock_ttl: config.lock_ttl,
            lock_wait: config.lock_wait,
            refresh_ahead,
            max_credential_age,
            stats,
            clock,
        })
    }

    pub fn key(&self, c: CredentialRef<'_>) -> SharedKey {
        SharedKey::derive(&self.fleet_key, &self.prefix, c)
    }

    /// The shared tier's state for `/readyz` detail: never makes the pod not ready.
    pub fn status(&self) -> serde_json::Value {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let degraded = match (&h.last_error, h.last_ok) {
            (Some((err_at, _)), Some(ok_at)) => *err_at >= ok_at,
            (Some(_), None) => true,
            _ => false,
        };
        let s = self.stats.snapshot();
        let mut v = serde_json::json!({
            "status": if degraded { "degraded" } else { "ok" },
            "url": self.store.describe(),
            "hits": s.shared_hits,
            "misses": s.shared_misses,
            "errors": s.shared_errors,
            "lock_waits": s.shared_lock_waits,
        });
        if let Some((at, e)) = &h.last_error {
            v["last_error"] = serde_json::json!(e);
            v["last_error_age_seconds"] =
                serde_json::json!(self.clock.unix_now().saturating_sub(*at));
        }
        v
    }

    fn record_ok(&self) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_ok = Some(self.clock.unix_now());
    }

    /// Counts a failed operation; a skipped one (backoff) is counted but neither logged again
    /// nor allowed to hide the failure that started the pause from `/readyz`.
    fn record_op_error(&self, what: &str, e: OpError) {
        match e {
            OpError::Backoff => Stats::add(&self.stats.shared_errors),
            OpError::Store(e) => self.record_error(what, e),
        }
    }

    /// Counts a failure and remembers it for `/readyz`.
    fn record_error(&self, what: &str, e: impl fmt::Display) {
        Stats::add(&self.stats.shared_errors);
        let text = format!("{what}: {e}");
        tracing::warn!(error = %text, "shared cache tier: going on without it");
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = Some((self.clock.unix_now(), text));
    }

    /// Runs one store operation, unless a recent failure says to skip the store; one that
    /// finds the store unreachable starts that pause.
    async fn run<'a, T>(
        &'a self,
        op: impl FnOnce() -> BoxFuture<'a, Result<T, StoreError>>,
    ) -> Result<T, OpError> {
        let skip = |at: &Option<Instant>| at.is_some_and(|at| self.clock.now() < at);
        if skip(&self.retry_at.lock().unwrap_or_else(|e| e.into_inner())) {
            return Err(OpError::Backoff);
        }
        match op().await {
            Ok(v) => Ok(v),
            Err(e) => {
                if matches!(e, StoreError::Unavailable(_)) {
                    *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(self.clock.now() + RETRY_AFTER);
                }
                Err(OpError::Store(e))
            }
        }
    }

    /// The shared value for `key`, if Redis answers with one this caller can open and that is
    /// fresh enough to adopt. Failures are counted and read as a miss.
    async fn read(&self, key: &SharedKey) -> Option<SharedEntry> {
        let value = match self.run(|| self.store.get(&key.entry)).await {
            Ok(v) => v,
            Err(e) => {
                self.record_op_error("read", e);
                return None;
            }
        };
        self.record_ok();
        let value = value?;
        let Some(entry) = key.open(&value) else {
            self.record_error(
                "read",
                "a value that does not open with this credential's key",
            );
            return None;
        };
        self.usable(&entry).then_some(entry)
    }

    /// Whether a shared token is still worth adopting rather than re-exchanging: before the
    /// point where the local cache would refresh it, within `max_credential_age`.
    /// Saturating throughout: the times come from Redis, and a value that opened may still
    /// hold any numbers.
    fn usable(&self, e: &SharedEntry) -> bool {
        usable_at(
            e,
            self.clock.unix_now(),
            self.refresh_ahead,
            self.max_credential_age,
        )
    }

    /// `Some(true)`: this pod holds the lock under `token`; `Some(false)`: another pod does;
    /// `None`: Redis did not answer.
    async fn try_lock(&self, key: &SharedKey, token: &str) -> Option<bool> {
        match self
            .run(|| self.store.try_lock(&key.lock, token, self.lock_ttl))
            .await
        {
            Ok(taken) => {
                self.record_ok();
                Some(taken)
            }
            Err(e) => {
                self.record_op_error("lock", e);
                None
            }
        }
    }

    /// Releases the lock if this pod still holds it.
    async fn unlock(&self, key: &str, token: &str) {
        if let Err(e) = self.run(|| self.store.unlock(key, token)).await {
            self.record_op_error("unlock", e);
        }
    }

    /// Runs before a flight exchanges: a usable shared value that `adopt` accepts (verified) ends
    /// the flight; otherwise returns the ticket to exchange with — holding the fleet lock when
    /// this pod got it, after waiting up to `lock_wait` for a pod that holds it.
    pub async fn before_exchange<T, F, Fut>(
        self: &Arc<Self>,
        key: SharedKey,
        mut adopt: F,
    ) -> Result<T, Ticket>
    where
        F: FnMut(SharedEntry) -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        // Rejected values (garbage that opened, tokens that fail verification) are counted.
        macro_rules! try_adopt {
            ($entry:expr) => {
                if let Some(entry) = $entry {
                    match adopt(entry).await {
                        Some(v) => {
                            Stats::add(&self.stats.shared_hits);
                            return Ok(v);
                        }
                        None => self.record_error("read", "a shared token that fails verification"),
                    }
                }
            };
        }
        try_adopt!(self.read(&key).await);
        let mut token = [0u8; 16];
        rand::rng().fill_bytes(&mut token);
        let token = hex(&token);
        let mut ticket = Ticket {
            tier: self.clone(),
            key,
            lock: None,
        };
        match self.try_lock(&ticket.key, &token).await {
            None => {
                Stats::add(&self.stats.shared_misses);
                return Err(ticket);
            }
            Some(true) => ticket.lock = Some(token.clone()),
            Some(false) => {
                Stats::add(&self.stats.shared_lock_waits);
                // A wait on another pod, timed by tokio rather than the injected clock: it must
                // end even when a test holds that clock still.
                let deadline = Instant::now() + self.lock_wait;
                let pause = POLL_INTERVAL
                    .min(self.lock_wait / 4)
                    .max(Duration::from_millis(1));
                while Instant::now() < deadline {
                    tokio::time::sleep(pause).await;
                    try_adopt!(self.read(&ticket.key).await);
                    match self.try_lock(&ticket.key, &token).await {
                        // The holder finished without a value, or its lock expired: ours now.
                        Some(true) => {
                            ticket.lock = Some(token.clone());
                            break;
                        }
                        Some(false) => continue,
                        None => break,
                    }
                }
            }
        }
        if ticket.lock.is_some() {
            // A pod may have stored its value and released the lock just before we took it.
            try_adopt!(self.read(&ticket.key).await);
        }
        Stats::add(&self.stats.shared_misses);
        Err(ticket)
    }
}

impl Ticket {
    /// Shares a freshly exchanged and verified token for `lifetime`, then releases the lock.
    pub async fn store(mut self, access_token: &str, lifetime: Duration) {
        if lifetime >= MIN_SHARED_LIFETIME {
            let now = self.tier.clock.unix_now();
            let entry = SharedEntry {
                access_token: access_token.to_owned(),
                issued_at: now,
                expires_at: now.saturating_add(lifetime.as_secs()),
            };
            let sealed = self.key.seal(&entry);
            let tier = &self.tier;
            match tier
                .run(|| tier.store.put(&self.key.entry, sealed, lifetime))
                .await
            {
                Ok(()) => self.tier.record_ok(),
                Err(e) => self.tier.record_op_error("write", e),
            }
        }
        if let Some(token) = self.lock.take() {
            self.tier.unlock(&self.key.lock, &token).await;
        }
    }
}

impl Drop for Ticket {
    /// An exchange that failed (or a flight that ended early) releases the lock, so a waiting
    /// pod takes over at once instead of after `lock_ttl`.
    fn drop(&mut self) {
        if let Some(token) = self.lock.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let tier = self.tier.clone();
            let key = self.key.lock.clone();
            rt.spawn(async move { tier.unlock(&key, &token).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(secret: &str) -> CredentialRef<'_> {
        CredentialRef {
            provider: "default http://idp/token",
            client_id: "client-1",
            secret,
            scope: "",
        }
    }

    fn entry() -> SharedEntry {
        SharedEntry {
            access_token: "eyJhbGciOi.payload.sig".into(),
            issued_at: 100,
            expires_at: 200,
        }
    }

    #[test]
    fn keys_agree_across_pods_and_reveal_nothing() {
        let fleet = [7u8; 32];
        let a = SharedKey::derive(&fleet, "p:", cred("s3cret"));
        let b = SharedKey::derive(&fleet, "p:", cred("s3cret"));
        assert_eq!(a.entry, b.entry);
        assert!(a.entry.starts_with("p:") && a.entry.len() == 2 + 64);
        assert!(!a.entry.contains("s3cret") && !a.entry.contains("client-1"));
        assert_ne!(
            a.entry,
            SharedKey::derive(&fleet, "p:", cred("other")).entry
        );
        assert_ne!(
            a.entry,
            SharedKey::derive(&[8u8; 32], "p:", cred("s3cret")).entry
        );
    }

    #[test]
    fn values_open_only_with_the_callers_secret_and_their_key() {
        let fleet = [7u8; 32];
        let k = SharedKey::derive(&fleet, "p:", cred("s3cret"));
        let sealed = k.seal(&entry());
        // The token, or its claims, in the clear (whole: a bare "eyJ" can be ciphertext).
        for clear in ["eyJhbGciOi.payload.sig", "payload"] {
            assert!(!sealed.windows(clear.len()).any(|w| w == clear.as_bytes()));
        }
        let opened = SharedKey::derive(&fleet, "p:", cred("s3cret"))
            .open(&sealed)
            .unwrap();
        assert_eq!(opened.access_token, entry().access_token);
        // A wrong secret derives another value key.
        let mut wrong = SharedKey::derive(&fleet, "p:", cred("guess"));
        assert!(wrong.open(&sealed).is_none());
        // The right value key under another Redis key: the associated data does not match.
        wrong = SharedKey::derive(&fleet, "p:", cred("s3cret"));
        wrong.entry = "p:elsewhere".into();
        assert!(wrong.open(&sealed).is_none());
        // Tampering with any byte fails.
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(k.open(&t).is_none(), "byte {i}");
        }
        assert!(k.open(b"").is_none() && k.open(b"\x01short").is_none());
        // Two writes of the same entry use different nonces.
        assert_ne!(k.seal(&entry()), sealed);
    }

    #[test]
    fn a_missing_fleet_key_passes_check_config_but_stops_serve() {
        if std::env::var_os(FLEET_KEY_ENV).is_some() {
            return;
        }
        let c = SharedCacheConfig {
            url: Some("redis://127.0.0.1:6379".into()),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            fleet_key: None,
            timeout: DEFAULT_TIMEOUT,
            lock_ttl: DEFAULT_LOCK_TTL,
            lock_wait: DEFAULT_LOCK_WAIT,
            ca_file: None,
            cluster: false,
            nodes: Vec::new(),
        };
        c.validate().unwrap();
        let Err(e) = SharedTier::new(&c, 0.8, None, Arc::default()) else {
            panic!("built without a fleet key")
        };
        assert!(e.starts_with("cache.shared.fleet_key: required"), "{e}");
    }

    /// Times read from Redis at their extremes are judged, never overflowed.
    #[test]
    fn extreme_shared_times_never_panic() {
        let at = |issued_at, expires_at| SharedEntry {
            access_token: "t".into(),
            issued_at,
            expires_at,
        };
        let age = Some(Duration::MAX);
        let now = 1_000_000;
        assert!(usable_at(&at(now - 10, now + 3600), now, 0.8, age));
        assert!(usable_at(&at(now, u64::MAX), now, 0.8, age));
        assert!(!usable_at(&at(u64::MAX, u64::MAX), now, 0.8, age));
        assert!(!usable_at(&at(u64::MAX - 1, 0), now, 0.8, None));
        assert!(!usable_at(&at(0, 0), u64::MAX, 0.8, age));
        assert!(!usable_at(
            &at(now - 10, now + 3600),
            now,
            0.8,
            Some(Duration::from_secs(5))
        ));
        assert!(!usable_at(&at(now - 10, now + 3600), now, f64::NAN, None));
    }
}
