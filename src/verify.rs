//! Verifying an access token against a key set (RFC 7519, with RFC 8725's rules): the algorithm
//! is pinned per key, never taken from the token alone; `iss`, `aud`, `exp`, `nbf`, `iat` and
//! `typ` are checked per provider profile, the time rules against the caller's clock (the JWT
//! library is told not to read one). Pure: no I/O, so the whole rule set is unit-tested.
//!
//! One file (about 320 lines of code; the rest are unit tests, one per rule and attack).

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Validation, decode, decode_header, errors::ErrorKind};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::jwks::KeySet;

/// The latest NumericDate taken as a date: 9999-12-31T23:59:59Z. Anything later is not a
/// time a provider means, and refusing it keeps every later sum of dates and durations far
/// from overflow.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// The most keys tried for one token: providers publish one or two keys under a `kid` while they
/// rotate; more is a broken or hostile key set, and each try is a signature check.
pub const MAX_KEYS_PER_KID: usize = 4;

/// What a token must satisfy, from the provider's config.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// Never empty (config validation sees to it).
    pub issuers: Vec<String>,
    /// Empty: `aud` is not checked (only with `skip_audience_check`).
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
    /// `exp`, seconds since the epoch, at most `MAX_NUMERIC_DATE`.
    pub exp: u64,
    /// `iat`, when present; at most `MAX_NUMERIC_DATE`.
    pub iat: Option<u64>,
    /// The `kid` of the key that verified it.
    pub kid: Option<String>,
    /// The [`crate::jwks::Key::fingerprint`] of the key that verified it.
    pub key_fingerprint: std::sync::Arc<str>,
}

/// Why a token was refused; the variants say which rule, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is too long")]
    TooLong,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token repeats a member name in its header or claims")]
    DuplicateMember,
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
    #[error("the token's issue time is in the future")]
    IssuedInFuture,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("a registered claim of the token has the wrong type or range")]
    InvalidClaim,
    #[error("the token is older than the maximum token age")]
    TooOld,
    /// RFC 7662: the provider says the token is not active (unknown, revoked or expired).
    #[error("the provider reports the token inactive")]
    Inactive,
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
    reject_duplicate_members(token)?;
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
    // Bounded: a key set repeating one `kid` many times must not cost a signature check each.
    let candidates: Vec<_> = keys
        .candidates(header.kid.as_deref())
        .take(MAX_KEYS_PER_KID)
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::UnknownKey);
    }
    let mut validation = Validation::new(header.alg);
    // The time rules are ours, against `now`: the library would read the system clock itself.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    // `iss` is compared below, where a list or a number is refused rather than searched.
    let mut required = vec!["exp"];
    if rules.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rules.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    // Several keys may share a `kid` (a provider mid-rotation): each that may verify this
    // algorithm is tried, and only a signature no key accepts is refused as such.
    let mut refused = VerifyError::AlgorithmNotAllowed;
    let mut data = None;
    for key in candidates {
        if !key.algorithms.contains(&header.alg) {
            continue;
        }
        match decode::<Map<String, Value>>(token, &key.key, &validation) {
            Ok(d) => {
                data = Some((d, key.fingerprint.clone()));
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                refused = VerifyError::BadSignature;
            }
            Err(e) => return Err(classify(e.kind())),
        }
    }
    let (data, key_fingerprint) = data.ok_or(refused)?;
    let claims = data.claims;
    match claims.get("iss") {
        Some(Value::String(iss)) if rules.issuers.iter().any(|i| i == iss) => {}
        Some(Value::String(_)) => return Err(VerifyError::WrongIssuer),
        None | Some(Value::Null) => return Err(VerifyError::MissingClaim),
        // RFC 7519 §4.1.1: a StringOrURI, never a list to search.
        Some(_) => return Err(VerifyError::InvalidClaim),
    }
    let (exp, iat) = time_claims(&claims, rules, now)?;
    Ok(Verified {
        claims,
        exp,
        iat,
        kid: header.kid,
        key_fingerprint,
    })
}

