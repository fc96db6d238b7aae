//! A stand-in for an external payment provider, shaped like Stripe's
//! payment intents: create an intent, confirm it (the charge), cancel it,
//! refund it. Every POST needs an `Idempotency-Key`: the same key with the
//! same request replays the first answer (errors included), with another
//! request it is a 400, and while the first is in flight a 409.
//!
//! It counts what it did (`GET /_stats`) so that tests can prove that no
//! order was charged twice, and it can be told to misbehave per operation
//! (`PUT /_control/faults`): fail with a 500 before doing anything, hang,
//! answer slowly, decline the card, or do the work and then never answer
//! (a reply lost after the request succeeded).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An operation of the provider's API, as faults name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `POST /v1/payment_intents`.
    Create,
    /// `POST /v1/payment_intents/{id}/confirm`.
    Confirm,
    /// `POST /v1/payment_intents/{id}/cancel`.
    Cancel,
    /// `POST /v1/refunds`.
    Refund,
    /// `GET /v1/payment_intents/{id}`.
    Retrieve,
    /// Every operation.
    Any,
}

/// How an operation misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// 500 before anything is done.
    Fail,
    /// Never answers, and does nothing.
    Hang,
    /// Waits `delay_ms`, then works normally.
    Slow,
    /// Confirmation only: the card is declined (402, recorded and replayed).
    Decline,
    /// Does the work, then never answers.
    LoseReply,
}

/// One configured misbehaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// The operation it applies to.
    pub op: Operation,
    /// What happens.
    pub kind: FaultKind,
    /// For how many calls (all of them when absent).
    #[serde(default)]
    pub times: Option<u32>,
    /// The delay of `slow`.
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// A payment intent.
#[derive(Debug, Clone, Serialize)]
struct Intent {
    id: String,
    object: &'static str,
    amount: i64,
    currency: String,
    status: &'static str,
    metadata: HashMap<String, String>,
    amount_refunded: i64,
}

/// A remembered answer for an idempotency key.
#[derive(Debug, Clone)]
enum Remembered {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: Value,
    },
}

#[derive(Debug, Default)]
struct Ledger {
    intents: HashMap<String, Intent>,
    keys: HashMap<String, Remembered>,
    faults: Vec<Fault>,
    calls: HashMap<Operation, u64>,
    charges: u64,
    refunds: u64,
    declines: u64,
    by_order: HashMap<String, OrderTally>,
}

/// What one order was charged and refunded.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OrderTally {
    /// Successful confirmations (charges) for intents of this order.
    pub charges: u64,
    /// Refunds of this order's intents.
    pub refunds: u64,
    /// Amount charged, in minor units.
    pub charged: i64,
    /// Amount refunded, in minor units.
    pub refunded: i64,
}

/// What the provider did so far (`GET /_stats`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Calls by operation, faults included.
    pub calls: HashMap<Operation, u64>,
    /// Intents created.
    pub intents: u64,
    /// Successful confirmations.
    pub charges: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Declined confirmations.
    pub declines: u64,
    /// Per order (the intent's `order_id` metadata).
    pub by_order: HashMap<String, OrderTally>,
}

type Shared = Arc<Mutex<Ledger>>;

fn ledger(shared: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The provider's routes.
pub fn router() -> Router {
    let shared: Shared = Arc::default();
    Router::new()
        .route("/v1/payment_intents", post(create))
        .route("/v1/payment_intents/{id}", get(retrieve))
        .route("/v1/payment_intents/{id}/confirm", post(confirm))
        .route("/v1/payment_intents/{id}/cancel", post(cancel))
        .route("/v1/refunds", post(refund))
        .route("/_control/faults", put(set_faults).delete(clear_faults))
        .route("/_stats", get(stats))
        .with_state(shared)
}

/// Serves the provider on `listener` in a task; returns its address.
pub fn spawn(listener: tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router()).await;
    });
    Ok(addr)
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

/// What a call does before its work: nothing, wait, or answer now.
enum Before {
    Proceed { decline: bool, lose_reply: bool },
    Answer(Response),
}

