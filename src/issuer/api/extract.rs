//! Request parts taken so that a refusal keeps the API's JSON error shape:
//! axum's own extractors answer a too-large body or an undecodable path in
//! plain text, which Stytch's SDKs report only as an unknown error.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{ApiError, OAuthError};
use crate::issuer::secrets::generate_request_id;

/// The `error_type` of a body axum refused: too large (413, the limit is
/// the router's) or unreadable.
fn body_error_type(status: axum::http::StatusCode) -> &'static str {
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        "request_too_large"
    } else {
        "bad_request"
    }
}

/// A management request's body.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                let status = e.status();
                ApiError::new(
                    status,
                    body_error_type(status),
                    e.body_text(),
                    &generate_request_id(),
                )
            })
    }
}

/// The token endpoint's body; refusals in the OAuth shape.
pub struct TokenBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for TokenBody {
    type Rejection = OAuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(TokenBody)
            .map_err(|e| {
                OAuthError::new(
                    e.status(),
                    "invalid_request",
                    e.body_text(),
                    &generate_request_id(),
                )
            })
    }
}

/// A management or JWKS route's path parameters (a client id, a project id,
/// the template's slugs); a path that does not decode is a 400 in the API's
/// shape.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "bad_request",
                    e.body_text(),
                    &generate_request_id(),
                )
            })
    }
}

/// The token route's project id; refusals in the OAuth shape.
pub struct TokenPathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TokenPathId {
    type Rejection = OAuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| TokenPathId(id))
            .map_err(|e| OAuthError::invalid_request(e.body_text(), &generate_request_id()))
    }
}
