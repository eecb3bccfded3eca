//! Envoy-shaped `CheckRequest`s for tests that talk to the sidecar over gRPC.

use base64::Engine;
use m2m_authz::proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};

/// `Basic base64(id:secret)`, as a caller would send it.
pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// `GET /` with Basic client credentials.
pub fn check_request(id: &str, secret: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    headers: [("authorization".to_owned(), basic(id, secret))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}
