//! Sessions and refresh tokens in Redis.
//!
//! A refresh token is opaque (`rt_` and 32 random bytes), stored only as
//! its SHA-256, and belongs to a session: the token family. Refreshing
//! spends it and issues its successor in one Lua script, so concurrent
//! refreshes are ordered by Redis. Presenting the immediate parent of the
//! current token again within `reuse_grace` returns the same successor
//! (kept sealed for that long); presenting anything older revokes the
//! whole session, and every script checks the session first, so no
//! descendant is refreshed after that, even one already in flight.
//!
//! Keys, under the configured prefix: `sess:{sid}` (hash), `rt:{digest}`
//! (hash), `rtn:{digest}` (the sealed successor, for the grace interval),
//! `user-sess:{user}` (set of sids), and `revoked`: a sorted set of revoked
//! sids by the time their last access token expires, and the channel the
//! same news is published on.

use std::sync::{Arc, LazyLock};

use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::clock::{millis, now_ms};
use crate::random;
use crate::sealing::Keyring;
use crate::settings::{LockoutSettings, TokenSettings};

/// Refresh tokens start with this.
pub const REFRESH_PREFIX: &str = "rt_";

/// Access tokens are accepted this long past `exp`; a revocation is kept
/// as long as a token of its session might still be accepted.
const VERIFIER_LEEWAY_SECS: i64 = 60;

/// A session as its owner sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// The session id (`sid` in access tokens).
    pub id: String,
    /// Started (ms since the epoch).
    pub created_at_ms: i64,
    /// Last refreshed (ms since the epoch).
    pub last_used_at_ms: i64,
    /// Ends at the latest (ms since the epoch).
    pub expires_at_ms: i64,
    /// Where it started.
    pub ip: String,
    /// The client that started it.
    pub user_agent: String,
}

/// What a session says about how its user authenticated.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The session.
    pub sid: String,
    /// The user.
    pub user: Uuid,
    /// Authentication methods.
    pub amr: Vec<String>,
    /// When the user authenticated (seconds since the epoch).
    pub auth_time: i64,
}

/// The outcome of presenting a refresh token.
#[derive(Debug)]
pub enum Refresh {
    /// A successor was issued (or re-sent within the grace interval).
    Issued {
        /// The session.
        grant: Grant,
        /// The new refresh token.
        token: String,
    },
    /// An older token was presented again: the session is now revoked.
    Reused(Grant),
    /// The session was revoked or has ended.
    Ended,
    /// The account is locked; the token was not spent.
    Locked,
    /// No such token.
    Unknown,
}

/// The session store.
#[derive(Clone)]
pub struct Sessions {
    redis: ConnectionManager,
    prefix: String,
    sealing: Arc<Keyring>,
    settings: TokenSettings,
    lockout: LockoutSettings,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

static REFRESH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local prefix, old = ARGV[6], ARGV[8]
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('HMGET', KEYS[1], 'sid', 'state', 'spent_at', 'successor')
local sid = t[1]
if not sid then return {'unknown'} end
local sess = prefix .. 'sess:' .. sid
local s = redis.call('HMGET', sess, 'user', 'revoked', 'current', 'expires_at', 'amr', 'auth_time')
if not s[1] then return {'ended'} end
if s[2] == '1' or tonumber(s[4]) <= now then return {'ended'} end
-- A locked account refreshes nothing, and its token stays unspent.
local account = redis.call('HGET', sess, 'account')
if account then
  for _, factor in ipairs({'pwd', 'mfa'}) do
    local failures = redis.call('ZCOUNT', prefix .. 'fail:' .. factor .. ':' .. account, ARGV[9], '+inf')
    if failures >= tonumber(ARGV[10]) then return {'locked'} end
  end
end
if t[2] == 'live' then
  local new_rt = prefix .. 'rt:' .. ARGV[3]
  redis.call('HSET', KEYS[1], 'state', 'spent', 'spent_at', ARGV[1], 'successor', ARGV[3])
  redis.call('SET', prefix .. 'rtn:' .. old, ARGV[4], 'PX', grace)
  redis.call('HSET', new_rt, 'sid', sid, 'state', 'live')
  redis.call('PEXPIRE', new_rt, math.max(1, math.min(tonumber(ARGV[5]), tonumber(s[4]) - now)))
  redis.call('HSET', sess, 'current', ARGV[3], 'last_used', ARGV[1])
  return {'issued', sid, s[1], s[5], s[6]}
end
if now - tonumber(t[3]) <= grace and s[3] == t[4] then
  local sealed = redis.call('GET', prefix .. 'rtn:' .. old)
  if sealed then return {'resent', sid, s[1], s[5], s[6], sealed} end
end
redis.call('HSET', sess, 'revoked', '1')
redis.call('ZADD', prefix .. 'revoked', ARGV[7], sid)
redis.call('PUBLISH', prefix .. 'revoked', sid .. ' ' .. ARGV[7])
return {'reused', sid, s[1], s[5], s[6]}
"#,
    )
});

