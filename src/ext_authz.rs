//! The Envoy edge: `envoy.service.auth.v3.Authorization/Check` turned into an `AuthRequest`
//! once, and a `Decision` turned back into a `CheckResponse`. Nothing here decides anything.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::answer::Edge;
use crate::authorizer::Authorizer;
use crate::decision::{Allow, Decision, Deny};
use crate::defaults::AUTHORIZATION;
use crate::metrics::Metrics;
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
    let mut headers = Headers::new();
    // With `encode_raw_headers`, Envoy sends each header line separately in `header_map`;
    // otherwise repeated headers arrive joined with "," in the `headers` map.
    match http.header_map {
        Some(map) if !map.headers.is_empty() => {
            for h in map.headers {
                let value = if h.raw_value.is_empty() {
                    Some(h.value)
                } else {
                    String::from_utf8(h.raw_value).ok()
                };
                headers.push(&h.key, value);
            }
        }
        _ => {
            for (name, value) in http.headers {
                headers.push(&name, Some(value));
            }
        }
    }
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
    /// own, and `answer::contained` catches the adapter's.
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        match crate::answer::contained(&self.authorizer, self.answer(request)).await {
            Some(answer) => answer,
            None => Err(Status::unavailable("the check could not be answered")),
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
        let result = crate::answer::decide(
            &self.authorizer,
            self.metrics.as_deref(),
            Edge::Grpc,
            &request,
            started,
        )
        .await;
        match result {
            Ok(decision) => Ok(Response::new(to_check_response(&decision))),
            // An infrastructure failure is not a denial: answering UNAVAILABLE lets the
            // operator's `failure_mode_allow` decide (false by default, so Envoy fails closed).
            Err(error) => Err(Status::unavailable(error.to_string())),
        }
    }
}
