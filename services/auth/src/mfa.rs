//! The second factor: TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step
//! of drift either way) and single-use recovery codes.
//!
//! The seed is sealed in PostgreSQL under the data key, bound to its user.
//! A code is accepted once only, across every instance: the step it
//! matched must be later than the last step accepted for the user, which a
//! Redis script compares and sets in one go. Recovery codes are random,
//! stored as digests, and spent by the statement that finds them.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use totp_rs::{Builder, Totp};
use uuid::Uuid;

use crate::random;
use crate::sealing::Keyring;

/// Recovery codes issued when the second factor is enabled.
pub const RECOVERY_CODES: usize = 10;

/// A second factor that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// The stored seed does not open or is not a valid TOTP seed.
    #[error("the stored second factor is unusable: {0}")]
    Broken(String),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A new seed, its sealed form for the user, and what the user's app needs.
pub struct Enrolment {
    /// The seed sealed for the users table.
    pub sealed: Vec<u8>,
    /// The seed in base32, for typing into an app.
    pub secret: String,
    /// The `otpauth://` URI a QR code carries.
    pub uri: String,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enrolment([redacted])")
    }
}

fn totp(seed: Vec<u8>, issuer: &str, account: &str) -> Result<Totp, MfaError> {
    Builder::new()
        .with_secret(seed)
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| MfaError::Broken(e.to_string()))
}

/// A fresh seed (160 bits, as RFC 4226 recommends) for `user`.
pub fn enrol(
    sealing: &Keyring,
    user: Uuid,
    issuer: &str,
    email: &str,
) -> Result<Enrolment, MfaError> {
    let seed = random::bytes::<20>().to_vec();
    let code = totp(seed.clone(), issuer, email)?;
    let uri = code.to_url().map_err(|e| MfaError::Broken(e.to_string()))?;
    Ok(Enrolment {
        sealed: sealing.seal(&seed, user.as_bytes()),
        secret: code.secret().to_base32(),
        uri,
    })
}

/// Compares a step with the last accepted one and keeps the later.
/// KEYS: the user's last step. ARGV: the step, the key's lifetime (ms).
static ACCEPT_STEP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
    )
});

/// Checks `code` against the user's sealed seed at `now` (seconds since the
/// epoch) and spends its step; `false` for a wrong or already used code.
pub async fn check_totp(
    sealing: &Keyring,
    redis: &ConnectionManager,
    prefix: &str,
    user: Uuid,
    sealed: &[u8],
    code: &str,
    now: u64,
) -> Result<bool, MfaError> {
    let seed = sealing
        .open(sealed, user.as_bytes())
        .map_err(|e| MfaError::Broken(e.to_string()))?;
    let totp = totp(seed, "tributary", "user")?;
    let Some(step) = totp.check(code.trim(), now) else {
        return Ok(false);
    };
    let mut connection = redis.clone();
    let accepted: i64 = ACCEPT_STEP
        .key(format!("{prefix}totp-step:{user}"))
        .arg(step)
        // Longer than the drift window: an older step can never match again.
        .arg(5 * 60 * 1000)
        .invoke_async(&mut connection)
        .await?;
    Ok(accepted == 1)
}

/// New recovery codes for `user`, replacing any earlier ones; returns them
/// in clear, once.
pub async fn new_recovery_codes(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user: Uuid,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user)
        .execute(&mut **tx)
        .await?;
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let code = recovery_code();
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user)
            .bind(random::digest(&normalise(&code)))
            .execute(&mut **tx)
            .await?;
        codes.push(code);
    }
    Ok(codes)
}

