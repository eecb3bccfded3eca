//! The answer to one check, free of any transport, and the one place where a refusal's reason
//! becomes an HTTP status, an RFC 6750 challenge and a JSON body.

use std::sync::Arc;
use std::time::Duration;

use crate::canonical::TargetError;
use crate::credentials::{BearerToken, CredentialError};
use crate::exchange::ExchangeError;
use crate::identity::{Identity, IdentityError, IdentityHeader};
use crate::verify::VerifyError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

/// Let the request through, rewriting its headers as the (cached) identity says.
#[derive(Debug, Clone)]
pub struct Allow {
    pub identity: Arc<Identity>,
    /// The access token to send upstream as `Authorization: Bearer` (route policy
    /// `upstream_credential: bearer`) instead of stripping every credential.
    pub forward: Option<BearerToken>,
    /// The provider that vouched for the identity; `None` on an anonymous route.
    pub provider: Option<Arc<str>>,
    /// The policy rule that decided, or [`DEFAULT_RULE`] for the policy's default.
    pub rule: Option<Arc<str>>,
}

impl Allow {
    /// Set upstream, overwriting whatever the caller sent under the same name.
    pub fn set(&self) -> &[IdentityHeader] {
        &self.identity.headers
    }

    /// Removed upstream: credential headers and identity headers this answer does not set.
    pub fn remove(&self) -> &[Arc<str>] {
        &self.identity.remove
    }

    /// The authenticated client, for logs.
    pub fn client_id(&self) -> &str {
        &self.identity.client_id
    }
}

impl PartialEq for Allow {
    fn eq(&self, other: &Self) -> bool {
        self.set() == other.set()
            && self.remove() == other.remove()
            && self.forward == other.forward
            && self.provider == other.provider
            && self.rule == other.rule
    }
}

impl Eq for Allow {}

/// Refuse the request with this HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub status: u16,
    /// The `WWW-Authenticate` value.
    pub challenge: Option<String>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// The JSON body: `{"error": …, "error_description": …}`.
    pub body: String,
    /// A short, stable reason for logs and metrics.
    pub reason: &'static str,
    /// The policy rule that had matched ([`DEFAULT_RULE`] for the policy's default); `None`
    /// when the request was refused before any rule was consulted (a malformed path or host).
    pub rule: Option<Arc<str>>,
}

/// How a decision names the policy's `default` action — also what every check matches when no
/// policy is configured at all.
pub const DEFAULT_RULE: &str = "default";

impl Decision {
    /// The same decision, naming the rule that made it.
    pub fn with_rule(mut self, rule: &Arc<str>) -> Decision {
        let slot = match &mut self {
            Decision::Allow(a) => &mut a.rule,
            Decision::Deny(d) => &mut d.rule,
        };
        *slot = Some(rule.clone());
        self
    }
}

/// Why a request is refused. Every variant's text is ours, never the caller's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request's path or host has no canonical form, so no rule can be matched safely
    /// (refused before any rule is consulted, on every route).
    Target(TargetError),
    Credential(CredentialError),
    /// A presented Bearer token failed verification.
    Token(VerifyError),
    /// The provider refused the presented client credentials.
    Exchange(ExchangeError),
    Identity(IdentityError),
    /// The sidecar's own exchange limits are reached: retry after this long.
    Limited {
        retry_after: Duration,
    },
    /// The route's policy is `deny`.
    RouteDenied,
    /// The route names a provider that is not configured (an Envoy or policy mistake).
    UnknownProvider,
    /// The credential is valid but lacks what the route requires (RFC 6750 §3.1).
    InsufficientScope {
        required: String,
    },
    /// The route forwards the access token, but the exchange this check joined did not keep it
    /// (a policy reload raced it). A denial, not an infrastructure error, so that even
    /// `failure_mode_allow: true` never lets the request through unchecked; a retry exchanges.
    TokenNotKept,
}

