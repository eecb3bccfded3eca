//! RFC 7662 token introspection: how a provider's opaque access tokens (and a caller's opaque
//! Bearer token) are checked. The sidecar posts the token with its own resource-server
//! credentials (`provider.introspection`) and judges the answer with the same rules a JWT's
//! claims meet (`judge`): `active` must be `true`, `exp` is required (a token without one could
//! never leave the cache, so it is refused rather than guessed at), `iss`/`aud` are checked when
//! present, `nbf`/`iat`/`max_token_age` as for JWTs. The answer's members are the claims the
//! identity is built from (`client_id`, `scope`, the user claim).
//!
//! An endpoint that cannot answer (transport error, timeout, a non-200 status, a body that is
//! not a JSON object or is too large) is the provider's failure, never an allow and never the
//! caller's fault: `IntrospectError`, answered UNAVAILABLE.

use std::sync::Arc;

use base64::Engine;
use percent_encoding::utf8_percent_encode;
use serde_json::{Map, Value};
use url::Url;

use crate::config::{IntrospectionAuth, ResolvedIntrospection};
use crate::credentials::Secret;
use crate::defaults::MAX_PROVIDER_BODY_BYTES;
use crate::discovery::Discovery;
use crate::exchange::http::FORM;
use crate::http_body::{BodyError, Failure, read_capped};
use crate::verify::{TokenRules, Verified, VerifyError};

/// What an introspected token records where a JWT records the key that verified it: the
/// bearer cache keeps such an entry until its `exp`, whatever the JWKS does. Not a possible
/// key fingerprint (those are hex digests).
pub const INTROSPECTED: &str = "(introspected)";

/// The introspection endpoint could not give a usable answer: the provider's problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectError {
    #[error("the introspection endpoint timed out")]
    Timeout,
    #[error("the introspection endpoint could not be reached")]
    Connect,
    #[error(
        "the introspection endpoint's TLS certificate is not trusted (set provider.ca_file to its CA)"
    )]
    UntrustedCertificate,
    #[error(
        "the introspection endpoint refused the TLS handshake or closed the connection right after \
         it (it may require a client certificate: provider.client_cert and provider.client_key, or \
         not accept the one sent)"
    )]
    TlsRefused,
    #[error("the introspection endpoint answered HTTP {status}")]
    Status { status: u16 },
    #[error("the introspection endpoint's answer is unusable: {0}")]
    BadResponse(&'static str),
    /// No `provider.introspection.url`, and the metadata (not yet, or not at all) names one.
    #[error("the provider's introspection endpoint is not known (not discovered yet, or none)")]
    NotDiscovered,
}

/// True for a JWS compact serialization (three non-empty base64url segments): what
/// `token_format: auto` verifies locally rather than introspects.
pub fn is_jws_compact(token: &str) -> bool {
    let mut segments = 0;
    for part in token.split('.') {
        segments += 1;
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

/// A provider's introspection endpoint, reached with the provider's HTTP client (its timeouts
/// and `ca_file`). `Debug` is not derived: it holds the secret.
pub struct Introspector {
    http: reqwest::Client,
    url: Option<Url>,
    discovery: Option<Arc<Discovery>>,
    client_id: String,
    secret: Secret,
    auth: IntrospectionAuth,
}

impl Introspector {
    pub fn new(
        http: reqwest::Client,
        config: &ResolvedIntrospection,
        discovery: Option<Arc<Discovery>>,
    ) -> Self {
        Introspector {
            http,
            url: config.url.clone(),
            discovery,
            client_id: config.client_id.clone(),
            secret: config.client_secret.clone(),
            auth: config.auth,
        }
    }

    fn url(&self) -> Result<Url, IntrospectError> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        self.discovery
            .as_ref()
            .and_then(|d| d.endpoints())
            .and_then(|e| e.introspection_endpoint.clone())
            .ok_or(IntrospectError::NotDiscovered)
    }

    /// The provider's answer for `token` as a JSON object (never logged: it may name the
    /// token's subject). One trace span, without the token (`skip_all`).
    #[tracing::instrument(name = "token.introspect", skip_all, fields(otel.kind = "client"))]
    pub async fn introspect(&self, token: &str) -> Result<Map<String, Value>, IntrospectError> {
        let url = self.url()?;
        let mut form: Vec<(&str, &str)> =
            vec![("token", token), ("token_type_hint", "access_token")];
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json");
        match self.auth {
            IntrospectionAuth::Post => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.secret.expose()));
            }
            IntrospectionAuth::Basic => {
                let joined = format!(
                    "{}:{}",
                    utf8_percent_encode(&self.client_id, FORM),
                    utf8_percent_encode(self.secret.expose(), FORM)
                );
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(joined)
                    ),
                );
            }
        }
        let response = request.form(&form).send().await.map_err(classify)?;
        let status = response.status();
        let body = read_capped(response, MAX_PROVIDER_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => IntrospectError::BadResponse("body too large"),
                BodyError::Transport(e) => classify(e),
            })?;
        if status != reqwest::StatusCode::OK {
            // 401/403 too: our resource-server credentials are refused, which is a
            // configuration fault, not the caller's.
            return Err(IntrospectError::Status {
                status: status.as_u16(),
            });
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(IntrospectError::BadResponse("not a JSON object")),
            Err(_) => Err(IntrospectError::BadResponse("not JSON")),
        }
    }
}

fn classify(e: reqwest::Error) -> IntrospectError {
    match Failure::of(&e) {
        Failure::Timeout => IntrospectError::Timeout,
        Failure::UntrustedCertificate => IntrospectError::UntrustedCertificate,
        Failure::TlsRefused => IntrospectError::TlsRefused,
        Failure::Connect => IntrospectError::Connect,
        Failure::Other => IntrospectError::BadResponse("transport error"),
    }
}

