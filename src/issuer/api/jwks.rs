//! `GET /v1/sessions/jwks/{project_id}`: the published verification keys.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::error::ApiError;
use super::extract::ApiPath;
use super::{AppState, blocking, success};
use crate::issuer::keys::PublicJwk;
use crate::issuer::secrets::generate_request_id;

pub async fn jwks(
    State(state): State<Arc<AppState>>,
    ApiPath(project_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    if project_id != state.settings.project_id {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "project_not_found",
            format!(
                "this issuer serves project {:?} only",
                state.settings.project_id
            ),
            &rid,
        ));
    }
    // Read on every request: another process may have rotated or retired
    // keys since the last one.
    let keys = blocking(&state, |s| s.with_store(|store| s.keys.published(store))).await;
    match keys {
        Ok(Ok(keys)) => {
            let jwks: Vec<&PublicJwk> = keys.iter().map(|k| k.jwk()).collect();
            Ok(success(&rid, json!({ "keys": jwks })))
        }
        Ok(Err(e)) => {
            tracing::error!(request_id = %rid, error = %e, "cannot load published keys");
            Err(ApiError::internal(&rid))
        }
        Err(e) => {
            tracing::error!(request_id = %rid, error = %e, "JWKS task failed");
            Err(ApiError::internal(&rid))
        }
    }
}
