//! Putting the gateway together: the key store (creating and migrating its
//! database), Redis for limits and revoked sessions, the routes and their
//! pools, the background tasks (routes reload, health checks, JWKS and
//! revocations), the proxy listener and the admin listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpListener;
use tributary_kit::jwt::{Verifier, VerifierSettings};
use tributary_kit::observe::Metrics;
use tributary_kit::server::{self, Readiness, Running};

use crate::cache::ResponseCache;
use crate::keys::Keys;
use crate::limit::{Clock, Limiter};
use crate::routes::{RoutesError, Table};
use crate::settings::Settings;
use crate::upstream::{PoolMetrics, Pools};
use crate::workers::Workers;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PostgreSQL cannot be reached or prepared.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Redis cannot be reached.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The routes file does not check.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// A setting is unusable.
    #[error("settings: {0}")]
    Settings(String),
    /// A listener failed.
    #[error("listening: {0}")]
    Listen(#[from] std::io::Error),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    upstream: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The proxy's metrics.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    rate_limited: Family<RouteLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    cache: Family<OutcomeLabels, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
            }),
            rate_limited: Family::default(),
            reloads: Family::default(),
            cache: Family::default(),
        }
    }
}

impl ProxyMetrics {
    fn register(&self, metrics: &Metrics) {
        metrics.register(
            "proxy_requests",
            "Requests by route, upstream and status (the gateway's own answers included)",
            self.requests.clone(),
        );
        metrics.register(
            "proxy_latency_seconds",
            "Time from the request to the response's headers, by route",
            self.latency.clone(),
        );
        metrics.register(
            "rate_limited",
            "Requests refused with 429, by route",
            self.rate_limited.clone(),
        );
        metrics.register(
            "cache_lookups",
            "Cacheable requests: hit, miss (fetched), coalesced (another request's fetch), bypass",
            self.cache.clone(),
        );
        metrics.register(
            "routes_reloads",
            "Changed routes files, taken or refused",
            self.reloads.clone(),
        );
    }

    pub(crate) fn observe(
        &self,
        route: Option<&str>,
        upstream: Option<&str>,
        status: u16,
        elapsed: Duration,
    ) {
        let route = route.unwrap_or("-").to_string();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                route,
                upstream: upstream.unwrap_or("-").to_string(),
                status,
            })
            .inc();
    }

    pub(crate) fn cache(&self, outcome: &'static str) {
        self.cache.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn rate_limited(&self, route: Option<&str>) {
        self.rate_limited
            .get_or_create(&RouteLabels {
                route: route.unwrap_or("-").to_string(),
            })
            .inc();
    }
}

/// What the request path reaches.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) settings: Arc<Settings>,
    pub(crate) table: ArcSwap<Table>,
    pub(crate) pools: Pools,
    pub(crate) keys: Keys,
    pub(crate) verifier: Verifier,
    pub(crate) limiter: Limiter,
    pub(crate) redis: redis::aio::ConnectionManager,
    pub(crate) redis_client: redis::Client,
    pub(crate) cache: ResponseCache,
    pub(crate) metrics: ProxyMetrics,
    pub(crate) default_policy: Arc<str>,
    key_header: HeaderName,
}

impl Gateway {
    /// The channel cache purges are announced on, so every instance purges.
    pub(crate) fn purge_channel(&self) -> String {
        format!("{}cache-purge", self.settings.redis_prefix)
    }

    /// The header API keys arrive in.
    pub(crate) fn key_header(&self) -> &HeaderName {
        &self.key_header
    }
}

/// A gateway running in this process.
#[derive(Debug)]
pub struct Server {
    /// The proxy listener.
    pub proxy: Workers,
    /// The admin listener.
    pub admin: Running,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Stops both listeners (requests in flight finish) and the tasks.
    pub async fn stop(self) -> std::io::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        let admin = self.admin.stop().await;
        self.proxy.stop().await;
        admin
    }

    /// Runs until a listener stops (after a signal), then stops the tasks.
    pub async fn wait(self) -> std::io::Result<()> {
        self.proxy.wait().await;
        for task in &self.tasks {
            task.abort();
        }
        self.admin.stop().await
    }
}