fn classify(kind: &ErrorKind) -> VerifyError {
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
        ErrorKind::InvalidAudience => VerifyError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => VerifyError::MissingClaim,
        ErrorKind::InvalidClaimFormat(_) => VerifyError::InvalidClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            VerifyError::AlgorithmNotAllowed
        }
        _ => VerifyError::Malformed,
    }
}

/// The time rules every access token meets, a JWT's claims or an introspection answer's members
/// alike: `exp` required and not passed, `nbf` reached, and with `max_token_age` an `iat` neither
/// in the future nor too old — each within the leeway. Returns `exp` and `iat`.
pub(crate) fn time_claims(
    claims: &Map<String, Value>,
    rules: &TokenRules,
    now: u64,
) -> Result<(u64, Option<u64>), VerifyError> {
    let leeway = rules.leeway.as_secs();
    let exp = numeric_date(claims, "exp")?.ok_or(VerifyError::MissingClaim)?;
    if exp.saturating_add(leeway) < now {
        return Err(VerifyError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(VerifyError::NotYetValid);
    }
    let iat = numeric_date(claims, "iat")?;
    if let Some(max_age) = rules.max_age {
        let iat = iat.ok_or(VerifyError::MissingClaim)?;
        // A future `iat` would make any age check pass: refused beyond the clock skew.
        if iat > now.saturating_add(leeway) {
            return Err(VerifyError::IssuedInFuture);
        }
        if now.saturating_sub(iat) > max_age.as_secs().saturating_add(leeway) {
            return Err(VerifyError::TooOld);
        }
    }
    Ok((exp, iat))
}

/// A NumericDate claim (RFC 7519 §2): absent, or whole seconds from 0 to `MAX_NUMERIC_DATE`.
/// Negative, fractional, out-of-range and non-numeric values are refused, never rounded or
/// wrapped.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&t| t <= MAX_NUMERIC_DATE)
            .map(Some)
            .ok_or(VerifyError::InvalidClaim),
    }
}

/// Refuses a token whose header or claims repeat a member name at any depth. JSON parsers
/// disagree on which of two `"sub"`s counts (serde_json keeps the last, others the first), so a
/// token that says two things is not believed (RFC 7515 §4, RFC 7519 §4). Checked on the raw
/// segments before anything trusts them.
fn reject_duplicate_members(token: &str) -> Result<(), VerifyError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    for segment in [header, payload] {
        let json = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| VerifyError::Malformed)?;
        let duplicate = Cell::new(false);
        let mut de = serde_json::Deserializer::from_slice(&json);
        let parsed = UniqueMembers(&duplicate)
            .deserialize(&mut de)
            .and_then(|()| de.end());
        if duplicate.get() {
            return Err(VerifyError::DuplicateMember);
        }
        parsed.map_err(|_| VerifyError::Malformed)?;
    }
    Ok(())
}

