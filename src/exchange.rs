//! The OAuth2 client-credentials grant (RFC 6749 §4.4) at the provider's token endpoint, with the
//! outcome sorted into "the caller is wrong" and "the provider is unavailable".

use std::time::Duration;

use base64::Engine;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use url::Url;

use crate::config::{ClientAuth, ProviderConfig};
use crate::credentials::Secret;
use crate::defaults::MAX_PROVIDER_BODY_BYTES;
use crate::http_body::read_capped;

/// An access token fresh from the token endpoint. `Debug` is redacted.
pub struct Issued {
    pub access_token: String,
    /// `expires_in` when the provider sent one (RFC 6749 §5.1 makes it optional).
    pub expires_in: Option<Duration>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why an exchange gave no token. `Rejected` is about the caller's credential and becomes a
/// denial; every other kind is the provider's (or the network's) fault and fails the check, so
/// Envoy's `failure_mode_allow` decides. Carries no secret and no response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("the provider rejected the client credentials ({code})")]
    Rejected { code: String },
    #[error("the provider refused the requested scope")]
    ScopeRefused,
    #[error("the token endpoint timed out")]
    Timeout,
    #[error("the token endpoint could not be reached")]
    Connect,
    #[error("the token endpoint answered HTTP {status}")]
    Status { status: u16 },
    #[error("the token endpoint refused our request ({code}); check provider settings")]
    Misconfigured { code: String },
    #[error("the token endpoint's answer is unusable: {0}")]
    BadResponse(&'static str),
}

impl ExchangeError {
    /// True when the caller's credential, not the infrastructure, is at fault.
    pub fn is_callers_fault(&self) -> bool {
        matches!(
            self,
            ExchangeError::Rejected { .. } | ExchangeError::ScopeRefused
        )
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
}

/// RFC 6749 Appendix B: everything but unreserved characters is percent-encoded in Basic parts.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'*');

pub struct TokenClient {
    http: reqwest::Client,
    url: Url,
    auth: ClientAuth,
    scope: Option<String>,
    params: Vec<(String, String)>,
}

impl TokenClient {
    pub fn new(http: reqwest::Client, config: &ProviderConfig) -> Option<Self> {
        Some(TokenClient {
            http,
            url: config.resolved_token_url()?,
            auth: config.client_auth,
            scope: config.scope.clone(),
            params: config
                .token_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    pub async fn exchange(
        &self,
        client_id: &str,
        secret: &Secret,
    ) -> Result<Issued, ExchangeError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        for (k, v) in &self.params {
            form.push((k, v));
        }
        let mut request = self
            .http
            .post(self.url.clone())
            .header("accept", "application/json");
        match self.auth {
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret.expose()));
            }
            ClientAuth::ClientSecretBasic => {
                let joined = format!(
                    "{}:{}",
                    utf8_percent_encode(client_id, FORM),
                    utf8_percent_encode(secret.expose(), FORM)
                );
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(joined)
                );
                request = request.header("authorization", value);
            }
        }
        let response = request.form(&form).send().await.map_err(classify_send)?;
        let status = response.status();
        let body = read_capped(response, MAX_PROVIDER_BODY_BYTES)
            .await
            .map_err(|e| match e {
                crate::http_body::BodyError::TooLarge => {
                    ExchangeError::BadResponse("body too large")
                }
                crate::http_body::BodyError::Transport(e) => classify_send(e),
            })?;
        if status.is_success() {
            return parse_success(&body);
        }
        let code = serde_json::from_slice::<ErrorResponse>(&body)
            .ok()
            .and_then(|e| e.error)
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()));
        classify_error(status.as_u16(), code)
    }
}

fn classify_send(e: reqwest::Error) -> ExchangeError {
    if e.is_timeout() {
        ExchangeError::Timeout
    } else if e.is_connect() {
        ExchangeError::Connect
    } else {
        ExchangeError::BadResponse("transport error")
    }
}

/// RFC 6749 §5.2 error codes, by whose fault they are.
fn classify_error(status: u16, code: Option<String>) -> Result<Issued, ExchangeError> {
    match code.as_deref() {
        Some("invalid_client" | "unauthorized_client" | "invalid_grant" | "access_denied") => {
            Err(ExchangeError::Rejected {
                code: code.unwrap_or_default(),
            })
        }
        Some("invalid_scope") => Err(ExchangeError::ScopeRefused),
        _ if status == 401 || status == 403 => Err(ExchangeError::Rejected {
            code: format!("http_{status}"),
        }),
        _ if status >= 500 || status == 429 || status == 408 => {
            Err(ExchangeError::Status { status })
        }
        Some(code) => Err(ExchangeError::Misconfigured {
            code: code.to_owned(),
        }),
        None => Err(ExchangeError::Status { status }),
    }
}

fn parse_success(body: &[u8]) -> Result<Issued, ExchangeError> {
    let r: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| ExchangeError::BadResponse("not a JSON token response"))?;
    let access_token = r
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(ExchangeError::BadResponse("no access_token"))?;
    // RFC 6749 §5.1 / RFC 6750: the type is case-insensitive; a missing one is tolerated.
    if let Some(t) = &r.token_type
        && !t.eq_ignore_ascii_case("bearer")
    {
        return Err(ExchangeError::BadResponse("token_type is not bearer"));
    }
    // Some servers send `expires_in` as a string; anything unusable falls back to the JWT's exp.
    let expires_in = match r.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|s| *s > 0)
    .map(Duration::from_secs);
    Ok(Issued {
        access_token,
        expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_bodies() {
        let ok = parse_success(br#"{"access_token":"t","token_type":"Bearer","expires_in":3600,"request_id":"r","status_code":200}"#).unwrap();
        assert_eq!(ok.expires_in, Some(Duration::from_secs(3600)));
        let ok = parse_success(br#"{"access_token":"t","token_type":"bearer","expires_in":"60"}"#)
            .unwrap();
        assert_eq!(ok.expires_in, Some(Duration::from_secs(60)));
        let ok = parse_success(br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(ok.expires_in, None);
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"access_token":""}"#,
            br#"{"access_token":"t","token_type":"mac"}"#,
        ] {
            assert!(matches!(
                parse_success(bad),
                Err(ExchangeError::BadResponse(_))
            ));
        }
    }

    #[test]
    fn error_classification() {
        let cases = [
            (401, Some("invalid_client"), true),
            (400, Some("invalid_client"), true),
            (400, Some("unauthorized_client"), true),
            (400, Some("invalid_grant"), true),
            (400, Some("invalid_scope"), true),
            (401, None, true),
            (403, Some("something"), true),
            (500, None, false),
            (503, Some("temporarily_unavailable"), false),
            (429, None, false),
            (400, Some("unsupported_grant_type"), false),
            (400, None, false),
        ];
        for (status, code, callers) in cases {
            let e = classify_error(status, code.map(String::from)).unwrap_err();
            assert_eq!(e.is_callers_fault(), callers, "{status} {code:?} → {e:?}");
        }
    }
}
