//! The routes file: upstream pools and the routes that lead to them,
//! checked as a whole before anything uses it (every error names
//! file:line:column), then compiled into a [`Table`] that answers "which
//! route takes this request".
//!
//! ```yaml
//! upstreams:
//!   orders:
//!     addresses: ["127.0.0.1:8082"]
//!     balance: least_requests        # or round_robin (the default)
//!     health: { path: /healthz, every: 5s, timeout: 2s }
//!     timeout: 30s                   # to the response's headers (504 after)
//!     retries: 1                     # idempotent requests without a body
//!     breaker: { failure_ratio: 0.5, minimum_calls: 20, window: 100, open_for: 30s, probes: 3 }
//! routes:
//!   - name: orders
//!     prefix: /api/v1/orders         # whole path segments
//!     methods: [GET, POST]           # all when left out
//!     headers: { x-tenant: acme }    # exact values
//!     upstream: orders
//!     rewrite: /v1/orders            # replaces the prefix
//!     access: user                   # public, key (the default), user
//!     permission: write:orders       # implies user
//!     rate_limit: { per_minute: 100 }
//!     request_headers: { set: { x-from: gateway }, remove: [x-debug] }
//!     response_headers: { set: {}, remove: [server] }
//!     cors: { origins: ["https://shop.example"], methods: [GET, POST], headers: [content-type, authorization, x-api-key, idempotency-key], max_age: 10m }
//!     cache: { ttl: 5m }             # GET/HEAD answers, as Cache-Control allows
//!     idempotency: optional          # required (400 without a key on POST), or off
//!     upgrade: false                 # true: WebSocket and other upgrades, tunnelled after the 101
//!   - name: v0
//!     prefix: /api/v0
//!     retired: "v0 was retired on 2026-06-30; use /api/v1"
//! ```
//!
//! Routes are tried in file order; the first that matches takes the request.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_saphyr::Spanned;
use tributary_kit::resilience::BreakerSettings;

/// A routes file that cannot be used; the message names file:line:column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RoutesError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamEntry>,
    #[serde(default)]
    routes: Vec<RouteEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamEntry {
    addresses: Spanned<Vec<String>>,
    #[serde(default)]
    balance: Balance,
    #[serde(default)]
    health: HealthCheck,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default)]
    breaker: BreakerSettings,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_retries() -> u32 {
    1
}

/// How a pool spreads requests over its addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each address in turn.
    #[default]
    RoundRobin,
    /// The address with the fewest requests in flight.
    LeastRequests,
}

/// An upstream's health check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// The path asked with `GET`; any 2xx is healthy.
    pub path: String,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// How long an answer may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            every: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    name: Spanned<String>,
    prefix: Spanned<String>,
    #[serde(default)]
    methods: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    rewrite: Option<Spanned<String>>,
    #[serde(default)]
    access: Access,
    #[serde(default)]
    permission: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitEntry>,
    #[serde(default)]
    request_headers: Option<Spanned<HeaderEdits>>,
    #[serde(default)]
    response_headers: Option<Spanned<HeaderEdits>>,
    #[serde(default)]
    retired: Option<String>,
    #[serde(default)]
    cors: Option<Spanned<CorsEntry>>,
    #[serde(default)]
    cache: Option<CacheEntry>,
    #[serde(default)]
    idempotency: Idempotency,
    #[serde(default)]
    upgrade: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorsEntry {
    origins: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose: Vec<String>,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    max_age: Duration,
    #[serde(default)]
    credentials: bool,
}

fn default_max_age() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheEntry {
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    ttl: Duration,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}

/// What the gateway does with `Idempotency-Key` on a route's POSTs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Idempotency {
    /// Tracked when sent.
    #[default]
    Optional,
    /// Required on POST (400 without one).
    Required,
    /// Passed on untouched (the upstream deals with it).
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitEntry {
    per_minute: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HeaderEdits {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone.
    Public,
    /// An application with an API key.
    #[default]
    Key,
    /// An application with an API key, for a signed-in user (a bearer token).
    User,
}

/// An upstream pool as the file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    /// Its name in the file.
    pub name: String,
    /// Where it listens: `host:port`, resolved on each new connection.
    pub addresses: Vec<String>,
    /// How requests are spread.
    pub balance: Balance,
    /// Its health check.
    pub health: HealthCheck,
    /// The longest wait for a response's headers.
    pub timeout: Duration,
    /// Retries of idempotent requests without a body.
    pub retries: u32,
    /// When its breaker opens.
    pub breaker: BreakerSettings,
}

