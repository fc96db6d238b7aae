//! Snowflake's HTTP query protocol: log in, run statements, close the session.
//!
//! `POST /session/v1/login-request` returns a session token;
//! `POST /queries/v1/query-request` runs one statement and answers with JSON
//! rows (`rowset`) or an Arrow IPC stream in base64 (`rowsetBase64`); a
//! statement still running answers with a result URL that is polled;
//! `POST /session?delete=true` ends the session. An expired session is
//! renewed by logging in again, but only between transactions: a statement
//! of an open transaction re-run in a new session would run outside it, so
//! there the expiry is an error ([`SnowflakeError::SessionLost`]) and the
//! caller starts the whole transaction over.

use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::array_value_to_string;
use base64::Engine;
use serde_json::{Value, json};

use super::SnowflakeError;
use super::jwt;
use crate::secret::Secret;

/// How to authenticate; `Debug` shows neither the password nor the key.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// User and password (test servers, legacy accounts).
    Password(Secret),
    /// Key-pair authentication: a PKCS#8 PEM RSA private key, signed into a JWT per login.
    KeyPair {
        /// The PEM text.
        private_key_pem: Secret,
    },
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Base URL, e.g. `https://myorg-myaccount.snowflakecomputing.com`.
    pub url: String,
    /// Account identifier.
    pub account: String,
    /// Login name.
    pub user: String,
    /// Password or key pair.
    pub credentials: Credentials,
    /// Database.
    pub database: String,
    /// Schema.
    pub schema: String,
    /// Warehouse, if the user has no default.
    pub warehouse: Option<String>,
    /// Role, if not the user's default.
    pub role: Option<String>,
    /// Session parameters set at login (e.g. `QUERY_TAG`, `TIMEZONE`).
    pub session_parameters: std::collections::BTreeMap<String, String>,
}

/// A statement's result: column names and rows as text (NULL as `None`).
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each value rendered as text.
    pub rows: Vec<Vec<Option<String>>>,
    /// The Arrow batches, when the server answered in Arrow.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// The value of `column` in `row`, if present and not NULL.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let i = self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))?;
        self.rows.get(row)?.get(i)?.as_deref()
    }
}

/// A logged-in session.
pub struct Session {
    http: reqwest::Client,
    connection: Connection,
    token: String,
    sequence: u64,
    /// A `BEGIN` succeeded and no `COMMIT` or `ROLLBACK` ended it yet.
    in_transaction: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.connection.url)
            .field("database", &self.connection.database)
            .finish_non_exhaustive()
    }
}

/// Error codes meaning the session token is no longer valid.
const SESSION_EXPIRED: [&str; 3] = ["390112", "390104", "390114"];
/// Error codes meaning the statement is still running.
const STILL_RUNNING: [&str; 2] = ["333333", "333334"];

impl Session {
    /// Logs in.
    pub async fn login(connection: Connection) -> Result<Session, SnowflakeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Servers close idle keep-alive connections (uvicorn after 5 s);
            // a statement sent on one after a pause (a frozen process, a long
            // retry) fails and rolls its transaction back for nothing.
            .pool_idle_timeout(Duration::from_secs(4))
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SnowflakeError::Http(e.to_string()))?;
        let token = login(&http, &connection).await?;
        Ok(Session {
            http,
            connection,
            token,
            sequence: 0,
            in_transaction: false,
        })
    }

    /// Runs one statement. An expired session is renewed and the statement
    /// run again, unless a transaction is open: then the transaction is lost
    /// and this fails with [`SnowflakeError::SessionLost`].
    pub async fn query(&mut self, sql: &str) -> Result<QueryResult, SnowflakeError> {
        let verb = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let result = match self.query_once(sql).await {
            Err(SnowflakeError::Statement { code, .. }) if SESSION_EXPIRED.contains(&&*code) => {
                if std::mem::take(&mut self.in_transaction) {
                    // No new login here: the caller's ROLLBACK goes to the
                    // session that held the transaction (where it ends it,
                    // or is refused as expired and runs, harmlessly, anew).
                    tracing::info!(url = %self.connection.url, "Snowflake session expired inside a transaction; the transaction is lost");
                    return Err(SnowflakeError::SessionLost(sql.chars().take(120).collect()));
                }
                tracing::info!(url = %self.connection.url, "Snowflake session expired; logging in again");
                self.token = login(&self.http, &self.connection).await?;
                self.query_once(sql).await
            }
            other => other,
        };
        match verb.as_str() {
            "BEGIN" => self.in_transaction = result.is_ok(),
            // Whatever the answer, the transaction is over or unknown: a
            // COMMIT whose reply was lost is settled by the caller's log check.
            "COMMIT" | "ROLLBACK" => self.in_transaction = false,
            _ => {}
        }
        result
    }

    async fn query_once(&mut self, sql: &str) -> Result<QueryResult, SnowflakeError> {
        self.sequence += 1;
        let request_id = uuid::Uuid::new_v4();
        let url = format!(
            "{}/queries/v1/query-request?requestId={request_id}",
            self.connection.url
        );
        let body = json!({
            "sqlText": sql,
            "asyncExec": false,
            "sequenceId": self.sequence,
            "querySubmissionTime": chrono::Utc::now().timestamp_millis(),
        });
        let response = self
            .http
            .post(&url)
            .header("Accept", "application/snowflake")
            .header("Authorization", self.authorization())
            .json(&body)
            .send()
            .await
            .map_err(|e| SnowflakeError::Http(e.to_string()))?;
        let mut answer = read_answer(response).await?;
        // A long statement answers "still running" with a URL to poll.
        let mut delay = Duration::from_millis(200);
        while answer_code(&answer).is_some_and(|c| STILL_RUNNING.contains(&c)) {
            let Some(path) = answer["data"]["getResultUrl"].as_str() else {
                break;
            };
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            let response = self
                .http
                .get(format!("{}{path}", self.connection.url))
                .header("Accept", "application/snowflake")
                .header("Authorization", self.authorization())
                .send()
                .await
                .map_err(|e| SnowflakeError::Http(e.to_string()))?;
            answer = read_answer(response).await?;
        }
        if answer["success"].as_bool() != Some(true) {
            return Err(statement_error(&answer, sql));
        }
        parse_result(&answer["data"])
    }

    fn authorization(&self) -> String {
        format!("Snowflake Token=\"{}\"", self.token)
    }

    /// Ends the session (best effort).
    pub async fn close(self) {
        let url = format!("{}/session?delete=true", self.connection.url);
        if let Err(error) = self
            .http
            .post(url)
            .header("Accept", "application/snowflake")
            .header("Authorization", self.authorization())
            .send()
            .await
        {
            tracing::debug!(%error, "closing the Snowflake session failed");
        }
    }
}

