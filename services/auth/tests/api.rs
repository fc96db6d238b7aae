//! The auth service, black-box over HTTP, against the machine's PostgreSQL
//! (127.0.0.1:5432, trust) and Redis (127.0.0.1:6379). Each test starts
//! its own instances in this process on port 0, in one database per run,
//! under its own Redis prefix, and speaks from its own client address
//! (`X-Forwarded-For`, believed from 127.0.0.1 here), so tests do not
//! share limits.

// A test's unwrap is its assertion: a failure shows where and why.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tributary_auth::{Clock, Server, Settings};
use tributary_kit::Secret;

use tributary_test_servers as servers;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// One database per run of this binary (`…_{pid}_main`), and one for each
/// test that changes what every instance of its database sees (the signing
/// keys); older runs' databases are dropped.
fn database_url() -> String {
    database_url_for("main")
}

fn database_url_for(purpose: &str) -> String {
    format!(
        "{POSTGRES}/tributary_auth_test_{}_{purpose}",
        servers::run_id()
    )
}

async fn drop_old_databases() {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres"))
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 with trust auth");
        let mine = format!("tributary_auth_test_{}_%", servers::run_id());
        let old: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'tributary_auth_test_%' AND datname NOT LIKE $1",
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
}

/// The data keys every instance of the run shares.
fn data_keys() -> Secret {
    static KEYS: OnceLock<String> = OnceLock::new();
    Secret::new(
        KEYS.get_or_init(tributary_auth::sealing::Keyring::generate)
            .clone(),
    )
}

/// Settings for a test: its own Redis prefix, fast hashing, a proxy on loopback.
fn settings(test: &str) -> Settings {
    let mut settings = Settings {
        database_url: Secret::new(database_url()),
        redis_prefix: format!("test:{}:{test}:{}:", std::process::id(), fastrand::u32(..)),
        data_keys: Some(data_keys()),
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        json_logs: false,
        ..Settings::default()
    };
    settings.passwords.bcrypt_cost = 4;
    settings
}

struct Instance {
    server: Server,
    base: String,
}

async fn start(settings: Settings) -> Instance {
    start_with_clock(settings, Clock::system()).await
}

async fn start_with_clock(settings: Settings, clock: Clock) -> Instance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(settings, clock, listener).await
}

async fn start_on(settings: Settings, clock: Clock, listener: tokio::net::TcpListener) -> Instance {
    drop_old_databases().await;
    let server =
        tributary_auth::start_with_clock(settings, clock, listener, std::future::pending())
            .await
            .expect("the auth service starts (PostgreSQL and Redis must be up)");
    let base = format!("http://{}", server.addr());
    Instance { server, base }
}

/// A client speaking from its own address.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    address: String,
}

impl Client {
    fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            address: format!(
                "10.{}.{}.{}",
                fastrand::u8(..),
                fastrand::u8(..),
                fastrand::u8(1..255)
            ),
        }
    }

    async fn post(
        &self,
        url: String,
        body: Value,
        bearer: Option<&str>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .post(url)
            .header("x-forwarded-for", &self.address)
            .json(&body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        read(response).await
    }

    async fn get(
        &self,
        url: String,
        bearer: Option<&str>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.get(url).header("x-forwarded-for", &self.address);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        read(request.send().await.unwrap()).await
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, headers)
}

fn email(test: &str) -> String {
    format!("{test}.{}@example.com", fastrand::u64(..))
}

const PASSWORD: &str = "correct horse battery";

