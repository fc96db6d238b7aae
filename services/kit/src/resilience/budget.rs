//! A retry budget (as Finagle's): every call deposits `ratio` of a retry,
//! every retry withdraws one, and `floor_per_second` retries are always
//! allowed. However the provider fails, retries add at most about `ratio`
//! of the calls (plus the floor) to its load.

use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug)]
struct Inner {
    balance: f64,
    floor_used: u32,
    second: Instant,
}

/// A shared budget.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_second: u32,
    cap: f64,
    inner: Arc<Mutex<Inner>>,
}

impl RetryBudget {
    /// A budget of `ratio` retries per call plus `floor_per_second`.
    pub fn new(ratio: f64, floor_per_second: u32) -> Self {
        Self {
            ratio: ratio.clamp(0.0, 1.0),
            floor_per_second,
            // Saved-up retries are capped so that a quiet hour does not
            // buy a retry storm.
            cap: 100.0,
            inner: Arc::new(Mutex::new(Inner {
                balance: 0.0,
                floor_used: 0,
                second: Instant::now(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        let mut inner = self.lock();
        inner.balance = (inner.balance + self.ratio).min(self.cap);
    }

    /// Whether a retry may be made now (and spends it).
    pub fn withdraw(&self) -> bool {
        let mut inner = self.lock();
        if inner.balance >= 1.0 {
            inner.balance -= 1.0;
            return true;
        }
        let now = Instant::now();
        if now.duration_since(inner.second).as_secs() >= 1 {
            inner.second = now;
            inner.floor_used = 0;
        }
        if inner.floor_used < self.floor_per_second {
            inner.floor_used += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_ratio_plus_the_floor() {
        let budget = RetryBudget::new(0.2, 3);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
            if budget.withdraw() {
                retries += 1;
            }
        }
        // 200 from the deposits, plus at most 3 from the floor (this loop
        // runs in well under a second).
        assert!((200..=203).contains(&retries), "{retries}");
    }
}
