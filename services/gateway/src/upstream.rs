//! Upstream pools: the addresses of each upstream, which of them are
//! healthy (an active check every few seconds, and a failed connection at
//! once), how a request picks one (round robin or fewest in flight), the
//! pool's circuit breaker and its retry budget. A reload keeps the state of
//! every pool whose description did not change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tributary_kit::resilience::{Breaker, RetryBudget, State};

use crate::routes::{Balance, Table, UpstreamSpec};

/// Failed checks in a row that take an address out of rotation.
const UNHEALTHY_AFTER: u32 = 2;

/// An HTTP client (keep-alive connections per address).
pub type HttpClient = Client<HttpConnector, Body>;

/// A client with keep-alive, no Nagle, and a connect timeout.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

thread_local! {
    static LOCAL_CLIENT: HttpClient = client();
}

/// This thread's client: its connections belong to this thread's runtime,
/// so a request and its upstream connection never wake another thread.
pub fn local_client() -> HttpClient {
    LOCAL_CLIENT.with(Clone::clone)
}

/// One address of a pool.
#[derive(Debug)]
pub struct Member {
    /// Where it listens (`127.0.0.1:8082`, `orders.internal:8082`).
    pub authority: String,
    healthy: AtomicBool,
    failed_checks: AtomicU32,
    in_flight: AtomicUsize,
}

impl Member {
    /// Whether it is in rotation.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A connection to it failed: out of rotation until a check passes.
    pub fn connection_failed(&self) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(address = %self.authority, "an upstream address refused a connection; out of rotation");
        }
        self.failed_checks.store(UNHEALTHY_AFTER, Ordering::Relaxed);
    }
}

