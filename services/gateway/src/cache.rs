//! The response cache of routes that ask for one: GET and HEAD answers
//! kept in memory per instance, keyed by method, scheme, host, path and
//! query, and matched on the request headers the answer's `Vary` names.
//! What the upstream's `Cache-Control` forbids is not kept (`no-store`,
//! `private`, `no-cache`, `Vary: *`, `Set-Cookie`, or a request with
//! `Authorization` unless the answer is `public` or has `s-maxage`), and
//! its `s-maxage`/`max-age` shortens the route's TTL.
//!
//! Identical misses are coalesced: the first one goes upstream, the others
//! wait for its answer (1,000 concurrent misses, one upstream request). If
//! that answer cannot be kept, each waiting request goes upstream itself.
//! The cache is bounded in bytes and evicts the least recently used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use lru::LruCache;
use tokio::sync::watch;

/// A kept answer.
#[derive(Debug)]
pub struct Entry {
    path: String,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    ttl: Duration,
}

impl Entry {
    fn fresh(&self) -> bool {
        self.stored.elapsed() < self.ttl
    }

    fn fits(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }

    fn size(&self) -> usize {
        self.body.len()
            + self.path.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum::<usize>()
            + 256
    }

    /// The answer, with its `Age`.
    pub fn response(&self) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        let age = self.stored.elapsed().as_secs();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        response
            .headers_mut()
            .insert("x-cache", HeaderValue::from_static("HIT"));
        response
    }
}

type Flight = watch::Receiver<Option<Option<Arc<Entry>>>>;

struct Store {
    entries: LruCache<String, Arc<Entry>>,
    bytes: usize,
}

/// The cache.
#[derive(Clone)]
pub struct ResponseCache {
    store: Arc<Mutex<Store>>,
    flights: Arc<Mutex<HashMap<String, Flight>>>,
    max_bytes: usize,
    max_entry_bytes: usize,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh answer that fits the request.
    Hit(Arc<Entry>),
    /// Nothing: this request fetches, and must [`Leader::finish`].
    Lead(Leader),
    /// Another request is fetching: wait for it.
    Follow(Flight),
}

/// The request that fetches for everyone waiting on its key.
pub struct Leader {
    cache: ResponseCache,
    key: String,
    path: String,
    sender: watch::Sender<Option<Option<Arc<Entry>>>>,
    done: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.sender.send(Some(None));
        }
        let mut flights = self.cache.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.remove(&self.key);
    }
}

impl ResponseCache {
    /// A cache of at most `max_bytes`, keeping answers up to `max_entry_bytes`.
    pub fn new(max_bytes: usize, max_entry_bytes: usize) -> Self {
        Self {
            store: Arc::new(Mutex::new(Store {
                entries: LruCache::unbounded(),
                bytes: 0,
            })),
            flights: Arc::default(),
            max_bytes,
            max_entry_bytes,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of a request.
    pub fn key(method: &Method, scheme: &str, host: &str, path_and_query: &str) -> String {
        format!("{method} {scheme}://{host}{path_and_query}")
    }

    /// Looks `key` up for a request with `headers`.
    pub fn lookup(&self, key: &str, path: &str, headers: &HeaderMap) -> Lookup {
        {
            let mut store = self.store();
            if let Some(entry) = store.entries.get(key) {
                if entry.fresh() && entry.fits(headers) {
                    return Lookup::Hit(entry.clone());
                }
                if !entry.fresh()
                    && let Some(stale) = store.entries.pop(key)
                {
                    store.bytes = store.bytes.saturating_sub(stale.size());
                }
            }
        }
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(key) {
            return Lookup::Follow(flight.clone());
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key.to_string(), receiver);
        Lookup::Lead(Leader {
            cache: self.clone(),
            key: key.to_string(),
            path: path.to_string(),
            sender,
            done: false,
        })
    }

    /// Drops every entry whose path starts with `prefix` (all without one);
    /// returns how many.
    pub fn purge(&self, prefix: Option<&str>) -> usize {
        let mut store = self.store();
        let doomed: Vec<String> = store
            .entries
            .iter()
            .filter(|(_, e)| prefix.is_none_or(|p| e.path.starts_with(p)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &doomed {
            if let Some(entry) = store.entries.pop(key) {
                store.bytes = store.bytes.saturating_sub(entry.size());
            }
        }
        doomed.len()
    }

    fn insert(&self, key: String, entry: Arc<Entry>) {
        let mut store = self.store();
        store.bytes += entry.size();
        if let Some(old) = store.entries.put(key, entry) {
            store.bytes = store.bytes.saturating_sub(old.size());
        }
        while store.bytes > self.max_bytes {
            match store.entries.pop_lru() {
                Some((_, evicted)) => store.bytes = store.bytes.saturating_sub(evicted.size()),
                None => break,
            }
        }
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        let store = self.store();
        (store.entries.len(), store.bytes)
    }
}

/// How long an answer may be kept, if at all.
fn keep_for(
    route_ttl: Duration,
    status: StatusCode,
    request: &HeaderMap,
    response: &HeaderMap,
) -> Option<Duration> {
    if !matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 404 | 405 | 410 | 414 | 501
    ) {
        return None;
    }
    if response.contains_key(header::SET_COOKIE)
        || response
            .get_all(header::VARY)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains('*')))
    {
        return None;
    }
    let directives: Vec<String> = response
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let has = |name: &str| {
        directives
            .iter()
            .any(|d| d == name || d.starts_with(&format!("{name}=")))
    };
    if has("no-store") || has("private") || has("no-cache") {
        return None;
    }
    let seconds = |name: &str| {
        directives
            .iter()
            .find_map(|d| d.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
    };
    let shared_max = seconds("s-maxage");
    if request.contains_key(header::AUTHORIZATION) && !has("public") && shared_max.is_none() {
        return None;
    }
    let ttl = match shared_max.or_else(|| seconds("max-age")) {
        Some(secs) => route_ttl.min(Duration::from_secs(secs)),
        None => route_ttl,
    };
    (!ttl.is_zero()).then_some(ttl)
}

impl Leader {
    /// Takes the upstream's answer: keeps it if it may be kept, hands it to
    /// the waiting requests, and returns it for this one.
    pub async fn finish(
        mut self,
        route_ttl: Duration,
        request: &HeaderMap,
        response: Response,
    ) -> Response {
        let (mut parts, body) = response.into_parts();
        let Some(ttl) = keep_for(route_ttl, parts.status, request, &parts.headers) else {
            return Response::from_parts(parts, body);
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.cache.max_entry_bytes) {
            return Response::from_parts(parts, body);
        }
        // Read up to the entry limit; past it, the answer streams on with
        // what was read put back in front.
        let mut read = Vec::new();
        let mut size = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    size += chunk.len();
                    read.push(chunk);
                    if size > self.cache.max_entry_bytes {
                        let front = futures::stream::iter(read.into_iter().map(Ok));
                        return Response::from_parts(parts, Body::from_stream(front.chain(stream)));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the upstream's answer broke off while it was being cached");
                    let front = futures::stream::iter(read.into_iter().map(Ok));
                    let failed = futures::stream::once(async move { Err(error) });
                    return Response::from_parts(parts, Body::from_stream(front.chain(failed)));
                }
            }
        }
        let body: Bytes = read.concat().into();
        let vary: Vec<(HeaderName, Option<HeaderValue>)> = parts
            .headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::try_from(name.trim()).ok())
            .map(|name| {
                let value = request.get(&name).cloned();
                (name, value)
            })
            .collect();
        parts.headers.remove(header::CONTENT_LENGTH);
        let entry = Arc::new(Entry {
            path: self.path.clone(),
            vary,
            status: parts.status,
            headers: parts.headers.clone(),
            body: body.clone(),
            stored: Instant::now(),
            ttl,
        });
        self.cache.insert(self.key.clone(), entry.clone());
        self.done = true;
        let _ = self.sender.send(Some(Some(entry)));
        parts
            .headers
            .insert("x-cache", HeaderValue::from_static("MISS"));
        Response::from_parts(parts, Body::from(body))
    }
}

