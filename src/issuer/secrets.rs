//! Random identifiers, client secrets and their hashes.
//!
//! Client secrets carry 256 bits from the CSPRNG, so a single unsalted SHA-256
//! is enough to store them: there is nothing to brute-force that would be
//! cheaper than guessing the secret itself, and a slow password hash would only
//! make every token request slower. Comparisons go through `subtle` so a
//! mismatch takes the same time wherever it happens.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConstantTimeEq as _};

/// Prefix of generated client secrets; "test" mirrors Stytch's test
/// environment so nobody mistakes a local secret for a live one.
const SECRET_PREFIX: &str = "secret-test-";
const CLIENT_ID_PREFIX: &str = "m2m-client-test-";
const SECRET_RANDOM_BYTES: usize = 32;

/// A freshly minted client secret. It exists in clear only between creation
/// and the one response that shows it, so `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A secret brought from elsewhere (`clients.create` with
    /// `client_secret`, as in a migration). Not yet checked: creating a
    /// client with it applies [`check_imported_secret`].
    pub fn imported(secret: String) -> Self {
        Self(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }

    /// The tail shown in listings so people can tell secrets apart.
    pub fn last_four(&self) -> String {
        last_four(&self.0)
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// The project secret that guards the management API. Kept in its own type so
/// configuration dumps and error messages cannot leak it by accident.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ProjectSecret(String);

impl ProjectSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ProjectSecret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for ProjectSecret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for ProjectSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProjectSecret(<redacted>)")
    }
}

/// SHA-256 of a secret, the only form in which secrets are stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality; returns a `Choice` so callers can combine
    /// several comparisons without branching on the first result.
    pub fn ct_matches(&self, other: &SecretHash) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

/// Compares two strings without leaking where they differ or (because both
/// sides are hashed first) how long the expected one is.
pub fn ct_str_eq(a: &str, b: &str) -> bool {
    SecretHash::of(a).ct_matches(&SecretHash::of(b)).into()
}

/// Stytch's documented minimum length for an imported client secret.
pub const MIN_IMPORTED_SECRET_LEN: usize = 8;
/// Bounds the work of hashing and the size of a row.
pub const MAX_IMPORTED_SECRET_LEN: usize = 256;
/// Stytch requires imported secrets to "pass entropy requirements" without
/// saying which. Secrets are stored as one unsalted SHA-256 (see the module
/// comment), so an imported one must itself be hard to guess: at least this
/// many bits by [`estimated_bits`].
pub const MIN_IMPORTED_SECRET_BITS: f64 = 64.0;

/// Why an imported client secret is refused; the message names the rule
/// broken, never the secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecretRefusal {
    #[error("must be {MIN_IMPORTED_SECRET_LEN} to {MAX_IMPORTED_SECRET_LEN} characters")]
    Length,
    #[error("may contain only visible ASCII characters (no spaces)")]
    Characters,
    #[error(
        "is too easy to guess (about {bits:.0} bits; at least {MIN_IMPORTED_SECRET_BITS:.0} \
         needed: use a longer, random secret)"
    )]
    Weak { bits: f64 },
}

/// The rules for an imported client secret: Stytch's documented minimum of
/// 8 characters, at most 256, visible ASCII only (it travels in Basic
/// headers and form bodies, where spaces and non-ASCII are easy to mangle),
/// and an estimated strength of at least 64 bits.
pub fn check_imported_secret(secret: &str) -> Result<(), SecretRefusal> {
    let len = secret.chars().count();
    if !(MIN_IMPORTED_SECRET_LEN..=MAX_IMPORTED_SECRET_LEN).contains(&len) {
        return Err(SecretRefusal::Length);
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SecretRefusal::Characters);
    }
    let bits = estimated_bits(secret);
    if bits < MIN_IMPORTED_SECRET_BITS {
        return Err(SecretRefusal::Weak { bits });
    }
    Ok(())
}

/// A deliberately conservative strength estimate for an ASCII string:
/// log2 of the alphabet its character classes span (lower, upper, digit,
/// symbol), times the number of characters that are neither a repeat of nor
/// one step from the one before (so `aaaa…`, `abcd…` and `abab…` count as
/// one character each). Not zxcvbn: it knows no dictionary, it only keeps
/// the obviously weak out.
pub fn estimated_bits(secret: &str) -> f64 {
    let bytes = secret.as_bytes();
    let class_size = |f: fn(&u8) -> bool, size: u32| {
        if bytes.iter().any(f) { size } else { 0 }
    };
    let pool = class_size(u8::is_ascii_lowercase, 26)
        + class_size(u8::is_ascii_uppercase, 26)
        + class_size(u8::is_ascii_digit, 10)
        + class_size(u8::is_ascii_punctuation, 32);
    if pool == 0 {
        return 0.0;
    }
    let mut counted = 0u32;
    let mut previous: Option<u8> = None;
    for &b in bytes {
        let predictable = previous.is_some_and(|p| p.abs_diff(b) <= 1);
        if !predictable {
            counted += 1;
        }
        previous = Some(b);
    }
    f64::from(counted) * f64::from(pool).log2()
}

