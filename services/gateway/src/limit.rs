//! Rate limits exact across any number of instances: a sliding log per key
//! and policy in Redis (a list of the admitted requests' times), read and
//! written by one script, so no two instances can both take the last slot.
//! A request is admitted when fewer than `limit` were admitted in the
//! `window` before it: never more than `limit` in any window, and nothing
//! refused below it (a fixed window admits twice the limit around its edge;
//! GCRA with a full burst admits up to twice the limit in a window too).
//! The cost is one list entry (about 10 bytes) per admitted request, kept
//! one window.
//!
//! Time is Redis's own (`TIME`), so instances' clocks do not matter; tests
//! give a [`Clock::Manual`] instead. When Redis does not answer within its
//! timeout, each instance admits its share of the limit (`limit /
//! instances`) on its own for a second before asking Redis again, and says
//! so in `tributary_gateway_rate_limit_fallbacks_total`.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

/// One minute, in microseconds.
pub const MINUTE_MICROS: u64 = 60_000_000;
/// How long the local limiter answers alone after Redis failed.
const FALLBACK_FOR_MICROS: u64 = 1_000_000;
/// Keys the local limiter remembers.
const LOCAL_KEYS: usize = 100_000;

/// The log of one key and policy is a Redis list of the times (µs) of the
/// requests it admitted in the last window, oldest first. `ARGV`: the time
/// (empty for Redis's own), the window (µs) and the limit.
///
/// Why a list: each step is O(1) at its ends, an entry takes about 10
/// bytes, and a long run of stale entries (a key idle after heavy use) is
/// found by bisection and cut in one `LTRIM` that frees whole nodes. The
/// first version, a sorted set, took 114 bytes an entry and removed such a
/// run entry by entry: 107 ms in Redis's slow log for one call, stalling
/// every key and every gateway instance. Times only grow along the log:
/// if Redis's clock steps back, a request counts from the newest time
/// instead, a little longer than its own (never shorter).
const SCRIPT: &str = r"
local log = KEYS[1]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local newest = tonumber(redis.call('LINDEX', log, -1))
if newest and newest > now then now = newest end
local stale = now - window
local popped = 0
while popped < 8 do
  local oldest = tonumber(redis.call('LINDEX', log, 0))
  if not oldest or oldest > stale then break end
  redis.call('LPOP', log)
  popped = popped + 1
end
if popped == 8 then
  local lo, hi = 0, redis.call('LLEN', log)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if tonumber(redis.call('LINDEX', log, mid)) <= stale then lo = mid + 1 else hi = mid end
  end
  if lo > 0 then redis.call('LTRIM', log, lo, -1) end
end
local count = redis.call('LLEN', log)
local admitted = 0
if count < limit then
  redis.call('RPUSH', log, string.format('%.0f', now))
  redis.call('PEXPIRE', log, math.floor(window / 1000) + 1000)
  count = count + 1
  admitted = 1
end
local reset = 0
local oldest = tonumber(redis.call('LINDEX', log, 0))
if oldest then reset = oldest + window - now end
return {admitted, limit - count, reset}
";

/// Where time comes from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Redis's clock for the shared limit, this machine's for the fallback.
    #[default]
    System,
    /// A time set by hand (microseconds), for tests of whole minutes that
    /// run in seconds.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    fn now_micros(&self) -> u64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            Clock::Manual(now) => now.load(Ordering::SeqCst),
        }
    }

    /// The time to give the script, or none to let it use Redis's.
    fn for_redis(&self) -> String {
        match self {
            Clock::System => String::new(),
            Clock::Manual(now) => now.load(Ordering::SeqCst).to_string(),
        }
    }
}

/// A limiter's answer, and what the response headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub admitted: bool,
    /// The policy's name in the headers.
    pub policy: Arc<str>,
    /// Requests per window.
    pub limit: u32,
    /// Requests left in the window now.
    pub remaining: u32,
    /// Seconds until another request would be admitted (at least 1 when none is left).
    pub reset_secs: u64,
    /// The window, in seconds.
    pub window_secs: u64,
}

impl Decision {
    /// Adds the IETF draft's `RateLimit-Policy` and `RateLimit`, the older
    /// `RateLimit-Limit/Remaining/Reset`, and `Retry-After` when refused.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(name, value);
            }
        };
        put(
            "ratelimit-policy",
            format!(
                "\"{}\";q={};w={}",
                self.policy, self.limit, self.window_secs
            ),
        );
        put(
            "ratelimit",
            format!(
                "\"{}\";r={};t={}",
                self.policy, self.remaining, self.reset_secs
            ),
        );
        put("ratelimit-limit", self.limit.to_string());
        put("ratelimit-remaining", self.remaining.to_string());
        put("ratelimit-reset", self.reset_secs.to_string());
        if !self.admitted {
            put("retry-after", self.reset_secs.max(1).to_string());
        }
    }
}

