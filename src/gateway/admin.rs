//! The gateway's own endpoints under `/-/`, plus the original's `GET /test/v1`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use http::{header, Extensions, Method, Response, StatusCode};
use tokio::sync::oneshot;

use super::{forbidden, json, text, AppState};
use crate::authorization::Action;

pub async fn healthy() -> Response<Body> {
    text(StatusCode::OK, "Healthy")
}

/// Ready when the ring has at least one node to route to.
pub async fn ready(State(state): State<AppState>) -> Response<Body> {
    if state.ring.load().ring.is_empty() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready: no healthy Pushgateway in the ring",
        )
    } else {
        text(StatusCode::OK, "Ready")
    }
}

/// `POST /-/reload` (or PUT), only with `--web.enable-lifecycle`, as in Prometheus.
pub async fn reload(
    State(state): State<AppState>,
    method: Method,
    extensions: Extensions,
) -> Response<Body> {
    if let Some(refused) = forbidden(
        &state,
        &state.config.load(),
        &extensions,
        Action::Admin {
            endpoint: "/-/reload",
        },
    ) {
        return refused;
    }
    if !state.lifecycle_enabled {
        return text(
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled; start with --web.enable-lifecycle",
        );
    }
    if method != Method::POST && method != Method::PUT {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST to reload the configuration",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST, PUT"));
        return response;
    }
    let (answer_tx, answer_rx) = oneshot::channel();
    if state.reload.send(answer_tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(30), answer_rx).await {
        Ok(Ok(Ok(()))) => text(StatusCode::OK, "configuration reloaded"),
        Ok(Ok(Err(error))) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {error}"),
        ),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "reload did not complete"),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Body::from(state.metrics.encode()))
        .unwrap_or_default()
}

/// The ring and the membership it was built from, for people and scripts.
pub async fn ring(State(state): State<AppState>) -> Response<Body> {
    let table = state.ring.load_full();
    let membership = state.membership.borrow().clone();
    let config = state.config.load();
    let rebalance = state.rebalance_status.borrow().clone();
    let mut body = serde_json::json!({
        "algorithm": table.ring.algorithm(),
        "mode": config.mode,
        "generation": table.generation,
        "built_at": humantime::format_rfc3339_millis(table.built_at).to_string(),
        "ring_nodes": table.ring.nodes(),
        "membership": {
            "source": membership.source,
            "detail": membership.detail,
        },
        "nodes": membership.nodes,
        "read_failures": state.read_side.failing_reads_json(),
        "outlier_detection": state.outliers.status(),
        "ambiguous_writes": { "pending_groups": state.journal.len() },
    });
    // Only with replication on, so that without it the answer stays what it was.
    if config.replication_factor > 1 {
        body["replication"] = serde_json::json!({
            "factor": config.replication_factor,
            "copies_per_group": config.replication_factor.min(table.ring.nodes().len()),
            "under_replicated_groups": rebalance.pointer("/last_pass/under_replicated"),
            "copies_restored_last_pass": rebalance.pointer("/last_pass/moved"),
        });
    }
    body["rebalance"] = rebalance;
    json(StatusCode::OK, &body)
}

/// The original tool's liveness route, kept for compatibility.
pub async fn test_v1() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from("Hello, I'm pgw gateway+ (｡A｡)"))
        .unwrap_or_default()
}
