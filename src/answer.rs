//! The transport-free part of answering one check, shared exactly by every edge (gRPC Check in
//! `ext_authz`, the HTTP endpoint in `http_authz`): the trace span, the call into the core, the
//! metrics, the per-check log line, and the containment of a panic. Each edge only converts its
//! request into an `AuthRequest` and the result back into its own response.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use tracing::Instrument;
use tracing::field::Empty;

use crate::authorizer::{Authorizer, Unavailable};
use crate::decision::Decision;
use crate::metrics::Metrics;
use crate::outcome::{Outcome, log_check};
use crate::request::AuthRequest;
use crate::stats::Stats;

/// Which edge a check arrived on, for its trace span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Grpc,
    Http,
}

impl Edge {
    pub fn as_str(self) -> &'static str {
        match self {
            Edge::Grpc => "grpc",
            Edge::Http => "http",
        }
    }
}

/// Decides `request` with the core, recording the outcome in the span, `metrics` and the
/// check log. `started` is when the edge received the request (the latency counts conversion).
pub async fn decide(
    authorizer: &Authorizer,
    metrics: Option<&Metrics>,
    edge: Edge,
    request: &AuthRequest,
    started: Instant,
) -> Result<Decision, Unavailable> {
    // Only exported traces need a span per check; without them it would be pure cost.
    let span = if crate::otel::enabled() {
        tracing::info_span!(
            "ext_authz.check",
            otel.kind = "server",
            otel.status_code = Empty,
            edge = edge.as_str(),
            decision = Empty,
            reason = Empty,
            status = Empty,
        )
    } else {
        tracing::Span::none()
    };
    crate::otel::set_parent(&span, &request.headers);
    let result = authorizer.check(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let outcome = Outcome::of(&result);
    span.record("decision", outcome.decision.as_str());
    span.record("reason", outcome.reason);
    span.record("status", outcome.status);
    if let Some(metrics) = metrics {
        metrics.record_check(&outcome, elapsed);
    }
    if result.is_err() {
        span.record("otel.status_code", "error");
    }
    if outcome.is_logged() {
        span.in_scope(|| match &result {
            Ok(Decision::Allow(a)) => {
                log_check(&outcome, request, Some(a.client_id()), elapsed, None);
            }
            Ok(Decision::Deny(_)) => {
                let claimed = authorizer.claimed_client_id(request);
                log_check(&outcome, request, claimed.as_deref(), elapsed, None);
            }
            Err(error) => {
                let claimed = authorizer.claimed_client_id(request);
                log_check(&outcome, request, claimed.as_deref(), elapsed, Some(error));
            }
        });
    }
    result
}

/// Runs an edge's whole answer — conversion, core, response, metrics — so that a panic anywhere
/// in it becomes `None` (counted and logged), which the edge answers as "unavailable", never a
/// reset stream or a dropped connection. The core contains its own panics; this catches the
/// edge's.
pub async fn contained<T>(authorizer: &Authorizer, answer: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(answer).catch_unwind().await {
        Ok(answer) => Some(answer),
        Err(_) => {
            Stats::add(&authorizer.counters().check_panics);
            tracing::error!("answering a check panicked; answered unavailable");
            None
        }
    }
}
