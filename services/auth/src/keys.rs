//! Signing keys: Ed25519 (EdDSA). Chosen over RS256 because signing is the
//! hot path of every login and refresh and Ed25519 signs in microseconds
//! where RSA-2048 takes milliseconds; its signatures are deterministic, its
//! tokens shorter, and it has no padding modes to get wrong. Every verifier
//! is ours, so no legacy client needs RSA.
//!
//! Keys live in PostgreSQL with the private half sealed. Rotation never
//! fails a request: a new key is published `publish_lead` before it signs
//! (longer than verifiers keep a JWKS), and the old one stays published
//! until the last token it signed has expired.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::sealing::Keyring;
use crate::settings::KeySettings;

/// Tokens are accepted this long past `exp` by verifiers; a retired key
/// stays published that much longer too.
const VERIFIER_LEEWAY: Duration = Duration::from_secs(60);

/// Key handling failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored key does not open or parse.
    #[error("signing key {kid}: {message}")]
    Broken {
        /// The key.
        kid: String,
        /// What is wrong.
        message: String,
    },
    /// No key may sign yet.
    #[error("no signing key is active")]
    NoneActive,
}

/// A key that signs, once its time has come.
#[derive(Clone)]
pub struct ActiveKey {
    /// Its id (the `kid` header).
    pub kid: String,
    /// The private key.
    pub key: EncodingKey,
    signs_from: DateTime<Utc>,
}

struct Loaded {
    signing: Vec<ActiveKey>,
    published: JwkSet,
}

impl Default for Loaded {
    fn default() -> Self {
        Self {
            signing: Vec::new(),
            published: JwkSet { keys: Vec::new() },
        }
    }
}

/// The service's signing keys, reloaded from the database.
#[derive(Clone)]
pub struct Keys {
    loaded: Arc<RwLock<Loaded>>,
    db: PgPool,
    sealing: Arc<Keyring>,
    settings: KeySettings,
    longest_token: Duration,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    kid: String,
    public_jwk: serde_json::Value,
    private_key: Vec<u8>,
    signs_from: DateTime<Utc>,
}

/// Serialises key changes across instances.
const KEY_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('tributary-auth signing keys'))";

impl Keys {
    /// Loads the keys, making the first one if there is none.
    pub async fn load(
        db: PgPool,
        sealing: Arc<Keyring>,
        settings: KeySettings,
        longest_token: Duration,
    ) -> Result<Self, KeyError> {
        let keys = Self {
            loaded: Arc::default(),
            db,
            sealing,
            settings,
            longest_token,
        };
        keys.ensure_one().await?;
        keys.reload().await?;
        Ok(keys)
    }

    async fn ensure_one(&self) -> Result<(), KeyError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(KEY_LOCK).execute(&mut *tx).await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM signing_keys WHERE retire_at IS NULL OR retire_at > now()",
        )
        .fetch_one(&mut *tx)
        .await?;
        if live == 0 {
            let kid = self.insert(&mut tx, Utc::now()).await?;
            tracing::info!(%kid, "made the first signing key");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes a new key that signs after `publish_lead`, and schedules the
    /// retirement of the others. Returns its `kid`.
    pub async fn rotate(&self) -> Result<String, KeyError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(KEY_LOCK).execute(&mut *tx).await?;
        let kid = self.rotate_locked(&mut tx).await?;
        tx.commit().await?;
        self.reload().await?;
        Ok(kid)
    }

    async fn rotate_locked(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<String, KeyError> {
        let signs_from = Utc::now() + delta(self.settings.publish_lead);
        let kid = self.insert(tx, signs_from).await?;
        let retire_at = signs_from + delta(self.longest_token + VERIFIER_LEEWAY);
        sqlx::query(
            "UPDATE signing_keys SET retire_at = $2 WHERE kid <> $1 \
             AND (retire_at IS NULL OR retire_at > $2)",
        )
        .bind(&kid)
        .bind(retire_at)
        .execute(&mut **tx)
        .await?;
        tracing::info!(%kid, %signs_from, %retire_at, "rotated the signing key");
        Ok(kid)
    }

    /// Rotates when the newest key is older than `rotate_every` (one
    /// instance does it; the others see it at their next reload).
    pub async fn rotate_if_due(&self) -> Result<Option<String>, KeyError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(KEY_LOCK).execute(&mut *tx).await?;
        let newest: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(created_at) FROM signing_keys")
                .fetch_one(&mut *tx)
                .await?;
        let due = newest.is_none_or(|at| at + delta(self.settings.rotate_every) <= Utc::now());
        let kid = if due {
            Some(self.rotate_locked(&mut tx).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(kid)
    }

    async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        signs_from: DateTime<Utc>,
    ) -> Result<String, KeyError> {
        let seed = crate::random::bytes::<32>();
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let x = URL_SAFE_NO_PAD.encode(public);
        // RFC 7638 thumbprint: the kid says which key it is.
        let thumbprint = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumbprint.as_bytes()));
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig",
        });
        let sealed = self.sealing.seal(&pkcs8(&seed), kid.as_bytes());
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, public_jwk, private_key, signs_from) \
             VALUES ($1, 'EdDSA', $2, $3, $4)",
        )
        .bind(&kid)
        .bind(jwk)
        .bind(sealed)
        .bind(signs_from)
        .execute(&mut **tx)
        .await?;
        Ok(kid)
    }

    /// Reads the published keys again.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT kid, public_jwk, private_key, signs_from FROM signing_keys \
             WHERE retire_at IS NULL OR retire_at > now() ORDER BY signs_from",
        )
        .fetch_all(&self.db)
        .await?;
        let mut loaded = Loaded::default();
        for row in rows {
            let broken = |message: String| KeyError::Broken {
                kid: row.kid.clone(),
                message,
            };
            let jwk: Jwk = serde_json::from_value(row.public_jwk.clone())
                .map_err(|e| broken(e.to_string()))?;
            let der = self
                .sealing
                .open(&row.private_key, row.kid.as_bytes())
                .map_err(|e| broken(e.to_string()))?;
            loaded.published.keys.push(jwk);
            loaded.signing.push(ActiveKey {
                kid: row.kid.clone(),
                key: EncodingKey::from_ed_der(&der),
                signs_from: row.signs_from,
            });
        }
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// The key that signs now: the latest whose time has come.
    pub fn current(&self) -> Result<ActiveKey, KeyError> {
        let now = Utc::now();
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        loaded
            .signing
            .iter()
            .rev()
            .find(|k| k.signs_from <= now)
            .cloned()
            .ok_or(KeyError::NoneActive)
    }

    /// The published public keys.
    pub fn jwks(&self) -> JwkSet {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .published
            .clone()
    }

    /// Reloads every `reload_every`, rotates when due, and hands the
    /// published keys to `published` after each reload.
    pub fn maintain(
        &self,
        published: impl Fn(&JwkSet) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let keys = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(keys.settings.reload_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(error) = keys.rotate_if_due().await {
                    tracing::warn!(%error, "checking whether the signing key is due for rotation failed");
                }
                match keys.reload().await {
                    Ok(()) => published(&keys.jwks()),
                    Err(error) => tracing::warn!(%error, "reloading the signing keys failed"),
                }
            }
        })
    }
}

/// A std duration as chrono's, saturating.
fn delta(duration: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX)
}

/// An Ed25519 seed as a PKCS#8 v1 document (RFC 8410): a fixed prefix and
/// the 32 bytes.
fn pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}
