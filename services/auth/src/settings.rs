//! The auth service's settings: defaults here, then the file given with
//! `--config`, then `TRIBUTARY_AUTH_*` variables (`__` for nesting) and the
//! conventional `DATABASE_URL`, `REDIS_URL` and `KAFKA_BROKERS`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tributary_kit::Secret;
use tributary_kit::config::{self, ConfigError, Layers};

/// Variables that set a key without the prefix.
pub const ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("REDIS_URL", "redis_url"),
    ("KAFKA_BROKERS", "kafka_brokers"),
    ("SMTP_URL", "mail.smtp_url"),
];

/// Everything the service reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// PostgreSQL; the database is created if missing.
    pub database_url: Secret,
    /// Redis, for sessions, attempt counters and revocations.
    pub redis_url: Secret,
    /// Prefix of every Redis key, so that several deployments share a server.
    pub redis_prefix: String,
    /// Kafka brokers for the outbox; without them events wait in the outbox.
    pub kafka_brokers: Option<String>,
    /// The topic `UserLoggedIn` events go to.
    pub events_topic: String,
    /// The `iss` of every token: this service's public base URL.
    pub issuer: String,
    /// The `aud` of access tokens.
    pub audience: String,
    /// JSON logs (the default) or text.
    pub json_logs: bool,
    /// Data keys that seal MFA secrets and signing keys (AES-256-GCM):
    /// `VERSION:BASE64,…`, the highest version seals.
    pub data_keys: Option<Secret>,
    /// A file holding the data keys in the same form, if not given inline.
    pub data_keys_file: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed (a gateway); others' is ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// Passwords.
    pub passwords: PasswordSettings,
    /// Access and refresh tokens.
    pub tokens: TokenSettings,
    /// Signing keys.
    pub keys: KeySettings,
    /// Attempt limits and lockout.
    pub lockout: LockoutSettings,
    /// Outgoing mail.
    pub mail: MailSettings,
    /// Password reset.
    pub reset: ResetSettings,
    /// External OpenID Connect providers, by the name their URLs use
    /// (`/auth/oauth/{name}/start`).
    pub oidc: BTreeMap<String, OidcProviderSettings>,
    /// What a new account may do: its roles and permissions.
    pub new_accounts: AccessSettings,
}

/// Roles and permissions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSettings {
    /// Roles (`customer`).
    pub roles: Vec<String>,
    /// Permissions (`read:orders`, `write:orders`: a customer may shop).
    pub permissions: Vec<String>,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            roles: vec!["customer".into()],
            permissions: vec!["read:orders".into(), "write:orders".into()],
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: Secret::new("postgres://postgres@127.0.0.1:5432/tributary_auth"),
            redis_url: Secret::new("redis://127.0.0.1:6379"),
            redis_prefix: "tributary:auth:".into(),
            kafka_brokers: None,
            events_topic: "user-events".into(),
            issuer: "http://127.0.0.1:8081".into(),
            audience: "tributary".into(),
            json_logs: true,
            data_keys: None,
            data_keys_file: None,
            trusted_proxies: Vec::new(),
            passwords: PasswordSettings::default(),
            tokens: TokenSettings::default(),
            keys: KeySettings::default(),
            lockout: LockoutSettings::default(),
            mail: MailSettings::default(),
            reset: ResetSettings::default(),
            oidc: BTreeMap::new(),
            new_accounts: AccessSettings::default(),
        }
    }
}

/// Outgoing mail (reset links and notices), through the outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailSettings {
    /// `smtp://host:port` (`?tls=required` for STARTTLS, `smtps://` for
    /// TLS, `user:password@` for credentials); without it mail waits in
    /// the outbox.
    pub smtp_url: Option<Secret>,
    /// The sender, as `Name <address>` or an address.
    pub from: String,
}

impl Default for MailSettings {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Tributary <no-reply@localhost>".into(),
        }
    }
}