/// The introspection answer judged by the provider's token rules at `now` (Unix seconds).
/// `Verified::key_fingerprint` is [`INTROSPECTED`].
pub fn judge(
    answer: Map<String, Value>,
    rules: &TokenRules,
    now: u64,
) -> Result<Verified, VerifyError> {
    // Only a JSON `true` is active (RFC 7662 §2.2); "true", 1 or a missing member are not.
    if answer.get("active") != Some(&Value::Bool(true)) {
        return Err(VerifyError::Inactive);
    }
    let (exp, iat) = crate::verify::time_claims(&answer, rules, now)?;
    match answer.get("iss") {
        None => {}
        Some(Value::String(iss)) if rules.issuers.iter().any(|i| i == iss) => {}
        Some(Value::String(_)) => return Err(VerifyError::WrongIssuer),
        Some(_) => return Err(VerifyError::InvalidClaim),
    }
    if !rules.audiences.is_empty() {
        let accepted = |a: &Value| {
            a.as_str()
                .is_some_and(|a| rules.audiences.iter().any(|w| w == a))
        };
        match answer.get("aud") {
            None => {}
            Some(Value::String(_)) if accepted(&answer["aud"]) => {}
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
                list.iter()
                    .any(accepted)
                    .then_some(())
                    .ok_or(VerifyError::WrongAudience)?;
            }
            Some(Value::String(_)) => return Err(VerifyError::WrongAudience),
            Some(_) => return Err(VerifyError::InvalidClaim),
        }
    }
    Ok(Verified {
        claims: answer,
        exp,
        iat,
        kid: None,
        key_fingerprint: Arc::from(INTROSPECTED),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::verify::MAX_NUMERIC_DATE;

    const NOW: u64 = 1_800_000_000;

    fn rules() -> TokenRules {
        TokenRules {
            issuers: vec!["https://idp.example".into()],
            audiences: vec!["api".into()],
            leeway: Duration::from_secs(30),
            max_age: None,
            token_type: None,
            max_bytes: 4096,
        }
    }

    fn answer(extra: Value) -> Map<String, Value> {
        let mut m = json!({"active": true, "exp": NOW + 600, "client_id": "svc", "scope": "read"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                if v.is_null() {
                    m.remove(&k);
                } else {
                    m.insert(k, v);
                }
            }
        }
        m
    }

    #[test]
    fn an_active_answer_is_verified_with_its_members_as_claims() {
        let v = judge(
            answer(json!({"iss": "https://idp.example", "aud": ["x", "api"]})),
            &rules(),
            NOW,
        );
        let v = v.expect("active");
        assert_eq!(v.exp, NOW + 600);
        assert_eq!(&*v.key_fingerprint, INTROSPECTED);
        assert_eq!(v.claims["client_id"], "svc");
        // iss and aud are optional in RFC 7662.
        assert!(judge(answer(json!({})), &rules(), NOW).is_ok());
    }

    #[test]
    fn every_rule_is_applied_to_the_answer() {
        for (extra, want) in [
            (json!({"active": false}), VerifyError::Inactive),
            (json!({"active": "true"}), VerifyError::Inactive),
            (json!({"active": 1}), VerifyError::Inactive),
            (json!({"active": null}), VerifyError::Inactive),
            (json!({"exp": null}), VerifyError::MissingClaim),
            (json!({"exp": "soon"}), VerifyError::InvalidClaim),
            (json!({"exp": -1}), VerifyError::InvalidClaim),
            (
                json!({"exp": MAX_NUMERIC_DATE + 1}),
                VerifyError::InvalidClaim,
            ),
            (json!({"exp": NOW - 31}), VerifyError::Expired),
            (json!({"nbf": NOW + 31}), VerifyError::NotYetValid),
            (
                json!({"iss": "https://evil.example"}),
                VerifyError::WrongIssuer,
            ),
            (json!({"iss": 7}), VerifyError::InvalidClaim),
            (json!({"aud": "other"}), VerifyError::WrongAudience),
            (json!({"aud": ["other"]}), VerifyError::WrongAudience),
            (json!({"aud": [1]}), VerifyError::InvalidClaim),
        ] {
            let got = judge(answer(extra.clone()), &rules(), NOW).map(|v| v.exp);
            assert_eq!(got, Err(want), "{extra}");
        }
        // Within the leeway, an expiry just passed still holds.
        assert!(judge(answer(json!({"exp": NOW - 29})), &rules(), NOW).is_ok());
    }

    #[test]
    fn max_token_age_needs_and_checks_iat() {
        let mut r = rules();
        r.max_age = Some(Duration::from_secs(300));
        assert_eq!(
            judge(answer(json!({})), &r, NOW).map(|v| v.exp),
            Err(VerifyError::MissingClaim)
        );
        assert_eq!(
            judge(answer(json!({"iat": NOW - 400})), &r, NOW).map(|v| v.exp),
            Err(VerifyError::TooOld)
        );
        assert!(judge(answer(json!({"iat": NOW - 100})), &r, NOW).is_ok());
    }

    #[test]
    fn only_a_jws_compact_counts_as_a_jwt() {
        for (token, jwt) in [
            ("aGVhZA.Ym9keQ.c2ln", true),
            ("a-_.b.c", true),
            ("opaque-token-123", false),
            ("a.b", false),
            ("a.b.c.d", false),
            ("a..c", false),
            ("a.b.c=", false),
            ("", false),
        ] {
            assert_eq!(is_jws_compact(token), jwt, "{token}");
        }
    }
}