async fn before(shared: &Shared, op: Operation, headers: &HeaderMap) -> Before {
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer sk_"));
    let fault = {
        let mut ledger = ledger(shared);
        *ledger.calls.entry(op).or_default() += 1;
        let found = ledger
            .faults
            .iter_mut()
            .find(|f| (f.op == op || f.op == Operation::Any) && f.times != Some(0));
        found.map(|f| {
            if let Some(times) = f.times.as_mut() {
                *times -= 1;
            }
            f.clone()
        })
    };
    if !authorised {
        let (status, body) = error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "no_api_key",
            "send Authorization: Bearer sk_…",
        );
        return Before::Answer((status, Json(body)).into_response());
    }
    match fault.map(|f| (f.kind, f.delay_ms)) {
        Some((FaultKind::Fail, _)) => {
            let (status, body) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "injected_failure",
                "the provider failed (injected)",
            );
            Before::Answer((status, Json(body)).into_response())
        }
        Some((FaultKind::Hang, _)) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Before::Answer(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Some((FaultKind::Slow, delay)) => {
            tokio::time::sleep(Duration::from_millis(delay.unwrap_or(1000))).await;
            Before::Proceed {
                decline: false,
                lose_reply: false,
            }
        }
        Some((FaultKind::Decline, _)) => Before::Proceed {
            decline: true,
            lose_reply: false,
        },
        Some((FaultKind::LoseReply, _)) => Before::Proceed {
            decline: false,
            lose_reply: true,
        },
        None => Before::Proceed {
            decline: false,
            lose_reply: false,
        },
    }
}

/// Runs `work` once per idempotency key: replays a finished answer, refuses
/// a key in flight or reused for another request.
async fn idempotent(
    shared: &Shared,
    op: Operation,
    headers: &HeaderMap,
    fingerprint: String,
    work: impl FnOnce(&mut Ledger, bool) -> (StatusCode, Value),
) -> Response {
    let (decline, lose_reply) = match before(shared, op, headers).await {
        Before::Answer(response) => return response,
        Before::Proceed {
            decline,
            lose_reply,
        } => (decline, lose_reply),
    };
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        let (status, body) = error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "idempotency_key_missing",
            "every POST needs an Idempotency-Key",
        );
        return (status, Json(body)).into_response();
    };
    let (status, body, replayed) = {
        let mut ledger = ledger(shared);
        let found = match ledger.keys.get(&key) {
            Some(Remembered::Done {
                fingerprint: first,
                status,
                body,
            }) if *first == fingerprint => Some((*status, body.clone(), true)),
            Some(Remembered::InFlight { fingerprint: first }) if *first == fingerprint => {
                Some(error(
                    StatusCode::CONFLICT,
                    "idempotency_error",
                    "request_in_flight",
                    "a request with this key is in flight",
                ))
                .map(|(s, b)| (s, b, false))
            }
            Some(_) => Some(error(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                "idempotency_key_reused",
                "this key was used for another request",
            ))
            .map(|(s, b)| (s, b, false)),
            None => None,
        };
        match found {
            Some(answer) => answer,
            None => {
                ledger.keys.insert(
                    key.clone(),
                    Remembered::InFlight {
                        fingerprint: fingerprint.clone(),
                    },
                );
                let (status, body) = work(&mut ledger, decline);
                ledger.keys.insert(
                    key,
                    Remembered::Done {
                        fingerprint,
                        status,
                        body: body.clone(),
                    },
                );
                (status, body, false)
            }
        }
    };
    if lose_reply && (status.is_success() || replayed) {
        // The work is done (or was), and the reply never arrives.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut response = (status, Json(body)).into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

#[derive(Debug, Deserialize)]
struct CreateIntent {
    amount: i64,
    currency: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

async fn create(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let fingerprint = format!("create:{}", String::from_utf8_lossy(&body));
    let request: Result<CreateIntent, _> = serde_json::from_slice(&body);
    idempotent(
        &shared,
        Operation::Create,
        &headers,
        fingerprint,
        |ledger, _| {
            let request = match request {
                Ok(r) if r.amount > 0 => r,
                Ok(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "amount_too_small",
                        "amount must be positive",
                    );
                }
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "parameter_invalid",
                        &e.to_string(),
                    );
                }
            };
            let intent = Intent {
                id: format!("pi_{}", uuid::Uuid::new_v4().simple()),
                object: "payment_intent",
                amount: request.amount,
                currency: request.currency.to_ascii_lowercase(),
                status: "requires_confirmation",
                metadata: request.metadata,
                amount_refunded: 0,
            };
            ledger.intents.insert(intent.id.clone(), intent.clone());
            (StatusCode::OK, json!(intent))
        },
    )
    .await
}

