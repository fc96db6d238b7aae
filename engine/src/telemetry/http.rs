//! The HTTP port: the status page at `/` (and `/status.json`), `/metrics`,
//! `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use super::status::{History, SAMPLE_EVERY, Status};
use super::{Metrics, Readiness};

#[derive(Clone)]
struct Port {
    metrics: Arc<Metrics>,
    history: Arc<History>,
}

/// Serves `metrics` on `addr` until the process ends; returns once the port is bound.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let port = Port {
        metrics,
        history: Arc::default(),
    };
    let sampler = port.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        loop {
            every.tick().await;
            sampler.history.sample(&sampler.metrics);
        }
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/status.json", get(status))
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(port);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the HTTP port stopped serving");
        }
    });
    tracing::info!(addr = %bound, "serving the status page, /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn page(State(port): State<Port>) -> Html<String> {
    Html(Status::now(&port.metrics, &port.history).page())
}

async fn status(State(port): State<Port>) -> impl IntoResponse {
    axum::Json(Status::now(&port.metrics, &port.history))
}

async fn scrape(State(port): State<Port>) -> impl IntoResponse {
    match port.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "encoding the metrics failed\n".to_string(),
        ),
    }
}

async fn ready(State(port): State<Port>) -> impl IntoResponse {
    match port.metrics.readiness() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_string()),
        Readiness::NotReady(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        ),
    }
}
