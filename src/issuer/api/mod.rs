//! The issuer's HTTP API, on Stytch's paths.

mod auth;
mod clients;
mod error;
mod extract;
mod jwks;
mod jwt_templates;
mod token;

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};

use self::error::ApiError;
use super::keyring::KeyCache;
use super::m2m_template::TemplateCache;
use super::secrets::{ProjectSecret, generate_request_id};
use super::store::Store;
use super::token::TokenSettings;

/// Largest request body accepted; the biggest legitimate one is a client
/// with 4 KiB of trusted metadata and its scopes.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub(crate) struct AppState {
    /// One connection, used from blocking tasks; SQLite calls are short and
    /// the lock keeps them off the async workers' critical path.
    pub store: Mutex<Store>,
    pub keys: KeyCache,
    pub settings: TokenSettings,
    pub project_secret: ProjectSecret,
    /// The M2M template in force, read from the database per request so
    /// that a template set by another process applies at once.
    pub templates: TemplateCache,
    pub management: ManagementAccess,
}

/// Who may call the Management API subset, and under which slugs.
pub(crate) struct ManagementAccess {
    pub key_id: String,
    /// `None`: the routes refuse every request.
    pub key_secret: Option<ProjectSecret>,
    pub project_slug: String,
    pub environment_slug: String,
}

impl AppState {
    /// A panic while the lock was held leaves no half-written data behind
    /// (the open transaction rolls back on drop), so a poisoned lock is safe
    /// to reuse.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut store)
    }
}

/// Runs database and signing work off the async workers: SQLite may wait on
/// another process's write lock for seconds.
pub(crate) async fn blocking<T, F>(state: &Arc<AppState>, f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce(&AppState) -> T + Send + 'static,
{
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || f(&state)).await
}

/// A success body: `payload` plus Stytch's `request_id` and `status_code`.
pub(crate) fn success(request_id: &str, payload: Value) -> Response {
    let mut body = match payload {
        Value::Object(map) => map,
        other => {
            let mut map = Map::new();
            map.insert("data".into(), other);
            map
        }
    };
    body.insert("request_id".into(), Value::String(request_id.to_owned()));
    body.insert("status_code".into(), Value::from(200));
    (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let management = Router::new()
        .route("/v1/m2m/clients", post(clients::create))
        .route("/v1/m2m/clients/search", post(clients::search))
        .route(
            "/v1/m2m/clients/{client_id}",
            get(clients::get)
                .put(clients::update)
                .delete(clients::delete),
        )
        .route(
            "/v1/m2m/clients/{client_id}/secrets/rotate/start",
            post(clients::rotate_start),
        )
        .route(
            "/v1/m2m/clients/{client_id}/secrets/rotate",
            post(clients::rotate_complete),
        )
        .route(
            "/v1/m2m/clients/{client_id}/secrets/rotate/cancel",
            post(clients::rotate_cancel),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_project,
        ));
    let workspace = Router::new()
        .route(
            "/pwa/v3/projects/{project_slug}/environments/{environment_slug}/jwt_templates/{template_type}",
            get(jwt_templates::get).put(jwt_templates::set),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_management,
        ));
    Router::new()
        .route("/v1/public/{project_id}/oauth2/token", post(token::issue))
        .route("/v1/sessions/jwks/{project_id}", get(jwks::jwks))
        .merge(management)
        .merge(workspace)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            MAX_BODY_BYTES,
            crate::whole_body::read_first,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint on the embedded issuer",
        &generate_request_id(),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that HTTP method",
        &generate_request_id(),
    )
}
