//! Values that must never reach a log line or a `Debug`: keys, passwords,
//! tokens, and the URLs and client properties that carry them.

use std::fmt;

/// A secret string. `Debug` shows `Secret(***)`; it has no `Display`, so it
/// reaches a message only through [`Secret::expose`], where it is used.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `url` with the password of its user info replaced by `***`
/// (`postgres://app:***@db:5432/orders`), for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_string(),
    }
}

/// The scheme and host of `url` (`https://hooks.slack.com/…`): what a log
/// line may say of a URL whose path or query is itself a secret (webhooks).
pub fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "…".to_string();
    };
    let host = rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())]
        .rsplit('@')
        .next()
        .unwrap_or_default();
    format!("{scheme}://{host}/…")
}

/// Whether a client property (librdkafka's `sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, …) holds a secret.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "ssl.key.pem", "credentials"]
        .iter()
        .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn urls_lose_their_password_and_keep_the_rest() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/orders?sslmode=require"),
            "postgres://app:***@db:5432/orders?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("postgres://app@db/orders"),
            "postgres://app@db/orders"
        );
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn settings_that_carry_secrets_hide_them_in_debug() {
        let s3 = crate::store::S3Settings {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("hunter2".into()),
            session_token: Some("tok3n".into()),
            ..Default::default()
        };
        let kafka = crate::kafka::KafkaConnection {
            brokers: "b:9092".into(),
            properties: [
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("sasl.username".to_string(), "app".to_string()),
            ]
            .into(),
        };
        let password = crate::snowflake::Credentials::Password("hunter2".into());
        let key = crate::snowflake::Credentials::KeyPair {
            private_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        };
        let shown = format!("{s3:?} {kafka:?} {password:?} {key:?}");
        for secret in ["hunter2", "tok3n", "PRIVATE KEY"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("AKIAEXAMPLE") && shown.contains("app"),
            "{shown}"
        );
    }

    #[test]
    fn a_webhook_shows_only_its_origin() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            url_origin("http://user:pw@127.0.0.1:9999/hook?token=x"),
            "http://127.0.0.1:9999/…"
        );
        assert_eq!(url_origin("nonsense"), "…");
    }

    #[test]
    fn secret_properties_are_recognised_by_name() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.keystore.password",
            "ssl.key.pem",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in ["bootstrap.servers", "security.protocol", "sasl.username"] {
            assert!(!is_secret_property(key), "{key}");
        }
    }
}
