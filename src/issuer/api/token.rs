//! `POST /v1/public/{project_id}/oauth2/token`: the client-credentials grant.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::auth::{AuthHeader, auth_header, form_urldecode};
use super::error::OAuthError;
use super::{AppState, blocking, success};
use crate::issuer::clients::{self, AuthError};
use crate::issuer::scopes;
use crate::issuer::secrets::{ct_str_eq, generate_request_id};
use crate::issuer::store::now_unix;
use crate::issuer::token::{MintError, grant_scopes, mint};

const GRANT_TYPE: &str = "client_credentials";

/// The request parameters this endpoint understands; others are ignored as
/// RFC 6749 §3.2 asks.
#[derive(Default)]
struct TokenParams {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

impl TokenParams {
    /// Empty values count as omitted (RFC 6749 §3.1).
    fn set(&mut self, name: &str, value: String, rid: &str) -> Result<(), OAuthError> {
        let slot = match name {
            "grant_type" => &mut self.grant_type,
            "client_id" => &mut self.client_id,
            "client_secret" => &mut self.client_secret,
            "scope" => &mut self.scope,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(OAuthError::invalid_request(
                format!("parameter {name} is given more than once"),
                rid,
            ));
        }
        if !value.is_empty() {
            *slot = Some(value);
        }
        Ok(())
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Stytch takes JSON as well as the standard form encoding.
fn parse_params(headers: &HeaderMap, body: &Bytes, rid: &str) -> Result<TokenParams, OAuthError> {
    let mut params = TokenParams::default();
    if is_json(headers) {
        let map: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
            OAuthError::invalid_request(format!("body is not a JSON object: {e}"), rid)
        })?;
        for (name, value) in map {
            match value {
                Value::Null => {}
                Value::String(s) => params.set(&name, s, rid)?,
                _ if matches!(
                    name.as_str(),
                    "grant_type" | "client_id" | "client_secret" | "scope"
                ) =>
                {
                    return Err(OAuthError::invalid_request(
                        format!("{name} must be a string"),
                        rid,
                    ));
                }
                _ => {}
            }
        }
    } else {
        for (name, value) in form_urlencoded::parse(body) {
            params.set(&name, value.into_owned(), rid)?;
        }
    }
    Ok(params)
}

/// Client credentials from the Basic header or the body. Both may be
/// present only if they agree.
fn credentials(
    headers: &HeaderMap,
    params: &mut TokenParams,
    rid: &str,
) -> Result<(String, String), OAuthError> {
    let basic = match auth_header(headers) {
        AuthHeader::Missing => None,
        AuthHeader::Basic(creds) => {
            match (form_urldecode(&creds.user), form_urldecode(&creds.password)) {
                (Some(id), Some(secret)) => Some((id, secret)),
                _ => {
                    return Err(OAuthError::invalid_client(
                        "Basic credentials are not form-urlencoded correctly",
                        rid,
                    ));
                }
            }
        }
        AuthHeader::MalformedBasic => {
            return Err(OAuthError::invalid_client(
                "the Authorization header is not valid Basic credentials",
                rid,
            ));
        }
        AuthHeader::OtherScheme => {
            return Err(OAuthError::invalid_client(
                "authenticate with HTTP Basic or client_id and client_secret in the body",
                rid,
            ));
        }
    };
    let body_id = params.client_id.take();
    let body_secret = params.client_secret.take();
    match basic {
        Some((id, secret)) => {
            let id_differs = body_id.as_ref().is_some_and(|b| *b != id);
            let secret_differs = body_secret.as_ref().is_some_and(|b| !ct_str_eq(b, &secret));
            if id_differs || secret_differs {
                return Err(OAuthError::invalid_request(
                    "client credentials in the Authorization header and the body differ",
                    rid,
                ));
            }
            Ok((id, secret))
        }
        None => match (body_id, body_secret) {
            (Some(id), Some(secret)) => Ok((id, secret)),
            _ => Err(OAuthError::invalid_client(
                "client_id and client_secret are required",
                rid,
            )),
        },
    }
}

pub async fn issue(
    State(state): State<Arc<AppState>>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let rid = generate_request_id();
    if project_id != state.settings.project_id {
        return Err(OAuthError::new(
            StatusCode::NOT_FOUND,
            "project_not_found",
            format!(
                "this issuer serves project {:?} only",
                state.settings.project_id
            ),
            &rid,
        ));
    }
    let mut params = parse_params(&headers, &body, &rid)?;
    match params.grant_type.as_deref() {
        None => {
            return Err(OAuthError::invalid_request("grant_type is required", &rid));
        }
        Some(GRANT_TYPE) => {}
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; use {GRANT_TYPE}"),
                &rid,
            ));
        }
    }
    let (client_id, secret) = credentials(&headers, &mut params, &rid)?;
    let requested = params
        .scope
        .as_deref()
        .map(scopes::parse_space_separated)
        .transpose()
        .map_err(|e| {
            OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                e.to_string(),
                &rid,
            )
        })?
        // A scope parameter of only spaces asks for nothing in particular.
        .filter(|s| !s.is_empty());

    let task_rid = rid.clone();
    let minted = blocking(&state, move |s| {
        issue_blocking(s, &client_id, &secret, requested, &task_rid)
    })
    .await;
    let token = match minted {
        Ok(result) => result?,
        Err(e) => {
            tracing::error!(request_id = %rid, error = %e, "token task failed");
            return Err(OAuthError::server_error(&rid));
        }
    };
    let mut response = success(
        &rid,
        json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": state.settings.lifetime.as_secs(),
        }),
    );
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn issue_blocking(
    state: &AppState,
    client_id: &str,
    secret: &str,
    requested: Option<Vec<String>>,
    rid: &str,
) -> Result<String, OAuthError> {
    let loaded = state.with_store(|store| {
        clients::authenticate(store, client_id, secret)
            .map(|client| (client, state.keys.signing_key(store)))
    });
    let (client, key) = match loaded {
        Ok((client, Ok(key))) => (client, key),
        Ok((_, Err(e))) => {
            tracing::error!(request_id = %rid, error = %e, "no usable signing key");
            return Err(OAuthError::server_error(rid));
        }
        Err(AuthError::BadCredentials) => {
            return Err(OAuthError::invalid_client(
                "unknown client or wrong client secret",
                rid,
            ));
        }
        Err(AuthError::Inactive) => {
            return Err(OAuthError::invalid_client("the client is inactive", rid));
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(request_id = %rid, error = %e, "token request failed");
            return Err(OAuthError::server_error(rid));
        }
    };
    let scopes = grant_scopes(&client, requested).map_err(|missing| {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("the client does not have scope {missing:?}"),
            rid,
        )
    })?;
    match mint(
        &state.settings,
        &state.template,
        &key,
        &client,
        &scopes,
        now_unix(),
    ) {
        Ok(token) => {
            tracing::debug!(request_id = %rid, client_id = %client.client_id, kid = %key.kid(), "issued access token");
            Ok(token)
        }
        Err(MintError::Claims { source, .. }) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_custom_claims",
            format!("cannot build this client's custom claims: {source}"),
            rid,
        )),
        Err(e @ MintError::Key(_)) => {
            tracing::error!(request_id = %rid, error = %e, "signing failed");
            Err(OAuthError::server_error(rid))
        }
    }
}