/// Header changes on the way in or out.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// Set (replacing any value).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl Edits {
    /// Applies them.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// What a route does with a request it takes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Forwards it to the upstream pool of this name.
    Upstream(String),
    /// Answers 410 Gone with this explanation.
    Retired(String),
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name (metric label).
    pub name: Arc<str>,
    prefix: String,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Where requests go.
    pub target: Target,
    rewrite: Option<String>,
    /// Who may use it.
    pub access: Access,
    /// A permission the user's token must carry.
    pub permission: Option<String>,
    /// A limit per key on this route, instead of the key's own.
    pub per_minute: Option<u32>,
    /// Changes to the request's headers.
    pub request_headers: Edits,
    /// Changes to the response's headers.
    pub response_headers: Edits,
    /// Cross-origin requests allowed from browsers.
    pub cors: Option<Arc<Cors>>,
    /// How long its responses are cached (at most), if they are.
    pub cache_ttl: Option<Duration>,
    /// Idempotency-Key handling on POST.
    pub idempotency: Idempotency,
    /// Whether `Upgrade` (WebSocket) requests are passed on and tunnelled
    /// after the upstream's 101.
    pub upgrade: bool,
}

/// A route's CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins (`*` for any).
    pub origins: Vec<String>,
    /// Allowed methods (the route's when empty).
    pub methods: Vec<Method>,
    /// Allowed request headers.
    pub headers: Vec<HeaderName>,
    /// Response headers scripts may read.
    pub expose: Vec<HeaderName>,
    /// How long a preflight answer may be cached.
    pub max_age: Duration,
    /// Whether cookies and credentials may be sent.
    pub credentials: bool,
}

impl Route {
    fn matches(&self, method: &Method, path: &str, headers: &http::HeaderMap) -> bool {
        within(path, &self.prefix)
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
    }

    /// The upstream path for `path` (which this route matched).
    pub fn rewrite(&self, path: &str) -> String {
        match &self.rewrite {
            None => path.to_string(),
            Some(to) => {
                let rest = &path[self.prefix.trim_end_matches('/').len()..];
                let joined = format!("{}{rest}", to.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".to_string()
                } else {
                    joined
                }
            }
        }
    }
}

