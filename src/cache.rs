//! Verified identities, keyed by a keyed hash of the credential: the raw secret is never stored,
//! and a memory dump of the cache cannot be replayed as credentials.
//!
//! Bounded in size (`cache.max_entries`; when full, expired entries are swept first, then the
//! entries closest to expiry are evicted) and in time (an entry lives until its token's `exp`
//! minus `cache.expiry_margin`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

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
    key: [u8; 32],
}

impl Default for KeyDeriver {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        KeyDeriver { key }
    }
}

impl KeyDeriver {
    /// Each part is length-prefixed, so no two different tuples hash the same input.
    pub fn derive(&self, parts: &[&[u8]]) -> CacheKey {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        CacheKey(mac.finalize().into_bytes().into())
    }
}

/// What a check needs to answer for a cached credential.
#[derive(Debug)]
pub struct Identity {
    /// Identity headers to set upstream, already sanitized.
    pub headers: Vec<(String, String)>,
    /// The client the token was issued to (`sub`), for logs.
    pub client_id: String,
}

struct Entry {
    identity: Arc<Identity>,
    expires_at: Instant,
}

pub struct TokenCache {
    map: DashMap<CacheKey, Entry>,
    max_entries: usize,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> Self {
        TokenCache {
            map: DashMap::new(),
            max_entries,
        }
    }

    /// A live entry, or `None`. An expired entry found here is removed.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Identity>> {
        let now = Instant::now();
        if let Some(e) = self.map.get(key) {
            if e.expires_at > now {
                return Some(e.identity.clone());
            }
        } else {
            return None;
        }
        self.map.remove_if(key, |_, e| e.expires_at <= now);
        None
    }

    pub fn insert(&self, key: CacheKey, identity: Arc<Identity>, expires_at: Instant) {
        if expires_at <= Instant::now() {
            return;
        }
        if self.map.len() >= self.max_entries && !self.map.contains_key(&key) {
            self.make_room();
        }
        self.map.insert(
            key,
            Entry {
                identity,
                expires_at,
            },
        );
    }

    pub fn remove(&self, key: &CacheKey) {
        self.map.remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sweeps expired entries; if that frees too little, evicts the tenth of entries that expire
    /// soonest (they would need an exchange soonest anyway).
    fn make_room(&self) {
        let now = Instant::now();
        self.map.retain(|_, e| e.expires_at > now);
        if self.map.len() < self.max_entries {
            return;
        }
        let mut by_expiry: Vec<(Instant, CacheKey)> = self
            .map
            .iter()
            .map(|e| (e.value().expires_at, *e.key()))
            .collect();
        let evict = (self.max_entries / 10).max(1);
        let nth = evict.min(by_expiry.len() - 1);
        by_expiry.select_nth_unstable_by_key(nth, |(t, _)| *t);
        for (_, key) in by_expiry.into_iter().take(evict) {
            self.map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn identity(id: &str) -> Arc<Identity> {
        Arc::new(Identity {
            headers: vec![("x-user-id".into(), id.into())],
            client_id: id.into(),
        })
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

    #[tokio::test(start_paused = true)]
    async fn entries_expire() {
        let cache = TokenCache::new(10);
        let key = KeyDeriver::default().derive(&[b"k"]);
        cache.insert(
            key,
            identity("u1"),
            Instant::now() + Duration::from_secs(60),
        );
        assert!(cache.get(&key).is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(cache.get(&key).is_none());
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stays_within_bound() {
        let cache = TokenCache::new(100);
        let d = KeyDeriver::default();
        for i in 0..1000u32 {
            let at = Instant::now() + Duration::from_secs(60 + u64::from(i));
            cache.insert(d.derive(&[&i.to_be_bytes()]), identity("u"), at);
            assert!(cache.len() <= 100);
        }
        // The newest (latest-expiring) entry survived.
        assert!(cache.get(&d.derive(&[&999u32.to_be_bytes()])).is_some());
    }
}
