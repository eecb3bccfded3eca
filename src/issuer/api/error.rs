//! The two JSON error shapes Stytch uses: the management API's
//! (`error_type`/`error_message`) and the OAuth token endpoint's
//! (`error`/`error_description`, RFC 6749 §5.2 plus Stytch's extras).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Where Stytch documents its errors: one page per status, one anchor per
/// `error_type`.
const ERRORS_DOC: &str = "https://stytch.com/docs/api-reference/consumer/api/errors";

fn error_url(status: StatusCode, error_type: &str) -> String {
    format!("{ERRORS_DOC}/{}#{error_type}", status.as_u16())
}

fn error_uri(status: StatusCode) -> String {
    format!("{ERRORS_DOC}/{}", status.as_u16())
}

/// A management-API or JWKS error.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: String,
    pub message: String,
    pub request_id: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        error_type: impl Into<String>,
        message: impl Into<String>,
        request_id: &str,
    ) -> Self {
        Self {
            status,
            error_type: error_type.into(),
            message: message.into(),
            request_id: request_id.to_owned(),
        }
    }

    pub fn internal(request_id: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "the issuer failed to handle the request; see its log",
            request_id,
        )
    }

    pub fn unauthorized(request_id: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized_credentials",
            "management requests need HTTP Basic credentials project_id:project_secret",
            request_id,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status_code": self.status.as_u16(),
            "request_id": self.request_id,
            "error_type": self.error_type,
            "error_message": self.message,
            "error_url": error_url(self.status, &self.error_type),
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"m2m-issuer\""),
            );
        }
        response
    }
}

/// A token-endpoint error.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    pub request_id: String,
}

impl OAuthError {
    pub fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
        request_id: &str,
    ) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            request_id: request_id.to_owned(),
        }
    }

    pub fn invalid_request(description: impl Into<String>, request_id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            description,
            request_id,
        )
    }

    pub fn invalid_client(description: impl Into<String>, request_id: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            description,
            request_id,
        )
    }

    pub fn server_error(request_id: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the issuer failed to handle the request; see its log",
            request_id,
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.error,
            "error_description": self.description,
            "error_uri": error_uri(self.status),
            "status_code": self.status.as_u16(),
            "request_id": self.request_id,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"m2m-issuer\""),
            );
        }
        response
    }
}