pub fn last_four(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// `m2m-client-test-<uuid>`, the shape Stytch uses for test clients.
pub fn generate_client_id() -> String {
    format!("{CLIENT_ID_PREFIX}{}", random_uuid())
}

/// Key ids follow Stytch's `jwk-test-<uuid>` shape.
pub fn generate_kid() -> String {
    format!("jwk-test-{}", random_uuid())
}

pub fn generate_request_id() -> String {
    format!("request-id-test-{}", random_uuid())
}

/// A random (version 4 layout) UUID string; only uniqueness matters here.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_secrets_follow_the_rules() {
        // Generated secrets, Auth0-style 64-character secrets and a short but
        // mixed one pass.
        assert!(check_imported_secret(ClientSecret::generate().expose()).is_ok());
        let auth0 = "aB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xYz_-aB3dE5fG7hJ9kL1mN2pQ4rS6tU8v";
        assert!(check_imported_secret(auth0).is_ok());
        assert!(check_imported_secret("x7#Qm2!vR9&k").is_ok());
        for weak in [
            "",
            "Ab1!xyz",                          // 7 characters
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // one repeated character
            "abcdefghijklmnopqrstuvwxyz",       // a run
            "abababababababababababababababab", // steps of one
            "passwordpass",                     // 12 lowercase letters: ~56 bits
            "12345678901234567890",             // digits in sequence
        ] {
            assert!(check_imported_secret(weak).is_err(), "{weak:?} accepted");
        }
        let too_long = "aZ7$".repeat(65);
        assert_eq!(check_imported_secret(&too_long), Err(SecretRefusal::Length));
        assert_eq!(check_imported_secret("Ab1!xyz"), Err(SecretRefusal::Length));
        for odd in ["Xk9#mQ2vR7 Lp4!", "Xk9#mQ2vR7\tLp4!", "Xk9#mQ2vR7éLp4!"] {
            assert_eq!(
                check_imported_secret(odd),
                Err(SecretRefusal::Characters),
                "{odd:?}"
            );
        }
        // The error names the rule, never the secret.
        let err = check_imported_secret("passwordpass").unwrap_err();
        assert!(matches!(err, SecretRefusal::Weak { .. }), "{err:?}");
        assert!(!err.to_string().contains("passwordpass"), "{err}");
    }

    #[test]
    fn secrets_are_long_prefixed_and_distinct() {
        let a = ClientSecret::generate();
        let b = ClientSecret::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(SECRET_PREFIX));
        let random = &a.expose()[SECRET_PREFIX.len()..];
        // 32 bytes -> 43 unpadded base64url characters.
        assert_eq!(random.len(), 43);
        assert!(
            random
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn hash_matches_only_the_same_secret() {
        let s = ClientSecret::generate();
        let other = ClientSecret::generate();
        assert!(bool::from(s.hash().ct_matches(&SecretHash::of(s.expose()))));
        assert!(!bool::from(s.hash().ct_matches(&other.hash())));
        assert_eq!(
            SecretHash::from_slice(s.hash().as_bytes()),
            Some(s.hash()),
            "hash survives a round trip through the database bytes"
        );
        assert_eq!(SecretHash::from_slice(&[0u8; 31]), None);
    }

    #[test]
    fn ct_str_eq_compares_exactly() {
        assert!(ct_str_eq("abc", "abc"));
        assert!(!ct_str_eq("abc", "abd"));
        assert!(!ct_str_eq("abc", "abcd"));
        assert!(!ct_str_eq("", "a"));
    }

    #[test]
    fn last_four_handles_short_and_unicode_input() {
        assert_eq!(last_four("secret-test-abcdef"), "cdef");
        assert_eq!(last_four("ab"), "ab");
        assert_eq!(last_four("ééééé"), "éééé");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = ClientSecret::generate();
        assert!(!format!("{s:?}").contains(s.expose()));
        let p = ProjectSecret::new("super-secret-value");
        assert!(!format!("{p:?}").contains("super-secret-value"));
    }

    #[test]
    fn ids_have_expected_shapes() {
        let id = generate_client_id();
        assert!(id.starts_with(CLIENT_ID_PREFIX));
        assert_eq!(id.len(), CLIENT_ID_PREFIX.len() + 36);
        assert_ne!(generate_client_id(), id);
        assert!(generate_kid().starts_with("jwk-test-"));
        assert!(generate_request_id().starts_with("request-id-test-"));
    }
}