/// The shared limiter with its local fallback.
#[derive(Clone)]
pub struct Limiter {
    redis: redis::aio::ConnectionManager,
    script: Arc<redis::Script>,
    prefix: String,
    clock: Clock,
    timeout: Duration,
    instances: u32,
    local: Arc<Mutex<LruCache<String, VecDeque<u64>>>>,
    redis_down_until: Arc<AtomicU64>,
    fallbacks: Counter,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("prefix", &self.prefix)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter on `redis`, its keys under `prefix`; with Redis away each
    /// of `instances` admits its share.
    pub fn new(
        redis: redis::aio::ConnectionManager,
        prefix: &str,
        clock: Clock,
        timeout: Duration,
        instances: u32,
        fallbacks: Counter,
    ) -> Self {
        Self {
            redis,
            script: Arc::new(redis::Script::new(SCRIPT)),
            prefix: format!("{prefix}rlog:"),
            clock,
            timeout,
            instances: instances.max(1),
            local: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(LOCAL_KEYS).unwrap_or(NonZeroUsize::MIN),
            ))),
            redis_down_until: Arc::new(AtomicU64::new(0)),
            fallbacks,
        }
    }

    /// Counts one request of `subject` under `policy` against `limit` per
    /// `window`.
    pub async fn check(
        &self,
        subject: &str,
        policy: &Arc<str>,
        limit: u32,
        window: Duration,
    ) -> Decision {
        let window_micros = window.as_micros() as u64;
        let key = format!("{}{subject}:{policy}", self.prefix);
        let now = self.clock.now_micros();
        if now >= self.redis_down_until.load(Ordering::Relaxed) {
            let mut redis = crate::workers::redis(&self.redis);
            let mut invocation = self.script.key(&key);
            invocation
                .arg(self.clock.for_redis())
                .arg(window_micros)
                .arg(limit);
            let call = invocation.invoke_async::<(i64, i64, i64)>(&mut redis);
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok((admitted, remaining, reset))) => {
                    return Decision {
                        admitted: admitted == 1,
                        policy: policy.clone(),
                        limit,
                        remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
                        reset_secs: micros_to_secs(u64::try_from(reset.max(0)).unwrap_or(0)),
                        window_secs: window.as_secs(),
                    };
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the rate limit's Redis failed; limiting locally");
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = self.timeout.as_millis() as u64,
                        "the rate limit's Redis did not answer; limiting locally"
                    );
                }
            }
            self.redis_down_until
                .store(now + FALLBACK_FOR_MICROS, Ordering::Relaxed);
        }
        self.fallbacks.inc();
        self.local(
            key,
            policy,
            limit.div_ceil(self.instances),
            window_micros,
            now,
        )
    }

    fn local(&self, key: String, policy: &Arc<str>, limit: u32, window: u64, now: u64) -> Decision {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let log = local.get_or_insert_mut(key, VecDeque::new);
        while log.front().is_some_and(|at| *at + window <= now) {
            log.pop_front();
        }
        let admitted = (log.len() as u64) < u64::from(limit);
        if admitted {
            log.push_back(now);
        }
        let reset = log.front().map_or(0, |oldest| oldest + window - now);
        Decision {
            admitted,
            policy: policy.clone(),
            limit,
            remaining: limit.saturating_sub(log.len() as u32),
            reset_secs: micros_to_secs(reset),
            window_secs: window / 1_000_000,
        }
    }
}

fn micros_to_secs(micros: u64) -> u64 {
    micros.div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_draft_and_the_older_names_and_agree_with_retry_after() {
        let decision = Decision {
            admitted: false,
            policy: "default".into(),
            limit: 1000,
            remaining: 0,
            reset_secs: 7,
            window_secs: 60,
        };
        let mut headers = HeaderMap::new();
        decision.write_headers(&mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"default\";q=1000;w=60");
        assert_eq!(headers["ratelimit"], "\"default\";r=0;t=7");
        assert_eq!(headers["ratelimit-limit"], "1000");
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(headers["ratelimit-reset"], "7");
        assert_eq!(headers["retry-after"], "7");
    }
}
