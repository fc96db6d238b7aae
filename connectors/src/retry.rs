//! Retrying transient failures: exponential backoff with full jitter, a
//! budget of elapsed time per attempt chain, and a choice of what happens
//! when the budget runs out.
//!
//! Every retry is logged with the target, the attempt number and the error.
//! A sink that is still failing once its budget is spent either fails the
//! caller ([`Exhausted::Fail`]) or keeps the caller waiting, retrying at the
//! longest delay, until it is back ([`Exhausted::Wait`]). Waiting is how the
//! engine pauses a partition: its task stops taking batches, the consumer
//! stops fetching for it, memory stays flat, and lag grows until the sink
//! answers again.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};

/// What to do once an attempt chain has spent its budget on transient errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// Return the last error.
    Fail,
    /// Keep retrying at the longest delay until the target answers.
    Wait,
}

/// How a target is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay (before jitter).
    pub initial_delay: Duration,
    /// The longest delay (before jitter).
    pub max_delay: Duration,
    /// How long one chain of attempts may take before it counts as exhausted.
    pub max_elapsed: Duration,
    /// What happens then.
    pub exhausted: Exhausted,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(30),
            exhausted: Exhausted::Wait,
        }
    }
}

/// Exponential delays (factor 2, capped) where each is drawn uniformly from
/// zero to its nominal value ("full jitter"), so that many clients retrying
/// the same server spread out instead of arriving together.
#[derive(Debug, Clone, Copy)]
struct FullJitter(ExponentialBuilder);

struct FullJitterBackoff(ExponentialBackoff);

impl Iterator for FullJitterBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next().map(|d| d.mul_f64(fastrand::f64()))
    }
}

impl BackoffBuilder for FullJitter {
    type Backoff = FullJitterBackoff;

    fn build(self) -> FullJitterBackoff {
        FullJitterBackoff(self.0.build())
    }
}

/// Whether a target is currently past its retry budget, shared with whoever reports health.
#[derive(Debug, Default)]
pub struct Health {
    /// Callers waiting for the target past their budget.
    waiting: AtomicU64,
    retries: AtomicU64,
}

impl Health {
    /// Whether some caller is waiting for the target past its budget.
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Retries made so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// One caller waiting past its budget; counted while it lives (a caller
/// cancelled mid-wait stops counting too).
struct Waiting<'a>(&'a Health);

impl<'a> Waiting<'a> {
    fn start(health: &'a Health) -> Self {
        health.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(health)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named target retried under one policy.
#[derive(Debug, Clone)]
pub struct Retrier {
    /// What is being called, for logs (e.g. `s3://bucket/orders`).
    pub target: Arc<str>,
    /// How.
    pub policy: RetryPolicy,
    /// Shared state for health reporting.
    pub health: Arc<Health>,
}

/// The retriers of one run, listed by target so that metrics and readiness
/// can report on all of them without each owner passing them along. Clones
/// share one list; a retrier drops out of it when the last clone of it is gone.
#[derive(Debug, Clone, Default)]
pub struct RetryTargets(Arc<Mutex<Vec<Listed>>>);

/// A listed retrier: its target and its health, held weakly.
type Listed = (Arc<str>, Weak<Health>);

impl RetryTargets {
    /// A retrier for `target` under `policy`, listed here while it lives.
    pub fn retrier(&self, target: impl Into<Arc<str>>, policy: RetryPolicy) -> Retrier {
        let retrier = Retrier::new(target, policy);
        self.watch(&retrier);
        retrier
    }

    /// Lists a retrier made elsewhere (and its clones) while it lives.
    pub fn watch(&self, retrier: &Retrier) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(_, health)| health.strong_count() > 0);
        if !all
            .iter()
            .any(|(_, h)| h.ptr_eq(&Arc::downgrade(&retrier.health)))
        {
            all.push((retrier.target.clone(), Arc::downgrade(&retrier.health)));
        }
    }