async fn sign_up(client: &Client, base: &str, email: &str, password: &str) -> Value {
    let (status, body, _) = client
        .post(
            format!("{base}/auth/users"),
            json!({"email": email, "password": password}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn login(client: &Client, base: &str, email: &str, password: &str) -> (StatusCode, Value) {
    let (status, body, _) = client
        .post(
            format!("{base}/auth/login"),
            json!({"email": email, "password": password}),
            None,
        )
        .await;
    (status, body)
}

fn claims_of(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let claims = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&header).unwrap(),
        serde_json::from_slice(&claims).unwrap(),
    )
}

async fn audit_count(action: &str, outcome: &str, email: &str) -> i64 {
    audit_count_in("main", action, outcome, email).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_log_in_refresh_ask_who_and_log_out() {
    let app = start(settings("flow")).await;
    let client = Client::new();
    let base = &app.base;
    let email = email("flow");
    let user = sign_up(&client, base, &email, PASSWORD).await;
    assert_eq!(user["email"], email.as_str());
    assert_eq!(user["roles"], json!(["customer"]));

    let (status, tokens) = login(&client, base, &email.to_uppercase(), PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    let access = tokens["access_token"].as_str().unwrap();
    let (header, claims) = claims_of(access);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().unwrap();
    let mut names: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "amr",
            "aud",
            "auth_time",
            "email",
            "exp",
            "iat",
            "iss",
            "jti",
            "permissions",
            "roles",
            "sid",
            "user_id"
        ]
    );
    assert_eq!(claims["user_id"], user["id"]);
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    let (status, jwks, _) = client
        .get(format!("{base}/.well-known/jwks.json"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid && k["alg"] == "EdDSA")
    );
    let (_, discovery, _) = client
        .get(format!("{base}/.well-known/openid-configuration"), None)
        .await;
    assert!(
        discovery["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/jwks.json")
    );

    let (status, me, _) = client.get(format!("{base}/auth/me"), Some(access)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["email"], email.as_str());

    let (status, refreshed, _) = client
        .post(
            format!("{base}/auth/refresh"),
            json!({"refresh_token": tokens["refresh_token"]}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_ne!(refreshed["refresh_token"], tokens["refresh_token"]);
    let (_, refreshed_claims) = claims_of(refreshed["access_token"].as_str().unwrap());
    assert_eq!(refreshed_claims["sid"], claims["sid"]);

    let (status, sessions, _) = client
        .get(format!("{base}/auth/sessions"), Some(access))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    assert_eq!(sessions[0]["id"], claims["sid"]);

    let (status, _, _) = client
        .post(format!("{base}/auth/logout"), json!({}), Some(access))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem, headers) = client.get(format!("{base}/auth/me"), Some(access)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        problem["type"],
        "https://tributary.dev/problems/unauthorized"
    );
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let (status, _, _) = client
        .post(
            format!("{base}/auth/refresh"),
            json!({"refresh_token": refreshed["refresh_token"]}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(audit_count("login", "ok", &email).await, 1);
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_naming_the_field() {
    let app = start(settings("input")).await;
    let client = Client::new();
    let base = &app.base;
    let email = email("input");

    // bcrypt reads 72 bytes: a longer password is refused, never truncated.
    let prefix = "p".repeat(72);
    let (status, problem, headers) = client
        .post(
            format!("{base}/auth/users"),
            json!({"email": email, "password": format!("{prefix}A")}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(problem["errors"][0]["pointer"], "/password");
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("72 bytes")
    );
    sign_up(&client, base, &email, &prefix).await;
    let (status, _) = login(&client, base, &email, &format!("{prefix}B")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a password differing after byte 72 must not match"
    );
    let (status, _) = login(&client, base, &email, &prefix).await;
    assert_eq!(status, StatusCode::OK);

    let (status, problem, _) = client
        .post(
            format!("{base}/auth/users"),
            json!({"email": email.to_uppercase(), "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "emails are unique whatever their case: {problem}"
    );
    assert_eq!(problem["errors"][0]["pointer"], "/email");

    for (body, pointer) in [
        (
            json!({"email": "no-at-sign", "password": PASSWORD}),
            "/email",
        ),
        (json!({"email": email, "password": "short"}), "/password"),
        (json!({"email": email}), ""),
        (json!({"email": 42, "password": PASSWORD}), "/email"),
        (
            json!({"email": email, "password": PASSWORD, "admin": true}),
            "/admin",
        ),
    ] {
        let (status, problem, headers) = client
            .post(format!("{base}/auth/users"), body.clone(), None)
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(
            problem["errors"][0]["pointer"], pointer,
            "{body}: {problem}"
        );
    }
    let response = client
        .http
        .post(format!("{base}/auth/login"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, problem, _) = client.get(format!("{base}/nowhere"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["status"], 404);
    let (status, _, headers) = client.get(format!("{base}/auth/login"), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["content-type"], "application/problem+json");
    app.server.stop().await.unwrap();
}

/// 200 parallel wrong passwords against one account, spread over 3 instances.
async fn storm(instances: &[Instance], email: &str, attempts: usize) -> Vec<(StatusCode, Value)> {
    let bases: Vec<String> = instances.iter().map(|i| i.base.clone()).collect();
    storm_at(&bases, email, attempts).await
}

/// The same, at these base URLs.
async fn storm_at(bases: &[String], email: &str, attempts: usize) -> Vec<(StatusCode, Value)> {
    let client = Client::new();
    let calls = (0..attempts).map(|i| {
        let client = client.clone();
        let base = bases[i % bases.len()].clone();
        let email = email.to_string();
        tokio::spawn(async move { login(&client, &base, &email, "wrong password!").await })
    });
    let mut answers = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        answers.push(call.await.unwrap());
    }
    answers
}

async fn instances(settings: Settings, n: usize) -> Vec<Instance> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(start(settings.clone()).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_on_three_instances_reach_the_check_exactly_five_times() {
    let settings = settings("attempts");
    let all = instances(settings, 3).await;
    let email = email("attempts");
    sign_up(&Client::new(), &all[0].base, &email, PASSWORD).await;
    let answers = storm(&all, &email, 200).await;
    let checked = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        (checked, limited),
        (5, 195),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert_eq!(audit_count("login", "failed", &email).await, 5);
    assert_eq!(audit_count("login", "limited", &email).await, 195);
    for instance in all {
        instance.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockout_counts_exactly_ten_failures_and_then_looks_like_a_wrong_password() {
    let mut settings = settings("lockout");
    settings.lockout.attempts_per_account = 1000;
    settings.lockout.attempts_per_address = 1000;
    let all = instances(settings, 3).await;
    let email = email("lockout");
    let client = Client::new();
    sign_up(&client, &all[0].base, &email, PASSWORD).await;
    let (_, before) = login(&client, &all[0].base, &email, PASSWORD).await;
    let answers = storm(&all, &email, 200).await;
    let refused = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    let retry = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        refused + retry,
        200,
        "only 401 (checked or locked) and 429 (checks in flight)"
    );
    assert_eq!(
        audit_count("login", "failed", &email).await,
        10,
        "exactly ten checks ran"
    );
    assert_eq!(
        audit_count("login", "locked", &email).await
            + audit_count("login", "limited", &email).await,
        190
    );
    assert_eq!(audit_count("lockout", "locked", &email).await, 1);
    let wrong_answer = &answers
        .iter()
        .find(|(s, _)| *s == StatusCode::UNAUTHORIZED)
        .unwrap()
        .1;

    // Locked: the right password gets the wrong password's answer.
    let (status, locked) = login(&client, &all[1].base, &email, PASSWORD).await;
    let (_, wrong) = login(&client, &all[1].base, &email, "another wrong one").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(locked, wrong);
    assert_eq!(&locked, wrong_answer);

    // A session from before the lock refreshes nothing while it holds.
    let (status, problem, _) = client
        .post(
            format!("{}/auth/refresh", all[2].base),
            json!({"refresh_token": before["refresh_token"]}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    for instance in all {
        instance.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_parallel_failures_leave_the_account_open_and_success_resets_them() {
    let mut settings = settings("nine");
    settings.lockout.attempts_per_account = 1000;
    settings.lockout.attempts_per_address = 1000;
    let all = instances(settings, 3).await;
    let email = email("nine");
    let client = Client::new();
    sign_up(&client, &all[0].base, &email, PASSWORD).await;
    storm(&all, &email, 9).await;
    assert_eq!(audit_count("login", "failed", &email).await, 9);
    let (status, body) = login(&client, &all[2].base, &email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The success reset the count: nine more failures still do not lock.
    storm(&all, &email, 9).await;
    let (status, _) = login(&client, &all[0].base, &email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    for instance in all {
        instance.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_refreshes_of_one_token_yield_one_successor() {
    let app = start(settings("twenty")).await;
    let client = Client::new();
    let email = email("twenty");
    sign_up(&client, &app.base, &email, PASSWORD).await;
    let (_, tokens) = login(&client, &app.base, &email, PASSWORD).await;
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            let url = format!("{}/auth/refresh", app.base);
            let token = tokens["refresh_token"].clone();
            tokio::spawn(async move {
                client
                    .post(url, json!({"refresh_token": token}), None)
                    .await
            })
        })
        .collect();
    let mut successors = std::collections::HashSet::new();
    for call in calls {
        let (status, body, _) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        successors.insert(body["refresh_token"].as_str().unwrap().to_string());
    }
    assert_eq!(successors.len(), 1, "one successor for all: {successors:?}");
    let successor = successors.into_iter().next().unwrap();
    let (status, next, _) = client
        .post(
            format!("{}/auth/refresh", app.base),
            json!({"refresh_token": successor}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the successor is live: {next}");
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_an_older_refresh_token_revokes_the_family_everywhere() {
    let mut settings = settings("reuse");
    settings.tokens.reuse_grace = Duration::from_millis(300);
    let all = instances(settings, 2).await;
    let client = Client::new();
    let email = email("reuse");
    sign_up(&client, &all[0].base, &email, PASSWORD).await;
    let (_, first) = login(&client, &all[0].base, &email, PASSWORD).await;
    let refresh = |base: String, token: Value| {
        let client = client.clone();
        async move {
            client
                .post(
                    format!("{base}/auth/refresh"),
                    json!({"refresh_token": token}),
                    None,
                )
                .await
        }
    };
    let (_, second, _) = refresh(all[0].base.clone(), first["refresh_token"].clone()).await;
    let (status, third, _) = refresh(all[1].base.clone(), second["refresh_token"].clone()).await;
    assert_eq!(status, StatusCode::OK);
    let access = third["access_token"].as_str().unwrap().to_string();
    let (status, _, _) = client
        .get(format!("{}/auth/me", all[1].base), Some(&access))
        .await;
    assert_eq!(status, StatusCode::OK);

    // The grandparent again: the whole family is revoked.
    let (status, _, _) = refresh(all[1].base.clone(), first["refresh_token"].clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = refresh(all[0].base.clone(), third["refresh_token"].clone()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the newest descendant is dead too"
    );
    // Its access token is refused on the other instance within a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let (status, _, _) = client
            .get(format!("{}/auth/me", all[0].base), Some(&access))
            .await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepted after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(audit_count_by_action("token-reuse").await > 0);

    // The immediate parent after the grace interval is reuse as well.
    let (_, fresh) = login(&client, &all[0].base, &email, PASSWORD).await;
    let (_, child, _) = refresh(all[0].base.clone(), fresh["refresh_token"].clone()).await;
    let (status, again, _) = refresh(all[0].base.clone(), fresh["refresh_token"].clone()).await;
    assert_eq!(status, StatusCode::OK, "within the grace interval");
    assert_eq!(again["refresh_token"], child["refresh_token"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, _) = refresh(all[0].base.clone(), fresh["refresh_token"].clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = refresh(all[0].base.clone(), child["refresh_token"].clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for instance in all {
        instance.server.stop().await.unwrap();
    }
}

async fn audit_count_by_action(action: &str) -> i64 {
    let db = sqlx::PgPool::connect(&database_url()).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(&db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_documents_itself_and_reports_readiness() {
    let app = start(settings("docs")).await;
    let client = Client::new();
    let (status, document, _) = client.get(format!("{}/openapi.json", app.base), None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/auth/users",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/auth/me",
        "/.well-known/jwks.json",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "{path} is documented"
        );
    }
    let (status, ready, _) = client.get(format!("{}/readyz", app.base), None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready, json!({"postgres": "ok", "redis": "ok"}));
    let (status, metrics, _) = client.get(format!("{}/metrics", app.base), None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("route=\"/openapi.json\""), "{metrics}");
    assert!(!metrics.contains("route=\"/nowhere\""));
    app.server.stop().await.unwrap();
}

/// The code an authenticator app shows now for `secret`, at least 5 s
/// before its step ends (so the whole test stays within one step).
async fn totp_code(secret: &str) -> (String, totp_rs::Totp) {
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    let left = 30 - chrono::Utc::now().timestamp() % 30;
    if left < 5 {
        tokio::time::sleep(Duration::from_millis(left as u64 * 1000 + 100)).await;
    }
    (totp.generate_current().to_string(), totp)
}

/// Signs up, logs in and turns TOTP on; returns the seed and recovery codes.
async fn with_mfa(client: &Client, base: &str, email: &str) -> (String, Vec<String>) {
    sign_up(client, base, email, PASSWORD).await;
    let (_, tokens) = login(client, base, email, PASSWORD).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (status, enrolment, _) = client
        .post(format!("{base}/auth/mfa/totp"), json!({}), Some(access))
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolment}");
    let uri = enrolment["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Tributary:"), "{uri}");
    let secret = enrolment["secret"].as_str().unwrap().to_string();
    let (code, _) = totp_code(&secret).await;
    let (status, confirmed, _) = client
        .post(
            format!("{base}/auth/mfa/totp/confirm"),
            json!({"code": code}),
            Some(access),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

async fn second_step(
    client: &Client,
    base: &str,
    email: &str,
    factor: Value,
) -> (StatusCode, Value) {
    let (status, challenge) = login(client, base, email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(challenge["mfa_required"], true, "{challenge}");
    assert!(challenge.get("access_token").is_none());
    let mut body = factor;
    body["mfa_token"] = challenge["mfa_token"].clone();
    let (status, answer, _) = client
        .post(format!("{base}/auth/login/mfa"), body, None)
        .await;
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_code_logs_in_once_across_two_instances() {
    let mut settings = settings("totp");
    settings.lockout.attempts_per_account = 100;
    let all = instances(settings, 2).await;
    let client = Client::new();
    let email = email("totp");
    let (secret, _) = with_mfa(&client, &all[0].base, &email).await;
    // The confirmation spent this step's code; wait for the next one.
    let (_, totp) = totp_code(&secret).await;
    let left = 30 - chrono::Utc::now().timestamp() % 30;
    tokio::time::sleep(Duration::from_millis(left as u64 * 1000 + 100)).await;
    let code = totp.generate_current().to_string();

    let (status, tokens) = second_step(&client, &all[0].base, &email, json!({"code": code})).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, claims) = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]));
    let (status, replay) = second_step(&client, &all[1].base, &email, json!({"code": code})).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the same code on another instance: {replay}"
    );
    assert_eq!(
        replay["type"],
        "https://tributary.dev/problems/invalid-second-factor"
    );
    for instance in all {
        instance.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_code_works_once() {
    let mut settings = settings("recovery");
    settings.lockout.attempts_per_account = 100;
    let app = start(settings).await;
    let client = Client::new();
    let email = email("recovery");
    let (_, codes) = with_mfa(&client, &app.base, &email).await;
    let typed = codes[3].to_uppercase().replace('-', " ");
    let (status, tokens) =
        second_step(&client, &app.base, &email, json!({"recovery_code": typed})).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (status, _) = second_step(
        &client,
        &app.base,
        &email,
        json!({"recovery_code": codes[3]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, problem) = second_step(&client, &app.base, &email, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_need_a_recent_second_factor() {
    let mut settings = settings("admin");
    settings.lockout.attempts_per_account = 100;
    settings.lockout.attempts_per_address = 100;
    settings.lockout.max_failures = 3;
    let app = start(settings).await;
    let base = &app.base;
    let client = Client::new();
    let admin = email("admin");
    let (_, codes) = with_mfa(&client, base, &admin).await;
    let db = sqlx::PgPool::connect(&database_url()).await.unwrap();
    sqlx::query("UPDATE users SET roles = '{admin}' WHERE lower(email) = lower($1)")
        .bind(&admin)
        .execute(&db)
        .await
        .unwrap();
    let member = email("member");
    let member_view = sign_up(&client, base, &member, PASSWORD).await;
    let access_url = format!(
        "{base}/auth/admin/users/{}/access",
        member_view["id"].as_str().unwrap()
    );
    let grant = json!({"roles": ["customer"], "permissions": ["read:orders", "write:orders"]});

    // A customer may not; an admin with only a password must step up.
    let (_, member_tokens) = login(&client, base, &member, PASSWORD).await;
    let response = client
        .http
        .put(&access_url)
        .bearer_auth(member_tokens["access_token"].as_str().unwrap())
        .json(&grant)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let password_admin = email("password-admin");
    sign_up(&client, base, &password_admin, PASSWORD).await;
    sqlx::query("UPDATE users SET roles = '{admin}' WHERE lower(email) = lower($1)")
        .bind(&password_admin)
        .execute(&db)
        .await
        .unwrap();
    let (_, password_tokens) = login(&client, base, &password_admin, PASSWORD).await;
    let response = client
        .http
        .put(&access_url)
        .bearer_auth(password_tokens["access_token"].as_str().unwrap())
        .json(&grant)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_user_authentication")
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://tributary.dev/problems/step-up-required"
    );

    let (_, tokens) = second_step(&client, base, &admin, json!({"recovery_code": codes[0]})).await;
    let access = tokens["access_token"].as_str().unwrap();
    let response = client
        .http
        .put(&access_url)
        .bearer_auth(access)
        .json(&grant)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let changed: Value = response.json().await.unwrap();
    assert_eq!(
        changed["permissions"],
        json!(["read:orders", "write:orders"])
    );

    // Lock the member, then unlock them.
    for _ in 0..3 {
        login(&client, base, &member, "wrong password!").await;
    }
    let (status, _) = login(&client, base, &member, PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "locked");
    let (status, _, _) = client
        .post(
            format!(
                "{base}/auth/admin/users/{}/unlock",
                member_view["id"].as_str().unwrap()
            ),
            json!({}),
            Some(access),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = login(&client, base, &member, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "unlocked");

    // Key rotation over HTTP: the member may not, the admin may; the new
    // key is published at once.
    let (_, member_tokens) = login(&client, base, &member, PASSWORD).await;
    let rotate = format!("{base}/auth/admin/keys/rotate");
    let (status, _, _) = client
        .post(
            rotate.clone(),
            json!({}),
            member_tokens["access_token"].as_str(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, rotated, _) = client.post(rotate, json!({}), Some(access)).await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let (_, jwks, _) = client
        .get(format!("{base}/.well-known/jwks.json"), None)
        .await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == rotated["kid"]),
        "{jwks}"
    );
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_load_without_a_failed_verification() {
    // Its own database: the rotation changes the keys of every instance on it.
    let mut settings = settings("rotation");
    settings.database_url = Secret::new(database_url_for("rotation"));
    settings.keys.publish_lead = Duration::from_secs(2);
    settings.keys.reload_every = Duration::from_millis(200);
    let app = start(settings.clone()).await;
    let base = app.base.clone();
    let client = Client::new();
    let email = email("rotation");
    sign_up(&client, &base, &email, PASSWORD).await;
    let (_, tokens) = login(&client, &base, &email, PASSWORD).await;

    // Another service's verifier: it keeps the JWKS for a second.
    let mut verifier_settings = tributary_kit::jwt::VerifierSettings::new(
        Some(format!("{base}/.well-known/jwks.json")),
        &settings.issuer,
        &settings.audience,
    );
    verifier_settings.max_age = Duration::from_secs(1);
    let verifier = tributary_kit::jwt::Verifier::new(verifier_settings);

    let load = tokio::spawn({
        let client = client.clone();
        let base = base.clone();
        let mut refresh_token = tokens["refresh_token"].clone();
        async move {
            let mut kids = Vec::new();
            let mut failures = Vec::new();
            let until = tokio::time::Instant::now() + Duration::from_secs(7);
            while tokio::time::Instant::now() < until {
                let (status, next, _) = client
                    .post(
                        format!("{base}/auth/refresh"),
                        json!({"refresh_token": refresh_token}),
                        None,
                    )
                    .await;
                if status != StatusCode::OK {
                    failures.push(format!("refresh: {status} {next}"));
                    break;
                }
                refresh_token = next["refresh_token"].clone();
                let access = next["access_token"].as_str().unwrap().to_string();
                let (header, _) = claims_of(&access);
                kids.push(header["kid"].as_str().unwrap().to_string());
                if let Err(error) = verifier.verify(&access).await {
                    failures.push(format!("remote verifier: {error}"));
                }
                let (status, _, _) = client.get(format!("{base}/auth/me"), Some(&access)).await;
                if status != StatusCode::OK {
                    failures.push(format!("/auth/me: {status}"));
                }
            }
            (kids, failures)
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let keys = data_keys();
    let rotated = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tributary-auth"))
            .args(["keys", "rotate"])
            .env("DATABASE_URL", database_url_for("rotation"))
            .env("TRIBUTARY_AUTH_DATA_KEYS", keys.expose())
            .env("TRIBUTARY_AUTH_KEYS__PUBLISH_LEAD", "2s")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let (kids, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        kids.len(),
        &failures[..failures.len().min(5)]
    );
    let mut distinct = kids.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        2,
        "one switch from the old key to the new: {distinct:?}"
    );
    assert!(kids.len() > 100, "only {} refreshes", kids.len());
    let (_, jwks, _) = client
        .get(format!("{base}/.well-known/jwks.json"), None)
        .await;
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "the old key stays published: {jwks}"
    );
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_password_among_checks_that_could_lock_is_told_to_retry() {
    let mut settings = settings("in-flight");
    settings.lockout.attempts_per_account = 1000;
    settings.lockout.attempts_per_address = 1000;
    // One slow hashing thread: ten wrong passwords keep it busy for ~0.6 s.
    settings.passwords.bcrypt_cost = 10;
    settings.passwords.threads = 1;
    let app = start(settings).await;
    let client = Client::new();
    let email = email("in-flight");
    sign_up(&client, &app.base, &email, PASSWORD).await;
    let storm = tokio::spawn({
        let bases = vec![app.base.clone()];
        let email = email.clone();
        async move { storm_at(&bases, &email, 10).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = login(&client, &app.base, &email, PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["type"],
        "https://tributary.dev/problems/too-many-attempts"
    );
    let answers = storm.await.unwrap();
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::UNAUTHORIZED));
    let (status, _) = login(&client, &app.base, &email, PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "ten failures lock it");
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_path_parameter_is_a_problem_naming_it() {
    let app = start(settings("path")).await;
    let client = Client::new();
    let email = email("path");
    sign_up(&client, &app.base, &email, PASSWORD).await;
    let (_, tokens) = login(&client, &app.base, &email, PASSWORD).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (status, problem, headers) = client
        .post(
            format!("{}/auth/admin/users/not-a-uuid/unlock", app.base),
            json!({}),
            Some(access),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(
        problem["type"],
        "https://tributary.dev/problems/invalid-path"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("not-a-uuid"),
        "{problem}"
    );
    app.server.stop().await.unwrap();
}

/// Settings with their own database (the outbox's relays deliver every row
/// of theirs) and, when given, an SMTP server.
fn settings_alone(test: &str, smtp: Option<&servers::Smtp>) -> Settings {
    let mut settings = settings(test);
    settings.database_url = Secret::new(database_url_for(test));
    settings.mail.smtp_url = smtp.map(|s| Secret::new(s.url()));
    settings
}

/// The reset tokens in `mail` (`pr_` and 43 base64url characters).
fn reset_tokens(mail: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut rest = mail;
    while let Some(at) = rest.find("pr_") {
        let token: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        rest = &rest[at + 3..];
        if token.len() == 46 {
            tokens.push(token);
        }
    }
    tokens
}

/// Waits for `n` reset tokens mailed to `to`, oldest mail first is not
/// promised: they come as a set.
async fn mailed_tokens(smtp: &servers::Smtp, to: &str, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut tokens: Vec<String> = smtp
            .mails()
            .iter()
            .filter(|m| {
                m.lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("to: {to}")))
            })
            .flat_map(|m| reset_tokens(m))
            .collect();
        tokens.sort();
        tokens.dedup();
        if tokens.len() >= n {
            return tokens;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} reset mails to {to} within 20 s: {:?}\n{}",
            tokens.len(),
            smtp.mails(),
            smtp.process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ask_reset(client: &Client, base: &str, email: &str) -> (StatusCode, Value) {
    let (status, body, _) = client
        .post(
            format!("{base}/auth/password-reset"),
            json!({"email": email}),
            None,
        )
        .await;
    (status, body)
}

async fn confirm_reset(
    client: &Client,
    base: &str,
    token: &str,
    password: &str,
) -> (StatusCode, Value) {
    let (status, body, _) = client
        .post(
            format!("{base}/auth/password-reset/confirm"),
            json!({"token": token, "password": password}),
            None,
        )
        .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailed_reset_token_sets_the_password_once_and_ends_every_session() {
    let smtp = servers::Smtp::start();
    let app = start(settings_alone("reset", Some(&smtp))).await;
    let (client, base) = (Client::new(), app.base.as_str());
    let email = email("reset");
    sign_up(&client, base, &email, PASSWORD).await;
    let (_, tokens) = login(&client, base, &email, PASSWORD).await;
    let access = tokens["access_token"].as_str().unwrap();

    // The same answer whether or not the account exists; mail only to it.
    let known = ask_reset(&client, base, &email).await;
    let unknown_email = self::email("nobody");
    let unknown = ask_reset(&client, base, &unknown_email).await;
    assert_eq!(known.0, StatusCode::ACCEPTED, "{}", known.1);
    assert_eq!(known, unknown);
    let token = mailed_tokens(&smtp, &email, 1).await.remove(0);
    let (status, problem) = ask_reset(&client, base, "not an address").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["pointer"], "/email");

    // A bad new password is refused without spending the token.
    let (status, problem) = confirm_reset(&client, base, &token, "short").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/password");
    let new_password = "a whole new password";
    let (status, body) = confirm_reset(&client, base, &token, new_password).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, problem) = confirm_reset(&client, base, &token, "yet another password").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(
        problem["type"],
        "https://tributary.dev/problems/invalid-reset-token"
    );
    assert_eq!(problem["errors"][0]["pointer"], "/token");

    // Every session ended: its refresh token and (within a second) its access token.
    let (status, _, _) = client
        .post(
            format!("{base}/auth/refresh"),
            json!({"refresh_token": tokens["refresh_token"]}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let (status, _, _) = client.get(format!("{base}/auth/me"), Some(access)).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old access token still works after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        login(&client, base, &email, PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&client, base, &email, new_password).await.0,
        StatusCode::OK
    );

    let notice = smtp.wait_for(&email, "was changed").await;
    assert!(
        !notice.contains("pr_"),
        "the notice carries no token: {notice}"
    );
    assert!(
        smtp.mails().iter().all(|m| !m.contains(&unknown_email)),
        "a mail went to an address without an account"
    );
    assert_eq!(
        audit_count_in("reset", "password-reset", "ok", &email).await,
        1
    );
    app.server.stop().await.unwrap();
}

async fn audit_count_in(database: &str, action: &str, outcome: &str, email: &str) -> i64 {
    let db = sqlx::PgPool::connect(&database_url_for(database))
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = $1 AND outcome = $2 AND lower(email) = lower($3)",
    )
    .bind(action)
    .bind(outcome)
    .bind(email)
    .fetch_one(&db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_tokens_expire_after_an_hour_and_mails_are_capped_per_hour() {
    let smtp = servers::Smtp::start();
    let clock = Clock::adjustable();
    let app = start_with_clock(settings_alone("reset_expiry", Some(&smtp)), clock.clone()).await;
    let (client, base) = (Client::new(), app.base.as_str());
    let email = email("expiry");
    sign_up(&client, base, &email, PASSWORD).await;

    // Four requests in an hour: three mails (the default cap).
    for _ in 0..4 {
        assert_eq!(
            ask_reset(&client, base, &email).await.0,
            StatusCode::ACCEPTED
        );
    }
    let tokens = mailed_tokens(&smtp, &email, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        mailed_tokens(&smtp, &email, 3).await.len(),
        3,
        "a fourth mail was sent"
    );
    assert_eq!(
        audit_count_in(
            "reset_expiry",
            "password-reset-requested",
            "limited",
            &email
        )
        .await,
        1
    );

    // 59 minutes on, a token works (and spends the others).
    clock.advance(Duration::from_secs(59 * 60));
    let (status, body) = confirm_reset(&client, base, &tokens[0], "the second password").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        confirm_reset(&client, base, &tokens[1], "the third password")
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // A new one, an hour and a second later, has expired.
    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        ask_reset(&client, base, &email).await.0,
        StatusCode::ACCEPTED
    );
    let fresh: Vec<String> = mailed_tokens(&smtp, &email, 4)
        .await
        .into_iter()
        .filter(|t| !tokens.contains(t))
        .collect();
    assert_eq!(fresh.len(), 1);
    clock.advance(Duration::from_secs(3601));
    let (status, problem) = confirm_reset(&client, base, &fresh[0], "the fourth password").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(
        login(&client, base, &email, "the second password").await.0,
        StatusCode::OK
    );
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_events_wait_in_the_outbox_until_kafka_comes_back() {
    let port = servers::free_port();
    let brokers = format!("127.0.0.1:{port}");
    let topic = format!("user-events-{}", fastrand::u32(..));
    let mut settings = settings_alone("outbox", None);
    settings.kafka_brokers = Some(brokers.clone());
    settings.events_topic = topic.clone();
    let app = start(settings).await;
    let (client, base) = (Client::new(), app.base.as_str());
    let email = email("outbox");
    let user = sign_up(&client, base, &email, PASSWORD).await;

    // Kafka is down: logins work, and their events wait.
    let (status, tokens) = login(&client, base, &email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, claims) = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(
        login(&client, base, &email, "a wrong password").await.0,
        StatusCode::UNAUTHORIZED
    );
    let db = sqlx::PgPool::connect(&database_url_for("outbox"))
        .await
        .unwrap();
    let waiting = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE topic = $1")
            .bind(&topic)
            .fetch_one(&db)
            .await
            .unwrap()
    };

    // A login whose transaction fails (PostgreSQL refuses its event) fails
    // whole: 503, no event, no audit record of a success.
    for statement in [
        "CREATE FUNCTION refuse_marked() RETURNS trigger AS $$ BEGIN \
         IF convert_from(NEW.payload, 'UTF8') LIKE '%refuse-this-login%' THEN \
         RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_marked BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_marked()",
    ] {
        sqlx::query(statement).execute(&db).await.unwrap();
    }
    let refused = client
        .http
        .post(format!("{base}/auth/login"))
        .header("x-forwarded-for", &client.address)
        .header("user-agent", "refuse-this-login")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(audit_count_in("outbox", "login", "ok", &email).await, 1);
    let access = tokens["access_token"].as_str().unwrap();
    let (_, sessions, _) = client
        .get(format!("{base}/auth/sessions"), Some(access))
        .await;
    assert_eq!(
        sessions.as_array().unwrap().len(),
        1,
        "the failed login's session ended: {sessions}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        waiting().await,
        2,
        "both events wait in the outbox while Kafka is down"
    );

    // Kafka comes back (on the address the service was given).
    let broker = servers::kafka(port);
    let (brokers_in, topic_in) = (brokers.clone(), topic.clone());
    let events = tokio::task::spawn_blocking(move || {
        servers::create_topic(&brokers_in, &topic_in, 1);
        servers::consume(&brokers_in, &topic_in, 2)
    })
    .await
    .unwrap();

    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/events/user_logged_in.v1.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let user_number = events[0].1["user_id"].as_str().unwrap().to_string();
    for (key, event) in &events {
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{event}: {errors:?}");
        assert_eq!(key, &user_number, "keyed by the user");
        assert_eq!(event["user_id"], user_number.as_str());
    }
    assert_eq!(events[0].1["success"], true, "in the order of the logins");
    assert_eq!(events[0].1["session_id"], claims["sid"]);
    assert_eq!(events[0].1["method"], "password");
    assert_eq!(events[1].1["success"], false);
    assert!(events[1].1.get("session_id").is_none());
    assert_ne!(events[0].1["event_id"], events[1].1["event_id"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while waiting().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "delivered rows stay in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(user["id"].is_string());
    drop(broker);
    app.server.stop().await.unwrap();
}

/// A browser: keeps cookies, follows nothing by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of `name="…"` attributes' neighbour `value="…"` in a form, and its action.
fn form_of(html: &str) -> (String, Vec<(String, String)>) {
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[at..].split('"').next()?.to_string())
    };
    let form_start = html.find("<form").expect("a form on the provider's page");
    let form_tag = &html[form_start..html[form_start..].find('>').unwrap() + form_start];
    let action = attribute(form_tag, "action").expect("the form's action");
    let mut fields = Vec::new();
    for input in html[form_start..].split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap_or(input.len())];
        if let (Some(name), Some(value)) = (attribute(tag, "name"), attribute(tag, "value")) {
            fields.push((name, value));
        }
    }
    (action, fields)
}

/// Follows `url` through the provider's login and consent pages as `login`,
/// and returns the URL it redirects to on `stop_at` (the callback).
async fn through_the_provider(
    browser: &reqwest::Client,
    mut url: String,
    login: &str,
    stop_at: &str,
) -> String {
    for _ in 0..20 {
        if url.starts_with(stop_at) {
            return url;
        }
        let response = browser.get(&url).send().await.unwrap();
        let mut current = response.url().clone();
        let mut response = response;
        loop {
            if response.status().is_redirection() {
                let location = response.headers()["location"].to_str().unwrap();
                url = current.join(location).unwrap().to_string();
                break;
            }
            let status = response.status();
            let html = response.text().await.unwrap();
            assert_eq!(status, StatusCode::OK, "the provider at {current}: {html}");
            let (action, mut fields) = form_of(&html);
            if fields
                .iter()
                .any(|(name, value)| name == "prompt" && value == "login")
            {
                fields.push(("login".into(), login.into()));
                fields.push(("password".into(), "anything".into()));
            }
            let target = current.join(&action).unwrap();
            response = browser
                .post(target.clone())
                .form(&fields)
                .send()
                .await
                .unwrap();
            current = target;
        }
    }
    panic!("no redirect to {stop_at} after 20 steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openid_provider_login_links_or_creates_the_user_by_verified_email() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{base}/auth/oauth/test/callback");
    let provider = servers::oidc_provider(&callback);
    let mut settings = settings("oidc");
    settings.oidc.insert(
        "test".into(),
        tributary_auth::settings::OidcProviderSettings {
            issuer: format!("http://127.0.0.1:{}", provider.port),
            client_id: "tributary".into(),
            client_secret: Some(Secret::new("tributary-test-secret")),
            redirect_uri: callback.clone(),
            scopes: vec!["openid".into(), "email".into()],
        },
    );
    let app = start_on(settings, Clock::system(), listener).await;
    let client = Client::new();

    // A local account made with a password is linked by its email.
    let email = email("oidc");
    let local = sign_up(&client, &base, &email, PASSWORD).await;
    let log_in_at_provider = |browser: reqwest::Client, login: String| {
        let (base, callback) = (base.clone(), callback.clone());
        async move {
            let start = browser
                .get(format!("{base}/auth/oauth/test/start"))
                .send()
                .await
                .unwrap();
            assert_eq!(start.status(), StatusCode::SEE_OTHER);
            let to_provider = start.headers()["location"].to_str().unwrap().to_string();
            for needed in [
                "code_challenge_method=S256",
                "code_challenge=",
                "nonce=",
                "state=",
            ] {
                assert!(to_provider.contains(needed), "{to_provider} lacks {needed}");
            }
            through_the_provider(&browser, to_provider, &login, &callback).await
        }
    };
    let browser = browser();
    let back = log_in_at_provider(browser.clone(), email.clone()).await;
    let response = browser.get(&back).send().await.unwrap();
    let (status, tokens, _) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, claims) = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(
        claims["user_id"], local["id"],
        "linked to the account with that email"
    );
    assert_eq!(claims["amr"], json!(["fed"]));
    // The callback works once.
    let (status, problem, _) = read(browser.get(&back).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        problem["type"],
        "https://tributary.dev/problems/invalid-oidc-state"
    );

    // A new identity makes a user without a password; the second time, the same one.
    let newcomer = self::email("newcomer");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let browser = self::browser();
        let back = log_in_at_provider(browser.clone(), newcomer.clone()).await;
        let (status, tokens, _) = read(browser.get(&back).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        let (status, me, _) = client
            .get(format!("{base}/auth/me"), tokens["access_token"].as_str())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me["email"], newcomer.as_str());
        ids.push(me["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    // It has no password to log in with.
    assert_eq!(
        login(&client, &base, &newcomer, PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );

    // The callback in another browser (no cookie of the flow) is refused.
    let back = log_in_at_provider(self::browser(), self::email("stolen")).await;
    let (status, problem, _) = read(self::browser().get(&back).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");

    // An email the provider has not verified is not linked to anyone.
    let browser = self::browser();
    let unverified = format!("unverified.{}@example.com", fastrand::u64(..));
    let back = log_in_at_provider(browser.clone(), unverified).await;
    let (status, problem, _) = read(browser.get(&back).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(
        problem["type"],
        "https://tributary.dev/problems/unverified-email"
    );

    // A provider that is not configured.
    let (status, _, _) = client
        .get(format!("{base}/auth/oauth/nobody/start"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(provider);
    app.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_the_document_lacks() {
    let app = start(settings("schemathesis")).await;
    let client = Client::new();
    let email = email("schemathesis");
    sign_up(&client, &app.base, &email, PASSWORD).await;
    let (_, tokens) = login(&client, &app.base, &email, PASSWORD).await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let document = format!("{}/openapi.json", app.base);
    tokio::task::spawn_blocking(move || {
        servers::assert_schemathesis_passes(&document, &access, &["/auth/logout"])
    })
    .await
    .unwrap();
    app.server.stop().await.unwrap();
}
