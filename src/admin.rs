//! The admin HTTP port (`listen.admin`): `/metrics` for Prometheus, `/healthz` and `/readyz`
//! for probes, `/version`. Separate from the Check port, so a scrape or a probe never competes
//! with Envoy's checks, and TCP only (probes and Prometheus speak TCP).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CONTENT_TYPE, Metrics};

/// What the admin handlers read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// True once every provider's JWKS has been loaded (the condition that makes gRPC health
    /// SERVING).
    pub keys_loaded: watch::Receiver<bool>,
    /// Cancelled when shutdown begins (the supervisor's Check stage): not ready for new
    /// traffic while in-flight checks drain.
    pub draining: CancellationToken,
    /// `cache.shared`, for `/readyz` detail: its trouble never makes the pod not ready.
    #[cfg(feature = "shared-cache")]
    pub shared_cache: Option<Arc<crate::shared_cache::SharedTier>>,
}

impl AdminState {
    /// `None` when ready, else why not.
    fn not_ready(&self) -> Option<&'static str> {
        if self.draining.is_cancelled() {
            Some("shutting down")
        } else if !*self.keys_loaded.borrow() {
            Some("signing keys not loaded yet")
        } else {
            None
        }
    }
}

/// The most request body read (and ignored: every route is a GET) to keep a connection reusable.
const MAX_REQUEST_BODY: usize = 16 * 1024;

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .layer(axum::middleware::from_fn_with_state(
            MAX_REQUEST_BODY,
            crate::whole_body::read_first,
        ))
        .with_state(state)
}

/// Serves until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop)
        .await
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

/// Live while the process serves: the answer itself is the signal.
async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    #[cfg_attr(not(feature = "shared-cache"), allow(unused_mut))]
    let (status, mut body) = match state.not_ready() {
        None => (StatusCode::OK, json!({ "ready": true })),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reason": reason }),
        ),
    };
    #[cfg(feature = "shared-cache")]
    if let Some(shared) = &state.shared_cache {
        body["shared_cache"] = shared.status();
    }
    (status, axum::Json(body)).into_response()
}

async fn version() -> Response {
    axum::Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}