    /// The listed retriers alive now, with their health (oldest first).
    /// Several retriers may share a target name (one per store opened for it).
    pub fn live(&self) -> Vec<(Arc<str>, Arc<Health>)> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(_, health)| health.strong_count() > 0);
        all.iter()
            .filter_map(|(target, health)| Some((target.clone(), health.upgrade()?)))
            .collect()
    }

    /// Per target name: retries so far and whether any of its retriers waits past its budget.
    pub fn by_target(&self) -> std::collections::BTreeMap<Arc<str>, (u64, bool)> {
        let mut all = std::collections::BTreeMap::<Arc<str>, (u64, bool)>::new();
        for (target, health) in self.live() {
            let entry = all.entry(target).or_default();
            entry.0 += health.retries();
            entry.1 |= health.is_waiting();
        }
        all
    }
}

impl Retrier {
    /// A retrier for `target` under `policy`, listed nowhere (see
    /// [`RetryTargets::retrier`] for one that metrics report on).
    pub fn new(target: impl Into<Arc<str>>, policy: RetryPolicy) -> Self {
        Retrier {
            target: target.into(),
            policy,
            health: Arc::default(),
        }
    }

    /// Awaits `work`, which retries by itself (librdkafka's producer redelivers
    /// in order until its own timeout, which [`Exhausted::Wait`] makes
    /// unbounded). Still pending past the budget, the target counts as
    /// waiting (health, metrics, `/status`) and the wait is logged, as is the
    /// target's return; `what` names the operation in logs.
    pub async fn wait_out<T>(&self, what: &str, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        if let Ok(done) = tokio::time::timeout(self.policy.max_elapsed, &mut work).await {
            return done;
        }
        let since = Instant::now();
        let _waiting = Waiting::start(&self.health);
        tracing::error!(
            target_name = %self.target,
            operation = what,
            budget_s = self.policy.max_elapsed.as_secs(),
            "target still not answering past its retry budget; pausing the partitions that write to it until it is back"
        );
        let done = work.await;
        tracing::info!(
            target_name = %self.target,
            operation = what,
            waited_s = (since.elapsed() + self.policy.max_elapsed).as_secs(),
            "target is back; resuming"
        );
        done
    }

