//! Verified identities, keyed by a keyed hash of the credential: the raw secret is never stored,
//! and a memory dump of the cache cannot be replayed as credentials.
//!
//! Bounded in size: at most `max_entries` identities (when full, expired entries are swept, then
//! the least recently used tenth is evicted, so hot clients stay) and `max_negative_entries`
//! refused credentials. Bounded in time: an identity is served until its token's `exp` (minus a
//! margin), refreshed in the background once `refresh_ahead` of its lifetime has passed if it
//! is still being used, re-exchanged after `max_credential_age`, and served past its soft
//! expiry only while the provider is failing, never past `exp + stale_if_error`. A refused
//! credential is remembered for `negative_ttl`.
//!
//! One file (about 390 lines of code, the rest unit tests on the fake clock): the bounds in size
//! and in time act on the same entries under the same locks.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::config::CacheConfig;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::clock::SharedClock;
use crate::identity::Identity;
use crate::stats::Stats;

/// HMAC-SHA-256 of a credential under a per-process random key.
#[derive(Clone, Copy)]
pub struct CacheKey([u8; 32]);

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0[..8]);
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

/// Derives cache keys. The HMAC key is random per process and never leaves it.
pub struct KeyDeriver {
    /// HMAC-SHA256 already keyed (inner and outer pads absorbed): each derivation clones it,
    /// which saves two of the five or so SHA-256 blocks a Basic credential's key costs.
    keyed: Hmac<Sha256>,
}

impl Default for KeyDeriver {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let Ok(keyed) = Hmac::<Sha256>::new_from_slice(&key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        key.fill(0);
        KeyDeriver { keyed }
    }
}

impl KeyDeriver {
    /// Each part is length-prefixed, so no two different tuples hash the same input.
    pub fn derive(&self, parts: &[&[u8]]) -> CacheKey {
        let mut mac = self.keyed.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        CacheKey(mac.finalize().into_bytes().into())
    }
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub max_entries: usize,
    pub max_negative_entries: usize,
    /// Fraction of a token's lifetime after which a used entry is refreshed in the background.
    pub refresh_ahead: f64,
    pub expiry_margin: Duration,
    pub negative_ttl: Duration,
    /// How long past `exp` an entry may still serve while the provider fails; zero: not at all.
    pub stale_if_error: Duration,
    pub max_credential_age: Option<Duration>,
}

impl From<&CacheConfig> for CacheSettings {
    fn from(c: &CacheConfig) -> Self {
        CacheSettings {
            max_entries: c.max_entries,
            max_negative_entries: c.max_negative_entries,
            refresh_ahead: c.refresh_ahead,
            expiry_margin: c.expiry_margin,
            negative_ttl: c.negative_ttl,
            stale_if_error: c.stale_if_error,
            max_credential_age: c.max_credential_age,
        }
    }
}

/// How long a failed background refresh waits before a later hit may try again.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// The longest anything is cached, whatever a token, a provider or the settings say: every
/// lifetime is clamped to it before any time arithmetic, so no claim can overflow an `Instant`.
/// (`provider.max_token_lifetime` clamps lifetimes further, per provider.)
pub const MAX_LIFETIME: Duration = crate::defaults::MAX_TOKEN_LIFETIME_CEILING;

/// Whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One cached identity. Times are milliseconds since the cache's epoch (8 bytes, not 16 for an
/// `Instant`): there may be a million entries.
struct Entry {
    identity: Arc<Identity>,
    refresh_at: u64,
    /// After this a check re-exchanges before answering (falling back to this entry if the
    /// provider fails).
    soft_expiry: u64,
    /// After this the entry is never served.
    hard_expiry: u64,
    /// For verified bearer tokens: the signing key's fingerprint, so a retired key stops them
    /// at once.
    kid: Option<Arc<str>>,
    /// Bearer entries are never refreshed: there is no credential to refresh them with.
    refreshable: bool,
    /// Milliseconds since the cache's epoch.
    last_used: AtomicU64,
    refreshing: AtomicBool,
    /// Milliseconds since the cache's epoch before which no refresh is started again.
    refresh_not_before: AtomicU64,
}

/// What the cache knows about a credential.
#[derive(Debug)]
pub enum Lookup {
    Fresh(Arc<Identity>),
    /// Fresh, and the caller has been chosen to start its background refresh.
    RefreshDue(Arc<Identity>),
    /// Past its soft expiry: re-exchange, and serve this only if the provider fails.
    Stale(Arc<Identity>),
    /// The provider refused this exact credential recently.
    Refused,
    Miss,
}

