//! The orders service, black-box over HTTP, against the machine's
//! PostgreSQL (127.0.0.1:5432, trust) and Redis (127.0.0.1:6379), the
//! stand-in payment provider, and, where a test needs them, tansu and a
//! private PostgreSQL primary with a streaming replica. Each test has its
//! own database and Redis prefix, and starts its instances in this
//! process on port 0.

// A test's unwrap is its assertion: a failure shows where and why.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

mod support;

use support::{
    basket, eventually, faults, get, issuer, post, post_new, product, provider, provider_stats,
    settings, start, status_of,
};

async fn stock(base: &str, sku: &str) -> i64 {
    let answer = get(base, &format!("/api/v1/products/{sku}"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["stock"].as_i64().unwrap()
}

/// Places an order as a well-behaved client does: a 503 `overloaded` (no
/// pool connection in time, seen on a slow CI machine) is retried with the
/// same Idempotency-Key after a short pause (its `Retry-After`, capped:
/// the test's pools free a connection within a second).
async fn place_as_a_client_would(
    base: &str,
    token: &str,
    body: &serde_json::Value,
) -> support::Answer {
    let key = uuid::Uuid::new_v4().to_string();
    let mut attempts = 0;
    loop {
        let answer = post(base, "/api/v1/orders", token, &key, body).await;
        attempts += 1;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE || attempts == 20 {
            return answer;
        }
        let wait = answer
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1)
            .min(2);
        tokio::time::sleep(Duration::from_millis(200 + 300 * wait)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_orders_on_three_instances_sell_exactly_the_stock_of_one_hundred() {
    let provider = provider();
    let settings = settings("oversell", &provider).await;
    let a = start(settings.clone()).await;
    let b = start(settings.clone()).await;
    let c = start(settings).await;
    let bases = [a.base.clone(), b.base.clone(), c.base.clone()];
    product(&a.base, "SKU-00001", 100, 1999).await;
    let issuer = issuer().await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let base = bases[i % 3].clone();
        let token = issuer.customer(&format!("oversell-{i}"));
        tasks.push(tokio::spawn(async move {
            place_as_a_client_would(&base, &token, &basket(&[("SKU-00001", 1)]))
                .await
                .status
        }));
    }
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for task in tasks {
        *by_status.entry(task.await.unwrap().as_u16()).or_default() += 1;
    }
    assert_eq!(by_status, BTreeMap::from([(201, 100), (409, 400)]));
    assert_eq!(stock(&a.base, "SKU-00001").await, 0);

    // Random multi-line baskets over a few products, concurrently: every
    // answer is 201 or 409 (no deadlock, no 5xx), and stock plus what the
    // placed orders took is what there was.
    let skus: Vec<String> = (2..=7).map(|n| format!("SKU-{n:05}")).collect();
    for sku in &skus {
        product(&a.base, sku, 60, 500).await;
    }
    let mut tasks = Vec::new();
    for i in 0..300 {
        let base = bases[i % 3].clone();
        let token = issuer.customer(&format!("basket-{i}"));
        let mut chosen = skus.clone();
        fastrand::shuffle(&mut chosen);
        chosen.truncate(fastrand::usize(1..=5));
        let lines: Vec<(String, i64)> = chosen
            .into_iter()
            .map(|s| (s, fastrand::i64(1..=3)))
            .collect();
        tasks.push(tokio::spawn(async move {
            let refs: Vec<(&str, i64)> = lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
            let answer = place_as_a_client_would(&base, &token, &basket(&refs)).await;
            (answer.status, lines)
        }));
    }
    let mut taken: HashMap<String, i64> = HashMap::new();
    for task in tasks {
        let (status, lines) = task.await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::CONFLICT,
            "a basket answered {status}"
        );
        if status == StatusCode::CREATED {
            for (sku, qty) in lines {
                *taken.entry(sku).or_default() += qty;
            }
        }
    }
    for sku in &skus {
        let left = stock(&a.base, sku).await;
        assert!(left >= 0);
        assert_eq!(left + taken.get(sku).copied().unwrap_or(0), 60, "{sku}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_held_by_a_locked_row_is_busy_not_a_primary_down() {
    // Every connection of the pool waits on a row another session holds:
    // the service is saturated, not cut off from PostgreSQL. It must not
    // call the primary down (which refuses every write and serves reads
    // stale), and what cannot get a connection is told to retry.
    let provider = provider();
    let mut settings = settings("saturated", &provider).await;
    settings.database_connections = 2;
    let a = start(settings.clone()).await;
    product(&a.base, "SKU-00050", 100, 100).await;
    let issuer = issuer().await;
    let mut holder =
        <sqlx::PgConnection as sqlx::Connection>::connect(settings.database_url.expose())
            .await
            .unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT stock FROM products WHERE sku = 'SKU-00050' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let base = a.base.clone();
        let token = issuer.customer(&format!("saturated-{i}"));
        tasks.push(tokio::spawn(async move {
            post_new(
                &base,
                "/api/v1/orders",
                &token,
                &basket(&[("SKU-00050", 1)]),
            )
            .await
        }));
    }
    // Past the acquire timeout (2 s) and the monitor's check timeout (1 s).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            metric(&a.base, "tributary_orders_primary_up").await,
            1.0,
            "a saturated pool was taken for a primary down"
        );
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let mut placed: i64 = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            StatusCode::CREATED => placed += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    answer.body["type"], "https://tributary.dev/problems/overloaded",
                    "{}",
                    answer.body
                );
                assert_eq!(answer.header("retry-after"), Some("1"));
            }
            other => panic!("an order answered {other}: {}", answer.body),
        }
    }
    // Those holding a connection waited for the lock and went through.
    assert!(placed >= 2, "{placed} placed");
    // Writes are taken at once after the lock goes.
    let after = post_new(
        &a.base,
        "/api/v1/orders",
        &issuer.customer("saturated-after"),
        &basket(&[("SKU-00050", 1)]),
    )
    .await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.body);
    assert_eq!(stock(&a.base, "SKU-00050").await, 100 - placed - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_requests_with_one_idempotency_key_place_one_order() {
    let provider = provider();
    let settings = settings("idempotency", &provider).await;
    let db = sqlx::PgPool::connect(settings.database_url.expose())
        .await
        .ok();
    let a = start(settings.clone()).await;
    let b = start(settings.clone()).await;
    product(&a.base, "SKU-00010", 1000, 250).await;
    let token = issuer().await.customer("idem-1");
    let key = uuid::Uuid::new_v4().to_string();
    let body = basket(&[("SKU-00010", 2)]);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (token, key, body) = (token.clone(), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post(&base, "/api/v1/orders", &token, &key, &body).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let (mut first, mut replayed, mut in_flight) = (0, 0, 0);
    for task in tasks {
        let answer = task.await.unwrap();
        match (answer.status, answer.header("idempotent-replayed")) {
            (StatusCode::CREATED, None) => first += 1,
            (StatusCode::CREATED, Some("true")) => replayed += 1,
            (StatusCode::CONFLICT, _) => {
                assert_eq!(
                    answer.body["type"],
                    "https://tributary.dev/problems/idempotency-key-in-flight"
                );
                in_flight += 1;
                continue;
            }
            (status, _) => panic!("unexpected {status}: {}", answer.body),
        }
        ids.insert(answer.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(first, 1, "one request ran");
    assert_eq!(replayed + in_flight, 49);
    assert_eq!(ids.len(), 1, "every replay shows the one order");
    let id = ids.into_iter().next().unwrap();
    // The key after the rush: replayed with the same body and Location.
    let again = post(&b.base, "/api/v1/orders", &token, &key, &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        again.header("location"),
        Some(format!("/api/v1/orders/{id}").as_str())
    );
    assert_eq!(again.body["id"], id.as_str());
    // Another body with the key: 422.
    let other = post(
        &a.base,
        "/api/v1/orders",
        &token,
        &key,
        &basket(&[("SKU-00010", 3)]),
    )
    .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    assert_eq!(
        other.body["type"],
        "https://tributary.dev/problems/idempotency-key-reused"
    );
    // No key: 400 naming the header.
    let response = support::http()
        .post(format!("{}/api/v1/orders", a.base))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("Idempotency-Key"));
    // One order, one OrderCreated event, two units taken.
    let db = db.unwrap_or(
        sqlx::PgPool::connect(&support::database_url("idempotency").await)
            .await
            .unwrap(),
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = 'idem-1'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(orders, 1);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'orders' AND key = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(events, 1);
    assert_eq!(stock(&a.base, "SKU-00010").await, 998);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_tokens_reach_orders_and_customers_see_only_their_own() {
    let provider = provider();
    let instance = start(settings("rbac", &provider).await).await;
    let base = &instance.base;
    product(base, "SKU-00020", 10, 100).await;
    let issuer = issuer().await;
    let alice = issuer.customer("alice");
    let bob = issuer.customer("bob");
    let reader = issuer.token("carol", &["customer"], &["read:orders"]);

    let none = support::http()
        .post(format!("{base}/api/v1/orders"))
        .header("idempotency-key", "k1")
        .json(&basket(&[("SKU-00020", 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(
        none.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(none.headers()["content-type"], "application/problem+json");

    let forged = format!("{alice}x");
    let answer = get(base, "/api/v1/orders", Some(&forged)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let answer = post_new(
        base,
        "/api/v1/orders",
        &reader,
        &basket(&[("SKU-00020", 1)]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert!(
        answer
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );

    let placed = post_new(base, "/api/v1/orders", &alice, &basket(&[("SKU-00020", 1)])).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    let id = placed.body["id"].as_str().unwrap();
    assert_eq!(placed.body["status"], "reserved");
    assert_eq!(placed.body["customer_id"].as_str().unwrap().len(), 7);

    assert_eq!(
        get(base, &format!("/api/v1/orders/{id}"), Some(&alice))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(base, &format!("/api/v1/orders/{id}"), Some(&bob))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(base, &format!("/api/v1/orders/{id}"), Some(&issuer.admin()))
            .await
            .status,
        StatusCode::OK
    );
    let bobs = get(base, "/api/v1/orders", Some(&bob)).await;
    assert_eq!(bobs.body["orders"], json!([]));
    let cancel = post_new(
        base,
        &format!("/api/v1/orders/{id}/cancel"),
        &bob,
        &json!({}),
    )
    .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    let all = get(base, "/api/v1/orders?all=true", Some(&alice)).await;
    assert_eq!(all.status, StatusCode::FORBIDDEN);

    // Catalogue changes are for admins.
    let answer = post_new(
        base,
        "/api/v1/products",
        &alice,
        &json!({"sku": "SKU-00021", "name": "x", "stock": 1, "prices": {"USD": 1}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_list_by_keyset_and_filter_by_status_and_time() {
    let provider = provider();
    let instance = start(settings("listing", &provider).await).await;
    let base = &instance.base;
    product(base, "SKU-00030", 100, 100).await;
    let token = issuer().await.customer("lister");
    let mut placed = Vec::new();
    for _ in 0..7 {
        let answer = post_new(base, "/api/v1/orders", &token, &basket(&[("SKU-00030", 1)])).await;
        placed.push(answer.body["id"].as_str().unwrap().to_string());
    }
    let first = get(base, "/api/v1/orders?limit=3", Some(&token)).await;
    let page: Vec<&str> = first.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        page,
        placed
            .iter()
            .rev()
            .take(3)
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let mut seen: Vec<String> = page.iter().map(|s| s.to_string()).collect();
    let mut cursor = first.body["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let next = get(
            base,
            &format!("/api/v1/orders?limit=3&cursor={c}"),
            Some(&token),
        )
        .await;
        for order in next.body["orders"].as_array().unwrap() {
            seen.push(order["id"].as_str().unwrap().to_string());
        }
        cursor = next.body["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen, placed.iter().rev().cloned().collect::<Vec<_>>());
    let cancelled = post_new(
        base,
        &format!("/api/v1/orders/{}/cancel", placed[0]),
        &token,
        &json!({}),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    // Cancelled before its payment, or refunded after it.
    let ended = cancelled.body["status"].as_str().unwrap().to_string();
    assert!(ended == "cancelled" || ended == "refunded", "{ended}");
    let only = get(
        base,
        &format!("/api/v1/orders?status={ended}"),
        Some(&token),
    )
    .await;
    assert_eq!(only.body["orders"].as_array().unwrap().len(), 1);
    let future = get(
        base,
        "/api/v1/orders?from=2999-01-01T00:00:00Z",
        Some(&token),
    )
    .await;
    assert_eq!(future.body["orders"], json!([]));
    let bad = get(base, "/api/v1/orders?status=lost", Some(&token)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["detail"].as_str().unwrap().contains("status"));
    let bad = get(base, "/api/v1/orders?cursor=zzz", Some(&token)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_are_problems_naming_the_field() {
    let provider = provider();
    let instance = start(settings("bad_input", &provider).await).await;
    let base = &instance.base;
    product(base, "SKU-00040", 5, 100).await;
    let token = issuer().await.customer("bad");
    let cases = [
        (json!({"lines": [], "currency": "USD"}), 422, "/lines"),
        (
            json!({"lines": [{"sku": "SKU-1", "qty": 1}], "currency": "USD"}),
            422,
            "/lines/0/sku",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 0}], "currency": "USD"}),
            422,
            "/lines/0/qty",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": "2"}], "currency": "USD"}),
            422,
            "/lines/0/qty",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 1}, {"sku": "SKU-00040", "qty": 1}], "currency": "USD"}),
            422,
            "/lines/1/sku",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 1}], "currency": "XYZ"}),
            422,
            "/currency",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 1}], "currency": "GBP"}),
            422,
            "/lines/0/sku",
        ),
        (
            json!({"lines": [{"sku": "SKU-99999", "qty": 1}], "currency": "USD"}),
            422,
            "/lines/0/sku",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 6}], "currency": "USD"}),
            409,
            "/lines/0/sku",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 1}], "currency": "USD", "coupon": "NOPE"}),
            422,
            "/coupon",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 1}], "currency": "USD", "shipping": {"country": "de"}}),
            422,
            "/shipping/country",
        ),
        (
            json!({"lines": [{"sku": "SKU-00040", "qty": 1}], "currency": "USD", "extra": 1}),
            422,
            "",
        ),
    ];
    for (body, status, pointer) in cases {
        let answer = post_new(base, "/api/v1/orders", &token, &body).await;
        assert_eq!(answer.status.as_u16(), status, "{body}: {}", answer.body);
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json")
        );
        if !pointer.is_empty() {
            assert_eq!(
                answer.body["errors"][0]["pointer"], pointer,
                "{body}: {}",
                answer.body
            );
        }
    }
    let answer = get(base, "/api/v1/orders/not-a-uuid", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(stock(base, "SKU-00040").await, 5, "nothing was reserved");
}