async fn retrieve(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Before::Answer(response) = before(&shared, Operation::Retrieve, &headers).await {
        return response;
    }
    match ledger(&shared).intents.get(&id) {
        Some(intent) => Json(json!(intent)).into_response(),
        None => {
            let (status, body) = error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "no such payment intent",
            );
            (status, Json(body)).into_response()
        }
    }
}

fn missing() -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
        "no such payment intent",
    )
}

fn unexpected_state(status: &str) -> (StatusCode, Value) {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "payment_intent_unexpected_state",
        &format!("the payment intent is {status}"),
    )
}

async fn confirm(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let fingerprint = format!("confirm:{id}");
    idempotent(
        &shared,
        Operation::Confirm,
        &headers,
        fingerprint,
        |ledger, decline| {
            let Some(intent) = ledger.intents.get_mut(&id) else {
                return missing();
            };
            match intent.status {
                "succeeded" => return (StatusCode::OK, json!(intent)),
                "requires_confirmation" | "requires_payment_method" => {}
                other => return unexpected_state(other),
            }
            if decline {
                intent.status = "requires_payment_method";
                ledger.declines += 1;
                return (
                    StatusCode::PAYMENT_REQUIRED,
                    json!({"error": {"type": "card_error", "code": "card_declined",
                        "decline_code": "insufficient_funds", "message": "Your card was declined.",
                        "payment_intent": {"id": id, "status": "requires_payment_method"}}}),
                );
            }
            intent.status = "succeeded";
            let amount = intent.amount;
            let order = intent.metadata.get("order_id").cloned().unwrap_or_default();
            let answer = json!(intent);
            ledger.charges += 1;
            let tally = ledger.by_order.entry(order).or_default();
            tally.charges += 1;
            tally.charged += amount;
            (StatusCode::OK, answer)
        },
    )
    .await
}

async fn cancel(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let fingerprint = format!("cancel:{id}");
    idempotent(
        &shared,
        Operation::Cancel,
        &headers,
        fingerprint,
        |ledger, _| {
            let Some(intent) = ledger.intents.get_mut(&id) else {
                return missing();
            };
            match intent.status {
                "requires_confirmation" | "requires_payment_method" | "canceled" => {
                    intent.status = "canceled";
                    (StatusCode::OK, json!(intent))
                }
                other => unexpected_state(other),
            }
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct CreateRefund {
    payment_intent: String,
}

async fn refund(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let fingerprint = format!("refund:{}", String::from_utf8_lossy(&body));
    let request: Result<CreateRefund, _> = serde_json::from_slice(&body);
    idempotent(
        &shared,
        Operation::Refund,
        &headers,
        fingerprint,
        |ledger, _| {
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "parameter_invalid",
                        &e.to_string(),
                    );
                }
            };
            let Some(intent) = ledger.intents.get_mut(&request.payment_intent) else {
                return missing();
            };
            if intent.status != "succeeded" {
                return unexpected_state(intent.status);
            }
            if intent.amount_refunded >= intent.amount {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "charge_already_refunded",
                    "the charge was already refunded",
                );
            }
            let amount = intent.amount - intent.amount_refunded;
            intent.amount_refunded = intent.amount;
            let order = intent.metadata.get("order_id").cloned().unwrap_or_default();
            ledger.refunds += 1;
            let tally = ledger.by_order.entry(order).or_default();
            tally.refunds += 1;
            tally.refunded += amount;
            (
                StatusCode::OK,
                json!({"id": format!("re_{}", uuid::Uuid::new_v4().simple()), "object": "refund",
                "payment_intent": request.payment_intent, "amount": amount, "status": "succeeded"}),
            )
        },
    )
    .await
}

async fn set_faults(State(shared): State<Shared>, Json(faults): Json<Vec<Fault>>) -> StatusCode {
    ledger(&shared).faults = faults;
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(shared): State<Shared>) -> StatusCode {
    ledger(&shared).faults.clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(shared): State<Shared>) -> Json<Stats> {
    let ledger = ledger(&shared);
    Json(Stats {
        calls: ledger.calls.clone(),
        intents: ledger.intents.len() as u64,
        charges: ledger.charges,
        refunds: ledger.refunds,
        declines: ledger.declines,
        by_order: ledger.by_order.clone(),
    })
}
