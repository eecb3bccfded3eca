//! HTTP Basic credentials: the project's for the management API, a client's
//! at the token endpoint.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::AppState;
use super::error::ApiError;
use crate::issuer::secrets::{ct_str_eq, generate_request_id};

/// Accepts Basic payloads with or without `=` padding; clients differ.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub struct BasicCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug)]
pub enum AuthHeader {
    Missing,
    Basic(BasicCredentials),
    /// Basic, but not decodable into `user:password`.
    MalformedBasic,
    /// Another scheme, such as `Bearer`.
    OtherScheme,
}

pub fn auth_header(headers: &HeaderMap) -> AuthHeader {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return AuthHeader::Missing;
    };
    let Ok(value) = value.to_str() else {
        return AuthHeader::MalformedBasic;
    };
    let (scheme, payload) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return AuthHeader::OtherScheme;
    }
    let decoded = BASIC_B64
        .decode(payload.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((user, password)) => AuthHeader::Basic(BasicCredentials {
            user: user.to_owned(),
            password: password.to_owned(),
        }),
        None => AuthHeader::MalformedBasic,
    }
}

/// Undoes `application/x-www-form-urlencoded` encoding of one value, as
/// RFC 6749 §2.3.1 requires for client credentials in Basic auth. `None` when
/// a `%` escape is broken or the result is not UTF-8.
pub fn form_urldecode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Middleware for management routes: only the project's own Basic
/// credentials pass. A client's credentials or an access token are refused
/// like any other, so a leaked M2M secret cannot mint more clients.
pub async fn require_project(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match auth_header(request.headers()) {
        AuthHeader::Basic(creds) => {
            // Both comparisons always run (`&`, not `&&`).
            ct_str_eq(&creds.user, &state.settings.project_id)
                & ct_str_eq(&creds.password, state.project_secret.expose())
        }
        _ => false,
    };
    if allowed {
        next.run(request).await
    } else {
        ApiError::unauthorized(&generate_request_id()).into_response()
    }
}

/// Middleware for the Management API subset (`/pwa/v3/…`): only the
/// configured workspace key (`management.key_id:key_secret`) passes, as
/// Stytch's management API takes only workspace keys. The project secret does
/// not open these routes, and without a configured key secret nothing does.
pub async fn require_management(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match (auth_header(request.headers()), &state.management.key_secret) {
        (AuthHeader::Basic(creds), Some(secret)) => {
            ct_str_eq(&creds.user, &state.management.key_id)
                & ct_str_eq(&creds.password, secret.expose())
        }
        _ => false,
    };
    if allowed {
        next.run(request).await
    } else {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized_credentials",
            "management API requests need HTTP Basic credentials key_id:key_secret of the \
             issuer's management key (management.key_id, management.key_secret)",
            &generate_request_id(),
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn parses_basic_with_and_without_padding() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("id:se:cret");
        match auth_header(&headers(&format!("Basic {b64}"))) {
            AuthHeader::Basic(c) => {
                assert_eq!(c.user, "id");
                assert_eq!(c.password, "se:cret");
            }
            other => panic!("{other:?}"),
        }
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("ab:c");
        assert!(matches!(
            auth_header(&headers(&format!("basic {unpadded}"))),
            AuthHeader::Basic(_)
        ));
    }

    #[test]
    fn classifies_other_headers() {
        assert!(matches!(
            auth_header(&HeaderMap::new()),
            AuthHeader::Missing
        ));
        assert!(matches!(
            auth_header(&headers("Bearer abc.def.ghi")),
            AuthHeader::OtherScheme
        ));
        assert!(matches!(
            auth_header(&headers("Basic !!!")),
            AuthHeader::MalformedBasic
        ));
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        assert!(matches!(
            auth_header(&headers(&format!("Basic {no_colon}"))),
            AuthHeader::MalformedBasic
        ));
    }

    #[test]
    fn form_urldecode_follows_rfc6749() {
        assert_eq!(form_urldecode("a+b%3Ac%25").as_deref(), Some("a b:c%"));
        assert_eq!(
            form_urldecode("plain-id_1.~").as_deref(),
            Some("plain-id_1.~")
        );
        assert_eq!(form_urldecode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(form_urldecode("bad%2"), None);
        assert_eq!(form_urldecode("bad%zz"), None);
        assert_eq!(form_urldecode("%FF"), None);
    }

    #[test]
    fn debug_redacts_password() {
        let c = BasicCredentials {
            user: "u".into(),
            password: "hunter2-secret".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
