//! Putting the service together: connect (creating and migrating the
//! database), load the keys, start the background tasks, and serve.

use std::future::Future;
use std::sync::Arc;

use axum::extract::FromRef;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tributary_kit::jwt::{Verifier, VerifierSettings};
use tributary_kit::observe::Metrics;
use tributary_kit::server::{self, Readiness, Running};

use crate::attempts::Attempts;
use crate::clock::Clock;
use crate::keys::{KeyError, Keys};
use crate::oidc::Providers;
use tributary_kit::outbox::kafka::KafkaSink;
use tributary_kit::outbox::{Destination, OutboxMetrics};

use crate::OUTBOX;
use crate::mail::{SMTP, SmtpSink};
use crate::passwords::Hasher;
use crate::sealing::{Keyring, SealError};
use crate::sessions::Sessions;
use crate::settings::Settings;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data keys are missing or malformed.
    #[error(transparent)]
    DataKeys(#[from] SealError),
    /// The data key file cannot be read.
    #[error("data key file {path}: {message}")]
    DataKeyFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// No data keys are configured.
    #[error(
        "no data keys: set TRIBUTARY_AUTH_DATA_KEYS or data_keys_file (`tributary-auth data-key` prints a new one), or start with --dev"
    )]
    NoDataKeys,
    /// PostgreSQL cannot be reached or prepared.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Redis cannot be reached.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The signing keys cannot be loaded.
    #[error(transparent)]
    Keys(#[from] KeyError),
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

/// The service's own metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthMetrics {
    pub(crate) logins: Family<OutcomeLabels, Counter>,
    pub(crate) refreshes: Family<OutcomeLabels, Counter>,
    pub(crate) lockouts: Counter,
    pub(crate) blocked_addresses: Counter,
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) settings: Arc<Settings>,
    pub(crate) db: PgPool,
    pub(crate) redis: redis::aio::ConnectionManager,
    pub(crate) sealing: Arc<Keyring>,
    pub(crate) keys: Keys,
    pub(crate) sessions: Sessions,
    pub(crate) attempts: Attempts,
    pub(crate) hasher: Hasher,
    pub(crate) verifier: Verifier,
    pub(crate) metrics: AuthMetrics,
    pub(crate) clock: Clock,
    pub(crate) oidc: Providers,
    pub(crate) user_cache: crate::users::Cache,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// The data keys the settings name.
pub fn data_keys(settings: &Settings) -> Result<Keyring, StartError> {
    if let Some(inline) = &settings.data_keys {
        return Ok(Keyring::parse(inline.expose())?);
    }
    if let Some(path) = &settings.data_keys_file {
        let text = std::fs::read_to_string(path).map_err(|e| StartError::DataKeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        return Ok(Keyring::parse(&text)?);
    }
    Err(StartError::NoDataKeys)
}

/// Connects to the database, creating it when it does not exist, and runs
/// the migrations.
pub async fn database(url: &str) -> Result<PgPool, StartError> {
    let pool = tributary_kit::database::connect(url, 16, std::time::Duration::from_secs(5)).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Runs the migrations (concurrent starts wait on sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), StartError> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
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
    start_with_clock(settings, Clock::system(), listener, until).await
}

/// [`start`], with expiring records judged by `clock` (tests move it).
pub async fn start_with_clock(
    settings: Settings,
    clock: Clock,
    listener: TcpListener,
    until: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, StartError> {
    if !settings.reset.link.contains("{token}") {
        return Err(StartError::Settings(format!(
            "reset.link `{}` must contain `{{token}}`, where the reset token goes",
            settings.reset.link
        )));
    }
    let oidc = Providers::new(&settings.oidc).map_err(StartError::Settings)?;
    let sealing = Arc::new(data_keys(&settings)?);
    let db = database(settings.database_url.expose()).await?;
    let redis_client = redis::Client::open(settings.redis_url.expose())?;
    let redis = redis::aio::ConnectionManager::new(redis_client.clone()).await?;
    let keys = Keys::load(
        db.clone(),
        sealing.clone(),
        settings.keys.clone(),
        settings.tokens.access_ttl,
    )
    .await?;
    let verifier = Verifier::new(VerifierSettings::new(
        None,
        &settings.issuer,
        &settings.audience,
    ));
    verifier.set_keys(&keys.jwks());
    let sessions = Sessions::new(
        redis.clone(),
        &settings.redis_prefix,
        sealing.clone(),
        settings.tokens.clone(),
        settings.lockout.clone(),
    );
    let attempts = Attempts::new(
        redis.clone(),
        &settings.redis_prefix,
        settings.lockout.clone(),
    );
    let hasher = Hasher::start(
        settings.passwords.bcrypt_cost,
        settings.passwords.threads,
        settings.passwords.queue,
    );
    let metrics = Arc::new(Metrics::new("tributary_auth"));
    let auth_metrics = AuthMetrics::default();
    metrics.register(
        "logins",
        "Login attempts by outcome",
        auth_metrics.logins.clone(),
    );
    metrics.register(
        "refreshes",
        "Refresh token presentations by outcome",
        auth_metrics.refreshes.clone(),
    );
    metrics.register("lockouts", "Accounts locked", auth_metrics.lockouts.clone());
    metrics.register(
        "blocked_addresses",
        "Source addresses blocked for failures across many accounts",
        auth_metrics.blocked_addresses.clone(),
    );
    let outbox_metrics = OutboxMetrics::default();
    outbox_metrics.register(&metrics);
    let mut tasks = Vec::new();
    match &settings.kafka_brokers {
        Some(brokers) => tasks.push(
            OUTBOX
                .relay(
                    db.clone(),
                    Destination::KAFKA,
                    KafkaSink::new(brokers, "tributary-auth"),
                    outbox_metrics.clone(),
                )
                .spawn(),
        ),
        None => tracing::warn!("no Kafka brokers (KAFKA_BROKERS): events wait in the outbox"),
    }
    match &settings.mail.smtp_url {
        Some(url) => {
            let sink = SmtpSink::new(url.expose(), &settings.mail.from, sealing.clone())
                .map_err(StartError::Settings)?;
            tasks.push(OUTBOX.relay(db.clone(), SMTP, sink, outbox_metrics).spawn());
        }
        None => tracing::warn!("no SMTP server (SMTP_URL): mail waits in the outbox"),
    }
    let published = verifier.clone();
    tasks.push(keys.maintain(move |jwks| published.set_keys(jwks)));
    tasks.push(verifier.follow_revocations(redis_client, sessions.revocations_key()));
    let state = AppState {
        settings: Arc::new(settings),
        db: db.clone(),
        redis: redis.clone(),
        sealing,
        keys,
        sessions,
        attempts,
        hasher,
        verifier,
        metrics: auth_metrics,
        clock,
        oidc,
        user_cache: crate::users::Cache::new(100_000, std::time::Duration::from_secs(2)),
    };
    let readiness = Readiness::default().postgres(db).redis(redis);
    let app = server::finish(crate::api::router(state), metrics, readiness);
    let http = server::serve(listener, app, until)?;
    tracing::info!(addr = %http.addr, "tributary-auth is serving");
    Ok(Server { http, tasks })
}
