//! The CheckRequest the benchmarks send: GET /direct (the `direct_response` route of
//! scripts/bench) with the given headers, as Envoy would ask for it.

use base64::Engine;
use m2m_authz::proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use m2m_authz::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};

pub fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "127.0.0.1:10000".into(),
                    path: "/direct".into(),
                    scheme: "http".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// `Authorization: Basic` for a client id and secret.
pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}
