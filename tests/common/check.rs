//! The one builder of what the sidecar is asked: Envoy-shaped `CheckRequest`s for tests (and
//! benchmarks) that talk gRPC or call the adapter, and `AuthRequest`s for those that call the
//! `Authorizer` directly.
//!
//! ```ignore
//! let req = Check::get("/v1/orders").basic("client-1", "s3cret").build();
//! let req = Check::new("POST", "/x").host("api.test").header("x-a", "b").build();
//! let auth = common::check::basic_request("client-1", "s3cret"); // an AuthRequest
//! ```

use std::collections::HashMap;

use base64::Engine;
use m2m_authz::proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use m2m_authz::request::{AuthRequest, Headers};

/// `Basic base64(id:secret)`, as a caller would send it.
pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One HTTP request as Envoy describes it in a `CheckRequest`.
#[derive(Debug, Clone)]
pub struct Check {
    method: String,
    host: String,
    path: String,
    scheme: String,
    headers: HashMap<String, String>,
}

impl Check {
    pub fn new(method: &str, path: &str) -> Self {
        Check {
            method: method.into(),
            host: String::new(),
            path: path.into(),
            scheme: String::new(),
            headers: HashMap::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = host.into();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// Adds a header (Envoy hands them over lower-cased; this does not change `name`).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn headers<V: AsRef<str>>(self, headers: &[(&str, V)]) -> Self {
        headers
            .iter()
            .fold(self, |c, (n, v)| c.header(n, v.as_ref()))
    }

    /// `Authorization: Basic` with `id:secret`.
    pub fn basic(self, id: &str, secret: &str) -> Self {
        self.header("authorization", basic(id, secret))
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", bearer(token))
    }

    pub fn build(self) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: self.method,
                        host: self.host,
                        path: self.path,
                        scheme: self.scheme,
                        headers: self.headers,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
    }
}

/// `GET /` with Basic client credentials.
pub fn check_request(id: &str, secret: &str) -> CheckRequest {
    Check::get("/").basic(id, secret).build()
}

/// An `AuthRequest` (no method, host or path) with these headers.
pub fn auth_request<V: AsRef<str>>(headers: &[(&str, V)]) -> AuthRequest {
    AuthRequest {
        headers: headers
            .iter()
            .map(|(n, v)| (*n, v.as_ref()))
            .collect::<Headers>(),
        ..Default::default()
    }
}

/// An `AuthRequest` with Basic client credentials.
pub fn basic_request(id: &str, secret: &str) -> AuthRequest {
    auth_request(&[("authorization", basic(id, secret))])
}

/// An `AuthRequest` with a Bearer token.
pub fn bearer_request(token: &str) -> AuthRequest {
    auth_request(&[("authorization", bearer(token))])
}
