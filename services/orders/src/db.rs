//! The primary and its read replicas. Writes go to the primary; reads go
//! to a replica in rotation, except that a caller never misses its own
//! write: after a write the caller's commit position (LSN) is remembered
//! (in Redis, across instances), and its reads go to a replica only once
//! that replica has replayed past it, else to the primary.
//!
//! A monitor reads every replica's replay position and lag a few times a
//! second: a replica that does not answer, or is further behind than
//! `max_lag`, leaves the rotation until it catches up. It also watches the
//! primary, so that writes fail at once while it is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::settings::ReplicaSettings;

/// A WAL position.
pub type Lsn = u64;

/// `16/B374D848` as a number.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some((high << 32) | low)
}

/// The primary's position after the caller's last commit on `connection`
/// (its insert position covers the commit record).
pub async fn position(connection: &mut sqlx::PgConnection) -> sqlx::Result<Lsn> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(connection)
        .await?;
    Ok(parse_lsn(&text).unwrap_or(0))
}

/// Whether a failed query means the server is unreachable (rather than a
/// bad statement, or a pool whose connections are all in use: waiting for
/// one says nothing of the server, which the monitor checks on its own
/// connection).
pub fn unreachable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
    ) || matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("57") || c.starts_with("08")))
}

/// A pool of one connection for a server's health check, so that a
/// saturated request pool cannot make the check wait and a busy server
/// look down.
fn check_pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CHECK_TIMEOUT)
        .connect_lazy_with(options)
}

/// How long a health check may take before its server counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

struct Replica {
    name: String,
    pool: PgPool,
    check: PgPool,
    in_rotation: AtomicBool,
    replayed: AtomicU64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

/// The replicas' metrics.
#[derive(Debug, Clone, Default)]
pub struct ReplicaMetrics {
    lag: Family<ReplicaLabels, Gauge<f64, AtomicU64>>,
    up: Family<ReplicaLabels, Gauge>,
    primary_up: Gauge,
}

impl ReplicaMetrics {
    /// Registers `replica_lag_seconds`, `replica_in_rotation` and `primary_up`.
    pub fn register(&self, metrics: &tributary_kit::observe::Metrics) {
        metrics.register(
            "replica_lag_seconds",
            "How far each read replica is behind the primary (-1 when it does not answer)",
            self.lag.clone(),
        );
        metrics.register(
            "replica_in_rotation",
            "1 while a read replica serves reads",
            self.up.clone(),
        );
        metrics.register(
            "primary_up",
            "1 while the primary database answers",
            self.primary_up.clone(),
        );
    }
}

/// Where a read went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The primary.
    Primary,
    /// Replica number `n` (in `DATABASE_REPLICA_URLS` order).
    Replica(usize),
}