/// Whether `path` is `prefix` or below it, by whole segments.
fn within(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// A checked routes file.
#[derive(Debug, Clone)]
pub struct Table {
    routes: Vec<Route>,
    /// The upstream pools, by name.
    pub upstreams: HashMap<String, UpstreamSpec>,
    /// The file's SHA-256, to tell a change from a touch.
    pub digest: String,
}

impl Table {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Self, RoutesError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            RoutesError(format!(
                "{}: cannot read the routes file: {e}",
                file.display()
            ))
        })?;
        Self::parse(&text, file)
    }

    /// The route that takes a request, if any.
    pub fn route(&self, method: &Method, path: &str, headers: &http::HeaderMap) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.matches(method, path, headers))
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Checks `text`, naming `file` in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RoutesError> {
        let shown = file.display();
        let parsed: RoutesFile = serde_saphyr::from_str(text)
            .map_err(|e| RoutesError(tributary_kit::config::located(file, &e)))?;
        let at =
            |span: &serde_saphyr::Location| format!("{shown}:{}:{}", span.line(), span.column());

        let mut upstreams = HashMap::new();
        for (name, entry) in parsed.upstreams {
            let mut addresses = Vec::new();
            for address in &entry.addresses.value {
                if !authority(address) {
                    return Err(RoutesError(format!(
                        "{}: upstreams.{name}.addresses: `{address}` is not a host and port (such as 127.0.0.1:8082 or orders.internal:8082)",
                        at(&entry.addresses.referenced)
                    )));
                }
                addresses.push(address.clone());
            }
            if addresses.is_empty() {
                return Err(RoutesError(format!(
                    "{}: upstreams.{name}.addresses: needs at least one address",
                    at(&entry.addresses.referenced)
                )));
            }
            if !entry.health.path.starts_with('/') {
                return Err(RoutesError(format!(
                    "{shown}: upstreams.{name}.health.path: `{}` must start with /",
                    entry.health.path
                )));
            }
            if entry.timeout.is_zero() || entry.health.every.is_zero() {
                return Err(RoutesError(format!(
                    "{shown}: upstreams.{name}: timeouts and intervals must be above zero"
                )));
            }
            if !(0.0..=1.0).contains(&entry.breaker.failure_ratio)
                || entry.breaker.failure_ratio == 0.0
            {
                return Err(RoutesError(format!(
                    "{shown}: upstreams.{name}.breaker.failure_ratio: must be above 0 and at most 1"
                )));
            }
            upstreams.insert(
                name.clone(),
                UpstreamSpec {
                    name,
                    addresses,
                    balance: entry.balance,
                    health: entry.health,
                    timeout: entry.timeout,
                    retries: entry.retries,
                    breaker: entry.breaker,
                },
            );
        }

        let mut names = std::collections::BTreeSet::new();
        let mut routes = Vec::with_capacity(parsed.routes.len());
        for (index, entry) in parsed.routes.into_iter().enumerate() {
            let name = entry.name.value.trim().to_string();
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(RoutesError(format!(
                    "{}: routes[{index}].name: `{name}` is empty or used by an earlier route",
                    at(&entry.name.referenced)
                )));
            }
            let prefix = entry.prefix.value.clone();
            if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
                return Err(RoutesError(format!(
                    "{}: routes[{index}].prefix: `{prefix}` must be a path starting with /",
                    at(&entry.prefix.referenced)
                )));
            }
            let methods = match &entry.methods {
                None => None,
                Some(spanned) => {
                    let mut methods = Vec::new();
                    for method in &spanned.value {
                        let parsed = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                            .map_err(|_| {
                                RoutesError(format!(
                                    "{}: routes[{index}].methods: `{method}` is not an HTTP method",
                                    at(&spanned.referenced)
                                ))
                            })?;
                        methods.push(parsed);
                    }
                    Some(methods)
                }
            };
            let mut headers = Vec::new();
            for (header, value) in &entry.headers {
                headers.push(header_pair(header, value).map_err(|why| {
                    RoutesError(format!(
                        "{}: routes[{index}].headers.{header}: {why}",
                        at(&entry.name.referenced)
                    ))
                })?);
            }
            let target = match (&entry.retired, &entry.upstream) {
                (Some(why), None) => Target::Retired(why.clone()),
                (None, Some(upstream)) => {
                    if !upstreams.contains_key(&upstream.value) {
                        return Err(RoutesError(format!(
                            "{}: routes[{index}].upstream: no upstream is named `{}` (known: {})",
                            at(&upstream.referenced),
                            upstream.value,
                            upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
                        )));
                    }
                    Target::Upstream(upstream.value.clone())
                }
                _ => {
                    return Err(RoutesError(format!(
                        "{}: routes[{index}]: needs either `upstream` or `retired`",
                        at(&entry.name.referenced)
                    )));
                }
            };
            if let Some(rewrite) = &entry.rewrite
                && (!rewrite.value.starts_with('/') || rewrite.value.contains(['?', '#']))
            {
                return Err(RoutesError(format!(
                    "{}: routes[{index}].rewrite: `{}` must be a path starting with /",
                    at(&rewrite.referenced),
                    rewrite.value
                )));
            }
            if entry.rate_limit.as_ref().is_some_and(|l| l.per_minute == 0) {
                return Err(RoutesError(format!(
                    "{}: routes[{index}].rate_limit.per_minute: must be above zero",
                    at(&entry.name.referenced)
                )));
            }
            let edits = |spanned: &Option<Spanned<HeaderEdits>>, key: &str| {
                let mut edits = Edits::default();
                let Some(spanned) = spanned else {
                    return Ok(edits);
                };
                for (header, value) in &spanned.value.set {
                    edits.set.push(header_pair(header, value).map_err(|why| {
                        RoutesError(format!(
                            "{}: routes[{index}].{key}.set.{header}: {why}",
                            at(&spanned.referenced)
                        ))
                    })?);
                }
                for header in &spanned.value.remove {
                    edits
                        .remove
                        .push(HeaderName::try_from(header.as_str()).map_err(|_| {
                            RoutesError(format!(
                                "{}: routes[{index}].{key}.remove: `{header}` is not a header name",
                                at(&spanned.referenced)
                            ))
                        })?);
                }
                Ok(edits)
            };
            let cors = match &entry.cors {
                None => None,
                Some(spanned) => {
                    let c = &spanned.value;
                    let bad = |what: &str, value: &str| {
                        RoutesError(format!(
                            "{}: routes[{index}].cors.{what}: `{value}` is not valid",
                            at(&spanned.referenced)
                        ))
                    };
                    if c.origins.is_empty() {
                        return Err(bad("origins", "[]"));
                    }
                    for origin in &c.origins {
                        if origin != "*"
                            && !(origin.starts_with("http://") || origin.starts_with("https://"))
                        {
                            return Err(bad("origins", origin));
                        }
                    }
                    if c.credentials && c.origins.iter().any(|o| o == "*") {
                        return Err(RoutesError(format!(
                            "{}: routes[{index}].cors: `*` cannot be used with credentials; list the origins",
                            at(&spanned.referenced)
                        )));
                    }
                    let mut methods = Vec::new();
                    for m in &c.methods {
                        methods.push(
                            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                                .map_err(|_| bad("methods", m))?,
                        );
                    }
                    let names =
                        |list: &[String], what: &str| -> Result<Vec<HeaderName>, RoutesError> {
                            list.iter()
                                .map(|h| HeaderName::try_from(h.as_str()).map_err(|_| bad(what, h)))
                                .collect()
                        };
                    Some(Arc::new(Cors {
                        origins: c.origins.clone(),
                        methods,
                        headers: names(&c.headers, "headers")?,
                        expose: names(&c.expose, "expose")?,
                        max_age: c.max_age,
                        credentials: c.credentials,
                    }))
                }
            };
            let access = if entry.permission.is_some() {
                Access::User
            } else {
                entry.access
            };
            routes.push(Route {
                name: name.into(),
                prefix,
                methods,
                headers,
                target,
                rewrite: entry.rewrite.map(|r| r.value),
                access,
                permission: entry.permission,
                per_minute: entry.rate_limit.map(|l| l.per_minute),
                request_headers: edits(&entry.request_headers, "request_headers")?,
                response_headers: edits(&entry.response_headers, "response_headers")?,
                cors,
                cache_ttl: entry.cache.map(|c| c.ttl),
                idempotency: entry.idempotency,
                upgrade: entry.upgrade,
            });
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            routes,
            upstreams,
            digest,
        })
    }
}

