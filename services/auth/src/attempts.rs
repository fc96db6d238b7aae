//! Brute-force limits, kept atomically in Redis outside any login
//! transaction (a failed login's rollback cannot undo its count).
//!
//! Before a password is checked, one script admits the attempt or not:
//! at most `attempts_per_account` and `attempts_per_address` attempts in a
//! rolling window (sorted sets of attempt times, not fixed windows), no
//! attempt from a blocked address, no check once `max_failures` failures
//! are in the failure window (the account is locked: answered as a wrong
//! password), and none while failures plus checks in flight reach it (429
//! for a second: those checks could still lock it). Reserving the check in
//! the same script is what makes the lockout exact under concurrency: 200
//! parallel wrong passwords can never run more than `max_failures` hashes,
//! and a right password sent among them is told to retry, not that it is
//! wrong. After the
//! check, a second script records the outcome: a failure joins the
//! factor's failure window (and the address's list of failed accounts,
//! which blocks the address when it grows too long); a success clears the
//! failures.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;

use crate::clock::{millis, now_ms};
use crate::random;
use crate::settings::LockoutSettings;

/// A check left in flight by a process that died stops counting after this.
const IN_FLIGHT_FOR_MS: i64 = 30_000;

/// The factor being checked; each has its own failure count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// The password.
    Password,
    /// A TOTP or recovery code.
    SecondFactor,
}

impl Factor {
    fn key(self) -> &'static str {
        match self {
            Self::Password => "pwd",
            Self::SecondFactor => "mfa",
        }
    }
}

/// Whether an attempt may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Check it; then report with [`Attempts::finish`].
    Go(Reservation),
    /// Too many attempts: retry after this many seconds.
    Limited(u64),
    /// The account is locked: answer as for a wrong password.
    Locked,
    /// The address is blocked for suspicious activity: retry after this many seconds.
    Blocked(u64),
}

/// A reserved check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    id: String,
    account: String,
    ip: String,
    factor: Factor,
}

/// What recording a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Aftermath {
    /// This failure locked the account.
    pub locked_now: bool,
    /// This failure got the address blocked.
    pub address_blocked_now: bool,
}

/// The counters.
#[derive(Clone)]
pub struct Attempts {
    redis: ConnectionManager,
    prefix: String,
    settings: LockoutSettings,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// KEYS: account attempts, address attempts, address block, failures, in flight.
/// ARGV: now, attempt window, per account, per address, failure window,
/// max failures, attempt id, in-flight deadline, count attempts (1/0).
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local now = tonumber(ARGV[1])
local block = redis.call('PTTL', KEYS[3])
if block > 0 then return {'blocked', block} end
if ARGV[9] == '1' then
  local window = tonumber(ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  for i, limit in ipairs({tonumber(ARGV[3]), tonumber(ARGV[4])}) do
    if redis.call('ZCARD', KEYS[i]) >= limit then
      local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      return {'limited', tonumber(oldest[2]) + window - now}
    end
  end
  redis.call('ZADD', KEYS[1], now, ARGV[7])
  redis.call('ZADD', KEYS[2], now, ARGV[7])
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('PEXPIRE', KEYS[2], window)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[5]))
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local failed = redis.call('ZCARD', KEYS[4])
if failed >= tonumber(ARGV[6]) then return {'locked', 0} end
if failed + redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[6]) then
  -- The checks in flight could still lock the account: wait for them.
  return {'limited', 1000}
end
redis.call('ZADD', KEYS[5], tonumber(ARGV[8]), ARGV[7])
redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[8]) - now)
return {'go', 0}
"#,
    )
});

/// KEYS: failures, in flight, address failures, address block, account attempts.
/// ARGV: attempt id, outcome (ok/failed), now, failure window, max failures,
/// account, suspicious window, suspicious accounts, block for.
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local now = tonumber(ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == 'ok' then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[5])
  return {0, 0}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
local locked = 0
if redis.call('ZCARD', KEYS[1]) == tonumber(ARGV[5]) then locked = 1 end
local window = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
redis.call('ZADD', KEYS[3], now, ARGV[6])
redis.call('PEXPIRE', KEYS[3], window)
local blocked = 0
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[8]) and redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SET', KEYS[4], '1', 'PX', tonumber(ARGV[9]))
  blocked = 1
end
return {locked, blocked}
"#,
    )
});

