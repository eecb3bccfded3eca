//! The OAuth2 client-credentials grant (RFC 6749 §4.4) at the provider's token endpoint, with the
//! outcome sorted into "the caller is wrong" and "the provider is unavailable".
//!
//! The core sees a [`TokenEndpoint`]: the provider's endpoint over HTTP ([`http`]) in the
//! sidecar, an in-memory one in tests. What a token endpoint's answer means (this file) is the
//! same for both.

pub mod http;

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::credentials::Secret;

/// Where client credentials are exchanged for an access token (RFC 6749 §4.4). One call is one
/// token request; retries, coalescing and limits are the caller's.
pub trait TokenEndpoint: Send + Sync + 'static {
    /// Exchanges `client_id` and `secret` for an access token, or says whose fault it is that
    /// there is none.
    fn exchange<'a>(
        &'a self,
        client_id: &'a str,
        secret: &'a Secret,
    ) -> BoxFuture<'a, Result<Issued, ExchangeError>>;
}

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
    #[error("the token endpoint's TLS certificate is not trusted (set provider.ca_file to its CA)")]
    UntrustedCertificate,
    #[error(
        "the token endpoint refused the TLS handshake or closed the connection right after it (it may \
         require a client certificate: provider.client_cert and provider.client_key, or not \
         accept the one sent)"
    )]
    TlsRefused,
    #[error("the token endpoint answered HTTP {status}")]
    Status { status: u16 },
    #[error("the token endpoint refused our request ({code}); check provider settings")]
    Misconfigured { code: String },
    /// The provider's metadata has not been discovered yet, so there is no token endpoint.
    #[error("the provider's endpoints are not discovered yet")]
    NotDiscovered,
    #[error("the token endpoint's answer is unusable: {0}")]
    BadResponse(&'static str),
    /// HTTP 429 from the token endpoint: passed on to the caller as our own 429, with the
    /// provider's `Retry-After` (capped), rather than failing the check.
    #[error("the token endpoint is rate limiting (retry after {}s)", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
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

/// A token endpoint's answer, as status, `Retry-After` header value and body, sorted into an
/// access token or an `ExchangeError`; `now` (Unix seconds) dates a `Retry-After` given as an
/// HTTP-date. Pure, so it is unit-tested and fuzzed on its own.
pub fn parse_token_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Issued, ExchangeError> {
    if (200..300).contains(&status) {
        return parse_success(body);
    }
    if status == 429 {
        return Err(ExchangeError::RateLimited {
            retry_after: parse_retry_after(retry_after, now),
        });
    }
    let code = serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .and_then(|e| e.error)
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()));
    classify_error(status, code)
}

/// Used when a 429 carries no usable `Retry-After`.
pub const DEFAULT_PROVIDER_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest provider `Retry-After` passed on: a provider asking for more is still retried
/// within a minute rather than locking its clients out for longer.
pub const MAX_PROVIDER_RETRY_AFTER: Duration = Duration::from_secs(60);

