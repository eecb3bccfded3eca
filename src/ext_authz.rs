//! The Envoy edge: `envoy.service.auth.v3.Authorization/Check` turned into an `AuthRequest`
//! once, and a `Decision` turned back into a `CheckResponse`. Nothing here decides anything.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::authorizer::Authorizer;
use crate::decision::{Allow, Decision, Deny};
use crate::defaults::AUTHORIZATION;
use crate::metrics::Metrics;
use crate::outcome::{Outcome, log_check};
use crate::proto::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use crate::proto::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    authorization_server::Authorization, check_response::HttpResponse,
};
use crate::proto::envoy::r#type::v3::HttpStatus;
use crate::proto::google::rpc;
use crate::request::{AuthRequest, Headers};
use crate::stats::Stats;

/// gRPC status codes carried in `CheckResponse.status` (google.rpc.Code).
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAUTHENTICATED: i32 = 16;
}

pub fn to_auth_request(check: CheckRequest) -> AuthRequest {
    let attributes = check.attributes.unwrap_or_default();
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    // With `encode_raw_headers`, Envoy sends each header line separately in `header_map`;
    // otherwise repeated headers arrive joined with "," in the `headers` map. Names and values
    // are moved out of the decoded message, not copied (issue 19).
    let headers = match http.header_map {
        Some(map) if !map.headers.is_empty() => {
            let mut headers = Headers::with_capacity(map.headers.len());
            for h in map.headers {
                let value = if h.raw_value.is_empty() {
                    Some(h.value)
                } else {
                    String::from_utf8(h.raw_value).ok()
                };
                headers.push_owned(h.key, value);
            }
            headers
        }
        _ => {
            let mut headers = Headers::with_capacity(http.headers.len());
            for (name, value) in http.headers {
                headers.push_owned(name, Some(value));
            }
            headers
        }
    };
    AuthRequest {
        method: http.method,
        host: http.host,
        path: http.path,
        headers,
        context: attributes.context_extensions.into_iter().collect(),
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
    }
}

pub fn to_check_response(decision: &Decision) -> CheckResponse {
    match decision {
        Decision::Allow(allow) => allowed(allow),
        Decision::Deny(deny) => denied(deny),
    }
}

fn allowed(allow: &Allow) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: code::OK,
            message: String::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: allowed_headers(allow),
            headers_to_remove: allow
                .remove()
                .iter()
                .filter(|h| !(allow.forward.is_some() && &***h == AUTHORIZATION))
                .map(|h| h.to_string())
                .collect(),
            response_headers_to_add: Vec::new(),
        })),
    }
}

fn denied(deny: &Deny) -> CheckResponse {
    let grpc_code = match deny.status {
        400 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        429 => code::RESOURCE_EXHAUSTED,
        _ => code::PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            message: deny.reason.to_owned(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(deny.status),
            }),
            headers: deny_headers(deny),
            body: deny.body.clone(),
        })),
    }
}

fn allowed_headers(allow: &Allow) -> Vec<HeaderValueOption> {
    let mut headers: Vec<HeaderValueOption> =
        allow.set().iter().map(|(k, v)| header(k, v)).collect();
    if let Some(token) = &allow.forward {
        headers.push(header(AUTHORIZATION, &format!("Bearer {}", token.expose())));
    }
    headers
}

fn deny_headers(deny: &Deny) -> Vec<HeaderValueOption> {
    let mut headers = vec![
        header("content-type", "application/json"),
        header("cache-control", "no-store"),
    ];
    if let Some(challenge) = &deny.challenge {
        headers.push(header("www-authenticate", challenge));
    }
    if let Some(seconds) = deny.retry_after {
        headers.push(header("retry-after", &seconds.to_string()));
    }
    headers
}

/// The tonic service.
pub struct ExtAuthz {
    authorizer: Arc<Authorizer>,
    metrics: Option<Arc<Metrics>>,
}

impl ExtAuthz {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        ExtAuthz {
            authorizer,
            metrics: None,
        }
    }

    /// Counts every answered check (and its latency) in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    /// A panic anywhere in answering — the conversion, the core, the response, the metrics —
    /// becomes a clean UNAVAILABLE (and is counted), never a reset stream: the core contains its
    /// own, and this catches the adapter's.
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        match AssertUnwindSafe(self.answer(request)).catch_unwind().await {
            Ok(answer) => answer,
            Err(_) => {
                Stats::add(&self.authorizer.counters().check_panics);
                tracing::error!("answering a check panicked; answered UNAVAILABLE");
                Err(Status::unavailable("the check could not be answered"))
            }
        }
    }
}

impl ExtAuthz {
    async fn answer(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let request = to_auth_request(request.into_inner());
        // Only exported traces need a span per check; without them it would be pure cost.
        let span = if crate::otel::enabled() {
            tracing::info_span!(
                "ext_authz.check",
                otel.kind = "server",
                otel.status_code = Empty,
                decision = Empty,
                reason = Empty,
                status = Empty,
            )
        } else {
            tracing::Span::none()
        };
        crate::otel::set_parent(&span, &request.headers);
        let result = self
            .authorizer
            .check(&request)
            .instrument(span.clone())
            .await;
        let elapsed = started.elapsed();
        let outcome = Outcome::of(&result);
        span.record("decision", outcome.decision.as_str());
        span.record("reason", outcome.reason);
        span.record("status", outcome.status);
        if let Some(metrics) = &self.metrics {
            metrics.record_check(&outcome, elapsed);
        }
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        if outcome.is_logged() {
            span.in_scope(|| match &result {
                Ok(Decision::Allow(a)) => {
                    log_check(&outcome, &request, Some(a.client_id()), elapsed, None);
                }
                Ok(Decision::Deny(_)) => {
                    let claimed = self.authorizer.claimed_client_id(&request);
                    log_check(&outcome, &request, claimed.as_deref(), elapsed, None);
                }
                Err(error) => {
                    let claimed = self.authorizer.claimed_client_id(&request);
                    log_check(&outcome, &request, claimed.as_deref(), elapsed, Some(error));
                }
            });
        }
        match result {
            Ok(decision) => Ok(Response::new(to_check_response(&decision))),
            // An infrastructure failure is not a denial: answering UNAVAILABLE lets the
            // operator's `failure_mode_allow` decide (false by default, so Envoy fails closed).
            Err(error) => Err(Status::unavailable(error.to_string())),
        }
    }
}