/// One external OpenID Connect provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderSettings {
    /// Its issuer URL; the metadata comes from
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// This service's client id there.
    pub client_id: String,
    /// The client secret (sent as HTTP Basic); none for a public client.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// This service's callback, exactly as registered at the provider:
    /// `{public base}/auth/oauth/{name}/callback`.
    pub redirect_uri: String,
    /// The scopes asked for.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into()]
}

/// Password reset by mailed token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResetSettings {
    /// How long a reset token is good for.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// The link mailed, with `{token}` replaced by the token: the page of
    /// the client that asks for the new password.
    pub link: String,
    /// Reset mails sent to one account per hour at most; more requests
    /// are answered alike and sent nothing.
    pub mails_per_hour: u32,
}

impl Default for ResetSettings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            link: "http://127.0.0.1:8081/reset#token={token}".into(),
            mails_per_hour: 3,
        }
    }
}

/// How passwords are hashed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordSettings {
    /// bcrypt cost (2^cost rounds).
    pub bcrypt_cost: u32,
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
    /// Hashes waiting beyond those running before logins get 503.
    pub queue: usize,
    /// Shortest password, in characters.
    pub min_length: usize,
}

impl Default for PasswordSettings {
    fn default() -> Self {
        Self {
            bcrypt_cost: 12,
            threads: 0,
            queue: 16,
            min_length: 8,
        }
    }
}

/// Token lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// Access token lifetime.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Refresh token lifetime (each rotation starts a new one).
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// A session's longest life, however often it is refreshed.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// How long the immediate parent of the current refresh token may be
    /// presented again and get the same successor (clients that retry).
    #[serde(with = "humantime_serde")]
    pub reuse_grace: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            session_max: Duration::from_secs(30 * 24 * 3600),
            reuse_grace: Duration::from_secs(10),
        }
    }
}

/// Signing keys and their rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// A new key is made when the newest is this old.
    #[serde(with = "humantime_serde")]
    pub rotate_every: Duration,
    /// A new key is published this long before it signs: longer than any
    /// verifier keeps a JWKS.
    #[serde(with = "humantime_serde")]
    pub publish_lead: Duration,
    /// How often each instance reloads the keys from the database.
    #[serde(with = "humantime_serde")]
    pub reload_every: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            rotate_every: Duration::from_secs(30 * 24 * 3600),
            publish_lead: Duration::from_secs(600),
            reload_every: Duration::from_secs(10),
        }
    }
}

/// Brute-force limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutSettings {
    /// Login attempts allowed per account in `attempt_window`.
    pub attempts_per_account: u32,
    /// Login attempts allowed per source address in `attempt_window`.
    pub attempts_per_address: u32,
    /// The rolling window of the attempt limits.
    #[serde(with = "humantime_serde")]
    pub attempt_window: Duration,
    /// Failed checks of one factor that lock the account.
    pub max_failures: u32,
    /// The rolling window failures are counted in.
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// Accounts with failures from one address that block the address.
    pub suspicious_accounts: u32,
    /// The window of `suspicious_accounts`.
    #[serde(with = "humantime_serde")]
    pub suspicious_window: Duration,
    /// How long a suspicious address stays blocked.
    #[serde(with = "humantime_serde")]
    pub block_for: Duration,
}

impl Default for LockoutSettings {
    fn default() -> Self {
        Self {
            attempts_per_account: 5,
            attempts_per_address: 5,
            attempt_window: Duration::from_secs(15 * 60),
            max_failures: 10,
            failure_window: Duration::from_secs(24 * 3600),
            suspicious_accounts: 20,
            suspicious_window: Duration::from_secs(10 * 60),
            block_for: Duration::from_secs(15 * 60),
        }
    }
}

impl Settings {
    /// Loads the settings from `file` (if any) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(&Layers {
            file,
            prefix: "TRIBUTARY_AUTH",
            aliases: ALIASES,
        })
    }
}