const RULES: &str = "\
coupons: [WELCOME5]
rules:
  - name: bulk-10
    description: 10 % off a line of 10 or more
    phase: line
    when: line.qty >= 10
    amount: bp(line.amount, 1000)
  - name: welcome
    phase: order
    when: order.coupon == 'WELCOME5'
    amount: 500
  - name: vat-de
    phase: tax
    when: order.country == 'DE'
    amount: bp(order.amount, 1900)
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pricing_rules_are_checked_explained_and_reloaded_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pricing.yaml");
    let provider = provider();
    let mut settings = settings("pricing", &provider).await;
    settings.pricing.rules_file = Some(file.clone());
    settings.pricing.reload_every = Duration::from_millis(100);

    // A file with an error refuses the start, naming file:line.
    std::fs::write(
        &file,
        "rules:\n  - name: a\n    phase: order\n    when: order.amount >\n    amount: 1\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = tributary_orders::start(settings.clone(), listener, std::future::pending())
        .await
        .expect_err("a rules file with an error refuses the start")
        .to_string();
    assert!(error.contains("pricing.yaml:4:"), "{error}");

    std::fs::write(&file, RULES).unwrap();
    let instance = start(settings).await;
    let base = &instance.base;
    product(base, "SKU-00050", 100, 1000).await;
    let token = issuer().await.customer("pricer");
    let body = json!({"lines": [{"sku": "SKU-00050", "qty": 10}], "currency": "EUR",
        "coupon": "WELCOME5", "shipping": {"country": "DE", "postal_code": "10115"}});
    let placed = post_new(base, "/api/v1/orders", &token, &body).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    let pricing = &placed.body["pricing"];
    // 10 × 1000 = 10 000; −1 000 (bulk); −500 (coupon); VAT 19 % of 8 500 = 1 615.
    assert_eq!(pricing["subtotal"], 10_000);
    assert_eq!(pricing["discount"], 1_500);
    assert_eq!(pricing["tax"], 1_615);
    assert_eq!(pricing["total"], 10_115);
    let fired: Vec<&str> = pricing["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(fired, ["bulk-10", "welcome", "vat-de"]);
    assert_eq!(pricing["applied"][0]["line"], 0);
    assert_eq!(placed.body["lines"][0]["discount"], 1_000);
    // The explanation is stored: a read shows it.
    let id = placed.body["id"].as_str().unwrap();
    let read = get(base, &format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(read.body["pricing"], *pricing);

    // A change takes effect without a restart...
    std::fs::write(&file, RULES.replace("amount: 500", "amount: 700")).unwrap();
    eventually(
        Duration::from_secs(5),
        "the changed rules are in force",
        || async {
            let answer = post_new(base, "/api/v1/orders", &token, &body).await;
            answer.body["pricing"]["discount"] == 1_700
        },
    )
    .await;
    // ...and a broken change is refused: the rules in force stay.
    std::fs::write(
        &file,
        "rules:\n  - name: broken\n    phase: tax\n    when: line.qty > 1\n    amount: 1\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = post_new(base, "/api/v1/orders", &token, &body).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body["pricing"]["discount"], 1_700);
    let metrics = support::http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tributary_orders_pricing_reload_failures_total 1"),
        "{metrics}"
    );
}

/// Places an order and waits for the saga to settle it.
async fn place_and_settle(base: &str, token: &str, sku: &str, limit: Duration) -> (String, String) {
    let placed = post_new(base, "/api/v1/orders", token, &basket(&[(sku, 2)])).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    let id = placed.body["id"].as_str().unwrap().to_string();
    let mut status = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        status = status_of(base, token, &id).await;
        if status != "reserved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (id, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_saga_charges_once_and_compensates_every_failure() {
    let provider = provider();
    let mut settings = settings("saga", &provider).await;
    settings.saga.give_up_after = Duration::from_secs(4);
    settings.payments.breaker.minimum_calls = 1000;
    let instance = start(settings).await;
    let base = &instance.base;
    product(base, "SKU-00060", 100, 1500).await;
    let token = issuer().await.customer("payer");
    let limit = Duration::from_secs(20);

    // A working provider: paid, charged once.
    let (paid, status) = place_and_settle(base, &token, "SKU-00060", limit).await;
    assert_eq!(status, "paid");

    // A declined card: payment_failed, the stock back.
    faults(
        &provider,
        json!([{"op": "confirm", "kind": "decline", "times": 1}]),
    )
    .await;
    let (declined, status) = place_and_settle(base, &token, "SKU-00060", limit).await;
    assert_eq!(status, "payment_failed");

    // The reply to a successful charge lost (the provider charged, the
    // service timed out): the retry is the same request, answered once.
    faults(
        &provider,
        json!([{"op": "confirm", "kind": "lose_reply", "times": 1}]),
    )
    .await;
    let (lost, status) = place_and_settle(base, &token, "SKU-00060", limit).await;
    assert_eq!(status, "paid");

    // Failing and hanging at each step, past the order's deadline: the
    // order fails and nothing stays charged.
    for (op, kind) in [
        ("create", "fail"),
        ("confirm", "fail"),
        ("create", "hang"),
        ("confirm", "hang"),
        ("confirm", "slow"),
    ] {
        let delay = if kind == "slow" { 2_000 } else { 0 };
        faults(
            &provider,
            json!([{"op": op, "kind": kind, "delay_ms": delay}]),
        )
        .await;
        let (id, status) = place_and_settle(base, &token, "SKU-00060", limit).await;
        faults(&provider, json!([])).await;
        assert_eq!(status, "payment_failed", "{op} {kind}: {id}");
    }

    // A charge whose confirmation kept failing after it went through: the
    // deadline's compensation finds it charged and refunds it.
    faults(&provider, json!([{"op": "confirm", "kind": "lose_reply"}])).await;
    let (refunded, status) = place_and_settle(base, &token, "SKU-00060", limit).await;
    faults(&provider, json!([])).await;
    assert_eq!(status, "payment_failed");

    // A paid order cancelled: refunded, the stock back.
    let cancel = post_new(
        base,
        &format!("/api/v1/orders/{paid}/cancel"),
        &token,
        &json!({}),
    )
    .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);
    assert_eq!(cancel.body["status"], "refunded");

    let stats = provider_stats(&provider).await;
    for (order, tally) in &stats.by_order {
        assert!(
            tally.charges <= 1,
            "order {order} charged {} times",
            tally.charges
        );
        assert!(tally.refunds <= tally.charges, "order {order}");
    }
    let charged = |id: &str| {
        stats
            .by_order
            .get(id)
            .map(|t| (t.charges, t.refunds))
            .unwrap_or((0, 0))
    };
    assert_eq!(charged(&paid), (1, 1));
    assert_eq!(charged(&declined), (0, 0));
    assert_eq!(charged(&lost), (1, 0));
    assert_eq!(charged(&refunded), (1, 1));
    // Stock: only the one order still paid holds its two units.
    assert_eq!(stock(base, "SKU-00060").await, 98);
    // Every failed call was reported.
    let db = sqlx::PgPool::connect(&support::database_url("saga").await)
        .await
        .unwrap();
    let reported: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'external-api-calls'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(reported >= 5, "{reported} ExternalAPICallFailed events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_left_by_a_crashed_instance_is_resumed_by_another() {
    let provider = provider();
    let mut settings = settings("resume", &provider).await;
    settings.saga.lease = Duration::from_secs(1);
    // The first instance's worker hangs in the confirmation and then dies.
    faults(
        &provider,
        json!([{"op": "confirm", "kind": "hang", "times": 1}]),
    )
    .await;
    settings.payments.timeout = Duration::from_secs(30);
    let a = start(settings.clone()).await;
    product(&a.base, "SKU-00070", 10, 800).await;
    let token = issuer().await.customer("resumer");
    let placed = post_new(
        &a.base,
        "/api/v1/orders",
        &token,
        &basket(&[("SKU-00070", 1)]),
    )
    .await;
    let id = placed.body["id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(5),
        "the first worker is in the confirmation",
        || async {
            provider_stats(&provider)
                .await
                .calls
                .get(&tributary_payment_provider::Operation::Confirm)
                .copied()
                .unwrap_or(0)
                >= 1
        },
    )
    .await;
    a.server.stop().await.unwrap();
    settings.payments.timeout = Duration::from_millis(500);
    let b = start(settings).await;
    eventually(
        Duration::from_secs(15),
        "the second instance completes the payment",
        || async { status_of(&b.base, &token, &id).await == "paid" },
    )
    .await;
    let stats = provider_stats(&provider).await;
    assert_eq!(stats.by_order[&id].charges, 1);
}

/// The event schemas, compiled.
fn schema(name: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/events")
        .join(format!("{name}.v1.schema.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// The service as a process of its own (so that it can be killed with
/// SIGKILL), on `port`, with `env` on top of `settings`'.
struct Process {
    child: std::process::Child,
}

impl Process {
    fn start(settings: &tributary_orders::Settings, port: u16, brokers: &str) -> Process {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tributary-orders"))
            .arg("serve")
            .env("TRIBUTARY_ORDERS_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", settings.database_url.expose())
            .env("TRIBUTARY_ORDERS_REDIS_PREFIX", &settings.redis_prefix)
            .env("KAFKA_BROKERS", brokers)
            .env("TRIBUTARY_JWKS_URL", &settings.auth.jwks_url)
            .env("TRIBUTARY_ORDERS_AUTH__ISSUER", &settings.auth.issuer)
            .env("PAYMENT_PROVIDER_URL", &settings.payments.base_url)
            .env("TRIBUTARY_ORDERS_SAGA__LEASE", "2s")
            .env("TRIBUTARY_ORDERS_SAGA__POLL_EVERY", "200ms")
            .env("TRIBUTARY_ORDERS_DATABASE_CONNECTIONS", "16")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the service did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Process { child }
    }

    /// SIGKILL: no shutdown, no flush, whatever was in flight is cut.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Places an order, retrying with the same idempotency key (as a client
/// should) through connection errors and 503s, until it is answered.
async fn place_reliably(base: &str, token: &str, body: &Value) -> Option<String> {
    let key = uuid::Uuid::new_v4().to_string();
    for _ in 0..600 {
        let sent = support::http()
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::CREATED => {
                let order: Value = response.json().await.unwrap();
                return order["id"].as_str().map(str::to_string);
            }
            Ok(response) if response.status() == StatusCode::CONFLICT => {
                let problem: Value = response.json().await.unwrap();
                if problem["type"] == "https://tributary.dev/problems/out-of-stock" {
                    return None;
                }
            }
            Ok(response) if response.status().is_server_error() => {}
            Ok(response) => panic!("{}: {}", response.status(), response.text().await.unwrap()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("an order was not answered in a minute of retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_orders_events_reach_kafka_once_in_order_through_kills_and_a_broker_restart()
 {
    // 20,000 in CI (about 90 s here); the 100,000 with
    // TRIBUTARY_OUTBOX_TEST_ORDERS=100000 (passed in 586 s, BENCHMARKS.md).
    let orders: usize = std::env::var("TRIBUTARY_OUTBOX_TEST_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let s3 = tributary_test_servers::S3Server::start();
    s3.create_bucket("tansu");
    let kafka_port = tributary_test_servers::free_port();
    let mut broker = tributary_test_servers::Broker::start_on(kafka_port, "s3://tansu/", &s3.env());
    let brokers = broker.address();
    for topic in [
        "orders",
        "payments",
        "cache-invalidations",
        "external-api-calls",
    ] {
        tributary_test_servers::create_topic(&brokers, topic, 3);
    }
    let provider = provider();
    let settings = settings("outbox", &provider).await;
    let port = tributary_test_servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut service = Process::start(&settings, port, &brokers);
    // Many products: one hot row would make every order wait for the last.
    let skus: Vec<String> = (0..64).map(|n| format!("SKU-{:05}", 80_000 + n)).collect();
    for sku in &skus {
        product(&base, sku, orders as i64, 100).await;
    }
    let started = std::time::Instant::now();
    let issuer = issuer().await;
    let tokens: Vec<String> = (0..50)
        .map(|i| issuer.customer(&format!("outbox-{i}")))
        .collect();

    // Orders from 32 clients; the service is killed at a third and the
    // broker restarted at two thirds.
    let placed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..32 {
        let (base, tokens, placed, skus) =
            (base.clone(), tokens.clone(), placed.clone(), skus.clone());
        clients.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = client;
            while i < orders {
                let token = &tokens[i % tokens.len()];
                let sku = &skus[i % skus.len()];
                if let Some(id) = place_reliably(&base, token, &basket(&[(sku, 1)])).await {
                    mine.push(id);
                }
                placed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 32;
            }
            mine
        }));
    }
    let progress = |at: usize| {
        let placed = placed.clone();
        async move {
            while placed.load(std::sync::atomic::Ordering::Relaxed) < at {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    progress(orders / 3).await;
    let killed_at = chrono::Utc::now();
    service.kill();
    service = Process::start(&settings, port, &brokers);
    progress(orders * 2 / 3).await;
    let restarted_at = chrono::Utc::now();
    broker.restart();
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    assert_eq!(ids.len(), orders, "every order was placed");
    eprintln!("{orders} orders placed in {:?}", started.elapsed());

    // Let the sagas and the relay finish, then read everything back.
    let db = sqlx::PgPool::connect(settings.database_url.expose())
        .await
        .unwrap();
    eventually(Duration::from_secs(300), "the sagas settle and the outbox empties", || async {
        let open: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM orders WHERE status = 'reserved') + (SELECT count(*) FROM outbox)")
            .fetch_one(&db)
            .await
            .unwrap();
        open == 0
    })
    .await;
    let committed: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM orders")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        committed.len(),
        orders,
        "one order per request, whatever the retries"
    );
    let paid = committed.iter().filter(|(_, s)| s == "paid").count();
    eprintln!("settled and relayed after {:?}", started.elapsed());
    drop(service);

    let created = schema("order_created");
    let processed = schema("payment_processed");
    let read = |topic: &'static str, n: usize| {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || {
            tributary_test_servers::read_topic(&brokers, topic, n, Duration::from_secs(120))
        })
    };
    let order_events = read("orders", orders).await.unwrap();
    let payment_events = read("payments", paid).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut created_for: HashMap<String, usize> = HashMap::new();
    for (key, event) in &order_events {
        if !seen.insert(event["event_id"].as_str().unwrap().to_string()) {
            continue; // a redelivery, dropped by event id
        }
        assert!(created.is_valid(event), "{event}");
        assert_eq!(key, event["order_id"].as_str().unwrap());
        *created_for.entry(key.clone()).or_default() += 1;
    }
    let lost: Vec<uuid::Uuid> = committed
        .iter()
        .filter(|(id, _)| created_for.get(&id.to_string()) != Some(&1))
        .map(|(id, _)| *id)
        .collect();
    if !lost.is_empty() {
        let times: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT id, created_at FROM orders WHERE id = ANY($1) ORDER BY created_at",
        )
        .bind(&lost)
        .fetch_all(&db)
        .await
        .unwrap();
        panic!(
            "{} orders without one OrderCreated (killed at {killed_at}, broker restarted at {restarted_at}): {:?}",
            lost.len(),
            times.iter().take(20).collect::<Vec<_>>()
        );
    }
    let mut captured = std::collections::HashSet::new();
    for (key, event) in &payment_events {
        if !seen.insert(event["event_id"].as_str().unwrap().to_string()) {
            continue;
        }
        assert!(processed.is_valid(event), "{event}");
        assert_eq!(key, event["order_id"].as_str().unwrap());
        if event["status"] == "captured" {
            assert!(captured.insert(key.clone()), "two captures of {key}");
        }
    }
    let missing: Vec<String> = committed
        .iter()
        .filter(|(id, status)| status == "paid" && !captured.contains(&id.to_string()))
        .map(|(id, _)| id.to_string())
        .collect();
    if !missing.is_empty() {
        let times: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT id, updated_at FROM orders WHERE id = ANY($1::uuid[])")
                .bind(
                    missing
                        .iter()
                        .map(|m| m.parse::<uuid::Uuid>().unwrap())
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&db)
                .await
                .unwrap();
        panic!(
            "{} paid orders without PaymentProcessed (broker restarted at {restarted_at}): {:?}",
            missing.len(),
            times.iter().take(10).collect::<Vec<_>>()
        );
    }
}

/// A metric's value from `/metrics` (the first series whose line starts
/// with `series`).
async fn metric(base: &str, series: &str) -> f64 {
    let text = support::http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_never_miss_the_callers_write_and_outlive_a_lost_replica_and_primary() {
    let mut cluster = tributary_test_servers::postgres::cluster(true);
    let provider = provider();
    let mut settings = settings("replicas", &provider).await;
    settings.database_url = tributary_kit::Secret::new(cluster.primary.url("orders"));
    let replica_url = cluster.replica.as_ref().unwrap().url("orders");
    settings.database_replica_urls = vec![tributary_kit::Secret::new(replica_url.clone())];
    settings.replicas.check_every = Duration::from_millis(100);
    settings.replicas.max_lag = Duration::from_secs(2);
    let instance = start(settings).await;
    let base = &instance.base;
    let token = issuer().await.customer("ryw");
    product(base, "SKU-00090", 1000, 700).await;
    eventually(
        Duration::from_secs(10),
        "the replica is in rotation",
        || async { metric(base, "tributary_orders_replica_in_rotation{").await == 1.0 },
    )
    .await;
    // Reads of callers without a recent write go to the replica.
    support::http()
        .post(format!("{base}/api/v1/admin/cache/purge"))
        .bearer_auth(issuer().await.admin())
        .header("idempotency-key", "purge-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let other = issuer().await.customer("someone-else");
    get(base, "/api/v1/orders", Some(&other)).await;
    get(base, "/api/v1/products/SKU-00090", None).await;
    assert!(metric(base, "tributary_orders_reads_total{source=\"replica\"}").await >= 1.0);

    // Replay paused: the replica falls behind, yet the caller reads its own
    // writes at once, every time.
    let replica = sqlx::PgPool::connect(&replica_url).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    for _ in 0..5 {
        let placed = post_new(base, "/api/v1/orders", &token, &basket(&[("SKU-00090", 1)])).await;
        assert_eq!(placed.status, StatusCode::CREATED);
        let id = placed.body["id"].as_str().unwrap();
        let read = get(base, &format!("/api/v1/orders/{id}"), Some(&token)).await;
        assert_eq!(
            read.status,
            StatusCode::OK,
            "the caller's own order, just placed"
        );
        let listed = get(base, "/api/v1/orders?limit=1", Some(&token)).await;
        assert_eq!(listed.body["orders"][0]["id"], id);
    }
    let on_replica: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&replica)
        .await
        .unwrap();
    assert_eq!(on_replica, 0, "the paused replica has none of them");
    // Past the allowed lag it leaves the rotation; resumed, it comes back.
    eventually(
        Duration::from_secs(10),
        "the lagging replica leaves the rotation",
        || async { metric(base, "tributary_orders_replica_in_rotation{").await == 0.0 },
    )
    .await;
    assert!(metric(base, "tributary_orders_replica_lag_seconds{").await >= 2.0);
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the caught-up replica is back",
        || async { metric(base, "tributary_orders_replica_in_rotation{").await == 1.0 },
    )
    .await;
    replica.close().await;

    // The replica killed: reads fall back to the primary.
    let placed = post_new(base, "/api/v1/orders", &token, &basket(&[("SKU-00090", 1)])).await;
    let id = placed.body["id"].as_str().unwrap().to_string();
    cluster.replica.as_mut().unwrap().stop("immediate");
    for _ in 0..5 {
        assert_eq!(
            get(base, "/api/v1/orders", Some(&other)).await.status,
            StatusCode::OK
        );
    }
    eventually(
        Duration::from_secs(5),
        "the dead replica is out of rotation",
        || async { metric(base, "tributary_orders_replica_in_rotation{").await == 0.0 },
    )
    .await;

    // The primary stopped: cached reads are still answered, marked stale;
    // writes fail at once.
    let before = get(base, &format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(before.status, StatusCode::OK);
    get(base, "/api/v1/products/SKU-00090", None).await;
    cluster.primary.stop("fast");
    eventually(
        Duration::from_secs(5),
        "the primary is seen down",
        || async { metric(base, "tributary_orders_primary_up").await == 0.0 },
    )
    .await;
    let stale = get(base, &format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(stale.status, StatusCode::OK, "{}", stale.body);
    assert!(
        stale.header("warning").unwrap().starts_with("110 "),
        "{:?}",
        stale.headers
    );
    assert!(stale.header("age").is_some());
    assert_eq!(stale.body["id"], id.as_str());
    let product = get(base, "/api/v1/products/SKU-00090", None).await;
    assert_eq!(product.status, StatusCode::OK);
    assert!(product.header("warning").is_some());
    let started = std::time::Instant::now();
    let refused = post_new(base, "/api/v1/orders", &token, &basket(&[("SKU-00090", 1)])).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "writes fail fast: {:?}",
        started.elapsed()
    );
    instance.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_one_instance_invalidates_the_others_cache_through_kafka() {
    let port = tributary_test_servers::free_port();
    let broker = tributary_test_servers::kafka(port);
    tributary_test_servers::create_topic(&broker.address(), "cache-invalidations", 1);
    let provider = provider();
    let mut settings = settings("cache", &provider).await;
    settings.kafka_brokers = Some(broker.address());
    assert!(settings.cache.ttl >= Duration::from_secs(60));
    let a = start(settings.clone()).await;
    let b = start(settings).await;
    product(&a.base, "SKU-00100", 10, 100).await;
    // Both instances follow from the newest offset: let them join first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = issuer().await.admin();
    for round in 1..=5 {
        // B has the product in memory...
        assert_eq!(stock(&b.base, "SKU-00100").await, 10 * round);
        assert_eq!(stock(&b.base, "SKU-00100").await, 10 * round);
        // ...A restocks: B drops its copy when the event arrives.
        let restocked = post_new(
            &a.base,
            "/api/v1/products/SKU-00100/restock",
            &admin,
            &json!({"units": 10}),
        )
        .await;
        assert_eq!(restocked.status, StatusCode::OK, "{}", restocked.body);
        // Only the event can drop B's copy: its memory keeps an entry for
        // the cache TTL, minutes past this wait. How fast the event comes
        // is a measured figure (the delay histogram, which
        // benches/orders-load.sh reports), not a
        // deadline a loaded CI machine could miss.
        eventually(Duration::from_secs(10), "B sees the new stock", || async {
            stock(&b.base, "SKU-00100").await == 10 * (round + 1)
        })
        .await;
        assert!(
            metric(
                &b.base,
                "tributary_orders_cache_invalidation_delay_seconds_count"
            )
            .await
                >= round as f64
        );
    }
    assert!(
        metric(
            &b.base,
            "tributary_orders_cache_lookups_total{cache=\"products\",outcome=\"local\"}"
        )
        .await
            >= 5.0
    );
    // A manual purge empties Redis.
    let purged = post_new(
        &a.base,
        "/api/v1/admin/cache/purge",
        &admin,
        &json!({"cache": "products"}),
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);
    assert!(purged.body["removed"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_cannot_put_back_a_value_older_than_an_invalidation() {
    use tributary_orders::cache::{Cache, CacheMetrics, Kind};
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let redis = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!(
        "test:orders:{}:versions:{}:",
        std::process::id(),
        fastrand::u32(..)
    );
    let cache = Cache::new(
        redis,
        &prefix,
        Duration::from_secs(60),
        100,
        CacheMetrics::default(),
    );
    let body = |text: &str| -> std::sync::Arc<[u8]> { text.as_bytes().into() };
    cache.put(Kind::Orders, "o1", 4, body("v4")).await;
    assert_eq!(
        &*cache.get(Kind::Orders, "o1", true).await.unwrap().body,
        b"v4"
    );
    // A write makes version 5 and invalidates; a reader that read version 4
    // before the write stores it after: refused.
    cache.invalidate(Kind::Orders, "o1", 5).await.unwrap();
    cache.put(Kind::Orders, "o1", 4, body("v4 again")).await;
    assert!(cache.get(Kind::Orders, "o1", true).await.is_none());
    // The stale copy is still there for when PostgreSQL is down.
    assert!(
        cache
            .get_even_stale(Kind::Orders, "o1")
            .await
            .unwrap()
            .stale
    );
    cache.put(Kind::Orders, "o1", 5, body("v5")).await;
    assert_eq!(
        &*cache.get(Kind::Orders, "o1", true).await.unwrap().body,
        b"v5"
    );
    cache.put(Kind::Orders, "o1", 3, body("v3")).await;
    assert_eq!(
        &*cache.get(Kind::Orders, "o1", true).await.unwrap().body,
        b"v5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_the_document_lacks() {
    let provider = provider();
    let instance = start(settings("schemathesis", &provider).await).await;
    product(&instance.base, "SKU-00110", 1_000_000, 100).await;
    let document = format!("{}/openapi.json", instance.base);
    let admin = issuer().await.admin();
    tokio::task::spawn_blocking(move || {
        tributary_test_servers::assert_schemathesis_passes(
            &document,
            &admin,
            &["/api/v1/admin/cache/purge"],
        )
    })
    .await
    .unwrap();
}

/// The engine's `tributary` binary, built beside this test binary by the
/// workspace's test build (`target/debug/tributary`).
fn engine_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = debug.join("tributary");
    if !binary.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "tributary-engine", "--bin", "tributary"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building the engine's binary");
    }
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_events_feed_the_engines_kafka_pipeline_into_parquet_without_dead_letters() {
    let port = tributary_test_servers::free_port();
    let broker = tributary_test_servers::kafka(port);
    let brokers = broker.address();
    tributary_test_servers::create_topic(&brokers, "orders", 2);
    let provider = provider();
    let mut settings = settings("pipeline", &provider).await;
    settings.kafka_brokers = Some(brokers.clone());
    let instance = start(settings.clone()).await;
    let base = &instance.base;
    product(base, "SKU-00120", 1000, 1999).await;
    product(base, "SKU-00121", 1000, 550).await;
    let issuer = issuer().await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let token = issuer.customer(&format!("pipeline-{}", i % 8));
        let body = json!({"lines": [{"sku": "SKU-00120", "qty": 1 + i % 3}, {"sku": "SKU-00121", "qty": 1}],
            "currency": if i % 2 == 0 { "USD" } else { "EUR" }, "channel": "mobile",
            "shipping": {"country": "DE", "postal_code": "10115"}});
        let placed = post_new(base, "/api/v1/orders", &token, &body).await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
        ids.push(placed.body["id"].as_str().unwrap().to_string());
    }
    let db = sqlx::PgPool::connect(settings.database_url.expose())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the outbox is delivered",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE topic = 'orders'")
                .fetch_one(&db)
                .await
                .unwrap()
                == 0
        },
    )
    .await;
    // The customers the pipeline enriches with: every customer this run made.
    let dir = tempfile::tempdir().unwrap();
    let customers: Vec<i64> = sqlx::query_scalar("SELECT number FROM customers")
        .fetch_all(&db)
        .await
        .unwrap();
    let mut csv = String::from("customer_id,segment,region,signup_date\n");
    for number in customers {
        csv.push_str(&format!("C{number:06},standard,EU,2026-01-01\n"));
    }
    std::fs::write(dir.path().join("customers.csv"), csv).unwrap();
    let pipeline =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/orders-kafka.yaml");
    let summary = dir.path().join("summary.json");
    let out = dir.path().join("out");
    let output = tokio::task::spawn_blocking({
        let (brokers, summary, out, dir) = (
            brokers.clone(),
            summary.clone(),
            out.clone(),
            dir.path().to_path_buf(),
        );
        move || {
            std::process::Command::new(engine_binary())
                .arg("run")
                .arg(&pipeline)
                .args(["--until-idle", "5s", "--summary-json"])
                .arg(&summary)
                .env("KAFKA_BROKERS", &brokers)
                .env("ORDERS_TOPIC", "orders")
                .env(
                    "TRIBUTARY_GROUP",
                    format!("orders-e2e-{}", fastrand::u32(..)),
                )
                .env("TRIBUTARY_OUT", &out)
                .env("TRIBUTARY_CUSTOMERS", dir.join("customers.csv"))
                .env("TRIBUTARY_COMMIT_INTERVAL", "1s")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the pipeline failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let totals = &summary["totals"];
    assert_eq!(totals["records_in"], 40, "{summary}");
    assert_eq!(totals["records_out"], 40, "{summary}");
    assert_eq!(totals["dlq"], 0, "{summary}");
    assert_eq!(totals["review"], 0, "{summary}");
    // And the rows are there, one per order.
    let files: Vec<_> = walk(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(
        !files.is_empty(),
        "no Parquet files under {}",
        out.display()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_payment_breaker_opens_on_failures_sheds_the_load_and_closes_when_the_provider_is_back()
{
    let provider = provider();
    let mut settings = settings("breaker", &provider).await;
    settings.payments.breaker.minimum_calls = 6;
    settings.payments.breaker.window = 10;
    settings.payments.breaker.open_for = Duration::from_secs(2);
    settings.payments.breaker.probes = 1;
    settings.payments.max_attempts = 1;
    settings.saga.give_up_after = Duration::from_secs(60);
    let instance = start(settings).await;
    let base = &instance.base;
    product(base, "SKU-00130", 100, 900).await;
    let token = issuer().await.customer("breaker");
    faults(&provider, json!([{"op": "create", "kind": "fail"}])).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let placed = post_new(base, "/api/v1/orders", &token, &basket(&[("SKU-00130", 1)])).await;
        ids.push(placed.body["id"].as_str().unwrap().to_string());
    }
    eventually(Duration::from_secs(10), "the breaker opens", || async {
        metric(base, "tributary_orders_payment_breaker_state").await == 1.0
    })
    .await;
    // Open, it sheds: the sagas keep retrying, the provider hears nothing.
    let calls = |stats: &tributary_payment_provider::Stats| {
        stats
            .calls
            .get(&tributary_payment_provider::Operation::Create)
            .copied()
            .unwrap_or(0)
    };
    let before = calls(&provider_stats(&provider).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = calls(&provider_stats(&provider).await);
    assert!(during - before <= 1, "{} calls while open", during - before);
    // The provider back: a probe gets through after the open interval, the
    // breaker closes, and every order is paid.
    faults(&provider, json!([])).await;
    for id in &ids {
        let id = id.clone();
        let token = token.clone();
        eventually(Duration::from_secs(30), "the order is paid", || {
            let (id, token) = (id.clone(), token.clone());
            async move { status_of(base, &token, &id).await == "paid" }
        })
        .await;
    }
    assert_eq!(
        metric(base, "tributary_orders_payment_breaker_state").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_query_metrics_the_service_exports() {
    let port = tributary_test_servers::free_port();
    let broker = tributary_test_servers::kafka(port);
    let provider = provider();
    let mut settings = settings("alerts", &provider).await;
    settings.kafka_brokers = Some(broker.address());
    // A replica that does not answer: its series say so.
    settings.database_replica_urls = vec![tributary_kit::Secret::new(
        "postgres://postgres@127.0.0.1:1/nothing".to_string(),
    )];
    let instance = start(settings).await;
    let exported = support::http()
        .get(format!("{}/metrics", instance.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/prometheus/orders-alerts.yml"),
    )
    .unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tributary_orders_"))
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "orders-alerts.yml queries {name}, which the service does not export:\n{exported}"
        );
    }
}
