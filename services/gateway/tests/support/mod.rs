//! The harness: gateways in this process on port 0 (each with its routes
//! file, the machine's PostgreSQL and Redis, and the test issuer's JWKS),
//! small upstream servers that count what reaches them and can be told to
//! fail or hang, and a TCP proxy that can cut the gateway off from Redis.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tributary_gateway::limit::Clock;
use tributary_gateway::{Server, Settings};
use tributary_kit::Secret;
pub use tributary_test_servers::issuer::{ISSUER, issuer};

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// The database every gateway of this binary shares (older runs' dropped).
pub async fn database_url() -> String {
    static ONCE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres"))
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 with trust auth");
        let mine = format!(
            "tributary_gateway_test_{}",
            tributary_test_servers::run_id()
        );
        let old: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'tributary_gateway_test_%' AND datname <> $1",
        )
        .bind(&mine)
        .fetch_all(&admin)
        .await
        .unwrap();
        for name in old {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
        }
        admin.close().await;
        format!("{POSTGRES}/{mine}")
    })
    .await
    .clone()
}

/// What an upstream does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Answers 200 with what it received.
    Echo = 0,
    /// Answers 503.
    Fail = 1,
    /// Never answers.
    Hang = 2,
    /// Answers after 300 ms.
    Slow = 3,
}

/// A small upstream: echoes requests as JSON, counts them, and can fail or
/// hang on command. `/healthz` answers unless `down`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    pub down: Arc<AtomicBool>,
    pub paths: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            mode: Arc::default(),
            down: Arc::default(),
            paths: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(healthz))
            .fallback(echo)
            .with_state(upstream.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        upstream
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

async fn healthz(State(upstream): State<Upstream>) -> StatusCode {
    if upstream.down.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn echo(State(upstream): State<Upstream>, mut request: Request) -> Response {
    upstream.seen.fetch_add(1, Ordering::SeqCst);
    upstream
        .paths
        .lock()
        .unwrap()
        .push(request.uri().path().to_string());
    if request.uri().path() == "/ws/chat" && request.headers().contains_key("upgrade") {
        // Switches to a protocol that echoes every byte.
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) =
                    tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(axum::body::Body::empty())
            .unwrap();
    }
    match upstream.mode.load(Ordering::SeqCst) {
        1 => return (StatusCode::SERVICE_UNAVAILABLE, "failing").into_response(),
        2 => std::future::pending::<()>().await,
        3 => tokio::time::sleep(Duration::from_millis(300)).await,
        _ => {}
    }
    let cache_control = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("cc=")))
        .map(str::to_string);
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
        .collect();
    let mut response = axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
    }))
    .into_response();
    let mut extra = HeaderMap::new();
    extra.insert("server", "test-upstream".parse().unwrap());
    extra.insert("connection", "x-upstream-private".parse().unwrap());
    extra.insert("x-upstream-private", "secret".parse().unwrap());
    if let Some(value) = cache_control {
        extra.insert("cache-control", value.parse().unwrap());
    }
    response.headers_mut().extend(extra);
    response
}

/// A running gateway.
pub struct Gateway {
    pub server: Server,
    pub base: String,
    pub admin: String,
    pub routes: std::path::PathBuf,
    pub prefix: String,
    _dir: tempfile::TempDir,
}

/// Settings for a gateway with `routes`; Redis keys under `prefix`.
pub async fn settings(routes: &str, prefix: &str) -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, routes).unwrap();
    let settings = Settings {
        routes: file,
        reload_every: Duration::from_millis(100),
        database_url: Secret::new(database_url().await),
        database_connections: 2,
        redis_prefix: format!("tributary:gateway-test:{}:{prefix}:", std::process::id()),
        auth: tributary_gateway::settings::AuthSettings {
            jwks_url: issuer().await.jwks_url.clone(),
            issuer: ISSUER.into(),
            audience: "tributary".into(),
            revocations_key: format!(
                "tributary:gateway-test:{}:{prefix}:revoked",
                std::process::id()
            ),
        },
        access_log: false,
        json_logs: false,
        ..Settings::default()
    };
    (settings, dir)
}

pub async fn start_with(settings: Settings, dir: tempfile::TempDir, clock: Clock) -> Gateway {
    let prefix = settings.redis_prefix.clone();
    let routes = settings.routes.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tributary_gateway::start(settings, listener, admin, clock, std::future::pending())
        .await
        .unwrap();
    Gateway {
        base: format!("http://{}", server.proxy.addr),
        admin: format!("http://{}", server.admin.addr),
        server,
        routes,
        prefix,
        _dir: dir,
    }
}

pub async fn gateway(routes: &str, name: &str) -> Gateway {
    let (settings, dir) = settings(routes, name).await;
    start_with(settings, dir, Clock::System).await
}

/// A routes file with one upstream `up` at `addr` and the given routes.
pub fn routes(addr: SocketAddr, upstream_extra: &str, routes: &str) -> String {
    format!(
        "upstreams:\n  up:\n    addresses: [\"{addr}\"]\n    health: {{ path: /healthz, every: 200ms, timeout: 500ms }}\n{upstream_extra}routes:\n{routes}"
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Issues a key through the admin API.
pub async fn issue_key(gateway: &Gateway, limit_per_minute: u32) -> (String, String) {
    let answer: Value = client()
        .post(format!("{}/admin/keys", gateway.admin))
        .bearer_auth(issuer().await.admin())
        .json(&json!({"name": "test-app", "limit_per_minute": limit_per_minute}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        answer["key"].as_str().unwrap().to_string(),
        answer["id"].as_str().unwrap().to_string(),
    )
}

/// Waits until `check` holds, or fails after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy to `target` that can cut every connection and refuse new
/// ones, and be restored.
pub struct Cutter {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl Cutter {
    pub async fn start(target: SocketAddr) -> Cutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cutter = Cutter {
            addr: listener.local_addr().unwrap(),
            cut: Arc::default(),
            generation: Arc::default(),
        };
        let (cut, generation) = (cutter.cut.clone(), cutter.generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let born = generation.load(Ordering::SeqCst);
                let generation = generation.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = watch => {}
                    }
                });
            }
        });
        cutter
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The gateway's `/metrics` page.
pub async fn metrics(gateway: &Gateway) -> String {
    client()
        .get(format!("{}/metrics", gateway.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metric line starting with `name` (labels included, as
/// exposed), or 0 when there is none yet.
pub async fn metric(gateway: &Gateway, name: &str) -> f64 {
    metrics(gateway)
        .await
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A connection to the machine's Redis, for a test to look or write.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
