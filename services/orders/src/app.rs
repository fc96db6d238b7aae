//! Putting the service together: connect (creating and migrating the
//! database), load the pricing rules, start the background tasks (outbox
//! relay, saga worker, replica monitor, cache invalidation follower, rules
//! reload, key expiry), and serve.

use std::future::Future;
use std::sync::Arc;

use axum::extract::FromRef;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tributary_kit::jwt::{Verifier, VerifierSettings};
use tributary_kit::observe::Metrics;
use tributary_kit::outbox::kafka::KafkaSink;
use tributary_kit::outbox::{Destination, OutboxMetrics};
use tributary_kit::server::{self, Readiness, Running};

use crate::OUTBOX;
use crate::cache::{Cache, CacheMetrics};
use crate::db::{Database, Positions, ReplicaMetrics};
use crate::idempotency::Keys;
use crate::payments::Provider;
use crate::pricing::{Pricing, RulesError};
use crate::saga::Saga;
use crate::settings::Settings;

/// Why the service could not start.
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
    /// The pricing rules do not check.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// A setting is unusable.
    #[error("settings: {0}")]
    Settings(String),
    /// The listener failed.
    #[error("listening: {0}")]
    Listen(#[from] std::io::Error),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabels {
    pub(crate) source: &'static str,
}

/// The service's own metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct OrdersMetrics {
    pub(crate) orders: Family<OutcomeLabels, Counter>,
    pub(crate) reads: Family<SourceLabels, Counter>,
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) settings: Arc<Settings>,
    pub(crate) db: Database,
    pub(crate) positions: Positions,
    pub(crate) cache: Cache,
    pub(crate) pricing: Pricing,
    pub(crate) saga: Saga,
    pub(crate) verifier: Verifier,
    pub(crate) metrics: OrdersMetrics,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Connects to the database, creating it when it does not exist, and runs
/// the migrations.
pub async fn database(url: &str, connections: u32) -> Result<PgPool, StartError> {
    let pool =
        tributary_kit::database::connect(url, connections, std::time::Duration::from_secs(2))
            .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// A running service and its background tasks.
#[derive(Debug)]
pub struct Server {
    /// The HTTP server.
    pub http: Running,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.http.addr
    }

    /// Stops serving and the background tasks.
    pub async fn stop(self) -> std::io::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        self.http.stop().await
    }

    /// Waits until the server stops, then stops the background tasks.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.http.wait().await;
        for task in &self.tasks {
            task.abort();
        }
        result
    }
}

/// Starts the service on `listener` until `until` completes.
pub async fn start(
    settings: Settings,
    listener: TcpListener,
    until: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, StartError> {
    let pricing = Pricing::load(settings.pricing.rules_file.as_deref())?;
    let primary = database(
        settings.database_url.expose(),
        settings.database_connections,
    )
    .await?;
    let metrics = Arc::new(Metrics::new("tributary_orders"));
    let replica_metrics = ReplicaMetrics::default();
    replica_metrics.register(&metrics);
    let replica_urls: Vec<&str> = settings
        .database_replica_urls
        .iter()
        .map(|s| s.expose())
        .collect();
    let db = Database::new(
        primary.clone(),
        &replica_urls,
        settings.database_connections,
        settings.replicas.clone(),
        replica_metrics,
    )?;
    let redis_client = redis::Client::open(settings.redis_url.expose())?;
    let redis = redis::aio::ConnectionManager::new(redis_client).await?;
    let cache_metrics = CacheMetrics::default();
    cache_metrics.register(&metrics);
    let cache = Cache::new(
        redis.clone(),
        &settings.redis_prefix,
        settings.cache.ttl,
        settings.cache.local_entries,
        cache_metrics,
    );
    let positions = Positions::new(
        redis.clone(),
        &settings.redis_prefix,
        settings.replicas.remember_writes_for,
    );
    let breaker_state = Gauge::default();
    metrics.register(
        "payment_breaker_state",
        "The payment provider's circuit breaker: 0 closed, 1 open, 2 half-open",
        breaker_state.clone(),
    );
    let provider = Provider::new(
        settings.payments.clone(),
        primary.clone(),
        settings.topics.clone(),
        breaker_state,
    )
    .map_err(StartError::Settings)?;
    // Every saga step takes connections from the primary's pool: at most
    // half of it, so requests always find one (a full pool answers 503
    // after the acquire timeout).
    let mut saga_settings = settings.saga.clone();
    saga_settings.concurrency = saga_settings
        .concurrency
        .min((settings.database_connections as usize / 2).max(1));
    let (saga, kicked) = Saga::new(
        primary.clone(),
        provider,
        cache.clone(),
        settings.topics.clone(),
        saga_settings,
    );
    let verifier = Verifier::new(VerifierSettings::new(
        Some(settings.auth.jwks_url.clone()),
        &settings.auth.issuer,
        &settings.auth.audience,
    ));
    let orders_metrics = OrdersMetrics::default();
    metrics.register(
        "orders",
        "Orders placed, by outcome",
        orders_metrics.orders.clone(),
    );
    metrics.register(
        "reads",
        "Reads of orders and products, by where they were served from",
        orders_metrics.reads.clone(),
    );
    let reload_failures = Counter::default();
    metrics.register(
        "pricing_reload_failures",
        "Changed pricing rules files that were refused",
        reload_failures.clone(),
    );
    let outbox_metrics = OutboxMetrics::default();
    outbox_metrics.register(&metrics);
    let keys = Keys::new(db.clone(), verifier.clone(), settings.idempotency_ttl);

    let mut tasks = vec![
        db.monitor(),
        saga.clone().spawn(kicked),
        keys.expire(),
        pricing.watch(settings.pricing.reload_every, reload_failures),
    ];
    match &settings.kafka_brokers {
        Some(brokers) => {
            tasks.push(
                OUTBOX
                    .relay(
                        primary.clone(),
                        Destination::KAFKA,
                        KafkaSink::new(brokers, "tributary-orders"),
                        outbox_metrics,
                    )
                    .batch(500)
                    .spawn(),
            );
            let follower = crate::follow::Follower::new(
                brokers,
                &settings.topics.cache,
                cache.clone(),
                &metrics,
            )
            .map_err(StartError::Settings)?;
            tasks.push(follower.spawn());
        }
        None => tracing::warn!(
            "no Kafka brokers (KAFKA_BROKERS): events wait in the outbox, and other instances' writes reach this cache only through Redis"
        ),
    }
    let state = AppState {
        settings: Arc::new(settings),
        db,
        positions,
        cache,
        pricing,
        saga,
        verifier,
        metrics: orders_metrics,
    };
    // Ready while reads can be answered: with the primary down, reads come
    // from replicas and the cache (writes answer 503), so the primary is
    // not part of readiness; `primary_up` says how it is.
    let readiness = Readiness::default().redis(redis);
    let app = server::finish(crate::api::router(state, keys), metrics, readiness);
    let http = server::serve(listener, app, until)?;
    tracing::info!(addr = %http.addr, "tributary-orders is serving");
    Ok(Server { http, tasks })
}