/// The default `LOCK_TIMEOUT` of our sessions (a pipeline's
/// `session_parameters` may set another).
const LOCK_TIMEOUT_SECONDS: u64 = 300;

async fn login(http: &reqwest::Client, c: &Connection) -> Result<String, SnowflakeError> {
    let mut data = json!({
        "CLIENT_APP_ID": "tributary",
        "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
        "ACCOUNT_NAME": c.account,
        "LOGIN_NAME": c.user,
        // A load waits this long (not Snowflake's 12 hours) for the lock
        // row another load holds, then fails and is retried.
        "SESSION_PARAMETERS": { "AUTOCOMMIT": true, "LOCK_TIMEOUT": LOCK_TIMEOUT_SECONDS },
    });
    for (name, value) in &c.session_parameters {
        data["SESSION_PARAMETERS"][name] = json!(value);
    }
    match &c.credentials {
        Credentials::Password(password) => data["PASSWORD"] = json!(password.expose()),
        Credentials::KeyPair { private_key_pem } => {
            data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
            data["TOKEN"] = json!(jwt::token(&c.account, &c.user, private_key_pem.expose())?);
        }
    }
    let mut query = vec![
        ("databaseName", c.database.clone()),
        ("schemaName", c.schema.clone()),
    ];
    if let Some(w) = &c.warehouse {
        query.push(("warehouse", w.clone()));
    }
    if let Some(r) = &c.role {
        query.push(("roleName", r.clone()));
    }
    let response = http
        .post(format!("{}/session/v1/login-request", c.url))
        .query(&query)
        .header("Accept", "application/json")
        .json(&json!({ "data": data }))
        .send()
        .await
        .map_err(|e| SnowflakeError::Http(e.to_string()))?;
    let answer = read_answer(response).await?;
    if answer["success"].as_bool() != Some(true) {
        return Err(SnowflakeError::Login(
            answer["message"]
                .as_str()
                .unwrap_or("login refused")
                .to_string(),
        ));
    }
    answer["data"]["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| SnowflakeError::Protocol("login answer without a token".into()))
}

/// The JSON answer; HTTP errors become [`SnowflakeError::Server`] (5xx, 429) or statement errors.
async fn read_answer(response: reqwest::Response) -> Result<Value, SnowflakeError> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| SnowflakeError::Http(e.to_string()))?;
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        return Err(SnowflakeError::Server {
            status: status.as_u16(),
            body: text.chars().take(500).collect(),
        });
    }
    let answer: Value = serde_json::from_str(&text).map_err(|e| {
        SnowflakeError::Protocol(format!(
            "HTTP {status}: not JSON ({e}): {}",
            text.chars().take(200).collect::<String>()
        ))
    })?;
    Ok(answer)
}

fn answer_code(answer: &Value) -> Option<&str> {
    answer["code"].as_str()
}

fn statement_error(answer: &Value, sql: &str) -> SnowflakeError {
    SnowflakeError::Statement {
        code: answer_code(answer).unwrap_or("?").to_string(),
        message: answer["message"]
            .as_str()
            .unwrap_or("statement failed")
            .to_string(),
        sql: sql.chars().take(300).collect(),
    }
}

fn parse_result(data: &Value) -> Result<QueryResult, SnowflakeError> {
    let columns: Vec<String> = data["rowtype"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    if let Some(rows) = data["rowset"].as_array() {
        let rows = rows
            .iter()
            .map(|row| {
                row.as_array()
                    .map(|values| {
                        values
                            .iter()
                            .map(|v| match v {
                                Value::Null => None,
                                Value::String(s) => Some(s.clone()),
                                other => Some(other.to_string()),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        return Ok(QueryResult {
            columns,
            rows,
            batches: Vec::new(),
        });
    }
    let encoded = data["rowsetBase64"].as_str().unwrap_or("");
    if encoded.is_empty() {
        return Ok(QueryResult {
            columns,
            ..Default::default()
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| SnowflakeError::Protocol(format!("rowsetBase64: {e}")))?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| SnowflakeError::Protocol(format!("Arrow result: {e}")))?;
    let mut result = QueryResult {
        columns,
        ..Default::default()
    };
    for batch in reader {
        let batch = batch.map_err(|e| SnowflakeError::Protocol(format!("Arrow result: {e}")))?;
        for row in 0..batch.num_rows() {
            let mut values = Vec::with_capacity(batch.num_columns());
            for column in batch.columns() {
                values.push(if column.is_null(row) {
                    None
                } else {
                    Some(
                        array_value_to_string(column, row)
                            .map_err(|e| SnowflakeError::Protocol(e.to_string()))?,
                    )
                });
            }
            result.rows.push(values);
        }
        result.batches.push(batch);
    }
    Ok(result)
}