/// Connects the key store (creating the database) and migrates it.
pub async fn connect(settings: &Settings) -> Result<sqlx::PgPool, StartError> {
    let pool = tributary_kit::database::connect(
        settings.database_url.expose(),
        settings.database_connections,
        Duration::from_secs(5),
    )
    .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Starts the gateway on the two listeners until `until` completes.
pub async fn start(
    settings: Settings,
    listener: TcpListener,
    admin_listener: TcpListener,
    clock: Clock,
    until: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, StartError> {
    let table = Table::load(&settings.routes)?;
    let key_header = HeaderName::try_from(settings.keys.header.as_str()).map_err(|_| {
        StartError::Settings(format!(
            "keys.header: `{}` is not a header name",
            settings.keys.header
        ))
    })?;
    let db = connect(&settings).await?;
    let redis_client = redis::Client::open(settings.redis_url.expose())?;
    let redis = redis::aio::ConnectionManager::new(redis_client.clone()).await?;

    let metrics = Arc::new(Metrics::new("tributary_gateway"));
    let proxy_metrics = ProxyMetrics::default();
    proxy_metrics.register(&metrics);
    let pool_metrics = PoolMetrics::default();
    pool_metrics.register(&metrics);
    let fallbacks = Counter::default();
    metrics.register(
        "rate_limit_fallbacks",
        "Rate limit decisions made by the local limiter because Redis did not answer",
        fallbacks.clone(),
    );

    let verifier = Verifier::new(VerifierSettings::new(
        Some(settings.auth.jwks_url.clone()),
        &settings.auth.issuer,
        &settings.auth.audience,
    ));
    let limiter = Limiter::new(
        redis.clone(),
        &settings.redis_prefix,
        clock,
        settings.rate_limit.redis_timeout,
        settings.rate_limit.instances,
        fallbacks,
    );
    let client = crate::upstream::client();
    let pools = Pools::new(&table, pool_metrics);
    let keys = Keys::new(db.clone(), settings.keys.cache_for);
    keys.register(&metrics);
    let settings = Arc::new(settings);
    let gateway = Arc::new(Gateway {
        keys,
        table: ArcSwap::from_pointee(table),
        pools: pools.clone(),
        verifier: verifier.clone(),
        limiter,
        redis: redis.clone(),
        redis_client: redis_client.clone(),
        cache: ResponseCache::new(settings.cache.max_bytes, settings.cache.max_entry_bytes),
        metrics: proxy_metrics,
        default_policy: Arc::from("default"),
        key_header,
        settings: settings.clone(),
    });

    let tasks = vec![
        pools.spawn_checks(client),
        verifier.follow_revocations(redis_client.clone(), settings.auth.revocations_key.clone()),
        reload(gateway.clone()),
        follow_purges(gateway.clone(), redis_client),
    ];

    let readiness = Readiness::default().postgres(db).redis(redis);
    let admin_app = server::finish(crate::admin::router(gateway.clone()), metrics, readiness);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        until.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let proxy = Workers::spawn(
        listener,
        settings.workers(),
        gateway.clone(),
        stopped(stop_rx.clone()),
    )?;
    let admin = server::serve(admin_listener, admin_app, stopped(stop_rx))?;
    tracing::info!(proxy = %proxy.addr, admin = %admin.addr, "tributary-gateway is serving");
    Ok(Server {
        proxy,
        admin,
        tasks,
    })
}

/// Reloads the routes file when it changes; a file that does not check is
/// refused (logged and counted) and the routes in use stay.
fn reload(gateway: Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let file = gateway.settings.routes.clone();
        let mut tick = tokio::time::interval(gateway.settings.reload_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut refused = String::new();
        loop {
            tick.tick().await;
            let Ok(text) = tokio::fs::read_to_string(&file).await else {
                continue;
            };
            match Table::parse(&text, &file) {
                Ok(table) if table.digest == gateway.table.load().digest => {}
                Ok(table) => {
                    gateway.pools.update(&table);
                    tracing::info!(routes = table.routes().len(), digest = %table.digest, "reloaded the routes");
                    gateway.table.store(Arc::new(table));
                    gateway
                        .metrics
                        .reloads
                        .get_or_create(&OutcomeLabels { outcome: "taken" })
                        .inc();
                    refused.clear();
                }
                Err(error) => {
                    if error.0 != refused {
                        tracing::error!(%error, "the changed routes file does not check; keeping the routes in use");
                        gateway
                            .metrics
                            .reloads
                            .get_or_create(&OutcomeLabels { outcome: "refused" })
                            .inc();
                        refused = error.0;
                    }
                }
            }
        }
    })
}

/// Purges this instance's cache when any instance announces a purge (the
/// message is a path prefix, or empty for everything), reconnecting until
/// the process ends.
fn follow_purges(gateway: Arc<Gateway>, redis: redis::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use futures::StreamExt;
        let channel = gateway.purge_channel();
        loop {
            let subscribed = async {
                let mut pubsub = redis.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let prefix: String = message.get_payload().unwrap_or_default();
                    let purged = gateway
                        .cache
                        .purge((!prefix.is_empty()).then_some(prefix.as_str()));
                    tracing::info!(purged, prefix = %prefix, "purged the response cache");
                }
                Ok::<(), redis::RedisError>(())
            };
            if let Err(error) = subscribed.await {
                tracing::warn!(%error, "following cache purges failed; retrying");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
