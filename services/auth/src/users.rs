//! Users in PostgreSQL.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lru::LruCache;
use sqlx::PgPool;
use uuid::Uuid;

/// A stored user.
#[derive(Clone, sqlx::FromRow)]
pub struct User {
    /// The id tokens carry.
    pub id: Uuid,
    /// The short public number events carry (`U00000001`).
    pub number: i64,
    /// As given at sign-up; unique whatever its case.
    pub email: String,
    /// bcrypt hash; none for accounts made through an external provider.
    pub password_hash: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// The sealed TOTP seed, once enrolment started.
    pub mfa_secret: Option<Vec<u8>>,
    /// Whether logins need the second factor.
    pub mfa_enabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("roles", &self.roles)
            .field("mfa_enabled", &self.mfa_enabled)
            .finish_non_exhaustive()
    }
}

impl User {
    /// The id events carry.
    pub fn public_id(&self) -> String {
        format!("U{:08}", self.number)
    }
}

const COLUMNS: &str = "id, number, email, password_hash, roles, permissions, mfa_secret, \
                       mfa_enabled, created_at, updated_at";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The email is taken.
    #[error("an account with this email exists")]
    EmailTaken,
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a user with `access` (a new account's roles and permissions).
pub async fn create(
    db: &PgPool,
    email: &str,
    password_hash: Option<&str>,
    access: &crate::settings::AccessSettings,
) -> Result<User, StoreError> {
    let query = format!(
        "INSERT INTO users (id, email, password_hash, roles, permissions) VALUES ($1, $2, $3, $4, $5) \
         RETURNING {COLUMNS}"
    );
    sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(query))
        .bind(Uuid::new_v4())
        .bind(email)
        .bind(password_hash)
        .bind(&access.roles)
        .bind(&access.permissions)
        .fetch_one(db)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(e) if e.is_unique_violation() => StoreError::EmailTaken,
            _ => StoreError::Database(error),
        })
}

/// The user with `email`, whatever its case.
pub async fn by_email(db: &PgPool, email: &str) -> Result<Option<User>, sqlx::Error> {
    let query = format!("SELECT {COLUMNS} FROM users WHERE lower(email) = lower($1)");
    sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(query))
        .bind(email)
        .fetch_optional(db)
        .await
}

/// The user with `id`.
pub async fn by_id(db: &PgPool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    let query = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(query))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Replaces a user's roles and permissions; `None` when there is no such user.
pub async fn set_access(
    db: &PgPool,
    id: Uuid,
    roles: &[String],
    permissions: &[String],
) -> Result<Option<User>, sqlx::Error> {
    let query = format!(
        "UPDATE users SET roles = $2, permissions = $3, updated_at = now() WHERE id = $1 \
         RETURNING {COLUMNS}"
    );
    sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(query))
        .bind(id)
        .bind(roles)
        .bind(permissions)
        .fetch_optional(db)
        .await
}

/// One audit record.
#[derive(Debug, Default)]
pub struct Audit<'a> {
    /// `login`, `signup`, `refresh`, `logout`, `lockout`, `token-reuse`, `admin-access`, …
    pub action: &'a str,
    /// `ok`, `failed`, `locked`, `limited`, `revoked`, …
    pub outcome: &'a str,
    /// The user concerned.
    pub user_id: Option<Uuid>,
    /// Who acted, when not the user (an admin).
    pub actor_id: Option<Uuid>,
    /// The email given.
    pub email: Option<&'a str>,
    /// The source address.
    pub ip: Option<String>,
    /// The client.
    pub user_agent: Option<&'a str>,
    /// Anything else worth keeping.
    pub detail: Option<serde_json::Value>,
}

/// Writes `record` through `executor` (a transaction, to fail with it).
pub async fn audit_in(executor: impl sqlx::PgExecutor<'_>, record: Audit<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (action, outcome, user_id, actor_id, email, ip, user_agent, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(record.action)
    .bind(record.outcome)
    .bind(record.user_id)
    .bind(record.actor_id)
    .bind(record.email)
    .bind(&record.ip)
    .bind(
        record
            .user_agent
            .map(|ua| ua.chars().take(512).collect::<String>()),
    )
    .bind(record.detail.unwrap_or_else(|| serde_json::json!({})))
    .execute(executor)
    .await?;
    Ok(())
}

/// Writes `record`; a failure is logged, never the caller's failure.
pub async fn audit(db: &PgPool, record: Audit<'_>) {
    let action = record.action;
    if let Err(error) = audit_in(db, record).await {
        tracing::error!(%error, action, "writing the audit log failed");
    }
}

/// Stores a new sealed TOTP seed for a user whose second factor is not
/// enabled; `false` when it is enabled (or there is no such user).
pub async fn begin_mfa(db: &PgPool, id: Uuid, sealed: &[u8]) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE users SET mfa_secret = $2, updated_at = now() WHERE id = $1 AND NOT mfa_enabled",
    )
    .bind(id)
    .bind(sealed)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Turns the second factor on or off (off also forgets the seed).
pub async fn set_mfa(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    enabled: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET mfa_enabled = $2, \
         mfa_secret = CASE WHEN $2 THEN mfa_secret END, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(enabled)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets a user's password hash; `None` when there is no such user.
pub async fn set_password(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    password_hash: &str,
) -> Result<Option<User>, sqlx::Error> {
    let query = format!(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    );
    sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(query))
        .bind(id)
        .bind(password_hash)
        .fetch_optional(&mut **tx)
        .await
}

/// The user linked to `subject` at `provider`, noting the login.
pub async fn by_identity(
    db: &PgPool,
    provider: &str,
    subject: &str,
) -> Result<Option<User>, sqlx::Error> {
    let query = format!(
        "WITH linked AS (UPDATE external_identities SET last_login = now() \
         WHERE provider = $1 AND subject = $2 RETURNING user_id) \
         SELECT {COLUMNS} FROM users WHERE id = (SELECT user_id FROM linked)"
    );
    sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(query))
        .bind(provider)
        .bind(subject)
        .fetch_optional(db)
        .await
}

/// Links `subject` at `provider` to `user` (nothing if it is linked already).
pub async fn link_identity(
    executor: impl sqlx::PgExecutor<'_>,
    provider: &str,
    subject: &str,
    user: Uuid,
    email: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO external_identities (provider, subject, user_id, email) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (provider, subject) DO NOTHING",
    )
    .bind(provider)
    .bind(subject)
    .bind(user)
    .bind(email)
    .execute(executor)
    .await?;
    Ok(())
}

/// Recently read users, for the refresh path: a refresh signs the user's
/// current roles and permissions, read at most `ttl` ago. Changes made on
/// this instance drop the entry at once; other instances see them within
/// `ttl`.
#[derive(Debug, Clone)]
pub struct Cache {
    entries: Arc<Mutex<LruCache<Uuid, (Instant, User)>>>,
    ttl: Duration,
}

impl Cache {
    /// A cache of at most `capacity` users, each kept `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Arc::new(Mutex::new(LruCache::new(capacity))),
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<Uuid, (Instant, User)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user with `id`, from the cache if read within `ttl`.
    pub async fn by_id(&self, db: &PgPool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        if let Some((at, user)) = self.lock().get(&id)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(user.clone()));
        }
        let user = by_id(db, id).await?;
        match &user {
            Some(user) => {
                self.lock().put(id, (Instant::now(), user.clone()));
            }
            None => {
                self.lock().pop(&id);
            }
        }
        Ok(user)
    }

    /// Forgets `id` (after a change to it).
    pub fn forget(&self, id: Uuid) {
        self.lock().pop(&id);
    }
}
