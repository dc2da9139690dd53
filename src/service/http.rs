//! HTTP: `/metrics`, `/health/live`, `/health/ready`, `/customers/{id}`.

use super::Shared;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/customers/{id}", get(customer))
        .with_state(shared)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    s.refresh_state_bytes();
    s.refresh_allocator_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
        .into_response()
}

fn health(ok: bool) -> Response {
    if ok {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn live(State(s): State<Arc<Shared>>) -> Response {
    health(s.live())
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    health(s.ready())
}

async fn customer(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.customer(&id) {
        Some(view) => axum::Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": "customer not held by this instance (unknown, evicted, or on a partition another instance owns)"
            })),
        )
            .into_response(),
    }
}