    /// Runs `op` until it succeeds, fails permanently (`transient` says
    /// no), or the policy gives up; `what` names the operation in logs.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        mut op: F,
        transient: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0u64;
        let mut waiting_since: Option<(Instant, Waiting<'_>)> = None;
        loop {
            let started = Instant::now();
            let budget = self.policy.max_elapsed;
            let backoff = FullJitter(
                ExponentialBuilder::default()
                    .with_min_delay(self.policy.initial_delay)
                    .with_max_delay(self.policy.max_delay)
                    .with_factor(2.0)
                    .without_max_times(),
            );
            let result = (&mut op)
                .retry(backoff)
                .sleep(tokio::time::sleep)
                .when(|e| transient(e) && started.elapsed() < budget)
                .notify(|error, delay| {
                    attempt += 1;
                    self.health.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        target_name = %self.target,
                        operation = what,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        %error,
                        "transient failure; retrying"
                    );
                })
                .await;
            match result {
                Ok(value) => {
                    if let Some((since, _waiting)) = waiting_since {
                        tracing::info!(
                            target_name = %self.target,
                            operation = what,
                            attempts = attempt + 1,
                            waited_s = since.elapsed().as_secs(),
                            "target is back; resuming"
                        );
                    }
                    return Ok(value);
                }
                Err(error) if !transient(&error) => return Err(error),
                Err(error) => {
                    if self.policy.exhausted == Exhausted::Fail {
                        tracing::error!(
                            target_name = %self.target,
                            operation = what,
                            attempts = attempt + 1,
                            %error,
                            "retry budget spent; giving up"
                        );
                        return Err(error);
                    }
                    if waiting_since.is_none() {
                        waiting_since = Some((Instant::now(), Waiting::start(&self.health)));
                        tracing::error!(
                            target_name = %self.target,
                            operation = what,
                            attempts = attempt + 1,
                            budget_s = budget.as_secs(),
                            %error,
                            "target still failing past its retry budget; pausing the partitions that write to it until it is back"
                        );
                    }
                    attempt += 1;
                    self.health.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.policy.max_delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn policy(exhausted: Exhausted) -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_elapsed: Duration::from_millis(30),
            exhausted,
        }
    }

    #[test]
    fn delays_grow_exponentially_within_full_jitter_bounds() {
        let builder = FullJitter(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1))
                .with_factor(2.0)
                .without_max_times(),
        );
        let delays: Vec<Duration> = builder.build().take(6).collect();
        let caps = [100, 200, 400, 800, 1000, 1000];
        for (d, cap) in delays.iter().zip(caps) {
            assert!(*d <= Duration::from_millis(cap), "{d:?} > {cap} ms");
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicUsize::new(0);
        let retrier = Retrier::new("test", policy(Exhausted::Fail));
        let value = retrier
            .run(
                "op",
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0..=2 => Err("down"),
                        n => Ok(n),
                    }
                },
                |_| true,
            )
            .await
            .unwrap();
        assert_eq!(value, 3);
        assert_eq!(retrier.health.retries(), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let retrier = Retrier::new("test", policy(Exhausted::Wait));
        let error = retrier
            .run(
                "op",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>("forbidden")
                },
                |_| false,
            )
            .await
            .unwrap_err();
        assert_eq!(error, "forbidden");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn work_pending_past_the_budget_counts_as_waiting_until_it_ends() {
        let retrier = Retrier::new("test", policy(Exhausted::Wait));
        let (done, finished) = tokio::sync::oneshot::channel::<u8>();
        let health = retrier.health.clone();
        let waiting = tokio::spawn(async move {
            retrier
                .wait_out("deliver", async { finished.await.unwrap_or(0) })
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(health.is_waiting(), "pending past a 30 ms budget");
        done.send(7).unwrap();
        assert_eq!(waiting.await.unwrap(), 7);
        assert!(!health.is_waiting());
        // Work that ends within the budget never counts.
        let quick = Retrier::new("test", policy(Exhausted::Wait));
        assert_eq!(quick.wait_out("deliver", async { 1 }).await, 1);
        assert!(!quick.health.is_waiting());
    }

    #[tokio::test]
    async fn failing_past_the_budget_gives_up_or_waits_as_configured() {
        let retrier = Retrier::new("test", policy(Exhausted::Fail));
        let started = Instant::now();
        assert!(
            retrier
                .run("op", || async { Err::<(), _>("down") }, |_| true)
                .await
                .is_err()
        );
        assert!(started.elapsed() >= Duration::from_millis(30));

        // Waiting: the target comes back well after the budget.
        let calls = AtomicUsize::new(0);
        let seen_waiting = AtomicUsize::new(0);
        let retrier = Retrier::new("test", policy(Exhausted::Wait));
        let started = Instant::now();
        let value = retrier
            .run(
                "op",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if retrier.health.is_waiting() {
                        seen_waiting.fetch_add(1, Ordering::SeqCst);
                    }
                    if started.elapsed() < Duration::from_millis(120) {
                        Err("down")
                    } else {
                        Ok("up")
                    }
                },
                |_| true,
            )
            .await
            .unwrap();
        assert_eq!(value, "up");
        assert!(
            seen_waiting.load(Ordering::SeqCst) > 0,
            "never reported as waiting"
        );
        assert!(!retrier.health.is_waiting());
    }

    #[tokio::test]
    async fn live_retriers_are_listed_with_their_health_in_their_own_registry() {
        let targets = RetryTargets::default();
        let retrier = targets.retrier("listed-target", policy(Exhausted::Fail));
        let twin = targets.retrier("listed-target", policy(Exhausted::Fail));
        let _ = retrier
            .run("op", || async { Err::<(), _>("down") }, |_| true)
            .await;
        let listed = targets.live();
        assert_eq!(listed.len(), 2);
        let (_, health) = &listed[0];
        assert!(health.retries() > 0);
        let by_target = targets.by_target();
        assert_eq!(by_target.len(), 1, "one name, summed: {by_target:?}");
        assert_eq!(by_target["listed-target"].0, retrier.health.retries());
        // Another run's registry does not see them.
        assert!(RetryTargets::default().live().is_empty());
        drop(listed);
        drop(retrier);
        assert_eq!(targets.live().len(), 1);
        drop(twin);
        assert!(targets.live().is_empty());
    }
}
