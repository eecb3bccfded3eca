//! `/v1/m2m/clients…`: client management, behind the project's credentials.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::extract::{ApiPath, Body};
use super::{AppState, blocking, success};
use crate::issuer::clients::{self, ClientError, ClientUpdate, ClientView, NewClient};
use crate::issuer::secrets::{ClientSecret, generate_request_id};
use crate::issuer::store::{ClientQuery, ClientStatus, Filter, FilterField, StoreError};

const DEFAULT_SEARCH_LIMIT: u64 = 100;
const MAX_SEARCH_LIMIT: u64 = 1000;
const CURSOR_PREFIX: &str = "m2m-clients-after:";

/// The top-level fields each body type reads, for logging the others.
const CREATE_FIELDS: &[&str] = &[
    "client_id",
    "client_secret",
    "client_name",
    "client_description",
    "scopes",
    "trusted_metadata",
];
const UPDATE_FIELDS: &[&str] = &[
    "client_id",
    "client_name",
    "client_description",
    "status",
    "scopes",
    "trusted_metadata",
];
const SEARCH_FIELDS: &[&str] = &["limit", "cursor", "query"];

fn bad_request(error_type: &str, message: impl Into<String>, request_id: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, error_type, message, request_id)
}

/// Parses a JSON body, naming the offending field on failure. An empty body
/// counts as `{}` so endpoints with only optional fields accept bare POSTs.
///
/// Members the body type does not know are ignored, as Stytch does, so a
/// field a newer SDK sends does not break every call; the top-level ones are
/// logged at debug by name (`known` lists the type's fields). The known
/// fields keep their types, and a repeated one is still refused.
pub(super) fn parse_body<T: DeserializeOwned>(
    body: &Bytes,
    known: &[&str],
    request_id: &str,
) -> Result<T, ApiError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("invalid JSON body: {inner}")
        } else {
            format!("invalid JSON body at {path}: {inner}")
        };
        bad_request("bad_request", message, request_id)
    })?;
    if let Ok(members) = serde_json::from_slice::<BTreeMap<String, IgnoredAny>>(text) {
        for name in members.keys().filter(|k| !known.contains(&k.as_str())) {
            tracing::debug!(%request_id, field = %name, "ignored unknown request field");
        }
    }
    Ok(parsed)
}

fn client_error(e: ClientError, request_id: &str) -> ApiError {
    match e {
        ClientError::NotFound(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "m2m_client_not_found",
            e.to_string(),
            request_id,
        ),
        ClientError::Invalid { error_type, .. } => {
            bad_request(error_type, e.to_string(), request_id)
        }
        ClientError::RotationInProgress(_) => bad_request(
            "m2m_client_already_rotating_secret",
            e.to_string(),
            request_id,
        ),
        ClientError::NoRotation(_) => {
            bad_request("m2m_client_not_rotating_secret", e.to_string(), request_id)
        }
        ClientError::Store(StoreError::DuplicateClientId(_)) => {
            bad_request("duplicate_m2m_client_id", e.to_string(), request_id)
        }
        ClientError::Store(other) => {
            tracing::error!(%request_id, error = %other, "issuer database failure");
            ApiError::internal(request_id)
        }
    }
}

/// A client whose metadata lacks a key the template reads is still stored, as
/// on Stytch, but its tokens will lack that claim (and a sidecar that needs
/// it will refuse them), so the operator hears of it. Keys only, no values.
fn warn_missing_metadata(client_id: &str, missing: &[String]) {
    if !missing.is_empty() {
        tracing::warn!(
            %client_id,
            missing_keys = %missing.join(", "),
            "the M2M template reads trusted_metadata keys this client lacks; its tokens will \
             carry no claim for them"
        );
    }
}

/// Runs a client operation on a blocking thread and maps its errors.
async fn run<T, F>(state: &Arc<AppState>, request_id: &str, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&AppState) -> Result<T, ClientError> + Send + 'static,
{
    match blocking(state, f).await {
        Ok(result) => result.map_err(|e| client_error(e, request_id)),
        Err(join) => {
            tracing::error!(%request_id, error = %join, "client operation task failed");
            Err(ApiError::internal(request_id))
        }
    }
}

