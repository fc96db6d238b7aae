//! Password hashing off the async workers: a fixed pool of threads behind a
//! bounded queue. A burst of logins fills the queue and gets 503 at once
//! instead of starving the workers that serve refreshes; the rest of the
//! service never waits on bcrypt. Passwords longer than bcrypt's 72 bytes
//! are refused, never truncated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;
use tributary_kit::Secret;

/// bcrypt reads only this many bytes of a password.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// The pool is full; the caller should answer 503.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct Busy;

enum Job {
    Hash(Secret, oneshot::Sender<Option<String>>),
    Verify(Secret, String, oneshot::Sender<bool>),
}

/// The hashing pool.
#[derive(Clone)]
pub struct Hasher {
    jobs: Sender<Job>,
    cost: u32,
    typical_nanos: Arc<AtomicU64>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("cost", &self.cost).finish()
    }
}

impl Hasher {
    /// Starts `threads` hashing threads (0: one per core) with `queue` waiting places.
    pub fn start(cost: u32, threads: usize, queue: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let (jobs, receive) = crossbeam_channel::bounded::<Job>(queue.max(1));
        let typical_nanos = Arc::new(AtomicU64::new(0));
        for index in 0..threads {
            let receive = receive.clone();
            let typical = typical_nanos.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bcrypt-{index}"))
                .spawn(move || {
                    for job in receive {
                        let started = Instant::now();
                        match job {
                            Job::Hash(password, reply) => {
                                let hash = bcrypt::hash(password.expose(), cost).ok();
                                let _ = reply.send(hash);
                            }
                            Job::Verify(password, hash, reply) => {
                                let ok = bcrypt::verify(password.expose(), &hash).unwrap_or(false);
                                let _ = reply.send(ok);
                            }
                        }
                        remember(&typical, started.elapsed());
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a hashing thread");
            }
        }
        Self {
            jobs,
            cost,
            typical_nanos,
        }
    }

    /// The bcrypt cost.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Hashes `password` (at most 72 bytes; longer ones must be refused before).
    pub async fn hash(&self, password: Secret) -> Result<String, Busy> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash(password, reply))?;
        answer.await.ok().flatten().ok_or(Busy)
    }

    /// Whether `password` matches `hash`. Over 72 bytes never matches: such
    /// a password was never accepted, and bcrypt would compare a prefix.
    pub async fn verify(&self, password: Secret, hash: String) -> Result<bool, Busy> {
        if password.expose().len() > MAX_PASSWORD_BYTES {
            self.pretend().await;
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify(password, hash, reply))?;
        answer.await.map_err(|_| Busy)
    }

    /// Takes about as long as a check, without one: how unknown accounts,
    /// locked accounts and refused passwords look the same as wrong ones.
    pub async fn pretend(&self) {
        let typical = self.typical_nanos.load(Ordering::Relaxed);
        let typical = if typical == 0 {
            // Before any hash was timed: bcrypt's cost doubles per step.
            Duration::from_micros(250u64 << self.cost.min(20).saturating_sub(4))
        } else {
            Duration::from_nanos(typical)
        };
        // +-10 % so the pretence does not stand out by its regularity.
        let jitter = 0.9 + fastrand::f64() * 0.2;
        tokio::time::sleep(typical.mul_f64(jitter)).await;
    }

    fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// A moving average of hash times (1/8 weight to the newest).
fn remember(typical: &AtomicU64, took: Duration) {
    let took = took.as_nanos().min(u64::MAX as u128) as u64;
    let _ = typical.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_a_full_queue_says_busy() {
        let hasher = Hasher::start(4, 1, 1);
        let hash = hasher.hash(Secret::new("correct horse")).await.unwrap();
        assert!(
            hasher
                .verify(Secret::new("correct horse"), hash.clone())
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(Secret::new("wrong horse"), hash.clone())
                .await
                .unwrap()
        );

        let slow = Hasher::start(12, 1, 1);
        let waits: Vec<_> = (0..4)
            .map(|_| {
                let slow = slow.clone();
                tokio::spawn(async move { slow.hash(Secret::new("x")).await })
            })
            .collect();
        let mut busy = 0;
        for wait in waits {
            if wait.await.unwrap().is_err() {
                busy += 1;
            }
        }
        assert!(
            busy >= 2,
            "one running and one queued at most, {busy} refused"
        );
    }

    #[tokio::test]
    async fn a_password_over_72_bytes_never_matches_its_prefix() {
        let hasher = Hasher::start(4, 1, 4);
        let prefix = "a".repeat(72);
        let hash = hasher.hash(Secret::new(prefix.clone())).await.unwrap();
        let longer = format!("{prefix}b");
        assert!(!hasher.verify(Secret::new(longer), hash).await.unwrap());
    }
}
