//! Password reset: a random single-use token, stored as its digest, mailed
//! to the account's address through the outbox; redeeming it sets the new
//! password, spends every other token of the user, and mails a notice.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::OUTBOX;
use crate::clock::Clock;
use crate::mail::{Mail, SMTP};
use crate::random;
use crate::sealing::Keyring;
use crate::settings::ResetSettings;
use crate::users::{self, Audit, User};

/// What reset tokens start with.
pub const TOKEN_PREFIX: &str = "pr_";

/// What a request for a reset came to (the client is told the same in each case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A token was made and its mail queued.
    Mailed(Uuid),
    /// No account has this address.
    NoAccount,
    /// The account had its share of reset mails this hour.
    TooMany(Uuid),
}

/// Where a request came from, for the audit log and the notice.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The client's address.
    pub ip: &'a str,
    /// The client.
    pub user_agent: &'a str,
}

/// Makes a reset token for the account of `email`, if there is one, and
/// queues its mail, in one transaction with the audit record.
pub async fn request(
    db: &PgPool,
    settings: &ResetSettings,
    keyring: &Keyring,
    clock: &Clock,
    email: &str,
    origin: Origin<'_>,
) -> sqlx::Result<Requested> {
    let Some(user) = users::by_email(db, email).await? else {
        return Ok(Requested::NoAccount);
    };
    let now = clock.now();
    let mut tx = db.begin().await?;
    // One request at a time per user, so the hourly count is exact.
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let recent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM password_resets WHERE user_id = $1 AND created_at > $2",
    )
    .bind(user.id)
    .bind(now - chrono::TimeDelta::hours(1))
    .fetch_one(&mut *tx)
    .await?;
    if recent >= i64::from(settings.mails_per_hour) {
        return Ok(Requested::TooMany(user.id));
    }
    let token = random::token(TOKEN_PREFIX);
    let ttl = chrono::TimeDelta::from_std(settings.token_ttl).unwrap_or(chrono::TimeDelta::MAX);
    sqlx::query(
        "INSERT INTO password_resets (token_hash, user_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(random::digest(&token))
    .bind(user.id)
    .bind(now)
    .bind(now + ttl)
    .execute(&mut *tx)
    .await?;
    let mail = Mail {
        to: user.email.clone(),
        subject: "Reset your Tributary password".into(),
        text: format!(
            "Someone, hopefully you, asked to reset the password of the Tributary account {email}.\n\n\
             To choose a new password, open this link within {minutes} minutes:\n\n{link}\n\n\
             If you did not ask for this, ignore this mail: your password stays as it is.\n",
            email = user.email,
            minutes = settings.token_ttl.as_secs() / 60,
            link = settings.link.replace("{token}", &token),
        ),
    };
    let record = ("password-reset-requested", "mailed");
    mail_and_record(&mut tx, keyring, &mail, &user, record, origin).await?;
    tx.commit().await?;
    Ok(Requested::Mailed(user.id))
}

/// Whether `token` could be redeemed now (checked before the new password
/// is hashed, so junk tokens cost no hash).
pub async fn is_live(db: &PgPool, clock: &Clock, token: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM password_resets \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2)",
    )
    .bind(random::digest(token))
    .bind(clock.now())
    .fetch_one(db)
    .await
}

/// Redeems `token`: in one transaction, spends it (it works once, however
/// many redeem it at the same moment), sets `password_hash`, spends the
/// user's other tokens, queues the notice and writes the audit record.
/// `before_commit` runs last (ending the sessions): if it fails, nothing
/// changed and the token still works. `None` when the token is unknown,
/// spent or expired.
pub async fn redeem<F, E>(
    db: &PgPool,
    keyring: &Keyring,
    clock: &Clock,
    token: &str,
    password_hash: &str,
    origin: Origin<'_>,
    before_commit: impl FnOnce(Uuid) -> F,
) -> Result<Option<User>, E>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: From<sqlx::Error>,
{
    let now: DateTime<Utc> = clock.now();
    let mut tx = db.begin().await?;
    let user_id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE password_resets SET used_at = $2 \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING user_id",
    )
    .bind(random::digest(token))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user_id) = user_id else {
        return Ok(None);
    };
    let Some(user) = users::set_password(&mut tx, user_id, password_hash).await? else {
        return Ok(None);
    };
    sqlx::query("UPDATE password_resets SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let notice = Mail {
        to: user.email.clone(),
        subject: "Your Tributary password was changed".into(),
        text: format!(
            "The password of the Tributary account {email} was changed at {at} UTC, \
             from the address {ip}, and every session of the account was logged out.\n\n\
             If this was not you, reset your password at once and tell your administrator.\n",
            email = user.email,
            at = now.format("%Y-%m-%d %H:%M"),
            ip = origin.ip,
        ),
    };
    mail_and_record(
        &mut tx,
        keyring,
        &notice,
        &user,
        ("password-reset", "ok"),
        origin,
    )
    .await?;
    before_commit(user.id).await?;
    tx.commit().await?;
    Ok(Some(user))
}

/// Queues `mail` to `user` and writes the audit record (`action`, `outcome`)
/// in the caller's transaction.
async fn mail_and_record(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    keyring: &Keyring,
    mail: &Mail,
    user: &User,
    (action, outcome): (&str, &str),
    origin: Origin<'_>,
) -> sqlx::Result<()> {
    OUTBOX
        .enqueue(tx, SMTP, None, None, &mail.seal(keyring))
        .await?;
    let record = Audit {
        action,
        outcome,
        user_id: Some(user.id),
        email: Some(&user.email),
        ip: Some(origin.ip.to_string()),
        user_agent: Some(origin.user_agent),
        ..Audit::default()
    };
    users::audit_in(&mut **tx, record).await
}
