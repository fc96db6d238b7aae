//! A request's span reaches an OTLP collector (a small HTTP server here,
//! recording what is posted to it) in the caller's trace.

// A test's unwrap is its assertion.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use tributary_kit::observe::Metrics;
use tributary_kit::server::{self, Readiness};

type Posts = Arc<Mutex<Vec<Bytes>>>;

async fn collect(State(posts): State<Posts>, body: Bytes) -> &'static str {
    posts.lock().unwrap().push(body);
    ""
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_span_continues_the_callers_trace_and_reaches_the_collector() {
    let posts: Posts = Arc::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(posts.clone());
    tokio::spawn(async move { axum::serve(collector, app).await });

    let telemetry = tributary_kit::traces::init_with("kit-test", false, Some(&endpoint)).unwrap();
    let routes = Router::new().route(
        "/hello/{name}",
        get(|| async {
            tracing::info_span!("inner work").in_scope(|| tracing::info!("working"));
            "hi"
        }),
    );
    let app = server::finish(
        routes,
        Arc::new(Metrics::new("kit_test")),
        Readiness::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server::serve(listener, app, std::future::pending()).unwrap();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let answer = reqwest::Client::new()
        .get(format!("http://{}/hello/ada", running.addr))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    running.stop().await.unwrap();
    // Dropping it flushes (and waits on the runtime's exporter task).
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let received = posts.lock().unwrap().clone();
        let all: Vec<u8> = received.iter().flat_map(|b| b.to_vec()).collect();
        if contains(&all, b"GET /hello/{name}")
            && contains(&all, b"inner work")
            && contains(&all, &trace_bytes)
            && contains(&all, b"kit-test")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collector got no span of the request in the caller's trace: {} posts",
            received.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
