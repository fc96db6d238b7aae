//! The request path: route, API key, user token, rate limit, circuit
//! breaker, then the upstream, with the request and response bodies
//! streamed both ways. The proxy is strict about HTTP/1.1's framing and
//! hop-by-hop headers: what one connection says about itself never reaches
//! the next.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::app::Gateway;
use crate::cache::{Lookup, ResponseCache};
use crate::cors;
use crate::error::GatewayError;
use crate::idempotency::{self, Claim, IDEMPOTENCY_KEY};
use crate::keys::{ApiKey, KeyError};
use crate::limit::Decision;
use crate::routes::{Access, Cors, Idempotency, Route, Target};
use crate::upstream::Pool;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The API key's id, set for the upstream (a client's own is dropped).
pub const KEY_ID: HeaderName = HeaderName::from_static("x-gateway-key-id");

/// The rate limit window.
const MINUTE: Duration = Duration::from_secs(60);

/// What the access log and the metrics learn about a request.
#[derive(Debug, Default)]
struct Outcome {
    route: Option<Arc<str>>,
    upstream: Option<String>,
    key: Option<uuid::Uuid>,
    cors: Option<Arc<Cors>>,
}

/// Every request that is not the gateway's own.
pub async fn handle(gateway: Arc<Gateway>, peer: SocketAddr, request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = request_id(request.headers());
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut outcome = Outcome::default();
    let mut response = match forward(&gateway, peer, request, &request_id, &mut outcome).await {
        Ok(response) => response,
        Err(error) => {
            if matches!(error, GatewayError::RateLimited(_)) {
                gateway.metrics.rate_limited(outcome.route.as_deref());
            }
            error.into_response()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    // Refusals too: a browser can read a 401 or 429 only with these.
    if let (Some(policy), Some(origin)) = (&outcome.cors, &origin) {
        cors::decorate(policy, origin, response.headers_mut());
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    gateway.metrics.observe(
        outcome.route.as_deref(),
        outcome.upstream.as_deref(),
        status,
        elapsed,
    );
    if gateway.settings.access_log {
        tracing::info!(
            target: "access",
            request_id = %request_id,
            client = %peer.ip(),
            %method,
            path = %path,
            route = outcome.route.as_deref().unwrap_or("-"),
            upstream = outcome.upstream.as_deref().unwrap_or("-"),
            key_id = %outcome.key.map(|k| k.to_string()).unwrap_or_default(),
            status,
            elapsed_us = elapsed.as_micros() as u64,
            "request"
        );
    }
    response
}

async fn forward(
    gateway: &Gateway,
    peer: SocketAddr,
    request: Request,
    request_id: &str,
    outcome: &mut Outcome,
) -> Result<Response, GatewayError> {
    let table = gateway.table.load();
    if cors::is_preflight(request.method(), request.headers()) {
        return preflight(&table, &request, outcome);
    }
    let route = table
        .route(request.method(), request.uri().path(), request.headers())
        .ok_or(GatewayError::NoRoute)?;
    outcome.route = Some(route.name.clone());
    outcome.cors = route.cors.clone();
    let upstream = match &route.target {
        Target::Retired(why) => return Err(GatewayError::Retired(why.clone())),
        Target::Upstream(name) => name,
    };
    outcome.upstream = Some(upstream.clone());
    let max_body = gateway.settings.limits.max_body_bytes;
    if declared_length(request.headers())?.is_some_and(|n| n > max_body) {
        return Err(GatewayError::TooLarge(max_body));
    }

    let key = match route.access {
        Access::Public => None,
        Access::Key | Access::User => Some(api_key(gateway, request.headers()).await?),
    };
    outcome.key = key.as_ref().map(|k| k.id);
    let mut user = None;
    if route.access == Access::User {
        let token = bearer(request.headers()).ok_or(GatewayError::Token(None))?;
        let claims = gateway
            .verifier
            .verify(token)
            .await
            .map_err(|e| GatewayError::Token(Some(e)))?;
        if let Some(permission) = &route.permission
            && !claims.may(permission)
        {
            return Err(GatewayError::Forbidden(permission.clone()));
        }
        user = Some(claims.user_id.clone());
    }
    let client = client_ip(gateway, peer, request.headers());
    let decision = limit(gateway, route, key.as_ref(), client).await;
    if let Some(decision) = &decision
        && !decision.admitted
    {
        return Err(GatewayError::RateLimited(decision.clone()));
    }

    let pool = gateway
        .pools
        .get(upstream)
        .ok_or_else(|| GatewayError::BadGateway {
            upstream: upstream.clone(),
            reason: "no such pool".into(),
        })?;
    let mut request = request;
    let protocol = upgrade_protocol(request.headers());
    let client_upgrade = match &protocol {
        Some(_) if route.upgrade => Some(hyper::upgrade::on(&mut request)),
        _ => None,
    };
    let (parts, body) = request.into_parts();
    // What caching matches `Vary` on: the request as the client sent it.
    let original = route.cache_ttl.is_some().then(|| parts.headers.clone());
    let scheme = forwarded_proto(gateway, peer, &parts.headers);
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let idempotency_key = parts.headers.get(IDEMPOTENCY_KEY).cloned();
    let mut headers = parts.headers;
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || declared_length(&headers)?.is_some_and(|n| n > 0);
    strip_hop_by_hop(&mut headers);
    if key.is_some() && api_key_in_authorization(&headers) {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(gateway.key_header());
    headers.remove(KEY_ID);
    if let Some(key) = &key
        && let Ok(value) = HeaderValue::try_from(key.id.to_string())
    {
        headers.insert(KEY_ID, value);
    }
    forwarded(gateway, peer, &mut headers);
    if let Ok(value) = HeaderValue::try_from(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    headers.insert(TRACEPARENT, traceparent(headers.get(TRACEPARENT)));
    route.request_headers.apply(&mut headers);
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{}?{query}", route.rewrite(parts.uri.path())),
        None => route.rewrite(parts.uri.path()),
    };
    if let (Some(protocol), Some(_)) = (&protocol, &client_upgrade) {
        // Only these two of the hop-by-hop headers go on, for this hop.
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    let outgoing = Outgoing {
        method: parts.method.clone(),
        path_and_query,
        headers,
        retryable: !has_body && client_upgrade.is_none(),
        upgrade: client_upgrade.is_some(),
    };
    let body = Body::new(Limited::new(body, max_body as usize));
    if let Some(client_upgrade) = client_upgrade {
        return tunnel(gateway, &pool, outgoing, body, client_upgrade).await;
    }

    let mut response = if matches!(parts.method, Method::POST | Method::PATCH)
        && route.idempotency != Idempotency::Off
    {
        let owner = match (&key, &user) {
            (Some(key), Some(user)) => format!("{}:{user}", key.id),
            (Some(key), None) => key.id.to_string(),
            (None, _) => format!("ip:{client}"),
        };
        deduplicated(
            gateway,
            route,
            &pool,
            idempotency_key,
            &owner,
            outgoing,
            body,
        )
        .await?
    } else if let (Some(ttl), Some(original)) = (route.cache_ttl, original.as_ref())
        && matches!(parts.method, Method::GET | Method::HEAD)
        && !asks_no_store(original)
    {
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
        let key = ResponseCache::key(&parts.method, &scheme, &host, &target);
        cached(
            gateway,
            &pool,
            &key,
            parts.uri.path(),
            ttl,
            original,
            outgoing,
            body,
        )
        .await?
    } else {
        send(gateway, &pool, outgoing, body).await?
    };
    strip_hop_by_hop(response.headers_mut());
    route.response_headers.apply(response.headers_mut());
    if let Some(decision) = &decision {
        decision.write_headers(response.headers_mut());
    }
    Ok(response)
}

/// Answers a CORS preflight for the route the requested method would take.
fn preflight(
    table: &crate::routes::Table,
    request: &Request,
    outcome: &mut Outcome,
) -> Result<Response, GatewayError> {
    let requested = cors::requested_method(request.headers()).ok_or_else(|| {
        GatewayError::BadRequest("Access-Control-Request-Method is not a method".into())
    })?;
    let route = table
        .route(&requested, request.uri().path(), request.headers())
        .ok_or(GatewayError::NoRoute)?;
    outcome.route = Some(route.name.clone());
    let policy = route.cors.as_ref().ok_or_else(|| {
        GatewayError::CorsRefused("this route takes no cross-origin requests".into())
    })?;
    let headers = cors::preflight(policy, request.headers()).map_err(|refusal| {
        GatewayError::CorsRefused(match refusal {
            cors::Refusal::Origin => "the origin is not allowed".into(),
            cors::Refusal::Method => format!("the method {requested} is not allowed"),
            cors::Refusal::Header(name) => format!("the header {name} is not allowed"),
        })
    })?;
    let mut response = cors::PREFLIGHT_STATUS.into_response();
    response.headers_mut().extend(headers);
    Ok(response)
}

fn asks_no_store(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-store"))
}

/// A cacheable request: a kept answer, another request's answer, or the
/// upstream's (kept for the next).
#[allow(clippy::too_many_arguments)]
async fn cached(
    gateway: &Gateway,
    pool: &Pool,
    key: &str,
    path: &str,
    ttl: Duration,
    original: &HeaderMap,
    outgoing: Outgoing,
    body: Body,
) -> Result<Response, GatewayError> {
    match gateway.cache.lookup(key, path, original) {
        Lookup::Hit(entry) => {
            gateway.metrics.cache("hit");
            Ok(entry.response())
        }
        Lookup::Lead(leader) => {
            gateway.metrics.cache("miss");
            let response = send(gateway, pool, outgoing, body).await?;
            Ok(leader.finish(ttl, original, response).await)
        }
        Lookup::Follow(flight) => {
            match crate::cache::follow(flight, original, pool.spec.timeout).await {
                Some(entry) => {
                    gateway.metrics.cache("coalesced");
                    Ok(entry.response())
                }
                None => {
                    gateway.metrics.cache("bypass");
                    send(gateway, pool, outgoing, body).await
                }
            }
        }
    }
}

/// A POST or PATCH under `Idempotency-Key`: claimed across instances,
/// replayed, or refused as a duplicate.
async fn deduplicated(
    gateway: &Gateway,
    route: &Route,
    pool: &Pool,
    key: Option<HeaderValue>,
    owner: &str,
    outgoing: Outgoing,
    body: Body,
) -> Result<Response, GatewayError> {
    let Some(key) = key else {
        if route.idempotency == Idempotency::Required {
            return Err(GatewayError::Idempotency(
                StatusCode::BAD_REQUEST,
                "this route needs an Idempotency-Key header on POST".into(),
            ));
        }
        return send(gateway, pool, outgoing, body).await;
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            GatewayError::Idempotency(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 255 visible characters".into(),
            )
        })?
        .to_string();
    // The body is read to compare it with the first request's.
    let bytes = body
        .collect()
        .await
        .map_err(|_| GatewayError::TooLarge(gateway.settings.limits.max_body_bytes))?
        .to_bytes();
    let fingerprint = idempotency::fingerprint(&outgoing.method, &outgoing.path_and_query, &bytes);
    let scoped = format!(
        "{}idem:{}:{owner}:{key}",
        gateway.settings.redis_prefix, route.name
    );
    let hold = pool.spec.timeout + Duration::from_secs(10);
    match idempotency::claim(
        &crate::workers::redis(&gateway.redis),
        scoped,
        fingerprint,
        hold,
    )
    .await
    {
        Claim::Held(held) => match send(gateway, pool, outgoing, Body::from(bytes)).await {
            Ok(response) => Ok(held.finish(response).await),
            Err(error) => {
                held.release().await;
                Err(error)
            }
        },
        Claim::InFlight => Err(GatewayError::Idempotency(
            StatusCode::CONFLICT,
            "a request with this Idempotency-Key is still being processed; retry later".into(),
        )),
        Claim::Mismatch => Err(GatewayError::Idempotency(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for another request".into(),
        )),
        Claim::Replay(response) => Ok(response),
        Claim::Unchecked => send(gateway, pool, outgoing, Body::from(bytes)).await,
    }
}

struct Outgoing {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    /// Idempotent and without a body: may be sent again.
    retryable: bool,
    /// Asks the upstream to switch protocols (a route that allows it).
    upgrade: bool,
}

/// Sends to the pool: breaker, member, timeout, and retries inside the
/// budget for idempotent requests without a body.
async fn send(
    gateway: &Gateway,
    pool: &Pool,
    mut outgoing: Outgoing,
    body: Body,
) -> Result<Response, GatewayError> {
    let name = &pool.spec.name;
    let retryable = outgoing.retryable && idempotent(&outgoing.method);
    pool.budget.deposit();
    let mut body = Some(body);
    let mut previous = None;
    let mut attempt = 0;
    loop {
        let permit = pool
            .breaker
            .acquire()
            .map_err(|open| GatewayError::BreakerOpen {
                upstream: name.clone(),
                retry_in: open.retry_in,
            })?;
        let member = pool.pick(previous.as_ref());
        let in_flight = member.start();
        let uri: Uri = format!("http://{}{}", member.authority, outgoing.path_and_query)
            .parse()
            .map_err(|_| {
                GatewayError::BadRequest("the request target cannot be forwarded".into())
            })?;
        let mut request = http::Request::new(body.take().unwrap_or_default());
        *request.method_mut() = outgoing.method.clone();
        *request.uri_mut() = uri;
        let may_retry = retryable && attempt < pool.spec.retries;
        // Kept for another attempt only when there may be one.
        *request.headers_mut() = if may_retry {
            outgoing.headers.clone()
        } else {
            std::mem::take(&mut outgoing.headers)
        };
        match tokio::time::timeout(
            pool.spec.timeout,
            crate::upstream::local_client().request(request),
        )
        .await
        {
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_server_error() {
                    permit.failed();
                    if may_retry && matches!(status.as_u16(), 502..=504) && pool.budget.withdraw() {
                        attempt += 1;
                        previous = Some(member);
                        continue;
                    }
                } else {
                    permit.succeeded();
                }
                if status == StatusCode::SWITCHING_PROTOCOLS && !outgoing.upgrade {
                    // Upgrade was stripped; a 101 anyway is not passed on.
                    return Err(GatewayError::BadGateway {
                        upstream: name.clone(),
                        reason: "switched protocols unasked".into(),
                    });
                }
                let (parts, incoming) = response.into_parts();
                // The in-flight count lasts until the body is read.
                let body = Body::new(Guarded {
                    inner: incoming,
                    _in_flight: in_flight,
                });
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(error)) => {
                if caused_by::<LengthLimitError>(&error) {
                    // The client's body, not the upstream, was the problem.
                    permit.succeeded();
                    return Err(GatewayError::TooLarge(
                        gateway.settings.limits.max_body_bytes,
                    ));
                }
                if error.is_connect() {
                    member.connection_failed();
                }
                permit.failed();
                tracing::warn!(upstream = %name, address = %member.authority, error = %chain(&error), "an upstream request failed");
                if may_retry && pool.budget.withdraw() {
                    attempt += 1;
                    previous = Some(member);
                    continue;
                }
                return Err(GatewayError::BadGateway {
                    upstream: name.clone(),
                    reason: chain(&error),
                });
            }
            Err(_) => {
                permit.failed();
                return Err(GatewayError::Timeout {
                    upstream: name.clone(),
                    timeout: pool.spec.timeout,
                });
            }
        }
    }
}

/// The protocol a request asks to switch to (`Connection: upgrade` with
/// `Upgrade`), if any.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// An upgrade on a route that allows it: the request goes upstream with
/// its `Upgrade`; only once the upstream answers 101 are the two
/// connections joined, so no byte is tunnelled before the switch. Any other
/// answer is passed on as an answer, and the client's connection stays
/// HTTP.
async fn tunnel(
    gateway: &Gateway,
    pool: &Pool,
    outgoing: Outgoing,
    body: Body,
    client: hyper::upgrade::OnUpgrade,
) -> Result<Response, GatewayError> {
    let upstream = pool.spec.name.clone();
    let mut response = send(gateway, pool, outgoing, body).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response);
    }
    let server = hyper::upgrade::on(&mut response);
    let protocol = response.headers().get(header::UPGRADE).cloned();
    let mut answer = Response::new(Body::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = response.headers().clone();
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        answer.headers_mut().insert(header::UPGRADE, protocol);
    }
    tokio::spawn(async move {
        match tokio::try_join!(client, server) {
            Ok((client, server)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut server = hyper_util::rt::TokioIo::new(server);
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                    tracing::debug!(%error, %upstream, "an upgraded connection ended");
                }
            }
            Err(error) => tracing::warn!(%error, %upstream, "an upgrade did not complete"),
        }
    });
    Ok(answer)
}

