//! RS256 signing keys: generation, loading from the database, JWKS entries.
//!
//! Keys are handled as PKCS#8 DER because that is what aws-lc-rs produces and
//! reads; jsonwebtoken is handed the same bytes as a PEM document. The
//! database never holds them in clear: [`super::seal`] seals them under a key
//! derived from the project secret, and the bytes in memory are wiped on drop.

use std::fmt;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use thiserror::Error;
use zeroize::Zeroizing;

use super::secrets;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("generating an RSA-2048 signing key failed")]
    Generate,
    #[error("stored signing key {kid} is not a usable RSA private key")]
    Unusable { kid: String },
    #[error("signing a token with key {kid} failed: {source}")]
    Sign {
        kid: String,
        source: jsonwebtoken::errors::Error,
    },
}

/// Private key bytes; `Debug` is redacted so they never reach a log, and the
/// bytes are zeroed when dropped.
#[derive(PartialEq, Eq)]
pub struct Pkcs8Der(Zeroizing<Vec<u8>>);

impl Clone for Pkcs8Der {
    fn clone(&self) -> Self {
        Self::new(self.0.to_vec())
    }
}

impl Pkcs8Der {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Pkcs8Der {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs8Der(<redacted>)")
    }
}

/// A new key, not yet stored.
#[derive(Debug)]
pub struct GeneratedKey {
    pub kid: String,
    pub pkcs8: Pkcs8Der,
}

pub fn generate() -> Result<GeneratedKey, KeyError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
    let der = pair.as_der().map_err(|_| KeyError::Generate)?;
    Ok(GeneratedKey {
        kid: secrets::generate_kid(),
        pkcs8: Pkcs8Der::new(der.as_ref().to_vec()),
    })
}

/// One JWKS entry, in the field order Stytch serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    pub kty: &'static str,
    #[serde(rename = "use")]
    pub key_use: &'static str,
    pub alg: &'static str,
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// A key ready to sign, parsed once and cached by kid.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: PublicJwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn from_pkcs8(kid: &str, pkcs8: &Pkcs8Der) -> Result<Self, KeyError> {
        let unusable = || KeyError::Unusable {
            kid: kid.to_owned(),
        };
        let pair = KeyPair::from_pkcs8(pkcs8.as_bytes()).map_err(|_| unusable())?;
        let public = pair.public_key();
        let jwk = PublicJwk {
            kty: "RSA",
            key_use: "sig",
            alg: "RS256",
            kid: kid.to_owned(),
            n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        };
        let encoding =
            EncodingKey::from_rsa_pem(pkcs8_pem(pkcs8).as_bytes()).map_err(|_| unusable())?;
        Ok(Self {
            kid: kid.to_owned(),
            encoding,
            jwk,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    /// Signs with the header Stytch uses: `alg: RS256`, `typ: JWT`, `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|source| KeyError::Sign {
            kid: self.kid.clone(),
            source,
        })
    }
}

/// The PEM text holds the private key too, so it is wiped like the DER.
fn pkcs8_pem(der: &Pkcs8Der) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der.as_bytes()));
    let mut pem = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn generated_key_signs_tokens_that_verify_with_its_jwk() {
        let generated = generate().unwrap();
        let key = SigningKey::from_pkcs8(&generated.kid, &generated.pkcs8).unwrap();
        assert_eq!(key.jwk().e, "AQAB");
        // 2048-bit modulus -> 256 bytes -> 342 base64url characters.
        assert_eq!(key.jwk().n.len(), 342);

        let token = key
            .sign(&serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}))
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(generated.kid.as_str()));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.alg, Algorithm::RS256);

        let decoding = DecodingKey::from_rsa_components(&key.jwk().n, &key.jwk().e).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "x");
    }

    #[test]
    fn garbage_is_rejected_and_never_printed() {
        let bad = Pkcs8Der::new(vec![1, 2, 3]);
        assert!(matches!(
            SigningKey::from_pkcs8("k", &bad),
            Err(KeyError::Unusable { .. })
        ));
        assert_eq!(format!("{bad:?}"), "Pkcs8Der(<redacted>)");
    }
}