/// Any JSON value, accepted only if no object in it repeats a member name; a repeat is recorded
/// in the flag (so it is told apart from bad JSON) and stops the parse.
#[derive(Clone, Copy)]
struct UniqueMembers<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for UniqueMembers<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueMembers<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        // Keys arrive unescaped: `"a"` and `"\u0061"` are the same name.
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                self.0.set(true);
                return Err(de::Error::custom("duplicate member name"));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
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
        crate::clock::unix_now()
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

    /// Every time rule is judged at the `now` given, never at the system's time: a token that
    /// expired in 2001 is valid at a `now` in 2000, and one not valid before 2033 is valid then.
    #[test]
    fn time_rules_use_the_given_clock_not_the_systems() {
        let keys = keyset(&[Algorithm::RS256]);
        let (y2000, y2001, y2033) = (946_684_800u64, 978_307_200u64, 2_000_000_000u64);
        let mut r = rules();
        r.max_age = Some(Duration::from_secs(3600));
        let old = with(|c| {
            c.insert("iat".into(), json!(y2000));
            c.insert("nbf".into(), json!(y2000));
            c.insert("exp".into(), json!(y2001));
        });
        let t = sign(Algorithm::RS256, Some("rsa-a"), Some("JWT"), &old);
        assert!(verify(&t, &keys, &r, y2000 + 60).is_ok());
        assert_eq!(
            verify(&t, &keys, &r, y2001 + 31).err(),
            Some(VerifyError::Expired)
        );
        let future = with(|c| {
            c.insert("iat".into(), json!(y2033));
            c.insert("nbf".into(), json!(y2033));
            c.insert("exp".into(), json!(y2033 + 600));
        });
        let t = sign(Algorithm::RS256, Some("rsa-a"), Some("JWT"), &future);
        assert!(verify(&t, &keys, &r, y2033).is_ok());
        assert_eq!(
            verify(&t, &keys, &r, y2033 - 31).err(),
            Some(VerifyError::NotYetValid)
        );
        assert_eq!(
            verify(&t, &keys, &r, y2033 + 3600 + 31).err(),
            Some(VerifyError::Expired)
        );
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

    /// A token signed with `RSA_A`, with raw header and payload JSON (to write what `serde`
    /// never would: repeated members, odd numbers).
    fn sign_raw(header: &str, payload: &str) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B;
        let message = format!("{}.{}", B.encode(header), B.encode(payload));
        let key = EncodingKey::from_rsa_pem(RSA_A.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
        format!("{message}.{sig}")
    }

    const HEADER: &str = r#"{"alg":"RS256","typ":"JWT","kid":"rsa-a"}"#;

    /// The claims as JSON text with `extra` members spliced in after the good ones.
    fn payload_with(extra: &str) -> String {
        let good = claims().to_string();
        format!("{},{extra}}}", &good[..good.len() - 1])
    }

    #[test]
    fn raw_tokens_verify_like_encoded_ones() {
        let keys = keyset(&[Algorithm::RS256]);
        let t = sign_raw(HEADER, &claims().to_string());
        assert!(verify(&t, &keys, &rules(), now()).is_ok());
    }

    /// A repeated member name, at any depth, in the claims or the header, is refused whichever
    /// copy a parser would keep; escaped spellings of one name count as one.
    #[test]
    fn duplicate_member_names_are_refused() {
        let keys = keyset(&[Algorithm::RS256]);
        for (name, header, payload) in [
            (
                "sub twice",
                HEADER.to_owned(),
                payload_with(r#""sub":"admin""#),
            ),
            (
                "user_id twice",
                HEADER.to_owned(),
                payload_with(r#""user_id":"user-2""#),
            ),
            (
                "escaped spelling",
                HEADER.to_owned(),
                payload_with(r#""\u0075ser_id":"user-2""#),
            ),
            (
                "iss twice",
                HEADER.to_owned(),
                payload_with(r#""iss":"evil""#),
            ),
            (
                "nested",
                HEADER.to_owned(),
                payload_with(r#""ext":{"org":"a","org":"b"}"#),
            ),
            (
                "in an array",
                HEADER.to_owned(),
                payload_with(r#""ext":[{"org":"a","org":"b"}]"#),
            ),
            (
                "alg twice",
                r#"{"alg":"RS256","typ":"JWT","kid":"rsa-a","alg":"none"}"#.to_owned(),
                claims().to_string(),
            ),
            (
                "kid twice",
                r#"{"alg":"RS256","typ":"JWT","kid":"rsa-a","kid":"other"}"#.to_owned(),
                claims().to_string(),
            ),
        ] {
            let t = sign_raw(&header, &payload);
            assert_eq!(
                verify(&t, &keys, &rules(), now()).map(|_| ()),
                Err(VerifyError::DuplicateMember),
                "{name}"
            );
        }
        // Not JSON, trailing bytes, or too many segments: malformed, not "duplicate".
        for (name, t) in [
            ("not json", sign_raw(HEADER, "{\"sub\":")),
            ("trailing", sign_raw(HEADER, &format!("{} x", claims()))),
            (
                "four parts",
                format!("{}.x", sign_raw(HEADER, &claims().to_string())),
            ),
            ("two parts", "eyJhIjoxfQ.eyJhIjoxfQ".to_owned()),
        ] {
            assert_eq!(
                verify(&t, &keys, &rules(), now()).map(|_| ()),
                Err(VerifyError::Malformed),
                "{name}"
            );
        }
    }

    /// `iss` is a string or nothing: a list that contains the right issuer, a number or an
    /// object is refused.
    #[test]
    fn non_string_issuers_are_refused() {
        let keys = keyset(&[Algorithm::RS256]);
        let good = |c: &serde_json::Value| sign(Algorithm::RS256, Some("rsa-a"), Some("JWT"), c);
        for (iss, want) in [
            (json!(["stytch.com/p1"]), VerifyError::InvalidClaim),
            (json!(["stytch.com/p1", "evil"]), VerifyError::InvalidClaim),
            (json!(["evil"]), VerifyError::InvalidClaim),
            (json!(42), VerifyError::InvalidClaim),
            (json!({"iss": "stytch.com/p1"}), VerifyError::InvalidClaim),
            (json!(true), VerifyError::InvalidClaim),
            (json!(null), VerifyError::MissingClaim),
            (json!(""), VerifyError::WrongIssuer),
            (json!("STYTCH.COM/P1"), VerifyError::WrongIssuer),
        ] {
            let t = good(&with(|c| {
                c.insert("iss".into(), iss.clone());
            }));
            assert_eq!(
                verify(&t, &keys, &rules(), now()).map(|_| ()),
                Err(want),
                "{iss}"
            );
        }
    }

    /// `exp`, `nbf` and `iat` at the extremes (huge, negative, fractional, beyond u64, beyond
    /// year 9999, strings), and a huge leeway or maximum age: each a clean refusal or a clean
    /// pass, never a panic or a wrapped sum.
    #[test]
    fn time_claims_at_the_extremes() {
        let keys = keyset(&[Algorithm::RS256]);
        let n = now();
        let bad_numbers = [
            "-1",
            "-9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "1e300",
            "-1e300",
            "1700000000.5",
            "0.5",
            "253402300800",
            "\"1700000000\"",
            "[1700000000]",
            "true",
        ];
        for claim in ["exp", "nbf", "iat"] {
            for bad in bad_numbers {
                let mut c = claims();
                c.as_object_mut().unwrap().remove(claim);
                let t = sign_raw(
                    HEADER,
                    &format!("{},\"{claim}\":{bad}}}", {
                        let s = c.to_string();
                        s[..s.len() - 1].to_owned()
                    }),
                );
                let got = verify(&t, &keys, &rules(), n).map(|_| ());
                assert!(
                    matches!(
                        got,
                        Err(VerifyError::InvalidClaim
                            | VerifyError::MissingClaim
                            | VerifyError::Malformed)
                    ),
                    "{claim}={bad}: {got:?}"
                );
            }
        }
        // The largest date accepted is a valid, far-off `exp`.
        let far = sign(
            Algorithm::RS256,
            Some("rsa-a"),
            Some("JWT"),
            &with(|c| {
                c.insert("exp".into(), json!(MAX_NUMERIC_DATE));
            }),
        );
        assert_eq!(
            verify(&far, &keys, &rules(), n).unwrap().exp,
            MAX_NUMERIC_DATE
        );
        // A zero `exp` has long expired; a `nbf` at the far end is not valid yet.
        for (claim, value, want) in [
            ("exp", json!(0), VerifyError::Expired),
            ("nbf", json!(MAX_NUMERIC_DATE), VerifyError::NotYetValid),
        ] {
            let t = sign(
                Algorithm::RS256,
                Some("rsa-a"),
                Some("JWT"),
                &with(|c| {
                    c.insert(claim.into(), value.clone());
                }),
            );
            assert_eq!(
                verify(&t, &keys, &rules(), n).map(|_| ()),
                Err(want),
                "{claim}"
            );
        }
        // Extreme clocks and rule durations saturate instead of wrapping.
        let mut wide = rules();
        wide.leeway = Duration::from_secs(u64::MAX);
        wide.max_age = Some(Duration::from_secs(u64::MAX));
        let t = sign(Algorithm::RS256, Some("rsa-a"), Some("JWT"), &claims());
        assert!(verify(&t, &keys, &wide, n).is_ok());
        assert!(verify(&t, &keys, &wide, u64::MAX).is_ok());
        assert_eq!(
            verify(&t, &keys, &rules(), u64::MAX).map(|_| ()),
            Err(VerifyError::Expired)
        );
        let mut strict = rules();
        strict.max_age = Some(Duration::from_secs(300));
        assert_eq!(
            verify(&t, &keys, &strict, 0).map(|_| ()),
            Err(VerifyError::NotYetValid),
            "at the epoch, `nbf` is in the future"
        );
    }

    /// With a maximum age, an `iat` in the future beyond the leeway is refused (it would make
    /// any age look young); within the leeway it passes.
    #[test]
    fn future_iat_is_refused_under_max_age() {
        let keys = keyset(&[Algorithm::RS256]);
        let mut strict = rules();
        strict.max_age = Some(Duration::from_secs(300));
        let at = |iat: u64| {
            sign(
                Algorithm::RS256,
                Some("rsa-a"),
                Some("JWT"),
                &with(|c| {
                    c.insert("iat".into(), json!(iat));
                    c.remove("nbf");
                }),
            )
        };
        let n = now();
        assert_eq!(
            verify(&at(n + 31), &keys, &strict, n).map(|_| ()),
            Err(VerifyError::IssuedInFuture)
        );
        assert_eq!(
            verify(&at(MAX_NUMERIC_DATE), &keys, &strict, n).map(|_| ()),
            Err(VerifyError::IssuedInFuture)
        );
        assert!(verify(&at(n + 30), &keys, &strict, n).is_ok());
        assert!(verify(&at(n - 330), &keys, &strict, n).is_ok());
        assert_eq!(
            verify(&at(n - 331), &keys, &strict, n).map(|_| ()),
            Err(VerifyError::TooOld)
        );
        // Without a maximum age the issue time is only checked for form.
        assert!(verify(&at(n + 3000), &keys, &rules(), n).is_ok());
        let no_iat = sign(
            Algorithm::RS256,
            Some("rsa-a"),
            Some("JWT"),
            &with(|c| {
                c.remove("iat");
            }),
        );
        assert_eq!(
            verify(&no_iat, &keys, &strict, n).map(|_| ()),
            Err(VerifyError::MissingClaim)
        );
    }

    /// Several keys under one `kid`: a token signed by any of them verifies; one signed by
    /// none is a bad signature; the algorithm pin still holds per key.
    #[test]
    fn every_key_under_a_shared_kid_is_tried() {
        let rename = |jwk: &str| {
            let mut v: serde_json::Value = serde_json::from_str(jwk).unwrap();
            v["kid"] = json!("shared");
            v.to_string()
        };
        let doc = format!(
            r#"{{"keys":[{},{},{}]}}"#,
            rename(include_str!("../tests/fixtures/ec-p256.jwk.json")),
            rename(include_str!("../tests/fixtures/rsa-b.jwk.json")),
            rename(include_str!("../tests/fixtures/rsa-a.jwk.json")),
        );
        let keys = jwks::parse(
            doc.as_bytes(),
            &[Algorithm::RS256, Algorithm::ES256],
            Instant::now(),
        )
        .unwrap();
        assert_eq!(keys.candidates(Some("shared")).count(), 3);
        let signed_by = |pem: &str, alg: Algorithm| {
            let mut h = Header::new(alg);
            h.kid = Some("shared".into());
            h.typ = Some("JWT".into());
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
                _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .unwrap();
            encode(&h, &claims(), &key).unwrap()
        };
        for (name, pem, alg) in [
            ("first RSA key", RSA_B, Algorithm::RS256),
            ("second RSA key", RSA_A, Algorithm::RS256),
            ("EC key", EC, Algorithm::ES256),
        ] {
            let v = verify(&signed_by(pem, alg), &keys, &rules(), now());
            assert_eq!(v.map(|v| v.kid), Ok(Some("shared".into())), "{name}");
        }
        // An RS256 signature by neither RSA key: a good one with its first byte changed.
        let other = {
            let t = signed_by(RSA_A, Algorithm::RS256);
            let (head, sig) = t.rsplit_once('.').unwrap();
            let first = if sig.starts_with('A') { "B" } else { "A" };
            format!("{head}.{first}{}", &sig[1..])
        };
        assert_eq!(
            verify(&other, &keys, &rules(), now()).map(|_| ()),
            Err(VerifyError::BadSignature)
        );
        // PS256 is pinned by no key under that kid.
        assert_eq!(
            verify(&signed_by(RSA_A, Algorithm::PS256), &keys, &rules(), now()).map(|_| ()),
            Err(VerifyError::AlgorithmNotAllowed)
        );

        // The verified token names the very key that verified it, not only the shared kid: a
        // later set that keeps the kid but drops that key no longer holds it.
        let by_a = verify(&signed_by(RSA_A, Algorithm::RS256), &keys, &rules(), now()).unwrap();
        let by_b = verify(&signed_by(RSA_B, Algorithm::RS256), &keys, &rules(), now()).unwrap();
        assert_ne!(by_a.key_fingerprint, by_b.key_fingerprint);
        assert!(keys.holds(&by_a.key_fingerprint) && keys.holds(&by_b.key_fingerprint));
        let without_a = jwks::parse(
            format!(
                r#"{{"keys":[{}]}}"#,
                rename(include_str!("../tests/fixtures/rsa-b.jwk.json"))
            )
            .as_bytes(),
            &[Algorithm::RS256],
            Instant::now(),
        )
        .unwrap();
        assert!(!without_a.holds(&by_a.key_fingerprint), "key A retired");
        assert!(
            without_a.holds(&by_b.key_fingerprint),
            "same key, same fingerprint"
        );
    }

    /// A set that repeats one kid many times costs at most `MAX_KEYS_PER_KID` signature checks:
    /// a token whose key comes after that many others under its kid is not found.
    #[test]
    fn keys_tried_per_kid_are_bounded() {
        let rsa_b = include_str!("../tests/fixtures/rsa-b.jwk.json");
        let rsa_a = include_str!("../tests/fixtures/rsa-a.jwk.json");
        let shared = |jwk: &str| {
            let mut v: serde_json::Value = serde_json::from_str(jwk).unwrap();
            v["kid"] = json!("shared");
            v.to_string()
        };
        let mut members = vec![shared(rsa_b); MAX_KEYS_PER_KID];
        members.push(shared(rsa_a));
        let doc = format!(r#"{{"keys":[{}]}}"#, members.join(","));
        let keys = jwks::parse(doc.as_bytes(), &[Algorithm::RS256], Instant::now()).unwrap();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("shared".into());
        h.typ = Some("JWT".into());
        let token = encode(
            &h,
            &claims(),
            &EncodingKey::from_rsa_pem(RSA_A.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verify(&token, &keys, &rules(), now()).map(|_| ()),
            Err(VerifyError::BadSignature)
        );
    }
}