pin_project_lite::pin_project! {
    /// A response body that keeps its member's in-flight count until read.
    struct Guarded<B> {
        #[pin]
        inner: B,
        _in_flight: crate::upstream::InFlight,
    }
}

impl<B: http_body::Body> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        text.push_str(": ");
        text.push_str(&e.to_string());
        current = e.source();
    }
    text
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The declared body length; several different ones are refused (hyper
/// already refuses most, this keeps the rule here too).
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, GatewayError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| GatewayError::BadRequest("Content-Length is not a number".into()))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(GatewayError::BadRequest(
                "conflicting Content-Length headers".into(),
            ));
        }
        length = Some(parsed);
    }
    if length.is_some() && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    Ok(length)
}

/// Removes the hop-by-hop headers and every header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// A sane incoming `X-Request-Id`, or a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            // Unique, not secret: no system call for randomness per request.
            || {
                uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
                    .into_uuid()
                    .to_string()
            },
            str::to_string,
        )
}

/// The caller's trace continued with a new span id, or a new trace.
fn traceparent(incoming: Option<&HeaderValue>) -> HeaderValue {
    let span = format!("{:016x}", fastrand::u64(1..));
    let parsed = incoming.and_then(|v| v.to_str().ok()).and_then(|v| {
        let parts: Vec<&str> = v.split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && hex(parts[3], 2))
        .then(|| (parts[1].to_ascii_lowercase(), parts[3].to_string()))
    });
    let (trace, flags) = parsed.unwrap_or_else(|| {
        (
            format!("{:016x}{:016x}", fastrand::u64(1..), fastrand::u64(..)),
            "01".to_string(),
        )
    });
    HeaderValue::try_from(format!("00-{trace}-{span}-{flags}")).unwrap_or(HeaderValue::from_static(
        "00-00000000000000000000000000000001-0000000000000001-01",
    ))
}

