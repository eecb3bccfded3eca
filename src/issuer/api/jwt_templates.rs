//! The M2M JWT template on the Management API's path, as Stytch's
//! `stytch-management` SDKs call it:
//! `GET|PUT /pwa/v3/projects/{project_slug}/environments/{environment_slug}/jwt_templates/M2M`.
//! Behind [`super::auth::require_management`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::clients::parse_body;
use super::error::ApiError;
use super::extract::{ApiPath, Body};
use super::{AppState, blocking, success};
use crate::issuer::m2m_template::{self, SetTemplateError};
use crate::issuer::secrets::generate_request_id;
use crate::issuer::store::StoredTemplate;

/// The only template type the issuer manages; Stytch also has `SESSION`.
const M2M: &str = "M2M";
const SET_FIELDS: &[&str] = &["template_content", "custom_audience"];

#[derive(Deserialize)]
pub(crate) struct TemplatePath {
    project_slug: String,
    environment_slug: String,
    template_type: String,
}

#[derive(Deserialize)]
struct SetBody {
    template_content: Option<String>,
    #[serde(default)]
    custom_audience: Option<String>,
}

/// A wrong slug is a resource that does not exist here, as on Stytch.
fn check_path(state: &AppState, path: &TemplatePath, rid: &str) -> Result<(), ApiError> {
    if path.project_slug != state.management.project_slug {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "project_not_found",
            "no project with this project_slug (see the issuer's management.project_slug)",
            rid,
        ));
    }
    if path.environment_slug != state.management.environment_slug {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "environment_not_found",
            "no environment with this environment_slug (see the issuer's \
             management.environment_slug)",
            rid,
        ));
    }
    if path.template_type != M2M {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_jwt_template_type",
            "the embedded issuer manages only the M2M JWT template",
            rid,
        ));
    }
    Ok(())
}

fn template_response(rid: &str, stored: &StoredTemplate) -> Response {
    success(
        rid,
        json!({
            "jwt_template": {
                "template_content": stored.content,
                "custom_audience": stored.custom_audience,
                "jwt_template_type": M2M,
            }
        }),
    )
}

fn store_failure(rid: &str, error: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(request_id = %rid, %error, "issuer database failure");
    ApiError::internal(rid)
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    ApiPath(path): ApiPath<TemplatePath>,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    check_path(&state, &path, &rid)?;
    let stored = blocking(&state, |s| s.with_store(|store| store.template()))
        .await
        .map_err(|e| store_failure(&rid, &e))?
        .map_err(|e| store_failure(&rid, &e))?
        .ok_or_else(|| store_failure(&rid, &"no M2M template row"))?;
    Ok(template_response(&rid, &stored))
}

pub async fn set(
    State(state): State<Arc<AppState>>,
    ApiPath(path): ApiPath<TemplatePath>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let rid = generate_request_id();
    check_path(&state, &path, &rid)?;
    let body: SetBody = parse_body(&body, SET_FIELDS, &rid)?;
    let Some(content) = body.template_content else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_template_content",
            "template_content is required",
            &rid,
        ));
    };
    let audience = body.custom_audience.unwrap_or_default();
    let result = blocking(&state, move |s| {
        s.with_store(|store| m2m_template::set(store, &content, &audience))
    })
    .await
    .map_err(|e| store_failure(&rid, &e))?;
    match result {
        Ok(stored) => {
            tracing::info!(request_id = %rid, "M2M template set through the management API");
            Ok(template_response(&rid, &stored))
        }
        Err(e @ SetTemplateError::Template(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_template_content",
            e.to_string(),
            &rid,
        )),
        Err(e @ SetTemplateError::Audience) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_custom_audience",
            e.to_string(),
            &rid,
        )),
        Err(SetTemplateError::Store(e)) => Err(store_failure(&rid, &e)),
    }
}
