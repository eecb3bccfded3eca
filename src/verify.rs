//! Verifying an access token against a key set (RFC 7519, with RFC 8725's rules): the algorithm
//! is pinned per key, never taken from the token alone; `iss`, `aud`, `exp`, `nbf` and `typ` are
//! checked per provider profile. Pure: no I/O, so the whole rule set is unit-tested.

use std::time::Duration;

use jsonwebtoken::{Validation, decode, decode_header, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::jwks::KeySet;

/// What a token must satisfy, from the provider's config.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub issuers: Vec<String>,
    /// Empty: `aud` is not checked (only for providers that issue no audience).
    pub audiences: Vec<String>,
    pub leeway: Duration,
    pub max_age: Option<Duration>,
    /// Required `typ` header, lower-case; `None` accepts any.
    pub token_type: Option<String>,
    pub max_bytes: usize,
}

/// The claims of a token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// `iat`, when present.
    pub iat: Option<u64>,
    /// The `kid` of the key that verified it.
    pub kid: Option<String>,
}

/// Why a token was refused; the variants say which rule, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is too long")]
    TooLong,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token's type is not accepted")]
    WrongType,
    #[error("the token names a critical header extension this verifier does not know")]
    UnknownCritical,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the token is older than the maximum token age")]
    TooOld,
}

pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &TokenRules,
    now: u64,
) -> Result<Verified, VerifyError> {
    if token.len() > rules.max_bytes {
        return Err(VerifyError::TooLong);
    }
    let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
    if let Some(want) = &rules.token_type {
        let got = header.typ.as_deref().map(|t| {
            let t = t.to_ascii_lowercase();
            // RFC 7515 §4.1.9: "application/" may be omitted.
            t.strip_prefix("application/")
                .map(str::to_owned)
                .unwrap_or(t)
        });
        if got.as_deref() != Some(want.as_str()) {
            return Err(VerifyError::WrongType);
        }
    }
    if header.crit.is_some() {
        return Err(VerifyError::UnknownCritical);
    }
    // `jku`, `x5u`, `x5c` and an embedded `jwk` are ignored: keys come only from the JWKS.
    let key = keys
        .find(header.kid.as_deref())
        .ok_or(VerifyError::UnknownKey)?;
    if !key.algorithms.contains(&header.alg) {
        return Err(VerifyError::AlgorithmNotAllowed);
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = rules.leeway.as_secs();
    validation.validate_nbf = true;
    validation.validate_exp = true;
    let mut required = vec!["exp", "iss"];
    validation.set_issuer(&rules.issuers);
    if rules.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rules.audiences);
        required.push("aud");
    }
    if rules.max_age.is_some() {
        required.push("iat");
    }
    validation.set_required_spec_claims(&required);
    let data =
        decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => VerifyError::BadSignature,
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
            ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
            ErrorKind::InvalidAudience => VerifyError::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                VerifyError::MissingClaim
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                VerifyError::AlgorithmNotAllowed
            }
            _ => VerifyError::Malformed,
        })?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(VerifyError::MissingClaim)?;
    let iat = claims.get("iat").and_then(Value::as_u64);
    if let Some(max_age) = rules.max_age {
        let iat = iat.ok_or(VerifyError::MissingClaim)?;
        if now.saturating_sub(iat) > max_age.as_secs() + rules.leeway.as_secs() {
            return Err(VerifyError::TooOld);
        }
    }
    Ok(Verified {
        claims,
        exp,
        iat,
        kid: header.kid,
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;
    use tokio::time::Instant;

    use super::*;
    use crate::jwks;

    const RSA_A: &str = include_str!("../tests/fixtures/rsa-a.pem");
    const RSA_B: &str = include_str!("../tests/fixtures/rsa-b.pem");
    const EC: &str = include_str!("../tests/fixtures/ec-p256.pem");
    const ED: &str = include_str!("../tests/fixtures/ed25519.pem");

    fn keyset(pinned: &[Algorithm]) -> KeySet {
        let doc = format!(
            r#"{{"keys":[{},{},{}]}}"#,
            include_str!("../tests/fixtures/rsa-a.jwk.json"),
            include_str!("../tests/fixtures/ec-p256.jwk.json"),
            include_str!("../tests/fixtures/ed25519.jwk.json"),
        );
        jwks::parse(doc.as_bytes(), pinned, Instant::now()).unwrap()
    }

    fn rules() -> TokenRules {
        TokenRules {
            issuers: vec!["stytch.com/p1".into()],
            audiences: vec!["p1".into()],
            leeway: Duration::from_secs(30),
            max_age: None,
            token_type: Some("jwt".into()),
            max_bytes: 8192,
        }
    }

    fn now() -> u64 {
        crate::provider::unix_now()
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "stytch.com/p1", "aud": ["p1"], "sub": "client-1", "user_id": "user-1",
               "iat": now(), "nbf": now(), "exp": now() + 3600, "scope": "read:orders"})
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        typ: Option<&str>,
        claims: &serde_json::Value,
    ) -> String {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(ED.as_bytes()),
            _ => EncodingKey::from_rsa_pem(RSA_A.as_bytes()),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        header.typ = typ.map(str::to_owned);
        encode(&header, claims, &key).unwrap()
    }

    fn with(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> serde_json::Value {
        let mut c = claims();
        f(c.as_object_mut().unwrap());
        c
    }

    #[test]
    fn accepts_each_pinned_algorithm() {
        let all = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
        let keys = keyset(&all);
        for (alg, kid) in [
            (Algorithm::RS256, "rsa-a"),
            (Algorithm::ES256, "ec-p256"),
            (Algorithm::EdDSA, "ed25519"),
        ] {
            let t = sign(alg, Some(kid), Some("JWT"), &claims());
            let v = verify(&t, &keys, &rules(), now()).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(v.claims["user_id"], "user-1");
        }
    }

    #[test]
    fn refuses_what_rfc_8725_forbids_and_what_the_profile_rejects() {
        let keys = keyset(&[Algorithm::RS256]);
        let good = |c: &serde_json::Value| sign(Algorithm::RS256, Some("rsa-a"), Some("JWT"), c);
        // HS256 "signed" with the RSA public key as the shared secret: the classic confusion.
        let hs = {
            let n = include_str!("../tests/fixtures/rsa-a.jwk.json");
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("rsa-a".into());
            encode(&h, &claims(), &EncodingKey::from_secret(n.as_bytes())).unwrap()
        };
        let none = {
            use base64::Engine;
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                b.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-a"}"#),
                b.encode(claims().to_string())
            )
        };
        let other_key = {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some("rsa-a".into());
            h.typ = Some("JWT".into());
            encode(
                &h,
                &claims(),
                &EncodingKey::from_rsa_pem(RSA_B.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        let cases: Vec<(&str, String, VerifyError)> = vec![
            ("alg none", none, VerifyError::Malformed),
            (
                "HS256 with public key",
                hs,
                VerifyError::AlgorithmNotAllowed,
            ),
            (
                "ES256 not pinned",
                sign(Algorithm::ES256, Some("ec-p256"), Some("JWT"), &claims()),
                VerifyError::UnknownKey,
            ),
            (
                "PS256 on an RS256 key",
                sign(Algorithm::PS256, Some("rsa-a"), Some("JWT"), &claims()),
                VerifyError::AlgorithmNotAllowed,
            ),
            (
                "unknown kid",
                sign(Algorithm::RS256, Some("nope"), Some("JWT"), &claims()),
                VerifyError::UnknownKey,
            ),
            (
                "signed by another key",
                other_key,
                VerifyError::BadSignature,
            ),
            (
                "wrong typ",
                sign(Algorithm::RS256, Some("rsa-a"), Some("at+jwt"), &claims()),
                VerifyError::WrongType,
            ),
            (
                "no typ",
                sign(Algorithm::RS256, Some("rsa-a"), None, &claims()),
                VerifyError::WrongType,
            ),
            (
                "expired",
                good(&with(|c| {
                    c.insert("exp".into(), json!(now() - 120));
                })),
                VerifyError::Expired,
            ),
            (
                "not yet valid",
                good(&with(|c| {
                    c.insert("nbf".into(), json!(now() + 120));
                })),
                VerifyError::NotYetValid,
            ),
            (
                "wrong iss",
                good(&with(|c| {
                    c.insert("iss".into(), json!("stytch.com/p2"));
                })),
                VerifyError::WrongIssuer,
            ),
            (
                "wrong aud",
                good(&with(|c| {
                    c.insert("aud".into(), json!(["p2"]));
                })),
                VerifyError::WrongAudience,
            ),
            (
                "no exp",
                good(&with(|c| {
                    c.remove("exp");
                })),
                VerifyError::MissingClaim,
            ),
            (
                "no iss",
                good(&with(|c| {
                    c.remove("iss");
                })),
                VerifyError::MissingClaim,
            ),
            (
                "no aud",
                good(&with(|c| {
                    c.remove("aud");
                })),
                VerifyError::MissingClaim,
            ),
            ("garbage", "not.a.jwt".into(), VerifyError::Malformed),
            ("too long", "a".repeat(9000), VerifyError::TooLong),
        ];
        for (name, token, want) in cases {
            assert_eq!(
                verify(&token, &keys, &rules(), now()).map(|_| ()),
                Err(want),
                "{name}"
            );
        }
    }

    #[test]
    fn leeway_and_max_age() {
        let keys = keyset(&[Algorithm::RS256]);
        let just_expired = sign(
            Algorithm::RS256,
            Some("rsa-a"),
            Some("JWT"),
            &with(|c| {
                c.insert("exp".into(), json!(now() - 10));
            }),
        );
        assert!(
            verify(&just_expired, &keys, &rules(), now()).is_ok(),
            "within leeway"
        );
        let old = sign(
            Algorithm::RS256,
            Some("rsa-a"),
            Some("JWT"),
            &with(|c| {
                c.insert("iat".into(), json!(now() - 600));
            }),
        );
        let mut strict = rules();
        strict.max_age = Some(Duration::from_secs(300));
        assert_eq!(
            verify(&old, &keys, &strict, now()).map(|_| ()),
            Err(VerifyError::TooOld)
        );
        assert!(verify(&old, &keys, &rules(), now()).is_ok());
        // `application/` prefix and letter case in `typ` are accepted (RFC 7515 §4.1.9).
        let t = sign(
            Algorithm::RS256,
            Some("rsa-a"),
            Some("application/JWT"),
            &claims(),
        );
        assert!(verify(&t, &keys, &rules(), now()).is_ok());
    }
}
