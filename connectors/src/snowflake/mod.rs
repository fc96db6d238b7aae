//! Loading published Parquet files into Snowflake tables, exactly once.
//!
//! [`client`] speaks Snowflake's HTTP query protocol (no driver, no ODBC);
//! [`loader`] creates the target table from the Arrow schema, runs
//! `COPY INTO … FILES = (…)` from an external stage over the output, and
//! keeps its own load log so that no file is loaded twice.

pub mod client;
mod jwt;
pub mod loader;

pub use client::{Connection, Credentials, QueryResult, Session};
pub use jwt::public_key_fingerprint;
pub use loader::{LoadReport, LoadTarget, Loader, TimestampKind, column_type};

/// A Snowflake operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SnowflakeError {
    /// The server could not be reached or the connection broke.
    #[error("Snowflake unreachable: {0}")]
    Http(String),
    /// The server answered with an error status that may go away (5xx, 429).
    #[error("Snowflake server error HTTP {status}: {body}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// Login refused.
    #[error("Snowflake login refused: {0}")]
    Login(String),
    /// A statement failed (SQL error, permission, schema mismatch).
    #[error("Snowflake error {code}: {message} (in: {sql})")]
    Statement {
        /// Snowflake's error code.
        code: String,
        /// Its message.
        message: String,
        /// The statement, shortened.
        sql: String,
    },
    /// The private key cannot be used.
    #[error("Snowflake key-pair authentication: {0}")]
    Key(String),
    /// The answer did not follow the protocol.
    #[error("unexpected answer from Snowflake: {0}")]
    Protocol(String),
    /// A file to load cannot be read from the output store.
    #[error("reading {path} to load it: {source}")]
    Store {
        /// The file.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// The session expired inside a transaction, which is therefore lost:
    /// start it over (the load log tells what committed).
    #[error("Snowflake session expired inside a transaction (at: {0}); it was rolled back")]
    SessionLost(String),
    /// Another loader committed some of the same files while this load
    /// ran; the load was rolled back, and its retry skips them.
    #[error(
        "{files} of the files were loaded into {table} by another loader meanwhile; rolled back"
    )]
    LoadedElsewhere {
        /// How many.
        files: usize,
        /// The table.
        table: String,
    },
    /// A file already loaded was published again with other content.
    #[error(
        "{path} was loaded into {table} with SHA-256 {logged} and now has {now}: its old rows are in the table; delete them and the file's row in {log}, then load it again"
    )]
    Rewritten {
        /// The file.
        path: String,
        /// The table.
        table: String,
        /// The hash logged when it was loaded.
        logged: String,
        /// Its hash now.
        now: String,
        /// The load log table.
        log: String,
    },
    /// An Arrow type has no Snowflake column type.
    #[error("column {column}: {data_type} has no Snowflake type")]
    Unmappable {
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
}

impl SnowflakeError {
    /// Whether retrying may help (network, 5xx, throttling, store hiccups).
    pub fn is_transient(&self) -> bool {
        match self {
            SnowflakeError::Http(_)
            | SnowflakeError::Server { .. }
            | SnowflakeError::SessionLost(_)
            | SnowflakeError::LoadedElsewhere { .. } => true,
            // Another load held the table's lock too long, or won a conflict
            // (Snowflake 000625; engines with optimistic concurrency say "conflict").
            SnowflakeError::Statement { code, message, .. } => {
                code == "000625" || message.to_ascii_lowercase().contains("conflict")
            }
            SnowflakeError::Store { source, .. } => crate::store::is_transient(source),
            _ => false,
        }
    }
}