/// RFC 9110 §10.2.3: `Retry-After` is delay-seconds or an HTTP-date (IMF-fixdate), clamped to
/// 1 s ..= `MAX_PROVIDER_RETRY_AFTER`; anything else gives the default.
fn parse_retry_after(value: Option<&str>, now: u64) -> Duration {
    let Some(value) = value.map(str::trim) else {
        return DEFAULT_PROVIDER_RETRY_AFTER;
    };
    let secs = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is still "a long time": the cap.
        Some(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        parse_imf_fixdate(value).map(|at| at.saturating_sub(now))
    };
    match secs {
        Some(s) => Duration::from_secs(s.clamp(1, MAX_PROVIDER_RETRY_AFTER.as_secs())),
        None => DEFAULT_PROVIDER_RETRY_AFTER,
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → seconds since the epoch.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let day = num(5..7)?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| s.get(8..11) == Some(*m))? as u64 + 1;
    let year = num(12..16)?;
    let (hour, minute, second) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || b[19] != b':' || b[22] != b':' {
        return None;
    }
    if !(1970..=9999).contains(&year) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), for years from 1970.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
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

    /// `expires_in` at the extremes is a (huge, later clamped) lifetime or ignored; never a
    /// panic.
    #[test]
    fn extreme_expires_in_values() {
        let expires = |v: &str| {
            parse_success(format!(r#"{{"access_token":"t","expires_in":{v}}}"#).as_bytes())
                .map(|i| i.expires_in)
        };
        assert_eq!(
            expires("18446744073709551615"),
            Ok(Some(Duration::from_secs(u64::MAX)))
        );
        assert_eq!(
            expires(r#""18446744073709551615""#),
            Ok(Some(Duration::from_secs(u64::MAX)))
        );
        for ignored in [
            "18446744073709551616",
            "-1",
            "-9223372036854775808",
            "0",
            "1e300",
            "3600.5",
            r#""-5""#,
            r#""99999999999999999999999""#,
            "null",
        ] {
            assert_eq!(expires(ignored), Ok(None), "{ignored}");
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

    #[test]
    fn provider_429_is_rate_limited_with_a_capped_retry_after() {
        let limited = |retry_after: Option<&str>, body: &[u8]| match parse_token_response(
            429,
            retry_after,
            body,
            0,
        ) {
            Err(ExchangeError::RateLimited { retry_after }) => retry_after.as_secs(),
            other => panic!("{retry_after:?}: {other:?}"),
        };
        assert_eq!(limited(Some("7"), b""), 7);
        assert_eq!(limited(Some(" 7 "), b""), 7);
        assert_eq!(limited(Some("0"), b""), 1, "at least a second");
        assert_eq!(limited(Some("86400"), b""), 60, "capped");
        assert_eq!(
            limited(Some("99999999999999999999999"), b""),
            60,
            "saturates"
        );
        assert_eq!(limited(Some(&u64::MAX.to_string()), b""), 60);
        assert_eq!(limited(Some(&"9".repeat(4000)), b""), 60);
        assert_eq!(limited(Some("Fri, 31 Dec 9999 23:59:59 GMT"), b""), 60);
        assert_eq!(limited(Some("1.5"), b""), 1);
        assert_eq!(limited(None, b""), 1);
        assert_eq!(limited(Some("soon"), b""), 1);
        assert_eq!(limited(Some("-5"), b""), 1);
        // Whatever the body says, a 429 is a rate limit, never a refused credential (which
        // would be cached as a refusal).
        assert_eq!(limited(Some("3"), br#"{"error":"invalid_client"}"#), 3);
        let e = parse_token_response(429, None, b"", 0).unwrap_err();
        assert!(!e.is_callers_fault());
    }

    #[test]
    fn retry_after_http_dates() {
        let at = parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(at, 784_111_777);
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_imf_fixdate("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Xyz 1994 08:49:37 GMT",
            "Sun, 6  Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMTX",
            "",
        ] {
            assert_eq!(parse_imf_fixdate(bad), None, "{bad}");
        }
        // A date 30 s ahead waits 30 s; one in the past, a second; one far ahead, the cap.
        assert_eq!(
            parse_retry_after(Some("Sun, 06 Nov 1994 08:50:07 GMT"), at),
            Duration::from_secs(30)
        );
        assert_eq!(
            parse_retry_after(Some("Sun, 06 Nov 1994 08:49:37 GMT"), at + 100),
            Duration::from_secs(1)
        );
        assert_eq!(
            parse_retry_after(Some("Mon, 07 Nov 1994 08:49:37 GMT"), at),
            MAX_PROVIDER_RETRY_AFTER
        );
        // Multi-byte text never panics the fixed-offset slicing.
        assert_eq!(parse_imf_fixdate("Sun, 06 Nov 1994 08:49:é GMT"), None);
        assert_eq!(parse_imf_fixdate("Sun, 06 Nov 1994 08:4é:37 GMT"), None);
        assert_eq!(parse_imf_fixdate("Sun, 06 Né 1994 08:49:37 GMT"), None);
    }
}
