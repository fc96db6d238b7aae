//! Tributary's black-box tests: they drive the real `tributary` binary on
//! generated data and inspect what it writes. The Kafka tests start their
//! own broker processes (see `servers`).

// A test's unwrap is its assertion: a failure shows where and why.
#![allow(clippy::unwrap_used)]

mod check;
mod delivery;
mod dlq;
mod faults;
mod faulty_http;
mod kafka;
mod lookups;
mod orders;
mod servers;
mod support;
mod telemetry;
