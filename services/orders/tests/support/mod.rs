//! The harness: an issuer of access tokens (an Ed25519 key whose JWKS is
//! served over HTTP, as the auth service's is), the stand-in payment
//! provider, one database per test, service instances in this process on
//! port 0, and a client that sends idempotency keys.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tributary_kit::Secret;
use tributary_orders::{Server, Settings};

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub use tributary_test_servers::issuer::{ISSUER, issuer};

/// The stand-in payment provider, in this process, on its own thread's
/// runtime (it must outlive any one test's runtime).
pub fn provider() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tributary_payment_provider::spawn(listener).unwrap();
            tx.send(addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// A fresh database for `test` (older runs' are dropped).
pub async fn database_url(test: &str) -> String {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres"))
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 with trust auth");
    ONCE.get_or_init(|| async {
        let mine = format!(
            "tributary_orders_test_{}_%",
            tributary_test_servers::run_id()
        );
        let old: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'tributary_orders_test_%' AND datname NOT LIKE $1",
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
    })
    .await;
    admin.close().await;
    format!(
        "{POSTGRES}/tributary_orders_test_{}_{test}",
        tributary_test_servers::run_id()
    )
}

/// Settings for `test`: its own database and Redis prefix, the test
/// issuer, the given provider, short saga timings.
pub async fn settings(test: &str, provider: &str) -> Settings {
    let mut settings = Settings {
        database_url: Secret::new(database_url(test).await),
        redis_prefix: format!(
            "test:orders:{}:{test}:{}:",
            std::process::id(),
            fastrand::u32(..)
        ),
        json_logs: false,
        ..Settings::default()
    };
    settings.auth.jwks_url = issuer().await.jwks_url.clone();
    settings.auth.issuer = ISSUER.into();
    settings.payments.base_url = provider.to_string();
    settings.payments.timeout = Duration::from_millis(500);
    settings.saga.poll_every = Duration::from_millis(200);
    settings.saga.lease = Duration::from_secs(2);
    // The machine's PostgreSQL allows 100 connections, shared by every test
    // running at once (16 a pool ran it out: 503s seen in CI).
    settings.database_connections = 6;
    settings
}

/// A running instance.
pub struct Instance {
    pub server: Server,
    pub base: String,
}

pub async fn start(settings: Settings) -> Instance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tributary_orders::start(settings, listener, std::future::pending())
        .await
        .expect("the orders service starts (PostgreSQL and Redis must be up)");
    let base = format!("http://{}", server.addr());
    Instance { server, base }
}

/// An HTTP client.
pub fn http() -> &'static reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build()
            .unwrap()
    })
}

/// An answer: status, headers, JSON body (or Null).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// POSTs `body` with a bearer token and an idempotency key.
pub async fn post(base: &str, path: &str, token: &str, key: &str, body: &Value) -> Answer {
    let response = http()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// POSTs with a fresh idempotency key.
pub async fn post_new(base: &str, path: &str, token: &str, body: &Value) -> Answer {
    post(base, path, token, &uuid::Uuid::new_v4().to_string(), body).await
}

/// GETs with a bearer token (or none).
pub async fn get(base: &str, path: &str, token: Option<&str>) -> Answer {
    let mut request = http().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.unwrap()).await
}

/// Creates a product priced in USD and EUR.
pub async fn product(base: &str, sku: &str, stock: i64, usd: i64) {
    let answer = post_new(
        base,
        "/api/v1/products",
        &issuer().await.admin(),
        &json!({"sku": sku, "name": format!("Product {sku}"), "stock": stock,
            "prices": {"USD": usd, "EUR": usd}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

/// An order of `lines` (sku, qty) in USD.
pub fn basket(lines: &[(&str, i64)]) -> Value {
    json!({"lines": lines.iter().map(|(sku, qty)| json!({"sku": sku, "qty": qty})).collect::<Vec<_>>(),
        "currency": "USD"})
}

/// The stand-in provider's counters.
pub async fn provider_stats(provider: &str) -> tributary_payment_provider::Stats {
    http()
        .get(format!("{provider}/_stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Tells the stand-in provider how to misbehave.
pub async fn faults(provider: &str, faults: Value) {
    let status = http()
        .put(format!("{provider}/_control/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Waits until `check` holds, up to `limit`, polling every 50 ms.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An order's status, read by its customer.
pub async fn status_of(base: &str, token: &str, id: &str) -> String {
    let answer = get(base, &format!("/api/v1/orders/{id}"), Some(token)).await;
    answer.body["status"].as_str().unwrap_or("").to_string()
}