fn client_response(request_id: &str, view: ClientView) -> Response {
    success(request_id, json!({ "m2m_client": view }))
}

#[derive(Deserialize)]
struct CreateBody {
    client_id: Option<String>,
    /// Imports an existing secret (Stytch's migration path); stored only
    /// as its hash.
    client_secret: Option<String>,
    client_name: Option<String>,
    client_description: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    trusted_metadata: Option<Map<String, Value>>,
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let body: CreateBody = parse_body(&body, CREATE_FIELDS, &rid)?;
    let new = NewClient {
        client_id: body.client_id,
        client_secret: body.client_secret.map(ClientSecret::imported),
        client_name: body.client_name.unwrap_or_default(),
        client_description: body.client_description.unwrap_or_default(),
        scopes: body.scopes,
        trusted_metadata: body.trusted_metadata.unwrap_or_default(),
    };
    let (record, secret, missing) = run(&state, &rid, move |s| {
        s.with_store(|store| {
            let template = s.templates.current(store)?;
            let (record, secret) = clients::create(store, &template.claims, new)?;
            let missing = template.claims.missing_metadata(&record.trusted_metadata);
            Ok((record, secret, missing))
        })
    })
    .await?;
    tracing::info!(client_id = %record.client_id, "created m2m client");
    warn_missing_metadata(&record.client_id, &missing);
    let mut view = ClientView::from(&record);
    view.client_secret = Some(secret.expose().to_owned());
    Ok(client_response(&rid, view))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let record = run(&state, &rid, move |s| {
        s.with_store(|store| clients::get(store, &client_id))
    })
    .await?;
    Ok(client_response(&rid, ClientView::from(&record)))
}

#[derive(Deserialize)]
struct UpdateBody {
    /// Stytch's SDKs repeat the path's client id here; it must match.
    client_id: Option<String>,
    client_name: Option<String>,
    client_description: Option<String>,
    status: Option<String>,
    scopes: Option<Vec<String>>,
    trusted_metadata: Option<Map<String, Value>>,
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    ApiPath(client_id): ApiPath<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let body: UpdateBody = parse_body(&body, UPDATE_FIELDS, &rid)?;
    if body.client_id.as_ref().is_some_and(|id| *id != client_id) {
        return Err(bad_request(
            "m2m_client_invalid_client_id",
            "client_id in the body must be the one in the path",
            &rid,
        ));
    }
    let status = match body.status.as_deref() {
        None => None,
        Some(s) => Some(ClientStatus::parse(s).ok_or_else(|| {
            bad_request(
                "m2m_client_invalid_status",
                format!("status must be \"active\" or \"inactive\", not {s:?}"),
                &rid,
            )
        })?),
    };
    let change = ClientUpdate {
        client_name: body.client_name,
        client_description: body.client_description,
        status,
        scopes: body.scopes,
        trusted_metadata: body.trusted_metadata,
    };
    let metadata_changed = change.trusted_metadata.is_some();
    let (record, missing) = run(&state, &rid, move |s| {
        s.with_store(|store| {
            let template = s.templates.current(store)?;
            let record = clients::update(store, &template.claims, &client_id, change)?;
            let missing = template.claims.missing_metadata(&record.trusted_metadata);
            Ok((record, missing))
        })
    })
    .await?;
    if metadata_changed {
        warn_missing_metadata(&record.client_id, &missing);
    }
    Ok(client_response(&rid, ClientView::from(&record)))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let id = client_id.clone();
    run(&state, &rid, move |s| {
        s.with_store(|store| clients::delete(store, &id))
    })
    .await?;
    tracing::info!(%client_id, "deleted m2m client");
    Ok(success(&rid, json!({ "client_id": client_id })))
}

pub async fn rotate_start(
    State(state): State<Arc<AppState>>,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let (record, next) = run(&state, &rid, move |s| {
        s.with_store(|store| clients::rotate_start(store, &client_id))
    })
    .await?;
    let mut view = ClientView::from(&record);
    view.next_client_secret = Some(next.expose().to_owned());
    Ok(client_response(&rid, view))
}

