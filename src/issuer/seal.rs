//! Signing keys sealed at rest under a key derived from the project secret.
//!
//! A copy of the issuer database alone must not let anyone mint tokens, so
//! private keys are never stored in clear. The sealing key is
//! HKDF-SHA-256(ikm = project secret, salt = a random per-database salt,
//! info = [`SEAL_INFO`]); each key row is XChaCha20-Poly1305 under a fresh
//! random 192-bit nonce, with the row's `kid` bound as associated data so a
//! sealed key cannot be moved to another row.
//!
//! A sealed check value stored beside the salt tells "the project secret
//! changed" (the check does not open) apart from "this row was altered" (the
//! check opens, a key row does not), so each gets its own error.
//!
//! HKDF is not a password hash: the project secret must be a random string
//! (the demo generates 32 random bytes), not something a person can remember.

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keys::Pkcs8Der;
use super::secrets::ProjectSecret;

/// Length of the per-database HKDF salt.
pub const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;
/// First byte of every sealed value, so a later format can be told apart.
const FORMAT_V1: u8 = 1;

/// HKDF `info`: what the derived key is for. Changing it orphans every
/// sealed key, so it is part of the storage format.
const SEAL_INFO: &[u8] = b"m2m-authz issuer signing-key seal v1";
/// Associated data of the check value.
const CHECK_AAD: &[u8] = b"m2m-authz issuer project-secret check v1";
const CHECK_PLAINTEXT: &[u8] = b"m2m-authz issuer: the project secret opens this database";
/// Associated data of a key row: this prefix, then the row's kid.
const KEY_AAD_PREFIX: &[u8] = b"m2m-authz issuer signing key v1\0";

/// A fresh random salt for a new database.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// The key that seals and opens signing keys; wiped from memory on drop,
/// never printed.
pub struct SealingKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    pub fn derive(secret: &ProjectSecret, salt: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        let Ok(()) = Hkdf::<Sha256>::new(Some(salt), secret.expose().as_bytes())
            .expand(SEAL_INFO, key.as_mut_slice())
        else {
            unreachable!("32 bytes is a valid HKDF-SHA-256 output length")
        };
        Self(key)
    }

    fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()));
        let Ok(sealed) = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        else {
            unreachable!("XChaCha20-Poly1305 seals any message that fits in memory")
        };
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// `None` when the value was not sealed by this key with this `aad`.
    fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (&format, rest) = sealed.split_first()?;
        if format != FORMAT_V1 || rest.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()));
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
            .map(Zeroizing::new)
    }

    /// The value stored beside the salt; see [`SealingKey::opens_check`].
    pub fn check_value(&self) -> Vec<u8> {
        self.seal(CHECK_PLAINTEXT, CHECK_AAD)
    }

    /// Whether `check` was made by a key derived from the same secret and
    /// salt.
    pub fn opens_check(&self, check: &[u8]) -> bool {
        self.open(check, CHECK_AAD)
            .is_some_and(|plain| plain.as_slice() == CHECK_PLAINTEXT)
    }

    pub fn seal_key(&self, kid: &str, key: &Pkcs8Der) -> Vec<u8> {
        self.seal(key.as_bytes(), &key_aad(kid))
    }

    /// `None` when the sealed bytes do not belong to `kid` under this key.
    pub fn open_key(&self, kid: &str, sealed: &[u8]) -> Option<Pkcs8Der> {
        self.open(sealed, &key_aad(kid))
            .map(|plain| Pkcs8Der::new(plain.to_vec()))
    }
}

fn key_aad(kid: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(KEY_AAD_PREFIX.len() + kid.len());
    aad.extend_from_slice(KEY_AAD_PREFIX);
    aad.extend_from_slice(kid.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str, salt: &[u8]) -> SealingKey {
        SealingKey::derive(&ProjectSecret::new(secret), salt)
    }

    #[test]
    fn sealed_keys_open_only_for_their_kid_secret_and_salt() {
        let salt = random_salt();
        let k = key("project-secret-0123456789", &salt);
        let der = Pkcs8Der::new(b"private key bytes, not really DER".to_vec());
        let sealed = k.seal_key("kid-1", &der);
        assert!(
            !sealed
                .windows(der.as_bytes().len())
                .any(|w| w == der.as_bytes()),
            "the plaintext must not appear in the sealed bytes"
        );
        assert_eq!(k.open_key("kid-1", &sealed), Some(der.clone()));
        // Moved to another row, under another secret, under another salt.
        assert_eq!(k.open_key("kid-2", &sealed), None);
        assert_eq!(
            key("project-secret-9876543210", &salt).open_key("kid-1", &sealed),
            None
        );
        assert_eq!(
            key("project-secret-0123456789", &random_salt()).open_key("kid-1", &sealed),
            None
        );
        // Each seal has its own nonce.
        assert_ne!(k.seal_key("kid-1", &der), sealed);
        // Truncated, flipped or differently versioned bytes do not open.
        assert_eq!(k.open_key("kid-1", &sealed[..sealed.len() - 1]), None);
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert_eq!(k.open_key("kid-1", &flipped), None);
        let mut other_format = sealed;
        other_format[0] = 2;
        assert_eq!(k.open_key("kid-1", &other_format), None);
        assert_eq!(k.open_key("kid-1", &[]), None);
    }

    #[test]
    fn check_value_tells_a_changed_secret() {
        let salt = random_salt();
        let check = key("project-secret-0123456789", &salt).check_value();
        assert!(key("project-secret-0123456789", &salt).opens_check(&check));
        assert!(!key("project-secret-0123456780", &salt).opens_check(&check));
        // A key row is not a check value, even under the same key.
        let k = key("project-secret-0123456789", &salt);
        assert!(!k.opens_check(&k.seal_key("kid", &Pkcs8Der::new(CHECK_PLAINTEXT.to_vec()))));
    }

    #[test]
    fn debug_is_redacted() {
        let k = key("project-secret-0123456789", &[0u8; SALT_LEN]);
        assert_eq!(format!("{k:?}"), "SealingKey(<redacted>)");
    }
}