impl Attempts {
    /// Counters under `prefix`.
    pub fn new(redis: ConnectionManager, prefix: &str, settings: LockoutSettings) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            settings,
        }
    }

    /// The account's key part: a digest, so emails stay out of Redis.
    /// The key an account's counters are kept under (a digest of the
    /// email, so Redis holds no addresses).
    pub fn account(email: &str) -> String {
        random::digest(&email.trim().to_lowercase())[..32].to_string()
    }

    /// Asks to check `factor` for the account `email` from `ip`. Attempts
    /// count against the rolling limits only when `count_attempt` (the
    /// login; a second step after it has already counted).
    pub async fn admit(
        &self,
        email: &str,
        ip: &str,
        factor: Factor,
        count_attempt: bool,
    ) -> redis::RedisResult<Admission> {
        let account = Self::account(email);
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let p = &self.prefix;
        let mut connection = self.redis.clone();
        let (verdict, wait_ms): (String, i64) = ADMIT
            .key(format!("{p}att:acct:{account}"))
            .key(format!("{p}att:addr:{ip}"))
            .key(format!("{p}block:{ip}"))
            .key(format!("{p}fail:{}:{account}", factor.key()))
            .key(format!("{p}inflight:{}:{account}", factor.key()))
            .arg(now)
            .arg(millis(self.settings.attempt_window))
            .arg(self.settings.attempts_per_account)
            .arg(self.settings.attempts_per_address)
            .arg(millis(self.settings.failure_window))
            .arg(self.settings.max_failures)
            .arg(&id)
            .arg(now + IN_FLIGHT_FOR_MS)
            .arg(if count_attempt { "1" } else { "0" })
            .invoke_async(&mut connection)
            .await?;
        let seconds = |ms: i64| (ms.max(0) as u64).div_ceil(1000).max(1);
        Ok(match verdict.as_str() {
            "go" => Admission::Go(Reservation {
                id,
                account,
                ip: ip.to_string(),
                factor,
            }),
            "limited" => Admission::Limited(seconds(wait_ms)),
            "blocked" => Admission::Blocked(seconds(wait_ms)),
            _ => Admission::Locked,
        })
    }

    /// Records the outcome of a reserved check.
    pub async fn finish(
        &self,
        reservation: Reservation,
        succeeded: bool,
    ) -> redis::RedisResult<Aftermath> {
        let p = &self.prefix;
        let account = &reservation.account;
        let factor = reservation.factor.key();
        let mut connection = self.redis.clone();
        let (locked, blocked): (i64, i64) = FINISH
            .key(format!("{p}fail:{factor}:{account}"))
            .key(format!("{p}inflight:{factor}:{account}"))
            .key(format!("{p}addrfail:{}", reservation.ip))
            .key(format!("{p}block:{}", reservation.ip))
            .key(format!("{p}att:acct:{account}"))
            .arg(&reservation.id)
            .arg(if succeeded { "ok" } else { "failed" })
            .arg(now_ms())
            .arg(millis(self.settings.failure_window))
            .arg(self.settings.max_failures)
            .arg(account)
            .arg(millis(self.settings.suspicious_window))
            .arg(self.settings.suspicious_accounts)
            .arg(millis(self.settings.block_for))
            .invoke_async(&mut connection)
            .await?;
        Ok(Aftermath {
            locked_now: locked == 1,
            address_blocked_now: blocked == 1,
        })
    }

    /// Gives back a reserved check that did not happen (the hash pool was full).
    pub async fn release(&self, reservation: Reservation) -> redis::RedisResult<()> {
        let mut connection = self.redis.clone();
        redis::cmd("ZREM")
            .arg(format!(
                "{}inflight:{}:{}",
                self.prefix,
                reservation.factor.key(),
                reservation.account
            ))
            .arg(&reservation.id)
            .query_async::<()>(&mut connection)
            .await
    }

    /// Whether either factor of the account is locked (refreshes ask this).
    pub async fn is_locked(&self, email: &str) -> redis::RedisResult<bool> {
        let account = Self::account(email);
        let p = &self.prefix;
        let window_start = now_ms() - millis(self.settings.failure_window);
        let mut connection = self.redis.clone();
        for factor in [Factor::Password, Factor::SecondFactor] {
            let failures: i64 = redis::cmd("ZCOUNT")
                .arg(format!("{p}fail:{}:{account}", factor.key()))
                .arg(window_start)
                .arg("+inf")
                .query_async(&mut connection)
                .await?;
            if failures >= i64::from(self.settings.max_failures) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Clears the account's failures and attempts (an admin's unlock).
    pub async fn unlock(&self, email: &str) -> redis::RedisResult<()> {
        let account = Self::account(email);
        let p = &self.prefix;
        let mut connection = self.redis.clone();
        redis::cmd("DEL")
            .arg(format!("{p}fail:pwd:{account}"))
            .arg(format!("{p}fail:mfa:{account}"))
            .arg(format!("{p}att:acct:{account}"))
            .query_async::<()>(&mut connection)
            .await
    }
}
