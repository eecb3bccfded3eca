//! JWKS documents (`jwks::parse`), with every supported algorithm pinned so each key type is
//! built; then key lookups by `kid`.
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use m2m_authz::jwks;

const PINNED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    let pinned: &[Algorithm] = match data.first() {
        Some(b) if b % 4 == 0 => &PINNED[..1],
        _ => &PINNED,
    };
    if let Ok(set) = jwks::parse(data, pinned, tokio::time::Instant::now()) {
        assert!(!set.is_empty());
        for kid in ["rsa-a", "ec-p256", "ed25519", "", "a"] {
            if let Some(key) = set.find(Some(kid)) {
                assert_eq!(key.kid.as_deref(), Some(kid));
                assert!(!key.algorithms.is_empty());
                assert!(key.algorithms.iter().all(|a| pinned.contains(a)));
            }
        }
        if let Some(key) = set.find(None) {
            assert_eq!(set.len(), 1);
            assert!(!key.algorithms.is_empty());
        }
    }
});
