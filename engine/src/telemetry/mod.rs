//! What an operator sees of a running engine: Prometheus metrics and health
//! probes on one HTTP port (`tributary run --http ADDR`).
//!
//! [`Metrics`] is always kept (updating it costs a few atomic adds per
//! batch); [`serve`] exposes it with `/metrics`, `/healthz` and `/readyz`.

mod http;
mod metrics;

pub use http::serve;
pub use metrics::{Metrics, Readiness};
