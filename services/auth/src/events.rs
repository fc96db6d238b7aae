//! The domain events the service publishes, as `schemas/events/` defines
//! them, written to the outbox in the caller's transaction.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use tributary_kit::outbox::Destination;

use crate::OUTBOX;
use crate::users::User;

/// How a user authenticated (the schema's `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Email and password (with or without a second factor).
    Password,
    /// An external OpenID Connect provider.
    Oauth,
}

/// `UserLoggedIn` v1 (`schemas/events/user_logged_in.v1.schema.json`).
#[derive(Debug, Serialize)]
pub struct UserLoggedIn {
    event_id: Uuid,
    event_type: &'static str,
    occurred_at: String,
    user_id: String,
    method: Method,
    success: bool,
    ip: String,
    user_agent: String,
    mfa: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
}

impl UserLoggedIn {
    /// A login of `user` at `at`; `session` is the session a success started.
    pub fn new(
        user: &User,
        method: Method,
        session: Option<&str>,
        mfa: bool,
        ip: &str,
        user_agent: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: "UserLoggedIn",
            occurred_at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            user_id: user.public_id(),
            method,
            success: session.is_some(),
            ip: ip.chars().take(45).collect(),
            user_agent: user_agent.chars().take(512).collect(),
            mfa,
            session_id: session.map(str::to_string),
        }
    }

    /// Writes the event to the outbox for `topic`, keyed by the user.
    pub async fn enqueue(&self, connection: &mut PgConnection, topic: &str) -> sqlx::Result<()> {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        OUTBOX
            .enqueue(
                connection,
                Destination::KAFKA,
                Some(topic),
                Some(&self.user_id),
                &payload,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: Uuid::new_v4(),
            number: 42,
            email: "ada@example.com".into(),
            password_hash: None,
            roles: vec![],
            permissions: vec![],
            mfa_secret: None,
            mfa_enabled: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn schema() -> jsonschema::Validator {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/events/user_logged_in.v1.schema.json"
        );
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap()
    }

    #[test]
    fn successes_and_failures_match_the_engine_schema() {
        let validator = schema();
        let long_agent = "x".repeat(2000);
        for event in [
            UserLoggedIn::new(
                &user(),
                Method::Password,
                Some("s_abc"),
                true,
                "2001:db8::1",
                "curl/8",
                Utc::now(),
            ),
            UserLoggedIn::new(
                &user(),
                Method::Oauth,
                None,
                false,
                "10.0.0.1",
                &long_agent,
                Utc::now(),
            ),
        ] {
            let value = serde_json::to_value(&event).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{value}: {errors:?}");
            assert_eq!(value["user_id"], "U00000042");
        }
    }
}