static END: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local prefix, sid = ARGV[1], ARGV[2]
local sess = prefix .. 'sess:' .. sid
local s = redis.call('HMGET', sess, 'user', 'revoked')
if not s[1] or s[2] == '1' then return 0 end
if ARGV[4] ~= '' and s[1] ~= ARGV[4] then return 0 end
redis.call('HSET', sess, 'revoked', '1')
redis.call('ZREMRANGEBYSCORE', prefix .. 'revoked', '-inf', ARGV[5])
redis.call('ZADD', prefix .. 'revoked', ARGV[3], sid)
redis.call('PUBLISH', prefix .. 'revoked', sid .. ' ' .. ARGV[3])
return 1
"#,
    )
});

impl Sessions {
    /// A store under `prefix`.
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        sealing: Arc<Keyring>,
        settings: TokenSettings,
        lockout: LockoutSettings,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            sealing,
            settings,
            lockout,
        }
    }

    /// The key revocations are kept and published under.
    pub fn revocations_key(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// Until when a session revoked now must be refused by verifiers.
    pub fn revoked_until(&self) -> i64 {
        chrono::Utc::now().timestamp()
            + self.settings.access_ttl.as_secs() as i64
            + VERIFIER_LEEWAY_SECS
    }

    /// Starts a session for `user`, whose attempt counters are kept under
    /// `account` ([`crate::attempts::Attempts::account`]); returns its grant
    /// and first refresh token.
    pub async fn start(
        &self,
        user: Uuid,
        account: &str,
        amr: &[String],
        ip: &str,
        user_agent: &str,
    ) -> redis::RedisResult<(Grant, String)> {
        let sid = Uuid::new_v4().to_string();
        let token = random::token(REFRESH_PREFIX);
        let now = now_ms();
        let expires_at = now + millis(self.settings.session_max);
        let auth_time = now / 1000;
        let sess = format!("{}sess:{sid}", self.prefix);
        let rt = format!("{}rt:{}", self.prefix, random::digest(&token));
        let user_sessions = format!("{}user-sess:{user}", self.prefix);
        let mut connection = self.redis.clone();
        redis::pipe()
            .atomic()
            .hset_multiple(
                &sess,
                &[
                    ("user", user.to_string()),
                    ("account", account.to_string()),
                    ("revoked", "0".into()),
                    ("current", random::digest(&token)),
                    ("created", now.to_string()),
                    ("last_used", now.to_string()),
                    ("expires_at", expires_at.to_string()),
                    ("amr", amr.join(" ")),
                    ("auth_time", auth_time.to_string()),
                    ("ip", ip.to_string()),
                    ("ua", user_agent.chars().take(256).collect()),
                ],
            )
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&sess)
            .arg(expires_at)
            .ignore()
            .hset_multiple(&rt, &[("sid", sid.as_str()), ("state", "live")])
            .ignore()
            .pexpire(&rt, millis(self.settings.refresh_ttl))
            .ignore()
            .sadd(&user_sessions, &sid)
            .ignore()
            .pexpire(&user_sessions, millis(self.settings.session_max))
            .ignore()
            .query_async::<()>(&mut connection)
            .await?;
        let grant = Grant {
            sid,
            user,
            amr: amr.to_vec(),
            auth_time,
        };
        Ok((grant, token))
    }

    /// Spends `token` and issues its successor (see the module docs).
    pub async fn refresh(&self, token: &str) -> redis::RedisResult<Refresh> {
        if !token.starts_with(REFRESH_PREFIX) || token.len() > 128 {
            return Ok(Refresh::Unknown);
        }
        let old = random::digest(token);
        let successor = random::token(REFRESH_PREFIX);
        let sealed = self.sealing.seal(successor.as_bytes(), old.as_bytes());
        let mut connection = self.redis.clone();
        let answer: Vec<redis::Value> = REFRESH
            .key(format!("{}rt:{old}", self.prefix))
            .arg(now_ms())
            .arg(millis(self.settings.reuse_grace))
            .arg(random::digest(&successor))
            .arg(sealed)
            .arg(millis(self.settings.refresh_ttl))
            .arg(&self.prefix)
            .arg(self.revoked_until())
            .arg(&old)
            .arg(now_ms() - millis(self.lockout.failure_window))
            .arg(self.lockout.max_failures)
            .invoke_async(&mut connection)
            .await?;
        let text = |i: usize| -> String {
            match answer.get(i) {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(redis::Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            }
        };
        let grant = || Grant {
            sid: text(1),
            user: text(2).parse().unwrap_or_default(),
            amr: text(3).split_whitespace().map(str::to_string).collect(),
            auth_time: text(4).parse().unwrap_or_default(),
        };
        Ok(match text(0).as_str() {
            "issued" => Refresh::Issued {
                grant: grant(),
                token: successor,
            },
            "resent" => {
                let sealed = match answer.get(5) {
                    Some(redis::Value::BulkString(b)) => b.clone(),
                    _ => Vec::new(),
                };
                match self.sealing.open(&sealed, old.as_bytes()) {
                    Ok(plain) => Refresh::Issued {
                        grant: grant(),
                        token: String::from_utf8_lossy(&plain).into_owned(),
                    },
                    Err(error) => {
                        tracing::error!(%error, "a kept successor token does not open");
                        Refresh::Ended
                    }
                }
            }
            "reused" => Refresh::Reused(grant()),
            "ended" => Refresh::Ended,
            "locked" => Refresh::Locked,
            _ => Refresh::Unknown,
        })
    }

    /// Ends session `sid` (of `user`, when given); returns whether it was live.
    pub async fn end(&self, sid: &str, user: Option<Uuid>) -> redis::RedisResult<bool> {
        let mut connection = self.redis.clone();
        let ended: i64 = END
            .arg(&self.prefix)
            .arg(sid)
            .arg(self.revoked_until())
            .arg(user.map(|u| u.to_string()).unwrap_or_default())
            .arg(chrono::Utc::now().timestamp())
            .invoke_async(&mut connection)
            .await?;
        Ok(ended == 1)
    }

    /// Ends every session of `user`; returns how many were live.
    pub async fn end_all(&self, user: Uuid) -> redis::RedisResult<usize> {
        let mut ended = 0;
        for session in self.list(user).await? {
            if self.end(&session.id, Some(user)).await? {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// The live sessions of `user`, newest first.
    pub async fn list(&self, user: Uuid) -> redis::RedisResult<Vec<SessionInfo>> {
        let mut connection = self.redis.clone();
        let user_sessions = format!("{}user-sess:{user}", self.prefix);
        let sids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&user_sessions)
            .query_async(&mut connection)
            .await?;
        let now = now_ms();
        let mut live = Vec::new();
        for sid in sids {
            let fields: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{}sess:{sid}", self.prefix))
                .arg(&["revoked", "created", "last_used", "expires_at", "ip", "ua"])
                .query_async(&mut connection)
                .await?;
            let field = |i: usize| fields.get(i).cloned().flatten().unwrap_or_default();
            let expires_at: i64 = field(3).parse().unwrap_or(0);
            if field(0) != "0" || expires_at <= now {
                let _: () = redis::cmd("SREM")
                    .arg(&user_sessions)
                    .arg(&sid)
                    .query_async(&mut connection)
                    .await?;
                continue;
            }
            live.push(SessionInfo {
                id: sid,
                created_at_ms: field(1).parse().unwrap_or(0),
                last_used_at_ms: field(2).parse().unwrap_or(0),
                expires_at_ms: expires_at,
                ip: field(4),
                user_agent: field(5),
            });
        }
        live.sort_by_key(|s| std::cmp::Reverse(s.created_at_ms));
        Ok(live)
    }
}
