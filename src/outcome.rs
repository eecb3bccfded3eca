//! What one check came to, named once for its log line, its metrics and its trace span; and the
//! log line itself. Nothing here is secret: the decision and reason are our own fixed strings,
//! the client id is the one the caller claims (an identifier, never the secret), and the route is
//! the canonical path the policy matched (so `/%61dmin` is logged as `/admin`), or for a path
//! with no canonical form the raw path without its query string (a query may carry secrets).

use std::borrow::Cow;
use std::time::Duration;

use tracing::Level;

use crate::authorizer::Unavailable;
use crate::decision::Decision;
use crate::request::AuthRequest;

/// Longest client id, route or request id written to a log line; longer ones are cut.
const MAX_LOGGED_BYTES: usize = 256;

/// The log target of the per-check lines, for filters such as `m2m_authz::check=debug`.
pub const CHECK_LOG_TARGET: &str = "m2m_authz::check";

/// Allowed, denied, or not decided (an infrastructure failure: gRPC UNAVAILABLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `allow`, `deny` or `error`, as the `decision` label and log field say.
    pub decision: Verdict,
    /// `ok` for an allow, `Deny::reason` for a denial, `Unavailable::reason` for an error.
    pub reason: &'static str,
    /// The HTTP status of a denial.
    pub status: Option<u16>,
}

impl Outcome {
    pub fn of(result: &Result<Decision, Unavailable>) -> Self {
        match result {
            Ok(Decision::Allow(_)) => Outcome {
                decision: Verdict::Allow,
                reason: "ok",
                status: None,
            },
            Ok(Decision::Deny(d)) => Outcome {
                decision: Verdict::Deny,
                reason: d.reason,
                status: Some(d.status),
            },
            Err(u) => Outcome {
                decision: Verdict::Error,
                reason: u.reason(),
                status: None,
            },
        }
    }

    /// Whether `log_check` would write a line for this outcome: lets the caller skip gathering
    /// what the line needs.
    pub fn is_logged(&self) -> bool {
        match self.decision {
            Verdict::Allow => tracing::enabled!(target: CHECK_LOG_TARGET, Level::DEBUG),
            Verdict::Deny => tracing::enabled!(target: CHECK_LOG_TARGET, Level::INFO),
            Verdict::Error => tracing::enabled!(target: CHECK_LOG_TARGET, Level::WARN),
        }
    }
}

/// The path without its query string or fragment.
pub fn route(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

/// `text` as it may go into a log line: visible ASCII only (no forged line breaks or terminal
/// escapes), at most `MAX_LOGGED_BYTES`.
fn loggable(text: &str) -> Cow<'_, str> {
    let clean = text.len() <= MAX_LOGGED_BYTES && text.bytes().all(|b| b.is_ascii_graphic());
    if clean {
        return Cow::Borrowed(text);
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(MAX_LOGGED_BYTES)
        .collect();
    if text.chars().count() > MAX_LOGGED_BYTES {
        out.push('…');
    }
    Cow::Owned(out)
}

/// Writes the check's log line: `warn` for an error, `info` for a denial, `debug` for an allow.
/// `client_id` is the authenticated client for an allow, the claimed one otherwise.
pub fn log_check(
    outcome: &Outcome,
    request: &AuthRequest,
    client_id: Option<&str>,
    elapsed: Duration,
    error: Option<&Unavailable>,
) {
    let client_id = client_id.filter(|c| !c.is_empty()).map(loggable);
    let client_id = client_id.as_deref();
    let method = loggable(&request.method);
    let canonical = crate::canonical::canonical_path(&request.path).ok();
    let route = loggable(canonical.as_deref().unwrap_or_else(|| route(&request.path)));
    let request_id = request
        .headers
        .get_all("x-request-id")
        .next()
        .flatten()
        .map(loggable);
    let request_id = request_id.as_deref();
    // Microseconds, as fractional milliseconds.
    let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    let decision = outcome.decision.as_str();
    match (outcome.decision, error) {
        (Verdict::Allow, _) => tracing::debug!(
            target: CHECK_LOG_TARGET,
            decision,
            reason = outcome.reason,
            client_id,
            method = %method,
            route = %route,
            request_id,
            latency_ms,
            "check allowed"
        ),
        (_, Some(error)) => tracing::warn!(
            target: CHECK_LOG_TARGET,
            decision,
            reason = outcome.reason,
            error = %error,
            client_id,
            method = %method,
            route = %route,
            request_id,
            latency_ms,
            "check failed"
        ),
        _ => tracing::info!(
            target: CHECK_LOG_TARGET,
            decision,
            reason = outcome.reason,
            status = outcome.status,
            client_id,
            method = %method,
            route = %route,
            request_id,
            latency_ms,
            "check denied"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_drops_query_and_fragment() {
        assert_eq!(route("/v1/orders?api_key=s3cret&x=1"), "/v1/orders");
        assert_eq!(route("/v1/orders#frag"), "/v1/orders");
        assert_eq!(route("/v1/orders"), "/v1/orders");
        assert_eq!(route("?only=query"), "");
    }

    #[test]
    fn loggable_text_cannot_forge_lines_or_grow_unbounded() {
        assert_eq!(loggable("client-1"), "client-1");
        assert_eq!(loggable("a\nb\u{1b}[0m c"), "a?b?[0m?c");
        let long = "x".repeat(MAX_LOGGED_BYTES + 10);
        let cut = loggable(&long);
        assert!(cut.starts_with(&"x".repeat(MAX_LOGGED_BYTES)) && cut.ends_with('…'));
    }
}