pub async fn rotate_complete(
    State(state): State<Arc<AppState>>,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let record = run(&state, &rid, move |s| {
        s.with_store(|store| clients::rotate_complete(store, &client_id))
    })
    .await?;
    Ok(client_response(&rid, ClientView::from(&record)))
}

pub async fn rotate_cancel(
    State(state): State<Arc<AppState>>,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let record = run(&state, &rid, move |s| {
        s.with_store(|store| clients::rotate_cancel(store, &client_id))
    })
    .await?;
    Ok(client_response(&rid, ClientView::from(&record)))
}

#[derive(Deserialize)]
struct SearchBody {
    limit: Option<u64>,
    cursor: Option<String>,
    query: Option<SearchQuery>,
}

#[derive(Deserialize)]
struct SearchQuery {
    operator: String,
    /// Read member by member, so each malformed operand gets the
    /// `m2m_search_*` error Stytch names for it.
    #[serde(default)]
    operands: Vec<Value>,
}

/// One `{filter_name, filter_value}` operand.
fn to_filter(operand: &Value, rid: &str) -> Result<Filter, ApiError> {
    let name = match operand.get("filter_name") {
        None | Some(Value::Null) => {
            return Err(bad_request(
                "m2m_search_missing_filter_name",
                "each query operand needs a filter_name",
                rid,
            ));
        }
        Some(Value::String(name)) => name.as_str(),
        Some(_) => {
            return Err(bad_request(
                "m2m_search_filter_name_must_be_string",
                "filter_name must be a string",
                rid,
            ));
        }
    };
    let field = match name {
        "client_id" => FilterField::ClientId,
        "client_name" => FilterField::ClientName,
        "status" => FilterField::Status,
        "scopes" => FilterField::Scopes,
        other => {
            return Err(bad_request(
                "m2m_search_filter_name_not_recognized",
                format!(
                    "unknown filter_name {other:?} (use client_id, client_name, status or scopes)"
                ),
                rid,
            ));
        }
    };
    let values = match operand.get("filter_value") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                bad_request(
                    "m2m_search_expected_array_of_strings",
                    format!("filter_value of {name:?} must be an array of strings"),
                    rid,
                )
            })?,
        Some(_) => {
            return Err(bad_request(
                "m2m_search_expected_array_of_strings",
                format!("filter_value of {name:?} must be an array of strings"),
                rid,
            ));
        }
    };
    if values.is_empty() {
        return Err(bad_request(
            "m2m_search_missing_filter_value",
            format!("filter {name:?} needs at least one filter_value"),
            rid,
        ));
    }
    Ok(Filter { field, values })
}

fn encode_cursor(after: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{after}"))
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix(CURSOR_PREFIX)?.parse().ok()
}

fn to_query(query: Option<SearchQuery>, rid: &str) -> Result<ClientQuery, ApiError> {
    let Some(query) = query else {
        return Ok(ClientQuery::default());
    };
    let any = match query.operator.to_ascii_uppercase().as_str() {
        "AND" => false,
        "OR" => true,
        _ => {
            return Err(bad_request(
                "invalid_search_query",
                format!("query.operator must be AND or OR, not {:?}", query.operator),
                rid,
            ));
        }
    };
    let filters = query
        .operands
        .iter()
        .map(|operand| to_filter(operand, rid))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ClientQuery { any, filters })
}

pub async fn search(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    let body: SearchBody = parse_body(&body, SEARCH_FIELDS, &rid)?;
    let limit = body.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
    if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
        return Err(bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_SEARCH_LIMIT}"),
            &rid,
        ));
    }
    let after = match body.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            bad_request(
                "invalid_cursor",
                "cursor is not one this issuer returned",
                &rid,
            )
        })?),
    };
    let query = to_query(body.query, &rid)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let page = run(&state, &rid, move |s| {
        s.with_store(|store| {
            store
                .search_clients(&query, after, limit)
                .map_err(ClientError::from)
        })
    })
    .await?;
    let views: Vec<ClientView> = page.clients.iter().map(ClientView::from).collect();
    Ok(success(
        &rid,
        json!({
            "m2m_clients": views,
            "results_metadata": {
                "total": page.total,
                "next_cursor": page.next_after.map(encode_cursor),
            },
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("other:1")), None);
    }
}
