//! The HTTP server every service runs: its routes plus `/healthz`,
//! `/readyz` (PostgreSQL and Redis answer), `/metrics`, problem+json for
//! unknown paths and methods, request tracking, and a graceful stop on
//! SIGTERM or Ctrl-C that lets requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::observe::{self, Metrics};
use crate::problem::Problem;

/// How long a readiness check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    postgres: Option<sqlx::PgPool>,
    redis: Option<redis::aio::ConnectionManager>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("postgres", &self.postgres.is_some())
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl Readiness {
    /// Also checks that PostgreSQL answers `SELECT 1`.
    pub fn postgres(mut self, pool: sqlx::PgPool) -> Self {
        self.postgres = Some(pool);
        self
    }

    /// Also checks that Redis answers `PING`.
    pub fn redis(mut self, redis: redis::aio::ConnectionManager) -> Self {
        self.redis = Some(redis);
        self
    }

    async fn check(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut results = Vec::new();
        if let Some(pool) = &self.postgres {
            let answer = tokio::time::timeout(
                CHECK_TIMEOUT,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
            )
            .await;
            results.push(("postgres", outcome(answer)));
        }
        if let Some(redis) = &self.redis {
            let mut redis = redis.clone();
            let answer = tokio::time::timeout(
                CHECK_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut redis),
            )
            .await;
            results.push(("redis", outcome(answer)));
        }
        results
    }
}

/// A check's answer, or why there was none in time.
fn outcome<T, E: std::fmt::Display>(
    answer: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> Result<(), String> {
    match answer {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    }
}

/// Adds the common routes and layers to a service's `routes`.
pub fn finish(routes: Router, metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    let common = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready).with_state(readiness))
        .route("/metrics", get(observe::scrape).with_state(metrics.clone()));
    routes
        .merge(common)
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            observe::track,
        ))
}

async fn ready(State(readiness): State<Readiness>) -> Response {
    let results = readiness.check().await;
    let down: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    if down.is_empty() {
        let body: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(name, _)| (name.to_string(), "ok".into()))
            .collect();
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        tracing::warn!(down = %down.join("; "), "not ready");
        Problem::unavailable(format!("not ready: {}", down.join("; ")), 1).into_response()
    }
}

/// A server running in this process.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Waits until the server stops (after a signal, for a binary).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Serves `app` on `listener` until [`Running::stop`] or `until` completes.
pub fn serve(
    listener: TcpListener,
    app: Router,
    until: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            tokio::select! {
                () = until => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        };
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    });
    Ok(Running { addr, stop, task })
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("stopping: finishing requests in flight");
}