/// Spends a recovery code of `user`; `false` when it is not one of theirs
/// or was used.
pub async fn use_recovery_code(db: &PgPool, user: Uuid, code: &str) -> Result<bool, sqlx::Error> {
    let spent = sqlx::query(
        "UPDATE recovery_codes SET used_at = now() \
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user)
    .bind(random::digest(&normalise(code)))
    .execute(db)
    .await?;
    Ok(spent.rows_affected() == 1)
}

/// How long the second step of a login may take.
pub const CHALLENGE_TTL_SECS: u64 = 300;

/// How the first step of a login was passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstFactor {
    /// The password (`amr` `pwd`).
    Password,
    /// An external OpenID Connect provider (`amr` `fed`).
    Federated,
}

impl FirstFactor {
    /// Its `amr` value.
    pub fn amr(self) -> &'static str {
        match self {
            Self::Password => "pwd",
            Self::Federated => "fed",
        }
    }
}

/// Starts the second step of a login for `user`, whose first step was
/// `first`: an opaque token, kept as its digest for five minutes.
pub async fn start_challenge(
    redis: &ConnectionManager,
    prefix: &str,
    user: Uuid,
    first: FirstFactor,
) -> redis::RedisResult<String> {
    let token = random::token("mfa_");
    let mut connection = redis.clone();
    redis::cmd("SET")
        .arg(format!("{prefix}mfa-challenge:{}", random::digest(&token)))
        .arg(format!("{user} {}", first.amr()))
        .arg("EX")
        .arg(CHALLENGE_TTL_SECS)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(token)
}

/// The user a live challenge belongs to, and how they passed the first step.
pub async fn challenge_user(
    redis: &ConnectionManager,
    prefix: &str,
    token: &str,
) -> redis::RedisResult<Option<(Uuid, FirstFactor)>> {
    if !token.starts_with("mfa_") || token.len() > 128 {
        return Ok(None);
    }
    let mut connection = redis.clone();
    let stored: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}mfa-challenge:{}", random::digest(token)))
        .query_async(&mut connection)
        .await?;
    Ok(stored.and_then(|value| {
        let (user, first) = value.split_once(' ').unwrap_or((value.as_str(), "pwd"));
        let first = match first {
            "fed" => FirstFactor::Federated,
            _ => FirstFactor::Password,
        };
        Some((user.parse().ok()?, first))
    }))
}

/// Ends a challenge (after it succeeded); `false` if another request ended it first.
pub async fn end_challenge(
    redis: &ConnectionManager,
    prefix: &str,
    token: &str,
) -> redis::RedisResult<bool> {
    let mut connection = redis.clone();
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}mfa-challenge:{}", random::digest(token)))
        .query_async(&mut connection)
        .await?;
    Ok(deleted == 1)
}

/// `xxxx-xxxx-xxxx` from an alphabet without look-alikes (60 bits).
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let bytes = random::bytes::<12>();
    let mut code = String::with_capacity(14);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(ALPHABET[usize::from(*byte) % ALPHABET.len()] as char);
    }
    code
}

/// Codes are compared without case, spaces or dashes.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_typed_forgivingly() {
        let code = recovery_code();
        assert_eq!(code.len(), 14);
        assert_eq!(
            normalise(&code.to_uppercase().replace('-', " ")),
            normalise(&code)
        );
    }

    #[test]
    fn an_enrolment_gives_an_otpauth_uri_and_a_sealed_seed() {
        let sealing = Keyring::parse(&Keyring::generate()).unwrap();
        let user = Uuid::new_v4();
        let enrolment = enrol(&sealing, user, "Tributary", "ada@example.com").unwrap();
        assert!(
            enrolment
                .uri
                .starts_with("otpauth://totp/Tributary:ada%40example.com?"),
            "{}",
            enrolment.uri
        );
        assert!(
            enrolment
                .uri
                .contains(&format!("secret={}", enrolment.secret))
        );
        assert_eq!(
            sealing
                .open(&enrolment.sealed, user.as_bytes())
                .unwrap()
                .len(),
            20
        );
        assert!(
            sealing
                .open(&enrolment.sealed, Uuid::new_v4().as_bytes())
                .is_err()
        );
    }
}
