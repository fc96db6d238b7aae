//! A circuit breaker: closed, it counts the outcomes of the last `window`
//! calls and opens when at least `minimum_calls` were made and the share
//! of failures reaches `failure_ratio`. Open, it refuses every call for
//! `open_for`. Then half-open, it lets `probes` calls through, each with a
//! deadline: all succeeding closes it, any failing (or not answering by
//! its deadline, or dropped without an answer) opens it again. A probe
//! that hangs therefore cannot keep it half-open.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BreakerSettings;

/// What the breaker is doing (for the metric: 0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// A few probes go through.
    HalfOpen,
}

#[derive(Debug)]
enum Phase {
    Closed {
        outcomes: VecDeque<bool>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        out: Vec<(u64, Instant)>,
        succeeded: u32,
    },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    next_probe: u64,
}

/// A shared breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    /// How long a probe may take before it counts as failed.
    probe_deadline: Duration,
    inner: Arc<Mutex<Inner>>,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the circuit breaker is open; retry in {retry_in:?}")]
pub struct Open {
    /// When it will let a probe through.
    pub retry_in: Duration,
}

/// Leave to make one call; report its outcome. Dropped unreported, it
/// counts as a failure.
#[derive(Debug)]
pub struct Permit {
    breaker: Breaker,
    probe: Option<u64>,
    reported: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.report(self.probe, true);
    }

    /// The call failed.
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.report(self.probe, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.report(self.probe, false);
        }
    }
}

impl Breaker {
    /// A closed breaker; probes get `probe_deadline` (the call timeout).
    pub fn new(settings: BreakerSettings, probe_deadline: Duration) -> Self {
        Self {
            settings,
            probe_deadline,
            inner: Arc::new(Mutex::new(Inner {
                phase: Phase::Closed {
                    outcomes: VecDeque::new(),
                },
                next_probe: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its state now.
    pub fn state(&self) -> State {
        let now = Instant::now();
        let mut inner = self.lock();
        self.settle(&mut inner, now);
        match inner.phase {
            Phase::Closed { .. } => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Moves on with time: open → half-open after `open_for`; half-open with
    /// a probe past its deadline → open.
    fn settle(&self, inner: &mut Inner, now: Instant) {
        match &inner.phase {
            Phase::Open { until } if now >= *until => {
                inner.phase = Phase::HalfOpen {
                    out: Vec::new(),
                    succeeded: 0,
                };
            }
            Phase::HalfOpen { out, .. } if out.iter().any(|(_, deadline)| now >= *deadline) => {
                tracing::warn!("a circuit breaker probe did not answer in time; open again");
                inner.phase = Phase::Open {
                    until: now + self.settings.open_for,
                };
            }
            _ => {}
        }
    }

    /// Leave for one call, or why not.
    pub fn acquire(&self) -> Result<Permit, Open> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.settle(&mut inner, now);
        let probe = match &mut inner.phase {
            Phase::Closed { .. } => None,
            Phase::Open { until } => {
                return Err(Open {
                    retry_in: until.saturating_duration_since(now),
                });
            }
            Phase::HalfOpen { out, succeeded } => {
                if out.len() as u32 + *succeeded >= self.settings.probes.max(1) {
                    return Err(Open {
                        retry_in: self.probe_deadline,
                    });
                }
                let id = inner.next_probe;
                inner.next_probe += 1;
                if let Phase::HalfOpen { out, .. } = &mut inner.phase {
                    out.push((id, now + self.probe_deadline));
                }
                Some(id)
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            reported: false,
        })
    }

    fn report(&self, probe: Option<u64>, success: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        self.settle(&mut inner, now);
        let settings = &self.settings;
        match (&mut inner.phase, probe) {
            (Phase::Closed { outcomes }, _) => {
                outcomes.push_back(success);
                while outcomes.len() > settings.window.max(1) as usize {
                    outcomes.pop_front();
                }
                let calls = outcomes.len() as u32;
                let failures = outcomes.iter().filter(|ok| !**ok).count() as f64;
                if calls >= settings.minimum_calls
                    && failures / f64::from(calls) >= settings.failure_ratio
                {
                    tracing::warn!(calls, failures, "circuit breaker open");
                    inner.phase = Phase::Open {
                        until: now + settings.open_for,
                    };
                }
            }
            (Phase::HalfOpen { out, succeeded }, Some(id)) => {
                let Some(at) = out.iter().position(|(p, _)| *p == id) else {
                    return;
                };
                out.remove(at);
                if !success {
                    tracing::warn!("a circuit breaker probe failed; open again");
                    inner.phase = Phase::Open {
                        until: now + settings.open_for,
                    };
                } else {
                    *succeeded += 1;
                    if *succeeded >= settings.probes.max(1) {
                        tracing::info!("circuit breaker closed");
                        inner.phase = Phase::Closed {
                            outcomes: VecDeque::new(),
                        };
                    }
                }
            }
            // A call let through before the breaker opened, or a probe of an
            // earlier half-open spell: it says nothing about now.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration, deadline: Duration) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failure_ratio: 0.5,
                minimum_calls: 10,
                window: 20,
                open_for,
                probes: 2,
            },
            deadline,
        )
    }

    #[test]
    fn it_opens_at_half_failures_over_the_minimum_and_not_before() {
        let b = breaker(Duration::from_secs(60), Duration::from_secs(1));
        for _ in 0..9 {
            b.acquire().unwrap().failed();
        }
        assert_eq!(b.state(), State::Closed, "9 calls are below the minimum");
        b.acquire().unwrap().succeeded();
        assert_eq!(b.state(), State::Open, "9 of 10 failed");
        assert!(b.acquire().is_err());

        let b = breaker(Duration::from_secs(60), Duration::from_secs(1));
        for _ in 0..6 {
            b.acquire().unwrap().succeeded();
        }
        for _ in 0..5 {
            b.acquire().unwrap().failed();
        }
        assert_eq!(b.state(), State::Closed, "5 of 11 failed");
        b.acquire().unwrap().failed();
        assert_eq!(b.state(), State::Open, "6 of 12 failed");
    }

    #[test]
    fn half_open_closes_after_the_probes_succeed_and_reopens_on_a_failure() {
        let b = breaker(Duration::from_millis(20), Duration::from_secs(1));
        for _ in 0..10 {
            b.acquire().unwrap().failed();
        }
        assert!(b.acquire().is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.state(), State::HalfOpen);
        let first = b.acquire().unwrap();
        let second = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "only two probes at a time");
        first.succeeded();
        second.failed();
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(30));
        b.acquire().unwrap().succeeded();
        b.acquire().unwrap().succeeded();
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_probe_that_hangs_past_its_deadline_reopens_it() {
        let b = breaker(Duration::from_millis(20), Duration::from_millis(20));
        for _ in 0..10 {
            b.acquire().unwrap().failed();
        }
        std::thread::sleep(Duration::from_millis(30));
        let hanging = b.acquire().unwrap();
        let _other = b.acquire().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.state(), State::Open, "the hung probe counts as failed");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.state(), State::HalfOpen, "and it is probed again");
        hanging.succeeded(); // a late answer of an old probe changes nothing
        assert_eq!(b.state(), State::HalfOpen);
        let dropped = b.acquire().unwrap();
        drop(dropped);
        assert_eq!(b.state(), State::Open, "a probe dropped unanswered failed");
    }
}