/// The client's address: the peer's, or the last one a trusted proxy in
/// front of the gateway put in `X-Forwarded-For`.
fn client_ip(gateway: &Gateway, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if gateway.settings.trusted_proxies.contains(&peer.ip())
        && let Some(ip) = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
            .next_back()
    {
        return ip;
    }
    peer.ip()
}

/// The scheme the client used: `http`, or what a trusted proxy says.
fn forwarded_proto(gateway: &Gateway, peer: SocketAddr, headers: &HeaderMap) -> String {
    if gateway.settings.trusted_proxies.contains(&peer.ip()) {
        headers
            .get(X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .filter(|p| *p == "http" || *p == "https")
            .unwrap_or("http")
            .to_string()
    } else {
        "http".to_string()
    }
}

/// `X-Forwarded-For/Proto/Host` and `Forwarded`: a trusted peer's are
/// extended, anyone else's replaced.
fn forwarded(gateway: &Gateway, peer: SocketAddr, headers: &mut HeaderMap) {
    let trusted = gateway.settings.trusted_proxies.contains(&peer.ip());
    let ip = peer.ip();
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
        .map(str::to_string);
    let proto = forwarded_proto(gateway, peer, headers);
    let previous_for = trusted
        .then(|| {
            headers
                .get(X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .flatten();
    let previous_forwarded = trusted
        .then(|| {
            headers
                .get(FORWARDED)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .flatten();
    let x_for = match previous_for {
        Some(list) => format!("{list}, {ip}"),
        None => ip.to_string(),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = &host {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let forwarded = match previous_forwarded {
        Some(list) => format!("{list}, {element}"),
        None => element,
    };
    let mut put = |name: HeaderName, value: String| match HeaderValue::try_from(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    };
    put(X_FORWARDED_FOR, x_for);
    put(X_FORWARDED_PROTO, proto);
    put(FORWARDED, forwarded);
    match host {
        Some(host) => put(X_FORWARDED_HOST, host),
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn api_key_in_authorization(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
}

async fn api_key(gateway: &Gateway, headers: &HeaderMap) -> Result<ApiKey, GatewayError> {
    let text = headers
        .get(gateway.key_header())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| {
            let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, key) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("apikey").then(|| key.trim())
        })
        .ok_or(GatewayError::Key(KeyError::Missing))?;
    gateway.keys.check(text).await.map_err(GatewayError::Key)
}

/// The route's limit for this key (or, on a public route with a limit,
/// this client address).
async fn limit(
    gateway: &Gateway,
    route: &Route,
    key: Option<&ApiKey>,
    client: IpAddr,
) -> Option<Decision> {
    let (subject, limit, policy) = match (key, route.per_minute) {
        (Some(key), None) => (
            key.id.to_string(),
            key.limit_per_minute,
            gateway.default_policy.clone(),
        ),
        (Some(key), Some(limit)) => (key.id.to_string(), limit, route.name.clone()),
        (None, Some(limit)) => (format!("ip:{client}"), limit, route.name.clone()),
        (None, None) => return None,
    };
    Some(
        gateway
            .limiter
            .check(&subject, &policy, limit, MINUTE)
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, close"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn traceparent_continues_a_valid_trace_and_starts_one_otherwise() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let out = traceparent(Some(&incoming));
        let out = out.to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(!out.contains("00f067aa0ba902b7"), "a new span id: {out}");
        let fresh = traceparent(Some(&HeaderValue::from_static("garbage")));
        assert_eq!(fresh.to_str().unwrap().len(), 55);
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert!(declared_length(&headers).is_err());
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(declared_length(&headers).is_err());
    }
}
