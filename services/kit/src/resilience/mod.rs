//! Calling something that may fail without making its failure worse: a
//! circuit breaker whose half-open probes have deadlines ([`Breaker`]) and
//! a retry budget that keeps retries to a share of the calls
//! ([`RetryBudget`]). The orders service's payment client and the gateway's
//! upstream pools use both.

use std::time::Duration;

use serde::Deserialize;

mod breaker;
mod budget;

pub use breaker::{Breaker, Open, Permit, State};
pub use budget::RetryBudget;

/// When a circuit breaker opens and how it recovers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// The share of failed calls in the window that opens it.
    pub failure_ratio: f64,
    /// Calls the window needs before it judges.
    pub minimum_calls: u32,
    /// The window: the last this many calls.
    pub window: u32,
    /// How long it stays open before probing.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Probes let through while half-open; all must succeed to close it.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            minimum_calls: 20,
            window: 100,
            open_for: Duration::from_secs(30),
            probes: 3,
        }
    }
}
