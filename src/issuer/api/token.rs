//! `POST /v1/public/{project_id}/oauth2/token`: the client-credentials grant.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::auth::{AuthHeader, auth_header, form_urldecode};
use super::error::OAuthError;
use super::extract::{TokenBody, TokenPathId};
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

/// The parameters this endpoint reads; others are ignored (RFC 6749 §3.2).
const KNOWN_PARAMS: [&str; 4] = ["grant_type", "client_id", "client_secret", "scope"];

/// A JSON object's members in the order sent, duplicates kept, so that a
/// repeated name can be refused: `serde_json::Map` would keep the last one
/// silently, and two values for one credential are an ambiguity to refuse,
/// as the form body already does.
struct JsonMembers(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for JsonMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonMembers, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    members.push(entry);
                }
                Ok(JsonMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// Stytch takes JSON as well as the standard form encoding. In either, a
/// parameter this endpoint reads may appear once; in JSON any repeated
/// member name is refused.
fn parse_params(headers: &HeaderMap, body: &Bytes, rid: &str) -> Result<TokenParams, OAuthError> {
    let mut params = TokenParams::default();
    if is_json(headers) {
        let JsonMembers(members) = serde_json::from_slice(body).map_err(|e| {
            OAuthError::invalid_request(format!("body is not a JSON object: {e}"), rid)
        })?;
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        for (name, value) in members {
            if !seen.insert(name.clone()) {
                return Err(OAuthError::invalid_request(
                    format!("member {name} is given more than once"),
                    rid,
                ));
            }
            let known = KNOWN_PARAMS.contains(&name.as_str());
            match value {
                Value::Null => {}
                Value::String(s) if known => params.set(&name, s, rid)?,
                _ if known => {
                    return Err(OAuthError::invalid_request(
                        format!("{name} must be a string"),
                        rid,
                    ));
                }
                _ => {
                    tracing::debug!(request_id = %rid, member = %name, "ignored unknown token request member")
                }
            }
        }
    } else {
        for (name, value) in form_urlencoded::parse(body) {
            if !KNOWN_PARAMS.contains(&name.as_ref()) {
                tracing::debug!(request_id = %rid, parameter = %name, "ignored unknown token request parameter");
            }
            params.set(&name, value.into_owned(), rid)?;
        }
    }
    Ok(params)
}

/// Client credentials from the Basic header or the body.
///
/// The Basic header may carry either the client's own credentials (RFC 6749
/// §2.3.1, form-urlencoded) or, as Stytch's Python SDK sends on every
/// request, the project's (`project_id:project_secret`, as sent, like the
/// management API takes them) beside the client's credentials in the body.
/// This project's id with the project secret, or with a different client id
/// in the body, means the project (then its secret must be right, and the
/// body's client is the one authenticated); otherwise the Basic header holds
/// the client's (then body credentials, if any, must agree). Anything else
/// is refused rather than guessed at.
///
/// The client's failure status follows where its credentials came from
/// (RFC 6749 §5.2): 401 with `WWW-Authenticate` only when the client
/// authenticated through the Authorization header, else 400, which is what
/// Stytch answers SDKs that send them in the body.
fn credentials(
    state: &AppState,
    headers: &HeaderMap,
    params: &mut TokenParams,
    rid: &str,
) -> Result<ClientCredentials, OAuthError> {
    let basic = match auth_header(headers) {
        AuthHeader::Missing => None,
        AuthHeader::Basic(creds) => Some(creds),
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
    let Some(creds) = basic else {
        return match (body_id, body_secret) {
            (Some(id), Some(secret)) => Ok(ClientCredentials::in_body(id, secret)),
            _ => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "client_id and client_secret are required",
                rid,
            )),
        };
    };
    let project_secret_ok = ct_str_eq(&creds.password, state.project_secret.expose());
    if creds.user == state.settings.project_id
        && (project_secret_ok || body_id.as_ref().is_some_and(|b| *b != creds.user))
    {
        if !project_secret_ok {
            return Err(OAuthError::invalid_client(
                "the project credentials in the Authorization header are wrong",
                rid,
            ));
        }
        return match (body_id, body_secret) {
            (Some(id), Some(secret)) => Ok(ClientCredentials::in_body(id, secret)),
            _ => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "client_id and client_secret are required in the body beside project credentials",
                rid,
            )),
        };
    }
    let (Some(id), Some(secret)) = (form_urldecode(&creds.user), form_urldecode(&creds.password))
    else {
        return Err(OAuthError::invalid_client(
            "Basic credentials are not form-urlencoded correctly",
            rid,
        ));
    };
    if body_id.as_ref().is_some_and(|b| *b != id) {
        return Err(OAuthError::invalid_request(
            "the Authorization header holds neither the body's client_id nor this project's id",
            rid,
        ));
    }
    if body_secret.as_ref().is_some_and(|b| !ct_str_eq(b, &secret)) {
        return Err(OAuthError::invalid_request(
            "client credentials in the Authorization header and the body differ",
            rid,
        ));
    }
    Ok(ClientCredentials {
        id,
        secret,
        in_header: true,
    })
}

/// The client's credentials, and whether they came in the Authorization
/// header (then a refusal is 401 with `WWW-Authenticate`, else 400).
struct ClientCredentials {
    id: String,
    secret: String,
    in_header: bool,
}

impl ClientCredentials {
    fn in_body(id: String, secret: String) -> Self {
        Self {
            id,
            secret,
            in_header: false,
        }
    }

    fn refused(&self, description: &str, rid: &str) -> OAuthError {
        if self.in_header {
            OAuthError::invalid_client(description, rid)
        } else {
            OAuthError::new(StatusCode::BAD_REQUEST, "invalid_client", description, rid)
        }
    }
}

pub async fn issue(
    State(state): State<Arc<AppState>>,
    TokenPathId(project_id): TokenPathId,
    headers: HeaderMap,
    TokenBody(body): TokenBody,
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
    let client = credentials(&state, &headers, &mut params, &rid)?;
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
        issue_blocking(s, &client, requested, &task_rid)
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
    credentials: &ClientCredentials,
    requested: Option<Vec<String>>,
    rid: &str,
) -> Result<String, OAuthError> {
    let loaded = state.with_store(|store| {
        clients::authenticate(store, &credentials.id, &credentials.secret).map(|client| {
            (
                client,
                state.keys.signing_key(store),
                state.templates.current(store),
            )
        })
    });
    let (client, key, template) = match loaded {
        Ok((client, Ok(key), Ok(template))) => (client, key, template),
        Ok((_, Err(e), _)) => {
            tracing::error!(request_id = %rid, error = %e, "no usable signing key");
            return Err(OAuthError::server_error(rid));
        }
        Ok((_, _, Err(e))) => {
            tracing::error!(request_id = %rid, error = %e, "no usable M2M template");
            return Err(OAuthError::server_error(rid));
        }
        Err(AuthError::BadCredentials) => {
            return Err(credentials.refused("unknown client or wrong client secret", rid));
        }
        Err(AuthError::Inactive) => {
            return Err(credentials.refused("the client is inactive", rid));
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
        &template.claims,
        template.custom_audience.as_deref(),
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
            "custom_claims_too_large",
            format!("cannot build this client's custom claims: {source}"),
            rid,
        )),
        Err(e @ MintError::Key(_)) => {
            tracing::error!(request_id = %rid, error = %e, "signing failed");
            Err(OAuthError::server_error(rid))
        }
    }
}