/// Whether `text` is `host:port`: an IPv4 address or DNS name, or an IPv6
/// address in brackets, and a port.
fn authority(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), &'static str> {
    let name = HeaderName::try_from(name).map_err(|_| "not a header name")?;
    let value = HeaderValue::try_from(value).map_err(|_| "not a header value")?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Table, RoutesError> {
        Table::parse(text, Path::new("routes.yaml"))
    }

    const GOOD: &str = "\
upstreams:
  orders:
    addresses: [\"127.0.0.1:8082\"]
routes:
  - name: old
    prefix: /api/v0
    retired: gone
  - name: orders-read
    prefix: /api/v1/orders
    methods: [GET]
    upstream: orders
    rewrite: /v1/orders
  - name: orders
    prefix: /api/v1/orders
    upstream: orders
    permission: write:orders
";

    #[test]
    fn routes_match_whole_segments_in_file_order_and_rewrite_the_prefix() {
        let table = parse(GOOD).unwrap();
        let headers = http::HeaderMap::new();
        let get = table
            .route(&Method::GET, "/api/v1/orders/42", &headers)
            .unwrap();
        assert_eq!(&*get.name, "orders-read");
        assert_eq!(get.rewrite("/api/v1/orders/42"), "/v1/orders/42");
        assert_eq!(get.rewrite("/api/v1/orders"), "/v1/orders");
        let post = table
            .route(&Method::POST, "/api/v1/orders", &headers)
            .unwrap();
        assert_eq!(&*post.name, "orders");
        assert_eq!(post.access, Access::User, "a permission implies a user");
        assert!(
            table
                .route(&Method::GET, "/api/v1/ordersX", &headers)
                .is_none()
        );
        assert!(matches!(
            table
                .route(&Method::GET, "/api/v0/x", &headers)
                .unwrap()
                .target,
            Target::Retired(_)
        ));
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let error = parse(&GOOD.replace(
            "upstream: orders\n    permission",
            "upstream: ordres\n    permission",
        ))
        .unwrap_err()
        .0;
        assert!(
            error.starts_with("routes.yaml:15:") && error.contains("no upstream is named `ordres`"),
            "{error}"
        );
        let error = parse(&GOOD.replace("\"127.0.0.1:8082\"", "\"orders\""))
            .unwrap_err()
            .0;
        assert!(error.starts_with("routes.yaml:3:"), "{error}");
        assert!(parse(&GOOD.replace("127.0.0.1:8082", "orders.internal:8082")).is_ok());
        assert!(parse(&GOOD.replace("127.0.0.1:8082", "http://x:1")).is_err());
        let error = parse(&GOOD.replace("methods: [GET]", "methods: [\"G T\"]"))
            .unwrap_err()
            .0;
        assert!(error.contains("routes[1].methods"), "{error}");
        let error = parse(&GOOD.replace("    rewrite:", "    rewrit:"))
            .unwrap_err()
            .0;
        assert!(error.starts_with("routes.yaml:12:"), "{error}");
    }

    #[test]
    fn the_shipped_routes_files_check() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["routes.yaml", "../../deploy/gateway-routes.yaml"] {
            let path = root.join(file);
            let table = Table::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(table.routes().len() >= 5, "{}", path.display());
        }
        let configmap = root.join("../../deploy/k8s/gateway/configmap.yaml");
        let text = std::fs::read_to_string(&configmap).unwrap();
        let parsed: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let routes = parsed["data"]["routes.yaml"].as_str().unwrap();
        Table::parse(routes, &configmap).unwrap_or_else(|e| panic!("{e}"));
    }
}
