//! PostgreSQL as the services use it: the database created on first start
//! (several instances may race to make it), then a pool. Each service runs
//! its own migrations on the pool.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Creates the database `url` names if it does not exist, then connects a
/// pool of `connections` that waits at most `acquire_timeout` for one and
/// does not ping a connection before each use (a dead one fails its query).
pub async fn connect(
    url: &str,
    connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    if let Some(name) = options.get_database().map(str::to_string) {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().database("postgres"))
            .await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&admin)
                .await?;
        if !exists {
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            // The name is quoted as an identifier: no injection through it.
            match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
                .execute(&admin)
                .await
            {
                Ok(_) => tracing::info!(database = %name, "created the database"),
                // Another instance made it at the same moment.
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
                Err(e) => return Err(e),
            }
        }
        admin.close().await;
    }
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .connect_with(options)
        .await
}