impl Refusal {
    pub fn to_deny(&self, realm: &str) -> Deny {
        use CredentialError as C;
        if let Refusal::Limited { retry_after } = self {
            return Deny {
                status: 429,
                challenge: None,
                retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
                body: body(
                    "too_many_requests",
                    "new credentials are arriving faster than the exchange limit; retry later",
                ),
                reason: "exchange_limited",
                rule: None,
            };
        }
        if let Refusal::TokenNotKept = self {
            return Deny {
                status: 503,
                challenge: None,
                retry_after: Some(1),
                body: body(
                    "temporarily_unavailable",
                    "the access token to forward is not available yet; retry",
                ),
                reason: "token_not_kept",
                rule: None,
            };
        }
        if let Refusal::RouteDenied | Refusal::UnknownProvider = self {
            let unknown = matches!(self, Refusal::UnknownProvider);
            return Deny {
                status: 403,
                challenge: None,
                retry_after: None,
                body: body(
                    "access_denied",
                    if unknown {
                        "this route names an identity provider that is not configured"
                    } else {
                        "this route is closed by policy"
                    },
                ),
                reason: if unknown {
                    "unknown_provider"
                } else {
                    "route_denied"
                },
                rule: None,
            };
        }
        if let Refusal::InsufficientScope { required } = self {
            let description = "the credential lacks a scope this route requires";
            return Deny {
                status: 403,
                challenge: Some(format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\", scope=\"{required}\""
                )),
                retry_after: None,
                body: body("insufficient_scope", description),
                reason: "insufficient_scope",
                rule: None,
            };
        }
        let (status, rfc_error, body_error, reason): (u16, Option<&str>, &str, &'static str) =
            match self {
                Refusal::Target(e) => (400, Some("invalid_request"), "invalid_request", e.reason()),
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
                Refusal::Limited { .. }
                | Refusal::RouteDenied
                | Refusal::UnknownProvider
                | Refusal::InsufficientScope { .. }
                | Refusal::TokenNotKept => unreachable!("answered above"),
            };
        let description = match self {
            // Our own text: never the path or host the caller sent.
            Refusal::Target(e) => e.to_string(),
            Refusal::Credential(e) => e.to_string(),
            Refusal::Token(e) => e.to_string(),
            Refusal::Exchange(ExchangeError::ScopeRefused) => {
                ExchangeError::ScopeRefused.to_string()
            }
            Refusal::Exchange(_) => "the client credentials were rejected".to_owned(),
            Refusal::Identity(e) => e.to_string(),
            Refusal::Limited { .. }
            | Refusal::RouteDenied
            | Refusal::UnknownProvider
            | Refusal::InsufficientScope { .. }
            | Refusal::TokenNotKept => {
                unreachable!("answered above")
            }
        };
        let mut challenge = format!("Bearer realm=\"{realm}\"");
        if let Some(code) = rfc_error {
            challenge.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
        }
        Deny {
            status,
            challenge: Some(challenge),
            retry_after: None,
            body: body(body_error, &description),
            reason,
            rule: None,
        }
    }
}

fn body(error: &str, description: &str) -> String {
    serde_json::json!({ "error": error, "error_description": description }).to_string()
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
            let challenge = d.challenge.unwrap();
            assert!(challenge.starts_with("Bearer realm=\"api\""), "{challenge}");
            match code {
                Some(c) => assert!(challenge.contains(&format!("error=\"{c}\"")), "{challenge}"),
                None => assert!(!challenge.contains("error="), "{challenge}"),
            }
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            assert!(body["error"].is_string() && body["error_description"].is_string());
        }
        let limited = Refusal::Limited {
            retry_after: Duration::from_millis(1200),
        }
        .to_deny("api");
        assert_eq!((limited.status, limited.retry_after), (429, Some(2)));
        assert!(limited.challenge.is_none());
        let scope = Refusal::InsufficientScope {
            required: "write:orders".into(),
        }
        .to_deny("api");
        assert_eq!(scope.status, 403);
        let challenge = scope.challenge.unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\"")
                && challenge.contains("scope=\"write:orders\""),
            "{challenge}"
        );
        assert_eq!(Refusal::RouteDenied.to_deny("api").status, 403);
        for (target, reason) in [
            (TargetError::EncodedDelimiter, "malformed_path"),
            (TargetError::DotSegment, "malformed_path"),
            (TargetError::ParameterOnlySegment, "malformed_path"),
            (TargetError::InvalidHost, "malformed_host"),
        ] {
            let d = Refusal::Target(target).to_deny("api");
            assert_eq!((d.status, d.reason), (400, reason));
            assert_eq!(
                d.challenge.as_deref(),
                Some(
                    format!(
                        "Bearer realm=\"api\", error=\"invalid_request\", error_description=\"{target}\""
                    )
                    .as_str()
                )
            );
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["error"], "invalid_request");
        }
        let not_kept = Refusal::TokenNotKept.to_deny("api");
        assert_eq!(
            (not_kept.status, not_kept.retry_after, not_kept.reason),
            (503, Some(1), "token_not_kept")
        );
    }
}