/// The primary and its replicas.
#[derive(Clone)]
pub struct Database {
    primary: PgPool,
    primary_check: PgPool,
    replicas: Arc<Vec<Replica>>,
    next: Arc<AtomicUsize>,
    primary_up: Arc<AtomicBool>,
    settings: ReplicaSettings,
    metrics: ReplicaMetrics,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("replicas", &self.replicas.len())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The primary pool and lazily connected replica pools.
    pub fn new(
        primary: PgPool,
        replica_urls: &[&str],
        connections: u32,
        settings: ReplicaSettings,
        metrics: ReplicaMetrics,
    ) -> Result<Self, sqlx::Error> {
        let mut replicas = Vec::new();
        for url in replica_urls {
            let options: PgConnectOptions = url.parse()?;
            let name = format!("{}:{}", options.get_host(), options.get_port());
            let check = check_pool(options.clone());
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(1))
                .test_before_acquire(false)
                .connect_lazy_with(options);
            // Not answering until the first check says otherwise.
            let labels = ReplicaLabels {
                replica: name.clone(),
            };
            metrics.lag.get_or_create(&labels).set(-1.0);
            metrics.up.get_or_create(&labels).set(0);
            replicas.push(Replica {
                name,
                pool,
                check,
                in_rotation: AtomicBool::new(false),
                replayed: AtomicU64::new(0),
            });
        }
        Ok(Self {
            primary_check: check_pool((*primary.connect_options()).clone()),
            primary,
            replicas: Arc::new(replicas),
            next: Arc::default(),
            primary_up: Arc::new(AtomicBool::new(true)),
            settings,
            metrics,
        })
    }

    /// The primary, for writes and reads that must be current.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Whether the primary answered its last check.
    pub fn primary_up(&self) -> bool {
        self.primary_up.load(Ordering::Relaxed)
    }

    /// Marks the primary down after a failed query (the monitor marks it up).
    pub fn primary_failed(&self) {
        self.primary_up.store(false, Ordering::Relaxed);
        self.metrics.primary_up.set(0);
    }

    /// The replicas configured.
    pub fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// A pool for a read by a caller whose last write is at `after`: a
    /// replica in rotation that has replayed past it, else the primary.
    pub fn reader(&self, after: Option<Lsn>) -> (&PgPool, ReadFrom) {
        let count = self.replicas.len();
        if count > 0 {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for step in 0..count {
                let index = (start + step) % count;
                let replica = &self.replicas[index];
                if replica.in_rotation.load(Ordering::Relaxed)
                    && after.is_none_or(|lsn| replica.replayed.load(Ordering::Acquire) >= lsn)
                {
                    return (&replica.pool, ReadFrom::Replica(index));
                }
            }
        }
        (&self.primary, ReadFrom::Primary)
    }

    /// Takes a replica out of rotation after a failed read.
    pub fn replica_failed(&self, from: ReadFrom) {
        if let ReadFrom::Replica(index) = from
            && let Some(replica) = self.replicas.get(index)
        {
            replica.in_rotation.store(false, Ordering::Relaxed);
            self.metrics
                .up
                .get_or_create(&ReplicaLabels {
                    replica: replica.name.clone(),
                })
                .set(0);
        }
    }

    /// Checks the primary and every replica every `check_every`.
    pub fn monitor(&self) -> tokio::task::JoinHandle<()> {
        let db = self.clone();
        tokio::spawn(async move {
            loop {
                db.check().await;
                tokio::time::sleep(db.settings.check_every).await;
            }
        })
    }

    async fn check(&self) {
        let primary_at = tokio::time::timeout(
            CHECK_TIMEOUT,
            sqlx::query_scalar::<_, String>("SELECT pg_current_wal_lsn()::text")
                .fetch_one(&self.primary_check),
        )
        .await;
        let primary_at = match primary_at {
            Ok(Ok(text)) => {
                self.primary_up.store(true, Ordering::Relaxed);
                self.metrics.primary_up.set(1);
                parse_lsn(&text)
            }
            _ => {
                self.primary_failed();
                None
            }
        };
        for replica in self.replicas.iter() {
            let labels = ReplicaLabels {
                replica: replica.name.clone(),
            };
            let answer = tokio::time::timeout(
                CHECK_TIMEOUT,
                sqlx::query_as::<_, (Option<String>, Option<f64>)>(
                    "SELECT pg_last_wal_replay_lsn()::text, \
                     EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8",
                )
                .fetch_one(&replica.check),
            )
            .await;
            let (replayed, lag) = match answer {
                Ok(Ok((Some(replayed), since_replay))) => {
                    let replayed = parse_lsn(&replayed).unwrap_or(0);
                    // Caught up with the primary: no lag, however long ago
                    // the last transaction was replayed.
                    let lag = match primary_at {
                        Some(at) if replayed >= at => 0.0,
                        _ => since_replay.unwrap_or(0.0).max(0.0),
                    };
                    (Some(replayed), lag)
                }
                _ => (None, -1.0),
            };
            self.metrics.lag.get_or_create(&labels).set(lag);
            let usable = replayed.is_some() && lag <= self.settings.max_lag.as_secs_f64();
            if let Some(replayed) = replayed {
                replica.replayed.fetch_max(replayed, Ordering::AcqRel);
            }
            let was = replica.in_rotation.swap(usable, Ordering::Relaxed);
            if was != usable {
                if usable {
                    tracing::info!(replica = %replica.name, lag, "replica back in rotation");
                } else {
                    tracing::warn!(replica = %replica.name, lag, "replica out of rotation");
                }
            }
            self.metrics
                .up
                .get_or_create(&labels)
                .set(i64::from(usable));
        }
    }
}

/// Callers' last write positions, shared by every instance through Redis.
#[derive(Clone)]
pub struct Positions {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    remember_for: Duration,
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Positions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const REMEMBER: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

impl Positions {
    /// Positions under `prefix` in Redis, kept `remember_for`.
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, remember_for: Duration) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}lsn:"),
            remember_for,
        }
    }

    /// Records that `subject` wrote at `lsn`.
    pub async fn wrote(&self, subject: &str, lsn: Lsn) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::Script::new(REMEMBER)
            .key(format!("{}{subject}", self.prefix))
            .arg(lsn)
            .arg(self.remember_for.as_millis() as u64)
            .invoke_async::<i64>(&mut redis)
            .await?;
        Ok(())
    }

    /// `subject`'s last write position, if recent.
    pub async fn last(&self, subject: &str) -> redis::RedisResult<Option<Lsn>> {
        let mut redis = self.redis.clone();
        redis::cmd("GET")
            .arg(format!("{}{subject}", self.prefix))
            .query_async::<Option<u64>>(&mut redis)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_as_numbers() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/1").unwrap() > parse_lsn("0/FFFFFFFF").unwrap());
        assert_eq!(parse_lsn("junk"), None);
    }
}