pub struct TokenCache {
    /// Entries are boxed: the table's buckets (a power of two, so up to half empty after it
    /// grows) then hold a key and a pointer, not the whole entry.
    map: DashMap<CacheKey, Box<Entry>>,
    negative: DashMap<CacheKey, Instant>,
    /// Held from the size check to the insert of a refusal, so concurrent refusals cannot each
    /// see room for one more and pass `max_negative_entries` together. Taken only after a
    /// refusal (which cost a provider call), never on a lookup.
    negative_insert: std::sync::Mutex<()>,
    settings: CacheSettings,
    epoch: Instant,
    stats: Arc<Stats>,
    /// Every expiry, refresh point and age is read from it.
    clock: SharedClock,
}

impl TokenCache {
    /// A cache on the system clock.
    pub fn new(settings: CacheSettings, stats: Arc<Stats>) -> Self {
        TokenCache::with_clock(settings, stats, crate::clock::system())
    }

    pub fn with_clock(settings: CacheSettings, stats: Arc<Stats>, clock: SharedClock) -> Self {
        TokenCache {
            map: DashMap::new(),
            negative: DashMap::new(),
            negative_insert: std::sync::Mutex::new(()),
            settings,
            epoch: clock.now(),
            stats,
            clock,
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        millis(t.saturating_duration_since(self.epoch))
    }

    /// The hit path: no I/O, no await, one shard read lock held only inside this call.
    /// `key_alive` says whether a bearer entry's signing key is still published.
    pub fn lookup(&self, key: &CacheKey, key_alive: impl Fn(&str) -> bool) -> Lookup {
        let now = self.clock.now();
        let now_ms = self.millis(now);
        if let Some(e) = self.map.get(key) {
            let dead = now_ms >= e.hard_expiry || e.kid.as_deref().is_some_and(|k| !key_alive(k));
            if !dead {
                e.last_used.store(now_ms, Relaxed);
                if now_ms >= e.soft_expiry {
                    return Lookup::Stale(e.identity.clone());
                }
                if e.refreshable
                    && now_ms >= e.refresh_at
                    && now_ms >= e.refresh_not_before.load(Relaxed)
                    && !e.refreshing.swap(true, Relaxed)
                {
                    return Lookup::RefreshDue(e.identity.clone());
                }
                return Lookup::Fresh(e.identity.clone());
            }
            drop(e);
            self.map
                .remove_if(key, |_, e| e.hard_expiry <= now_ms || e.kid.is_some());
            return Lookup::Miss;
        }
        if let Some(until) = self.negative.get(key) {
            if *until > now {
                return Lookup::Refused;
            }
            drop(until);
            self.negative.remove_if(key, |_, until| *until <= now);
        }
        Lookup::Miss
    }

    /// Stores a freshly exchanged identity whose token stays valid for `lifetime` (clamped to
    /// `MAX_LIFETIME`). All arithmetic is in saturating milliseconds: no lifetime or setting
    /// can make it panic.
    pub fn insert(&self, key: CacheKey, identity: Arc<Identity>, lifetime: Duration) {
        let s = &self.settings;
        let lifetime = lifetime.min(MAX_LIFETIME);
        let now = self.millis(self.clock.now());
        let exp = now.saturating_add(millis(lifetime));
        let mut soft = exp.saturating_sub(millis(s.expiry_margin.min(lifetime / 4)));
        if let Some(age) = s.max_credential_age {
            soft = soft.min(now.saturating_add(millis(age)));
        }
        // A fraction of the usable lifetime, so the refresh always comes before the soft expiry.
        // (`as` from a float saturates; `refresh_ahead` is validated to lie in 0..1.)
        let usable = soft.saturating_sub(now) as f64;
        let refresh_at = now
            .saturating_add((usable * s.refresh_ahead) as u64)
            .min(soft);
        self.put(
            key,
            Entry {
                identity,
                refresh_at,
                soft_expiry: soft,
                hard_expiry: exp.saturating_add(millis(s.stale_if_error.min(MAX_LIFETIME))),
                kid: None,
                refreshable: true,
                last_used: AtomicU64::new(now),
                refreshing: AtomicBool::new(false),
                refresh_not_before: AtomicU64::new(0),
            },
        );
        self.negative.remove(&key);
    }

    /// Stores a verified bearer token's identity until its expiry; it is dropped early once the
    /// key that verified it (named by its fingerprint, see `jwks::Key`) leaves the JWKS.
    pub fn insert_bearer(
        &self,
        key: CacheKey,
        identity: Arc<Identity>,
        lifetime: Duration,
        signing_key: &Arc<str>,
    ) {
        let now = self.millis(self.clock.now());
        let exp = now.saturating_add(millis(lifetime.min(MAX_LIFETIME)));
        self.put(
            key,
            Entry {
                identity,
                refresh_at: exp,
                soft_expiry: exp,
                hard_expiry: exp,
                kid: Some(signing_key.clone()),
                refreshable: false,
                last_used: AtomicU64::new(now),
                refreshing: AtomicBool::new(false),
                refresh_not_before: AtomicU64::new(0),
            },
        );
    }

    fn put(&self, key: CacheKey, entry: Entry) {
        if entry.hard_expiry <= self.millis(self.clock.now()) {
            return;
        }
        if self.map.len() >= self.settings.max_entries && !self.map.contains_key(&key) {
            self.make_room();
        }
        self.map.insert(key, Box::new(entry));
    }

    /// The provider refused this credential: forget any identity for it, and remember the
    /// refusal for `negative_ttl`.
    pub fn refuse(&self, key: CacheKey) {
        self.map.remove(&key);
        if self.settings.negative_ttl.is_zero() {
            return;
        }
        let now = self.clock.now();
        let _insert = self
            .negative_insert
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.negative.len() >= self.settings.max_negative_entries {
            self.negative.retain(|_, until| *until > now);
            if self.negative.len() >= self.settings.max_negative_entries {
                // Full of live refusals: this one costs a provider call next time, which the
                // exchange limits bound.
                return;
            }
        }
        let until = now
            .checked_add(self.settings.negative_ttl.min(MAX_LIFETIME))
            .unwrap_or(now);
        self.negative.insert(key, until);
    }

    pub fn remove(&self, key: &CacheKey) {
        self.map.remove(key);
    }

    /// A background refresh failed for a reason other than refusal: keep serving the entry, and
    /// let a later hit try again after a pause.
    pub fn refresh_failed(&self, key: &CacheKey) {
        if let Some(e) = self.map.get(key) {
            let next = self
                .millis(self.clock.now())
                .saturating_add(millis(REFRESH_RETRY));
            e.refresh_not_before.store(next, Relaxed);
            e.refreshing.store(false, Relaxed);
        }
    }

    /// Drops every expired identity and refusal; run periodically.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let now_ms = self.millis(now);
        self.map.retain(|_, e| e.hard_expiry > now_ms);
        self.negative.retain(|_, until| *until > now);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn negative_len(&self) -> usize {
        self.negative.len()
    }

    /// Sweeps expired entries; if that frees too little, evicts the least recently used tenth.
    fn make_room(&self) {
        let now = self.millis(self.clock.now());
        let before = self.map.len();
        self.map.retain(|_, e| e.hard_expiry > now);
        if self.map.len() >= self.settings.max_entries {
            let mut by_use: Vec<(u64, CacheKey)> = self
                .map
                .iter()
                .map(|e| (e.value().last_used.load(Relaxed), *e.key()))
                .collect();
            // Other threads may have emptied the map meanwhile (`clamp` needs 1 <= len).
            if !by_use.is_empty() {
                let evict = (self.settings.max_entries / 10).clamp(1, by_use.len());
                by_use.select_nth_unstable_by_key(evict - 1, |(used, _)| *used);
                for (_, key) in by_use.into_iter().take(evict) {
                    self.map.remove(&key);
                }
            }
        }
        let dropped = before.saturating_sub(self.map.len()) as u64;
        self.stats.evictions.fetch_add(dropped, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn identity(id: &str) -> Arc<Identity> {
        Arc::new(Identity {
            headers: Box::new([("x-user-id".into(), id.into())]),
            remove: Arc::new([]),
            client_id: id.into(),
            scopes: Box::new([]),
            access_token: None,
        })
    }

    fn settings() -> CacheSettings {
        CacheSettings {
            max_entries: 100,
            max_negative_entries: 10,
            refresh_ahead: 0.8,
            expiry_margin: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
            max_credential_age: None,
        }
    }

    /// A cache on a fake clock, which the test moves.
    fn cache(s: CacheSettings) -> (TokenCache, Arc<FakeClock>) {
        let clock = FakeClock::new();
        let c = TokenCache::with_clock(s, Arc::new(Stats::default()), clock.clone());
        (c, clock)
    }

    fn alive(_: &str) -> bool {
        true
    }

    fn state(c: &TokenCache, k: &CacheKey) -> &'static str {
        match c.lookup(k, alive) {
            Lookup::Fresh(_) => "fresh",
            Lookup::RefreshDue(_) => "refresh",
            Lookup::Stale(_) => "stale",
            Lookup::Refused => "refused",
            Lookup::Miss => "miss",
        }
    }

    #[test]
    fn keys_separate_every_part() {
        let d = KeyDeriver::default();
        let a = d.derive(&[b"p", b"id", b"secret"]);
        assert_eq!(a, d.derive(&[b"p", b"id", b"secret"]));
        assert_ne!(a, d.derive(&[b"p", b"ids", b"ecret"]));
        assert_ne!(a, d.derive(&[b"p", b"id", b"secret", b""]));
        // Another process (another random key) derives another key.
        assert_ne!(a, KeyDeriver::default().derive(&[b"p", b"id", b"secret"]));
    }

    /// An entry's life: fresh, refresh due once (for one caller), stale in the margin, gone at exp.
    #[test]
    fn entry_lifecycle() {
        let (c, clock) = cache(settings());
        let k = KeyDeriver::default().derive(&[b"k"]);
        c.insert(k, identity("u"), Duration::from_secs(3600));
        assert_eq!(state(&c, &k), "fresh");
        clock.advance(Duration::from_secs(2831));
        assert_eq!(state(&c, &k), "fresh");
        clock.advance(Duration::from_secs(1)); // 0.8 of the usable 3540 s
        assert_eq!(state(&c, &k), "refresh");
        assert_eq!(state(&c, &k), "fresh", "only one caller starts the refresh");
        c.refresh_failed(&k);
        assert_eq!(
            state(&c, &k),
            "fresh",
            "a failed refresh pauses before the next try"
        );
        clock.advance(REFRESH_RETRY);
        assert_eq!(state(&c, &k), "refresh");
        clock.advance(Duration::from_secs(3540 - 2837)); // exp - margin
        assert_eq!(state(&c, &k), "stale");
        clock.advance(Duration::from_secs(60)); // exp
        assert_eq!(state(&c, &k), "miss");
        assert!(c.is_empty());
    }

    #[test]
    fn stale_if_error_grace_and_credential_age() {
        let mut s = settings();
        s.stale_if_error = Duration::from_secs(300);
        s.max_credential_age = Some(Duration::from_secs(600));
        let (c, clock) = cache(s);
        let k = KeyDeriver::default().derive(&[b"k"]);
        c.insert(k, identity("u"), Duration::from_secs(3600));
        clock.advance(Duration::from_secs(479));
        assert_eq!(state(&c, &k), "fresh");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            state(&c, &k),
            "refresh",
            "refreshed ahead of the credential age"
        );
        clock.advance(Duration::from_secs(120));
        assert_eq!(
            state(&c, &k),
            "stale",
            "max_credential_age forces a re-exchange"
        );
        clock.advance(Duration::from_secs(3000 + 299));
        assert_eq!(state(&c, &k), "stale", "within the stale_if_error grace");
        clock.advance(Duration::from_secs(1));
        assert_eq!(state(&c, &k), "miss", "never past the grace");
    }

    #[test]
    fn short_lifetimes_keep_a_usable_window() {
        let (c, clock) = cache(settings());
        let k = KeyDeriver::default().derive(&[b"k"]);
        // 60 s tokens with a 60 s margin: the margin shrinks to a quarter of the lifetime.
        c.insert(k, identity("u"), Duration::from_secs(60));
        assert_eq!(state(&c, &k), "fresh");
        clock.advance(Duration::from_secs(36));
        assert_eq!(state(&c, &k), "refresh");
        clock.advance(Duration::from_secs(9));
        assert_eq!(state(&c, &k), "stale");
    }

    #[test]
    fn refusals_are_remembered_for_the_negative_ttl_and_bounded() {
        let (c, clock) = cache(settings());
        let d = KeyDeriver::default();
        let k = d.derive(&[b"wrong"]);
        c.refuse(k);
        assert_eq!(state(&c, &k), "refused");
        clock.advance(Duration::from_secs(30));
        assert_eq!(state(&c, &k), "miss");
        for i in 0..100u32 {
            c.refuse(d.derive(&[&i.to_be_bytes()]));
        }
        assert_eq!(c.negative_len(), 10);
    }

    #[test]
    fn eviction_keeps_hot_entries() {
        let (c, clock) = cache(settings());
        let d = KeyDeriver::default();
        let hot = d.derive(&[b"hot"]);
        c.insert(hot, identity("hot"), Duration::from_secs(3600));
        for i in 0..1000u32 {
            clock.advance(Duration::from_millis(10));
            c.insert(
                d.derive(&[&i.to_be_bytes()]),
                identity("cold"),
                Duration::from_secs(3600),
            );
            assert_eq!(
                state(&c, &hot),
                "fresh",
                "the hot entry survives insert {i}"
            );
            assert!(c.len() <= 100);
        }
        assert!(c.stats.snapshot().evictions >= 900);
    }

    #[test]
    fn bearer_entries_die_with_their_key() {
        let (c, clock) = cache(settings());
        let k = KeyDeriver::default().derive(&[b"bearer"]);
        c.insert_bearer(
            k,
            identity("u"),
            Duration::from_secs(600),
            &Arc::from("kid-1"),
        );
        assert!(matches!(
            c.lookup(&k, |kid| kid == "kid-1"),
            Lookup::Fresh(_)
        ));
        assert!(matches!(c.lookup(&k, |kid| kid == "kid-2"), Lookup::Miss));
        assert!(matches!(c.lookup(&k, |_| true), Lookup::Miss), "removed");
        c.insert_bearer(
            k,
            identity("u"),
            Duration::from_secs(600),
            &Arc::from("kid-1"),
        );
        clock.advance(Duration::from_secs(600));
        assert!(matches!(c.lookup(&k, |_| true), Lookup::Miss));
    }

    /// Lifetimes and settings at their extremes never panic: the entry is cached for at most
    /// `MAX_LIFETIME` (a token claiming `exp` near `u64::MAX` is not cached for ever).
    #[test]
    fn extreme_lifetimes_and_settings_never_panic() {
        let mut s = settings();
        s.stale_if_error = Duration::MAX;
        s.max_credential_age = Some(Duration::MAX);
        s.negative_ttl = Duration::MAX;
        s.expiry_margin = Duration::MAX;
        let (c, clock) = cache(s);
        let d = KeyDeriver::default();
        for (i, lifetime) in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(i64::MAX as u64),
            Duration::from_secs(u64::MAX / 1000 + 1),
            Duration::ZERO,
        ]
        .into_iter()
        .enumerate()
        {
            let k = d.derive(&[b"client", &[i as u8]]);
            c.insert(k, identity("u"), lifetime);
            let b = d.derive(&[b"bearer", &[i as u8]]);
            c.insert_bearer(b, identity("u"), lifetime, &Arc::from("kid"));
            c.refuse(d.derive(&[b"refused", &[i as u8]]));
            c.refresh_failed(&k);
        }
        assert_eq!(state(&c, &d.derive(&[b"client", &[0]])), "fresh");
        assert_eq!(state(&c, &d.derive(&[b"bearer", &[0]])), "fresh");
        clock.advance(MAX_LIFETIME);
        c.sweep();
        for i in 0..5u8 {
            assert_eq!(state(&c, &d.derive(&[b"bearer", &[i]])), "miss");
            // Within the stale grace (itself clamped), never fresh again.
            assert_ne!(state(&c, &d.derive(&[b"client", &[i]])), "fresh");
        }
        clock.advance(MAX_LIFETIME);
        for i in 0..5u8 {
            assert_eq!(state(&c, &d.derive(&[b"client", &[i]])), "miss");
        }
    }

    /// A clamped lifetime keeps the usual shape: refresh, then stale, then gone at the clamp.
    #[test]
    fn a_huge_lifetime_is_cached_for_at_most_the_ceiling() {
        let (c, clock) = cache(settings());
        let k = KeyDeriver::default().derive(&[b"k"]);
        c.insert(k, identity("u"), Duration::from_secs(u64::MAX));
        clock.advance(MAX_LIFETIME - Duration::from_secs(61));
        assert_eq!(state(&c, &k), "refresh");
        clock.advance(Duration::from_secs(60));
        assert_eq!(state(&c, &k), "stale");
        clock.advance(Duration::from_secs(1));
        assert_eq!(state(&c, &k), "miss");
    }
}