/// Waits for a leader's answer: the entry if it fits this request.
pub async fn follow(
    mut flight: Flight,
    headers: &HeaderMap,
    limit: Duration,
) -> Option<Arc<Entry>> {
    let outcome = tokio::time::timeout(limit, flight.wait_for(Option::is_some)).await;
    match outcome {
        Ok(Ok(answer)) => answer.clone().flatten().filter(|e| e.fits(headers)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::try_from(*k).unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn cache_control_decides_what_is_kept_and_for_how_long() {
        let route = Duration::from_secs(300);
        let none = HeaderMap::new();
        assert_eq!(keep_for(route, StatusCode::OK, &none, &none), Some(route));
        assert_eq!(
            keep_for(
                route,
                StatusCode::OK,
                &none,
                &headers(&[("cache-control", "max-age=60")])
            ),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            keep_for(
                route,
                StatusCode::OK,
                &none,
                &headers(&[("cache-control", "public, max-age=9999, s-maxage=30")])
            ),
            Some(Duration::from_secs(30))
        );
        for forbidding in ["no-store", "private", "no-cache", "max-age=0"] {
            assert_eq!(
                keep_for(
                    route,
                    StatusCode::OK,
                    &none,
                    &headers(&[("cache-control", forbidding)])
                ),
                None,
                "{forbidding}"
            );
        }
        assert_eq!(
            keep_for(route, StatusCode::OK, &none, &headers(&[("vary", "*")])),
            None
        );
        assert_eq!(
            keep_for(
                route,
                StatusCode::OK,
                &none,
                &headers(&[("set-cookie", "a=b")])
            ),
            None
        );
        assert_eq!(
            keep_for(route, StatusCode::INTERNAL_SERVER_ERROR, &none, &none),
            None
        );
        let authorized = headers(&[("authorization", "Bearer x")]);
        assert_eq!(keep_for(route, StatusCode::OK, &authorized, &none), None);
        assert_eq!(
            keep_for(
                route,
                StatusCode::OK,
                &authorized,
                &headers(&[("cache-control", "public")])
            ),
            Some(route)
        );
    }

    #[tokio::test]
    async fn one_leader_fetches_and_followers_get_its_entry_matched_on_vary() {
        let cache = ResponseCache::new(1 << 20, 1 << 16);
        let key = ResponseCache::key(&Method::GET, "http", "h", "/p");
        let english = headers(&[("accept-language", "en")]);
        let Lookup::Lead(leader) = cache.lookup(&key, "/p", &english) else {
            panic!("the first is the leader");
        };
        let Lookup::Follow(flight) = cache.lookup(&key, "/p", &english) else {
            panic!("the second follows");
        };
        let mut answer = Response::new(Body::from("hello"));
        answer
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept-Language"));
        let response = leader
            .finish(Duration::from_secs(60), &english, answer)
            .await;
        assert_eq!(response.headers()["x-cache"], "MISS");
        let entry = follow(flight, &english, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(entry.body, "hello");
        assert!(matches!(cache.lookup(&key, "/p", &english), Lookup::Hit(_)));
        let german = headers(&[("accept-language", "de")]);
        assert!(
            matches!(cache.lookup(&key, "/p", &german), Lookup::Lead(_)),
            "another variant"
        );
        assert_eq!(cache.purge(Some("/p")), 1);
        assert_eq!(cache.usage(), (0, 0));
    }
}
