//! The answer to one check, free of any transport, and the one place where a refusal's reason
//! becomes an HTTP status, an RFC 6750 challenge and a JSON body.

use crate::credentials::CredentialError;
use crate::exchange::ExchangeError;
use crate::identity::IdentityError;
use crate::verify::VerifyError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

/// Let the request through, rewriting its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// Set upstream, overwriting whatever the caller sent under the same name.
    pub set: Vec<(String, String)>,
    /// Removed upstream: credential headers and identity headers this answer does not set.
    pub remove: Vec<String>,
    /// The authenticated client, for logs.
    pub client_id: String,
}

/// Refuse the request with this HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub status: u16,
    /// The `WWW-Authenticate` value.
    pub challenge: String,
    /// The JSON body: `{"error": …, "error_description": …}`.
    pub body: String,
    /// A short, stable reason for logs and metrics.
    pub reason: &'static str,
}

/// Why a request is refused. Every variant's text is ours, never the caller's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Credential(CredentialError),
    /// A presented Bearer token failed verification.
    Token(VerifyError),
    /// The provider refused the presented client credentials.
    Exchange(ExchangeError),
    Identity(IdentityError),
}

impl Refusal {
    pub fn to_deny(&self, realm: &str) -> Deny {
        use CredentialError as C;
        let (status, rfc_error, body_error, reason): (u16, Option<&str>, &str, &'static str) =
            match self {
                Refusal::Credential(C::Missing) => (401, None, "unauthorized", "no_credentials"),
                Refusal::Credential(C::UnsupportedScheme) => {
                    (401, None, "unauthorized", "unsupported_scheme")
                }
                Refusal::Credential(C::Ambiguous) => (
                    400,
                    Some("invalid_request"),
                    "invalid_request",
                    "ambiguous_credentials",
                ),
                Refusal::Credential(C::TooLong) => (
                    400,
                    Some("invalid_request"),
                    "invalid_request",
                    "credential_too_long",
                ),
                Refusal::Credential(_) => (
                    400,
                    Some("invalid_request"),
                    "invalid_request",
                    "malformed_credentials",
                ),
                Refusal::Token(VerifyError::Expired) => {
                    (401, Some("invalid_token"), "invalid_token", "token_expired")
                }
                Refusal::Token(_) => (401, Some("invalid_token"), "invalid_token", "invalid_token"),
                Refusal::Exchange(ExchangeError::ScopeRefused) => (
                    403,
                    Some("insufficient_scope"),
                    "insufficient_scope",
                    "scope_refused",
                ),
                Refusal::Exchange(_) => (
                    401,
                    Some("invalid_token"),
                    "invalid_client",
                    "invalid_client",
                ),
                Refusal::Identity(_) => (403, None, "access_denied", "no_identity"),
            };
        let description = match self {
            Refusal::Credential(e) => e.to_string(),
            Refusal::Token(e) => e.to_string(),
            Refusal::Exchange(ExchangeError::ScopeRefused) => {
                ExchangeError::ScopeRefused.to_string()
            }
            Refusal::Exchange(_) => "the client credentials were rejected".to_owned(),
            Refusal::Identity(e) => e.to_string(),
        };
        let mut challenge = format!("Bearer realm=\"{realm}\"");
        if let Some(code) = rfc_error {
            challenge.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
        }
        let body = serde_json::json!({ "error": body_error, "error_description": description })
            .to_string();
        Deny {
            status,
            challenge,
            body,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_challenges_follow_rfc_6750() {
        let cases = [
            (Refusal::Credential(CredentialError::Missing), 401, None),
            (
                Refusal::Credential(CredentialError::UnsupportedScheme),
                401,
                None,
            ),
            (
                Refusal::Credential(CredentialError::MalformedAuthorization),
                400,
                Some("invalid_request"),
            ),
            (
                Refusal::Credential(CredentialError::Ambiguous),
                400,
                Some("invalid_request"),
            ),
            (
                Refusal::Token(VerifyError::Expired),
                401,
                Some("invalid_token"),
            ),
            (
                Refusal::Token(VerifyError::BadSignature),
                401,
                Some("invalid_token"),
            ),
            (
                Refusal::Exchange(ExchangeError::Rejected {
                    code: "invalid_client".into(),
                }),
                401,
                Some("invalid_token"),
            ),
            (
                Refusal::Exchange(ExchangeError::ScopeRefused),
                403,
                Some("insufficient_scope"),
            ),
            (
                Refusal::Identity(IdentityError::MissingClaim {
                    header: "x-user-id".into(),
                }),
                403,
                None,
            ),
        ];
        for (refusal, status, code) in cases {
            let d = refusal.to_deny("api");
            assert_eq!(d.status, status, "{refusal:?}");
            assert!(
                d.challenge.starts_with("Bearer realm=\"api\""),
                "{}",
                d.challenge
            );
            match code {
                Some(c) => assert!(
                    d.challenge.contains(&format!("error=\"{c}\"")),
                    "{}",
                    d.challenge
                ),
                None => assert!(!d.challenge.contains("error="), "{}", d.challenge),
            }
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            assert!(body["error"].is_string() && body["error_description"].is_string());
        }
    }
}