/// A request in flight to a member.
#[derive(Debug)]
pub struct InFlight(Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One upstream.
#[derive(Debug)]
pub struct Pool {
    /// As the routes file describes it.
    pub spec: UpstreamSpec,
    members: Vec<Arc<Member>>,
    next: AtomicUsize,
    /// Its circuit breaker.
    pub breaker: Breaker,
    /// Its retry budget (20 % of requests plus 10 a second).
    pub budget: RetryBudget,
    last_check: std::sync::Mutex<Option<Instant>>,
}

impl Pool {
    fn new(spec: UpstreamSpec) -> Self {
        let members = spec
            .addresses
            .iter()
            .map(|address| {
                Arc::new(Member {
                    authority: address.clone(),
                    healthy: AtomicBool::new(true),
                    failed_checks: AtomicU32::new(0),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        Self {
            breaker: Breaker::new(spec.breaker.clone(), spec.timeout),
            budget: RetryBudget::new(0.2, 10),
            members,
            next: AtomicUsize::new(0),
            spec,
            last_check: std::sync::Mutex::new(None),
        }
    }

    /// The member for the next request, avoiding `not` (a retry's first
    /// choice) when another is healthy. With none healthy, every member is
    /// tried: a check may be wrong, a refused request is not worse.
    pub fn pick(&self, not: Option<&Arc<Member>>) -> Arc<Member> {
        let healthy: Vec<&Arc<Member>> = self
            .members
            .iter()
            .filter(|m| m.healthy() && not.is_none_or(|n| !Arc::ptr_eq(n, m)))
            .collect();
        let candidates: Vec<&Arc<Member>> = if healthy.is_empty() {
            self.members.iter().collect()
        } else {
            healthy
        };
        let chosen = match self.spec.balance {
            Balance::RoundRobin => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                candidates[n % candidates.len()]
            }
            Balance::LeastRequests => {
                // Ties go round robin, so an idle pool still spreads.
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                let len = candidates.len();
                (0..len)
                    .map(|i| candidates[(n + i) % len])
                    .min_by_key(|m| m.in_flight.load(Ordering::Relaxed))
                    .unwrap_or(candidates[0])
            }
        };
        chosen.clone()
    }

    /// Its members.
    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    upstream: String,
    address: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

/// The pools' metrics.
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    healthy: Family<MemberLabels, Gauge>,
    breaker: Family<UpstreamLabels, Gauge>,
}

impl PoolMetrics {
    /// Registers them.
    pub fn register(&self, metrics: &tributary_kit::observe::Metrics) {
        metrics.register(
            "upstream_healthy",
            "Whether an upstream address is in rotation (1) or not (0)",
            self.healthy.clone(),
        );
        metrics.register(
            "upstream_breaker_state",
            "An upstream's circuit breaker: 0 closed, 1 open, 2 half-open",
            self.breaker.clone(),
        );
    }
}

/// Every pool, replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct Pools {
    pools: Arc<ArcSwap<HashMap<String, Arc<Pool>>>>,
    metrics: PoolMetrics,
}

impl Pools {
    /// The pools of `table`.
    pub fn new(table: &Table, metrics: PoolMetrics) -> Self {
        let pools = Self {
            pools: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            metrics,
        };
        pools.update(table);
        pools
    }

    /// Takes a new table's pools, keeping those that did not change.
    pub fn update(&self, table: &Table) {
        let current = self.pools.load();
        let next: HashMap<String, Arc<Pool>> = table
            .upstreams
            .iter()
            .map(|(name, spec)| {
                let pool = match current.get(name) {
                    Some(pool) if pool.spec == *spec => pool.clone(),
                    _ => Arc::new(Pool::new(spec.clone())),
                };
                (name.clone(), pool)
            })
            .collect();
        self.pools.store(Arc::new(next));
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.load().get(name).cloned()
    }

    /// Checks every pool's members when their interval has passed, forever.
    pub fn spawn_checks(&self, client: HttpClient) -> tokio::task::JoinHandle<()> {
        let pools = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let current = pools.pools.load_full();
                for pool in current.values() {
                    pools.publish(pool);
                    let due = {
                        let mut last = pool.last_check.lock().unwrap_or_else(|p| p.into_inner());
                        let due = last.is_none_or(|at| at.elapsed() >= pool.spec.health.every);
                        if due {
                            *last = Some(Instant::now());
                        }
                        due
                    };
                    if due {
                        for member in pool.members() {
                            tokio::spawn(check(client.clone(), pool.clone(), member.clone()));
                        }
                    }
                }
            }
        })
    }

    fn publish(&self, pool: &Pool) {
        let state = match pool.breaker.state() {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        self.metrics
            .breaker
            .get_or_create(&UpstreamLabels {
                upstream: pool.spec.name.clone(),
            })
            .set(state);
        for member in pool.members() {
            self.metrics
                .healthy
                .get_or_create(&MemberLabels {
                    upstream: pool.spec.name.clone(),
                    address: member.authority.clone(),
                })
                .set(i64::from(member.healthy()));
        }
    }
}

/// One health check of one member.
async fn check(client: HttpClient, pool: Arc<Pool>, member: Arc<Member>) {
    let uri = format!("http://{}{}", member.authority, pool.spec.health.path);
    let request = http::Request::get(uri)
        .header(http::header::USER_AGENT, "tributary-gateway-health")
        .body(Body::empty());
    let Ok(request) = request else {
        return;
    };
    let passed = matches!(
        tokio::time::timeout(pool.spec.health.timeout, client.request(request)).await,
        Ok(Ok(response)) if response.status().is_success()
    );
    if passed {
        member.failed_checks.store(0, Ordering::Relaxed);
        if !member.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream = %pool.spec.name, address = %member.authority, "an upstream address passed its check; back in rotation");
        }
    } else {
        let failed = member.failed_checks.fetch_add(1, Ordering::Relaxed) + 1;
        if failed >= UNHEALTHY_AFTER && member.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(upstream = %pool.spec.name, address = %member.authority, failed, "an upstream address failed its checks; out of rotation");
        }
    }
}
